/* The PostgreSQL pool: the queue of queries, their dispatch to connections,
 * their deadlines, and the pool's invariant (pg.h). The connections
 * themselves (libpq on libuv, the host list, the setup, the pipeline) are in
 * pg_conn.c; pg_conn.h is the contract between the two. */
#include "pg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "pg_conn.h"

const char *pg_sqlstate(const PGresult *res)
{
    const char *s = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return s ? s : "";
}

static void pool_free(struct pg_pool *pool)
{
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
}

void pg_pool_unref(struct pg_pool *pool)
{
    if (--pool->open_handles == 0 && pool->closing) {
        void (*cb)(void *) = pool->close_cb;
        void *arg = pool->close_arg;
        pool_free(pool);
        if (cb) cb(arg);
    }
}

static void handle_closed(uv_handle_t *h)
{
    pg_pool_unref(h->data);
}

/* ---- the queue and the invariant ---------------------------------------- */

static struct pg_conn *pool_idle_conn(struct pg_pool *pool)
{
    for (int i = 0; i < pool->opts.size; i++)
        if (pg_conn_idle(&pool->conns[i])) return &pool->conns[i];
    return NULL;
}

/* Hands queued queries to idle connections; when the queue runs dry while a
 * connection is still idle, asks the idle hook for more (group commit: work that
 * piled up while every connection was busy leaves together). On return the
 * invariant holds: the queue is empty or no connection is idle. */
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
            if (!pg_conn_send(c, q)) {
                /* Nothing was sent and the connection is gone: the query goes
                 * back to the head, for the next idle connection. */
                q->next = pool->qhead;
                pool->qhead = q;
                if (!pool->qtail) pool->qtail = q;
                pool->queued++;
            }
        }
        if (pool->qhead || !pool->idle_cb || !pool_idle_conn(pool)) break;
        size_t before = pool->queued;
        pool->idle_cb(pool->idle_arg);
        if (pool->queued == before) break;
    }
    pool->in_dispatch = false;
}

#ifndef NDEBUG
/* The invariant of pg.h, checked where control goes back to the loop. A
 * failure is a bug in this file or pg_conn.c: the process stops with the
 * figures, rather than let requests die at their deadlines unexplained. */
static void pool_check(const struct pg_pool *pool)
{
    if (pool->closing) return;
    size_t n = 0;
    for (const struct pg_query *q = pool->qhead; q && n <= pool->queued; q = q->next) n++;
    int idle = -1;
    for (int i = 0; i < pool->opts.size && idle < 0; i++)
        if (pg_conn_idle(&pool->conns[i])) idle = i;
    if (n == pool->queued && (n == 0 || idle < 0) && (pool->qtail == NULL) == (n == 0)) return;
    char queued[24], listed[24], conn[12];
    snprintf(queued, sizeof queued, "%zu", pool->queued);
    snprintf(listed, sizeof listed, "%zu", n);
    snprintf(conn, sizeof conn, "%d", idle);
    log_kv(LOGL_ERROR, "PostgreSQL pool invariant broken: a query waits while a connection is idle",
           "QUEUED", queued, "LISTED", listed, "IDLE_DB_CONN", conn, NULL);
    abort();
}
#else
static void pool_check(const struct pg_pool *pool)
{
    (void)pool;
}
#endif

void pg_pool_enter(struct pg_pool *pool)
{
    pool->depth++;
}

void pg_pool_leave(struct pg_pool *pool)
{
    /* Dispatching while still counted in: the idle hook's submits, and those
     * of done callbacks the dispatch runs, only queue (and this loop sends
     * them), rather than dispatch again from inside. */
    if (pool->depth == 1) pool_dispatch(pool);
    if (--pool->depth == 0) pool_check(pool);
}

void pg_pool_conn_ready(struct pg_pool *pool, struct pg_conn *c, const char *hp)
{
    if (pool->host[0] && strcmp(pool->host, hp) != 0) {
        /* Every connection to the old primary is gone or going (a primary
         * that failed does not come back writable on its own), so the
         * first connection up elsewhere marks the switch. */
        char idx[12];
        snprintf(idx, sizeof idx, "%d", c->idx);
        pool->failovers++;
        log_kv(LOGL_WARN, "PostgreSQL primary changed", "DB_OLD_HOST", pool->host, "DB_HOST", hp,
               "DB_CONN", idx, NULL);
    }
    snprintf(pool->host, sizeof pool->host, "%s", hp);
    /* The database is reachable again: connections waiting out their
     * back-off (up to PG_BACKOFF_MAX_MS after a long outage or a
     * failover) try now instead, so that the pool is whole soon after the
     * first connection is. */
    for (int i = 0; i < pool->opts.size; i++)
        if (&pool->conns[i] != c) pg_conn_retry_soon(&pool->conns[i]);
}

void pg_pool_kick(struct pg_pool *pool)
{
    pg_pool_enter(pool);
    pg_pool_leave(pool);
}

void pg_pool_submit(struct pg_pool *pool, struct pg_query *q)
{
    if (!q->deadline) q->deadline = uv_now(pool->loop) + pool->opts.timeout_ms;
    q->next = NULL;
    if (pool->closing || pool->queued >= pool->opts.max_queue) {
        q->done(q, NULL, IDV_EUNAVAILABLE);
        return;
    }
    pg_pool_enter(pool);
    if (pool->qtail)
        pool->qtail->next = q;
    else
        pool->qhead = q;
    pool->qtail = q;
    pool->queued++;
    pg_pool_leave(pool);
}

static void tick_cb(uv_timer_t *t)
{
    struct pg_pool *pool = t->data;
    pg_pool_enter(pool);
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
    /* Units in flight past their deadline, and connections stuck on one. */
    for (int i = 0; i < pool->opts.size; i++)
        pg_conn_expire(&pool->conns[i], now, pool->opts.timeout_ms * 3);
    pg_pool_leave(pool);
}

/* ---- the connection string ---------------------------------------------- */

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
    for (int i = 0; i < opts->size; i++) pg_conn_init(&pool->conns[i], pool, i);
    *out = pool;
    return 0;

fail_opts:
    PQconninfoFree(o);
fail:
    pool_free(pool);
    return rc;
}

void pg_pool_start(struct pg_pool *pool)
{
    uint64_t t = pool->opts.timeout_ms / 10;
    if (t < 10) t = 10;
    if (t > 100) t = 100;
    uv_timer_start(&pool->tick, tick_cb, t, t);
    uv_unref((uv_handle_t *)&pool->tick);
    pg_pool_enter(pool);
    for (int i = 0; i < pool->opts.size; i++) pg_conn_connect(&pool->conns[i]);
    pg_pool_leave(pool);
}

bool pg_pool_ready(const struct pg_pool *pool)
{
    for (int i = 0; i < pool->opts.size; i++)
        if (pg_conn_usable(&pool->conns[i])) return true;
    return false;
}

int pg_pool_idle(const struct pg_pool *pool)
{
    int n = 0;
    for (int i = 0; i < pool->opts.size; i++) n += pg_conn_idle(&pool->conns[i]);
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
    for (int i = 0; i < pool->opts.size; i++) pg_conn_close(&pool->conns[i]);
    uv_close((uv_handle_t *)&pool->tick, handle_closed);
}
