#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "crypto.h"
#include "err.h"
#include "metrics.h"
#include "netaddr.h"
#include "pg.h"
#include "query.h"

/* Queries and transactions: what the daemon asks PostgreSQL, and the batching
 * of callbacks into shared commits. */

struct store;
struct cb_job;

/* Called once per job: outcome is an enum cb_outcome (ACCEPTED, DUPLICATE,
 * CONFLICT, REJECTED; UNAVAILABLE when the commit could not be confirmed). */
typedef void (*cb_job_done)(struct cb_job *job, enum cb_outcome outcome);

/* One valid callback to record. Owned by the caller, who must keep it alive
 * until done is called. */
struct cb_job {
    char transaction_id[CB_TXID_MAX + 1];
    char sub_code[CB_SUBCODE_MAX + 1];
    char passed;
    char token_hex[SHA256_HEX_LEN + 1];
    char client_ip[IPADDR_STRLEN];
    uint64_t deadline; /* set by store_submit_callback */
    cb_job_done done;
    void *data;
    /* internal */
    struct cb_job *next;
};

/* The prepared statements every pool connection carries. */
extern const struct pg_stmt store_statements[];
extern const size_t store_statements_count;

/* Creates the store on a pool. final: no CheckResult follows (no Alibaba
 * credentials), so an accepted callback sets passed/not_passed. Returns 0 or
 * IDV_ENOMEM. */
int store_new(struct store **out, uv_loop_t *loop, struct pg_pool *pool, const char *instance,
              bool final, uint64_t timeout_ms) IDV_MUSTCHECK;
/* Queues a callback for the next shared commit. done is never called from
 * inside this function. */
void store_submit_callback(struct store *st, struct cb_job *job);
/* Queues the audit row of a malformed callback; under overload it is shed and
 * counted instead. The token is never part of it. */
void store_audit_malformed(struct store *st, const struct cb_params *p, const char *client_ip,
                           const char *reason);
/* How many of the pending callbacks the next batch takes now (0: they wait),
 * given the batches in flight that hold a slot: young of them, in_flight
 * callbacks in all, largest in the largest; at most max_batches in flight.
 * The rule is explained at on_pool_idle in store.c. */
size_t store_batch_size(size_t pending, size_t in_flight, size_t largest, unsigned young,
                        unsigned max_batches);
/* Number of callbacks and audit rows waiting. */
void store_queue_sizes(const struct store *st, size_t *callbacks, size_t *audit);
/* Stops the store's handles; pending work is answered UNAVAILABLE. cb runs once
 * its handles are closed. */
void store_close(struct store *st, void (*cb)(void *), void *arg);
