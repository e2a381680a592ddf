/* dlplug: two builds of a plugin, each loaded, used and unloaded in turn, well within 100 ms,
 * which the loader maps at the same address one after the other. Each build leaks from
 * functions of its own names: a symbolizer that ignored when a module was mapped would name
 * one build's leaks after the other's functions, and one that recorded modules only when they
 * lived long enough would print raw addresses.
 *
 * The same file is the plugin, built with -DZS_PLUGIN=1 (the "A" build) or -DZS_PLUGIN=2 (the
 * "B" build), -shared -fPIC -fvisibility=hidden. Both builds have the same layout: the leaking
 * function first in .text, the same code but for the sizes, so its call to malloc returns to the
 * same address in both, and the stacks of the two builds' leaks are the same return addresses.
 *
 *   build A: constructor zs_plugA_init leaks 1000 bytes; zs_plug_run(n) leaks 100 bytes from
 *            zs_plugA_leak, n times.
 *   build B: constructor zs_plugB_init leaks 2000 bytes; zs_plug_run(n) leaks 300 bytes from
 *            zs_plugB_leak, n times.
 *
 * Usage: dlplug PLUGIN_A PLUGIN_B CYCLES CALLS: cycle c loads PLUGIN_A (c even) or PLUGIN_B
 * (c odd) with RTLD_NOW, calls zs_plug_run(CALLS) and unloads it. Prints "cycles N same_address
 * S": S is how many loads found the plugin where the previous one had been. Every leaked block
 * was held only in the plugin's own data, which goes with it: all of them are definitely lost.
 */
#ifdef ZS_PLUGIN
#include <stdlib.h>

#include "zs_common.h"

#define ZS_EXPORT __attribute__((visibility("default")))

void *volatile zs_plug_sink;

#if ZS_PLUGIN == 1
#define ZS_LEAK zs_plugA_leak
#define ZS_INIT zs_plugA_init
#define ZS_LEAK_BYTES 100
#define ZS_INIT_BYTES 1000
#else
#define ZS_LEAK zs_plugB_leak
#define ZS_INIT zs_plugB_init
#define ZS_LEAK_BYTES 300
#define ZS_INIT_BYTES 2000
#endif

/* First in .text in both builds: its malloc returns to the same address in both. */
ZS_FN void ZS_LEAK(void)
{
    zs_plug_sink = malloc(ZS_LEAK_BYTES);
    ZS_KEEP();
}

ZS_EXPORT ZS_FN void zs_plug_run(int n)
{
    for (int i = 0; i < n; i++)
        ZS_LEAK();
    ZS_KEEP();
}

/* Runs inside dlopen, before dlopen returns: its allocation comes before any "loaded" the
 * program could observe. */
__attribute__((constructor)) ZS_FN void ZS_INIT(void)
{
    zs_plug_sink = malloc(ZS_INIT_BYTES);
    ZS_KEEP();
}

#else /* the program */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>

#include "zs_common.h"

int main(int argc, char **argv)
{
    ZS_CHECK(20, argc == 5);
    long cycles = atol(argv[3]), same = 0;
    int calls = atoi(argv[4]);
    ElfW(Addr) last = 0;
    for (long c = 0; c < cycles; c++) {
        void *h = dlopen(argv[1 + c % 2], RTLD_NOW | RTLD_LOCAL);
        ZS_CHECK(21, h != NULL);
        void (*run)(int) = (void (*)(int))dlsym(h, "zs_plug_run");
        ZS_CHECK(22, run != NULL);
        struct link_map *lm = NULL;
        ZS_CHECK(24, dlinfo(h, RTLD_DI_LINKMAP, &lm) == 0);
        if (c > 0 && lm->l_addr == last)
            same++;
        last = lm->l_addr;
        run(calls);
        ZS_CHECK(23, dlclose(h) == 0);
    }
    printf("cycles %ld same_address %ld\n", cycles, same);
    return 0;
}
#endif
