/* busy: threads that allocate as fast as they can, for the tests of a process that ends while
 * it allocates heavily (about 2 million mallocs a second per thread, traced).
 *
 * Usage: busy signal COUNTS   2 threads (zs_spin) malloc and free blocks of 16..1039 bytes
 *                             without pause; each counts its allocations in a file COUNTS that it
 *                             maps shared (one 64-bit counter per thread, updated after every
 *                             malloc returns), so that whoever reads COUNTS knows a lower bound of
 *                             what was allocated by then. Prints "ready" once both made 10,000,
 *                             and runs until a signal ends it.
 *        busy exit            4 threads do the same; main calls exit(0) once each made 10,000,
 *                             while they still run.
 * Exit status 20..99: a check failed.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#include "zs_common.h"

#define MAX_THREADS 4

static _Atomic uint64_t local_counts[MAX_THREADS];
static _Atomic uint64_t *counts = local_counts;
void *volatile g_sink[MAX_THREADS];

ZS_FN void zs_spin(int t)
{
    uint64_t i = 0;
    for (;;) {
        void *p = malloc(16 + (i * 61) % 1024);
        ZS_CHECK(20, p != NULL);
        atomic_store_explicit(&counts[t], atomic_load_explicit(&counts[t], memory_order_relaxed) + 1,
                              memory_order_release);
        g_sink[t] = p;
        free(p);
        i++;
    }
}

static void *worker(void *arg)
{
    zs_spin((int)(intptr_t)arg);
    return NULL;
}

static void start(int n)
{
    for (int t = 0; t < n; t++) {
        pthread_t th;
        ZS_CHECK(21, pthread_create(&th, NULL, worker, (void *)(intptr_t)t) == 0);
    }
    for (int t = 0; t < n; t++)
        while (atomic_load(&counts[t]) < 10000)
            sleep_ms(1);
}

int main(int argc, char **argv)
{
    ZS_CHECK(30, argc >= 2);
    if (strcmp(argv[1], "signal") == 0) {
        ZS_CHECK(31, argc == 3);
        int fd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0600);
        ZS_CHECK(32, fd >= 0 && ftruncate(fd, 4096) == 0);
        counts = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        ZS_CHECK(33, counts != MAP_FAILED);
        start(2);
        printf("ready\n");
        fflush(stdout);
        for (;;)
            sleep_ms(1000);
    }
    if (strcmp(argv[1], "exit") == 0) {
        start(4);
        exit(0);
    }
    ZS_CHECK(34, 0);
    return 1;
}
