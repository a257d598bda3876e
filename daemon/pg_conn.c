/* One PostgreSQL connection of the pool: libpq driven from a uv_poll_t, the
 * host list, the session setup, the pipeline of units and their results, the
 * reconnection. The queue and the invariant are the pool's (pg.c); see
 * pg_conn.h for the contract between the two. */
#include "pg_conn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

static const char *const pgc_state_names[] = {"down",  "resolving", "connecting",
                                              "setup", "ready",     "closed"};

enum unit_kind { U_USER = 0, U_SESSION, U_VERSION, U_PREPARE };

static void conn_connect(struct pg_conn *c);
static void conn_lost(struct pg_conn *c, const char *why);
static void conn_poll_set(struct pg_conn *c, int events);
static int conn_poll_new(struct pg_conn *c, int events);
static void conn_arm_deadline(struct pg_conn *c);
static void conn_track_host(struct pg_conn *c);
static void conn_start_pq(struct pg_conn *c);

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

/* Copies a libpq or server message into out on one line: libpq ends its
 * messages with a newline and continues them on tab-indented lines. */
static void one_line(char *out, size_t size, const char *msg)
{
    size_t n = 0;
    bool space = false;
    for (const char *p = msg ? msg : ""; *p && n + 1 < size; p++) {
        if (*p == '\n' || *p == '\t' || *p == '\r' || *p == ' ') {
            space = n > 0;
            continue;
        }
        if (space && n + 2 < size) out[n++] = ' ';
        space = false;
        out[n++] = *p;
    }
    out[n] = '\0';
}

/* ---- the poll handle ----------------------------------------------------- */

static void poll_closed(uv_handle_t *h)
{
    struct pg_poll *pp = (struct pg_poll *)h;
    struct pg_pool *pool = pp->c->pool;
    free(pp);
    pg_pool_unref(pool);
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
    struct pg_pool *pool = c->pool;
    pg_pool_enter(pool);
    if (c->state == PGC_DOWN && !pool->closing) conn_connect(c);
    pg_pool_leave(pool);
}

/* ---- losing a connection ------------------------------------------------ */

/* "host:port" of the connection (IPv6 addresses in brackets). */
static void conn_host_port(const struct pg_conn *c, char *out, size_t size)
{
    const char *h = PQhost(c->pq), *p = PQport(c->pq);
    if (!h) h = "";
    if (!p || !*p) p = "5432";
    bool v6 = strchr(h, ':') && h[0] != '/' && h[0] != '@';
    snprintf(out, size, v6 ? "[%s]:%s" : "%s:%s", h, p);
}

/* Tears the libpq connection down and schedules the next attempt. The log
 * line says why (libpq's message or the pool's), on which host, and what the
 * server said last, when it said anything. */
static void conn_down(struct pg_conn *c, const char *why)
{
    struct pg_pool *pool = c->pool;
    bool was_ready = c->state == PGC_READY;
    char hp[160] = "", server[sizeof c->server_msg];
    if (c->pq && c->state >= PGC_CONNECTING) conn_host_port(c, hp, sizeof hp);
    snprintf(server, sizeof server, "%s", c->server_msg);
    conn_poll_drop(c);
    if (c->pq) {
        PQfinish(c->pq);
        c->pq = NULL;
    }
    uv_timer_stop(&c->timer);
    if (c->state != PGC_DOWN) set_state(c, PGC_DOWN);
    c->doomed = PGC_DOOM_NONE;
    c->server_msg[0] = '\0';
    c->cur_host = c->cur_port = NULL;
    if (pool->closing) return;
    char idx[12];
    snprintf(idx, sizeof idx, "%d", c->idx);
    if (was_ready || !c->announced_down) {
        log_kv(was_ready ? LOGL_WARN : LOGL_INFO, "PostgreSQL connection down", "DB_CONN", idx,
               "DB_HOST", hp[0] ? hp : NULL, "REASON", why, "DB_SERVER_MESSAGE",
               server[0] ? server : NULL, NULL);
        c->announced_down = true;
    } else {
        log_kv(LOGL_DEBUG, "PostgreSQL connection attempt failed", "DB_CONN", idx, "DB_HOST",
               hp[0] ? hp : NULL, "REASON", why, "DB_SERVER_MESSAGE", server[0] ? server : NULL,
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

/* Drops the connection: why is libpq's message or the pool's reason. What
 * was in flight fails; the pool hands queued work to the other connections
 * when the callback that got here returns (pg_pool_leave). */
static void conn_lost(struct pg_conn *c, const char *why)
{
    char msg[256];
    one_line(msg, sizeof msg, why);
    if (!msg[0]) snprintf(msg, sizeof msg, "connection lost (libpq gave no reason)");
    conn_down(c, msg);
    conn_fail_inflight(c);
}

/* Keeps the server's last error text (severity, message, SQLSTATE). */
static void conn_note_server_msg(struct pg_conn *c, const PGresult *res)
{
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *text = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    char line[sizeof c->server_msg];
    snprintf(line, sizeof line, "%s: %s%s%s%s", sev ? sev : "ERROR", text ? text : "",
             state ? " (SQLSTATE " : "", state ? state : "", state ? ")" : "");
    one_line(c->server_msg, sizeof c->server_msg, line);
}

static bool severity_is(const PGresult *res, const char *const *names)
{
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    for (; sev && *names; names++)
        if (!strcmp(sev, *names)) return true;
    return false;
}

/* libpq hands every message the server sends outside a query here. An ERROR
 * or FATAL there is the server explaining why it is about to close the
 * connection ("terminating connection due to administrator command" when an
 * idle session meets a fast shutdown, a demotion or pg_terminate_backend):
 * it is kept for the log line of the loss, which follows. */
static void notice_rcv(void *arg, const PGresult *res)
{
    static const char *const errors[] = {"ERROR", "FATAL", "PANIC", NULL};
    struct pg_conn *c = arg;
    if (severity_is(res, errors)) {
        conn_note_server_msg(c, res);
        char idx[12];
        snprintf(idx, sizeof idx, "%d", c->idx);
        log_kv(LOGL_INFO, "PostgreSQL server message outside a query", "DB_CONN", idx,
               "DB_SERVER_MESSAGE", c->server_msg, NULL);
        return;
    }
    char msg[256];
    one_line(msg, sizeof msg, PQresultErrorMessage(res));
    log_kv(LOGL_DEBUG, "PostgreSQL notice", "DB_NOTICE", msg, NULL);
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
        pg_pool_conn_ready(pool, c, hp);
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

/* Takes the results libpq has parsed, completing each unit at its sync. A
 * unit's done callback may submit more work: that only queues it (the pool
 * dispatches once the loop callback returns), so the ring does not move under
 * this loop except through this connection's own setup steps. */
static void conn_take_results(struct pg_conn *c)
{
    static const char *const fatal[] = {"FATAL", "PANIC", NULL};
    int nulls = 0;
    /* Bounded by the units in flight: in pipeline mode PQgetResult returns NULL
     * between queries, and forever once nothing is pending. On a connection
     * that broke, libpq answers what is left with errors and no sync ever
     * comes: there a budget bounds the loop as well. */
    size_t budget = ((size_t)c->count + 2) * (c->pool->opts.nstmts + 4);
    while (c->count > 0 && (c->doomed != PGC_DOOM_BROKEN || budget-- > 0) &&
           (c->state == PGC_SETUP || c->state == PGC_READY) && !PQisBusy(c->pq)) {
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
            if (c->doomed == PGC_DOOM_READ_ONLY) break;
            continue;
        }
        bool is_err =
            st == PGRES_FATAL_ERROR || st == PGRES_PIPELINE_ABORTED || st == PGRES_BAD_RESPONSE;
        /* A FATAL from the server (shutdown, demotion, terminated backend) is
         * the reason the connection is about to go: kept for that log line. */
        if (st == PGRES_FATAL_ERROR && severity_is(r, fatal)) conn_note_server_msg(c, r);
        /* 25006 read_only_sql_transaction: this server is no longer (or never
         * was) the primary. The unit gets the error (it did not commit), and the
         * connection goes once the unit is answered. */
        if (st == PGRES_FATAL_ERROR && !strcmp(pg_sqlstate(r), "25006") && !c->doomed)
            c->doomed = PGC_DOOM_READ_ONLY;
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
}

/* The socket is readable (or reported an error): libpq reads it, then the
 * results are taken. When libpq finds the connection broken, what it read
 * before is still taken first: a sync that arrived just before the end
 * confirms its unit, and the server's last message (a FATAL result) is kept
 * for the log line. */
static void conn_read(struct pg_conn *c)
{
    char why[256] = "";
    if (!PQconsumeInput(c->pq)) {
        one_line(why, sizeof why, PQerrorMessage(c->pq));
        c->doomed = PGC_DOOM_BROKEN;
    }
    /* PQconsumeInput only reads; PQisBusy parses. With nothing in flight no
     * result is asked for, but what the server sent must still be parsed: an
     * error it sends to an idle session (its FATAL before it closes) reaches
     * the notice receiver only then. */
    (void)PQisBusy(c->pq);
    conn_take_results(c);
    /* A setup step may have dropped the connection already. */
    if (c->state != PGC_SETUP && c->state != PGC_READY) return;
    switch (c->doomed) {
    case PGC_DOOM_BROKEN: conn_lost(c, why); return;
    case PGC_DOOM_READ_ONLY:
        conn_skip_current(c);
        conn_lost(c, "the server is read-only (SQLSTATE 25006), not the primary");
        return;
    case PGC_DOOM_NONE: break;
    }
    if (PQstatus(c->pq) == CONNECTION_BAD) conn_lost(c, PQerrorMessage(c->pq));
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

static void conn_on_io(struct pg_conn *c, int status, int events)
{
    /* While connecting, an error on the socket (libuv reports POLLERR as
     * UV_EBADF: a refused connect, for one) is libpq's to read: PQconnectPoll
     * takes SO_ERROR and goes on to the next address or host of the list. */
    if (c->state == PGC_CONNECTING) {
        conn_connect_poll(c);
        return;
    }
    if (c->state != PGC_SETUP && c->state != PGC_READY) return;
    if (status < 0) {
        /* Once up, likewise: libuv turns POLLERR (a reset, for one) into
         * UV_EBADF and stops the handle, but the socket is fine to read and
         * libpq's read says what happened ("Connection reset by peer", "server
         * closed the connection unexpectedly"), after any last message the
         * server sent. libuv's name for it would explain nothing. */
        conn_read(c);
        if (c->state == PGC_SETUP || c->state == PGC_READY)
            conn_lost(c, "the socket reported an error (POLLERR) and libpq could read on");
        return;
    }
    if (events & UV_WRITABLE) {
        conn_flush(c);
        if (c->state != PGC_SETUP && c->state != PGC_READY) return;
    }
    if (events & UV_READABLE) conn_read(c);
}

static void conn_io(uv_poll_t *h, int status, int events)
{
    struct pg_conn *c = ((struct pg_poll *)h)->c;
    struct pg_pool *pool = c->pool;
    pg_pool_enter(pool);
    conn_on_io(c, status, events);
    pg_pool_leave(pool);
}

static void connect_deadline_cb(uv_timer_t *t)
{
    struct pg_conn *c = t->data;
    struct pg_pool *pool = c->pool;
    pg_pool_enter(pool);
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
    pg_pool_leave(pool);
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
    PQsetNoticeReceiver(c->pq, notice_rcv, c);
    c->server_msg[0] = '\0';
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
        /* The request was the pool's last reference, perhaps: not entered. */
        if (res) uv_freeaddrinfo(res);
        pg_pool_unref(pool);
        return;
    }
    pool->open_handles--;
    if (c->state != PGC_RESOLVING) {
        if (res) uv_freeaddrinfo(res);
        return;
    }
    pg_pool_enter(pool);
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
    pg_pool_leave(pool);
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

/* ---- the connection, for the pool --------------------------------------- */

static void timer_closed(uv_handle_t *h)
{
    pg_pool_unref(h->data);
}

void pg_conn_init(struct pg_conn *c, struct pg_pool *pool, int idx)
{
    c->pool = pool;
    c->idx = idx;
    uv_timer_init(pool->loop, &c->timer);
    c->timer.data = c;
    pool->open_handles++;
}

void pg_conn_connect(struct pg_conn *c)
{
    conn_connect(c);
}

bool pg_conn_usable(const struct pg_conn *c)
{
    return c->state == PGC_READY && c->doomed == PGC_DOOM_NONE;
}

bool pg_conn_idle(const struct pg_conn *c)
{
    return pg_conn_usable(c) && c->count == 0;
}

bool pg_conn_send(struct pg_conn *c, struct pg_query *q)
{
    if (!PQsendQueryPrepared(c->pq, q->stmt, q->nparams, q->values, NULL, NULL, 0) ||
        !PQpipelineSync(c->pq) || !ring_push(c, q, U_USER)) {
        /* libpq refused (it queued nothing it will send: the connection is
         * gone) or, impossibly for an idle connection, the ring is full. */
        conn_lost(c, PQerrorMessage(c->pq));
        return false;
    }
    conn_flush(c);
    return true;
}

void pg_conn_expire(struct pg_conn *c, uint64_t now, uint64_t stuck_ms)
{
    if (c->state != PGC_READY && c->state != PGC_SETUP) return;
    /* Units in flight past their deadline are answered now; their results will
     * be discarded. Their done callbacks may submit, which only queues. */
    for (unsigned k = 0; k < c->count; k++) {
        struct pg_unit *u = &c->ring[(c->head + k) % PG_MAX_INFLIGHT];
        if (u->q && u->q->deadline <= now) {
            struct pg_query *q = u->q;
            u->q = NULL;
            c->pool->timeouts++;
            q->done(q, NULL, IDV_ETIMEOUT);
        }
    }
    /* A connection whose oldest unit is far overdue is stuck (server frozen,
     * network gone): it is replaced. */
    if (c->count > 0 && c->ring[c->head].sent_at + stuck_ms <= now) {
        char why[128];
        snprintf(why, sizeof why, "no answer from the server for %llu ms (query stuck)",
                 (unsigned long long)(now - c->ring[c->head].sent_at));
        conn_lost(c, why);
    }
}

void pg_conn_retry_soon(struct pg_conn *c)
{
    if (c->state != PGC_DOWN || c->backoff_ms <= PG_BACKOFF_MIN_MS) return;
    c->backoff_ms = 0;
    uv_timer_start(&c->timer, conn_retry_cb, jitter(PG_BACKOFF_MIN_MS), 0);
}

void pg_conn_close(struct pg_conn *c)
{
    struct pg_pool *pool = c->pool;
    conn_poll_drop(c);
    if (c->pq) {
        PQfinish(c->pq);
        c->pq = NULL;
    }
    c->state = PGC_CLOSED;
    conn_fail_inflight(c);
    if (c->gai_active) uv_cancel((uv_req_t *)&c->gai);
    c->timer.data = pool;
    uv_close((uv_handle_t *)&c->timer, timer_closed);
}
