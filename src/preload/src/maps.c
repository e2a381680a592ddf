/* The program's mapping calls: mmap, mmap64, munmap, mremap. Each passes its caller's address on
 * to the Rust hook (zmtrace_mmap and its siblings in lib.rs), which tells an allocator's own
 * mappings (jemalloc's extents, tcmalloc's spans: its heap, not the program's mappings) from the
 * program's by where the call comes from: the code of the module that defines the next malloc.
 * Asking where the call comes from costs nothing on the allocator's hot paths; the alternative,
 * a per-thread count of the calls into the allocator under way, cost an increment and a
 * decrement around every malloc and free and kept a frame in free, which then could not end in a
 * tail call. Stable Rust has no return-address intrinsic (and cannot define mremap, which is
 * variadic), hence this C. */
#include <stdarg.h>
#include <stddef.h>
#include <sys/types.h>

/* Linux's MREMAP_FIXED: only then is the fifth argument there. */
#define ZM_MREMAP_FIXED 2

void *zmtrace_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off,
                   const void *caller);
int zmtrace_munmap(void *addr, size_t len, const void *caller);
void *zmtrace_mremap(void *old, size_t old_len, size_t new_len, int flags, void *new_addr,
                     const void *caller);

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    return zmtrace_mmap(addr, len, prot, flags, fd, off, __builtin_return_address(0));
}

/* The same function under its other name (off_t is 64 bits on x86-64). */
void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
    __attribute__((alias("mmap")));

int munmap(void *addr, size_t len) {
    return zmtrace_munmap(addr, len, __builtin_return_address(0));
}

void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...) {
    void *new_addr = NULL;
    if (flags & ZM_MREMAP_FIXED) {
        va_list ap;
        va_start(ap, flags);
        new_addr = va_arg(ap, void *);
        va_end(ap);
    }
    return zmtrace_mremap(old, old_len, new_len, flags, new_addr, __builtin_return_address(0));
}
