#!/usr/bin/env python3
"""The daemon's signatures against Alibaba's own libraries.

A few hundred generated requests (Initialize through the admin API with
awkward parameter values, CheckResult through the confirmation queue) go from
the daemon to the fake Alibaba, which captures each request as it arrived:
method, path, raw query and headers as received. Then Alibaba's official
@alicloud/openapi-util 0.3.3 (getAuthorization over the request as received)
and @alicloud/openapi-client 0.4.15 (the same call made by the official client
at the same time with the same nonce) compute the Authorization, and every one
must equal what the daemon put on the wire.

The npm packages are installed by the ctest fixture interop.npm_ci (`npm ci`
from package-lock.json into the build directory, named by IDV_INTEROP_DIR).
"""
import json
import os
import random
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, os.path.join(HERE, "..", "fake_alibaba"))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import fake_alibaba  # noqa: E402
import idvtest  # noqa: E402
from idvtest import check, check_eq, wait_until  # noqa: E402
from test_initialize import KEY_ID, alibaba, init  # noqa: E402

N_INITIALIZE = 240
N_CHECKRESULT = 60

# The characters the issue names, and some more that encoders disagree on.
AWKWARD = [" ", "*", "~", "+", "/", "%", "=", "&", "?", "#", "!", "'", "(", ")", ";", ":", ",",
           "@", "$", "[", "]", "\"", "\\", "<", ">", "|", "^", "`", "{", "}", "-", "_", "."]
UTF8 = ["é", "ü", "ß", "€", "中文", "日本語", "한국어", "Ω", "😀", "e\u0301", "\u00a0", "\u2028"]
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def awkward_text(rng, n, forced=None):
    parts = [forced] if forced else []
    while len("".join(parts).encode()) < n:
        pick = rng.random()
        if pick < 0.4:
            parts.append(rng.choice(AWKWARD))
        elif pick < 0.6:
            parts.append(rng.choice(UTF8))
        else:
            parts.append("".join(rng.choice(ALNUM) for _ in range(rng.randint(1, 4))))
    rng.shuffle(parts)
    s = "".join(parts)
    while len(s.encode()) > n:
        s = s[:-1]
    return s or "x"


def json_value(rng, forced=None):
    """A string holding JSON: objects with awkward strings, numbers, nulls,
    nested arrays; sometimes an empty JSON value; ASCII-escaped or raw UTF-8."""
    kind = rng.random()
    if kind < 0.12:
        return rng.choice(["{}", "[]", '""', "null", "0"])
    obj = {"zimVer": "3.0.0", "ua": awkward_text(rng, rng.randint(1, 60), forced),
           "empty": "", "list": [1, 2.5, None, True, awkward_text(rng, 8)],
           "nested": {"k v": "a&b=c", "pct": "100%", "plus": "1+1"}}
    return json.dumps(obj, ensure_ascii=rng.random() < 0.5,
                      separators=(",", ":") if rng.random() < 0.5 else (", ", ": "))


def initialize_body(rng, i):
    """Parameters for the i-th Initialize: the first ones each force one of
    the awkward characters into MerchantUserId and MetaInfo, so that every one
    is covered whatever the random choices."""
    forced = (AWKWARD + UTF8)[i] if i < len(AWKWARD) + len(UTF8) else None
    biz = f"io{i}" + "".join(rng.choice(ALNUM) for _ in range(rng.randint(0, 26)))
    b = {"merchantBizId": biz[:32], "merchantUserId": awkward_text(rng, rng.randint(1, 128),
                                                                    forced),
         "metaInfo": json_value(rng, forced)}
    if rng.random() < 0.5:
        tail = "".join(rng.choice(ALNUM + "*~+/%=&?#!'();:,@$-_.") for _ in range(20))
        b["returnUrl"] = rng.choice(["https://", "http://"]) + "shop.example.com/r?" + tail
    if rng.random() < 0.4:
        b["sceneCode"] = "".join(rng.choice(ALNUM + "_") for _ in range(rng.randint(1, 10)))
    for k in ("languageConfig", "styleConfig"):
        if rng.random() < 0.4:
            b[k] = json_value(rng)
    for k, vals in (("securityLevel", ["01", "02"]),
                    ("model", ["LIVENESS", "PHOTINUS_LIVENESS", "SILENT"]),
                    ("docVideo", ["Y", "N"]), ("showGuidePage", ["1", "0"]),
                    ("procedurePriority", ["url", "keep"]), ("appQualityCheck", ["Y", "N"])):
        if rng.random() < 0.3:
            b[k] = rng.choice(vals)
    return b


def captured(r):
    return {"method": r["method"], "path": r["path"], "rawQuery": r["rawQuery"],
            "headers": r["rawHeaders"], "action": r["action"]}


def case_signatures(ctx):
    """Every Authorization the daemon sent equals the one Alibaba's libraries
    compute for that request, time and nonce."""
    node_dir = os.environ.get("IDV_INTEROP_DIR")
    check(node_dir and os.path.isdir(os.path.join(node_dir, "node_modules", "@alicloud",
                                                  "openapi-util")),
          f"IDV_INTEROP_DIR={node_dir!r} has no node_modules (run the interop.npm_ci fixture)")
    rng = random.Random(14)
    s = alibaba(ctx, alibaba_qps=500, confirm_poll_ms=100)
    bodies = [initialize_body(rng, i) for i in range(N_INITIALIZE)]
    answers = {}
    lock = threading.Lock()

    def worker(part):
        for b in part:
            st, r, _ = init(s.d, b)
            with lock:
                answers[b["merchantBizId"]] = (st, r)
    ts = [threading.Thread(target=worker, args=(bodies[k::4],)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(300)
    bad = {k: v for k, v in answers.items() if v[0] != 201}
    check_eq(len(answers), N_INITIALIZE, "answers")
    check(not bad, f"Initialize not 201: {list(bad.items())[:3]}")

    # CheckResult: registered transactions with every character a
    # transactionId may hold, confirmed through the queue.
    for i in range(N_CHECKRESULT):
        tx = f"cr{i}-" + "".join(rng.choice(ALNUM + "-_") for _ in range(rng.randint(1, 100)))
        biz = f"crb{i}" + "".join(rng.choice(ALNUM) for _ in range(rng.randint(0, 20)))
        tok = f"tok-{i}-" + "".join(rng.choice(ALNUM) for _ in range(24))
        check_eq(s.d.register(tx, biz, tok)[0], 201, f"register {tx}")
        s.fake.add_transaction(tx, biz, tok)
        s.fake.set_result(tx, "Y", "200")
        st, b, _, _ = s.d.callback(tx, "Y", "200", tok)
        check_eq(b, {"result": "accepted"}, f"callback {tx}")
    wait_until(lambda: len(s.fake.requests("CheckResult")) >= N_CHECKRESULT, 120,
               what=f"{N_CHECKRESULT} CheckResult calls")

    reqs = s.fake.requests("Initialize") + s.fake.requests("CheckResult")[:N_CHECKRESULT]
    check_eq(len(reqs), N_INITIALIZE + N_CHECKRESULT, "requests captured")
    check(all(r["signatureVerified"] for r in reqs), "the fake verified every signature")
    path = os.path.join(ctx.tmp.path, "captured.json")
    with open(path, "w") as f:
        json.dump([captured(r) for r in reqs], f)
    secret = os.path.join(ctx.tmp.path, "alibaba.secret")
    out = subprocess.run(["node", os.path.join(node_dir, "reference.js"), path, KEY_ID, secret],
                         cwd=node_dir, capture_output=True, text=True, timeout=120)
    check_eq(out.returncode, 0, f"node reference.js: {out.stderr[-2000:]}")
    ref = json.loads(out.stdout)
    check_eq(len(ref), len(reqs), "reference answers")

    util_ok = client_ok = 0
    mismatches = []
    for r, x in zip(reqs, ref):
        sent = r["headers"]["authorization"]
        util_ok += x["util"] == sent
        client_ok += x["client"] == sent
        if (x["util"] != sent or x["client"] != sent) and len(mismatches) < 3:
            mismatches.append({"action": r["action"], "query": r["rawQuery"][:300],
                               "headers": r["rawHeaders"], "sent": sent, "util": x["util"],
                               "client": x["client"]})
    by_action = {a: sum(1 for r in reqs if r["action"] == a) for a in ("Initialize", "CheckResult")}
    covered = {c: sum(1 for r in reqs if any(c in v for v in r["params"].values()))
               for c in AWKWARD[:8] + UTF8[:4]}
    optional_absent = sum(1 for r in reqs if r["action"] == "Initialize"
                          and "ReturnUrl" not in r["params"])
    json_empty = sum(1 for r in reqs for k in ("MetaInfo", "LanguageConfig", "StyleConfig")
                     if r["params"].get(k) in ("{}", "[]", '""', "null", "0"))
    print(f"requests: {by_action}; parameters containing: {covered}; Initialize without"
          f" ReturnUrl: {optional_absent}; JSON parameters that are empty JSON: {json_empty}")
    print(f"@alicloud/openapi-util 0.3.3 getAuthorization: agreed {util_ok}/{len(reqs)}")
    print(f"@alicloud/openapi-client 0.4.15 (same call, time, nonce): agreed"
          f" {client_ok}/{len(reqs)}")
    check(all(x["clientContentType"] is None for x in ref),
          "the official client sent a Content-Type on an empty body")
    check_eq((util_ok, client_ok), (len(reqs), len(reqs)),
             f"agreement; first mismatches: {json.dumps(mismatches, ensure_ascii=False)[:3000]}")
    s.d.stop_clean()


if __name__ == "__main__":
    sys.exit(idvtest.main(globals()))
