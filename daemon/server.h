#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>
#include <uv.h>

#include "err.h"
#include "http.h"
#include "metrics.h"
#include "netaddr.h"

/* Listeners, connections and their deadlines. A connection handles one request
 * at a time: while a handler works (waiting on PostgreSQL) the connection stops
 * reading, and pipelined requests wait in its buffer, answered in order. */

struct server;
struct conn;

/* A request handler. It must answer exactly once with conn_respond(), now or
 * later; the connection stays valid until it does, even if the client left. */
typedef void (*request_handler)(void *ctx, struct conn *c, const struct http_request *req,
                                const char *base);

/* Called when the public listener refuses a request with 400 after its request
 * target was read (a request body, Transfer-Encoding, a bad header field):
 * returns true when it answered with conn_respond(), which then always closes
 * the connection; false leaves the plain 400 to the server. reason is the
 * parser's static text. Headers after the offending one were not read. */
typedef bool (*refused_handler)(void *ctx, struct conn *c, const struct http_request *req,
                                const char *base, const char *reason);

struct server_opts {
    struct netaddr public_addr, admin_addr;
    int public_fd, admin_fd; /* inherited sockets (systemd), or -1 */
    uint64_t header_timeout_ms, idle_timeout_ms;
    unsigned max_connections;
    unsigned max_requests_per_connection;
    const struct cidr_list *trusted; /* whose X-Forwarded-For / PROXY header is believed */
    bool proxy_protocol;             /* public listener: trusted peers send a PROXY header first */
    SSL_CTX *tls_ctx; /* public listener speaks TLS when set (a reference is taken) */
    request_handler public_handler, admin_handler;
    refused_handler public_refused; /* may be NULL */
    void *ctx;
};

/* Creates the server and binds/listens on both addresses (or adopts the given
 * descriptors). On failure fills err. */
int server_new(struct server **out, uv_loop_t *loop, const struct server_opts *opts, char *err,
               size_t errlen) IDV_MUSTCHECK;
/* Stops accepting, closes idle connections and lets requests in flight finish;
 * cb runs when the last connection is gone. */
void server_drain(struct server *srv, void (*cb)(void *), void *arg);
/* Closes everything at once (after a drain timed out) and frees the server;
 * cb runs when every handle is closed. */
void server_close(struct server *srv, void (*cb)(void *), void *arg);
/* Replaces the trusted proxy list (SIGHUP); the caller keeps it alive. */
void server_set_trusted(struct server *srv, const struct cidr_list *trusted);
/* Replaces the TLS context for new connections (SIGHUP certificate reload). */
void server_set_tls_ctx(struct server *srv, SSL_CTX *ctx);
/* Open connections, all listeners. */
unsigned server_open_connections(const struct server *srv);

/* Answers the current request. body may be NULL when body_len is 0; extra is
 * zero or more header lines, each ending in CRLF. HEAD requests get no body.
 * close: close the connection after this answer. */
void conn_respond(struct conn *c, int status, const char *ctype, const char *extra,
                  const char *body, size_t body_len, bool close);
/* Attaches log fields to the current request (static or request-lived text). */
void conn_note(struct conn *c, const char *outcome, const char *transaction_id);
/* The client's address for this request, as text: the peer, or from
 * X-Forwarded-For when the peer is a trusted proxy. */
void conn_client_ip(const struct conn *c, const struct http_request *req, const char *base,
                    char *out, size_t outlen);
/* True for HEAD requests (their answers carry no body). */
bool conn_is_head(const struct conn *c);
/* True once the server is draining (readiness answers 503). */
bool conn_server_draining(const struct conn *c);
