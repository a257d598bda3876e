#include "sd.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <systemd/sd-daemon.h>

#include "log.h"

static bool g_ready_sent;

void sd_glue_ready(const char *status)
{
    char msg[512];
    snprintf(msg, sizeof msg, "READY=1\nSTATUS=%s", status);
    sd_notify(0, msg);
    if (!g_ready_sent) log_kv(LOGL_INFO, "ready", "STATUS", status, NULL);
    g_ready_sent = true;
}

void sd_glue_status(const char *fmt, ...)
{
    char msg[512] = "STATUS=";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + 7, sizeof msg - 7, fmt, ap);
    va_end(ap);
    sd_notify(0, msg);
}

void sd_glue_stopping(void)
{
    sd_notify(0, "STOPPING=1\nSTATUS=draining connections");
}

void sd_glue_reloading(void)
{
    sd_notify(0, "RELOADING=1\nSTATUS=reloading configuration");
}

static void watchdog_cb(uv_timer_t *t)
{
    (void)t;
    /* Sent from a loop timer: when the loop is stuck, the pings stop and
     * systemd restarts the service. */
    sd_notify(0, "WATCHDOG=1");
}

bool sd_glue_watchdog_start(uv_loop_t *loop, uv_timer_t *timer)
{
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return false;
    uint64_t ms = usec / 2000;
    if (ms == 0) ms = 1;
    uv_timer_init(loop, timer);
    uv_timer_start(timer, watchdog_cb, ms, ms);
    uv_unref((uv_handle_t *)timer);
    sd_notify(0, "WATCHDOG=1");
    char v[32];
    snprintf(v, sizeof v, "%llu", (unsigned long long)ms);
    log_kv(LOGL_INFO, "watchdog enabled", "PING_MS", v, NULL);
    return true;
}

static bool same_addr(int fd, const struct netaddr *a)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0 || ss.ss_family != a->ss.ss_family)
        return false;
    return len == a->len && memcmp(&ss, &a->ss, len) == 0;
}

int sd_glue_listen_fds(const struct netaddr *public_addr, const struct netaddr *admin_addr,
                       int *public_fd, int *admin_fd, char *err, size_t errlen)
{
    *public_fd = *admin_fd = -1;
    int n = sd_listen_fds(1);
    if (n <= 0) return 0;
    if (n > 2) {
        snprintf(err, errlen, "systemd passed %d sockets; expected the public and admin ones", n);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        int fd = SD_LISTEN_FDS_START + i;
        if (sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0) {
            snprintf(err, errlen, "passed descriptor %d is not a listening TCP socket", fd);
            return -1;
        }
    }
    int unmatched[2], nu = 0;
    for (int i = 0; i < n; i++) {
        int fd = SD_LISTEN_FDS_START + i;
        if (*public_fd < 0 && same_addr(fd, public_addr))
            *public_fd = fd;
        else if (*admin_fd < 0 && same_addr(fd, admin_addr))
            *admin_fd = fd;
        else
            unmatched[nu++] = fd;
    }
    for (int i = 0; i < nu; i++) {
        if (*public_fd < 0)
            *public_fd = unmatched[i];
        else if (*admin_fd < 0)
            *admin_fd = unmatched[i];
    }
    return n;
}
