#include "server.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "proxy.h"
#include "tls.h"

#define BUF_SIZE         32768 /* holds the largest head the limits allow */
#define BUF_CACHE_MAX    128   /* spare buffers kept for reuse */
#define LINGER_MS        2000  /* reading and discarding after a closing answer */
#define LINGER_MAX_BYTES 65536
#define RESPONSE_INLINE  4096
#define CIPHER_BUF       65536 /* ciphertext read from TLS sockets: one shared buffer */

enum conn_state {
    CS_READING = 0, /* waiting for (more of) a request */
    CS_HANDLING,    /* a handler owns the request */
    CS_WRITING,     /* the answer is being written */
    CS_LINGER,      /* answered and shut down; discarding input until EOF */
    CS_CLOSING,     /* uv_close() called */
};

enum tlist { TL_NONE = 0, TL_HEAD, TL_IDLE, TL_WRITE, TL_LINGER, TL__COUNT };

struct listener {
    uv_tcp_t tcp;
    struct server *srv;
    enum metric_listener kind;
    struct http_rules rules;
    request_handler handler;
    bool active;
};

struct conn {
    uv_tcp_t tcp;
    struct listener *lis;
    struct conn *tprev, *tnext; /* deadline list */
    uint64_t deadline;
    uint8_t tlist;
    uint8_t state;
    bool reading;
    bool closing; /* uv_close() called */
    bool close_after;
    bool handle_closed; /* uv_close() finished; waiting for the handler */
    bool processing;    /* inside conn_process() */
    bool sent_continue;
    uint32_t id;
    uint32_t nreq;
    uint32_t linger_bytes;
    char *buf;
    uint32_t len, cap;
    bool awaiting_proxy; /* a PROXY header must come first (trusted peer) */
    bool has_client;     /* client below came from a PROXY header */
    struct ipaddr peer;
    struct ipaddr client;
    struct tls_conn *tls; /* NULL on plain connections */
    uint64_t started;     /* uv_hrtime() when the head was complete */
    const char *note_outcome;
    const char *note_tx;
    struct http_parser hp;
};

struct tqueue {
    struct conn *head, *tail;
    uint64_t ms;
};

struct server {
    uv_loop_t *loop;
    struct server_opts opts;
    struct listener lis[ML__COUNT];
    struct tqueue tq[TL__COUNT];
    uv_timer_t timer;
    unsigned open;
    uint32_t next_id;
    bool draining;
    int open_handles;
    void (*drain_cb)(void *);
    void *drain_arg;
    void (*close_cb)(void *);
    void *close_arg;
    char *cache[BUF_CACHE_MAX];
    unsigned ncache;
    SSL_CTX *tls_ctx; /* the public listener speaks TLS when set */
};

static void conn_process(struct conn *c);
static void conn_close(struct conn *c);

/* ---- buffers: only a connection with bytes to parse holds one ------------ */

static char *buf_get(struct server *srv)
{
    if (srv->ncache) return srv->cache[--srv->ncache];
    return malloc(BUF_SIZE);
}

static void conn_buf_release(struct conn *c)
{
    struct server *srv = c->lis->srv;
    if (!c->buf) return;
    if (c->cap == BUF_SIZE && srv->ncache < BUF_CACHE_MAX)
        srv->cache[srv->ncache++] = c->buf;
    else
        free(c->buf);
    c->buf = NULL;
    c->len = c->cap = 0;
}

/* ---- deadlines: one FIFO per duration, so each list is sorted ----------- */

static void tl_remove(struct conn *c)
{
    if (c->tlist == TL_NONE) return;
    struct tqueue *q = &c->lis->srv->tq[c->tlist];
    if (c->tprev)
        c->tprev->tnext = c->tnext;
    else
        q->head = c->tnext;
    if (c->tnext)
        c->tnext->tprev = c->tprev;
    else
        q->tail = c->tprev;
    c->tprev = c->tnext = NULL;
    c->tlist = TL_NONE;
}

static void tl_add(struct conn *c, enum tlist which)
{
    struct server *srv = c->lis->srv;
    tl_remove(c);
    struct tqueue *q = &srv->tq[which];
    c->deadline = uv_now(srv->loop) + q->ms;
    c->tlist = (uint8_t)which;
    c->tprev = q->tail;
    c->tnext = NULL;
    if (q->tail)
        q->tail->tnext = c;
    else
        q->head = c;
    q->tail = c;
}

static void timer_cb(uv_timer_t *t)
{
    struct server *srv = t->data;
    uint64_t now = uv_now(srv->loop);
    for (int l = TL_HEAD; l < TL__COUNT; l++) {
        struct tqueue *q = &srv->tq[l];
        while (q->head && q->head->deadline <= now) {
            struct conn *c = q->head;
            tl_remove(c);
            if (l != TL_LINGER && l != TL_IDLE) g_metrics.conns_timed_out[c->lis->kind]++;
            conn_close(c);
        }
    }
}

/* ---- reading ------------------------------------------------------------ */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    (void)suggested;
    struct conn *c = (struct conn *)h;
    if (c->state == CS_LINGER) {
        static char sink[4096]; /* discarded bytes: one shared sink */
        *b = uv_buf_init(sink, sizeof sink);
        return;
    }
    if (c->tls && !c->awaiting_proxy) {
        /* Ciphertext is consumed inside read_cb, so one buffer serves all. */
        static char cipher[CIPHER_BUF];
        *b = uv_buf_init(cipher, sizeof cipher);
        return;
    }
    if (!c->buf) {
        c->buf = buf_get(c->lis->srv);
        c->cap = c->buf ? BUF_SIZE : 0;
        c->len = 0;
    }
    if (!c->buf || c->len >= c->cap) {
        *b = uv_buf_init(NULL, 0);
        return;
    }
    *b = uv_buf_init(c->buf + c->len, c->cap - c->len);
}

static void conn_read_stop(struct conn *c)
{
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b);

static void conn_read_start(struct conn *c)
{
    if (!c->reading && uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) == 0)
        c->reading = true;
}

static void conn_send(struct conn *c, const char *data, size_t len, bool response);

/* Sends what OpenSSL wants to send (handshake records, alerts). */
static void tls_flush(struct conn *c)
{
    char out[16384];
    size_t n;
    while (!c->closing && (n = tls_take_out(c->tls, out, sizeof out)) > 0)
        conn_send(c, out, n, false);
}

/* Decrypts what OpenSSL holds into the request buffer, as far as it has room.
 * Returns false when the connection was closed. */
static bool tls_pull(struct conn *c)
{
    if (!c->buf) {
        c->buf = buf_get(c->lis->srv);
        c->cap = c->buf ? BUF_SIZE : 0;
        c->len = 0;
        if (!c->buf) {
            conn_close(c);
            return false;
        }
    }
    enum tls_io r = TLS_IO_OK;
    size_t got;
    do {
        r = tls_read(c->tls, c->buf + c->len, c->cap - c->len, &got);
        c->len += (uint32_t)got;
    } while (r == TLS_IO_OK && got > 0 && c->len < c->cap);
    tls_flush(c);
    if (r != TLS_IO_OK) {
        if (r == TLS_IO_ERROR) {
            char id[16], peer[IPADDR_STRLEN];
            snprintf(id, sizeof id, "%u", c->id);
            ipaddr_format(&c->peer, peer, sizeof peer);
            log_kv(LOGL_INFO, "TLS handshake or record failed", "CONN_ID", id, "PEER", peer, NULL);
        }
        conn_close(c);
        return false;
    }
    if (c->len == 0) conn_buf_release(c);
    return !c->closing;
}

/* The PROXY header from a trusted load balancer: the client's address, then
 * the connection goes on as usual with the bytes after it. */
static bool proxy_step(struct conn *c)
{
    struct proxy_info pi;
    size_t used = 0;
    const char *reason = NULL;
    enum proxy_result r = proxy_parse((const uint8_t *)c->buf, c->len, &pi, &used, &reason);
    if (r == PROXY_NEED_MORE) return true;
    if (r == PROXY_ERROR) {
        char id[16], peer[IPADDR_STRLEN];
        snprintf(id, sizeof id, "%u", c->id);
        ipaddr_format(&c->peer, peer, sizeof peer);
        log_kv(LOGL_INFO, "PROXY header refused", "CONN_ID", id, "PEER", peer, "REASON", reason,
               NULL);
        conn_close(c);
        return false;
    }
    c->awaiting_proxy = false;
    if (pi.has_addr) {
        c->client = pi.src;
        c->has_client = true;
    }
    memmove(c->buf, c->buf + used, c->len - used);
    c->len -= (uint32_t)used;
    if (c->tls) {
        bool ok = tls_feed(c->tls, c->buf, c->len);
        c->len = 0;
        if (!ok) {
            conn_close(c);
            return false;
        }
        return tls_pull(c);
    }
    if (c->len == 0) conn_buf_release(c);
    return true;
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    struct conn *c = (struct conn *)s;
    if (c->state == CS_LINGER) {
        if (n < 0 || (c->linger_bytes += (uint32_t)n) > LINGER_MAX_BYTES) conn_close(c);
        return;
    }
    if (c->closing) return;
    if (n < 0) {
        /* EOF or error. A request in the handler's hands is still answered
         * (the client may have only half-closed). */
        conn_close(c);
        return;
    }
    if (n == 0) {
        if (c->len == 0) conn_buf_release(c);
        return;
    }
    bool first_bytes = c->len == 0;
    if (c->awaiting_proxy) {
        c->len += (uint32_t)n;
        if (!proxy_step(c)) return;
        if (c->awaiting_proxy) {
            if (c->len >= PROXY_V2_MAX) conn_close(c); /* cannot be a valid header */
            return;
        }
    } else if (c->tls) {
        if (!tls_feed(c->tls, b->base, (size_t)n)) {
            conn_close(c);
            return;
        }
        if (!tls_pull(c)) return;
    } else {
        c->len += (uint32_t)n;
    }
    if (first_bytes && c->len > 0 && c->tlist == TL_IDLE)
        tl_add(c, TL_HEAD); /* head deadline starts now */
    conn_process(c);
}

/* ---- writing ------------------------------------------------------------ */

struct wout {
    uv_write_t req;
    struct conn *c;
    bool response; /* the last bytes of an answer: completes it */
    size_t len;
    char data[];
};

static void after_response(struct conn *c);

static void write_cb(uv_write_t *req, int status)
{
    struct wout *w = (struct wout *)req;
    struct conn *c = w->c;
    bool response = w->response;
    free(w);
    if (c->closing) return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (response) after_response(c);
}

/* Writes bytes to the socket in order; when response is set they end an answer,
 * which is complete when after_response() runs. */
static void conn_send(struct conn *c, const char *data, size_t len, bool response)
{
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n == (int)len) {
        if (response) after_response(c);
        return;
    }
    if (n < 0 && n != UV_EAGAIN) {
        conn_close(c);
        return;
    }
    size_t done = n > 0 ? (size_t)n : 0;
    struct wout *w = malloc(sizeof *w + len - done);
    if (!w) {
        conn_close(c);
        return;
    }
    w->c = c;
    w->response = response;
    w->len = len - done;
    memcpy(w->data, data + done, w->len);
    b = uv_buf_init(w->data, (unsigned)w->len);
    if (response) {
        c->state = CS_WRITING;
        tl_add(c, TL_WRITE);
    }
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, write_cb) != 0) {
        free(w);
        conn_close(c);
    }
}

/* Writes an answer: in clear, or as TLS records (with a close_notify after the
 * last answer of the connection). */
static void conn_write(struct conn *c, const char *data, size_t len)
{
    if (!c->tls) {
        conn_send(c, data, len, true);
        return;
    }
    if (!tls_write(c->tls, data, len)) {
        conn_close(c);
        return;
    }
    if (c->close_after) tls_shutdown(c->tls);
    size_t n = tls_pending_out(c->tls);
    char *out = malloc(n ? n : 1);
    if (!out) {
        conn_close(c);
        return;
    }
    n = tls_take_out(c->tls, out, n);
    conn_send(c, out, n, true);
    free(out);
}

/* ---- closing ------------------------------------------------------------ */

static void server_maybe_drained(struct server *srv)
{
    if (srv->draining && srv->open == 0 && srv->drain_cb) {
        void (*cb)(void *) = srv->drain_cb;
        srv->drain_cb = NULL;
        cb(srv->drain_arg);
    }
}

static void conn_free(struct conn *c)
{
    struct server *srv = c->lis->srv;
    g_metrics.conns_open[c->lis->kind]--;
    srv->open--;
    conn_buf_release(c);
    if (c->tls) {
        tls_conn_free(c->tls);
        free(c->tls);
    }
    free(c);
    server_maybe_drained(srv);
}

static void close_cb(uv_handle_t *h)
{
    struct conn *c = (struct conn *)h;
    c->handle_closed = true;
    /* A handler still owns the request: it frees the connection when it
     * answers (never free an object its owner still references). */
    if (c->state == CS_HANDLING) return;
    conn_free(c);
}

static void conn_close(struct conn *c)
{
    if (c->closing) return;
    c->closing = true;
    tl_remove(c);
    conn_read_stop(c);
    if (c->state != CS_HANDLING) c->state = CS_CLOSING;
    uv_close((uv_handle_t *)&c->tcp, close_cb);
}

static void shutdown_cb(uv_shutdown_t *req, int status)
{
    struct conn *c = req->data;
    free(req);
    if (c->closing) return;
    if (status < 0) conn_close(c);
}

/* After a closing answer: send FIN, then read and discard what the client still
 * sends for a short while, so that closing with unread input does not reset the
 * connection and destroy the answer in flight. */
static void conn_linger(struct conn *c)
{
    uv_shutdown_t *req = malloc(sizeof *req);
    if (!req) {
        conn_close(c);
        return;
    }
    req->data = c;
    if (uv_shutdown(req, (uv_stream_t *)&c->tcp, shutdown_cb) != 0) {
        free(req);
        conn_close(c);
        return;
    }
    conn_buf_release(c);
    c->state = CS_LINGER;
    tl_add(c, TL_LINGER);
    conn_read_start(c);
}

/* ---- requests ----------------------------------------------------------- */

static void after_response(struct conn *c)
{
    struct server *srv = c->lis->srv;
    tl_remove(c);
    c->note_outcome = NULL;
    c->note_tx = NULL;
    c->nreq++;
    if (c->close_after || c->nreq >= srv->opts.max_requests_per_connection) {
        conn_linger(c);
        return;
    }
    /* Drop the answered request; pipelined bytes move to the front. */
    uint32_t used = c->hp.req.total_len;
    if (used < c->len) {
        memmove(c->buf, c->buf + used, c->len - used);
        c->len -= used;
    } else {
        c->len = 0;
    }
    http_parser_next(&c->hp);
    c->sent_continue = false;
    c->state = CS_READING;
    /* Records OpenSSL already holds will not wake the socket: decrypt them. */
    if (c->tls && tls_has_input(c->tls) && c->len < BUF_SIZE && !tls_pull(c)) return;
    if (c->len == 0) {
        conn_buf_release(c); /* idle connections hold no buffer */
        if (srv->draining) {
            conn_close(c);
            return;
        }
        tl_add(c, TL_IDLE);
    } else {
        tl_add(c, TL_HEAD);
    }
    conn_read_start(c);
    if (!c->processing) conn_process(c);
}

static const char *method_name(uint8_t m)
{
    return llhttp_method_name((llhttp_method_t)m);
}

static void log_request(struct conn *c, int status)
{
    double secs = (double)(uv_hrtime() - c->started) / 1e9;
    if (status >= 100 && status < 600) g_metrics.requests[c->lis->kind][status]++;
    histogram_observe(&g_metrics.request_seconds[c->lis->kind], secs);
    if (!log_enabled(LOGL_INFO)) return;
    char st[8], ms[32], id[16], peer[IPADDR_STRLEN], client[IPADDR_STRLEN], path[256];
    snprintf(st, sizeof st, "%d", status);
    snprintf(ms, sizeof ms, "%.3f", secs * 1000.0);
    snprintf(id, sizeof id, "%u", c->id);
    ipaddr_format(&c->peer, peer, sizeof peer);
    if (c->buf && c->hp.head_done)
        conn_client_ip(c, &c->hp.req, c->buf, client, sizeof client);
    else
        ipaddr_format(c->has_client ? &c->client : &c->peer, client, sizeof client);
    /* The path only: the query string carries the callback token. */
    const struct http_request *r = &c->hp.req;
    size_t plen = r->path.len < sizeof path - 1 ? r->path.len : sizeof path - 1;
    if (c->buf && plen) memcpy(path, c->buf + r->path.off, plen);
    path[c->buf ? plen : 0] = '\0';
    log_kv(LOGL_INFO, "request", "LISTENER", c->lis->kind == ML_PUBLIC ? "public" : "admin",
           "CONN_ID", id, "PEER", peer, "CLIENT_IP", client, "METHOD",
           c->hp.head_done ? method_name(r->method) : "-", "PATH", path, "STATUS", st,
           "DURATION_MS", ms, "OUTCOME", c->note_outcome, "TRANSACTION_ID", c->note_tx, NULL);
}

void conn_note(struct conn *c, const char *outcome, const char *transaction_id)
{
    c->note_outcome = outcome;
    c->note_tx = transaction_id;
}

bool conn_is_head(const struct conn *c)
{
    return c->hp.req.method == HTTP_HEAD;
}
bool conn_server_draining(const struct conn *c)
{
    return c->lis->srv->draining;
}

void conn_respond(struct conn *c, int status, const char *ctype, const char *extra,
                  const char *body, size_t body_len, bool close)
{
    log_request(c, status);
    if (c->closing) {
        /* The client left while the handler worked: nobody to answer. */
        c->state = CS_CLOSING;
        if (c->handle_closed) conn_free(c);
        return;
    }
    /* While draining, requests already pipelined behind this one are still
     * answered (they were sent before the stop); the last answer closes. */
    bool more_buffered = c->len > c->hp.req.total_len;
    if (close || !c->hp.req.keep_alive || c->hp.req.upgrade ||
        (c->lis->srv->draining && !more_buffered) ||
        c->nreq + 1 >= c->lis->srv->opts.max_requests_per_connection)
        c->close_after = true;
    http_date_update();
    char inline_buf[RESPONSE_INLINE];
    size_t cap = body_len + 1024;
    char *out = cap <= sizeof inline_buf ? inline_buf : malloc(cap);
    if (!out) {
        conn_close(c);
        return;
    }
    struct http_out o = {out, 0, cap <= sizeof inline_buf ? sizeof inline_buf : cap, false};
    http_out_response(&o, status, ctype, extra, body, body_len, conn_is_head(c), !c->close_after);
    c->state = CS_WRITING;
    if (o.overflow)
        conn_close(c);
    else
        conn_write(c, o.p, o.len);
    if (out != inline_buf) free(out);
}

/* Answers a request the strict parser refused, and closes: nothing after a
 * framing error is read as a request. */
static void conn_framing_error(struct conn *c, int status, const char *reason)
{
    g_metrics.framing_errors[c->lis->kind]++;
    char id[16], peer[IPADDR_STRLEN];
    snprintf(id, sizeof id, "%u", c->id);
    ipaddr_format(&c->peer, peer, sizeof peer);
    log_kv(LOGL_INFO, "request refused by the HTTP parser", "CONN_ID", id, "PEER", peer, "REASON",
           reason, NULL);
    c->started = uv_hrtime();
    c->state = CS_HANDLING;
    conn_read_stop(c);
    tl_remove(c);
    c->hp.req.keep_alive = false;
    struct server *srv = c->lis->srv;
    if (c->lis->kind == ML_PUBLIC && status == 400 && srv->opts.public_refused &&
        c->hp.req.path.len > 0) {
        /* The target was read, so this may be a callback refused for its
         * framing (a body): the contract answers it as a malformed callback,
         * which is audited and counted like the others. The parser fills
         * req.method only at the end of the head; llhttp knows it already. */
        c->hp.req.method = (uint8_t)c->hp.ll.method;
        if (srv->opts.public_refused(srv->opts.ctx, c, &c->hp.req, c->buf, reason)) return;
    }
    static const char body400[] = "{\"result\":\"malformed\"}";
    char body[96];
    const char *b = body400;
    size_t blen = sizeof body400 - 1;
    if (c->lis->kind == ML_ADMIN || status != 400) {
        int n = snprintf(body, sizeof body, "{\"code\":\"%s\",\"message\":\"%s\"}",
                         status == 400 ? "BadRequest" : http_reason(status), http_reason(status));
        b = body;
        blen = (size_t)n;
    }
    conn_respond(c, status, "application/json", NULL, b, blen, true);
}

static void conn_process(struct conn *c)
{
    struct server *srv = c->lis->srv;
    c->processing = true;
    while (c->state == CS_READING && c->len > 0) {
        int status = 0;
        const char *reason = NULL;
        enum http_result r = http_parse(&c->hp, c->buf, c->len, &status, &reason);
        if (r == HTTP_ERROR) {
            conn_framing_error(c, status, reason);
            break;
        }
        if (r == HTTP_NEED_MORE) {
            struct http_request *q = &c->hp.req;
            if (c->hp.head_done && q->content_length > 0) {
                /* A body is coming (admin listener only): make room for all of
                 * it, and tell a waiting client to send it. */
                uint32_t need = q->head_len + q->content_length;
                if (need > c->cap) {
                    char *nb = malloc(need);
                    if (!nb) {
                        conn_close(c);
                        break;
                    }
                    uint32_t len = c->len;
                    memcpy(nb, c->buf, len);
                    conn_buf_release(c);
                    c->buf = nb;
                    c->cap = need;
                    c->len = len;
                }
                if (q->expect_continue && !c->sent_continue) {
                    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                    c->sent_continue = true;
                    if (c->tls) {
                        if (!tls_write(c->tls, cont, sizeof cont - 1)) {
                            conn_close(c);
                            break;
                        }
                        tls_flush(c);
                    } else {
                        conn_send(c, cont, sizeof cont - 1, false);
                    }
                    if (c->closing) break;
                }
            }
            if (c->len >= c->cap) {
                /* Cannot happen within the limits; refuse rather than stall. */
                conn_framing_error(c, 431, "buffer full");
                break;
            }
            break;
        }
        /* A complete request. */
        c->state = CS_HANDLING;
        c->started = uv_hrtime();
        tl_remove(c);
        c->lis->handler(srv->opts.ctx, c, &c->hp.req, c->buf);
        /* Reading stops only when the answer is not complete yet (waiting on
         * PostgreSQL, or a write that did not finish): a request answered at
         * once costs no epoll_ctl round trip. */
        if (c->state == CS_HANDLING || c->state == CS_WRITING) conn_read_stop(c);
    }
    c->processing = false;
    if (c->state == CS_READING) conn_read_start(c);
}

/* ---- accepting ---------------------------------------------------------- */

static void on_connection(uv_stream_t *ls, int status)
{
    struct listener *l = (struct listener *)ls;
    struct server *srv = l->srv;
    if (status < 0) {
        log_kv(LOGL_WARN, "accept failed", "REASON", uv_strerror(status), NULL);
        return;
    }
    struct conn *c = calloc(1, sizeof *c);
    if (!c) return;
    uv_tcp_init(srv->loop, &c->tcp);
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
        uv_close((uv_handle_t *)&c->tcp, (uv_close_cb)free);
        return;
    }
    if (srv->open >= srv->opts.max_connections || srv->draining) {
        /* Over the limit: closed at once, before anything is read. */
        g_metrics.conns_refused[l->kind]++;
        uv_close((uv_handle_t *)&c->tcp, (uv_close_cb)free);
        return;
    }
    c->lis = l;
    c->id = ++srv->next_id;
    srv->open++;
    g_metrics.conns_open[l->kind]++;
    g_metrics.conns_accepted[l->kind]++;
    struct sockaddr_storage ss;
    int sl = sizeof ss;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) != 0 ||
        ipaddr_from_sockaddr((struct sockaddr *)&ss, &c->peer) != 0)
        memset(&c->peer, 0, sizeof c->peer);
    uv_tcp_nodelay(&c->tcp, 1);
    if (l->kind == ML_PUBLIC && srv->opts.proxy_protocol && srv->opts.trusted &&
        cidr_list_contains(srv->opts.trusted, &c->peer))
        c->awaiting_proxy = true;
    if (l->kind == ML_PUBLIC && srv->tls_ctx) {
        c->tls = malloc(sizeof *c->tls);
        if (!c->tls || tls_conn_init(c->tls, srv->tls_ctx) != 0) {
            free(c->tls);
            c->tls = NULL;
            conn_close(c);
            return;
        }
    }
    http_parser_init(&c->hp, &l->rules);
    c->state = CS_READING;
    tl_add(c, TL_HEAD); /* the head deadline counts from accept */
    conn_read_start(c);
}

static int listener_open(struct server *srv, struct listener *l, const struct netaddr *addr, int fd,
                         char *err, size_t errlen)
{
    uv_tcp_init(srv->loop, &l->tcp);
    l->srv = srv;
    srv->open_handles++;
    int r;
    if (fd >= 0) {
        r = uv_tcp_open(&l->tcp, fd);
        if (r) {
            snprintf(err, errlen, "adopting socket %d: %s", fd, uv_strerror(r));
            return IDV_EIO;
        }
    } else {
        r = uv_tcp_bind(&l->tcp, (const struct sockaddr *)&addr->ss, 0);
        if (r) {
            snprintf(err, errlen, "bind %s: %s", l->kind == ML_PUBLIC ? "listen" : "admin_listen",
                     uv_strerror(r));
            return IDV_EIO;
        }
    }
    r = uv_listen((uv_stream_t *)&l->tcp, 1024, on_connection);
    if (r) {
        snprintf(err, errlen, "listen %s: %s", l->kind == ML_PUBLIC ? "listen" : "admin_listen",
                 uv_strerror(r));
        return IDV_EIO;
    }
    l->active = true;
    return 0;
}

static const struct http_rules public_rules = {.max_body = 0};
static const struct http_rules admin_rules = {.max_body = 65536};

static void server_handle_closed(uv_handle_t *h)
{
    struct server *srv = h->data;
    if (--srv->open_handles > 0) return;
    void (*cb)(void *) = srv->close_cb;
    void *arg = srv->close_arg;
    while (srv->ncache) free(srv->cache[--srv->ncache]);
    if (srv->tls_ctx) SSL_CTX_free(srv->tls_ctx);
    free(srv);
    if (cb) cb(arg);
}

int server_new(struct server **out, uv_loop_t *loop, const struct server_opts *opts, char *err,
               size_t errlen)
{
    struct server *srv = calloc(1, sizeof *srv);
    if (!srv) return IDV_ENOMEM;
    srv->loop = loop;
    srv->opts = *opts;
    if (opts->tls_ctx) {
        SSL_CTX_up_ref(opts->tls_ctx);
        srv->tls_ctx = opts->tls_ctx;
    }
    srv->tq[TL_HEAD].ms = opts->header_timeout_ms;
    srv->tq[TL_IDLE].ms = opts->idle_timeout_ms;
    srv->tq[TL_WRITE].ms = opts->header_timeout_ms;
    srv->tq[TL_LINGER].ms = LINGER_MS;
    uv_timer_init(loop, &srv->timer);
    srv->timer.data = srv;
    srv->open_handles = 1;
    uint64_t shortest = opts->header_timeout_ms < opts->idle_timeout_ms ? opts->header_timeout_ms
                                                                        : opts->idle_timeout_ms;
    uint64_t period = shortest / 8;
    if (period < 5) period = 5;
    if (period > 100) period = 100;
    uv_timer_start(&srv->timer, timer_cb, period, period);

    srv->lis[ML_PUBLIC].kind = ML_PUBLIC;
    srv->lis[ML_PUBLIC].rules = public_rules;
    srv->lis[ML_PUBLIC].handler = opts->public_handler;
    srv->lis[ML_ADMIN].kind = ML_ADMIN;
    srv->lis[ML_ADMIN].rules = admin_rules;
    srv->lis[ML_ADMIN].handler = opts->admin_handler;
    int rc =
        listener_open(srv, &srv->lis[ML_PUBLIC], &opts->public_addr, opts->public_fd, err, errlen);
    if (!rc)
        rc =
            listener_open(srv, &srv->lis[ML_ADMIN], &opts->admin_addr, opts->admin_fd, err, errlen);
    if (rc) {
        *out = NULL;
        server_close(srv, NULL, NULL);
        return rc;
    }
    *out = srv;
    return 0;
}

void server_set_trusted(struct server *srv, const struct cidr_list *trusted)
{
    srv->opts.trusted = trusted;
}

unsigned server_open_connections(const struct server *srv)
{
    return srv->open;
}

void server_set_tls_ctx(struct server *srv, SSL_CTX *ctx)
{
    /* Connections already open hold their own reference to the old context. */
    SSL_CTX_up_ref(ctx);
    if (srv->tls_ctx) SSL_CTX_free(srv->tls_ctx);
    srv->tls_ctx = ctx;
}

static void listeners_stop(struct server *srv)
{
    for (int i = 0; i < ML__COUNT; i++)
        if (srv->lis[i].active) {
            srv->lis[i].active = false;
            srv->lis[i].tcp.data = srv;
            uv_close((uv_handle_t *)&srv->lis[i].tcp, server_handle_closed);
        } else if (srv->lis[i].srv && !uv_is_closing((uv_handle_t *)&srv->lis[i].tcp)) {
            srv->lis[i].tcp.data = srv;
            uv_close((uv_handle_t *)&srv->lis[i].tcp, server_handle_closed);
        }
}

void server_drain(struct server *srv, void (*cb)(void *), void *arg)
{
    srv->draining = true;
    srv->drain_cb = cb;
    srv->drain_arg = arg;
    listeners_stop(srv);
    /* Idle keep-alive connections, and new ones that sent nothing yet, close
     * now; requests in flight finish and their connections close after. */
    struct conn *c = srv->tq[TL_IDLE].head;
    while (c) {
        struct conn *n = c->tnext;
        conn_close(c);
        c = n;
    }
    c = srv->tq[TL_HEAD].head;
    while (c) {
        struct conn *n = c->tnext;
        if (c->len == 0) conn_close(c);
        c = n;
    }
    server_maybe_drained(srv);
}

void server_close(struct server *srv, void (*cb)(void *), void *arg)
{
    srv->close_cb = cb;
    srv->close_arg = arg;
    srv->draining = true;
    srv->drain_cb = NULL;
    listeners_stop(srv);
    for (int l = TL_HEAD; l < TL__COUNT; l++) {
        struct conn *c = srv->tq[l].head;
        while (c) {
            struct conn *n = c->tnext;
            conn_close(c);
            c = n;
        }
    }
    uv_close((uv_handle_t *)&srv->timer, server_handle_closed);
}

void conn_client_ip(const struct conn *c, const struct http_request *req, const char *base,
                    char *out, size_t outlen)
{
    /* A PROXY header from a trusted balancer names the client; otherwise the
     * peer is the candidate, and X-Forwarded-For counts only from trusted ones. */
    struct ipaddr client = c->has_client ? c->client : c->peer;
    const struct cidr_list *trusted = c->lis->srv->opts.trusted;
    if (trusted && trusted->n && req->n_xff && cidr_list_contains(trusted, &client)) {
        /* Walk X-Forwarded-For from the right: each trusted hop vouches for the
         * address on its left; the first untrusted one is the client. */
        bool stop = false;
        for (int i = req->n_xff - 1; i >= 0 && !stop; i--) {
            const char *s = base + req->xff[i].off;
            size_t end = req->xff[i].len;
            while (end > 0 && !stop) {
                size_t start = end;
                while (start > 0 && s[start - 1] != ',') start--;
                size_t a = start, b = end;
                while (a < b && (s[a] == ' ' || s[a] == '\t')) a++;
                while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t')) b--;
                struct ipaddr ip;
                if (ipaddr_parse(s + a, b - a, &ip) != 0) {
                    stop = true;
                    break;
                }
                client = ip;
                if (!cidr_list_contains(trusted, &ip)) stop = true;
                end = start > 0 ? start - 1 : 0;
            }
        }
    }
    ipaddr_format(&client, out, outlen);
}
