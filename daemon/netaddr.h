#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "err.h"

/* A numeric listen address: IPv4 "a.b.c.d:port" or IPv6 "[::1]:port". */
struct netaddr {
    struct sockaddr_storage ss;
    socklen_t len;
};

/* A compact IP address (v4 stored as v4-mapped v6), 17 bytes. */
struct ipaddr {
    uint8_t b[16];
    uint8_t v4; /* 1 when the address is IPv4 */
};

struct cidr {
    struct ipaddr net;
    uint8_t prefix; /* in bits of the 128-bit (mapped) form */
};

/* A comma-separated list of CIDRs (trusted proxies). */
struct cidr_list {
    struct cidr *items;
    size_t n;
};

#define IPADDR_STRLEN 46

/* Parses "host:port" with a numeric host; returns 0 or IDV_EPARSE. */
int netaddr_parse(const char *s, struct netaddr *out) IDV_MUSTCHECK;
/* Converts a socket address to an ipaddr; returns 0 or IDV_EINVAL. */
int ipaddr_from_sockaddr(const struct sockaddr *sa, struct ipaddr *out) IDV_MUSTCHECK;
/* Parses a textual IPv4 or IPv6 address (no port); returns 0 or IDV_EPARSE. */
int ipaddr_parse(const char *s, size_t len, struct ipaddr *out) IDV_MUSTCHECK;
/* Formats into buf (at least IPADDR_STRLEN bytes). */
void ipaddr_format(const struct ipaddr *a, char *buf, size_t len);
/* Parses "10.0.0.0/8, ::1/128, 192.0.2.7"; an empty string gives an empty
 * list. On error names the bad item in err. The list owns its array. */
int cidr_list_parse(const char *s, struct cidr_list *out, char *err, size_t errlen) IDV_MUSTCHECK;
/* True when a is inside one of the list's networks. */
bool cidr_list_contains(const struct cidr_list *l, const struct ipaddr *a);
/* Frees the list's array; safe on a zeroed list. */
void cidr_list_free(struct cidr_list *l);
