#include "migrate.h"

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "crypto.h"

/* Arbitrary constants shared by every instance: pg_advisory_lock keys. */
#define MIGRATE_LOCK_KEY  "7311404519223372001"
#define MAINTAIN_LOCK_KEY "7311404519223372002"

/* A statement that could not get its lock within lock_timeout is tried again
 * after a back-off doubling from 250 ms to 8 s, this many times: about five
 * minutes in all. Waiting longer in one attempt would hold back, behind the
 * waiting request, every callback that needs the same table. */
#define LOCK_ATTEMPTS 40
/* lock_timeout of migrate's swaps and retried migrations (the files set their
 * own too), and of maintain's steps. Under deadlock_timeout (1 s), so that a
 * lock cycle with a callback's transaction is broken on our side. */
#define MIGRATE_LOCK_TIMEOUT  "SET lock_timeout = '2s'"
#define MAINTAIN_LOCK_TIMEOUT "SET lock_timeout = '500ms'"
/* Heap blocks of an old history table moved per transaction (8 MB: about
 * 80,000 rows, a second or so); IDV_MIGRATE_BATCH_BLOCKS (1-100000) sets
 * another number, e.g. smaller for shorter transactions. */
#define MOVE_BLOCKS 1000
/* Partitions are made for this month and the next two. */
#define MAINTAIN_AHEAD "2 months"

static const char *const history_tables[MAINTAIN_TABLES] = {"callback_events", "transaction_events",
                                                            "check_results"};

int migrate_latest_version(void)
{
    int v = 0;
    for (unsigned i = 0; i < migrations_count; i++)
        if (migrations[i].version > v) v = migrations[i].version;
    return v;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) continue;
}

/* 10000000 -> "10,000,000" into buf. */
static const char *fmt_count(char *buf, size_t len, long long n)
{
    char digits[32];
    snprintf(digits, sizeof digits, "%lld", n < 0 ? -n : n);
    size_t nd = strlen(digits), j = 0;
    if (n < 0 && j + 1 < len) buf[j++] = '-';
    for (size_t i = 0; i < nd && j + 1 < len; i++) {
        if (i > 0 && (nd - i) % 3 == 0 && j + 1 < len) buf[j++] = ',';
        buf[j++] = digits[i];
    }
    buf[j] = '\0';
    return buf;
}

static bool result_ok(const PGresult *r)
{
    ExecStatusType st = PQresultStatus(r);
    return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

static bool lock_not_available(const PGresult *r)
{
    const char *s = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    return s && strcmp(s, "55P03") == 0;
}

/* A command-line session with the database: every line it prints starts with
 * who, and every statement has a deadline (see session_exec). */
struct session {
    PGconn *c;
    FILE *out;
    const char *who; /* "migrate" or "maintain" */
    long timeout_ms; /* deadline of one statement */
    bool lost;       /* the connection broke or a deadline passed: no more statements */
    bool reported;   /* ... and that was printed: nothing more is */
};

/* libpq's last message, its lines joined, and a newline. */
static void print_pq_message(struct session *s)
{
    const char *m = PQerrorMessage(s->c);
    bool space = false, any = false;
    for (; *m; m++) {
        if (*m == '\n' || *m == '\t' || *m == '\r' || *m == ' ') {
            space = any;
            continue;
        }
        if (space) fputc(' ', s->out);
        fputc(*m, s->out);
        space = false;
        any = true;
    }
    if (!any) fputs("no message from libpq", s->out);
    fputc('\n', s->out);
    fflush(s->out);
}

/* Prints "<who>: <what> failed: <libpq's message>" as one line: libpq's
 * messages run over several lines ("server closed the connection
 * unexpectedly\n\tThis probably means..."), which a journal shows as
 * separate entries, the cause apart from what failed. */
static void session_error(struct session *s, const char *what)
{
    fprintf(s->out, "%s: %s failed: ", s->who, what);
    print_pq_message(s);
    if (PQstatus(s->c) == CONNECTION_BAD) s->lost = true;
    s->reported = s->lost;
}

/* Sends sql (parameters as PQexecParams; none: several statements allowed, as
 * PQexec) and waits for its results, at most s->timeout_ms: a blocking PQexec
 * waits forever when the network between us and the server is cut while the
 * statement runs (no RST comes; TCP holds what either side sends). Returns
 * the result PQexec would (the last one, or the first error), or NULL: the
 * connection failed (libpq's message is set) or the deadline passed (one
 * line printed). Either way s->lost is set: a statement still unanswered
 * makes the connection unusable, and it is only closed. */
static PGresult *session_exec(struct session *s, const char *sql, int nparams,
                              const char *const *params, const char *what)
{
    if (s->lost) return NULL;
    int sent = nparams > 0 ? PQsendQueryParams(s->c, sql, nparams, NULL, params, NULL, NULL, 0)
                           : PQsendQuery(s->c, sql);
    if (!sent) return NULL; /* libpq's message says why */
    double deadline = now_s() + (double)s->timeout_ms / 1000.0;
    PGresult *keep = NULL;
    for (;;) {
        int unsent = PQflush(s->c);
        if (unsent < 0) break;
        if (unsent == 0 && !PQisBusy(s->c)) {
            PGresult *r = PQgetResult(s->c);
            if (!r) return keep;
            if (keep && !result_ok(keep)) {
                PQclear(r);
            } else {
                PQclear(keep);
                keep = r;
            }
            continue;
        }
        double left = deadline - now_s();
        if (left <= 0) {
            fprintf(s->out,
                    "%s: %s: no answer from the database within %g s (maintain_timeout_ms); "
                    "giving up (the step is either done or rolled back by the server: the "
                    "next run goes on from there; a step that needs longer needs a larger "
                    "maintain_timeout_ms)\n",
                    s->who, what, (double)s->timeout_ms / 1000.0);
            fflush(s->out);
            PQclear(keep);
            s->lost = s->reported = true;
            return NULL;
        }
        struct pollfd p = {.fd = PQsocket(s->c),
                           .events = (short)(POLLIN | (unsent ? POLLOUT : 0))};
        int n = poll(&p, 1, (int)(left * 1000.0) + 1);
        if (n < 0 && errno != EINTR) break;
        if (n > 0 && !PQconsumeInput(s->c)) break;
    }
    PQclear(keep);
    s->lost = true;
    return NULL;
}

/* session_exec; a statement that failed is reported (one line, and only
 * the first failure of a lost session) and NULL returned. */
static PGresult *session_run(struct session *s, const char *sql, int nparams,
                             const char *const *params, const char *what)
{
    PGresult *r = session_exec(s, sql, nparams, params, what);
    if (r && result_ok(r)) return r;
    if (!s->reported) session_error(s, what);
    PQclear(r);
    return NULL;
}

static bool exec_ok(struct session *s, const char *sql, const char *what)
{
    PGresult *r = session_run(s, sql, 0, NULL, what);
    PQclear(r);
    return r != NULL;
}

/* Says that what could not get its lock within lock_timeout and waits
 * *backoff ms before the next attempt, doubling it up to 8 s. */
static void lock_backoff(struct session *s, const char *what, long *backoff)
{
    fprintf(s->out, "%s: %s: a lock was not free within lock_timeout; again in %ld ms\n", s->who,
            what, *backoff);
    fflush(s->out);
    sleep_ms(*backoff);
    if (*backoff < 8000) *backoff *= 2;
}

/* Runs one autocommit statement; when it cannot get a lock within the
 * session's lock_timeout it is tried again after a back-off. Returns the
 * result (the caller clears it) or NULL, the error printed. */
static PGresult *exec_retrying(struct session *s, const char *sql, int nparams,
                               const char *const *params, const char *what)
{
    long backoff = 250;
    for (int attempt = 1;; attempt++) {
        PGresult *r = session_exec(s, sql, nparams, params, what);
        if (r && result_ok(r)) return r;
        if (r && lock_not_available(r) && attempt < LOCK_ATTEMPTS) {
            PQclear(r);
            lock_backoff(s, what, &backoff);
            continue;
        }
        if (!s->reported) session_error(s, what);
        PQclear(r);
        return NULL;
    }
}

/* Connects s (who and out set) with conninfo. libpq's connect_timeout (at
 * least 2 s, libpq's minimum) bounds the connection as s->timeout_ms bounds a
 * statement; given before database_url, which may set another. */
static bool session_connect(struct session *s, const char *conninfo, const char *app)
{
    char ct[24];
    long secs = (s->timeout_ms + 999) / 1000;
    snprintf(ct, sizeof ct, "%ld", secs < 2 ? 2 : secs);
    const char *kw[] = {"connect_timeout", "dbname", "fallback_application_name", NULL};
    const char *val[] = {ct, conninfo, app, NULL};
    s->lost = s->reported = false;
    s->c = PQconnectdbParams(kw, val, 1);
    if (!s->c) return false;
    if (PQstatus(s->c) != CONNECTION_OK) {
        fprintf(s->out, "%s: cannot connect: ", s->who);
        print_pq_message(s);
        PQfinish(s->c);
        s->c = NULL;
        return false;
    }
    /* Non-blocking: session_exec waits in poll(), with its deadline, never in
     * a write to a socket nobody reads. */
    if (PQsetnonblocking(s->c, 1) != 0 ||
        !exec_ok(s, "SET client_min_messages = warning", "session setup")) {
        PQfinish(s->c);
        s->c = NULL;
        return false;
    }
    return true;
}

/* ---- migrate --------------------------------------------------------------- */

/* Applies one migration in its own transaction. A migration that could not
 * get a lock within its lock_timeout (sql/0006 sets one: it must not hold
 * callbacks back while it waits) is rolled back and tried again. */
static int apply_one(struct session *s, const struct migration *m, const char *sum)
{
    char v[16];
    snprintf(v, sizeof v, "%d", m->version);
    const char *params[3] = {v, m->name, sum};
    long backoff = 250;
    for (int attempt = 1;; attempt++) {
        if (!exec_ok(s, "BEGIN", "BEGIN")) return IDV_EDB;
        PGresult *r = session_exec(s, m->sql, 0, NULL, m->name);
        if (!r || !result_ok(r)) {
            bool retry = lock_not_available(r) && attempt < LOCK_ATTEMPTS;
            if (!retry && !s->reported) session_error(s, m->name);
            PQclear(r);
            if (!exec_ok(s, "ROLLBACK", "ROLLBACK") || !retry) return IDV_EDB;
            lock_backoff(s, m->name, &backoff);
            continue;
        }
        PQclear(r);
        r = session_run(s,
                        "INSERT INTO idv.schema_migrations (version, name, checksum) "
                        "VALUES ($1, $2, $3)",
                        3, params, "recording the migration");
        bool ok = r != NULL;
        PQclear(r);
        if (!ok || !exec_ok(s, "COMMIT", "COMMIT")) {
            /* Nothing to roll back on a lost connection: the server does. */
            if (!s->lost) PQclear(session_exec(s, "ROLLBACK", 0, NULL, "ROLLBACK"));
            return IDV_EDB;
        }
        fprintf(s->out, "migrate: applied %s\n", m->name);
        fflush(s->out);
        return 0;
    }
}

/* Moves the rows of one history table into its partitioned successor, one
 * short transaction per step (idv.history_migrate_step), then swaps the two.
 * Prints the progress every few seconds: an operator watching a move of
 * millions of rows sees that it is alive and when it should end. */
static int move_table(struct session *s, const char *table)
{
    FILE *out = s->out;
    long blocks = MOVE_BLOCKS;
    const char *env = getenv("IDV_MIGRATE_BATCH_BLOCKS");
    if (env) {
        char *end;
        long v = strtol(env, &end, 10);
        if (*env && !*end && v >= 1 && v <= 100000) blocks = v;
    }
    char nblocks[24];
    snprintf(nblocks, sizeof nblocks, "%ld", blocks);
    const char *params[2] = {table, nblocks};
    char a[32], b[32], what[96];
    snprintf(what, sizeof what, "moving idv.%s", table);
    double t0 = now_s(), last_print = 0;
    long long moved0 = -1;
    for (;;) {
        PGresult *r = exec_retrying(s,
                                    "SELECT phase, moved, coalesce(total, -1) "
                                    "FROM idv.history_migrate_step($1, $2::integer)",
                                    2, params, what);
        if (!r) return IDV_EDB;
        char phase[16];
        snprintf(phase, sizeof phase, "%s", PQgetvalue(r, 0, 0));
        long long moved = atoll(PQgetvalue(r, 0, 1)), total = atoll(PQgetvalue(r, 0, 2));
        PQclear(r);
        double t = now_s();
        if (moved0 < 0 && total >= 0) {
            moved0 = moved;
            fprintf(out, "migrate: idv.%s: %s of %s rows to move into the partitioned table\n",
                    table, fmt_count(a, sizeof a, total - moved), fmt_count(b, sizeof b, total));
            last_print = t;
        } else if (!strcmp(phase, "copy") && t - last_print >= 2.0) {
            double rate = (double)(moved - moved0) / (t - t0);
            fprintf(out, "migrate: idv.%s: %s of %s rows moved (%.0f%%), %.0f s elapsed", table,
                    fmt_count(a, sizeof a, moved), fmt_count(b, sizeof b, total),
                    total > 0 ? 100.0 * (double)moved / (double)total : 100.0, t - t0);
            if (rate > 0)
                fprintf(out, ", about %.0f s left\n", (double)(total - moved) / rate);
            else
                fputc('\n', out);
            last_print = t;
        }
        fflush(out);
        if (!strcmp(phase, "drop")) {
            PGresult *sw = session_run(s,
                                       "SELECT round(swap_ms::numeric, 1) FROM "
                                       "idv.history_migration WHERE table_name = $1",
                                       1, params, "reading the swap's lock time");
            if (!sw && s->lost) return IDV_EDB;
            fprintf(out,
                    "migrate: idv.%s: %s rows moved in %.1f s; swapped in, holding its lock %s "
                    "ms\n",
                    table, fmt_count(a, sizeof a, moved), t - t0,
                    sw && PQntuples(sw) == 1 ? PQgetvalue(sw, 0, 0) : "?");
            PQclear(sw);
        }
        if (!strcmp(phase, "done")) {
            fprintf(out, "migrate: idv.%s is partitioned\n", table);
            return 0;
        }
    }
}

/* The moves sql/0006 started and that are not finished (this run's, or one an
 * interrupted run left). */
static int move_history(struct session *s)
{
    PGresult *r = session_run(s,
                              "SELECT table_name FROM idv.history_migration "
                              "WHERE phase <> 'done' ORDER BY table_name",
                              0, NULL, "reading idv.history_migration");
    if (!r) return IDV_EDB;
    int rc = 0;
    if (PQntuples(r) > 0) {
        PGresult *t = session_run(s,
                                  "SELECT round(max(trigger_ms)::numeric, 1) FROM "
                                  "idv.history_migration WHERE next_block = 0 AND phase = 'copy'",
                                  0, NULL, "reading idv.history_migration");
        if (t && !PQgetisnull(t, 0, 0))
            fprintf(s->out,
                    "migrate: the copy triggers were installed holding SHARE ROW EXCLUSIVE on "
                    "the history tables for %s ms\n",
                    PQgetvalue(t, 0, 0));
        PQclear(t);
        if (!exec_ok(s, MIGRATE_LOCK_TIMEOUT, "lock_timeout")) rc = IDV_EDB;
    }
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) rc = move_table(s, PQgetvalue(r, i, 0));
    PQclear(r);
    if (rc == 0 && !exec_ok(s, "RESET lock_timeout", "lock_timeout")) rc = IDV_EDB;
    return rc;
}

/* Takes the advisory lock key (a decimal constant) for the session. When
 * another session holds it: with wait, says so and asks again every second
 * (each ask answered within the deadline: a wait for another run, however
 * long, is not mistaken for a cut network, nor a cut network for a wait);
 * without, returns with *taken false. Returns false (message printed) on a
 * database error. */
static bool advisory_lock(struct session *s, const char *key, bool wait, bool *taken)
{
    char sql[96];
    snprintf(sql, sizeof sql, "SELECT pg_try_advisory_lock(%s)", key);
    *taken = false;
    for (bool said = false;; said = true) {
        PGresult *r = session_run(s, sql, 0, NULL, "advisory lock");
        if (!r) return false;
        *taken = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
        PQclear(r);
        if (*taken || !wait) return true;
        if (!said) {
            fprintf(s->out, "%s: another %s is running; waiting for it\n", s->who, s->who);
            fflush(s->out);
        }
        sleep_ms(1000);
    }
}

/* Releases the session's advisory locks, unless the connection is lost
 * (closing it releases them). */
static void advisory_unlock_all(struct session *s)
{
    if (!s->lost) PQclear(session_run(s, "SELECT pg_advisory_unlock_all()", 0, NULL, "unlock"));
}

int migrate_run(const char *conninfo, long timeout_ms, FILE *out)
{
    struct session s = {.out = out, .who = "migrate", .timeout_ms = timeout_ms};
    if (!session_connect(&s, conninfo, "idv-callbackd migrate")) return IDV_EDB;
    int rc = IDV_EDB;
    bool locked;
    /* Several instances may run this at once: one applies, the others wait and
     * then find nothing left to do. */
    if (!advisory_lock(&s, MIGRATE_LOCK_KEY, true, &locked)) goto done;
    if (!exec_ok(&s,
                 "CREATE SCHEMA IF NOT EXISTS idv;"
                 "CREATE TABLE IF NOT EXISTS idv.schema_migrations ("
                 " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                 " applied_at timestamptz NOT NULL DEFAULT now())",
                 "bootstrap"))
        goto unlock;

    unsigned applied = 0;
    for (unsigned i = 0; i < migrations_count; i++) {
        const struct migration *m = &migrations[i];
        uint8_t d[SHA256_LEN];
        char sum[SHA256_HEX_LEN + 1], v[16];
        crypto_sha256(m->sql, strlen(m->sql), d);
        crypto_hex(d, sizeof d, sum);
        snprintf(v, sizeof v, "%d", m->version);
        const char *params[1] = {v};
        PGresult *r =
            session_run(&s, "SELECT checksum FROM idv.schema_migrations WHERE version = $1", 1,
                        params, "reading idv.schema_migrations");
        if (!r) goto unlock;
        if (PQntuples(r) == 1) {
            if (strcmp(PQgetvalue(r, 0, 0), sum) != 0)
                fprintf(out,
                        "migrate: warning: %s changed after it was applied (checksum differs)\n",
                        m->name);
            PQclear(r);
            continue;
        }
        PQclear(r);
        if (apply_one(&s, m, sum) != 0) goto unlock;
        applied++;
    }
    if (move_history(&s) != 0) goto unlock;
    fprintf(out, "migrate: schema version %d, %u migration(s) applied now\n",
            migrate_latest_version(), applied);
    rc = 0;
unlock:
    advisory_unlock_all(&s);
done:
    PQfinish(s.c);
    return rc;
}

/* ---- maintain -------------------------------------------------------------- */

/* Prints every row of a one-column result as a line of maintain's output. */
static void print_lines(PGresult *r, FILE *out, bool *repair_needed)
{
    for (int i = 0; i < PQntuples(r); i++) {
        if (PQgetisnull(r, i, 0)) continue;
        const char *line = PQgetvalue(r, i, 0);
        fprintf(out, "maintain: %s\n", line);
        if (repair_needed && strstr(line, "repair needed")) *repair_needed = true;
    }
    fflush(out);
}

/* Turns the rows a DEFAULT partition caught into a partition, a step per
 * transaction (see idv.history_repair_default). */
static int repair_default(struct session *s, const char *part)
{
    const char *params[1] = {part};
    for (int step = 0; step < 8; step++) {
        PGresult *r = exec_retrying(s, "SELECT action, again FROM idv.history_repair_default($1)",
                                    1, params, "repairing the default partition");
        if (!r) {
            /* A fence left standing would refuse rows once time (or the xids)
             * pass its upper bound: take it down; the next run starts over.
             * On a lost connection the next run finishes the repair instead
             * (the fence leaves two days). */
            PGresult *a = exec_retrying(s, "SELECT idv.history_repair_abort($1)", 1, params,
                                        "abandoning the repair");
            if (a) print_lines(a, s->out, NULL);
            PQclear(a);
            return IDV_EDB;
        }
        bool again = PQntuples(r) == 1 && !strcmp(PQgetvalue(r, 0, 1), "t");
        print_lines(r, s->out, NULL);
        PQclear(r);
        if (!again) return 0;
    }
    return 0;
}

/* Drops the partitions of a table past its retention, one transaction each. */
static int apply_retention(struct session *s, const char *table, long days)
{
    char keep[32];
    snprintf(keep, sizeof keep, "%ld days", days);
    const char *params[3] = {table, keep, NULL};
    PGresult *r = exec_retrying(s, "SELECT idv.history_expired_partitions($1, $2::interval)", 2,
                                params, "listing expired partitions");
    if (!r) return IDV_EDB;
    int rc = 0;
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
        const char *p[3] = {table, PQgetvalue(r, i, 0), keep};
        PGresult *d = exec_retrying(s, "SELECT idv.history_drop_partition($1, $2, $3::interval)", 3,
                                    p, "dropping an expired partition");
        if (!d) {
            rc = IDV_EDB;
            break;
        }
        print_lines(d, s->out, NULL);
        PQclear(d);
    }
    PQclear(r);
    return rc;
}

static int maintain_table(struct session *s, const char *table, const char *part, long days)
{
    FILE *out = s->out;
    const char *params[1] = {part};
    int rc = repair_default(s, part);
    for (int round = 0; rc == 0 && round < 2; round++) {
        PGresult *r = exec_retrying(s,
                                    "SELECT idv.history_make_partitions($1, now(), "
                                    "now() + interval '" MAINTAIN_AHEAD "')",
                                    1, params, "making partitions");
        if (!r) return IDV_EDB;
        bool repair = false;
        print_lines(r, out, &repair);
        PQclear(r);
        if (!repair) break;
        rc = repair_default(s, part);
    }
    if (rc == 0 && days > 0) {
        if (strcmp(table, part) != 0)
            fprintf(out, "maintain: idv.%s: retention waits until migrate has finished\n", table);
        else
            rc = apply_retention(s, table, days);
    }
    if (rc != 0) return rc;
    PGresult *l =
        exec_retrying(s,
                      "SELECT count(*) FILTER (WHERE NOT is_default),"
                      " coalesce(to_char(max(range_to) FILTER (WHERE range_to < 'infinity'"
                      " AND NOT is_default) AT TIME ZONE 'UTC', 'YYYY-MM-DD'),"
                      " 'xid ' || max(xid_to::text::numeric), '-'),"
                      " coalesce(to_char(min(range_from) FILTER (WHERE NOT is_default)"
                      " AT TIME ZONE 'UTC', 'YYYY-MM-DD'),"
                      " 'xid ' || min(xid_from::text::numeric), '-')"
                      " FROM idv.history_partitions($1)",
                      1, params, "listing partitions");
    if (!l) return IDV_EDB;
    char keep[48] = "off: keeps everything";
    if (days > 0) snprintf(keep, sizeof keep, "%ld days", days);
    fprintf(out, "maintain: idv.%s: %s partitions, from %s to %s; retention %s\n", table,
            PQgetvalue(l, 0, 0), PQgetvalue(l, 0, 2), PQgetvalue(l, 0, 1), keep);
    PQclear(l);
    return 0;
}

int migrate_maintain(const char *conninfo, const struct maintain_opts *opts, FILE *out)
{
    struct session s = {.out = out, .who = "maintain", .timeout_ms = opts->timeout_ms};
    if (!session_connect(&s, conninfo, "idv-callbackd maintain")) return IDV_EDB;
    int rc = IDV_EDB;
    bool locked;
    if (!advisory_lock(&s, MAINTAIN_LOCK_KEY, false, &locked)) goto done;
    if (!locked) {
        /* Two timers that fire together (several hosts): one does the work. */
        fprintf(out, "maintain: another maintain is running; nothing to do\n");
        rc = 0;
        goto done;
    }
    /* Not while migrate runs (it renames the tables maintain works on): a
     * shared hold of migrate's lock, which migrate takes exclusively. */
    PGresult *m = session_run(&s, "SELECT pg_try_advisory_lock_shared(" MIGRATE_LOCK_KEY ")", 0,
                              NULL, "advisory lock");
    if (!m) goto unlock;
    bool free_of_migrate = !strcmp(PQgetvalue(m, 0, 0), "t");
    PQclear(m);
    if (!free_of_migrate) {
        fprintf(out, "maintain: migrate is running; nothing to do\n");
        rc = 0;
        goto unlock;
    }
    if (!exec_ok(&s, MAINTAIN_LOCK_TIMEOUT, "lock_timeout")) goto unlock;
    /* Until migrate has swapped a table in, its partitioned successor is
     * idv.<table>_new: that one needs partitions ahead already. */
    PGresult *r = session_exec(&s,
                               "SELECT h.table_name, CASE WHEN c.relkind = 'p' THEN h.table_name"
                               " ELSE h.table_name || '_new' END"
                               " FROM idv.history_tables h"
                               " LEFT JOIN pg_class c ON c.oid = to_regclass('idv.' ||"
                               " h.table_name)",
                               0, NULL, "reading idv.history_tables");
    if (!r || !result_ok(r)) {
        if (r && !s.lost)
            session_error(&s, "the schema has no partitioned history (run: idv-callbackd "
                              "migrate); reading idv.history_tables");
        else if (!s.reported)
            session_error(&s, "reading idv.history_tables");
        PQclear(r);
        goto unlock;
    }
    rc = 0;
    for (int t = 0; rc == 0 && t < MAINTAIN_TABLES; t++)
        for (int i = 0; rc == 0 && i < PQntuples(r); i++)
            if (!strcmp(PQgetvalue(r, i, 0), history_tables[t]))
                rc = maintain_table(&s, history_tables[t], PQgetvalue(r, i, 1),
                                    opts->retention_days[t]);
    PQclear(r);
unlock:
    advisory_unlock_all(&s);
done:
    PQfinish(s.c);
    return rc;
}
