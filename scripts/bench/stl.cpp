// C++ STL churn: what a C++ program's heap sees. Each iteration, in one thread:
//   - std::string: builds a few strings by appending pieces (each growth reallocates through
//     operator new/delete), keeps some in a std::vector<std::string>;
//   - std::vector<int>: grows one from empty by push_back to 1-2,000 elements;
//   - std::map<int, std::string> and std::unordered_map<std::string, int>: inserts 32 keys and
//     erases 32, so that both hold about 2,000 entries (a node allocated per insert, freed per
//     erase; the hash table rehashes as it grows).
// Deterministic for a given seed; prints "NS ns per iteration" and a checksum of what it built (the
// same traced and untraced).
//
//   stl [ITERATIONS] [SEED]          built -O2 -g -fomit-frame-pointer
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

static uint64_t rng;

static uint64_t next()
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 0x2545f4914f6cdd1dull;
}

static std::string word(uint64_t r)
{
    static const char *pieces[] = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"};
    std::string s;
    int n = 1 + r % 6;
    for (int i = 0; i < n; i++) {
        s += pieces[(r >> (4 * i)) % 7];
        s += '-';
    }
    s += std::to_string(r % 100000);
    return s;
}

int main(int argc, char **argv)
{
    long iterations = argc > 1 ? atol(argv[1]) : 20000;
    rng = (argc > 2 ? strtoull(argv[2], nullptr, 0) : 1) * 0x9e3779b97f4a7c15ull | 1;
    std::map<int, std::string> ordered;
    std::unordered_map<std::string, int> hashed;
    std::vector<std::string> kept;
    uint64_t check = 0;
    auto t0 = std::chrono::steady_clock::now();
    for (long it = 0; it < iterations; it++) {
        // Strings grown piece by piece.
        std::string line;
        for (int i = 0; i < 8; i++) {
            line += word(next());
            line += ' ';
        }
        check += line.size();
        if (kept.size() < 512)
            kept.push_back(line);
        else
            kept[next() % kept.size()] = std::move(line);
        // A vector grown from empty.
        std::vector<int> v;
        int n = 1 + next() % 2000;
        for (int i = 0; i < n; i++)
            v.push_back(i ^ (int)it);
        check += v[n / 2];
        // Maps: insert 32, erase 32.
        for (int i = 0; i < 32; i++) {
            uint64_t r = next(), k = r % 4096;
            ordered[(int)k] = word(r);
            hashed[word(k * 0x9e3779b97f4a7c15ull)] = (int)i;
        }
        for (int i = 0; i < 32; i++) {
            uint64_t k = next() % 4096;
            ordered.erase((int)k);
            hashed.erase(word(k * 0x9e3779b97f4a7c15ull));
        }
        check += ordered.size() + hashed.size();
    }
    auto t1 = std::chrono::steady_clock::now();
    double ns = std::chrono::duration<double, std::nano>(t1 - t0).count();
    printf("%.1f ns per iteration (%ld iterations)\n", ns / iterations, iterations);
    printf("checksum %llu, map %zu, unordered_map %zu, strings %zu\n", (unsigned long long)check,
           ordered.size(), hashed.size(), kept.size());
    return 0;
}
