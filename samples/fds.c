/* fds: a program that does to its file descriptors what real programs do (daemons, servers,
 * shells), to show that the tracer's dump never takes a number the program expects and never
 * ends up in the program's own files.
 *
 * Usage: fds dup2 LOG        opens LOG, dup2()s it over every fd 3..20, then writes 2,000 lines
 *                            of 19 bytes (38,000 bytes), line i to fd 3 + i % 18, with
 *                            ROUNDS allocations between lines
 *        fds closeall LOG    close()s fds 3..1023 (as daemons do), counting the closes that
 *                            succeed, opens LOG (lowest free number), writes the same lines
 *        fds rawclose LOG    the same with syscall(SYS_close): a close no library can see
 *        fds rawdup LOG      opens LOG, then syscall(SYS_dup2)s it over every fd from 3 to the
 *                            RLIMIT_NOFILE limit (65,536 at most), so that it holds every number
 *                            there is; writes
 *                            the lines (to fd 3) while allocating for at least 300 ms; then
 *                            closes the copies above 20 again
 *        fds stdio           closes 0, 1 and 2, allocates 10,000 blocks and sleeps 150 ms (a
 *                            tracer's writer flushes meanwhile), opens /dev/null three times, and
 *                            checks that it got 0, 1 and 2 back (exits 4 if not)
 *        fds rlimit          lowers RLIMIT_NOFILE to 32, allocates and sleeps as stdio does,
 *                            opens /dev/null until EMFILE and prints how many it got (29
 *                            untraced when only 0..2 were open: 3..31), with allocations
 *        fds daemon OUT N    closes every fd 0..1023, calls daemon(0, 0), makes N allocations
 *                            (zs_work, each freed), then writes "allocations N" to OUT (an
 *                            absolute path: daemon() changes to /) and exits 0
 *
 * Every mode starts by allocating 10,000 blocks (in main, not counted) and sleeping 150 ms, as a
 * program that has run a while before it does this: a tracer's writer has flushed by then.
 *
 * Every mode but daemon prints to stdout, at the end (for stdio: nothing, stdout is closed):
 *   closed C opened O fd F allocations A
 * where C counts the closes (or dup2s) that succeeded, O the files opened (rlimit), F the number
 * LOG got, and A the allocations made under zs_ functions (all freed again). Untraced, C is 0 for
 * closeall and rawclose (nothing else is open), F is 3. Each allocation is a malloc of 16..271
 * bytes freed at once (zs_alloc_round). Exits 0; 20..99: a check failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>

#include "zs_common.h"

#define LINES 2000
#define ROUNDS 500

void *volatile g_sink;
static long g_allocations;

ZS_FN void zs_alloc_round(int n)
{
    for (int i = 0; i < n; i++) {
        g_sink = malloc(16 + (i * 37) % 256);
        ZS_CHECK(20, g_sink != NULL);
        free(g_sink);
        g_allocations++;
    }
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void write_lines(int spread)
{
    char line[32];
    for (int i = 0; i < LINES; i++) {
        int fd = spread ? 3 + i % 18 : 3;
        int n = snprintf(line, sizeof line, "fd %02d line %07d\n", fd, i);
        ZS_CHECK(21, n == 19);
        ZS_CHECK(22, write(fd, line, n) == n);
        zs_alloc_round(ROUNDS);
        ZS_KEEP();
    }
}

static int open_log(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ZS_CHECK(23, fd >= 0);
    return fd;
}

static long rlimit_cur(void)
{
    struct rlimit r;
    ZS_CHECK(24, getrlimit(RLIMIT_NOFILE, &r) == 0);
    return (long)r.rlim_cur;
}

/* Not a zs_ function: its allocations are not counted. */
static void warm_up(void)
{
    for (int i = 0; i < 10000; i++) {
        g_sink = malloc(32);
        free(g_sink);
    }
    sleep_ms(150);
}

int main(int argc, char **argv)
{
    ZS_CHECK(30, argc >= 2);
    const char *mode = argv[1];
    warm_up();
    int closed = 0, opened = 0, fd = -1;
    if (strcmp(mode, "dup2") == 0) {
        ZS_CHECK(31, argc == 3);
        fd = open_log(argv[2]);
        for (int k = 3; k <= 20; k++)
            if (k != fd && dup2(fd, k) == k)
                closed++;
        write_lines(1);
    } else if (strcmp(mode, "closeall") == 0 || strcmp(mode, "rawclose") == 0) {
        ZS_CHECK(32, argc == 3);
        int raw = mode[0] == 'r';
        for (int k = 3; k < 1024; k++)
            if ((raw ? syscall(SYS_close, k) : close(k)) == 0)
                closed++;
        fd = open_log(argv[2]);
        write_lines(0);
    } else if (strcmp(mode, "rawdup") == 0) {
        ZS_CHECK(33, argc == 3);
        fd = open_log(argv[2]);
        long max = rlimit_cur();
        if (max > 65536)
            max = 65536; /* still above the tracer's highest (16384) */
        for (long k = 3; k < max; k++)
            if (k != fd && syscall(SYS_dup2, fd, k) == k)
                closed++;
        double start = now_s();
        while (now_s() - start < 0.3)
            zs_alloc_round(ROUNDS);
        write_lines(0);
        for (long k = 21; k < max; k++)
            syscall(SYS_close, k);
    } else if (strcmp(mode, "stdio") == 0) {
        close(0);
        close(1);
        close(2);
        /* Long enough for a writer thread to flush (and open a dump it opens lazily). */
        zs_alloc_round(20 * ROUNDS);
        sleep_ms(150);
        int a = open("/dev/null", O_RDONLY);
        int b = open("/dev/null", O_WRONLY);
        int c = open("/dev/null", O_WRONLY);
        zs_alloc_round(ROUNDS);
        return (a == 0 && b == 1 && c == 2) ? 0 : 4;
    } else if (strcmp(mode, "rlimit") == 0) {
        struct rlimit r = {32, 32};
        ZS_CHECK(34, setrlimit(RLIMIT_NOFILE, &r) == 0);
        zs_alloc_round(20 * ROUNDS);
        sleep_ms(150);
        for (;;) {
            int f = open("/dev/null", O_RDONLY);
            if (f < 0) {
                ZS_CHECK(35, errno == EMFILE);
                break;
            }
            opened++;
            zs_alloc_round(ROUNDS);
        }
        fd = 3;
    } else if (strcmp(mode, "daemon") == 0) {
        ZS_CHECK(36, argc == 4);
        long n = atol(argv[3]);
        for (int k = 0; k < 1024; k++)
            close(k);
        ZS_CHECK(37, daemon(0, 0) == 0);
        zs_alloc_round((int)n);
        int out = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0600);
        ZS_CHECK(38, out >= 0);
        char msg[64];
        int len = snprintf(msg, sizeof msg, "allocations %ld\n", g_allocations);
        ZS_CHECK(39, write(out, msg, len) == len);
        return 0;
    } else {
        ZS_CHECK(40, 0);
    }
    printf("closed %d opened %d fd %d allocations %ld\n", closed, opened, fd, g_allocations);
    return 0;
}
