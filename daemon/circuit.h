#pragma once
#include <stdbool.h>
#include <stdint.h>

/* A circuit breaker for the calls to Alibaba, shared by every action of one
 * instance. Pure: no I/O, no clock of its own (the caller passes the time in
 * milliseconds) and no randomness of its own (the caller passes the jitter),
 * so that every transition can be tested.
 *
 *   closed    calls go; `failures` consecutive unreachable outcomes (connect
 *             failure or timeout) open it;
 *   open      calls are refused without being made, until `reopen_at`;
 *   half_open one call, the probe, goes; the others are refused. The probe
 *             reaching Alibaba closes the circuit, failing opens it again
 *             for twice as long (jittered, at most max_open_ms).
 *
 * Any call that reaches Alibaba (an HTTP answer of any status, or a TLS or
 * framing failure after connecting) resets the count and closes the circuit
 * whatever its state: the upstream is there. */

enum circuit_state { CIRCUIT_CLOSED = 0, CIRCUIT_OPEN = 1, CIRCUIT_HALF_OPEN = 2 };

/* What a call about to start may do. */
enum circuit_verdict {
    CIRCUIT_GO = 0, /* closed: go */
    CIRCUIT_PROBE,  /* go as the one probe */
    CIRCUIT_REFUSE, /* refused without a call */
};

/* How a call ended, for the circuit. */
enum circuit_outcome {
    CIRCUIT_REACHED = 0, /* Alibaba answered, or was at least reached */
    CIRCUIT_UNREACHED,   /* connect failure or timeout */
    CIRCUIT_NEITHER,     /* aborted locally (shutdown, no memory): no evidence */
};

/* A transition the caller logs and counts. */
enum circuit_event {
    CIRCUIT_EV_NONE = 0,
    CIRCUIT_EV_OPENED,   /* closed -> open */
    CIRCUIT_EV_REOPENED, /* the probe failed: open again, longer */
    CIRCUIT_EV_CLOSED,   /* open or half-open -> closed */
};

struct circuit_opts {
    unsigned failures;    /* consecutive unreachable outcomes that open it (>= 1) */
    uint64_t open_ms;     /* first open period, before jitter */
    uint64_t max_open_ms; /* ceiling of the doubled, jittered period */
};

struct circuit {
    struct circuit_opts opts;
    enum circuit_state state;
    unsigned consecutive; /* unreachable outcomes in a row while closed */
    uint64_t period_ms;   /* the current open period before jitter */
    uint64_t reopen_at;   /* open: when the probe may go */
    uint64_t opened_at;   /* when it last left closed */
    bool probe_out;       /* half-open: the probe is in flight */
};

/* Starts closed. */
void circuit_init(struct circuit *c, const struct circuit_opts *opts);
/* What a call starting at now may do, without changing anything. */
enum circuit_verdict circuit_peek(const struct circuit *c, uint64_t now);
/* The same, and takes the probe slot when the verdict is CIRCUIT_PROBE (an
 * open circuit whose time is up becomes half-open). */
enum circuit_verdict circuit_admit(struct circuit *c, uint64_t now);
/* Records how a call ended. probe: it was admitted as the probe. jitter in
 * [0, 1) scales the next open period by 0.5 + jitter. Returns the transition. */
enum circuit_event circuit_record(struct circuit *c, uint64_t now, bool probe,
                                  enum circuit_outcome outcome, double jitter);
/* Milliseconds until a probe may go (0 when calls go now; while the probe is
 * out, the period the probe was given). */
uint64_t circuit_retry_ms(const struct circuit *c, uint64_t now);
/* The state's name: "closed", "open", "half-open". */
const char *circuit_state_name(enum circuit_state s);
