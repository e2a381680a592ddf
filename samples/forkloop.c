/* forkloop: forks many times while two threads allocate and free continuously, so that many forks
 * happen while another thread is inside malloc or free (and inside the tracer's recorder). A
 * child of a multi-threaded process has only the forking thread: any lock another thread held at
 * the fork stays locked forever in the child unless the tracer takes care of it.
 *
 * Usage: forkloop N        (N forks, N >= 1)
 *
 * Exit status: 0 when every child exited 0 in time; 3 when a child did not end within
 * CHILD_TIMEOUT_MS (a deadlock: it is killed with SIGKILL and the message says which); 4 when a
 * child ended otherwise than with status 0; 20..99 = a check failed.
 *
 * The parent starts two zs_spin threads (malloc/free of 16..527 bytes, a few blocks kept live,
 * without pause; sched_yield every 16 blocks) and waits until both have allocated, then, for i = 0..N-1: fork; the child runs
 * zs_child(i) and ends with exit(0) for even i and _exit(0) for odd i; the parent waits for that
 * child (waitpid with SIGCHLD awaited by sigtimedwait, at most CHILD_TIMEOUT_MS) before the next fork. Then it stops and joins
 * the threads and prints "forkloop: N children ok" on stdout.
 *
 * Child i, events under zs_child (as src/cli/tests/forks.rs asserts): malloc(1000 + i) (a marker
 * telling the children apart), malloc(64), calloc(4, 8) [32 bytes], then free of the 64-byte block:
 * malloc 2 [1064 + i bytes], calloc 1 [32 bytes], 1 free; 2 blocks leaked, 1032 + i bytes.
 * The End record: exit for even i, _exit with status 0 for odd i.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "zs_common.h"

#define SPINNERS 2
#define KEEP 8
#define CHILD_TIMEOUT_MS 10000

atomic_int g_stop;
atomic_long g_spun[SPINNERS];
void *g_keep[SPINNERS][KEEP];
void *g_child_blocks[3];

ZS_FN void *zs_spin(void *arg)
{
    int id = (int)(intptr_t)arg;
    unsigned long n = 0;
    while (!atomic_load_explicit(&g_stop, memory_order_relaxed)) {
        char *p = malloc(16 + n % 512);
        ZS_CHECK(21, p != NULL);
        p[0] = (char)n;
        /* Keep a few blocks live for a while: the children inherit them. */
        int k = (int)(n % KEEP);
        free(g_keep[id][k]);
        g_keep[id][k] = p;
        n++;
        atomic_store_explicit(&g_spun[id], (long)n, memory_order_relaxed);
        /* Without a pause, but giving way now and then: on a small machine two spinning
         * threads would otherwise starve the forking thread and the children (25 ms a fork
         * traced on 2 cores instead of 6) and fill the dump with millions of events. */
        if (n % 16 == 0)
            sched_yield();
    }
    for (int k = 0; k < KEEP; k++) {
        free(g_keep[id][k]);
        g_keep[id][k] = NULL;
    }
    return NULL;
}

ZS_FN void zs_child(int i)
{
    g_child_blocks[0] = malloc(1000 + (size_t)i);
    g_child_blocks[1] = malloc(64);
    g_child_blocks[2] = calloc(4, 8);
    ZS_CHECK(22, g_child_blocks[0] && g_child_blocks[1] && g_child_blocks[2]);
    memset(g_child_blocks[0], i, 1000 + (size_t)i);
    free(g_child_blocks[1]);
    g_child_blocks[1] = NULL;
    ZS_KEEP();
}

/* Waits for `pid` at most CHILD_TIMEOUT_MS; returns its status, or -1 after killing it.
 * SIGCHLD is blocked (see main): sigtimedwait wakes up as soon as the child ends. */
static int wait_bounded(pid_t pid)
{
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        int status;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return status;
        ZS_CHECK(23, r == 0 || (r < 0 && errno == EINTR));
        clock_gettime(CLOCK_MONOTONIC, &now);
        long waited_ms = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
        if (waited_ms >= CHILD_TIMEOUT_MS)
            break;
        struct timespec ts = {0, 10 * 1000000L}; /* re-check at least every 10 ms */
        sigtimedwait(&chld, NULL, &ts);
    }
    kill(pid, SIGKILL);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    return -1;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 0;
    ZS_CHECK(20, n >= 1);
    /* Blocked in every thread (the spinners inherit the mask): SIGCHLD stays pending for
     * wait_bounded's sigtimedwait. The children unblock it. */
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    ZS_CHECK(27, pthread_sigmask(SIG_BLOCK, &chld, NULL) == 0);
    pthread_t th[SPINNERS];
    for (int s = 0; s < SPINNERS; s++)
        ZS_CHECK(24, pthread_create(&th[s], NULL, zs_spin, (void *)(intptr_t)s) == 0);
    for (int s = 0; s < SPINNERS; s++)
        while (atomic_load(&g_spun[s]) < 1000)
            sleep_ms(1);

    int failed = 0;
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        ZS_CHECK(25, pid >= 0);
        if (pid == 0) {
            pthread_sigmask(SIG_UNBLOCK, &chld, NULL);
            zs_child(i);
            if (i % 2 == 0)
                exit(0);
            _exit(0);
        }
        int status = wait_bounded(pid);
        if (status == -1) {
            fprintf(stderr, "forkloop: child %d (pid %d) did not end within %d ms: deadlock\n", i,
                    (int)pid, CHILD_TIMEOUT_MS);
            failed = 3;
            break;
        }
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "forkloop: child %d (pid %d) ended with wait status %#x\n", i,
                    (int)pid, status);
            failed = 4;
        }
    }
    atomic_store(&g_stop, 1);
    for (int s = 0; s < SPINNERS; s++)
        ZS_CHECK(26, pthread_join(th[s], NULL) == 0);
    if (failed)
        return failed;
    printf("forkloop: %d children ok\n", n);
    return 0;
}
