/* churn: reallocs with known patterns, temporaries, a peak and leaks, for the analyzer's
 * reports. Single-threaded; prints nothing; exits 0 (20..99 = a libc assumption failed).
 *
 * The truth, per function, as src/cli/tests/analyze.rs asserts it:
 *   zs_grow_fixed   malloc(16), then 1000 reallocs, each +16 bytes (to 16016): grew 1000,
 *                   shrank 0, longest chain 1000, fixed step of 16; the block is leaked
 *                   (16016 bytes, last stack = its realloc's)
 *   zs_grow_double  malloc(8), then 12 reallocs doubling it (to 32768): grew 12, geometric x2;
 *                   freed
 *   zs_shrink       malloc(4096), then 3 reallocs halving it (to 512): shrank 3; leaked
 *                   (512 bytes, via realloc)
 *   zs_temp         50 x (malloc(32); free): 50 allocations, all 50 temporary
 *   zs_pairs        20 x (a = malloc(40); b = malloc(41); free(a); free(b)): 40 allocations,
 *                   20 temporary (each b: nothing allocated between it and its free; a is not)
 *   zs_peak         10 blocks of 100 KiB live together, then freed: 1,024,000 bytes live at the
 *                   peak heap, which is the highest the heap gets; 1 temporary (the last block:
 *                   nothing is allocated between it and its free)
 * A block is temporary when its thread allocates (or reallocates) nothing between its
 * allocation and its free; a reallocated block never is.
 *   zs_leak         3 x malloc(1000), leaked: 3 blocks, 3000 bytes
 * Leaked in all by the sample: 5 blocks, 16016 + 512 + 3000 = 19528 bytes.
 */
#include <stdlib.h>
#include <string.h>

#include "zs_common.h"

void *g_keep[8];
void *volatile g_sink;

ZS_FN void zs_grow_fixed(void)
{
    char *p = malloc(16);
    ZS_CHECK(20, p != NULL);
    for (size_t n = 32; n <= 16016; n += 16) {
        p = realloc(p, n);
        ZS_CHECK(21, p != NULL);
        p[n - 1] = 1;
    }
    g_keep[0] = p;
}

ZS_FN void zs_grow_double(void)
{
    char *p = malloc(8);
    ZS_CHECK(22, p != NULL);
    for (size_t n = 16; n <= 32768; n *= 2) {
        p = realloc(p, n);
        ZS_CHECK(23, p != NULL);
        p[n - 1] = 1;
    }
    g_sink = p;
    free(p);
    ZS_KEEP();
}

ZS_FN void zs_shrink(void)
{
    char *p = malloc(4096);
    ZS_CHECK(24, p != NULL);
    for (size_t n = 2048; n >= 512; n /= 2) {
        p = realloc(p, n);
        ZS_CHECK(25, p != NULL);
    }
    g_keep[1] = p;
}

ZS_FN void zs_temp(void)
{
    for (int i = 0; i < 50; i++) {
        void *p = malloc(32);
        ZS_CHECK(26, p != NULL);
        g_sink = p;
        free(p);
    }
    ZS_KEEP();
}

ZS_FN void zs_pairs(void)
{
    for (int i = 0; i < 20; i++) {
        void *a = malloc(40);
        void *b = malloc(41);
        ZS_CHECK(27, a && b);
        g_sink = a;
        g_sink = b;
        free(a);
        free(b);
    }
    ZS_KEEP();
}

ZS_FN void zs_peak(void)
{
    void *blocks[10];
    for (int i = 0; i < 10; i++) {
        blocks[i] = malloc(100 * 1024);
        ZS_CHECK(28, blocks[i] != NULL);
        memset(blocks[i], i, 64);
        g_sink = blocks[i];
    }
    for (int i = 0; i < 10; i++)
        free(blocks[i]);
    ZS_KEEP();
}

ZS_FN void zs_leak(void)
{
    for (int i = 0; i < 3; i++) {
        g_keep[2 + i] = malloc(1000);
        ZS_CHECK(29, g_keep[2 + i] != NULL);
    }
    ZS_KEEP();
}

int main(void)
{
    zs_grow_fixed();
    zs_grow_double();
    zs_shrink();
    zs_temp();
    zs_pairs();
    zs_peak();
    zs_leak();
    return 0;
}
