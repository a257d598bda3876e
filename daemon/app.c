#include "app.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

bool app_path_is(const struct http_request *req, const char *base, const char *path)
{
    size_t n = strlen(path);
    return req->path.len == n && memcmp(base + req->path.off, path, n) == 0;
}

void app_error(struct conn *c, int status, const char *code, const char *message,
               const char *parameter, const char *extra_headers)
{
    json_t *o = json_pack("{s:s, s:s}", "code", code, "message", message);
    if (o && parameter) json_object_set_new(o, "parameter", json_string(parameter));
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    static const char fallback[] = "{\"code\":\"InternalError\",\"message\":\"out of memory\"}";
    conn_respond(c, status, "application/json", extra_headers, s ? s : fallback,
                 s ? strlen(s) : sizeof fallback - 1, false);
    free(s);
}

void app_health(struct app *app, struct conn *c, const struct http_request *req, bool ready)
{
    if (req->method != HTTP_GET && req->method != HTTP_HEAD) {
        app_error(c, 405, "MethodNotAllowed", "use GET or HEAD", NULL, "Allow: GET, HEAD\r\n");
        return;
    }
    if (!ready) {
        static const char ok[] = "{\"status\":\"ok\"}";
        conn_respond(c, 200, "application/json", NULL, ok, sizeof ok - 1, false);
        return;
    }
    const char *why = NULL;
    if (app->draining || conn_server_draining(c))
        why = "draining";
    else if (!pg_pool_ready(app->pool))
        why = "database unreachable or schema not current";
    char body[128];
    int n = why ? snprintf(body, sizeof body, "{\"status\":\"unavailable\",\"reason\":\"%s\"}", why)
                : snprintf(body, sizeof body, "{\"status\":\"ready\"}");
    conn_respond(c, why ? 503 : 200, "application/json", why ? "Retry-After: 5\r\n" : NULL, body,
                 (size_t)n, false);
}
