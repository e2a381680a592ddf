/* rssgrow: grows its heap by 1 MiB blocks (touched, so resident) every 20 ms, 64 of them, from
 * zs_grow_rss, then waits 0.5 s and kills itself with SIGKILL, as the OOM killer would: for
 * `zmtrace run --snapshot-at-rss` (src/cli/tests/snapshots.rs), whose snapshot must be in the
 * dump from before the kill. Prints "grown" once all 64 are made (write(2), no stdio).
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "zs_common.h"

#define CHUNK (1 << 20)
#define CHUNKS 64

void *g_chunks[CHUNKS];

ZS_FN void zs_grow_rss(int i)
{
    g_chunks[i] = malloc(CHUNK);
    ZS_CHECK(20, g_chunks[i] != NULL);
    memset(g_chunks[i], 1, CHUNK);
}

int main(void)
{
    for (int i = 0; i < CHUNKS; i++) {
        zs_grow_rss(i);
        ZS_KEEP();
        usleep(20 * 1000);
    }
    ssize_t n = write(1, "grown\n", 6);
    (void)n;
    usleep(500 * 1000);
    raise(SIGKILL);
    return 0;
}
