/* Random stack depth: a workload whose consecutive stacks are rarely alike, so that what unwinding
 * costs shows (the older workloads call malloc from the same few stacks, and the recorder takes
 * most of each walk over from the previous one).
 *
 * Each thread makes OPS operations. An operation is drawn from the thread's own generator (so the
 * run is deterministic for a given SEED, whatever the scheduling):
 *   40 % malloc, 10 % calloc  of 8 B-4 KiB (three in four 8-256 B, as real programs) into a random
 *                             slot of a table of 8,192; a slot that holds a block has it freed
 *                             first (one more free call), so about 4,096 blocks are live at once;
 *   25 % realloc              of the thread's buffer, doubling from 16 B to 4 KiB, then halving
 *                             back to 16 B, and again;
 *   25 % free                 of the block in a random slot (the next one that holds a block).
 * Every operation reaches the allocator through one of four distinct call paths (a self-recursive
 * function; two mutually recursive ones; one with a large frame; a cycle of three) at a random
 * recursion depth of 5-25 frames. Below the thread's entry, `root` first moves the stack pointer by
 * a random 0-496 B (alloca), so that no frame of the path sits where the previous operation's did:
 * only the frames above `root` (run, start_thread, clone3) are where they were. Pass "noshift" to
 * leave that out (the recorder can then take over the frames shared with the previous walk).
 *
 * Built -O2 -g -fomit-frame-pointer, like the programs zmtrace traces. Every function on the path
 * is noipa and each recursion does work after its call (a volatile store), so gcc can neither
 * inline, clone, nor turn the recursion into a loop or a tail call.
 *
 * Prints, at the end (stdout):
 *   NS ns per call (...)
 *   calls: malloc M calloc C realloc R free F
 *   frames: captures K recorded F1 walked F2
 * where the calls are the allocator calls this program made (the counts a tracer must find, beside
 * libc's own few), K = malloc + calloc + realloc (the calls whose stack is captured), F1 the sum of
 * their stacks' depths (depth + 6: the op function, `bottom`, the path's frames, root, run,
 * start_thread, clone3), F2 the frames up to the shifted root (depth + 3: the op function, bottom,
 * the path, root; the frames above it are unchanged from the previous walk, which the recorder
 * takes over). "probe" checks F1's "+ 6" with glibc's
 * backtrace() on the first 200 captures of each thread and says so (it allocates when it starts:
 * use it only for the check).
 *
 * "paths=N" takes only the first N paths (heaptrack 1.4's interpreter dies of std::bad_alloc on
 * this workload with two paths or more; with one, at random depths, it survives).
 *
 *   randdepth [OPS_PER_THREAD] [THREADS] [SEED] [noshift] [probe] [paths=N]
 */
#include <alloca.h>
#include <execinfo.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SLOTS 8192
#define MIN_DEPTH 5
#define MAX_DEPTH 25
#define OUTER_FRAMES 3 /* run, start_thread, clone3 */

enum kind { MALLOC, CALLOC, REALLOC, FREE };

struct worker {
    void *slot[SLOTS];
    long live;
    uint64_t rng;
    void *buf;
    size_t buf_size;
    int growing;
    /* The operation being made, read at the bottom of the path. */
    enum kind kind;
    unsigned idx;
    size_t size;
    int depth;
    /* Counts of calls made, and the frames of the captured stacks. */
    long n_malloc, n_calloc, n_realloc, n_free;
    long frames_recorded, frames_walked;
    long probed, probe_bad;
    int probe_first_bad_depth, probe_first_bad_got;
};

static long ops = 2000000;
static int shift = 1, probe = 0, paths = 4;
void *volatile sink;

static uint64_t next(struct worker *w)
{
    /* xorshift64* */
    w->rng ^= w->rng >> 12;
    w->rng ^= w->rng << 25;
    w->rng ^= w->rng >> 27;
    return w->rng * 0x2545f4914f6cdd1dull;
}

static size_t size_of(uint64_t r)
{
    return (r >> 40) % 4 ? 8 + (r >> 20) % 249 : 8 + (r >> 20) % 4089;
}

/* In probe mode: the depth of this stack as glibc's unwinder sees it, from the function that
 * calls the allocator (backtrace's first entry is in its caller, as a tracer's first frame is). */
__attribute__((noipa)) static void check_depth(struct worker *w)
{
    if (!probe || w->probed >= 200)
        return;
    void *bt[128];
    int n = backtrace(bt, 128) - 1; /* less check_depth's own frame */
    int want = w->depth + 3 + OUTER_FRAMES;
    w->probed++;
    if (n != want && !w->probe_bad++) {
        w->probe_first_bad_depth = want;
        w->probe_first_bad_got = n;
    }
}

static void captured(struct worker *w)
{
    w->frames_recorded += w->depth + 3 + OUTER_FRAMES;
    w->frames_walked += w->depth + 3;
}

__attribute__((noipa)) static void do_malloc(struct worker *w)
{
    if (w->slot[w->idx]) {
        free(w->slot[w->idx]);
        w->n_free++;
        w->live--;
    }
    check_depth(w);
    w->slot[w->idx] = malloc(w->size);
    sink = w->slot[w->idx];
    w->n_malloc++;
    w->live++;
    captured(w);
}

__attribute__((noipa)) static void do_calloc(struct worker *w)
{
    if (w->slot[w->idx]) {
        free(w->slot[w->idx]);
        w->n_free++;
        w->live--;
    }
    check_depth(w);
    w->slot[w->idx] = calloc(1, w->size);
    sink = w->slot[w->idx];
    w->n_calloc++;
    w->live++;
    captured(w);
}

__attribute__((noipa)) static void do_realloc(struct worker *w)
{
    if (w->growing && w->buf_size == 4096)
        w->growing = 0;
    else if (!w->growing && w->buf_size == 16)
        w->growing = 1;
    w->buf_size = w->growing ? w->buf_size * 2 : w->buf_size / 2;
    check_depth(w);
    w->buf = realloc(w->buf, w->buf_size);
    sink = w->buf;
    w->n_realloc++;
    captured(w);
}

__attribute__((noipa)) static void do_free(struct worker *w)
{
    unsigned i = w->idx;
    while (!w->slot[i])
        i = (i + 1) % SLOTS;
    free(w->slot[i]);
    w->slot[i] = NULL;
    w->n_free++;
    w->live--;
}

__attribute__((noipa)) static void bottom(struct worker *w)
{
    switch (w->kind) {
    case MALLOC: do_malloc(w); break;
    case CALLOC: do_calloc(w); break;
    case REALLOC: do_realloc(w); break;
    case FREE: do_free(w); break;
    }
    sink = 0; /* not a tail call */
}

/* Path 0: one self-recursive function. */
__attribute__((noipa)) static void path0(struct worker *w, int d)
{
    if (d <= 1)
        bottom(w);
    else
        path0(w, d - 1);
    sink = 0;
}

/* Path 1: two functions calling each other. */
__attribute__((noipa)) static void path1b(struct worker *w, int d);
__attribute__((noipa)) static void path1a(struct worker *w, int d)
{
    if (d <= 1)
        bottom(w);
    else
        path1b(w, d - 1);
    sink = 0;
}

__attribute__((noipa)) static void path1b(struct worker *w, int d)
{
    if (d <= 1)
        bottom(w);
    else
        path1a(w, d - 1);
    sink = (void *)1;
}

/* Path 2: a large frame (a local array the compiler must keep), so the CFA offsets differ. */
__attribute__((noipa)) static void path2(struct worker *w, int d)
{
    volatile char pad[200];
    pad[d % 200] = (char)d;
    if (d <= 1)
        bottom(w);
    else
        path2(w, d - 1);
    sink = (void *)&pad[0];
    sink = 0;
}

/* Path 3: a cycle of three functions. */
__attribute__((noipa)) static void path3b(struct worker *w, int d);
__attribute__((noipa)) static void path3c(struct worker *w, int d);
__attribute__((noipa)) static void path3a(struct worker *w, int d)
{
    if (d <= 1)
        bottom(w);
    else
        path3b(w, d - 1);
    sink = 0;
}

__attribute__((noipa)) static void path3b(struct worker *w, int d)
{
    if (d <= 1)
        bottom(w);
    else
        path3c(w, d - 1);
    sink = (void *)2;
}

__attribute__((noipa)) static void path3c(struct worker *w, int d)
{
    if (d <= 1)
        bottom(w);
    else
        path3a(w, d - 1);
    sink = (void *)3;
}

/* Moves the stack pointer by `pad` bytes, then takes path `p` down `w->depth` frames. */
__attribute__((noipa)) static void root(struct worker *w, int p, unsigned pad)
{
    volatile char *gap = alloca(pad + 16);
    gap[0] = 0;
    switch (p) {
    case 0: path0(w, w->depth); break;
    case 1: path1a(w, w->depth); break;
    case 2: path2(w, w->depth); break;
    default: path3a(w, w->depth); break;
    }
    sink = (void *)gap;
}

static void *run(void *arg)
{
    struct worker *w = arg;
    w->buf_size = 16;
    w->growing = 1;
    w->buf = NULL;
    for (long k = 0; k < ops; k++) {
        uint64_t r = next(w);
        unsigned pct = r % 100;
        w->kind = pct < 40 ? MALLOC : pct < 50 ? CALLOC : pct < 75 ? REALLOC : FREE;
        if (w->kind == FREE && w->live == 0)
            w->kind = MALLOC; /* only at the very start */
        w->idx = (unsigned)(r >> 32) % SLOTS;
        w->depth = MIN_DEPTH + (int)((r >> 8) % (MAX_DEPTH - MIN_DEPTH + 1));
        unsigned p = ((unsigned)(r >> 16) & 3) % (unsigned)paths;
        unsigned pad = shift ? 16 * (unsigned)((r >> 20) % 32) : 0;
        w->size = size_of(next(w));
        root(w, (int)p, pad);
    }
    /* Everything is freed: what a tracer finds live at exit is libc's own. */
    for (int i = 0; i < SLOTS; i++)
        if (w->slot[i]) {
            free(w->slot[i]);
            w->n_free++;
        }
    free(w->buf);
    w->n_free++;
    return NULL;
}

int main(int argc, char **argv)
{
    int threads = 1;
    unsigned long seed = 1;
    int pos = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "noshift"))
            shift = 0;
        else if (!strcmp(argv[i], "probe"))
            probe = 1;
        else if (!strncmp(argv[i], "paths=", 6))
            paths = atoi(argv[i] + 6);
        else if (pos == 0 && (pos = 1))
            ops = atol(argv[i]);
        else if (pos == 1 && (pos = 2))
            threads = atoi(argv[i]);
        else if (pos == 2 && (pos = 3))
            seed = strtoul(argv[i], NULL, 0);
        else
            pos = -1;
    }
    if (pos < 0 || ops < 1 || threads < 1 || threads > 64 || paths < 1 || paths > 4) {
        fprintf(stderr, "usage: randdepth [OPS_PER_THREAD] [THREADS 1-64] [SEED] [noshift] [probe] [paths=1-4]\n");
        return 2;
    }
    static struct worker w[64];
    pthread_t t[64];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < threads; i++) {
        w[i].rng = (seed * 0x9e3779b97f4a7c15ull) ^ (0xd1b54a32d192ed03ull * (i + 1));
        if (!w[i].rng)
            w[i].rng = 1;
        pthread_create(&t[i], NULL, run, &w[i]);
    }
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    long nm = 0, nc = 0, nr = 0, nf = 0, fr = 0, fw = 0, probed = 0, bad = 0;
    for (int i = 0; i < threads; i++) {
        nm += w[i].n_malloc;
        nc += w[i].n_calloc;
        nr += w[i].n_realloc;
        nf += w[i].n_free;
        fr += w[i].frames_recorded;
        fw += w[i].frames_walked;
        probed += w[i].probed;
        bad += w[i].probe_bad;
    }
    long calls = nm + nc + nr + nf;
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("%.1f ns per call (%ld ops x %d threads, %ld calls per thread, seed %lu, %d paths, "
           "depth %d-%d%s)\n",
           ns / ((double)calls / threads), ops, threads, calls / threads, seed, paths, MIN_DEPTH,
           MAX_DEPTH, shift ? ", shifted" : "");
    printf("calls: malloc %ld calloc %ld realloc %ld free %ld\n", nm, nc, nr, nf);
    printf("frames: captures %ld recorded %ld walked %ld\n", nm + nc + nr, fr, fw);
    if (probe) {
        printf("probe: %ld stacks, %ld of another depth than depth + %d", probed, bad,
               3 + OUTER_FRAMES);
        for (int i = 0; i < threads; i++)
            if (w[i].probe_bad) {
                printf(" (thread %d: first wanted %d, backtrace found %d)", i,
                       w[i].probe_first_bad_depth, w[i].probe_first_bad_got);
                break;
            }
        printf("\n");
    }
    return bad ? 1 : 0;
}
