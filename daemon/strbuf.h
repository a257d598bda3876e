#pragma once
#include <stdbool.h>
#include <stddef.h>

/* A growable, always NUL-terminated string. Out of memory is sticky: later
 * appends do nothing and oom stays set, so a builder checks once at the end.
 * A zeroed struct is an empty string (p may be NULL until the first append). */
struct strbuf {
    char *p;
    size_t len, cap;
    bool oom;
};

/* Appends n bytes. */
void strbuf_add(struct strbuf *b, const char *s, size_t n);
/* Appends a NUL-terminated string. */
void strbuf_adds(struct strbuf *b, const char *s);
/* Appends formatted text. */
void strbuf_printf(struct strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Frees the storage and empties the buffer. */
void strbuf_free(struct strbuf *b);
