/* forksampled: a sampled recording that forks, for src/cli/tests/sampling.rs. Single-threaded,
 * no stdio (nothing else allocates).
 *
 *   zs_keep        2,000 x malloc(4096) kept live across the fork (inherited by the child)
 *   fork
 *   zs_same        in parent and child alike: 50,000 x malloc(100 + i % 997) then free, the same
 *                  sizes in the same order (so one countdown would sample the same blocks in both)
 *   zs_lose        child only: 10 x malloc(2000), lost (definitely)
 *   zs_drop        child only: frees every block of zs_keep, then _exit(0)
 *   zs_drop        parent, after waiting for the child: the same, then exit 0
 *
 * So the child ends with 10 blocks / 20,000 bytes definitely lost and nothing else of its own;
 * the parent with nothing. Exits 0 when the child did (20..99: a libc assumption failed).
 */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zs_common.h"

#define KEEP 2000
#define SAME 50000
#define LOSE 10

void *g_keep[KEEP];
void *volatile g_sink;

ZS_FN void zs_keep(void)
{
    for (int i = 0; i < KEEP; i++) {
        g_keep[i] = malloc(4096);
        ZS_CHECK(20, g_keep[i] != NULL);
    }
}

ZS_FN void zs_same(void)
{
    for (int i = 0; i < SAME; i++) {
        char *p = malloc(100 + i % 997);
        ZS_CHECK(21, p != NULL);
        p[0] = 1;
        g_sink = p;
        free(p);
    }
    g_sink = NULL;
}

ZS_FN void zs_lose(void)
{
    for (int i = 0; i < LOSE; i++) {
        char *p = malloc(2000);
        ZS_CHECK(22, p != NULL);
        p[0] = 2;
        g_sink = p;
    }
    g_sink = NULL;
}

ZS_FN void zs_drop(void)
{
    for (int i = 0; i < KEEP; i++) {
        free(g_keep[i]);
        g_keep[i] = NULL;
    }
}

int main(void)
{
    zs_keep();
    ZS_KEEP();
    pid_t child = fork();
    ZS_CHECK(23, child >= 0);
    zs_same();
    ZS_KEEP();
    if (child == 0) {
        zs_lose();
        ZS_KEEP();
        zs_drop();
        ZS_KEEP();
        _exit(0);
    }
    int status = 0;
    ZS_CHECK(24, waitpid(child, &status, 0) == child);
    zs_drop();
    ZS_KEEP();
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 25;
}
