/* finilib: a library the program samples/fini.c links against (built as libfinilib.so), with a
 * constructor and a destructor of its own, as tar's libselinux has. Its constructor mallocs 48 B
 * (zs_lib_init_block) and keeps it; zs_lib_adopt keeps a block the program hands it; its
 * destructor frees both and mallocs and frees 10 B (zs_lib_fini_temp). The loader initialises it
 * before libzmtrace.so (the program needs it; the preload needs only libc), so it is finalised
 * after it: the recorder's own destructor is too early to end the dump. */
#include <stdlib.h>

#include "zs_common.h"

static void *g_init_block;
static void *g_adopted;

ZS_FN static void *zs_lib_init_block(void)
{
    return malloc(48);
}

ZS_FN static void zs_lib_fini_temp(void)
{
    void *volatile p = malloc(10);
    free(p);
    ZS_KEEP();
}

__attribute__((constructor)) static void lib_init(void)
{
    g_init_block = zs_lib_init_block();
}

__attribute__((destructor)) static void lib_fini(void)
{
    free(g_init_block);
    free(g_adopted);
    zs_lib_fini_temp();
}

ZS_FN void zs_lib_adopt(void *p)
{
    g_adopted = p;
}
