#!/usr/bin/env python3
"""Self-test of the fake Alibaba ID Verification server (fake_alibaba.py).

Every case makes a throwaway CA with make_ca.sh, starts its own fake on free
ports and stops it. Requests are signed by this file's own ACS3-HMAC-SHA256
signer (written separately from the fake's verifier, so that the two check
each other and both are checked against Alibaba's published known answer).
The --bin and --pg-bindir arguments of the idvtest convention are ignored.
"""
import hashlib
import hmac
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, HERE)
import idvtest  # noqa: E402
from idvtest import check, check_eq, wait_until  # noqa: E402
import fake_alibaba  # noqa: E402

FAKE = os.path.join(HERE, "fake_alibaba.py")
MAKE_CA = os.path.join(HERE, "make_ca.sh")
AKID = "LTAI5tFakeAccessKeyId01"
SECRET = "fake-secret-0123456789abcdefABCDEF"
KAT_SIGNATURE = "e521358f7776c97df52e6b2891a8bc73026794a071b50c3323388c4e0df64804"
META = json.dumps({"zimVer": "3.0.0", "appVersion": "1", "bioMetaInfo": "4.1.0:1150,0",
                   "appName": "com.example", "deviceType": "h5", "osVersion": "iOS 17",
                   "apdidToken": "", "deviceModel": "iPhone15,2"})


# --------------------------------------------------------------------------
# An independent ACS3-HMAC-SHA256 signer (byte-wise encoder, no urllib).

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")


def enc(s):
    return "".join(chr(b) if b in _UNRESERVED else "%%%02X" % b for b in s.encode("utf-8"))


def hexsha(data):
    return hashlib.sha256(data).hexdigest()


def test_signature(secret, method, query, headers, body=b""):
    """query: list of (name, value); headers: {name: value} (all signed).
    Returns (signed_headers, signature hex, canonical query string)."""
    cq = "&".join(enc(k) + "=" + enc(v) for k, v in sorted(query))
    low = {k.lower(): str(v).strip() for k, v in headers.items()}
    names = sorted(low)
    creq = (method + "\n/\n" + cq + "\n" + "".join(n + ":" + low[n] + "\n" for n in names)
            + "\n" + ";".join(names) + "\n" + hexsha(body))
    sts = "ACS3-HMAC-SHA256\n" + hexsha(creq.encode("utf-8"))
    sig = hmac.new(secret.encode(), sts.encode(), hashlib.sha256).hexdigest()
    return ";".join(names), sig, cq


def utc(ts):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# --------------------------------------------------------------------------
# Fixtures.

class Env:
    """A CA, a running in-process fake and an HTTPS client for it."""

    def __init__(self, ctx, **kw):
        self.ctx = ctx
        self.ca_dir = make_ca(ctx, "ca")
        self.ca = os.path.join(self.ca_dir, "ca.pem")
        kw.setdefault("access_keys", {AKID: SECRET})
        self.fake = fake_alibaba.FakeAlibaba(os.path.join(self.ca_dir, "server.pem"),
                                             os.path.join(self.ca_dir, "server.key"),
                                             port=idvtest.free_port(),
                                             control_port=idvtest.free_port(), **kw)

    def __enter__(self):
        self.fake.start()
        return self

    def __exit__(self, *exc):
        self.fake.stop()

    @property
    def port(self):
        return self.fake.port

    def tls(self):
        return ssl.create_default_context(cafile=self.ca)

    def conn(self, timeout=10, host="127.0.0.1"):
        return http.client.HTTPSConnection(host, self.port, timeout=timeout, context=self.tls())

    def call(self, action, params, akid=AKID, secret=SECRET, date=None, nonce=None, body=b"",
             version=fake_alibaba.API_VERSION, mutate=None, timeout=10, extra_headers=None,
             signed_extra=None):
        """A signed API call; returns (status, headers, body bytes, JSON or None).
        mutate(query_string, headers) may change the request after signing;
        signed_extra are headers signed with the others, extra_headers are
        added after signing."""
        query = [(k, v) for k, v in params.items()]
        headers = {"host": f"127.0.0.1:{self.port}", "x-acs-action": action,
                   "x-acs-version": version, "x-acs-date": date or utc(time.time()),
                   "x-acs-signature-nonce": nonce or uuid.uuid4().hex,
                   "x-acs-content-sha256": hexsha(body)}
        headers.update(signed_extra or {})
        sh, sig, cq = test_signature(secret, "POST", query, headers, body)
        headers["Authorization"] = f"ACS3-HMAC-SHA256 Credential={akid},SignedHeaders={sh},Signature={sig}"
        headers.update(extra_headers or {})
        if mutate:
            cq, headers = mutate(cq, headers)
        return self.raw_call("/?" + cq if cq else "/", headers, body, timeout)

    def raw_call(self, target, headers, body=b"", timeout=10, method="POST"):
        c = self.conn(timeout)
        try:
            c.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for k, v in headers.items():
                c.putheader(k, v)
            c.putheader("Content-Length", str(len(body)))
            c.endheaders(body)
            r = c.getresponse()
            data = r.read()
            try:
                obj = json.loads(data)
            except ValueError:
                obj = None
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data, obj
        finally:
            c.close()

    def initialize(self, **over):
        p = init_params(**over)
        st, _, _, obj = self.call("Initialize", p)
        check_eq(st, 200, f"Initialize status ({obj})")
        check_eq(obj["Code"], "Success", "Initialize Code")
        return p, obj["Result"]["TransactionId"]

    def control(self, method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.fake.control_port, timeout=10)
        try:
            data = json.dumps(body).encode() if body is not None else None
            c.request(method, path, body=data)
            r = c.getresponse()
            return r.status, json.loads(r.read())
        finally:
            c.close()


def make_ca(ctx, name):
    d = ctx.tmp.sub(name)
    r = subprocess.run(["sh", MAKE_CA, d, name], capture_output=True, text=True)
    check(r.returncode == 0, f"make_ca.sh failed: {r.stdout}{r.stderr}")
    for f in ("ca.pem", "ca.key", "server.pem", "server.key"):
        check(os.path.exists(os.path.join(d, f)), f"make_ca.sh made no {f}")
    return d


def init_params(**over):
    p = {"ProductCode": "FACE_LIVENESS", "MerchantBizId": "biz" + uuid.uuid4().hex[:20],
         "MetaInfo": META, "MerchantUserId": "user-42",
         "CallbackUrl": "https://idv.example.com/idv/callback",
         "CallbackToken": "tok-" + uuid.uuid4().hex}
    for k, v in over.items():
        if v is None:
            p.pop(k, None)
        else:
            p[k] = v
    return p


def check_error(resp, status, code, what):
    st, hd, data, obj = resp
    check_eq(st, status, f"{what}: status ({data[:300]!r})")
    check(obj is not None, f"{what}: body is not JSON: {data[:200]!r}")
    check_eq(sorted(obj), ["Code", "Message", "RequestId"], f"{what}: error body keys")
    check_eq(obj["Code"], code, f"{what}: Code ({obj.get('Message')})")
    check(obj["Message"], f"{what}: empty Message")
    check_eq(hd.get("x-acs-request-id"), obj["RequestId"], f"{what}: x-acs-request-id")
    return obj


# --------------------------------------------------------------------------
# Cases.

def case_signature_known_answer(ctx):
    """Both signers reproduce Alibaba's documented signature, and the running
    fake verifies that very request (its clock set to the request's date)."""
    q = [("ImageId", "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd"),
         ("RegionId", "cn-shanghai")]
    h = {"host": "ecs.cn-shanghai.aliyuncs.com", "x-acs-action": "RunInstances",
         "x-acs-version": "2014-05-26", "x-acs-date": "2023-10-26T09:01:01Z",
         "x-acs-signature-nonce": "d410180a5abf7fe235dd9b74aca91fc0",
         "x-acs-content-sha256": fake_alibaba.EMPTY_SHA256}
    check_eq(fake_alibaba.EMPTY_SHA256,
             "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "empty sha")
    sh, sig, cq = test_signature("YourAccessKeySecret", "POST", q, h)
    check_eq(sig, KAT_SIGNATURE, "test signer on the known answer")
    creq = fake_alibaba.canonical_request("POST", "/", q, h, list(h), fake_alibaba.EMPTY_SHA256)
    check_eq(fake_alibaba.signature("YourAccessKeySecret", creq), KAT_SIGNATURE,
             "fake's canonical request on the known answer")
    auth = fake_alibaba.sign("YourAccessKeySecret", "YourAccessKeyId", "POST", "/", q, h)
    check(auth.endswith("Signature=" + KAT_SIGNATURE), f"fake.sign: {auth}")
    # Encoding corner cases the two implementations must agree on.
    for s in ["a b*c~d", "ü/é?&=+", "%41", "-_.~", "{\"k\":[1,2]}"]:
        check_eq(fake_alibaba.percent_encode(s), enc(s), f"encoding of {s!r}")
    check_eq(enc("a b*c"), "a%20b%2Ac", "space and star")
    tricky = [("b", "x y"), ("a", "1+1=2&*"), ("A", "ü~"), ("MetaInfo", META), ("e", "")]
    check_eq(fake_alibaba.canonical_query(tricky), test_signature("s", "POST", tricky, {})[2],
             "canonical query of tricky parameters")
    parts = fake_alibaba.canonical_query(tricky).split("&")
    check_eq([x.split("=")[0] for x in parts], ["A", "MetaInfo", "a", "b", "e"],
             "sorted by name in byte order (upper case first)")
    check_eq((parts[0], parts[2], parts[3], parts[4]),
             ("A=%C3%BC~", "a=1%2B1%3D2%26%2A", "b=x%20y", "e="), "encoded values")
    check(parts[1].startswith("MetaInfo=%7B%22zimVer%22%3A%20%223.0.0%22%2C%20"), parts[1])

    with Env(ctx, access_keys={"YourAccessKeyId": "YourAccessKeySecret"}) as e:
        e.fake.set_clock_offset(fake_alibaba.parse_acs_date("2023-10-26T09:01:01Z") - time.time())
        headers = dict(h, Authorization=f"ACS3-HMAC-SHA256 Credential=YourAccessKeyId,"
                                        f"SignedHeaders={sh},Signature={KAT_SIGNATURE}")
        resp = e.raw_call("/?" + cq, headers)
        # Authenticated, then refused for being another product's API.
        check_error(resp, 400, "InvalidVersion", "known-answer request")
        (r,) = e.fake.requests()
        check(r["signatureVerified"], f"fake did not verify the known answer: {r}")
        check_eq(r["authError"], None, "authError")
        check_eq(r["params"]["RegionId"], "cn-shanghai", "params")


def case_initialize_signed_accepted(ctx):
    """A correctly signed Initialize gets Success with a fresh transaction,
    which the fake remembers with every parameter, the CallbackToken too."""
    with Env(ctx) as e:
        p = init_params(SceneCode="scene_1", SecurityLevel="02", Model="SILENT")
        st, hd, data, obj = e.call("Initialize", p)
        check_eq(st, 200, f"status {data!r}")
        check(hd.get("content-type", "").startswith("application/json"), "content-type")
        check_eq(sorted(obj), ["Code", "Message", "RequestId", "Result"], "keys")
        check_eq((obj["Code"], obj["Message"]), ("Success", "success"), "Code/Message")
        res = obj["Result"]
        check_eq(sorted(res), ["Protocol", "TransactionId", "TransactionUrl"], "Result keys")
        tx = res["TransactionId"]
        check(tx.startswith("hks") and len(tx) == 32, f"TransactionId {tx}")
        check(res["TransactionUrl"].startswith("https://"), "TransactionUrl")
        _, _, _, obj2 = e.call("Initialize", init_params())
        check(obj2["Result"]["TransactionId"] != tx, "TransactionIds are fresh")

        t = e.fake.transaction(tx)
        check_eq(t["merchantBizId"], p["MerchantBizId"], "stored MerchantBizId")
        check_eq(t["callbackToken"], p["CallbackToken"], "stored CallbackToken")
        check_eq(t["callbackUrl"], p["CallbackUrl"], "stored CallbackUrl")
        check_eq(t["params"], p, "stored params")
        check_eq(t["result"], None, "no result yet")

        reqs = e.fake.requests("Initialize")
        check_eq(len(reqs), 2, "requests logged")
        r = reqs[0]
        check(r["signatureVerified"], "signatureVerified")
        check_eq(r["params"], p, "logged params (incl. CallbackToken)")
        check_eq(r["params"]["MetaInfo"], META, "MetaInfo survives percent-encoding")
        check_eq(r["headers"]["x-acs-action"], "Initialize", "logged header")
        check_eq((r["status"], r["code"], r["transactionId"], r["accessKeyId"]),
                 (200, "Success", tx, AKID), "logged outcome")
        check_eq(r["requestId"], obj["RequestId"], "logged RequestId")
        check_eq(e.fake.calls("Initialize"), 2, "call counter")


def case_bad_signature_rejected(ctx):
    """A wrong signature, a wrong secret, or a parameter changed after signing
    gets 400 SignatureDoesNotMatch and creates nothing."""
    with Env(ctx) as e:
        def flip(cq, h):
            a = h["Authorization"]
            h["Authorization"] = a[:-1] + ("0" if a[-1] != "0" else "1")
            return cq, h
        check_error(e.call("Initialize", init_params(), mutate=flip), 400,
                    "SignatureDoesNotMatch", "flipped signature")
        check_error(e.call("Initialize", init_params(), secret="not-the-secret"), 400,
                    "SignatureDoesNotMatch", "wrong secret")
        check_error(e.call("Initialize", init_params(),
                           mutate=lambda cq, h: (cq.replace("user-42", "user-43"), h)),
                    400, "SignatureDoesNotMatch", "query changed after signing")
        check_error(e.call("Initialize", init_params(),
                           mutate=lambda cq, h: (cq, dict(h, **{"x-acs-action": "CheckResult"}))),
                    400, "SignatureDoesNotMatch", "signed header changed after signing")
        check_eq(e.fake.transactions(), [], "no transaction created")
        reqs = e.fake.requests()
        check_eq(len(reqs), 4, "all logged")
        check(all(not r["signatureVerified"] for r in reqs), "none verified")
        check(all(r["authError"] == "SignatureDoesNotMatch" for r in reqs), "authError logged")


def case_auth_rejections(ctx):
    """Unknown AccessKeyId, reused nonce, x-acs-date off by more than 15
    minutes, a body not matching x-acs-content-sha256, no or malformed
    Authorization and unsigned required headers are each refused."""
    with Env(ctx) as e:
        check_error(e.call("Initialize", init_params(), akid="LTAInobody"), 403,
                    "InvalidAccessKeyId.NotFound", "unknown key")
        nonce = uuid.uuid4().hex
        st, _, _, obj = e.call("Initialize", init_params(), nonce=nonce)
        check_eq(st, 200, f"first use of a nonce {obj}")
        check_error(e.call("Initialize", init_params(), nonce=nonce), 400, "SignatureNonceUsed",
                    "reused nonce")
        check_error(e.call("CheckResult", {"MerchantBizId": "x", "TransactionId": "y"},
                           nonce=nonce), 400, "SignatureNonceUsed", "nonce reused by another action")
        now = time.time()
        check_error(e.call("Initialize", init_params(), date=utc(now - 16 * 60)), 400,
                    "InvalidTimeStamp.Expired", "16 minutes old")
        check_error(e.call("Initialize", init_params(), date=utc(now + 16 * 60)), 400,
                    "InvalidTimeStamp.Expired", "16 minutes ahead")
        for off in (-14 * 60, 14 * 60):
            st, _, _, obj = e.call("Initialize", init_params(), date=utc(now + off))
            check_eq(st, 200, f"date off by {off}s accepted ({obj})")
        check_error(e.call("Initialize", init_params(), date="2023-10-26 09:01:01"), 400,
                    "InvalidTimeStamp.Format", "malformed date")

        def lie_sha(cq, h):
            return cq, h  # signed over the header, body differs below
        # Sign an empty body, send a different one.
        q = list(init_params().items())
        hdr = {"host": f"127.0.0.1:{e.port}", "x-acs-action": "Initialize",
               "x-acs-version": fake_alibaba.API_VERSION, "x-acs-date": utc(time.time()),
               "x-acs-signature-nonce": uuid.uuid4().hex, "x-acs-content-sha256": hexsha(b"")}
        sh, sig, cq = test_signature(SECRET, "POST", q, hdr)
        hdr["Authorization"] = f"ACS3-HMAC-SHA256 Credential={AKID},SignedHeaders={sh},Signature={sig}"
        check_error(e.raw_call("/?" + cq, hdr, body=b"surprise"), 400, "ContentSHA256NotMatched",
                    "body not matching x-acs-content-sha256")
        # A body whose hash is signed correctly is fine.
        st, _, _, obj = e.call("Initialize", init_params(), body=b"{}",
                               signed_extra={"Content-Type": "application/json"})
        check_eq(st, 200, f"signed non-empty body ({obj})")
        # A header of a signed kind the request carries unsigned is refused
        # (Alibaba's rule; the fake is strict unless told otherwise).
        for extra in ({"Content-Type": "application/x-www-form-urlencoded"},
                      {"x-acs-extra": "1"}):
            check_error(e.call("Initialize", init_params(), extra_headers=extra), 400,
                        "IncompleteSignature", f"unsigned {extra}")
        e.fake.configure(strictSignedHeaders=False)
        st, _, _, obj = e.call("Initialize", init_params(),
                               extra_headers={"Content-Type": "text/plain"})
        check_eq(st, 200, f"unsigned Content-Type with strictSignedHeaders off ({obj})")
        e.fake.configure(strictSignedHeaders=True)

        check_error(e.call("Initialize", init_params(),
                           mutate=lambda cq, h: (cq, {k: v for k, v in h.items()
                                                      if k != "Authorization"})),
                    400, "IncompleteSignature", "no Authorization")
        check_error(e.call("Initialize", init_params(),
                           mutate=lambda cq, h: (cq, dict(h, Authorization="Bearer abc"))),
                    400, "IncompleteSignature", "not ACS3")
        check_error(e.call("Initialize", init_params(), mutate=lambda cq, h: (cq, dict(
            h, Authorization=h["Authorization"].replace("ACS3-HMAC-SHA256", "ACS3-HMAC-SM3")))),
                    400, "IncompleteSignature", "other algorithm")

        # x-acs-date left out of SignedHeaders (signature made without it).
        hdr = {"host": f"127.0.0.1:{e.port}", "x-acs-action": "Initialize",
               "x-acs-version": fake_alibaba.API_VERSION,
               "x-acs-signature-nonce": uuid.uuid4().hex, "x-acs-content-sha256": hexsha(b"")}
        sh, sig, cq = test_signature(SECRET, "POST", q, hdr)
        hdr["x-acs-date"] = utc(time.time())
        hdr["Authorization"] = f"ACS3-HMAC-SHA256 Credential={AKID},SignedHeaders={sh},Signature={sig}"
        check_error(e.raw_call("/?" + cq, hdr), 400, "IncompleteSignature", "x-acs-date unsigned")
        check_eq(len(e.fake.transactions()), 5, "only the accepted calls made transactions")


def case_initialize_validation(ctx):
    """Initialize checks its parameters as the seed describes, answering 400
    MissingParameter / InvalidParameter naming the parameter."""
    bad = [
        ({"ProductCode": None}, "MissingParameter", "ProductCode"),
        ({"ProductCode": "ID_OCR"}, "InvalidParameter", "ProductCode"),
        ({"MerchantBizId": None}, "MissingParameter", "MerchantBizId"),
        ({"MerchantBizId": ""}, "MissingParameter", "MerchantBizId"),
        ({"MerchantBizId": "a" * 33}, "InvalidParameter", "MerchantBizId"),
        ({"MerchantBizId": "biz-1"}, "InvalidParameter", "MerchantBizId"),
        ({"MetaInfo": None}, "MissingParameter", "MetaInfo"),
        ({"MetaInfo": "{not json"}, "InvalidParameter", "MetaInfo"),
        ({"MerchantUserId": None}, "MissingParameter", "MerchantUserId"),
        ({"CallbackUrl": "http://idv.example.com/cb"}, "InvalidParameter", "CallbackUrl"),
        ({"CallbackUrl": "idv.example.com/cb"}, "InvalidParameter", "CallbackUrl"),
        ({"SecurityLevel": "03"}, "InvalidParameter", "SecurityLevel"),
        ({"Model": "BLINK"}, "InvalidParameter", "Model"),
        ({"DocVideo": "yes"}, "InvalidParameter", "DocVideo"),
        ({"AppQualityCheck": "y"}, "InvalidParameter", "AppQualityCheck"),
        ({"ShowGuidePage": "2"}, "InvalidParameter", "ShowGuidePage"),
        ({"ProcedurePriority": "URL"}, "InvalidParameter", "ProcedurePriority"),
        ({"SceneCode": "12345678901"}, "InvalidParameter", "SceneCode"),
        ({"SceneCode": "a-b"}, "InvalidParameter", "SceneCode"),
        ({"LanguageConfig": "{"}, "InvalidParameter", "LanguageConfig"),
        ({"StyleConfig": "[1,"}, "InvalidParameter", "StyleConfig"),
    ]
    with Env(ctx) as e:
        for over, code, name in bad:
            obj = check_error(e.call("Initialize", init_params(**over)), 400, code, f"{over}")
            check(f'"{name}"' in obj["Message"], f"{over}: Message names {name}: {obj['Message']}")
        check_eq(e.fake.transactions(), [], "no transaction created")
        check_eq(e.fake.calls("Initialize"), len(bad), "all counted")
        check(all(r["signatureVerified"] for r in e.fake.requests()), "all were authentic")


def case_initialize_optional_params_accepted(ctx):
    """Every optional parameter at each of its valid values is accepted (and
    CallbackUrl / CallbackToken may be left out)."""
    ok = [{"SecurityLevel": "01"}, {"SecurityLevel": "02"}, {"Model": "LIVENESS"},
          {"Model": "PHOTINUS_LIVENESS"}, {"Model": "SILENT"}, {"DocVideo": "Y"},
          {"DocVideo": "N"}, {"AppQualityCheck": "Y"}, {"AppQualityCheck": "N"},
          {"ShowGuidePage": "1"}, {"ShowGuidePage": "0"}, {"ProcedurePriority": "url"},
          {"ProcedurePriority": "keep"}, {"SceneCode": "A_b9"}, {"SceneCode": "1234567890"},
          {"LanguageConfig": json.dumps({"languageContent": {"en": "Hi"}})},
          {"StyleConfig": json.dumps({"facePage": {"color": "#fff"}})},
          {"ReturnUrl": "https://shop.example.com/done?x=1&y=a b"},
          {"MerchantBizId": "A" * 32}, {"CallbackUrl": None, "CallbackToken": None},
          {"MerchantUserId": "alice@example.com"}]
    with Env(ctx) as e:
        for over in ok:
            st, _, data, obj = e.call("Initialize", init_params(**over))
            check_eq(st, 200, f"{over}: {data!r}")
        check_eq(len(e.fake.transactions()), len(ok), "transactions")


def case_checkresult_pending_then_result(ctx):
    """CheckResult before completion: Success with Passed and SubCode empty;
    after the control API sets a result, the stored result with every Result
    field, the Ext* fields being strings holding JSON."""
    with Env(ctx) as e:
        p, tx = e.initialize()
        q = {"MerchantBizId": p["MerchantBizId"], "TransactionId": tx}
        st, _, _, obj = e.call("CheckResult", q)
        check_eq(st, 200, f"pending status {obj}")
        check_eq(obj["Code"], "Success", "pending Code")
        check_eq(obj["Result"], {"Passed": "", "SubCode": ""}, "pending Result")

        st, res = e.control("POST", f"/transactions/{tx}/result",
                            {"passed": "Y", "subCode": "200",
                             "extFaceInfo": {"faceAttack": "N", "faceQualityScore": 99}})
        check_eq(st, 200, f"control set result {res}")
        st, _, _, obj = e.call("CheckResult", dict(q, IsReturnImage="N"))
        check_eq(st, 200, "status")
        r = obj["Result"]
        check_eq(sorted(r), sorted(["Passed", "SubCode"] + list(fake_alibaba.RESULT_FIELDS)),
                 "Result fields")
        check_eq((r["Passed"], r["SubCode"]), ("Y", "200"), "verdict")
        for k in fake_alibaba.RESULT_FIELDS:
            check(isinstance(r[k], str), f"{k} is a string")
            json.loads(r[k])
        check_eq(json.loads(r["ExtFaceInfo"]), {"faceAttack": "N", "faceQualityScore": 99},
                 "ExtFaceInfo as set")
        check_eq(json.loads(r["ExtBasicInfo"])["certifyId"], tx, "default ExtBasicInfo")

        # In-process API: a failed verdict, an omitted and a raw (non-JSON) field.
        e.fake.set_result(tx, "N", "205", ExtRiskInfo=None, ExtInfo="not json")
        _, _, _, obj = e.call("CheckResult", q)
        r = obj["Result"]
        check_eq((r["Passed"], r["SubCode"]), ("N", "205"), "N/205")
        check("ExtRiskInfo" not in r, "None leaves a field out")
        check_eq(r["ExtInfo"], "not json", "string sent as is")
        # raw replaces the Result wholesale.
        e.fake.set_result(tx, raw={"Passed": "Y"})
        _, _, _, obj = e.call("CheckResult", q)
        check_eq(obj["Result"], {"Passed": "Y"}, "raw Result")
        # Back to pending.
        check_eq(e.control("DELETE", f"/transactions/{tx}/result")[0], 200, "clear result")
        _, _, _, obj = e.call("CheckResult", q)
        check_eq(obj["Result"]["Passed"], "", "pending again")
        check_eq(e.fake.transaction(tx)["checkResultCalls"], 5, "checkResultCalls")
        check_eq(e.fake.calls("CheckResult"), 5, "counter")

        # A transaction the fake never initialized (registered with the daemon by
        # the business) can be given a result too.
        e.fake.set_result("hksexternal0001", "Y", "200")
        _, _, _, obj = e.call("CheckResult", {"MerchantBizId": "any", "TransactionId":
                                              "hksexternal0001"})
        check_eq(obj["Result"]["Passed"], "Y", "external transaction")


def case_checkresult_validation(ctx):
    """CheckResult wants MerchantBizId and TransactionId, a known transaction
    and its own MerchantBizId, IsReturnImage Y/N."""
    with Env(ctx) as e:
        p, tx = e.initialize()
        biz = p["MerchantBizId"]
        check_error(e.call("CheckResult", {"TransactionId": tx}), 400, "MissingParameter",
                    "no MerchantBizId")
        check_error(e.call("CheckResult", {"MerchantBizId": biz}), 400, "MissingParameter",
                    "no TransactionId")
        check_error(e.call("CheckResult", {"MerchantBizId": biz, "TransactionId": "hksnope"}),
                    400, "InvalidParameter", "unknown transaction")
        check_error(e.call("CheckResult", {"MerchantBizId": "other", "TransactionId": tx}),
                    400, "InvalidParameter", "MerchantBizId of another transaction")
        check_error(e.call("CheckResult", {"MerchantBizId": biz, "TransactionId": tx,
                                           "IsReturnImage": "yes"}),
                    400, "InvalidParameter", "IsReturnImage")
        check_error(e.call("DescribeVerifyResult", {}), 404, "InvalidAction.NotFound",
                    "unknown action")
        check_error(e.call("CheckResult", {"MerchantBizId": biz, "TransactionId": tx},
                           version="2019-03-07"), 400, "InvalidVersion", "other version")


def case_behaviour_error(ctx):
    """Queued errors answer the next N calls of that action with the given
    status and Alibaba-style body, then normal service resumes; other actions
    are unaffected; every call is counted."""
    table = [(400, "MissingParameter"), (400, "InvalidParameter"),
             (403, "Forbidden.RAMUserAccessDenied"), (403, "Forbidden.AccountAccessDenied"),
             (403, "Throttling.Api"), (500, "InternalError")]
    with Env(ctx) as e:
        for st, code in table:
            e.fake.queue("Initialize", "error", status=st, code=code)
        e.fake.queue("Initialize", "error", count=2, status=403, code="Throttling.Api",
                     message="slow down")
        p, tx = None, None
        for st, code in table:
            obj = check_error(e.call("Initialize", init_params()), st, code, f"queued {code}")
            check_eq(obj["Message"], fake_alibaba.DEFAULT_MESSAGES[code], "default message")
        # A CheckResult in between is not affected by Initialize's queue.
        check_error(e.call("CheckResult", {"MerchantBizId": "a", "TransactionId": "b"}), 400,
                    "InvalidParameter", "CheckResult unaffected")
        for _ in range(2):
            obj = check_error(e.call("Initialize", init_params()), 403, "Throttling.Api",
                              "throttled")
            check_eq(obj["Message"], "slow down", "custom message")
        check_eq(e.fake.behaviours(), {}, "queue drained")
        p, tx = e.initialize()
        check_eq(e.fake.calls("Initialize"), len(table) + 3, "Initialize counter")
        check_eq(e.fake.calls("CheckResult"), 1, "CheckResult counter")
        check_eq(len(e.fake.transactions()), 1, "errors created no transaction")
        logged = [r["behaviour"] for r in e.fake.requests("Initialize")]
        check_eq(logged, ["error"] * (len(table) + 2) + [None], "behaviour logged")


def case_behaviour_stall(ctx):
    """A stalled call reads the request and never answers: the client times
    out; the fake notices the client gave up; other connections are served
    meanwhile; the next call is answered."""
    with Env(ctx) as e:
        e.fake.queue("Initialize", "stall")
        result = {}

        def stalled():
            t0 = time.monotonic()
            try:
                e.call("Initialize", init_params(), timeout=2)
                result["err"] = None
            except (TimeoutError, socket.timeout) as ex:
                result["err"] = ex
            result["elapsed"] = time.monotonic() - t0
        th = threading.Thread(target=stalled)
        th.start()
        wait_until(lambda: e.fake.requests(), 10, what="the stalled request to arrive")
        # Meanwhile another connection is served.
        p, tx = e.initialize()
        th.join(30)
        check(isinstance(result.get("err"), (TimeoutError, socket.timeout)),
              f"client should time out, got {result}")
        check(result["elapsed"] >= 1.5, f"stall too short: {result}")
        wait_until(lambda: e.fake.requests()[0].get("stallEnded"), 10,
                   what="the fake to see the client close")
        r = e.fake.requests()[0]
        check_eq((r["behaviour"], r["outcome"], r["stallEnded"], r["status"]),
                 ("stall", "stalled", "client_closed", None), "stall logged")
        check(r["signatureVerified"], "the stalled request was read and verified")
        check_eq(len(e.fake.transactions()), 1, "stall did not process the call")

        # A stall still in progress ends when the fake stops.
        e.fake.queue("CheckResult", "stall", seconds=60)
        hdr_ok = {}

        def hold():
            try:
                e.call("CheckResult", {"MerchantBizId": p["MerchantBizId"], "TransactionId": tx},
                       timeout=30)
            except (OSError, http.client.HTTPException) as ex:
                hdr_ok["err"] = ex
        th = threading.Thread(target=hold)
        th.start()
        wait_until(lambda: len(e.fake.requests("CheckResult")) == 1, 10, what="second stall")
    th.join(30)
    check(not th.is_alive(), "stalled client released when the fake stopped")
    check(isinstance(hdr_ok.get("err"), (OSError, http.client.HTTPException)),
          f"stalled client saw the connection end: {hdr_ok}")


def case_behaviour_close_mid_response(ctx):
    """close_mid_response sends the status line, headers and half the body of
    a real answer, then closes: the client sees a short read. The call was
    processed (the transaction exists)."""
    with Env(ctx) as e:
        e.fake.queue("Initialize", "close_mid_response")
        ok = {}
        try:
            e.call("Initialize", init_params())
        except http.client.IncompleteRead as ex:
            ok["partial"] = ex.partial
            ok["expected"] = ex.expected
        check("partial" in ok, f"expected IncompleteRead, got {ok}")
        check(0 < len(ok["partial"]) and ok["expected"] > 0, f"half body: {ok}")
        full = len(ok["partial"]) + ok["expected"]
        check(abs(len(ok["partial"]) - full // 2) <= 1, "about half of the body")
        check(ok["partial"].startswith(b'{"RequestId"'), f"partial is a real answer: {ok}")
        r = e.fake.requests()[0]
        check_eq((r["behaviour"], r["status"], r["code"]), ("close_mid_response", 200, "Success"),
                 "logged")
        check(e.fake.transaction(r["transactionId"]) is not None, "transaction was created")
        e.initialize()  # normal service afterwards


def case_behaviour_garbage(ctx):
    """garbage answers 200 with a body that is not JSON."""
    with Env(ctx) as e:
        e.fake.queue("CheckResult", "garbage")
        st, hd, data, obj = e.call("CheckResult", {"MerchantBizId": "a", "TransactionId": "b"})
        check_eq(st, 200, "status")
        check_eq(int(hd["content-length"]), len(data), "well framed")
        check(obj is None and data, f"body is not JSON: {data!r}")
        check_eq(e.fake.requests()[0]["behaviour"], "garbage", "logged")


def case_behaviour_truncated(ctx):
    """truncated sends a complete JSON answer with a Content-Length larger
    than the body, then closes."""
    with Env(ctx) as e:
        p, tx = e.initialize()
        e.fake.set_result(tx, "Y", "200")
        e.fake.queue("CheckResult", "truncated", extra=10)
        try:
            e.call("CheckResult", {"MerchantBizId": p["MerchantBizId"], "TransactionId": tx})
            check(False, "expected IncompleteRead")
        except http.client.IncompleteRead as ex:
            check_eq(ex.expected, 10, "10 bytes missing")
            obj = json.loads(ex.partial)
            check_eq(obj["Result"]["Passed"], "Y", "the partial body is the whole answer")
        # Raw view: headers claim more than the connection delivers before EOF.
        e.fake.queue("CheckResult", "truncated")
        s = e.tls().wrap_socket(socket.create_connection(("127.0.0.1", e.port), timeout=10),
                                server_hostname="127.0.0.1")
        hdr = {"host": f"127.0.0.1:{e.port}", "x-acs-action": "CheckResult",
               "x-acs-version": fake_alibaba.API_VERSION, "x-acs-date": utc(time.time()),
               "x-acs-signature-nonce": uuid.uuid4().hex, "x-acs-content-sha256": hexsha(b"")}
        sh, sig, cq = test_signature(SECRET, "POST", [("MerchantBizId", p["MerchantBizId"]),
                                                      ("TransactionId", tx)], hdr)
        req = f"POST /?{cq} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdr.items()) + \
            f"Authorization: ACS3-HMAC-SHA256 Credential={AKID},SignedHeaders={sh}," \
            f"Signature={sig}\r\nContent-Length: 0\r\n\r\n"
        s.sendall(req.encode())
        data = b""
        while True:
            try:
                b = s.recv(65536)
            except (ssl.SSLError, OSError):
                break
            if not b:
                break
            data += b
        s.close()
        head, _, body = data.partition(b"\r\n\r\n")
        cl = int([l.split(b":", 1)[1] for l in head.split(b"\r\n")
                  if l.lower().startswith(b"content-length:")][0])
        check_eq(cl, len(body) + 64, "Content-Length overstates by 64")
        json.loads(body)


def raw_signed_request(e, action, pairs):
    """The bytes of a signed POST (keep-alive) for a raw TLS socket."""
    hdr = {"host": f"127.0.0.1:{e.port}", "x-acs-action": action,
           "x-acs-version": fake_alibaba.API_VERSION, "x-acs-date": utc(time.time()),
           "x-acs-signature-nonce": uuid.uuid4().hex, "x-acs-content-sha256": hexsha(b"")}
    sh, sig, cq = test_signature(SECRET, "POST", pairs, hdr)
    return (f"POST /?{cq} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdr.items())
            + f"Authorization: ACS3-HMAC-SHA256 Credential={AKID},SignedHeaders={sh},"
            f"Signature={sig}\r\nContent-Length: 0\r\n\r\n").encode()


def read_for(s, seconds):
    """Everything the socket delivers within `seconds` (or until EOF)."""
    data = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        s.settimeout(max(0.01, end - time.monotonic()))
        try:
            b = s.recv(65536)
        except (TimeoutError, socket.timeout):
            break
        except (ssl.SSLError, OSError):
            break
        if not b:
            break
        data += b
    return data


def case_behaviour_stray_overlong(ctx):
    """stray and overlong send a complete, well-framed answer and keep the
    connection open; then bytes that belong to no answer: after `ms` for
    stray, right after the body for overlong. The connection still serves
    the next request."""
    with Env(ctx) as e:
        p, tx = e.initialize()
        pairs = [("MerchantBizId", p["MerchantBizId"]), ("TransactionId", tx)]
        for kind, kw, tail in (("stray", {"ms": 50, "data": "XYZ"}, b"XYZ"),
                               ("overlong", {}, fake_alibaba.DEFAULT_OVERLONG.encode())):
            e.fake.queue("CheckResult", kind, **kw)
            s = e.tls().wrap_socket(socket.create_connection(("127.0.0.1", e.port), timeout=10),
                                    server_hostname="127.0.0.1")
            s.sendall(raw_signed_request(e, "CheckResult", pairs))
            data = read_for(s, 1.0)
            head, _, rest = data.partition(b"\r\n\r\n")
            cl = int([l.split(b":", 1)[1] for l in head.split(b"\r\n")
                      if l.lower().startswith(b"content-length:")][0])
            check_eq(json.loads(rest[:cl])["Code"], "Success", f"{kind}: the answer")
            check_eq(rest[cl:], tail, f"{kind}: what follows the body")
            s.sendall(raw_signed_request(e, "CheckResult", pairs))
            check(read_for(s, 2.0).startswith(b"HTTP/1.1 200"), f"{kind}: kept alive")
            s.close()
            check(e.fake.requests()[-2]["strayWritten"], f"{kind}: logged")


def case_dark(ctx):
    """While dark the fake accepts connections and never answers (no TLS
    handshake; no answer on a connection kept from before), counting both;
    when it ends, held connections are closed and calls are answered again."""
    with Env(ctx) as e:
        p, tx = e.initialize()
        pairs = [("MerchantBizId", p["MerchantBizId"]), ("TransactionId", tx)]
        kept = e.tls().wrap_socket(socket.create_connection(("127.0.0.1", e.port), timeout=10),
                                   server_hostname="127.0.0.1")
        kept.sendall(raw_signed_request(e, "CheckResult", pairs))
        check(read_for(kept, 2.0).startswith(b"HTTP/1.1 200"), "answered before dark")
        ctl = fake_alibaba.Control(e.fake.control_port)
        check_eq(ctl.set_dark(True)["dark"], True, "dark on")
        raw = socket.create_connection(("127.0.0.1", e.port), timeout=10)
        raw.settimeout(0.5)
        try:
            e.tls().wrap_socket(raw, server_hostname="127.0.0.1", do_handshake_on_connect=True)
            check(False, "the handshake completed while dark")
        except (TimeoutError, socket.timeout):
            pass
        kept.sendall(raw_signed_request(e, "CheckResult", pairs))
        check_eq(read_for(kept, 0.5), b"", "no answer on the kept connection")
        wait_until(lambda: e.fake.counters()["dark"]["requests"] == 1, 10,
                   what="the request on the kept connection to be counted")
        check_eq(e.fake.counters()["dark"]["connections"], 1, "dark connections")
        calls = e.fake.calls("CheckResult")
        ctl.set_dark(False)
        check_eq(read_for(kept, 2.0), b"", "held connection closed without an answer")
        st, _, _, obj = e.call("CheckResult", dict(pairs))
        check_eq((st, obj["Code"]), (200, "Success"), "answered after dark")
        check_eq(e.fake.calls("CheckResult"), calls + 1, "dark requests are not calls")
        kept.close()
        raw.close()


def case_behaviour_reset(ctx):
    """reset closes the connection without answering (RST): the client gets
    a connection error, no response."""
    with Env(ctx) as e:
        e.fake.queue("Initialize", "reset")
        try:
            r = e.call("Initialize", init_params())
            check(False, f"expected a connection error, got {r}")
        except (ConnectionError, http.client.RemoteDisconnected, ssl.SSLError) as ex:
            err = ex
        check(not isinstance(err, http.client.IncompleteRead), "no response at all")
        r = e.fake.requests()[0]
        check_eq((r["behaviour"], r["outcome"], r["status"]), ("reset", "reset", None), "logged")
        check_eq(e.fake.transactions(), [], "reset did not process the call")
        # process=true: the call took effect although the client never learns it.
        e.fake.queue("Initialize", "reset", process=True)
        try:
            e.call("Initialize", init_params())
            check(False, "expected a connection error")
        except (ConnectionError, http.client.RemoteDisconnected, ssl.SSLError):
            pass
        check_eq(len(e.fake.transactions()), 1, "processed before the reset")
        # Python's ssl module reports a reset as a mere EOF; below TLS, the
        # socket shows the RST (read the descriptor directly).
        e.fake.queue("CheckResult", "reset")
        check_eq(raw_tcp_end(e, "CheckResult"), "reset", "TCP-level end of a reset")
        e.fake.queue("CheckResult", "close_mid_response")
        check_eq(raw_tcp_end(e, "CheckResult"), "eof", "TCP-level end of close_mid_response")
        e.initialize()


def raw_tcp_end(e, action):
    """Sends a signed request on a TLS connection, then reads the socket's
    descriptor under the TLS layer until it ends: "reset" (ECONNRESET) or
    "eof" (FIN)."""
    s = e.tls().wrap_socket(socket.create_connection(("127.0.0.1", e.port), timeout=10),
                            server_hostname="127.0.0.1")
    try:
        hdr = {"host": f"127.0.0.1:{e.port}", "x-acs-action": action,
               "x-acs-version": fake_alibaba.API_VERSION, "x-acs-date": utc(time.time()),
               "x-acs-signature-nonce": uuid.uuid4().hex, "x-acs-content-sha256": hexsha(b"")}
        sh, sig, cq = test_signature(SECRET, "POST", [("MerchantBizId", "a"),
                                                      ("TransactionId", "b")], hdr)
        req = f"POST /?{cq} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdr.items()) + \
            f"Authorization: ACS3-HMAC-SHA256 Credential={AKID},SignedHeaders={sh}," \
            f"Signature={sig}\r\nContent-Length: 0\r\n\r\n"
        s.sendall(req.encode())
        s.setblocking(True)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                if not os.read(s.fileno(), 65536):
                    return "eof"
            except ConnectionResetError:
                return "reset"
        return "timeout"
    finally:
        s.close()


def case_behaviour_delay_and_wildcard(ctx):
    """delay answers normally after the given time; "*" queues apply to any
    action after the action's own queue."""
    with Env(ctx) as e:
        e.fake.queue("Initialize", "delay", ms=700)
        t0 = time.monotonic()
        st, _, _, obj = e.call("Initialize", init_params())
        check_eq(st, 200, "delayed answer")
        check(time.monotonic() - t0 >= 0.6, "answer was delayed")
        e.fake.queue("*", "error", count=2, status=500, code="InternalError")
        e.fake.queue("CheckResult", "garbage")
        st, _, data, obj = e.call("CheckResult", {"MerchantBizId": "a", "TransactionId": "b"})
        check(st == 200 and obj is None, "action queue first")
        check_error(e.call("CheckResult", {"MerchantBizId": "a", "TransactionId": "b"}), 500,
                    "InternalError", "wildcard for CheckResult")
        check_error(e.call("Initialize", init_params()), 500, "InternalError",
                    "wildcard for Initialize")
        e.initialize()


def case_control_api(ctx):
    """The control API over HTTP: health, requests (filter, since, clear),
    counters, behaviours (queue, list, clear, bad input), transactions, clock,
    config and reset."""
    with Env(ctx) as e:
        st, obj = e.control("GET", "/health")
        check_eq((st, obj["port"], obj["controlPort"]), (200, e.port, e.fake.control_port),
                 "health")
        st, obj = e.control("POST", "/behaviours", [
            {"action": "Initialize", "behaviour": "error", "status": 403,
             "code": "Forbidden.RAMUserAccessDenied"},
            {"action": "CheckResult", "behaviour": "stall", "count": 2, "seconds": 5}])
        check_eq(st, 200, f"queue {obj}")
        check_eq(len(obj["behaviours"]["CheckResult"]), 2, "two stalls queued")
        check_eq(obj["behaviours"]["Initialize"][0]["code"], "Forbidden.RAMUserAccessDenied",
                 "queued error")
        for bad in ({"action": "Initialize", "behaviour": "explode"},
                    {"action": "Nope", "behaviour": "garbage"},
                    {"action": "Initialize", "behaviour": "error", "status": 500},
                    {"action": "Initialize", "behaviour": "garbage", "sesonds": 1},
                    {"action": "Initialize", "behaviour": "garbage", "count": 0}):
            st, obj = e.control("POST", "/behaviours", bad)
            check_eq(st, 400, f"refused {bad}: {obj}")
        check_eq(e.control("DELETE", "/behaviours")[0], 200, "clear behaviours")
        check_eq(e.control("GET", "/behaviours")[1], {"behaviours": {}}, "cleared")

        p, tx = e.initialize()
        e.call("CheckResult", {"MerchantBizId": p["MerchantBizId"], "TransactionId": tx})
        e.call("Initialize", init_params(), akid="LTAIunknown")
        st, obj = e.control("GET", "/requests")
        check_eq([r["action"] for r in obj["requests"]],
                 ["Initialize", "CheckResult", "Initialize"], "all requests")
        check_eq([r["signatureVerified"] for r in obj["requests"]], [True, True, False],
                 "verification flags")
        check_eq(obj["requests"][0]["params"]["CallbackToken"], p["CallbackToken"],
                 "CallbackToken in the log")
        check_eq(len(e.control("GET", "/requests?action=CheckResult")[1]["requests"]), 1,
                 "filter by action")
        seq = obj["requests"][1]["seq"]
        check_eq(len(e.control("GET", f"/requests?since={seq}")[1]["requests"]), 1, "since")
        st, obj = e.control("GET", "/counters")
        check_eq(obj["calls"], {"Initialize": 2, "CheckResult": 1}, "counters")
        st, obj = e.control("GET", f"/transactions/{tx}")
        check_eq(obj["transaction"]["callbackToken"], p["CallbackToken"], "transaction")
        check_eq(e.control("GET", "/transactions/nope")[0], 404, "unknown transaction")
        st, obj = e.control("POST", "/transactions",
                            {"transactionId": "hksregistered1", "merchantBizId": "bizR",
                             "callbackToken": "t" * 20})
        check_eq(obj["transaction"]["merchantBizId"], "bizR", "add transaction")
        check_error(e.call("CheckResult", {"MerchantBizId": "bizX", "TransactionId":
                                           "hksregistered1"}), 400, "InvalidParameter",
                    "registered transaction keeps its bizId")
        check_eq(len(e.control("GET", "/transactions")[1]["transactions"]), 2, "transactions")
        st, obj = e.control("POST", "/transactions/x/result", {"passed": "maybe"})
        check_eq(st, 400, "bad result refused")

        # Clock: 20 minutes ahead makes a current date expired, and back.
        check_eq(e.control("POST", "/clock", {"offsetSeconds": 1200})[0], 200, "clock")
        check_error(e.call("Initialize", init_params()), 400, "InvalidTimeStamp.Expired",
                    "fake clock ahead")
        e.control("POST", "/clock", {"offsetSeconds": 0})
        e.initialize()
        st, obj = e.control("POST", "/config", {"maxSkew": 5})
        check_eq((st, obj["maxSkew"]), (200, 5.0), "config")
        check_error(e.call("Initialize", init_params(), date=utc(time.time() - 60)), 400,
                    "InvalidTimeStamp.Expired", "smaller skew")
        check_eq(e.control("POST", "/config", {"bogus": 1})[0], 400, "unknown config key")

        check_eq(e.control("DELETE", "/requests")[0], 200, "clear requests")
        check_eq(e.control("GET", "/requests")[1]["requests"], [], "requests cleared")
        check_eq(e.control("POST", "/reset", {})[0], 200, "reset")
        check_eq(e.control("GET", "/counters")[1]["calls"], {}, "counters reset")
        check_eq(e.control("GET", "/transactions")[1]["transactions"], [], "transactions reset")
        check_eq(e.control("GET", "/nothing")[0], 404, "unknown route")


def case_concurrent_calls(ctx):
    """Calls on many connections at once are all verified and answered, with
    distinct transactions and exact counters (thread-safe state)."""
    with Env(ctx) as e:
        n = 24
        out = [None] * n
        errs = []

        def worker(i):
            try:
                st, _, _, obj = e.call("Initialize", init_params())
                out[i] = (st, obj["Result"]["TransactionId"])
            except Exception as ex:  # noqa: BLE001
                errs.append(repr(ex))
        ths = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        for t in ths:
            t.start()
        for t in ths:
            t.join(60)
        check_eq(errs, [], "errors")
        check(all(o and o[0] == 200 for o in out), f"all 200: {out}")
        check_eq(len({o[1] for o in out}), n, "distinct TransactionIds")
        check_eq(e.fake.calls("Initialize"), n, "counter")
        check_eq(len(e.fake.requests()), n, "log")
        check_eq(len(e.fake.transactions()), n, "transactions")


def case_subprocess_cli(ctx):
    """Run as a subprocess with the documented CLI: it reports its ports on
    stdout, serves signed calls, is driven through the control API with the
    Control client, and exits 0 on SIGTERM."""
    d = make_ca(ctx, "ca")
    port, cport = idvtest.free_port(), idvtest.free_port()
    ready = os.path.join(ctx.tmp.path, "ready.json")
    proc = subprocess.Popen([sys.executable, FAKE, "--cert", os.path.join(d, "server.pem"),
                             "--key", os.path.join(d, "server.key"), "--port", str(port),
                             "--access-key-id", AKID, "--access-key-secret", SECRET,
                             "--control-port", str(cport), "--ready-file", ready],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        check(line, f"no ready line; stderr: {proc.stderr.read() if proc.poll() is not None else ''}")
        info = json.loads(line)
        check_eq((info["port"], info["controlPort"], info["pid"]), (port, cport, proc.pid),
                 "ready line")
        with open(ready) as f:
            check_eq(json.loads(f.read()), info, "ready file")

        class E(Env):
            def __init__(self):
                self.ca = os.path.join(d, "ca.pem")

            @property
            def port(self):
                return port
        e = E()
        ctl = fake_alibaba.Control(cport)
        ctl.queue("Initialize", "error", status=403, code="Throttling.Api")
        check_error(e.call("Initialize", init_params()), 403, "Throttling.Api", "queued")
        p, tx = e.initialize()
        ctl.set_result(tx, "N", "205")
        st, _, _, obj = e.call("CheckResult", {"MerchantBizId": p["MerchantBizId"],
                                               "TransactionId": tx})
        check_eq((obj["Result"]["Passed"], obj["Result"]["SubCode"]), ("N", "205"), "result")
        check_eq(ctl.counters()["calls"], {"Initialize": 2, "CheckResult": 1}, "counters")
        check_eq(len(ctl.requests("Initialize")), 2, "requests")
        check_eq(ctl.transactions()[0]["transactionId"], tx, "transactions")
        proc.send_signal(signal.SIGTERM)
        check_eq(proc.wait(30), 0, "exit status on SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # Usage errors exit 2.
    r = subprocess.run([sys.executable, FAKE, "--cert", "x"], capture_output=True)
    check_eq(r.returncode, 2, "missing arguments")


def case_tls_certificates(ctx):
    """make_ca.sh's server certificate is valid for 127.0.0.1 and localhost;
    TLS 1.2 and 1.3 connect, TLS 1.1 does not; a client trusting another CA
    fails verification (the fake counts the failed handshake)."""
    with Env(ctx) as e:
        for host in ("127.0.0.1", "localhost"):
            c = http.client.HTTPSConnection(host, e.port, timeout=10, context=e.tls())
            c.request("POST", "/")
            r = c.getresponse()
            check_eq(r.status, 400, f"answered over TLS for {host}")
            r.read()
            c.close()
        for ver in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            t = e.tls()
            t.minimum_version = t.maximum_version = ver
            with socket.create_connection(("127.0.0.1", e.port), timeout=10) as raw:
                with t.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                    check_eq(s.version(), {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                           ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[ver], "version")
        # A client offering TLS 1.0/1.1 only is refused by the server (when the
        # local OpenSSL lets the client offer them at all).
        t = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        t.load_verify_locations(e.ca)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                t.minimum_version = ssl.TLSVersion.TLSv1
                t.maximum_version = ssl.TLSVersion.TLSv1_1
                t.set_ciphers("ALL:@SECLEVEL=0")
            except (ValueError, ssl.SSLError):
                pass
        try:
            with socket.create_connection(("127.0.0.1", e.port), timeout=10) as raw:
                with t.wrap_socket(raw, server_hostname="127.0.0.1"):
                    check(False, "TLS 1.1 must not connect")
        except (ssl.SSLError, ConnectionError) as ex:
            if "NO_PROTOCOLS_AVAILABLE" in str(ex).upper():
                print(f"note: this OpenSSL cannot offer TLS 1.1, not tested: {ex}")
            else:
                wait_until(lambda: any("UNSUPPORTED_PROTOCOL" in x
                                       for x in e.fake.counters()["tlsErrors"]), 10,
                           what=f"the server to refuse TLS 1.1 (client said {ex})")

        other = make_ca(ctx, "other")
        bad = ssl.create_default_context(cafile=os.path.join(other, "ca.pem"))
        before = e.fake.counters()["tlsHandshakeFailures"]
        try:
            with socket.create_connection(("127.0.0.1", e.port), timeout=10) as raw:
                with bad.wrap_socket(raw, server_hostname="127.0.0.1"):
                    check(False, "a client trusting another CA must fail")
        except ssl.SSLCertVerificationError:
            pass
        wait_until(lambda: e.fake.counters()["tlsHandshakeFailures"] > before, 10,
                   what="the failed handshake to be counted")
        # The fake still serves verified clients.
        e.initialize()


class _CallbackTarget:
    """A plain HTTP server recording GETs, answering 200 (or `status`)."""

    def __init__(self, status=200):
        got = self.got = []
        target = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                got.append(self.path)
                body = b'{"result":"ok"}'
                self.send_response(target.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass
        self.status = status
        self.srv = ThreadingHTTPServer(("127.0.0.1", idvtest.free_port()), H)
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


def case_callback_probe_and_delivery(ctx):
    """Optional extras: with probe_callback the fake GETs the bare CallbackUrl
    during Initialize (400 InvalidParameter unless 200, like Alibaba), and
    deliver_callback sends the completion callback with transactionId,
    passed, subCode and callbackToken appended."""
    target = _CallbackTarget()
    try:
        with Env(ctx, probe_callback="http") as e:
            url = f"https://127.0.0.1:{target.port}/idv/callback"
            p, tx = e.initialize(CallbackUrl=url, CallbackToken="tok-ABCDEFGHIJ0123456789 +/")
            check_eq(target.got, ["/idv/callback"], "bare probe")
            check_eq(e.fake.requests()[0]["callbackProbe"]["status"], 200, "probe logged")
            target.status = 503
            check_error(e.call("Initialize", init_params(CallbackUrl=url)), 400,
                        "InvalidParameter", "unreachable callback")
            target.status = 200
            e.fake.set_result(tx, "Y", "200")
            st, obj = e.control("POST", f"/transactions/{tx}/callback", {"scheme": "http"})
            check_eq((st, obj.get("status")), (200, 200), f"delivered {obj}")
            check_eq(target.got[-1], f"/idv/callback?transactionId={tx}&passed=Y&subCode=200"
                                     f"&callbackToken=tok-ABCDEFGHIJ0123456789%20%2B%2F",
                     "callback query")
            r = e.fake.deliver_callback(tx, passed="N", sub_code="205", scheme="http",
                                        extra_query="&subCode=200")
            check_eq(r["status"], 200, "second delivery")
            check(target.got[-1].endswith("passed=N&subCode=205&callbackToken="
                                          "tok-ABCDEFGHIJ0123456789%20%2B%2F&subCode=200"),
                  f"overrides and extra query: {target.got[-1]}")
            r = e.fake.deliver_callback(tx, url=f"https://127.0.0.1:{idvtest.free_port()}/x")
            check("error" in r, f"unreachable target reported: {r}")
    finally:
        target.close()


if __name__ == "__main__":
    sys.exit(idvtest.main(globals()))
