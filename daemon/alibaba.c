#include "alibaba.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

static bool unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.' || c == '~';
}

void alibaba_pct_encode(struct strbuf *out, const char *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (unreserved(c)) {
            strbuf_add(out, (const char *)&c, 1);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            strbuf_add(out, e, 3);
        }
    }
}

static int kv_cmp(const void *a, const void *b)
{
    const struct kv *x = a, *y = b;
    int r = strcmp(x->k, y->k);
    return r ? r : strcmp(x->v, y->v);
}

char *alibaba_canonical_query(const struct kv *params, size_t n)
{
    struct kv *sorted = malloc((n ? n : 1) * sizeof *sorted);
    if (!sorted) return NULL;
    memcpy(sorted, params, n * sizeof *sorted);
    qsort(sorted, n, sizeof *sorted, kv_cmp);
    struct strbuf b = {0};
    strbuf_add(&b, "", 0);
    for (size_t i = 0; i < n; i++) {
        if (i) strbuf_add(&b, "&", 1);
        alibaba_pct_encode(&b, sorted[i].k, strlen(sorted[i].k));
        strbuf_add(&b, "=", 1);
        alibaba_pct_encode(&b, sorted[i].v, strlen(sorted[i].v));
    }
    free(sorted);
    if (b.oom) {
        strbuf_free(&b);
        return NULL;
    }
    return b.p;
}

int alibaba_signature(const char *secret, const char *method, const char *path,
                      const char *canonical_query, const struct kv *headers, size_t nheaders,
                      const char *body_sha_hex, char sig_hex[SHA256_HEX_LEN + 1],
                      char *signed_headers, size_t sh_len)
{
    /* CanonicalRequest = METHOD \n path \n CanonicalQuery \n CanonicalHeaders \n
     *                    SignedHeaders \n HexSHA256(body) */
    struct strbuf cr = {0}, sh = {0};
    strbuf_adds(&cr, method);
    strbuf_adds(&cr, "\n");
    strbuf_adds(&cr, path);
    strbuf_adds(&cr, "\n");
    strbuf_adds(&cr, canonical_query);
    strbuf_adds(&cr, "\n");
    for (size_t i = 0; i < nheaders; i++) {
        /* lower(name) ":" trim(value) "\n"; names arrive lower case and sorted. */
        const char *v = headers[i].v;
        size_t vl = strlen(v);
        while (vl && (*v == ' ' || *v == '\t')) {
            v++;
            vl--;
        }
        while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t')) vl--;
        strbuf_adds(&cr, headers[i].k);
        strbuf_adds(&cr, ":");
        strbuf_add(&cr, v, vl);
        strbuf_adds(&cr, "\n");
        if (i) strbuf_adds(&sh, ";");
        strbuf_adds(&sh, headers[i].k);
    }
    strbuf_add(&sh, "", 0);
    strbuf_adds(&cr, "\n");
    strbuf_adds(&cr, sh.p ? sh.p : "");
    strbuf_adds(&cr, "\n");
    strbuf_adds(&cr, body_sha_hex);
    int rc = IDV_EINVAL;
    if (cr.oom || sh.oom || strlen(sh.p) + 1 > sh_len) goto out;
    /* StringToSign = "ACS3-HMAC-SHA256\n" + HexSHA256(CanonicalRequest) */
    uint8_t d[SHA256_LEN];
    char sts[17 + SHA256_HEX_LEN + 1] = "ACS3-HMAC-SHA256\n";
    crypto_sha256(cr.p, cr.len, d);
    crypto_hex(d, sizeof d, sts + 17);
    uint8_t mac[SHA256_LEN];
    if (crypto_hmac_sha256(secret, strlen(secret), sts, strlen(sts), mac) != 0) goto out;
    crypto_hex(mac, sizeof mac, sig_hex);
    memcpy(signed_headers, sh.p, strlen(sh.p) + 1);
    rc = 0;
out:
    strbuf_free(&cr);
    strbuf_free(&sh);
    return rc;
}

bool alibaba_header_signed(const char *name)
{
    return !strcasecmp(name, "host") || !strcasecmp(name, "content-type") ||
           !strncasecmp(name, "x-acs-", 6);
}

int alibaba_date(time_t now, char out[32])
{
    struct tm tm;
    if (!gmtime_r(&now, &tm)) return IDV_EINVAL;
    return strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) ? 0 : IDV_EINVAL;
}

/* A header to sign: its lower-cased name (bounded: Alibaba's are short). */
struct signed_header {
    char name[64];
    const char *value;
};

static int signed_header_cmp(const void *a, const void *b)
{
    return strcmp(((const struct signed_header *)a)->name, ((const struct signed_header *)b)->name);
}

#define SIGN_MAX_HEADERS 32

int alibaba_sign(const char *access_key_id, const char *secret, const char *method,
                 const char *path, const char *canonical_query, const struct kv *headers,
                 size_t nheaders, const char *body_sha_hex, struct alibaba_signed *out)
{
    struct signed_header sh[SIGN_MAX_HEADERS];
    size_t n = 0;
    for (size_t i = 0; i < nheaders; i++) {
        if (!alibaba_header_signed(headers[i].k)) continue;
        size_t len = strlen(headers[i].k);
        if (n == SIGN_MAX_HEADERS || len >= sizeof sh[n].name) return IDV_EINVAL;
        for (size_t j = 0; j <= len; j++)
            sh[n].name[j] = (char)tolower((unsigned char)headers[i].k[j]);
        sh[n].value = headers[i].v;
        n++;
    }
    qsort(sh, n, sizeof sh[0], signed_header_cmp);
    struct kv canon[SIGN_MAX_HEADERS];
    for (size_t i = 0; i < n; i++) {
        /* Alibaba's library joins repeated headers with commas; the daemon
         * never repeats one, and refuses to sign what it would not send. */
        if (i && !strcmp(sh[i].name, sh[i - 1].name)) return IDV_EINVAL;
        canon[i] = (struct kv){sh[i].name, sh[i].value};
    }
    int rc = alibaba_signature(secret, method, path, canonical_query, canon, n, body_sha_hex,
                               out->signature, out->signed_headers, sizeof out->signed_headers);
    if (rc) return rc;
    int w = snprintf(out->authorization, sizeof out->authorization,
                     "ACS3-HMAC-SHA256 Credential=%s,SignedHeaders=%s,Signature=%s", access_key_id,
                     out->signed_headers, out->signature);
    return w > 0 && (size_t)w < sizeof out->authorization ? 0 : IDV_EINVAL;
}

/* ---- Initialize parameters: the seed as a table ---------------------------- */

static const char *const v_security[] = {"01", "02", NULL};
static const char *const v_model[] = {"LIVENESS", "PHOTINUS_LIVENESS", "SILENT", NULL};
static const char *const v_yn[] = {"Y", "N", NULL};
static const char *const v_guide[] = {"1", "0", NULL};
static const char *const v_priority[] = {"url", "keep", NULL};

const struct param_rule alibaba_initialize_params[] = {
    {"merchantBizId", "MerchantBizId", true, PC_BIZ_ID, NULL},
    {"metaInfo", "MetaInfo", true, PC_JSON, NULL},
    {"merchantUserId", "MerchantUserId", true, PC_USER_ID, NULL},
    {"returnUrl", "ReturnUrl", false, PC_HTTP_URL, NULL},
    {"sceneCode", "SceneCode", false, PC_SCENE_CODE, NULL},
    {"languageConfig", "LanguageConfig", false, PC_JSON, NULL},
    {"securityLevel", "SecurityLevel", false, PC_ENUM, v_security},
    {"styleConfig", "StyleConfig", false, PC_JSON, NULL},
    {"model", "Model", false, PC_ENUM, v_model},
    {"docVideo", "DocVideo", false, PC_ENUM, v_yn},
    {"showGuidePage", "ShowGuidePage", false, PC_ENUM, v_guide},
    {"procedurePriority", "ProcedurePriority", false, PC_ENUM, v_priority},
    {"appQualityCheck", "AppQualityCheck", false, PC_ENUM, v_yn},
};
const size_t alibaba_initialize_params_count =
    sizeof alibaba_initialize_params / sizeof alibaba_initialize_params[0];

static bool all_in(const char *s, size_t len, const char *extra)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              (c && strchr(extra, c))))
            return false;
    }
    return true;
}

static bool valid_url(const char *s, size_t len)
{
    size_t pre;
    if (len > 8 && !strncmp(s, "https://", 8))
        pre = 8;
    else if (len > 7 && !strncmp(s, "http://", 7))
        pre = 7;
    else
        return false;
    if (len > 2048 || s[pre] == '/' || s[pre] == ':' || s[pre] == '?' || s[pre] == '#')
        return false;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] <= ' ' || (unsigned char)s[i] >= 0x7f) return false;
    return true;
}

bool alibaba_param_valid(const struct param_rule *r, const char *v, size_t len)
{
    if (strlen(v) != len) return false; /* no NUL inside */
    switch (r->check) {
    case PC_BIZ_ID: return len >= 1 && len <= 32 && all_in(v, len, "");
    case PC_USER_ID:
        if (len < 1 || len > 128) return false;
        for (size_t i = 0; i < len; i++)
            if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f) return false;
        return true;
    case PC_SCENE_CODE: return len >= 1 && len <= 10 && all_in(v, len, "_");
    case PC_HTTP_URL: return valid_url(v, len);
    case PC_JSON: {
        if (len == 0 || len > 32768) return false;
        json_error_t e;
        json_t *j = json_loadb(v, len, JSON_DECODE_ANY, &e);
        json_decref(j);
        return j != NULL;
    }
    case PC_ENUM:
        for (const char *const *e = r->values; *e; e++)
            if (strlen(*e) == len && !memcmp(*e, v, len)) return true;
        return false;
    }
    return false;
}

/* ---- responses -------------------------------------------------------------- */

static char *dup_field(json_t *o, const char *name)
{
    const char *s = json_string_value(json_object_get(o, name));
    return s ? strdup(s) : NULL;
}

int alibaba_reply_parse(const char *body, size_t len, struct alibaba_reply *out)
{
    memset(out, 0, sizeof *out);
    json_error_t e;
    json_t *o = json_loadb(body, len, 0, &e);
    if (!o || !json_is_object(o) || !json_is_string(json_object_get(o, "Code"))) {
        json_decref(o);
        return IDV_EPARSE;
    }
    out->request_id = dup_field(o, "RequestId");
    out->code = dup_field(o, "Code");
    out->message = dup_field(o, "Message");
    json_t *r = json_object_get(o, "Result");
    if (r && json_is_object(r)) out->result_json = json_dumps(r, JSON_COMPACT);
    json_decref(o);
    if (!out->code) {
        alibaba_reply_free(out);
        return IDV_ENOMEM;
    }
    return 0;
}

void alibaba_reply_free(struct alibaba_reply *r)
{
    free(r->request_id);
    free(r->code);
    free(r->message);
    free(r->result_json);
    memset(r, 0, sizeof *r);
}
