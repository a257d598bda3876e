/* libFuzzer target: the bytes a client sends on one connection, through the
 * strict parser exactly the way daemon/server.c drives it, to the public
 * handler's decision. No network and no PostgreSQL: the decision is the pure
 * callback_decide() that callback.c answers from.
 *
 * Input: two control bytes, then the connection's bytes.
 *   byte 0, bit 0: the admin listener's rules ({.max_body = 65536}) instead of
 *                  the public one's ({.max_body = 0});
 *   byte 0, bit 1: the second run reads in chunks of byte 1 + 1 bytes instead
 *                  of two reads split at byte 1 / 256 of the input.
 * Every input is run twice, once as a single read and once in pieces, and both
 * runs must end the same way: incremental parsing may not change the outcome.
 *
 * server.c's loop, reproduced here (conn_process, after_response): the buffer
 * always starts at the current request and holds at most 32 KiB, or head_len +
 * Content-Length once a larger body is announced; after a request the caller
 * drops req.total_len bytes and calls http_parser_next(); the connection closes
 * after a framing error, after a request without keep-alive and after an
 * upgrade. The unused tail of the buffer is poisoned, so that ASan reports a
 * parser reading past the bytes it was given. */
#include <stdbool.h>
#include <string.h>
#include <strings.h>

#include "callback.h"
#include "fuzz.h"
#include "http.h"
#include "query.h"

#define BUF_SIZE   32768 /* server.c's read buffer */
#define MAX_EVENTS 4096  /* requests remembered per run; more are only counted */

static const struct http_rules public_rules = {.max_body = 0};
static const struct http_rules admin_rules = {.max_body = 65536};
static const char cb_path[] = "/idv/callback";

/* How one run went, compared between the two runs of an input. */
struct trace {
    uint64_t ev[MAX_EVENTS]; /* per request: total_len << 8 | decision */
    size_t n;
    int error;     /* status of the framing error that closed the connection, or 0 */
    int refused;   /* the decision on that error */
    bool closed;   /* by an error, a request without keep-alive or an upgrade */
    uint32_t left; /* bytes still buffered when the input ended */
};

/* One connection, as server.c holds it. */
struct sim {
    struct http_parser hp;
    bool admin;
    char *buf;
    uint32_t len, cap;
    bool closed;
    struct trace *t;
};

/* ---- the buffer, with its unused tail poisoned -------------------------- */

static void buf_new(struct sim *s, uint32_t cap)
{
    char *nb = malloc(cap);
    FUZZ_CHECK(nb != NULL);
    ASAN_POISON_MEMORY_REGION(nb, cap);
    if (s->buf) {
        ASAN_UNPOISON_MEMORY_REGION(nb, s->len);
        memcpy(nb, s->buf, s->len);
        free(s->buf);
    }
    s->buf = nb;
    s->cap = cap;
}

static void buf_release(struct sim *s)
{
    free(s->buf);
    s->buf = NULL;
    s->len = s->cap = 0;
}

static void buf_drop_front(struct sim *s, uint32_t used)
{
    if (used < s->len) {
        memmove(s->buf, s->buf + used, s->len - used);
        s->len -= used;
    } else {
        s->len = 0;
    }
    ASAN_POISON_MEMORY_REGION(s->buf + s->len, s->cap - s->len);
}

/* ---- an independent reading of what the parser accepted ------------------ */

static bool is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static bool span_ok(struct http_span sp, uint32_t limit)
{
    return (uint64_t)sp.off + sp.len <= limit;
}

/* Equal spans; empty ones are equal wherever they point. */
static bool same_span(struct http_span a, struct http_span b)
{
    return a.len == b.len && (a.len == 0 || a.off == b.off);
}

static bool span_is(const char *b, struct http_span sp, const char *s, size_t n)
{
    return sp.len == n && memcmp(b + sp.off, s, n) == 0;
}

/* True when the comma-separated list v holds token (case-insensitive, OWS
 * around the elements). */
static bool list_has(const char *v, size_t n, const char *token)
{
    size_t tl = strlen(token);
    for (size_t i = 0; i <= n;) {
        size_t j = i;
        while (j < n && v[j] != ',') j++;
        size_t a = i, z = j;
        while (a < z && (v[a] == ' ' || v[a] == '\t')) a++;
        while (z > a && (v[z - 1] == ' ' || v[z - 1] == '\t')) z--;
        if (z - a == tl && strncasecmp(v + a, token, tl) == 0) return true;
        i = j + 1;
    }
    return false;
}

/* Checks the head the parser accepted against the contract's rules, line by
 * line, without the parser's code: CRLF only, no control bytes, no obs-fold,
 * no whitespace before a colon, no Transfer-Encoding, the Content-Length and
 * Host rules, the size limits, and the spans the parser extracted. */
static void check_head(const char *b, const struct http_request *r, bool admin)
{
    uint32_t n = r->head_len;
    FUZZ_CHECK(n >= 4 && memcmp(b + n - 4, "\r\n\r\n", 4) == 0);
    uint32_t pos = 0, line_no = 0, fields = 0, hdr_start = 0;
    unsigned hosts = 0, cls = 0, auths = 0, xffs = 0;
    bool conn_close = false, conn_keep_alive = false;
    struct http_span auth = {0, 0}, ctype = {0, 0}, xff[HTTP_MAX_XFF];
    while (pos < n - 2) {
        const char *line = b + pos;
        uint32_t l = 0;
        while (pos + l < n && line[l] != '\r' && line[l] != '\n') l++;
        FUZZ_CHECK(pos + l + 1 < n && line[l] == '\r' && line[l + 1] == '\n');
        if (line_no == 0) {
            FUZZ_CHECK(l <= HTTP_MAX_REQUEST_LINE);
            for (uint32_t i = 0; i < l; i++)
                FUZZ_CHECK((unsigned char)line[i] >= 0x20 && line[i] != 0x7f);
            /* METHOD SP origin-form SP HTTP/1.d */
            const char *m = llhttp_method_name((llhttp_method_t)r->method);
            size_t ml = strlen(m);
            FUZZ_CHECK(l > ml && memcmp(line, m, ml) == 0 && line[ml] == ' ');
            FUZZ_CHECK_EQ(r->target.off, ml + 1);
            FUZZ_CHECK_EQ(l, ml + 1 + r->target.len + 9);
            FUZZ_CHECK(memcmp(line + ml + 1 + r->target.len, " HTTP/1.", 8) == 0);
            FUZZ_CHECK_EQ(line[l - 1], '0' + r->http_minor);
            hdr_start = l + 2;
        } else {
            FUZZ_CHECK(l > 0);
            fields++;
            uint32_t nl = 0;
            while (nl < l && is_tchar((unsigned char)line[nl])) nl++;
            FUZZ_CHECK(nl > 0 && nl < l && line[nl] == ':');
            for (uint32_t i = nl + 1; i < l; i++)
                FUZZ_CHECK(line[i] == '\t' || ((unsigned char)line[i] >= 0x20 && line[i] != 0x7f));
            struct http_span v = {pos + nl + 1, l - nl - 1};
            while (v.len && (b[v.off] == ' ' || b[v.off] == '\t')) v.off++, v.len--;
            while (v.len && (b[v.off + v.len - 1] == ' ' || b[v.off + v.len - 1] == '\t')) v.len--;
            const char *vs = b + v.off;
#define NAME_IS(lit) (nl == sizeof(lit) - 1 && strncasecmp(line, lit, nl) == 0)
            FUZZ_CHECK(!NAME_IS("transfer-encoding"));
            if (NAME_IS("content-length")) {
                cls++;
                if (admin) {
                    uint64_t cl = 0;
                    FUZZ_CHECK(v.len > 0);
                    for (uint32_t i = 0; i < v.len; i++) {
                        FUZZ_CHECK(vs[i] >= '0' && vs[i] <= '9');
                        if (cl <= 65536) cl = cl * 10 + (uint64_t)(vs[i] - '0');
                    }
                    FUZZ_CHECK(cl <= admin_rules.max_body);
                    FUZZ_CHECK_EQ(cl, r->content_length);
                } else {
                    FUZZ_CHECK(v.len == 1 && vs[0] == '0');
                }
            } else if (NAME_IS("connection")) {
                conn_close |= list_has(vs, v.len, "close");
                conn_keep_alive |= list_has(vs, v.len, "keep-alive");
            } else if (NAME_IS("host")) {
                hosts++;
            } else if (NAME_IS("expect")) {
                FUZZ_CHECK(v.len == 12 && strncasecmp(vs, "100-continue", 12) == 0);
            } else if (NAME_IS("authorization")) {
                auths++;
                auth = v;
            } else if (NAME_IS("content-type")) {
                ctype = v;
            } else if (NAME_IS("x-forwarded-for")) {
                if (xffs >= HTTP_MAX_XFF) memmove(xff, xff + 1, sizeof xff[0] * (HTTP_MAX_XFF - 1));
                xff[xffs < HTTP_MAX_XFF ? xffs : HTTP_MAX_XFF - 1] = v;
                xffs++;
            }
#undef NAME_IS
        }
        pos += l + 2;
        line_no++;
    }
    FUZZ_CHECK_EQ(pos, n - 2);
    FUZZ_CHECK(fields <= HTTP_MAX_FIELDS);
    FUZZ_CHECK(n - 2 - hdr_start <= HTTP_MAX_HEADER_BYTES);
    FUZZ_CHECK(hosts <= 1);
    if (r->http_minor >= 1) FUZZ_CHECK_EQ(hosts, 1);
    FUZZ_CHECK_EQ(hosts, r->n_host);
    FUZZ_CHECK(cls <= 1);
    FUZZ_CHECK_EQ(cls == 1, r->has_content_length);
    if (!cls) FUZZ_CHECK_EQ(r->content_length, 0);
    FUZZ_CHECK_EQ(auths, r->n_authorization);
    FUZZ_CHECK(same_span(auth, r->authorization));
    FUZZ_CHECK(same_span(ctype, r->content_type));
    FUZZ_CHECK_EQ(r->n_xff, xffs < HTTP_MAX_XFF ? xffs : HTTP_MAX_XFF);
    /* RFC 9112 9.3: "close" ends the connection after this request, in every
     * version; HTTP/1.0 persists only with "keep-alive". */
    if (!r->upgrade)
        FUZZ_CHECK_EQ(r->keep_alive, !conn_close && (r->http_minor >= 1 || conn_keep_alive));
    for (unsigned i = 0; i < r->n_xff; i++) FUZZ_CHECK(same_span(xff[i], r->xff[i]));
}

/* ---- the public handler's decision --------------------------------------- */

static bool valid_fields(const struct cb_params *p)
{
    size_t tl = strnlen(p->transaction_id, sizeof p->transaction_id);
    size_t sl = strnlen(p->sub_code, sizeof p->sub_code);
    return tl < sizeof p->transaction_id && sl < sizeof p->sub_code &&
           cb_valid_transaction_id(p->transaction_id, tl) && cb_valid_sub_code(p->sub_code, sl) &&
           (p->passed == 'Y' || p->passed == 'N') && p->token_ok;
}

/* Decides like callback.c and checks the decision against the routing rules
 * of the contract; refused: the parser refused the request with a 400. */
static enum cb_decision decide(const struct http_request *r, const char *b, bool refused)
{
    struct cb_params p;
    memset(&p, 0xa5, sizeof p); /* whatever callback_decide() leaves is visible */
    enum cb_decision d = callback_decide(cb_path, sizeof cb_path - 1, r, b, refused, &p);

    const char *path = b + r->path.off;
    size_t cl = sizeof cb_path - 1;
    bool on_cb = r->path.len >= cl && memcmp(path, cb_path, cl) == 0 &&
                 (r->path.len == cl || path[cl] == '/');
    bool healthz = span_is(b, r->path, "/healthz", 8);
    bool readyz = span_is(b, r->path, "/readyz", 7);
    bool get_head = r->method == HTTP_GET || r->method == HTTP_HEAD;
    if (refused) {
        FUZZ_CHECK_EQ(d, on_cb && get_head ? CBD_MALFORMED : CBD_REFUSED);
    } else if (on_cb) {
        if (!get_head) {
            FUZZ_CHECK_EQ(d, CBD_NOT_ALLOWED);
        } else {
            FUZZ_CHECK(d == CBD_PROBE || d == CBD_CALLBACK || d == CBD_MALFORMED);
            /* The same verdict as the query parser's on the query alone. */
            struct cb_params q;
            enum cb_verdict v = r->has_query ? cb_query_parse(b + r->query.off, r->query.len, &q)
                                             : cb_query_parse("", 0, &q);
            FUZZ_CHECK_EQ(d, v == CB_PROBE   ? CBD_PROBE
                             : v == CB_VALID ? CBD_CALLBACK
                                             : CBD_MALFORMED);
        }
    } else if (healthz || readyz) {
        FUZZ_CHECK_EQ(d, !get_head ? CBD_NOT_ALLOWED : healthz ? CBD_HEALTHZ : CBD_READYZ);
    } else {
        FUZZ_CHECK_EQ(d, CBD_NOT_FOUND);
    }
    if (d == CBD_CALLBACK) FUZZ_CHECK(valid_fields(&p) && p.reason == NULL);
    if (d == CBD_PROBE) FUZZ_CHECK(!p.tx_ok && !p.sub_ok && !p.token_ok && p.passed == 0);
    if (d == CBD_MALFORMED && !refused) FUZZ_CHECK(p.reason != NULL);
    if (d == CBD_MALFORMED) {
        /* Fields kept for the audit row are well-formed ones. */
        size_t tl = strnlen(p.transaction_id, sizeof p.transaction_id);
        if (p.tx_ok) FUZZ_CHECK(cb_valid_transaction_id(p.transaction_id, tl));
        size_t sl = strnlen(p.sub_code, sizeof p.sub_code);
        if (p.sub_ok) FUZZ_CHECK(cb_valid_sub_code(p.sub_code, sl));
        FUZZ_CHECK(p.passed == 0 || p.passed == 'Y' || p.passed == 'N');
    }
    return d;
}

/* ---- server.c's loop ------------------------------------------------------ */

static void check_request_spans(const struct http_request *r, uint32_t limit)
{
    FUZZ_CHECK(span_ok(r->target, limit) && span_ok(r->path, limit) && span_ok(r->query, limit));
    FUZZ_CHECK(span_ok(r->authorization, limit) && span_ok(r->content_type, limit));
    FUZZ_CHECK(span_ok(r->body, limit));
    FUZZ_CHECK(r->n_xff <= HTTP_MAX_XFF);
    for (unsigned i = 0; i < r->n_xff; i++) FUZZ_CHECK(span_ok(r->xff[i], limit));
    if (r->path.len) {
        /* The path and the query are the target, split at the first '?'. */
        FUZZ_CHECK_EQ(r->path.off, r->target.off);
        FUZZ_CHECK(r->path.len <= r->target.len);
        if (r->has_query) {
            FUZZ_CHECK_EQ(r->query.off, r->path.off + r->path.len + 1);
            FUZZ_CHECK_EQ(r->path.len + 1 + r->query.len, r->target.len);
        } else {
            FUZZ_CHECK_EQ(r->path.len, r->target.len);
        }
    }
}

static void on_request(struct sim *s)
{
    const struct http_request *r = &s->hp.req;
    /* Progress, within the bytes given, head before body. */
    FUZZ_CHECK(r->total_len > 0 && r->total_len <= s->len);
    FUZZ_CHECK(r->head_len > 0 && r->head_len <= r->total_len);
    FUZZ_CHECK(s->hp.head_done);
    FUZZ_CHECK(r->content_length <= (s->admin ? admin_rules.max_body : 0));
    FUZZ_CHECK_EQ(r->total_len, r->head_len + r->content_length);
    FUZZ_CHECK_EQ(r->body.len, r->content_length);
    if (r->body.len) FUZZ_CHECK_EQ(r->body.off, r->head_len);
    check_request_spans(r, r->head_len + r->body.len);
    FUZZ_CHECK(r->path.len > 0 && s->buf[r->path.off] == '/');
    FUZZ_CHECK(memchr(s->buf + r->target.off, '#', r->target.len) == NULL);
    check_head(s->buf, r, s->admin);

    enum cb_decision d = s->admin ? CBD_REFUSED : decide(r, s->buf, false);
    struct trace *t = s->t;
    if (t->n < MAX_EVENTS) t->ev[t->n] = (uint64_t)r->total_len << 8 | (uint64_t)d;
    t->n++;
}

static void on_error(struct sim *s, int status, const char *reason)
{
    FUZZ_CHECK(status == 400 || status == 413 || status == 414 || status == 431);
    FUZZ_CHECK(reason != NULL && reason[0] != '\0');
    if (!s->admin) FUZZ_CHECK(status != 413); /* a public body is malformed, never too large */
    struct http_request *r = &s->hp.req;
    check_request_spans(r, s->len);
    s->t->error = status;
    s->t->refused = -1;
    if (!s->admin && status == 400 && r->path.len > 0) {
        /* server.c's conn_framing_error(): the refused handler sees the method
         * llhttp has read, as the parser fills req.method only at the end of
         * the head. */
        r->method = (uint8_t)s->hp.ll.method;
        s->t->refused = (int)decide(r, s->buf, true);
    }
}

static void on_need_more(struct sim *s)
{
    const struct http_request *r = &s->hp.req;
    if (!s->hp.head_done) {
        /* The limits hold before the head is complete: the server's "buffer
         * full" refusal is never the one that stops a head. */
        FUZZ_CHECK(s->len <= HTTP_MAX_HEAD);
        return;
    }
    FUZZ_CHECK(s->admin && r->content_length > 0);
    uint32_t need = r->head_len + r->content_length;
    FUZZ_CHECK(s->len < need);
    if (need > s->cap) buf_new(s, need);
    FUZZ_CHECK(s->len < s->cap);
}

static void sim_process(struct sim *s)
{
    while (!s->closed && s->len > 0) {
        int status = 0;
        const char *reason = NULL;
        enum http_result res = http_parse(&s->hp, s->buf, s->len, &status, &reason);
        if (res == HTTP_ERROR) {
            on_error(s, status, reason);
            s->closed = true;
            return;
        }
        if (res == HTTP_NEED_MORE) {
            on_need_more(s);
            return;
        }
        FUZZ_CHECK_EQ(res, HTTP_GOT_REQUEST);
        on_request(s);
        if (!s->hp.req.keep_alive || s->hp.req.upgrade) {
            s->closed = true;
            return;
        }
        buf_drop_front(s, s->hp.req.total_len);
        http_parser_next(&s->hp);
        FUZZ_CHECK(!http_parser_started(&s->hp));
        if (s->len == 0) buf_release(s); /* idle connections hold no buffer */
    }
}

/* One read of up to n bytes, as many as the buffer has room for, then parsing;
 * repeated until the bytes are in or the connection is closed. */
static void sim_feed(struct sim *s, const uint8_t *d, size_t n)
{
    while (n > 0 && !s->closed) {
        if (!s->buf) {
            buf_new(s, BUF_SIZE);
            s->len = 0;
        }
        uint32_t room = s->cap - s->len;
        FUZZ_CHECK(room > 0); /* a full buffer would fail the read and drop the request */
        uint32_t take = n < room ? (uint32_t)n : room;
        ASAN_UNPOISON_MEMORY_REGION(s->buf + s->len, take);
        memcpy(s->buf + s->len, d, take);
        s->len += take;
        d += take;
        n -= take;
        sim_process(s);
    }
}

static void run(bool admin, const uint8_t *d, size_t n, size_t chunk, size_t split, struct trace *t)
{
    struct sim s;
    memset(&s, 0, sizeof s);
    memset(t, 0, sizeof *t);
    s.admin = admin;
    s.t = t;
    http_parser_init(&s.hp, admin ? &admin_rules : &public_rules);
    if (chunk) {
        for (size_t off = 0; off < n && !s.closed; off += chunk)
            sim_feed(&s, d + off, n - off < chunk ? n - off : chunk);
    } else {
        sim_feed(&s, d, split);
        sim_feed(&s, d + split, n - split);
    }
    t->closed = s.closed;
    t->left = s.closed ? 0 : s.len;
    buf_release(&s);
}

static struct trace whole, pieces;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    bool admin = data[0] & 1, chunked = data[0] & 2;
    uint8_t param = data[1];
    data += 2;
    size -= 2;
    size_t chunk = chunked ? (size_t)param + 1 : 0;
    size_t split = chunked ? 0 : size * param / 256;

    run(admin, data, size, 0, size, &whole);
    run(admin, data, size, chunk, split, &pieces);

    FUZZ_CHECK_EQ(whole.n, pieces.n);
    for (size_t i = 0; i < whole.n && i < MAX_EVENTS; i++) FUZZ_CHECK_EQ(whole.ev[i], pieces.ev[i]);
    FUZZ_CHECK_EQ(whole.closed, pieces.closed);
    FUZZ_CHECK_EQ(whole.left, pieces.left);
    FUZZ_CHECK_EQ(whole.error != 0, pieces.error != 0);
    if (whole.error != pieces.error) {
        /* Only a size limit may be found before a line's content is judged:
         * in pieces, an incomplete line is already too long for 414 or 431
         * where the whole line is refused for a bare LF or a control byte. */
        FUZZ_CHECK(whole.error == 400 || pieces.error == 400);
        FUZZ_CHECK(whole.error == 414 || whole.error == 431 || pieces.error == 414 ||
                   pieces.error == 431);
    } else {
        FUZZ_CHECK_EQ(whole.refused, pieces.refused);
    }
    return 0;
}
