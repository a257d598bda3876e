#include "confirm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "log.h"
#include "metrics.h"
#include "outbound.h"

const struct pg_stmt confirm_statements[] = {
    {"claim_work", "SELECT id, kind, transaction_id, merchant_biz_id, lease, attempts"
                   " FROM idv.claim_work($1, $2::integer, $3::interval)"},
    {"complete_confirmation",
     "SELECT idv.complete_confirmation($1::bigint, $2::uuid, $3, $4, $5, $6, $7::jsonb)"},
    {"complete_unfinished", "SELECT idv.complete_unfinished($1::bigint, $2::uuid, $3, $4)"},
    {"retry_work", "SELECT idv.retry_work($1::bigint, $2::uuid, $3, $4::interval, $5::boolean)"},
    {"sweep", "SELECT idv.sweep($1::interval, $2::interval, $3::boolean)"},
    {"work_queue_status", "SELECT waiting, oldest_seconds, given_up FROM idv.work_queue_status"},
    /* An item whose call the circuit refused, or that failed as the outage
     * the circuit is open for: back to the queue with its attempt given back
     * (claim_work counted it), so that an outage gives nothing up. */
    {"hold_work", "WITH u AS (UPDATE idv.work_queue q SET attempts = greatest(q.attempts - 1, 0),"
                  " lease = NULL, leased_until = NULL, not_before = now(),"
                  " last_error = left($3, 1000)"
                  " WHERE q.id = $1::bigint AND q.lease = $2::uuid AND q.done_at IS NULL"
                  " RETURNING 1)"
                  " SELECT CASE WHEN EXISTS (SELECT 1 FROM u) THEN 'held' ELSE 'stale' END"},
};
const size_t confirm_statements_count = sizeof confirm_statements / sizeof confirm_statements[0];

/* The Ext* fields of a CheckResult: strings holding JSON, stored as jsonb. */
static const char *const ext_fields[] = {"ExtBasicInfo", "ExtFaceInfo",   "ExtIdInfo", "ExtInfo",
                                         "ExtRiskInfo",  "ExtSourceInfo", "EkycResult"};

enum item_stage { IS_CALL = 0, IS_RECORD };

struct item {
    struct confirm *cf;
    struct item *next;
    enum item_stage stage;
    char id[24];
    char lease[40];
    char kind[8];
    char transaction_id[132];
    char biz[40];
    long attempts;
    struct out_call call;
    struct kv params[3];
    struct pg_query q;
    const char *values[7];
    char *ext_json;
    char *request_id;
    char passed[2];
    char sub_code[32];
    char delay[32];
    char error[300];
    bool give_up;
};

struct confirm {
    struct app *app;
    struct confirm_opts opts;
    char *instance;
    uv_timer_t poll, sweep, stats;
    struct pg_query claim_q, sweep_q, stats_q;
    bool claiming, sweeping, querying_stats, closing;
    const char *claim_values[3];
    char claim_limit[16], lease_str[32];
    const char *sweep_values[3];
    char grace_str[32];
    struct item *items; /* in flight */
    size_t inflight;
    struct confirm_stats st;
    int open_handles;
    void (*close_cb)(void *);
    void *close_arg;
};

static void claim(struct confirm *cf);
static void confirm_maybe_free(struct confirm *cf);

static void item_free(struct item *it)
{
    struct confirm *cf = it->cf;
    for (struct item **pp = &cf->items; *pp; pp = &(*pp)->next)
        if (*pp == it) {
            *pp = it->next;
            break;
        }
    cf->inflight--;
    free(it->ext_json);
    free(it->request_id);
    free(it);
    if (!cf->closing)
        claim(cf);
    else
        confirm_maybe_free(cf);
}

static void record_done(struct pg_query *q, PGresult *res, int err)
{
    struct item *it = q->data;
    const char *r = !err && res && PQntuples(res) == 1 ? PQgetvalue(res, 0, 0) : NULL;
    if (!r) {
        /* Not recorded: the lease runs out and the item is claimed again. */
        log_kv(LOGL_WARN, "confirmation not recorded; the item will be retried", "TRANSACTION_ID",
               it->transaction_id, "REASON", idv_strerror(err), "SQLSTATE", pg_sqlstate(res), NULL);
    } else if (!strcmp(r, "confirmed") || !strcmp(r, "disagreement")) {
        g_metrics.confirmations++;
        if (r[0] == 'd') {
            g_metrics.disagreements++;
            log_kv(LOGL_WARN, "CheckResult disagrees with the callback; CheckResult wins",
                   "TRANSACTION_ID", it->transaction_id, "PASSED", it->passed, "SUB_CODE",
                   it->sub_code, "UPSTREAM_REQUEST_ID", it->request_id, NULL);
        } else {
            log_kv(LOGL_INFO, "result confirmed", "TRANSACTION_ID", it->transaction_id, "PASSED",
                   it->passed, "SUB_CODE", it->sub_code, "UPSTREAM_REQUEST_ID", it->request_id,
                   NULL);
        }
    } else if (!strcmp(r, "expired")) {
        log_kv(LOGL_INFO, "verification never completed: expired", "TRANSACTION_ID",
               it->transaction_id, "UPSTREAM_REQUEST_ID", it->request_id, NULL);
    } else if (!strcmp(r, "gave_up")) {
        g_metrics.confirm_giveups++;
        log_kv(LOGL_ERROR, "confirmation given up; the item stays in idv.work_queue",
               "TRANSACTION_ID", it->transaction_id, "LAST_ERROR", it->error, NULL);
    } else if (!strcmp(r, "retry")) {
        g_metrics.confirm_retries++;
    } else if (!strcmp(r, "held")) {
        log_kv(LOGL_DEBUG, "work item held while Alibaba is unreachable", "TRANSACTION_ID",
               it->transaction_id, NULL);
    } else if (!strcmp(r, "stale")) {
        log_kv(LOGL_WARN, "work item lease lost (another instance owns it now)", "TRANSACTION_ID",
               it->transaction_id, NULL);
    }
    if (res) PQclear(res);
    item_free(it);
}

static void submit(struct item *it, const char *stmt, int n)
{
    memset(&it->q, 0, sizeof it->q);
    it->q.stmt = stmt;
    it->q.nparams = n;
    it->q.values = it->values;
    it->q.done = record_done;
    it->q.data = it;
    pg_pool_submit(it->cf->app->pool, &it->q);
}

static void schedule_retry(struct item *it, const char *error)
{
    struct confirm *cf = it->cf;
    snprintf(it->error, sizeof it->error, "%s", error);
    /* Exponential back-off with jitter (x0.5 .. x1.5): items throttled together
     * do not come back together. */
    double base = (double)cf->opts.backoff_ms * pow(2.0, (double)(it->attempts - 1));
    if (base > (double)cf->opts.backoff_max_ms) base = (double)cf->opts.backoff_max_ms;
    double ms = base * (0.5 + (double)rand() / ((double)RAND_MAX + 1.0));
    snprintf(it->delay, sizeof it->delay, "%.0f milliseconds", ms);
    it->give_up = it->attempts >= cf->opts.max_attempts;
    it->values[0] = it->id;
    it->values[1] = it->lease;
    it->values[2] = it->error;
    it->values[3] = it->delay;
    it->values[4] = it->give_up ? "true" : "false";
    log_kv(it->give_up ? LOGL_ERROR : LOGL_WARN,
           it->give_up ? "CheckResult failed, giving up" : "CheckResult failed, will retry",
           "TRANSACTION_ID", it->transaction_id, "REASON", error, "DELAY", it->delay, NULL);
    it->stage = IS_RECORD;
    submit(it, "retry_work", 5);
}

/* The call was refused by the circuit, or failed as part of the outage it is
 * open for: the item goes back without counting the attempt. */
static void hold(struct item *it, const char *error)
{
    /* At most 250 bytes of the error, so that the note always fits. */
    snprintf(it->error, sizeof it->error, "%.250s (held; the attempt is not counted)", error);
    it->values[0] = it->id;
    it->values[1] = it->lease;
    it->values[2] = it->error;
    it->stage = IS_RECORD;
    submit(it, "hold_work", 3);
}

static void give_up_now(struct item *it, const char *error)
{
    it->attempts = it->cf->opts.max_attempts;
    schedule_retry(it, error);
}

/* The Ext* strings, each parsed as JSON when it is JSON, else kept as a JSON
 * string; absent fields are left out. */
static char *ext_object(json_t *result)
{
    json_t *o = json_object();
    for (size_t i = 0; i < sizeof ext_fields / sizeof ext_fields[0]; i++) {
        json_t *v = json_object_get(result, ext_fields[i]);
        if (!v || json_is_null(v)) continue;
        json_t *parsed = NULL;
        if (json_is_string(v)) {
            json_error_t e;
            parsed = json_loadb(json_string_value(v), json_string_length(v), JSON_DECODE_ANY, &e);
        }
        json_object_set_new(o, ext_fields[i], parsed ? parsed : json_deep_copy(v));
    }
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

static void call_done(struct out_call *call, const struct out_result *res)
{
    struct item *it = call->data;
    char why[300];
    if (res->outage) {
        snprintf(why, sizeof why, "transport: %s", res->error ? res->error : "failed");
        hold(it, why);
        return;
    }
    if (res->transport != OUT_OK) {
        snprintf(why, sizeof why, "transport: %s", res->error ? res->error : "failed");
        schedule_retry(it, why);
        return;
    }
    if (!res->parsed) {
        snprintf(why, sizeof why, "HTTP %ld with a body that is not Alibaba's JSON",
                 res->http_status);
        schedule_retry(it, why);
        return;
    }
    const struct alibaba_reply *rep = &res->reply;
    if (res->http_status != 200 || strcmp(rep->code, "Success") != 0) {
        snprintf(why, sizeof why, "HTTP %ld %s: %s (RequestId %s)", res->http_status, rep->code,
                 rep->message ? rep->message : "", rep->request_id ? rep->request_id : "-");
        /* Parameter errors will not heal; everything else (throttling, 5xx,
         * a credential being fixed) may. */
        if (res->http_status == 400)
            give_up_now(it, why);
        else
            schedule_retry(it, why);
        return;
    }
    it->request_id = rep->request_id ? strdup(rep->request_id) : NULL;
    json_error_t je;
    json_t *result = rep->result_json ? json_loads(rep->result_json, 0, &je) : NULL;
    const char *passed = json_string_value(json_object_get(result, "Passed"));
    const char *sub = json_string_value(json_object_get(result, "SubCode"));
    it->values[0] = it->id;
    it->values[1] = it->lease;
    it->values[2] = it->cf->instance;
    it->values[3] = it->request_id ? it->request_id : "";
    it->stage = IS_RECORD;
    if (passed && (!strcmp(passed, "Y") || !strcmp(passed, "N"))) {
        snprintf(it->passed, sizeof it->passed, "%s", passed);
        snprintf(it->sub_code, sizeof it->sub_code, "%s", sub ? sub : "");
        it->ext_json = ext_object(result);
        json_decref(result);
        if (!it->ext_json) {
            schedule_retry(it, "out of memory");
            return;
        }
        it->values[4] = it->passed;
        it->values[5] = it->sub_code;
        it->values[6] = it->ext_json;
        submit(it, "complete_confirmation", 7);
        return;
    }
    json_decref(result);
    /* No verdict yet: the verification did not complete. */
    submit(it, "complete_unfinished", 4);
}

static void claim_done(struct pg_query *q, PGresult *res, int err)
{
    struct confirm *cf = q->data;
    cf->claiming = false;
    if (err || !res || cf->closing) {
        /* Closing: what was claimed is left to its lease (any instance
         * retries it), and the struct may go now. */
        if (res) PQclear(res);
        if (cf->closing) confirm_maybe_free(cf);
        return;
    }
    int n = PQntuples(res);
    for (int r = 0; r < n; r++) {
        struct item *it = calloc(1, sizeof *it);
        if (!it) break;
        it->cf = cf;
        snprintf(it->id, sizeof it->id, "%s", PQgetvalue(res, r, 0));
        snprintf(it->kind, sizeof it->kind, "%s", PQgetvalue(res, r, 1));
        snprintf(it->transaction_id, sizeof it->transaction_id, "%s", PQgetvalue(res, r, 2));
        snprintf(it->biz, sizeof it->biz, "%s", PQgetvalue(res, r, 3));
        snprintf(it->lease, sizeof it->lease, "%s", PQgetvalue(res, r, 4));
        it->attempts = strtol(PQgetvalue(res, r, 5), NULL, 10);
        it->next = cf->items;
        cf->items = it;
        cf->inflight++;
        it->params[0] = (struct kv){"MerchantBizId", it->biz};
        it->params[1] = (struct kv){"TransactionId", it->transaction_id};
        it->params[2] = (struct kv){"IsReturnImage", "N"};
        it->call.action = "CheckResult";
        it->call.params = it->params;
        it->call.nparams = 3;
        it->call.done = call_done;
        it->call.data = it;
        it->stage = IS_CALL;
        outbound_submit(cf->app->outbound, &it->call);
    }
    PQclear(res);
    /* A full batch means more may be waiting (not after a probe's claim). */
    if (n > 0 && (unsigned)n == cf->opts.batch && cf->claim_values[1] == cf->claim_limit) claim(cf);
}

static void claim(struct confirm *cf)
{
    if (!cf->opts.can_check || cf->claiming || cf->closing || !cf->app->outbound) return;
    if (cf->inflight >= cf->opts.batch * 2) return;
    /* While Alibaba is unreachable the items stay in the queue: claiming one
     * counts an attempt, for a call the circuit would refuse. When a probe
     * may go, one item is claimed to be it. */
    enum out_gate gate = outbound_gate(cf->app->outbound, NULL);
    if (gate == OUT_GATE_OPEN) return;
    cf->claiming = true;
    memset(&cf->claim_q, 0, sizeof cf->claim_q);
    cf->claim_values[0] = cf->instance;
    cf->claim_values[1] = gate == OUT_GATE_PROBE ? "1" : cf->claim_limit;
    cf->claim_values[2] = cf->lease_str;
    cf->claim_q.stmt = "claim_work";
    cf->claim_q.nparams = 3;
    cf->claim_q.values = cf->claim_values;
    cf->claim_q.done = claim_done;
    cf->claim_q.data = cf;
    pg_pool_submit(cf->app->pool, &cf->claim_q);
}

static void on_poll(uv_timer_t *t)
{
    claim(t->data);
}

static void sweep_done(struct pg_query *q, PGresult *res, int err)
{
    struct confirm *cf = q->data;
    cf->sweeping = false;
    if (cf->closing) {
        if (res) PQclear(res);
        confirm_maybe_free(cf);
        return;
    }
    if (!err && res && PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "0") != 0) {
        log_kv(LOGL_INFO, "sweeper touched transactions", "COUNT", PQgetvalue(res, 0, 0), NULL);
        claim(cf);
    }
    if (res) PQclear(res);
}

static void on_sweep(uv_timer_t *t)
{
    struct confirm *cf = t->data;
    if (cf->sweeping || cf->closing) return;
    cf->sweeping = true;
    memset(&cf->sweep_q, 0, sizeof cf->sweep_q);
    cf->sweep_values[0] = cf->grace_str;
    cf->sweep_values[1] = "10 minutes";
    cf->sweep_values[2] = cf->opts.can_check ? "true" : "false";
    cf->sweep_q.stmt = "sweep";
    cf->sweep_q.nparams = 3;
    cf->sweep_q.values = cf->sweep_values;
    cf->sweep_q.done = sweep_done;
    cf->sweep_q.data = cf;
    pg_pool_submit(cf->app->pool, &cf->sweep_q);
}

static void stats_done(struct pg_query *q, PGresult *res, int err)
{
    struct confirm *cf = q->data;
    cf->querying_stats = false;
    if (!err && res && PQntuples(res) == 1) {
        cf->st.depth = strtol(PQgetvalue(res, 0, 0), NULL, 10);
        cf->st.oldest_seconds = strtod(PQgetvalue(res, 0, 1), NULL);
        cf->st.given_up = strtol(PQgetvalue(res, 0, 2), NULL, 10);
    }
    if (res) PQclear(res);
    if (cf->closing) confirm_maybe_free(cf);
}

static void on_stats(uv_timer_t *t)
{
    struct confirm *cf = t->data;
    if (cf->querying_stats || cf->closing) return;
    cf->querying_stats = true;
    memset(&cf->stats_q, 0, sizeof cf->stats_q);
    cf->stats_q.stmt = "work_queue_status";
    cf->stats_q.done = stats_done;
    cf->stats_q.data = cf;
    pg_pool_submit(cf->app->pool, &cf->stats_q);
}

int confirm_new(struct confirm **out, struct app *app, const struct confirm_opts *opts)
{
    struct confirm *cf = calloc(1, sizeof *cf);
    if (!cf) return IDV_ENOMEM;
    cf->instance = strdup(opts->instance);
    if (!cf->instance) {
        free(cf);
        return IDV_ENOMEM;
    }
    cf->app = app;
    cf->opts = *opts;
    if (cf->opts.batch == 0) cf->opts.batch = 1;
    cf->st.depth = -1;
    snprintf(cf->claim_limit, sizeof cf->claim_limit, "%u", cf->opts.batch);
    snprintf(cf->lease_str, sizeof cf->lease_str, "%llu milliseconds",
             (unsigned long long)opts->lease_ms);
    snprintf(cf->grace_str, sizeof cf->grace_str, "%llu milliseconds",
             (unsigned long long)opts->grace_ms);
    uv_timer_t *timers[3] = {&cf->poll, &cf->sweep, &cf->stats};
    for (int i = 0; i < 3; i++) {
        uv_timer_init(app->loop, timers[i]);
        timers[i]->data = cf;
        cf->open_handles++;
    }
    if (opts->can_check) uv_timer_start(&cf->poll, on_poll, opts->poll_ms, opts->poll_ms);
    uv_timer_start(&cf->sweep, on_sweep, opts->sweep_ms, opts->sweep_ms);
    uv_timer_start(&cf->stats, on_stats, 1000, 5000);
    for (int i = 0; i < 3; i++) uv_unref((uv_handle_t *)timers[i]);
    *out = cf;
    return 0;
}

void confirm_nudge(struct confirm *cf)
{
    if (cf) claim(cf);
}

void confirm_get_stats(const struct confirm *cf, struct confirm_stats *st)
{
    *st = cf->st;
    st->inflight = cf->inflight;
}

/* The struct goes once its timers are closed, its last item is done and no
 * query of its own (claim, sweep, stats) is still queued or in flight: the
 * pool answers those when it closes, after confirm_close() returned. */
static void confirm_maybe_free(struct confirm *cf)
{
    if (cf->open_handles > 0 || cf->inflight > 0 || cf->claiming || cf->sweeping ||
        cf->querying_stats)
        return;
    free(cf->instance);
    free(cf);
}

static void timer_closed(uv_handle_t *h)
{
    struct confirm *cf = h->data;
    if (--cf->open_handles > 0) return;
    void (*cb)(void *) = cf->close_cb;
    void *arg = cf->close_arg;
    confirm_maybe_free(cf);
    if (cb) cb(arg);
}

void confirm_close(struct confirm *cf, void (*cb)(void *), void *arg)
{
    /* Stops claiming. Items in flight are finished later by outbound_close()
     * and the pool's close, which answer every pending call and query (their
     * leases run out and any instance retries them); the last one frees the
     * struct. cb does not wait for them. */
    cf->closing = true;
    cf->close_cb = cb;
    cf->close_arg = arg;
    uv_close((uv_handle_t *)&cf->poll, timer_closed);
    uv_close((uv_handle_t *)&cf->sweep, timer_closed);
    uv_close((uv_handle_t *)&cf->stats, timer_closed);
}
