#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <openssl/crypto.h>

#include "log.h"
#include "pg.h"

enum key_type { KT_STR, KT_INT, KT_BOOL, KT_LOGFMT, KT_LOGLVL };

/* The keys, their types, defaults and bounds: data, not code. */
struct key_def {
    const char *name;
    enum key_type type;
    size_t off;
    const char *def; /* NULL: no default (empty) */
    long min, max;
};

#define K(name, type, def, min, max)                                                               \
    {                                                                                              \
#name, type, offsetof(struct config, name), def, min, max                                  \
    }
static const struct key_def keys[] = {
    K(listen, KT_STR, "0.0.0.0:8080", 0, 0),
    K(admin_listen, KT_STR, "127.0.0.1:8081", 0, 0),
    K(callback_path, KT_STR, "/idv/callback", 0, 0),
    K(database_url, KT_STR, NULL, 0, 0),
    K(db_pool_size, KT_INT, "8", 1, 256),
    K(db_timeout_ms, KT_INT, "5000", 10, 600000),
    K(admin_token_file, KT_STR, NULL, 0, 0),
    K(public_base_url, KT_STR, NULL, 0, 0),
    K(alibaba_endpoint, KT_STR, "https://cloudauth-intl.cn-hongkong.aliyuncs.com", 0, 0),
    K(alibaba_access_key_id, KT_STR, NULL, 0, 0),
    K(alibaba_access_key_secret_file, KT_STR, NULL, 0, 0),
    K(alibaba_ca_file, KT_STR, NULL, 0, 0),
    K(alibaba_qps, KT_INT, "10", 1, 10000),
    K(alibaba_timeout_ms, KT_INT, "10000", 100, 120000),
    K(alibaba_connect_timeout_ms, KT_INT, "3000", 100, 60000),
    K(trusted_proxies, KT_STR, NULL, 0, 0),
    K(proxy_protocol, KT_BOOL, "off", 0, 0),
    K(tls_cert_file, KT_STR, NULL, 0, 0),
    K(tls_key_file, KT_STR, NULL, 0, 0),
    K(max_connections, KT_INT, "10000", 1, 1000000),
    K(header_timeout_ms, KT_INT, "10000", 10, 3600000),
    K(idle_timeout_ms, KT_INT, "60000", 10, 86400000),
    K(log_format, KT_LOGFMT, "auto", 0, 0),
    K(log_level, KT_LOGLVL, "info", 0, 0),
    /* Keys beyond the interface contract, documented in the README. */
    K(instance_name, KT_STR, NULL, 0, 0),
    K(max_requests_per_connection, KT_INT, "1000", 1, 1000000),
    K(confirm_grace_ms, KT_INT, "300000", 0, 86400000),
    K(confirm_max_attempts, KT_INT, "12", 1, 1000),
    K(confirm_backoff_ms, KT_INT, "1000", 10, 3600000),
    K(confirm_backoff_max_ms, KT_INT, "300000", 10, 86400000),
    K(confirm_poll_ms, KT_INT, "1000", 10, 600000),
    K(sweep_interval_ms, KT_INT, "30000", 10, 3600000),
    K(alibaba_circuit_failures, KT_INT, "5", 1, 1000),
    K(alibaba_circuit_open_ms, KT_INT, "1000", 10, 3600000),
    K(alibaba_circuit_max_open_ms, KT_INT, "30000", 10, 86400000),
    K(shutdown_timeout_ms, KT_INT, "10000", 0, 600000),
    /* How long `maintain` keeps each history table's partitions (0: forever). */
    K(retention_callback_events_days, KT_INT, "0", 0, 36500),
    K(retention_transaction_events_days, KT_INT, "0", 0, 36500),
    K(retention_check_results_days, KT_INT, "0", 0, 36500),
    /* How long a statement of `maintain` or `migrate` may go unanswered. */
    K(maintain_timeout_ms, KT_INT, "300000", 100, 86400000),
};
#undef K
#define NKEYS (sizeof keys / sizeof keys[0])

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        s[--n] = '\0';
    return s;
}

static const struct key_def *find_key(const char *name)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].name, name) == 0) return &keys[i];
    return NULL;
}

/* Stores one value, converting and range-checking it. */
static int set_value(struct config *cfg, const struct key_def *k, const char *val,
                     const char *origin, char *err, size_t errlen)
{
    void *field = (char *)cfg + k->off;
    switch (k->type) {
    case KT_STR: {
        char **s = field;
        free(*s);
        *s = NULL;
        if (*val) {
            *s = strdup(val);
            if (!*s) return IDV_ENOMEM;
        }
        return 0;
    }
    case KT_INT: {
        char *end;
        errno = 0;
        long v = strtol(val, &end, 10);
        if (!*val || *end || errno || v < k->min || v > k->max) {
            set_err(err, errlen, "%s (%s): '%s' is not an integer in %ld..%ld", k->name, origin,
                    val, k->min, k->max);
            return IDV_ECONFIG;
        }
        *(long *)field = v;
        return 0;
    }
    case KT_BOOL:
        if (!strcmp(val, "on") || !strcmp(val, "true") || !strcmp(val, "yes") || !strcmp(val, "1"))
            *(bool *)field = true;
        else if (!strcmp(val, "off") || !strcmp(val, "false") || !strcmp(val, "no") ||
                 !strcmp(val, "0"))
            *(bool *)field = false;
        else {
            set_err(err, errlen, "%s (%s): '%s' is not on or off", k->name, origin, val);
            return IDV_ECONFIG;
        }
        return 0;
    case KT_LOGFMT: {
        int v = log_format_parse(val);
        if (v < 0) {
            set_err(err, errlen, "%s (%s): '%s' is not one of auto, text, json, journal", k->name,
                    origin, val);
            return IDV_ECONFIG;
        }
        *(int *)field = v;
        return 0;
    }
    case KT_LOGLVL: {
        int v = log_level_parse(val);
        if (v < 0) {
            set_err(err, errlen, "%s (%s): '%s' is not one of debug, info, warn, error", k->name,
                    origin, val);
            return IDV_ECONFIG;
        }
        *(int *)field = v;
        return 0;
    }
    }
    return IDV_EINVAL;
}

static int read_file(struct config *cfg, const char *path, bool *seen, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        set_err(err, errlen, "cannot open config file %s: %s", path, strerror(errno));
        return IDV_ECONFIG;
    }
    char line[8192];
    int lineno = 0, rc = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(f)) {
            set_err(err, errlen, "%s:%d: line too long", path, lineno);
            rc = IDV_ECONFIG;
            break;
        }
        char *s = trim(line);
        if (*s == '\0' || *s == '#' || *s == ';') continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            set_err(err, errlen, "%s:%d: expected 'key = value'", path, lineno);
            rc = IDV_ECONFIG;
            break;
        }
        *eq = '\0';
        char *name = trim(s), *val = trim(eq + 1);
        const struct key_def *k = find_key(name);
        if (!k) {
            set_err(err, errlen, "%s:%d: unknown key '%s'", path, lineno, name);
            rc = IDV_ECONFIG;
            break;
        }
        if (seen[k - keys]) {
            set_err(err, errlen, "%s:%d: key '%s' given twice", path, lineno, name);
            rc = IDV_ECONFIG;
            break;
        }
        seen[k - keys] = true;
        char origin[64];
        snprintf(origin, sizeof origin, "line %d", lineno);
        rc = set_value(cfg, k, val, origin, err, errlen);
        if (rc) break;
    }
    if (!rc && ferror(f)) {
        set_err(err, errlen, "reading %s: %s", path, strerror(errno));
        rc = IDV_ECONFIG;
    }
    fclose(f);
    return rc;
}

char *config_read_secret(const char *key, const char *path, const char *base_dir, char *err,
                         size_t errlen)
{
    char full[PATH_MAX];
    const char *creds = getenv("CREDENTIALS_DIRECTORY");
    if (path[0] == '/')
        snprintf(full, sizeof full, "%s", path);
    else if (creds && *creds)
        snprintf(full, sizeof full, "%s/%s", creds, path);
    else
        snprintf(full, sizeof full, "%s/%s", base_dir ? base_dir : ".", path);

    FILE *f = fopen(full, "r");
    if (!f) {
        set_err(err, errlen, "%s: cannot open %s: %s", key, full, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & S_IROTH))
        log_kv(LOGL_WARN, "secret file is readable by every user", "KEY", key, "PATH", full, NULL);
    char buf[4097];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    if (n == sizeof buf) {
        OPENSSL_cleanse(buf, sizeof buf);
        set_err(err, errlen, "%s: %s is larger than 4096 bytes", key, full);
        return NULL;
    }
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) n--;
    buf[n] = '\0';
    char *out = NULL;
    if (n == 0)
        set_err(err, errlen, "%s: %s is empty", key, full);
    else if (strlen(buf) != n)
        set_err(err, errlen, "%s: %s contains a NUL byte", key, full);
    else if (!(out = strdup(buf)))
        set_err(err, errlen, "%s: out of memory", key);
    OPENSSL_cleanse(buf, sizeof buf);
    return out;
}

static bool valid_callback_path(const char *p)
{
    if (p[0] != '/' || strlen(p) > 200) return false;
    for (const char *c = p; *c; c++)
        if (!isalnum((unsigned char)*c) && !strchr("/-_.~", *c)) return false;
    size_t n = strlen(p);
    return !(n > 1 && p[n - 1] == '/') && !strstr(p, "//");
}

static bool valid_base_url(const char *u)
{
    const char *rest;
    if (!strncmp(u, "https://", 8))
        rest = u + 8;
    else if (!strncmp(u, "http://", 7))
        rest = u + 7;
    else
        return false;
    if (!*rest || *rest == '/' || *rest == ':') return false;
    for (const char *c = rest; *c; c++)
        if ((unsigned char)*c <= ' ' || (unsigned char)*c >= 0x7f || strchr("?#\"<>\\", *c))
            return false;
    return true;
}

static int validate(struct config *cfg, bool required, const char *base_dir, char *err,
                    size_t errlen)
{
    if (netaddr_parse(cfg->listen ? cfg->listen : "", &cfg->listen_addr) != 0) {
        set_err(err, errlen, "listen: '%s' is not a numeric address:port",
                cfg->listen ? cfg->listen : "");
        return IDV_ECONFIG;
    }
    if (netaddr_parse(cfg->admin_listen ? cfg->admin_listen : "", &cfg->admin_addr) != 0) {
        set_err(err, errlen, "admin_listen: '%s' is not a numeric address:port",
                cfg->admin_listen ? cfg->admin_listen : "");
        return IDV_ECONFIG;
    }
    if (!cfg->callback_path || !valid_callback_path(cfg->callback_path)) {
        set_err(err, errlen,
                "callback_path: must start with '/', use only [A-Za-z0-9/-_.~] and not end "
                "with '/'");
        return IDV_ECONFIG;
    }
    if (!strcmp(cfg->callback_path, "/") || !strcmp(cfg->callback_path, "/healthz") ||
        !strcmp(cfg->callback_path, "/readyz")) {
        set_err(err, errlen, "callback_path: '%s' collides with a built-in path",
                cfg->callback_path);
        return IDV_ECONFIG;
    }
    if (required && !cfg->database_url) {
        set_err(err, errlen, "database_url: required (a libpq connection string or URI)");
        return IDV_ECONFIG;
    }
    if (cfg->database_url) {
        char *perr = NULL;
        PQconninfoOption *o = PQconninfoParse(cfg->database_url, &perr);
        if (!o) {
            set_err(err, errlen, "database_url: %s", perr ? trim(perr) : "cannot be parsed");
            PQfreemem(perr);
            return IDV_ECONFIG;
        }
        const char *problem = pg_conninfo_hosts_problem(o);
        if (problem) set_err(err, errlen, "database_url: %s", problem);
        PQconninfoFree(o);
        if (problem) return IDV_ECONFIG;
    }
    if (cfg->public_base_url) {
        size_t n = strlen(cfg->public_base_url);
        while (n > 0 && cfg->public_base_url[n - 1] == '/') cfg->public_base_url[--n] = '\0';
        if (!valid_base_url(cfg->public_base_url)) {
            set_err(err, errlen, "public_base_url: '%s' is not an http(s) URL without query",
                    cfg->public_base_url);
            return IDV_ECONFIG;
        }
    }
    if (!cfg->alibaba_endpoint || !valid_base_url(cfg->alibaba_endpoint)) {
        set_err(err, errlen, "alibaba_endpoint: must be https://host[:port]");
        return IDV_ECONFIG;
    }
    if (cfg->alibaba_access_key_id) {
        for (const char *c = cfg->alibaba_access_key_id; *c; c++)
            if (!isalnum((unsigned char)*c)) {
                set_err(err, errlen, "alibaba_access_key_id: only letters and digits expected");
                return IDV_ECONFIG;
            }
        if (!cfg->alibaba_access_key_secret_file) {
            set_err(err, errlen,
                    "alibaba_access_key_secret_file: required when alibaba_access_key_id is set");
            return IDV_ECONFIG;
        }
        if (!cfg->public_base_url || strncmp(cfg->public_base_url, "https://", 8) != 0) {
            set_err(err, errlen,
                    "public_base_url: must be an https URL when alibaba_access_key_id is set "
                    "(Alibaba only calls https callback URLs)");
            return IDV_ECONFIG;
        }
    }
    if (!cfg->tls_cert_file != !cfg->tls_key_file) {
        set_err(err, errlen, "%s: required when %s is set",
                cfg->tls_cert_file ? "tls_key_file" : "tls_cert_file",
                cfg->tls_cert_file ? "tls_cert_file" : "tls_key_file");
        return IDV_ECONFIG;
    }
    char perr[200];
    if (cidr_list_parse(cfg->trusted_proxies ? cfg->trusted_proxies : "", &cfg->trusted, perr,
                        sizeof perr) != 0) {
        set_err(err, errlen, "trusted_proxies: %s", perr);
        return IDV_ECONFIG;
    }
    if (cfg->proxy_protocol && cfg->trusted.n == 0) {
        set_err(err, errlen,
                "proxy_protocol: 'on' needs trusted_proxies (whose headers to believe)");
        return IDV_ECONFIG;
    }
    if (cfg->confirm_backoff_max_ms < cfg->confirm_backoff_ms) {
        set_err(err, errlen, "confirm_backoff_max_ms: must be at least confirm_backoff_ms");
        return IDV_ECONFIG;
    }
    if (cfg->alibaba_circuit_max_open_ms < cfg->alibaba_circuit_open_ms) {
        set_err(err, errlen,
                "alibaba_circuit_max_open_ms: must be at least alibaba_circuit_open_ms");
        return IDV_ECONFIG;
    }
    if (!cfg->instance_name) {
        char host[256];
        if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "idv");
        host[sizeof host - 1] = '\0';
        cfg->instance_name = strdup(host);
        if (!cfg->instance_name) return IDV_ENOMEM;
    }
    if (strlen(cfg->instance_name) > 64) {
        set_err(err, errlen, "instance_name: at most 64 characters");
        return IDV_ECONFIG;
    }

    /* Secrets last, so that a bad plain value is reported first. */
    if (required && !cfg->admin_token_file) {
        set_err(err, errlen, "admin_token_file: required (a file holding the admin bearer token)");
        return IDV_ECONFIG;
    }
    if (cfg->admin_token_file) {
        cfg->admin_token =
            config_read_secret("admin_token_file", cfg->admin_token_file, base_dir, err, errlen);
        if (!cfg->admin_token) return IDV_ECONFIG;
        size_t n = strlen(cfg->admin_token);
        if (n < 16) {
            set_err(err, errlen, "admin_token_file: the token must be at least 16 characters");
            return IDV_ECONFIG;
        }
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)cfg->admin_token[i] <= ' ' ||
                (unsigned char)cfg->admin_token[i] >= 0x7f) {
                set_err(err, errlen,
                        "admin_token_file: the token must be printable ASCII without spaces");
                return IDV_ECONFIG;
            }
    }
    if (cfg->alibaba_access_key_id) {
        cfg->alibaba_access_key_secret =
            config_read_secret("alibaba_access_key_secret_file",
                               cfg->alibaba_access_key_secret_file, base_dir, err, errlen);
        if (!cfg->alibaba_access_key_secret) return IDV_ECONFIG;
        cfg->alibaba_enabled = true;
    }
    return 0;
}

int config_load(struct config *cfg, const char *path, bool required, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof *cfg);
    int rc;
    for (size_t i = 0; i < NKEYS; i++)
        if (keys[i].def && (rc = set_value(cfg, &keys[i], keys[i].def, "default", err, errlen)))
            return rc;

    bool seen[NKEYS] = {false};
    const char *file = path;
    if (!file && access(CONFIG_DEFAULT_PATH, F_OK) == 0) file = CONFIG_DEFAULT_PATH;
    char base_dir[PATH_MAX] = ".";
    if (file) {
        if ((rc = read_file(cfg, file, seen, err, errlen))) return rc;
        cfg->config_path = strdup(file);
        if (!cfg->config_path) return IDV_ENOMEM;
        const char *slash = strrchr(file, '/');
        if (slash) snprintf(base_dir, sizeof base_dir, "%.*s", (int)(slash - file), file);
        if (slash == file) snprintf(base_dir, sizeof base_dir, "/");
    }

    /* IDV_<KEY> overrides the file. */
    for (size_t i = 0; i < NKEYS; i++) {
        char env[96];
        size_t j = 0;
        j += (size_t)snprintf(env, sizeof env, "IDV_");
        for (const char *c = keys[i].name; *c && j + 1 < sizeof env; c++)
            env[j++] = (char)toupper((unsigned char)*c);
        env[j] = '\0';
        const char *v = getenv(env);
        if (!v) continue;
        char val[8192];
        snprintf(val, sizeof val, "%s", v);
        char origin[112];
        snprintf(origin, sizeof origin, "environment %s", env);
        if ((rc = set_value(cfg, &keys[i], trim(val), origin, err, errlen))) return rc;
    }
    return validate(cfg, required, base_dir, err, errlen);
}

static void free_secret(char **s)
{
    if (*s) {
        OPENSSL_cleanse(*s, strlen(*s));
        free(*s);
        *s = NULL;
    }
}

void config_free(struct config *cfg)
{
    for (size_t i = 0; i < NKEYS; i++)
        if (keys[i].type == KT_STR) {
            char **s = (char **)((char *)cfg + keys[i].off);
            free(*s);
            *s = NULL;
        }
    free_secret(&cfg->admin_token);
    free_secret(&cfg->alibaba_access_key_secret);
    free(cfg->config_path);
    cfg->config_path = NULL;
    cidr_list_free(&cfg->trusted);
}

/* Prints a libpq connection string with the password masked. */
static void print_dburl(const char *url, FILE *out)
{
    PQconninfoOption *opts = PQconninfoParse(url, NULL);
    if (!opts) {
        fprintf(out, "(unparseable)");
        return;
    }
    bool first = true;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val) continue;
        bool secret = !strcmp(o->keyword, "password") || !strcmp(o->keyword, "sslpassword");
        fprintf(out, "%s%s=%s", first ? "" : " ", o->keyword, secret ? "********" : o->val);
        first = false;
    }
    PQconninfoFree(opts);
}

void config_print(const struct config *cfg, FILE *out)
{
    if (cfg->config_path)
        fprintf(out, "# from %s and IDV_* environment variables\n", cfg->config_path);
    for (size_t i = 0; i < NKEYS; i++) {
        const struct key_def *k = &keys[i];
        const void *field = (const char *)cfg + k->off;
        fprintf(out, "%s = ", k->name);
        switch (k->type) {
        case KT_STR: {
            const char *s = *(char *const *)field;
            if (s && !strcmp(k->name, "database_url"))
                print_dburl(s, out);
            else
                fputs(s ? s : "", out);
            if (s && !strcmp(k->name, "admin_token_file"))
                fprintf(out, "  # loaded, %zu bytes, value masked",
                        cfg->admin_token ? strlen(cfg->admin_token) : 0);
            if (s && !strcmp(k->name, "alibaba_access_key_secret_file"))
                fprintf(out, "  # loaded, value masked");
            break;
        }
        case KT_INT: fprintf(out, "%ld", *(const long *)field); break;
        case KT_BOOL: fputs(*(const bool *)field ? "on" : "off", out); break;
        case KT_LOGFMT: {
            static const char *const n[] = {"auto", "text", "json", "journal"};
            fputs(n[*(const int *)field], out);
            break;
        }
        case KT_LOGLVL: fputs(log_level_name((enum log_level) * (const int *)field), out); break;
        }
        fputc('\n', out);
    }
    fprintf(out, "# initialize and check_result: %s\n",
            cfg->alibaba_enabled ? "enabled" : "disabled (no alibaba_access_key_id)");
}
