#include "metrics.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

int cb_outcome_parse(const char *s)
{
    for (int i = 0; i < CBO__COUNT; i++)
        if (strcmp(s, outcome_names[i]) == 0) return i;
    return -1;
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
            strbuf_printf(b, "\\n");
        else
            strbuf_printf(b, "%c", *s);
    }
}

static const char *const listener_names[ML__COUNT] = {"public", "admin"};
static const char *const action_names[4] = {"Initialize", "CheckResult", "other", "other2"};

static void histogram_render(struct strbuf *b, const char *name, const char *labels,
                             const struct histogram *h)
{
    uint64_t cum = 0;
    const char *sep = *labels ? "," : "";
    for (int i = 0; i < METRICS_BUCKETS; i++) {
        cum += h->counts[i];
        strbuf_printf(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, buckets[i],
                      (unsigned long long)cum);
    }
    cum += h->counts[METRICS_BUCKETS];
    strbuf_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep,
                  (unsigned long long)cum);
    if (*labels) {
        strbuf_printf(b, "%s_sum{%s} %.6f\n", name, labels, h->sum);
        strbuf_printf(b, "%s_count{%s} %llu\n", name, labels, (unsigned long long)h->count);
    } else {
        strbuf_printf(b, "%s_sum %.6f\n", name, h->sum);
        strbuf_printf(b, "%s_count %llu\n", name, (unsigned long long)h->count);
    }
}

char *metrics_render(const struct metrics_gauges *g, size_t *len)
{
    struct strbuf b = {0};
    const struct metrics *m = &g_metrics;

    strbuf_printf(&b,
                  "# HELP idv_build_info Version of this idv-callbackd binary.\n"
                  "# TYPE idv_build_info gauge\nidv_build_info{version=\"%s\"} 1\n",
                  IDV_VERSION);

    strbuf_printf(&b,
                  "# HELP idv_http_requests_total HTTP requests answered, by listener and status.\n"
                  "# TYPE idv_http_requests_total counter\n");
    for (int l = 0; l < ML__COUNT; l++)
        for (int s = 100; s < 600; s++)
            if (m->requests[l][s])
                strbuf_printf(&b, "idv_http_requests_total{listener=\"%s\",status=\"%d\"} %llu\n",
                              listener_names[l], s, (unsigned long long)m->requests[l][s]);

    strbuf_printf(&b, "# HELP idv_callbacks_total Callback requests, by outcome.\n"
                      "# TYPE idv_callbacks_total counter\n");
    for (int o = 0; o < CBO__COUNT; o++)
        strbuf_printf(&b, "idv_callbacks_total{outcome=\"%s\"} %llu\n", outcome_names[o],
                      (unsigned long long)m->callbacks[o]);

    strbuf_printf(&b,
                  "# HELP idv_audit_rows_shed_total Audit rows of malformed or rejected requests "
                  "dropped under overload.\n# TYPE idv_audit_rows_shed_total counter\n"
                  "idv_audit_rows_shed_total %llu\n",
                  (unsigned long long)m->callbacks_shed_rows);
    strbuf_printf(&b,
                  "# HELP idv_audit_rows_failed_total Audit rows lost to a database error.\n"
                  "# TYPE idv_audit_rows_failed_total counter\nidv_audit_rows_failed_total %llu\n",
                  (unsigned long long)m->audit_rows_failed);

    strbuf_printf(&b, "# HELP idv_open_connections Client connections open now.\n"
                      "# TYPE idv_open_connections gauge\n");
    for (int l = 0; l < ML__COUNT; l++)
        strbuf_printf(&b, "idv_open_connections{listener=\"%s\"} %llu\n", listener_names[l],
                      (unsigned long long)m->conns_open[l]);
    strbuf_printf(&b, "# HELP idv_connections_total Client connections accepted.\n"
                      "# TYPE idv_connections_total counter\n");
    for (int l = 0; l < ML__COUNT; l++)
        strbuf_printf(&b, "idv_connections_total{listener=\"%s\"} %llu\n", listener_names[l],
                      (unsigned long long)m->conns_accepted[l]);
    strbuf_printf(&b,
                  "# HELP idv_connections_refused_total Connections closed at once because "
                  "max_connections was reached.\n# TYPE idv_connections_refused_total counter\n");
    for (int l = 0; l < ML__COUNT; l++)
        strbuf_printf(&b, "idv_connections_refused_total{listener=\"%s\"} %llu\n",
                      listener_names[l], (unsigned long long)m->conns_refused[l]);
    strbuf_printf(&b, "# HELP idv_connections_timed_out_total Connections closed by a header, "
                      "idle or write deadline.\n# TYPE idv_connections_timed_out_total counter\n");
    for (int l = 0; l < ML__COUNT; l++)
        strbuf_printf(&b, "idv_connections_timed_out_total{listener=\"%s\"} %llu\n",
                      listener_names[l], (unsigned long long)m->conns_timed_out[l]);
    strbuf_printf(&b, "# HELP idv_http_framing_errors_total Requests refused by the strict parser "
                      "(connection closed).\n# TYPE idv_http_framing_errors_total counter\n");
    for (int l = 0; l < ML__COUNT; l++)
        strbuf_printf(&b, "idv_http_framing_errors_total{listener=\"%s\"} %llu\n",
                      listener_names[l], (unsigned long long)m->framing_errors[l]);

    strbuf_printf(&b,
                  "# HELP idv_request_duration_seconds Time from a request's head to its answer.\n"
                  "# TYPE idv_request_duration_seconds histogram\n");
    for (int l = 0; l < ML__COUNT; l++) {
        char lab[40];
        snprintf(lab, sizeof lab, "listener=\"%s\"", listener_names[l]);
        histogram_render(&b, "idv_request_duration_seconds", lab, &m->request_seconds[l]);
    }
    strbuf_printf(&b,
                  "# HELP idv_commit_duration_seconds Time from handing a batch of callbacks to "
                  "PostgreSQL to its confirmed commit.\n"
                  "# TYPE idv_commit_duration_seconds histogram\n");
    histogram_render(&b, "idv_commit_duration_seconds", "", &m->commit_seconds);
    strbuf_printf(
        &b,
        "# HELP idv_commit_batches_total Transactions that recorded callbacks.\n"
        "# TYPE idv_commit_batches_total counter\nidv_commit_batches_total %llu\n"
        "# HELP idv_commit_batch_items_total Callbacks recorded by those transactions.\n"
        "# TYPE idv_commit_batch_items_total counter\nidv_commit_batch_items_total %llu\n"
        "# HELP idv_commit_batch_fallbacks_total Batches that failed and were retried one "
        "callback per transaction.\n# TYPE idv_commit_batch_fallbacks_total counter\n"
        "idv_commit_batch_fallbacks_total %llu\n",
        (unsigned long long)m->batches, (unsigned long long)m->batch_items,
        (unsigned long long)m->batch_fallbacks);

    strbuf_printf(&b,
                  "# HELP idv_db_connections PostgreSQL connections of this instance, by state.\n"
                  "# TYPE idv_db_connections gauge\n"
                  "idv_db_connections{state=\"ready\"} %d\n"
                  "idv_db_connections{state=\"busy\"} %d\n"
                  "idv_db_connections{state=\"connecting\"} %d\n"
                  "idv_db_connections{state=\"down\"} %d\n",
                  g->db_ready - g->db_busy, g->db_busy, g->db_connecting, g->db_down);
    strbuf_printf(&b,
                  "# HELP idv_db_queued_queries Queries waiting for a PostgreSQL connection.\n"
                  "# TYPE idv_db_queued_queries gauge\nidv_db_queued_queries %zu\n",
                  g->db_queued);
    strbuf_printf(
        &b,
        "# HELP idv_db_connect_attempts_total PostgreSQL connection attempts.\n"
        "# TYPE idv_db_connect_attempts_total counter\nidv_db_connect_attempts_total %llu\n"
        "# HELP idv_db_connection_failures_total PostgreSQL connections lost or failed.\n"
        "# TYPE idv_db_connection_failures_total counter\n"
        "idv_db_connection_failures_total %llu\n"
        "# HELP idv_db_query_timeouts_total Queries answered 503 at their deadline.\n"
        "# TYPE idv_db_query_timeouts_total counter\nidv_db_query_timeouts_total %llu\n"
        "# HELP idv_db_queries_lost_total Queries whose connection broke before the "
        "commit was confirmed.\n# TYPE idv_db_queries_lost_total counter\n"
        "idv_db_queries_lost_total %llu\n",
        (unsigned long long)g->db_reconnects, (unsigned long long)g->db_failures,
        (unsigned long long)g->db_timeouts, (unsigned long long)g->db_lost);
    strbuf_printf(
        &b,
        "# HELP idv_db_failovers_total Changes of the PostgreSQL primary (host:port) written to.\n"
        "# TYPE idv_db_failovers_total counter\nidv_db_failovers_total %llu\n",
        (unsigned long long)g->db_failovers);
    /* The label names host:port of the primary the pool last connected to; the
     * value is 1 while a connection to it is up, 0 while none is (during a
     * switch). No sample before the first connection. */
    strbuf_printf(&b,
                  "# HELP idv_db_primary PostgreSQL primary (host:port) this instance writes to;"
                  " 1 while connected.\n# TYPE idv_db_primary gauge\n");
    if (g->db_host && *g->db_host) {
        strbuf_printf(&b, "idv_db_primary{host=\"");
        label_value(&b, g->db_host);
        strbuf_printf(&b, "\"} %d\n", g->db_ready > 0 ? 1 : 0);
    }
    strbuf_printf(&b,
                  "# HELP idv_callback_queue Callbacks waiting to be committed.\n"
                  "# TYPE idv_callback_queue gauge\nidv_callback_queue %zu\n"
                  "# HELP idv_audit_queue Audit rows waiting to be written.\n"
                  "# TYPE idv_audit_queue gauge\nidv_audit_queue %zu\n",
                  g->callback_queue, g->audit_queue);
    strbuf_printf(&b,
                  "# HELP idv_draining 1 while the instance is shutting down.\n"
                  "# TYPE idv_draining gauge\nidv_draining %d\n",
                  g->draining);

    strbuf_printf(&b, "# HELP idv_outbound_requests_total Calls to the Alibaba API, by action and "
                      "HTTP status (0: no HTTP answer).\n"
                      "# TYPE idv_outbound_requests_total counter\n");
    for (int a = 0; a < 2; a++)
        for (int s = 0; s < 600; s++)
            if (m->outbound[a][s])
                strbuf_printf(&b, "idv_outbound_requests_total{action=\"%s\",status=\"%d\"} %llu\n",
                              action_names[a], s, (unsigned long long)m->outbound[a][s]);
    strbuf_printf(
        &b,
        "# HELP idv_confirmations_total Results confirmed with CheckResult.\n"
        "# TYPE idv_confirmations_total counter\nidv_confirmations_total %llu\n"
        "# HELP idv_confirmation_disagreements_total CheckResult results that differ "
        "from the callback.\n# TYPE idv_confirmation_disagreements_total counter\n"
        "idv_confirmation_disagreements_total %llu\n"
        "# HELP idv_confirmation_retries_total Confirmation attempts retried.\n"
        "# TYPE idv_confirmation_retries_total counter\nidv_confirmation_retries_total %llu\n"
        "# HELP idv_confirmation_giveups_total Work items that reached the attempt limit.\n"
        "# TYPE idv_confirmation_giveups_total counter\n"
        "idv_confirmation_giveups_total %llu\n",
        (unsigned long long)m->confirmations, (unsigned long long)m->disagreements,
        (unsigned long long)m->confirm_retries, (unsigned long long)m->confirm_giveups);
    if (g->queue_depth >= 0)
        strbuf_printf(
            &b,
            "# HELP idv_work_queue_depth Confirmation work items waiting (all instances).\n"
            "# TYPE idv_work_queue_depth gauge\nidv_work_queue_depth %ld\n"
            "# HELP idv_work_queue_oldest_seconds Age of the oldest waiting item.\n"
            "# TYPE idv_work_queue_oldest_seconds gauge\nidv_work_queue_oldest_seconds %.3f\n",
            g->queue_depth, g->queue_oldest_seconds);
    if (b.oom || !b.p) {
        strbuf_free(&b);
        return NULL;
    }
    *len = b.len;
    return b.p;
}
