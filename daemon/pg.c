#include "pg.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define PG_MAX_INFLIGHT   512
#define PG_BACKOFF_MIN_MS 100
#define PG_BACKOFF_MAX_MS 5000

enum pgc_state { PGC_DOWN = 0, PGC_RESOLVING, PGC_CONNECTING, PGC_SETUP, PGC_READY, PGC_CLOSED };
static const char *const pgc_state_names[] = {"down",  "resolving", "connecting",
                                              "setup", "ready",     "closed"};

enum unit_kind { U_USER = 0, U_SESSION, U_VERSION, U_PREPARE };

struct pg_unit {
    struct pg_query *q; /* NULL once answered by a timeout, or for setup units */
    PGresult *res;
    int err;
    uint8_t kind;
    uint64_t sent_at;
};

struct pg_conn;
/* A poll handle lives in its own allocation: during connect libpq may replace
 * the socket, and a closing handle must outlive the connection's next one. */
struct pg_poll {
    uv_poll_t h;
    struct pg_conn *c;
};

struct pg_conn {
    struct pg_pool *pool;
    int idx;
    enum pgc_state state;
    PGconn *pq;
    struct pg_poll *poll;
    int poll_events;
    uv_timer_t timer; /* back-off while down, deadline while connecting */
    uv_getaddrinfo_t gai;
    bool gai_active;
    int resolving; /* index of the host being resolved */
    char hostaddr[PG_MAX_HOSTS][INET6_ADDRSTRLEN];
    bool addr_ok[PG_MAX_HOSTS]; /* false: the name did not resolve this time */
    /* The entry of the host list where the next attempt starts. It moves past
     * a host that failed the attempt (deadline, standby, read-only), so that
     * the next attempt does not wait on that host first. */
    size_t start;
    size_t order[PG_MAX_HOSTS]; /* entries handed to libpq by this attempt, in order */
    size_t norder;
    /* libpq's strings for the entry being tried: when PQconnectPoll moves on
     * to another host they change, and the connect deadline starts again. */
    const char *cur_host, *cur_port;
    bool doomed; /* on a read-only server: dropped once the current read ends */
    uint64_t backoff_ms;
    bool announced_down;
    struct pg_unit ring[PG_MAX_INFLIGHT];
    unsigned head, count;
};

struct pg_pool {
    uv_loop_t *loop;
    struct pg_pool_opts opts;
    char **kw, **val; /* parsed connection options (NULL-terminated) */
    size_t nkw;
    /* The host list, split: host, hostaddr and port are parallel lists of
     * nentries entries (port may also be one for all), rotated together. */
    char *hosts[PG_MAX_HOSTS];
    size_t nhosts;
    char *addrs[PG_MAX_HOSTS]; /* hostaddr as given */
    size_t naddrs;
    char *ports[PG_MAX_HOSTS];
    size_t nports;
    size_t nentries;
    bool resolve;        /* no hostaddr given: host names are resolved here */
    uint64_t connect_ms; /* deadline of one host's connect, and of the setup */
    struct pg_conn *conns;
    struct pg_query *qhead, *qtail;
    size_t queued;
    uv_timer_t tick;
    int open_handles;
    bool closing, in_dispatch;
    void (*close_cb)(void *);
    void *close_arg;
    void (*idle_cb)(void *);
    void *idle_arg;
    uint64_t reconnects, failures, timeouts, lost, failovers;
    char host[160]; /* host:port of the primary the last connection came up on */
    char timeout_str[24];
};

static void conn_connect(struct pg_conn *c);
static void conn_lost(struct pg_conn *c, const char *why);
static void pool_dispatch(struct pg_pool *pool);
static void conn_poll_set(struct pg_conn *c, int events);
static void conn_arm_deadline(struct pg_conn *c);
static void conn_track_host(struct pg_conn *c);

const char *pg_sqlstate(const PGresult *res)
{
    const char *s = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return s ? s : "";
}

static void set_state(struct pg_conn *c, enum pgc_state to)
{
    /* Allowed transitions: the connection cycle, and anything to down/closed. */
    static const unsigned char ok[6][6] = {
        /* from down */ {0, 1, 1, 0, 0, 1},
        /* from resolving */ {1, 0, 1, 0, 0, 1},
        /* from connecting */ {1, 0, 0, 1, 0, 1},
        /* from setup */ {1, 0, 0, 0, 1, 1},
        /* from ready */ {1, 0, 0, 0, 0, 1},
        /* from closed */ {0, 0, 0, 0, 0, 1},
    };
    if (!ok[c->state][to]) {
        log_kv(LOGL_ERROR, "impossible PostgreSQL connection state change", "FROM",
               pgc_state_names[c->state], "TO", pgc_state_names[to], NULL);
        return;
    }
    c->state = to;
}

/* Drops one handle or request reference; the last one after pg_pool_close()
 * frees the pool. */
static void pool_unref(struct pg_pool *pool)
{
    if (--pool->open_handles == 0 && pool->closing) {
        void (*cb)(void *) = pool->close_cb;
        void *arg = pool->close_arg;
        for (size_t i = 0; i < pool->nkw; i++) {
            free(pool->kw[i]);
            free(pool->val[i]);
        }
        free(pool->kw);
        free(pool->val);
        for (size_t i = 0; i < pool->nhosts; i++) free(pool->hosts[i]);
        for (size_t i = 0; i < pool->naddrs; i++) free(pool->addrs[i]);
        for (size_t i = 0; i < pool->nports; i++) free(pool->ports[i]);
        free(pool->conns);
        free(pool);
        if (cb) cb(arg);
    }
}

static void handle_closed(uv_handle_t *h)
{
    pool_unref(h->data);
}

static void poll_closed(uv_handle_t *h)
{
    struct pg_poll *pp = (struct pg_poll *)h;
    struct pg_pool *pool = pp->c->pool;
    free(pp);
    pool_unref(pool);
}

static void conn_poll_drop(struct pg_conn *c)
{
    if (!c->poll) return;
    uv_poll_stop(&c->poll->h);
    uv_close((uv_handle_t *)&c->poll->h, poll_closed);
    c->poll = NULL;
    c->poll_events = 0;
}

static uint64_t jitter(uint64_t ms)
{
    /* +-25%: spread reconnects of many instances after a shared outage. */
    uint64_t span = ms / 2 + 1;
    return ms - ms / 4 + (uint64_t)rand() % span;
}

static void conn_retry_cb(uv_timer_t *t)
{
    struct pg_conn *c = t->data;
    if (c->state == PGC_DOWN && !c->pool->closing) conn_connect(c);
}

/* Tears the libpq connection down and schedules the next attempt. */
static void conn_down(struct pg_conn *c, const char *why)
{
    struct pg_pool *pool = c->pool;
    bool was_ready = c->state == PGC_READY;
    conn_poll_drop(c);
    if (c->pq) {
        PQfinish(c->pq);
        c->pq = NULL;
    }
    uv_timer_stop(&c->timer);
    if (c->state != PGC_DOWN) set_state(c, PGC_DOWN);
    c->doomed = false;
    c->cur_host = c->cur_port = NULL;
    if (pool->closing) return;
    if (was_ready || !c->announced_down) {
        char idx[12];
        snprintf(idx, sizeof idx, "%d", c->idx);
        log_kv(was_ready ? LOGL_WARN : LOGL_INFO, "PostgreSQL connection down", "DB_CONN", idx,
               "REASON", why, NULL);
        c->announced_down = true;
    } else {
        char idx[12];
        snprintf(idx, sizeof idx, "%d", c->idx);
        log_kv(LOGL_DEBUG, "PostgreSQL connection attempt failed", "DB_CONN", idx, "REASON", why,
               NULL);
    }
    pool->failures++;
    c->backoff_ms = c->backoff_ms ? c->backoff_ms * 2 : PG_BACKOFF_MIN_MS;
    if (c->backoff_ms > PG_BACKOFF_MAX_MS) c->backoff_ms = PG_BACKOFF_MAX_MS;
    uv_timer_start(&c->timer, conn_retry_cb, jitter(c->backoff_ms), 0);
}

/* Fails every unit in flight: none of them saw its sync, so their outcome is
 * unknown and must never be reported as committed. */
static void conn_fail_inflight(struct pg_conn *c)
{
    while (c->count > 0) {
        struct pg_unit u = c->ring[c->head];
        c->ring[c->head].q = NULL;
        c->ring[c->head].res = NULL;
        c->head = (c->head + 1) % PG_MAX_INFLIGHT;
        c->count--;
        if (u.res) PQclear(u.res);
        if (u.q) {
            c->pool->lost++;
            u.q->done(u.q, NULL, IDV_EDBLOST);
        }
    }
}

static void conn_lost(struct pg_conn *c, const char *why)
{
    char msg[256];
    snprintf(msg, sizeof msg, "%s", why);
    /* Trim libpq's trailing newline. */
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == ' ')) msg[--n] = '\0';
    conn_down(c, msg);
    conn_fail_inflight(c);
    pool_dispatch(c->pool);
}

static void conn_flush(struct pg_conn *c)
{
    int r = PQflush(c->pq);
    if (r < 0) {
        conn_lost(c, PQerrorMessage(c->pq));
        return;
    }
    int want = UV_READABLE | (r == 1 ? UV_WRITABLE : 0);
    if (want != c->poll_events) conn_poll_set(c, want);
}

static bool ring_push(struct pg_conn *c, struct pg_query *q, uint8_t kind)
{
    if (c->count == PG_MAX_INFLIGHT) return false;
    struct pg_unit *u = &c->ring[(c->head + c->count) % PG_MAX_INFLIGHT];
    u->q = q;
    u->res = NULL;
    u->err = 0;
    u->kind = kind;
    u->sent_at = uv_now(c->pool->loop);
    c->count++;
    return true;
}

/* ---- the host list -------------------------------------------------------- */

/* The port of entry k as written in the connection string (NULL when none is
 * given: libpq's default). */
static const char *entry_port(const struct pg_pool *pool, size_t k)
{
    if (pool->nports == pool->nentries) return pool->ports[k];
    if (pool->nports == 1) return pool->ports[0];
    return NULL;
}

/* The entry libpq is on now (connecting, or connected), or -1. libpq has no
 * call for its host index: PQhost() gives the host as written (or the hostaddr
 * when no host is given) and PQport() the port, which identify the entry. */
static int conn_current_entry(const struct pg_conn *c)
{
    const struct pg_pool *pool = c->pool;
    const char *h = c->pq ? PQhost(c->pq) : NULL, *p = c->pq ? PQport(c->pq) : NULL;
    if (!h) return -1;
    for (size_t i = 0; i < c->norder; i++) {
        size_t k = c->order[i];
        const char *eh = pool->nhosts ? pool->hosts[k] : pool->addrs[k];
        const char *ep = entry_port(pool, k);
        if (strcmp(h, eh) != 0) continue;
        if (ep && *ep && (!p || strcmp(p, ep) != 0)) continue;
        return (int)k;
    }
    return -1;
}

/* The next attempt starts at the host after the one this connection is on (or
 * was trying): that host hung, is a standby, or is read-only. */
static void conn_skip_current(struct pg_conn *c)
{
    size_t n = c->pool->nentries;
    if (n < 2) return;
    int k = conn_current_entry(c);
    c->start = k >= 0 ? ((size_t)k + 1) % n : (c->start + 1) % n;
}

/* "host:port" of the connection (IPv6 addresses in brackets). */
static void conn_host_port(const struct pg_conn *c, char *out, size_t size)
{
    const char *h = PQhost(c->pq), *p = PQport(c->pq);
    if (!h) h = "";
    if (!p || !*p) p = "5432";
    bool v6 = strchr(h, ':') && h[0] != '/' && h[0] != '@';
    snprintf(out, size, v6 ? "[%s]:%s" : "%s:%s", h, p);
}

/* ---- connection setup: session settings, schema version, statements ---- */

static void setup_send_session(struct pg_conn *c)
{
    const char *params[1] = {c->pool->timeout_str};
    if (!PQsendQueryParams(c->pq,
                           "SELECT set_config('synchronous_commit', 'on', false),"
                           " set_config('statement_timeout', $1, false),"
                           " to_regclass('idv.schema_migrations') IS NOT NULL,"
                           " pg_is_in_recovery(),"
                           " current_setting('transaction_read_only') = 'on'",
                           1, NULL, params, NULL, NULL, 0) ||
        !PQpipelineSync(c->pq) || !ring_push(c, NULL, U_SESSION)) {
        conn_lost(c, PQerrorMessage(c->pq));
        return;
    }
    conn_flush(c);
}

static void setup_step(struct pg_conn *c, uint8_t kind, PGresult *res, int err)
{
    struct pg_pool *pool = c->pool;
    char why[200];
    if (err) {
        snprintf(why, sizeof why, "setup failed: %s", res ? PQresultErrorMessage(res) : "");
        if (res) PQclear(res);
        conn_lost(c, why);
        return;
    }
    switch (kind) {
    case U_SESSION: {
        bool one = res && PQntuples(res) == 1 && PQnfields(res) == 5;
        bool has_table = one && PQgetvalue(res, 0, 2)[0] == 't';
        bool standby = one && PQgetvalue(res, 0, 3)[0] == 't';
        bool read_only = one && PQgetvalue(res, 0, 4)[0] == 't';
        PQclear(res);
        /* target_session_attrs=read-write makes libpq skip such a server, but
         * the connection string may not say so: the daemon only writes, so a
         * standby is never a place to stay, whatever the string says. */
        if (standby || read_only) {
            conn_skip_current(c);
            conn_lost(c, standby ? "the server is a standby (in recovery), not the primary"
                                 : "the session is read-only (default_transaction_read_only)");
            return;
        }
        if (!has_table) {
            conn_lost(c, "schema idv is not migrated (run: idv-callbackd migrate)");
            return;
        }
        if (!PQsendQueryParams(c->pq, "SELECT coalesce(max(version), 0) FROM idv.schema_migrations",
                               0, NULL, NULL, NULL, NULL, 0) ||
            !PQpipelineSync(c->pq) || !ring_push(c, NULL, U_VERSION)) {
            conn_lost(c, PQerrorMessage(c->pq));
            return;
        }
        conn_flush(c);
        return;
    }
    case U_VERSION: {
        long v = res && PQntuples(res) == 1 ? strtol(PQgetvalue(res, 0, 0), NULL, 10) : 0;
        PQclear(res);
        if (v < pool->opts.schema_version) {
            snprintf(why, sizeof why,
                     "schema version %ld is older than %d (run: idv-callbackd migrate)", v,
                     pool->opts.schema_version);
            conn_lost(c, why);
            return;
        }
        for (size_t i = 0; i < pool->opts.nstmts; i++)
            if (!PQsendPrepare(c->pq, pool->opts.stmts[i].name, pool->opts.stmts[i].sql, 0, NULL)) {
                conn_lost(c, PQerrorMessage(c->pq));
                return;
            }
        if (!PQpipelineSync(c->pq) || !ring_push(c, NULL, U_PREPARE)) {
            conn_lost(c, PQerrorMessage(c->pq));
            return;
        }
        conn_flush(c);
        return;
    }
    case U_PREPARE: {
        if (res) PQclear(res);
        uv_timer_stop(&c->timer);
        set_state(c, PGC_READY);
        c->backoff_ms = 0;
        c->announced_down = false;
        char hp[sizeof pool->host], idx[12];
        conn_host_port(c, hp, sizeof hp);
        snprintf(idx, sizeof idx, "%d", c->idx);
        log_kv(LOGL_INFO, "PostgreSQL connection ready", "DB_CONN", idx, "DB_HOST", hp, NULL);
        if (pool->host[0] && strcmp(pool->host, hp) != 0) {
            /* Every connection to the old primary is gone or going (a primary
             * that failed does not come back writable on its own), so the
             * first connection up elsewhere marks the switch. */
            pool->failovers++;
            log_kv(LOGL_WARN, "PostgreSQL primary changed", "DB_OLD_HOST", pool->host, "DB_HOST",
                   hp, "DB_CONN", idx, NULL);
        }
        snprintf(pool->host, sizeof pool->host, "%s", hp);
        /* The database is reachable again: connections waiting out their
         * back-off (up to PG_BACKOFF_MAX_MS after a long outage or a
         * failover) try now instead, so that the pool is whole soon after the
         * first connection is. */
        for (int i = 0; i < pool->opts.size; i++) {
            struct pg_conn *o = &pool->conns[i];
            if (o == c || o->state != PGC_DOWN || o->backoff_ms <= PG_BACKOFF_MIN_MS) continue;
            o->backoff_ms = 0;
            uv_timer_start(&o->timer, conn_retry_cb, jitter(PG_BACKOFF_MIN_MS), 0);
        }
        pool_dispatch(pool);
        return;
    }
    }
}

/* ---- reading results ---------------------------------------------------- */

static void unit_complete(struct pg_conn *c)
{
    struct pg_unit u = c->ring[c->head];
    c->ring[c->head].q = NULL;
    c->ring[c->head].res = NULL;
    c->head = (c->head + 1) % PG_MAX_INFLIGHT;
    c->count--;
    if (u.kind != U_USER) {
        setup_step(c, u.kind, u.res, u.err);
        return;
    }
    if (u.q)
        u.q->done(u.q, u.res, u.err);
    else if (u.res)
        PQclear(u.res);
}

static void conn_read(struct pg_conn *c)
{
    if (!PQconsumeInput(c->pq)) {
        conn_lost(c, PQerrorMessage(c->pq));
        return;
    }
    int nulls = 0;
    /* Bounded by the units in flight: in pipeline mode PQgetResult returns NULL
     * between queries, and forever once nothing is pending. */
    while (c->count > 0 && (c->state == PGC_SETUP || c->state == PGC_READY) && !PQisBusy(c->pq)) {
        PGresult *r = PQgetResult(c->pq);
        if (!r) {
            if (++nulls > 1) break;
            continue;
        }
        nulls = 0;
        struct pg_unit *u = &c->ring[c->head];
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(r);
            unit_complete(c);
            /* Units behind this one were sent to a read-only server too: they
             * are failed with the connection rather than answered one by one. */
            if (c->doomed) break;
            continue;
        }
        bool is_err =
            st == PGRES_FATAL_ERROR || st == PGRES_PIPELINE_ABORTED || st == PGRES_BAD_RESPONSE;
        /* 25006 read_only_sql_transaction: this server is no longer (or never
         * was) the primary. The unit gets the error (it did not commit), and the
         * connection goes once the unit is answered. */
        if (st == PGRES_FATAL_ERROR && !strcmp(pg_sqlstate(r), "25006")) c->doomed = true;
        if (is_err && !u->err) {
            /* Keep the error (it has the SQLSTATE), drop an earlier success. */
            if (u->res) PQclear(u->res);
            u->res = r;
            u->err = IDV_EDB;
        } else if (!u->res) {
            u->res = r;
        } else {
            PQclear(r);
        }
    }
    if (c->doomed && (c->state == PGC_SETUP || c->state == PGC_READY)) {
        conn_skip_current(c);
        conn_lost(c, "the server is read-only (SQLSTATE 25006), not the primary");
        return;
    }
    if (c->pq && PQstatus(c->pq) == CONNECTION_BAD) conn_lost(c, PQerrorMessage(c->pq));
}

static void conn_io(uv_poll_t *h, int status, int events);

static void conn_poll_set(struct pg_conn *c, int events)
{
    if (!c->poll) return;
    c->poll_events = events;
    uv_poll_start(&c->poll->h, events, conn_io);
}

/* Creates a fresh poll handle for PQsocket(): libpq may have replaced the
 * socket (another host, or a retry without TLS), even under the same number. */
static int conn_poll_new(struct pg_conn *c, int events)
{
    conn_poll_drop(c);
    int fd = PQsocket(c->pq);
    if (fd < 0) return IDV_EIO;
    struct pg_poll *pp = calloc(1, sizeof *pp);
    if (!pp) return IDV_ENOMEM;
    pp->c = c;
    if (uv_poll_init(c->pool->loop, &pp->h, fd) != 0) {
        free(pp);
        return IDV_EIO;
    }
    pp->h.data = c->pool;
    c->pool->open_handles++;
    c->poll = pp;
    conn_poll_set(c, events);
    return 0;
}

static void conn_connected(struct pg_conn *c)
{
    /* The setup queries have the same deadline as a connect. */
    conn_arm_deadline(c);
    if (PQsetnonblocking(c->pq, 1) != 0 || !PQenterPipelineMode(c->pq)) {
        conn_lost(c, PQerrorMessage(c->pq));
        return;
    }
    set_state(c, PGC_SETUP);
    setup_send_session(c);
}

static void conn_connect_poll(struct pg_conn *c)
{
    PostgresPollingStatusType r = PQconnectPoll(c->pq);
    switch (r) {
    case PGRES_POLLING_READING:
    case PGRES_POLLING_WRITING:
        conn_track_host(c);
        if (conn_poll_new(c, r == PGRES_POLLING_READING ? UV_READABLE : UV_WRITABLE) != 0)
            conn_lost(c, "cannot watch the PostgreSQL socket");
        return;
    case PGRES_POLLING_OK:
        if (conn_poll_new(c, UV_READABLE) != 0) {
            conn_lost(c, "cannot watch the PostgreSQL socket");
            return;
        }
        conn_connected(c);
        return;
    default:
        /* libpq tried every host and none would do. */
        c->start = c->pool->nentries ? (c->start + 1) % c->pool->nentries : 0;
        conn_lost(c, PQerrorMessage(c->pq));
        return;
    }
}

static void conn_io(uv_poll_t *h, int status, int events)
{
    struct pg_conn *c = ((struct pg_poll *)h)->c;
    /* While connecting, an error on the socket (libuv reports POLLERR as
     * UV_EBADF: a refused connect, for one) is libpq's to read: PQconnectPoll
     * takes SO_ERROR and goes on to the next address or host of the list. */
    if (c->state == PGC_CONNECTING) {
        conn_connect_poll(c);
        return;
    }
    if (status < 0) {
        conn_lost(c, uv_strerror(status));
        return;
    }
    if (events & UV_WRITABLE) {
        conn_flush(c);
        if (c->state != PGC_SETUP && c->state != PGC_READY) return;
    }
    if (events & UV_READABLE) conn_read(c);
}

static void connect_deadline_cb(uv_timer_t *t)
{
    struct pg_conn *c = t->data;
    if (c->state == PGC_RESOLVING) {
        conn_lost(c, "connect deadline passed while resolving host names");
    } else if (c->state == PGC_CONNECTING || c->state == PGC_SETUP) {
        /* libpq's connect_timeout works per host, but only in its blocking
         * calls; here the pool does it: the attempt is abandoned and the next
         * one starts at the host after the one that did not answer (a host
         * that black-holes packets would otherwise hold every attempt). */
        char why[256], hp[160];
        conn_host_port(c, hp, sizeof hp);
        snprintf(why, sizeof why, "connect deadline passed on %s", hp);
        conn_skip_current(c);
        conn_lost(c, why);
    }
}

/* Starts the deadline of one host's connect (or of the setup). */
static void conn_arm_deadline(struct pg_conn *c)
{
    uv_timer_start(&c->timer, connect_deadline_cb, c->pool->connect_ms, 0);
}

/* Called after each PQconnectPoll that goes on: when libpq moved to the next
 * host of the list, that host gets a full deadline of its own. PQhost() and
 * PQport() point into libpq's per-host entries, so a new pointer is a new
 * entry. */
static void conn_track_host(struct pg_conn *c)
{
    const char *h = PQhost(c->pq), *p = PQport(c->pq);
    if (h == c->cur_host && p == c->cur_port) return;
    c->cur_host = h;
    c->cur_port = p;
    conn_arm_deadline(c);
}

static void notice_cb(void *arg, const char *message)
{
    (void)arg;
    log_kv(LOGL_DEBUG, "PostgreSQL notice", "DB_NOTICE", message, NULL);
}

static void list_add(char *list, size_t size, bool first, const char *item)
{
    size_t len = strlen(list);
    snprintf(list + len, size - len, "%s%s", first ? "" : ",", item);
}

/* Starts libpq on the host list rotated to begin at c->start: host, hostaddr
 * (resolved here, or as given) and port stay parallel, so that every host
 * keeps its own port and address whichever comes first. A TCP host whose name
 * did not resolve is left out of this attempt: with an empty hostaddr libpq
 * would resolve it itself, blocking the loop. target_session_attrs and every
 * other option are passed through as written. */
static void conn_start_pq(struct pg_conn *c)
{
    struct pg_pool *pool = c->pool;
    size_t n = pool->nentries;
    bool port_list = n > 1 && pool->nports == n;
    char hostlist[PG_MAX_HOSTS * 256] = "", addrlist[PG_MAX_HOSTS * (INET6_ADDRSTRLEN + 1)] = "",
                                 portlist[PG_MAX_HOSTS * 16] = "";
    c->norder = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k = (i + c->start) % n;
        if (pool->resolve && !c->addr_ok[k]) continue;
        bool first = c->norder == 0;
        if (pool->nhosts) list_add(hostlist, sizeof hostlist, first, pool->hosts[k]);
        list_add(addrlist, sizeof addrlist, first, pool->resolve ? c->hostaddr[k] : pool->addrs[k]);
        if (port_list) list_add(portlist, sizeof portlist, first, pool->ports[k]);
        c->order[c->norder++] = k;
    }
    if (n && !c->norder) {
        conn_lost(c, "no PostgreSQL host name could be resolved");
        return;
    }
    const char *kw[64], *val[64];
    size_t m = 0;
    for (size_t i = 0; i < pool->nkw && m < 59; i++) {
        if (n && (!strcmp(pool->kw[i], "host") || !strcmp(pool->kw[i], "hostaddr"))) continue;
        if (port_list && !strcmp(pool->kw[i], "port")) continue;
        kw[m] = pool->kw[i];
        val[m++] = pool->val[i];
    }
    if (n) {
        if (pool->nhosts) {
            kw[m] = "host";
            val[m++] = hostlist;
        }
        kw[m] = "hostaddr";
        val[m++] = addrlist;
        if (port_list) {
            kw[m] = "port";
            val[m++] = portlist;
        }
    }
    kw[m] = "fallback_application_name";
    val[m++] = pool->opts.application_name ? pool->opts.application_name : "idv-callbackd";
    kw[m] = NULL;
    val[m] = NULL;

    c->pq = PQconnectStartParams(kw, val, 0);
    if (!c->pq) {
        conn_lost(c, "out of memory");
        return;
    }
    if (PQstatus(c->pq) == CONNECTION_BAD) {
        conn_lost(c, PQerrorMessage(c->pq));
        return;
    }
    PQsetNoticeProcessor(c->pq, notice_cb, NULL);
    set_state(c, PGC_CONNECTING);
    conn_track_host(c);
    /* Before the first PQconnectPoll, behave as if it asked for writability. */
    if (conn_poll_new(c, UV_WRITABLE) != 0) conn_lost(c, "cannot watch the PostgreSQL socket");
}

static void resolve_next(struct pg_conn *c);

static void gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct pg_conn *c = req->data;
    struct pg_pool *pool = c->pool;
    c->gai_active = false;
    if (pool->closing) {
        if (res) uv_freeaddrinfo(res);
        pool_unref(pool);
        return;
    }
    pool->open_handles--;
    if (c->state != PGC_RESOLVING) {
        if (res) uv_freeaddrinfo(res);
        return;
    }
    if (status != 0 || !res) {
        /* An unresolvable host is left out of this attempt. */
        c->hostaddr[c->resolving][0] = '\0';
        c->addr_ok[c->resolving] = false;
        char why[256];
        snprintf(why, sizeof why, "cannot resolve %s: %s", pool->hosts[c->resolving],
                 uv_strerror(status));
        log_kv(LOGL_WARN, "PostgreSQL host name not resolved", "REASON", why, NULL);
    } else {
        c->addr_ok[c->resolving] =
            uv_ip_name(res->ai_addr, c->hostaddr[c->resolving], INET6_ADDRSTRLEN) == 0;
        uv_freeaddrinfo(res);
    }
    c->resolving++;
    resolve_next(c);
}

/* Resolves host names off the loop (uv_getaddrinfo runs in the thread pool), so
 * that PQconnectPoll never blocks in getaddrinfo. */
static void resolve_next(struct pg_conn *c)
{
    struct pg_pool *pool = c->pool;
    while ((size_t)c->resolving < pool->nhosts) {
        const char *h = pool->hosts[c->resolving];
        unsigned char tmp[16];
        c->addr_ok[c->resolving] = true;
        if (h[0] == '/' || h[0] == '@' || h[0] == '\0') {
            c->hostaddr[c->resolving][0] = '\0'; /* a Unix socket directory */
        } else if (inet_pton(AF_INET, h, tmp) == 1 || inet_pton(AF_INET6, h, tmp) == 1) {
            snprintf(c->hostaddr[c->resolving], INET6_ADDRSTRLEN, "%s", h);
        } else {
            struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
            c->gai.data = c;
            if (uv_getaddrinfo(pool->loop, &c->gai, gai_cb, h, NULL, &hints) == 0) {
                c->gai_active = true;
                pool->open_handles++;
                return;
            }
            c->hostaddr[c->resolving][0] = '\0';
            c->addr_ok[c->resolving] = false;
        }
        c->resolving++;
    }
    conn_start_pq(c);
}

static void conn_connect(struct pg_conn *c)
{
    struct pg_pool *pool = c->pool;
    if (c->state != PGC_DOWN) return;
    if (c->gai_active) {
        /* A resolution from an abandoned attempt is still running. */
        uv_timer_start(&c->timer, conn_retry_cb, PG_BACKOFF_MIN_MS, 0);
        return;
    }
    pool->reconnects++;
    conn_arm_deadline(c);
    if (pool->resolve && pool->nhosts) {
        set_state(c, PGC_RESOLVING);
        c->resolving = 0;
        resolve_next(c);
    } else {
        conn_start_pq(c);
    }
}

/* ---- the queue ---------------------------------------------------------- */

static bool conn_send(struct pg_conn *c, struct pg_query *q)
{
    if (!PQsendQueryPrepared(c->pq, q->stmt, q->nparams, q->values, NULL, NULL, 0) ||
        !PQpipelineSync(c->pq)) {
        return false;
    }
    ring_push(c, q, U_USER);
    conn_flush(c);
    return true;
}

static struct pg_conn *pool_idle_conn(struct pg_pool *pool)
{
    for (int i = 0; i < pool->opts.size; i++)
        if (pool->conns[i].state == PGC_READY && !pool->conns[i].doomed &&
            pool->conns[i].count == 0)
            return &pool->conns[i];
    return NULL;
}

/* Hands queued queries to idle connections; when the queue runs dry while a
 * connection is still idle, asks the idle hook for more (group commit: work that
 * piled up while every connection was busy leaves together). */
static void pool_dispatch(struct pg_pool *pool)
{
    if (pool->in_dispatch || pool->closing) return;
    pool->in_dispatch = true;
    for (;;) {
        struct pg_conn *c;
        while (pool->qhead && (c = pool_idle_conn(pool))) {
            struct pg_query *q = pool->qhead;
            pool->qhead = q->next;
            if (!pool->qhead) pool->qtail = NULL;
            pool->queued--;
            q->next = NULL;
            if (!conn_send(c, q)) {
                /* Nothing was sent: the query goes back to the head and the
                 * connection is replaced. */
                q->next = pool->qhead;
                pool->qhead = q;
                if (!pool->qtail) pool->qtail = q;
                pool->queued++;
                conn_lost(c, PQerrorMessage(c->pq));
            }
        }
        if (pool->qhead || !pool->idle_cb || !pool_idle_conn(pool)) break;
        size_t before = pool->queued;
        pool->idle_cb(pool->idle_arg);
        if (pool->queued == before) break;
    }
    pool->in_dispatch = false;
}

void pg_pool_kick(struct pg_pool *pool)
{
    pool_dispatch(pool);
}

void pg_pool_submit(struct pg_pool *pool, struct pg_query *q)
{
    if (!q->deadline) q->deadline = uv_now(pool->loop) + pool->opts.timeout_ms;
    q->next = NULL;
    if (pool->closing || pool->queued >= pool->opts.max_queue) {
        q->done(q, NULL, IDV_EUNAVAILABLE);
        return;
    }
    if (pool->qtail)
        pool->qtail->next = q;
    else
        pool->qhead = q;
    pool->qtail = q;
    pool->queued++;
    pool_dispatch(pool);
}

static void tick_cb(uv_timer_t *t)
{
    struct pg_pool *pool = t->data;
    uint64_t now = uv_now(pool->loop);
    /* Queued queries past their deadline: unlinked first, answered after, since
     * an answer may queue more work. */
    struct pg_query **pp = &pool->qhead, *prev = NULL, *expired = NULL, **etail = &expired;
    while (*pp) {
        struct pg_query *q = *pp;
        if (q->deadline <= now) {
            *pp = q->next;
            if (pool->qtail == q) pool->qtail = prev;
            pool->queued--;
            q->next = NULL;
            *etail = q;
            etail = &q->next;
        } else {
            prev = q;
            pp = &q->next;
        }
    }
    while (expired) {
        struct pg_query *q = expired;
        expired = q->next;
        pool->timeouts++;
        q->done(q, NULL, IDV_ETIMEOUT);
    }
    /* Queries in flight past their deadline are answered now; their results
     * will be discarded. A connection whose oldest unit is far overdue is stuck
     * (server frozen, network gone) and is replaced. */
    uint64_t stuck = pool->opts.timeout_ms * 3;
    for (int i = 0; i < pool->opts.size; i++) {
        struct pg_conn *c = &pool->conns[i];
        if (c->state != PGC_READY && c->state != PGC_SETUP) continue;
        for (unsigned k = 0; k < c->count; k++) {
            struct pg_unit *u = &c->ring[(c->head + k) % PG_MAX_INFLIGHT];
            if (u->q && u->q->deadline <= now) {
                struct pg_query *q = u->q;
                u->q = NULL;
                pool->timeouts++;
                q->done(q, NULL, IDV_ETIMEOUT);
            }
        }
        if (c->count > 0 && c->ring[c->head].sent_at + stuck <= now) conn_lost(c, "query stuck");
    }
}

/* ---- pool life ---------------------------------------------------------- */

static int split_list(const char *s, char **out, size_t max, size_t *n)
{
    *n = 0;
    if (!s) return 0;
    const char *p = s;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (*n == max) return IDV_EINVAL;
        out[*n] = strndup(p, len);
        if (!out[*n]) return IDV_ENOMEM;
        (*n)++;
        if (!comma) break;
        p = comma + 1;
    }
    return 0;
}

static size_t list_len(const char *s)
{
    if (!s) return 0;
    size_t n = 1;
    for (; *s; s++) n += *s == ',';
    return n;
}

/* The value of keyword in parsed options, or of the variable libpq reads when
 * the string leaves it out: the pool rewrites the host list, so it must see
 * what libpq would. */
static const char *conninfo_get(const PQconninfoOption *o, const char *keyword, const char *env)
{
    for (; o->keyword; o++)
        if (o->val && !strcmp(o->keyword, keyword)) return o->val;
    return getenv(env);
}

const char *pg_conninfo_hosts_problem(const PQconninfoOption *opts)
{
    size_t nh = list_len(conninfo_get(opts, "host", "PGHOST")),
           na = list_len(conninfo_get(opts, "hostaddr", "PGHOSTADDR")),
           np = list_len(conninfo_get(opts, "port", "PGPORT"));
    if (nh > PG_MAX_HOSTS || na > PG_MAX_HOSTS || np > PG_MAX_HOSTS)
        return "more than 8 hosts in the host list";
    if (nh && na && nh != na) return "host and hostaddr lists of different lengths";
    if (np > 1 && np != (nh ? nh : na)) return "the port list must give one port, or one per host";
    return NULL;
}

int pg_pool_new(struct pg_pool **out, uv_loop_t *loop, const struct pg_pool_opts *opts)
{
    struct pg_pool *pool = calloc(1, sizeof *pool);
    if (!pool) return IDV_ENOMEM;
    pool->loop = loop;
    pool->opts = *opts;
    if (!pool->opts.max_queue) pool->opts.max_queue = 10000;
    snprintf(pool->timeout_str, sizeof pool->timeout_str, "%llu",
             (unsigned long long)opts->timeout_ms);
    int rc = IDV_EINVAL;
    PQconninfoOption *o = PQconninfoParse(opts->conninfo, NULL);
    if (!o) goto fail;
    size_t n = 0;
    for (PQconninfoOption *x = o; x->keyword; x++)
        if (x->val) n++;
    pool->kw = calloc(n + 1, sizeof *pool->kw);
    pool->val = calloc(n + 1, sizeof *pool->val);
    rc = IDV_ENOMEM;
    if (!pool->kw || !pool->val) goto fail_opts;
    for (PQconninfoOption *x = o; x->keyword; x++) {
        if (!x->val) continue;
        pool->kw[pool->nkw] = strdup(x->keyword);
        pool->val[pool->nkw] = strdup(x->val);
        if (!pool->kw[pool->nkw] || !pool->val[pool->nkw]) goto fail_opts;
        pool->nkw++;
    }
    rc = IDV_EINVAL;
    if (pg_conninfo_hosts_problem(o)) goto fail_opts;
    const char *host = conninfo_get(o, "host", "PGHOST"),
               *hostaddr = conninfo_get(o, "hostaddr", "PGHOSTADDR"),
               *port = conninfo_get(o, "port", "PGPORT"),
               *connect_timeout = conninfo_get(o, "connect_timeout", "PGCONNECT_TIMEOUT");
    rc = split_list(host, pool->hosts, PG_MAX_HOSTS, &pool->nhosts);
    if (rc) goto fail_opts;
    rc = split_list(hostaddr, pool->addrs, PG_MAX_HOSTS, &pool->naddrs);
    if (rc) goto fail_opts;
    rc = split_list(port, pool->ports, PG_MAX_HOSTS, &pool->nports);
    if (rc) goto fail_opts;
    pool->resolve = pool->naddrs == 0;
    pool->nentries = pool->nhosts ? pool->nhosts : pool->naddrs;
    /* libpq's connect_timeout is per host, in seconds, at least 2; without it
     * db_timeout_ms (at least 2 s, so that a slow TLS handshake is not cut). */
    long ct = connect_timeout ? strtol(connect_timeout, NULL, 10) : 0;
    if (ct > 0)
        pool->connect_ms = (uint64_t)(ct < 2 ? 2 : ct) * 1000;
    else
        pool->connect_ms = opts->timeout_ms < 2000 ? 2000 : opts->timeout_ms;
    PQconninfoFree(o);

    pool->conns = calloc((size_t)opts->size, sizeof *pool->conns);
    if (!pool->conns) {
        rc = IDV_ENOMEM;
        goto fail;
    }
    uv_timer_init(loop, &pool->tick);
    pool->tick.data = pool;
    pool->open_handles++;
    for (int i = 0; i < opts->size; i++) {
        struct pg_conn *c = &pool->conns[i];
        c->pool = pool;
        c->idx = i;
        uv_timer_init(loop, &c->timer);
        c->timer.data = c;
        pool->open_handles++;
    }
    /* The timer data of conns points at the conn; closing uses pool for counting. */
    *out = pool;
    return 0;

fail_opts:
    PQconninfoFree(o);
fail:
    for (size_t i = 0; i < pool->nkw; i++) {
        free(pool->kw[i]);
        free(pool->val[i]);
    }
    free(pool->kw);
    free(pool->val);
    for (size_t i = 0; i < pool->nhosts; i++) free(pool->hosts[i]);
    for (size_t i = 0; i < pool->naddrs; i++) free(pool->addrs[i]);
    for (size_t i = 0; i < pool->nports; i++) free(pool->ports[i]);
    free(pool);
    return rc;
}

void pg_pool_start(struct pg_pool *pool)
{
    uint64_t t = pool->opts.timeout_ms / 10;
    if (t < 10) t = 10;
    if (t > 100) t = 100;
    uv_timer_start(&pool->tick, tick_cb, t, t);
    uv_unref((uv_handle_t *)&pool->tick);
    for (int i = 0; i < pool->opts.size; i++) conn_connect(&pool->conns[i]);
}

bool pg_pool_ready(const struct pg_pool *pool)
{
    for (int i = 0; i < pool->opts.size; i++)
        if (pool->conns[i].state == PGC_READY && !pool->conns[i].doomed) return true;
    return false;
}

int pg_pool_idle(const struct pg_pool *pool)
{
    int n = 0;
    for (int i = 0; i < pool->opts.size; i++)
        if (pool->conns[i].state == PGC_READY && !pool->conns[i].doomed &&
            pool->conns[i].count == 0)
            n++;
    return n;
}

void pg_pool_on_idle(struct pg_pool *pool, void (*cb)(void *), void *arg)
{
    pool->idle_cb = cb;
    pool->idle_arg = arg;
}

void pg_pool_get_stats(const struct pg_pool *pool, struct pg_pool_stats *st)
{
    memset(st, 0, sizeof *st);
    for (int i = 0; i < pool->opts.size; i++) {
        const struct pg_conn *c = &pool->conns[i];
        switch (c->state) {
        case PGC_READY:
            st->ready++;
            if (c->count) st->busy++;
            break;
        case PGC_RESOLVING:
        case PGC_CONNECTING:
        case PGC_SETUP: st->connecting++; break;
        default: st->down++; break;
        }
    }
    st->queued = pool->queued;
    st->reconnects = pool->reconnects;
    st->failures = pool->failures;
    st->timeouts = pool->timeouts;
    st->lost = pool->lost;
    st->failovers = pool->failovers;
    st->schema_ok = st->ready > 0;
    snprintf(st->host, sizeof st->host, "%s", pool->host);
}

void pg_pool_close(struct pg_pool *pool, void (*cb)(void *), void *arg)
{
    pool->close_cb = cb;
    pool->close_arg = arg;
    pool->closing = true;
    while (pool->qhead) {
        struct pg_query *q = pool->qhead;
        pool->qhead = q->next;
        pool->queued--;
        q->done(q, NULL, IDV_EUNAVAILABLE);
    }
    pool->qtail = NULL;
    for (int i = 0; i < pool->opts.size; i++) {
        struct pg_conn *c = &pool->conns[i];
        conn_poll_drop(c);
        if (c->pq) {
            PQfinish(c->pq);
            c->pq = NULL;
        }
        c->state = PGC_CLOSED;
        conn_fail_inflight(c);
        if (c->gai_active) uv_cancel((uv_req_t *)&c->gai);
        c->timer.data = pool;
        uv_close((uv_handle_t *)&c->timer, handle_closed);
    }
    uv_close((uv_handle_t *)&pool->tick, handle_closed);
}
