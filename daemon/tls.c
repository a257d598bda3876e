#include "tls.h"

#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509.h>

static void ssl_err(char *err, size_t errlen, const char *what, const char *file)
{
    unsigned long e = ERR_get_error();
    char buf[256] = "";
    if (e) ERR_error_string_n(e, buf, sizeof buf);
    snprintf(err, errlen, "%s %s: %s", what, file ? file : "", buf[0] ? buf : "failed");
    ERR_clear_error();
}

SSL_CTX *tls_ctx_new(const char *cert_file, const char *key_file, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        ssl_err(err, errlen, "SSL_CTX_new", NULL);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* Idle connections keep no read/write buffers. */
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    /* TLS 1.2: ECDHE with AEAD only. TLS 1.3 suites are all AEAD. */
    if (SSL_CTX_set_cipher_list(ctx,
                                "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                                "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                                "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305") != 1 ||
        SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                                      "TLS_CHACHA20_POLY1305_SHA256") != 1) {
        ssl_err(err, errlen, "cipher configuration", NULL);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        ssl_err(err, errlen, "tls_cert_file", cert_file);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        ssl_err(err, errlen, "tls_key_file", key_file);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ssl_err(err, errlen, "tls_key_file does not match tls_cert_file", key_file);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

int tls_ctx_not_after(SSL_CTX *ctx, double *unix_seconds)
{
    X509 *cert = SSL_CTX_get0_certificate(ctx);
    const ASN1_TIME *t = cert ? X509_get0_notAfter(cert) : NULL;
    /* ASN1_TIME_diff from the epoch rather than ASN1_TIME_to_tm and timegm:
     * it reads UTCTime and GeneralizedTime alike and needs no time zone. */
    ASN1_TIME *epoch = ASN1_TIME_set(NULL, 0);
    int days = 0, secs = 0;
    int ok = t && epoch && ASN1_TIME_diff(&days, &secs, epoch, t) == 1;
    ASN1_TIME_free(epoch);
    ERR_clear_error();
    if (!ok) return IDV_EINVAL;
    *unix_seconds = (double)days * 86400.0 + (double)secs;
    return 0;
}

int tls_conn_init(struct tls_conn *t, SSL_CTX *ctx)
{
    memset(t, 0, sizeof *t);
    t->ssl = SSL_new(ctx);
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    if (!t->ssl || !t->rbio || !t->wbio) {
        SSL_free(t->ssl);
        BIO_free(t->rbio);
        BIO_free(t->wbio);
        memset(t, 0, sizeof *t);
        return IDV_ENOMEM;
    }
    /* An empty memory BIO means "retry later", not end of file. */
    BIO_set_mem_eof_return(t->rbio, -1);
    BIO_set_mem_eof_return(t->wbio, -1);
    SSL_set_bio(t->ssl, t->rbio, t->wbio); /* the SSL owns both BIOs now */
    SSL_set_accept_state(t->ssl);
    return 0;
}

void tls_conn_free(struct tls_conn *t)
{
    if (t->ssl) SSL_free(t->ssl);
    memset(t, 0, sizeof *t);
}

bool tls_feed(struct tls_conn *t, const char *data, size_t len)
{
    while (len > 0) {
        int chunk = len > 1 << 30 ? 1 << 30 : (int)len;
        int n = BIO_write(t->rbio, data, chunk);
        if (n <= 0) return false;
        data += n;
        len -= (size_t)n;
    }
    return true;
}

enum tls_io tls_read(struct tls_conn *t, char *plain, size_t cap, size_t *got)
{
    *got = 0;
    if (cap == 0) return TLS_IO_OK;
    size_t n = 0;
    int r = SSL_read_ex(t->ssl, plain, cap, &n);
    if (r == 1) {
        *got = n;
        return TLS_IO_OK;
    }
    int e = SSL_get_error(t->ssl, r);
    ERR_clear_error();
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return TLS_IO_OK;
    if (e == SSL_ERROR_ZERO_RETURN) return TLS_IO_CLOSED;
    return TLS_IO_ERROR;
}

bool tls_has_input(const struct tls_conn *t)
{
    return SSL_pending(t->ssl) > 0 || BIO_ctrl_pending(t->rbio) > 0;
}

bool tls_write(struct tls_conn *t, const char *plain, size_t len)
{
    size_t n = 0;
    /* With a memory BIO the record is produced whole, or not at all. */
    int r = SSL_write_ex(t->ssl, plain, len, &n);
    ERR_clear_error();
    return r == 1 && n == len;
}

void tls_shutdown(struct tls_conn *t)
{
    SSL_shutdown(t->ssl);
    ERR_clear_error();
}

size_t tls_pending_out(const struct tls_conn *t)
{
    return BIO_ctrl_pending(t->wbio);
}

size_t tls_take_out(struct tls_conn *t, char *out, size_t cap)
{
    int n = BIO_read(t->wbio, out, cap > 1 << 30 ? 1 << 30 : (int)cap);
    return n > 0 ? (size_t)n : 0;
}
