/* diffable: a program whose allocations scale with its argument, for `zmtrace diff`.
 *
 * Usage: diffable N    (1 <= N <= 10000; prints nothing, exits 0; 20..99: a libc assumption failed)
 *
 * What it does, per site, in order (src/cli/tests/diff.rs asserts the deltas between two N):
 *
 *   zs_same          5 mallocs of 100 B, each freed at once           the same for every N
 *   zs_grow          malloc(8), then N reallocs growing it by 8 B each (to 8 * (N + 1)), then freed:
 *                    the malloc's site has 1 allocation of 8 B; the realloc's site has N reallocs
 *                    and 8 * (2 + 3 + ... + (N + 1)) bytes
 *   zs_fixed         10 mallocs of 32 B, kept until after the peak
 *   zs_scaled        N mallocs of 64 B, kept until after the peak
 *                    the heap peaks when the last of them is allocated: 320 + 64 * N bytes
 *   (both freed)
 *   zs_leak_n        N mallocs of 16 B whose pointers are dropped: definitely lost at exit
 */
#include <stdlib.h>
#include <string.h>

#include "zs_common.h"

void *volatile g_sink;
void *g_fixed[10];
void **g_scaled;

ZS_FN void zs_same(void)
{
    for (int i = 0; i < 5; i++) {
        g_sink = malloc(100);
        ZS_CHECK(20, g_sink != NULL);
        free(g_sink);
    }
}

ZS_FN void zs_grow(int n)
{
    char *p = malloc(8);
    ZS_CHECK(21, p != NULL);
    for (int i = 0; i < n; i++) {
        p = realloc(p, 8 * (i + 2));
        ZS_CHECK(22, p != NULL);
        p[8 * (i + 2) - 1] = 1;
    }
    g_sink = p;
    free(p);
}

ZS_FN void zs_fixed(void)
{
    for (int i = 0; i < 10; i++) {
        g_fixed[i] = malloc(32);
        ZS_CHECK(23, g_fixed[i] != NULL);
    }
}

ZS_FN void zs_scaled(int n)
{
    for (int i = 0; i < n; i++) {
        g_scaled[i] = malloc(64);
        ZS_CHECK(24, g_scaled[i] != NULL);
    }
}

ZS_FN void zs_leak_n(int n)
{
    for (int i = 0; i < n; i++) {
        void *volatile p = malloc(16);
        ZS_CHECK(25, p != NULL);
        memset(p, 0x42, 16);
    }
}

/* Overwrites the dead stack below main's frame (see reach.c). */
ZS_FN void zs_scrub_stack(void)
{
    volatile char pad[64 * 1024];
    for (size_t i = 0; i < sizeof pad; i++)
        pad[i] = 0;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 0;
    if (n < 1 || n > 10000)
        sample_check_failed(26, "usage: diffable N (1 <= N <= 10000)");
    /* Not malloc'ed: the array must not count at any site. */
    static void *scaled[10000];
    g_scaled = scaled;

    zs_same();
    ZS_KEEP();
    zs_grow(n);
    ZS_KEEP();
    zs_fixed();
    ZS_KEEP();
    zs_scaled(n);
    ZS_KEEP();
    /* The pointers go with the blocks: left behind, they would point into the memory malloc hands
     * zs_leak_n next, and keep some of its blocks reachable (one run in twenty did). */
    for (int i = 0; i < 10; i++) {
        free(g_fixed[i]);
        g_fixed[i] = NULL;
    }
    for (int i = 0; i < n; i++) {
        free(g_scaled[i]);
        g_scaled[i] = NULL;
    }
    zs_leak_n(n);
    ZS_KEEP();
    zs_scrub_stack();
    ZS_KEEP();
    return 0;
}
