#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <llhttp.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <uv.h>

#include "admin.h"
#include "app.h"
#include "callback.h"
#include "config.h"
#include "confirm.h"
#include "initialize.h"
#include "log.h"
#include "migrate.h"
#include "outbound.h"
#include "sd.h"
#include "tls.h"
#include "version.h"

#define EXIT_RUNTIME 1
#define EXIT_USAGE   2

static void usage(FILE *out)
{
    fprintf(out, "usage: idv-callbackd [serve|migrate|maintain|check-config] [--config FILE]\n"
                 "       idv-callbackd version\n");
}

static int cmd_version(void)
{
    int pq = PQlibVersion();
    printf("idv-callbackd %s\n", IDV_VERSION);
    printf("libuv %s\n", uv_version_string());
    printf("llhttp %d.%d.%d\n", LLHTTP_VERSION_MAJOR, LLHTTP_VERSION_MINOR, LLHTTP_VERSION_PATCH);
    printf("OpenSSL %s\n", OpenSSL_version(OPENSSL_VERSION_STRING));
    printf("libpq %d.%d\n", pq / 10000, pq % 10000);
    printf("libcurl %s\n", curl_version_info(CURLVERSION_NOW)->version);
    printf("jansson %s\n", jansson_version_str());
    return 0;
}

/* ---- serve ----------------------------------------------------------------- */

struct daemon {
    struct app app;
    struct config cfg;
    uv_signal_t sigterm, sigint, sighup;
    uv_timer_t stop_timer;
    uv_timer_t status_timer; /* READY=1 once the database answered, then STATUS= */
    uv_timer_t watchdog;
    bool watchdog_on;
    bool ready;
    bool stopping;
    int exit_code;
};

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            log_kv(LOGL_WARN, "cannot raise the open-file limit", "REASON", strerror(errno), NULL);
    }
    char n[32];
    snprintf(n, sizeof n, "%llu", (unsigned long long)rl.rlim_cur);
    log_kv(LOGL_DEBUG, "open-file limit", "NOFILE", n, NULL);
}

static void closed_signal(uv_handle_t *h)
{
    (void)h;
}

static void pool_closed(void *arg)
{
    struct daemon *d = arg;
    uv_close((uv_handle_t *)&d->sigterm, closed_signal);
    uv_close((uv_handle_t *)&d->sigint, closed_signal);
    uv_close((uv_handle_t *)&d->sighup, closed_signal);
    uv_close((uv_handle_t *)&d->stop_timer, closed_signal);
    uv_close((uv_handle_t *)&d->status_timer, closed_signal);
    if (d->watchdog_on) uv_close((uv_handle_t *)&d->watchdog, closed_signal);
}

static void outbound_closed(void *arg)
{
    struct daemon *d = arg;
    pg_pool_close(d->app.pool, pool_closed, d);
}

static void confirm_closed(void *arg)
{
    struct daemon *d = arg;
    if (d->app.outbound)
        outbound_close(d->app.outbound, outbound_closed, d);
    else
        outbound_closed(d);
}

static void store_closed(void *arg)
{
    struct daemon *d = arg;
    confirm_close(d->app.confirm, confirm_closed, d);
}

static void server_closed(void *arg)
{
    struct daemon *d = arg;
    store_close(d->app.store, store_closed, d);
}

static void drained(void *arg)
{
    struct daemon *d = arg;
    uv_timer_stop(&d->stop_timer);
    log_kv(LOGL_INFO, "drained: every request answered", NULL);
    server_close(d->app.srv, server_closed, d);
}

static void stop_timeout(uv_timer_t *t)
{
    struct daemon *d = t->data;
    log_kv(LOGL_WARN, "shutdown deadline passed: closing the remaining connections", NULL);
    server_close(d->app.srv, server_closed, d);
}

static void on_stop_signal(uv_signal_t *s, int signum)
{
    struct daemon *d = s->data;
    if (d->stopping) return;
    d->stopping = true;
    d->app.draining = true;
    log_kv(LOGL_INFO, "stopping: draining connections", "SIGNAL", strsignal(signum), NULL);
    sd_glue_stopping();
    uv_timer_start(&d->stop_timer, stop_timeout, (uint64_t)d->cfg.shutdown_timeout_ms, 0);
    server_drain(d->app.srv, drained, d);
}

static void status_tick(uv_timer_t *t)
{
    struct daemon *d = t->data;
    struct pg_pool_stats ps;
    pg_pool_get_stats(d->app.pool, &ps);
    unsigned conns = server_open_connections(d->app.srv);
    if (!d->ready) {
        /* READY=1 only once the listeners are up (they are) and PostgreSQL has
         * answered with a current schema. */
        if (ps.ready == 0) return;
        d->ready = true;
        char st[320];
        snprintf(st, sizeof st, "serving; PostgreSQL %d/%d connections on %s", ps.ready,
                 (int)d->cfg.db_pool_size, ps.host);
        sd_glue_ready(st);
        uv_timer_set_repeat(t, 5000);
        return;
    }
    sd_glue_status("%s; PostgreSQL %d/%d ready on %s; %u client connections",
                   d->stopping ? "draining" : "serving", ps.ready, (int)d->cfg.db_pool_size,
                   ps.host, conns);
}

/* Remembers when the certificate the public listener now serves expires
 * (idv_tls_certificate_expiry_timestamp_seconds) and logs it. */
static void tls_note_expiry(struct app *app, SSL_CTX *ctx, const char *cert_file)
{
    double t;
    if (tls_ctx_not_after(ctx, &t) != 0) {
        app->tls_not_after = NAN;
        log_kv(LOGL_WARN, "TLS certificate expiry unknown", "PATH", cert_file, NULL);
        return;
    }
    app->tls_not_after = t;
    char when[32] = "";
    time_t tt = (time_t)t;
    struct tm tm;
    if (gmtime_r(&tt, &tm)) strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    log_kv(LOGL_INFO, "TLS certificate loaded", "PATH", cert_file, "NOT_AFTER", when, NULL);
}

static void on_reload(uv_signal_t *s, int signum)
{
    (void)signum;
    struct daemon *d = s->data;
    struct config fresh;
    char err[512];
    sd_glue_reloading();
    if (config_load(&fresh, d->cfg.config_path, true, err, sizeof err) != 0) {
        log_kv(LOGL_ERROR, "reload refused: configuration invalid, keeping the old one", "REASON",
               err, NULL);
        config_free(&fresh);
        sd_glue_ready("serving; reload refused (see the log)");
        return;
    }
    /* What reload changes: the log level, the trusted proxies and the TLS
     * certificate (a bad certificate or key keeps the old one). */
    if (fresh.tls_cert_file && d->app.tls) {
        char terr[512];
        SSL_CTX *ctx = tls_ctx_new(fresh.tls_cert_file, fresh.tls_key_file, terr, sizeof terr);
        if (ctx) {
            server_set_tls_ctx(d->app.srv, ctx);
            tls_note_expiry(&d->app, ctx, fresh.tls_cert_file);
            SSL_CTX_free(ctx);
            log_kv(LOGL_INFO, "TLS certificate reloaded", "PATH", fresh.tls_cert_file, NULL);
        } else {
            log_kv(LOGL_ERROR, "TLS certificate not reloaded, keeping the old one", "REASON", terr,
                   NULL);
        }
    } else if (!fresh.tls_cert_file != !d->app.tls) {
        log_kv(LOGL_WARN, "turning TLS on or off needs a restart", NULL);
    }
    log_set_level((enum log_level)fresh.log_level);
    struct cidr_list old = d->cfg.trusted;
    d->cfg.trusted = fresh.trusted;
    fresh.trusted = old;
    d->cfg.log_level = fresh.log_level;
    server_set_trusted(d->app.srv, &d->cfg.trusted);
    config_free(&fresh);
    log_kv(LOGL_INFO, "configuration reloaded", "LOG_LEVEL",
           log_level_name((enum log_level)d->cfg.log_level), NULL);
    sd_glue_ready("serving; configuration reloaded");
}

static int cmd_serve(const char *config_path)
{
    static struct daemon d; /* lives as long as the loop */
    char err[512];
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "idv-callbackd: libcurl cannot be initialized\n");
        return EXIT_RUNTIME;
    }
    if (config_load(&d.cfg, config_path, true, err, sizeof err) != 0) {
        fprintf(stderr, "idv-callbackd: %s\n", err);
        config_free(&d.cfg);
        return EXIT_USAGE;
    }
    log_setup((enum log_format)d.cfg.log_format, (enum log_level)d.cfg.log_level);
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    /* rand() jitters the back-offs (pool reconnects, confirmation retries, the
     * Alibaba circuit): seeded per process, or every instance would draw the
     * same delays and retry in step. */
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    (void)RAND_bytes((unsigned char *)&seed, sizeof seed);
    srand(seed);

    uv_loop_t *loop = uv_default_loop();
    struct app *app = &d.app;
    app->loop = loop;
    app->cfg = &d.cfg;
    app->callback_path_len = strlen(d.cfg.callback_path);

    /* Every module's prepared statements, on every pool connection. */
    static struct pg_stmt stmts[32];
    size_t nstmts = 0;
    for (size_t i = 0; i < store_statements_count; i++) stmts[nstmts++] = store_statements[i];
    for (size_t i = 0; i < initialize_statements_count; i++)
        stmts[nstmts++] = initialize_statements[i];
    for (size_t i = 0; i < confirm_statements_count; i++) stmts[nstmts++] = confirm_statements[i];
    struct pg_pool_opts po = {
        .conninfo = d.cfg.database_url,
        .size = (int)d.cfg.db_pool_size,
        .timeout_ms = (uint64_t)d.cfg.db_timeout_ms,
        .schema_version = migrate_latest_version(),
        .stmts = stmts,
        .nstmts = nstmts,
        .max_queue = 10000,
        .application_name = "idv-callbackd",
    };
    if (pg_pool_new(&app->pool, loop, &po) != 0) {
        fprintf(stderr, "idv-callbackd: database_url: cannot be used\n");
        return EXIT_USAGE;
    }
    if (store_new(&app->store, loop, app->pool, d.cfg.instance_name, !d.cfg.alibaba_enabled,
                  (uint64_t)d.cfg.db_timeout_ms) != 0) {
        fprintf(stderr, "idv-callbackd: out of memory\n");
        return EXIT_RUNTIME;
    }
    if (d.cfg.alibaba_enabled) {
        struct outbound_opts oo = {
            .endpoint = d.cfg.alibaba_endpoint,
            .access_key_id = d.cfg.alibaba_access_key_id,
            .access_key_secret = d.cfg.alibaba_access_key_secret,
            .ca_file = d.cfg.alibaba_ca_file,
            .qps = d.cfg.alibaba_qps,
            .timeout_ms = d.cfg.alibaba_timeout_ms,
            .connect_timeout_ms = d.cfg.alibaba_connect_timeout_ms,
            .circuit_failures = d.cfg.alibaba_circuit_failures,
            .circuit_open_ms = d.cfg.alibaba_circuit_open_ms,
            .circuit_max_open_ms = d.cfg.alibaba_circuit_max_open_ms,
        };
        if (outbound_new(&app->outbound, loop, &oo) != 0) {
            fprintf(stderr, "idv-callbackd: alibaba_endpoint: cannot be used\n");
            return EXIT_USAGE;
        }
    }
    SSL_CTX *tls_ctx = NULL;
    if (d.cfg.tls_cert_file) {
        tls_ctx = tls_ctx_new(d.cfg.tls_cert_file, d.cfg.tls_key_file, err, sizeof err);
        if (!tls_ctx) {
            fprintf(stderr, "idv-callbackd: %s\n", err);
            return EXIT_USAGE;
        }
        app->tls = true;
    }
    struct server_opts so = {
        .public_addr = d.cfg.listen_addr,
        .admin_addr = d.cfg.admin_addr,
        .public_fd = -1,
        .admin_fd = -1,
        .header_timeout_ms = (uint64_t)d.cfg.header_timeout_ms,
        .idle_timeout_ms = (uint64_t)d.cfg.idle_timeout_ms,
        .max_connections = (unsigned)d.cfg.max_connections,
        .max_requests_per_connection = (unsigned)d.cfg.max_requests_per_connection,
        .trusted = &d.cfg.trusted,
        .proxy_protocol = d.cfg.proxy_protocol,
        .tls_ctx = tls_ctx,
        .public_handler = callback_public_handle,
        .public_refused = callback_public_refused,
        .admin_handler = admin_handle,
        .ctx = app,
    };
    int nfds = sd_glue_listen_fds(&d.cfg.listen_addr, &d.cfg.admin_addr, &so.public_fd,
                                  &so.admin_fd, err, sizeof err);
    if (nfds < 0) {
        fprintf(stderr, "idv-callbackd: socket activation: %s\n", err);
        return EXIT_RUNTIME;
    }
    if (nfds > 0) {
        char n[16];
        snprintf(n, sizeof n, "%d", nfds);
        log_kv(LOGL_INFO, "using sockets passed by systemd", "COUNT", n, NULL);
    }
    if (server_new(&app->srv, loop, &so, err, sizeof err) != 0) {
        log_kv(LOGL_ERROR, "cannot listen", "REASON", err, NULL);
        fprintf(stderr, "idv-callbackd: %s\n", err);
        return EXIT_RUNTIME;
    }
    if (tls_ctx) {
        tls_note_expiry(app, tls_ctx, d.cfg.tls_cert_file);
        SSL_CTX_free(tls_ctx); /* the server holds its own reference */
    }
    uint64_t lease = (uint64_t)(d.cfg.alibaba_timeout_ms * 2 + 5000);
    struct confirm_opts co = {
        .instance = d.cfg.instance_name,
        .can_check = app->outbound != NULL,
        .poll_ms = (uint64_t)d.cfg.confirm_poll_ms,
        .sweep_ms = (uint64_t)d.cfg.sweep_interval_ms,
        .grace_ms = (uint64_t)d.cfg.confirm_grace_ms,
        .lease_ms = lease,
        .max_attempts = d.cfg.confirm_max_attempts,
        .backoff_ms = (uint64_t)d.cfg.confirm_backoff_ms,
        .backoff_max_ms = (uint64_t)d.cfg.confirm_backoff_max_ms,
        .batch = (unsigned)(d.cfg.alibaba_qps < 50 ? d.cfg.alibaba_qps : 50),
    };
    if (confirm_new(&app->confirm, app, &co) != 0) {
        fprintf(stderr, "idv-callbackd: out of memory\n");
        return EXIT_RUNTIME;
    }
    pg_pool_start(app->pool);

    uv_signal_init(loop, &d.sigterm);
    uv_signal_init(loop, &d.sigint);
    uv_signal_init(loop, &d.sighup);
    uv_timer_init(loop, &d.stop_timer);
    uv_timer_init(loop, &d.status_timer);
    d.sigterm.data = d.sigint.data = d.sighup.data = d.stop_timer.data = &d;
    d.status_timer.data = &d;
    uv_timer_start(&d.status_timer, status_tick, 50, 100);
    uv_unref((uv_handle_t *)&d.status_timer);
    d.watchdog_on = sd_glue_watchdog_start(loop, &d.watchdog);
    uv_signal_start(&d.sigterm, on_stop_signal, SIGTERM);
    uv_signal_start(&d.sigint, on_stop_signal, SIGINT);
    uv_signal_start(&d.sighup, on_reload, SIGHUP);

    log_kv(LOGL_INFO, "idv-callbackd started", "VERSION", IDV_VERSION, "LISTEN", d.cfg.listen,
           "ADMIN_LISTEN", d.cfg.admin_listen, "CALLBACK_PATH", d.cfg.callback_path, "INSTANCE",
           d.cfg.instance_name, "CONFIRMATION",
           d.cfg.alibaba_enabled ? "CheckResult" : "none (callback is final)", NULL);

    uv_run(loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(loop);
    if (rc != 0) log_kv(LOGL_WARN, "event loop closed with handles open", NULL);
    log_kv(LOGL_INFO, "idv-callbackd stopped", NULL);
    config_free(&d.cfg);
    return d.exit_code;
}

static int cmd_check_config(const char *path)
{
    struct config cfg;
    char err[512];
    int rc = config_load(&cfg, path, true, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "idv-callbackd: %s\n", err);
        config_free(&cfg);
        return EXIT_USAGE;
    }
    if (cfg.tls_cert_file) {
        SSL_CTX *ctx = tls_ctx_new(cfg.tls_cert_file, cfg.tls_key_file, err, sizeof err);
        if (!ctx) {
            fprintf(stderr, "idv-callbackd: %s\n", err);
            config_free(&cfg);
            return EXIT_USAGE;
        }
        SSL_CTX_free(ctx);
    }
    config_print(&cfg, stdout);
    config_free(&cfg);
    return 0;
}

/* The configuration of a command that only talks to the database (migrate,
 * maintain): database_url is required, the rest may be missing. Returns 0 or
 * EXIT_USAGE (message printed; cfg freed). */
static int load_db_config(struct config *cfg, const char *path, const char *cmd)
{
    char err[512];
    if (config_load(cfg, path, false, err, sizeof err) != 0) {
        fprintf(stderr, "idv-callbackd: %s\n", err);
        config_free(cfg);
        return EXIT_USAGE;
    }
    if (!cfg->database_url) {
        fprintf(stderr, "idv-callbackd: database_url: required for %s\n", cmd);
        config_free(cfg);
        return EXIT_USAGE;
    }
    return 0;
}

static int cmd_migrate(const char *path)
{
    struct config cfg;
    if (load_db_config(&cfg, path, "migrate") != 0) return EXIT_USAGE;
    int rc = migrate_run(cfg.database_url, cfg.maintain_timeout_ms, stdout);
    config_free(&cfg);
    return rc == 0 ? 0 : EXIT_RUNTIME;
}

/* Partitions ahead and retention of the history tables; run by
 * idv-callbackd-maintain.timer. */
static int cmd_maintain(const char *path)
{
    struct config cfg;
    if (load_db_config(&cfg, path, "maintain") != 0) return EXIT_USAGE;
    struct maintain_opts mo = {.retention_days = {cfg.retention_callback_events_days,
                                                  cfg.retention_transaction_events_days,
                                                  cfg.retention_check_results_days},
                               .timeout_ms = cfg.maintain_timeout_ms};
    int rc = migrate_maintain(cfg.database_url, &mo, stdout);
    config_free(&cfg);
    return rc == 0 ? 0 : EXIT_RUNTIME;
}

int main(int argc, char **argv)
{
    const char *cmd = "serve", *config_path = NULL;
    bool have_cmd = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config") || !strcmp(argv[i], "-c")) {
            if (++i >= argc) {
                fprintf(stderr, "idv-callbackd: --config needs a file\n");
                return EXIT_USAGE;
            }
            config_path = argv[i];
        } else if (!strncmp(argv[i], "--config=", 9)) {
            config_path = argv[i] + 9;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (!have_cmd && argv[i][0] != '-') {
            cmd = argv[i];
            have_cmd = true;
        } else {
            fprintf(stderr, "idv-callbackd: unexpected argument '%s'\n", argv[i]);
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (!strcmp(cmd, "version")) return cmd_version();
    if (!strcmp(cmd, "serve")) return cmd_serve(config_path);
    if (!strcmp(cmd, "migrate")) return cmd_migrate(config_path);
    if (!strcmp(cmd, "maintain")) return cmd_maintain(config_path);
    if (!strcmp(cmd, "check-config")) return cmd_check_config(config_path);
    fprintf(stderr, "idv-callbackd: unknown command '%s'\n", cmd);
    usage(stderr);
    return EXIT_USAGE;
}
