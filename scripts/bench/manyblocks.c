/* Many live blocks at once, for what a tracer costs per live block (issue 13): allocates N blocks
 * of 16-64 B (default 5,000,000) from a few stacks, holds them all, then frees them ("free"), or
 * exits with them all still reachable from a global ("keep": the leak check at exit classifies
 * every one of them). Deterministic; prints "NS ns per call" and its calls.
 *
 *   manyblocks [N] [free|keep]
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void **blocks; /* a root: "keep" leaves every block reachable from here */
void *volatile sink;

__attribute__((noipa)) static void *small(size_t n)
{
    return malloc(n);
}

__attribute__((noipa)) static void *cleared(size_t n)
{
    return calloc(1, n);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 5000000;
    int keep = argc > 2 && !strcmp(argv[2], "keep");
    if (n < 1 || (argc > 2 && !keep && strcmp(argv[2], "free"))) {
        fprintf(stderr, "usage: manyblocks [N] [free|keep]\n");
        return 2;
    }
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    blocks = malloc(n * sizeof *blocks);
    uint64_t r = 88172645463325252ull;
    long nm = 1, nc = 0, nf = 0;
    for (long i = 0; i < n; i++) {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        size_t size = 16 + (r >> 32) % 49;
        if (r % 8) {
            blocks[i] = small(size);
            nm++;
        } else {
            blocks[i] = cleared(size);
            nc++;
        }
        ((char *)blocks[i])[0] = (char)i;
    }
    sink = blocks[n - 1];
    if (!keep) {
        for (long i = 0; i < n; i++)
            free(blocks[i]);
        free(blocks);
        nf = n + 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("%.1f ns per call (%ld blocks of 16-64 B held at once, %s)\n", ns / (nm + nc + nf), n,
           keep ? "kept to exit" : "then freed");
    printf("calls: malloc %ld calloc %ld realloc 0 free %ld\n", nm, nc, nf);
    return 0;
}
