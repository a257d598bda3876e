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

/* The history tables maintain looks after, in the order of their retention
 * settings in struct maintain_opts. */
#define MAINTAIN_TABLES 3

/* What `idv-callbackd maintain` does beyond making partitions ahead. */
struct maintain_opts {
    /* Days each history table keeps (callback_events, transaction_events,
     * check_results); 0 keeps everything. */
    long retention_days[MAINTAIN_TABLES];
    /* Deadline of one step (maintain_timeout_ms): a step the database has
     * not answered by then (network cut, server stopped) ends the run. */
    long timeout_ms;
};

/* The highest migration this binary knows: the schema version it needs. */
int migrate_latest_version(void);
/* Applies the migrations not yet recorded in idv.schema_migrations, each in its
 * own transaction, under an advisory lock so that concurrent runs serialize;
 * then moves the rows of the history tables into their partitioned successors
 * (sql/0006: batches of short transactions, then one short swap per table),
 * printing progress. A migration or swap that cannot get its lock within its
 * lock_timeout is retried. Every statement, and the connection, has timeout_ms
 * to be answered (the wait for another migrate is a series of short asks).
 * Blocking (poll() with that deadline): for the command line only, never on
 * the event loop. Progress goes to out. Returns 0, IDV_EDB (message printed,
 * one line) or IDV_ENOMEM. */
int migrate_run(const char *conninfo, long timeout_ms, FILE *out) IDV_MUSTCHECK;
/* `idv-callbackd maintain`: for each history table, turns rows its DEFAULT
 * partition caught into a partition, makes the partitions of this month and
 * the next two, and drops the partitions past the retention (never one holding
 * rows of a live transaction). One instance at a time (advisory lock: a second
 * run finds it taken and returns 0). Every step is its own short transaction
 * with a short lock_timeout, retried, and has opts->timeout_ms to be answered.
 * Blocking (poll() with that deadline), command line only. Returns 0, IDV_EDB
 * (message printed, one line) or IDV_ENOMEM. */
int migrate_maintain(const char *conninfo, const struct maintain_opts *opts,
                     FILE *out) IDV_MUSTCHECK;
