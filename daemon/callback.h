#pragma once
#include "app.h"

/* The public listener: the callback endpoint (callback_path and below it),
 * /healthz, /readyz, and 404 for the rest. A request_handler; ctx is the app. */
void callback_public_handle(void *ctx, struct conn *c, const struct http_request *req,
                            const char *base);
