#include "metrics.h"

#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "strbuf.h"
#include "version.h"

struct metrics g_metrics;

static const char *const outcome_names[] = {
#define CB_OUTCOME_NAME(name, text) text,
    CB_OUTCOME_MAP(CB_OUTCOME_NAME)
#undef CB_OUTCOME_NAME
};

const char *cb_outcome_name(enum cb_outcome o)
{
    return outcome_names[o];
}

static const double buckets[METRICS_BUCKETS] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};

void histogram_observe(struct histogram *h, double s)
{
    int i = 0;
    while (i < METRICS_BUCKETS && s > buckets[i]) i++;
    h->counts[i]++;
    h->sum += s;
    h->count++;
}

/* A label value with the exposition format's escapes (\\, \", \n). */
static void label_value(struct strbuf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            strbuf_printf(b, "\\%c", *s);
        else if (*s == '\n')
            strbuf_adds(b, "\\n");
        else
            strbuf_add(b, s, 1);
    }
}

/* ---- The descriptor table ------------------------------------------------
 *
 * Every metric family is one row: name, type, help, where its values are and
 * which labels index them. metrics_render() walks the rows in order and writes
 * HELP, TYPE and the samples of each, so a family cannot lose its HELP or TYPE
 * or get them twice, and adding a metric is adding a row. */

enum metric_type { MT_COUNTER, MT_GAUGE, MT_HISTOGRAM };
static const char *const type_names[] = {"counter", "gauge", "histogram"};

/* Where the values of a family are. */
enum metric_src {
    SRC_COUNT, /* uint64_t (struct histogram for a histogram) in g_metrics at .off */
    SRC_GAUGE, /* double in struct metrics_gauges at .off; NaN: no sample */
    SRC_ONE,   /* the constant 1 (an info metric: the labels are the data) */
};

/* One label of a family. A labelled family's values are an array with one
 * dimension per label, indexed [first, first + count) in this dimension of
 * extent `extent`. */
struct label {
    const char *name;
    const char *const *values; /* the label value of each index; NULL: the index as a number */
    int first, count, extent;
    bool from_gauges; /* instead: one value, the string at .str_off of the gauges */
    size_t str_off;   /* (no sample while that string is NULL or empty) */
};

static const char *const listener_names[ML__COUNT] = {"public", "admin"};
static const char *const action_names[MA__COUNT] = {"Initialize", "CheckResult", "other"};
static const char *const version_values[] = {IDV_VERSION};
static const char *const db_state_names[MDB__COUNT] = {"ready", "busy", "connecting", "down"};

static const struct label L_LISTENER = {
    .name = "listener", .values = listener_names, .count = ML__COUNT, .extent = ML__COUNT};
static const struct label L_OUTCOME = {
    .name = "outcome", .values = outcome_names, .count = CBO__COUNT, .extent = CBO__COUNT};
/* HTTP answers */
static const struct label L_STATUS = {.name = "status", .first = 100, .count = 500, .extent = 600};
/* Upstream answers; 0: none */
static const struct label L_UPSTREAM_STATUS = {.name = "status", .count = 600, .extent = 600};
static const struct label L_ACTION = {
    .name = "action", .values = action_names, .count = MA__COUNT, .extent = MA__COUNT};
static const struct label L_VERSION = {
    .name = "version", .values = version_values, .count = 1, .extent = 1};
static const struct label L_DB_STATE = {
    .name = "state", .values = db_state_names, .count = MDB__COUNT, .extent = MDB__COUNT};
static const struct label L_HOST = {.name = "host",
                                    .count = 1,
                                    .extent = 1,
                                    .from_gauges = true,
                                    .str_off = offsetof(struct metrics_gauges, db_host)};

#define METRIC_LABELS_MAX 2
struct metric_desc {
    const char *name;
    enum metric_type type;
    const char *help;
    enum metric_src src;
    size_t off, size; /* offset and size of the field holding the values */
    const struct label *labels[METRIC_LABELS_MAX]; /* outermost dimension first */
    bool sparse;                                   /* samples only for values that are not 0 */
};

/* A row: M(name, type, help), where the values are, then .labels and
 * .sparse when needed. */
#define M(n, t, h) .name = n, .type = t, .help = h
#define COUNT(field)                                                                               \
    .src = SRC_COUNT, .off = offsetof(struct metrics, field),                                      \
    .size = sizeof(((struct metrics *)0)->field)
#define GAUGE(field)                                                                               \
    .src = SRC_GAUGE, .off = offsetof(struct metrics_gauges, field),                               \
    .size = sizeof(((struct metrics_gauges *)0)->field)
#define ONE .src = SRC_ONE

/* clang-format off */
static const struct metric_desc table[] = {
    {M("idv_build_info", MT_GAUGE, "Version of this idv-callbackd binary."), ONE, .labels = {&L_VERSION}},
    {M("idv_ready", MT_GAUGE, "1 when /readyz answers 200: PostgreSQL reachable with a current schema, not draining."), GAUGE(ready)},
    {M("idv_draining", MT_GAUGE, "1 while the instance is shutting down."), GAUGE(draining)},
    {M("idv_http_requests_total", MT_COUNTER, "HTTP requests answered, by listener and status."), COUNT(requests), .labels = {&L_LISTENER, &L_STATUS}, .sparse = true},
    {M("idv_callbacks_total", MT_COUNTER, "Callback requests, by outcome."), COUNT(callbacks), .labels = {&L_OUTCOME}},
    {M("idv_audit_rows_shed_total", MT_COUNTER, "Audit rows of malformed or rejected requests dropped under overload."), COUNT(callbacks_shed_rows)},
    {M("idv_audit_rows_failed_total", MT_COUNTER, "Audit rows lost to a database error."), COUNT(audit_rows_failed)},
    {M("idv_open_connections", MT_GAUGE, "Client connections open now."), COUNT(conns_open), .labels = {&L_LISTENER}},
    {M("idv_connections_total", MT_COUNTER, "Client connections accepted."), COUNT(conns_accepted), .labels = {&L_LISTENER}},
    {M("idv_connections_refused_total", MT_COUNTER, "Connections closed at once because max_connections was reached."), COUNT(conns_refused), .labels = {&L_LISTENER}},
    {M("idv_connections_timed_out_total", MT_COUNTER, "Connections closed by a header, idle or write deadline."), COUNT(conns_timed_out), .labels = {&L_LISTENER}},
    {M("idv_http_framing_errors_total", MT_COUNTER, "Requests refused by the strict parser (connection closed)."), COUNT(framing_errors), .labels = {&L_LISTENER}},
    {M("idv_request_duration_seconds", MT_HISTOGRAM, "Time from a request's head to its answer."), COUNT(request_seconds), .labels = {&L_LISTENER}},
    {M("idv_commit_duration_seconds", MT_HISTOGRAM, "Time from handing a batch of callbacks to PostgreSQL to its confirmed commit."), COUNT(commit_seconds)},
    {M("idv_commit_batches_total", MT_COUNTER, "Transactions that recorded callbacks."), COUNT(batches)},
    {M("idv_commit_batch_items_total", MT_COUNTER, "Callbacks recorded by those transactions."), COUNT(batch_items)},
    {M("idv_commit_batch_fallbacks_total", MT_COUNTER, "Batches that failed and were retried one callback per transaction."), COUNT(batch_fallbacks)},
    {M("idv_db_connections", MT_GAUGE, "PostgreSQL connections of this instance, by state."), GAUGE(db_conns), .labels = {&L_DB_STATE}},
    {M("idv_db_pool_size", MT_GAUGE, "PostgreSQL connections this instance keeps (db_pool_size)."), GAUGE(db_pool_size)},
    {M("idv_db_queued_queries", MT_GAUGE, "Queries waiting for a PostgreSQL connection."), GAUGE(db_queued)},
    {M("idv_db_connect_attempts_total", MT_COUNTER, "PostgreSQL connection attempts."), GAUGE(db_reconnects)},
    {M("idv_db_connection_failures_total", MT_COUNTER, "PostgreSQL connections lost or failed."), GAUGE(db_failures)},
    {M("idv_db_query_timeouts_total", MT_COUNTER, "Queries answered 503 at their deadline."), GAUGE(db_timeouts)},
    {M("idv_db_queries_lost_total", MT_COUNTER, "Queries whose connection broke before the commit was confirmed."), GAUGE(db_lost)},
    {M("idv_db_failovers_total", MT_COUNTER, "Changes of the PostgreSQL primary (host:port) written to."), GAUGE(db_failovers)},
    /* The label names host:port of the primary the pool last connected to; the
     * value is 1 while a connection to it is up, 0 while none is (during a
     * switch). No sample before the first connection. */
    {M("idv_db_primary", MT_GAUGE, "PostgreSQL primary (host:port) this instance writes to; 1 while connected."), GAUGE(db_primary_up), .labels = {&L_HOST}},
    {M("idv_callback_queue", MT_GAUGE, "Callbacks waiting to be committed."), GAUGE(callback_queue)},
    {M("idv_audit_queue", MT_GAUGE, "Audit rows waiting to be written."), GAUGE(audit_queue)},
    {M("idv_outbound_requests_total", MT_COUNTER, "Calls to the Alibaba API, by action and HTTP status (0: no HTTP answer)."), COUNT(outbound), .labels = {&L_ACTION, &L_UPSTREAM_STATUS}, .sparse = true},
    {M("idv_outbound_throttled_total", MT_COUNTER, "Calls to the Alibaba API answered with a Throttling code, by action."), COUNT(outbound_throttled), .labels = {&L_ACTION}, .sparse = true},
    {M("idv_alibaba_circuit_state", MT_GAUGE, "The circuit guarding the calls to Alibaba: 0 closed, 1 open (calls refused at once), 2 half-open (one probe call)."), COUNT(alibaba_circuit_state)},
    {M("idv_alibaba_circuit_opens_total", MT_COUNTER, "Times the circuit opened after consecutive connect failures or timeouts."), COUNT(alibaba_circuit_opens)},
    {M("idv_alibaba_calls_short_circuited_total", MT_COUNTER, "Calls to Alibaba refused without being made while the circuit was open."), COUNT(alibaba_calls_short_circuited)},
    {M("idv_alibaba_connections_retired_total", MT_COUNTER, "Connections to Alibaba not reused: an unclean exchange, or input while idle."), COUNT(outbound_conns_retired)},
    {M("idv_confirmations_total", MT_COUNTER, "Results confirmed with CheckResult."), COUNT(confirmations)},
    {M("idv_confirmation_disagreements_total", MT_COUNTER, "CheckResult results that differ from the callback."), COUNT(disagreements)},
    {M("idv_confirmation_retries_total", MT_COUNTER, "Confirmation attempts retried."), COUNT(confirm_retries)},
    {M("idv_confirmation_giveups_total", MT_COUNTER, "Work items that reached the attempt limit."), COUNT(confirm_giveups)},
    {M("idv_work_queue_depth", MT_GAUGE, "Confirmation work items waiting (all instances)."), GAUGE(queue_depth)},
    {M("idv_work_queue_oldest_seconds", MT_GAUGE, "Age of the oldest waiting item."), GAUGE(queue_oldest_seconds)},
    {M("idv_work_queue_given_up", MT_GAUGE, "Work items given up and not done (all instances); they wait for an operator."), GAUGE(queue_given_up)},
    {M("idv_tls_certificate_expiry_timestamp_seconds", MT_GAUGE, "Unix time at which the public listener's TLS certificate expires."), GAUGE(tls_not_after)},
};
/* clang-format on */

/* Writes one sample line; labels is `name="value",...` (may be empty). */
static void write_sample(struct strbuf *b, const char *name, const char *suffix,
                         const struct strbuf *labels, const char *value)
{
    if (labels->len)
        strbuf_printf(b, "%s%s{%s} %s\n", name, suffix, labels->p, value);
    else
        strbuf_printf(b, "%s%s %s\n", name, suffix, value);
}

/* Cuts a label set back to n bytes (what it was before a label was added). */
static void labels_truncate(struct strbuf *labels, size_t n)
{
    labels->len = n;
    if (labels->p) labels->p[n] = '\0';
}

/* Adds name="value" (escaped) to a label set. */
static void labels_add(struct strbuf *labels, const char *name, const char *value)
{
    strbuf_printf(labels, "%s%s=\"", labels->len ? "," : "", name);
    label_value(labels, value);
    strbuf_adds(labels, "\"");
}

static void write_histogram(struct strbuf *b, const char *name, struct strbuf *labels,
                            const struct histogram *h)
{
    char v[32];
    size_t mark = labels->len;
    uint64_t cum = 0;
    for (int i = 0; i <= METRICS_BUCKETS; i++) {
        cum += h->counts[i];
        if (i < METRICS_BUCKETS)
            snprintf(v, sizeof v, "%g", buckets[i]);
        else
            snprintf(v, sizeof v, "+Inf");
        labels_add(labels, "le", v);
        snprintf(v, sizeof v, "%llu", (unsigned long long)cum);
        write_sample(b, name, "_bucket", labels, v);
        labels_truncate(labels, mark);
    }
    snprintf(v, sizeof v, "%.6f", h->sum);
    write_sample(b, name, "_sum", labels, v);
    snprintf(v, sizeof v, "%llu", (unsigned long long)h->count);
    write_sample(b, name, "_count", labels, v);
}

/* The address of a family's values: in g_metrics or in the gauges. */
static const void *values_of(const struct metric_desc *d, const struct metrics_gauges *g)
{
    return (const char *)(d->src == SRC_GAUGE ? (const void *)g : (const void *)&g_metrics) +
           d->off;
}

/* Writes the sample(s) of element `index` of the family's array. */
static void write_element(struct strbuf *b, const struct metric_desc *d,
                          const struct metrics_gauges *g, size_t index, struct strbuf *labels)
{
    char v[40];
    if (d->src == SRC_ONE) {
        write_sample(b, d->name, "", labels, "1");
    } else if (d->type == MT_HISTOGRAM) {
        write_histogram(b, d->name, labels, (const struct histogram *)values_of(d, g) + index);
    } else if (d->src == SRC_GAUGE) {
        double x = ((const double *)values_of(d, g))[index];
        if (isnan(x) || (d->sparse && x == 0)) return;
        snprintf(v, sizeof v, "%.15g", x);
        write_sample(b, d->name, "", labels, v);
    } else {
        uint64_t x = ((const uint64_t *)values_of(d, g))[index];
        if (d->sparse && x == 0) return;
        snprintf(v, sizeof v, "%llu", (unsigned long long)x);
        write_sample(b, d->name, "", labels, v);
    }
}

/* Walks the label dimensions depth-first: the label set grows by one label
 * per dimension, the array index by the position in it. */
static void write_dims(struct strbuf *b, const struct metric_desc *d,
                       const struct metrics_gauges *g, int dim, size_t index, struct strbuf *labels)
{
    const struct label *l = dim < METRIC_LABELS_MAX ? d->labels[dim] : NULL;
    if (!l) {
        write_element(b, d, g, index, labels);
        return;
    }
    size_t mark = labels->len;
    for (int i = l->first; i < l->first + l->count; i++) {
        char num[16];
        const char *val;
        if (l->from_gauges) {
            val = *(const char *const *)(const void *)((const char *)g + l->str_off);
            if (!val || !*val) continue;
        } else if (l->values) {
            val = l->values[i];
        } else {
            snprintf(num, sizeof num, "%d", i);
            val = num;
        }
        labels_add(labels, l->name, val);
        write_dims(b, d, g, dim + 1, index * (size_t)l->extent + (size_t)i, labels);
        labels_truncate(labels, mark);
    }
}

static bool valid_name(const char *s, bool prefix)
{
    if (prefix && strncmp(s, "idv_", 4) != 0) return false;
    if (!*s || (*s >= '0' && *s <= '9')) return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_')) return false;
    return true;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* What is wrong with row i of the table, or NULL. */
static const char *row_problem(size_t i)
{
    const struct metric_desc *d = &table[i];
    if (!d->name || !valid_name(d->name, true)) return "name (idv_ and [a-z0-9_])";
    for (size_t j = 0; j < i; j++)
        if (!strcmp(table[j].name, d->name)) return "name used twice";
    if (!d->help || !*d->help || strpbrk(d->help, "\\\n")) return "help (one line, no backslash)";
    if ((d->type == MT_COUNTER) != ends_with(d->name, "_total"))
        return "a counter's name, and only a counter's, ends in _total";
    if (d->type == MT_HISTOGRAM && (d->src != SRC_COUNT || !ends_with(d->name, "_seconds")))
        return "a histogram is a struct histogram in g_metrics, in seconds";
    size_t elems = 1;
    for (int k = 0; k < METRIC_LABELS_MAX && d->labels[k]; k++) {
        const struct label *l = d->labels[k];
        if (!valid_name(l->name, false) || !strcmp(l->name, "le")) return "label name";
        if (l->first < 0 || l->count < 1 || l->first + l->count > l->extent)
            return "label index range";
        if (l->from_gauges && (l->extent != 1 || d->src != SRC_GAUGE))
            return "a label read from the gauges takes one value of a gauge";
        elems *= (size_t)l->extent;
    }
    if (d->src == SRC_ONE) return d->labels[0] ? NULL : "an info metric needs labels";
    size_t elem = d->type == MT_HISTOGRAM ? sizeof(struct histogram)
                  : d->src == SRC_GAUGE   ? sizeof(double)
                                          : sizeof(uint64_t);
    return d->size == elems * elem ? NULL : "the field's size does not match its labels";
}

int metrics_check_table(char *err, size_t errlen)
{
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        const char *why = row_problem(i);
        if (why) {
            snprintf(err, errlen, "%s: %s", table[i].name ? table[i].name : "(null)", why);
            return IDV_EINVAL;
        }
    }
    return 0;
}

char *metrics_render(const struct metrics_gauges *g, size_t *len)
{
    struct strbuf b = {0}, labels = {0};
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        const struct metric_desc *d = &table[i];
        strbuf_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", d->name, d->help, d->name,
                      type_names[d->type]);
        write_dims(&b, d, g, 0, 0, &labels);
    }
    bool oom = b.oom || labels.oom || !b.p;
    strbuf_free(&labels);
    if (oom) {
        strbuf_free(&b);
        return NULL;
    }
    *len = b.len;
    return b.p;
}
