/* clean: a program that frees everything it allocates, but uses the parts of glibc that allocate
 * for themselves once and never give it back: stdio (the stdout buffer), a thread (its DTV and
 * TLS), dlopen/dlclose (the loader's bookkeeping) and setlocale.
 *
 * Usage: clean   (prints one line, exits 0; 20..99: a libc assumption failed)
 *
 * zmtrace's built-in suppressions must hide every block glibc keeps: `zmtrace leaks` reports
 * zero blocks in every class (src/cli/tests/suppressions.rs). Its own blocks (zs_ functions) are
 * all freed.
 */
#include <dlfcn.h>
#include <locale.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zs_common.h"

void *volatile g_sink;

ZS_FN void zs_alloc_and_free(void)
{
    for (int i = 1; i <= 8; i++) {
        char *p = malloc(i * 100);
        ZS_CHECK(20, p != NULL);
        memset(p, i, i * 100);
        g_sink = p;
        free(p);
    }
}

static void *worker(void *arg)
{
    (void)arg;
    zs_alloc_and_free();
    return NULL;
}

int main(void)
{
    ZS_CHECK(21, setlocale(LC_ALL, "C.UTF-8") != NULL);
    zs_alloc_and_free();

    pthread_t t;
    ZS_CHECK(22, pthread_create(&t, NULL, worker, NULL) == 0);
    ZS_CHECK(23, pthread_join(t, NULL) == 0);

    void *lib = dlopen("libm.so.6", RTLD_NOW);
    ZS_CHECK(24, lib != NULL);
    double (*cosine)(double) = (double (*)(double))dlsym(lib, "cos");
    ZS_CHECK(25, cosine != NULL);
    printf("clean: cos(0) = %.1f\n", cosine(0.0));
    ZS_CHECK(26, dlclose(lib) == 0);
    return 0;
}
