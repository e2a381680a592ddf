/* An allocation-heavy workload: THREADS threads, each making CALLS allocator calls - a mix of
 * malloc, calloc, realloc and free of 8 B-4 KiB blocks - from call stacks MIN_DEPTH..MAX_DEPTH
 * frames deep that change from call to call (several call sites, a varying recursion depth), as
 * a real program's do. Built -O2 without frame pointers, like the programs zmtrace traces.
 * Prints "NS ns per call (...)" for the whole run (wall clock / calls per thread).
 *   mix [CALLS_PER_THREAD] [THREADS] [MIN_DEPTH] [MAX_DEPTH] */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define SLOTS 512

static long calls = 1000000;
static int min_depth = 5, max_depth = 25;
void *volatile sink;

struct worker {
    void *slot[SLOTS];
    uint64_t rng;
    long done;
};

static uint64_t next(struct worker *w)
{
    w->rng ^= w->rng << 13;
    w->rng ^= w->rng >> 7;
    w->rng ^= w->rng << 17;
    return w->rng;
}

static size_t size_of(uint64_t r)
{
    /* Mostly small, as real programs: 8-256 B three times in four, up to 4 KiB otherwise. */
    return (r >> 40) % 4 ? 8 + (r >> 20) % 249 : 8 + (r >> 20) % 4089;
}

/* One allocator call on a random slot: allocate into an empty one, else realloc or free. */
__attribute__((noipa)) static void op_alloc(struct worker *w, int i, uint64_t r)
{
    w->slot[i] = (r >> 8) % 4 ? malloc(size_of(r)) : calloc(1, size_of(r));
    sink = w->slot[i];
}

__attribute__((noipa)) static void op_realloc(struct worker *w, int i, uint64_t r)
{
    w->slot[i] = realloc(w->slot[i], size_of(r));
    sink = w->slot[i];
}

__attribute__((noipa)) static void op_free(struct worker *w, int i)
{
    free(w->slot[i]);
    w->slot[i] = NULL;
}

/* A batch of calls from this depth; then back up, and down again to another depth. */
__attribute__((noipa)) static void leaf(struct worker *w)
{
    for (int k = 0; k < 16 && w->done < calls; k++, w->done++) {
        uint64_t r = next(w);
        int i = r % SLOTS;
        if (!w->slot[i])
            op_alloc(w, i, r);
        else if ((r >> 4) % 3 == 0)
            op_realloc(w, i, r);
        else
            op_free(w, i);
    }
}

/* Two functions that call each other down to the leaf, taking turns by a pattern that depends
 * on the variant: a program's few hundred distinct paths to its allocation sites, not millions. */
__attribute__((noipa)) static void descend_a(struct worker *w, int d, int variant);
__attribute__((noipa)) static void descend_b(struct worker *w, int d, int variant)
{
    if (d <= 1)
        leaf(w);
    else
        descend_a(w, d - 1, variant);
    sink = 0; /* not a tail call */
}

__attribute__((noipa)) static void descend_a(struct worker *w, int d, int variant)
{
    if (d <= 1)
        leaf(w);
    else if ((d + variant) % 3)
        descend_a(w, d - 1, variant);
    else
        descend_b(w, d - 1, variant);
    sink = 0;
}

static void *run(void *arg)
{
    struct worker *w = arg;
    while (w->done < calls)
        descend_a(w, min_depth + (int)(next(w) % (uint64_t)(max_depth - min_depth + 1)),
                  (int)(next(w) % 3));
    for (int i = 0; i < SLOTS; i++)
        free(w->slot[i]);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc > 1)
        calls = atol(argv[1]);
    int threads = argc > 2 ? atoi(argv[2]) : 1;
    if (argc > 3)
        min_depth = atoi(argv[3]);
    if (argc > 4)
        max_depth = atoi(argv[4]);
    if (threads < 1 || threads > 64 || min_depth < 1 || max_depth < min_depth) {
        fprintf(stderr, "usage: mix [CALLS_PER_THREAD] [THREADS 1-64] [MIN_DEPTH] [MAX_DEPTH]\n");
        return 2;
    }
    static struct worker w[64];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    pthread_t t[64];
    for (int i = 0; i < threads; i++) {
        w[i].rng = 0x9e3779b97f4a7c15ull * (i + 1);
        pthread_create(&t[i], NULL, run, &w[i]);
    }
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("%.1f ns per call (%ld calls x %d threads, depth %d-%d)\n", ns / calls, calls, threads,
           min_depth, max_depth);
    return 0;
}
