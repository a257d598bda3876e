/* PROXY protocol v1/v2 header parser (daemon/proxy.c), including the cases the
 * fuzzer found (tests/fuzz/fuzz_proxy.c). */
#include <arpa/inet.h>

#include "proxy.h"
#include "test.h"

static enum proxy_result parse(const void *buf, size_t len, struct proxy_info *pi, size_t *used)
{
    const char *reason = NULL;
    enum proxy_result r = proxy_parse(buf, len, pi, used, &reason);
    if (r == PROXY_ERROR) CHECK(reason != NULL);
    return r;
}

static void v1_tcp4(void)
{
    const char h[] = "PROXY TCP4 192.0.2.10 10.0.0.1 5555 80\r\nGET / HTTP/1.1\r\n";
    struct proxy_info pi;
    size_t used;
    CHECK_INT(parse(h, sizeof h - 1, &pi, &used), PROXY_DONE);
    CHECK_INT(used, 40);
    CHECK(pi.has_addr);
    char ip[IPADDR_STRLEN];
    ipaddr_format(&pi.src, ip, sizeof ip);
    CHECK_STR(ip, "192.0.2.10");
    CHECK_INT(pi.src_port, 5555);
}

static void v1_tcp6_and_mapped(void)
{
    const char h[] = "PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
    struct proxy_info pi;
    size_t used;
    CHECK_INT(parse(h, sizeof h - 1, &pi, &used), PROXY_DONE);
    char ip[IPADDR_STRLEN];
    ipaddr_format(&pi.src, ip, sizeof ip);
    CHECK_STR(ip, "2001:db8::1");
    /* A v4-mapped address in TCP6 is accepted, as v2 accepts it. */
    const char m[] = "PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n";
    CHECK_INT(parse(m, sizeof m - 1, &pi, &used), PROXY_DONE);
}

static void v1_unknown(void)
{
    const char h[] = "PROXY UNKNOWN\r\n";
    struct proxy_info pi;
    size_t used;
    CHECK_INT(parse(h, sizeof h - 1, &pi, &used), PROXY_DONE);
    CHECK(!pi.has_addr);
    CHECK_INT(used, sizeof h - 1);
}

static void v1_incomplete(void)
{
    const char h[] = "PROXY TCP4 192.0.2.10 10.0.0.1 5555 80\r\n";
    struct proxy_info pi;
    size_t used;
    for (size_t n = 0; n < sizeof h - 1; n++) CHECK_INT(parse(h, n, &pi, &used), PROXY_NEED_MORE);
}

static void v1_malformed(void)
{
    static const char *const bad[] = {
        "PROXY TCP4 192.0.2.10 10.0.0.1 5555 80 extra\r\n", /* seventh field */
        "PROXY TCP4 192.0.2.10 10.0.0.1 5555 80 12345\r\n", /* as long as the sixth */
        "PROXY TCP4  192.0.2.10 10.0.0.1 5555 80\r\n",      /* double space */
        "PROXY TCP4 2001:db8::1 10.0.0.1 5555 80\r\n",      /* family mismatch */
        "PROXY TCP4 192.0.2.10 10.0.0.1 65536 80\r\n",      /* port range */
        "PROXY TCP4 192.0.2.10 10.0.0.1 0555 80\r\n",       /* leading zero */
        "PROXY UDP4 192.0.2.10 10.0.0.1 5555 80\r\n",
        "PROXY TCP4 192.0.2.10 10.0.0.1 5555 80\n",  /* LF without CR */
        "PROXY TCP4 192.0.2.10 10.0.0.1 5555 80\rX", /* CR without LF */
        "GET / HTTP/1.1\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct proxy_info pi;
        size_t used;
        enum proxy_result r = parse(bad[i], strlen(bad[i]), &pi, &used);
        if (r != PROXY_ERROR) fprintf(stderr, "accepted: %s\n", bad[i]);
        CHECK_INT(r, PROXY_ERROR);
    }
}

static void v1_length_limit(void)
{
    /* 107 bytes is the most the protocol allows; 108 is refused. */
    char line[200];
    memcpy(line, "PROXY UNKNOWN ", 14);
    memset(line + 14, 'x', sizeof line - 14);
    struct proxy_info pi;
    size_t used;
    memcpy(line + 105, "\r\n", 2);
    CHECK_INT(parse(line, 107, &pi, &used), PROXY_DONE);
    line[105] = 'x';
    memcpy(line + 106, "\r\n", 2);
    CHECK_INT(parse(line, 108, &pi, &used), PROXY_ERROR);
}

static size_t v2(uint8_t *out, uint8_t cmd, uint8_t fam, const uint8_t *addr, uint16_t alen)
{
    static const uint8_t sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                    0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
    memcpy(out, sig, 12);
    out[12] = cmd;
    out[13] = fam;
    out[14] = (uint8_t)(alen >> 8);
    out[15] = (uint8_t)alen;
    if (alen) memcpy(out + 16, addr, alen);
    return 16u + alen;
}

static void v2_tcp4_with_tlv(void)
{
    uint8_t a[12 + 5] = {192,
                         0,
                         2,
                         33,
                         10,
                         0,
                         0,
                         1,
                         0x15,
                         0xB3,
                         0,
                         80,
                         /* a TLV, skipped */ 0x04,
                         0,
                         2,
                         'h',
                         'i'};
    uint8_t buf[64];
    size_t n = v2(buf, 0x21, 0x11, a, sizeof a);
    struct proxy_info pi;
    size_t used;
    CHECK_INT(parse(buf, n, &pi, &used), PROXY_DONE);
    CHECK_INT(used, n);
    char ip[IPADDR_STRLEN];
    ipaddr_format(&pi.src, ip, sizeof ip);
    CHECK_STR(ip, "192.0.2.33");
    CHECK_INT(pi.src_port, 5555);
    for (size_t k = 0; k < n; k++) CHECK_INT(parse(buf, k, &pi, &used), PROXY_NEED_MORE);
}

static void v2_local_and_unspec(void)
{
    uint8_t buf[64];
    struct proxy_info pi;
    size_t used;
    size_t n = v2(buf, 0x20, 0x00, NULL, 0);
    CHECK_INT(parse(buf, n, &pi, &used), PROXY_DONE);
    CHECK(!pi.has_addr);
    n = v2(buf, 0x21, 0x00, NULL, 0);
    CHECK_INT(parse(buf, n, &pi, &used), PROXY_DONE);
    CHECK(!pi.has_addr);
}

static void v2_errors(void)
{
    uint8_t a[36] = {0};
    uint8_t buf[64];
    struct proxy_info pi;
    size_t used;
    size_t n = v2(buf, 0x11, 0x11, a, 12); /* version 1 in a v2 header */
    CHECK_INT(parse(buf, n, &pi, &used), PROXY_ERROR);
    n = v2(buf, 0x22, 0x11, a, 12); /* unknown command */
    CHECK_INT(parse(buf, n, &pi, &used), PROXY_ERROR);
    n = v2(buf, 0x21, 0x11, a, 8); /* address block too short */
    CHECK_INT(parse(buf, n, &pi, &used), PROXY_ERROR);
    n = v2(buf, 0x21, 0x12, a, 12); /* UDP */
    CHECK_INT(parse(buf, n, &pi, &used), PROXY_ERROR);
    buf[14] = 0xff; /* announces more than the bound */
    buf[15] = 0xff;
    CHECK_INT(parse(buf, 16, &pi, &used), PROXY_ERROR);
}

/* clang-format off */
#define TEST(name) {#name, name}
static const struct test_case cases[] = {
    TEST(v1_tcp4),
    TEST(v1_tcp6_and_mapped),
    TEST(v1_unknown),
    TEST(v1_incomplete),
    TEST(v1_malformed),
    TEST(v1_length_limit),
    TEST(v2_tcp4_with_tlv),
    TEST(v2_local_and_unspec),
    TEST(v2_errors),
};
/* clang-format on */

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
