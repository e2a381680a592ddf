/* execer: allocates, then replaces itself (execv of its own executable) with a second stage that
 * allocates other blocks.
 *
 * Usage: execer           (stage 1: allocates, then execs "<argv[0]> stage2")
 *        execer stage2    (stage 2: allocates, exits 7)
 * Prints nothing. Exit status 7 means both stages ran; 20..99 = a check failed.
 *
 * Expected, as src/cli/tests/exec.rs asserts: two dumps with the same pid.
 *   Stage 1 (origin Start, argv [prog]): events of zs_stage1_*: malloc 2 [111 + 222 bytes],
 *     calloc 1 [3 * 100 = 300 bytes], 1 free (the 222-byte block); at the exec 2 blocks
 *     (111 + 300 = 411 bytes) are live. Its dump ends with reason exec and names the exec'ed path.
 *   Stage 2 (origin Exec, argv [prog, "stage2"]): events of zs_stage2_*: malloc 3
 *     [333 + 444 + 555 bytes], calloc 1 [2 * 64 = 128 bytes], 1 free (the 444-byte block);
 *     leaked 3 blocks, 333 + 555 + 128 = 1016 bytes. Ends with reason exit.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "zs_common.h"

void *g_blocks[4];

ZS_FN void zs_stage1_alloc(void)
{
    g_blocks[0] = malloc(111);
    g_blocks[1] = malloc(222);
    g_blocks[2] = calloc(3, 100);
    ZS_CHECK(20, g_blocks[0] && g_blocks[1] && g_blocks[2]);
    memset(g_blocks[0], 1, 111);
    memset(g_blocks[1], 2, 222);
    free(g_blocks[1]);
    g_blocks[1] = NULL;
}

ZS_FN void zs_stage2_alloc(void)
{
    g_blocks[0] = malloc(333);
    g_blocks[1] = malloc(444);
    g_blocks[2] = malloc(555);
    g_blocks[3] = calloc(2, 64);
    ZS_CHECK(30, g_blocks[0] && g_blocks[1] && g_blocks[2] && g_blocks[3]);
    memset(g_blocks[0], 3, 333);
    memset(g_blocks[1], 4, 444);
    memset(g_blocks[2], 5, 555);
    free(g_blocks[1]);
    g_blocks[1] = NULL;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "stage2") == 0) {
        zs_stage2_alloc();
        return 7;
    }
    ZS_CHECK(40, argc == 1);
    zs_stage1_alloc();
    char *args[] = {argv[0], "stage2", NULL};
    execv("/proc/self/exe", args);
    sample_check_failed(41, "execv(\"/proc/self/exe\") returned");
}
