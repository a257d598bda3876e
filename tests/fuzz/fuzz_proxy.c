/* libFuzzer target: the first bytes of a connection from a trusted load
 * balancer through proxy_parse(), checked against a reference reading of the
 * PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2) that shares
 * no code with daemon/proxy.c, and for consistency over every prefix: the
 * server parses whatever has arrived, so a prefix of a valid header must ask
 * for more, the answer may not change once the header is complete, and an
 * invalid start stays invalid whatever follows. */
#include <arpa/inet.h>
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "netaddr.h"
#include "proxy.h"

#define PREFIXES_MAX 640 /* prefixes checked: every one up to past PROXY_V2_MAX */

static const uint8_t sig2[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

struct ref {
    enum proxy_result r;
    bool may_fail; /* NEED_MORE, but no valid header starts this way: ERROR is right too */
    size_t consumed;
    struct proxy_info info;
};

static bool port_ok(const char *s, size_t n, uint16_t *out)
{
    /* 1 to 5 digits, no leading zero, at most 65535. */
    if (n < 1 || n > 5 || (n > 1 && s[0] == '0')) return false;
    unsigned long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    *out = (uint16_t)v;
    return v <= 65535;
}

static bool addr_ok(bool v6, const char *s, size_t n, struct ipaddr *out)
{
    char tmp[64];
    uint8_t bin[16];
    if (n >= sizeof tmp) return false;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    memset(out, 0, sizeof *out);
    if (!v6) {
        if (inet_pton(AF_INET, tmp, bin) != 1) return false;
        out->b[10] = out->b[11] = 0xff;
        memcpy(out->b + 12, bin, 4);
        out->v4 = 1;
        return true;
    }
    if (inet_pton(AF_INET6, tmp, bin) != 1) return false;
    memcpy(out->b, bin, 16);
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    out->v4 = memcmp(bin, mapped, 12) == 0;
    return true;
}

/* A complete v1 line, CRLF excluded: "PROXY TCP4|TCP6 src dst sport dport" with
 * single spaces, or "PROXY UNKNOWN" and anything after a space. */
static bool line_v1(const char *l, size_t n, struct proxy_info *info)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)l[i] < 0x20 || (unsigned char)l[i] > 0x7e) return false;
    if (n >= 13 && memcmp(l, "PROXY UNKNOWN", 13) == 0 && (n == 13 || l[13] == ' ')) {
        info->has_addr = false;
        return true;
    }
    const char *f[7];
    size_t fl[7], nf = 0, start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && l[i] != ' ') continue;
        if (nf == 7) return false;
        f[nf] = l + start;
        fl[nf++] = i - start;
        start = i + 1;
    }
    if (nf != 6) return false;
    for (size_t i = 0; i < 6; i++)
        if (fl[i] == 0) return false;
    if (fl[0] != 5 || memcmp(f[0], "PROXY", 5) != 0 || fl[1] != 4) return false;
    bool v6;
    if (memcmp(f[1], "TCP4", 4) == 0)
        v6 = false;
    else if (memcmp(f[1], "TCP6", 4) == 0)
        v6 = true;
    else
        return false;
    struct ipaddr dst;
    uint16_t dport;
    if (!addr_ok(v6, f[2], fl[2], &info->src) || !addr_ok(v6, f[3], fl[3], &dst) ||
        !port_ok(f[4], fl[4], &info->src_port) || !port_ok(f[5], fl[5], &dport))
        return false;
    info->has_addr = true;
    return true;
}

static void ref_v1(const uint8_t *b, size_t len, struct ref *r)
{
    /* "a 107-byte buffer ... the CRLF sequence included": the line may be at
     * most 105 bytes before its CRLF. */
    size_t lim = len < PROXY_V1_MAX ? len : PROXY_V1_MAX;
    for (size_t i = 0; i + 1 < lim; i++)
        if (b[i] == '\r' && b[i + 1] == '\n') {
            r->consumed = i + 2;
            r->r = line_v1((const char *)b, i, &r->info) ? PROXY_DONE : PROXY_ERROR;
            return;
        }
    /* No CRLF yet: possible only while the CR may still come at index 105. */
    bool cr_last = len > 0 && len < PROXY_V1_MAX && b[len - 1] == '\r';
    r->r = len >= PROXY_V1_MAX - 1 && !cr_last ? PROXY_ERROR : PROXY_NEED_MORE;
    /* A byte that no line holds, or a CR not followed by LF, already decides. */
    for (size_t i = 0; i < lim; i++)
        if ((b[i] < 0x20 || b[i] > 0x7e) && !(b[i] == '\r' && i + 1 == len)) r->may_fail = true;
}

static void ref_v2(const uint8_t *b, size_t len, struct ref *r)
{
    r->r = PROXY_NEED_MORE;
    if (len < 16) return;
    size_t plen = (size_t)b[14] << 8 | b[15];
    uint8_t cmd = b[12] & 0x0f, fam = b[13];
    const uint8_t *a = b + 16;
    if (b[12] >> 4 != 2 || 16 + plen > PROXY_V2_MAX) {
        r->r = PROXY_ERROR;
        return;
    }
    if (len < 16 + plen) return;
    r->consumed = 16 + plen;
    r->r = PROXY_DONE;
    if (cmd == 0 || (cmd == 1 && fam == 0x00)) return; /* LOCAL, or UNSPEC: keep the peer */
    if (cmd == 1 && fam == 0x11 && plen >= 12) {
        r->info.has_addr = true;
        r->info.src.b[10] = r->info.src.b[11] = 0xff;
        memcpy(r->info.src.b + 12, a, 4);
        r->info.src.v4 = 1;
        r->info.src_port = (uint16_t)(a[8] << 8 | a[9]);
        return;
    }
    if (cmd == 1 && fam == 0x21 && plen >= 36) {
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        r->info.has_addr = true;
        memcpy(r->info.src.b, a, 16);
        r->info.src.v4 = memcmp(a, mapped, 12) == 0;
        r->info.src_port = (uint16_t)(a[32] << 8 | a[33]);
        return;
    }
    r->r = PROXY_ERROR; /* another command, a family other than TCP, a short block */
}

static void reference(const uint8_t *b, size_t len, struct ref *r)
{
    memset(r, 0, sizeof *r);
    size_t k2 = len < 12 ? len : 12, k1 = len < 6 ? len : 6;
    if (memcmp(b, sig2, k2) == 0) {
        if (len < 12)
            r->r = PROXY_NEED_MORE;
        else
            ref_v2(b, len, r);
    } else if (memcmp(b, "PROXY ", k1) == 0) {
        if (len < 6)
            r->r = PROXY_NEED_MORE;
        else
            ref_v1(b, len, r);
    } else {
        r->r = PROXY_ERROR;
    }
    if (r->r != PROXY_DONE) {
        r->consumed = 0;
        memset(&r->info, 0, sizeof r->info);
    }
}

static bool same_info(const struct proxy_info *a, const struct proxy_info *b)
{
    if (a->has_addr != b->has_addr) return false;
    return !a->has_addr || (memcmp(a->src.b, b->src.b, 16) == 0 && a->src.v4 == b->src.v4 &&
                            a->src_port == b->src_port);
}

/* Parses b[0..len) and checks what the result alone must satisfy. */
static enum proxy_result parse(const uint8_t *b, size_t len, struct proxy_info *info,
                               size_t *consumed)
{
    const char *reason = (const char *)1; /* proxy_parse() must set it */
    enum proxy_result r = proxy_parse(b, len, info, consumed, &reason);
    FUZZ_CHECK(r == PROXY_NEED_MORE || r == PROXY_DONE || r == PROXY_ERROR);
    switch (r) {
    case PROXY_DONE: {
        FUZZ_CHECK(reason == NULL);
        FUZZ_CHECK(*consumed <= len);
        bool v2 = b[0] == 0x0D;
        FUZZ_CHECK(*consumed >= (v2 ? 16 : sizeof "PROXY UNKNOWN\r\n" - 1));
        FUZZ_CHECK(*consumed <= (v2 ? PROXY_V2_MAX : PROXY_V1_MAX));
        if (info->has_addr) {
            /* The address formats and parses back to itself. */
            char s[IPADDR_STRLEN];
            struct ipaddr back;
            ipaddr_format(&info->src, s, sizeof s);
            FUZZ_CHECK(ipaddr_parse(s, strlen(s), &back) == 0);
            FUZZ_CHECK(memcmp(back.b, info->src.b, 16) == 0 && back.v4 == info->src.v4);
        }
        break;
    }
    case PROXY_ERROR: FUZZ_CHECK(reason != NULL && reason[0] != '\0'); break;
    case PROXY_NEED_MORE:
        FUZZ_CHECK(reason == NULL);
        /* Asking for more is only right while a valid header still fits. */
        FUZZ_CHECK(len < (len && b[0] == 0x0D ? PROXY_V2_MAX : PROXY_V1_MAX));
        break;
    }
    if (r != PROXY_DONE) FUZZ_CHECK(!info->has_addr);
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct proxy_info info;
    size_t consumed = 0;
    enum proxy_result r = parse(data, size, &info, &consumed);

    struct ref ref;
    reference(data, size, &ref);
    if (ref.r == PROXY_NEED_MORE && ref.may_fail)
        FUZZ_CHECK(r == PROXY_NEED_MORE || r == PROXY_ERROR);
    else
        FUZZ_CHECK_EQ(r, ref.r);
    if (r == PROXY_DONE) {
        FUZZ_CHECK_EQ(consumed, ref.consumed);
        FUZZ_CHECK(same_info(&info, &ref.info));
    }

    /* Every prefix, as the bytes arrive. */
    size_t n = size < PREFIXES_MAX ? size : PREFIXES_MAX;
    bool failed = false;
    for (size_t k = 0; k <= n; k++) {
        struct proxy_info pi;
        size_t pc = 0;
        enum proxy_result pr = parse(data, k, &pi, &pc);
        if (r == PROXY_DONE) {
            if (k < consumed) {
                FUZZ_CHECK_EQ(pr, PROXY_NEED_MORE);
            } else {
                FUZZ_CHECK_EQ(pr, PROXY_DONE);
                FUZZ_CHECK_EQ(pc, consumed);
                FUZZ_CHECK(same_info(&pi, &info));
            }
        } else {
            FUZZ_CHECK(pr != PROXY_DONE);
            if (failed) FUZZ_CHECK_EQ(pr, PROXY_ERROR);
            failed = pr == PROXY_ERROR;
        }
    }
    return 0;
}
