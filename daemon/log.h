#pragma once
#include <stdbool.h>

/* Log levels, in increasing severity. */
enum log_level { LOGL_DEBUG = 0, LOGL_INFO, LOGL_WARN, LOGL_ERROR };
/* Output formats: LOGF_AUTO becomes journal under systemd, else text. */
enum log_format { LOGF_AUTO = 0, LOGF_TEXT, LOGF_JSON, LOGF_JOURNAL };

/* Chooses format and threshold; safe to call again (SIGHUP reload). */
void log_setup(enum log_format format, enum log_level level);
/* Changes only the threshold. */
void log_set_level(enum log_level level);
/* True when a message at this level would be written. */
bool log_enabled(enum log_level level);
/* The format actually in use (never LOGF_AUTO). */
enum log_format log_format_in_use(void);

/* Writes one record: a message and then NULL-terminated pairs of field name
 * (journal style, upper case, e.g. "TRANSACTION_ID") and value (NULL values are
 * skipped). Never pass a secret: nothing here redacts. */
void log_kv(enum log_level level, const char *msg, ...) __attribute__((sentinel));
/* Writes a formatted message without fields. */
void log_msgf(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Parses "debug" etc.; returns -1 when unknown. */
int log_level_parse(const char *s);
/* Parses "auto", "text", "json", "journal"; returns -1 when unknown. */
int log_format_parse(const char *s);
/* Name of a level ("info"). */
const char *log_level_name(enum log_level level);
