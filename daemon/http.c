#include "http.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

/* Header names the glue interprets. */
enum hdr {
    H_OTHER = 0,
    H_CONTENT_LENGTH,
    H_TRANSFER_ENCODING,
    H_HOST,
    H_AUTHORIZATION,
    H_CONTENT_TYPE,
    H_XFF,
    H_EXPECT,
    H_CONNECTION,
};

/* RFC 9110 tchar. */
static const uint8_t tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1,  ['~'] = 1, ['0'] = 1,
    ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1,  ['7'] = 1, ['8'] = 1,
    ['9'] = 1, ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1,  ['F'] = 1, ['G'] = 1,
    ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1,  ['N'] = 1, ['O'] = 1,
    ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1,  ['V'] = 1, ['W'] = 1,
    ['X'] = 1, ['Y'] = 1, ['Z'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1,  ['d'] = 1, ['e'] = 1,
    ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1,  ['l'] = 1, ['m'] = 1,
    ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1,  ['t'] = 1, ['u'] = 1,
    ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

static bool field_byte_ok(unsigned char c)
{
    /* field-content: VCHAR, SP, HTAB and obs-text; never a CTL such as CR or NUL. */
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

/* ---- the strict pre-scan ------------------------------------------------ */

/* method SP request-target SP HTTP-version, with single spaces (RFC 9112 3).
 * llhttp 8.1.0 takes a run of spaces before the target as one, which a strict
 * parser refuses: neither word may be empty. */
static bool request_line_shape_ok(const char *line, size_t n)
{
    size_t spaces = 0;
    for (size_t i = 0; i < n; i++) {
        if (line[i] != ' ') continue;
        if (i == 0 || i + 1 == n || line[i - 1] == ' ') return false;
        spaces++;
    }
    return spaces == 2;
}

enum scan_result { SCAN_MORE, SCAN_DONE, SCAN_ERROR };

/* Checks complete lines from p->scan_pos. Works incrementally: a line is judged
 * once it is complete, and an incomplete line only against the size limits. */
static enum scan_result scan_head(struct http_parser *p, const char *buf, size_t len, int *status,
                                  const char **reason)
{
    size_t pos = p->scan_pos;
    for (;;) {
        const char *line = buf + pos;
        size_t avail = len - pos;
        const char *lf = avail ? memchr(line, '\n', avail) : NULL;
        bool first = pos == 0;
        if (!lf) {
            /* Incomplete line: only the limits can be judged yet. */
            if (first && avail > HTTP_MAX_REQUEST_LINE + 1) {
                *status = 414;
                *reason = "request line too long";
                return SCAN_ERROR;
            }
            if (!first && pos + avail - p->hdr_start > HTTP_MAX_HEADER_BYTES + 1) {
                *status = 431;
                *reason = "header section too large";
                return SCAN_ERROR;
            }
            p->scan_pos = (uint32_t)pos;
            return SCAN_MORE;
        }
        size_t n = (size_t)(lf - line); /* bytes before LF */
        if (n == 0 || line[n - 1] != '\r') {
            *status = 400;
            *reason = "bare LF";
            return SCAN_ERROR;
        }
        size_t content = n - 1; /* without CR */
        if (first) {
            if (content > HTTP_MAX_REQUEST_LINE) {
                *status = 414;
                *reason = "request line too long";
                return SCAN_ERROR;
            }
            for (size_t i = 0; i < content; i++) {
                unsigned char c = (unsigned char)line[i];
                if (c < 0x20 || c == 0x7f) {
                    *status = 400;
                    *reason = c == '\r' ? "lone CR" : "control byte in request line";
                    return SCAN_ERROR;
                }
            }
            if (!request_line_shape_ok(line, content)) {
                *status = 400;
                *reason = "malformed request line";
                return SCAN_ERROR;
            }
            p->hdr_start = (uint32_t)(n + 1);
        } else if (content == 0) {
            p->scan_pos = (uint32_t)(pos + n + 1);
            return SCAN_DONE;
        } else {
            if (pos + n + 1 - p->hdr_start > HTTP_MAX_HEADER_BYTES) {
                *status = 431;
                *reason = "header section too large";
                return SCAN_ERROR;
            }
            if (++p->fields > HTTP_MAX_FIELDS) {
                *status = 431;
                *reason = "too many header fields";
                return SCAN_ERROR;
            }
            if (line[0] == ' ' || line[0] == '\t') {
                *status = 400;
                *reason = "header line starts with whitespace (obs-fold)";
                return SCAN_ERROR;
            }
            size_t i = 0;
            while (i < content && tchar[(unsigned char)line[i]]) i++;
            if (i == 0 || i == content || line[i] != ':') {
                *status = 400;
                *reason = (i < content && (line[i] == ' ' || line[i] == '\t'))
                              ? "whitespace before colon"
                              : "invalid header name";
                return SCAN_ERROR;
            }
            for (i++; i < content; i++)
                if (!field_byte_ok((unsigned char)line[i])) {
                    *status = 400;
                    *reason = line[i] == '\r' ? "lone CR in header value"
                                              : "control byte in header value";
                    return SCAN_ERROR;
                }
        }
        pos += n + 1;
    }
}

/* ---- llhttp glue ---------------------------------------------------------- */

static struct http_parser *P(llhttp_t *ll)
{
    return (struct http_parser *)ll->data;
}

static uint32_t off_of(struct http_parser *p, const char *at)
{
    return (uint32_t)(at - p->base);
}

/* Extends a span with a new piece: llhttp may deliver one span in several calls,
 * always contiguous in our buffer. */
static void span_add(struct http_parser *p, struct http_span *s, const char *at, size_t len)
{
    if (s->len == 0) s->off = off_of(p, at);
    s->len = (uint32_t)(off_of(p, at) + len - s->off);
}

static int fail(struct http_parser *p, int status, const char *reason)
{
    p->error_status = status;
    p->error_reason = reason;
    return -1;
}

static int on_message_begin(llhttp_t *ll)
{
    struct http_parser *p = P(ll);
    p->in_request = true;
    return 0;
}

static int on_url(llhttp_t *ll, const char *at, size_t len)
{
    struct http_parser *p = P(ll);
    span_add(p, &p->req.target, at, len);
    return 0;
}

static int on_url_complete(llhttp_t *ll)
{
    struct http_parser *p = P(ll);
    const char *t = p->base + p->req.target.off;
    uint32_t n = p->req.target.len;
    /* Only origin-form ("/path?query") is served: no absolute-form, no "*". */
    if (n == 0 || t[0] != '/') return fail(p, 400, "request target is not origin-form");
    /* CONNECT's target is authority-form (RFC 9112 3.2.3), never origin-form,
     * so any CONNECT here is malformed. Refused before its head ends: llhttp
     * treats a CONNECT as a tunnel and does not read the body its
     * Content-Length announces, so the request's total_len would not cover
     * it (the server closes after an upgrade, but the request it handed on
     * would claim a body it does not hold). */
    if (p->ll.method == HTTP_CONNECT) return fail(p, 400, "CONNECT is not served");
    const char *q = memchr(t, '?', n);
    const char *hash = memchr(t, '#', n);
    if (hash) return fail(p, 400, "fragment in request target");
    p->req.path.off = p->req.target.off;
    p->req.path.len = q ? (uint32_t)(q - t) : n;
    if (q) {
        p->req.has_query = true;
        p->req.query.off = (uint32_t)(p->req.target.off + p->req.path.len + 1);
        p->req.query.len = n - p->req.path.len - 1;
    }
    return 0;
}

static int on_header_field(llhttp_t *ll, const char *at, size_t len)
{
    struct http_parser *p = P(ll);
    /* Header names are short; compare in place (the scan already checked bytes). */
    static const struct {
        const char *name;
        enum hdr h;
    } known[] = {
        {"content-length", H_CONTENT_LENGTH},
        {"transfer-encoding", H_TRANSFER_ENCODING},
        {"host", H_HOST},
        {"authorization", H_AUTHORIZATION},
        {"content-type", H_CONTENT_TYPE},
        {"x-forwarded-for", H_XFF},
        {"expect", H_EXPECT},
        {"connection", H_CONNECTION},
    };
    p->cur_header = H_OTHER;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strlen(known[i].name) == len && strncasecmp(known[i].name, at, len) == 0)
            p->cur_header = (uint8_t)known[i].h;
    return 0;
}

static int on_header_value(llhttp_t *ll, const char *at, size_t len)
{
    span_add(P(ll), &P(ll)->value, at, len);
    return 0;
}

static struct http_span trim_span(const char *base, struct http_span s)
{
    while (s.len && (base[s.off] == ' ' || base[s.off] == '\t')) {
        s.off++;
        s.len--;
    }
    while (s.len && (base[s.off + s.len - 1] == ' ' || base[s.off + s.len - 1] == '\t')) s.len--;
    return s;
}

/* True when the comma-separated list s[0..n) holds token, compared without
 * case, with optional whitespace around each element (RFC 9110 5.6.1). */
static bool list_has(const char *s, size_t n, const char *token)
{
    size_t tl = strlen(token);
    for (size_t i = 0; i <= n; i++) {
        size_t end = i;
        while (end < n && s[end] != ',') end++;
        struct http_span e = trim_span(s, (struct http_span){(uint32_t)i, (uint32_t)(end - i)});
        if (e.len == tl && strncasecmp(s + e.off, token, tl) == 0) return true;
        i = end;
    }
    return false;
}

static int on_header_value_complete(llhttp_t *ll)
{
    struct http_parser *p = P(ll);
    struct http_span v = trim_span(p->base, p->value);
    const char *s = p->base + v.off;
    p->value.off = p->value.len = 0;
    switch ((enum hdr)p->cur_header) {
    case H_TRANSFER_ENCODING: return fail(p, 400, "Transfer-Encoding is not accepted");
    case H_CONTENT_LENGTH: {
        if (p->req.has_content_length) return fail(p, 400, "Content-Length given twice");
        p->req.has_content_length = true;
        if (v.len == 0) return fail(p, 400, "invalid Content-Length");
        /* Any run of digits is a valid length (RFC 9110 8.6); one too large for
         * us is 413, not malformed, so the value saturates instead of failing. */
        uint64_t cl = 0;
        for (uint32_t i = 0; i < v.len; i++) {
            if (s[i] < '0' || s[i] > '9') return fail(p, 400, "invalid Content-Length");
            if (cl <= UINT32_MAX) cl = cl * 10 + (uint64_t)(s[i] - '0');
        }
        if (p->rules->max_body == 0 && !(v.len == 1 && s[0] == '0'))
            return fail(p, 400, "a request body is not accepted here");
        if (cl > p->rules->max_body) return fail(p, 413, "request body too large");
        p->req.content_length = (uint32_t)cl;
        break;
    }
    case H_HOST:
        if (++p->req.n_host > 1) return fail(p, 400, "Host given twice");
        break;
    case H_AUTHORIZATION:
        p->req.n_authorization++;
        p->req.authorization = v;
        break;
    case H_CONTENT_TYPE: p->req.content_type = v; break;
    case H_XFF:
        if (p->req.n_xff == HTTP_MAX_XFF) {
            /* Keep the right-most lines: they are the ones a trusted proxy added. */
            memmove(p->req.xff, p->req.xff + 1, sizeof p->req.xff[0] * (HTTP_MAX_XFF - 1));
            p->req.n_xff--;
        }
        p->req.xff[p->req.n_xff++] = v;
        break;
    case H_EXPECT:
        if (v.len == 12 && strncasecmp(s, "100-continue", 12) == 0)
            p->req.expect_continue = true;
        else
            return fail(p, 400, "unsupported Expect");
        break;
    case H_CONNECTION:
        p->conn_close |= list_has(s, v.len, "close");
        p->conn_keep_alive |= list_has(s, v.len, "keep-alive");
        break;
    case H_OTHER: break;
    }
    return 0;
}

static int on_headers_complete(llhttp_t *ll)
{
    struct http_parser *p = P(ll);
    p->req.method = ll->method;
    p->req.http_minor = ll->http_minor;
    if (ll->http_major != 1) return fail(p, 400, "unsupported HTTP version");
    if (ll->http_minor == 1 && p->req.n_host == 0) return fail(p, 400, "Host missing");
    /* Persistence from our own reading of Connection (RFC 9112 9.3): llhttp
     * 8.1.0 misses a "close" followed by a tab, and keeps an HTTP/1.0
     * connection that lists both "keep-alive" and "close". */
    p->req.keep_alive = !p->conn_close && (ll->http_minor >= 1 || p->conn_keep_alive);
    if (ll->upgrade || (ll->flags & F_UPGRADE)) p->req.upgrade = true;
    /* Known now, not only once the body is in: the server sizes the buffer
     * for head_len + content_length while the body is still arriving. */
    p->req.head_len = p->scan_pos;
    p->head_done = true;
    /* An upgrade is answered like any request, then the connection closes.
     * Its body is read first (returning 1 here would make llhttp skip it), so
     * that the request the handler sees holds the Content-Length it announces
     * and total_len covers the body. */
    return 0;
}

static int on_body(llhttp_t *ll, const char *at, size_t len)
{
    span_add(P(ll), &P(ll)->req.body, at, len);
    return 0;
}

static int on_message_complete(llhttp_t *ll)
{
    (void)ll;
    /* Pause: one request at a time. llhttp stops right after this message and
     * leaves the bytes of the next one for after our answer (back-pressure). */
    return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_url_complete = on_url_complete,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void http_parser_init(struct http_parser *p, const struct http_rules *rules)
{
    memset(p, 0, sizeof *p);
    p->rules = rules;
    /* No lenient flag is ever set on this parser. */
    llhttp_init(&p->ll, HTTP_REQUEST, &settings);
    p->ll.data = p;
}

void http_parser_next(struct http_parser *p)
{
    const struct http_rules *rules = p->rules;
    llhttp_t ll = p->ll;
    memset(p, 0, sizeof *p);
    p->rules = rules;
    p->ll = ll;
    llhttp_resume(&p->ll);
    p->ll.data = p;
}

bool http_parser_started(const struct http_parser *p)
{
    return p->in_request || p->scan_pos > 0 || p->fed > 0;
}

enum http_result http_parse(struct http_parser *p, const char *buf, size_t len, int *status,
                            const char **reason)
{
    /* The first bytes of a request line may sit in the scanner's incomplete
     * line, where neither scan_pos nor fed moves yet. */
    if (len > 0) p->in_request = true;
    if (!p->head_done && p->fed == 0) {
        enum scan_result s = scan_head(p, buf, len, status, reason);
        if (s == SCAN_ERROR) return HTTP_ERROR;
        if (s == SCAN_MORE) return HTTP_NEED_MORE;
    }
    if (len <= p->fed) return HTTP_NEED_MORE;
    p->base = buf;
    llhttp_errno_t e = llhttp_execute(&p->ll, buf + p->fed, len - p->fed);
    if (p->error_status) {
        *status = p->error_status;
        *reason = p->error_reason;
        return HTTP_ERROR;
    }
    if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
        const char *stop = llhttp_get_error_pos(&p->ll);
        p->req.total_len = (uint32_t)(stop - buf);
        p->req.head_len = p->scan_pos;
        p->fed = p->req.total_len;
        return HTTP_GOT_REQUEST;
    }
    if (e != HPE_OK) {
        *status = 400;
        *reason = llhttp_get_error_reason(&p->ll);
        if (!*reason) *reason = llhttp_errno_name(e);
        return HTTP_ERROR;
    }
    p->fed = (uint32_t)len;
    return HTTP_NEED_MORE;
}

const char *http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Unknown";
    }
}

void http_out_put(struct http_out *o, const char *s, size_t n)
{
    if (o->len + n > o->cap) {
        o->overflow = true;
        return;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

void http_out_puts(struct http_out *o, const char *s)
{
    http_out_put(o, s, strlen(s));
}

static char g_date[40] = "Thu, 01 Jan 1970 00:00:00 GMT";
static time_t g_date_sec;

void http_date_update(void)
{
    time_t now = time(NULL);
    if (now == g_date_sec) return;
    g_date_sec = now;
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(g_date, sizeof g_date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}

void http_out_response(struct http_out *o, int status, const char *ctype, const char *extra,
                       const char *body, size_t body_len, bool head_only, bool keep_alive)
{
    char line[64];
    int n = snprintf(line, sizeof line, "HTTP/1.1 %d ", status);
    http_out_put(o, line, (size_t)n);
    http_out_puts(o, http_reason(status));
    http_out_puts(o, "\r\nDate: ");
    http_out_puts(o, g_date);
    http_out_puts(o, "\r\n");
    if (ctype) {
        http_out_puts(o, "Content-Type: ");
        http_out_puts(o, ctype);
        http_out_puts(o, "\r\n");
    }
    n = snprintf(line, sizeof line, "Content-Length: %zu\r\n", body_len);
    http_out_put(o, line, (size_t)n);
    http_out_puts(o, "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n");
    if (extra) http_out_puts(o, extra);
    if (!keep_alive) http_out_puts(o, "Connection: close\r\n");
    http_out_puts(o, "\r\n");
    if (!head_only && body_len) http_out_put(o, body, body_len);
}
