/* The entry points whose caller's frame the leak check must know: `exit`, `_exit`, `_Exit` and
 * `zmtrace_leak_check`. Each saves the callee-saved registers as its caller left them and takes
 * the caller's stack pointer (as it was before the call), then calls its Rust half with both.
 *
 * Why assembly: the check scans the calling thread's stack from the caller's frame up, and
 * counts the caller's registers as roots. Read later, in Rust, both are already gone: the
 * frames in between (the exit machinery's, ours) have moved the stack pointer and reused the
 * registers, and their unwritten slots hold stale copies of pointers that must not be roots. */

        .text

.macro SAVE_CALLEE_SAVED
        pushq %r15
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %r15, 0
        pushq %r14
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %r14, 0
        pushq %r13
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %r13, 0
        pushq %r12
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %r12, 0
        pushq %rbp
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %rbp, 0
        pushq %rbx
        .cfi_adjust_cfa_offset 8
        .cfi_rel_offset %rbx, 0
.endm

/* An entry point that does not return: f(first argument, caller's sp, registers). */
.macro NORETURN_ENTRY name, rust
        .p2align 4
        .globl \name
        .type \name, @function
\name:
        .cfi_startproc
        SAVE_CALLEE_SAVED
        leaq 56(%rsp), %rsi      /* 6 registers and the return address above */
        movq %rsp, %rdx          /* rbx, rbp, r12, r13, r14, r15 */
        subq $8, %rsp            /* 16-byte alignment at the call */
        .cfi_adjust_cfa_offset 8
        call \rust@PLT
        ud2
        .cfi_endproc
        .size \name, .-\name
.endm

NORETURN_ENTRY exit, zmtrace_exit_entry
NORETURN_ENTRY _exit, zmtrace_underscore_exit_entry
NORETURN_ENTRY _Exit, zmtrace_underscore_Exit_entry

/* long zmtrace_leak_check(void) */
        .p2align 4
        .globl zmtrace_leak_check
        .type zmtrace_leak_check, @function
zmtrace_leak_check:
        .cfi_startproc
        SAVE_CALLEE_SAVED
        leaq 56(%rsp), %rdi
        movq %rsp, %rsi
        subq $8, %rsp
        .cfi_adjust_cfa_offset 8
        call zmtrace_leak_check_entry@PLT
        addq $8, %rsp
        .cfi_adjust_cfa_offset -8
        popq %rbx
        .cfi_adjust_cfa_offset -8
        .cfi_restore %rbx
        popq %rbp
        .cfi_adjust_cfa_offset -8
        .cfi_restore %rbp
        popq %r12
        .cfi_adjust_cfa_offset -8
        .cfi_restore %r12
        popq %r13
        .cfi_adjust_cfa_offset -8
        .cfi_restore %r13
        popq %r14
        .cfi_adjust_cfa_offset -8
        .cfi_restore %r14
        popq %r15
        .cfi_adjust_cfa_offset -8
        .cfi_restore %r15
        ret
        .cfi_endproc
        .size zmtrace_leak_check, .-zmtrace_leak_check

/* The program's `main`, entered through this trampoline (see `__libc_start_main` in lib.rs):
 * it notes main's stack pointer, its return address and the thread, then jumps to main, so
 * that no frame of ours stays on the stack while main runs. A return from main ends in glibc's
 * internal call of `exit` (no hook sees it): the check at exit then knows main's caller's frame
 * from these (its `exit` call overwrites the return address slot, which tells that main
 * returned). */
        .p2align 4
        .globl zmtrace_main_trampoline
        .hidden zmtrace_main_trampoline
        .type zmtrace_main_trampoline, @function
zmtrace_main_trampoline:
        .cfi_startproc
        movq %rsp, zmtrace_main_sp(%rip)
        movq (%rsp), %rax
        movq %rax, zmtrace_main_ret(%rip)
        movq %fs:0, %rax
        movq %rax, zmtrace_main_tp(%rip)
        jmpq *zmtrace_real_main(%rip)
        .cfi_endproc
        .size zmtrace_main_trampoline, .-zmtrace_main_trampoline

        .bss
        .p2align 3
        .globl zmtrace_real_main, zmtrace_main_sp, zmtrace_main_ret, zmtrace_main_tp
        .hidden zmtrace_real_main, zmtrace_main_sp, zmtrace_main_ret, zmtrace_main_tp
zmtrace_real_main:  .quad 0
zmtrace_main_sp:    .quad 0
zmtrace_main_ret:   .quad 0
zmtrace_main_tp:    .quad 0

/* No executable stack for the programs we are loaded into. */
        .section .note.GNU-stack,"",@progbits
