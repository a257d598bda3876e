#pragma once
#include <stdbool.h>

#include <uv.h>

#include "netaddr.h"

/* systemd glue: readiness and status notifications, the watchdog pinged from
 * the event loop, and socket activation. Everything is a no-op outside systemd
 * (no NOTIFY_SOCKET, no LISTEN_FDS). */

/* Sends "READY=1" plus a STATUS line, once. */
void sd_glue_ready(const char *status);
/* Sends "STATUS=..." (printf-style). */
void sd_glue_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Sends "STOPPING=1". */
void sd_glue_stopping(void);
/* Sends "RELOADING=1" (followed by sd_glue_ready() when done). */
void sd_glue_reloading(void);
/* Starts pinging WATCHDOG=1 from the loop at half the watchdog interval when
 * the service has one; the timer is unref'd. Returns true when enabled. */
bool sd_glue_watchdog_start(uv_loop_t *loop, uv_timer_t *timer);
/* Takes the listening sockets systemd passed: each is matched to the public or
 * admin address by its bound address, else by order (public first). Sets -1
 * for those not passed. Returns the number of sockets received, or -1 when one
 * is not a listening TCP socket (err filled). */
int sd_glue_listen_fds(const struct netaddr *public_addr, const struct netaddr *admin_addr,
                       int *public_fd, int *admin_fd, char *err, size_t errlen);
