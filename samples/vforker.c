/* vforker: vfork children share the parent's memory, and with it the recorder's state: they must
 * neither end nor flush the parent's dump.
 *
 * The sample's events, as src/cli/tests/fork.rs asserts (one dump: vfork children that exec or
 * _exit leave none of their own, and /bin/true's image is a new process image with a dump of
 * its own only if it allocates... it is matched by name and ignored):
 *   zs_before: malloc(11), malloc(22)
 *   a vfork child that calls _exit(0), a vfork child that calls execv("/bin/true")
 *   zs_after:  malloc(33), malloc(44), malloc(55), free(the 22 B block)
 * The parent's dump ends with reason exit; 4 blocks (143 bytes) are live at the end.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zs_common.h"

void *g_blocks[5];

ZS_FN void zs_before(void)
{
    g_blocks[0] = malloc(11);
    g_blocks[1] = malloc(22);
    ZS_CHECK(20, g_blocks[0] && g_blocks[1]);
}

ZS_FN void zs_after(void)
{
    g_blocks[2] = malloc(33);
    g_blocks[3] = malloc(44);
    g_blocks[4] = malloc(55);
    ZS_CHECK(21, g_blocks[2] && g_blocks[3] && g_blocks[4]);
    free(g_blocks[1]);
    g_blocks[1] = NULL;
}

int main(void)
{
    zs_before();
    pid_t a = vfork();
    if (a == 0)
        _exit(0);
    ZS_CHECK(22, a > 0);
    char *args[] = {"true", NULL};
    pid_t b = vfork();
    if (b == 0) {
        execv("/bin/true", args);
        _exit(127);
    }
    ZS_CHECK(23, b > 0);
    int st;
    ZS_CHECK(24, waitpid(a, &st, 0) == a && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ZS_CHECK(25, waitpid(b, &st, 0) == b && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    zs_after();
    return 0;
}
