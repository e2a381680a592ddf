/* Shared helpers of the zmtrace sample programs.
 *
 * The integration tests (src/cli/tests/) attribute an event to a sample by symbolizing its stack:
 * an event is the sample's own when one of its frames is a function whose name starts with `zs_`.
 * So every function that allocates or frees on purpose is a ZS_FN named `zs_...`, and nothing
 * that makes libc allocate behind our back (pthread_create, fork, printf, exec) is ever called
 * under a `zs_` function.
 *
 * The samples are built with `cc -O2 -g -fomit-frame-pointer -pthread`: no frame pointers, so the
 * recorder has to unwind with .eh_frame. To keep the call chains the tests look for intact:
 *   - ZS_FN forbids inlining, cloning and every other interprocedural change (gcc `noipa`);
 *   - ZS_KEEP() after a call keeps the call out of tail position (a tail call is a jump: its
 *     caller would vanish from the stack);
 *   - every block is stored in a global, so gcc cannot delete a malloc/free pair.
 *
 * A sample checks what it assumes of libc (e.g. that a realloc moved) and exits with a status
 * between 20 and 99 naming the failed check if the assumption does not hold, so a test failure
 * tells the sample apart from the tracer.
 */
#ifndef ZS_COMMON_H
#define ZS_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#if defined(__clang__)
#define ZS_FN __attribute__((noinline, used))
#else
#define ZS_FN __attribute__((noipa, used))
#endif

#define ZS_KEEP() __asm__ volatile("" ::: "memory")

/* Leaves with `status` after a one-line message on stderr (unbuffered: no allocation). */
static void sample_check_failed(int status, const char *what) __attribute__((noreturn, unused));
static void sample_check_failed(int status, const char *what)
{
    fprintf(stderr, "sample check %d failed: %s\n", status, what);
    _exit(status);
}

#define ZS_CHECK(status, cond)                                                                     \
    do {                                                                                           \
        if (!(cond))                                                                               \
            sample_check_failed((status), #cond);                                                      \
    } while (0)

/* Sleeps `ms` milliseconds, resuming after signals. */
static void sleep_ms(long ms) __attribute__((unused));
static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

#endif
