#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define SHA256_LEN     32
#define SHA256_HEX_LEN 64

/* SHA-256 of data into out[32]. */
void crypto_sha256(const void *data, size_t len, uint8_t out[SHA256_LEN]);
/* Lower-case hex of len bytes into out (2*len+1 bytes, NUL-terminated). */
void crypto_hex(const uint8_t *in, size_t len, char *out);
/* HMAC-SHA256 of data with key into out[32]; returns 0 or IDV_EINVAL. */
int crypto_hmac_sha256(const void *key, size_t keylen, const void *data, size_t len,
                       uint8_t out[SHA256_LEN]) IDV_MUSTCHECK;
/* Compares two strings in time that depends only on their lengths' digests: both
 * are hashed first, so neither content nor length leaks through timing. */
bool crypto_secret_equal(const char *a, size_t alen, const char *b, size_t blen);
/* Writes a fresh URL-safe token (base64url of nbytes CSPRNG bytes, no padding)
 * into out, which needs 4*nbytes/3+2 bytes. Returns 0 or IDV_EIO when the
 * CSPRNG fails. */
int crypto_random_token(size_t nbytes, char *out, size_t outlen) IDV_MUSTCHECK;
