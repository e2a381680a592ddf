/* roots: one block held only in each kind of root the leak check has, and the cases that once
 * made its classes wrong or unstable.
 *
 * Usage: roots MODE [LONG]  (prints nothing, exits 0; 20..99: a libc assumption failed)
 *
 * Every mode but the last four allocates `zs_lost` (333 B, definitely lost: its pointer is
 * scrambled into a volatile sum, never stored) and one block `zs_held` whose only pointer lives in the
 * root named by the mode; the check must find it still reachable:
 *
 *   anon        zs_held 1000 B  in an anonymous private mapping of the program's (1 MiB)
 *   file        zs_held 1100 B  in a writable MAP_PRIVATE mapping of a file
 *   mremap      zs_held 1200 B  in an anonymous mapping moved by mremap(MREMAP_MAYMOVE|FIXED)
 *   syscall     zs_held 1300 B  on the stack of a thread blocked in read(2) on a pipe
 *   tls         zs_held 1400 B  in a __thread variable of the main thread, and
 *               zs_held_thread 1450 B in the same variable of a thread blocked in read(2)
 *   altstack    zs_held 1500 B  on a signal alternate stack (mapped by the program), in the
 *                               frame of the handler, which calls exit(0) there
 *   coro_malloc zs_held 1600 B  on the stack of a suspended coroutine (makecontext) whose
 *                               stack is a malloc'd block kept in a global
 *   coro_mmap   zs_held 1700 B  the same on a stack mapped by the program
 *   argv        zs_held 1900 B  in the strings of the argument vector, at the top of the main
 *                               thread's stack: `roots argv LONG`, its pointer stored in the
 *                               last 8-aligned word of LONG (5,000 bytes: more than a page
 *                               above the start code's stack pointer, past where glibc puts
 *                               the main thread's stack top). ld keeps blocks in argv so.
 *   guard       zs_guarded 12288 B a page-aligned block kept in a global whose middle page is
 *                               made PROT_NONE (a guard page), and zs_held_child 1800 B whose
 *                               only pointer is in that block's first page: both still
 *                               reachable, the program exits 0 (reading the guard page would
 *                               kill it); the check counts 1 block (12288 B) it could not read
 *
 * The last four:
 *   fork        the parent forks and waits; the child loses 5 blocks (zs_child_lost, 100..104
 *               B, 510 B) and calls _exit(0): its check finds 5 definitely lost, every run
 *   lost1000    zs_lost_many: 1,000 blocks of 64 B definitely lost
 *   last        zs_keep (2000 B, kept in a global: still reachable), then zs_lost_last (777 B)
 *               as the very last allocation before main returns: definitely lost
 *   uninit      zs_uninit: 10,000 blocks of 24..80 B (520,000 B), never written, lost
 *
 * valgrind memcheck (--leak-check=full) finds the same classes for the zs_ blocks; the stack is
 * scrubbed before the check where a zs_ function held a pointer (see reach.c for why).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>

#include "zs_common.h"

volatile uintptr_t g_sink;
void *g_keep;

#define ZS_FILLED(p, n, byte)                                                                      \
    do {                                                                                           \
        (p) = malloc(n);                                                                           \
        ZS_CHECK(20, (p) != NULL);                                                                 \
        memset((p), (byte), (n));                                                                  \
    } while (0)

ZS_FN void zs_scrub_stack(void)
{
    volatile char pad[64 * 1024];
    for (size_t i = 0; i < sizeof pad; i++)
        pad[i] = 0;
}

ZS_FN void zs_lost(void)
{
    void *p;
    ZS_FILLED(p, 333, 0x33);
    g_sink += (uintptr_t)p * 0x9E3779B97F4A7C15ull;
}

ZS_FN void *zs_held(size_t n)
{
    void *p;
    ZS_FILLED(p, n, 0x44);
    return p;
}

ZS_FN void *zs_held_thread(size_t n)
{
    void *p;
    ZS_FILLED(p, n, 0x45);
    return p;
}

ZS_FN void *zs_held_child(size_t n)
{
    void *p;
    ZS_FILLED(p, n, 0x46);
    return p;
}

ZS_FN void *zs_guarded(void)
{
    void *b;
    ZS_CHECK(38, posix_memalign(&b, 4096, 3 * 4096) == 0);
    memset(b, 0, 3 * 4096);
    return b;
}

static void *map_anon(size_t n)
{
    void *m = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ZS_CHECK(21, m != MAP_FAILED);
    return m;
}

/* ---- threads blocked in a system call ---------------------------------------------------- */

static int g_ready[2], g_never[2];
__thread void *volatile t_keep; /* never read: volatile, or gcc drops the stores */

ZS_FN void zs_block_in_read(size_t n, int in_tls)
{
    void *volatile held;
    if (in_tls) {
        t_keep = zs_held_thread(n);
    } else {
        held = zs_held(n);
    }
    ZS_KEEP();
    char c = 1;
    ZS_CHECK(22, write(g_ready[1], &c, 1) == 1);
    for (;;)
        (void)!read(g_never[0], &c, 1); /* never written: blocks until the process ends */
    (void)held;
}

static void *blocked_thread(void *arg)
{
    zs_block_in_read(*(size_t *)arg, (*(size_t *)arg) == 1450);
    return NULL;
}

static void start_blocked_thread(size_t *n)
{
    ZS_CHECK(23, pipe(g_ready) == 0 && pipe(g_never) == 0);
    pthread_t t;
    ZS_CHECK(24, pthread_create(&t, NULL, blocked_thread, n) == 0);
    char c;
    ZS_CHECK(25, read(g_ready[0], &c, 1) == 1);
}

/* ---- a signal alternate stack ------------------------------------------------------------ */

ZS_FN void zs_on_altstack(int sig)
{
    (void)sig;
    void *volatile held = zs_held(1500);
    ZS_KEEP();
    (void)held;
    exit(0);
}

/* ---- coroutines ------------------------------------------------------------------------------ */

static ucontext_t g_main_ctx, g_coro_ctx;
static void *g_coro_stack;

ZS_FN void zs_coroutine(int n)
{
    void *volatile held = zs_held((size_t)n);
    ZS_KEEP();
    swapcontext(&g_coro_ctx, &g_main_ctx); /* never resumed */
    (void)held;
}

static void run_coroutine(void *stack, size_t size, int n)
{
    ZS_CHECK(26, getcontext(&g_coro_ctx) == 0);
    g_coro_ctx.uc_stack.ss_sp = stack;
    g_coro_ctx.uc_stack.ss_size = size;
    g_coro_ctx.uc_link = &g_main_ctx;
    makecontext(&g_coro_ctx, (void (*)(void))zs_coroutine, 1, n);
    ZS_CHECK(27, swapcontext(&g_main_ctx, &g_coro_ctx) == 0);
}

/* ---- the last four ----------------------------------------------------------------------------- */

ZS_FN void zs_child_lost(void)
{
    for (int i = 0; i < 5; i++)
        g_sink += (uintptr_t)malloc(100 + i) * 0x9E3779B97F4A7C15ull;
}

ZS_FN void zs_lost_many(void)
{
    for (int i = 0; i < 1000; i++) {
        char *p = malloc(64);
        ZS_CHECK(28, p != NULL);
        memset(p, 0x55, 64);
        g_sink += (uintptr_t)p * 0x9E3779B97F4A7C15ull;
    }
}

ZS_FN void zs_keep(void)
{
    void *p;
    ZS_FILLED(p, 2000, 0x66);
    g_keep = p;
}

ZS_FN void zs_lost_last(void)
{
    g_sink += (uintptr_t)malloc(777) * 0x9E3779B97F4A7C15ull;
}

ZS_FN void zs_uninit(void)
{
    for (int i = 0; i < 10000; i++)
        g_sink += (uintptr_t)malloc(24 + (i % 8) * 8) * 0x9E3779B97F4A7C15ull;
}

int main(int argc, char **argv)
{
    ZS_CHECK(29, argc == 2 || (argc == 3 && strcmp(argv[1], "argv") == 0));
    const char *mode = argv[1];
    if (strcmp(mode, "fork") == 0) {
        pid_t pid = fork();
        ZS_CHECK(30, pid >= 0);
        if (pid == 0) {
            zs_child_lost();
            ZS_KEEP();
            zs_scrub_stack();
            _exit(0);
        }
        int status;
        ZS_CHECK(31, waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
                         WEXITSTATUS(status) == 0);
        return 0;
    }
    if (strcmp(mode, "lost1000") == 0) {
        zs_lost_many();
        ZS_KEEP();
        zs_scrub_stack();
        return 0;
    }
    if (strcmp(mode, "last") == 0) {
        zs_keep();
        zs_lost_last();
        ZS_KEEP();
        return 0;
    }
    if (strcmp(mode, "uninit") == 0) {
        zs_uninit();
        ZS_KEEP();
        return 0;
    }

    zs_lost();
    ZS_KEEP();
    if (strcmp(mode, "anon") == 0) {
        void **m = map_anon(1 << 20);
        m[12345] = zs_held(1000);
    } else if (strcmp(mode, "file") == 0) {
        char path[] = "/tmp/zmtrace-roots-XXXXXX";
        int fd = mkstemp(path);
        ZS_CHECK(32, fd >= 0 && ftruncate(fd, 1 << 16) == 0);
        unlink(path);
        void **m = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
        ZS_CHECK(33, m != MAP_FAILED);
        close(fd);
        m[777] = zs_held(1100);
    } else if (strcmp(mode, "mremap") == 0) {
        void **m = map_anon(1 << 16);
        m[100] = zs_held(1200);
        /* Moved to a place we choose, so that the move is certain. */
        char *to = map_anon(1 << 18);
        void **moved = mremap(m, 1 << 16, 1 << 17, MREMAP_MAYMOVE | MREMAP_FIXED, to);
        ZS_CHECK(34, (char *)moved == to && moved[100] != NULL);
    } else if (strcmp(mode, "syscall") == 0) {
        static size_t n = 1300;
        start_blocked_thread(&n);
    } else if (strcmp(mode, "tls") == 0) {
        t_keep = zs_held(1400);
        static size_t n = 1450;
        start_blocked_thread(&n);
    } else if (strcmp(mode, "altstack") == 0) {
        stack_t ss = {.ss_sp = map_anon(1 << 16), .ss_size = 1 << 16, .ss_flags = 0};
        ZS_CHECK(35, sigaltstack(&ss, NULL) == 0);
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = zs_on_altstack;
        sa.sa_flags = SA_ONSTACK;
        ZS_CHECK(36, sigaction(SIGUSR1, &sa, NULL) == 0);
        zs_scrub_stack();
        raise(SIGUSR1); /* exits there */
        return 40;
    } else if (strcmp(mode, "coro_malloc") == 0) {
        g_coro_stack = malloc(1 << 16);
        ZS_CHECK(37, g_coro_stack != NULL);
        memset(g_coro_stack, 0, 1 << 16);
        run_coroutine(g_coro_stack, 1 << 16, 1600);
    } else if (strcmp(mode, "coro_mmap") == 0) {
        run_coroutine(map_anon(1 << 16), 1 << 16, 1700);
    } else if (strcmp(mode, "argv") == 0) {
        char *s = argv[2];
        size_t n = strlen(s);
        ZS_CHECK(42, n >= 5000);
        void **slot = (void **)(((uintptr_t)(s + n - 8)) & ~(uintptr_t)7);
        *slot = zs_held(1900);
    } else if (strcmp(mode, "guard") == 0) {
        void **b = zs_guarded();
        b[1] = zs_held_child(1800);
        ZS_CHECK(39, mprotect((char *)b + 4096, 4096, PROT_NONE) == 0);
        g_keep = b;
    } else {
        sample_check_failed(41, "unknown mode");
    }
    ZS_KEEP();
    zs_scrub_stack();
    return 0;
}
