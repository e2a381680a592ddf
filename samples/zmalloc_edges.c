/* zmalloc_edges: checks the zmalloc API against Redis 7's documented behaviour, in whichever
 * layout the library it is linked with was built (usable_size or prefix_size). Prints
 * "ok <layout>" and exits 0, or names the failed check and exits 1.
 *
 * Checked: the accounting of zmalloc_used_memory() (always the sum of zmalloc_size() of the live
 * blocks, also with 4 threads freeing each other's blocks), MALLOC_MIN_SIZE for zero-byte
 * requests, calloc zeroing, the *_usable out-parameters, ztry* returning NULL where z* calls the
 * OOM handler (custom, and the default one, which prints and aborts, in a forked child),
 * ztryrealloc(NULL, n) allocating, ztryrealloc(p, 0) freeing, a realloc of SIZE_MAX/2 failing
 * and freeing the old block, zstrdup, zfree(NULL).
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zmalloc.h"

static int failures;
#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "zmalloc_edges:%d: check failed: %s\n", __LINE__, #c);                 \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static size_t oom_seen;
static void my_oom(size_t n) { oom_seen = n; }

#define THREADS 4
#define SLOTS 256
#define OPS 200000
static void *slots[THREADS][SLOTS];

static void *worker(void *arg)
{
    long t = (long)arg;
    unsigned x = 12345u + (unsigned)t * 7919u;
    for (int i = 0; i < OPS; i++) {
        x = x * 1103515245u + 12345u;
        int s = (x >> 8) % SLOTS;
        /* Each thread works on its own row, and frees in the next thread's row half the time
         * it finds a block there, so blocks die on other threads than the one that made them. */
        void **slot = &slots[t][s];
        switch ((x >> 20) % 4) {
        case 0:
            zfree(*slot);
            *slot = zmalloc(1 + (x >> 4) % 700);
            break;
        case 1:
            *slot = zrealloc(*slot, 1 + (x >> 3) % 1500);
            break;
        case 2:
            zfree(*slot);
            *slot = zcalloc(1 + (x >> 5) % 300);
            break;
        default:
            zfree(*slot);
            *slot = NULL;
        }
    }
    return NULL;
}

int main(void)
{
    const int prefix = strcmp(zmalloc_layout(), "prefix_size") == 0;
    const size_t base = zmalloc_used_memory();
#define USED(extra) (zmalloc_used_memory() == base + (extra))

    void *p = zmalloc(100);
    CHECK(p != NULL);
    CHECK(USED(zmalloc_size(p)));
    if (prefix) {
        CHECK(zmalloc_size(p) == 100 + sizeof(size_t));
        CHECK(zmalloc_usable_size(p) == 100);
    } else {
        CHECK(zmalloc_size(p) == malloc_usable_size(p));
        CHECK(zmalloc_usable_size(p) == zmalloc_size(p));
        CHECK(zmalloc_usable_size(p) >= 100);
    }
    zfree(p);
    CHECK(USED(0));

    /* MALLOC_MIN_SIZE: a zero-byte request gets sizeof(long). */
    p = zmalloc(0);
    CHECK(p != NULL);
    CHECK(zmalloc_usable_size(p) >= sizeof(long));
    if (prefix)
        CHECK(zmalloc_usable_size(p) == sizeof(long));
    zfree(p);

    char *z = zcalloc(1000);
    int zero = 1;
    for (int i = 0; i < 1000; i++)
        zero &= z[i] == 0;
    CHECK(zero);
    CHECK(USED(zmalloc_size(z)));
    zfree(z);

    size_t u = 0, u2 = 0;
    p = zmalloc_usable(50, &u);
    CHECK(u == zmalloc_usable_size(p));
    zfree_usable(p, &u2);
    CHECK(u2 == u);
    p = zcalloc_usable(70, &u);
    CHECK(u == zmalloc_usable_size(p));
    zfree(p);
    CHECK(USED(0));

    /* ztry* return NULL without calling the OOM handler; z* call it, and return NULL when the
     * handler returns. */
    zmalloc_set_oom_handler(my_oom);
    oom_seen = 0;
    CHECK(ztrymalloc(SIZE_MAX / 2) == NULL);
    CHECK(ztrycalloc(SIZE_MAX / 2) == NULL);
    CHECK(ztrymalloc_usable(SIZE_MAX / 2, &u) == NULL);
    CHECK(oom_seen == 0);
    CHECK(zmalloc(SIZE_MAX / 2) == NULL);
    CHECK(oom_seen == SIZE_MAX / 2);
    oom_seen = 0;
    CHECK(zcalloc(SIZE_MAX / 2 + 5) == NULL);
    CHECK(oom_seen == SIZE_MAX / 2 + 5);
    CHECK(USED(0));

    /* ztryrealloc(NULL, n) allocates; growing keeps the contents. */
    p = ztryrealloc(NULL, 30);
    CHECK(p != NULL);
    CHECK(USED(zmalloc_size(p)));
    memcpy(p, "abc", 4);
    p = ztryrealloc(p, 3000);
    CHECK(p != NULL && strcmp(p, "abc") == 0);
    CHECK(USED(zmalloc_size(p)));
    if (prefix)
        CHECK(zmalloc_usable_size(p) == 3000);
    /* ztryrealloc(p, 0) frees and returns NULL. */
    CHECK(ztryrealloc(p, 0) == NULL);
    CHECK(USED(0));
    /* A realloc to SIZE_MAX/2 fails and frees the old block (Redis 7). */
    p = zmalloc(10);
    CHECK(ztryrealloc(p, SIZE_MAX / 2) == NULL);
    CHECK(USED(0));
    p = zmalloc(10);
    oom_seen = 0;
    CHECK(zrealloc(p, SIZE_MAX / 2) == NULL);
    CHECK(oom_seen == SIZE_MAX / 2);
    CHECK(USED(0));
    /* zrealloc(p, 0) frees without calling the OOM handler. */
    p = zmalloc(10);
    oom_seen = 0;
    CHECK(zrealloc(p, 0) == NULL);
    CHECK(oom_seen == 0);
    CHECK(USED(0));
    p = ztryrealloc_usable(NULL, 64, &u);
    CHECK(p != NULL && u == zmalloc_usable_size(p));
    p = zrealloc_usable(p, 128, &u);
    CHECK(p != NULL && u == zmalloc_usable_size(p));
    u = 99;
    CHECK(ztryrealloc_usable(p, 0, &u) == NULL && u == 0);
    CHECK(USED(0));

    char *s = zstrdup("hello, zmalloc");
    CHECK(strcmp(s, "hello, zmalloc") == 0);
    CHECK(USED(zmalloc_size(s)));
    zfree(s);
    zfree(NULL);
    CHECK(USED(0));

    /* Threads: used memory equals the live blocks' total once they are done. */
    pthread_t th[THREADS];
    for (long t = 0; t < THREADS; t++)
        pthread_create(&th[t], NULL, worker, (void *)t);
    for (int t = 0; t < THREADS; t++)
        pthread_join(th[t], NULL);
    size_t live = 0;
    for (int t = 0; t < THREADS; t++)
        for (int i = 0; i < SLOTS; i++)
            live += zmalloc_size(slots[t][i]);
    CHECK(USED(live));
    /* Frees on another thread than the one that allocated. */
    for (int t = 0; t < THREADS; t++)
        for (int i = 0; i < SLOTS; i += 2) {
            live -= zmalloc_size(slots[t][i]);
            zfree(slots[t][i]);
            slots[t][i] = NULL;
        }
    CHECK(USED(live));

    /* The default OOM handler prints and aborts: in a child. */
    int pipefd[2];
    CHECK(pipe(pipefd) == 0);
    pid_t child = fork();
    if (child == 0) {
        dup2(pipefd[1], 2);
        zmalloc_set_oom_handler(NULL); /* back to the default */
        zmalloc(SIZE_MAX / 2);
        _exit(3); /* not reached */
    }
    close(pipefd[1]);
    char msg[256] = {0};
    ssize_t n = read(pipefd[0], msg, sizeof msg - 1);
    (void)n;
    int st = 0;
    waitpid(child, &st, 0);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    char expect[128];
    snprintf(expect, sizeof expect, "zmalloc: Out of memory trying to allocate %zu bytes", SIZE_MAX / 2);
    CHECK(strstr(msg, expect) != NULL);

    if (failures) {
        fprintf(stderr, "zmalloc_edges: %d checks failed (%s layout)\n", failures, zmalloc_layout());
        return 1;
    }
    printf("ok %s\n", zmalloc_layout());
    return 0;
}
