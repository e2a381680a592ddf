/* reach_threads: blocks that only another running thread holds at exit, on its stack and in a
 * register; a leak check at exit must stop that thread and read both.
 *
 * Usage: reach_threads   (prints nothing, exits 0 while its holder thread still runs; 20..99: a
 *                         libc assumption failed)
 *
 * What a leak check at exit finds (zmtrace's and valgrind memcheck's), as src/cli/tests/reach.rs
 * asserts it:
 *
 *   zs_stack_block      1 block   512 B   still reachable: only the holder thread's stack points to it
 *   zs_register_block   1 block   384 B   still reachable: only the holder thread's r12 points to it
 *   zs_lose_in_main     1 block   111 B   definitely lost (the main thread drops its pointer)
 *
 * The holder thread moves its register block's pointer into r12, wipes the 64 KiB of dead stack
 * below its stack pointer (where malloc and the recorder left copies of it), then waits in
 * pause(2) forever, in a loop written in assembly so that no frame of its own holds the pointer.
 * Its thread's own glibc allocations (the DTV) stay reachable through its TLS, at the top of its
 * stack.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "zs_common.h"

static volatile int g_ready;

/* Each zs_ function mallocs itself (a helper would name every site after the helper). */
#define ZS_FILLED(p, n, byte)                                                                      \
    do {                                                                                           \
        (p) = malloc(n);                                                                           \
        ZS_CHECK(20, (p) != NULL);                                                                 \
        memset((p), (byte), (n));                                                                  \
    } while (0)

ZS_FN void *zs_stack_block(void)
{
    void *p;
    ZS_FILLED(p, 512, 0x31);
    return p;
}

ZS_FN void *zs_register_block(void)
{
    void *p;
    ZS_FILLED(p, 384, 0x32);
    return p;
}

/* Keeps `p` in r12 alone, wipes the dead stack below, says it is ready, and waits forever. */
__attribute__((noreturn)) static void hold_in_register(void *p)
{
    __asm__ volatile("mov %1, %%r12\n\t"
                     "lea -65536(%%rsp), %%rdi\n\t"
                     "xor %%eax, %%eax\n\t"
                     "mov $8192, %%ecx\n\t"
                     "cld\n\t"
                     "rep stosq\n\t"
                     "movl $1, %0\n\t"
                     "1: mov $34, %%eax\n\t" /* SYS_pause */
                     "syscall\n\t"
                     "jmp 1b\n\t"
                     : "=m"(g_ready)
                     : "r"(p)
                     : "rax", "rcx", "rdi", "r11", "r12", "memory");
    __builtin_unreachable();
}

ZS_FN void *zs_holder(void *arg)
{
    (void)arg;
    void *volatile on_stack[2];
    on_stack[0] = zs_stack_block();
    on_stack[1] = on_stack[0];
    hold_in_register(zs_register_block());
}

ZS_FN void zs_lose_in_main(void)
{
    void *volatile p;
    ZS_FILLED(p, 111, 0x33);
}

/* Overwrites the dead stack below main's frame. */
ZS_FN void zs_scrub_stack(void)
{
    volatile char pad[64 * 1024];
    for (size_t i = 0; i < sizeof pad; i++)
        pad[i] = 0;
}

int main(void)
{
    pthread_t t;
    ZS_CHECK(21, pthread_create(&t, NULL, zs_holder, NULL) == 0);
    while (!g_ready)
        sleep_ms(1);
    zs_lose_in_main();
    ZS_KEEP();
    zs_scrub_stack();
    ZS_KEEP();
    return 0;
}
