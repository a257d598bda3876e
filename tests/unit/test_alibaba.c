/* Signing (ACS3-HMAC-SHA256), canonical query encoding and the Initialize
 * parameter rules. */
#include "alibaba.h"
#include "test.h"

/* The known answer from Alibaba's documentation (alibaba-facts.md). */
static void known_answer(void)
{
    const struct kv headers[] = {
        {"host", "ecs.cn-shanghai.aliyuncs.com"},
        {"x-acs-action", "RunInstances"},
        {"x-acs-content-sha256",
         "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"x-acs-date", "2023-10-26T09:01:01Z"},
        {"x-acs-signature-nonce", "d410180a5abf7fe235dd9b74aca91fc0"},
        {"x-acs-version", "2014-05-26"},
    };
    const struct kv params[] = {
        {"RegionId", "cn-shanghai"},
        {"ImageId", "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd"},
    };
    char *q = alibaba_canonical_query(params, 2);
    CHECK_STR(q,
              "ImageId=win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd&RegionId=cn-shanghai");
    char sig[SHA256_HEX_LEN + 1], sh[128];
    CHECK_INT(alibaba_signature("YourAccessKeySecret", "POST", "/", q, headers, 6,
                                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                                sig, sh, sizeof sh),
              0);
    CHECK_STR(sig, "e521358f7776c97df52e6b2891a8bc73026794a071b50c3323388c4e0df64804");
    CHECK_STR(sh, "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;"
                  "x-acs-version");
    free(q);
}

/* The known answer's request as the daemon would send it: headers in sending
 * order and case, with headers Alibaba does not sign (Accept, User-Agent)
 * among them. */
#define KA_QUERY "ImageId=win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd&RegionId=cn-shanghai"
#define KA_SHA   "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

/* alibaba_sign() picks the headers to sign from what is sent: the known
 * answer's signature, and a well-formed Authorization. */
static void sign_matches_known_answer(void)
{
    const struct kv sent[] = {
        {"Host", "ecs.cn-shanghai.aliyuncs.com"},
        {"X-Acs-Action", "RunInstances"},
        {"x-acs-version", "2014-05-26"},
        {"Accept", "application/json"},
        {"x-acs-date", "2023-10-26T09:01:01Z"},
        {"x-acs-signature-nonce", "d410180a5abf7fe235dd9b74aca91fc0"},
        {"User-Agent", "idv-callbackd"},
        {"x-acs-content-sha256", KA_SHA},
    };
    struct alibaba_signed s;
    CHECK_INT(alibaba_sign("YourAccessKeyId", "YourAccessKeySecret", "POST", "/", KA_QUERY, sent,
                           sizeof sent / sizeof sent[0], KA_SHA, &s),
              0);
    CHECK_STR(s.signature, "e521358f7776c97df52e6b2891a8bc73026794a071b50c3323388c4e0df64804");
    CHECK_STR(s.authorization,
              "ACS3-HMAC-SHA256 Credential=YourAccessKeyId,SignedHeaders=host;x-acs-action;"
              "x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,"
              "Signature=e521358f7776c97df52e6b2891a8bc73026794a071b50c3323388c4e0df64804");
    char date[32];
    CHECK_INT(alibaba_date(1698310861, date), 0);
    CHECK_STR(date, "2023-10-26T09:01:01Z");
}

/* A request that carries a Content-Type gets it signed, as Alibaba's rule and
 * its library want. The expected value is what @alicloud/openapi-util 0.3.3
 * getAuthorization() computes for the known answer's request plus
 * `Content-Type: application/x-www-form-urlencoded` and `Accept`. */
static void sign_includes_content_type(void)
{
    const struct kv sent[] = {
        {"host", "ecs.cn-shanghai.aliyuncs.com"},
        {"x-acs-action", "RunInstances"},
        {"x-acs-version", "2014-05-26"},
        {"x-acs-date", "2023-10-26T09:01:01Z"},
        {"x-acs-signature-nonce", "d410180a5abf7fe235dd9b74aca91fc0"},
        {"x-acs-content-sha256", KA_SHA},
        {"Content-Type", "application/x-www-form-urlencoded"},
        {"Accept", "application/json"},
    };
    struct alibaba_signed s;
    CHECK_INT(alibaba_sign("YourAccessKeyId", "YourAccessKeySecret", "POST", "/", KA_QUERY, sent,
                           sizeof sent / sizeof sent[0], KA_SHA, &s),
              0);
    CHECK_STR(s.signed_headers, "content-type;host;x-acs-action;x-acs-content-sha256;x-acs-date;"
                                "x-acs-signature-nonce;x-acs-version");
    CHECK_STR(s.signature, "de3c7bce26e3f9aa24a97185c739296b7c946c18555a45fa035e9c4f28de9c61");
}

/* An empty value (Name=), the characters encoders disagree on and UTF-8 in
 * the canonical query: the expected signature is what @alicloud/openapi-util
 * 0.3.3 getAuthorization() computes for the same request. (The daemon refuses
 * an empty optional parameter before signing; the encoder still has to agree
 * on it.) */
static void sign_empty_value_and_utf8(void)
{
    const struct kv params[] = {
        {"SceneCode", ""},
        {"MerchantUserId", "a b*c~d+e/f%g=h&i \xc3\xa9\xf0\x9f\x98\x80"},
        {"MetaInfo", "{\"k\":\"v w\"}"},
    };
    char *q = alibaba_canonical_query(params, 3);
    CHECK_STR(q, "MerchantUserId=a%20b%2Ac~d%2Be%2Ff%25g%3Dh%26i%20%C3%A9%F0%9F%98%80&"
                 "MetaInfo=%7B%22k%22%3A%22v%20w%22%7D&SceneCode=");
    const struct kv sent[] = {
        {"Host", "cloudauth-intl.cn-hongkong.aliyuncs.com"},
        {"x-acs-action", "Initialize"},
        {"x-acs-version", "2022-08-09"},
        {"x-acs-date", "2023-10-26T09:01:01Z"},
        {"x-acs-signature-nonce", "d410180a5abf7fe235dd9b74aca91fc0"},
        {"x-acs-content-sha256", KA_SHA},
    };
    struct alibaba_signed s;
    CHECK_INT(alibaba_sign("id", "YourAccessKeySecret", "POST", "/", q, sent, 6, KA_SHA, &s), 0);
    CHECK_STR(s.signature, "db7d7fb3347f8f33de78dbfd0b4f181167f6c96e235be9c7984d7d12815615da");
    free(q);
}

/* Which headers are signed: host, content-type, x-acs-* in any case; a
 * signed header given twice is refused rather than signed ambiguously. */
static void signed_header_rule(void)
{
    CHECK(alibaba_header_signed("Host"));
    CHECK(alibaba_header_signed("content-TYPE"));
    CHECK(alibaba_header_signed("X-ACS-Signature-Nonce"));
    CHECK(alibaba_header_signed("x-acs-anything-new"));
    CHECK(!alibaba_header_signed("Accept"));
    CHECK(!alibaba_header_signed("User-Agent"));
    CHECK(!alibaba_header_signed("Content-Length"));
    CHECK(!alibaba_header_signed("x-acsx"));
    CHECK(!alibaba_header_signed("Authorization"));
    const struct kv twice[] = {
        {"host", "a"},
        {"x-acs-date", "2023-10-26T09:01:01Z"},
        {"X-Acs-Date", "2023-10-26T09:01:02Z"},
    };
    struct alibaba_signed s;
    CHECK_INT(alibaba_sign("id", "secret", "POST", "/", "", twice, 3, KA_SHA, &s), IDV_EINVAL);
}

static char *encode(const char *s)
{
    struct strbuf b = {0};
    strbuf_add(&b, "", 0);
    alibaba_pct_encode(&b, s, strlen(s));
    return b.p;
}

static void encode_space_star_tilde(void)
{
    char *e = encode("a b*c~d");
    CHECK_STR(e, "a%20b%2Ac~d");
    free(e);
}

static void encode_reserved(void)
{
    char *e = encode("/=&+?#%");
    CHECK_STR(e, "%2F%3D%26%2B%3F%23%25");
    free(e);
}

static void encode_utf8(void)
{
    /* "é" and "中" are encoded byte by byte, upper-case hex. */
    char *e = encode("\xc3\xa9\xe4\xb8\xad");
    CHECK_STR(e, "%C3%A9%E4%B8%AD");
    free(e);
}

static void encode_unreserved_kept(void)
{
    char *e = encode("AZaz09-_.~");
    CHECK_STR(e, "AZaz09-_.~");
    free(e);
}

static void canonical_query_json_metainfo(void)
{
    const struct kv p[] = {
        {"ProductCode", "FACE_LIVENESS"},
        {"MetaInfo", "{\"zimVer\":\"3.0.0\",\"deviceType\":\"h5\",\"ua\":\"Mozilla/5.0 (X11)\"}"},
        {"MerchantBizId", "biz1"},
    };
    char *q = alibaba_canonical_query(p, 3);
    CHECK_STR(q,
              "MerchantBizId=biz1&MetaInfo=%7B%22zimVer%22%3A%223.0.0%22%2C%22deviceType%22%3A"
              "%22h5%22%2C%22ua%22%3A%22Mozilla%2F5.0%20%28X11%29%22%7D&ProductCode=FACE_LIVENESS");
    free(q);
}

static void canonical_query_sorted_by_byte(void)
{
    /* Upper case sorts before lower case; equal names by value. */
    const struct kv p[] = {{"b", "1"}, {"B", "2"}, {"a", "z"}, {"a", "y"}};
    char *q = alibaba_canonical_query(p, 4);
    CHECK_STR(q, "B=2&a=y&a=z&b=1");
    free(q);
}

static const struct param_rule *rule(const char *name)
{
    for (size_t i = 0; i < alibaba_initialize_params_count; i++)
        if (!strcmp(alibaba_initialize_params[i].json_name, name))
            return &alibaba_initialize_params[i];
    return NULL;
}

static bool ok(const char *name, const char *v)
{
    const struct param_rule *r = rule(name);
    return r && alibaba_param_valid(r, v, strlen(v));
}

static void param_rules(void)
{
    CHECK(ok("merchantBizId", "abc123"));
    CHECK(ok("merchantBizId", "12345678901234567890123456789012"));
    CHECK(!ok("merchantBizId", "123456789012345678901234567890123"));
    CHECK(!ok("merchantBizId", "a-b"));
    CHECK(!ok("merchantBizId", ""));
    CHECK(ok("sceneCode", "abc_12"));
    CHECK(!ok("sceneCode", "12345678901"));
    CHECK(!ok("sceneCode", "a-b"));
    CHECK(ok("securityLevel", "01"));
    CHECK(ok("securityLevel", "02"));
    CHECK(!ok("securityLevel", "03"));
    CHECK(ok("model", "PHOTINUS_LIVENESS"));
    CHECK(!ok("model", "liveness"));
    CHECK(ok("docVideo", "Y"));
    CHECK(!ok("docVideo", "y"));
    CHECK(ok("showGuidePage", "0"));
    CHECK(!ok("showGuidePage", "2"));
    CHECK(ok("procedurePriority", "keep"));
    CHECK(!ok("procedurePriority", "KEEP"));
    CHECK(ok("appQualityCheck", "N"));
    CHECK(ok("returnUrl", "https://www.example.com/done?x=1"));
    CHECK(ok("returnUrl", "http://example.com"));
    CHECK(!ok("returnUrl", "ftp://example.com"));
    CHECK(!ok("returnUrl", "https://exa mple.com"));
    CHECK(!ok("returnUrl", "https://"));
    CHECK(ok("metaInfo", "{\"a\":1}"));
    CHECK(!ok("metaInfo", "{\"a\":"));
    CHECK(ok("languageConfig", "{}"));
    CHECK(!ok("styleConfig", "not json"));
    CHECK(ok("merchantUserId", "user@example.com"));
    CHECK(!ok("merchantUserId", "a\nb"));
}

static void required_params(void)
{
    CHECK(rule("merchantBizId")->required);
    CHECK(rule("metaInfo")->required);
    CHECK(rule("merchantUserId")->required);
    CHECK(!rule("returnUrl")->required);
    CHECK(rule("callbackUrl") == NULL);
    CHECK(rule("callbackToken") == NULL);
    CHECK(rule("productCode") == NULL);
}

static void reply_parse(void)
{
    struct alibaba_reply r;
    const char *ok_body = "{\"RequestId\":\"R1\",\"Code\":\"Success\",\"Message\":\"success\","
                          "\"Result\":{\"TransactionId\":\"hk1\"}}";
    CHECK_INT(alibaba_reply_parse(ok_body, strlen(ok_body), &r), 0);
    CHECK_STR(r.request_id, "R1");
    CHECK_STR(r.code, "Success");
    CHECK_STR(r.result_json, "{\"TransactionId\":\"hk1\"}");
    alibaba_reply_free(&r);
    CHECK_INT(alibaba_reply_parse("<html>", 6, &r), IDV_EPARSE);
    CHECK_INT(alibaba_reply_parse("{\"RequestId\":\"x\"", 16, &r), IDV_EPARSE);
    CHECK_INT(alibaba_reply_parse("{\"Message\":\"no code\"}", 21, &r), IDV_EPARSE);
}

#define TEST(name)                                                                                 \
    {                                                                                              \
#name, name                                                                                \
    }
static const struct test_case cases[] = {
    TEST(known_answer),
    TEST(sign_matches_known_answer),
    TEST(sign_includes_content_type),
    TEST(signed_header_rule),
    TEST(sign_empty_value_and_utf8),
    TEST(encode_space_star_tilde),
    TEST(encode_reserved),
    TEST(encode_utf8),
    TEST(encode_unreserved_kept),
    TEST(canonical_query_json_metainfo),
    TEST(canonical_query_sorted_by_byte),
    TEST(param_rules),
    TEST(required_params),
    TEST(reply_parse),
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, cases, sizeof cases / sizeof cases[0]);
}
