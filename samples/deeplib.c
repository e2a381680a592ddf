/* deeplib: the library that samples/deepbind.c loads with RTLD_DEEPBIND (built as libdeeplib.so).
 * Its own malloc and free bind to libc's under RTLD_DEEPBIND unless the tracer rebinds them. */
#include <stdlib.h>
#include <string.h>

#include "zs_common.h"

ZS_FN void *zs_lib_alloc(size_t n)
{
    void *p = malloc(n);
    if (p != NULL)
        memset(p, 0x77, n);
    return p;
}

ZS_FN void zs_lib_free(void *p)
{
    free(p);
    ZS_KEEP();
}
