/* A program linked with jemalloc (Debian's libjemalloc2, as redis-server is) that makes jemalloc
 * map memory outside any malloc call: `mallctl("arenas.create")` maps each new arena's metadata,
 * and `mallocx` into that arena maps its extents (src/cli/tests/mmap.rs). Those are the
 * allocator's heap, not the program's mappings. The program's own: zs_map_own maps 3 pages and
 * unmaps 1. The heap: zs_keep mallocs 4 blocks of 1000 bytes and keeps them (still reachable).
 * Build: cc jemctl.c -l:libjemalloc.so.2 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

#define PAGE 4096
#define ARENAS 4

int mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp, size_t newlen);
void *mallocx(size_t size, int flags);
void dallocx(void *p, int flags);
#define ZS_MALLOCX_ARENA(a) ((int)(((unsigned)(a) + 1) << 20))
#define ZS_MALLOCX_TCACHE_NONE (1 << 8)

void *volatile g_keep[4];
void *volatile g_map;

__attribute__((noinline)) static void zs_map_own(void) {
    char *p = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(1);
    }
    p[0] = 1;
    if (munmap(p + 2 * PAGE, PAGE) != 0) {
        perror("munmap");
        exit(1);
    }
    g_map = p;
}

__attribute__((noinline)) static void zs_keep(void) {
    for (int i = 0; i < 4; i++) g_keep[i] = malloc(1000);
}

int main(void) {
    for (int i = 0; i < ARENAS; i++) {
        unsigned arena;
        size_t len = sizeof arena;
        if (mallctl("arenas.create", &arena, &len, NULL, 0) != 0) {
            fprintf(stderr, "mallctl arenas.create failed\n");
            return 1;
        }
        for (int j = 0; j < 8; j++) {
            void *p = mallocx(1 << 20, ZS_MALLOCX_ARENA(arena) | ZS_MALLOCX_TCACHE_NONE);
            if (!p) return 1;
            dallocx(p, ZS_MALLOCX_TCACHE_NONE);
        }
    }
    zs_map_own();
    zs_keep();
    puts("ok");
    return 0;
}
