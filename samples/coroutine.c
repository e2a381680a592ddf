/* coroutine: allocations made on a stack the thread does not know, a coroutine's (makecontext,
 * on a stack of its own from mmap), interleaved with allocations on the thread's own stack.
 *
 * main switches to the coroutine N times; each time the coroutine allocates one block from
 * zs_co_alloc (two frames deep on its own stack) and switches back; main then allocates one from
 * zs_main_alloc. Every block is freed before the end.
 *
 * Usage: coroutine [N] (default 2000). Prints "coroutine_allocs N main_allocs N".
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>

#include "zs_common.h"

#define STACK_SIZE (256 * 1024)

static ucontext_t main_ctx, co_ctx;
static void *volatile co_block, *volatile main_block;
static long co_allocs, main_allocs, rounds = 2000;

ZS_FN void zs_co_alloc(long i)
{
    free(co_block);
    co_block = malloc(24 + i % 100);
    co_allocs++;
    ZS_KEEP();
}

ZS_FN void zs_co_body(void)
{
    for (long i = 0; i < rounds; i++) {
        zs_co_alloc(i);
        swapcontext(&co_ctx, &main_ctx);
    }
    ZS_KEEP();
}

ZS_FN void zs_main_alloc(long i)
{
    free(main_block);
    main_block = malloc(24 + i % 100);
    main_allocs++;
    ZS_KEEP();
}

int main(int argc, char **argv)
{
    if (argc > 1)
        rounds = atol(argv[1]);
    void *stack = mmap(NULL, STACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ZS_CHECK(20, stack != MAP_FAILED);
    ZS_CHECK(21, getcontext(&co_ctx) == 0);
    co_ctx.uc_stack.ss_sp = stack;
    co_ctx.uc_stack.ss_size = STACK_SIZE;
    co_ctx.uc_link = &main_ctx;
    makecontext(&co_ctx, zs_co_body, 0);
    for (long i = 0; i < rounds; i++) {
        ZS_CHECK(22, swapcontext(&main_ctx, &co_ctx) == 0);
        zs_main_alloc(i);
    }
    /* Once more: the coroutine's loop ends and it returns to main through uc_link. */
    ZS_CHECK(23, swapcontext(&main_ctx, &co_ctx) == 0);
    free(co_block);
    co_block = NULL;
    free(main_block);
    main_block = NULL;
    munmap(stack, STACK_SIZE);
    printf("coroutine_allocs %ld main_allocs %ld\n", co_allocs, main_allocs);
    return 0;
}
