#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "netaddr.h"

/* The PROXY protocol header (HAProxy, versions 1 and 2) that a trusted load
 * balancer sends before the HTTP request. Pure: no I/O. */

#define PROXY_V1_MAX 107        /* the longest v1 line, CRLF included */
#define PROXY_V2_MAX (16 + 512) /* the largest v2 header accepted (TLVs skipped) */

enum proxy_result {
    PROXY_NEED_MORE = 0, /* not enough bytes yet (and none invalid so far) */
    PROXY_DONE,          /* *consumed bytes form a valid header */
    PROXY_ERROR,         /* not a valid PROXY header: close the connection */
};

struct proxy_info {
    bool has_addr; /* false for LOCAL (v2) and UNKNOWN (v1): keep the peer */
    struct ipaddr src;
    uint16_t src_port;
};

/* Parses a header at the start of buf. On PROXY_ERROR, *reason is static text. */
enum proxy_result proxy_parse(const uint8_t *buf, size_t len, struct proxy_info *out,
                              size_t *consumed, const char **reason);
