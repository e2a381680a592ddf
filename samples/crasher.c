/* crasher: allocates, then dies by a signal.
 *
 * Usage: crasher segv     early blocks, 2 s pause, late blocks, write through a NULL pointer
 *        crasher abort    early blocks, late blocks, abort()
 *        crasher kill     early blocks, 2 s pause, late blocks, raise(SIGKILL)
 *        crasher wait     early blocks, prints "ready", waits for a signal to end it (the
 *                         tests send SIGINT or SIGTERM to `zmtrace run`, which passes it on)
 * Prints nothing else. Exit status 20..99 = bad usage or a failed check.
 *
 * The pause lets the recorder flush (it flushes at least once a second), so the early events are
 * in the dump even where the process gets no chance to say goodbye (SIGKILL).
 *
 * The sample's events, in program order (single-threaded), as src/cli/tests/crash.rs asserts:
 *   zs_early: malloc(201), malloc(202), calloc(4, 50) [200 bytes], malloc(203), free(the 202 B)
 *   zs_late:  malloc(301), malloc(302), free(the 301 B)
 * segv, kill: the run exits 128 + signal, the dump has no End record, and the sample's events in
 *   it are a prefix of the list above holding at least all of zs_early.
 * abort: the run exits 134, the dump ends with reason abort and holds all eight events.
 */
#define _GNU_SOURCE
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

int main(int argc, char **argv)
{
    if (argc != 2)
        sample_check_failed(30, "usage: crasher segv|abort|kill");
    const char *mode = argv[1];
    int segv = strcmp(mode, "segv") == 0;
    int abrt = strcmp(mode, "abort") == 0;
    int killme = strcmp(mode, "kill") == 0;
    int wait = strcmp(mode, "wait") == 0;
    if (!segv && !abrt && !killme && !wait)
        sample_check_failed(31, "mode is one of segv, abort, kill, wait");

    zs_early();
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
