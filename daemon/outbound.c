#include "outbound.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/rand.h>

#include "log.h"
#include "metrics.h"

#define OUT_MAX_BODY  (4u << 20) /* larger answers are refused, not buffered */
#define OUT_MAX_CONNS 16         /* curl's connection cache */

struct sock_ctx {
    uv_poll_t poll;
    struct outbound *ob;
    curl_socket_t fd;
    struct sock_ctx *prev, *next; /* the outbound's sockets in use by a transfer */
};

struct outbound {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t curl_timer; /* curl's own timeouts */
    uv_timer_t qps_timer;  /* the next start under the qps bound */
    struct outbound_opts opts;
    char *endpoint, *host, *key_id, *secret, *ca_file;
    struct out_call *qhead, *qtail; /* waiting for their turn */
    struct out_call *rhead;         /* in flight */
    size_t waiting, running;
    uint64_t *starts; /* ring of the last qps start times */
    size_t nstarts, istart;
    /* Sockets of the connections curl keeps for reuse after a clean
     * exchange, idle until a transfer takes one again (socket_cb) or curl
     * closes it (close_socket). */
    curl_socket_t idle[OUT_MAX_CONNS];
    size_t nidle;
    struct sock_ctx *socks; /* sockets curl watches for a transfer now (socket_cb) */
    struct circuit circuit;
    uint64_t short_circuited; /* since the circuit last opened */
    int open_handles;
    bool closing;
    void (*close_cb)(void *);
    void *close_arg;
};

static void ob_unref(struct outbound *ob)
{
    if (--ob->open_handles > 0 || !ob->closing) return;
    void (*cb)(void *) = ob->close_cb;
    void *arg = ob->close_arg;
    curl_multi_cleanup(ob->multi);
    free(ob->endpoint);
    free(ob->host);
    free(ob->key_id);
    if (ob->secret) {
        memset(ob->secret, 0, strlen(ob->secret));
        free(ob->secret);
    }
    free(ob->ca_file);
    free(ob->starts);
    free(ob);
    if (cb) cb(arg);
}

static void handle_closed(uv_handle_t *h)
{
    ob_unref(h->data);
}

static void sock_closed(uv_handle_t *h)
{
    struct sock_ctx *s = (struct sock_ctx *)h;
    struct outbound *ob = s->ob;
    free(s);
    ob_unref(ob);
}

static int action_index(const char *action)
{
    if (!strcmp(action, "Initialize")) return 0;
    if (!strcmp(action, "CheckResult")) return 1;
    return 2;
}

static enum out_transport classify(CURLcode rc)
{
    switch (rc) {
    case CURLE_OK: return OUT_OK;
    case CURLE_OPERATION_TIMEDOUT: return OUT_TIMEOUT;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY: return OUT_CONNECT;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS: return OUT_TLS;
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_WEIRD_SERVER_REPLY: return OUT_BROKEN;
    case CURLE_WRITE_ERROR:
    case CURLE_FILESIZE_EXCEEDED: return OUT_TOO_BIG;
    default: return OUT_OTHER;
    }
}

static uint64_t now_ms(void)
{
    /* The real time, not the loop's cached one: the qps ring and the circuit
     * compare instants taken in different loop iterations. */
    return uv_hrtime() / 1000000;
}

static double jitter(void)
{
    return (double)rand() / ((double)RAND_MAX + 1.0);
}

/* ---- connections kept for reuse ---------------------------------------------
 * curl offers no call to drop one cached connection, and by the time a
 * transfer is reported done its connection is already back in the cache. A
 * connection that must not be used again is shut down instead (shutdown(2),
 * not close: the descriptor stays curl's): curl's liveness check before any
 * reuse then sees it dead and closes it. */

/* True while curl watches fd for a transfer (between socket_cb's first call
 * for it and CURL_POLL_REMOVE): the connection is not idle. */
static bool sock_in_use(const struct outbound *ob, curl_socket_t fd)
{
    for (const struct sock_ctx *s = ob->socks; s; s = s->next)
        if (s->fd == fd) return true;
    return false;
}

static void idle_forget(struct outbound *ob, curl_socket_t fd)
{
    for (size_t i = 0; i < ob->nidle; i++)
        if (ob->idle[i] == fd) {
            ob->idle[i] = ob->idle[--ob->nidle];
            return;
        }
}

static void retire(curl_socket_t fd, const char *why)
{
    shutdown(fd, SHUT_RDWR);
    g_metrics.outbound_conns_retired++;
    log_kv(LOGL_DEBUG, "Alibaba connection not reused", "REASON", why, NULL);
}

/* Retires every kept connection on which something arrived while it was idle:
 * bytes that belong to no answer (which the next call would read as its
 * answer), or the server's FIN. Called just before a call starts. curl's own
 * check before reuse only asks whether the peer closed, and keeps a TLS
 * connection with unread bytes. poll() with a zero timeout does not block. */
static void idle_sweep(struct outbound *ob)
{
    struct pollfd p[OUT_MAX_CONNS];
    size_t n = ob->nidle;
    for (size_t i = 0; i < n; i++) p[i] = (struct pollfd){.fd = ob->idle[i], .events = POLLIN};
    if (n == 0 || poll(p, (nfds_t)n, 0) <= 0) return;
    for (size_t i = 0; i < n; i++)
        if (p[i].revents && !sock_in_use(ob, p[i].fd)) {
            retire(p[i].fd, "input arrived while the connection was idle");
            idle_forget(ob, p[i].fd);
        }
}

static int close_socket(void *userp, curl_socket_t fd)
{
    /* Forgotten before the number can be reused by anything else. */
    idle_forget(userp, fd);
    return close(fd);
}

/* After a transfer: keeps its connection for reuse only after a clean
 * exchange, shuts it down otherwise. */
static void settle_connection(struct outbound *ob, CURL *e, bool clean)
{
    curl_socket_t fd = CURL_SOCKET_BAD;
    /* The socket of the connection curl just cached, or CURL_SOCKET_BAD when
     * it closed it (a failed transfer usually). */
    if (curl_easy_getinfo(e, CURLINFO_ACTIVESOCKET, &fd) != CURLE_OK || fd == CURL_SOCKET_BAD)
        return;
    /* The socket_action that finished this transfer may already have handed
     * its connection to a waiting transfer: then it is not idle, and shutting
     * it down would cut that transfer's answer (seen as 502
     * UpstreamTruncated under concurrent Initialize calls). */
    if (sock_in_use(ob, fd)) return;
    if (clean && ob->nidle < OUT_MAX_CONNS) {
        idle_forget(ob, fd);
        ob->idle[ob->nidle++] = fd;
    } else {
        idle_forget(ob, fd);
        retire(fd, clean ? "too many idle connections" : "the exchange was not clean");
    }
}

/* ---- the circuit --------------------------------------------------------- */

static enum circuit_outcome circuit_outcome_of(const struct out_result *r, bool aborted)
{
    if (aborted) return CIRCUIT_NEITHER;
    switch (r->transport) {
    case OUT_TIMEOUT:
    case OUT_CONNECT: return CIRCUIT_UNREACHED;
    case OUT_OK:
    case OUT_TLS: return CIRCUIT_REACHED; /* something answered */
    case OUT_BROKEN:
    case OUT_TOO_BIG:
        /* A status line came: Alibaba is there. A connection reset with
         * nothing read proves nothing either way. */
        return r->http_status > 0 ? CIRCUIT_REACHED : CIRCUIT_NEITHER;
    case OUT_OTHER:
    case OUT_CIRCUIT: return CIRCUIT_NEITHER;
    }
    return CIRCUIT_NEITHER;
}

static void circuit_note(struct outbound *ob, enum circuit_event ev, uint64_t now,
                         const char *action, const char *error)
{
    g_metrics.alibaba_circuit_state = (uint64_t)ob->circuit.state;
    if (ev == CIRCUIT_EV_NONE) return;
    char retry[24], failures[24], open_for[24], refused[24];
    snprintf(retry, sizeof retry, "%llu", (unsigned long long)circuit_retry_ms(&ob->circuit, now));
    snprintf(failures, sizeof failures, "%ld", ob->opts.circuit_failures);
    snprintf(open_for, sizeof open_for, "%llu", (unsigned long long)(now - ob->circuit.opened_at));
    snprintf(refused, sizeof refused, "%llu", (unsigned long long)ob->short_circuited);
    switch (ev) {
    case CIRCUIT_EV_OPENED:
        g_metrics.alibaba_circuit_opens++;
        ob->short_circuited = 0;
        log_kv(LOGL_WARN,
               "Alibaba unreachable: circuit opened, calls are refused until a probe "
               "reaches it",
               "CONSECUTIVE_FAILURES", failures, "PROBE_IN_MS", retry, "ACTION", action,
               "LAST_ERROR", error, NULL);
        break;
    case CIRCUIT_EV_REOPENED:
        log_kv(LOGL_WARN, "Alibaba still unreachable: the probe failed, circuit open again",
               "PROBE_IN_MS", retry, "OPEN_FOR_MS", open_for, "CALLS_REFUSED", refused, "ACTION",
               action, "LAST_ERROR", error, NULL);
        break;
    case CIRCUIT_EV_CLOSED:
        log_kv(LOGL_WARN, "Alibaba reachable again: circuit closed", "OPEN_FOR_MS", open_for,
               "CALLS_REFUSED", refused, "ACTION", action, NULL);
        break;
    case CIRCUIT_EV_NONE: break;
    }
}

static void call_finish(struct outbound *ob, struct out_call *c, CURLcode rc)
{
    if (c->easy) {
        for (struct out_call **pp = &ob->rhead; *pp; pp = &(*pp)->next)
            if (*pp == c) {
                *pp = c->next;
                break;
            }
        c->next = NULL;
        ob->running--;
    }
    struct out_result r = {0};
    long status = 0;
    if (c->easy) curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status);
    r.transport = classify(rc);
    r.http_status = r.transport == OUT_OK ? status : 0;
    r.body = c->body.p ? c->body.p : "";
    r.body_len = c->body.len;
    r.error = rc == CURLE_OK ? NULL : (c->errbuf[0] ? c->errbuf : curl_easy_strerror(rc));
    r.seconds = (double)(uv_now(ob->loop) - c->started) / 1000.0;
    if (r.transport == OUT_OK) r.parsed = alibaba_reply_parse(r.body, r.body_len, &r.reply) == 0;
    int a = action_index(c->action);
    if (c->easy) {
        int st = r.http_status >= 100 && r.http_status < 600 ? (int)r.http_status : 0;
        g_metrics.outbound[a][st]++;
        /* Throttling.Api (and Alibaba's other Throttling.* codes) come as a
         * 403 like the access errors; only the Code tells them apart. */
        if (r.parsed && r.reply.code && !strncmp(r.reply.code, "Throttling", 10))
            g_metrics.outbound_throttled[a]++;
        /* Reused only after a complete, well-framed answer below 500 that is
         * Alibaba's JSON: a 5xx may come from a proxy in trouble, and a body
         * that is not the envelope says the framing cannot be trusted. */
        settle_connection(ob, c->easy, r.transport == OUT_OK && r.parsed && r.http_status < 500);
        uint64_t now = now_ms();
        bool aborted = rc == CURLE_ABORTED_BY_CALLBACK;
        enum circuit_event ev =
            circuit_record(&ob->circuit, now, c->probe, circuit_outcome_of(&r, aborted), jitter());
        circuit_note(ob, ev, now, c->action, r.error);
        r.outage = (r.transport == OUT_TIMEOUT || r.transport == OUT_CONNECT) &&
                   ob->circuit.state != CIRCUIT_CLOSED;
    } else if (c->probe) {
        /* The probe could not even be built: no evidence, let another go. */
        circuit_record(&ob->circuit, now_ms(), true, CIRCUIT_NEITHER, 0.5);
    }
    if (c->easy) {
        curl_multi_remove_handle(ob->multi, c->easy);
        curl_easy_cleanup(c->easy);
        c->easy = NULL;
    }
    curl_slist_free_all(c->headers);
    c->headers = NULL;
    free(c->url);
    c->url = NULL;
    free(c->query);
    c->query = NULL;
    /* The body is released before the callback returns: copy what is kept. */
    struct strbuf body = c->body;
    memset(&c->body, 0, sizeof c->body);
    c->done(c, &r);
    alibaba_reply_free(&r.reply);
    strbuf_free(&body);
}

/* A call the circuit refuses: answered without being made (nothing of it was
 * built yet). */
static void call_refuse(struct outbound *ob, struct out_call *c)
{
    struct out_result r = {
        .transport = OUT_CIRCUIT,
        .body = "",
        .error = "Alibaba was unreachable lately: the call was not made (circuit open)",
        .outage = true,
    };
    g_metrics.alibaba_calls_short_circuited++;
    ob->short_circuited++;
    c->done(c, &r);
}

static void check_multi_info(struct outbound *ob)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(ob->multi, &left))) {
        if (m->msg != CURLMSG_DONE) continue;
        struct out_call *c = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&c);
        call_finish(ob, c, m->data.result);
    }
}

static void on_sock(uv_poll_t *h, int status, int events)
{
    struct sock_ctx *s = (struct sock_ctx *)h;
    int flags = 0;
    if (status < 0) flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
    int running;
    curl_multi_socket_action(s->ob->multi, s->fd, flags, &running);
    check_multi_info(s->ob);
}

static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    struct outbound *ob = userp;
    struct sock_ctx *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            if (s->prev)
                s->prev->next = s->next;
            else
                ob->socks = s->next;
            if (s->next) s->next->prev = s->prev;
            /* uv_poll_stop() unregisters the descriptor at once, so curl may
             * close it and reuse the number for a new socket right away. */
            uv_poll_stop(&s->poll);
            uv_close((uv_handle_t *)&s->poll, sock_closed);
            curl_multi_assign(ob->multi, fd, NULL);
        }
        return 0;
    }
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s || uv_poll_init_socket(ob->loop, &s->poll, fd) != 0) {
            free(s);
            return -1;
        }
        s->ob = ob;
        s->fd = fd;
        s->next = ob->socks;
        if (s->next) s->next->prev = s;
        ob->socks = s;
        ob->open_handles++;
        curl_multi_assign(ob->multi, fd, s);
    }
    idle_forget(ob, fd); /* a transfer uses it */
    int events = 0;
    if (what == CURL_POLL_IN || what == CURL_POLL_INOUT) events |= UV_READABLE;
    if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT) events |= UV_WRITABLE;
    uv_poll_start(&s->poll, events, on_sock);
    return 0;
}

static void on_curl_timer(uv_timer_t *t)
{
    struct outbound *ob = t->data;
    int running;
    curl_multi_socket_action(ob->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_multi_info(ob);
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    struct outbound *ob = userp;
    if (timeout_ms < 0)
        uv_timer_stop(&ob->curl_timer);
    else
        uv_timer_start(&ob->curl_timer, on_curl_timer, timeout_ms ? (uint64_t)timeout_ms : 1, 0);
    return 0;
}

static size_t write_cb(char *data, size_t size, size_t n, void *userp)
{
    struct out_call *c = userp;
    size_t len = size * n;
    if (c->body.len + len > OUT_MAX_BODY) return 0; /* CURLE_WRITE_ERROR */
    strbuf_add(&c->body, data, len);
    return c->body.oom ? 0 : len;
}

/* Builds the signed request and hands it to curl. */
static void call_start(struct outbound *ob, struct out_call *c)
{
    CURLcode rc = CURLE_OUT_OF_MEMORY;
    c->started = uv_now(ob->loop);
    c->errbuf[0] = '\0';
    char nonce[33], date[32], body_sha[SHA256_HEX_LEN + 1];
    uint8_t raw[16], d[SHA256_LEN];
    if (RAND_bytes(raw, sizeof raw) != 1 || alibaba_date(time(NULL), date) != 0) goto fail;
    crypto_hex(raw, sizeof raw, nonce);
    crypto_sha256("", 0, d); /* the body is empty: the parameters are in the query */
    crypto_hex(d, sizeof d, body_sha);
    c->query = alibaba_canonical_query(c->params, c->nparams);
    if (!c->query) goto fail;
    size_t ulen = strlen(ob->endpoint) + strlen(c->query) + 4;
    c->url = malloc(ulen);
    if (!c->url) goto fail;
    snprintf(c->url, ulen, "%s/?%s", ob->endpoint, c->query);

    /* Every header the request carries, in one table: this is what is signed
     * and what is sent. No Content-Type: the body is empty, and Alibaba's own
     * client sends none then. */
    const struct kv headers[] = {
        {"Host", ob->host},
        {"x-acs-action", c->action},
        {"x-acs-version", ALIBABA_API_VERSION},
        {"x-acs-date", date},
        {"x-acs-signature-nonce", nonce},
        {"x-acs-content-sha256", body_sha},
        {"Accept", "application/json"},
        {"User-Agent", "idv-callbackd"},
    };
    const size_t nh = sizeof headers / sizeof headers[0];
    struct alibaba_signed sig;
    if (alibaba_sign(ob->key_id, ob->secret, "POST", "/", c->query, headers, nh, body_sha, &sig) !=
        0)
        goto fail;
    struct curl_slist *hl = NULL;
    char h[700];
    for (size_t i = 0; i <= nh + 2; i++) {
        if (i < nh)
            snprintf(h, sizeof h, "%s: %s", headers[i].k, headers[i].v);
        else if (i == nh)
            snprintf(h, sizeof h, "Authorization: %s", sig.authorization);
        else if (i == nh + 1)
            /* "Name:" with no value removes a header curl would add itself:
             * its Content-Type for a POST (unsigned, and not what Alibaba's
             * client sends) and its Expect. */
            snprintf(h, sizeof h, "Content-Type:");
        else
            snprintf(h, sizeof h, "Expect:");
        struct curl_slist *t = curl_slist_append(hl, h);
        if (!t) {
            curl_slist_free_all(hl);
            goto fail;
        }
        hl = t;
    }
    c->headers = hl;

    CURL *e = curl_easy_init();
    if (!e) goto fail;
    c->easy = e;
    curl_easy_setopt(e, CURLOPT_URL, c->url);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, 0L);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(e, CURLOPT_PRIVATE, c);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->errbuf);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(e, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    if (ob->ca_file) curl_easy_setopt(e, CURLOPT_CAINFO, ob->ca_file);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, ob->opts.connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, ob->opts.timeout_ms);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    /* Every socket curl opens is closed through close_socket, which forgets
     * it as an idle connection first (a connection keeps this callback for
     * its whole life, in the cache too). */
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, close_socket);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, ob);
    c->next = ob->rhead;
    ob->rhead = c;
    ob->running++;
    idle_sweep(ob);
    if (curl_multi_add_handle(ob->multi, e) != CURLM_OK) goto fail;
    return;

fail:
    snprintf(c->errbuf, sizeof c->errbuf, "cannot build the request");
    call_finish(ob, c, rc);
}

static bool qps_allows(struct outbound *ob, uint64_t now, uint64_t *wait_ms)
{
    /* The oldest of the last qps starts must be a second old. */
    if (ob->nstarts < (size_t)ob->opts.qps) return true;
    uint64_t oldest = ob->starts[ob->istart];
    if (now >= oldest + 1000) return true;
    *wait_ms = oldest + 1000 - now + 1;
    return false;
}

static void qps_record(struct outbound *ob, uint64_t now)
{
    if (ob->nstarts < (size_t)ob->opts.qps) {
        ob->starts[(ob->istart + ob->nstarts) % (size_t)ob->opts.qps] = now;
        ob->nstarts++;
    } else {
        ob->starts[ob->istart] = now;
        ob->istart = (ob->istart + 1) % (size_t)ob->opts.qps;
    }
}

static void on_qps_timer(uv_timer_t *t);

static void pump(struct outbound *ob)
{
    /* The real time, not the loop's cached one: a start recorded early would
     * let the next one through early. */
    uint64_t now = now_ms(), wait = 0;
    while (ob->qhead && !ob->closing) {
        /* A call the circuit refuses is answered at once, without waiting
         * for a qps slot it would not use. */
        enum circuit_verdict v = circuit_peek(&ob->circuit, now);
        if (v != CIRCUIT_REFUSE && !qps_allows(ob, now, &wait)) {
            if (!uv_is_active((uv_handle_t *)&ob->qps_timer))
                uv_timer_start(&ob->qps_timer, on_qps_timer, wait, 0);
            return;
        }
        struct out_call *c = ob->qhead;
        ob->qhead = c->next;
        if (!ob->qhead) ob->qtail = NULL;
        ob->waiting--;
        c->next = NULL;
        if (v == CIRCUIT_REFUSE) {
            call_refuse(ob, c);
            continue;
        }
        c->probe = circuit_admit(&ob->circuit, now) == CIRCUIT_PROBE;
        if (c->probe) g_metrics.alibaba_circuit_state = (uint64_t)ob->circuit.state;
        qps_record(ob, now);
        call_start(ob, c);
    }
}

static void on_qps_timer(uv_timer_t *t)
{
    struct outbound *ob = t->data;
    pump(ob);
    int running;
    curl_multi_socket_action(ob->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_multi_info(ob);
}

void outbound_submit(struct outbound *ob, struct out_call *call)
{
    call->ob = ob;
    call->next = NULL;
    memset(&call->body, 0, sizeof call->body);
    call->easy = NULL;
    call->headers = NULL;
    call->url = NULL;
    call->query = NULL;
    call->probe = false;
    if (ob->qtail)
        ob->qtail->next = call;
    else
        ob->qhead = call;
    ob->qtail = call;
    ob->waiting++;
    /* Started from a zero timer: done never runs inside this call. */
    if (!uv_is_active((uv_handle_t *)&ob->qps_timer))
        uv_timer_start(&ob->qps_timer, on_qps_timer, 0, 0);
}

enum out_gate outbound_gate(struct outbound *ob, uint64_t *retry_ms)
{
    uint64_t now = now_ms();
    enum circuit_verdict v = circuit_peek(&ob->circuit, now);
    if (retry_ms) *retry_ms = v == CIRCUIT_REFUSE ? circuit_retry_ms(&ob->circuit, now) : 0;
    return v == CIRCUIT_GO ? OUT_GATE_CLOSED : v == CIRCUIT_PROBE ? OUT_GATE_PROBE : OUT_GATE_OPEN;
}

void outbound_counts(const struct outbound *ob, size_t *waiting, size_t *running)
{
    *waiting = ob->waiting;
    *running = ob->running;
}

int outbound_new(struct outbound **out, uv_loop_t *loop, const struct outbound_opts *opts)
{
    if (strncmp(opts->endpoint, "https://", 8) != 0 || opts->qps < 1) return IDV_EINVAL;
    struct outbound *ob = calloc(1, sizeof *ob);
    if (!ob) return IDV_ENOMEM;
    ob->loop = loop;
    ob->opts = *opts;
    ob->endpoint = strdup(opts->endpoint);
    const char *h = opts->endpoint + 8;
    size_t hl = strcspn(h, "/");
    ob->host = strndup(h, hl);
    ob->key_id = strdup(opts->access_key_id ? opts->access_key_id : "");
    ob->secret = strdup(opts->access_key_secret ? opts->access_key_secret : "");
    ob->ca_file = opts->ca_file ? strdup(opts->ca_file) : NULL;
    ob->starts = calloc((size_t)opts->qps, sizeof *ob->starts);
    ob->multi = curl_multi_init();
    if (!ob->endpoint || !ob->host || !ob->key_id || !ob->secret || !ob->starts || !ob->multi ||
        (opts->ca_file && !ob->ca_file)) {
        ob->closing = true;
        ob->open_handles = 1;
        ob_unref(ob);
        return IDV_ENOMEM;
    }
    ob->endpoint[8 + hl] = '\0'; /* scheme and authority only */
    struct circuit_opts co = {
        .failures = opts->circuit_failures > 0 ? (unsigned)opts->circuit_failures : 5,
        .open_ms = opts->circuit_open_ms > 0 ? (uint64_t)opts->circuit_open_ms : 1000,
        .max_open_ms = opts->circuit_max_open_ms > 0 ? (uint64_t)opts->circuit_max_open_ms : 30000,
    };
    circuit_init(&ob->circuit, &co);
    g_metrics.alibaba_circuit_state = CIRCUIT_CLOSED;
    curl_multi_setopt(ob->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(ob->multi, CURLMOPT_SOCKETDATA, ob);
    curl_multi_setopt(ob->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(ob->multi, CURLMOPT_TIMERDATA, ob);
    curl_multi_setopt(ob->multi, CURLMOPT_MAXCONNECTS, (long)OUT_MAX_CONNS);
    uv_timer_init(loop, &ob->curl_timer);
    uv_timer_init(loop, &ob->qps_timer);
    ob->curl_timer.data = ob;
    ob->qps_timer.data = ob;
    ob->open_handles = 2;
    *out = ob;
    return 0;
}

void outbound_close(struct outbound *ob, void (*cb)(void *), void *arg)
{
    ob->closing = true;
    ob->close_cb = cb;
    ob->close_arg = arg;
    while (ob->qhead) {
        struct out_call *c = ob->qhead;
        ob->qhead = c->next;
        ob->waiting--;
        snprintf(c->errbuf, sizeof c->errbuf, "shutting down");
        call_finish(ob, c, CURLE_ABORTED_BY_CALLBACK);
    }
    ob->qtail = NULL;
    /* Calls in flight: removing their handles makes curl release sockets. */
    while (ob->rhead) {
        snprintf(ob->rhead->errbuf, sizeof ob->rhead->errbuf, "shutting down");
        call_finish(ob, ob->rhead, CURLE_ABORTED_BY_CALLBACK);
    }
    uv_timer_stop(&ob->curl_timer);
    uv_timer_stop(&ob->qps_timer);
    uv_close((uv_handle_t *)&ob->curl_timer, handle_closed);
    uv_close((uv_handle_t *)&ob->qps_timer, handle_closed);
}
