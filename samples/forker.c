/* forker: forks while another thread is allocating; the children allocate known blocks and end
 * through exit() or _exit().
 *
 * Usage: forker           (prints nothing; exits 0 when every child ended as expected;
 *                          20..99 = a check failed)
 *
 * The parent keeps two blocks from zs_parent_keep (512 B and 768 B) live across the forks, starts
 * zs_churn (a thread that mallocs and frees in a loop until told to stop), then forks CHILDREN
 * children one after another while zs_churn runs, without waiting in between, and waits for all.
 * Child i (0-based):
 *   - zs_child_work: malloc(1000 + i) (a marker telling the children apart), 3 x malloc(32),
 *     calloc(2, 16); frees two of the 32-byte blocks;
 *   - frees the inherited 512-byte block of zs_parent_keep (a free of an inherited block);
 *   - even i: exit(0); odd i: _exit(3).
 *
 * The parent sleeps 100 ms between starting zs_churn and the first fork, 5 ms between forks.
 *
 * Expected, as src/cli/tests/fork.rs asserts:
 *   1 + CHILDREN dumps: the parent (origin Start) and one per child (origin Fork, ppid and
 *   parent_pid = the parent's pid).
 *   Parent, events of zs_parent_*: 2 malloc (512 + 768 bytes), 2 frees, nothing leaked;
 *           events of zs_churn: as many frees as mallocs, nothing leaked.
 *   Child i, events of zs_child_*: malloc 4 [1000 + i + 3 * 32 bytes], calloc 1 [32 bytes],
 *           2 frees; leaked 3 blocks, 1000 + i + 64 bytes. Its inherited blocks include both
 *           zs_parent_keep blocks (512 and 768 bytes, at the addresses the parent got), and it
 *           frees the 512-byte one. End: exit for even i, _exit with status 3 for odd i.
 *   Times: a child starts after the parent's zs_parent_keep blocks were allocated, and all its
 *   events happen before the parent's zs_parent_release (which waits for every child).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "zs_common.h"

#define CHILDREN 6

void *g_keep[2];
void *g_child_blocks[5];
void *volatile g_sink;
atomic_int g_stop;
atomic_long g_churned;

ZS_FN void zs_parent_keep(void)
{
    g_keep[0] = malloc(512);
    g_keep[1] = malloc(768);
    ZS_CHECK(20, g_keep[0] != NULL && g_keep[1] != NULL);
    memset(g_keep[0], 0x12, 512);
    memset(g_keep[1], 0x34, 768);
}

ZS_FN void zs_parent_release(void)
{
    free(g_keep[0]);
    free(g_keep[1]);
    g_keep[0] = g_keep[1] = NULL;
}

/* Allocates and frees in bursts until told to stop: forks happen while it is inside malloc. */
ZS_FN void *zs_churn(void *arg)
{
    (void)arg;
    long n = 0;
    while (!atomic_load(&g_stop)) {
        for (int i = 0; i < 64; i++) {
            char *p = malloc(16 + (size_t)(n % 200));
            ZS_CHECK(21, p != NULL);
            p[0] = (char)n;
            g_sink = p;
            free(p);
            n++;
        }
        sleep_ms(1);
    }
    atomic_store(&g_churned, n);
    return NULL;
}

ZS_FN void zs_child_work(int i)
{
    g_child_blocks[0] = malloc(1000 + (size_t)i);
    for (int k = 1; k <= 3; k++)
        g_child_blocks[k] = malloc(32);
    g_child_blocks[4] = calloc(2, 16);
    for (int k = 0; k < 5; k++) {
        ZS_CHECK(30, g_child_blocks[k] != NULL);
        memset(g_child_blocks[k], 0x56, 32);
    }
    free(g_child_blocks[1]);
    free(g_child_blocks[2]);
    g_child_blocks[1] = g_child_blocks[2] = NULL;
}

/* Not a zs_ function: fork() itself must not count as the sample's. */
static void child_main(int i)
{
    zs_child_work(i);
    free(g_keep[0]); /* inherited from the parent */
    g_keep[0] = NULL;
    if (i % 2 == 0)
        exit(0);
    _exit(3);
}

int main(void)
{
    zs_parent_keep();

    pthread_t churn;
    ZS_CHECK(40, pthread_create(&churn, NULL, zs_churn, NULL) == 0);
    /* Let the churn get going. The pause also separates the parent's start from the forks, so
     * the tests can tell timestamps counted from the wrong start. */
    sleep_ms(100);

    pid_t pids[CHILDREN];
    for (int i = 0; i < CHILDREN; i++) {
        pids[i] = fork();
        ZS_CHECK(41, pids[i] >= 0);
        if (pids[i] == 0)
            child_main(i);
        sleep_ms(5);
    }

    int failed = 0;
    for (int i = 0; i < CHILDREN; i++) {
        int status = 0;
        ZS_CHECK(42, waitpid(pids[i], &status, 0) == pids[i]);
        int want = i % 2 == 0 ? 0 : 3;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != want) {
            fprintf(stderr, "forker: child %d (pid %d) ended with wait status %#x\n", i,
                    (int)pids[i], status);
            failed = 1;
        }
    }

    atomic_store(&g_stop, 1);
    ZS_CHECK(43, pthread_join(churn, NULL) == 0);
    ZS_CHECK(44, atomic_load(&g_churned) > 0);
    zs_parent_release();
    return failed ? 45 : 0;
}
