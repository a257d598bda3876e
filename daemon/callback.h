#pragma once
#include "app.h"

/* The public listener: the callback endpoint (callback_path and below it),
 * /healthz, /readyz, and 404 for the rest. A request_handler; ctx is the app. */
void callback_public_handle(void *ctx, struct conn *c, const struct http_request *req,
                            const char *base);
/* The public listener's refused_handler: a GET or HEAD on the callback path
 * refused for its framing (a request body, Transfer-Encoding) is a malformed
 * callback, audited and counted as one. Returns false for anything else. */
bool callback_public_refused(void *ctx, struct conn *c, const struct http_request *req,
                             const char *base, const char *reason);
