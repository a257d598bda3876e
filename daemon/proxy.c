#include "proxy.h"

#include <arpa/inet.h>
#include <string.h>

static const uint8_t v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                   0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

static enum proxy_result fail(const char **reason, const char *why)
{
    *reason = why;
    return PROXY_ERROR;
}

static bool parse_port(const char *s, size_t n, uint16_t *out)
{
    if (n == 0 || n > 5 || (n > 1 && s[0] == '0')) return false;
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535) return false;
    *out = (uint16_t)v;
    return true;
}

/* "PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n" */
static enum proxy_result parse_v1(const uint8_t *buf, size_t len, struct proxy_info *out,
                                  size_t *consumed, const char **reason)
{
    /* At most PROXY_V1_MAX bytes with the CRLF: the CR is among the first
     * PROXY_V1_MAX - 1. */
    size_t window = len < PROXY_V1_MAX - 1 ? len : PROXY_V1_MAX - 1;
    const uint8_t *cr = memchr(buf, '\r', window);
    size_t n = cr ? (size_t)(cr - buf) : window;
    /* Bytes are judged as they arrive, so that a bad start is refused at once
     * whatever follows, and a line waiting for its LF is a valid one. */
    for (size_t i = 0; i < n; i++)
        if (buf[i] < 0x20 || buf[i] > 0x7e) return fail(reason, "PROXY v1 line malformed");
    if (!cr) {
        if (len >= PROXY_V1_MAX - 1) return fail(reason, "PROXY v1 line too long");
        return PROXY_NEED_MORE;
    }
    if (n + 1 >= len) return PROXY_NEED_MORE;
    if (cr[1] != '\n') return fail(reason, "PROXY v1 line not ended by CRLF");
    char line[PROXY_V1_MAX];
    memcpy(line, buf, n);
    line[n] = '\0';
    *consumed = n + 2;
    if (!strcmp(line, "PROXY UNKNOWN") || !strncmp(line, "PROXY UNKNOWN ", 14)) {
        out->has_addr = false;
        return PROXY_DONE;
    }
    /* Exactly six fields separated by single spaces. */
    const char *f[6];
    size_t fl[6], nf = 0;
    const char *p = line;
    while (nf < 6) {
        const char *sp = strchr(p, ' ');
        size_t l = sp ? (size_t)(sp - p) : strlen(p);
        if (l == 0) return fail(reason, "PROXY v1 line malformed");
        f[nf] = p;
        fl[nf++] = l;
        if (!sp) break;
        p = sp + 1;
    }
    if (nf != 6 || f[5] + fl[5] != line + n || fl[0] != 5 || memcmp(f[0], "PROXY", 5) != 0)
        return fail(reason, "PROXY v1 line malformed");
    bool v4 = fl[1] == 4 && !memcmp(f[1], "TCP4", 4);
    bool v6 = fl[1] == 4 && !memcmp(f[1], "TCP6", 4);
    if (!v4 && !v6) return fail(reason, "PROXY v1 protocol not TCP4/TCP6");
    /* The family is the one the address is written in: TCP6 may carry a
     * v4-mapped address ("::ffff:192.0.2.7"), which is stored as IPv4 like the
     * same address in a v2 header. */
    struct ipaddr dst;
    uint16_t dport;
    bool src_v6 = memchr(f[2], ':', fl[2]) != NULL, dst_v6 = memchr(f[3], ':', fl[3]) != NULL;
    if (ipaddr_parse(f[2], fl[2], &out->src) != 0 || ipaddr_parse(f[3], fl[3], &dst) != 0 ||
        src_v6 != v6 || dst_v6 != v6 || !parse_port(f[4], fl[4], &out->src_port) ||
        !parse_port(f[5], fl[5], &dport))
        return fail(reason, "PROXY v1 address malformed");
    out->has_addr = true;
    return PROXY_DONE;
}

static enum proxy_result parse_v2(const uint8_t *buf, size_t len, struct proxy_info *out,
                                  size_t *consumed, const char **reason)
{
    if (len < 16) return PROXY_NEED_MORE;
    uint8_t ver_cmd = buf[12], fam = buf[13];
    size_t plen = (size_t)buf[14] << 8 | buf[15];
    if ((ver_cmd & 0xF0) != 0x20) return fail(reason, "PROXY v2 version not 2");
    if (16 + plen > PROXY_V2_MAX) return fail(reason, "PROXY v2 header too large");
    if (len < 16 + plen) return PROXY_NEED_MORE;
    *consumed = 16 + plen;
    uint8_t cmd = ver_cmd & 0x0F;
    if (cmd == 0x0) { /* LOCAL: a health check of the proxy itself */
        out->has_addr = false;
        return PROXY_DONE;
    }
    if (cmd != 0x1) return fail(reason, "PROXY v2 command unknown");
    const uint8_t *a = buf + 16;
    if (fam == 0x11) { /* TCP over IPv4 */
        if (plen < 12) return fail(reason, "PROXY v2 address block too short");
        memset(out->src.b, 0, 10);
        out->src.b[10] = out->src.b[11] = 0xff;
        memcpy(out->src.b + 12, a, 4);
        out->src.v4 = 1;
        out->src_port = (uint16_t)(a[8] << 8 | a[9]);
        out->has_addr = true;
        return PROXY_DONE;
    }
    if (fam == 0x21) { /* TCP over IPv6 */
        if (plen < 36) return fail(reason, "PROXY v2 address block too short");
        memcpy(out->src.b, a, 16);
        out->src.v4 = IN6_IS_ADDR_V4MAPPED((const struct in6_addr *)(const void *)a) ? 1 : 0;
        out->src_port = (uint16_t)(a[32] << 8 | a[33]);
        out->has_addr = true;
        return PROXY_DONE;
    }
    if (fam == 0x00) { /* UNSPEC: keep the peer address */
        out->has_addr = false;
        return PROXY_DONE;
    }
    return fail(reason, "PROXY v2 family not TCP");
}

enum proxy_result proxy_parse(const uint8_t *buf, size_t len, struct proxy_info *out,
                              size_t *consumed, const char **reason)
{
    memset(out, 0, sizeof *out);
    *consumed = 0;
    *reason = NULL;
    if (len == 0) return PROXY_NEED_MORE;
    if (buf[0] == 0x0D) {
        size_t n = len < 12 ? len : 12;
        if (memcmp(buf, v2_sig, n) != 0) return fail(reason, "not a PROXY header");
        if (len < 12) return PROXY_NEED_MORE;
        return parse_v2(buf, len, out, consumed, reason);
    }
    size_t n = len < 6 ? len : 6;
    if (memcmp(buf, "PROXY ", n) != 0) return fail(reason, "not a PROXY header");
    if (len < 6) return PROXY_NEED_MORE;
    return parse_v1(buf, len, out, consumed, reason);
}
