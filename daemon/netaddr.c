#include "netaddr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int netaddr_parse(const char *s, struct netaddr *out)
{
    char host[64];
    const char *port;
    memset(out, 0, sizeof *out);
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || end[1] != ':' || (size_t)(end - s - 1) >= sizeof host) return IDV_EPARSE;
        memcpy(host, s + 1, (size_t)(end - s - 1));
        host[end - s - 1] = '\0';
        port = end + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon || (size_t)(colon - s) >= sizeof host) return IDV_EPARSE;
        memcpy(host, s, (size_t)(colon - s));
        host[colon - s] = '\0';
        port = colon + 1;
        /* An unbracketed IPv6 host is ambiguous ("fe80::1:443": port 443, or an
         * address whose port was forgotten?), so only "[v6]:port" is taken. */
        if (strchr(host, ':')) return IDV_EPARSE;
    }
    char *endp;
    if (*port < '0' || *port > '9') return IDV_EPARSE;
    unsigned long p = strtoul(port, &endp, 10);
    if (*endp || p > 65535) return IDV_EPARSE;
    struct sockaddr_in *sin = (struct sockaddr_in *)&out->ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->ss;
    if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)p);
        out->len = sizeof *sin;
        return 0;
    }
    if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)p);
        out->len = sizeof *sin6;
        return 0;
    }
    return IDV_EPARSE;
}

static void ipaddr_set_v4(struct ipaddr *out, const void *v4)
{
    memset(out->b, 0, 10);
    out->b[10] = 0xff;
    out->b[11] = 0xff;
    memcpy(out->b + 12, v4, 4);
    out->v4 = 1;
}

int ipaddr_from_sockaddr(const struct sockaddr *sa, struct ipaddr *out)
{
    if (sa->sa_family == AF_INET) {
        ipaddr_set_v4(out, &((const struct sockaddr_in *)(const void *)sa)->sin_addr);
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)sa;
        memcpy(out->b, &s6->sin6_addr, 16);
        out->v4 = IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr) ? 1 : 0;
        return 0;
    }
    return IDV_EINVAL;
}

int ipaddr_parse(const char *s, size_t len, struct ipaddr *out)
{
    char tmp[64];
    unsigned char bin[16];
    if (len == 0 || len >= sizeof tmp) return IDV_EPARSE;
    memcpy(tmp, s, len);
    tmp[len] = '\0';
    if (inet_pton(AF_INET, tmp, bin) == 1) {
        ipaddr_set_v4(out, bin);
        return 0;
    }
    if (inet_pton(AF_INET6, tmp, bin) == 1) {
        memcpy(out->b, bin, 16);
        out->v4 = IN6_IS_ADDR_V4MAPPED((struct in6_addr *)(void *)bin) ? 1 : 0;
        return 0;
    }
    return IDV_EPARSE;
}

void ipaddr_format(const struct ipaddr *a, char *buf, size_t len)
{
    if (a->v4)
        inet_ntop(AF_INET, a->b + 12, buf, (socklen_t)len);
    else
        inet_ntop(AF_INET6, a->b, buf, (socklen_t)len);
}

static int cidr_parse_one(const char *s, size_t len, struct cidr *out)
{
    const char *slash = memchr(s, '/', len);
    size_t alen = slash ? (size_t)(slash - s) : len;
    if (ipaddr_parse(s, alen, &out->net) != 0) return IDV_EPARSE;
    /* The prefix counts bits of the address as written: "10.0.0.0/8" is v4,
     * "::ffff:10.0.0.0/104" is v6 even though both name the same mapped net. */
    bool written_v4 = memchr(s, ':', alen) == NULL;
    unsigned max = written_v4 ? 32 : 128, bits = max;
    if (slash) {
        const char *p = slash + 1, *end = s + len;
        if (p == end || end - p > 3) return IDV_EPARSE;
        bits = 0;
        for (; p < end; p++) {
            if (*p < '0' || *p > '9') return IDV_EPARSE;
            bits = bits * 10 + (unsigned)(*p - '0');
        }
        if (bits > max) return IDV_EPARSE;
    }
    out->prefix = (uint8_t)(written_v4 ? bits + 96 : bits);
    /* Clear host bits so that matching is a plain prefix comparison. */
    for (unsigned i = out->prefix; i < 128; i++) out->net.b[i / 8] &= (uint8_t) ~(0x80u >> (i % 8));
    return 0;
}

int cidr_list_parse(const char *s, struct cidr_list *out, char *err, size_t errlen)
{
    out->items = NULL;
    out->n = 0;
    size_t cap = 0;
    const char *p = s;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',') p++;
        if (!*p) break;
        const char *start = p;
        while (*p && *p != ',' && *p != ' ' && *p != '\t') p++;
        if (out->n == cap) {
            cap = cap ? cap * 2 : 4;
            struct cidr *n = realloc(out->items, cap * sizeof *n);
            if (!n) {
                cidr_list_free(out);
                snprintf(err, errlen, "out of memory");
                return IDV_ENOMEM;
            }
            out->items = n;
        }
        if (cidr_parse_one(start, (size_t)(p - start), &out->items[out->n]) != 0) {
            snprintf(err, errlen, "'%.*s' is not an IP address or CIDR", (int)(p - start), start);
            cidr_list_free(out);
            return IDV_EPARSE;
        }
        out->n++;
    }
    return 0;
}

bool cidr_list_contains(const struct cidr_list *l, const struct ipaddr *a)
{
    for (size_t i = 0; i < l->n; i++) {
        const struct cidr *c = &l->items[i];
        unsigned full = c->prefix / 8, rem = c->prefix % 8;
        if (memcmp(c->net.b, a->b, full) != 0) continue;
        if (rem) {
            uint8_t mask = (uint8_t)(0xff00u >> rem);
            if ((a->b[full] & mask) != c->net.b[full]) continue;
        }
        return true;
    }
    return false;
}

void cidr_list_free(struct cidr_list *l)
{
    free(l->items);
    l->items = NULL;
    l->n = 0;
}
