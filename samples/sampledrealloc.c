/* sampledrealloc: known totals for sampled recording of reallocs (`zmtrace run --sample BYTES`),
 * as src/cli/tests/integration/sampling.rs asserts them:
 *
 *   function   calls     what                                  live at exit
 *   zs_small   200,000   malloc(16)                            0
 *   zs_grow    200,000   realloc of zs_small's block to 512 B  0 (freed by main)
 *   zs_lost      1,000   realloc of a zs_small block to 512 B  1,000 (512,000 B), lost
 *
 * A realloc of an unsampled block is, to sampled recording, a new block of its new size: the
 * report estimates 200,000 blocks for zs_grow. Exits 0.
 */
#include <stdlib.h>

#include "zs_common.h"

void *volatile g_sink;

ZS_FN void *zs_small(void)
{
    char *p = malloc(16);
    ZS_CHECK(20, p != NULL);
    p[0] = 1;
    return p;
}

ZS_FN void *zs_grow(void *p)
{
    char *q = realloc(p, 512);
    ZS_CHECK(21, q != NULL);
    q[511] = 2;
    return q;
}

ZS_FN void *zs_lost(void *p)
{
    char *q = realloc(p, 512);
    ZS_CHECK(22, q != NULL);
    q[511] = 3;
    return q;
}

int main(void)
{
    for (int i = 0; i < 200000; i++) {
        void *p = zs_small();
        ZS_KEEP();
        p = zs_grow(p);
        ZS_KEEP();
        g_sink = p;
        free(p);
    }
    for (int i = 0; i < 1000; i++) {
        void *p = zs_small();
        ZS_KEEP();
        g_sink = zs_lost(p);
        ZS_KEEP();
    }
    g_sink = NULL;
    return 0;
}
