#include "circuit.h"

void circuit_init(struct circuit *c, const struct circuit_opts *opts)
{
    *c = (struct circuit){.opts = *opts, .state = CIRCUIT_CLOSED};
    if (c->opts.failures < 1) c->opts.failures = 1;
    if (c->opts.max_open_ms < c->opts.open_ms) c->opts.max_open_ms = c->opts.open_ms;
    c->period_ms = c->opts.open_ms;
}

/* Only set_state changes the state, and only along the arrows of the header. */
static void set_state(struct circuit *c, enum circuit_state to)
{
    static const bool allowed[3][3] = {
        /* from closed */ {false, true, false},
        /* from open */ {true, false, true},
        /* from half-open */ {true, true, false},
    };
    if (!allowed[c->state][to]) return;
    c->state = to;
    c->probe_out = false;
}

/* Opens for the current period, jittered (x0.5 .. x1.5) so that instances
 * that lost Alibaba together do not probe together, at most max_open_ms. */
static void open_for(struct circuit *c, uint64_t now, double jitter)
{
    if (jitter < 0.0 || jitter >= 1.0) jitter = 0.5;
    double ms = (double)c->period_ms * (0.5 + jitter);
    if (ms > (double)c->opts.max_open_ms) ms = (double)c->opts.max_open_ms;
    if (ms < 1.0) ms = 1.0;
    c->reopen_at = now + (uint64_t)ms;
    set_state(c, CIRCUIT_OPEN);
}

enum circuit_verdict circuit_peek(const struct circuit *c, uint64_t now)
{
    switch (c->state) {
    case CIRCUIT_CLOSED: return CIRCUIT_GO;
    case CIRCUIT_OPEN: return now >= c->reopen_at ? CIRCUIT_PROBE : CIRCUIT_REFUSE;
    case CIRCUIT_HALF_OPEN: return c->probe_out ? CIRCUIT_REFUSE : CIRCUIT_PROBE;
    }
    return CIRCUIT_REFUSE;
}

enum circuit_verdict circuit_admit(struct circuit *c, uint64_t now)
{
    enum circuit_verdict v = circuit_peek(c, now);
    if (v == CIRCUIT_PROBE) {
        if (c->state == CIRCUIT_OPEN) set_state(c, CIRCUIT_HALF_OPEN);
        c->probe_out = true;
    }
    return v;
}

enum circuit_event circuit_record(struct circuit *c, uint64_t now, bool probe,
                                  enum circuit_outcome outcome, double jitter)
{
    if (probe && c->state == CIRCUIT_HALF_OPEN) c->probe_out = false;
    switch (outcome) {
    case CIRCUIT_NEITHER: return CIRCUIT_EV_NONE;
    case CIRCUIT_REACHED:
        c->consecutive = 0;
        if (c->state == CIRCUIT_CLOSED) return CIRCUIT_EV_NONE;
        c->period_ms = c->opts.open_ms;
        set_state(c, CIRCUIT_CLOSED);
        return CIRCUIT_EV_CLOSED;
    case CIRCUIT_UNREACHED: break;
    }
    if (c->state == CIRCUIT_CLOSED) {
        if (++c->consecutive < c->opts.failures) return CIRCUIT_EV_NONE;
        c->consecutive = 0;
        c->period_ms = c->opts.open_ms;
        c->opened_at = now;
        open_for(c, now, jitter);
        return CIRCUIT_EV_OPENED;
    }
    /* Open or half-open: only the probe's failure says something new; a call
     * started before the circuit opened and failing late changes nothing. */
    if (!probe || c->state != CIRCUIT_HALF_OPEN) return CIRCUIT_EV_NONE;
    c->period_ms = c->period_ms * 2 > c->opts.max_open_ms ? c->opts.max_open_ms : c->period_ms * 2;
    open_for(c, now, jitter);
    return CIRCUIT_EV_REOPENED;
}

uint64_t circuit_retry_ms(const struct circuit *c, uint64_t now)
{
    switch (c->state) {
    case CIRCUIT_CLOSED: return 0;
    case CIRCUIT_OPEN: return c->reopen_at > now ? c->reopen_at - now : 0;
    case CIRCUIT_HALF_OPEN: return c->probe_out ? c->period_ms : 0;
    }
    return 0;
}

const char *circuit_state_name(enum circuit_state s)
{
    switch (s) {
    case CIRCUIT_CLOSED: return "closed";
    case CIRCUIT_OPEN: return "open";
    case CIRCUIT_HALF_OPEN: return "half-open";
    }
    return "?";
}
