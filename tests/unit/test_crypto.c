/* SHA-256, hex, HMAC-SHA256, the constant-time comparison and the token
 * generator, checked against published known answers. */
#include <string.h>

#include "crypto.h"
#include "test.h"

static const char *sha256_hex(const void *data, size_t len)
{
    static char hex[SHA256_HEX_LEN + 1];
    uint8_t d[SHA256_LEN];
    crypto_sha256(data, len, d);
    crypto_hex(d, sizeof d, hex);
    return hex;
}

/* FIPS 180-2 appendix and the well-known digest of the empty string. */
static void sha256_empty(void)
{
    CHECK_STR(sha256_hex("", 0),
              "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

static void sha256_abc(void)
{
    CHECK_STR(sha256_hex("abc", 3),
              "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

/* FIPS 180-2 appendix B.2: the two-block message. */
static void sha256_two_blocks(void)
{
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    CHECK_STR(sha256_hex(m, strlen(m)),
              "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

/* The length is honoured: bytes after len, and embedded NULs, matter. */
static void sha256_uses_len_not_nul(void)
{
    CHECK_STR(sha256_hex("abcdef", 3),
              "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    char a[65], b[65];
    snprintf(a, sizeof a, "%s", sha256_hex("a\0b", 3));
    snprintf(b, sizeof b, "%s", sha256_hex("a\0c", 3));
    CHECK(strcmp(a, b) != 0);
}

static void hex_bytes(void)
{
    const uint8_t in[] = {0x00, 0x0f, 0xa5, 0xff, 0x10};
    char out[2 * sizeof in + 1];
    memset(out, 'X', sizeof out);
    crypto_hex(in, sizeof in, out);
    CHECK_STR(out, "000fa5ff10");
}

static void hex_empty(void)
{
    char out[1] = {'X'};
    crypto_hex((const uint8_t *)"", 0, out);
    CHECK_STR(out, "");
}

/* RFC 4231 section 4.3, test case 2: key "Jefe". */
static void hmac_rfc4231_case2(void)
{
    uint8_t mac[SHA256_LEN];
    char hex[SHA256_HEX_LEN + 1];
    const char *data = "what do ya want for nothing?";
    CHECK_INT(crypto_hmac_sha256("Jefe", 4, data, strlen(data), mac), 0);
    crypto_hex(mac, sizeof mac, hex);
    CHECK_STR(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

/* RFC 4231 section 4.2, test case 1: a 20-byte key of 0x0b. */
static void hmac_rfc4231_case1(void)
{
    uint8_t key[20], mac[SHA256_LEN];
    char hex[SHA256_HEX_LEN + 1];
    memset(key, 0x0b, sizeof key);
    CHECK_INT(crypto_hmac_sha256(key, sizeof key, "Hi There", 8, mac), 0);
    crypto_hex(mac, sizeof mac, hex);
    CHECK_STR(hex, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
}

static void secret_equal_same(void)
{
    CHECK(crypto_secret_equal("correct horse", 13, "correct horse", 13));
    CHECK(crypto_secret_equal("", 0, "", 0));
}

static void secret_equal_different(void)
{
    CHECK(!crypto_secret_equal("correct horse", 13, "correct horsf", 13));
    CHECK(!crypto_secret_equal("Correct horse", 13, "correct horse", 13));
}

static void secret_equal_different_lengths(void)
{
    /* A prefix is not equal, in either order. */
    CHECK(!crypto_secret_equal("correct horse", 13, "correct horse battery", 21));
    CHECK(!crypto_secret_equal("correct horse battery", 21, "correct horse", 13));
    CHECK(!crypto_secret_equal("", 0, "x", 1));
    /* Only len bytes count. */
    CHECK(crypto_secret_equal("abcX", 3, "abcY", 3));
}

static bool base64url_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

static void random_token_length_and_charset(void)
{
    char tok[64];
    memset(tok, '=', sizeof tok);
    CHECK_INT(crypto_random_token(16, tok, sizeof tok), 0);
    CHECK_INT(strlen(tok), 22);
    for (size_t i = 0; i < strlen(tok); i++)
        if (!base64url_char(tok[i])) {
            fprintf(stderr, "byte %zu of '%s' is not base64url\n", i, tok);
            test_failures++;
        }
}

/* 3 bytes are exactly 4 characters; 1 byte is 2; 32 bytes are 43. */
static void random_token_other_lengths(void)
{
    char tok[64];
    CHECK_INT(crypto_random_token(3, tok, sizeof tok), 0);
    CHECK_INT(strlen(tok), 4);
    CHECK_INT(crypto_random_token(1, tok, sizeof tok), 0);
    CHECK_INT(strlen(tok), 2);
    CHECK_INT(crypto_random_token(32, tok, sizeof tok), 0);
    CHECK_INT(strlen(tok), 43);
}

/* The documented buffer size (4*nbytes/3+2) is enough; one byte fewer than
 * the characters plus NUL is refused rather than overflowed. */
static void random_token_buffer_too_small(void)
{
    char tok[64];
    memset(tok, 'Z', sizeof tok);
    CHECK_INT(crypto_random_token(16, tok, 4 * 16 / 3 + 2), 0);
    CHECK_INT(strlen(tok), 22);
    memset(tok, 'Z', sizeof tok);
    CHECK_INT(crypto_random_token(16, tok, 22), IDV_EINVAL);
    CHECK_INT(tok[0], 'Z');
    CHECK_INT(crypto_random_token(65, tok, sizeof tok), IDV_EINVAL);
}

static void random_tokens_differ(void)
{
    char a[32], b[32];
    CHECK_INT(crypto_random_token(16, a, sizeof a), 0);
    CHECK_INT(crypto_random_token(16, b, sizeof b), 0);
    if (strcmp(a, b) == 0) {
        fprintf(stderr, "two random tokens are equal: %s\n", a);
        test_failures++;
    }
}

/* The table keeps one TEST() per line: CMake reads them from here. */
/* clang-format off */
#define TEST(name) {#name, name}
static const struct test_case cases[] = {
    TEST(sha256_empty),
    TEST(sha256_abc),
    TEST(sha256_two_blocks),
    TEST(sha256_uses_len_not_nul),
    TEST(hex_bytes),
    TEST(hex_empty),
    TEST(hmac_rfc4231_case2),
    TEST(hmac_rfc4231_case1),
    TEST(secret_equal_same),
    TEST(secret_equal_different),
    TEST(secret_equal_different_lengths),
    TEST(random_token_length_and_charset),
    TEST(random_token_other_lengths),
    TEST(random_token_buffer_too_small),
    TEST(random_tokens_differ),
};
int main(int argc, char **argv) { return test_main(argc, argv, cases, sizeof cases / sizeof cases[0]); }
/* clang-format on */
