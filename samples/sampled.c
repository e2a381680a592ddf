/* sampled: known totals for sampled recording (`zmtrace run --sample BYTES`), as
 * src/cli/tests/sampling.rs asserts them:
 *
 *   function   allocations  bytes                 live at exit         leak class
 *   zs_churn     1,000,000  64 B each = 64,000,000     0                 (freed at once)
 *   zs_lose          1,000  4096 B each = 4,096,000   1,000 (4,096,000)  definitely lost
 *   zs_keep            100  64 B each = 6,400           100 (6,400)      still reachable
 *
 * With `--sample 1` every block is recorded; at larger intervals the figures are estimates whose
 * variance the test derives from these sizes. Nothing else allocates (no stdio, no threads).
 * Exits 0 (20..99: a libc assumption failed).
 */
#include <stdlib.h>
#include <string.h>

#include "zs_common.h"

void *g_keep[100];
void *volatile g_sink;

ZS_FN void zs_churn(void)
{
    for (int i = 0; i < 1000000; i++) {
        char *p = malloc(64);
        ZS_CHECK(20, p != NULL);
        p[0] = 1;
        g_sink = p;
        free(p);
    }
    g_sink = NULL;
}

ZS_FN void zs_lose(void)
{
    for (int i = 0; i < 1000; i++) {
        char *p = malloc(4096);
        ZS_CHECK(21, p != NULL);
        p[0] = 2;
        g_sink = p;
    }
    g_sink = NULL;
}

ZS_FN void zs_keep(void)
{
    for (int i = 0; i < 100; i++) {
        g_keep[i] = malloc(64);
        ZS_CHECK(22, g_keep[i] != NULL);
    }
}

int main(void)
{
    zs_churn();
    ZS_KEEP();
    zs_lose();
    ZS_KEEP();
    zs_keep();
    ZS_KEEP();
    return 0;
}
