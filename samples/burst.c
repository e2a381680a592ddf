/* burst: steady.c's load (each step allocates a block of 16..1039 bytes from one of three sites and
 * frees the one made WINDOW steps earlier) for STEPS steps, then says "made STEPS" on stdout and
 * waits for a line on stdin (EOF goes on at once) before freeing the rest and saying "done": for
 * the tests of `zmtrace run --serve`'s background replay (src/cli/tests/integration/scrape.rs),
 * which scrape once the program has made its events and sleeps. Output with write(2), no stdio:
 * nothing else allocates, so the program's allocations are exactly STEPS mallocs.
 *
 * Usage: burst STEPS
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "zs_common.h"

#define WINDOW 1000
static void *ring[WINDOW];

ZS_FN void *zs_small(unsigned x) { return malloc(16 + x % 64); }
ZS_FN void *zs_medium(unsigned x) { return malloc(80 + x % 400); }
ZS_FN void *zs_large(unsigned x) { return malloc(480 + x % 560); }

ZS_FN void zs_step(long i, unsigned x)
{
    void **slot = &ring[i % WINDOW];
    free(*slot);
    switch (x % 3) {
    case 0: *slot = zs_small(x); break;
    case 1: *slot = zs_medium(x); break;
    default: *slot = zs_large(x); break;
    }
    ZS_CHECK(20, *slot != NULL);
}

static void say(const char *s)
{
    ssize_t n = write(1, s, strlen(s));
    (void)n;
}

int main(int argc, char **argv)
{
    long steps = argc > 1 ? atol(argv[1]) : 1000000;
    unsigned x = 1;
    for (long i = 0; i < steps; i++) {
        x = x * 1103515245u + 12345u;
        zs_step(i, x >> 8);
    }
    char line[64] = "made ";
    char digits[24];
    int n = 0;
    for (long v = steps; n == 0 || v > 0; v /= 10)
        digits[n++] = (char)('0' + v % 10);
    for (int i = 0; i < n; i++)
        line[5 + i] = digits[n - 1 - i];
    line[5 + n] = '\n';
    line[6 + n] = 0;
    say(line);
    char c;
    while (read(0, &c, 1) == 1 && c != '\n') {
    }
    for (int i = 0; i < WINDOW; i++) {
        free(ring[i]);
        ring[i] = NULL;
    }
    ZS_KEEP();
    say("done\n");
    return 0;
}
