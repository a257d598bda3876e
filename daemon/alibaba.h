#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include "crypto.h"
#include "err.h"
#include "strbuf.h"

/* Alibaba Cloud ID Verification (Cloudauth-intl 2022-08-09): request signing
 * (ACS3-HMAC-SHA256), the Initialize parameter rules of the seed, and the
 * response envelope. Pure: no I/O. */

#define ALIBABA_API_VERSION "2022-08-09"

/* A name and value, both NUL-terminated. */
struct kv {
    const char *k;
    const char *v;
};

/* Appends s percent-encoded per RFC 3986 as Alibaba's V3 signature wants it:
 * A-Z a-z 0-9 - _ . ~ kept, every other byte %XX (upper-case hex), so a space
 * is %20 and '*' is %2A. */
void alibaba_pct_encode(struct strbuf *out, const char *s, size_t len);
/* Builds the canonical query string: parameters sorted by name (byte order),
 * then value; each encoded, joined as name=value with '&'. The same string is
 * sent in the URL so that what is signed is what arrives. Returns a malloc'd
 * string or NULL when out of memory. */
char *alibaba_canonical_query(const struct kv *params, size_t n);

/* Alibaba's V3 rule for which request headers are signed: every one the
 * request carries among host, content-type and x-acs-* (any case). */
bool alibaba_header_signed(const char *name);

/* Formats x-acs-date (UTC, YYYY-MM-DDThh:mm:ssZ) into out[32]. Returns 0 or
 * IDV_EINVAL. */
int alibaba_date(time_t now, char out[32]) IDV_MUSTCHECK;

/* The signature of a request. */
struct alibaba_signed {
    char signed_headers[256]; /* "host;x-acs-action;..." */
    char signature[SHA256_HEX_LEN + 1];
    char authorization[640]; /* the Authorization header value */
};

/* Signs a request exactly as it will be sent: method, path, canonical query,
 * every header the request carries (names as sent, in any order and case;
 * the ones alibaba_header_signed() picks are signed, lower-cased and sorted)
 * and the hex SHA-256 of the body. The caller sends these headers, and no
 * other header of a signed kind, plus Authorization. Returns 0, or IDV_EINVAL
 * when a signed header is given twice or a result does not fit. The secret is
 * only read. */
int alibaba_sign(const char *access_key_id, const char *secret, const char *method,
                 const char *path, const char *canonical_query, const struct kv *headers,
                 size_t nheaders, const char *body_sha_hex,
                 struct alibaba_signed *out) IDV_MUSTCHECK;

/* The core of the signature, exposed for the known-answer test: signs with
 * explicit header values (names lower case, sorted by the caller). */
int alibaba_signature(const char *secret, const char *method, const char *path,
                      const char *canonical_query, const struct kv *headers, size_t nheaders,
                      const char *body_sha_hex, char sig_hex[SHA256_HEX_LEN + 1],
                      char *signed_headers, size_t sh_len) IDV_MUSTCHECK;

/* ---- Initialize parameters ------------------------------------------------ */

enum param_check {
    PC_BIZ_ID,     /* 1-32 letters and digits */
    PC_USER_ID,    /* 1-128 bytes, no control characters */
    PC_JSON,       /* a string holding JSON, passed on byte for byte */
    PC_HTTP_URL,   /* http(s)://host... */
    PC_SCENE_CODE, /* 1-10 of [A-Za-z0-9_] */
    PC_ENUM,       /* one of the listed values */
};

/* One Initialize request parameter: its admin (lower camel case) and upstream
 * names, whether required, and its rule. The table is the seed, as data. */
struct param_rule {
    const char *json_name;
    const char *api_name;
    bool required;
    enum param_check check;
    const char *const *values; /* PC_ENUM: NULL-terminated */
};
extern const struct param_rule alibaba_initialize_params[];
extern const size_t alibaba_initialize_params_count;

/* Checks one value against its rule. */
bool alibaba_param_valid(const struct param_rule *r, const char *v, size_t len);

/* ---- responses -------------------------------------------------------------- */

/* The envelope of an answer: RequestId, Code, Message (owned strings), and the
 * Result object kept as JSON text. */
struct alibaba_reply {
    char *request_id, *code, *message;
    char *result_json; /* "Result" serialized, or NULL */
};
/* Parses a response body; returns 0, or IDV_EPARSE when it is not a JSON object
 * with a string Code. */
int alibaba_reply_parse(const char *body, size_t len, struct alibaba_reply *out) IDV_MUSTCHECK;
void alibaba_reply_free(struct alibaba_reply *r);
