#pragma once
#include "app.h"

/* The admin listener: bearer-token authentication, the transactions API,
 * /metrics, /healthz and /readyz. A request_handler; ctx is the app. */
void admin_handle(void *ctx, struct conn *c, const struct http_request *req, const char *base);
