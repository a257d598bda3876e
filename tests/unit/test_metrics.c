/* The metrics page: the descriptor table, the rendered text, and the TLS
 * certificate expiry the page reports. */
#include <math.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "metrics.h"
#include "test.h"
#include "tls.h"

/* Gauges as admin.c fills them, with every value known. */
static struct metrics_gauges gauges(void)
{
    struct metrics_gauges g = {
        .ready = 1,
        .db_conns = {[MDB_READY] = 3, [MDB_BUSY] = 1, [MDB_CONNECTING] = 0, [MDB_DOWN] = 0},
        .db_pool_size = 4,
        .db_queued = 2,
        .db_failovers = 5,
        .db_host = "db1:5432",
        .db_primary_up = 1,
        .callback_queue = 7,
        .queue_depth = 9,
        .queue_oldest_seconds = 12.5,
        .queue_given_up = 1,
        .tls_not_after = 1893553445,
    };
    return g;
}

static char *render(const struct metrics_gauges *g)
{
    size_t len = 0;
    char *text = metrics_render(g, &len);
    CHECK(text != NULL);
    if (text) CHECK_INT(strlen(text), len);
    return text;
}

/* True when the text has this exact line. */
static bool has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, line, n) == 0 && (p[n] == '\n' || p[n] == '\0')) return true;
    return false;
}

#define CHECK_LINE(text, line)                                                                     \
    do {                                                                                           \
        if (!has_line(text, line)) {                                                               \
            fprintf(stderr, "%s:%d: line not rendered: %s\n", __FILE__, __LINE__, line);           \
            test_failures++;                                                                       \
        }                                                                                          \
    } while (0)

static void metrics_table_is_consistent(void)
{
    char err[200] = "";
    CHECK_INT(metrics_check_table(err, sizeof err), 0);
    if (err[0]) fprintf(stderr, "table: %s\n", err);
}

/* Every family: HELP then TYPE, once each, before its samples; every sample
 * belongs to the family declared last (histograms: _bucket, _sum, _count). */
static void metrics_help_and_type_once_per_family(void)
{
    struct metrics_gauges g = gauges();
    char *text = render(&g);
    if (!text) return;
    char family[128] = "", type[16] = "";
    char seen[64][128];
    int nseen = 0, samples = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char name[128], t[16];
        if (sscanf(line, "# HELP %127s", name) == 1) {
            for (int i = 0; i < nseen; i++)
                if (!strcmp(seen[i], name)) {
                    fprintf(stderr, "HELP twice: %s\n", name);
                    test_failures++;
                }
            CHECK(nseen < 64);
            if (nseen < 64) snprintf(seen[nseen++], sizeof seen[0], "%s", name);
            snprintf(family, sizeof family, "%s", name);
            type[0] = '\0';
        } else if (sscanf(line, "# TYPE %127s %15s", name, t) == 2) {
            CHECK_STR(name, family);
            CHECK_STR(type, "");
            snprintf(type, sizeof type, "%s", t);
        } else {
            CHECK(line[0] != '#');
            size_t n = strcspn(line, "{ ");
            snprintf(name, sizeof name, "%.*s", (int)n, line);
            bool ok = !strcmp(name, family);
            if (!strcmp(type, "histogram")) {
                size_t f = strlen(family);
                ok = !strncmp(name, family, f) &&
                     (!strcmp(name + f, "_bucket") || !strcmp(name + f, "_sum") ||
                      !strcmp(name + f, "_count"));
            }
            if (!ok) {
                fprintf(stderr, "sample outside its family %s: %s\n", family, line);
                test_failures++;
            }
            CHECK(type[0] != '\0');
            samples++;
        }
    }
    CHECK(nseen >= 30);
    CHECK(samples > nseen);
    free(text);
}

static void metrics_samples_and_labels(void)
{
    memset(&g_metrics, 0, sizeof g_metrics);
    g_metrics.requests[ML_PUBLIC][200] = 11;
    g_metrics.requests[ML_ADMIN][404] = 3;
    g_metrics.callbacks[CBO_REJECTED] = 4;
    g_metrics.conns_open[ML_ADMIN] = 2;
    g_metrics.outbound[MA_CHECKRESULT][403] = 6;
    g_metrics.outbound_throttled[MA_CHECKRESULT] = 5;
    g_metrics.confirm_giveups = 8;
    histogram_observe(&g_metrics.request_seconds[ML_PUBLIC], 0.003);
    histogram_observe(&g_metrics.request_seconds[ML_PUBLIC], 100);
    struct metrics_gauges g = gauges();
    char *text = render(&g);
    if (!text) return;
    CHECK_LINE(text, "# HELP idv_callbacks_total Callback requests, by outcome.");
    CHECK_LINE(text, "# TYPE idv_callbacks_total counter");
    CHECK_LINE(text, "idv_http_requests_total{listener=\"public\",status=\"200\"} 11");
    CHECK_LINE(text, "idv_http_requests_total{listener=\"admin\",status=\"404\"} 3");
    CHECK(!strstr(text, "status=\"500\"")); /* sparse: zero codes are not listed */
    CHECK_LINE(text, "idv_callbacks_total{outcome=\"rejected\"} 4");
    CHECK_LINE(text, "idv_callbacks_total{outcome=\"unavailable\"} 0");
    CHECK_LINE(text, "idv_open_connections{listener=\"admin\"} 2");
    CHECK_LINE(text, "idv_outbound_requests_total{action=\"CheckResult\",status=\"403\"} 6");
    CHECK_LINE(text, "idv_outbound_throttled_total{action=\"CheckResult\"} 5");
    CHECK(!strstr(text, "idv_outbound_throttled_total{action=\"Initialize\"}"));
    CHECK_LINE(text, "idv_confirmation_giveups_total 8");
    CHECK_LINE(text, "idv_request_duration_seconds_bucket{listener=\"public\",le=\"0.0025\"} 0");
    CHECK_LINE(text, "idv_request_duration_seconds_bucket{listener=\"public\",le=\"0.005\"} 1");
    CHECK_LINE(text, "idv_request_duration_seconds_bucket{listener=\"public\",le=\"30\"} 1");
    CHECK_LINE(text, "idv_request_duration_seconds_bucket{listener=\"public\",le=\"+Inf\"} 2");
    CHECK_LINE(text, "idv_request_duration_seconds_count{listener=\"public\"} 2");
    CHECK_LINE(text, "idv_request_duration_seconds_sum{listener=\"public\"} 100.003000");
    CHECK_LINE(text, "idv_commit_duration_seconds_count 0");
    CHECK_LINE(text, "idv_db_connections{state=\"ready\"} 3");
    CHECK_LINE(text, "idv_db_connections{state=\"busy\"} 1");
    CHECK_LINE(text, "idv_db_pool_size 4");
    CHECK_LINE(text, "idv_db_failovers_total 5");
    CHECK_LINE(text, "idv_db_primary{host=\"db1:5432\"} 1");
    CHECK_LINE(text, "idv_ready 1");
    CHECK_LINE(text, "idv_work_queue_oldest_seconds 12.5");
    CHECK_LINE(text, "idv_work_queue_given_up 1");
    CHECK_LINE(text, "idv_tls_certificate_expiry_timestamp_seconds 1893553445");
    free(text);
    memset(&g_metrics, 0, sizeof g_metrics);
}

/* Unknown gauges (NaN) and a primary not known yet render no sample, but
 * their family is still declared. */
static void metrics_unknown_values_have_no_sample(void)
{
    struct metrics_gauges g = gauges();
    g.queue_depth = g.queue_oldest_seconds = g.queue_given_up = NAN;
    g.tls_not_after = NAN;
    g.db_host = "";
    char *text = render(&g);
    if (!text) return;
    CHECK_LINE(text, "# TYPE idv_work_queue_depth gauge");
    CHECK(!strstr(text, "\nidv_work_queue_depth "));
    CHECK(!strstr(text, "\nidv_work_queue_given_up "));
    CHECK_LINE(text, "# TYPE idv_tls_certificate_expiry_timestamp_seconds gauge");
    CHECK(!strstr(text, "\nidv_tls_certificate_expiry_timestamp_seconds "));
    CHECK(!strstr(text, "\nidv_db_primary{"));
    CHECK(!strstr(text, "NaN"));
    free(text);
}

/* A label value is escaped as the exposition format wants. */
static void metrics_label_value_escaped(void)
{
    struct metrics_gauges g = gauges();
    g.db_host = "a\"b\\c\nd";
    char *text = render(&g);
    if (!text) return;
    CHECK_LINE(text, "idv_db_primary{host=\"a\\\"b\\\\c\\nd\"} 1");
    free(text);
}

/* A self-signed certificate whose notAfter is `not_after` (YYYYMMDDHHMMSSZ). */
static SSL_CTX *ctx_with_cert(const char *not_after)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    CHECK(key && x && ctx);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"t", -1, -1, 0);
    X509_set_issuer_name(x, name);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    CHECK_INT(ASN1_TIME_set_string_X509(X509_getm_notAfter(x), not_after), 1);
    X509_set_pubkey(x, key);
    CHECK(X509_sign(x, key, EVP_sha256()) > 0);
    CHECK_INT(SSL_CTX_use_certificate(ctx, x), 1);
    CHECK_INT(SSL_CTX_use_PrivateKey(ctx, key), 1);
    X509_free(x);
    EVP_PKEY_free(key);
    return ctx;
}

static void tls_not_after_utctime_and_generalizedtime(void)
{
    /* Before 2050 a certificate carries UTCTime, from 2050 GeneralizedTime. */
    const struct {
        const char *asn1;
        double unix_seconds;
    } cases[] = {{"20300102030405Z", 1893553445}, {"20510101000000Z", 2556144000}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        SSL_CTX *ctx = ctx_with_cert(cases[i].asn1);
        double t = 0;
        CHECK_INT(tls_ctx_not_after(ctx, &t), 0);
        CHECK_INT((long long)t, (long long)cases[i].unix_seconds);
        SSL_CTX_free(ctx);
    }
}

static void tls_not_after_without_certificate(void)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    double t = -1;
    CHECK_INT(tls_ctx_not_after(ctx, &t), IDV_EINVAL);
    CHECK(t == -1);
    SSL_CTX_free(ctx);
}

/* clang-format off */
#define TEST(name) {#name, name}
static const struct test_case cases[] = {
    TEST(metrics_table_is_consistent),
    TEST(metrics_help_and_type_once_per_family),
    TEST(metrics_samples_and_labels),
    TEST(metrics_unknown_values_have_no_sample),
    TEST(metrics_label_value_escaped),
    TEST(tls_not_after_utctime_and_generalizedtime),
    TEST(tls_not_after_without_certificate),
};
int main(int argc, char **argv) { return test_main(argc, argv, cases, sizeof cases / sizeof cases[0]); }
/* clang-format on */
