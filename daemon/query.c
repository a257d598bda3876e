#include "query.h"

#include <openssl/crypto.h>
#include <string.h>
#include <strings.h>

enum { P_TX, P_PASSED, P_SUB, P_TOKEN, P_COUNT };
static const char *const param_names[P_COUNT] = {"transactionid", "passed", "subcode",
                                                 "callbacktoken"};

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decodes src into dst (capacity cap). Returns the decoded length, -1 on
 * bad encoding, or cap+1 (without writing past cap) when the result is longer. */
static long pct_decode(const char *src, size_t len, char *dst, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)src[i];
        if (c == '%') {
            if (i + 2 >= len) return -1;
            int h = hexval((unsigned char)src[i + 1]), l = hexval((unsigned char)src[i + 2]);
            if (h < 0 || l < 0) return -1;
            c = (unsigned char)(h * 16 + l);
            i += 2;
        }
        if (o < cap) dst[o] = (char)c;
        o++;
    }
    return o > cap ? (long)cap + 1 : (long)o;
}

static bool in_set(const char *s, size_t len, const char *extra)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  (c && strchr(extra, c));
        if (!ok) return false;
    }
    return true;
}

bool cb_valid_transaction_id(const char *s, size_t len)
{
    return len >= 1 && len <= CB_TXID_MAX && in_set(s, len, "_-");
}

bool cb_valid_sub_code(const char *s, size_t len)
{
    return len >= 1 && len <= CB_SUBCODE_MAX && in_set(s, len, "_.-");
}

bool cb_valid_token(const char *s, size_t len)
{
    if (len < CB_TOKEN_MIN || len > CB_TOKEN_MAX) return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e) return false;
    return true;
}

enum cb_verdict cb_query_parse(const char *q, size_t len, struct cb_params *out)
{
    memset(out, 0, sizeof *out);
    bool seen[P_COUNT] = {false};
    bool any = false, malformed = false;
    char token[CB_TOKEN_MAX + 1];
    long token_len = -1;

    size_t i = 0;
    while (i <= len) {
        size_t start = i;
        while (i < len && q[i] != '&') i++;
        size_t plen = i - start;
        const char *part = q + start;
        i++; /* skip '&' (or step past the end) */
        if (plen == 0) continue;

        const char *eq = memchr(part, '=', plen);
        size_t nlen = eq ? (size_t)(eq - part) : plen;
        const char *val = eq ? eq + 1 : part + plen;
        size_t vlen = eq ? plen - nlen - 1 : 0;

        char name[16];
        long dn = pct_decode(part, nlen, name, sizeof name - 1);
        if (dn < 0) {
            malformed = true;
            out->reason = "bad percent-encoding";
            continue;
        }
        int which = -1;
        if ((size_t)dn < sizeof name) {
            name[dn] = '\0';
            for (int p = 0; p < P_COUNT; p++)
                if ((size_t)dn == strlen(param_names[p]) && strcasecmp(name, param_names[p]) == 0)
                    which = p;
        }
        if (which < 0) {
            /* Unknown parameter: ignored, but its encoding must still be valid. */
            char sink[1];
            if (pct_decode(val, vlen, sink, 0) < 0) {
                malformed = true;
                out->reason = "bad percent-encoding";
            }
            continue;
        }
        any = true;
        if (seen[which]) {
            malformed = true;
            out->reason = "parameter given twice";
            /* A repeated parameter poisons what was seen for it. */
            if (which == P_TX) out->tx_ok = false;
            if (which == P_SUB) out->sub_ok = false;
            if (which == P_PASSED) out->passed = 0;
            if (which == P_TOKEN) token_len = -1;
            continue;
        }
        seen[which] = true;
        char buf[CB_TXID_MAX + 1];
        long n;
        switch (which) {
        case P_TX:
            n = pct_decode(val, vlen, buf, CB_TXID_MAX);
            if (n >= 0 && cb_valid_transaction_id(buf, (size_t)n)) {
                memcpy(out->transaction_id, buf, (size_t)n);
                out->transaction_id[n] = '\0';
                out->tx_ok = true;
            } else {
                malformed = true;
                out->reason = n < 0 ? "bad percent-encoding" : "bad transactionId";
            }
            break;
        case P_PASSED:
            n = pct_decode(val, vlen, buf, 1);
            if (n == 1 && (buf[0] == 'Y' || buf[0] == 'N')) {
                out->passed = buf[0];
            } else {
                malformed = true;
                out->reason = n < 0 ? "bad percent-encoding" : "bad passed";
            }
            break;
        case P_SUB:
            n = pct_decode(val, vlen, buf, CB_SUBCODE_MAX);
            if (n >= 0 && cb_valid_sub_code(buf, (size_t)n)) {
                memcpy(out->sub_code, buf, (size_t)n);
                out->sub_code[n] = '\0';
                out->sub_ok = true;
            } else {
                malformed = true;
                out->reason = n < 0 ? "bad percent-encoding" : "bad subCode";
            }
            break;
        case P_TOKEN:
            n = pct_decode(val, vlen, token, CB_TOKEN_MAX);
            if (n >= 0 && cb_valid_token(token, (size_t)n)) {
                token_len = n;
            } else {
                malformed = true;
                out->reason = n < 0 ? "bad percent-encoding" : "bad callbackToken";
            }
            break;
        }
    }

    if (token_len >= 0) {
        crypto_sha256(token, (size_t)token_len, out->token_sha256);
        out->token_ok = true;
    }
    OPENSSL_cleanse(token, sizeof token);

    if (!malformed && !any) return CB_PROBE;
    if (!malformed) {
        for (int p = 0; p < P_COUNT; p++)
            if (!seen[p]) {
                out->reason = "missing parameter";
                return CB_MALFORMED;
            }
        return CB_VALID;
    }
    return CB_MALFORMED;
}
