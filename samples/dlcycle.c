/* dlcycle: a plugin loaded, used and unloaded again and again, in two builds whose code differs
 * (other frame sizes, other call chains) and which the loader usually maps at the same address
 * one after the other. An unwinder that kept the rules of an unloaded plugin would apply them to
 * the next one's code at the same addresses.
 *
 * The same file is the plugin, built with -DZS_PLUGIN=1 or -DZS_PLUGIN=2 (-shared -fPIC
 * -fvisibility=hidden): it
 * exports zs_plug_run(n), which allocates and frees one block in zs_plug_same (the same code at
 * the same address in both builds, with frames of different sizes), then one at the bottom of a
 * chain of n calls (a different chain in each build).
 *
 * Usage: dlcycle PLUGIN1 PLUGIN2 CYCLES CALLS. Each cycle loads PLUGIN1 or PLUGIN2 in turn
 * (RTLD_NOW), calls zs_plug_run CALLS times from zs_call_plugin, and unloads it. Prints
 * "cycles N calls C same_address S": S is how many loads found the plugin where the previous
 * one (the other build) had been. The sample's allocations are the plugin's: 2 * CYCLES * CALLS
 * mallocs and as many frees, each under zs_call_plugin.
 */
#ifdef ZS_PLUGIN
#include <stdlib.h>

#include "zs_common.h"

/* Built with -fvisibility=hidden: only zs_plug_run is exported, so both builds have the same
 * dynamic symbols and their code starts at the same offset. */
#define ZS_EXPORT __attribute__((visibility("default")))

void *volatile zs_plug_sink;

/* First in both builds, the same code but for the size of its frame: its call to malloc returns
 * to the same address in both, with another CFA (a rule kept from the other build would find
 * the wrong caller). */
#if ZS_PLUGIN == 1
#define ZS_PAD 24
#else
#define ZS_PAD 88
#endif
ZS_FN void zs_plug_same(int n)
{
    volatile char pad[ZS_PAD];
    pad[ZS_PAD - 1] = (char)n;
    void *p = malloc(16 + n);
    zs_plug_sink = p;
    free(p);
    zs_plug_sink = (void *)(long)pad[0];
    ZS_KEEP();
}

#if ZS_PLUGIN == 1
ZS_FN void zs_plug_leaf(int n)
{
    void *p = malloc(32 + n);
    zs_plug_sink = p;
    free(p);
    ZS_KEEP();
}

ZS_FN void zs_plug_mid(int n)
{
    volatile char pad[40];
    pad[n % 40] = 1;
    if (n <= 1)
        zs_plug_leaf(n);
    else
        zs_plug_mid(n - 1);
    zs_plug_sink = (void *)(long)pad[0];
    ZS_KEEP();
}

ZS_EXPORT ZS_FN void zs_plug_run(int n)
{
    zs_plug_same(n);
    zs_plug_mid(n);
    ZS_KEEP();
}
#else
/* Another layout: code first that the other build does not have, bigger frames, two
 * functions calling each other. */
ZS_FN long zs_plug_filler(long x)
{
    long s = 0;
    for (long i = 0; i < x; i++)
        s += i * x ^ (s >> 3);
    return s;
}

ZS_FN void zs_plug_bottom(int n)
{
    void *p = malloc(64 + n);
    zs_plug_sink = p;
    free(p);
    ZS_KEEP();
}

ZS_FN void zs_plug_odd(int n);
ZS_FN void zs_plug_even(int n)
{
    volatile char pad[600];
    pad[n % 600] = 2;
    if (n <= 1)
        zs_plug_bottom(n);
    else
        zs_plug_odd(n - 1);
    zs_plug_sink = (void *)(long)pad[1];
    ZS_KEEP();
}

ZS_FN void zs_plug_odd(int n)
{
    volatile char pad[200];
    pad[n % 200] = 3;
    if (n <= 1)
        zs_plug_bottom(n);
    else
        zs_plug_even(n - 1);
    zs_plug_sink = (void *)(long)pad[2];
    ZS_KEEP();
}

ZS_EXPORT ZS_FN void zs_plug_run(int n)
{
    zs_plug_sink = (void *)zs_plug_filler(n);
    zs_plug_same(n);
    zs_plug_even(n);
    ZS_KEEP();
}
#endif

#else /* the program */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>

#include "zs_common.h"

ZS_FN void zs_call_plugin(void (*run)(int), int n)
{
    run(n);
    ZS_KEEP();
}

int main(int argc, char **argv)
{
    ZS_CHECK(20, argc == 5);
    long cycles = atol(argv[3]), calls = atol(argv[4]), same = 0;
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
        for (long i = 0; i < calls; i++)
            zs_call_plugin(run, 3 + (int)(i % 7));
        ZS_CHECK(23, dlclose(h) == 0);
    }
    printf("cycles %ld calls %ld same_address %ld\n", cycles, cycles * calls, same);
    return 0;
}
#endif
