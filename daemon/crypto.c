#include "crypto.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

void crypto_sha256(const void *data, size_t len, uint8_t out[SHA256_LEN])
{
    /* OpenSSL 3's one-shot SHA256() looks the algorithm up on every call;
     * fetch it once (the event loop is the only thread that hashes). */
    static EVP_MD *md;
    if (!md) md = EVP_MD_fetch(NULL, "SHA256", NULL);
    unsigned int n = 0;
    if (!md || EVP_Digest(data, len, out, &n, md, NULL) != 1 || n != SHA256_LEN)
        SHA256(data, len, out);
}

void crypto_hex(const uint8_t *in, size_t len, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = hex[in[i] >> 4];
        out[2 * i + 1] = hex[in[i] & 15];
    }
    out[2 * len] = '\0';
}

int crypto_hmac_sha256(const void *key, size_t keylen, const void *data, size_t len,
                       uint8_t out[SHA256_LEN])
{
    unsigned int outlen = 0;
    if (keylen > 0x7fffffff) return IDV_EINVAL;
    if (!HMAC(EVP_sha256(), key, (int)keylen, data, len, out, &outlen) || outlen != SHA256_LEN)
        return IDV_EINVAL;
    return 0;
}

bool crypto_secret_equal(const char *a, size_t alen, const char *b, size_t blen)
{
    uint8_t da[SHA256_LEN], db[SHA256_LEN];
    crypto_sha256(a, alen, da);
    crypto_sha256(b, blen, db);
    return CRYPTO_memcmp(da, db, SHA256_LEN) == 0;
}

int crypto_random_token(size_t nbytes, char *out, size_t outlen)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    uint8_t raw[64];
    if (nbytes > sizeof raw || outlen < (nbytes * 4 + 2) / 3 + 1) return IDV_EINVAL;
    if (RAND_bytes(raw, (int)nbytes) != 1) return IDV_EIO;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < nbytes; i++) {
        acc = (acc << 8) | raw[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out[o++] = b64[(acc >> bits) & 63];
        }
    }
    if (bits > 0) out[o++] = b64[(acc << (6 - bits)) & 63];
    out[o] = '\0';
    OPENSSL_cleanse(raw, sizeof raw);
    return 0;
}
