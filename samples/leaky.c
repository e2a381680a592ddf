/* leaky: every allocation function, on three threads, with leaks of known count and size.
 *
 * Usage: leaky            (no arguments, prints nothing, exits 0; 20..99 = a libc assumption failed)
 *
 * Expected events of the sample itself (stack contains a `zs_` function), as the tests in
 * src/cli/tests/leaky.rs assert them:
 *
 *   Alloc events by kind (requested bytes in brackets; calloc/reallocarray: nmemb * size)
 *     malloc          28  [48 + 21 + 100+64+64 + 24 + (40+41+42+43)*2 + 2*5*64 + 3*100 + 4096 = 5689]
 *                         (one of them is strdup's malloc, whose frame 0 is in libc)
 *     calloc           3  [120 + 2*128 = 376]
 *     realloc          3  [realloc(NULL, n): 72 + 2*24 = 120]
 *     posix_memalign   1  [200, alignment 64]
 *     aligned_alloc    1  [256, alignment 128]
 *     memalign         1  [100, alignment 32]
 *     valloc           1  [300, page-aligned]
 *     reallocarray     1  [reallocarray(NULL, 5, 8) = 40]
 *     total           39
 *   Realloc events     6: realloc grown in place (100 -> 104, same address), realloc that moves
 *                         (64 -> 1 MiB), realloc(p, 0) that frees (new_addr 0, size 0),
 *                         reallocarray(p, 20, 8) = 160, and one realloc 24 -> 48 per worker
 *   AllocFailed        3: malloc(SIZE_MAX/2), realloc(p, SIZE_MAX/2), calloc(SIZE_MAX/2, 4)
 *   Free events       34, of which 14 free a block another thread allocated
 *                         (8 by the workers, 6 by the main thread)
 *   free(NULL)         3 calls (no event; counted in the End record's free_null)
 *   Leaked             4 blocks, 4396 bytes: 3 x 100 B from zs_leak_small, 4096 B from zs_leak_page
 *   Threads            3 (main and two workers) produce the sample's events
 *
 * The deepest allocation is malloc(48) in main -> zs_run -> zs_level1 -> zs_level2 -> zs_alloc_deep.
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "zs_common.h"

#define WORKERS 2

void *g_deep;
void *g_kinds[8];
void *g_realloced;
void *g_blocker;
void *g_for_workers[WORKERS][4];
void *g_from_workers[WORKERS][3];
void *g_leaks[4];
void *volatile g_sink;
volatile size_t g_huge = SIZE_MAX / 2;
volatile size_t g_zero = 0;
void *volatile g_null = NULL; /* gcc turns realloc(NULL, n) into malloc(n) */
char g_text[] = "zmtrace-leaky-sample"; /* 20 characters: strdup mallocs 21 bytes */

/* ---- the deep chain: main -> zs_run -> zs_level1 -> zs_level2 -> zs_alloc_deep ---- */

ZS_FN void *zs_alloc_deep(void)
{
    char *p = malloc(48);
    ZS_CHECK(20, p != NULL);
    memset(p, 0x5a, 48);
    return p;
}

ZS_FN void *zs_level2(void)
{
    void *p = zs_alloc_deep();
    ZS_KEEP();
    return p;
}

ZS_FN void *zs_level1(void)
{
    void *p = zs_level2();
    ZS_KEEP();
    return p;
}

/* ---- one block from each allocation function ---- */

ZS_FN void zs_alloc_kinds(void)
{
    void *p;

    g_kinds[0] = calloc(10, 12);
    ZS_CHECK(21, g_kinds[0] != NULL);

    p = NULL;
    ZS_CHECK(22, posix_memalign(&p, 64, 200) == 0 && p != NULL && (uintptr_t)p % 64 == 0);
    g_kinds[1] = p;

    g_kinds[2] = aligned_alloc(128, 256);
    ZS_CHECK(23, g_kinds[2] != NULL && (uintptr_t)g_kinds[2] % 128 == 0);

    g_kinds[3] = memalign(32, 100);
    ZS_CHECK(24, g_kinds[3] != NULL && (uintptr_t)g_kinds[3] % 32 == 0);

    g_kinds[4] = valloc(300);
    ZS_CHECK(25, g_kinds[4] != NULL && (uintptr_t)g_kinds[4] % 4096 == 0);

    g_kinds[5] = reallocarray(g_null, 5, 8);
    ZS_CHECK(26, g_kinds[5] != NULL);

    g_kinds[6] = realloc(g_null, 72);
    ZS_CHECK(27, g_kinds[6] != NULL);

    g_kinds[7] = strdup(g_text);
    ZS_CHECK(28, g_kinds[7] != NULL);

    for (int i = 0; i < 8; i++)
        memset(g_kinds[i], 0x11 + i, 8);
}

/* ---- realloc: in place, moving, to zero, reallocarray on a block ---- */

ZS_FN void zs_reallocs(void)
{
    /* Grows within the block's usable size: glibc keeps the address. */
    char *p = malloc(100);
    ZS_CHECK(30, p != NULL && malloc_usable_size(p) >= 104);
    uintptr_t before = (uintptr_t)p;
    p = realloc(p, 104);
    ZS_CHECK(31, p != NULL && (uintptr_t)p == before);

    /* reallocarray on an existing block: a Realloc event of 160 bytes. */
    g_realloced = reallocarray(p, 20, 8);
    ZS_CHECK(32, g_realloced != NULL);
    memset(g_realloced, 0x22, 160);

    /* A block that cannot grow in place: its neighbour is in use and 1 MiB is mmapped. */
    char *m = malloc(64);
    g_blocker = malloc(64);
    ZS_CHECK(33, m != NULL && g_blocker != NULL);
    before = (uintptr_t)m;
    m = realloc(m, 1 << 20);
    ZS_CHECK(34, m != NULL && (uintptr_t)m != before);
    m[(1 << 20) - 1] = 1;
    g_sink = m;

    /* realloc(p, 0) frees the block on glibc and returns NULL. */
    g_sink = realloc(m, g_zero);
    ZS_CHECK(35, g_sink == NULL);

    free(g_blocker);
    g_blocker = NULL;
}

/* ---- failures and free(NULL) ---- */

ZS_FN void zs_failures(void)
{
    g_sink = malloc(g_huge);
    ZS_CHECK(40, g_sink == NULL);

    char *p = malloc(24);
    ZS_CHECK(41, p != NULL);
    memset(p, 0x33, 24);
    g_sink = p;
    void *q = realloc(p, g_huge);
    if (q != NULL)
        sample_check_failed(42, "realloc(p, SIZE_MAX / 2) == NULL");
    free(p); /* the failed realloc left the block alone */

    g_sink = calloc(g_huge, 4);
    ZS_CHECK(43, g_sink == NULL);

    for (int i = 0; i < 3; i++) {
        g_sink = NULL;
        free(g_sink);
    }
}

/* ---- blocks the workers free (cross-thread frees) ---- */

ZS_FN void zs_alloc_for_workers(void)
{
    for (int w = 0; w < WORKERS; w++)
        for (int i = 0; i < 4; i++) {
            g_for_workers[w][i] = malloc(40 + i);
            ZS_CHECK(45, g_for_workers[w][i] != NULL);
            memset(g_for_workers[w][i], w + i + 1, 40 + i);
        }
}

ZS_FN void zs_run(void)
{
    g_deep = zs_level1();
    ZS_KEEP();
    zs_alloc_kinds();
    ZS_KEEP();
    zs_reallocs();
    ZS_KEEP();
    zs_failures();
    ZS_KEEP();
    zs_alloc_for_workers();
    ZS_KEEP();
}

/* ---- the worker threads ---- */

ZS_FN void zs_worker_allocs(int w)
{
    /* Free the four blocks the main thread allocated for this worker. */
    for (int i = 0; i < 4; i++) {
        free(g_for_workers[w][i]);
        g_for_workers[w][i] = NULL;
    }

    /* Five mallocs: two freed here, three left for the main thread to free. */
    void *mine[5];
    for (int i = 0; i < 5; i++) {
        mine[i] = malloc(64);
        ZS_CHECK(50, mine[i] != NULL);
        memset(mine[i], 0x44, 64);
    }
    g_sink = mine[0];
    free(mine[0]);
    g_sink = mine[1];
    free(mine[1]);
    for (int i = 0; i < 3; i++)
        g_from_workers[w][i] = mine[2 + i];

    void *c = calloc(4, 32);
    ZS_CHECK(51, c != NULL);
    g_sink = c;
    free(c);

    char *r = realloc(g_null, 24);
    ZS_CHECK(52, r != NULL);
    memset(r, 0x55, 24);
    r = realloc(r, 48);
    ZS_CHECK(53, r != NULL);
    g_sink = r;
    free(r);
}

ZS_FN void *zs_worker(void *arg)
{
    zs_worker_allocs((int)(intptr_t)arg);
    ZS_KEEP();
    return NULL;
}

/* ---- after the workers: cross-thread frees, cleanup and the leaks ---- */

ZS_FN void zs_leak_small(int i)
{
    g_leaks[i] = malloc(100);
    ZS_CHECK(60, g_leaks[i] != NULL);
    memset(g_leaks[i], 0x66, 100);
}

ZS_FN void zs_leak_page(void)
{
    g_leaks[3] = malloc(4096);
    ZS_CHECK(61, g_leaks[3] != NULL);
    memset(g_leaks[3], 0x77, 4096);
}

ZS_FN void zs_finish(void)
{
    for (int w = 0; w < WORKERS; w++)
        for (int i = 0; i < 3; i++) {
            free(g_from_workers[w][i]);
            g_from_workers[w][i] = NULL;
        }

    free(g_deep);
    g_deep = NULL;
    for (int i = 0; i < 8; i++) {
        free(g_kinds[i]);
        g_kinds[i] = NULL;
    }
    free(g_realloced);
    g_realloced = NULL;

    for (int i = 0; i < 3; i++) {
        zs_leak_small(i);
        ZS_KEEP();
    }
    zs_leak_page();
    ZS_KEEP();
}

int main(void)
{
    zs_run();
    /* A pause, so that the threads' allocations come a few of the dump's 1 ms time steps after
     * zs_run's (the viewer's test selects a time range that holds some but not all of them). */
    usleep(5000);

    /* Thread creation allocates inside libc (the DTV): not under a zs_ function. */
    pthread_t t[WORKERS];
    for (int w = 0; w < WORKERS; w++)
        ZS_CHECK(70, pthread_create(&t[w], NULL, zs_worker, (void *)(intptr_t)w) == 0);
    for (int w = 0; w < WORKERS; w++)
        ZS_CHECK(71, pthread_join(t[w], NULL) == 0);

    zs_finish();
    return 0;
}
