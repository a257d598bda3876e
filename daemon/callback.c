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

/* Records a well-formed callback; it is answered when its commit is known. */
static void submit_callback(struct app *app, struct conn *c, const struct http_request *req,
                            const char *base, const struct cb_params *p)
{
    char ip[IPADDR_STRLEN];
    conn_client_ip(c, req, base, ip, sizeof ip);
    struct cb_req *r = calloc(1, sizeof *r);
    if (!r) {
        answer(c, CBO_UNAVAILABLE, NULL);
        return;
    }
    r->c = c;
    r->app = app;
    memcpy(r->job.transaction_id, p->transaction_id, sizeof p->transaction_id);
    memcpy(r->job.sub_code, p->sub_code, sizeof p->sub_code);
    r->job.passed = p->passed;
    crypto_hex(p->token_sha256, SHA256_LEN, r->job.token_hex);
    memcpy(r->job.client_ip, ip, sizeof ip);
    r->job.done = job_done;
    r->job.data = r;
    store_submit_callback(app->store, &r->job);
}

/* Answers a malformed callback, after queueing its audit row (never the token). */
static void answer_malformed(struct app *app, struct conn *c, const struct http_request *req,
                             const char *base, const struct cb_params *p, const char *reason)
{
    char ip[IPADDR_STRLEN];
    conn_client_ip(c, req, base, ip, sizeof ip);
    store_audit_malformed(app->store, p, ip, reason);
    answer(c, CBO_MALFORMED, p->tx_ok ? p->transaction_id : NULL);
}

static enum cb_verdict parse_query(const struct http_request *req, const char *base,
                                   struct cb_params *p)
{
    return req->has_query ? cb_query_parse(base + req->query.off, req->query.len, p)
                          : cb_query_parse("", 0, p);
}

enum cb_decision callback_decide(const char *callback_path, size_t path_len,
                                 const struct http_request *req, const char *base, bool refused,
                                 struct cb_params *p)
{
    const char *path = base + req->path.off;
    /* callback_path and anything below it. */
    bool callback = req->path.len >= path_len && memcmp(path, callback_path, path_len) == 0 &&
                    (req->path.len == path_len || path[path_len] == '/');
    bool get_or_head = req->method == HTTP_GET || req->method == HTTP_HEAD;
    if (refused) {
        /* The status table answers a callback carrying a body "malformed", and
         * every callback that reaches the daemon leaves an audit row: keep what
         * the query says, whatever it says. */
        if (!callback || !get_or_head) return CBD_REFUSED;
        (void)parse_query(req, base, p);
        return CBD_MALFORMED;
    }
    if (callback) {
        if (!get_or_head) return CBD_NOT_ALLOWED;
        switch (parse_query(req, base, p)) {
        case CB_PROBE: return CBD_PROBE;
        case CB_VALID: return CBD_CALLBACK;
        case CB_MALFORMED: return CBD_MALFORMED;
        }
        return CBD_MALFORMED;
    }
    bool healthz = app_path_is(req, base, "/healthz");
    if (!healthz && !app_path_is(req, base, "/readyz")) return CBD_NOT_FOUND;
    if (!get_or_head) return CBD_NOT_ALLOWED;
    return healthz ? CBD_HEALTHZ : CBD_READYZ;
}

void callback_public_handle(void *ctx, struct conn *c, const struct http_request *req,
                            const char *base)
{
    struct app *app = ctx;
    const char *cb_path = app->cfg->callback_path;
    struct cb_params p;
    switch (callback_decide(cb_path, app->callback_path_len, req, base, false, &p)) {
    case CBD_PROBE: answer(c, CBO_OK, NULL); return;
    case CBD_CALLBACK: submit_callback(app, c, req, base, &p); return;
    case CBD_MALFORMED: answer_malformed(app, c, req, base, &p, p.reason); return;
    case CBD_HEALTHZ: app_health(app, c, req, false); return;
    case CBD_READYZ: app_health(app, c, req, true); return;
    case CBD_NOT_ALLOWED:
        app_error(c, 405, "MethodNotAllowed", "use GET or HEAD", NULL, "Allow: GET, HEAD\r\n");
        return;
    case CBD_NOT_FOUND:
    case CBD_REFUSED: break;
    }
    app_error(c, 404, "NotFound", "no such path", NULL, NULL);
}

bool callback_public_refused(void *ctx, struct conn *c, const struct http_request *req,
                             const char *base, const char *reason)
{
    struct app *app = ctx;
    struct cb_params p;
    if (callback_decide(app->cfg->callback_path, app->callback_path_len, req, base, true, &p) !=
        CBD_MALFORMED)
        return false;
    answer_malformed(app, c, req, base, &p, reason);
    return true;
}
