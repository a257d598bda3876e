/* The circuit breaker guarding the calls to Alibaba: every transition, the
 * back-off with jitter and its ceiling. Time and jitter are given, so nothing
 * here waits. */
#include "circuit.h"
#include "test.h"

static const struct circuit_opts OPTS = {.failures = 3, .open_ms = 1000, .max_open_ms = 4000};

/* Opens c at time t (three unreachable outcomes, jitter 0.5: period x1.0). */
static void open_at(struct circuit *c, uint64_t t)
{
    circuit_init(c, &OPTS);
    CHECK_INT(circuit_record(c, t, false, CIRCUIT_UNREACHED, 0.5), CIRCUIT_EV_NONE);
    CHECK_INT(circuit_record(c, t, false, CIRCUIT_UNREACHED, 0.5), CIRCUIT_EV_NONE);
    CHECK_INT(circuit_record(c, t, false, CIRCUIT_UNREACHED, 0.5), CIRCUIT_EV_OPENED);
    CHECK_INT(c->state, CIRCUIT_OPEN);
}

/* Consecutive failures open it; a call that reaches Alibaba in between
 * starts the count again. */
static void opens_after_consecutive_failures(void)
{
    struct circuit c;
    circuit_init(&c, &OPTS);
    CHECK_INT(circuit_admit(&c, 0), CIRCUIT_GO);
    circuit_record(&c, 0, false, CIRCUIT_UNREACHED, 0.5);
    circuit_record(&c, 0, false, CIRCUIT_UNREACHED, 0.5);
    CHECK_INT(circuit_record(&c, 0, false, CIRCUIT_REACHED, 0.5), CIRCUIT_EV_NONE);
    circuit_record(&c, 0, false, CIRCUIT_UNREACHED, 0.5);
    circuit_record(&c, 0, false, CIRCUIT_UNREACHED, 0.5);
    CHECK_INT(c.state, CIRCUIT_CLOSED);
    CHECK_INT(circuit_record(&c, 10, false, CIRCUIT_UNREACHED, 0.5), CIRCUIT_EV_OPENED);
    CHECK_INT(c.state, CIRCUIT_OPEN);
    CHECK_INT(circuit_retry_ms(&c, 10), 1000);
    /* Outcomes without evidence change nothing. */
    circuit_init(&c, &OPTS);
    for (int i = 0; i < 10; i++) circuit_record(&c, 0, false, CIRCUIT_NEITHER, 0.5);
    CHECK_INT(c.state, CIRCUIT_CLOSED);
}

/* Open: refused until its time; then exactly one probe; the others refused
 * while it is out. */
static void one_probe_when_time_is_up(void)
{
    struct circuit c;
    open_at(&c, 100);
    CHECK_INT(circuit_admit(&c, 100), CIRCUIT_REFUSE);
    CHECK_INT(circuit_admit(&c, 1099), CIRCUIT_REFUSE);
    CHECK_INT(circuit_peek(&c, 1100), CIRCUIT_PROBE);
    CHECK_INT(c.state, CIRCUIT_OPEN); /* peeking takes nothing */
    CHECK_INT(circuit_admit(&c, 1100), CIRCUIT_PROBE);
    CHECK_INT(c.state, CIRCUIT_HALF_OPEN);
    CHECK_INT(circuit_admit(&c, 1100), CIRCUIT_REFUSE);
    CHECK_INT(circuit_admit(&c, 5000), CIRCUIT_REFUSE);
    CHECK(circuit_retry_ms(&c, 5000) > 0);
    /* The probe reaches Alibaba: closed, calls go. */
    CHECK_INT(circuit_record(&c, 1200, true, CIRCUIT_REACHED, 0.5), CIRCUIT_EV_CLOSED);
    CHECK_INT(c.state, CIRCUIT_CLOSED);
    CHECK_INT(circuit_admit(&c, 1200), CIRCUIT_GO);
    CHECK_INT(circuit_retry_ms(&c, 1200), 0);
}

/* A failed probe opens it again for twice as long, up to the ceiling;
 * closing starts over from the first period. */
static void backoff_doubles_to_ceiling(void)
{
    struct circuit c;
    open_at(&c, 0);
    uint64_t t = 0, want[] = {2000, 4000, 4000, 4000};
    t = 1000;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        CHECK_INT(circuit_admit(&c, t), CIRCUIT_PROBE);
        CHECK_INT(circuit_record(&c, t, true, CIRCUIT_UNREACHED, 0.5), CIRCUIT_EV_REOPENED);
        CHECK_INT(circuit_retry_ms(&c, t), want[i]);
        t += want[i];
    }
    CHECK_INT(circuit_admit(&c, t), CIRCUIT_PROBE);
    CHECK_INT(circuit_record(&c, t, true, CIRCUIT_REACHED, 0.5), CIRCUIT_EV_CLOSED);
    for (int i = 0; i < 3; i++) circuit_record(&c, t, false, CIRCUIT_UNREACHED, 0.5);
    CHECK_INT(circuit_retry_ms(&c, t), 1000);
}

/* Jitter scales the period by 0.5 + jitter and never past the ceiling. */
static void jitter_bounds(void)
{
    struct circuit c;
    circuit_init(&c, &OPTS);
    for (int i = 0; i < 3; i++) circuit_record(&c, 0, false, CIRCUIT_UNREACHED, 0.0);
    CHECK_INT(circuit_retry_ms(&c, 0), 500);
    circuit_init(&c, &OPTS);
    for (int i = 0; i < 3; i++) circuit_record(&c, 0, false, CIRCUIT_UNREACHED, 0.999);
    CHECK_INT(circuit_retry_ms(&c, 0), 1499);
    /* At the ceiling, the largest jitter is cut to it. */
    for (int i = 0; i < 5; i++) {
        uint64_t t = 100000 * (uint64_t)(i + 1);
        CHECK_INT(circuit_admit(&c, t), CIRCUIT_PROBE);
        circuit_record(&c, t, true, CIRCUIT_UNREACHED, 0.999);
        CHECK(circuit_retry_ms(&c, t) <= 4000);
    }
    CHECK_INT(circuit_retry_ms(&c, 500000), 4000);
}

/* Calls that started before it opened: a late failure changes nothing, a
 * late answer closes it (Alibaba is there); a probe aborted locally lets
 * another call be the probe. */
static void late_outcomes_and_aborted_probe(void)
{
    struct circuit c;
    open_at(&c, 0);
    uint64_t retry = circuit_retry_ms(&c, 10);
    CHECK_INT(circuit_record(&c, 10, false, CIRCUIT_UNREACHED, 0.5), CIRCUIT_EV_NONE);
    CHECK_INT(circuit_retry_ms(&c, 10), retry);
    CHECK_INT(circuit_record(&c, 20, false, CIRCUIT_REACHED, 0.5), CIRCUIT_EV_CLOSED);
    CHECK_INT(c.state, CIRCUIT_CLOSED);

    open_at(&c, 0);
    CHECK_INT(circuit_admit(&c, 1000), CIRCUIT_PROBE);
    CHECK_INT(circuit_record(&c, 1001, true, CIRCUIT_NEITHER, 0.5), CIRCUIT_EV_NONE);
    CHECK_INT(c.state, CIRCUIT_HALF_OPEN);
    CHECK_INT(circuit_admit(&c, 1001), CIRCUIT_PROBE);
    /* A non-probe failing while the probe is out does not reopen it. */
    CHECK_INT(circuit_record(&c, 1002, false, CIRCUIT_UNREACHED, 0.5), CIRCUIT_EV_NONE);
    CHECK_INT(c.state, CIRCUIT_HALF_OPEN);
    CHECK_STR(circuit_state_name(c.state), "half-open");
}

#define TEST(name)                                                                                 \
    {                                                                                              \
#name, name                                                                                \
    }
/* One case a line: tests/unit/CMakeLists.txt registers the cases it finds. */
/* clang-format off */
static const struct test_case cases[] = {
    TEST(opens_after_consecutive_failures),
    TEST(one_probe_when_time_is_up),
    TEST(backoff_doubles_to_ceiling),
    TEST(jitter_bounds),
    TEST(late_outcomes_and_aborted_probe),
};
/* clang-format on */

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
