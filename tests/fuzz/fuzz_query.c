/* libFuzzer target: the callback's query string (the bytes after '?') through
 * cb_query_parse(), checked against a reference reading of the contract that
 * shares no code with daemon/query.c: split at '&', then at the first '=',
 * percent-decode every name and value once into unbounded buffers, match the
 * four names case-insensitively. The verdict, which fields were kept, their
 * values and the token's digest must agree, and whatever the parser keeps must
 * pass the cb_valid_* rules the admin API shares. */
#include <stdbool.h>
#include <string.h>
#include <strings.h>

#include "crypto.h"
#include "fuzz.h"
#include "query.h"

enum { R_TX, R_PASSED, R_SUB, R_TOKEN, R_COUNT };
static const char *const names[R_COUNT] = {"transactionId", "passed", "subCode", "callbackToken"};

struct ref {
    enum cb_verdict v;
    unsigned count[R_COUNT];
    bool ok[R_COUNT]; /* present once, and well-formed */
    char tx[CB_TXID_MAX + 1], sub[CB_SUBCODE_MAX + 1], passed;
    uint8_t token_sha256[SHA256_LEN];
};

static int hex(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Decodes s[0..n) into out (n bytes suffice); -1 on a '%' not followed by
 * two hex digits. */
static long decode(const char *s, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            out[o++] = s[i];
            continue;
        }
        if (n - i < 3 || hex((unsigned char)s[i + 1]) < 0 || hex((unsigned char)s[i + 2]) < 0)
            return -1;
        out[o++] = (char)(hex((unsigned char)s[i + 1]) * 16 + hex((unsigned char)s[i + 2]));
        i += 2;
    }
    return (long)o;
}

static bool all_in(const char *s, size_t n, const char *extra)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              (c != 0 && strchr(extra, c))))
            return false;
    }
    return true;
}

/* The contract's character rules, written out again. */
static bool value_ok(int which, const char *s, size_t n)
{
    switch (which) {
    case R_TX: return n >= 1 && n <= 128 && all_in(s, n, "_-");
    case R_PASSED: return n == 1 && (s[0] == 'Y' || s[0] == 'N');
    case R_SUB: return n >= 1 && n <= 16 && all_in(s, n, "_.-");
    default:
        if (n < 16 || n > 256) return false;
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e) return false;
        return true;
    }
}

static void reference(const char *q, size_t len, struct ref *r, char *scratch)
{
    memset(r, 0, sizeof *r);
    bool bad = false;
    const char *end = q + len;
    for (const char *part = q; part <= end;) {
        const char *amp = memchr(part, '&', (size_t)(end - part));
        const char *pend = amp ? amp : end;
        if (pend > part) {
            const char *eq = memchr(part, '=', (size_t)(pend - part));
            const char *nend = eq ? eq : pend;
            const char *val = eq ? eq + 1 : pend;
            long nl = decode(part, (size_t)(nend - part), scratch);
            int which = -1;
            for (int i = 0; nl >= 0 && i < R_COUNT; i++)
                if ((size_t)nl == strlen(names[i]) &&
                    strncasecmp(scratch, names[i], (size_t)nl) == 0)
                    which = i;
            long vl = decode(val, (size_t)(pend - val), scratch);
            if (nl < 0 || vl < 0) bad = true;
            if (which >= 0 && ++r->count[which] == 1 && vl >= 0 &&
                value_ok(which, scratch, (size_t)vl)) {
                r->ok[which] = true;
                if (which == R_TX) memcpy(r->tx, scratch, (size_t)vl);
                if (which == R_SUB) memcpy(r->sub, scratch, (size_t)vl);
                if (which == R_PASSED) r->passed = scratch[0];
                if (which == R_TOKEN) crypto_sha256(scratch, (size_t)vl, r->token_sha256);
            }
        }
        if (!amp) break;
        part = amp + 1;
    }
    bool any = false, all = true;
    for (int i = 0; i < R_COUNT; i++) {
        if (r->count[i] > 1) r->ok[i] = false; /* a repeated name poisons what was seen */
        any |= r->count[i] > 0;
        all &= r->ok[i];
    }
    if (bad || (any && !all))
        r->v = CB_MALFORMED;
    else
        r->v = any ? CB_VALID : CB_PROBE;
}

static char *scratch;
static size_t scratch_cap;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *q = (const char *)data;
    struct cb_params p;
    memset(&p, 0x5a, sizeof p); /* the parser must set every field itself */
    enum cb_verdict v = cb_query_parse(q, size, &p);
    FUZZ_CHECK(v == CB_PROBE || v == CB_VALID || v == CB_MALFORMED);

    /* What is kept is well-formed, whatever the verdict. */
    size_t tl = strnlen(p.transaction_id, sizeof p.transaction_id);
    size_t sl = strnlen(p.sub_code, sizeof p.sub_code);
    FUZZ_CHECK(tl < sizeof p.transaction_id && sl < sizeof p.sub_code);
    if (p.tx_ok) FUZZ_CHECK(cb_valid_transaction_id(p.transaction_id, tl));
    if (p.sub_ok) FUZZ_CHECK(cb_valid_sub_code(p.sub_code, sl));
    FUZZ_CHECK(p.passed == 0 || p.passed == 'Y' || p.passed == 'N');
    if (v == CB_VALID) FUZZ_CHECK(p.tx_ok && p.sub_ok && p.token_ok && p.passed != 0);
    if (v == CB_PROBE) FUZZ_CHECK(!p.tx_ok && !p.sub_ok && !p.token_ok && p.passed == 0);
    FUZZ_CHECK((v == CB_MALFORMED) == (p.reason != NULL));

    /* The reference agrees. */
    if (scratch_cap < size + 1) {
        free(scratch);
        scratch_cap = size + 1;
        scratch = malloc(scratch_cap);
        FUZZ_CHECK(scratch != NULL);
    }
    struct ref r;
    reference(q, size, &r, scratch);
    FUZZ_CHECK_EQ(v, r.v);
    FUZZ_CHECK_EQ(p.tx_ok, r.ok[R_TX]);
    FUZZ_CHECK_EQ(p.sub_ok, r.ok[R_SUB]);
    FUZZ_CHECK_EQ(p.token_ok, r.ok[R_TOKEN]);
    FUZZ_CHECK_EQ(p.passed, r.ok[R_PASSED] ? r.passed : 0);
    if (p.tx_ok) FUZZ_CHECK(strcmp(p.transaction_id, r.tx) == 0);
    if (p.sub_ok) FUZZ_CHECK(strcmp(p.sub_code, r.sub) == 0);
    if (p.token_ok) FUZZ_CHECK(memcmp(p.token_sha256, r.token_sha256, SHA256_LEN) == 0);

    /* Pure: the same answer again. */
    struct cb_params again;
    memset(&again, 0x5a, sizeof again);
    FUZZ_CHECK_EQ(cb_query_parse(q, size, &again), v);
    FUZZ_CHECK(memcmp(&again, &p, sizeof p) == 0);
    return 0;
}
