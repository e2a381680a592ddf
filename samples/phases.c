/* phases: allocates known amounts in phases and waits for a line on stdin between them (EOF goes
 * on at once), for the tests of what a running program's heap looks like (`zmtrace run --serve`,
 * snapshots; src/cli/tests/scrape.rs). Announces each phase on stdout once its allocations are
 * made: "phase 1", "phase 2", then "done" at the end, with write(2) (no stdio: nothing else
 * allocates, so the totals below are the whole heap).
 *
 *   in use (bytes, blocks)  phase 1       phase 2       at exit       allocated in all
 *   zs_phase_one            4000 (4)      2000 (2)      2000 (2)      4 x 1000 = 4000
 *   zs_phase_two               0          6000 (3)         0          3 x 2000 = 6000
 *   zs_phase_three             0             0           500 (1)      1 x 500  =  500
 *   total                   4000          8000          2500                     10500
 *
 * Phase 2 frees two of phase 1's blocks; the end frees phase 2's. Exits with the status given as
 * its first argument (0 without one; 20..99: a libc assumption failed). With a second argument
 * `own-usr2` it installs a SIGUSR2 handler of its own first, which writes "usr2" on stdout.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "zs_common.h"

void *g_one[4];
void *g_two[3];
void *g_three;

ZS_FN void zs_phase_one(void)
{
    for (int i = 0; i < 4; i++) {
        g_one[i] = malloc(1000);
        ZS_CHECK(20, g_one[i] != NULL);
        memset(g_one[i], 1, 1000);
    }
}

ZS_FN void zs_phase_two(void)
{
    for (int i = 0; i < 3; i++) {
        g_two[i] = malloc(2000);
        ZS_CHECK(21, g_two[i] != NULL);
        memset(g_two[i], 2, 2000);
    }
}

ZS_FN void zs_phase_three(void)
{
    g_three = malloc(500);
    ZS_CHECK(22, g_three != NULL);
    memset(g_three, 3, 500);
}

static void say(const char *s)
{
    ssize_t n = write(1, s, strlen(s));
    (void)n;
}

/* Until a newline or EOF. */
static void wait_line(void)
{
    char c;
    while (read(0, &c, 1) == 1 && c != '\n') {
    }
}

static void on_usr2(int sig)
{
    (void)sig;
    say("usr2\n");
}

int main(int argc, char **argv)
{
    if (argc > 2 && strcmp(argv[2], "own-usr2") == 0) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_usr2;
        sa.sa_flags = SA_RESTART;
        sigemptyset(&sa.sa_mask);
        ZS_CHECK(23, sigaction(SIGUSR2, &sa, NULL) == 0);
    }
    zs_phase_one();
    ZS_KEEP();
    say("phase 1\n");
    wait_line();

    free(g_one[0]);
    free(g_one[1]);
    g_one[0] = g_one[1] = NULL;
    zs_phase_two();
    ZS_KEEP();
    say("phase 2\n");
    wait_line();

    for (int i = 0; i < 3; i++) {
        free(g_two[i]);
        g_two[i] = NULL;
    }
    zs_phase_three();
    ZS_KEEP();
    say("done\n");
    return argc > 1 ? atoi(argv[1]) : 0;
}
