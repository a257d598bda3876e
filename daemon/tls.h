#pragma once
#include <stdbool.h>
#include <stddef.h>

#include <openssl/ssl.h>

#include "err.h"

/* TLS on the public listener with OpenSSL over memory BIOs, so that libuv
 * keeps doing the socket I/O: ciphertext read from the socket is fed in,
 * plaintext comes out, and what OpenSSL wants to send is taken out and
 * written by the caller. TLS 1.2 and 1.3 only, AEAD suites only, no
 * renegotiation, no compression. */

/* Builds a server context from PEM files; on failure fills err and returns
 * NULL (the caller keeps its old context on reload). */
SSL_CTX *tls_ctx_new(const char *cert_file, const char *key_file, char *err, size_t errlen);

/* The notAfter time of the context's certificate (the leaf), in seconds since
 * the Unix epoch. Returns 0, or IDV_EINVAL when the context has no
 * certificate or its time cannot be read. */
int tls_ctx_not_after(SSL_CTX *ctx, double *unix_seconds) IDV_MUSTCHECK;

struct tls_conn {
    SSL *ssl;
    BIO *rbio; /* ciphertext from the peer */
    BIO *wbio; /* ciphertext for the peer */
};

enum tls_io {
    TLS_IO_OK = 0, /* progress (plaintext may be 0 bytes) */
    TLS_IO_CLOSED, /* the peer sent close_notify */
    TLS_IO_ERROR,  /* handshake or record error: close the connection */
};

/* Prepares a server-side connection. Returns 0 or IDV_ENOMEM. */
int tls_conn_init(struct tls_conn *t, SSL_CTX *ctx) IDV_MUSTCHECK;
/* Frees the connection's TLS state; safe on a zeroed struct. */
void tls_conn_free(struct tls_conn *t);
/* Gives ciphertext read from the socket. */
bool tls_feed(struct tls_conn *t, const char *data, size_t len);
/* Drives the handshake and decrypts into plain[0..cap); *got is how much.
 * Call again while it returns OK with *got > 0 and there is room. */
enum tls_io tls_read(struct tls_conn *t, char *plain, size_t cap, size_t *got);
/* True when decrypted or undecrypted input is waiting inside OpenSSL. */
bool tls_has_input(const struct tls_conn *t);
/* Encrypts plaintext; the ciphertext is then in the outgoing BIO. */
bool tls_write(struct tls_conn *t, const char *plain, size_t len);
/* Queues a close_notify alert. */
void tls_shutdown(struct tls_conn *t);
/* Bytes of ciphertext waiting to be sent. */
size_t tls_pending_out(const struct tls_conn *t);
/* Moves up to cap bytes of waiting ciphertext into out; returns how many. */
size_t tls_take_out(struct tls_conn *t, char *out, size_t cap);
