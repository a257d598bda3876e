#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>
#include <uv.h>

#include "err.h"

/* libpq on libuv: a pool of non-blocking connections in pipeline mode, each
 * driven by one uv_poll_t, reconnecting with back-off. Every unit of work is one
 * sync point: its result is delivered only once PostgreSQL has answered the sync
 * (so an autocommit statement has committed), or it fails.
 *
 * The connection string may name several hosts (libpq's host=a,b port=p,q,
 * with target_session_attrs=read-write). A connection is only ever used on a
 * writable primary: one whose session turns out to be on a standby (or
 * read-only), or that gets SQLSTATE 25006, is dropped and the next attempt
 * starts at the following host. When the host:port written to changes, the
 * pool counts a failover and logs it. A lost connection is logged with
 * libpq's message and the server's last error text (its FATAL at a shutdown
 * or a demotion), never an event loop error name.
 *
 * Pipeline depth: a connection carries one user query at a time (pipeline
 * mode sends its statement and sync together, and the setup steps back to
 * back); a query waits in the pool's queue while every connection is busy.
 *
 * THE INVARIANT: no query waits in the queue while a ready connection is
 * idle ("ready": set up, on a writable primary, not about to be dropped;
 * "idle": nothing in flight). It holds whenever control is back in the event
 * loop. Every loop callback of the pool and its connections ends by handing
 * queued queries to idle connections, whatever the event was: a query
 * completed or failed, a connection was lost, came up or is being dropped, a
 * deadline passed, a query was submitted. Debug builds (no NDEBUG: the debug
 * and asan presets) check it after every such callback and abort, logging
 * the figures, if it does not hold. */

#define PG_MAX_HOSTS 8

struct pg_pool;
struct pg_query;

/* libpq's rules for a host list, checked before any connection: as many
 * hostaddr as host entries, one port or one per host, at most PG_MAX_HOSTS.
 * Takes parsed options (PQconninfoParse); where they give no host, hostaddr
 * or port, PGHOST, PGHOSTADDR and PGPORT count, as for libpq. NULL when they
 * fit, else what is wrong. */
const char *pg_conninfo_hosts_problem(const PQconninfoOption *opts);

/* Called exactly once per submitted query. err is 0 when the unit completed
 * (res holds its first result, PGRES_TUPLES_OK or PGRES_COMMAND_OK); IDV_EDB
 * when PostgreSQL answered an error (res holds it, for the SQLSTATE);
 * IDV_EDBLOST when the connection broke before the sync was confirmed (the
 * outcome is unknown); IDV_ETIMEOUT when the deadline passed first;
 * IDV_EUNAVAILABLE when the queue was full or the pool is closing. The callee
 * owns res (may be NULL) and must PQclear it. */
typedef void (*pg_done_cb)(struct pg_query *q, PGresult *res, int err);

/* One statement to run, owned by the caller until done is called. values etc.
 * are read only while submitting; they may be freed once sent. */
struct pg_query {
    const char *stmt; /* name of a statement prepared by the pool */
    int nparams;
    const char *const *values; /* text-format parameters */
    uint64_t deadline;         /* uv_now() time; 0: now + the pool's timeout */
    pg_done_cb done;
    void *data; /* for the caller */
    /* internal */
    struct pg_query *next;
};

/* A statement prepared on every connection. */
struct pg_stmt {
    const char *name;
    const char *sql;
};

struct pg_pool_opts {
    const char *conninfo; /* libpq string or URI */
    int size;             /* connections */
    uint64_t timeout_ms;  /* default query deadline; also connect deadline */
    int schema_version;   /* migrations this binary needs */
    const struct pg_stmt *stmts;
    size_t nstmts;
    size_t max_queue; /* queued queries beyond this fail at once */
    const char *application_name;
};

/* Pool figures for /metrics and logs. */
struct pg_pool_stats {
    int ready, connecting, down, busy;
    size_t queued;
    uint64_t reconnects, failures, timeouts, lost, failovers;
    bool schema_ok;
    char host[160]; /* host:port of the primary the last connection came up on */
};

/* Creates the pool (no connection yet). Returns 0, IDV_ENOMEM or IDV_EINVAL
 * (conninfo cannot be parsed). */
int pg_pool_new(struct pg_pool **out, uv_loop_t *loop,
                const struct pg_pool_opts *opts) IDV_MUSTCHECK;
/* Starts connecting every connection. */
void pg_pool_start(struct pg_pool *pool);
/* Queues a query; the result arrives through q->done, from the loop. Only a
 * refusal (the queue is full, or the pool is closing: IDV_EUNAVAILABLE) is
 * answered before this returns. From a done callback (or the idle hook) the
 * query is only queued, and sent when that callback returns. */
void pg_pool_submit(struct pg_pool *pool, struct pg_query *q);
/* True when at least one connection is up, on a writable primary, with a
 * current schema. */
bool pg_pool_ready(const struct pg_pool *pool);
/* Number of connections up and with nothing in flight. */
int pg_pool_idle(const struct pg_pool *pool);
/* Sets a hook called (from the loop) whenever a connection is idle with the
 * queue empty, at the end of each loop callback of the pool and of each
 * submit or kick: the place to hand it a batch of work. */
void pg_pool_on_idle(struct pg_pool *pool, void (*cb)(void *arg), void *arg);
/* Asks the idle hook for work now, if a connection is idle (the pool's own
 * queue never needs a kick: see the invariant). */
void pg_pool_kick(struct pg_pool *pool);
/* Fills stats. */
void pg_pool_get_stats(const struct pg_pool *pool, struct pg_pool_stats *st);
/* Fails queued queries, closes every connection and frees the pool once the
 * last handle is closed; cb (may be NULL) runs then. */
void pg_pool_close(struct pg_pool *pool, void (*cb)(void *arg), void *arg);
/* Extracts the SQLSTATE of an error result ("" when none). */
const char *pg_sqlstate(const PGresult *res);
