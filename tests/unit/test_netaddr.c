/* Listen addresses, textual IP addresses and the trusted-proxy CIDR list. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "netaddr.h"
#include "test.h"

static int port_of(const struct netaddr *a)
{
    if (a->ss.ss_family == AF_INET) return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
}

static void netaddr_v4(void)
{
    struct netaddr a;
    CHECK_INT(netaddr_parse("127.0.0.1:8080", &a), 0);
    CHECK_INT(a.ss.ss_family, AF_INET);
    CHECK_INT(a.len, sizeof(struct sockaddr_in));
    CHECK_INT(port_of(&a), 8080);
    char buf[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &((struct sockaddr_in *)&a.ss)->sin_addr, buf, sizeof buf);
    CHECK_STR(buf, "127.0.0.1");
}

static void netaddr_v4_any_and_port_bounds(void)
{
    struct netaddr a;
    CHECK_INT(netaddr_parse("0.0.0.0:0", &a), 0);
    CHECK_INT(port_of(&a), 0);
    CHECK_INT(netaddr_parse("0.0.0.0:65535", &a), 0);
    CHECK_INT(port_of(&a), 65535);
}

static void netaddr_v6(void)
{
    struct netaddr a;
    CHECK_INT(netaddr_parse("[::1]:8081", &a), 0);
    CHECK_INT(a.ss.ss_family, AF_INET6);
    CHECK_INT(a.len, sizeof(struct sockaddr_in6));
    CHECK_INT(port_of(&a), 8081);
    CHECK(IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)&a.ss)->sin6_addr));
    CHECK_INT(netaddr_parse("[2001:db8::7]:443", &a), 0);
    CHECK_INT(port_of(&a), 443);
    CHECK_INT(netaddr_parse("[::]:80", &a), 0);
}

static void netaddr_bad_port(void)
{
    struct netaddr a;
    CHECK_INT(netaddr_parse("127.0.0.1:65536", &a), IDV_EPARSE);
    CHECK_INT(netaddr_parse("127.0.0.1:", &a), IDV_EPARSE);
    CHECK_INT(netaddr_parse("127.0.0.1:80x", &a), IDV_EPARSE);
    CHECK_INT(netaddr_parse("127.0.0.1:-1", &a), IDV_EPARSE);
    CHECK_INT(netaddr_parse("127.0.0.1:+80", &a), IDV_EPARSE);
    CHECK_INT(netaddr_parse("127.0.0.1: 80", &a), IDV_EPARSE);
    CHECK_INT(netaddr_parse("127.0.0.1:80 ", &a), IDV_EPARSE);
    CHECK_INT(netaddr_parse("127.0.0.1:99999999999999999999999", &a), IDV_EPARSE);
    CHECK_INT(netaddr_parse("[::1]:", &a), IDV_EPARSE);
    CHECK_INT(netaddr_parse("[::1]:70000", &a), IDV_EPARSE);
}

static void netaddr_missing_port(void)
{
    struct netaddr a;
    CHECK_INT(netaddr_parse("127.0.0.1", &a), IDV_EPARSE);
    CHECK_INT(netaddr_parse("[::1]", &a), IDV_EPARSE);
    CHECK_INT(netaddr_parse("[::1]8080", &a), IDV_EPARSE);
    CHECK_INT(netaddr_parse("", &a), IDV_EPARSE);
    CHECK_INT(netaddr_parse(":8080", &a), IDV_EPARSE);
}

static void netaddr_hostname_refused(void)
{
    struct netaddr a;
    CHECK_INT(netaddr_parse("localhost:8080", &a), IDV_EPARSE);
    CHECK_INT(netaddr_parse("idv.example.com:443", &a), IDV_EPARSE);
    CHECK_INT(netaddr_parse("[localhost]:8080", &a), IDV_EPARSE);
    CHECK_INT(netaddr_parse("1.2.3:80", &a), IDV_EPARSE);
    CHECK_INT(netaddr_parse("256.0.0.1:80", &a), IDV_EPARSE);
}

/* An IPv6 address must be bracketed: "fe80::1:443" could be the address
 * fe80::1 with port 443 or the address fe80::1:443 with the port forgotten. */
static void netaddr_v6_without_brackets_refused(void)
{
    struct netaddr a;
    CHECK_INT(netaddr_parse("::1:8080", &a), IDV_EPARSE);
    CHECK_INT(netaddr_parse("fe80::1:443", &a), IDV_EPARSE);
}

static const char *roundtrip(const char *s)
{
    static char buf[IPADDR_STRLEN];
    struct ipaddr a;
    if (ipaddr_parse(s, strlen(s), &a) != 0) return "(parse error)";
    ipaddr_format(&a, buf, sizeof buf);
    return buf;
}

static void ipaddr_v4_roundtrip(void)
{
    CHECK_STR(roundtrip("192.0.2.7"), "192.0.2.7");
    CHECK_STR(roundtrip("0.0.0.0"), "0.0.0.0");
    CHECK_STR(roundtrip("255.255.255.255"), "255.255.255.255");
    struct ipaddr a;
    CHECK_INT(ipaddr_parse("10.1.2.3", 8, &a), 0);
    CHECK_INT(a.v4, 1);
    /* Stored as the v4-mapped v6 address ::ffff:10.1.2.3. */
    const uint8_t mapped[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3};
    CHECK(memcmp(a.b, mapped, 16) == 0);
}

static void ipaddr_v6_roundtrip(void)
{
    CHECK_STR(roundtrip("::1"), "::1");
    CHECK_STR(roundtrip("2001:db8::1"), "2001:db8::1");
    CHECK_STR(roundtrip("2001:DB8:0:0:0:0:0:1"), "2001:db8::1");
    CHECK_STR(roundtrip("fe80::abcd:1"), "fe80::abcd:1");
    struct ipaddr a;
    CHECK_INT(ipaddr_parse("2001:db8::1", 11, &a), 0);
    CHECK_INT(a.v4, 0);
}

/* A v4-mapped v6 address is the v4 address: same bytes, printed as v4. */
static void ipaddr_v4_mapped(void)
{
    struct ipaddr m, v4;
    CHECK_INT(ipaddr_parse("::ffff:192.0.2.1", 16, &m), 0);
    CHECK_INT(m.v4, 1);
    CHECK_INT(ipaddr_parse("192.0.2.1", 9, &v4), 0);
    CHECK(memcmp(m.b, v4.b, 16) == 0);
    CHECK_STR(roundtrip("::ffff:192.0.2.1"), "192.0.2.1");
}

/* Only len bytes are read: the rest of a longer string is ignored. */
static void ipaddr_uses_len(void)
{
    struct ipaddr a;
    char buf[IPADDR_STRLEN];
    CHECK_INT(ipaddr_parse("10.0.0.1, 10.0.0.2", 8, &a), 0);
    ipaddr_format(&a, buf, sizeof buf);
    CHECK_STR(buf, "10.0.0.1");
}

static void ipaddr_bad(void)
{
    struct ipaddr a;
    const char *bad[] = {"",         "1.2.3",    "1.2.3.4.5", "256.1.1.1", "gggg::", "1.2.3.4/8",
                         " 1.2.3.4", "1.2.3.4 ", "localhost", ":::",       "1::2::3"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (ipaddr_parse(bad[i], strlen(bad[i]), &a) != IDV_EPARSE) {
            fprintf(stderr, "ipaddr_parse accepted '%s'\n", bad[i]);
            test_failures++;
        }
    char long_[80];
    memset(long_, '1', sizeof long_);
    CHECK_INT(ipaddr_parse(long_, sizeof long_, &a), IDV_EPARSE);
}

static void ipaddr_from_sockaddr_v4_v6(void)
{
    struct sockaddr_in sin = {.sin_family = AF_INET};
    inet_pton(AF_INET, "198.51.100.9", &sin.sin_addr);
    struct ipaddr a;
    char buf[IPADDR_STRLEN];
    CHECK_INT(ipaddr_from_sockaddr((struct sockaddr *)&sin, &a), 0);
    CHECK_INT(a.v4, 1);
    ipaddr_format(&a, buf, sizeof buf);
    CHECK_STR(buf, "198.51.100.9");

    struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6};
    inet_pton(AF_INET6, "::ffff:198.51.100.9", &sin6.sin6_addr);
    CHECK_INT(ipaddr_from_sockaddr((struct sockaddr *)&sin6, &a), 0);
    CHECK_INT(a.v4, 1);
    ipaddr_format(&a, buf, sizeof buf);
    CHECK_STR(buf, "198.51.100.9");

    inet_pton(AF_INET6, "2001:db8::5", &sin6.sin6_addr);
    CHECK_INT(ipaddr_from_sockaddr((struct sockaddr *)&sin6, &a), 0);
    CHECK_INT(a.v4, 0);
    ipaddr_format(&a, buf, sizeof buf);
    CHECK_STR(buf, "2001:db8::5");

    struct sockaddr un = {.sa_family = AF_UNIX};
    CHECK_INT(ipaddr_from_sockaddr(&un, &a), IDV_EINVAL);
}

static bool list_has(const struct cidr_list *l, const char *ip)
{
    struct ipaddr a;
    if (ipaddr_parse(ip, strlen(ip), &a) != 0) {
        fprintf(stderr, "test address '%s' does not parse\n", ip);
        test_failures++;
        return false;
    }
    return cidr_list_contains(l, &a);
}

static void cidr_parse_list(void)
{
    struct cidr_list l;
    char err[200] = "";
    CHECK_INT(cidr_list_parse("10.0.0.0/8, ::1/128, 192.0.2.7", &l, err, sizeof err), 0);
    CHECK_INT(l.n, 3);
    CHECK_INT(l.items[0].prefix, 96 + 8);
    CHECK_INT(l.items[1].prefix, 128);
    CHECK_INT(l.items[2].prefix, 128); /* a bare v4 address is a /32 */
    cidr_list_free(&l);
    CHECK_INT(l.n, 0);
    CHECK(l.items == NULL);
}

static void cidr_parse_spaces_and_commas(void)
{
    struct cidr_list l;
    char err[200] = "";
    CHECK_INT(
        cidr_list_parse("  ,10.0.0.0/8,,\t192.168.0.0/16 ,  2001:db8::/32,", &l, err, sizeof err),
        0);
    CHECK_INT(l.n, 3);
    CHECK(list_has(&l, "10.9.9.9"));
    CHECK(list_has(&l, "192.168.200.1"));
    CHECK(list_has(&l, "2001:db8:1::1"));
    cidr_list_free(&l);
    /* Separated by spaces only, too. */
    CHECK_INT(cidr_list_parse("10.0.0.1 10.0.0.2", &l, err, sizeof err), 0);
    CHECK_INT(l.n, 2);
    cidr_list_free(&l);
}

static void cidr_parse_empty(void)
{
    struct cidr_list l;
    char err[200] = "";
    CHECK_INT(cidr_list_parse("", &l, err, sizeof err), 0);
    CHECK_INT(l.n, 0);
    CHECK(!list_has(&l, "127.0.0.1"));
    cidr_list_free(&l);
    CHECK_INT(cidr_list_parse(" , ,", &l, err, sizeof err), 0);
    CHECK_INT(l.n, 0);
    cidr_list_free(&l);
}

static void cidr_v4_slash0(void)
{
    struct cidr_list l;
    char err[200] = "";
    CHECK_INT(cidr_list_parse("0.0.0.0/0", &l, err, sizeof err), 0);
    CHECK(list_has(&l, "0.0.0.0"));
    CHECK(list_has(&l, "1.2.3.4"));
    CHECK(list_has(&l, "255.255.255.255"));
    /* All of IPv4, but no native IPv6 address. */
    CHECK(!list_has(&l, "::1"));
    CHECK(!list_has(&l, "2001:db8::1"));
    cidr_list_free(&l);
}

static void cidr_v6_slash0(void)
{
    struct cidr_list l;
    char err[200] = "";
    CHECK_INT(cidr_list_parse("::/0", &l, err, sizeof err), 0);
    CHECK(list_has(&l, "::1"));
    CHECK(list_has(&l, "2001:db8::1"));
    CHECK(list_has(&l, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
    cidr_list_free(&l);
}

static void cidr_v4_slash32(void)
{
    struct cidr_list l;
    char err[200] = "";
    CHECK_INT(cidr_list_parse("192.0.2.7/32", &l, err, sizeof err), 0);
    CHECK(list_has(&l, "192.0.2.7"));
    CHECK(!list_has(&l, "192.0.2.6"));
    CHECK(!list_has(&l, "192.0.2.8"));
    CHECK(!list_has(&l, "::ffff:192.0.2.6"));
    cidr_list_free(&l);
}

static void cidr_v6_slash128(void)
{
    struct cidr_list l;
    char err[200] = "";
    CHECK_INT(cidr_list_parse("2001:db8::1/128", &l, err, sizeof err), 0);
    CHECK(list_has(&l, "2001:db8::1"));
    CHECK(!list_has(&l, "2001:db8::"));
    CHECK(!list_has(&l, "2001:db8::2"));
    cidr_list_free(&l);
}

static void cidr_prefix_8_boundaries(void)
{
    struct cidr_list l;
    char err[200] = "";
    CHECK_INT(cidr_list_parse("10.0.0.0/8", &l, err, sizeof err), 0);
    CHECK(list_has(&l, "10.0.0.0"));
    CHECK(list_has(&l, "10.255.255.255"));
    CHECK(!list_has(&l, "11.0.0.1"));
    CHECK(!list_has(&l, "11.0.0.0"));
    CHECK(!list_has(&l, "9.255.255.255"));
    cidr_list_free(&l);
}

/* A prefix that does not fall on a byte boundary. */
static void cidr_prefix_25_boundaries(void)
{
    struct cidr_list l;
    char err[200] = "";
    CHECK_INT(cidr_list_parse("192.168.1.128/25", &l, err, sizeof err), 0);
    CHECK(list_has(&l, "192.168.1.128"));
    CHECK(list_has(&l, "192.168.1.200"));
    CHECK(list_has(&l, "192.168.1.255"));
    CHECK(!list_has(&l, "192.168.1.127"));
    CHECK(!list_has(&l, "192.168.1.0"));
    CHECK(!list_has(&l, "192.168.0.255"));
    CHECK(!list_has(&l, "192.168.2.128"));
    cidr_list_free(&l);
}

static void cidr_v6_odd_prefix(void)
{
    struct cidr_list l;
    char err[200] = "";
    CHECK_INT(cidr_list_parse("2001:db8:8000::/33", &l, err, sizeof err), 0);
    CHECK(list_has(&l, "2001:db8:8000::1"));
    CHECK(list_has(&l, "2001:db8:ffff:ffff::"));
    CHECK(!list_has(&l, "2001:db8:7fff:ffff::"));
    CHECK(!list_has(&l, "2001:db9::"));
    cidr_list_free(&l);
}

/* Host bits in the network are ignored: 10.1.2.3/8 is 10.0.0.0/8. */
static void cidr_host_bits_cleared(void)
{
    struct cidr_list l;
    char err[200] = "";
    CHECK_INT(cidr_list_parse("10.1.2.3/8", &l, err, sizeof err), 0);
    CHECK(list_has(&l, "10.200.0.1"));
    CHECK(!list_has(&l, "11.1.2.3"));
    cidr_list_free(&l);
}

/* The same v4 network, however it is written, matches the same addresses
 * however they are written. */
static void cidr_v4_inside_v6_mapped(void)
{
    struct cidr_list l;
    char err[200] = "";
    CHECK_INT(cidr_list_parse("10.0.0.0/8", &l, err, sizeof err), 0);
    CHECK(list_has(&l, "::ffff:10.1.2.3"));
    CHECK(!list_has(&l, "::ffff:11.1.2.3"));
    /* A v4 network does not match the v6 address with the same low bits. */
    CHECK(!list_has(&l, "::a01:203"));
    cidr_list_free(&l);

    /* Written as a v6 network, the prefix counts v6 bits: /104 is the v4 /8. */
    CHECK_INT(cidr_list_parse("::ffff:10.0.0.0/104", &l, err, sizeof err), 0);
    CHECK_INT(l.n, 1);
    CHECK(list_has(&l, "10.1.2.3"));
    CHECK(list_has(&l, "::ffff:10.255.0.1"));
    CHECK(!list_has(&l, "11.0.0.1"));
    cidr_list_free(&l);

    /* ::ffff:0:0/96 is all of IPv4. */
    CHECK_INT(cidr_list_parse("::ffff:0.0.0.0/96", &l, err, sizeof err), 0);
    CHECK(list_has(&l, "203.0.113.1"));
    CHECK(!list_has(&l, "2001:db8::1"));
    cidr_list_free(&l);
}

static void cidr_bad_items_named(void)
{
    struct cidr_list l;
    char err[200] = "";
    CHECK_INT(cidr_list_parse("10.0.0.0/8, bogus, 192.0.2.1", &l, err, sizeof err), IDV_EPARSE);
    CHECK(strstr(err, "'bogus'") != NULL);
    CHECK(l.items == NULL);
    CHECK_INT(l.n, 0);

    const char *bad[] = {"10.0.0.0/33",  "::/129",      "10.0.0.0/",     "10.0.0.0/-1",
                         "10.0.0.0/8/8", "10.0.0.0/1a", "10.0.0.0/0008", "example.com",
                         "10.0.0.0/+8",  "/8"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        int rc = cidr_list_parse(bad[i], &l, err, sizeof err);
        char want[64];
        snprintf(want, sizeof want, "'%s'", bad[i]);
        if (rc != IDV_EPARSE || !strstr(err, want)) {
            fprintf(stderr, "cidr_list_parse(\"%s\") = %d, err \"%s\"\n", bad[i], rc, err);
            test_failures++;
        }
        cidr_list_free(&l);
    }
}

static void cidr_many_items(void)
{
    /* More items than the initial capacity: the array grows. */
    char s[512] = "";
    for (int i = 0; i < 20; i++) {
        char item[32];
        snprintf(item, sizeof item, "%s10.0.%d.0/24", i ? "," : "", i);
        strcat(s, item);
    }
    struct cidr_list l;
    char err[200] = "";
    CHECK_INT(cidr_list_parse(s, &l, err, sizeof err), 0);
    CHECK_INT(l.n, 20);
    CHECK(list_has(&l, "10.0.19.77"));
    CHECK(!list_has(&l, "10.0.20.1"));
    cidr_list_free(&l);
}

static void cidr_free_zeroed(void)
{
    struct cidr_list l = {0};
    cidr_list_free(&l);
    cidr_list_free(&l);
    CHECK_INT(l.n, 0);
}

/* The table keeps one TEST() per line: CMake reads them from here. */
/* clang-format off */
#define TEST(name) {#name, name}
static const struct test_case cases[] = {
    TEST(netaddr_v4),
    TEST(netaddr_v4_any_and_port_bounds),
    TEST(netaddr_v6),
    TEST(netaddr_bad_port),
    TEST(netaddr_missing_port),
    TEST(netaddr_hostname_refused),
    TEST(netaddr_v6_without_brackets_refused),
    TEST(ipaddr_v4_roundtrip),
    TEST(ipaddr_v6_roundtrip),
    TEST(ipaddr_v4_mapped),
    TEST(ipaddr_uses_len),
    TEST(ipaddr_bad),
    TEST(ipaddr_from_sockaddr_v4_v6),
    TEST(cidr_parse_list),
    TEST(cidr_parse_spaces_and_commas),
    TEST(cidr_parse_empty),
    TEST(cidr_v4_slash0),
    TEST(cidr_v6_slash0),
    TEST(cidr_v4_slash32),
    TEST(cidr_v6_slash128),
    TEST(cidr_prefix_8_boundaries),
    TEST(cidr_prefix_25_boundaries),
    TEST(cidr_v6_odd_prefix),
    TEST(cidr_host_bits_cleared),
    TEST(cidr_v4_inside_v6_mapped),
    TEST(cidr_bad_items_named),
    TEST(cidr_many_items),
    TEST(cidr_free_zeroed),
};
int main(int argc, char **argv) { return test_main(argc, argv, cases, sizeof cases / sizeof cases[0]); }
/* clang-format on */
