/* The callback query string: the rules of the interface contract's status
 * table for 200 "ok" (probe) and 400 "malformed", and what is kept for the
 * audit row. */
#include <string.h>

#include "query.h"
#include "test.h"

#define TOKEN16 "0123456789abcdef"
#define VALID   "transactionId=tx-1_A&passed=Y&subCode=200&callbackToken=" TOKEN16

static enum cb_verdict parse(const char *q, struct cb_params *p)
{
    return cb_query_parse(q, strlen(q), p);
}

/* The verdict of q alone, for the many cases that only need that. */
static int verdict(const char *q)
{
    struct cb_params p;
    return (int)parse(q, &p);
}

static const char *digest_hex(const uint8_t d[SHA256_LEN])
{
    static char hex[SHA256_HEX_LEN + 1];
    crypto_hex(d, SHA256_LEN, hex);
    return hex;
}

static const char *sha256_of(const char *s)
{
    static char hex[SHA256_HEX_LEN + 1];
    uint8_t d[SHA256_LEN];
    crypto_sha256(s, strlen(s), d);
    crypto_hex(d, SHA256_LEN, hex);
    return hex;
}

/* Builds "transactionId=<tx>&passed=<passed>&subCode=<sub>&callbackToken=<tok>". */
static const char *query4(const char *tx, const char *passed, const char *sub, const char *tok)
{
    static char q[2048];
    snprintf(q, sizeof q, "transactionId=%s&passed=%s&subCode=%s&callbackToken=%s", tx, passed, sub,
             tok);
    return q;
}

static const char *repeat(char c, size_t n)
{
    static char buf[2][600];
    static int which;
    char *b = buf[which ^= 1];
    memset(b, c, n);
    b[n] = '\0';
    return b;
}

/* ---- probes ---- */

static void probe_empty(void)
{
    struct cb_params p;
    CHECK_INT(cb_query_parse("", 0, &p), CB_PROBE);
    CHECK(!p.tx_ok && !p.sub_ok && !p.token_ok);
    CHECK_INT(p.passed, 0);
}

static void probe_unknown_only(void)
{
    CHECK_INT(verdict("foo=bar"), CB_PROBE);
    CHECK_INT(verdict("foo=bar&baz&x="), CB_PROBE);
    CHECK_INT(verdict("&&&"), CB_PROBE);
    CHECK_INT(verdict("=x"), CB_PROBE);
    /* Near misses of the known names are unknown names. */
    CHECK_INT(verdict("transaction_id=x&pass=Y&sub_code=1&token=" TOKEN16), CB_PROBE);
    CHECK_INT(verdict("transactionIdX=x"), CB_PROBE);
}

/* ---- valid callbacks ---- */

static void valid_callback(void)
{
    struct cb_params p;
    CHECK_INT(parse(VALID, &p), CB_VALID);
    CHECK_STR(p.transaction_id, "tx-1_A");
    CHECK_STR(p.sub_code, "200");
    CHECK_INT(p.passed, 'Y');
    CHECK(p.tx_ok && p.sub_ok && p.token_ok);
    CHECK_STR(digest_hex(p.token_sha256), sha256_of(TOKEN16));
}

static void valid_passed_n(void)
{
    struct cb_params p;
    CHECK_INT(parse(query4("t", "N", "A.b-c_9", TOKEN16), &p), CB_VALID);
    CHECK_INT(p.passed, 'N');
    CHECK_STR(p.sub_code, "A.b-c_9");
}

static void valid_any_order(void)
{
    struct cb_params p;
    CHECK_INT(parse("callbackToken=" TOKEN16 "&subCode=1&passed=N&transactionId=abc", &p),
              CB_VALID);
    CHECK_STR(p.transaction_id, "abc");
}

static void names_case_insensitive(void)
{
    struct cb_params p;
    CHECK_INT(parse("transactionid=a&passed=Y&subcode=1&callbacktoken=" TOKEN16, &p), CB_VALID);
    CHECK_INT(parse("TRANSACTIONID=a&PASSED=Y&SUBCODE=1&CALLBACKTOKEN=" TOKEN16, &p), CB_VALID);
    CHECK_INT(parse("TransactionId=a&Passed=Y&SubCode=1&CallbackToken=" TOKEN16, &p), CB_VALID);
    CHECK_STR(p.transaction_id, "a");
    CHECK_STR(p.sub_code, "1");
}

/* Values are case-sensitive even though names are not. */
static void values_case_kept(void)
{
    struct cb_params p;
    CHECK_INT(parse(query4("AbC", "Y", "xY.Z", "ABCDEFGHIJKLMNOP"), &p), CB_VALID);
    CHECK_STR(p.transaction_id, "AbC");
    CHECK_STR(p.sub_code, "xY.Z");
    CHECK_STR(digest_hex(p.token_sha256), sha256_of("ABCDEFGHIJKLMNOP"));
}

static void unknown_params_ignored(void)
{
    struct cb_params p;
    CHECK_INT(parse("a=1&" VALID "&utm_source=x&transactionIdx=2&foo", &p), CB_VALID);
    CHECK_STR(p.transaction_id, "tx-1_A");
}

/* Names are percent-decoded too, so an encoded name is the same name. */
static void encoded_name_recognised(void)
{
    struct cb_params p;
    CHECK_INT(parse("%74ransactionId=a&passed=Y&subCode=1&callbackToken=" TOKEN16, &p), CB_VALID);
    CHECK_STR(p.transaction_id, "a");
}

/* ---- repeated parameters ---- */

static void duplicate_param_malformed(void)
{
    CHECK_INT(verdict(VALID "&passed=Y"), CB_MALFORMED);
    CHECK_INT(verdict(VALID "&transactionId=tx-1_A"), CB_MALFORMED);
    CHECK_INT(verdict(VALID "&subCode=200"), CB_MALFORMED);
    CHECK_INT(verdict(VALID "&callbackToken=" TOKEN16), CB_MALFORMED);
}

static void duplicate_param_other_case(void)
{
    CHECK_INT(verdict(VALID "&PASSED=N"), CB_MALFORMED);
    CHECK_INT(verdict(VALID "&TransactionID=other"), CB_MALFORMED);
    CHECK_INT(verdict(VALID "&subcode=200"), CB_MALFORMED);
    CHECK_INT(verdict(VALID "&CALLBACKTOKEN=" TOKEN16), CB_MALFORMED);
}

/* A repeated parameter is not believed for the audit row, whichever copy. */
static void duplicate_param_not_kept(void)
{
    struct cb_params p;
    CHECK_INT(parse(VALID "&transactionid=tx-2", &p), CB_MALFORMED);
    CHECK(!p.tx_ok);
    CHECK(p.sub_ok);
    CHECK(p.token_ok);
    CHECK_INT(parse(VALID "&Passed=N", &p), CB_MALFORMED);
    CHECK_INT(p.passed, 0);
    CHECK(p.tx_ok);
    CHECK_INT(parse(VALID "&SUBCODE=201", &p), CB_MALFORMED);
    CHECK(!p.sub_ok);
    CHECK_INT(parse(VALID "&callbacktoken=" TOKEN16, &p), CB_MALFORMED);
    CHECK(!p.token_ok);
    CHECK(p.reason != NULL);
}

/* Even a duplicate with an empty value or without '=' counts. */
static void duplicate_param_empty_value(void)
{
    CHECK_INT(verdict(VALID "&passed="), CB_MALFORMED);
    CHECK_INT(verdict(VALID "&passed"), CB_MALFORMED);
}

/* ---- missing parameters ---- */

static void missing_transaction_id(void)
{
    struct cb_params p;
    CHECK_INT(parse("passed=Y&subCode=1&callbackToken=" TOKEN16, &p), CB_MALFORMED);
    CHECK(p.reason != NULL);
    /* What was there is kept for the audit row. */
    CHECK_INT(p.passed, 'Y');
    CHECK(p.sub_ok);
    CHECK(p.token_ok);
    CHECK(!p.tx_ok);
}

static void missing_passed(void)
{
    struct cb_params p;
    CHECK_INT(parse("transactionId=t&subCode=1&callbackToken=" TOKEN16, &p), CB_MALFORMED);
    CHECK(p.tx_ok);
    CHECK_STR(p.transaction_id, "t");
    CHECK_INT(p.passed, 0);
}

static void missing_sub_code(void)
{
    struct cb_params p;
    CHECK_INT(parse("transactionId=t&passed=N&callbackToken=" TOKEN16, &p), CB_MALFORMED);
    CHECK(p.tx_ok);
    CHECK(!p.sub_ok);
}

static void missing_token(void)
{
    struct cb_params p;
    CHECK_INT(parse("transactionId=t&passed=N&subCode=1", &p), CB_MALFORMED);
    CHECK(p.tx_ok);
    CHECK(!p.token_ok);
}

/* One known parameter alone is not a probe. */
static void single_known_param(void)
{
    CHECK_INT(verdict("passed=Y"), CB_MALFORMED);
    CHECK_INT(verdict("foo=1&subCode=1"), CB_MALFORMED);
}

/* ---- passed ---- */

static void passed_not_y_or_n(void)
{
    const char *bad[] = {"y", "n", "YES", "NO", "", "1", "true", "YY", "Y%20", "%20Y", "%00"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct cb_params p;
        if (parse(query4("t", bad[i], "1", TOKEN16), &p) != CB_MALFORMED || p.passed != 0) {
            fprintf(stderr, "passed=%s was accepted\n", bad[i]);
            test_failures++;
        }
    }
}

static void passed_percent_encoded(void)
{
    struct cb_params p;
    CHECK_INT(parse(query4("t", "%59", "1", TOKEN16), &p), CB_VALID);
    CHECK_INT(p.passed, 'Y');
}

/* ---- subCode ---- */

static void sub_code_lengths(void)
{
    struct cb_params p;
    CHECK_INT(parse(query4("t", "Y", "", TOKEN16), &p), CB_MALFORMED);
    CHECK(!p.sub_ok);
    CHECK_INT(parse(query4("t", "Y", "1", TOKEN16), &p), CB_VALID);
    CHECK_INT(parse(query4("t", "Y", repeat('S', 16), TOKEN16), &p), CB_VALID);
    CHECK_STR(p.sub_code, repeat('S', 16));
    CHECK_INT(parse(query4("t", "Y", repeat('S', 17), TOKEN16), &p), CB_MALFORMED);
    CHECK(!p.sub_ok);
    CHECK(p.tx_ok);
}

static void sub_code_bad_chars(void)
{
    const char *bad[] = {"a%20b", "a+b", "a/b", "a:b", "a%2Fb", "%C3%A9", "a%00", "a*b", "a~b"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct cb_params p;
        if (parse(query4("t", "Y", bad[i], TOKEN16), &p) != CB_MALFORMED || p.sub_ok) {
            fprintf(stderr, "subCode=%s was accepted\n", bad[i]);
            test_failures++;
        }
    }
}

/* ---- transactionId ---- */

static void transaction_id_lengths(void)
{
    struct cb_params p;
    CHECK_INT(parse(query4("", "Y", "1", TOKEN16), &p), CB_MALFORMED);
    CHECK(!p.tx_ok);
    CHECK_INT(parse(query4(repeat('t', 128), "Y", "1", TOKEN16), &p), CB_VALID);
    CHECK_STR(p.transaction_id, repeat('t', 128));
    CHECK_INT(parse(query4(repeat('t', 129), "Y", "1", TOKEN16), &p), CB_MALFORMED);
    CHECK(!p.tx_ok);
    CHECK(p.sub_ok);
    /* Far too long, not only one over. */
    CHECK_INT(parse(query4(repeat('t', 500), "Y", "1", TOKEN16), &p), CB_MALFORMED);
    CHECK(!p.tx_ok);
}

/* The length limit applies to the decoded value: 128 encoded "A"s are fine. */
static void transaction_id_length_after_decoding(void)
{
    char tx[128 * 3 + 1] = "";
    for (int i = 0; i < 128; i++) strcat(tx, "%41");
    struct cb_params p;
    CHECK_INT(parse(query4(tx, "Y", "1", TOKEN16), &p), CB_VALID);
    CHECK_STR(p.transaction_id, repeat('A', 128));
}

static void transaction_id_bad_chars(void)
{
    const char *bad[] = {"a.b",       "a%20b", "a+b", "a/b",  "a%2F..",
                         "%E4%B8%AD", "a%00b", "a=b", "a%0Ab"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct cb_params p;
        if (parse(query4(bad[i], "Y", "1", TOKEN16), &p) != CB_MALFORMED || p.tx_ok) {
            fprintf(stderr, "transactionId=%s was accepted\n", bad[i]);
            test_failures++;
        }
    }
}

/* ---- callbackToken ---- */

static void token_lengths(void)
{
    struct cb_params p;
    CHECK_INT(parse(query4("t", "Y", "1", repeat('k', 15)), &p), CB_MALFORMED);
    CHECK(!p.token_ok);
    CHECK_INT(parse(query4("t", "Y", "1", repeat('k', 16)), &p), CB_VALID);
    CHECK_STR(digest_hex(p.token_sha256), sha256_of(repeat('k', 16)));
    CHECK_INT(parse(query4("t", "Y", "1", repeat('k', 256)), &p), CB_VALID);
    CHECK_STR(digest_hex(p.token_sha256), sha256_of(repeat('k', 256)));
    CHECK_INT(parse(query4("t", "Y", "1", repeat('k', 257)), &p), CB_MALFORMED);
    CHECK(!p.token_ok);
    CHECK(p.tx_ok);
}

static void token_space_or_control(void)
{
    const char *bad[] = {"0123456789%20abcdef", "0123456789%09abcdef",  "0123456789%7Fabcdef",
                         "0123456789%00abcdef", "0123456789%0D%0Aabcd", "0123456789%FFabcdef"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct cb_params p;
        if (parse(query4("t", "Y", "1", bad[i]), &p) != CB_MALFORMED || p.token_ok) {
            fprintf(stderr, "callbackToken=%s was accepted\n", bad[i]);
            test_failures++;
        }
    }
}

/* Every printable ASCII byte but space is allowed in a token. */
static void token_printable_punctuation(void)
{
    struct cb_params p;
    const char *tok = "!\"$'()*,./:;<>@[\\]^`{|}~";
    char enc[256] = "";
    for (const char *c = tok; *c; c++) {
        char e[4];
        snprintf(e, sizeof e, "%%%02X", (unsigned char)*c);
        strcat(enc, e);
    }
    CHECK_INT(parse(query4("t", "Y", "1", enc), &p), CB_VALID);
    CHECK_STR(digest_hex(p.token_sha256), sha256_of(tok));
}

/* The digest is of the decoded token. */
static void token_digest_of_decoded(void)
{
    struct cb_params p;
    CHECK_INT(parse(query4("t", "Y", "1", "%41bcdefghijklmnop%3D"), &p), CB_VALID);
    CHECK_STR(digest_hex(p.token_sha256), sha256_of("Abcdefghijklmnop="));
}

/* Decoded once: "%2541" is "%41", not "A". */
static void percent_decoded_once(void)
{
    struct cb_params p;
    CHECK_INT(parse(query4("t", "Y", "1", "%2541bcdefghijklmnop"), &p), CB_VALID);
    CHECK_STR(digest_hex(p.token_sha256), sha256_of("%41bcdefghijklmnop"));
    /* In a transactionId, "%2541" decodes to "%41", whose '%' is not allowed. */
    CHECK_INT(parse(query4("%2541", "Y", "1", TOKEN16), &p), CB_MALFORMED);
    CHECK(!p.tx_ok);
}

/* '+' is a plus, not a space: the digest is of the literal '+'. */
static void plus_kept_literally(void)
{
    struct cb_params p;
    CHECK_INT(parse(query4("t", "Y", "1", "abc+def+ghijklmnop"), &p), CB_VALID);
    CHECK_STR(digest_hex(p.token_sha256), sha256_of("abc+def+ghijklmnop"));
    CHECK(strcmp(digest_hex(p.token_sha256), sha256_of("abc def ghijklmnop")) != 0);
    /* And a '+' in a subCode is therefore a bad character, not a space. */
    CHECK_INT(parse(query4("t", "Y", "a+b", TOKEN16), &p), CB_MALFORMED);
}

/* ---- percent-encoding ---- */

static void bad_percent_in_known_value(void)
{
    const char *bad[] = {"%", "%4", "%zz", "%g1", "a%", "a%2"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char tok[64];
        snprintf(tok, sizeof tok, TOKEN16 "%s", bad[i]);
        if (verdict(query4(bad[i], "Y", "1", TOKEN16)) != CB_MALFORMED ||
            verdict(query4("t", bad[i], "1", TOKEN16)) != CB_MALFORMED ||
            verdict(query4("t", "Y", bad[i], TOKEN16)) != CB_MALFORMED ||
            verdict(query4("t", "Y", "1", tok)) != CB_MALFORMED) {
            fprintf(stderr, "bad encoding '%s' in a value was accepted\n", bad[i]);
            test_failures++;
        }
    }
}

static void bad_percent_in_known_name(void)
{
    CHECK_INT(verdict("transactionId%=t&passed=Y&subCode=1&callbackToken=" TOKEN16), CB_MALFORMED);
    CHECK_INT(verdict(VALID "&%zzpassed=Y"), CB_MALFORMED);
    CHECK_INT(verdict("passed%4=Y"), CB_MALFORMED);
    /* A well-formed escape in a name is simply decoded: "pass%4Ed" is "passNd". */
    CHECK_INT(verdict("pass%4Ed=Y"), CB_PROBE);
}

/* Bad encoding anywhere is malformed, even in a parameter that is ignored,
 * and even when nothing else is present. */
static void bad_percent_in_unknown_param(void)
{
    CHECK_INT(verdict(VALID "&utm=%zz"), CB_MALFORMED);
    CHECK_INT(verdict(VALID "&utm%=1"), CB_MALFORMED);
    CHECK_INT(verdict("foo=%"), CB_MALFORMED);
    CHECK_INT(verdict("foo=%4"), CB_MALFORMED);
    CHECK_INT(verdict("f%zzoo=1"), CB_MALFORMED);
    /* Long unknown names and values are fine when well-encoded. */
    char q[700];
    snprintf(q, sizeof q, "%s=%s&" VALID, repeat('n', 300), repeat('v', 300));
    CHECK_INT(verdict(q), CB_VALID);
}

/* Hex digits in either case. */
static void percent_hex_case(void)
{
    struct cb_params p;
    CHECK_INT(parse(query4("t", "Y", "1", "%7e%7E0123456789abcd"), &p), CB_VALID);
    CHECK_STR(digest_hex(p.token_sha256), sha256_of("~~0123456789abcd"));
}

/* ---- fields kept for the audit row when the whole is malformed ---- */

static void fields_kept_when_malformed(void)
{
    struct cb_params p;
    CHECK_INT(parse(query4("tx9", "X", "ok.1", TOKEN16), &p), CB_MALFORMED);
    CHECK(p.tx_ok);
    CHECK_STR(p.transaction_id, "tx9");
    CHECK(p.sub_ok);
    CHECK_STR(p.sub_code, "ok.1");
    CHECK(p.token_ok);
    CHECK_STR(digest_hex(p.token_sha256), sha256_of(TOKEN16));
    CHECK_INT(p.passed, 0);
    CHECK(p.reason != NULL);

    CHECK_INT(parse(query4("bad!", "N", "bad/", "short"), &p), CB_MALFORMED);
    CHECK(!p.tx_ok);
    CHECK(!p.sub_ok);
    CHECK(!p.token_ok);
    CHECK_INT(p.passed, 'N');
    /* A field that was not well-formed leaves nothing behind. */
    CHECK_STR(p.transaction_id, "");
    CHECK_STR(p.sub_code, "");
}

/* The parser starts from a clean slate every time. */
static void params_reset_between_calls(void)
{
    struct cb_params p;
    CHECK_INT(parse(VALID, &p), CB_VALID);
    CHECK_INT(parse("foo=1", &p), CB_PROBE);
    CHECK(!p.tx_ok && !p.sub_ok && !p.token_ok);
    CHECK_INT(p.passed, 0);
    CHECK_STR(p.transaction_id, "");
}

/* Only len bytes are parsed. */
static void uses_len(void)
{
    struct cb_params p;
    const char *q = VALID "&passed=N";
    CHECK_INT(cb_query_parse(q, strlen(VALID), &p), CB_VALID);
    CHECK_INT(cb_query_parse(q, strlen("transactionId=tx"), &p), CB_MALFORMED);
    CHECK_STR(p.transaction_id, "tx");
}

/* ---- the shared character rules ---- */

static void valid_transaction_id_helper(void)
{
    CHECK(cb_valid_transaction_id("a", 1));
    CHECK(cb_valid_transaction_id("A-z_0-9", 7));
    CHECK(cb_valid_transaction_id(repeat('x', 128), 128));
    CHECK(!cb_valid_transaction_id("", 0));
    CHECK(!cb_valid_transaction_id(repeat('x', 129), 129));
    CHECK(!cb_valid_transaction_id("a.b", 3));
    CHECK(!cb_valid_transaction_id("a b", 3));
    CHECK(!cb_valid_transaction_id("a\0b", 3));
    CHECK(!cb_valid_transaction_id("\xc3\xa9", 2));
    /* Only len bytes count. */
    CHECK(cb_valid_transaction_id("ab.", 2));
}

static void valid_sub_code_helper(void)
{
    CHECK(cb_valid_sub_code("200", 3));
    CHECK(cb_valid_sub_code("a.B-c_9", 7));
    CHECK(cb_valid_sub_code(repeat('s', 16), 16));
    CHECK(!cb_valid_sub_code("", 0));
    CHECK(!cb_valid_sub_code(repeat('s', 17), 17));
    CHECK(!cb_valid_sub_code("a/b", 3));
    CHECK(!cb_valid_sub_code("a b", 3));
    CHECK(!cb_valid_sub_code("a\0", 2));
    CHECK(!cb_valid_sub_code("\x80", 1));
}

static void valid_token_helper(void)
{
    CHECK(!cb_valid_token(repeat('k', 15), 15));
    CHECK(cb_valid_token(repeat('k', 16), 16));
    CHECK(cb_valid_token(repeat('~', 256), 256));
    CHECK(!cb_valid_token(repeat('k', 257), 257));
    CHECK(cb_valid_token("!!!!!!!!!!!!!!!!", 16));
    CHECK(!cb_valid_token("0123456789 abcde", 16));
    CHECK(!cb_valid_token("0123456789\tabcde", 16));
    CHECK(!cb_valid_token("0123456789\x7f"
                          "abcde",
                          16));
    CHECK(!cb_valid_token("0123456789\x80"
                          "abcde",
                          16));
    CHECK(!cb_valid_token("0123456789\0abcde", 16));
}

/* The table keeps one TEST() per line: CMake reads them from here. */
/* clang-format off */
#define TEST(name) {#name, name}
static const struct test_case cases[] = {
    TEST(probe_empty),
    TEST(probe_unknown_only),
    TEST(valid_callback),
    TEST(valid_passed_n),
    TEST(valid_any_order),
    TEST(names_case_insensitive),
    TEST(values_case_kept),
    TEST(unknown_params_ignored),
    TEST(encoded_name_recognised),
    TEST(duplicate_param_malformed),
    TEST(duplicate_param_other_case),
    TEST(duplicate_param_not_kept),
    TEST(duplicate_param_empty_value),
    TEST(missing_transaction_id),
    TEST(missing_passed),
    TEST(missing_sub_code),
    TEST(missing_token),
    TEST(single_known_param),
    TEST(passed_not_y_or_n),
    TEST(passed_percent_encoded),
    TEST(sub_code_lengths),
    TEST(sub_code_bad_chars),
    TEST(transaction_id_lengths),
    TEST(transaction_id_length_after_decoding),
    TEST(transaction_id_bad_chars),
    TEST(token_lengths),
    TEST(token_space_or_control),
    TEST(token_printable_punctuation),
    TEST(token_digest_of_decoded),
    TEST(percent_decoded_once),
    TEST(plus_kept_literally),
    TEST(bad_percent_in_known_value),
    TEST(bad_percent_in_known_name),
    TEST(bad_percent_in_unknown_param),
    TEST(percent_hex_case),
    TEST(fields_kept_when_malformed),
    TEST(params_reset_between_calls),
    TEST(uses_len),
    TEST(valid_transaction_id_helper),
    TEST(valid_sub_code_helper),
    TEST(valid_token_helper),
};
int main(int argc, char **argv) { return test_main(argc, argv, cases, sizeof cases / sizeof cases[0]); }
/* clang-format on */
