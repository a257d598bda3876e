#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <sys/socket.h>

#include "err.h"
#include "netaddr.h"

#define CONFIG_DEFAULT_PATH "/etc/idv-callbackd/idv-callbackd.conf"

/* The effective configuration: the file, then IDV_* environment overrides, then
 * validation. Strings are owned by the struct and freed by config_free(). */
struct config {
    char *listen;
    char *admin_listen;
    char *callback_path;
    char *database_url;
    long db_pool_size;
    long db_timeout_ms;
    char *admin_token_file;
    char *public_base_url;
    char *alibaba_endpoint;
    char *alibaba_access_key_id;
    char *alibaba_access_key_secret_file;
    char *alibaba_ca_file;
    long alibaba_qps;
    long alibaba_timeout_ms;
    long alibaba_connect_timeout_ms;
    long alibaba_circuit_failures;
    long alibaba_circuit_open_ms;
    long alibaba_circuit_max_open_ms;
    char *trusted_proxies;
    bool proxy_protocol;
    char *tls_cert_file;
    char *tls_key_file;
    long max_connections;
    long header_timeout_ms;
    long idle_timeout_ms;
    int log_format; /* enum log_format */
    int log_level;  /* enum log_level */
    char *instance_name;
    long max_requests_per_connection;
    long confirm_grace_ms;
    long confirm_max_attempts;
    long confirm_backoff_ms;
    long confirm_backoff_max_ms;
    long confirm_poll_ms;
    long sweep_interval_ms;
    long shutdown_timeout_ms;
    long retention_callback_events_days; /* `maintain`: 0 keeps everything */
    long retention_transaction_events_days;
    long retention_check_results_days;
    long maintain_timeout_ms; /* `maintain`, `migrate`: deadline of one statement */

    /* Derived while validating. */
    struct netaddr listen_addr;
    struct netaddr admin_addr;
    struct cidr_list trusted;
    char *config_path;               /* the file read, or NULL */
    char *admin_token;               /* secret, read from admin_token_file */
    char *alibaba_access_key_secret; /* secret, read from its file */
    bool alibaba_enabled;            /* access key id and secret both set */
};

/* Loads path (NULL: the default path, which may be absent), applies IDV_*
 * environment overrides, validates and reads secret files. With need_db false,
 * database_url and admin_token_file may be missing (used by `version`).
 * On error fills err with a message naming the key; returns IDV_ECONFIG. */
int config_load(struct config *cfg, const char *path, bool required_keys, char *err,
                size_t errlen) IDV_MUSTCHECK;
/* Frees everything config_load allocated, wiping secrets; safe on a zeroed struct. */
void config_free(struct config *cfg);
/* Writes the effective configuration with every secret masked. */
void config_print(const struct config *cfg, FILE *out);
/* Reads a secret file named by a *_file key: relative paths are resolved against
 * $CREDENTIALS_DIRECTORY when set, else against base_dir. Trailing newlines are
 * removed. Returns a malloc'd string or NULL with err filled. */
char *config_read_secret(const char *key, const char *path, const char *base_dir, char *err,
                         size_t errlen);
