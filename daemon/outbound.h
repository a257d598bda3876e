#pragma once
#include <stdbool.h>
#include <stddef.h>

#include <uv.h>

#include "alibaba.h"
#include "circuit.h"
#include "err.h"

/* Signed calls to the Alibaba ID Verification API through libcurl's multi
 * interface driven by the libuv loop: no blocking call, DNS in curl's resolver
 * thread, TLS verified, at most qps calls started in any one-second window
 * (all actions together). Never retries by itself.
 *
 * What is sent is what is signed: the request's headers are one table, signed
 * by alibaba_sign() and handed to curl as they are, and curl adds no header of
 * a signed kind (its Content-Type for a POST is removed).
 *
 * A connection is kept for reuse only after a clean exchange: a complete,
 * well-framed answer below 500 whose body is Alibaba's JSON envelope. Any
 * other outcome retires it, and a kept connection on which anything arrived
 * while it was idle (stray bytes, the excess of an over-long body, a FIN) is
 * retired before the next call starts.
 *
 * One circuit (circuit.h) guards all the calls: after a few consecutive
 * connect failures or timeouts, calls are refused at once (OUT_CIRCUIT)
 * instead of each waiting for its deadline, until a probe call reaches
 * Alibaba again. */

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
    OUT_CIRCUIT, /* refused without a call: Alibaba was unreachable lately */
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
    /* The failure (a connect failure or timeout) is the outage the circuit
     * is open for, not something about this call: a caller that counts its
     * attempts should not count this one. Always true with OUT_CIRCUIT. */
    bool outage;
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
    bool probe; /* admitted as the circuit's probe */
};

struct outbound_opts {
    const char *endpoint; /* https://host[:port] */
    const char *access_key_id;
    const char *access_key_secret;
    const char *ca_file; /* NULL: the system CAs */
    long qps;
    long timeout_ms, connect_timeout_ms;
    /* the circuit: consecutive connect failures or timeouts that open it,
     * the first open period and its ceiling */
    long circuit_failures;
    long circuit_open_ms, circuit_max_open_ms;
};

/* Whether calls go now, for callers that would rather not queue work that
 * would be refused. */
enum out_gate {
    OUT_GATE_CLOSED = 0, /* calls go */
    OUT_GATE_PROBE,      /* one call may go now, as the probe */
    OUT_GATE_OPEN,       /* calls are refused with OUT_CIRCUIT */
};

/* Creates the client; returns 0, IDV_ENOMEM or IDV_EINVAL (bad endpoint). */
int outbound_new(struct outbound **out, uv_loop_t *loop,
                 const struct outbound_opts *opts) IDV_MUSTCHECK;
/* Queues a call; done is never called from inside this function. */
void outbound_submit(struct outbound *ob, struct out_call *call);
/* The circuit's gate now; *retry_ms (may be NULL) is how long until a probe
 * may go when the gate is open, 0 otherwise. */
enum out_gate outbound_gate(struct outbound *ob, uint64_t *retry_ms);
/* Calls waiting for their turn under the qps bound, and in flight. */
void outbound_counts(const struct outbound *ob, size_t *waiting, size_t *running);
/* Aborts every call (done with OUT_OTHER), frees the client when its handles
 * are closed, then runs cb. */
void outbound_close(struct outbound *ob, void (*cb)(void *), void *arg);
