#include "store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "strbuf.h"

#define STORE_BATCH_MAX         256
#define STORE_MAX_PENDING       20000
#define STORE_AUDIT_MAX_PENDING 10000
#define STORE_AUDIT_BATCH_MAX   512
/* Below this many callbacks (waiting and in flight together) one batch takes
 * all that waits; from it on, the waiting ones are shared out so that the
 * batches in flight are of about equal size (see store_batch_size). */
#define STORE_SPLIT_MIN 32
/* A callback batch in flight for longer than this (waiting on a lock, a
 * stalled server) stops holding one of the store's batch slots, so that it
 * cannot hold up every other callback until its deadline. */
#define STORE_SLOW_BATCH_MS 250

const struct pg_stmt store_statements[] = {
    {"record_callback_batch",
     "SELECT idv.record_callback_batch($1::text[], $2::text[], $3::text[], $4::text[],"
     " $5::text[], $6, $7::boolean)"},
    {"record_events",
     "SELECT idv.record_events($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
     " $6::text[], $7, $8::double precision[])"},
    {"register_transaction", "SELECT idv.register_transaction($1, $2, $3, $4)"},
    {"get_transaction",
     "SELECT json_build_object('transactionId', transaction_id, 'merchantBizId', merchant_biz_id,"
     " 'status', status, 'passed', passed, 'subCode', sub_code, 'initiatedAt', initiated_at,"
     " 'completedAt', completed_at, 'confirmed', confirmed, 'expiresAt', expires_at)::text"
     " FROM idv.transaction_status WHERE transaction_id = $1"},
};
const size_t store_statements_count = sizeof store_statements / sizeof store_statements[0];

struct audit_row {
    struct audit_row *next;
    char transaction_id[CB_TXID_MAX + 1];
    char sub_code[CB_SUBCODE_MAX + 1];
    char passed;
    char client_ip[IPADDR_STRLEN];
    char received[32];  /* wall clock at receipt, epoch seconds: rows may wait */
    const char *reason; /* static text */
};

struct store {
    uv_loop_t *loop;
    struct pg_pool *pool;
    char *instance;
    bool final;
    uint64_t timeout_ms;
    struct cb_job *head, *tail; /* waiting for a connection, in deadline order */
    size_t pending;
    struct cb_job *refused;                 /* over the bound: answered UNAVAILABLE next turn */
    struct batch *answered, *answered_tail; /* committed, answers not written yet */
    bool closing;
    struct audit_row *ahead, *atail;
    size_t apending;
    bool audit_inflight;    /* one audit batch at a time (see on_pool_idle) */
    struct batch *inflight; /* callback batches sent and not answered */
    unsigned max_batches;   /* how many young ones may be in flight at once */
    uv_check_t check;       /* end of each loop turn: send what the turn gathered */
    uv_timer_t tick;        /* deadlines of callbacks still waiting for a connection */
    int open_handles;
    void (*close_cb)(void *);
    void *close_arg;
};

/* A shared commit of up to STORE_BATCH_MAX callbacks, or of audit rows. */
struct batch {
    struct pg_query q;
    struct store *st;
    struct batch *prev, *next; /* store's list of callback batches in flight */
    uint64_t sent_at;
    size_t n;
    bool audit;
    unsigned char out[STORE_BATCH_MAX]; /* enum cb_outcome of each job, once committed */
    const char *values[8];
    char *arrays[7];
    char instance_param[72];
    union {
        struct cb_job *jobs[STORE_BATCH_MAX];
        struct audit_row *rows[STORE_AUDIT_BATCH_MAX];
    } u;
};

/* Appends one element of a text[] literal. Every element is double-quoted so
 * that a value such as NULL is never read as SQL NULL; the values come from
 * character sets without quotes or backslashes. A NULL pointer is SQL NULL. */
static void lit_elem(struct strbuf *l, const char *v, bool first)
{
    if (!first) strbuf_add(l, ",", 1);
    if (!v) {
        strbuf_add(l, "NULL", 4);
        return;
    }
    strbuf_add(l, "\"", 1);
    strbuf_add(l, v, strlen(v));
    strbuf_add(l, "\"", 1);
}

static void batch_free(struct batch *b)
{
    for (int i = 0; i < 7; i++) free(b->arrays[i]);
    free(b);
}

static void jobs_fail(struct cb_job **jobs, size_t n, enum cb_outcome o)
{
    for (size_t i = 0; i < n; i++) jobs[i]->done(jobs[i], o);
}

static void submit_jobs(struct store *st, struct cb_job **jobs, size_t n);

/* Writes the answers of the committed batches, oldest first. */
static void answer_committed(struct store *st)
{
    while (st->answered) {
        struct batch *b = st->answered;
        st->answered = b->next;
        if (!st->answered) st->answered_tail = NULL;
        for (size_t i = 0; i < b->n; i++)
            b->u.jobs[i]->done(b->u.jobs[i], (enum cb_outcome)b->out[i]);
        batch_free(b);
    }
}

/* idv.record_callback_batch answers one letter per callback. Anything else
 * cannot be vouched for: UNAVAILABLE (never happens with a matching schema). */
static enum cb_outcome outcome_of_code(char c)
{
    switch (c) {
    case 'A': return CBO_ACCEPTED;
    case 'D': return CBO_DUPLICATE;
    case 'C': return CBO_CONFLICT;
    case 'R': return CBO_REJECTED;
    default: return CBO_UNAVAILABLE;
    }
}

static void batch_done(struct pg_query *q, PGresult *res, int err)
{
    struct batch *b = q->data;
    struct store *st = b->st;
    if (b->audit) {
        st->audit_inflight = false;
        if (err) {
            g_metrics.audit_rows_failed += b->n;
            log_kv(LOGL_WARN, "audit rows not written", "REASON", idv_strerror(err), "SQLSTATE",
                   pg_sqlstate(res), NULL);
        }
        for (size_t i = 0; i < b->n; i++) free(b->u.rows[i]);
        if (res) PQclear(res);
        batch_free(b);
        return;
    }
    if (b->prev)
        b->prev->next = b->next;
    else
        st->inflight = b->next;
    if (b->next) b->next->prev = b->prev;
    double secs = (double)(uv_now(st->loop) - b->sent_at) / 1000.0;
    if (err == 0 && res && PQntuples(res) == 1 && PQnfields(res) == 1 &&
        (size_t)PQgetlength(res, 0, 0) == b->n) {
        histogram_observe(&g_metrics.commit_seconds, secs);
        g_metrics.batches++;
        g_metrics.batch_items += b->n;
        /* The sync has been answered: the transaction committed. One letter
         * per callback, in the order sent. */
        const char *codes = PQgetvalue(res, 0, 0);
        for (size_t i = 0; i < b->n; i++) b->out[i] = (unsigned char)outcome_of_code(codes[i]);
        PQclear(res);
        /* The answers are written at the end of this loop turn (check_cb):
         * first the pool sends the callbacks that waited for this commit, so
         * that PostgreSQL works on them while these answers go out, instead
         * of after. */
        b->next = NULL;
        if (st->answered_tail)
            st->answered_tail->next = b;
        else
            st->answered = b;
        st->answered_tail = b;
        if (st->closing) answer_committed(st);
        return;
    }
    if (err == IDV_EDB && b->n > 1) {
        /* PostgreSQL refused the batch as a whole (the transaction rolled
         * back, nothing of it is recorded): retry one callback per transaction
         * so that one bad element cannot fail the others. */
        g_metrics.batch_fallbacks++;
        log_kv(LOGL_WARN, "callback batch failed, retrying one by one", "SQLSTATE",
               pg_sqlstate(res), "DB_ERROR", res ? PQresultErrorMessage(res) : "", NULL);
        if (res) PQclear(res);
        for (size_t i = 0; i < b->n; i++) submit_jobs(st, &b->u.jobs[i], 1);
        batch_free(b);
        return;
    }
    if (err == IDV_EDB || (err == 0)) {
        log_kv(LOGL_ERROR, "recording a callback failed", "SQLSTATE", pg_sqlstate(res), "DB_ERROR",
               res ? PQresultErrorMessage(res) : "unexpected result shape", NULL);
    }
    if (res) PQclear(res);
    /* Lost, timed out or refused: the commit is not confirmed. */
    jobs_fail(b->u.jobs, b->n, CBO_UNAVAILABLE);
    batch_free(b);
}

/* Builds and submits one batch from jobs[0..n). */
static void submit_jobs(struct store *st, struct cb_job **jobs, size_t n)
{
    struct batch *b = calloc(1, sizeof *b);
    struct strbuf l[5] = {{0}};
    if (!b) {
        jobs_fail(jobs, n, CBO_UNAVAILABLE);
        return;
    }
    for (int k = 0; k < 5; k++) strbuf_add(&l[k], "{", 1);
    uint64_t deadline = UINT64_MAX;
    for (size_t i = 0; i < n; i++) {
        struct cb_job *j = jobs[i];
        char passed[2] = {j->passed, '\0'};
        lit_elem(&l[0], j->transaction_id, i == 0);
        lit_elem(&l[1], j->token_hex, i == 0);
        lit_elem(&l[2], passed, i == 0);
        lit_elem(&l[3], j->sub_code, i == 0);
        lit_elem(&l[4], j->client_ip, i == 0);
        b->u.jobs[i] = j;
        if (j->deadline < deadline) deadline = j->deadline;
    }
    bool oom = false;
    for (int k = 0; k < 5; k++) {
        strbuf_add(&l[k], "}", 1);
        oom |= l[k].oom;
        b->arrays[k] = l[k].p;
        b->values[k] = l[k].p;
    }
    if (oom) {
        jobs_fail(jobs, n, CBO_UNAVAILABLE);
        batch_free(b);
        return;
    }
    snprintf(b->instance_param, sizeof b->instance_param, "%s", st->instance);
    b->values[5] = b->instance_param;
    b->values[6] = st->final ? "true" : "false";
    b->st = st;
    b->n = n;
    b->sent_at = uv_now(st->loop);
    b->next = st->inflight;
    if (b->next) b->next->prev = b;
    st->inflight = b;
    b->q.stmt = "record_callback_batch";
    b->q.nparams = 7;
    b->q.values = b->values;
    b->q.deadline = deadline;
    b->q.done = batch_done;
    b->q.data = b;
    pg_pool_submit(st->pool, &b->q);
}

static void submit_audit(struct store *st)
{
    struct batch *b = calloc(1, sizeof *b);
    if (!b) return;
    struct strbuf l[7] = {{0}};
    for (int k = 0; k < 7; k++) strbuf_add(&l[k], "{", 1);
    size_t n = 0;
    while (st->ahead && n < STORE_AUDIT_BATCH_MAX) {
        struct audit_row *r = st->ahead;
        st->ahead = r->next;
        st->apending--;
        char passed[2] = {r->passed, '\0'};
        lit_elem(&l[0], "malformed", n == 0);
        lit_elem(&l[1], r->transaction_id[0] ? r->transaction_id : NULL, n == 0);
        lit_elem(&l[2], r->passed ? passed : NULL, n == 0);
        lit_elem(&l[3], r->sub_code[0] ? r->sub_code : NULL, n == 0);
        lit_elem(&l[4], r->client_ip, n == 0);
        lit_elem(&l[5], r->reason, n == 0);
        lit_elem(&l[6], r->received[0] ? r->received : NULL, n == 0);
        b->u.rows[n++] = r;
    }
    if (!st->ahead) st->atail = NULL;
    bool oom = false;
    for (int k = 0; k < 7; k++) {
        strbuf_add(&l[k], "}", 1);
        oom |= l[k].oom;
        b->arrays[k] = l[k].p;
    }
    b->st = st;
    b->n = n;
    b->audit = true;
    if (oom) {
        g_metrics.audit_rows_failed += n;
        for (size_t i = 0; i < n; i++) free(b->u.rows[i]);
        batch_free(b);
        return;
    }
    snprintf(b->instance_param, sizeof b->instance_param, "%s", st->instance);
    for (int k = 0; k < 6; k++) b->values[k] = b->arrays[k];
    b->values[6] = b->instance_param;
    b->values[7] = b->arrays[6]; /* p_received comes after p_instance */
    b->q.stmt = "record_events";
    b->q.nparams = 8;
    b->q.values = b->values;
    b->q.done = batch_done;
    b->q.data = b;
    st->audit_inflight = true;
    pg_pool_submit(st->pool, &b->q);
}

/* Callback batches in flight that still hold a slot; *largest is the number
 * of callbacks in the largest of them, *total in all of them. */
static unsigned young_batches(const struct store *st, size_t *largest, size_t *total)
{
    uint64_t now = uv_now(st->loop);
    unsigned n = 0;
    *largest = *total = 0;
    for (const struct batch *b = st->inflight; b; b = b->next)
        if (now - b->sent_at < STORE_SLOW_BATCH_MS) {
            n++;
            *total += b->n;
            if (b->n > *largest) *largest = b->n;
        }
    return n;
}

size_t store_batch_size(size_t pending, size_t in_flight, size_t largest, unsigned young,
                        unsigned max_batches)
{
    if (pending == 0 || young >= max_batches) return 0;
    if (young > 0 && pending < largest) return 0;
    size_t n = pending;
    size_t total = pending + in_flight;
    if (total >= STORE_SPLIT_MIN && max_batches > 1) {
        size_t share = (total + max_batches - 1) / max_batches;
        if (n > share) n = share;
    }
    return n < STORE_BATCH_MAX ? n : STORE_BATCH_MAX;
}

/* The pool has an idle connection and nothing queued: give it the callbacks
 * gathered so far as one transaction, or else the waiting audit rows.
 *
 * Every transaction has a fixed cost in PostgreSQL (the statement's start-up,
 * its CHECK constraints read again, the commit and its WAL flush): about as
 * much as recording seven callbacks (README, Performance). Batches are as
 * large as the queue allows without making anyone wait for nothing:
 *  - no batch in flight: whatever is waiting goes at once (light load is not
 *    delayed);
 *  - a batch in flight: callbacks that arrive wait for its commit and leave
 *    together with the next one, unless at least as many wait as that batch
 *    holds: then a second batch goes at once, so that one commit can wait for
 *    its WAL flush while the other uses the CPU. The size of a batch thus
 *    follows the arrival rate times the commit time;
 *  - from STORE_SPLIT_MIN callbacks waiting and in flight together, a batch
 *    takes at most its share of them (the total over max_batches), the rest
 *    waits for the next slot. Without it, a closed loop of clients settles
 *    into one large batch and one small one (59 and 5 of 64), the small one
 *    paying the fixed cost for little and the large one keeping a backend
 *    busy while the other waits; shared out, the batches are of equal size
 *    and run side by side on the server's cores (README, Performance).
 * At most max_batches are in flight (backends beyond the server's cores only
 * compete for them). A slot is released when its batch is answered, or after
 * STORE_SLOW_BATCH_MS, so a batch stuck on a lock does not stop the rest.
 *
 * Audit rows go one batch at a time: a flood of malformed requests then holds
 * at most one connection, the others stay free for callbacks that wait on a
 * commit, and the rows get their ids in the order the requests arrived. */
static void on_pool_idle(void *arg)
{
    struct store *st = arg;
    size_t largest, in_flight;
    unsigned young = young_batches(st, &largest, &in_flight);
    size_t take = store_batch_size(st->pending, in_flight, largest, young, st->max_batches);
    if (take) {
        struct cb_job *jobs[STORE_BATCH_MAX];
        size_t n = 0;
        while (st->head && n < take) {
            struct cb_job *j = st->head;
            st->head = j->next;
            st->pending--;
            j->next = NULL;
            jobs[n++] = j;
        }
        if (!st->head) st->tail = NULL;
        submit_jobs(st, jobs, n);
        return;
    }
    if (st->ahead && !st->audit_inflight) submit_audit(st);
}

static void check_cb(uv_check_t *h)
{
    struct store *st = h->data;
    answer_committed(st);
    /* Callbacks refused for overload are answered here, outside the handler
     * that submitted them. */
    while (st->refused) {
        struct cb_job *j = st->refused;
        st->refused = j->next;
        j->next = NULL;
        j->done(j, CBO_UNAVAILABLE);
    }
    if (st->head || st->ahead) pg_pool_kick(st->pool);
}

static void tick_cb(uv_timer_t *t)
{
    struct store *st = t->data;
    uint64_t now = uv_now(st->loop);
    /* Jobs are appended in deadline order: expire from the head. */
    while (st->head && st->head->deadline <= now) {
        struct cb_job *j = st->head;
        st->head = j->next;
        if (!st->head) st->tail = NULL;
        st->pending--;
        j->next = NULL;
        j->done(j, CBO_UNAVAILABLE);
    }
}

int store_new(struct store **out, uv_loop_t *loop, struct pg_pool *pool, const char *instance,
              bool final, uint64_t timeout_ms)
{
    struct store *st = calloc(1, sizeof *st);
    if (!st) return IDV_ENOMEM;
    st->instance = strdup(instance);
    if (!st->instance) {
        free(st);
        return IDV_ENOMEM;
    }
    st->loop = loop;
    st->pool = pool;
    st->final = final;
    st->timeout_ms = timeout_ms;
    uv_check_init(loop, &st->check);
    st->check.data = st;
    uv_check_start(&st->check, check_cb);
    uv_unref((uv_handle_t *)&st->check);
    uv_timer_init(loop, &st->tick);
    st->tick.data = st;
    uint64_t t = timeout_ms / 10 < 10 ? 10 : (timeout_ms / 10 > 100 ? 100 : timeout_ms / 10);
    uv_timer_start(&st->tick, tick_cb, t, t);
    uv_unref((uv_handle_t *)&st->tick);
    st->open_handles = 2;
    /* A quarter of the pool, at least two (one slot may be held by a slow
     * batch), never more than the pool. */
    struct pg_pool_stats ps;
    pg_pool_get_stats(pool, &ps);
    unsigned size = (unsigned)(ps.ready + ps.connecting + ps.down);
    st->max_batches = size / 4 > 2 ? size / 4 : 2;
    if (st->max_batches > size) st->max_batches = size ? size : 1;
    pg_pool_on_idle(pool, on_pool_idle, st);
    *out = st;
    return 0;
}

void store_submit_callback(struct store *st, struct cb_job *job)
{
    job->next = NULL;
    job->deadline = uv_now(st->loop) + st->timeout_ms;
    if (st->pending >= STORE_MAX_PENDING || st->closing) {
        job->next = st->refused;
        st->refused = job;
        return;
    }
    if (st->tail)
        st->tail->next = job;
    else
        st->head = job;
    st->tail = job;
    st->pending++;
}

void store_audit_malformed(struct store *st, const struct cb_params *p, const char *client_ip,
                           const char *reason)
{
    if (st->apending >= STORE_AUDIT_MAX_PENDING) {
        g_metrics.callbacks_shed_rows++;
        return;
    }
    struct audit_row *r = calloc(1, sizeof *r);
    if (!r) {
        g_metrics.callbacks_shed_rows++;
        return;
    }
    if (p->tx_ok) snprintf(r->transaction_id, sizeof r->transaction_id, "%s", p->transaction_id);
    if (p->sub_ok) snprintf(r->sub_code, sizeof r->sub_code, "%s", p->sub_code);
    r->passed = p->passed;
    snprintf(r->client_ip, sizeof r->client_ip, "%s", client_ip);
    struct timespec now;
    if (clock_gettime(CLOCK_REALTIME, &now) == 0)
        snprintf(r->received, sizeof r->received, "%lld.%06ld", (long long)now.tv_sec,
                 now.tv_nsec / 1000);
    r->reason = reason ? reason : "malformed";
    if (st->atail)
        st->atail->next = r;
    else
        st->ahead = r;
    st->atail = r;
    st->apending++;
}

void store_queue_sizes(const struct store *st, size_t *callbacks, size_t *audit)
{
    *callbacks = st->pending;
    *audit = st->apending;
}

static void store_handle_closed(uv_handle_t *h)
{
    struct store *st = h->data;
    if (--st->open_handles > 0) return;
    void (*cb)(void *) = st->close_cb;
    void *arg = st->close_arg;
    while (st->ahead) {
        struct audit_row *r = st->ahead;
        st->ahead = r->next;
        free(r);
    }
    free(st->instance);
    free(st);
    if (cb) cb(arg);
}

void store_close(struct store *st, void (*cb)(void *), void *arg)
{
    st->closing = true;
    st->close_cb = cb;
    st->close_arg = arg;
    pg_pool_on_idle(st->pool, NULL, NULL);
    /* Committed: their true answers (a batch committed later is answered by
     * batch_done directly, see there). */
    answer_committed(st);
    struct cb_job *lists[2] = {st->head, st->refused};
    st->head = st->tail = st->refused = NULL;
    st->pending = 0;
    for (int i = 0; i < 2; i++)
        while (lists[i]) {
            struct cb_job *j = lists[i];
            lists[i] = j->next;
            j->done(j, CBO_UNAVAILABLE);
        }
    uv_close((uv_handle_t *)&st->check, store_handle_closed);
    uv_close((uv_handle_t *)&st->tick, store_handle_closed);
}
