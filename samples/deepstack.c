/* deepstack: allocations from stacks deeper than the recorder keeps (256 frames) and shallower.
 * zs_down recurses to the depth asked and allocates there: NEAR blocks 40 frames down, FAR blocks
 * 400 frames down, interleaved. The recorder's fast walk must stop at its frame buffer's end on
 * every FAR stack (a truncated stack each) and walk every NEAR one whole.
 *
 * Usage: deepstack [NEAR, default 3] [FAR, default 5]
 */
#include <stdio.h>
#include <stdlib.h>

#include "zs_common.h"

void *volatile sink[64];

ZS_FN static int zs_down(int depth, int i)
{
    if (depth == 0) {
        sink[i % 64] = malloc(16 + i);
        ZS_CHECK(20, sink[i % 64] != NULL);
        return 1;
    }
    int r = zs_down(depth - 1, i);
    ZS_KEEP();
    return r + 1;
}

int main(int argc, char **argv)
{
    int near = argc > 1 ? atoi(argv[1]) : 3, far = argc > 2 ? atoi(argv[2]) : 5;
    int i = 0;
    for (int k = 0; k < near || k < far; k++) {
        if (k < near)
            zs_down(40, i++);
        if (k < far)
            zs_down(400, i++);
    }
    for (int k = 0; k < 64; k++)
        free(sink[k]);
    printf("near %d far %d\n", near, far);
    return 0;
}
