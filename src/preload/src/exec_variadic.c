/* The variadic members of the exec family. glibc's own execl/execlp/execle call its internal
 * __execve directly, bypassing our execve hook, so the dump would miss its final flush and the new
 * image its ZMTRACE_EXEC_FROM marker. Stable Rust cannot define variadic functions, hence this C:
 * collect the arguments and call the (hooked) vector forms. */
#include <stdarg.h>
#include <stddef.h>
#include <unistd.h>
#include <errno.h>

#define ZM_MAX_ARGS 4096

static int collect(const char *arg0, va_list ap, const char **argv) {
    int n = 0;
    argv[n++] = arg0;
    while (argv[n - 1] != NULL) {
        if (n == ZM_MAX_ARGS) {
            errno = E2BIG;
            return -1;
        }
        argv[n++] = va_arg(ap, const char *);
    }
    return n;
}

int execl(const char *path, const char *arg, ...) {
    const char *argv[ZM_MAX_ARGS];
    va_list ap;
    va_start(ap, arg);
    int n = collect(arg, ap, argv);
    va_end(ap);
    if (n < 0) return -1;
    return execv(path, (char *const *)argv);
}

int execlp(const char *file, const char *arg, ...) {
    const char *argv[ZM_MAX_ARGS];
    va_list ap;
    va_start(ap, arg);
    int n = collect(arg, ap, argv);
    va_end(ap);
    if (n < 0) return -1;
    return execvp(file, (char *const *)argv);
}

int execle(const char *path, const char *arg, ...) {
    const char *argv[ZM_MAX_ARGS];
    va_list ap;
    va_start(ap, arg);
    int n = collect(arg, ap, argv);
    char *const *envp = va_arg(ap, char *const *);
    va_end(ap);
    if (n < 0) return -1;
    return execve(path, (char *const *)argv, envp);
}
