/* requests: a server's request loop in miniature: each request allocates its argument vector and
 * 2 to 4 arguments, grows a reply buffer with realloc, now and then replaces one of 64 kept
 * values, and frees the rest in reverse order. Every request repeats one of a few event patterns
 * at the same recycled addresses, as Redis's do: the events compress best as they come, whole
 * requests matching earlier ones, rather than regrouped by field (see src/recorder/src/output.rs,
 * TRY_BOTH_EVERY).
 *
 * Usage: requests [N]   N requests (100,000 without N); all blocks are freed before it exits.
 */
#include "zs_common.h"

static void *keep[64];

ZS_FN void *zs_argv(int n) { return malloc(16 * (size_t)n); }
ZS_FN void *zs_arg(size_t len) { return malloc(len + 1); }
ZS_FN void *zs_reply(void *r, size_t len) { return realloc(r, len); }

ZS_FN void zs_request(unsigned i)
{
    int argc = 2 + (int)(i % 3);
    void **argv = zs_argv(argc);
    ZS_CHECK(20, argv != NULL);
    for (int a = 0; a < argc; a++)
        argv[a] = zs_arg(8 + 8 * (size_t)a);
    void *reply = zs_reply(NULL, 16);
    reply = zs_reply(reply, 64);
    ZS_CHECK(21, reply != NULL);
    if (i % 5 == 0) {
        free(keep[i % 64]);
        keep[i % 64] = zs_arg(32);
    }
    for (int a = argc - 1; a >= 0; a--)
        free(argv[a]);
    free(argv);
    free(reply);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 100000;
    for (long i = 0; i < n; i++)
        zs_request((unsigned)i);
    for (int k = 0; k < 64; k++)
        free(keep[k]);
    return 0;
}
