/* Threads that ask for their own attributes before they allocate anything
 * (src/cli/tests/integration/threads.rs): glibc's pthread_getattr_np holds the thread's lock
 * while it allocates (the main thread's /proc/self/maps through fopen, every thread's CPU set),
 * which is what Rust's runtime does on every thread it starts. The main thread asks first
 * thing in main, then 4 threads each ask first thing, then malloc and free one block of 100 B
 * and keep one of 64 B (zs_keep, still reachable). Prints each thread's stack size in KiB. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define THREADS 4

void *volatile g_keep[THREADS];

static size_t own_stack_size(void) {
    pthread_attr_t a;
    void *addr;
    size_t size;
    if (pthread_getattr_np(pthread_self(), &a) != 0) abort();
    if (pthread_attr_getstack(&a, &addr, &size) != 0) abort();
    pthread_attr_destroy(&a);
    return size;
}

__attribute__((noinline)) static void zs_keep(long i) { g_keep[i] = malloc(64); }

static void *body(void *arg) {
    size_t size = own_stack_size();
    free(malloc(100));
    zs_keep((long)arg);
    return (void *)size;
}

int main(void) {
    size_t main_size = own_stack_size();
    pthread_t t[THREADS];
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 1 << 20);
    for (long i = 0; i < THREADS; i++)
        if (pthread_create(&t[i], &a, body, (void *)i) != 0) return 1;
    for (int i = 0; i < THREADS; i++) {
        void *r;
        pthread_join(t[i], &r);
        printf("thread %d: %zu KiB\n", i, (size_t)r / 1024);
    }
    printf("main: %s\n", main_size > 0 ? "known" : "unknown");
    return 0;
}
