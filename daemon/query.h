#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto.h"

#define CB_TXID_MAX    128
#define CB_SUBCODE_MAX 16
#define CB_TOKEN_MIN   16
#define CB_TOKEN_MAX   256

/* What the callback's query string says. */
enum cb_verdict {
    CB_PROBE = 0, /* none of the four parameters: a reachability probe */
    CB_VALID,     /* all four present and well-formed */
    CB_MALFORMED, /* anything else */
};

/* The parsed parameters. Fields that were present and well-formed are kept even
 * when the whole is malformed, so the audit row can say what was seen. The token
 * itself is never kept: only its SHA-256 digest. */
struct cb_params {
    char transaction_id[CB_TXID_MAX + 1];
    char sub_code[CB_SUBCODE_MAX + 1];
    char passed; /* 'Y', 'N', or 0 */
    bool tx_ok, sub_ok, token_ok;
    uint8_t token_sha256[SHA256_LEN];
    const char *reason; /* static text: why it is malformed, for logs */
};

/* Parses the query string (without the '?') of a callback: names matched
 * case-insensitively, a known name twice is malformed, unknown names ignored,
 * values percent-decoded once ('+' is kept as '+'), bad percent-encoding
 * anywhere is malformed. Pure: no allocation, no I/O. */
enum cb_verdict cb_query_parse(const char *q, size_t len, struct cb_params *out);

/* Character rules shared with the admin API (register). */
bool cb_valid_transaction_id(const char *s, size_t len);
bool cb_valid_sub_code(const char *s, size_t len);
bool cb_valid_token(const char *s, size_t len);
