/* deepbind: a library loaded with RTLD_DEEPBIND allocates and frees.
 *
 * Usage: deepbind LIBRARY [_exit]    (the path of libdeeplib.so, from samples/deeplib.c)
 *        prints nothing, exits 0 (20..99: a libc assumption failed); with `_exit`, the library
 *        ends the process with _exit(0) instead of main returning
 *
 * The library's zs_lib_alloc mallocs 500 B (kept in a global: still reachable), 600 B (lost:
 * definitely lost), and 700 B (freed by the library: not live at exit). The program mallocs
 * 800 B itself (zs_main_block) and has the library free it: not live at exit either (without
 * the library's free in the dump it would be a phantom block, live for ever). Then the library
 * starts a thread that asks for its own attributes before it allocates (zs_lib_thread_stack:
 * 24 when it could not tell the thread's stack size).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "zs_common.h"

volatile uintptr_t g_sink;
void *g_keep;

ZS_FN void *zs_main_block(void)
{
    void *p = malloc(800);
    ZS_CHECK(20, p != NULL);
    memset(p, 0x12, 800);
    return p;
}

ZS_FN void zs_scrub_stack(void)
{
    volatile char pad[64 * 1024];
    for (size_t i = 0; i < sizeof pad; i++)
        pad[i] = 0;
}

int main(int argc, char **argv)
{
    ZS_CHECK(21, argc == 2 || argc == 3);
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    ZS_CHECK(22, h != NULL);
    void *(*lib_alloc)(size_t) = (void *(*)(size_t))dlsym(h, "zs_lib_alloc");
    void (*lib_free)(void *) = (void (*)(void *))dlsym(h, "zs_lib_free");
    void (*lib_exit)(int) = (void (*)(int))dlsym(h, "zs_lib_exit");
    size_t (*lib_thread_stack)(void) = (size_t(*)(void))dlsym(h, "zs_lib_thread_stack");
    ZS_CHECK(23, lib_alloc != NULL && lib_free != NULL && lib_thread_stack != NULL &&
                     lib_exit != NULL);
    g_keep = lib_alloc(500);
    g_sink += (uintptr_t)lib_alloc(600) * 0x9E3779B97F4A7C15ull;
    lib_free(lib_alloc(700));
    lib_free(zs_main_block());
    ZS_CHECK(24, lib_thread_stack() > 0);
    ZS_KEEP();
    zs_scrub_stack();
    if (argc == 3)
        lib_exit(0);
    return 0;
}
