#pragma once
#include <stdio.h>

#include "err.h"

/* One numbered file of sql/, embedded at build time. */
struct migration {
    int version;
    const char *name;
    const char *sql;
};

extern const struct migration migrations[];
extern const unsigned migrations_count;

/* The highest migration this binary knows: the schema version it needs. */
int migrate_latest_version(void);
/* Applies the migrations not yet recorded in idv.schema_migrations, each in its
 * own transaction, under an advisory lock so that concurrent runs serialize.
 * Blocking libpq: for the command line only, never on the event loop. Progress
 * goes to out. Returns 0, IDV_EDB (message printed) or IDV_ENOMEM. */
int migrate_run(const char *conninfo, FILE *out) IDV_MUSTCHECK;
