/* The batching rule of callbacks (store_batch_size): how many of the waiting
 * callbacks the next shared commit takes, given the batches in flight. */
#include "store.h"
#include "test.h"

/* One decision: the batches in flight and what waits, and how many go. */
struct step {
    size_t pending, in_flight, largest;
    unsigned young, max_batches;
    size_t take;
};

static void run_steps(const struct step *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        size_t got = store_batch_size(s[i].pending, s[i].in_flight, s[i].largest, s[i].young,
                                      s[i].max_batches);
        if (got != s[i].take)
            fprintf(stderr, "step %zu: pending %zu, in flight %zu (largest %zu, %u of %u)\n", i,
                    s[i].pending, s[i].in_flight, s[i].largest, s[i].young, s[i].max_batches);
        CHECK_INT(got, s[i].take);
    }
}
#define RUN(steps) run_steps(steps, sizeof steps / sizeof steps[0])

/* Light load is never delayed and never split. */
static void idle_takes_all_below_split(void)
{
    static const struct step s[] = {{0, 0, 0, 0, 2, 0}, {1, 0, 0, 0, 2, 1}, {31, 0, 0, 0, 2, 31}};
    RUN(s);
}

/* With a batch in flight, callbacks wait for its commit unless at least as
 * many wait as it holds; never more batches than max_batches. */
static void waits_for_commit_in_flight(void)
{
    static const struct step s[] = {
        {9, 10, 10, 1, 2, 0}, {10, 10, 10, 1, 2, 10}, {20, 20, 10, 2, 2, 0}, {5, 3, 3, 1, 1, 0}};
    RUN(s);
}

/* The closed loop of 64 clients that settled into batches of 59 and 5: the
 * 59 waiting while the 5 are in flight leave as 32, the other 27 wait; once
 * the 5 are answered and come back, 32 leave: two batches of 32. */
static void large_and_small_become_equal(void)
{
    static const struct step s[] = {
        {59, 5, 5, 1, 2, 32}, {27, 37, 32, 2, 2, 0}, {27, 32, 32, 1, 2, 0}, {32, 32, 32, 1, 2, 32}};
    RUN(s);
}

/* A burst on an idle store is shared out over the batches that may run side
 * by side: with a pool of 8 (two batches) 64 go as 32 now and 32 at once
 * after; with four, as four of 16; one batch at a time: no sharing. */
static void burst_is_shared_out(void)
{
    static const struct step s[] = {
        {64, 0, 0, 0, 2, 32}, {32, 32, 32, 1, 2, 32}, {64, 0, 0, 0, 4, 16}, {48, 16, 16, 1, 4, 16},
        {33, 0, 0, 0, 2, 17}, {16, 17, 17, 1, 2, 0},  {64, 0, 0, 0, 1, 64}};
    RUN(s);
}

/* A batch never holds more than the statement takes. */
static void bounded_by_batch_max(void)
{
    static const struct step s[] = {{10000, 0, 0, 0, 2, 256}, {10000, 256, 256, 1, 2, 256}};
    RUN(s);
}

#define TEST(name)                                                                                 \
    {                                                                                              \
#name, name                                                                                \
    }
/* One case a line: tests/unit/CMakeLists.txt registers the cases it finds. */
/* clang-format off */
static const struct test_case cases[] = {
    TEST(idle_takes_all_below_split),
    TEST(waits_for_commit_in_flight),
    TEST(large_and_small_become_equal),
    TEST(burst_is_shared_out),
    TEST(bounded_by_batch_max),
};
/* clang-format on */

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
