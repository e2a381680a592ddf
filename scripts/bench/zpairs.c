/* zmalloc with tracing off against malloc: PAIRS alloc+free pairs of 16-128 B from the same
 * loop, interleaved in REPS rounds in one process. Also against a plain, uninstrumented zmalloc
 * with Redis's semantics (the allocator's usable size, kept in one atomic counter): what a C
 * project pays today. Prints one line per round: "malloc NS plain NS zmalloc NS" (ns per pair).
 *   zpairs [PAIRS] [REPS] */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "zmalloc.h"

void *volatile sink;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e9 + t.tv_nsec;
}

__attribute__((noipa)) static double with_malloc(long n)
{
    double a = now();
    for (long i = 0; i < n; i++) {
        void *p = malloc(16 + (i % 8) * 16);
        sink = p;
        free(p);
    }
    return (now() - a) / n;
}

static size_t plain_used;

__attribute__((noipa)) static void *plain_zmalloc(size_t size)
{
    void *p = malloc(size);
    if (p)
        __atomic_add_fetch(&plain_used, malloc_usable_size(p), __ATOMIC_RELAXED);
    return p;
}

__attribute__((noipa)) static void plain_zfree(void *p)
{
    if (!p)
        return;
    __atomic_sub_fetch(&plain_used, malloc_usable_size(p), __ATOMIC_RELAXED);
    free(p);
}

__attribute__((noipa)) static double with_plain(long n)
{
    double a = now();
    for (long i = 0; i < n; i++) {
        void *p = plain_zmalloc(16 + (i % 8) * 16);
        sink = p;
        plain_zfree(p);
    }
    return (now() - a) / n;
}

__attribute__((noipa)) static double with_zmalloc(long n)
{
    double a = now();
    for (long i = 0; i < n; i++) {
        void *p = zmalloc(16 + (i % 8) * 16);
        sink = p;
        zfree(p);
    }
    return (now() - a) / n;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 10000000;
    int reps = argc > 2 ? atoi(argv[2]) : 7;
    with_malloc(n / 10);
    with_zmalloc(n / 10);
    for (int r = 0; r < reps; r++) {
        double m = with_malloc(n);
        double p = with_plain(n);
        double z = with_zmalloc(n);
        printf("malloc %.2f plain %.2f zmalloc %.2f\n", m, p, z);
    }
    return 0;
}
