/* The floor of any LD_PRELOAD tracer: malloc, calloc, realloc and free that do nothing but call
 * glibc's. Built as a shared library by the suite (ZMTRACE_FLOOR=1, configuration "forward"): what
 * a program pays for its allocator calls going through one more library, before a tracer does
 * anything at all. The tracer's overhead over this floor is what the tracer can still shave.
 *
 * Built with -DIDLE_THREAD (configuration "forward+thread"), it also starts one thread that
 * sleeps for good, as a tracer's writer thread would: once a process has a second thread, glibc's
 * malloc leaves its single-thread path and takes the arena's lock on every call that misses its
 * per-thread cache, whatever that thread does. */
#include <stddef.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);

void *malloc(size_t n) { return __libc_malloc(n); }
void *calloc(size_t n, size_t size) { return __libc_calloc(n, size); }
void *realloc(void *p, size_t n) { return __libc_realloc(p, n); }
void free(void *p) { __libc_free(p); }

#ifdef IDLE_THREAD
#include <pthread.h>
#include <unistd.h>

static void *idle(void *arg)
{
    (void)arg;
    for (;;)
        pause();
    return NULL;
}

__attribute__((constructor)) static void start_idle_thread(void)
{
    pthread_t t;
    if (pthread_create(&t, NULL, idle, NULL) == 0)
        pthread_detach(t);
}
#endif
