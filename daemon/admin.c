#include "admin.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "confirm.h"
#include "crypto.h"
#include "initialize.h"
#include "log.h"
#include "query.h"

/* ---- authentication ----------------------------------------------------- */

static bool authorized(struct app *app, const struct http_request *req, const char *base)
{
    if (req->n_authorization != 1 || req->authorization.len < 8) return false;
    const char *a = base + req->authorization.off;
    if (strncasecmp(a, "Bearer ", 7) != 0) return false;
    const char *tok = a + 7;
    size_t len = req->authorization.len - 7;
    while (len && *tok == ' ') {
        tok++;
        len--;
    }
    /* Digests compared in constant time: neither content nor length leaks. */
    return crypto_secret_equal(tok, len, app->cfg->admin_token, strlen(app->cfg->admin_token));
}

/* ---- queries ------------------------------------------------------------ */

struct admin_q {
    struct pg_query q;
    struct conn *c;
    const char *values[4];
    char tx[CB_TXID_MAX + 1];
    char biz[40];
    char user[132];
    char hex[SHA256_HEX_LEN + 1];
};

static void db_failed(struct conn *c, PGresult *res, int err)
{
    if (err == IDV_EDB || err == 0) {
        log_kv(LOGL_ERROR, "admin query failed", "SQLSTATE", pg_sqlstate(res), "DB_ERROR",
               res ? PQresultErrorMessage(res) : "unexpected result", NULL);
        app_error(c, 500, "DatabaseError", "the database refused the request", NULL, NULL);
        return;
    }
    app_error(c, 503, "Unavailable", idv_strerror(err), NULL, "Retry-After: 5\r\n");
}

static void register_done(struct pg_query *q, PGresult *res, int err)
{
    struct admin_q *a = q->data;
    if (err || !res || PQntuples(res) != 1) {
        db_failed(a->c, res, err);
    } else {
        const char *r = PQgetvalue(res, 0, 0);
        conn_note(a->c, r, a->tx);
        if (!strcmp(r, "created") || !strcmp(r, "exists")) {
            json_t *o = json_pack("{s:s}", "transactionId", a->tx);
            char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
            json_decref(o);
            if (s)
                conn_respond(a->c, r[0] == 'c' ? 201 : 200, "application/json", NULL, s, strlen(s),
                             false);
            else
                app_error(a->c, 500, "InternalError", "out of memory", NULL, NULL);
            free(s);
        } else if (!strcmp(r, "conflict")) {
            app_error(a->c, 409, "Conflict",
                      "transactionId is registered with another callbackToken or merchantBizId",
                      "transactionId", NULL);
        } else {
            app_error(a->c, 409, "Conflict", "callbackToken is already in use", "callbackToken",
                      NULL);
        }
    }
    if (res) PQclear(res);
    OPENSSL_cleanse(a->hex, sizeof a->hex);
    free(a);
}

static bool json_content_type(const struct http_request *req, const char *base)
{
    if (req->content_type.len == 0) return true;
    const char *ct = base + req->content_type.off;
    return req->content_type.len >= 16 && strncasecmp(ct, "application/json", 16) == 0 &&
           (req->content_type.len == 16 || ct[16] == ';' || ct[16] == ' ');
}

/* Parses the JSON body into an object, answering 400/415 itself on failure. */
static json_t *body_object(struct conn *c, const struct http_request *req, const char *base)
{
    if (!json_content_type(req, base)) {
        app_error(c, 415, "UnsupportedMediaType", "send application/json", NULL, NULL);
        return NULL;
    }
    json_error_t jerr;
    json_t *o = json_loadb(base + req->body.off, req->body.len, JSON_REJECT_DUPLICATES, &jerr);
    if (!o || !json_is_object(o)) {
        json_decref(o);
        app_error(c, 400, "InvalidParameter", "the body must be a JSON object", NULL, NULL);
        return NULL;
    }
    return o;
}

/* Reads a string field: returns its value, or NULL having answered 400. */
static const char *field(struct conn *c, json_t *o, const char *name, bool required,
                         bool (*valid)(const char *, size_t), bool *answered)
{
    json_t *v = json_object_get(o, name);
    if (!v || json_is_null(v)) {
        if (required) {
            char msg[96];
            snprintf(msg, sizeof msg, "%s is required", name);
            app_error(c, 400, "MissingParameter", msg, name, NULL);
            *answered = true;
        }
        return NULL;
    }
    const char *s = json_string_value(v);
    if (!s || !valid(s, json_string_length(v))) {
        char msg[96];
        snprintf(msg, sizeof msg, "%s is malformed", name);
        app_error(c, 400, "InvalidParameter", msg, name, NULL);
        *answered = true;
        return NULL;
    }
    return s;
}

static bool valid_biz_id(const char *s, size_t n)
{
    if (n < 1 || n > 32) return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'z') ||
              (s[i] >= 'A' && s[i] <= 'Z')))
            return false;
    return true;
}

static bool valid_user_id(const char *s, size_t n)
{
    if (n < 1 || n > 128) return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) return false;
    return true;
}

static void handle_register(struct app *app, struct conn *c, const struct http_request *req,
                            const char *base)
{
    json_t *o = body_object(c, req, base);
    if (!o) return;
    static const char *const known[] = {"transactionId", "merchantBizId", "callbackToken",
                                        "merchantUserId"};
    const char *key;
    json_t *val;
    json_object_foreach(o, key, val)
    {
        bool ok = false;
        for (size_t i = 0; i < 4; i++) ok |= !strcmp(key, known[i]);
        if (!ok) {
            app_error(c, 400, "InvalidParameter", "unknown field", key, NULL);
            json_decref(o);
            return;
        }
    }
    bool answered = false;
    const char *tx = field(c, o, "transactionId", true, cb_valid_transaction_id, &answered);
    const char *biz = answered ? NULL : field(c, o, "merchantBizId", true, valid_biz_id, &answered);
    const char *tok =
        answered ? NULL : field(c, o, "callbackToken", true, cb_valid_token, &answered);
    const char *user =
        answered ? NULL : field(c, o, "merchantUserId", false, valid_user_id, &answered);
    if (answered) {
        json_decref(o);
        return;
    }
    struct admin_q *a = calloc(1, sizeof *a);
    if (!a) {
        json_decref(o);
        app_error(c, 500, "InternalError", "out of memory", NULL, NULL);
        return;
    }
    a->c = c;
    snprintf(a->tx, sizeof a->tx, "%s", tx);
    snprintf(a->biz, sizeof a->biz, "%s", biz);
    snprintf(a->user, sizeof a->user, "%s", user ? user : "");
    uint8_t d[SHA256_LEN];
    crypto_sha256(tok, strlen(tok), d);
    crypto_hex(d, sizeof d, a->hex);
    /* The clear token lives in the JSON tree: wipe it before freeing. */
    json_t *tv = json_object_get(o, "callbackToken");
    if (tv) OPENSSL_cleanse((char *)json_string_value(tv), json_string_length(tv));
    json_decref(o);
    a->values[0] = a->tx;
    a->values[1] = a->biz;
    a->values[2] = a->user;
    a->values[3] = a->hex;
    a->q.stmt = "register_transaction";
    a->q.nparams = 4;
    a->q.values = a->values;
    a->q.done = register_done;
    a->q.data = a;
    pg_pool_submit(app->pool, &a->q);
}

static void get_done(struct pg_query *q, PGresult *res, int err)
{
    struct admin_q *a = q->data;
    if (err || !res)
        db_failed(a->c, res, err);
    else if (PQntuples(res) == 0)
        app_error(a->c, 404, "NotFound", "no such transaction", NULL, NULL);
    else
        conn_respond(a->c, 200, "application/json", NULL, PQgetvalue(res, 0, 0),
                     (size_t)PQgetlength(res, 0, 0), false);
    if (res) PQclear(res);
    free(a);
}

static void handle_get(struct app *app, struct conn *c, const char *id, size_t len)
{
    if (!cb_valid_transaction_id(id, len)) {
        app_error(c, 400, "InvalidParameter", "transactionId is malformed", "transactionId", NULL);
        return;
    }
    struct admin_q *a = calloc(1, sizeof *a);
    if (!a) {
        app_error(c, 500, "InternalError", "out of memory", NULL, NULL);
        return;
    }
    a->c = c;
    memcpy(a->tx, id, len);
    a->values[0] = a->tx;
    a->q.stmt = "get_transaction";
    a->q.nparams = 1;
    a->q.values = a->values;
    a->q.done = get_done;
    a->q.data = a;
    pg_pool_submit(app->pool, &a->q);
}

static void handle_metrics(struct app *app, struct conn *c)
{
    struct pg_pool_stats ps;
    pg_pool_get_stats(app->pool, &ps);
    struct metrics_gauges g = {
        .ready = !app->draining && !conn_server_draining(c) && pg_pool_ready(app->pool),
        .db_conns = {[MDB_READY] = ps.ready - ps.busy,
                     [MDB_BUSY] = ps.busy,
                     [MDB_CONNECTING] = ps.connecting,
                     [MDB_DOWN] = ps.down},
        .db_pool_size = (double)app->cfg->db_pool_size,
        .db_queued = (double)ps.queued,
        .db_reconnects = (double)ps.reconnects,
        .db_failures = (double)ps.failures,
        .db_timeouts = (double)ps.timeouts,
        .db_lost = (double)ps.lost,
        .db_failovers = (double)ps.failovers,
        .db_host = ps.host,
        .db_primary_up = ps.ready > 0,
        .draining = app->draining,
        .queue_depth = NAN,
        .queue_oldest_seconds = NAN,
        .queue_given_up = NAN,
        .tls_not_after = app->tls ? app->tls_not_after : NAN,
    };
    if (app->confirm) {
        struct confirm_stats cs;
        confirm_get_stats(app->confirm, &cs);
        if (cs.depth >= 0) {
            g.queue_depth = (double)cs.depth;
            g.queue_oldest_seconds = cs.oldest_seconds;
            g.queue_given_up = (double)cs.given_up;
        }
    }
    size_t callback_queue, audit_queue;
    store_queue_sizes(app->store, &callback_queue, &audit_queue);
    g.callback_queue = (double)callback_queue;
    g.audit_queue = (double)audit_queue;
    size_t len;
    char *text = metrics_render(&g, &len);
    if (!text) {
        app_error(c, 500, "InternalError", "out of memory", NULL, NULL);
        return;
    }
    conn_respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, text, len, false);
    free(text);
}

void admin_handle(void *ctx, struct conn *c, const struct http_request *req, const char *base)
{
    struct app *app = ctx;
    if (app_path_is(req, base, "/healthz")) {
        app_health(app, c, req, false);
        return;
    }
    if (app_path_is(req, base, "/readyz")) {
        app_health(app, c, req, true);
        return;
    }
    if (!authorized(app, req, base)) {
        app_error(c, 401, "Unauthorized", "a valid bearer token is required", NULL,
                  "WWW-Authenticate: Bearer\r\n");
        return;
    }
    const char *path = base + req->path.off;
    size_t plen = req->path.len;
    static const char tx_prefix[] = "/v1/transactions/";
    const size_t tpl = sizeof tx_prefix - 1;
    if (app_path_is(req, base, "/v1/transactions/register")) {
        if (req->method != HTTP_POST)
            app_error(c, 405, "MethodNotAllowed", "use POST", NULL, "Allow: POST\r\n");
        else
            handle_register(app, c, req, base);
        return;
    }
    if (app_path_is(req, base, "/v1/transactions")) {
        if (req->method != HTTP_POST)
            app_error(c, 405, "MethodNotAllowed", "use POST", NULL, "Allow: POST\r\n");
        else if (!app->outbound)
            app_error(c, 503, "InitializeDisabled",
                      "no Alibaba credentials are configured (alibaba_access_key_id)", NULL, NULL);
        else {
            json_t *body = body_object(c, req, base);
            if (body) initialize_handle(app, c, body);
        }
        return;
    }
    if (plen > tpl && memcmp(path, tx_prefix, tpl) == 0) {
        if (req->method != HTTP_GET && req->method != HTTP_HEAD)
            app_error(c, 405, "MethodNotAllowed", "use GET", NULL, "Allow: GET, HEAD\r\n");
        else
            handle_get(app, c, path + tpl, plen - tpl);
        return;
    }
    if (app_path_is(req, base, "/metrics")) {
        if (req->method != HTTP_GET && req->method != HTTP_HEAD)
            app_error(c, 405, "MethodNotAllowed", "use GET", NULL, "Allow: GET, HEAD\r\n");
        else
            handle_metrics(app, c);
        return;
    }
    app_error(c, 404, "NotFound", "no such path", NULL, NULL);
}
