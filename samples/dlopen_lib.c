/* Loads the library named by argv[1] with dlopen, after start-up (not LD_PRELOAD), and calls its
 * malloc and free from the main thread and from a thread created afterwards. libzmtrace.so keeps
 * its per-thread words in initial-exec TLS (DF_STATIC_TLS), which a late dlopen serves from
 * glibc's static TLS surplus, or refuses with a loader error: either way no crash.
 * Prints "loaded, N calls" or "refused: <dlerror>". */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

static void *(*lib_malloc)(size_t);
static void (*lib_free)(void *);
void *volatile sink;

static void *calls(void *arg) {
    long n = (long)arg;
    for (long i = 0; i < n; i++) {
        char *p = lib_malloc(32 + i % 64);
        memset(p, 1, 32);
        sink = p;
        lib_free(p);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        printf("refused: %s\n", dlerror());
        return 0;
    }
    lib_malloc = (void *(*)(size_t))dlsym(h, "malloc");
    lib_free = (void (*)(void *))dlsym(h, "free");
    if (!lib_malloc || !lib_free) return 3;
    calls((void *)1000L);
    pthread_t t;
    if (pthread_create(&t, NULL, calls, (void *)1000L) != 0) return 4;
    pthread_join(t, NULL);
    printf("loaded, 2000 calls\n");
    return 0;
}
