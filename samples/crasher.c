/* crasher: allocates, then dies by a signal.
 *
 * Usage: crasher segv     early blocks, 2 s pause, late blocks, write through a NULL pointer
 *        crasher abort    early blocks, late blocks, abort()
 *        crasher kill     early blocks, 2 s pause, late blocks, raise(SIGKILL)
 *        crasher wait     early blocks, prints "ready", waits for a signal to end it (the
 *                         tests send SIGINT or SIGTERM to `zmtrace run`, which passes it on)
 *        crasher handler  checks that SIGINT and SIGTERM read as the default action (the tracer's
 *                         handlers are invisible), installs its own SIGTERM handler with
 *                         signal(), early blocks, raise(SIGTERM): its handler allocates
 *                         (zs_late) and exits 0
 *        crasher exit-thread  early blocks, a thread that allocates and frees without pause,
 *                         then exit(0) from main while it runs
 * Prints nothing else. Exit status 20..99 = bad usage or a failed check.
 *
 * The pause lets the recorder flush (it flushes at least once a second), so the early events are
 * in the dump even where the process gets no chance to say goodbye (SIGKILL).
 *
 * The sample's events, in program order (single-threaded), as src/cli/tests/crash.rs asserts:
 *   zs_early: malloc(201), malloc(202), calloc(4, 50) [200 bytes], malloc(203), free(the 202 B)
 *   zs_late:  malloc(301), malloc(302), free(the 301 B)
 * segv: the run exits 139; the recorder's handler wrote everything: all eight events, and an End
 *   record of reason signal (SIGSEGV).
 * kill: the run exits 137, the dump has no End record, and the sample's events in it are a
 *   prefix of the list above holding at least all of zs_early.
 * handler: exits 0, all eight events, End reason exit.
 * abort: the run exits 134, the dump ends with reason abort and holds all eight events.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "zs_common.h"

void *g_blocks[6];
int *volatile g_null_int;

ZS_FN void zs_early(void)
{
    g_blocks[0] = malloc(201);
    g_blocks[1] = malloc(202);
    g_blocks[2] = calloc(4, 50);
    g_blocks[3] = malloc(203);
    ZS_CHECK(20, g_blocks[0] && g_blocks[1] && g_blocks[2] && g_blocks[3]);
    memset(g_blocks[1], 1, 202);
    free(g_blocks[1]);
    g_blocks[1] = NULL;
}

ZS_FN void zs_late(void)
{
    g_blocks[4] = malloc(301);
    g_blocks[5] = malloc(302);
    ZS_CHECK(21, g_blocks[4] && g_blocks[5]);
    memset(g_blocks[4], 2, 301);
    free(g_blocks[4]);
    g_blocks[4] = NULL;
}

static void on_term(int sig)
{
    (void)sig;
    zs_late();
    exit(0);
}

void *volatile g_spin;

ZS_FN void zs_spin(void)
{
    for (;;) {
        void *p = malloc(48);
        g_spin = p;
        free(p);
    }
}

static void *spinner(void *arg)
{
    (void)arg;
    zs_spin();
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 2)
        sample_check_failed(30, "usage: crasher segv|abort|kill");
    const char *mode = argv[1];
    int segv = strcmp(mode, "segv") == 0;
    int abrt = strcmp(mode, "abort") == 0;
    int killme = strcmp(mode, "kill") == 0;
    int wait = strcmp(mode, "wait") == 0;
    int handler = strcmp(mode, "handler") == 0;
    int exit_thread = strcmp(mode, "exit-thread") == 0;
    if (!segv && !abrt && !killme && !wait && !handler && !exit_thread)
        sample_check_failed(31, "mode is one of segv, abort, kill, wait, handler, exit-thread");

    if (handler) {
        struct sigaction old;
        ZS_CHECK(33, sigaction(SIGINT, NULL, &old) == 0 && old.sa_handler == SIG_DFL);
        ZS_CHECK(34, signal(SIGTERM, on_term) == SIG_DFL);
        ZS_CHECK(35, sigaction(SIGTERM, NULL, &old) == 0 && old.sa_handler == on_term);
        zs_early();
        raise(SIGTERM);
        sample_check_failed(36, "the SIGTERM handler did not exit");
    }
    zs_early();
    if (exit_thread) {
        pthread_t t;
        ZS_CHECK(37, pthread_create(&t, NULL, spinner, NULL) == 0);
        sleep_ms(200);
        exit(0);
    }
    if (wait) {
        printf("ready\n");
        fflush(stdout);
        for (;;)
            pause();
    }
    if (!abrt)
        sleep_ms(2000);
    fflush(stdout);
    zs_late();

    if (segv)
        *g_null_int = 1;
    else if (abrt)
        abort();
    else
        raise(SIGKILL);
    sample_check_failed(32, "still alive after the fatal signal");
}
