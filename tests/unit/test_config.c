/* config_load: the file, IDV_* overrides, validation with messages that name
 * the key, secret files, and config_print's masking. Every case writes its
 * own files into a fresh directory under /tmp and starts from an environment
 * without IDV_* variables or $CREDENTIALS_DIRECTORY. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "test.h"

#define CHECK_CONTAINS(hay, needle)                                                                \
    do {                                                                                           \
        const char *h_ = (hay), *n_ = (needle);                                                    \
        if (!h_ || !strstr(h_, n_)) {                                                              \
            fprintf(stderr, "%s:%d: \"%s\" does not contain \"%s\"\n", __FILE__, __LINE__,         \
                    h_ ? h_ : "(null)", n_);                                                       \
            test_failures++;                                                                       \
        }                                                                                          \
    } while (0)

#define CHECK_NOT_CONTAINS(hay, needle)                                                            \
    do {                                                                                           \
        const char *h_ = (hay), *n_ = (needle);                                                    \
        if (h_ && strstr(h_, n_)) {                                                                \
            fprintf(stderr, "%s:%d: \"%s\" contains \"%s\"\n", __FILE__, __LINE__, h_, n_);        \
            test_failures++;                                                                       \
        }                                                                                          \
    } while (0)

#define ADMIN_TOKEN "adm1n-T0ken-0123456789"
#define DB_URL      "postgresql://idv@localhost/idv"
/* The two keys config_load requires, the token file relative to the config. */
#define REQUIRED "database_url = " DB_URL "\nadmin_token_file = admin.token\n"

/* ---- fixtures ------------------------------------------------------------- */

#define MAX_PATHS 64
static char g_dir[2][64];
static char g_paths[MAX_PATHS][128];
static int g_npaths;
static char g_err[512];

/* Removes every IDV_* variable and $CREDENTIALS_DIRECTORY. */
static void clean_env(void)
{
    for (;;) {
        char name[128] = "";
        for (char **e = environ; *e; e++)
            if (strncmp(*e, "IDV_", 4) == 0) {
                const char *eq = strchr(*e, '=');
                size_t n = eq ? (size_t)(eq - *e) : strlen(*e);
                if (n < sizeof name) {
                    memcpy(name, *e, n);
                    name[n] = '\0';
                }
                break;
            }
        if (!name[0]) break;
        unsetenv(name);
    }
    unsetenv("CREDENTIALS_DIRECTORY");
}

/* Creates a temporary directory; which = 0 holds the config file, 1 stands
 * in for $CREDENTIALS_DIRECTORY. */
static const char *tmpdir(int which)
{
    if (!g_dir[which][0]) {
        snprintf(g_dir[which], sizeof g_dir[which], "/tmp/idv-unit-config-XXXXXX");
        if (!mkdtemp(g_dir[which])) {
            fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
            exit(1);
        }
    }
    return g_dir[which];
}

static const char *remember(const char *path)
{
    if (g_npaths == MAX_PATHS) {
        fprintf(stderr, "too many temporary files\n");
        exit(1);
    }
    snprintf(g_paths[g_npaths], sizeof g_paths[0], "%s", path);
    return g_paths[g_npaths++];
}

static void write_all(int fd, const char *content, const char *path)
{
    size_t n = strlen(content);
    if (write(fd, content, n) != (ssize_t)n || close(fd) != 0) {
        fprintf(stderr, "writing %s: %s\n", path, strerror(errno));
        exit(1);
    }
}

/* Writes a file of that name into temporary directory `which`, mode 0600. */
static const char *put_file(int which, const char *name, const char *content)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", tmpdir(which), name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        fprintf(stderr, "open %s: %s\n", path, strerror(errno));
        exit(1);
    }
    write_all(fd, content, path);
    return remember(path);
}

/* Writes a config file with a unique name (mkstemp) into directory 0. */
static const char *put_config(const char *content)
{
    char path[128];
    snprintf(path, sizeof path, "%s/conf-XXXXXX", tmpdir(0));
    int fd = mkstemp(path);
    if (fd < 0) {
        fprintf(stderr, "mkstemp %s: %s\n", path, strerror(errno));
        exit(1);
    }
    write_all(fd, content, path);
    return remember(path);
}

static void setup(void)
{
    clean_env();
    /* Relative paths must never be found through the working directory. */
    if (chdir("/") != 0) exit(1);
    put_file(0, "admin.token", ADMIN_TOKEN "\n");
}

static void teardown(struct config *cfg)
{
    if (cfg) config_free(cfg);
    for (int i = g_npaths - 1; i >= 0; i--) unlink(g_paths[i]);
    g_npaths = 0;
    for (int i = 1; i >= 0; i--)
        if (g_dir[i][0]) {
            rmdir(g_dir[i]);
            g_dir[i][0] = '\0';
        }
    clean_env();
}

/* Writes content as a config file and loads it with the required keys. */
static int load(struct config *cfg, const char *content)
{
    g_err[0] = '\0';
    return config_load(cfg, put_config(content), true, g_err, sizeof g_err);
}

/* Loads content expecting a configuration error; returns the message. */
static const char *load_err(const char *content)
{
    struct config cfg;
    int rc = load(&cfg, content);
    if (rc != IDV_ECONFIG) {
        fprintf(stderr, "config_load gave %d (%s), not IDV_ECONFIG, for:\n%s\n", rc,
                idv_err_name(rc), content);
        test_failures++;
    }
    config_free(&cfg);
    return g_err;
}

static const char *print_config(const struct config *cfg)
{
    static char *text;
    free(text);
    text = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&text, &n);
    if (!f) exit(1);
    config_print(cfg, f);
    fclose(f);
    return text;
}

/* ---- defaults and key types ---------------------------------------------- */

static void defaults(void)
{
    setup();
    struct config cfg;
    CHECK_INT(load(&cfg, REQUIRED), 0);
    CHECK_STR(g_err, "");
    CHECK_STR(cfg.listen, "0.0.0.0:8080");
    CHECK_STR(cfg.admin_listen, "127.0.0.1:8081");
    CHECK_STR(cfg.callback_path, "/idv/callback");
    CHECK_STR(cfg.database_url, DB_URL);
    CHECK_INT(cfg.db_pool_size, 8);
    CHECK_INT(cfg.db_timeout_ms, 5000);
    CHECK(cfg.public_base_url == NULL);
    CHECK_STR(cfg.alibaba_endpoint, "https://cloudauth-intl.cn-hongkong.aliyuncs.com");
    CHECK(cfg.alibaba_access_key_id == NULL);
    CHECK(cfg.alibaba_access_key_secret_file == NULL);
    CHECK(cfg.alibaba_ca_file == NULL);
    CHECK_INT(cfg.alibaba_qps, 10);
    CHECK(cfg.trusted_proxies == NULL);
    CHECK_INT(cfg.trusted.n, 0);
    CHECK(!cfg.proxy_protocol);
    CHECK(cfg.tls_cert_file == NULL);
    CHECK(cfg.tls_key_file == NULL);
    CHECK_INT(cfg.max_connections, 10000);
    CHECK_INT(cfg.header_timeout_ms, 10000);
    CHECK_INT(cfg.idle_timeout_ms, 60000);
    CHECK_INT(cfg.log_format, LOGF_AUTO);
    CHECK_INT(cfg.log_level, LOGL_INFO);
    CHECK(cfg.instance_name != NULL && cfg.instance_name[0] != '\0');
    CHECK_STR(cfg.admin_token, ADMIN_TOKEN);
    CHECK(!cfg.alibaba_enabled);
    CHECK(cfg.alibaba_access_key_secret == NULL);
    CHECK_INT(cfg.listen_addr.ss.ss_family, AF_INET);
    CHECK_INT(cfg.admin_addr.ss.ss_family, AF_INET);
    teardown(&cfg);
}

/* `version` loads without the required keys; nothing secret is read. */
static void required_keys_only_when_asked(void)
{
    setup();
    struct config cfg;
    const char *path = put_config("# nothing\n");
    CHECK_INT(config_load(&cfg, path, false, g_err, sizeof g_err), 0);
    CHECK(cfg.database_url == NULL);
    CHECK(cfg.admin_token == NULL);
    config_free(&cfg);
    CHECK_INT(config_load(&cfg, path, true, g_err, sizeof g_err), IDV_ECONFIG);
    teardown(&cfg);
}

static void comments_blank_lines_and_spaces(void)
{
    setup();
    struct config cfg;
    CHECK_INT(load(&cfg, "# a comment\n"
                         "; another comment\n"
                         "\n"
                         "   \t\n"
                         "  database_url\t=\t" DB_URL "  \r\n"
                         "admin_token_file=admin.token\r\n"
                         "   # indented comment\n"
                         "db_pool_size =16\n"
                         "public_base_url = https://idv.example.com"), /* no final newline */
              0);
    CHECK_STR(g_err, "");
    CHECK_STR(cfg.database_url, DB_URL);
    CHECK_INT(cfg.db_pool_size, 16);
    CHECK_STR(cfg.public_base_url, "https://idv.example.com");
    teardown(&cfg);
}

static void string_keys(void)
{
    setup();
    struct config cfg;
    CHECK_INT(load(&cfg, REQUIRED "public_base_url = https://idv.example.com:8443/base/\n"
                                  "alibaba_endpoint = https://127.0.0.1:9443\n"
                                  "alibaba_ca_file = /etc/ssl/ca.pem\n"
                                  "instance_name = idv-a\n"),
              0);
    CHECK_STR(g_err, "");
    /* A trailing slash is dropped so that base + callback_path has one. */
    CHECK_STR(cfg.public_base_url, "https://idv.example.com:8443/base");
    CHECK_STR(cfg.alibaba_endpoint, "https://127.0.0.1:9443");
    CHECK_STR(cfg.alibaba_ca_file, "/etc/ssl/ca.pem");
    CHECK_STR(cfg.instance_name, "idv-a");
    teardown(&cfg);
}

static void integer_keys(void)
{
    setup();
    struct config cfg;
    CHECK_INT(load(&cfg, REQUIRED "db_pool_size = 256\n"
                                  "db_timeout_ms = 10\n"
                                  "alibaba_qps = 10000\n"
                                  "max_connections = 1\n"
                                  "header_timeout_ms = 3600000\n"
                                  "idle_timeout_ms = 86400000\n"),
              0);
    CHECK_STR(g_err, "");
    CHECK_INT(cfg.db_pool_size, 256);
    CHECK_INT(cfg.db_timeout_ms, 10);
    CHECK_INT(cfg.alibaba_qps, 10000);
    CHECK_INT(cfg.max_connections, 1);
    CHECK_INT(cfg.header_timeout_ms, 3600000);
    CHECK_INT(cfg.idle_timeout_ms, 86400000);
    teardown(&cfg);
}

static void integer_bad_names_key(void)
{
    setup();
    const char *bad[] = {"8x", "x8", "", "0x10", "1.5", "8 8", "99999999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[256];
        snprintf(text, sizeof text, REQUIRED "db_pool_size = %s\n", bad[i]);
        const char *err = load_err(text);
        CHECK_CONTAINS(err, "db_pool_size");
    }
    teardown(NULL);
}

static void integer_out_of_range(void)
{
    setup();
    CHECK_CONTAINS(load_err(REQUIRED "db_pool_size = 0\n"), "db_pool_size");
    CHECK_CONTAINS(load_err(REQUIRED "db_pool_size = 257\n"), "db_pool_size");
    CHECK_CONTAINS(load_err(REQUIRED "db_pool_size = -8\n"), "db_pool_size");
    CHECK_CONTAINS(load_err(REQUIRED "db_timeout_ms = 9\n"), "db_timeout_ms");
    CHECK_CONTAINS(load_err(REQUIRED "max_connections = 0\n"), "max_connections");
    CHECK_CONTAINS(load_err(REQUIRED "alibaba_qps = 10001\n"), "alibaba_qps");
    teardown(NULL);
}

/* The retention keys of `maintain`: 0 (keep everything) by default, days up
 * to a hundred years, a negative or absurd value named. Its deadline per
 * statement (and migrate's): five minutes unless set, at least 100 ms. */
static void retention_keys(void)
{
    setup();
    struct config cfg;
    CHECK_INT(load(&cfg, REQUIRED), 0);
    CHECK_INT(cfg.maintain_timeout_ms, 300000);
    CHECK_INT(cfg.retention_callback_events_days, 0);
    CHECK_INT(cfg.retention_transaction_events_days, 0);
    CHECK_INT(cfg.retention_check_results_days, 0);
    config_free(&cfg);
    CHECK_INT(load(&cfg, REQUIRED "retention_callback_events_days = 400\n"
                                  "retention_transaction_events_days = 730\n"
                                  "retention_check_results_days = 36500\n"),
              0);
    CHECK_INT(cfg.retention_callback_events_days, 400);
    CHECK_INT(cfg.retention_transaction_events_days, 730);
    CHECK_INT(cfg.retention_check_results_days, 36500);
    config_free(&cfg);
    CHECK_CONTAINS(load_err(REQUIRED "retention_callback_events_days = -1\n"),
                   "retention_callback_events_days");
    CHECK_CONTAINS(load_err(REQUIRED "retention_check_results_days = 36501\n"),
                   "retention_check_results_days");
    CHECK_CONTAINS(load_err(REQUIRED "retention_transaction_events_days = 1y\n"),
                   "retention_transaction_events_days");
    CHECK_CONTAINS(load_err(REQUIRED "maintain_timeout_ms = 99\n"), "maintain_timeout_ms");
    CHECK_INT(load(&cfg, REQUIRED "maintain_timeout_ms = 3000\n"), 0);
    CHECK_INT(cfg.maintain_timeout_ms, 3000);
    config_free(&cfg);
    teardown(NULL);
}

static void bool_values(void)
{
    setup();
    const char *on[] = {"on", "true", "yes", "1"};
    const char *off[] = {"off", "false", "no", "0"};
    for (size_t i = 0; i < 4; i++) {
        struct config cfg;
        char text[256];
        snprintf(text, sizeof text, REQUIRED "trusted_proxies = 10.0.0.0/8\nproxy_protocol = %s\n",
                 on[i]);
        CHECK_INT(load(&cfg, text), 0);
        CHECK(cfg.proxy_protocol);
        config_free(&cfg);
        snprintf(text, sizeof text, REQUIRED "proxy_protocol = %s\n", off[i]);
        CHECK_INT(load(&cfg, text), 0);
        CHECK(!cfg.proxy_protocol);
        config_free(&cfg);
    }
    CHECK_CONTAINS(load_err(REQUIRED "proxy_protocol = maybe\n"), "proxy_protocol");
    teardown(NULL);
}

static void log_format_and_level(void)
{
    setup();
    struct config cfg;
    CHECK_INT(load(&cfg, REQUIRED "log_format = json\nlog_level = debug\n"), 0);
    CHECK_INT(cfg.log_format, LOGF_JSON);
    CHECK_INT(cfg.log_level, LOGL_DEBUG);
    config_free(&cfg);
    CHECK_INT(load(&cfg, REQUIRED "log_format = journal\nlog_level = error\n"), 0);
    CHECK_INT(cfg.log_format, LOGF_JOURNAL);
    CHECK_INT(cfg.log_level, LOGL_ERROR);
    config_free(&cfg);
    CHECK_CONTAINS(load_err(REQUIRED "log_format = xml\n"), "log_format");
    CHECK_CONTAINS(load_err(REQUIRED "log_level = loud\n"), "log_level");
    teardown(&cfg);
}

/* ---- file structure errors ----------------------------------------------- */

static void unknown_key_named(void)
{
    setup();
    const char *err = load_err(REQUIRED "listen_port = 8080\n");
    CHECK_CONTAINS(err, "listen_port");
    CHECK_CONTAINS(err, "unknown");
    /* Keys are exact: no case folding. */
    CHECK_CONTAINS(load_err(REQUIRED "DB_POOL_SIZE = 8\n"), "DB_POOL_SIZE");
    teardown(NULL);
}

static void duplicate_key_named(void)
{
    setup();
    const char *err = load_err(REQUIRED "db_pool_size = 8\ndb_pool_size = 9\n");
    CHECK_CONTAINS(err, "db_pool_size");
    CHECK_CONTAINS(err, "twice");
    teardown(NULL);
}

static void line_without_equals(void)
{
    setup();
    CHECK_CONTAINS(load_err(REQUIRED "db_pool_size 8\n"), "key = value");
    teardown(NULL);
}

static void missing_config_file(void)
{
    setup();
    struct config cfg;
    char path[128];
    snprintf(path, sizeof path, "%s/does-not-exist.conf", tmpdir(0));
    CHECK_INT(config_load(&cfg, path, true, g_err, sizeof g_err), IDV_ECONFIG);
    CHECK_CONTAINS(g_err, path);
    teardown(&cfg);
}

/* ---- environment overrides ----------------------------------------------- */

static void env_overrides_file(void)
{
    setup();
    struct config cfg;
    setenv("IDV_DB_POOL_SIZE", "32", 1);
    setenv("IDV_LISTEN", "127.0.0.1:9090", 1);
    setenv("IDV_PROXY_PROTOCOL", "on", 1);
    setenv("IDV_TRUSTED_PROXIES", "10.0.0.0/8", 1);
    CHECK_INT(load(&cfg, REQUIRED "db_pool_size = 8\nlisten = 0.0.0.0:8080\n"), 0);
    CHECK_STR(g_err, "");
    CHECK_INT(cfg.db_pool_size, 32);
    CHECK_STR(cfg.listen, "127.0.0.1:9090");
    CHECK(cfg.proxy_protocol);
    CHECK_INT(cfg.trusted.n, 1);
    teardown(&cfg);
}

static void env_override_bad_value_named(void)
{
    setup();
    setenv("IDV_DB_POOL_SIZE", "lots", 1);
    const char *err = load_err(REQUIRED);
    CHECK_CONTAINS(err, "db_pool_size");
    CHECK_CONTAINS(err, "IDV_DB_POOL_SIZE");
    teardown(NULL);
}

static void env_sets_required_keys(void)
{
    setup();
    struct config cfg;
    char token_path[160];
    snprintf(token_path, sizeof token_path, "%s/admin.token", tmpdir(0));
    setenv("IDV_DATABASE_URL", "host=db.example dbname=idv", 1);
    setenv("IDV_ADMIN_TOKEN_FILE", token_path, 1);
    CHECK_INT(load(&cfg, "# empty\n"), 0);
    CHECK_STR(g_err, "");
    CHECK_STR(cfg.database_url, "host=db.example dbname=idv");
    CHECK_STR(cfg.admin_token, ADMIN_TOKEN);
    teardown(&cfg);
}

/* ---- secret files -------------------------------------------------------- */

static void secret_relative_to_credentials_directory(void)
{
    setup();
    struct config cfg;
    /* The same name in both places: $CREDENTIALS_DIRECTORY wins. */
    put_file(1, "admin.token", "from-credentials-directory\n");
    setenv("CREDENTIALS_DIRECTORY", tmpdir(1), 1);
    CHECK_INT(load(&cfg, REQUIRED), 0);
    CHECK_STR(g_err, "");
    CHECK_STR(cfg.admin_token, "from-credentials-directory");
    teardown(&cfg);
}

static void secret_missing_in_credentials_directory(void)
{
    setup();
    /* Only the config directory has the file: not a fallback. */
    setenv("CREDENTIALS_DIRECTORY", tmpdir(1), 1);
    const char *err = load_err(REQUIRED);
    CHECK_CONTAINS(err, "admin_token_file");
    CHECK_CONTAINS(err, tmpdir(1));
    teardown(NULL);
}

static void secret_relative_to_config_dir(void)
{
    setup();
    struct config cfg;
    put_file(0, "sub.token", "token-in-the-config-dir\n");
    CHECK_INT(load(&cfg, "database_url = " DB_URL "\nadmin_token_file = sub.token\n"), 0);
    CHECK_STR(g_err, "");
    CHECK_STR(cfg.admin_token, "token-in-the-config-dir");
    config_free(&cfg);
    /* An empty $CREDENTIALS_DIRECTORY is as good as none. */
    setenv("CREDENTIALS_DIRECTORY", "", 1);
    CHECK_INT(load(&cfg, "database_url = " DB_URL "\nadmin_token_file = sub.token\n"), 0);
    CHECK_STR(cfg.admin_token, "token-in-the-config-dir");
    teardown(&cfg);
}

static void secret_absolute_path(void)
{
    setup();
    struct config cfg;
    const char *abs = put_file(1, "abs.token", "absolute-path-token\n");
    /* An absolute path is used as it is, even with $CREDENTIALS_DIRECTORY. */
    setenv("CREDENTIALS_DIRECTORY", tmpdir(0), 1);
    char text[256];
    snprintf(text, sizeof text, "database_url = %s\nadmin_token_file = %s\n", DB_URL, abs);
    CHECK_INT(load(&cfg, text), 0);
    CHECK_STR(g_err, "");
    CHECK_STR(cfg.admin_token, "absolute-path-token");
    teardown(&cfg);
}

static void secret_trailing_newlines_removed(void)
{
    setup();
    struct config cfg;
    put_file(0, "admin.token", ADMIN_TOKEN "\r\n\n\n");
    CHECK_INT(load(&cfg, REQUIRED), 0);
    CHECK_STR(cfg.admin_token, ADMIN_TOKEN);
    teardown(&cfg);
}

static void config_read_secret_direct(void)
{
    setup();
    put_file(1, "s", "secret-value\n");
    char err[256] = "";
    char *s = config_read_secret("some_key", "s", tmpdir(1), err, sizeof err);
    CHECK_STR(s, "secret-value");
    free(s);
    s = config_read_secret("some_key", "nope", tmpdir(1), err, sizeof err);
    CHECK(s == NULL);
    CHECK_CONTAINS(err, "some_key");
    teardown(NULL);
}

static void missing_database_url_named(void)
{
    setup();
    CHECK_CONTAINS(load_err("admin_token_file = admin.token\n"), "database_url");
    CHECK_CONTAINS(load_err("database_url =\nadmin_token_file = admin.token\n"), "database_url");
    teardown(NULL);
}

static void bad_database_url_named(void)
{
    setup();
    CHECK_CONTAINS(load_err("database_url = host='unterminated\n"
                            "admin_token_file = admin.token\n"),
                   "database_url");
    CHECK_CONTAINS(load_err("database_url = nosuchkeyword=1\n"
                            "admin_token_file = admin.token\n"),
                   "database_url");
    teardown(NULL);
}

static void missing_admin_token_file_named(void)
{
    setup();
    CHECK_CONTAINS(load_err("database_url = " DB_URL "\n"), "admin_token_file");
    teardown(NULL);
}

static void admin_token_file_absent_named(void)
{
    setup();
    const char *err = load_err("database_url = " DB_URL "\nadmin_token_file = nope.token\n");
    CHECK_CONTAINS(err, "admin_token_file");
    CHECK_CONTAINS(err, "nope.token");
    teardown(NULL);
}

static void admin_token_too_short(void)
{
    setup();
    struct config cfg;
    put_file(0, "admin.token", "0123456789abcde\n"); /* 15 */
    CHECK_CONTAINS(load_err(REQUIRED), "admin_token_file");
    put_file(0, "admin.token", "0123456789abcdef\n"); /* 16 */
    CHECK_INT(load(&cfg, REQUIRED), 0);
    CHECK_STR(cfg.admin_token, "0123456789abcdef");
    teardown(&cfg);
}

static void admin_token_bad_content(void)
{
    setup();
    put_file(0, "admin.token", "0123456789 abcdef\n");
    CHECK_CONTAINS(load_err(REQUIRED), "admin_token_file");
    put_file(0, "admin.token", "\n\n");
    CHECK_CONTAINS(load_err(REQUIRED), "admin_token_file");
    put_file(0, "admin.token", "");
    CHECK_CONTAINS(load_err(REQUIRED), "admin_token_file");
    teardown(NULL);
}

/* ---- cross-key rules ----------------------------------------------------- */

static void tls_cert_without_key(void)
{
    setup();
    CHECK_CONTAINS(load_err(REQUIRED "tls_cert_file = /etc/idv/cert.pem\n"), "tls_key_file");
    CHECK_CONTAINS(load_err(REQUIRED "tls_key_file = /etc/idv/key.pem\n"), "tls_cert_file");
    struct config cfg;
    CHECK_INT(load(&cfg, REQUIRED "tls_cert_file = /etc/idv/cert.pem\n"
                                  "tls_key_file = /etc/idv/key.pem\n"),
              0);
    CHECK_STR(cfg.tls_cert_file, "/etc/idv/cert.pem");
    teardown(&cfg);
}

static void alibaba_key_id_without_secret_file(void)
{
    setup();
    CHECK_CONTAINS(load_err(REQUIRED "alibaba_access_key_id = LTAI5tExample\n"
                                     "public_base_url = https://idv.example.com\n"),
                   "alibaba_access_key_secret_file");
    teardown(NULL);
}

static void alibaba_key_id_needs_https_base_url(void)
{
    setup();
    put_file(0, "ak.secret", "alibaba-secret-value\n");
    const char *ak = "alibaba_access_key_id = LTAI5tExample\n"
                     "alibaba_access_key_secret_file = ak.secret\n";
    char text[512];
    snprintf(text, sizeof text, REQUIRED "%spublic_base_url = http://idv.example.com\n", ak);
    CHECK_CONTAINS(load_err(text), "public_base_url");
    snprintf(text, sizeof text, REQUIRED "%s", ak);
    CHECK_CONTAINS(load_err(text), "public_base_url");

    struct config cfg;
    snprintf(text, sizeof text, REQUIRED "%spublic_base_url = https://idv.example.com\n", ak);
    CHECK_INT(load(&cfg, text), 0);
    CHECK_STR(g_err, "");
    CHECK(cfg.alibaba_enabled);
    CHECK_STR(cfg.alibaba_access_key_secret, "alibaba-secret-value");
    teardown(&cfg);
}

static void alibaba_secret_file_absent_named(void)
{
    setup();
    const char *err = load_err(REQUIRED "alibaba_access_key_id = LTAI5tExample\n"
                                        "alibaba_access_key_secret_file = nope.secret\n"
                                        "public_base_url = https://idv.example.com\n");
    CHECK_CONTAINS(err, "alibaba_access_key_secret_file");
    teardown(NULL);
}

static void alibaba_key_id_bad_chars(void)
{
    setup();
    put_file(0, "ak.secret", "alibaba-secret-value\n");
    CHECK_CONTAINS(load_err(REQUIRED "alibaba_access_key_id = LTAI 5t\n"
                                     "alibaba_access_key_secret_file = ak.secret\n"
                                     "public_base_url = https://idv.example.com\n"),
                   "alibaba_access_key_id");
    teardown(NULL);
}

static void bad_public_base_url_named(void)
{
    setup();
    CHECK_CONTAINS(load_err(REQUIRED "public_base_url = ftp://idv.example.com\n"),
                   "public_base_url");
    CHECK_CONTAINS(load_err(REQUIRED "public_base_url = https://\n"), "public_base_url");
    CHECK_CONTAINS(load_err(REQUIRED "public_base_url = https://idv.example.com/?x=1\n"),
                   "public_base_url");
    CHECK_CONTAINS(load_err(REQUIRED "public_base_url = idv.example.com\n"), "public_base_url");
    teardown(NULL);
}

static void bad_listen_address(void)
{
    setup();
    const char *bad[] = {"localhost:8080", "0.0.0.0",       "0.0.0.0:http",
                         "[::1]",          "0.0.0.0:70000", "*:8080"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[256];
        snprintf(text, sizeof text, REQUIRED "listen = %s\n", bad[i]);
        const char *err = load_err(text);
        CHECK_CONTAINS(err, "listen");
        CHECK_CONTAINS(err, bad[i]);
        snprintf(text, sizeof text, REQUIRED "admin_listen = %s\n", bad[i]);
        CHECK_CONTAINS(load_err(text), "admin_listen");
    }
    teardown(NULL);
}

static void listen_v6(void)
{
    setup();
    struct config cfg;
    CHECK_INT(load(&cfg, REQUIRED "listen = [::]:8443\nadmin_listen = [::1]:9000\n"), 0);
    CHECK_INT(cfg.listen_addr.ss.ss_family, AF_INET6);
    CHECK_INT(cfg.admin_addr.ss.ss_family, AF_INET6);
    teardown(&cfg);
}

static void callback_path_rules(void)
{
    setup();
    const char *good[] = {"/cb", "/idv/callback", "/a/b-c_d.e~f", "/v1/Callback9"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        struct config cfg;
        char text[256];
        snprintf(text, sizeof text, REQUIRED "callback_path = %s\n", good[i]);
        CHECK_INT(load(&cfg, text), 0);
        CHECK_STR(cfg.callback_path, good[i]);
        config_free(&cfg);
    }
    const char *bad[] = {"idv/callback",
                         "/idv/callback/",
                         "/idv//callback",
                         "/idv?x=1",
                         "/idv callback",
                         "/idv%20cb",
                         "/",
                         "/healthz",
                         "/readyz",
                         "/idv#x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char text[256];
        snprintf(text, sizeof text, REQUIRED "callback_path = %s\n", bad[i]);
        CHECK_CONTAINS(load_err(text), "callback_path");
    }
    /* An empty value is no path at all. */
    CHECK_CONTAINS(load_err(REQUIRED "callback_path =\n"), "callback_path");
    teardown(NULL);
}

static void trusted_proxies_rules(void)
{
    setup();
    struct config cfg;
    CHECK_INT(load(&cfg, REQUIRED "trusted_proxies = 10.0.0.0/8, 192.0.2.1 ,::1\n"), 0);
    CHECK_INT(cfg.trusted.n, 3);
    config_free(&cfg);
    const char *err = load_err(REQUIRED "trusted_proxies = 10.0.0.0/8, proxy.example\n");
    CHECK_CONTAINS(err, "trusted_proxies");
    CHECK_CONTAINS(err, "proxy.example");
    CHECK_CONTAINS(load_err(REQUIRED "proxy_protocol = on\n"), "proxy_protocol");
    teardown(&cfg);
}

static void confirm_backoff_order(void)
{
    setup();
    CHECK_CONTAINS(load_err(REQUIRED "confirm_backoff_ms = 5000\nconfirm_backoff_max_ms = 1000\n"),
                   "confirm_backoff_max_ms");
    teardown(NULL);
}

/* ---- config_print -------------------------------------------------------- */

static void print_masks_uri_password(void)
{
    setup();
    struct config cfg;
    CHECK_INT(load(&cfg, "database_url = postgresql://idv:s3cretPassw0rd@db.example:5432/idv"
                         "?sslmode=require\n"
                         "admin_token_file = admin.token\n"),
              0);
    const char *out = print_config(&cfg);
    CHECK_NOT_CONTAINS(out, "s3cretPassw0rd");
    CHECK_NOT_CONTAINS(out, ADMIN_TOKEN);
    CHECK_CONTAINS(out, "db.example");
    CHECK_CONTAINS(out, "admin_token_file = admin.token");
    teardown(&cfg);
}

static void print_masks_keyword_password(void)
{
    setup();
    struct config cfg;
    CHECK_INT(load(&cfg, "database_url = host=db.example user=idv password='p4ss word!'"
                         " sslpassword=k3yPass\n"
                         "admin_token_file = admin.token\n"),
              0);
    const char *out = print_config(&cfg);
    CHECK_NOT_CONTAINS(out, "p4ss");
    CHECK_NOT_CONTAINS(out, "k3yPass");
    CHECK_CONTAINS(out, "host=db.example");
    CHECK_CONTAINS(out, "user=idv");
    teardown(&cfg);
}

static void print_masks_alibaba_secret(void)
{
    setup();
    struct config cfg;
    put_file(0, "ak.secret", "alibaba-secret-value\n");
    CHECK_INT(load(&cfg, REQUIRED "alibaba_access_key_id = LTAI5tExample\n"
                                  "alibaba_access_key_secret_file = ak.secret\n"
                                  "public_base_url = https://idv.example.com\n"),
              0);
    const char *out = print_config(&cfg);
    CHECK_NOT_CONTAINS(out, "alibaba-secret-value");
    CHECK_NOT_CONTAINS(out, ADMIN_TOKEN);
    CHECK_CONTAINS(out, "alibaba_access_key_id = LTAI5tExample");
    CHECK_CONTAINS(out, "enabled");
    teardown(&cfg);
}

/* The printed configuration is the effective one, environment included. */
static void print_effective_values(void)
{
    setup();
    struct config cfg;
    setenv("IDV_DB_POOL_SIZE", "42", 1);
    CHECK_INT(load(&cfg, REQUIRED "db_pool_size = 8\nlog_level = warn\nlog_format = json\n"), 0);
    const char *out = print_config(&cfg);
    CHECK_CONTAINS(out, "db_pool_size = 42\n");
    CHECK_CONTAINS(out, "listen = 0.0.0.0:8080\n");
    CHECK_CONTAINS(out, "log_level = warn\n");
    CHECK_CONTAINS(out, "log_format = json\n");
    CHECK_CONTAINS(out, "proxy_protocol = off\n");
    teardown(&cfg);
}

static void free_is_safe_twice(void)
{
    struct config cfg;
    memset(&cfg, 0, sizeof cfg);
    config_free(&cfg);
    setup();
    CHECK_INT(load(&cfg, REQUIRED), 0);
    config_free(&cfg);
    CHECK(cfg.admin_token == NULL);
    CHECK(cfg.database_url == NULL);
    teardown(&cfg);
}

/* The table keeps one TEST() per line: CMake reads them from here. */
/* clang-format off */
#define TEST(name) {#name, name}
static const struct test_case cases[] = {
    TEST(defaults),
    TEST(required_keys_only_when_asked),
    TEST(comments_blank_lines_and_spaces),
    TEST(string_keys),
    TEST(integer_keys),
    TEST(integer_bad_names_key),
    TEST(integer_out_of_range),
    TEST(retention_keys),
    TEST(bool_values),
    TEST(log_format_and_level),
    TEST(unknown_key_named),
    TEST(duplicate_key_named),
    TEST(line_without_equals),
    TEST(missing_config_file),
    TEST(env_overrides_file),
    TEST(env_override_bad_value_named),
    TEST(env_sets_required_keys),
    TEST(secret_relative_to_credentials_directory),
    TEST(secret_missing_in_credentials_directory),
    TEST(secret_relative_to_config_dir),
    TEST(secret_absolute_path),
    TEST(secret_trailing_newlines_removed),
    TEST(config_read_secret_direct),
    TEST(missing_database_url_named),
    TEST(bad_database_url_named),
    TEST(missing_admin_token_file_named),
    TEST(admin_token_file_absent_named),
    TEST(admin_token_too_short),
    TEST(admin_token_bad_content),
    TEST(tls_cert_without_key),
    TEST(alibaba_key_id_without_secret_file),
    TEST(alibaba_key_id_needs_https_base_url),
    TEST(alibaba_secret_file_absent_named),
    TEST(alibaba_key_id_bad_chars),
    TEST(bad_public_base_url_named),
    TEST(bad_listen_address),
    TEST(listen_v6),
    TEST(callback_path_rules),
    TEST(trusted_proxies_rules),
    TEST(confirm_backoff_order),
    TEST(print_masks_uri_password),
    TEST(print_masks_keyword_password),
    TEST(print_masks_alibaba_secret),
    TEST(print_effective_values),
    TEST(free_is_safe_twice),
};
int main(int argc, char **argv) { return test_main(argc, argv, cases, sizeof cases / sizeof cases[0]); }
/* clang-format on */
