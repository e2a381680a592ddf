/* sigstorm: a signal storm. A SIGALRM every 100 us (setitimer) whose handler allocates, while the
 * main thread spins through three call paths and allocates too, for MS milliseconds.
 *
 * Every stack captured in the handler runs through the kernel's signal frame: the handler's
 * frames, `__restore_rt`, the instruction the signal interrupted (an address that is not a return
 * address), then the interrupted frame's callers, up to `main` and `_start`. An unwinder that does
 * not step through the signal frame ends the stack there or continues with garbage (each signal
 * then makes a new stack, and the stack store grows with the number of signals).
 *
 * glibc's malloc is not async-signal-safe: the main thread sets `busy` around its own allocator
 * calls and the handler allocates only when it is clear (it counts the signals it skipped), so
 * the handler never enters malloc while the main thread is in it. It frees the block it made at
 * the previous signal, so nothing leaks.
 *
 * Usage: sigstorm [altstack] [MS] [ALLOCS]: runs MS milliseconds (default 500), and on until the
 * handler has allocated ALLOCS times (default 0; at most 20 s in all, then it exits with 25). With
 * "altstack" the handler runs on a `sigaltstack` (a static array, far from the thread's stack),
 * SA_ONSTACK.
 * Prints "signals N handler_allocs H skipped S main_allocs M" on stdout at the end. The sample's
 * events: H + M mallocs from the handler (zs_handler_alloc) and the main paths
 * (zs_main_alloc), and as many frees; nothing leaked.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "zs_common.h"

static volatile sig_atomic_t busy;
static volatile long signals, handler_allocs, skipped, main_allocs;
static void *volatile handler_block;
static void *volatile main_block;
static volatile unsigned long spun;
static char alt_stack[64 * 1024] __attribute__((aligned(16)));

ZS_FN void zs_handler_alloc(void)
{
    void *old = handler_block;
    handler_block = malloc(48);
    free(old);
    handler_allocs++;
    ZS_KEEP();
}

ZS_FN void zs_on_alarm(int sig)
{
    (void)sig;
    signals++;
    if (busy)
        skipped++;
    else
        zs_handler_alloc();
    ZS_KEEP();
}

ZS_FN void zs_main_alloc(unsigned n)
{
    busy = 1;
    void *old = main_block;
    main_block = malloc(16 + n % 200);
    free(old);
    busy = 0;
    main_allocs++;
    ZS_KEEP();
}

/* Where the signals mostly land: a short loop. */
ZS_FN void zs_spin(unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        spun++;
    ZS_KEEP();
}

ZS_FN void zs_mid(unsigned n)
{
    zs_spin(n);
    zs_main_alloc(n);
    ZS_KEEP();
}

ZS_FN void zs_path_a(unsigned n)
{
    zs_spin(n);
    ZS_KEEP();
}

ZS_FN void zs_path_b(unsigned n)
{
    zs_mid(n);
    ZS_KEEP();
}

ZS_FN void zs_path_c(unsigned n)
{
    zs_spin(n / 2);
    zs_mid(n / 2);
    ZS_KEEP();
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int main(int argc, char **argv)
{
    int altstack = 0, pos = 0;
    long ms = 500, want = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "altstack"))
            altstack = 1;
        else if (pos++ == 0)
            ms = atol(argv[i]);
        else
            want = atol(argv[i]);
    }
    if (altstack) {
        stack_t ss = {.ss_sp = alt_stack, .ss_size = sizeof alt_stack, .ss_flags = 0};
        ZS_CHECK(20, sigaltstack(&ss, NULL) == 0);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = zs_on_alarm;
    sa.sa_flags = SA_RESTART | (altstack ? SA_ONSTACK : 0);
    sigemptyset(&sa.sa_mask);
    ZS_CHECK(21, sigaction(SIGALRM, &sa, NULL) == 0);
    struct itimerval it = {{0, 100}, {0, 100}};
    ZS_CHECK(22, setitimer(ITIMER_REAL, &it, NULL) == 0);

    double start = now_ms(), end = start + ms;
    unsigned x = 1;
    for (;;) {
        double now = now_ms();
        if (now >= end && handler_allocs >= want)
            break;
        ZS_CHECK(25, now < start + 20000);
        for (int k = 0; k < 8; k++) {
            x = x * 1103515245u + 12345u;
            switch ((x >> 16) % 3) {
            case 0: zs_path_a(2000 + (x >> 20) % 2000); break;
            case 1: zs_path_b(2000 + (x >> 20) % 2000); break;
            default: zs_path_c(2000 + (x >> 20) % 2000); break;
            }
        }
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    ZS_CHECK(23, setitimer(ITIMER_REAL, &off, NULL) == 0);
    free(handler_block);
    handler_block = NULL;
    free(main_block);
    main_block = NULL;
    ZS_CHECK(24, signals > 0 && handler_allocs > 0);
    printf("signals %ld handler_allocs %ld skipped %ld main_allocs %ld\n", signals, handler_allocs,
           skipped, main_allocs);
    return 0;
}
