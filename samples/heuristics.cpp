// heuristics: blocks kept only through an interior pointer of each kind that memcheck's
// --leak-check-heuristics recognise, so that they are still reachable with the heuristics (all
// of them, memcheck's default) and possibly lost without (`none`).
//
// Usage: heuristics        (prints nothing, exits 0)
//
//   zs_stdstring            1 block  125 B   a string representation (length 40, capacity 100,
//                                            refcount, then the characters; old std::string),
//                                            kept by a pointer to its characters (+24)
//   zs_length64             1 block  108 B   a 64-bit length (100) before 100 bytes of data,
//                                            kept by a pointer to the data (+8); newarray
//                                            takes it too (100 is a count that divides 100)
//   zs_newarray             1 block   48 B   new Elem[5] (Elem has a destructor: the count 5
//                                            is stored before the array), kept by the array
//   zs_multiple_inheritance 1 block   24 B   new Both (a Left and a Right, each with virtual
//                                            functions), kept as a Right* (+8)
//
// Every block is also a pointer's only target, and nothing else is left at exit.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "zs_common.h"

struct Elem {
    long v = 7;
    ~Elem() { v = 0; }
};

struct Left {
    virtual ~Left() {}
    virtual long left() { return 1; }
    long l = 1;
};

struct Right {
    virtual ~Right() {}
    virtual long right() { return 2; }
    virtual long other() { return 3; }
};

struct Both : Left, Right {
    long right() override { return 4; }
};

char *g_string_chars;
char *g_length64_data;
Elem *g_array;
Right *g_right;

ZS_FN void zs_stdstring()
{
    const size_t cap = 100;
    char *rep = static_cast<char *>(malloc(3 * sizeof(size_t) + cap + 1));
    ZS_CHECK(20, rep != nullptr);
    memset(rep, 'x', 3 * sizeof(size_t) + cap + 1);
    size_t len = 40, refcount = 0;
    memcpy(rep, &len, sizeof len);
    memcpy(rep + 8, &cap, sizeof cap);
    memcpy(rep + 16, &refcount, sizeof refcount);
    g_string_chars = rep + 24;
}

ZS_FN void zs_length64()
{
    uint64_t n = 100;
    char *b = static_cast<char *>(malloc(8 + n));
    ZS_CHECK(21, b != nullptr);
    memset(b, 'y', 8 + n);
    memcpy(b, &n, sizeof n);
    g_length64_data = b + 8;
}

ZS_FN void zs_newarray()
{
    g_array = new Elem[5]; // 8 + 5 * 16 B
}

ZS_FN void zs_multiple_inheritance()
{
    g_right = new Both;
}

ZS_FN void zs_scrub_stack()
{
    volatile char pad[64 * 1024];
    for (size_t i = 0; i < sizeof pad; i++)
        pad[i] = 0;
}

int main()
{
    zs_stdstring();
    zs_length64();
    zs_newarray();
    zs_multiple_inheritance();
    ZS_KEEP();
    ZS_CHECK(22, (void *)g_right != (void *)static_cast<Both *>(g_right));
    zs_scrub_stack();
    return 0;
}
