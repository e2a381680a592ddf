/* deeplib: the library that samples/deepbind.c loads with RTLD_DEEPBIND (built as libdeeplib.so).
 * Its own malloc and free bind to libc's under RTLD_DEEPBIND unless the tracer rebinds them, and
 * so does its pthread_getattr_np: zs_lib_thread_stack starts a thread that asks for its own
 * attributes before it allocates anything (glibc allocates inside, holding the thread's lock),
 * then mallocs and frees 100 B, and returns the thread's stack size. zs_lib_exit ends the process
 * with _exit, past every exit hook unless rebound. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "zs_common.h"

ZS_FN void *zs_lib_alloc(size_t n)
{
    void *p = malloc(n);
    if (p != NULL)
        memset(p, 0x77, n);
    return p;
}

ZS_FN void zs_lib_free(void *p)
{
    free(p);
    ZS_KEEP();
}

static void *zs_lib_thread(void *arg)
{
    pthread_attr_t a;
    void *addr;
    size_t size = 0;
    (void)arg;
    if (pthread_getattr_np(pthread_self(), &a) != 0)
        return NULL;
    if (pthread_attr_getstack(&a, &addr, &size) != 0)
        size = 0;
    pthread_attr_destroy(&a);
    free(malloc(100));
    return (void *)size;
}

ZS_FN size_t zs_lib_thread_stack(void)
{
    pthread_t t;
    void *r = NULL;
    if (pthread_create(&t, NULL, zs_lib_thread, NULL) != 0)
        return 0;
    pthread_join(t, &r);
    return (size_t)r;
}

ZS_FN void zs_lib_exit(int status)
{
    _exit(status);
}
