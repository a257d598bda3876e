#pragma once
#include <stddef.h>
#include <stdint.h>

/* Counters and histograms of one instance, rendered in the Prometheus text
 * exposition format. Single-threaded: only the event loop touches them. */

enum metric_listener { ML_PUBLIC = 0, ML_ADMIN, ML__COUNT };

/* Callback outcomes: the values of the interface's status table. */
#define CB_OUTCOME_MAP(X)                                                                          \
    X(OK, "ok")                                                                                    \
    X(ACCEPTED, "accepted")                                                                        \
    X(DUPLICATE, "duplicate")                                                                      \
    X(CONFLICT, "conflict")                                                                        \
    X(REJECTED, "rejected")                                                                        \
    X(MALFORMED, "malformed")                                                                      \
    X(UNAVAILABLE, "unavailable")

enum cb_outcome {
#define CB_OUTCOME_ENUM(name, text) CBO_##name,
    CB_OUTCOME_MAP(CB_OUTCOME_ENUM)
#undef CB_OUTCOME_ENUM
        CBO__COUNT
};

/* Text of an outcome ("accepted"). */
const char *cb_outcome_name(enum cb_outcome o);
/* Parses an outcome name; returns -1 when unknown. */
int cb_outcome_parse(const char *s);

#define METRICS_BUCKETS 15
struct histogram {
    uint64_t counts[METRICS_BUCKETS + 1]; /* the last one is +Inf */
    double sum;
    uint64_t count;
};

struct metrics {
    uint64_t requests[ML__COUNT][600]; /* by status code */
    uint64_t callbacks[CBO__COUNT];
    uint64_t callbacks_shed_rows; /* audit rows dropped under overload */
    uint64_t audit_rows_failed;
    uint64_t conns_open[ML__COUNT];
    uint64_t conns_accepted[ML__COUNT];
    uint64_t conns_refused[ML__COUNT];
    uint64_t conns_timed_out[ML__COUNT];
    uint64_t framing_errors[ML__COUNT];
    uint64_t batches, batch_items, batch_fallbacks;
    struct histogram request_seconds[ML__COUNT];
    struct histogram commit_seconds;
    uint64_t outbound[4][600]; /* by action index and HTTP status (0: transport error) */
    uint64_t confirmations, disagreements, confirm_retries, confirm_giveups;
};

extern struct metrics g_metrics;

/* Records one observation in seconds. */
void histogram_observe(struct histogram *h, double seconds);

/* Extra gauges the renderer asks for at scrape time. */
struct metrics_gauges {
    int db_ready, db_connecting, db_down, db_busy;
    size_t db_queued;
    uint64_t db_reconnects, db_failures, db_timeouts, db_lost, db_failovers;
    const char *db_host;
    size_t callback_queue, audit_queue;
    int draining;
    long queue_depth; /* confirmation work queue, -1 when unknown */
    double queue_oldest_seconds;
};

/* Renders everything into a malloc'd buffer (*len bytes); NULL on no memory. */
char *metrics_render(const struct metrics_gauges *g, size_t *len);
