/* idlepool: a worker thread allocates at start-up, then waits on a condition variable that is
 * never signalled (an idle thread pool's worker, as gdb's); main allocates and frees a block and
 * returns, a few milliseconds after the worker's allocation. The worker is asleep at exit, not
 * allocating: the dump ends normally.
 *
 * Usage: idlepool     prints nothing, exits 0 (20..99: a libc assumption failed) */
#include <pthread.h>
#include <stdlib.h>

#include "zs_common.h"

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_never = PTHREAD_COND_INITIALIZER;
static int g_ready;
void *volatile g_worker_block;

ZS_FN static void zs_worker_start(void)
{
    g_worker_block = malloc(64);
}

static void *worker(void *arg)
{
    (void)arg;
    zs_worker_start();
    pthread_mutex_lock(&g_lock);
    g_ready = 1;
    pthread_cond_broadcast(&g_never);
    for (;;)
        pthread_cond_wait(&g_never, &g_lock);
    return NULL;
}

ZS_FN static void zs_main_temp(void)
{
    void *volatile p = malloc(32);
    free(p);
    ZS_KEEP();
}

int main(void)
{
    pthread_t t;
    ZS_CHECK(20, pthread_create(&t, NULL, worker, NULL) == 0);
    pthread_mutex_lock(&g_lock);
    while (!g_ready)
        pthread_cond_wait(&g_never, &g_lock);
    pthread_mutex_unlock(&g_lock);
    /* Until the worker is asleep in its wait (it holds the lock until then). */
    pthread_mutex_lock(&g_lock);
    pthread_mutex_unlock(&g_lock);
    zs_main_temp();
    return 0;
}
