#include "migrate.h"

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

static bool exec_ok(PGconn *c, const char *sql, FILE *out, const char *who, const char *what)
{
    PGresult *r = PQexec(c, sql);
    bool ok = result_ok(r);
    if (!ok) fprintf(out, "%s: %s failed: %s", who, what, PQerrorMessage(c));
    PQclear(r);
    return ok;
}

/* Runs one autocommit statement; when it cannot get a lock within the
 * session's lock_timeout it is tried again after a back-off. Returns the
 * result (the caller clears it) or NULL, the error printed. */
static PGresult *exec_retrying(PGconn *c, const char *sql, int nparams, const char *const *params,
                               FILE *out, const char *who, const char *what)
{
    long backoff = 250;
    for (int attempt = 1;; attempt++) {
        PGresult *r = PQexecParams(c, sql, nparams, NULL, params, NULL, NULL, 0);
        if (result_ok(r)) return r;
        if (lock_not_available(r) && attempt < LOCK_ATTEMPTS) {
            fprintf(out, "%s: %s: a lock was not free within lock_timeout; again in %ld ms\n", who,
                    what, backoff);
            fflush(out);
            PQclear(r);
            sleep_ms(backoff);
            if (backoff < 8000) backoff *= 2;
            continue;
        }
        fprintf(out, "%s: %s failed: %s", who, what, PQerrorMessage(c));
        PQclear(r);
        return NULL;
    }
}

static PGconn *connect_db(const char *conninfo, const char *app, FILE *out, const char *who)
{
    const char *kw[] = {"dbname", "fallback_application_name", NULL};
    const char *val[] = {conninfo, app, NULL};
    PGconn *c = PQconnectdbParams(kw, val, 1);
    if (!c) return NULL;
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(out, "%s: cannot connect: %s", who, PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    PQclear(PQexec(c, "SET client_min_messages = warning"));
    return c;
}

/* ---- migrate --------------------------------------------------------------- */

/* Applies one migration in its own transaction. A migration that could not
 * get a lock within its lock_timeout (sql/0006 sets one: it must not hold
 * callbacks back while it waits) is rolled back and tried again. */
static int apply_one(PGconn *c, const struct migration *m, const char *sum, FILE *out)
{
    char v[16];
    snprintf(v, sizeof v, "%d", m->version);
    const char *params[3] = {v, m->name, sum};
    long backoff = 250;
    for (int attempt = 1;; attempt++) {
        if (!exec_ok(c, "BEGIN", out, "migrate", "BEGIN")) return IDV_EDB;
        PGresult *r = PQexec(c, m->sql);
        if (!result_ok(r)) {
            bool retry = lock_not_available(r) && attempt < LOCK_ATTEMPTS;
            if (retry)
                fprintf(out,
                        "migrate: %s: a lock was not free within lock_timeout; again in %ld ms\n",
                        m->name, backoff);
            else
                fprintf(out, "migrate: %s failed: %s", m->name, PQerrorMessage(c));
            fflush(out);
            PQclear(r);
            PQclear(PQexec(c, "ROLLBACK"));
            if (!retry) return IDV_EDB;
            sleep_ms(backoff);
            if (backoff < 8000) backoff *= 2;
            continue;
        }
        PQclear(r);
        r = PQexecParams(c,
                         "INSERT INTO idv.schema_migrations (version, name, checksum) "
                         "VALUES ($1, $2, $3)",
                         3, NULL, params, NULL, NULL, 0);
        bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
        if (!ok) fprintf(out, "migrate: recording %s failed: %s", m->name, PQerrorMessage(c));
        PQclear(r);
        if (!ok || !exec_ok(c, "COMMIT", out, "migrate", "COMMIT")) {
            PQclear(PQexec(c, "ROLLBACK"));
            return IDV_EDB;
        }
        fprintf(out, "migrate: applied %s\n", m->name);
        fflush(out);
        return 0;
    }
}

/* Moves the rows of one history table into its partitioned successor, one
 * short transaction per step (idv.history_migrate_step), then swaps the two.
 * Prints the progress every few seconds: an operator watching a move of
 * millions of rows sees that it is alive and when it should end. */
static int move_table(PGconn *c, const char *table, FILE *out)
{
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
        PGresult *r = exec_retrying(c,
                                    "SELECT phase, moved, coalesce(total, -1) "
                                    "FROM idv.history_migrate_step($1, $2::integer)",
                                    2, params, out, "migrate", what);
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
            PGresult *s =
                PQexecParams(c,
                             "SELECT round(swap_ms::numeric, 1) FROM idv.history_migration "
                             "WHERE table_name = $1",
                             1, NULL, params, NULL, NULL, 0);
            fprintf(out,
                    "migrate: idv.%s: %s rows moved in %.1f s; swapped in, holding its lock %s "
                    "ms\n",
                    table, fmt_count(a, sizeof a, moved), t - t0,
                    result_ok(s) && PQntuples(s) == 1 ? PQgetvalue(s, 0, 0) : "?");
            PQclear(s);
        }
        if (!strcmp(phase, "done")) {
            fprintf(out, "migrate: idv.%s is partitioned\n", table);
            return 0;
        }
    }
}

/* The moves sql/0006 started and that are not finished (this run's, or one an
 * interrupted run left). */
static int move_history(PGconn *c, FILE *out)
{
    PGresult *r = PQexec(c, "SELECT table_name FROM idv.history_migration "
                            "WHERE phase <> 'done' ORDER BY table_name");
    if (!result_ok(r)) {
        fprintf(out, "migrate: reading idv.history_migration failed: %s", PQerrorMessage(c));
        PQclear(r);
        return IDV_EDB;
    }
    int rc = 0;
    if (PQntuples(r) > 0) {
        PGresult *t = PQexec(c, "SELECT round(max(trigger_ms)::numeric, 1) FROM "
                                "idv.history_migration WHERE next_block = 0 AND phase = 'copy'");
        if (result_ok(t) && !PQgetisnull(t, 0, 0))
            fprintf(out,
                    "migrate: the copy triggers were installed holding SHARE ROW EXCLUSIVE on "
                    "the history tables for %s ms\n",
                    PQgetvalue(t, 0, 0));
        PQclear(t);
        if (!exec_ok(c, MIGRATE_LOCK_TIMEOUT, out, "migrate", "lock_timeout")) rc = IDV_EDB;
    }
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) rc = move_table(c, PQgetvalue(r, i, 0), out);
    PQclear(r);
    PQclear(PQexec(c, "RESET lock_timeout"));
    return rc;
}

/* Takes the advisory lock key (a decimal constant) for the session. When
 * another session holds it: with wait, says so and waits; without, returns
 * with *taken false. Returns false (message printed) on a database error. */
static bool advisory_lock(PGconn *c, const char *key, bool wait, FILE *out, const char *who,
                          bool *taken)
{
    char sql[96];
    snprintf(sql, sizeof sql, "SELECT pg_try_advisory_lock(%s)", key);
    *taken = false;
    PGresult *r = PQexec(c, sql);
    if (!result_ok(r)) {
        fprintf(out, "%s: advisory lock failed: %s", who, PQerrorMessage(c));
        PQclear(r);
        return false;
    }
    *taken = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    if (*taken || !wait) return true;
    fprintf(out, "%s: another %s is running; waiting for it\n", who, who);
    fflush(out);
    snprintf(sql, sizeof sql, "SELECT pg_advisory_lock(%s)", key);
    if (!exec_ok(c, sql, out, who, "advisory lock")) return false;
    *taken = true;
    return true;
}

int migrate_run(const char *conninfo, FILE *out)
{
    PGconn *c = connect_db(conninfo, "idv-callbackd migrate", out, "migrate");
    if (!c) return IDV_EDB;
    int rc = IDV_EDB;
    bool locked;
    /* Several instances may run this at once: one applies, the others wait and
     * then find nothing left to do. */
    if (!advisory_lock(c, MIGRATE_LOCK_KEY, true, out, "migrate", &locked)) goto done;
    if (!exec_ok(c,
                 "CREATE SCHEMA IF NOT EXISTS idv;"
                 "CREATE TABLE IF NOT EXISTS idv.schema_migrations ("
                 " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                 " applied_at timestamptz NOT NULL DEFAULT now())",
                 out, "migrate", "bootstrap"))
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
            PQexecParams(c, "SELECT checksum FROM idv.schema_migrations WHERE version = $1", 1,
                         NULL, params, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            fprintf(out, "migrate: reading idv.schema_migrations failed: %s", PQerrorMessage(c));
            PQclear(r);
            goto unlock;
        }
        if (PQntuples(r) == 1) {
            if (strcmp(PQgetvalue(r, 0, 0), sum) != 0)
                fprintf(out,
                        "migrate: warning: %s changed after it was applied (checksum differs)\n",
                        m->name);
            PQclear(r);
            continue;
        }
        PQclear(r);
        if (apply_one(c, m, sum, out) != 0) goto unlock;
        applied++;
    }
    if (move_history(c, out) != 0) goto unlock;
    fprintf(out, "migrate: schema version %d, %u migration(s) applied now\n",
            migrate_latest_version(), applied);
    rc = 0;
unlock:
    PQclear(PQexec(c, "SELECT pg_advisory_unlock(" MIGRATE_LOCK_KEY ")"));
done:
    PQfinish(c);
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
static int repair_default(PGconn *c, const char *part, FILE *out)
{
    const char *params[1] = {part};
    for (int step = 0; step < 8; step++) {
        PGresult *r = exec_retrying(c, "SELECT action, again FROM idv.history_repair_default($1)",
                                    1, params, out, "maintain", "repairing the default partition");
        if (!r) {
            /* A fence left standing would refuse rows once time (or the xids)
             * pass its upper bound: take it down; the next run starts over. */
            PGresult *a = exec_retrying(c, "SELECT idv.history_repair_abort($1)", 1, params, out,
                                        "maintain", "abandoning the repair");
            if (a) print_lines(a, out, NULL);
            PQclear(a);
            return IDV_EDB;
        }
        bool again = PQntuples(r) == 1 && !strcmp(PQgetvalue(r, 0, 1), "t");
        print_lines(r, out, NULL);
        PQclear(r);
        if (!again) return 0;
    }
    return 0;
}

/* Drops the partitions of a table past its retention, one transaction each. */
static int apply_retention(PGconn *c, const char *table, long days, FILE *out)
{
    char keep[32];
    snprintf(keep, sizeof keep, "%ld days", days);
    const char *params[3] = {table, keep, NULL};
    PGresult *r = exec_retrying(c, "SELECT idv.history_expired_partitions($1, $2::interval)", 2,
                                params, out, "maintain", "listing expired partitions");
    if (!r) return IDV_EDB;
    int rc = 0;
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
        const char *p[3] = {table, PQgetvalue(r, i, 0), keep};
        PGresult *d = exec_retrying(c, "SELECT idv.history_drop_partition($1, $2, $3::interval)", 3,
                                    p, out, "maintain", "dropping an expired partition");
        if (!d) {
            rc = IDV_EDB;
            break;
        }
        print_lines(d, out, NULL);
        PQclear(d);
    }
    PQclear(r);
    return rc;
}

static int maintain_table(PGconn *c, const char *table, const char *part, long days, FILE *out)
{
    const char *params[1] = {part};
    int rc = repair_default(c, part, out);
    for (int round = 0; rc == 0 && round < 2; round++) {
        PGresult *r = exec_retrying(c,
                                    "SELECT idv.history_make_partitions($1, now(), "
                                    "now() + interval '" MAINTAIN_AHEAD "')",
                                    1, params, out, "maintain", "making partitions");
        if (!r) return IDV_EDB;
        bool repair = false;
        print_lines(r, out, &repair);
        PQclear(r);
        if (!repair) break;
        rc = repair_default(c, part, out);
    }
    if (rc == 0 && days > 0) {
        if (strcmp(table, part) != 0)
            fprintf(out, "maintain: idv.%s: retention waits until migrate has finished\n", table);
        else
            rc = apply_retention(c, table, days, out);
    }
    if (rc != 0) return rc;
    PGresult *s =
        exec_retrying(c,
                      "SELECT count(*) FILTER (WHERE NOT is_default),"
                      " coalesce(to_char(max(range_to) FILTER (WHERE range_to < 'infinity'"
                      " AND NOT is_default) AT TIME ZONE 'UTC', 'YYYY-MM-DD'),"
                      " 'xid ' || max(xid_to::text::numeric), '-'),"
                      " coalesce(to_char(min(range_from) FILTER (WHERE NOT is_default)"
                      " AT TIME ZONE 'UTC', 'YYYY-MM-DD'),"
                      " 'xid ' || min(xid_from::text::numeric), '-')"
                      " FROM idv.history_partitions($1)",
                      1, params, out, "maintain", "listing partitions");
    if (!s) return IDV_EDB;
    char keep[48] = "off: keeps everything";
    if (days > 0) snprintf(keep, sizeof keep, "%ld days", days);
    fprintf(out, "maintain: idv.%s: %s partitions, from %s to %s; retention %s\n", table,
            PQgetvalue(s, 0, 0), PQgetvalue(s, 0, 2), PQgetvalue(s, 0, 1), keep);
    PQclear(s);
    return 0;
}

int migrate_maintain(const char *conninfo, const struct maintain_opts *opts, FILE *out)
{
    PGconn *c = connect_db(conninfo, "idv-callbackd maintain", out, "maintain");
    if (!c) return IDV_EDB;
    int rc = IDV_EDB;
    bool locked;
    if (!advisory_lock(c, MAINTAIN_LOCK_KEY, false, out, "maintain", &locked)) goto done;
    if (!locked) {
        /* Two timers that fire together (several hosts): one does the work. */
        fprintf(out, "maintain: another maintain is running; nothing to do\n");
        rc = 0;
        goto done;
    }
    /* Not while migrate runs (it renames the tables maintain works on): a
     * shared hold of migrate's lock, which migrate takes exclusively. */
    PGresult *m = PQexec(c, "SELECT pg_try_advisory_lock_shared(" MIGRATE_LOCK_KEY ")");
    bool free_of_migrate = result_ok(m) && !strcmp(PQgetvalue(m, 0, 0), "t");
    PQclear(m);
    if (!free_of_migrate) {
        fprintf(out, "maintain: migrate is running; nothing to do\n");
        rc = 0;
        goto unlock;
    }
    if (!exec_ok(c, MAINTAIN_LOCK_TIMEOUT, out, "maintain", "lock_timeout")) goto unlock;
    /* Until migrate has swapped a table in, its partitioned successor is
     * idv.<table>_new: that one needs partitions ahead already. */
    PGresult *r = PQexec(c, "SELECT h.table_name, CASE WHEN c.relkind = 'p' THEN h.table_name"
                            " ELSE h.table_name || '_new' END"
                            " FROM idv.history_tables h"
                            " LEFT JOIN pg_class c ON c.oid = to_regclass('idv.' || h.table_name)");
    if (!result_ok(r)) {
        fprintf(out,
                "maintain: the schema has no partitioned history (run: idv-callbackd "
                "migrate): %s",
                PQerrorMessage(c));
        PQclear(r);
        goto unlock;
    }
    rc = 0;
    for (int t = 0; rc == 0 && t < MAINTAIN_TABLES; t++)
        for (int i = 0; rc == 0 && i < PQntuples(r); i++)
            if (!strcmp(PQgetvalue(r, i, 0), history_tables[t]))
                rc = maintain_table(c, history_tables[t], PQgetvalue(r, i, 1),
                                    opts->retention_days[t], out);
    PQclear(r);
unlock:
    PQclear(PQexec(c, "SELECT pg_advisory_unlock_all()"));
done:
    PQfinish(c);
    return rc;
}
