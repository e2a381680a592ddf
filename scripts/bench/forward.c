/* The floor of any LD_PRELOAD tracer: malloc, calloc, realloc and free that do nothing but call
 * glibc's. Built as a shared library by the suite (ZMTRACE_FLOOR=1, configuration "forward"): what
 * a program pays for its allocator calls going through one more library, before a tracer does
 * anything at all. The tracer's overhead over this floor is what the tracer can still shave. */
#include <stddef.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);

void *malloc(size_t n) { return __libc_malloc(n); }
void *calloc(size_t n, size_t size) { return __libc_calloc(n, size); }
void *realloc(void *p, size_t n) { return __libc_realloc(p, n); }
void free(void *p) { __libc_free(p); }
