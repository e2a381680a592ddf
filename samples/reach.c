/* reach: blocks of every leak class, made on purpose, of known sizes.
 *
 * Usage: reach [PART...] [check] [fail]
 *        PART: reachable, lost, possible (default: all three). `check`: before main returns, call
 *        zmtrace_leak_check() (when traced) and exit 27 unless it returns 685, the bytes lost.
 *        `fail`: end with exit(3) (a failing program that leaks) instead of returning 0.
 *        Prints nothing, exits 0 (20..99: a libc assumption failed).
 *
 * What a leak check at exit finds (zmtrace's and valgrind memcheck's, --leak-check=full), per part,
 * as src/cli/tests/reach.rs asserts it:
 *
 *   reachable   zs_keep_global      1 block   1000 B   kept in a global pointer
 *               zs_keep_child       1 block    200 B   pointed to (start) from that block
 *               still reachable: 2 blocks, 1200 B
 *   lost        zs_lose_outright    1 block    333 B   definitely lost: its pointer is dropped
 *               zs_list_head        1 block     48 B   definitely lost: the head of a lost list
 *               zs_list_node        4 blocks   160 B   indirectly lost: the list's nodes (40 B each)
 *               zs_lose_cycle       2 blocks   144 B   two 72 B blocks pointing at each other:
 *                                                      one definitely, one indirectly lost
 *               definitely lost: 3 blocks, 453 B; indirectly lost: 5 blocks, 232 B
 *   possible    zs_keep_middle      1 block    256 B   possibly lost: only a pointer 100 bytes
 *                                                      into it is kept (in a global)
 *               zs_possible_child   1 block     24 B   possibly lost: pointed to only from it
 *               possibly lost: 2 blocks, 280 B
 *
 * Every block is filled before pointers are stored in it, so that no stale data in it points
 * anywhere; before main returns, zs_scrub_stack overwrites the dead stack where the zs_ functions
 * held their pointers (a scan of the stack at exit must not find them there: memcheck ignores
 * such words as undefined, zmtrace cannot tell them from live ones).
 */
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "zs_common.h"

struct node {
    struct node *next;
    char payload[32];
};

void *g_keep;         /* the reachable block */
char *g_middle;       /* 100 bytes into the possibly lost block */

/* Each zs_ function mallocs itself (a helper would name every site after the helper). */
#define ZS_FILLED(p, n, byte)                                                                      \
    do {                                                                                           \
        (p) = malloc(n);                                                                           \
        ZS_CHECK(20, (p) != NULL);                                                                 \
        memset((p), (byte), (n));                                                                  \
    } while (0)

ZS_FN void *zs_keep_child(void)
{
    void *p;
    ZS_FILLED(p, 200, 0x11);
    return p;
}

ZS_FN void zs_keep_global(void)
{
    void **p;
    ZS_FILLED(p, 1000, 0x12);
    p[2] = zs_keep_child();
    ZS_KEEP();
    g_keep = p;
}

ZS_FN void zs_lose_outright(void)
{
    void *volatile p;
    ZS_FILLED(p, 333, 0x13);
}

ZS_FN struct node *zs_list_node(struct node *next)
{
    struct node *n;
    ZS_FILLED(n, sizeof *n, 0x14);
    n->next = next;
    return n;
}

ZS_FN void *zs_list_head(struct node *first)
{
    void **h;
    ZS_FILLED(h, 48, 0x15);
    h[0] = first;
    return h;
}

ZS_FN void zs_lose_list(void)
{
    struct node *first = NULL;
    for (int i = 0; i < 4; i++) {
        first = zs_list_node(first);
        ZS_KEEP();
    }
    void *volatile head = zs_list_head(first);
    (void)head;
}

ZS_FN void zs_lose_cycle(void)
{
    void **a, **b;
    ZS_FILLED(a, 72, 0x16);
    ZS_FILLED(b, 72, 0x17);
    a[3] = b;
    b[5] = a;
    /* Nothing reads a or b again: without this, gcc drops both stores. */
    __asm__ volatile("" : : "r"(a), "r"(b) : "memory");
}

ZS_FN void *zs_possible_child(void)
{
    void *p;
    ZS_FILLED(p, 24, 0x18);
    return p;
}

ZS_FN void zs_keep_middle(void)
{
    void **p;
    ZS_FILLED(p, 256, 0x19);
    p[0] = zs_possible_child();
    ZS_KEEP();
    g_middle = (char *)p + 100;
}

/* Overwrites the dead stack below main's frame. */
ZS_FN void zs_scrub_stack(void)
{
    volatile char pad[64 * 1024];
    for (size_t i = 0; i < sizeof pad; i++)
        pad[i] = 0;
}

int main(int argc, char **argv)
{
    int reachable = 0, lost = 0, possible = 0, check = 0, fail = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "check") == 0)
            check = 1;
        else if (strcmp(argv[i], "fail") == 0)
            fail = 1;
        else if (strcmp(argv[i], "reachable") == 0)
            reachable = 1;
        else if (strcmp(argv[i], "lost") == 0)
            lost = 1;
        else if (strcmp(argv[i], "possible") == 0)
            possible = 1;
        else
            sample_check_failed(21, "unknown part");
    }
    if (!reachable && !lost && !possible)
        reachable = lost = possible = 1;
    if (reachable)
        zs_keep_global();
    ZS_KEEP();
    if (lost) {
        zs_lose_outright();
        ZS_KEEP();
        zs_lose_list();
        ZS_KEEP();
        zs_lose_cycle();
        ZS_KEEP();
    }
    if (possible)
        zs_keep_middle();
    ZS_KEEP();
    zs_scrub_stack();
    ZS_KEEP();
    if (check) {
        long (*leak_check)(void) = (long (*)(void))dlsym(RTLD_DEFAULT, "zmtrace_leak_check");
        if (leak_check != NULL && leak_check() != 685)
            sample_check_failed(27, "zmtrace_leak_check() != 685");
    }
    if (fail)
        exit(3);
    return 0;
}
