/* randdepth: stacks that change on every call. Each operation reaches the allocator through one
 * of four call paths (a self-recursive function; two that call each other; one with a large
 * frame; a cycle of three) at a random depth of 5-25, below a frame that moves the stack pointer
 * by a random 0-496 bytes (alloca), so that consecutive stacks rarely share more than their
 * outermost frames. Deterministic: the same arguments make the same operations.
 *
 * An operation is, from a xorshift generator: 40 % malloc and 10 % calloc of 8-263 B into a
 * random slot of a table of 256 (the block already there is freed first), 25 % realloc of the
 * thread's buffer (16 B doubling to 4 KiB and back), 25 % free of the block in a random slot (the
 * next one that holds a block, if any). Everything is freed at the end: nothing leaks.
 *
 * Usage: randdepth [OPS per thread, default 20000] [THREADS, default 1]
 * Prints "malloc M calloc C realloc R free F captures K frames D" (all threads): the sample's
 * own calls (those made under zs_ functions: every one of them), K = M + C + R the calls whose
 * stack the tracer captures, and D the sum of those stacks' depths from zs_op up to zs_run
 * (depth + 3 frames each: zs_op, the path's frames, zs_root, zs_run).
 */
#include <alloca.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zs_common.h"

#define SLOTS 256

struct worker {
    void *slot[SLOTS];
    void *buf;
    size_t buf_size;
    int growing;
    uint64_t rng;
    /* The operation being made, read by zs_op at the bottom of the path. */
    int kind, depth;
    unsigned idx;
    size_t size;
    long n_malloc, n_calloc, n_realloc, n_free, frames;
};

void *volatile zs_sink;

static uint64_t next(struct worker *w)
{
    w->rng ^= w->rng >> 12;
    w->rng ^= w->rng << 25;
    w->rng ^= w->rng >> 27;
    return w->rng * 0x2545f4914f6cdd1dull;
}

ZS_FN void zs_op(struct worker *w)
{
    void **slot = &w->slot[w->idx];
    switch (w->kind) {
    case 0:
    case 1:
        if (*slot) {
            free(*slot);
            w->n_free++;
        }
        if (w->kind == 0) {
            *slot = malloc(w->size);
            w->n_malloc++;
        } else {
            *slot = calloc(1, w->size);
            w->n_calloc++;
        }
        ZS_CHECK(20, *slot != NULL);
        w->frames += w->depth + 3;
        break;
    case 2:
        if (w->growing && w->buf_size == 4096)
            w->growing = 0;
        else if (!w->growing && w->buf_size == 16)
            w->growing = 1;
        w->buf_size = w->growing ? w->buf_size * 2 : w->buf_size / 2;
        w->buf = realloc(w->buf, w->buf_size);
        ZS_CHECK(21, w->buf != NULL);
        w->n_realloc++;
        w->frames += w->depth + 3;
        break;
    default:
        for (unsigned k = 0; k < SLOTS; k++) {
            void **s = &w->slot[(w->idx + k) % SLOTS];
            if (*s) {
                free(*s);
                *s = NULL;
                w->n_free++;
                break;
            }
        }
        break;
    }
    ZS_KEEP();
}

/* Path 0: one function calling itself. */
ZS_FN void zs_self(struct worker *w, int d)
{
    if (d <= 1)
        zs_op(w);
    else
        zs_self(w, d - 1);
    ZS_KEEP();
}

/* Path 1: two functions calling each other. */
ZS_FN void zs_pong(struct worker *w, int d);
ZS_FN void zs_ping(struct worker *w, int d)
{
    if (d <= 1)
        zs_op(w);
    else
        zs_pong(w, d - 1);
    ZS_KEEP();
}

ZS_FN void zs_pong(struct worker *w, int d)
{
    if (d <= 1)
        zs_op(w);
    else
        zs_ping(w, d - 1);
    ZS_KEEP();
}

/* Path 2: a large frame, so that the CFA offsets are not the other paths'. */
ZS_FN void zs_big(struct worker *w, int d)
{
    volatile char pad[300];
    pad[d % 300] = (char)d;
    if (d <= 1)
        zs_op(w);
    else
        zs_big(w, d - 1);
    zs_sink = (void *)(uintptr_t)pad[(d + 1) % 300];
    ZS_KEEP();
}

/* Path 3: a cycle of three. */
ZS_FN void zs_tri_b(struct worker *w, int d);
ZS_FN void zs_tri_c(struct worker *w, int d);
ZS_FN void zs_tri_a(struct worker *w, int d)
{
    if (d <= 1)
        zs_op(w);
    else
        zs_tri_b(w, d - 1);
    ZS_KEEP();
}

ZS_FN void zs_tri_b(struct worker *w, int d)
{
    if (d <= 1)
        zs_op(w);
    else
        zs_tri_c(w, d - 1);
    ZS_KEEP();
}

ZS_FN void zs_tri_c(struct worker *w, int d)
{
    if (d <= 1)
        zs_op(w);
    else
        zs_tri_a(w, d - 1);
    ZS_KEEP();
}

/* Moves the stack pointer by `pad` bytes, then takes path `path` down w->depth frames. */
ZS_FN void zs_root(struct worker *w, int path, unsigned pad)
{
    volatile char *gap = alloca(pad + 16);
    gap[0] = 0;
    switch (path) {
    case 0: zs_self(w, w->depth); break;
    case 1: zs_ping(w, w->depth); break;
    case 2: zs_big(w, w->depth); break;
    default: zs_tri_a(w, w->depth); break;
    }
    zs_sink = (void *)gap;
    ZS_KEEP();
}

static long ops = 20000;

ZS_FN void *zs_run(void *arg)
{
    struct worker *w = arg;
    w->buf_size = 16;
    w->growing = 1;
    for (long k = 0; k < ops; k++) {
        uint64_t r = next(w);
        unsigned pct = r % 100;
        w->kind = pct < 40 ? 0 : pct < 50 ? 1 : pct < 75 ? 2 : 3;
        w->idx = (unsigned)(r >> 32) % SLOTS;
        w->depth = 5 + (int)((r >> 8) % 21);
        w->size = 8 + (r >> 40) % 256;
        zs_root(w, (int)((r >> 16) & 3), 16 * (unsigned)((r >> 20) % 32));
    }
    for (int i = 0; i < SLOTS; i++)
        if (w->slot[i]) {
            free(w->slot[i]);
            w->slot[i] = NULL;
            w->n_free++;
        }
    free(w->buf);
    w->buf = NULL;
    w->n_free++;
    ZS_KEEP();
    return NULL;
}

int main(int argc, char **argv)
{
    int threads = 1;
    if (argc > 1)
        ops = atol(argv[1]);
    if (argc > 2)
        threads = atoi(argv[2]);
    ZS_CHECK(22, ops > 0 && threads >= 1 && threads <= 16);
    static struct worker w[16];
    pthread_t t[16];
    for (int i = 0; i < threads; i++)
        w[i].rng = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
    if (threads == 1) {
        zs_run(&w[0]);
    } else {
        for (int i = 0; i < threads; i++)
            ZS_CHECK(23, pthread_create(&t[i], NULL, zs_run, &w[i]) == 0);
        for (int i = 0; i < threads; i++)
            pthread_join(t[i], NULL);
    }
    long m = 0, c = 0, r = 0, f = 0, d = 0;
    for (int i = 0; i < threads; i++) {
        m += w[i].n_malloc;
        c += w[i].n_calloc;
        r += w[i].n_realloc;
        f += w[i].n_free;
        d += w[i].frames;
    }
    printf("malloc %ld calloc %ld realloc %ld free %ld captures %ld frames %ld\n", m, c, r, f,
           m + c + r, d);
    return 0;
}
