/* The strict HTTP/1.1 request parser, driven with byte buffers: no sockets.
 * The public listener's rules take no body at all; the admin listener's take
 * up to 64 KiB framed by Content-Length. The smuggling cases are the gaps of
 * llhttp 8.1.0 that the pre-scan must close, and the published payloads of
 * the CVEs found in llhttp over the years. */
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "test.h"

static const struct http_rules public_rules = {.max_body = 0};
static const struct http_rules admin_rules = {.max_body = 65536};

static struct http_parser g_p;
static int g_status;
static const char *g_reason;

/* Parses buf[0..len) with one call on a fresh parser. */
static enum http_result parse_n(const struct http_rules *rules, const char *buf, size_t len)
{
    http_parser_init(&g_p, rules);
    g_status = 0;
    g_reason = NULL;
    return http_parse(&g_p, buf, len, &g_status, &g_reason);
}

/* 0 for a complete request, -1 when more is needed, else the error status. */
static int outcome_n(const struct http_rules *rules, const char *buf, size_t len)
{
    enum http_result r = parse_n(rules, buf, len);
    if (r == HTTP_GOT_REQUEST) return 0;
    if (r == HTTP_NEED_MORE) return -1;
    if (!g_reason) {
        fprintf(stderr, "status %d without a reason\n", g_status);
        test_failures++;
    }
    return g_status;
}

/* For string literals, which may hold NUL bytes. */
#define OUTCOME(rules, lit) outcome_n(rules, lit, sizeof(lit) - 1)
#define PUBLIC(lit)         OUTCOME(&public_rules, lit)
#define ADMIN(lit)          OUTCOME(&admin_rules, lit)

/* The bytes of a span, as a string (a few may be live at once). */
static const char *span(const char *base, struct http_span s)
{
    static char bufs[4][512];
    static int which;
    char *b = bufs[which = (which + 1) % 4];
    snprintf(b, sizeof bufs[0], "%.*s", (int)s.len, base + s.off);
    return b;
}

/* A growable buffer for the large requests. */
struct buf {
    char *p;
    size_t len;
};

static void buf_add(struct buf *b, const char *s, size_t n)
{
    char *np = realloc(b->p, b->len + n + 1);
    if (!np) exit(1);
    b->p = np;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_puts(struct buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

static void buf_fill(struct buf *b, char c, size_t n)
{
    for (size_t i = 0; i < n; i++) buf_add(b, &c, 1);
}

/* ---- well-formed requests ------------------------------------------------ */

static void simple_get(void)
{
    static const char req[] = "GET /idv/callback?transactionId=t1&passed=Y HTTP/1.1\r\n"
                              "Host: idv.example.com\r\n"
                              "User-Agent: test\r\n"
                              "\r\n";
    CHECK_INT(PUBLIC(req), 0);
    const struct http_request *q = &g_p.req;
    CHECK_INT(q->method, HTTP_GET);
    CHECK_INT(q->http_minor, 1);
    CHECK(q->keep_alive);
    CHECK_STR(span(req, q->target), "/idv/callback?transactionId=t1&passed=Y");
    CHECK_STR(span(req, q->path), "/idv/callback");
    CHECK(q->has_query);
    CHECK_STR(span(req, q->query), "transactionId=t1&passed=Y");
    CHECK_INT(q->n_host, 1);
    CHECK(!q->has_content_length);
    CHECK_INT(q->body.len, 0);
    CHECK(!q->expect_continue);
    CHECK(!q->upgrade);
    CHECK_INT(q->head_len, sizeof req - 1);
    CHECK_INT(q->total_len, sizeof req - 1);
    CHECK(g_p.head_done);
}

static void get_without_query(void)
{
    static const char req[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK_INT(PUBLIC(req), 0);
    CHECK_STR(span(req, g_p.req.path), "/healthz");
    CHECK(!g_p.req.has_query);
    CHECK_INT(g_p.req.query.len, 0);
}

static void get_empty_query(void)
{
    static const char req[] = "GET /x? HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK_INT(PUBLIC(req), 0);
    CHECK_STR(span(req, g_p.req.path), "/x");
    CHECK(g_p.req.has_query);
    CHECK_INT(g_p.req.query.len, 0);
}

static void head_method(void)
{
    CHECK_INT(PUBLIC("HEAD /idv/callback HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    CHECK_INT(g_p.req.method, HTTP_HEAD);
}

/* Header names are case-insensitive; values are trimmed of spaces and tabs. */
static void header_values_extracted(void)
{
    static const char req[] = "POST /v1/transactions HTTP/1.1\r\n"
                              "hOsT: x\r\n"
                              "authorization: \t Bearer abc \t\r\n"
                              "CONTENT-TYPE: application/json\r\n"
                              "X-Forwarded-For: 192.0.2.1\r\n"
                              "x-forwarded-for: 198.51.100.2, 10.0.0.1\r\n"
                              "Content-Length: 0\r\n"
                              "\r\n";
    CHECK_INT(ADMIN(req), 0);
    const struct http_request *q = &g_p.req;
    CHECK_INT(q->method, HTTP_POST);
    CHECK_INT(q->n_host, 1);
    CHECK_INT(q->n_authorization, 1);
    CHECK_STR(span(req, q->authorization), "Bearer abc");
    CHECK_STR(span(req, q->content_type), "application/json");
    CHECK_INT(q->n_xff, 2);
    CHECK_STR(span(req, q->xff[0]), "192.0.2.1");
    CHECK_STR(span(req, q->xff[1]), "198.51.100.2, 10.0.0.1");
    CHECK(q->has_content_length);
    CHECK_INT(q->content_length, 0);
}

/* Only the last HTTP_MAX_XFF X-Forwarded-For lines are kept: those nearest us. */
static void xff_keeps_rightmost(void)
{
    static const char req[] = "GET / HTTP/1.1\r\nHost: x\r\n"
                              "X-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n"
                              "X-Forwarded-For: 3.3.3.3\r\nX-Forwarded-For: 4.4.4.4\r\n"
                              "X-Forwarded-For: 5.5.5.5\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n";
    CHECK_INT(PUBLIC(req), 0);
    CHECK_INT(g_p.req.n_xff, HTTP_MAX_XFF);
    CHECK_STR(span(req, g_p.req.xff[0]), "3.3.3.3");
    CHECK_STR(span(req, g_p.req.xff[HTTP_MAX_XFF - 1]), "6.6.6.6");
}

static void http10_close(void)
{
    static const char req[] = "GET /idv/callback HTTP/1.0\r\n\r\n";
    CHECK_INT(PUBLIC(req), 0); /* HTTP/1.0 needs no Host */
    CHECK_INT(g_p.req.http_minor, 0);
    CHECK(!g_p.req.keep_alive);
    CHECK_INT(g_p.req.total_len, sizeof req - 1);
}

static void http10_keep_alive(void)
{
    CHECK_INT(PUBLIC("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), 0);
    CHECK(g_p.req.keep_alive);
}

static void http11_connection_close(void)
{
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), 0);
    CHECK(!g_p.req.keep_alive);
}

/* An upgrade is reported (the server answers and closes), never switched to. */
static void upgrade_reported(void)
{
    static const char req[] = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                              "Upgrade: websocket\r\n\r\n";
    CHECK_INT(PUBLIC(req), 0);
    CHECK(g_p.req.upgrade);
    CHECK_INT(g_p.req.total_len, sizeof req - 1);
}

/* An upgrade with a body (admin listener): the body is read, and total_len
 * covers it, so that nothing of it is left for a next request. */
static void upgrade_with_body_reads_body(void)
{
#define UPGRADE_WITH_BODY                                                                          \
    "POST /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"                \
    "Content-Length: 2\r\n\r\n{}"
    CHECK_INT(ADMIN(UPGRADE_WITH_BODY "GET / HTTP/1.1\r\n"), 0);
    CHECK(g_p.req.upgrade);
    CHECK_INT(g_p.req.content_length, 2);
    CHECK_INT(g_p.req.total_len, strlen(UPGRADE_WITH_BODY));
#undef UPGRADE_WITH_BODY
}

static void incomplete_head_needs_more(void)
{
    static const char req[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    for (size_t n = 1; n < sizeof req - 1; n++)
        if (outcome_n(&public_rules, req, n) != -1) {
            fprintf(stderr, "%zu bytes of the head gave %d\n", n, g_status);
            test_failures++;
        }
}

static void parser_started(void)
{
    http_parser_init(&g_p, &public_rules);
    CHECK(!http_parser_started(&g_p));
    int status = 0;
    const char *reason = NULL;
    CHECK_INT(http_parse(&g_p, "G", 1, &status, &reason), HTTP_NEED_MORE);
    CHECK(http_parser_started(&g_p));
    CHECK_INT(http_parse(&g_p, "GET / HTTP/1.1\r\n", 16, &status, &reason), HTTP_NEED_MORE);
    CHECK(http_parser_started(&g_p));
    CHECK_INT(http_parse(&g_p, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27, &status, &reason),
              HTTP_GOT_REQUEST);
    http_parser_next(&g_p);
    CHECK(!http_parser_started(&g_p));
}

/* The caller removes req.total_len bytes and calls http_parser_next(); the
 * next request then starts at offset 0 of the same buffer. */
static void pipelined_two_requests(void)
{
    char buf[] = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                 "GET /b?q=1 HTTP/1.1\r\nHost: y\r\nConnection: close\r\n\r\n";
    size_t len = sizeof buf - 1, first = strlen("GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    CHECK_INT(parse_n(&public_rules, buf, len), HTTP_GOT_REQUEST);
    CHECK_INT(g_p.req.total_len, first);
    CHECK_STR(span(buf, g_p.req.path), "/a");
    CHECK(g_p.req.keep_alive);

    memmove(buf, buf + g_p.req.total_len, len - g_p.req.total_len);
    len -= g_p.req.total_len;
    http_parser_next(&g_p);
    CHECK_INT(http_parse(&g_p, buf, len, &g_status, &g_reason), HTTP_GOT_REQUEST);
    CHECK_INT(g_p.req.total_len, len);
    CHECK_STR(span(buf, g_p.req.path), "/b");
    CHECK_STR(span(buf, g_p.req.query), "q=1");
    CHECK(!g_p.req.keep_alive);
    CHECK_INT(g_p.req.n_host, 1);
}

/* The second request is judged as strictly as the first. */
static void pipelined_second_malformed(void)
{
    char buf[] = "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                 "GET /b HTTP/1.1\r\nHost: x\r\nX-A : 1\r\n\r\n";
    size_t len = sizeof buf - 1;
    CHECK_INT(parse_n(&public_rules, buf, len), HTTP_GOT_REQUEST);
    memmove(buf, buf + g_p.req.total_len, len - g_p.req.total_len);
    len -= g_p.req.total_len;
    http_parser_next(&g_p);
    CHECK_INT(http_parse(&g_p, buf, len, &g_status, &g_reason), HTTP_ERROR);
    CHECK_INT(g_status, 400);
}

/* The second request arrives later, in pieces. */
static void pipelined_second_in_pieces(void)
{
    char buf[128] = "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HT";
    size_t len = strlen(buf);
    CHECK_INT(parse_n(&public_rules, buf, len), HTTP_GOT_REQUEST);
    memmove(buf, buf + g_p.req.total_len, len - g_p.req.total_len);
    len -= g_p.req.total_len;
    http_parser_next(&g_p);
    CHECK_INT(http_parse(&g_p, buf, len, &g_status, &g_reason), HTTP_NEED_MORE);
    strcpy(buf + len, "TP/1.1\r\nHost: x\r\n\r\n");
    len = strlen(buf);
    CHECK_INT(http_parse(&g_p, buf, len, &g_status, &g_reason), HTTP_GOT_REQUEST);
    CHECK_STR(span(buf, g_p.req.path), "/b");
    CHECK_INT(g_p.req.total_len, len);
}

/* Fed one byte at a time, the head gives the same request as all at once. */
static void head_one_byte_at_a_time(void)
{
    static const char req[] = "GET /idv/callback?a=1&b=2 HTTP/1.1\r\n"
                              "Host: idv.example.com\r\n"
                              "X-Forwarded-For: 192.0.2.9\r\n"
                              "Connection: keep-alive\r\n"
                              "\r\n";
    size_t len = sizeof req - 1;
    CHECK_INT(parse_n(&public_rules, req, len), HTTP_GOT_REQUEST);
    struct http_request whole = g_p.req;

    http_parser_init(&g_p, &public_rules);
    for (size_t n = 1; n <= len; n++) {
        int status = 0;
        const char *reason = NULL;
        enum http_result r = http_parse(&g_p, req, n, &status, &reason);
        if (r != (n < len ? HTTP_NEED_MORE : HTTP_GOT_REQUEST)) {
            fprintf(stderr, "after %zu of %zu bytes: result %d status %d (%s)\n", n, len, r, status,
                    reason ? reason : "");
            test_failures++;
            return;
        }
    }
    CHECK_INT(g_p.req.method, whole.method);
    CHECK_INT(g_p.req.keep_alive, whole.keep_alive);
    CHECK_STR(span(req, g_p.req.path), span(req, whole.path));
    CHECK_STR(span(req, g_p.req.query), span(req, whole.query));
    CHECK_STR(span(req, g_p.req.xff[0]), "192.0.2.9");
    CHECK_INT(g_p.req.n_xff, whole.n_xff);
    CHECK_INT(g_p.req.head_len, whole.head_len);
    CHECK_INT(g_p.req.total_len, whole.total_len);
}

/* A smuggling attempt fed one byte at a time is refused just the same. */
static void bad_head_one_byte_at_a_time(void)
{
    static const char req[] = "GET / HTTP/1.1\r\nHost: x\r\nFoo: bar\r\n Content-Length: 5\r\n\r\n";
    size_t len = sizeof req - 1;
    http_parser_init(&g_p, &public_rules);
    enum http_result r = HTTP_NEED_MORE;
    int status = 0;
    const char *reason = NULL;
    for (size_t n = 1; n <= len && r == HTTP_NEED_MORE; n++)
        r = http_parse(&g_p, req, n, &status, &reason);
    CHECK_INT(r, HTTP_ERROR);
    CHECK_INT(status, 400);
}

/* ---- size limits ---------------------------------------------------------- */

/* "GET /aaa…a HTTP/1.1" of exactly n bytes, then a Host header. */
static void request_line_of(struct buf *b, size_t n)
{
    buf_puts(b, "GET /");
    buf_fill(b, 'a', n - strlen("GET / HTTP/1.1"));
    buf_puts(b, " HTTP/1.1\r\nHost: x\r\n\r\n");
}

static void request_line_8192_ok(void)
{
    struct buf b = {0};
    request_line_of(&b, HTTP_MAX_REQUEST_LINE);
    CHECK_INT(strchr(b.p, '\r') - b.p, 8192);
    CHECK_INT(outcome_n(&public_rules, b.p, b.len), 0);
    CHECK_INT(g_p.req.path.len, 8192 - strlen("GET  HTTP/1.1"));
    free(b.p);
}

static void request_line_8193_is_414(void)
{
    struct buf b = {0};
    request_line_of(&b, HTTP_MAX_REQUEST_LINE + 1);
    CHECK_INT(strchr(b.p, '\r') - b.p, 8193);
    CHECK_INT(outcome_n(&public_rules, b.p, b.len), 414);
    free(b.p);
}

/* An over-long request line is refused before its end arrives. */
static void request_line_too_long_without_end(void)
{
    struct buf b = {0};
    buf_puts(&b, "GET /");
    buf_fill(&b, 'a', 20000);
    CHECK_INT(outcome_n(&public_rules, b.p, b.len), 414);
    /* Up to the limit (and the CR), more may come. */
    CHECK_INT(outcome_n(&public_rules, b.p, HTTP_MAX_REQUEST_LINE + 1), -1);
    free(b.p);
}

/* Host line, then one X-Pad line, the header lines (with CRLFs) adding up to
 * exactly n bytes. */
static void header_section_of(struct buf *b, size_t n)
{
    buf_puts(b, "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ");
    buf_fill(b, 'p', n - strlen("Host: x\r\nX-Pad: \r\n"));
    buf_puts(b, "\r\n\r\n");
}

static void header_section_16k_ok(void)
{
    struct buf b = {0};
    header_section_of(&b, HTTP_MAX_HEADER_BYTES);
    CHECK_INT(b.len, strlen("GET / HTTP/1.1\r\n") + 16384 + 2);
    CHECK_INT(outcome_n(&public_rules, b.p, b.len), 0);
    free(b.p);
}

static void header_section_over_16k_is_431(void)
{
    struct buf b = {0};
    header_section_of(&b, HTTP_MAX_HEADER_BYTES + 1);
    CHECK_INT(outcome_n(&public_rules, b.p, b.len), 431);
    free(b.p);
    /* Many moderate lines add up too. */
    struct buf c = {0};
    buf_puts(&c, "GET / HTTP/1.1\r\nHost: x\r\n");
    for (int i = 0; i < 20; i++) {
        buf_puts(&c, "X-Big: ");
        buf_fill(&c, 'b', 1000);
        buf_puts(&c, "\r\n");
    }
    buf_puts(&c, "\r\n");
    CHECK_INT(outcome_n(&public_rules, c.p, c.len), 431);
    free(c.p);
}

/* An endless header line is refused before its end arrives. */
static void header_section_too_long_without_end(void)
{
    struct buf b = {0};
    buf_puts(&b, "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: ");
    buf_fill(&b, 'p', 20000);
    CHECK_INT(outcome_n(&public_rules, b.p, b.len), 431);
    free(b.p);
}

static void fields(struct buf *b, int n)
{
    buf_puts(b, "GET / HTTP/1.1\r\nHost: x\r\n");
    for (int i = 1; i < n; i++) {
        char line[32];
        snprintf(line, sizeof line, "X-F%d: %d\r\n", i, i);
        buf_puts(b, line);
    }
    buf_puts(b, "\r\n");
}

static void fields_100_ok(void)
{
    struct buf b = {0};
    fields(&b, HTTP_MAX_FIELDS);
    CHECK_INT(outcome_n(&public_rules, b.p, b.len), 0);
    free(b.p);
}

static void fields_101_is_431(void)
{
    struct buf b = {0};
    fields(&b, HTTP_MAX_FIELDS + 1);
    CHECK_INT(outcome_n(&public_rules, b.p, b.len), 431);
    free(b.p);
}

/* ---- the scanner: what llhttp 8.1.0 lets through -------------------------- */

static void obs_fold_refused(void)
{
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\t2\r\n\r\n"), 400);
    CHECK_INT(ADMIN("GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n"), 400);
}

/* Whitespace between the start line and the first field (RFC 9112 2.2). */
static void leading_whitespace_first_field(void)
{
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\n Host: x\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\n\tHost: x\r\n\r\n"), 400);
}

static void whitespace_before_colon(void)
{
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost : x\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost\t: x\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nContent-Length : 0\r\n\r\n"), 400);
    CHECK_INT(ADMIN("POST / HTTP/1.1\r\nHost: x\r\nContent-Length : 3\r\n\r\nabc"), 400);
}

static void lone_cr_refused(void)
{
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nX-A:\r\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET /\r HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\r\nHost: x\r\n\r\n"), 400);
    /* A CR not followed by LF ends no line: what follows it is still the
     * same line, which now holds a CR. */
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\rX-B: 1\r\n\r\n"), 400);
}

static void bare_lf_refused(void)
{
    CHECK_INT(PUBLIC("GET / HTTP/1.1\nHost: x\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\n\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\nHost: x\n\n"), 400);
    CHECK_INT(PUBLIC("\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
}

static void control_bytes_refused(void)
{
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nX-A: \0\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET /\0 HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01z\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x7fz\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    /* A tab inside a value is field content, not a control byte. */
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\tb\r\n\r\n"), 0);
}

static void non_token_header_name(void)
{
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nX@Y: 1\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\n\"X\": 1\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nX Y: 1\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\n(X): 1\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nX{}: 1\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nX\x80: 1\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nX\0Y: 1\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\n: 1\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n"), 400);
    /* Every tchar is allowed. */
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\n!#$%&'*+-.^_`|~09azAZ: 1\r\n\r\n"), 0);
}

/* ---- framing: no body on the public listener ------------------------------ */

static void transfer_encoding_refused(void)
{
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
              400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     "Content-Length: 0\r\n\r\n0\r\n\r\n"),
              400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
              400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n"), 400);
    CHECK_INT(ADMIN("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "3\r\nabc\r\n0\r\n\r\n"),
              400);
}

static void content_length_zero_ok(void)
{
    static const char req[] = "GET /idv/callback HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
    CHECK_INT(PUBLIC(req), 0);
    CHECK(g_p.req.has_content_length);
    CHECK_INT(g_p.req.content_length, 0);
    CHECK_INT(g_p.req.total_len, sizeof req - 1);
}

static void content_length_other_than_single_zero(void)
{
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nA"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 0\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                     "Content-Length: 0\r\n\r\n"),
              400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: +0\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nContent-Length:  0x0\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 00\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -0\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"), 400);
}

static void absolute_form_refused(void)
{
    CHECK_INT(PUBLIC("GET http://idv.example.com/idv/callback HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("CONNECT idv.example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("CONNECT /idv/callback HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    /* Found by fuzz_request: llhttp leaves a CONNECT's body unread, so the
     * two bytes would have been taken for the start of the next request. */
    CHECK_INT(ADMIN("CONNECT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
                    "GET /v1/transactions/tx-1 HTTP/1.1\r\nHost: x\r\n\r\n"),
              400);
    CHECK_INT(PUBLIC("GET /x#frag HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
}

static void host_rules(void)
{
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nX-A: 1\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
}

static void http_version_refused(void)
{
    CHECK_INT(PUBLIC("GET / HTTP/2.0\r\nHost: x\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/3.0\r\nHost: x\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/0.9\r\nHost: x\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / HTTP/5.6\r\nHost: x\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET / ICE/1.0\r\nHost: x\r\n\r\n"), 400);
    CHECK_INT(PUBLIC("GET /\r\n\r\n"), 400); /* HTTP/0.9 simple request */
}

static void expect_other_than_continue_refused(void)
{
    CHECK_INT(ADMIN("POST / HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 0\r\n\r\n"),
              400);
}

/* ---- published smuggling payloads ----------------------------------------- */

/* CVE-2021-22959 (llhttp < 6.0.6: space between the header name and the
 * colon). Payload: nodejs/llhttp test/request/content-length.md, "Invalid
 * whitespace token with Content-Length header field". */
static void cve_2021_22959_space_before_colon(void)
{
    static const char req[] = "PUT /url HTTP/1.1\r\n"
                              "Connection: upgrade\r\n"
                              "Content-Length : 4\r\n"
                              "Upgrade: ws\r\n"
                              "\r\n"
                              "abcdefgh";
    CHECK_INT(PUBLIC(req), 400);
    CHECK_INT(ADMIN(req), 400);
}

/* CVE-2022-32214 (llhttp < 6.0.7 did not strictly use CRLF to delimit header
 * lines: a bare LF ended one). Payload: nodejs/node
 * test/parallel/test-http-missing-header-separator-cr.js, added with the fix
 * (July 2022 security release); write-up by the reporter, Zeyu Zhang,
 * "HTTP Request Smuggling in the Multiverse of Parsing Flaws", "LF vs. CRLF". */
static void cve_2022_32214_lf_without_cr(void)
{
    static const char req[] = "GET / HTTP/1.1\r\n"
                              "Host: localhost\r\n"
                              "Dummy: x\nContent-Length: 23\r\n"
                              "\r\n"
                              "GET / HTTP/1.1\r\n"
                              "Dummy: GET /admin HTTP/1.1\r\n"
                              "Host: localhost\r\n"
                              "\r\n";
    CHECK_INT(PUBLIC(req), 400);
    CHECK_INT(ADMIN(req), 400);
    static const char req2[] = "POST / HTTP/1.1\r\n"
                               "Host: localhost\r\n"
                               "x:x\nTransfer-Encoding: chunked\r\n"
                               "\r\n"
                               "1\r\nA\r\n0\r\n\r\n";
    CHECK_INT(ADMIN(req2), 400);
}

/* CVE-2022-32215 (llhttp < 6.0.7 ended a multi-line Transfer-Encoding at the
 * first line). Payload: Zeyu Zhang, "HTTP Request Smuggling in the Multiverse
 * of Parsing Flaws", section "obs-fold - Not So Obsolete"; the obs-fold line
 * after "chunked" is also nodejs/llhttp test/request/transfer-encoding.md,
 * "Invalid OBS fold after chunked value". */
static void cve_2022_32215_multiline_transfer_encoding(void)
{
    static const char req[] = "GET / HTTP/1.1\r\n"
                              "Host: example.com\r\n"
                              "Transfer-Encoding: chunked\r\n"
                              " , identity\r\n"
                              "\r\n"
                              "0\r\n\r\n";
    CHECK_INT(PUBLIC(req), 400);
    CHECK_INT(ADMIN(req), 400);
    static const char req2[] = "PUT /url HTTP/1.1\r\n"
                               "Host: x\r\n"
                               "Transfer-Encoding: chunked\r\n"
                               "  abc\r\n"
                               "\r\n"
                               "5\r\nWorld\r\n0\r\n\r\n";
    CHECK_INT(ADMIN(req2), 400);
}

/* CVE-2023-30589 (llhttp accepted a CR without LF to end an empty header
 * value; unfixed in 8.1.0). Payload: nodejs/llhttp test/request/invalid.md,
 * "Empty headers separated by CR" (PR #227/#228, HackerOne 2001873); the
 * second is the aiohttp reproducer in google/megalista PR #148. */
static void cve_2023_30589_cr_without_lf(void)
{
    static const char req[] = "POST / HTTP/1.1\r\n"
                              "Connection: Close\r\n"
                              "Host: localhost:5000\r\n"
                              "x:\rTransfer-Encoding: chunked\r\n"
                              "\r\n"
                              "1\r\nA\r\n0\r\n\r\n";
    CHECK_INT(PUBLIC(req), 400);
    CHECK_INT(ADMIN(req), 400);
    static const char req2[] = "POST / HTTP/1.1\r\n"
                               "Host: localhost:8080\r\n"
                               "X-Abc: \rxTransfer-Encoding: chunked\r\n"
                               "\r\n"
                               "1\r\nA\r\n0\r\n\r\n";
    CHECK_INT(ADMIN(req2), 400);
}

/* CVE-2024-27982 (llhttp took a header line starting with a space as the
 * continuation of the previous one, hiding " Content-Length"; unfixed in
 * 8.1.0). Payload: nodejs/llhttp test/request/invalid.md, "Spaces before
 * headers" (PR #348-#352, "fix: Do not allow OBS fold in headers by default"). */
static void cve_2024_27982_space_before_content_length(void)
{
    static const char req[] = "POST /hello HTTP/1.1\r\n"
                              "Host: localhost\r\n"
                              "Foo: bar\r\n"
                              " Content-Length: 38\r\n"
                              "\r\n"
                              "GET /bye HTTP/1.1\r\n"
                              "Host: localhost\r\n"
                              "\r\n";
    CHECK_INT(PUBLIC(req), 400);
    CHECK_INT(ADMIN(req), 400);
}

/* ---- the admin listener: bodies ------------------------------------------ */

static void admin_body_read(void)
{
    static const char req[] = "POST /v1/transactions/register HTTP/1.1\r\n"
                              "Host: x\r\n"
                              "Content-Length: 10\r\n"
                              "\r\n"
                              "0123456789";
    CHECK_INT(ADMIN(req), 0);
    CHECK(g_p.req.has_content_length);
    CHECK_INT(g_p.req.content_length, 10);
    CHECK_STR(span(req, g_p.req.body), "0123456789");
    CHECK_INT(g_p.req.head_len, sizeof req - 1 - 10);
    CHECK_INT(g_p.req.total_len, sizeof req - 1);
}

/* The body ends where Content-Length says; what follows is the next request. */
static void admin_body_then_next_request(void)
{
    char buf[] = "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                 "GET /b HTTP/1.1\r\nHost: x\r\n\r\n";
    size_t len = sizeof buf - 1;
    CHECK_INT(parse_n(&admin_rules, buf, len), HTTP_GOT_REQUEST);
    CHECK_STR(span(buf, g_p.req.body), "abc");
    CHECK_INT(g_p.req.total_len,
              strlen("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"));
    memmove(buf, buf + g_p.req.total_len, len - g_p.req.total_len);
    len -= g_p.req.total_len;
    http_parser_next(&g_p);
    CHECK_INT(http_parse(&g_p, buf, len, &g_status, &g_reason), HTTP_GOT_REQUEST);
    CHECK_STR(span(buf, g_p.req.path), "/b");
    CHECK(!g_p.req.has_content_length);
    CHECK_INT(g_p.req.body.len, 0);
}

/* The body arrives byte by byte, in a buffer that moves as it grows (as the
 * server's does): offsets stay valid. */
static void admin_body_in_pieces(void)
{
    static const char req[] = "POST /v1/transactions HTTP/1.1\r\n"
                              "Host: x\r\n"
                              "Content-Length: 12\r\n"
                              "\r\n"
                              "{\"a\": \"bc\"}\n";
    size_t len = sizeof req - 1, head = len - 12;
    http_parser_init(&g_p, &admin_rules);
    char *buf = NULL;
    enum http_result r = HTTP_NEED_MORE;
    for (size_t n = head; n <= len; n++) {
        char *nb = malloc(n); /* a new place every time */
        if (!nb) exit(1);
        memcpy(nb, req, n);
        free(buf);
        buf = nb;
        int status = 0;
        const char *reason = NULL;
        r = http_parse(&g_p, buf, n, &status, &reason);
        if (n < len && r != HTTP_NEED_MORE) {
            fprintf(stderr, "at %zu of %zu bytes: result %d status %d\n", n, len, r, status);
            test_failures++;
            break;
        }
        if (n == head) {
            CHECK(g_p.head_done);
            CHECK_INT(g_p.req.content_length, 12);
            CHECK_INT(g_p.req.head_len, head);
        }
    }
    CHECK_INT(r, HTTP_GOT_REQUEST);
    CHECK_STR(span(buf, g_p.req.body), "{\"a\": \"bc\"}\n");
    CHECK_INT(g_p.req.total_len, len);
    free(buf);
}

static void admin_body_65536_allowed(void)
{
    CHECK_INT(ADMIN("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\r\n"), -1);
    CHECK(g_p.head_done);
    CHECK_INT(g_p.req.content_length, 65536);
}

static void admin_body_65537_is_413(void)
{
    CHECK_INT(ADMIN("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n"), 413);
}

/* A length too large for any counter is still "too large", not malformed. */
static void admin_body_huge_is_413(void)
{
    CHECK_INT(ADMIN("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n"), 413);
    CHECK_INT(ADMIN("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4294967296\r\n\r\n"), 413);
    CHECK_INT(ADMIN("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000000\r\n\r\n"), 413);
}

static void admin_content_length_rules(void)
{
    CHECK_INT(ADMIN("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                    "Content-Length: 3\r\n\r\nabc"),
              400);
    CHECK_INT(ADMIN("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc"), 400);
    CHECK_INT(ADMIN("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc"), 400);
    CHECK_INT(ADMIN("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x3\r\n\r\nabc"), 400);
    /* Leading zeros are digits like any other. */
    CHECK_INT(ADMIN("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 003\r\n\r\nabc"), 0);
    CHECK_INT(g_p.req.content_length, 3);
}

static void admin_expect_continue(void)
{
    static const char req[] = "POST /v1/transactions HTTP/1.1\r\n"
                              "Host: x\r\n"
                              "Expect: 100-continue\r\n"
                              "Content-Length: 10\r\n"
                              "\r\n"
                              "0123456789";
    /* With the head alone the flag is up, so the server can send 100. */
    CHECK_INT(outcome_n(&admin_rules, req, sizeof req - 1 - 10), -1);
    CHECK(g_p.head_done);
    CHECK(g_p.req.expect_continue);
    CHECK_INT(http_parse(&g_p, req, sizeof req - 1, &g_status, &g_reason), HTTP_GOT_REQUEST);
    CHECK(g_p.req.expect_continue);
    CHECK_STR(span(req, g_p.req.body), "0123456789");
    CHECK_INT(ADMIN("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\n"
                    "Content-Length: 1\r\n\r\nZ"),
              0);
    CHECK(g_p.req.expect_continue);
}

/* ---- responses ------------------------------------------------------------ */

static const char *response(int status, const char *ctype, const char *extra, const char *body,
                            bool head_only, bool keep_alive)
{
    static char out[1024];
    struct http_out o = {.p = out, .cap = sizeof out - 1};
    http_out_response(&o, status, ctype, extra, body, body ? strlen(body) : 0, head_only,
                      keep_alive);
    CHECK(!o.overflow);
    out[o.len] = '\0';
    return out;
}

static void response_basic(void)
{
    http_date_update();
    const char *r = response(200, "application/json", NULL, "{\"result\": \"ok\"}\n", false, true);
    CHECK(strncmp(r, "HTTP/1.1 200 OK\r\n", 17) == 0);
    CHECK(strstr(r, "\r\nContent-Type: application/json\r\n") != NULL);
    CHECK(strstr(r, "\r\nContent-Length: 17\r\n") != NULL);
    CHECK(strstr(r, "\r\nDate: ") != NULL);
    CHECK(strstr(r, "Connection: close") == NULL);
    const char *end = strstr(r, "\r\n\r\n");
    CHECK(end != NULL);
    if (end) CHECK_STR(end + 4, "{\"result\": \"ok\"}\n");
}

/* What we send, our own parser reads: a well-formed response head. */
static void response_head_well_formed(void)
{
    const char *r =
        response(409, "application/json", "Retry-After: 1\r\nAllow: GET\r\n", "{}", false, false);
    const char *end = strstr(r, "\r\n\r\n");
    CHECK(end != NULL);
    if (!end) return;
    int lines = 0;
    for (const char *p = r; p < end + 2; p++) {
        if (*p == '\n') {
            CHECK(p > r && p[-1] == '\r');
            lines++;
        }
        CHECK(*p != '\0');
    }
    CHECK(lines >= 6);
    CHECK(strncmp(r, "HTTP/1.1 409 Conflict\r\n", 23) == 0);
    CHECK(strstr(r, "\r\nRetry-After: 1\r\nAllow: GET\r\n") != NULL);
}

static void response_connection_close(void)
{
    const char *r = response(400, "application/json", NULL, "{}", false, false);
    CHECK(strncmp(r, "HTTP/1.1 400 Bad Request\r\n", 26) == 0);
    CHECK(strstr(r, "\r\nConnection: close\r\n") != NULL);
}

static void response_head_has_no_body(void)
{
    const char *r = response(200, "application/json", NULL, "{\"result\": \"ok\"}\n", true, true);
    /* The length of the body a GET would get, but no body. */
    CHECK(strstr(r, "\r\nContent-Length: 17\r\n") != NULL);
    const char *end = strstr(r, "\r\n\r\n");
    CHECK(end != NULL);
    if (end) CHECK_STR(end + 4, "");
}

static void response_empty_body(void)
{
    const char *r = response(404, NULL, NULL, NULL, false, true);
    CHECK(strncmp(r, "HTTP/1.1 404 Not Found\r\n", 24) == 0);
    CHECK(strstr(r, "\r\nContent-Length: 0\r\n") != NULL);
    CHECK(strstr(r, "\r\nContent-Type:") == NULL);
    const char *end = strstr(r, "\r\n\r\n");
    CHECK(end != NULL && end[4] == '\0');
}

static void response_overflow_flagged(void)
{
    char out[40];
    memset(out, 'Z', sizeof out);
    struct http_out o = {.p = out, .cap = 32};
    http_out_response(&o, 200, "application/json", NULL, "{}", 2, false, true);
    CHECK(o.overflow);
    CHECK(o.len <= 32);
    for (size_t i = 32; i < sizeof out; i++) CHECK_INT(out[i], 'Z');
}

static void reason_phrases(void)
{
    CHECK_STR(http_reason(200), "OK");
    CHECK_STR(http_reason(413), "Content Too Large");
    CHECK_STR(http_reason(414), "URI Too Long");
    CHECK_STR(http_reason(431), "Request Header Fields Too Large");
    CHECK_STR(http_reason(503), "Service Unavailable");
    CHECK_STR(http_reason(799), "Unknown");
}

/* The table keeps one TEST() per line: CMake reads them from here. */
/* clang-format off */
#define TEST(name) {#name, name}
static const struct test_case cases[] = {
    TEST(simple_get),
    TEST(get_without_query),
    TEST(get_empty_query),
    TEST(head_method),
    TEST(header_values_extracted),
    TEST(xff_keeps_rightmost),
    TEST(http10_close),
    TEST(http10_keep_alive),
    TEST(http11_connection_close),
    TEST(upgrade_reported),
    TEST(upgrade_with_body_reads_body),
    TEST(incomplete_head_needs_more),
    TEST(parser_started),
    TEST(pipelined_two_requests),
    TEST(pipelined_second_malformed),
    TEST(pipelined_second_in_pieces),
    TEST(head_one_byte_at_a_time),
    TEST(bad_head_one_byte_at_a_time),
    TEST(request_line_8192_ok),
    TEST(request_line_8193_is_414),
    TEST(request_line_too_long_without_end),
    TEST(header_section_16k_ok),
    TEST(header_section_over_16k_is_431),
    TEST(header_section_too_long_without_end),
    TEST(fields_100_ok),
    TEST(fields_101_is_431),
    TEST(obs_fold_refused),
    TEST(leading_whitespace_first_field),
    TEST(whitespace_before_colon),
    TEST(lone_cr_refused),
    TEST(bare_lf_refused),
    TEST(control_bytes_refused),
    TEST(non_token_header_name),
    TEST(transfer_encoding_refused),
    TEST(content_length_zero_ok),
    TEST(content_length_other_than_single_zero),
    TEST(absolute_form_refused),
    TEST(host_rules),
    TEST(http_version_refused),
    TEST(expect_other_than_continue_refused),
    TEST(cve_2021_22959_space_before_colon),
    TEST(cve_2022_32214_lf_without_cr),
    TEST(cve_2022_32215_multiline_transfer_encoding),
    TEST(cve_2023_30589_cr_without_lf),
    TEST(cve_2024_27982_space_before_content_length),
    TEST(admin_body_read),
    TEST(admin_body_then_next_request),
    TEST(admin_body_in_pieces),
    TEST(admin_body_65536_allowed),
    TEST(admin_body_65537_is_413),
    TEST(admin_body_huge_is_413),
    TEST(admin_content_length_rules),
    TEST(admin_expect_continue),
    TEST(response_basic),
    TEST(response_head_well_formed),
    TEST(response_connection_close),
    TEST(response_head_has_no_body),
    TEST(response_empty_body),
    TEST(response_overflow_flagged),
    TEST(reason_phrases),
};
int main(int argc, char **argv) { return test_main(argc, argv, cases, sizeof cases / sizeof cases[0]); }
/* clang-format on */
