#include "metrics.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "version.h"

struct metrics g_metrics;

static const char *const outcome_names[] = {
#define CB_OUTCOME_NAME(name, text) text,
    CB_OUTCOME_MAP(CB_OUTCOME_NAME)
#undef CB_OUTCOME_NAME
};

const char *cb_outcome_name(enum cb_outcome o) { return outcome_names[o]; }

int cb_outcome_parse(const char *s)
{
    for (int i = 0; i < CBO__COUNT; i++)
        if (strcmp(s, outcome_names[i]) == 0) return i;
    return -1;
}

static const double buckets[METRICS_BUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01,
                                                 0.025,  0.05,  0.1,    0.25,  0.5,
                                                 1,      2.5,   5,      10,    30};

void histogram_observe(struct histogram *h, double s)
{
    int i = 0;
    while (i < METRICS_BUCKETS && s > buckets[i]) i++;
    h->counts[i]++;
    h->sum += s;
    h->count++;
}

struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
};

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    if (b->oom) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = true;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t ncap = b->cap * 2 + (size_t)n;
        char *np = realloc(b->p, ncap);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = ncap;
    }
}

static const char *const listener_names[ML__COUNT] = {"public", "admin"};
static const char *const action_names[4] = {"Initialize", "CheckResult", "other", "other2"};

static void histogram_render(struct sbuf *b, const char *name, const char *labels,
                             const struct histogram *h)
{
    uint64_t cum = 0;
    const char *sep = *labels ? "," : "";
    for (int i = 0; i < METRICS_BUCKETS; i++) {
        cum += h->counts[i];
        sb_printf(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, buckets[i],
                  (unsigned long long)cum);
    }
    cum += h->counts[METRICS_BUCKETS];
    sb_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep, (unsigned long long)cum);
    if (*labels) {
        sb_printf(b, "%s_sum{%s} %.6f\n", name, labels, h->sum);
        sb_printf(b, "%s_count{%s} %llu\n", name, labels, (unsigned long long)h->count);
    } else {
        sb_printf(b, "%s_sum %.6f\n", name, h->sum);
        sb_printf(b, "%s_count %llu\n", name, (unsigned long long)h->count);
    }
}

char *metrics_render(const struct metrics_gauges *g, size_t *len)
{
    struct sbuf b = {malloc(16384), 0, 16384, false};
    if (!b.p) return NULL;
    const struct metrics *m = &g_metrics;

    sb_printf(&b, "# HELP idv_build_info Version of this idv-callbackd binary.\n"
                  "# TYPE idv_build_info gauge\nidv_build_info{version=\"%s\"} 1\n",
              IDV_VERSION);

    sb_printf(&b, "# HELP idv_http_requests_total HTTP requests answered, by listener and status.\n"
                  "# TYPE idv_http_requests_total counter\n");
    for (int l = 0; l < ML__COUNT; l++)
        for (int s = 100; s < 600; s++)
            if (m->requests[l][s])
                sb_printf(&b, "idv_http_requests_total{listener=\"%s\",status=\"%d\"} %llu\n",
                          listener_names[l], s, (unsigned long long)m->requests[l][s]);

    sb_printf(&b, "# HELP idv_callbacks_total Callback requests, by outcome.\n"
                  "# TYPE idv_callbacks_total counter\n");
    for (int o = 0; o < CBO__COUNT; o++)
        sb_printf(&b, "idv_callbacks_total{outcome=\"%s\"} %llu\n", outcome_names[o],
                  (unsigned long long)m->callbacks[o]);

    sb_printf(&b,
              "# HELP idv_audit_rows_shed_total Audit rows of malformed or rejected requests "
              "dropped under overload.\n# TYPE idv_audit_rows_shed_total counter\n"
              "idv_audit_rows_shed_total %llu\n",
              (unsigned long long)m->callbacks_shed_rows);
    sb_printf(&b,
              "# HELP idv_audit_rows_failed_total Audit rows lost to a database error.\n"
              "# TYPE idv_audit_rows_failed_total counter\nidv_audit_rows_failed_total %llu\n",
              (unsigned long long)m->audit_rows_failed);

    sb_printf(&b, "# HELP idv_open_connections Client connections open now.\n"
                  "# TYPE idv_open_connections gauge\n");
    for (int l = 0; l < ML__COUNT; l++)
        sb_printf(&b, "idv_open_connections{listener=\"%s\"} %llu\n", listener_names[l],
                  (unsigned long long)m->conns_open[l]);
    sb_printf(&b, "# HELP idv_connections_total Client connections accepted.\n"
                  "# TYPE idv_connections_total counter\n");
    for (int l = 0; l < ML__COUNT; l++)
        sb_printf(&b, "idv_connections_total{listener=\"%s\"} %llu\n", listener_names[l],
                  (unsigned long long)m->conns_accepted[l]);
    sb_printf(&b, "# HELP idv_connections_refused_total Connections closed at once because "
                  "max_connections was reached.\n# TYPE idv_connections_refused_total counter\n");
    for (int l = 0; l < ML__COUNT; l++)
        sb_printf(&b, "idv_connections_refused_total{listener=\"%s\"} %llu\n", listener_names[l],
                  (unsigned long long)m->conns_refused[l]);
    sb_printf(&b, "# HELP idv_connections_timed_out_total Connections closed by a header, "
                  "idle or write deadline.\n# TYPE idv_connections_timed_out_total counter\n");
    for (int l = 0; l < ML__COUNT; l++)
        sb_printf(&b, "idv_connections_timed_out_total{listener=\"%s\"} %llu\n",
                  listener_names[l], (unsigned long long)m->conns_timed_out[l]);
    sb_printf(&b, "# HELP idv_http_framing_errors_total Requests refused by the strict parser "
                  "(connection closed).\n# TYPE idv_http_framing_errors_total counter\n");
    for (int l = 0; l < ML__COUNT; l++)
        sb_printf(&b, "idv_http_framing_errors_total{listener=\"%s\"} %llu\n", listener_names[l],
                  (unsigned long long)m->framing_errors[l]);

    sb_printf(&b, "# HELP idv_request_duration_seconds Time from a request's head to its answer.\n"
                  "# TYPE idv_request_duration_seconds histogram\n");
    for (int l = 0; l < ML__COUNT; l++) {
        char lab[40];
        snprintf(lab, sizeof lab, "listener=\"%s\"", listener_names[l]);
        histogram_render(&b, "idv_request_duration_seconds", lab, &m->request_seconds[l]);
    }
    sb_printf(&b, "# HELP idv_commit_duration_seconds Time from handing a batch of callbacks to "
                  "PostgreSQL to its confirmed commit.\n"
                  "# TYPE idv_commit_duration_seconds histogram\n");
    histogram_render(&b, "idv_commit_duration_seconds", "", &m->commit_seconds);
    sb_printf(&b,
              "# HELP idv_commit_batches_total Transactions that recorded callbacks.\n"
              "# TYPE idv_commit_batches_total counter\nidv_commit_batches_total %llu\n"
              "# HELP idv_commit_batch_items_total Callbacks recorded by those transactions.\n"
              "# TYPE idv_commit_batch_items_total counter\nidv_commit_batch_items_total %llu\n"
              "# HELP idv_commit_batch_fallbacks_total Batches that failed and were retried one "
              "callback per transaction.\n# TYPE idv_commit_batch_fallbacks_total counter\n"
              "idv_commit_batch_fallbacks_total %llu\n",
              (unsigned long long)m->batches, (unsigned long long)m->batch_items,
              (unsigned long long)m->batch_fallbacks);

    sb_printf(&b, "# HELP idv_db_connections PostgreSQL connections of this instance, by state.\n"
                  "# TYPE idv_db_connections gauge\n"
                  "idv_db_connections{state=\"ready\"} %d\n"
                  "idv_db_connections{state=\"busy\"} %d\n"
                  "idv_db_connections{state=\"connecting\"} %d\n"
                  "idv_db_connections{state=\"down\"} %d\n",
              g->db_ready - g->db_busy, g->db_busy, g->db_connecting, g->db_down);
    sb_printf(&b, "# HELP idv_db_queued_queries Queries waiting for a PostgreSQL connection.\n"
                  "# TYPE idv_db_queued_queries gauge\nidv_db_queued_queries %zu\n",
              g->db_queued);
    sb_printf(&b, "# HELP idv_db_connect_attempts_total PostgreSQL connection attempts.\n"
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
    sb_printf(&b, "# HELP idv_db_failovers_total Changes of the PostgreSQL host written to.\n"
                  "# TYPE idv_db_failovers_total counter\nidv_db_failovers_total %llu\n",
              (unsigned long long)m->failovers);
    sb_printf(&b, "# HELP idv_db_primary Host this instance writes to (value 1).\n"
                  "# TYPE idv_db_primary gauge\nidv_db_primary{host=\"%s\"} 1\n",
              g->db_host ? g->db_host : "");
    sb_printf(&b, "# HELP idv_callback_queue Callbacks waiting to be committed.\n"
                  "# TYPE idv_callback_queue gauge\nidv_callback_queue %zu\n"
                  "# HELP idv_audit_queue Audit rows waiting to be written.\n"
                  "# TYPE idv_audit_queue gauge\nidv_audit_queue %zu\n",
              g->callback_queue, g->audit_queue);
    sb_printf(&b, "# HELP idv_draining 1 while the instance is shutting down.\n"
                  "# TYPE idv_draining gauge\nidv_draining %d\n",
              g->draining);

    sb_printf(&b, "# HELP idv_outbound_requests_total Calls to the Alibaba API, by action and "
                  "HTTP status (0: no HTTP answer).\n"
                  "# TYPE idv_outbound_requests_total counter\n");
    for (int a = 0; a < 2; a++)
        for (int s = 0; s < 600; s++)
            if (m->outbound[a][s])
                sb_printf(&b, "idv_outbound_requests_total{action=\"%s\",status=\"%d\"} %llu\n",
                          action_names[a], s, (unsigned long long)m->outbound[a][s]);
    sb_printf(&b,
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
        sb_printf(&b,
                  "# HELP idv_work_queue_depth Confirmation work items waiting (all instances).\n"
                  "# TYPE idv_work_queue_depth gauge\nidv_work_queue_depth %ld\n"
                  "# HELP idv_work_queue_oldest_seconds Age of the oldest waiting item.\n"
                  "# TYPE idv_work_queue_oldest_seconds gauge\nidv_work_queue_oldest_seconds %.3f\n",
                  g->queue_depth, g->queue_oldest_seconds);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}
