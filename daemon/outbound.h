#pragma once
#include <stdbool.h>
#include <stddef.h>

#include <uv.h>

#include "alibaba.h"
#include "err.h"

/* Signed calls to the Alibaba ID Verification API through libcurl's multi
 * interface driven by the libuv loop: no blocking call, DNS in curl's resolver
 * thread, TLS verified, connections reused, at most qps calls started in any
 * one-second window (all actions together). Never retries by itself. */

struct outbound;
struct out_call;

/* Why a call got no usable HTTP answer. */
enum out_transport {
    OUT_OK = 0,  /* an HTTP answer arrived (any status) */
    OUT_TIMEOUT, /* connect or total deadline passed */
    OUT_CONNECT, /* could not connect (refused, unreachable, DNS) */
    OUT_TLS,     /* handshake or certificate verification failed */
    OUT_BROKEN,  /* connection closed mid-answer, truncated body */
    OUT_TOO_BIG, /* answer larger than the bound */
    OUT_OTHER,
};

/* The outcome handed to the caller's done callback; valid during the call. */
struct out_result {
    enum out_transport transport;
    long http_status; /* 0 without an HTTP answer */
    const char *body; /* NUL-terminated, may be empty */
    size_t body_len;
    const char *error; /* curl's description when transport != OUT_OK */
    bool parsed;       /* reply holds the JSON envelope */
    struct alibaba_reply reply;
    double seconds;
};

typedef void (*out_done_cb)(struct out_call *call, const struct out_result *res);

/* One call. The caller fills action, params and done, keeps the struct alive
 * until done runs, and may free it inside done. params are copied at submit. */
struct out_call {
    const char *action; /* "Initialize", "CheckResult" */
    const struct kv *params;
    size_t nparams;
    out_done_cb done;
    void *data;
    /* internal */
    struct outbound *ob;
    struct out_call *next;
    void *easy;
    char *url;
    void *headers;
    struct strbuf body;
    char errbuf[256];
    char *query;
    uint64_t started;
};

struct outbound_opts {
    const char *endpoint; /* https://host[:port] */
    const char *access_key_id;
    const char *access_key_secret;
    const char *ca_file; /* NULL: the system CAs */
    long qps;
    long timeout_ms, connect_timeout_ms;
};

/* Creates the client; returns 0, IDV_ENOMEM or IDV_EINVAL (bad endpoint). */
int outbound_new(struct outbound **out, uv_loop_t *loop,
                 const struct outbound_opts *opts) IDV_MUSTCHECK;
/* Queues a call; done is never called from inside this function. */
void outbound_submit(struct outbound *ob, struct out_call *call);
/* Calls waiting for their turn under the qps bound, and in flight. */
void outbound_counts(const struct outbound *ob, size_t *waiting, size_t *running);
/* Aborts every call (done with OUT_OTHER), frees the client when its handles
 * are closed, then runs cb. */
void outbound_close(struct outbound *ob, void (*cb)(void *), void *arg);
