/* threads: 8 threads under load, each making OPS allocator calls (malloc, calloc, realloc of an
 * existing block, free; sizes 8..4096), with a large share of the blocks freed by a thread other
 * than the one that allocated them. The program counts every call it makes and prints the totals.
 *
 * Usage: threads [OPS]     (OPS per thread, default 1000000; exits 0; 20..99 = a check failed)
 *
 * Each thread (zs_worker, index t = 0..7) keeps SLOTS blocks and loops until it has made exactly
 * OPS calls. In each round it first frees up to 4 blocks waiting in its inbox (blocks that thread
 * t-1 handed over: frees on another thread than the allocating one), then picks a random slot:
 *   - empty: malloc(n) or calloc(1, n), n uniform in 8..4096 (zs_malloc_block, zs_calloc_block);
 *   - full:  realloc(p, n) to a new size (zs_realloc_block), free(p) (zs_free_block), or hands
 *            the block over to thread t+1's inbox (a single-producer single-consumer lock-free
 *            ring of INBOX blocks; when it is full the block is freed here instead).
 * Then all threads meet at a barrier, each frees its remaining slots and its inbox (the cleanup
 * calls are counted too), and zs_leak_t allocates 5 blocks of 1000 + t bytes, never freed.
 * Nothing else is ever allocated under a zs_ function; realloc is never given NULL or size 0.
 *
 * Output (stdout, after all threads are joined), the totals over all threads, bytes = requested:
 *   threads 8 ops_per_thread OPS
 *   malloc COUNT BYTES              (zs_leak_t's 40 mallocs included)
 *   calloc COUNT BYTES
 *   realloc COUNT                   (reallocs of existing blocks, all with size > 0)
 *   free COUNT                      (every block but the 40 leaked ones is freed exactly once)
 *   cross_thread_free COUNT         (frees of blocks another thread allocated or reallocated)
 *   leaked 40 40140                 (blocks, bytes: 5 x (1000 + t) for t = 0..7)
 *
 * So, as src/cli/tests/threads.rs asserts, the events under zs_ functions in the dump are exactly
 * these: malloc and calloc counts and bytes, realloc events, free events, cross-thread frees, and
 * 40 live blocks of 40140 bytes at exit, all from zs_leak_t.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "zs_common.h"

#define NTHREADS 8
#define SLOTS 64
#define INBOX 4096 /* a power of two */
#define LEAKS 5

struct inbox {
    _Alignas(64) atomic_ulong head; /* written by the producer (thread t-1) */
    _Alignas(64) atomic_ulong tail; /* written by the consumer (thread t) */
    void *ring[INBOX];
};

struct worker {
    int t;
    long ops_target;
    uint64_t rng;
    void *slot[SLOTS];
    size_t slot_size[SLOTS];
    /* What this thread did. */
    long ops, mallocs, callocs, reallocs, frees, cross_frees;
    unsigned long long malloc_bytes, calloc_bytes;
};

static struct inbox g_inbox[NTHREADS];
static struct worker g_worker[NTHREADS];
static pthread_barrier_t g_start, g_done;
void *g_leaked[NTHREADS][LEAKS];

static uint64_t next_rand(struct worker *w)
{
    /* xorshift64* */
    uint64_t x = w->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    w->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

ZS_FN void *zs_malloc_block(size_t n)
{
    void *p = malloc(n);
    ZS_KEEP();
    return p;
}

ZS_FN void *zs_calloc_block(size_t n)
{
    void *p = calloc(1, n);
    ZS_KEEP();
    return p;
}

ZS_FN void *zs_realloc_block(void *p, size_t n)
{
    void *q = realloc(p, n);
    ZS_KEEP();
    return q;
}

ZS_FN void zs_free_block(void *p)
{
    free(p);
    ZS_KEEP();
}

ZS_FN void zs_leak_t(int t)
{
    for (int i = 0; i < LEAKS; i++) {
        g_leaked[t][i] = malloc(1000 + (size_t)t);
        ZS_CHECK(24, g_leaked[t][i] != NULL);
        memset(g_leaked[t][i], t, 1000 + (size_t)t);
    }
}

/* Hands `p` to the next thread; false when its inbox is full. */
static int hand_over(struct worker *w, void *p)
{
    struct inbox *in = &g_inbox[(w->t + 1) % NTHREADS];
    unsigned long head = atomic_load_explicit(&in->head, memory_order_relaxed);
    unsigned long tail = atomic_load_explicit(&in->tail, memory_order_acquire);
    if (head - tail == INBOX)
        return 0;
    in->ring[head % INBOX] = p;
    atomic_store_explicit(&in->head, head + 1, memory_order_release);
    return 1;
}

/* Takes a block from this thread's inbox, or NULL. */
static void *take(struct worker *w)
{
    struct inbox *in = &g_inbox[w->t];
    unsigned long tail = atomic_load_explicit(&in->tail, memory_order_relaxed);
    unsigned long head = atomic_load_explicit(&in->head, memory_order_acquire);
    if (tail == head)
        return NULL;
    void *p = in->ring[tail % INBOX];
    atomic_store_explicit(&in->tail, tail + 1, memory_order_release);
    return p;
}

static size_t random_size(struct worker *w)
{
    return 8 + (size_t)(next_rand(w) % 4089); /* 8..4096 */
}

ZS_FN void *zs_worker(void *arg)
{
    struct worker *w = arg;
    pthread_barrier_wait(&g_start);
    while (w->ops < w->ops_target) {
        for (int k = 0; k < 4 && w->ops < w->ops_target; k++) {
            char *p = take(w);
            if (!p)
                break;
            ZS_CHECK(25, (unsigned char)p[0] == (unsigned char)((w->t + NTHREADS - 1) % NTHREADS));
            zs_free_block(p);
            w->frees++;
            w->cross_frees++;
            w->ops++;
        }
        if (w->ops >= w->ops_target)
            break;
        uint64_t r = next_rand(w);
        int i = (int)(r % SLOTS);
        unsigned choice = (unsigned)(r >> 32) % 4;
        char *p = w->slot[i];
        if (!p) {
            size_t n = random_size(w);
            if (choice < 2) {
                p = zs_malloc_block(n);
                w->mallocs++;
                w->malloc_bytes += n;
            } else {
                p = zs_calloc_block(n);
                ZS_CHECK(26, p != NULL && p[n - 1] == 0);
                w->callocs++;
                w->calloc_bytes += n;
            }
            ZS_CHECK(27, p != NULL);
            p[0] = (char)w->t;
            w->slot[i] = p;
            w->slot_size[i] = n;
        } else if (choice == 0) {
            size_t n = random_size(w);
            p = zs_realloc_block(p, n);
            ZS_CHECK(28, p != NULL && (unsigned char)p[0] == (unsigned char)w->t);
            w->reallocs++;
            w->slot[i] = p;
            w->slot_size[i] = n;
        } else {
            w->slot[i] = NULL;
            if (choice == 1 || !hand_over(w, p)) {
                zs_free_block(p);
                w->frees++;
            } else {
                w->ops--; /* handing over is not a call */
            }
        }
        w->ops++;
    }
    pthread_barrier_wait(&g_done);
    /* Every producer is done: free what is left. */
    for (int i = 0; i < SLOTS; i++) {
        if (w->slot[i]) {
            zs_free_block(w->slot[i]);
            w->slot[i] = NULL;
            w->frees++;
        }
    }
    for (char *p; (p = take(w)) != NULL;) {
        zs_free_block(p);
        w->frees++;
        w->cross_frees++;
    }
    zs_leak_t(w->t);
    ZS_KEEP();
    return NULL;
}

int main(int argc, char **argv)
{
    long ops = argc > 1 ? atol(argv[1]) : 1000000;
    ZS_CHECK(20, ops > 0);
    pthread_t th[NTHREADS];
    ZS_CHECK(21, pthread_barrier_init(&g_start, NULL, NTHREADS) == 0);
    ZS_CHECK(21, pthread_barrier_init(&g_done, NULL, NTHREADS) == 0);
    for (int t = 0; t < NTHREADS; t++) {
        g_worker[t].t = t;
        g_worker[t].ops_target = ops;
        g_worker[t].rng = 0x9E3779B97F4A7C15ULL * (uint64_t)(t + 1);
        ZS_CHECK(22, pthread_create(&th[t], NULL, zs_worker, &g_worker[t]) == 0);
    }
    for (int t = 0; t < NTHREADS; t++)
        ZS_CHECK(23, pthread_join(th[t], NULL) == 0);

    long mallocs = 0, callocs = 0, reallocs = 0, frees = 0, cross = 0;
    unsigned long long malloc_bytes = 0, calloc_bytes = 0, leaked_bytes = 0;
    for (int t = 0; t < NTHREADS; t++) {
        struct worker *w = &g_worker[t];
        ZS_CHECK(29, w->ops == ops);
        mallocs += w->mallocs + LEAKS;
        malloc_bytes += w->malloc_bytes + LEAKS * (1000ULL + (unsigned long long)t);
        callocs += w->callocs;
        calloc_bytes += w->calloc_bytes;
        reallocs += w->reallocs;
        frees += w->frees;
        cross += w->cross_frees;
        leaked_bytes += LEAKS * (1000ULL + (unsigned long long)t);
    }
    /* Every block allocated by the workers' loops was freed exactly once. */
    ZS_CHECK(30, frees == mallocs - NTHREADS * LEAKS + callocs);
    printf("threads %d ops_per_thread %ld\n", NTHREADS, ops);
    printf("malloc %ld %llu\n", mallocs, malloc_bytes);
    printf("calloc %ld %llu\n", callocs, calloc_bytes);
    printf("realloc %ld\n", reallocs);
    printf("free %ld\n", frees);
    printf("cross_thread_free %ld\n", cross);
    printf("leaked %d %llu\n", NTHREADS * LEAKS, leaked_bytes);
    return 0;
}
