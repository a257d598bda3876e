#include "callback.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "confirm.h"
#include "log.h"
#include "query.h"

/* The answer of each outcome: the interface's status table, as data. */
static const struct {
    int status;
    const char *body;
} answers[CBO__COUNT] = {
    [CBO_OK] = {200, "{\"result\":\"ok\"}"},
    [CBO_ACCEPTED] = {200, "{\"result\":\"accepted\"}"},
    [CBO_DUPLICATE] = {200, "{\"result\":\"duplicate\"}"},
    [CBO_CONFLICT] = {409, "{\"result\":\"conflict\"}"},
    [CBO_REJECTED] = {403, "{\"result\":\"rejected\"}"},
    [CBO_MALFORMED] = {400, "{\"result\":\"malformed\"}"},
    [CBO_UNAVAILABLE] = {503, "{\"result\":\"unavailable\"}"},
};

/* A callback waiting for its commit. */
struct cb_req {
    struct cb_job job;
    struct conn *c;
    struct app *app;
};

static void answer(struct conn *c, enum cb_outcome o, const char *txid)
{
    g_metrics.callbacks[o]++;
    conn_note(c, cb_outcome_name(o), txid);
    const char *body = answers[o].body;
    conn_respond(c, answers[o].status, "application/json",
                 o == CBO_UNAVAILABLE ? "Retry-After: 5\r\n" : NULL, body, strlen(body), false);
}

static void job_done(struct cb_job *job, enum cb_outcome o)
{
    struct cb_req *r = job->data;
    /* Only ACCEPTED, DUPLICATE, CONFLICT and REJECTED come from a confirmed
     * commit; anything else is UNAVAILABLE (503), never a 200. */
    if (o != CBO_ACCEPTED && o != CBO_DUPLICATE && o != CBO_CONFLICT && o != CBO_REJECTED)
        o = CBO_UNAVAILABLE;
    if (o == CBO_ACCEPTED) confirm_nudge(r->app->confirm);
    answer(r->c, o, job->transaction_id);
    free(r);
}

static void handle_callback(struct app *app, struct conn *c, const struct http_request *req,
                            const char *base)
{
    if (req->method != HTTP_GET && req->method != HTTP_HEAD) {
        app_error(c, 405, "MethodNotAllowed", "use GET or HEAD", NULL, "Allow: GET, HEAD\r\n");
        return;
    }
    struct cb_params p;
    enum cb_verdict v = req->has_query ? cb_query_parse(base + req->query.off, req->query.len, &p)
                                       : cb_query_parse("", 0, &p);
    if (v == CB_PROBE) {
        answer(c, CBO_OK, NULL);
        return;
    }
    char ip[IPADDR_STRLEN];
    conn_client_ip(c, req, base, ip, sizeof ip);
    if (v == CB_MALFORMED) {
        store_audit_malformed(app->store, &p, ip, p.reason);
        answer(c, CBO_MALFORMED, p.tx_ok ? p.transaction_id : NULL);
        return;
    }
    struct cb_req *r = calloc(1, sizeof *r);
    if (!r) {
        answer(c, CBO_UNAVAILABLE, NULL);
        return;
    }
    r->c = c;
    r->app = app;
    memcpy(r->job.transaction_id, p.transaction_id, sizeof p.transaction_id);
    memcpy(r->job.sub_code, p.sub_code, sizeof p.sub_code);
    r->job.passed = p.passed;
    crypto_hex(p.token_sha256, SHA256_LEN, r->job.token_hex);
    memcpy(r->job.client_ip, ip, sizeof ip);
    r->job.done = job_done;
    r->job.data = r;
    store_submit_callback(app->store, &r->job);
}

/* True for callback_path and anything below it. */
static bool on_callback_path(const struct app *app, const struct http_request *req,
                             const char *base)
{
    const char *path = base + req->path.off;
    size_t n = app->callback_path_len;
    return req->path.len >= n && memcmp(path, app->cfg->callback_path, n) == 0 &&
           (req->path.len == n || path[n] == '/');
}

void callback_public_handle(void *ctx, struct conn *c, const struct http_request *req,
                            const char *base)
{
    struct app *app = ctx;
    if (on_callback_path(app, req, base)) {
        handle_callback(app, c, req, base);
        return;
    }
    if (app_path_is(req, base, "/healthz")) {
        app_health(app, c, req, false);
        return;
    }
    if (app_path_is(req, base, "/readyz")) {
        app_health(app, c, req, true);
        return;
    }
    app_error(c, 404, "NotFound", "no such path", NULL, NULL);
}

bool callback_public_refused(void *ctx, struct conn *c, const struct http_request *req,
                             const char *base, const char *reason)
{
    struct app *app = ctx;
    if (!on_callback_path(app, req, base) || (req->method != HTTP_GET && req->method != HTTP_HEAD))
        return false;
    /* The status table answers a callback carrying a body "malformed", and
     * every callback that reaches the daemon leaves an audit row: keep what
     * the query says (never the token), with the parser's reason. */
    struct cb_params p;
    (void)(req->has_query ? cb_query_parse(base + req->query.off, req->query.len, &p)
                          : cb_query_parse("", 0, &p));
    char ip[IPADDR_STRLEN];
    conn_client_ip(c, req, base, ip, sizeof ip);
    store_audit_malformed(app->store, &p, ip, reason);
    answer(c, CBO_MALFORMED, p.tx_ok ? p.transaction_id : NULL);
    return true;
}
