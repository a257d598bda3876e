#pragma once
#include <uv.h>

#include "app.h"
#include "pg.h"

/* Confirmation and the sweeper. With Alibaba credentials, work items of the
 * durable queue in PostgreSQL (idv.work_queue, shared by every instance) are
 * claimed with a lease, confirmed with CheckResult, and completed or retried
 * with exponential back-off and jitter up to confirm_max_attempts. The sweeper
 * queues transactions whose callback never came (or, without credentials,
 * marks them expired) and fails rows left initializing by a crash. */

struct confirm;

struct confirm_opts {
    const char *instance;
    bool can_check;    /* Alibaba credentials configured */
    uint64_t poll_ms;  /* how often the queue is looked at when idle */
    uint64_t sweep_ms; /* how often the sweeper runs */
    uint64_t grace_ms; /* after expires_at before a sweep */
    uint64_t lease_ms; /* a claimed item's lease */
    long max_attempts;
    uint64_t backoff_ms, backoff_max_ms;
    unsigned batch; /* items claimed at once */
};

/* Queue figures for /metrics (refreshed every few seconds). */
struct confirm_stats {
    long depth; /* waiting items, all instances; -1 unknown */
    double oldest_seconds;
    long given_up;
    size_t inflight;
};

/* The statements the module prepares on every pool connection. */
extern const struct pg_stmt confirm_statements[];
extern const size_t confirm_statements_count;

/* Creates and starts the worker; returns 0 or IDV_ENOMEM. */
int confirm_new(struct confirm **out, struct app *app,
                const struct confirm_opts *opts) IDV_MUSTCHECK;
/* Looks at the queue now (an accepted callback just queued an item). */
void confirm_nudge(struct confirm *cf);
/* Fills stats. */
void confirm_get_stats(const struct confirm *cf, struct confirm_stats *st);
/* Stops claiming; items in flight keep their lease and are retried by any
 * instance after it runs out. cb runs when the timers are closed; the struct
 * itself goes with the last item in flight (close the outbound client and the
 * pool after this, which finish them). */
void confirm_close(struct confirm *cf, void (*cb)(void *), void *arg);
