#include "initialize.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "alibaba.h"
#include "log.h"
#include "outbound.h"
#include "query.h"

#define TOKEN_BYTES    32 /* 256 bits from the CSPRNG, 43 URL-safe characters */
#define STALE_INTERVAL "10 minutes"

const struct pg_stmt initialize_statements[] = {
    {"begin_initialize", "SELECT kind, id, transaction_id, transaction_url, protocol, request_id,"
                         " expires_at FROM idv.begin_initialize($1, $2, $3, $4, $5::interval)"},
    {"finish_initialize", "SELECT idv.finish_initialize($1::bigint, $2, $3, $4, $5)"},
    {"fail_initialize", "SELECT idv.fail_initialize($1::bigint, $2, $3, $4)"},
};
const size_t initialize_statements_count =
    sizeof initialize_statements / sizeof initialize_statements[0];

/* How each way an Initialize can fail is answered: data, not code. Upstream
 * errors keep Alibaba's Code, Message and RequestId in the answer. */
struct failure {
    int status;
    const char *code;
    const char *message;
    int retry_after; /* seconds for Retry-After; 0: none; -1: until the circuit's probe */
};

static const struct failure f_timeout = {504, "UpstreamTimeout",
                                         "Alibaba did not answer in time; the verification may "
                                         "exist upstream but is not recorded",
                                         0};
static const struct failure f_connect = {502, "UpstreamUnreachable",
                                         "cannot connect to the Alibaba endpoint", 0};
static const struct failure f_tls = {502, "UpstreamTlsError",
                                     "TLS handshake or certificate verification failed", 0};
static const struct failure f_broken = {
    502, "UpstreamTruncated", "the connection broke in the middle of Alibaba's answer", 0};
static const struct failure f_garbage = {502, "UpstreamBadResponse",
                                         "Alibaba's answer is not the expected JSON", 0};
static const struct failure f_other = {502, "UpstreamError", "the call to Alibaba failed", 0};
/* Refused at once while the circuit is open: nothing was sent, so no
 * verification exists upstream. */
static const struct failure f_circuit = {503, "UpstreamUnavailable",
                                         "Alibaba was unreachable on the last calls; the call was "
                                         "not made (retry after Retry-After seconds)",
                                         -1};

/* By upstream HTTP status when the body is Alibaba's JSON envelope. */
static const struct {
    long http;
    const char *code; /* NULL: any code */
    struct failure f;
} upstream_map[] = {
    {403,
     "Throttling.Api",
     {429, "UpstreamThrottled", "Alibaba throttled the call; retry later", 2}},
    {400, NULL, {422, "UpstreamRejected", "Alibaba refused the parameters", 0}},
    {403, NULL, {502, "UpstreamForbidden", "Alibaba refused the credentials or the account", 0}},
    {500, NULL, {502, "UpstreamInternalError", "Alibaba reported an internal error", 0}},
    {0, NULL, {502, "UpstreamError", "Alibaba answered with an error", 0}},
};

enum stage { ST_BEGIN = 0, ST_CALL, ST_FINISH, ST_FAIL };

struct init_req {
    struct app *app;
    struct conn *c;
    enum stage stage;
    struct pg_query q;
    struct out_call call;
    const char *values[5];
    char biz[40];
    char *user;
    char token[64];
    char token_hex[SHA256_HEX_LEN + 1];
    char id[24];
    struct kv params[20];
    size_t nparams;
    char *owned[20]; /* strings this request allocated for params */
    size_t nowned;
    char *callback_url;
    /* the answer, kept until the database has recorded the outcome */
    int status;
    char *body;
    char extra[40]; /* extra answer headers: Retry-After */
    char *tx, *url, *protocol, *request_id, *up_code, *up_message;
};

static void req_free(struct init_req *r)
{
    OPENSSL_cleanse(r->token, sizeof r->token);
    for (size_t i = 0; i < r->nowned; i++) free(r->owned[i]);
    free(r->user);
    free(r->callback_url);
    free(r->body);
    free(r->tx);
    free(r->url);
    free(r->protocol);
    free(r->request_id);
    free(r->up_code);
    free(r->up_message);
    free(r);
}

static void respond_json(struct conn *c, int status, json_t *o, const char *extra)
{
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!s) {
        app_error(c, 500, "InternalError", "out of memory", NULL, NULL);
        return;
    }
    conn_respond(c, status, "application/json", extra, s, strlen(s), false);
    free(s);
}

static json_t *success_json(const char *tx, const char *url, const char *protocol,
                            const char *request_id, const char *biz, const char *expires)
{
    json_t *o = json_object();
    json_object_set_new(o, "transactionId", json_string(tx ? tx : ""));
    json_object_set_new(o, "transactionUrl", url ? json_string(url) : json_null());
    json_object_set_new(o, "protocol", protocol ? json_string(protocol) : json_null());
    json_object_set_new(o, "requestId", request_id ? json_string(request_id) : json_null());
    json_object_set_new(o, "merchantBizId", json_string(biz));
    json_object_set_new(o, "expiresAt", expires ? json_string(expires) : json_null());
    return o;
}

static const char *val_or_null(PGresult *res, int col)
{
    return PQgetisnull(res, 0, col) ? NULL : PQgetvalue(res, 0, col);
}

static void db_error(struct init_req *r, PGresult *res, int err)
{
    if (err == IDV_EDB || err == 0)
        log_kv(LOGL_ERROR, "initialize: database error", "SQLSTATE", pg_sqlstate(res), "DB_ERROR",
               res ? PQresultErrorMessage(res) : "unexpected result", "MERCHANT_BIZ_ID", r->biz,
               NULL);
    app_error(r->c, 503, "Unavailable", "the database did not confirm the record", NULL,
              "Retry-After: 5\r\n");
}

static void submit(struct init_req *r, const char *stmt, int n, pg_done_cb done)
{
    memset(&r->q, 0, sizeof r->q);
    r->q.done = done;
    r->q.stmt = stmt;
    r->q.nparams = n;
    r->q.values = r->values;
    r->q.data = r;
    pg_pool_submit(r->app->pool, &r->q);
}

static void record_done(struct pg_query *q, PGresult *res, int err);

/* Records initialize_failed, then answers with the failure. */
static void fail_with(struct init_req *r, const struct failure *f, long http, const char *up_code,
                      const char *up_msg, const char *up_rid)
{
    json_t *o = json_pack("{s:s, s:s}", "code", f->code, "message", f->message);
    if (o && up_code) json_object_set_new(o, "upstreamCode", json_string(up_code));
    if (o && up_msg) json_object_set_new(o, "upstreamMessage", json_string(up_msg));
    if (o && up_rid) json_object_set_new(o, "requestId", json_string(up_rid));
    if (o && http) json_object_set_new(o, "upstreamStatus", json_integer(http));
    if (o) json_object_set_new(o, "merchantBizId", json_string(r->biz));
    r->body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    r->status = f->status;
    unsigned long long retry = f->retry_after > 0 ? (unsigned long long)f->retry_after : 0;
    if (f->retry_after < 0) {
        uint64_t ms = 0;
        (void)outbound_gate(r->app->outbound, &ms);
        retry = ms / 1000 + (ms % 1000 != 0);
        if (retry < 1) retry = 1;
    }
    if (retry) snprintf(r->extra, sizeof r->extra, "Retry-After: %llu\r\n", retry);
    r->up_code = strdup(up_code ? up_code : f->code);
    r->up_message = strdup(up_msg ? up_msg : f->message);
    r->request_id = up_rid ? strdup(up_rid) : NULL;
    r->values[0] = r->id;
    r->values[1] = r->up_code ? r->up_code : f->code;
    r->values[2] = r->up_message ? r->up_message : f->message;
    r->values[3] = r->request_id ? r->request_id : "";
    r->stage = ST_FAIL;
    char st[8];
    snprintf(st, sizeof st, "%d", f->status);
    log_kv(LOGL_WARN, "initialize failed", "MERCHANT_BIZ_ID", r->biz, "CODE", f->code,
           "UPSTREAM_CODE", up_code, "UPSTREAM_REQUEST_ID", up_rid, "STATUS", st, NULL);
    submit(r, "fail_initialize", 4, record_done);
}

static void record_done(struct pg_query *q, PGresult *res, int err)
{
    struct init_req *r = q->data;
    if (err || !res || PQntuples(res) != 1) {
        /* The outcome is not recorded: the row stays initializing and is
         * resolved later; the business must not act on an unrecorded answer. */
        db_error(r, res, err);
    } else if (r->stage == ST_FINISH) {
        if (PQgetisnull(res, 0, 0)) {
            log_kv(LOGL_ERROR, "initialize: row no longer initializing", "MERCHANT_BIZ_ID", r->biz,
                   "TRANSACTION_ID", r->tx, NULL);
            app_error(r->c, 409, "InProgress", "the transaction changed meanwhile", NULL, NULL);
        } else {
            conn_note(r->c, "initiated", r->tx);
            respond_json(r->c, 201,
                         success_json(r->tx, r->url, r->protocol, r->request_id, r->biz,
                                      PQgetvalue(res, 0, 0)),
                         NULL);
        }
    } else {
        conn_note(r->c, "initialize_failed", NULL);
        if (r->body)
            conn_respond(r->c, r->status, "application/json", r->extra[0] ? r->extra : NULL,
                         r->body, strlen(r->body), false);
        else
            app_error(r->c, 500, "InternalError", "out of memory", NULL, NULL);
    }
    if (res) PQclear(res);
    req_free(r);
}

static char *json_str_dup(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? strdup(s) : NULL;
}

static void call_done(struct out_call *call, const struct out_result *res)
{
    struct init_req *r = call->data;
    const struct alibaba_reply *rep = &res->reply;
    switch (res->transport) {
    case OUT_OK: break;
    case OUT_TIMEOUT: fail_with(r, &f_timeout, 0, NULL, res->error, NULL); return;
    case OUT_CONNECT: fail_with(r, &f_connect, 0, NULL, res->error, NULL); return;
    case OUT_TLS: fail_with(r, &f_tls, 0, NULL, res->error, NULL); return;
    case OUT_BROKEN: fail_with(r, &f_broken, 0, NULL, res->error, NULL); return;
    case OUT_TOO_BIG: fail_with(r, &f_garbage, 0, NULL, res->error, NULL); return;
    case OUT_OTHER: fail_with(r, &f_other, 0, NULL, res->error, NULL); return;
    case OUT_CIRCUIT: fail_with(r, &f_circuit, 0, NULL, res->error, NULL); return;
    }
    if (!res->parsed) {
        fail_with(r, &f_garbage, res->http_status, NULL, NULL, NULL);
        return;
    }
    if (res->http_status != 200 || strcmp(rep->code, "Success") != 0) {
        for (size_t i = 0; i < sizeof upstream_map / sizeof upstream_map[0]; i++) {
            if (upstream_map[i].http && upstream_map[i].http != res->http_status) continue;
            if (upstream_map[i].code && strcmp(upstream_map[i].code, rep->code) != 0) continue;
            fail_with(r, &upstream_map[i].f, res->http_status, rep->code, rep->message,
                      rep->request_id);
            return;
        }
    }
    json_error_t je;
    json_t *result = rep->result_json ? json_loads(rep->result_json, 0, &je) : NULL;
    r->tx = json_str_dup(result, "TransactionId");
    r->url = json_str_dup(result, "TransactionUrl");
    r->protocol = json_str_dup(result, "Protocol");
    json_decref(result);
    if (!r->tx || !cb_valid_transaction_id(r->tx, strlen(r->tx)) || !r->url) {
        fail_with(r, &f_garbage, res->http_status, rep->code,
                  "Result.TransactionId or "
                  "Result.TransactionUrl missing or malformed",
                  rep->request_id);
        return;
    }
    r->request_id = rep->request_id ? strdup(rep->request_id) : NULL;
    r->values[0] = r->id;
    r->values[1] = r->tx;
    r->values[2] = r->url;
    r->values[3] = r->protocol ? r->protocol : "";
    r->values[4] = r->request_id ? r->request_id : "";
    r->stage = ST_FINISH;
    log_kv(LOGL_INFO, "initialized at Alibaba", "MERCHANT_BIZ_ID", r->biz, "TRANSACTION_ID", r->tx,
           "UPSTREAM_REQUEST_ID", r->request_id, NULL);
    submit(r, "finish_initialize", 5, record_done);
}

static void begin_done(struct pg_query *q, PGresult *res, int err)
{
    struct init_req *r = q->data;
    if (err || !res || PQntuples(res) != 1) {
        db_error(r, res, err);
        if (res) PQclear(res);
        req_free(r);
        return;
    }
    const char *kind = PQgetvalue(res, 0, 0);
    if (!strcmp(kind, "existing")) {
        conn_note(r->c, "existing", val_or_null(res, 2));
        respond_json(r->c, 200,
                     success_json(val_or_null(res, 2), val_or_null(res, 3), val_or_null(res, 4),
                                  val_or_null(res, 5), r->biz, val_or_null(res, 6)),
                     NULL);
        PQclear(res);
        req_free(r);
        return;
    }
    if (!strcmp(kind, "in_progress")) {
        json_t *o =
            json_pack("{s:s, s:s, s:s}", "code", "InProgress", "message",
                      "an Initialize for this merchantBizId is in flight", "merchantBizId", r->biz);
        respond_json(r->c, 409, o, NULL);
        PQclear(res);
        req_free(r);
        return;
    }
    snprintf(r->id, sizeof r->id, "%s", PQgetvalue(res, 0, 1));
    PQclear(res);
    /* The row is committed as initializing: now, and only now, call Alibaba. */
    r->stage = ST_CALL;
    r->params[r->nparams++] = (struct kv){"ProductCode", "FACE_LIVENESS"};
    r->params[r->nparams++] = (struct kv){"CallbackUrl", r->callback_url};
    r->params[r->nparams++] = (struct kv){"CallbackToken", r->token};
    r->call.action = "Initialize";
    r->call.params = r->params;
    r->call.nparams = r->nparams;
    r->call.done = call_done;
    r->call.data = r;
    outbound_submit(r->app->outbound, &r->call);
}

void initialize_handle(struct app *app, struct conn *c, json_t *o)
{
    struct init_req *r = calloc(1, sizeof *r);
    if (!r) {
        json_decref(o);
        app_error(c, 500, "InternalError", "out of memory", NULL, NULL);
        return;
    }
    r->app = app;
    r->c = c;
    /* Fields the daemon sets itself are refused; unknown fields too. */
    const char *key;
    json_t *val;
    json_object_foreach(o, key, val)
    {
        if (!strcmp(key, "callbackUrl") || !strcmp(key, "callbackToken")) {
            app_error(c, 400, "InvalidParameter", "set by the daemon, not accepted", key, NULL);
            goto refuse;
        }
        if (!strcmp(key, "productCode")) {
            if (!json_is_string(val) || strcmp(json_string_value(val), "FACE_LIVENESS") != 0) {
                app_error(c, 400, "InvalidParameter", "only FACE_LIVENESS is supported", key, NULL);
                goto refuse;
            }
            continue;
        }
        bool known = false;
        for (size_t i = 0; i < alibaba_initialize_params_count; i++)
            known |= !strcmp(key, alibaba_initialize_params[i].json_name);
        if (!known) {
            app_error(c, 400, "InvalidParameter", "unknown parameter", key, NULL);
            goto refuse;
        }
    }
    for (size_t i = 0; i < alibaba_initialize_params_count; i++) {
        const struct param_rule *rule = &alibaba_initialize_params[i];
        json_t *v = json_object_get(o, rule->json_name);
        if (!v || json_is_null(v)) {
            if (rule->required) {
                char msg[96];
                snprintf(msg, sizeof msg, "%s is required", rule->json_name);
                app_error(c, 400, "MissingParameter", msg, rule->json_name, NULL);
                goto refuse;
            }
            continue;
        }
        if (!json_is_string(v) ||
            !alibaba_param_valid(rule, json_string_value(v), json_string_length(v))) {
            char msg[96];
            snprintf(msg, sizeof msg, "%s is malformed", rule->json_name);
            app_error(c, 400, "InvalidParameter", msg, rule->json_name, NULL);
            goto refuse;
        }
        char *copy = strdup(json_string_value(v));
        if (!copy) goto oom;
        r->owned[r->nowned++] = copy;
        r->params[r->nparams++] = (struct kv){rule->api_name, copy};
        if (rule->check == PC_BIZ_ID) snprintf(r->biz, sizeof r->biz, "%s", copy);
        if (rule->check == PC_USER_ID && !(r->user = strdup(copy))) goto oom;
    }
    json_decref(o);
    o = NULL;

    if (crypto_random_token(TOKEN_BYTES, r->token, sizeof r->token) != 0) {
        app_error(c, 503, "Unavailable", "the random number generator failed", NULL, NULL);
        req_free(r);
        return;
    }
    uint8_t d[SHA256_LEN];
    crypto_sha256(r->token, strlen(r->token), d);
    crypto_hex(d, sizeof d, r->token_hex);
    size_t ul = strlen(app->cfg->public_base_url) + strlen(app->cfg->callback_path) + 1;
    r->callback_url = malloc(ul);
    if (!r->callback_url) goto oom;
    snprintf(r->callback_url, ul, "%s%s", app->cfg->public_base_url, app->cfg->callback_path);

    r->values[0] = r->biz;
    r->values[1] = r->user;
    r->values[2] = r->token_hex;
    r->values[3] = app->cfg->instance_name;
    r->values[4] = STALE_INTERVAL;
    r->stage = ST_BEGIN;
    submit(r, "begin_initialize", 5, begin_done);
    return;

oom:
    app_error(c, 500, "InternalError", "out of memory", NULL, NULL);
refuse:
    json_decref(o);
    req_free(r);
}
