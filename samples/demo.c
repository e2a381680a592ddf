/* demo: the program `scripts/demo.sh` traces. A small word counter with the kinds of mistakes
 * real programs make, so that every report has something to show: a leak of each class, realloc
 * churn from a buffer grown a little at a time, and temporaries.
 *
 * It counts the words of a built-in text, repeated ROUNDS times:
 *   - each line is copied into a buffer grown by 8 bytes whenever it is too short (realloc churn:
 *     zs_line_append, 6 reallocs a round), then split into words;
 *   - each word is looked up in a hash table of counters (kept in a global: still reachable);
 *     the lookup key is a temporary copy (zs_lower_copy: malloc'd, used, freed at once);
 *   - a list of the words seen once per round is built (zs_note_rare), and the round forgets its
 *     head (the bug: the head is definitely lost, the nodes indirectly lost);
 *   - the report line is formatted into a 200-byte buffer of which only a pointer 8 bytes in is
 *     kept ("skip the prefix"): that buffer is possibly lost.
 *
 * What a leak check at exit finds (zmtrace's and valgrind memcheck's), as src/cli/tests/demo.rs
 * asserts it, with ROUNDS = 3 and the text below (9 distinct words; "quick" and "runs" are noted
 * as rare in each round):
 *
 *   zs_count_word     9 blocks  432 B  still reachable  (one 48-byte counter per distinct word)
 *   zs_table_new      1 block   128 B  still reachable  (the table: 16 buckets)
 *   zs_note_rare      6 blocks  144 B  indirectly lost  (two 24-byte nodes a round)
 *   zs_rare_list      3 blocks   96 B  definitely lost  (one 32-byte head a round)
 *   zs_format_report  1 block   200 B  possibly lost    (only a pointer into it is kept)
 *
 * Prints the counts and exits 0 (20..99: a libc assumption failed).
 */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "zs_common.h"

#define ROUNDS 3
#define BUCKETS 16

static const char *const TEXT[] = {
    "the quick fox jumps over the lazy dog",
    "the dog sleeps",
    "the fox runs",
};

struct counter {
    struct counter *next;
    char word[32];
    long count;
};

struct rare {
    struct rare *next;
    long line, column; /* where the word is in TEXT (a pointer would keep dead memory alive) */
};

struct rare_list {
    struct rare *first;
    long round;
    long length;
    long unused;
};

static struct counter **g_table;  /* the word counters: still reachable */
static char *g_report;            /* 8 bytes into the report buffer: possibly lost */
static char *g_line;              /* the line buffer, freed at the end */
static size_t g_line_cap;

ZS_FN struct counter **zs_table_new(void)
{
    struct counter **t = calloc(BUCKETS, sizeof *t);
    ZS_CHECK(20, t != NULL);
    return t;
}

static unsigned hash(const char *w)
{
    unsigned h = 5381;
    while (*w)
        h = h * 33 + (unsigned char)*w++;
    return h % BUCKETS;
}

/* A lower-case copy of the word: the lookup key, freed right after the lookup. */
ZS_FN char *zs_lower_copy(const char *w, size_t n)
{
    char *k = malloc(n + 1);
    ZS_CHECK(21, k != NULL);
    for (size_t i = 0; i < n; i++)
        k[i] = (char)tolower((unsigned char)w[i]);
    k[n] = 0;
    return k;
}

/* Counts a word; returns its count so far. */
ZS_FN long zs_count_word(const char *w, size_t n)
{
    char *key = zs_lower_copy(w, n);
    ZS_KEEP();
    struct counter **slot = &g_table[hash(key)];
    struct counter *c = *slot;
    while (c != NULL && strcmp(c->word, key) != 0)
        c = c->next;
    if (c == NULL) {
        c = malloc(sizeof *c);
        ZS_CHECK(22, c != NULL);
        memset(c, 0, sizeof *c);
        strncpy(c->word, key, sizeof c->word - 1);
        c->next = *slot;
        *slot = c;
    }
    free(key);
    return ++c->count;
}

ZS_FN struct rare_list *zs_rare_list(long round)
{
    struct rare_list *l = malloc(sizeof *l);
    ZS_CHECK(23, l != NULL);
    memset(l, 0, sizeof *l);
    l->round = round;
    return l;
}

ZS_FN void zs_note_rare(struct rare_list *l, long line, long column)
{
    struct rare *r = malloc(sizeof *r);
    ZS_CHECK(24, r != NULL);
    r->line = line;
    r->column = column;
    r->next = l->first;
    l->first = r;
    l->length++;
}

/* Appends `s` to the line buffer, growing it 8 bytes at a time: many small reallocs. */
ZS_FN void zs_line_append(size_t *len, const char *s)
{
    size_t n = strlen(s);
    while (*len + n + 1 > g_line_cap) {
        g_line_cap += 8;
        char *p = realloc(g_line, g_line_cap);
        ZS_CHECK(25, p != NULL);
        g_line = p;
    }
    memcpy(g_line + *len, s, n + 1);
    *len += n;
}

ZS_FN void zs_format_report(long words, long distinct)
{
    char *buf = malloc(200);
    ZS_CHECK(26, buf != NULL);
    memset(buf, 0, 200);
    snprintf(buf, 200, "report: %ld words, %ld distinct", words, distinct);
    g_report = buf + 8; /* skip "report: " */
}

ZS_FN long zs_round(long round)
{
    long words = 0;
    struct rare_list *rare = zs_rare_list(round);
    ZS_KEEP();
    for (size_t i = 0; i < sizeof TEXT / sizeof TEXT[0]; i++) {
        size_t len = 0;
        zs_line_append(&len, TEXT[i]);
        ZS_KEEP();
        const char *p = g_line;
        while (*p) {
            while (*p == ' ')
                p++;
            const char *start = p;
            while (*p && *p != ' ')
                p++;
            if (p > start) {
                words++;
                long seen = zs_count_word(start, (size_t)(p - start));
                ZS_KEEP();
                /* Two of the words the text has once: noted as rare in every round. */
                if (seen == round + 1 && (strncmp(start, "quick", 5) == 0 || strncmp(start, "runs", 4) == 0)) {
                    zs_note_rare(rare, (long)i, (long)(start - g_line));
                    ZS_KEEP();
                }
            }
        }
        /* Freed after each line, so that the next one grows it again. */
        free(g_line);
        g_line = NULL;
        g_line_cap = 0;
    }
    /* The bug: the list is forgotten at the end of the round. */
    __asm__ volatile("" : : "r"(rare) : "memory");
    return words;
}

/* Overwrites the dead stack below main's frame, where the zs_ functions held their pointers. */
ZS_FN void zs_scrub_stack(void)
{
    volatile char pad[64 * 1024];
    for (size_t i = 0; i < sizeof pad; i++)
        pad[i] = 0;
}

int main(void)
{
    g_table = zs_table_new();
    ZS_KEEP();
    long words = 0;
    for (long r = 0; r < ROUNDS; r++) {
        words += zs_round(r);
        ZS_KEEP();
    }
    long distinct = 0;
    for (int b = 0; b < BUCKETS; b++)
        for (struct counter *c = g_table[b]; c != NULL; c = c->next)
            distinct++;
    zs_format_report(words, distinct);
    ZS_KEEP();
    zs_scrub_stack();
    ZS_KEEP();
    printf("%s\n", g_report);
    return 0;
}
