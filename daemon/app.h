#pragma once
#include <stdbool.h>

#include <uv.h>

#include "config.h"
#include "pg.h"
#include "server.h"
#include "store.h"

/* The daemon's long-lived parts, owned by main and shared by the handlers. */
struct app {
    uv_loop_t *loop;
    struct config *cfg;
    struct pg_pool *pool;
    struct store *store;
    struct server *srv;
    struct outbound *outbound; /* NULL without Alibaba credentials */
    struct confirm *confirm;
    bool draining;
    bool tls;             /* the public listener speaks TLS */
    double tls_not_after; /* Unix time its certificate expires (for /metrics) */
    size_t callback_path_len;
};

/* Answers /healthz (always 200 while the loop runs) or /readyz (200 when
 * PostgreSQL is reachable with a current schema and the instance is not
 * draining). Other methods than GET and HEAD get 405. */
void app_health(struct app *app, struct conn *c, const struct http_request *req, bool ready);
/* Answers a JSON error {"code", "message"[, "parameter"]}. */
void app_error(struct conn *c, int status, const char *code, const char *message,
               const char *parameter, const char *extra_headers);
/* Compares a request path with a literal. */
bool app_path_is(const struct http_request *req, const char *base, const char *path);
