// cxx: C++ allocations through operator new, from a namespaced method and an inlined helper,
// to check that the analyzer demangles C++ names and names inlined frames.
//
// The truth, as src/cli/tests/analyze.rs asserts it:
//   zs::Factory::make(int)  allocates 5 Widgets with `new` (24 bytes each) and leaks them
//   zs::zs_fill(int), inlined (always_inline) into zs::Factory::fill_all(), allocates
//   7 x `new char[64]`, leaked
#include <cstdio>
#include <cstdlib>

namespace zs {

struct Widget {
    long a, b, c;
};

Widget *g_widgets[5];
char *g_bufs[7];

class Factory {
  public:
    __attribute__((noinline)) static Widget *make(int i);
    __attribute__((noinline)) static void fill_all();
};

Widget *Factory::make(int i)
{
    Widget *w = new Widget{i, i, i};
    asm volatile("" ::: "memory");
    return w;
}

static inline __attribute__((always_inline)) char *zs_fill(int i)
{
    char *p = new char[64];
    p[0] = (char)i;
    return p;
}

void Factory::fill_all()
{
    for (int i = 0; i < 7; i++)
        g_bufs[i] = zs_fill(i);
    asm volatile("" ::: "memory");
}

} // namespace zs

int main()
{
    for (int i = 0; i < 5; i++)
        zs::g_widgets[i] = zs::Factory::make(i);
    zs::Factory::fill_all();
    return 0;
}
