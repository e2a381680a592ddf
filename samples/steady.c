/* steady: a long-running allocation load with a bounded live set: each step allocates a block
 * of 16..1039 bytes and frees the one made WINDOW steps earlier, from a few call sites. Prints
 * "done N" on stdout when finished (the tests check the program ran to the end).
 *
 * Usage: steady [STEPS] (default 1,000,000)
 * The sample's events: STEPS mallocs and STEPS - WINDOW frees (the last WINDOW blocks are freed
 * at the end by zs_drain: STEPS frees in all); no leak.
 */
#include <stdio.h>
#include <stdlib.h>

#include "zs_common.h"

#define WINDOW 1000
static void *ring[WINDOW];

ZS_FN void *zs_small(unsigned x) { return malloc(16 + x % 64); }
ZS_FN void *zs_medium(unsigned x) { return malloc(80 + x % 400); }
ZS_FN void *zs_large(unsigned x) { return malloc(480 + x % 560); }

ZS_FN void zs_step(long i, unsigned x)
{
    void **slot = &ring[i % WINDOW];
    free(*slot);
    switch (x % 3) {
    case 0: *slot = zs_small(x); break;
    case 1: *slot = zs_medium(x); break;
    default: *slot = zs_large(x); break;
    }
    ZS_CHECK(20, *slot != NULL);
}

ZS_FN void zs_drain(void)
{
    for (int i = 0; i < WINDOW; i++) {
        free(ring[i]);
        ring[i] = NULL;
    }
    ZS_KEEP();
}

int main(int argc, char **argv)
{
    long steps = argc > 1 ? atol(argv[1]) : 1000000;
    unsigned x = 1;
    for (long i = 0; i < steps; i++) {
        x = x * 1103515245u + 12345u;
        zs_step(i, x >> 8);
    }
    zs_drain();
    printf("done %ld\n", steps);
    return 0;
}
