/* forkdl: forks while another thread is inside dl_iterate_phdr (which holds the loader's lock,
 * a lock glibc does not reset in a forked child), and the child ends with _exit, where the
 * recorder checks for leaks. That check must not ask the loader in the child: it would wait
 * forever for a lock whose holder does not exist there.
 *
 * Usage: forkdl        (exits 0 when the child ended by itself within 10 s; 3 when it hung and
 *                       was killed; 20..99 = a check failed)
 *
 * zs_walker (a thread) enters dl_iterate_phdr and, in its first callback, says so and waits
 * 300 ms before returning. The main thread forks as soon as the walker is inside. The child
 * allocates zs_child_block (64 bytes, kept in a global) and calls _exit(0). As
 * src/cli/tests/fork.rs asserts: the run exits 0, and the child's dump ends with reason _exit
 * and a leak check that finds zs_child_block's 64 bytes still reachable.
 */
#define _GNU_SOURCE
#include <link.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "zs_common.h"

static atomic_int inside;
void *volatile g_kept;

static int callback(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)info, (void)size, (void)data;
    if (!atomic_load(&inside)) {
        atomic_store(&inside, 1);
        struct timespec t = {0, 300 * 1000 * 1000};
        nanosleep(&t, NULL);
    }
    return 0;
}

ZS_FN static void *zs_walker(void *arg)
{
    (void)arg;
    dl_iterate_phdr(callback, NULL);
    return NULL;
}

ZS_FN static void zs_child_block(void)
{
    g_kept = malloc(64);
}

int main(void)
{
    pthread_t t;
    if (pthread_create(&t, NULL, zs_walker, NULL) != 0)
        sample_check_failed(20, "pthread_create");
    while (!atomic_load(&inside))
        sched_yield();
    pid_t pid = fork();
    if (pid < 0)
        sample_check_failed(21, "fork");
    if (pid == 0) {
        zs_child_block();
        _exit(0);
    }
    int status = 0;
    for (int i = 0; i < 1000; i++) {
        if (waitpid(pid, &status, WNOHANG) == pid) {
            pthread_join(t, NULL);
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                sample_check_failed(22, "the child did not exit 0");
            return 0;
        }
        struct timespec w = {0, 10 * 1000 * 1000};
        nanosleep(&w, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return 3;
}
