#pragma once
#include <arpa/inet.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>
#include <uv.h>

#include "pg.h"

/* Inside the PostgreSQL pool: the contract between the pool (pg.c: the queue,
 * dispatch, deadlines, the pool's invariant) and its connections (pg_conn.c:
 * libpq on a uv_poll_t, the host list, the setup, the pipeline). Nothing
 * outside those two files includes this header.
 *
 * Every loop callback of a connection (socket readiness, its timer, a host
 * name resolved) and of the pool (its tick) runs between pg_pool_enter() and
 * pg_pool_leave(): whatever the event did (a unit completed or failed, a
 * connection lost, set up or doomed, a deadline passed), the pool hands
 * queued work to idle connections on the way out, and debug builds check the
 * invariant written in pg.h there. */

#define PG_MAX_INFLIGHT 512
/* Reconnection back-off: doubling from the minimum, capped at the maximum,
 * +-25%. The cap is what a failover costs on top of itself: the new primary
 * becomes writable at a moment nobody knows in advance (Patroni's ttl after
 * a crash), and a connection that tried just before waits out its back-off.
 * An attempt on a dead or standby host is cheap (refused, or a standby left
 * at once), so 2 s and not more; a host that black-holes packets paces the
 * attempts by its connect deadline anyway. */
#define PG_BACKOFF_MIN_MS 100
#define PG_BACKOFF_MAX_MS 2000

enum pgc_state { PGC_DOWN = 0, PGC_RESOLVING, PGC_CONNECTING, PGC_SETUP, PGC_READY, PGC_CLOSED };

/* Why a connection is dropped once the current read ends (it takes no new
 * work meanwhile). */
enum pgc_doom { PGC_DOOM_NONE = 0, PGC_DOOM_READ_ONLY, PGC_DOOM_BROKEN };

/* One sync point in flight: a user query, or a step of the setup. */
struct pg_unit {
    struct pg_query *q; /* NULL once answered by a timeout, or for setup units */
    PGresult *res;
    int err;
    uint8_t kind; /* enum unit_kind of pg_conn.c */
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
    enum pgc_doom doomed;
    /* The server's last word on this connection: the text of an error it sent
     * outside any query (a notice of severity ERROR/FATAL/PANIC, e.g.
     * "terminating connection due to administrator command") or of a FATAL or
     * PANIC result. Logged with the connection's loss; "" when none. */
    char server_msg[256];
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
    int depth; /* loop callbacks (and API calls) of the pool under way */
    bool closing, in_dispatch;
    void (*close_cb)(void *);
    void *close_arg;
    void (*idle_cb)(void *);
    void *idle_arg;
    uint64_t reconnects, failures, timeouts, lost, failovers;
    char host[160]; /* host:port of the primary the last connection came up on */
    char timeout_str[24];
};

/* ---- the pool, for its connections (pg.c) ---- */

/* Brackets every loop callback: enter first, leave last. Leaving the
 * outermost one dispatches queued work and (debug builds) checks the
 * invariant. Calls nest (an API call made from a done callback). */
void pg_pool_enter(struct pg_pool *pool);
void pg_pool_leave(struct pg_pool *pool);
/* Drops one handle or request reference; the last one after pg_pool_close()
 * frees the pool (so never call it inside enter/leave). */
void pg_pool_unref(struct pg_pool *pool);
/* A connection finished its setup on host:port hp: failover accounting, and
 * the other connections waiting out a long back-off try now. */
void pg_pool_conn_ready(struct pg_pool *pool, struct pg_conn *c, const char *hp);

/* ---- a connection, for the pool (pg_conn.c) ---- */

/* Initializes c (its timer counts as one of the pool's open handles). */
void pg_conn_init(struct pg_conn *c, struct pg_pool *pool, int idx);
/* Starts an attempt when c is down (resolving, then connecting). */
void pg_conn_connect(struct pg_conn *c);
/* True when c can take work: set up, on a writable primary, not doomed. */
bool pg_conn_usable(const struct pg_conn *c);
/* True when c is usable and has nothing in flight. */
bool pg_conn_idle(const struct pg_conn *c);
/* Sends q on an idle connection. False when libpq refused it: nothing was
 * sent, q is the caller's again, and c is being dropped. */
bool pg_conn_send(struct pg_conn *c, struct pg_query *q);
/* Answers the units in flight past their deadline (IDV_ETIMEOUT) and drops c
 * when its oldest unit is stuck (stuck_ms overdue). */
void pg_conn_expire(struct pg_conn *c, uint64_t now, uint64_t stuck_ms);
/* Down while waiting out a back-off longer than the shortest: try again soon. */
void pg_conn_retry_soon(struct pg_conn *c);
/* Closes c for good: libpq closed, units in flight failed (IDV_EDBLOST),
 * handles closed (each unrefs the pool when closed). */
void pg_conn_close(struct pg_conn *c);
