/* profile: allocations whose totals per function are known exactly, for the exports
 * (`zmtrace export`: pprof, speedscope, folded), as src/cli/tests/export.rs asserts them.
 *
 *   function        alloc_objects  alloc_space       inuse_objects  inuse_space  lost_space
 *   zs_keep               5        5 x 1000 = 5000         3           3000           0  (still reachable)
 *   zs_temp              10        10 x 128 = 1280         0              0           0  (freed at once)
 *   zs_grow               1        16 + 32 + 64 = 112      1             64           0  (reachable;
 *                                  (a malloc, two reallocs: the realloc is no new object)
 *   zs_zeroed             1        calloc(3, 100) = 300    1            300           0  (reachable)
 *   zs_lose               4        4 x 256 = 1024          4           1024        1024  (definitely lost)
 *   zs_lose_tree          1        64                      1             64          64  (definitely lost)
 *   zs_lose_child         2        2 x 32 = 64             2             64          64  (indirectly lost:
 *                                                                                        the tree's)
 *   total                24        7844                   12           4516        1152
 *
 * Nothing else allocates (no stdio, no threads). Prints nothing, exits 0 (20..99: a libc
 * assumption failed).
 */
#include <stdlib.h>
#include <string.h>

#include "zs_common.h"

void *g_keep[5];
void *g_grown;
void *g_zeroed;
void *volatile g_sink;

struct tree {
    struct tree *left, *right;
    long pad[6];
};

ZS_FN void zs_keep(void)
{
    for (int i = 0; i < 5; i++) {
        g_keep[i] = malloc(1000);
        ZS_CHECK(20, g_keep[i] != NULL);
        memset(g_keep[i], 1, 1000);
    }
    for (int i = 0; i < 2; i++) {
        free(g_keep[i]);
        g_keep[i] = NULL;
    }
}

ZS_FN void zs_temp(void)
{
    for (int i = 0; i < 10; i++) {
        char *p = malloc(128);
        ZS_CHECK(21, p != NULL);
        memset(p, 2, 128);
        g_sink = p;
        free(p);
    }
    g_sink = NULL;
}

ZS_FN void zs_grow(void)
{
    char *p = malloc(16);
    ZS_CHECK(22, p != NULL);
    p = realloc(p, 32);
    ZS_CHECK(23, p != NULL);
    p = realloc(p, 64);
    ZS_CHECK(24, p != NULL);
    memset(p, 3, 64);
    g_grown = p;
}

ZS_FN void zs_zeroed(void)
{
    g_zeroed = calloc(3, 100);
    ZS_CHECK(25, g_zeroed != NULL);
}

ZS_FN void zs_lose(void)
{
    for (int i = 0; i < 4; i++) {
        char *p = malloc(256);
        ZS_CHECK(26, p != NULL);
        memset(p, 4, 256);
        g_sink = p;
    }
    /* The last pointer goes too: nothing points at any of the four. */
    g_sink = NULL;
}

ZS_FN struct tree *zs_lose_child(void)
{
    struct tree *t = malloc(32);
    ZS_CHECK(27, t != NULL);
    memset(t, 0, 32);
    return t;
}

ZS_FN void zs_lose_tree(void)
{
    struct tree *t = malloc(sizeof *t); /* 64 bytes */
    ZS_CHECK(28, t != NULL && sizeof *t == 64);
    memset(t, 0, sizeof *t);
    t->left = zs_lose_child();
    ZS_KEEP();
    t->right = zs_lose_child();
    ZS_KEEP();
    /* The root is forgotten: it is definitely lost, its children indirectly. */
    __asm__ volatile("" : : "r"(t) : "memory");
}

/* Overwrites the dead stack below main's frame, where the zs_ functions held their pointers. */
ZS_FN void zs_scrub_stack(void)
{
    volatile char pad[64 * 1024];
    for (size_t i = 0; i < sizeof pad; i++)
        pad[i] = 0;
}

int main(void)
{
    zs_keep();
    ZS_KEEP();
    zs_temp();
    ZS_KEEP();
    zs_grow();
    ZS_KEEP();
    zs_zeroed();
    ZS_KEEP();
    zs_lose();
    ZS_KEEP();
    zs_lose_tree();
    ZS_KEEP();
    zs_scrub_stack();
    ZS_KEEP();
    return 0;
}
