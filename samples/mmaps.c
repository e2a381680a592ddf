/* The program's own mappings, each from a function of its own, next to a small heap of known
 * amounts (src/cli/tests/mmap.rs). Page = 4096 bytes.
 *
 *   zs_map_anon      mmap 4 pages, anonymous private, left mapped at exit
 *   zs_map_file      mmap 2 pages of a file, MAP_PRIVATE and writable; zs_unmap_file unmaps them
 *   zs_map_grow      mmap 1 page; zs_remap_grow grows it to 3 pages with mremap (left mapped)
 *   zs_map_three     mmap 3 pages; zs_unmap_middle unmaps the middle one (2 left mapped)
 *   zs_map_shared    mmap 2 pages, anonymous shared; zs_unmap_shared unmaps them
 *
 * Mapped in all 14 pages (mremap's growth: 2), unmapped 5, at exit 9 in 4 ranges, peak 13.
 * The heap, the same with or without the mappings (argument `nomaps`):
 *   zs_heap_keep     malloc 1000, kept in a global (still reachable)
 *   zs_heap_lose     malloc 700, pointer dropped (definitely lost)
 *   zs_heap_temp     malloc 300, freed at once (temporary)
 *
 * `large`: 100,000 malloc/free pairs of 256 KiB and more, which glibc serves with mmap (the
 * threshold fixed with mallopt, so it never moves them to the heap): the allocator's mappings,
 * not the program's.
 *
 * `threads`: see zs_map_loop. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096

void *volatile g_keep;
void *volatile g_sink;
static char *g_anon, *g_file, *g_grow, *g_three, *g_shared;

static void die(const char *what) {
    perror(what);
    exit(1);
}

static char *checked(void *p, const char *what) {
    if (p == MAP_FAILED) die(what);
    return p;
}

__attribute__((noinline)) void zs_map_anon(void) {
    g_anon = checked(mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
                     "mmap anon");
    memset(g_anon, 1, 4 * PAGE);
}

__attribute__((noinline)) void zs_map_file(void) {
    char path[] = "/tmp/zmtrace-mmaps-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) die("mkstemp");
    unlink(path);
    if (ftruncate(fd, 2 * PAGE) != 0) die("ftruncate");
    g_file = checked(mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0), "mmap file");
    close(fd);
    g_file[0] = 'z';
}

__attribute__((noinline)) void zs_unmap_file(void) {
    if (munmap(g_file, 2 * PAGE) != 0) die("munmap file");
    g_file = NULL;
}

__attribute__((noinline)) void zs_map_grow(void) {
    g_grow = checked(mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
                     "mmap grow");
    g_grow[0] = 1;
}

__attribute__((noinline)) void zs_remap_grow(void) {
    g_grow = checked(mremap(g_grow, PAGE, 3 * PAGE, MREMAP_MAYMOVE), "mremap");
    g_grow[2 * PAGE] = 2;
}

__attribute__((noinline)) void zs_map_three(void) {
    g_three = checked(mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
                      "mmap three");
    g_three[0] = 3;
}

__attribute__((noinline)) void zs_unmap_middle(void) {
    if (munmap(g_three + PAGE, PAGE) != 0) die("munmap middle");
    g_three[2 * PAGE] = 4;
}

__attribute__((noinline)) void zs_map_shared(void) {
    g_shared = checked(mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0),
                       "mmap shared");
    g_shared[0] = 5;
}

__attribute__((noinline)) void zs_unmap_shared(void) {
    if (munmap(g_shared, 2 * PAGE) != 0) die("munmap shared");
    g_shared = NULL;
}

__attribute__((noinline)) void zs_heap_keep(void) {
    g_keep = malloc(1000);
    memset(g_keep, 0, 1000);
}

__attribute__((noinline)) void zs_heap_lose(void) {
    g_sink = malloc(700);
    g_sink = NULL;
}

__attribute__((noinline)) void zs_heap_temp(void) {
    g_sink = malloc(300);
    free(g_sink);
    g_sink = NULL;
}

__attribute__((noinline)) void zs_large(void) {
    /* Every one of these through mmap: a fixed threshold does not rise after a free. */
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
    for (int i = 0; i < 100000; i++) {
        char *p = malloc(256 * 1024 + (size_t)(i % 16) * PAGE);
        if (!p) die("malloc large");
        p[0] = (char)i;
        g_sink = p;
        free(p);
    }
    g_sink = NULL;
}

/* `threads`: 4 threads, each mapping a page and unmapping the one before, 20,000 times, keeping the
 * last: the kernel hands a page just unmapped by one thread to another's next mmap at once. */
#define MAP_THREADS 4
#define MAP_ROUNDS 20000
#include <pthread.h>

__attribute__((noinline)) void *zs_map_loop(void *arg) {
    char *prev = NULL;
    for (int i = 0; i < MAP_ROUNDS; i++) {
        char *p = checked(mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
                          "mmap loop");
        p[0] = (char)i;
        if (prev && munmap(prev, PAGE) != 0) die("munmap loop");
        prev = p;
    }
    return prev;
}

int main(int argc, char **argv) {
    int maps = !(argc > 1 && strcmp(argv[1], "nomaps") == 0);
    if (argc > 1 && strcmp(argv[1], "large") == 0) {
        zs_large();
        printf("large 100000\n");
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "threads") == 0) {
        pthread_t th[MAP_THREADS];
        for (int t = 0; t < MAP_THREADS; t++)
            if (pthread_create(&th[t], NULL, zs_map_loop, NULL) != 0) die("pthread_create");
        for (int t = 0; t < MAP_THREADS; t++) pthread_join(th[t], NULL);
        printf("threads %d rounds %d\n", MAP_THREADS, MAP_ROUNDS);
        return 0;
    }
    zs_heap_keep();
    if (maps) {
        zs_map_anon();
        zs_map_file();
        zs_map_grow();
        zs_remap_grow();
    }
    zs_heap_lose();
    if (maps) {
        zs_map_three();
        zs_unmap_middle();
        zs_map_shared();
        zs_unmap_shared();
        zs_unmap_file();
    }
    zs_heap_temp();
    printf("maps %d\n", maps);
    return 0;
}
