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

#define METRICS_BUCKETS 15
struct histogram {
    uint64_t counts[METRICS_BUCKETS + 1]; /* the last one is +Inf */
    double sum;
    uint64_t count;
};

/* Actions of the Alibaba API, as counted in outbound metrics. */
enum metric_action { MA_INITIALIZE = 0, MA_CHECKRESULT, MA_OTHER, MA__COUNT };

/* States of PostgreSQL connections, as labelled in idv_db_connections
 * ("ready" is up and idle). */
enum metric_db_state { MDB_READY = 0, MDB_BUSY, MDB_CONNECTING, MDB_DOWN, MDB__COUNT };

/* What the loop counts as things happen. Every field is listed in the
 * descriptor table of metrics.c, which gives its name, type and help. */
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
    uint64_t outbound[MA__COUNT][600];      /* by action and HTTP status (0: transport error) */
    uint64_t outbound_throttled[MA__COUNT]; /* answers with a Throttling.* Code */
    uint64_t confirmations, disagreements, confirm_retries, confirm_giveups;
    /* outbound.c: connections to Alibaba not reused after an unclean
     * exchange; the circuit (enum circuit_state), its openings, and the calls
     * it refused */
    uint64_t outbound_conns_retired;
    uint64_t alibaba_circuit_state;
    uint64_t alibaba_circuit_opens, alibaba_calls_short_circuited;
};

extern struct metrics g_metrics;

/* Records one observation in seconds. */
void histogram_observe(struct histogram *h, double seconds);

/* Values read at scrape time from the modules that own them (the pool, the
 * confirmation worker, the server). All are doubles, as Prometheus values are;
 * a NaN is "unknown" and renders no sample. Adding one: a field here, its
 * value in admin.c, a line in the table of metrics.c. */
struct metrics_gauges {
    double ready;                /* 1 when /readyz would answer 200 */
    double db_conns[MDB__COUNT]; /* connections by state */
    double db_pool_size;         /* db_pool_size of the configuration */
    double db_queued;
    double db_reconnects, db_failures, db_timeouts, db_lost, db_failovers; /* counters */
    const char *db_host; /* host:port of the primary; NULL or "" before the first connection */
    double db_primary_up;
    double callback_queue, audit_queue;
    double draining;
    double queue_depth, queue_oldest_seconds, queue_given_up; /* NaN without the worker */
    double tls_not_after; /* Unix time; NaN when the listener has no TLS */
};

/* Checks the descriptor table of metrics.c (names, _total suffixes, help
 * text, the size of each field against its labels, no name twice). Returns 0,
 * or IDV_EINVAL with the first problem in err. For the unit tests. */
int metrics_check_table(char *err, size_t errlen);

/* Renders everything into a malloc'd buffer (*len bytes); NULL on no memory. */
char *metrics_render(const struct metrics_gauges *g, size_t *len);
