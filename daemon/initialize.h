#pragma once
#include <jansson.h>

#include "app.h"
#include "pg.h"

/* POST /v1/transactions: validates the Initialize parameters against the seed,
 * mints a callback token, records the row as initializing, calls Alibaba's
 * Initialize (never retried automatically), and records initiated or
 * initialize_failed before answering. Idempotent on merchantBizId while the
 * transaction is live. Takes ownership of body (a JSON object). */
void initialize_handle(struct app *app, struct conn *c, json_t *body);

/* The statements this module prepares on every pool connection. */
extern const struct pg_stmt initialize_statements[];
extern const size_t initialize_statements_count;
