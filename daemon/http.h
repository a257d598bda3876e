#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <llhttp.h>

#include "err.h"

/* Limits of the interface contract. */
#define HTTP_MAX_REQUEST_LINE 8192
#define HTTP_MAX_HEADER_BYTES 16384
#define HTTP_MAX_FIELDS       100
#define HTTP_MAX_HEAD         (HTTP_MAX_REQUEST_LINE + 2 + HTTP_MAX_HEADER_BYTES + 2)
#define HTTP_MAX_XFF          4

/* A byte range of the connection's buffer, as an offset so that it survives the
 * buffer growing while a body arrives. */
struct http_span {
    uint32_t off, len;
};

/* What the parser extracted from one request. Spans refer to the buffer that was
 * given to http_parse(). */
struct http_request {
    uint8_t method; /* enum llhttp_method */
    uint8_t http_minor;
    bool keep_alive;
    bool expect_continue;
    bool upgrade; /* the client asked for a protocol change; we answer and close */
    struct http_span target, path, query;
    bool has_query;
    struct http_span authorization, content_type;
    struct http_span xff[HTTP_MAX_XFF];
    uint8_t n_xff;
    uint8_t n_host, n_authorization;
    bool has_content_length;
    uint32_t content_length;
    struct http_span body;
    uint32_t head_len;  /* bytes of the head, from the start of the request */
    uint32_t total_len; /* head and body */
};

/* Per-listener rules. */
struct http_rules {
    uint32_t max_body; /* 0: only "Content-Length: 0" is allowed (public listener) */
};

/* The parser state of one connection: llhttp plus the strict pre-scan that closes
 * the gaps of llhttp 8.1.0 (obs-fold, space before the colon, lone CR, leading
 * whitespace, non-token header bytes). */
struct http_parser {
    llhttp_t ll;
    const struct http_rules *rules;
    struct http_request req;
    const char *base;       /* the buffer being parsed (valid during http_parse) */
    uint32_t scan_pos;      /* head bytes already checked */
    uint32_t hdr_start;     /* offset of the first header line */
    struct http_span value; /* the header value being collected */
    uint32_t fed;           /* bytes already given to llhttp */
    uint16_t fields;
    uint8_t cur_header;   /* which header the current value belongs to */
    bool conn_close;      /* Connection lists "close" */
    bool conn_keep_alive; /* Connection lists "keep-alive" */
    bool head_done;
    bool in_request;
    int error_status; /* set by callbacks */
    const char *error_reason;
};

enum http_result {
    HTTP_NEED_MORE = 0, /* the request is not complete yet */
    HTTP_GOT_REQUEST,   /* a complete request is in parser->req */
    HTTP_ERROR,         /* answer *status and close the connection */
};

/* Prepares a parser for a new connection. */
void http_parser_init(struct http_parser *p, const struct http_rules *rules);
/* Parses the request at the start of buf[0..len): the buffer always begins at the
 * first byte of the current request and only grows between calls. On HTTP_ERROR
 * *status is 400, 413, 414 or 431 and *reason a static text. On HTTP_GOT_REQUEST the
 * request occupies req.total_len bytes; call http_parser_next() before parsing
 * what follows it. */
enum http_result http_parse(struct http_parser *p, const char *buf, size_t len, int *status,
                            const char **reason);
/* Readies the parser for the next request on the same connection. */
void http_parser_next(struct http_parser *p);
/* True once the first byte of a request has been seen. */
bool http_parser_started(const struct http_parser *p);

/* Reason phrase of a status code ("Not Found"). */
const char *http_reason(int status);

/* A response under construction in a caller-provided buffer. */
struct http_out {
    char *p;
    size_t len, cap;
    bool overflow;
};
/* Appends bytes; sets overflow instead of writing past cap. */
void http_out_put(struct http_out *o, const char *s, size_t n);
/* Appends a NUL-terminated string. */
void http_out_puts(struct http_out *o, const char *s);
/* Writes a complete response: status line, Date, Content-Type (when body_len >
 * 0 or ctype given), Content-Length, the extra header lines (each ending in
 * CRLF, may be NULL), Connection: close when !keep_alive, and the body unless
 * head_only. */
void http_out_response(struct http_out *o, int status, const char *ctype, const char *extra,
                       const char *body, size_t body_len, bool head_only, bool keep_alive);
/* Sets the cached Date value from the wall clock; call once per loop turn. */
void http_date_update(void);
