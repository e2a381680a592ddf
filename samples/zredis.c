/* zredis: a small program in Redis's style, written against zmalloc.h: an sds-like growable
 * string and a tiny chained hash table (dict). Leaks and churns known amounts.
 *
 * Usage: zredis [DIR]   with DIR, tracing is started with zmtrace_start(DIR) and stopped at the
 *                       end with zmtrace_stop(); without it, set ZMTRACE=1 (and ZMTRACE_OUT).
 *
 * The truth, per function, as src/cli/tests/zmalloc.rs asserts it:
 *   zs_sds_cat_step    appends 8 bytes 100 times, growing by exactly the room needed: the first
 *                      two fit in the initial 16 bytes, so 98 reallocs, all grows, a fixed step
 *                      of 8, longest chain 98; the string is freed
 *   zs_sds_cat_double  doubles the capacity when full (16 -> 2048): 7 reallocs, geometric (the
 *                      16-byte header makes each grow x1.82 on average), chain 7; the string
 *                      (16-byte header + 2048) is leaked: 1 block, 2064 bytes
 *   zs_dict_expand     the table grows 4 -> 8 -> 16 -> 32 buckets: 3 zcalloc + 3 zfree of the
 *                      old tables (plus the first table, made by zs_dict_create)
 *   zs_make_value      20 values of 100 bytes; zs_dict_release frees only 17 of them:
 *                      3 blocks, 300 bytes leaked
 * Leaked by the sample in all: 4 blocks, 2364 bytes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zmalloc.h"

#define ZS_FN __attribute__((noipa))

/* ---- sds ---- */
typedef struct {
    size_t len, alloc; /* 16-byte header */
    char buf[];
} sds_hdr;

ZS_FN static sds_hdr *zs_sds_new(size_t cap)
{
    sds_hdr *s = zmalloc(sizeof(sds_hdr) + cap);
    s->len = 0;
    s->alloc = cap;
    s->buf[0] = 0;
    return s;
}

/* The naive way: exactly the room the append needs. */
ZS_FN static sds_hdr *zs_sds_cat_step(sds_hdr *s, const char *t, size_t n)
{
    if (s->len + n > s->alloc) {
        s = zrealloc(s, sizeof(sds_hdr) + s->len + n);
        s->alloc = s->len + n;
    }
    memcpy(s->buf + s->len, t, n);
    s->len += n;
    return s;
}

/* Redis's way (_sdsMakeRoomFor, below SDS_MAX_PREALLOC): double when full. */
ZS_FN static sds_hdr *zs_sds_cat_double(sds_hdr *s, const char *t, size_t n)
{
    if (s->len + n > s->alloc) {
        size_t cap = s->alloc;
        while (cap < s->len + n)
            cap *= 2;
        s = zrealloc(s, sizeof(sds_hdr) + cap);
        s->alloc = cap;
    }
    memcpy(s->buf + s->len, t, n);
    s->len += n;
    return s;
}

/* ---- dict ---- */
typedef struct entry {
    char *key;
    void *val;
    struct entry *next;
} entry;

typedef struct {
    entry **table;
    size_t size, used;
} dict;

static unsigned long hash(const char *k)
{
    unsigned long h = 5381;
    while (*k)
        h = h * 33 + (unsigned char)*k++;
    return h;
}

ZS_FN static dict *zs_dict_create(void)
{
    dict *d = zmalloc(sizeof(dict));
    d->size = 4;
    d->used = 0;
    d->table = zcalloc(d->size * sizeof(entry *));
    return d;
}

ZS_FN static void zs_dict_expand(dict *d)
{
    size_t size = d->size * 2;
    entry **t = zcalloc(size * sizeof(entry *));
    for (size_t i = 0; i < d->size; i++) {
        entry *e = d->table[i];
        while (e) {
            entry *next = e->next;
            size_t b = hash(e->key) & (size - 1);
            e->next = t[b];
            t[b] = e;
            e = next;
        }
    }
    zfree(d->table);
    d->table = t;
    d->size = size;
}

ZS_FN static void *zs_make_value(int i)
{
    char *v = zmalloc(100);
    snprintf(v, 100, "value-%d", i);
    return v;
}

ZS_FN static void zs_dict_add(dict *d, const char *key, void *val)
{
    if (d->used == d->size)
        zs_dict_expand(d);
    entry *e = zmalloc(sizeof(entry));
    e->key = zstrdup(key);
    e->val = val;
    size_t b = hash(key) & (d->size - 1);
    e->next = d->table[b];
    d->table[b] = e;
    d->used++;
}

/* Frees everything but the values of three keys (the "bug" the leak report finds). */
ZS_FN static void zs_dict_release(dict *d)
{
    for (size_t i = 0; i < d->size; i++) {
        entry *e = d->table[i];
        while (e) {
            entry *next = e->next;
            if (strcmp(e->key, "key-3") && strcmp(e->key, "key-7") && strcmp(e->key, "key-11"))
                zfree(e->val);
            zfree(e->key);
            zfree(e);
            e = next;
        }
    }
    zfree(d->table);
    zfree(d);
}

sds_hdr *g_kept;

int main(int argc, char **argv)
{
    if (argc > 1 && zmtrace_start(argv[1]) != 0)
        return 2;

    sds_hdr *s = zs_sds_new(16);
    for (int i = 0; i < 100; i++)
        s = zs_sds_cat_step(s, "12345678", 8);
    zfree(s);

    s = zs_sds_new(16);
    for (int i = 0; i < 200; i++)
        s = zs_sds_cat_double(s, "abcdefghij", 10);
    g_kept = s; /* leaked */

    dict *d = zs_dict_create();
    char key[32];
    for (int i = 0; i < 20; i++) {
        snprintf(key, sizeof key, "key-%d", i);
        zs_dict_add(d, key, zs_make_value(i));
    }
    zs_dict_release(d);

    if (argc > 1)
        zmtrace_stop();
    return 0;
}
