/* forkrealloc: a sampled recording's forked child that inherits reallocated blocks, for
 * src/cli/tests/integration/sampling.rs. Single-threaded, no stdio (nothing else allocates).
 *
 *   zs_small   20,000 x malloc(16)
 *   zs_grow    each of them realloc'd to 4096 B, before the fork; all kept live across it
 *   fork
 *   zs_shrink  child only: reallocs the first 10,000 inherited blocks to 64 B, then _exit(0)
 *              with every block still live (reachable from g_blocks)
 *   zs_drop    parent, after waiting for the child: frees all 20,000, exits 0
 *
 * So the child ends with 10,000 blocks of 4096 B from zs_grow (inherited as they were) and
 * 10,000 of 64 B from zs_shrink live, after 10,000 reallocs of inherited 4096 B blocks. Exits 0
 * when the child did (20..99: a libc assumption failed).
 */
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zs_common.h"

#define N 20000

void *g_blocks[N];

ZS_FN void zs_small(void)
{
    for (int i = 0; i < N; i++) {
        char *p = malloc(16);
        ZS_CHECK(20, p != NULL);
        p[0] = 1;
        g_blocks[i] = p;
    }
}

ZS_FN void zs_grow(void)
{
    for (int i = 0; i < N; i++) {
        char *q = realloc(g_blocks[i], 4096);
        ZS_CHECK(21, q != NULL);
        q[4095] = 2;
        g_blocks[i] = q;
    }
}

ZS_FN void zs_shrink(void)
{
    for (int i = 0; i < N / 2; i++) {
        char *q = realloc(g_blocks[i], 64);
        ZS_CHECK(22, q != NULL);
        q[63] = 3;
        g_blocks[i] = q;
    }
}

ZS_FN void zs_drop(void)
{
    for (int i = 0; i < N; i++) {
        free(g_blocks[i]);
        g_blocks[i] = NULL;
    }
}

int main(void)
{
    zs_small();
    ZS_KEEP();
    zs_grow();
    ZS_KEEP();
    pid_t child = fork();
    ZS_CHECK(23, child >= 0);
    if (child == 0) {
        zs_shrink();
        ZS_KEEP();
        _exit(0);
    }
    int status = 0;
    ZS_CHECK(24, waitpid(child, &status, 0) == child);
    zs_drop();
    ZS_KEEP();
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 25;
}
