/* malloc+free pairs of 16-128 B from a call stack DEPTH frames deep, in THREADS threads.
 * Prints ns per pair. Built -O2 without frame pointers, like the programs zmtrace traces.
 *   pairs [PAIRS_PER_THREAD] [DEPTH] [THREADS] */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long pairs = 1000000;
static int depth = 19;
void *volatile sink;

__attribute__((noipa)) static void leaf(long n) {
    for (long i = 0; i < n; i++) {
        void *p = malloc(16 + (i % 8) * 16);
        sink = p;
        free(p);
    }
}

__attribute__((noipa)) static void descend(int d, long n) {
    if (d <= 1) leaf(n);
    else descend(d - 1, n);
    sink = (void *)0; /* not a tail call */
}

static void *worker(void *arg) {
    (void)arg;
    descend(depth, pairs);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) pairs = atol(argv[1]);
    if (argc > 2) depth = atoi(argv[2]);
    int threads = argc > 3 ? atoi(argv[3]) : 1;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    pthread_t t[64];
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, worker, NULL);
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("%.1f ns per pair (%ld pairs x %d threads, depth %d)\n", ns / pairs, pairs, threads, depth);
    return 0;
}
