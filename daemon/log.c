#include "log.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-journal.h>

#define LOG_LINE_MAX   4096
#define LOG_FIELDS_MAX 24

static enum log_format g_format = LOGF_TEXT;
static enum log_level g_level = LOGL_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};
/* syslog priorities for the journal: debug 7, info 6, warning 4, err 3. */
static const int level_prio[] = {7, 6, 4, 3};

void log_setup(enum log_format format, enum log_level level)
{
    if (format == LOGF_AUTO) {
        /* systemd sets JOURNAL_STREAM when stderr is connected to the journal. */
        format = getenv("JOURNAL_STREAM") ? LOGF_JOURNAL : LOGF_TEXT;
    }
    g_format = format;
    g_level = level;
}

void log_set_level(enum log_level level)
{
    g_level = level;
}
bool log_enabled(enum log_level level)
{
    return level >= g_level;
}
enum log_format log_format_in_use(void)
{
    return g_format;
}
const char *log_level_name(enum log_level level)
{
    return level_names[level];
}

int log_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcasecmp(s, level_names[i]) == 0) return i;
    if (strcasecmp(s, "warning") == 0) return LOGL_WARN;
    return -1;
}

int log_format_parse(const char *s)
{
    static const char *const names[] = {"auto", "text", "json", "journal"};
    for (int i = 0; i < 4; i++)
        if (strcasecmp(s, names[i]) == 0) return i;
    return -1;
}

/* A small bounded writer: output is truncated, never overflowed. */
struct lbuf {
    char *p;
    size_t len, cap;
};

static void lb_putc(struct lbuf *b, char c)
{
    if (b->len + 1 < b->cap) b->p[b->len++] = c;
}

static void lb_puts(struct lbuf *b, const char *s)
{
    while (*s) lb_putc(b, *s++);
}

static void lb_json_str(struct lbuf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    lb_putc(b, '"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            lb_putc(b, '\\');
            lb_putc(b, (char)c);
        } else if (c < 0x20 || c == 0x7f) {
            lb_puts(b, "\\u00");
            lb_putc(b, hex[c >> 4]);
            lb_putc(b, hex[c & 15]);
        } else {
            lb_putc(b, (char)c);
        }
    }
    lb_putc(b, '"');
}

/* Text values are quoted when they hold spaces, quotes or control bytes, so a
 * hostile value cannot forge a second record or field. */
static void lb_text_val(struct lbuf *b, const char *s)
{
    bool quote = *s == '\0';
    for (const char *q = s; *q; q++) {
        unsigned char c = (unsigned char)*q;
        if (c <= ' ' || c == '"' || c == '=' || c == 0x7f) quote = true;
    }
    if (!quote) {
        lb_puts(b, s);
        return;
    }
    lb_json_str(b, s);
}

static void lb_lower_key(struct lbuf *b, const char *k)
{
    for (; *k; k++) lb_putc(b, (char)tolower((unsigned char)*k));
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) return; /* nowhere left to report a logging failure */
        p += w;
        n -= (size_t)w;
    }
}

static void log_emit(enum log_level level, const char *msg, const char **kv, size_t nkv)
{
    if (g_format == LOGF_JOURNAL) {
        struct iovec iov[LOG_FIELDS_MAX + 2];
        char prio[16], *mbuf, fbuf[LOG_LINE_MAX];
        size_t used = 0, n = 0;
        snprintf(prio, sizeof prio, "PRIORITY=%d", level_prio[level]);
        iov[n].iov_base = prio;
        iov[n++].iov_len = strlen(prio);
        mbuf = fbuf;
        int m = snprintf(mbuf, sizeof fbuf, "MESSAGE=%s", msg);
        if (m < 0) return;
        used = (size_t)m + 1 > sizeof fbuf ? sizeof fbuf : (size_t)m + 1;
        iov[n].iov_base = mbuf;
        iov[n++].iov_len = used - 1;
        for (size_t i = 0; i + 1 < nkv && n < LOG_FIELDS_MAX + 2; i += 2) {
            if (used >= sizeof fbuf) break;
            char *f = fbuf + used;
            int w = snprintf(f, sizeof fbuf - used, "%s=%s", kv[i], kv[i + 1]);
            if (w < 0) break;
            size_t wl = (size_t)w + 1 > sizeof fbuf - used ? sizeof fbuf - used : (size_t)w + 1;
            iov[n].iov_base = f;
            iov[n++].iov_len = wl - 1;
            used += wl;
        }
        if (sd_journal_sendv(iov, (int)n) >= 0) return;
        /* The journal is unreachable: fall back to text on stderr. */
    }

    char line[LOG_LINE_MAX];
    struct lbuf b = {line, 0, sizeof line - 1};
    struct timespec ts;
    struct tm tm;
    char tbuf[64];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(tbuf, sizeof tbuf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int)(ts.tv_nsec / 1000000) % 1000);
    if (g_format == LOGF_JSON) {
        lb_puts(&b, "{\"ts\":\"");
        lb_puts(&b, tbuf);
        lb_puts(&b, "\",\"level\":\"");
        lb_puts(&b, level_names[level]);
        lb_puts(&b, "\",\"msg\":");
        lb_json_str(&b, msg);
        for (size_t i = 0; i + 1 < nkv; i += 2) {
            lb_putc(&b, ',');
            lb_putc(&b, '"');
            lb_lower_key(&b, kv[i]);
            lb_puts(&b, "\":");
            lb_json_str(&b, kv[i + 1]);
        }
        /* Keep the line valid JSON even when truncated. */
        if (b.len + 2 >= b.cap) b.len = b.cap - 3;
        lb_putc(&b, '}');
    } else {
        lb_puts(&b, tbuf);
        lb_putc(&b, ' ');
        lb_puts(&b, level_names[level]);
        lb_putc(&b, ' ');
        for (const char *m = msg; *m; m++) lb_putc(&b, (*m == '\n' || *m == '\r') ? ' ' : *m);
        for (size_t i = 0; i + 1 < nkv; i += 2) {
            lb_putc(&b, ' ');
            lb_lower_key(&b, kv[i]);
            lb_putc(&b, '=');
            lb_text_val(&b, kv[i + 1]);
        }
    }
    line[b.len++] = '\n';
    write_all(2, line, b.len);
}

void log_kv(enum log_level level, const char *msg, ...)
{
    if (level < g_level) return;
    const char *kv[LOG_FIELDS_MAX * 2];
    size_t n = 0;
    va_list ap;
    va_start(ap, msg);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (!k) break;
        const char *v = va_arg(ap, const char *);
        if (v && n + 2 <= LOG_FIELDS_MAX * 2) {
            kv[n++] = k;
            kv[n++] = v;
        }
    }
    va_end(ap);
    log_emit(level, msg, kv, n);
}

void log_msgf(enum log_level level, const char *fmt, ...)
{
    if (level < g_level) return;
    char msg[LOG_LINE_MAX / 2];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    log_emit(level, msg, NULL, 0);
}
