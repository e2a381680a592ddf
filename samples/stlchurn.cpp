// stlchurn: the C++ standard library allocating through operator new from deep inside its own
// templates: vectors that grow, strings that grow past the small-string buffer, map and
// unordered_map nodes and buckets, a shared_ptr's control block, a std::function's target, and
// an exception thrown and caught (its allocation and the unwinding through libstdc++).
// Deterministic; frees everything. Usage: stlchurn [ROUNDS] (default 200). Prints "sum S".
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace zs {

__attribute__((noipa)) long zs_vectors(int r)
{
    std::vector<std::vector<int>> vv;
    for (int i = 0; i < 20 + r % 7; i++) {
        vv.emplace_back();
        for (int j = 0; j < i; j++)
            vv.back().push_back(i * j);
    }
    long s = 0;
    for (auto &v : vv)
        s += (long)v.size();
    return s;
}

__attribute__((noipa)) long zs_strings(int r)
{
    std::string s;
    std::vector<std::string> parts;
    for (int i = 0; i < 30; i++) {
        s += "part-" + std::to_string(i * r) + "-";
        parts.push_back(s.substr(0, 10 + i));
    }
    return (long)s.size() + (long)parts.size();
}

__attribute__((noipa)) long zs_maps(int r)
{
    std::map<int, std::string> m;
    std::unordered_map<std::string, int> u;
    for (int i = 0; i < 50; i++) {
        m[(i * 7919 + r) % 101] = std::string(20 + i % 30, 'x');
        u[std::to_string(i + r)] = i;
    }
    return (long)m.size() + (long)u.size();
}

__attribute__((noipa)) long zs_callables(int r)
{
    auto p = std::make_shared<std::vector<long>>(100, r);
    std::function<long(long)> f = [p, r](long x) { return x + (*p)[r % 100]; };
    long s = 0;
    for (int i = 0; i < 10; i++)
        s += f(i);
    return s;
}

__attribute__((noipa)) long zs_throw(int r)
{
    try {
        if (r % 3 == 0)
            throw std::runtime_error("round " + std::to_string(r) + " is a multiple of three");
        return 1;
    } catch (const std::exception &e) {
        return (long)std::string(e.what()).size();
    }
}

} // namespace zs

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 200;
    long sum = 0;
    for (int r = 0; r < rounds; r++)
        sum += zs::zs_vectors(r) + zs::zs_strings(r) + zs::zs_maps(r) + zs::zs_callables(r) +
               zs::zs_throw(r);
    printf("sum %ld\n", sum);
    return 0;
}
