#pragma once
#include <stdbool.h>
#include <stddef.h>

#include "app.h"
#include "http.h"
#include "query.h"

/* What the public listener does with one request: the routing and the status
 * table of the interface, decided from the request alone. */
enum cb_decision {
    CBD_PROBE = 0,   /* 200 {"result":"ok"}: none of the four parameters, no audit row */
    CBD_CALLBACK,    /* a well-formed callback: recorded, answered once its commit is known */
    CBD_MALFORMED,   /* 400 {"result":"malformed"}, audited */
    CBD_HEALTHZ,     /* GET or HEAD /healthz */
    CBD_READYZ,      /* GET or HEAD /readyz */
    CBD_NOT_ALLOWED, /* 405 with Allow: GET, HEAD */
    CBD_NOT_FOUND,   /* 404 */
    CBD_REFUSED,     /* refused for its framing and not a callback: the server's own 400 */
};

/* Decides, without I/O, what the public listener does with req (spans into base) when the
 * callback path is callback_path[0..path_len); refused: the parser refused the request for its
 * framing (then only MALFORMED or REFUSED). *p is filled when the query was parsed (PROBE,
 * CALLBACK, MALFORMED); p->reason says why when the query itself is at fault. */
enum cb_decision callback_decide(const char *callback_path, size_t path_len,
                                 const struct http_request *req, const char *base, bool refused,
                                 struct cb_params *p);

/* The public listener: the callback endpoint (callback_path and below it),
 * /healthz, /readyz, and 404 for the rest. A request_handler; ctx is the app. */
void callback_public_handle(void *ctx, struct conn *c, const struct http_request *req,
                            const char *base);
/* The public listener's refused_handler: a GET or HEAD on the callback path
 * refused for its framing (a request body, Transfer-Encoding) is a malformed
 * callback, audited and counted as one. Returns false for anything else. */
bool callback_public_refused(void *ctx, struct conn *c, const struct http_request *req,
                             const char *base, const char *reason);
