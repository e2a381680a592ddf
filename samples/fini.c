/* fini: a library's destructor frees after the recorder's (samples/finilib.c, linked as
 * libfinilib.so). The program mallocs 700 B (zs_adopted) and hands it to the library, which frees
 * it in its destructor; it loses 300 B (zs_lost: definitely lost). Returns from main.
 *
 * Usage: fini      prints nothing, exits 0 (20..99: a libc assumption failed)
 *
 * At the end of the run the only live block is the lost one: the library's 48 B, the 700 B and
 * the 10 B of its destructor were all freed, after every destructor of the program's. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "zs_common.h"

void zs_lib_adopt(void *p);

volatile uintptr_t g_sink;

ZS_FN static void *zs_adopted(void)
{
    return malloc(700);
}

ZS_FN static void zs_lost(void)
{
    void *p = malloc(300);
    ZS_CHECK(20, p != NULL);
    memset(p, 1, 300);
    g_sink += (uintptr_t)p * 0x9E3779B97F4A7C15ull;
}

ZS_FN static void zs_scrub_stack(void)
{
    volatile char pad[64 * 1024];
    for (size_t i = 0; i < sizeof pad; i++)
        pad[i] = 0;
}

int main(void)
{
    void *p = zs_adopted();
    ZS_CHECK(21, p != NULL);
    zs_lib_adopt(p);
    zs_lost();
    ZS_KEEP();
    zs_scrub_stack();
    return 0;
}
