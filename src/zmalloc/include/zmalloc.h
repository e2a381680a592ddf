/* zmalloc.h: Redis's zmalloc API, instrumented by zmtrace.
 *
 * Link with libzmalloc.a (or -lzmalloc) in place of Redis's zmalloc.c. The functions keep Redis's
 * semantics: zmalloc/zcalloc/zrealloc call the OOM handler (default: print and abort) where the
 * ztry* forms return NULL; a size >= SIZE_MAX/2 fails; ztryrealloc(p, 0) frees p and returns NULL;
 * ztryrealloc(NULL, n) allocates; a ztryrealloc that fails on size frees the old block (as
 * Redis 7 does). zmalloc_used_memory() is the sum of zmalloc_size() of the live blocks.
 *
 * Layout: by default the allocator's malloc_usable_size() gives a block's size; a library built
 * with the `prefix-size` feature stores it in a PREFIX_SIZE header instead (Redis without
 * HAVE_MALLOC_SIZE). ZMALLOC_LIB tells which this library is (zmalloc_layout()).
 *
 * Tracing is off until ZMTRACE=1 is in the environment at the first call (dumps go to
 * ZMTRACE_OUT, default ".") or until zmtrace_start(). The dumps name the z* caller's stack and are
 * read by `zmtrace report/leaks/churn/flamegraph`.
 */
#ifndef ZMTRACE_ZMALLOC_H
#define ZMTRACE_ZMALLOC_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

void *zmalloc(size_t size);
void *zcalloc(size_t size);
void *zrealloc(void *ptr, size_t size);
void *ztrymalloc(size_t size);
void *ztrycalloc(size_t size);
void *ztryrealloc(void *ptr, size_t size);
void zfree(void *ptr);

void *zmalloc_usable(size_t size, size_t *usable);
void *zcalloc_usable(size_t size, size_t *usable);
void *zrealloc_usable(void *ptr, size_t size, size_t *usable);
void *ztrymalloc_usable(size_t size, size_t *usable);
void *ztrycalloc_usable(size_t size, size_t *usable);
void *ztryrealloc_usable(void *ptr, size_t size, size_t *usable);
void zfree_usable(void *ptr, size_t *usable);

char *zstrdup(const char *s);
size_t zmalloc_used_memory(void);
void zmalloc_set_oom_handler(void (*oom_handler)(size_t));
/* The allocator's size of the block (with PREFIX_SIZE: the requested size plus the header). */
size_t zmalloc_size(void *ptr);
/* The bytes the caller may use. */
size_t zmalloc_usable_size(void *ptr);
/* "usable_size" or "prefix_size": how this library finds a block's size. */
const char *zmalloc_layout(void);

/* Tracing control. zmtrace_start: 0 when tracing (dir NULL: ZMTRACE_OUT or "."), -1 with a
 * message on stderr when the dump cannot be written. zmtrace_stop writes the dump's end; tracing
 * can be started again (a new dump). zmtrace_dump_now writes out what was recorded so far. */
int zmtrace_start(const char *dir);
void zmtrace_stop(void);
void zmtrace_dump_now(void);
/* A leak check now (memcheck's classes of the blocks live now), written to the dump: returns the
 * bytes definitely and indirectly lost, or -1 when not tracing. At exit one is made anyway. */
long zmtrace_leak_check(void);

#ifdef __cplusplus
}
#endif

#endif
