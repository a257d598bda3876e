#include "migrate.h"

#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "crypto.h"

/* An arbitrary constant shared by every instance: pg_advisory_lock key. */
#define MIGRATE_LOCK_KEY "7311404519223372001"

int migrate_latest_version(void)
{
    int v = 0;
    for (unsigned i = 0; i < migrations_count; i++)
        if (migrations[i].version > v) v = migrations[i].version;
    return v;
}

static bool exec_ok(PGconn *c, const char *sql, FILE *out, const char *what)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok) fprintf(out, "migrate: %s failed: %s", what, PQerrorMessage(c));
    PQclear(r);
    return ok;
}

static int apply_one(PGconn *c, const struct migration *m, const char *sum, FILE *out)
{
    if (!exec_ok(c, "BEGIN", out, "BEGIN")) return IDV_EDB;
    if (!exec_ok(c, m->sql, out, m->name)) {
        PQclear(PQexec(c, "ROLLBACK"));
        return IDV_EDB;
    }
    char v[16];
    snprintf(v, sizeof v, "%d", m->version);
    const char *params[3] = {v, m->name, sum};
    PGresult *r = PQexecParams(c,
                               "INSERT INTO idv.schema_migrations (version, name, checksum) "
                               "VALUES ($1, $2, $3)",
                               3, NULL, params, NULL, NULL, 0);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok) fprintf(out, "migrate: recording %s failed: %s", m->name, PQerrorMessage(c));
    PQclear(r);
    if (!ok || !exec_ok(c, "COMMIT", out, "COMMIT")) {
        PQclear(PQexec(c, "ROLLBACK"));
        return IDV_EDB;
    }
    fprintf(out, "migrate: applied %s\n", m->name);
    return 0;
}

int migrate_run(const char *conninfo, FILE *out)
{
    const char *kw[] = {"dbname", "fallback_application_name", NULL};
    const char *val[] = {conninfo, "idv-callbackd migrate", NULL};
    PGconn *c = PQconnectdbParams(kw, val, 1);
    if (!c) return IDV_ENOMEM;
    int rc = IDV_EDB;
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(out, "migrate: cannot connect: %s", PQerrorMessage(c));
        goto done;
    }
    PQclear(PQexec(c, "SET client_min_messages = warning"));
    /* Several instances may run this at once: one applies, the others wait and
     * then find nothing left to do. */
    if (!exec_ok(c, "SELECT pg_advisory_lock(" MIGRATE_LOCK_KEY ")", out, "advisory lock"))
        goto done;
    if (!exec_ok(c,
                 "CREATE SCHEMA IF NOT EXISTS idv;"
                 "CREATE TABLE IF NOT EXISTS idv.schema_migrations ("
                 " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                 " applied_at timestamptz NOT NULL DEFAULT now())",
                 out, "bootstrap"))
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
    fprintf(out, "migrate: schema version %d, %u migration(s) applied now\n",
            migrate_latest_version(), applied);
    rc = 0;
unlock:
    PQclear(PQexec(c, "SELECT pg_advisory_unlock(" MIGRATE_LOCK_KEY ")"));
done:
    PQfinish(c);
    return rc;
}
