#!/usr/bin/env python3
"""Foundation: the callback receiver end to end, against a real PostgreSQL.

Every case starts its own cluster and daemon(s). No assertion is about time:
idvtest.wait_until only bounds waits for things that happen asynchronously
(audit rows of malformed callbacks, NOTIFY, readiness)."""
import collections
import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
import idvtest  # noqa: E402
from idvtest import check, check_eq, wait_until  # noqa: E402

TOKEN = "tok-AAAAAAAAAAAAAAAAAAAA"
SQL_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "sql")
OUTCOMES = ["ok", "accepted", "duplicate", "conflict", "rejected", "malformed", "unavailable"]
BODY = {o: json.dumps({"result": o}, separators=(",", ":")).encode() for o in OUTCOMES}
BODY_STATUS = {"ok": 200, "accepted": 200, "duplicate": 200, "conflict": 409, "rejected": 403,
               "malformed": 400, "unavailable": 503}


# ---- helpers ----------------------------------------------------------------

def secret(tag):
    """A fresh token, unique in the whole test run, that is easy to grep for."""
    return f"SeCrEt-{tag}-{uuid.uuid4().hex}"


def sha_hex(s):
    return hashlib.sha256(s.encode()).hexdigest()


def query(tx=None, passed=None, sub=None, token=None, extra=""):
    q = []
    for name, v in (("transactionId", tx), ("passed", passed), ("subCode", sub),
                    ("callbackToken", token)):
        if v is not None:
            q.append(f"{name}={v}")
    return "&".join(q) + extra


def raw_request(method, target, headers=(), body=b"", close=False):
    """The bytes of one HTTP/1.1 request."""
    lines = [f"{method} {target} HTTP/1.1", "Host: idv.test"] + list(headers)
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def register_ok(d, tx, biz, token, user=None):
    st, body = d.register(tx, biz, token, user)
    check_eq(st, 201, f"register {tx}")
    check_eq(body, {"transactionId": tx}, f"register {tx} body")


def expect_callback(d, want, *args, **kw):
    """Sends one callback and checks status and exact body of an outcome."""
    st, _, hd, raw = d.callback(*args, **kw)
    check_eq((st, raw), (BODY_STATUS[want], BODY[want]), f"callback {args} {kw}")
    check_eq(hd.get("Content-Type"), "application/json", "content type")
    return hd


def count(pg, sql):
    return int(pg.psql(sql))


def wait_events(pg, n, where="true"):
    """Waits until idv.callback_events holds n rows matching where (audit rows
    of malformed callbacks are written after the answer), then checks that
    there are not more."""
    sql = f"SELECT count(*) FROM idv.callback_events WHERE {where}"
    wait_until(lambda: count(pg, sql) >= n, 30, what=f"{n} callback_events rows ({where})")
    check_eq(count(pg, sql), n, f"callback_events rows ({where})")


def metric(d, outcome):
    return idvtest.metric_value(d.metrics(), "idv_callbacks_total", outcome=outcome)


def run_threads(targets):
    """Runs callables in threads that start together; returns their results."""
    barrier = threading.Barrier(len(targets))
    results = [None] * len(targets)
    errors = []

    def run(i, fn):
        try:
            results[i] = fn(barrier)
        except Exception as e:  # reported below, with the others
            errors.append(repr(e))
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    check(not any(t.is_alive() for t in threads), "threads did not finish")
    check_eq(errors, [], "thread errors")
    return results


def callback_at_barrier(port, path):
    """A callable for run_threads: connects first, waits for the others, then
    sends one GET; returns (status, body)."""
    def fn(barrier):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            c.connect()
            barrier.wait(30)
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()
    return fn


def sql_versions():
    return sorted(int(f[:4]) for f in os.listdir(SQL_DIR) if re.match(r"^\d{4}_.*\.sql$", f))


# ---- the status table ---------------------------------------------------------

def case_probe_ok(ctx):
    """Alibaba's reachability probe: no known parameter (none, or only unknown
    ones), GET or HEAD, on the path and below it: 200 ok and no audit row."""
    pg = ctx.pg()
    d = ctx.daemon(pg)
    for target in ["/idv/callback", "/idv/callback?", "/idv/callback?foo=1&utm_source=x&pass=Y",
                   "/idv/callback?transactionIdX=1&callbackTokens=2&sub%43ode2=3",
                   "/idv/callback/anything/below"]:
        st, hd, body = d.request("GET", target)
        check_eq((st, body), (200, BODY["ok"]), f"GET {target}")
        check_eq(hd.get("Content-Type"), "application/json", "content type")
    # HEAD: the same status and headers, and not one byte of body.
    data, closed = idvtest.raw_http(d.public_port,
                                    raw_request("HEAD", "/idv/callback?foo=bar", close=True),
                                    timeout=30)
    check(closed, "connection closed after Connection: close")
    head, sep, rest = data.partition(b"\r\n\r\n")
    check(sep == b"\r\n\r\n", f"complete head: {data!r}")
    check(head.startswith(b"HTTP/1.1 200 "), f"HEAD status: {head!r}")
    check_eq(rest, b"", "HEAD body")
    check_eq(metric(d, "ok"), 6.0, "ok counter")
    # Audit rows are written in order: once the row of a later malformed
    # callback is there, a row of any probe would be too.
    expect_callback(d, "malformed", "txp", "Y")
    wait_events(pg, 1, "outcome = 'malformed'")
    check_eq(count(pg, "SELECT count(*) FROM idv.callback_events"), 1, "audit rows of probes")


def case_accepted_committed(ctx):
    """An accepted callback is committed before the 200: status passed or
    not_passed with confirmed=false, the result row, the audit row with the
    client address, the status events, and a NOTIFY of the change."""
    pg = ctx.pg()
    d = ctx.daemon(pg)
    lis = pg.listen("idv_transaction_status")
    register_ok(d, "tx1", "biz1", TOKEN)
    t2 = secret("t2")
    register_ok(d, "tx2", "biz2", t2, user="user-2")
    expect_callback(d, "accepted", "tx1", "Y", "200", TOKEN)
    # Read right after the answer, from another session: the commit came first.
    check_eq(pg.psql("SELECT status, passed, sub_code, confirmed, completed_at IS NOT NULL"
                     " FROM idv.transaction_status WHERE transaction_id = 'tx1'"),
             "passed|Y|200|f|t", "status row of tx1")
    check_eq(pg.rows("SELECT transaction_id, passed, sub_code, instance FROM idv.callback_results"),
             [["tx1", "Y", "200", "idv"]], "callback_results")
    check_eq(pg.rows("SELECT outcome, transaction_id, passed, sub_code, host(client_ip), instance"
                     " FROM idv.callback_events"),
             [["accepted", "tx1", "Y", "200", "127.0.0.1", "idv"]], "callback_events")
    check_eq(pg.rows("SELECT status, coalesce(previous_status, '-'), coalesce(passed, '-'),"
                     " confirmed FROM idv.transaction_events WHERE transaction_id = 'tx1'"
                     " ORDER BY id"),
             [["initiated", "-", "-", "f"], ["passed", "initiated", "Y", "f"]],
             "transaction_events of tx1")
    expect_callback(d, "accepted", "tx2", "N", "205", t2)
    check_eq(pg.psql("SELECT status, passed, sub_code, confirmed, merchant_user_id"
                     " FROM idv.transaction_status WHERE transaction_id = 'tx2'"),
             "not_passed|N|205|f|user-2", "status row of tx2")

    def final(notes):
        got = {}
        for ch, payload in notes:
            p = json.loads(payload)
            if ch == "idv_transaction_status" and p.get("status") in ("passed", "not_passed"):
                got[p["transactionId"]] = p
        return got if len(got) == 2 else None
    got = final(lis.wait_for(final, what="NOTIFY of both final statuses"))
    for tx, status, passed, sub in (("tx1", "passed", "Y", "200"),
                                    ("tx2", "not_passed", "N", "205")):
        p = got[tx]
        check_eq((p["status"], p["previousStatus"], p["passed"], p["subCode"], p["confirmed"]),
                 (status, "initiated", passed, sub, False), f"NOTIFY payload of {tx}")
    st, hd, body = d.request("GET", "/v1/transactions/tx1", admin=True)
    check_eq(st, 200, "GET status")
    j = json.loads(body)
    check_eq((j["transactionId"], j["status"], j["passed"], j["subCode"], j["confirmed"]),
             ("tx1", "passed", "Y", "200", False), "GET body")
    check_eq(metric(d, "accepted"), 2.0, "accepted counter")


def case_param_names_and_encoding(ctx):
    """Parameter names match case-insensitively, values are percent-decoded
    exactly once, and '+' stays '+'."""
    pg = ctx.pg()
    d = ctx.daemon(pg)
    odd = "k3y:with/odd&chars=?#~!*()'@$,;[]"  # every byte needs care in a query
    plus = "plus+sign+token+0123"
    pct = "pct%41literal-token-01"             # a literal '%' in the token
    register_ok(d, "txa", "biza", odd)
    register_ok(d, "txb", "bizb", plus)
    register_ok(d, "txc", "bizc", pct)
    st, _, raw = d.request("GET", "/idv/callback?TRANSACTIONID=txa&Passed=Y&subcode=200"
                           "&CallbackToken=" + urllib.parse.quote(odd, safe=""))
    check_eq((st, raw), (200, BODY["accepted"]), "upper/mixed case names, encoded token")
    st, _, raw = d.request("GET", "/idv/callback?callbacktoken=" + plus +
                           "&SUBCODE=%32%30%31&passed=%4E&transactionid=%74xb")
    check_eq((st, raw), (200, BODY["accepted"]), "'+' kept, encoded values")
    # Decoded once: %25 becomes '%' and the '%41' that results stays as it is.
    expect_callback(d, "accepted", "txc", "Y", "200", "pct%2541literal-token-01")
    check_eq(pg.rows("SELECT transaction_id, passed, sub_code FROM idv.callback_results"
                     " ORDER BY 1"),
             [["txa", "Y", "200"], ["txb", "N", "201"], ["txc", "Y", "200"]], "results")
    # A token decoded twice would be another token.
    register_ok(d, "txd", "bizd", "dbl%41decoded-token")
    expect_callback(d, "rejected", "txd", "Y", "200", "dblAdecoded-token")


def case_accepted_duplicate_conflict(ctx):
    """First result accepted and committed; same again duplicate; a different
    passed or subCode conflict, and the first result stays."""
    pg = ctx.pg()
    d = ctx.daemon(pg)
    register_ok(d, "tx1", "biz1", TOKEN)
    expect_callback(d, "accepted", "tx1", "Y", "200", TOKEN)
    check_eq(pg.psql("SELECT status, passed, sub_code, confirmed FROM idv.transaction_status"
                     " WHERE transaction_id = 'tx1'"), "passed|Y|200|f", "status row")
    expect_callback(d, "duplicate", "tx1", "Y", "200", TOKEN)
    expect_callback(d, "conflict", "tx1", "N", "205", TOKEN)
    expect_callback(d, "conflict", "tx1", "N", "200", TOKEN)
    expect_callback(d, "conflict", "tx1", "Y", "201", TOKEN)
    expect_callback(d, "duplicate", "tx1", "Y", "200", TOKEN)
    check_eq(pg.psql("SELECT passed, sub_code FROM idv.callback_results"), "Y|200",
             "first result kept")
    check_eq(pg.psql("SELECT status, passed, sub_code FROM idv.transaction_status"),
             "passed|Y|200", "status kept")
    check_eq(pg.psql("SELECT string_agg(outcome || ':' || passed || ':' || sub_code, ','"
                     " ORDER BY id) FROM idv.callback_events"),
             "accepted:Y:200,duplicate:Y:200,conflict:N:205,conflict:N:200,conflict:Y:201,"
             "duplicate:Y:200", "audit rows")
    check_eq(count(pg, "SELECT count(*) FROM idv.transaction_events"), 2,
             "status events (initiated, passed)")
    check_eq((metric(d, "accepted"), metric(d, "duplicate"), metric(d, "conflict")),
             (1.0, 2.0, 3.0), "counters")


def case_rejected_identical(ctx):
    """An unknown token, a token of another transaction and a token for an
    unknown transaction all give the same 403, byte for byte but the Date."""
    pg = ctx.pg()
    d = ctx.daemon(pg)
    t1, t2, unknown = secret("t1"), secret("t2"), secret("unknown")
    register_ok(d, "tx1", "biz1", t1)
    register_ok(d, "tx2", "biz2", t2)
    answers = []
    for label, q in (("unknown token", query("tx1", "Y", "200", unknown)),
                     ("token of tx2", query("tx1", "Y", "200", t2)),
                     ("token for an unknown transaction", query("txz", "Y", "200", t1))):
        data, closed = idvtest.raw_http(d.public_port,
                                        raw_request("GET", "/idv/callback?" + q, close=True),
                                        timeout=30)
        resp = idvtest.parse_responses(data)
        check_eq(len(resp), 1, f"{label}: one response")
        check_eq((resp[0][0], resp[0][2]), (403, BODY["rejected"]), label)
        # Everything but the Date line, in order.
        answers.append((label, re.sub(rb"\r\nDate: [^\r]*", b"", data)))
    for label, a in answers[1:]:
        check_eq(a, answers[0][1], f"bytes of '{label}' vs '{answers[0][0]}'")
    check_eq(pg.psql("SELECT string_agg(outcome || ':' || transaction_id, ',' ORDER BY id)"
                     " FROM idv.callback_events"),
             "rejected:tx1,rejected:tx1,rejected:txz", "audit rows")
    check_eq(count(pg, "SELECT count(*) FROM idv.callback_results"), 0, "no result recorded")
    check_eq(pg.psql("SELECT string_agg(status, ',' ORDER BY transaction_id)"
                     " FROM idv.transaction_status"), "initiated,initiated", "statuses unchanged")
    # Nothing was used up: the right token still works for both.
    expect_callback(d, "accepted", "tx1", "Y", "200", t1)
    expect_callback(d, "accepted", "tx2", "N", "205", t2)
    check_eq(metric(d, "rejected"), 3.0, "rejected counter")


MALFORMED_TOKEN = "SeCrEt-malformed-case-0001"


def malformed_queries():
    """(label, query, (transactionId, passed, subCode) the audit row keeps) of
    each malformed callback: fields that were present and well-formed are kept,
    a repeated one is not. Every token in them carries the marker SeCrEt, so
    that the audit table can be searched for it."""
    tx, p, s, t = "txm", "Y", "200", MALFORMED_TOKEN
    all3, no_tx, no_p, no_s = (tx, p, s), (None, p, s), (tx, None, s), (tx, p, None)
    return [
        ("missing transactionId", query(None, p, s, t), no_tx),
        ("missing passed", query(tx, None, s, t), no_p),
        ("missing subCode", query(tx, p, None, t), no_s),
        ("missing callbackToken", query(tx, p, s, None), all3),
        ("passed lower case", query(tx, "y", s, t), no_p),
        ("passed YES", query(tx, "YES", s, t), no_p),
        ("passed empty", query(tx, "", s, t), no_p),
        ("passed 1", query(tx, "1", s, t), no_p),
        ("passed encoded space", query(tx, "Y%20", s, t), no_p),
        ("subCode 17 long", query(tx, p, "A" * 17, t), no_s),
        ("subCode empty", query(tx, p, "", t), no_s),
        ("subCode space", query(tx, p, "20%200", t), no_s),
        ("subCode slash", query(tx, p, "20/0", t), no_s),
        ("subCode plus", query(tx, p, "20+0", t), no_s),
        ("subCode non-ASCII", query(tx, p, "%C3%A9", t), no_s),
        ("transactionId 129 long", query("t" * 129, p, s, t), no_tx),
        ("transactionId empty", query("", p, s, t), no_tx),
        ("transactionId dot", query("tx.1", p, s, t), no_tx),
        ("transactionId encoded slash", query("tx%2F1", p, s, t), no_tx),
        ("transactionId NUL", query("tx%00", p, s, t), no_tx),
        ("transactionId without value", "transactionId&" + query(None, p, s, t), no_tx),
        ("token 15 long", query(tx, p, s, "SeCrEt-15-chars"), all3),
        ("token 257 long", query(tx, p, s, "SeCrEt-" + "x" * 250), all3),
        ("token with space", query(tx, p, s, "SeCrEt-with%20space-0001"), all3),
        ("token non-ASCII", query(tx, p, s, "SeCrEt-%C3%A9-nonascii-01"), all3),
        ("token control byte", query(tx, p, s, "SeCrEt-%01-control-0001"), all3),
        ("token DEL", query(tx, p, s, "SeCrEt-%7F-delete-00001"), all3),
        ("token empty", query(tx, p, s, ""), all3),
        ("bad percent-encoding %zz", query("tx%zz", p, s, t), no_tx),
        ("bad percent-encoding at the end", query(tx, p, s, t + "%"), all3),
        ("bad percent-encoding %4", query(tx, p, "%4", t), no_s),
        ("bad percent-encoding in an unknown value", query(tx, p, s, t, "&foo=%G1"), all3),
        ("bad percent-encoding in a name", query(tx, p, s, t, "&%zz=1"), all3),
        ("transactionId twice", query(tx, p, s, t, "&transactionId=" + tx), no_tx),
        ("transactionId twice, other case", query(tx, p, s, t, "&TRANSACTIONID=" + tx), no_tx),
        ("passed twice", query(tx, p, s, t, "&passed=Y"), no_p),
        ("subCode twice", query(tx, p, s, t, "&SubCode=200"), no_s),
        ("callbackToken twice", query(tx, p, s, t, "&callbacktoken=" + t), all3),
    ]


def case_malformed_each(ctx):
    """Each malformed callback: 400 malformed, an audit row 'malformed' for
    each, no result recorded, and no token in any column."""
    pg = ctx.pg()
    d = ctx.daemon(pg)
    register_ok(d, "txm", "bizm", MALFORMED_TOKEN)
    cases = malformed_queries()
    for label, q, _ in cases:
        st, _, raw = d.request("GET", "/idv/callback?" + q)
        check_eq((st, raw), (400, BODY["malformed"]), label)
    wait_events(pg, len(cases), "outcome = 'malformed'")
    check_eq(count(pg, "SELECT count(*) FROM idv.callback_events"), len(cases), "audit rows")
    check_eq(count(pg, "SELECT count(*) FROM idv.callback_events WHERE reason IS NULL"
                   " OR host(client_ip) <> '127.0.0.1' OR instance <> 'idv'"), 0,
             "every audit row has a reason, the client address and the instance")
    check_eq(count(pg, "SELECT count(*) FROM idv.callback_events e"
                   " WHERE strpos(e::text, 'SeCrEt') > 0"), 0, "rows holding a token")
    # What was seen and well-formed is kept, in request order.
    rows = pg.rows("SELECT coalesce(transaction_id, '-'), coalesce(passed, '-'),"
                   " coalesce(sub_code, '-') FROM idv.callback_events ORDER BY id")
    for (label, _, want), row in zip(cases, rows):
        check_eq(row, [w or "-" for w in want], f"audit row of '{label}'")
    check_eq(count(pg, "SELECT count(*) FROM idv.callback_results"), 0, "no result recorded")
    check_eq(pg.psql("SELECT status FROM idv.transaction_status"), "initiated", "status unchanged")
    check_eq(metric(d, "malformed"), float(len(cases)), "malformed counter")
    # The well-formed callback still works afterwards.
    expect_callback(d, "accepted", "txm", "Y", "200", MALFORMED_TOKEN)


def case_malformed_request_body(ctx):
    """A callback with a request body, or with Transfer-Encoding: 400
    malformed, the connection closed (what follows is not read as a request),
    an audit row, and nothing recorded even though the parameters are valid.
    A body on another path is refused too, without an audit row. Content-Length
    0 is not a body."""
    pg = ctx.pg()
    d = ctx.daemon(pg)
    register_ok(d, "txb", "bizb", TOKEN)
    target = "/idv/callback?" + query("txb", "Y", "200", TOKEN)
    follow = raw_request("GET", "/idv/callback?" + query("txb", "Y", "200", TOKEN))
    for label, req, want in (
            ("body", raw_request("GET", target, ["Content-Length: 4"], b"abcd") + follow,
             BODY["malformed"]),
            ("chunked", raw_request("GET", target, ["Transfer-Encoding: chunked"],
                                    b"4\r\nabcd\r\n0\r\n\r\n") + follow, BODY["malformed"]),
            ("body on /healthz", raw_request("GET", "/healthz", ["Content-Length: 2"], b"{}") +
             follow, None),
            ("body on a sub-path", raw_request("GET", "/idv/callback/x?" + query(
                "txb", "N", "201", TOKEN), ["Content-Length: 1"], b"x") + follow,
             BODY["malformed"])):
        data, closed = idvtest.raw_http(d.public_port, req, timeout=30)
        resp = idvtest.parse_responses(data)
        check_eq([s for s, _, _ in resp], [400], f"{label}: answers")
        if want is not None:
            check_eq(resp[0][2], want, f"{label}: body")
        check_eq(resp[0][1].get("connection"), "close", f"{label}: Connection header")
        check(closed, f"{label}: connection closed")
    # Rows are written in order: the /healthz one, if any, came before the last.
    wait_events(pg, 3)
    check_eq(pg.rows("SELECT outcome, transaction_id, passed, sub_code, host(client_ip),"
                     " reason IS NOT NULL FROM idv.callback_events ORDER BY id"),
             [["malformed", "txb", "Y", "200", "127.0.0.1", "t"]] * 2 +
             [["malformed", "txb", "N", "201", "127.0.0.1", "t"]], "audit rows")
    check_eq(count(pg, "SELECT count(*) FROM idv.callback_events e"
                   " WHERE strpos(e::text, 'AAAAAAAAAAAAAAAA') > 0"), 0, "rows holding the token")
    check_eq(count(pg, "SELECT count(*) FROM idv.callback_results"), 0, "no result recorded")
    check_eq(metric(d, "malformed"), 3.0, "malformed counter")
    # Content-Length: 0 is allowed, and the connection stays open.
    data, closed = idvtest.raw_http(
        d.public_port, raw_request("GET", target, ["Content-Length: 0"]) +
        raw_request("GET", "/healthz", close=True), timeout=30)
    resp = idvtest.parse_responses(data)
    check_eq([(s, b) for s, _, b in resp], [(200, BODY["accepted"]), (200, b'{"status":"ok"}')],
             "Content-Length: 0 then /healthz")


def case_boundaries_accepted(ctx):
    """The longest transactionId (128) and token (256, every printable byte)
    and subCode (16), and the shortest ones, are accepted: the rules are not
    stricter than the contract."""
    pg = ctx.pg()
    d = ctx.daemon(pg)
    long_tx = ("Ab9_-" * 26)[:128]
    printable = "".join(chr(c) for c in range(0x21, 0x7f))
    long_tok = (printable * 3)[:256]
    long_sub = "Zz09_.-" * 2 + "xy"
    check_eq((len(long_tx), len(long_tok), len(long_sub)), (128, 256, 16), "lengths")
    register_ok(d, long_tx, "B" * 32, long_tok)
    register_ok(d, "t", "b", "sixteen-chars-01")
    expect_callback(d, "accepted", long_tx, "N", long_sub, urllib.parse.quote(long_tok, safe=""))
    expect_callback(d, "accepted", "t", "Y", "1", "sixteen-chars-01")
    check_eq(pg.rows("SELECT length(transaction_id), sub_code FROM idv.callback_results"
                     " ORDER BY 1"), [["1", "1"], ["128", long_sub]], "results")


def case_db_down_503_then_recovers(ctx):
    """With PostgreSQL down: 503 unavailable with Retry-After, readyz 503 on
    both listeners, healthz 200. After PostgreSQL is back, without restarting
    the daemon: readyz 200, and the same callback is accepted (the 503 recorded
    nothing)."""
    pg = ctx.pg()
    d = ctx.daemon(pg, db_timeout_ms=1000)
    register_ok(d, "tx1", "biz1", TOKEN)
    pg.stop()
    for admin in (False, True):
        wait_until(lambda: d.status("/readyz", admin=admin) == 503, 30,
                   what=f"readyz 503 (admin={admin})")
        check_eq(d.status("/healthz", admin=admin), 200, f"healthz while down (admin={admin})")
    hd = expect_callback(d, "unavailable", "tx1", "Y", "200", TOKEN)
    check(re.fullmatch(r"[0-9]+", hd.get("Retry-After", "")), f"Retry-After: {hd}")
    st, hd, _ = d.request("GET", "/readyz")
    check(st == 503 and re.fullmatch(r"[0-9]+", hd.get("Retry-After", "")), "readyz Retry-After")
    # A malformed callback needs no lookup: answered at once, its audit row
    # waits for PostgreSQL and must still say when the request came.
    t_sent = time.time()
    expect_callback(d, "malformed", "tx1", "maybe", "200", TOKEN)
    t_restart = time.time()
    pid = d.proc.pid
    pg.start()
    for admin in (False, True):
        wait_until(lambda: d.status("/readyz", admin=admin) == 200, 60,
                   what=f"readyz 200 again (admin={admin})")
    check(d.proc.poll() is None and d.proc.pid == pid, "the daemon was not restarted")
    # The held audit row goes to the first connection back; the callback is
    # sent once the pool is whole and that row is written, so that a slow
    # first statement on a new backend (a loaded machine) cannot use up its
    # one-second deadline waiting behind it. What is tested: recovery
    # without a restart, and that the 503s recorded nothing.
    wait_events(pg, 1, "outcome = 'malformed'")
    wait_until(lambda: idvtest.metric_value(d.metrics(), "idv_db_connections",
                                            state="ready") == 4.0, 60,
               what="the daemon's four PostgreSQL connections ready again")
    expect_callback(d, "accepted", "tx1", "Y", "200", TOKEN)
    check_eq(pg.psql("SELECT status, passed, sub_code FROM idv.transaction_status"),
             "passed|Y|200", "status after recovery")
    # In the order the requests came: received_at. Not by id: the held audit
    # row and the new callback are written by two connections at once after
    # the recovery, and which one draws its id first is a race (ids are unique,
    # never a promise of order across transactions).
    check_eq(pg.psql("SELECT string_agg(outcome, ',' ORDER BY received_at, id)"
                     " FROM idv.callback_events"),
             "malformed,accepted", "audit rows after recovery")
    check_eq(pg.psql(f"SELECT received_at BETWEEN to_timestamp({t_sent - 1})"
                     f" AND to_timestamp({t_restart}) FROM idv.callback_events"
                     " WHERE outcome = 'malformed'"), "t",
             "received_at of the row written after the outage is when the request came")
    check_eq(metric(d, "unavailable"), 1.0, "unavailable counter")


def case_db_frozen_ambiguous(ctx):
    """PostgreSQL frozen with the callback in flight: 503 unavailable (the
    commit is not confirmed), never 200. Once it thaws, the callback sent again
    is answered 200 (accepted, or duplicate when the first commit went through
    after all) and exactly one result is recorded."""
    pg = ctx.pg()
    d = ctx.daemon(pg, db_timeout_ms=1000)
    register_ok(d, "tx1", "biz1", TOKEN)
    t2 = secret("t2")
    register_ok(d, "tx2", "biz2", t2)
    pg.freeze()
    try:
        hd = expect_callback(d, "unavailable", "tx1", "Y", "200", TOKEN)
        check(re.fullmatch(r"[0-9]+", hd.get("Retry-After", "")), f"Retry-After: {hd}")
        check_eq(d.status("/healthz"), 200, "healthz while PostgreSQL is frozen")
    finally:
        pg.thaw()
    wait_until(lambda: d.status("/readyz") == 200, 60, what="readyz 200 after the thaw")

    def answered():
        st, _, _, raw = d.callback("tx1", "Y", "200", TOKEN)
        return (st, raw) if st != 503 else None
    st, raw = wait_until(answered, 60, 0.2, "a confirmed answer after the thaw")
    check((st, raw) in ((200, BODY["accepted"]), (200, BODY["duplicate"])),
          f"after the thaw: {st} {raw!r}")
    expect_callback(d, "accepted", "tx2", "N", "201", t2)
    check_eq(pg.rows("SELECT transaction_id, passed, sub_code FROM idv.callback_results"
                     " ORDER BY 1"), [["tx1", "Y", "200"], ["tx2", "N", "201"]], "results")
    check_eq(pg.psql("SELECT string_agg(status, ',' ORDER BY transaction_id)"
                     " FROM idv.transaction_status"), "passed,not_passed", "statuses")
    check_eq(metric(d, "accepted") + metric(d, "duplicate"), 2.0, "confirmed answers")


# ---- paths, methods, connections ----------------------------------------------

def case_paths_and_methods(ctx):
    """callback_path and anything below it is the callback; other paths 404;
    other methods on the callback path 405 with Allow; /healthz and /readyz on
    both listeners; the admin listener does not take callbacks."""
    pg = ctx.pg()
    d = ctx.daemon(pg, callback_path="/hooks/alibaba")
    register_ok(d, "tx1", "biz1", TOKEN)
    expect_callback(d, "accepted", "tx1", "Y", "200", TOKEN, path="/hooks/alibaba/v2/any-thing")
    expect_callback(d, "duplicate", "tx1", "Y", "200", TOKEN, path="/hooks/alibaba")
    expect_callback(d, "ok", path="/hooks/alibaba/")
    q = "?" + query("tx1", "Y", "200", TOKEN)
    for p in ["/idv/callback", "/hooks/alibabaX", "/hooks/alibaba2/x", "/hooks", "/hooks/",
              "/", "/HOOKS/ALIBABA", "/healthz/x", "/metrics", "/v1/transactions/tx1"]:
        for target in (p, p + q):
            st, hd, body = d.request("GET", target)
            check_eq(st, 404, f"GET {target}")
            check_eq(json.loads(body).get("code"), "NotFound", f"GET {target} body")
    for m in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        for target in ("/hooks/alibaba", "/hooks/alibaba/x" + q):
            st, hd, body = d.request(m, target, headers={"Content-Length": "0"})
            check_eq(st, 405, f"{m} {target}")
            allow = {x.strip() for x in hd.get("Allow", "").split(",")}
            check_eq(allow, {"GET", "HEAD"}, f"{m} {target} Allow")
    for admin in (False, True):
        for p in ("/healthz", "/readyz"):
            st, hd, body = d.request("GET", p, admin=admin, auth=False)
            check_eq(st, 200, f"GET {p} admin={admin}")
            check(json.loads(body).get("status") in ("ok", "ready"), f"{p} body {body!r}")
            st, hd, body = d.request("HEAD", p, admin=admin, auth=False)
            check_eq((st, body), (200, b""), f"HEAD {p} admin={admin}")
            st, hd, _ = d.request("POST", p, admin=admin, auth=False,
                                  headers={"Content-Length": "0"})
            check_eq(st, 405, f"POST {p} admin={admin}")
            check("GET" in hd.get("Allow", ""), f"POST {p} Allow")
    st, _, _ = d.request("GET", "/hooks/alibaba" + q, admin=True)
    check_eq(st, 404, "callback path on the admin listener")
    check_eq(count(pg, "SELECT count(*) FROM idv.callback_events"), 2,
             "only the two callbacks left audit rows")


def case_keepalive(ctx):
    """Several requests on one connection, on both listeners, whatever their
    outcome (a 400 malformed is not a framing error and keeps the connection)."""
    pg = ctx.pg()
    d = ctx.daemon(pg)
    a = http.client.HTTPConnection("127.0.0.1", d.admin_port, timeout=30)
    auth = {"Authorization": f"Bearer {idvtest.ADMIN_TOKEN}",
            "Content-Type": "application/json"}
    a.connect()
    sock = a.sock
    for method, path, body, want in (
            ("POST", "/v1/transactions/register",
             json.dumps({"transactionId": "tx1", "merchantBizId": "b1", "callbackToken": TOKEN}),
             201),
            ("GET", "/v1/transactions/tx1", None, 200),
            ("GET", "/v1/transactions/nope", None, 404),
            ("GET", "/metrics", None, 200),
            ("GET", "/healthz", None, 200)):
        a.request(method, path, body=body, headers=auth)
        r = a.getresponse()
        r.read()
        check_eq(r.status, want, f"admin {method} {path}")
        check(r.getheader("Connection") != "close", f"admin {path}: Connection: close")
        check(a.sock is sock, f"admin {path}: the same connection")
    a.close()
    c = http.client.HTTPConnection("127.0.0.1", d.public_port, timeout=30)
    c.connect()
    sock = c.sock
    for path, want, body in (
            ("/idv/callback", 200, BODY["ok"]),
            ("/idv/callback?" + query("tx1", "Y", "200", TOKEN), 200, BODY["accepted"]),
            ("/idv/callback?" + query("tx1", "Y", "200", TOKEN), 200, BODY["duplicate"]),
            ("/idv/callback?" + query("tx1", "N", "200", TOKEN), 409, BODY["conflict"]),
            ("/idv/callback?" + query("tx1", "Y", "200", secret("x")), 403, BODY["rejected"]),
            ("/idv/callback?" + query("tx1", "Y", "200"), 400, BODY["malformed"]),
            ("/nope", 404, None),
            ("/healthz", 200, None),
            ("/readyz", 200, None),
            ("/idv/callback?" + query("tx1", "Y", "200", TOKEN), 200, BODY["duplicate"])):
        c.request("GET", path)
        r = c.getresponse()
        got = r.read()
        check_eq(r.status, want, f"GET {path}")
        if body is not None:
            check_eq(got, body, f"GET {path} body")
        check(r.getheader("Connection") != "close", f"{path}: Connection: close")
        check(c.sock is sock, f"{path}: the same connection")
    c.close()


def case_pipelined(ctx):
    """Requests sent in one write are answered in order, whether they wait on
    PostgreSQL or not."""
    pg = ctx.pg()
    d = ctx.daemon(pg)
    register_ok(d, "tx1", "biz1", TOKEN)
    t2 = secret("t2")
    register_ok(d, "tx2", "biz2", t2)
    good1 = "/idv/callback?" + query("tx1", "Y", "200", TOKEN)
    good2 = "/idv/callback?" + query("tx2", "N", "201", t2)
    bad = "/idv/callback?" + query("tx1", "Y", "200", secret("bad"))
    rounds = [
        ([("GET", "/idv/callback?foo=1"), ("GET", good1), ("GET", bad), ("GET", "/nope"),
          ("GET", good1)],
         [(200, BODY["ok"]), (200, BODY["accepted"]), (403, BODY["rejected"]), (404, None),
          (200, BODY["duplicate"])]),
        ([("GET", good2), ("HEAD", "/idv/callback"), ("GET", "/nope"), ("GET", bad),
          ("GET", "/readyz")],
         [(200, BODY["accepted"]), (200, b""), (404, None), (403, BODY["rejected"]),
          (200, None)]),
    ]
    for reqs, want in rounds:
        data = b"".join(raw_request(m, t, close=(i == len(reqs) - 1))
                        for i, (m, t) in enumerate(reqs))
        out, closed = idvtest.raw_http(d.public_port, data, timeout=30)
        check(closed, "closed after the last request (Connection: close)")
        # HEAD answers carry a Content-Length but no body: split by hand.
        resp = []
        rest = out
        for m, _ in reqs:
            head, sep, rest = rest.partition(b"\r\n\r\n")
            check(sep, f"a complete answer for each request: {out!r}")
            lines = head.decode("latin-1").split("\r\n")
            hdrs = {k.strip().lower(): v.strip() for k, _, v in
                    (ln.partition(":") for ln in lines[1:])}
            n = 0 if m == "HEAD" else int(hdrs.get("content-length", "0"))
            resp.append((int(lines[0].split(" ")[1]), rest[:n]))
            rest = rest[n:]
        check_eq(rest, b"", "nothing after the last answer")
        check_eq(len(resp), len(want), "answer count")
        for i, ((st, body), (wst, wbody)) in enumerate(zip(resp, want)):
            check_eq(st, wst, f"answer {i} status ({reqs[i]})")
            if wbody is not None:
                check_eq(body, wbody, f"answer {i} body ({reqs[i]})")
    check_eq(pg.psql("SELECT string_agg(transaction_id || ':' || outcome, ',' ORDER BY id)"
                     " FROM idv.callback_events"),
             "tx1:accepted,tx1:rejected,tx1:duplicate,tx2:accepted,tx1:rejected",
             "audit rows in request order")


# ---- admin API ------------------------------------------------------------------

def case_register_endpoint(ctx):
    """POST /v1/transactions/register: 201 new, 200 the same again, 409 for
    another token or bizId or a token in use, 415 for another content type;
    GET /v1/transactions/{id}: 200 with the status, 404 unknown. Only the
    token's SHA-256 is stored."""
    pg = ctx.pg()
    d = ctx.daemon(pg)
    t1, t2 = secret("t1"), secret("t2")
    st, hd, body = d.request("POST", "/v1/transactions/register", admin=True,
                             body={"transactionId": "txr1", "merchantBizId": "biz1",
                                   "callbackToken": t1, "merchantUserId": "user 1"})
    check_eq((st, json.loads(body)), (201, {"transactionId": "txr1"}), "new")
    check(hd.get("Content-Type", "").startswith("application/json"), "content type")
    check_eq(d.register("txr1", "biz1", t1), (200, {"transactionId": "txr1"}), "same again")
    for label, args, param in (("other token", ("txr1", "biz1", t2), "transactionId"),
                               ("other bizId", ("txr1", "biz9", t1), "transactionId"),
                               ("token in use", ("txr2", "biz2", t1), "callbackToken")):
        st, j = d.register(*args)
        check_eq(st, 409, label)
        check_eq((j.get("code"), j.get("parameter")), ("Conflict", param), f"{label} body")
        check(isinstance(j.get("message"), str) and j["message"], f"{label} message")
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "application/jsonx"):
        st, hd, body = d.request("POST", "/v1/transactions/register", admin=True,
                                 headers={"Content-Type": ctype},
                                 body=json.dumps({"transactionId": "txr3", "merchantBizId": "b3",
                                                  "callbackToken": t2}))
        check_eq(st, 415, f"content type {ctype}")
        check(json.loads(body).get("code"), "415 error body")
    st, hd, body = d.request("POST", "/v1/transactions/register", admin=True,
                             headers={"Content-Type": "application/json; charset=utf-8"},
                             body=json.dumps({"transactionId": "txr4", "merchantBizId": "b4",
                                              "callbackToken": t2}))
    check_eq(st, 201, "application/json with a charset")
    check_eq(pg.rows("SELECT transaction_id, merchant_biz_id, coalesce(merchant_user_id, '-'),"
                     " status, encode(callback_token_sha256, 'hex') FROM idv.transactions"
                     " ORDER BY 1"),
             [["txr1", "biz1", "user 1", "initiated", sha_hex(t1)],
              ["txr4", "b4", "-", "initiated", sha_hex(t2)]], "rows")
    st, hd, body = d.request("GET", "/v1/transactions/txr1", admin=True)
    check_eq(st, 200, "GET known")
    check(hd.get("Content-Type", "").startswith("application/json"), "GET content type")
    j = json.loads(body)
    check_eq((j["transactionId"], j["merchantBizId"], j["status"], j["passed"], j["subCode"],
              j["confirmed"], j["completedAt"]),
             ("txr1", "biz1", "initiated", None, None, False, None), "GET body")
    check(j.get("initiatedAt"), "initiatedAt")
    expect_callback(d, "accepted", "txr1", "N", "205", t1)
    j = json.loads(d.request("GET", "/v1/transactions/txr1", admin=True)[2])
    check_eq((j["status"], j["passed"], j["subCode"], j["confirmed"]),
             ("not_passed", "N", "205", False), "GET after the callback")
    check(j.get("completedAt"), "completedAt after the callback")
    for unknown in ("nope", "txr2", "txr3"):
        st, hd, body = d.request("GET", f"/v1/transactions/{unknown}", admin=True)
        check_eq(st, 404, f"GET {unknown}")
        check_eq(json.loads(body).get("code"), "NotFound", f"GET {unknown} body")


def case_register_validation(ctx):
    """400 for each missing or malformed field, naming the field; the same
    character rules as the callback; merchantBizId 1-32 letters and digits;
    nothing stored. The longest valid values are accepted."""
    pg = ctx.pg()
    d = ctx.daemon(pg)
    good = {"transactionId": "txv", "merchantBizId": "bizv", "callbackToken": TOKEN}
    cases = []
    for f in ("transactionId", "merchantBizId", "callbackToken"):
        b = dict(good)
        del b[f]
        cases.append((f"{f} missing", b, f))
        cases.append((f"{f} null", dict(good, **{f: None}), f))
        cases.append((f"{f} a number", dict(good, **{f: 12345678901234567}), f))
        cases.append((f"{f} empty", dict(good, **{f: ""}), f))
    for f, bad in (("transactionId", "t" * 129), ("transactionId", "tx.1"),
                   ("transactionId", "tx 1"), ("transactionId", "tx/1"),
                   ("transactionId", "tx\u00e9"),
                   ("merchantBizId", "b" * 33), ("merchantBizId", "biz-1"),
                   ("merchantBizId", "biz_1"), ("merchantBizId", "biz 1"),
                   ("merchantBizId", "b\u00efz"),
                   ("callbackToken", "x" * 15), ("callbackToken", "x" * 257),
                   ("callbackToken", "has space in-token"), ("callbackToken", "tab\tin-token-0001"),
                   ("callbackToken", "tok\u00e9n-non-ascii-01"),
                   ("callbackToken", "del\x7fin-token-00001"),
                   ("merchantUserId", ""), ("merchantUserId", "u" * 129),
                   ("merchantUserId", "ctl\x01char"), ("merchantUserId", 42)):
        cases.append((f"{f}={bad!r}", dict(good, **{f: bad}), f))
    for label, body, field in cases:
        st, hd, raw = d.request("POST", "/v1/transactions/register", admin=True, body=body)
        check_eq(st, 400, label)
        j = json.loads(raw)
        check(j.get("code") in ("MissingParameter", "InvalidParameter"), f"{label}: code {j}")
        check_eq(j.get("parameter"), field, f"{label}: parameter")
    for label, raw in (("not JSON", "{"), ("an array", "[]"), ("a string", '"x"'),
                       ("empty", "")):
        st, _, body = d.request("POST", "/v1/transactions/register", admin=True, body=raw,
                                headers={"Content-Type": "application/json"})
        check_eq(st, 400, label)
        check(json.loads(body).get("code"), f"{label}: error body")
    check_eq(count(pg, "SELECT count(*) FROM idv.transactions"), 0, "nothing stored")
    long_ok = dict(good, transactionId="T" * 128, merchantBizId="Zz09" * 8,
                   callbackToken="~" * 256, merchantUserId="\u00fc" * 64)
    st, hd, body = d.request("POST", "/v1/transactions/register", admin=True, body=long_ok)
    check_eq(st, 201, "longest valid values")
    check_eq(pg.psql("SELECT length(transaction_id), merchant_biz_id, merchant_user_id"
                     " FROM idv.transactions"), f"128|{'Zz09' * 8}|{chr(0xfc) * 64}",
             "stored row")


def case_admin_auth(ctx):
    """The admin API needs the bearer token: 401 without it or with a wrong
    one, on register, GET /v1/transactions/x and /metrics; not on /healthz and
    /readyz."""
    pg = ctx.pg()
    d = ctx.daemon(pg)
    wrong = [None, "Bearer wrong-token", f"Bearer {idvtest.ADMIN_TOKEN}x",
             f"Bearer {idvtest.ADMIN_TOKEN[:-1]}", f"Basic {idvtest.ADMIN_TOKEN}",
             idvtest.ADMIN_TOKEN, "Bearer"]
    reg = {"transactionId": "txa", "merchantBizId": "biza", "callbackToken": TOKEN}
    for method, path, body in (("POST", "/v1/transactions/register", reg),
                               ("GET", "/v1/transactions/x", None),
                               ("GET", "/metrics", None),
                               ("GET", "/nope", None)):
        for a in wrong:
            h = {"Authorization": a} if a is not None else {}
            st, hd, raw = d.request(method, path, body=body, admin=True, auth=False, headers=h)
            check_eq(st, 401, f"{method} {path} with {a!r}")
            check(hd.get("WWW-Authenticate", "").startswith("Bearer"), "WWW-Authenticate")
            check_eq(json.loads(raw).get("code"), "Unauthorized", "401 body")
    st, hd, raw = d.request("GET", "/metrics", admin=True, auth=False,
                            headers={"Authorization": f"Bearer {idvtest.ADMIN_TOKEN}"})
    check_eq(st, 200, "the right token")
    check_eq(count(pg, "SELECT count(*) FROM idv.transactions"), 0, "nothing registered")
    for p in ("/healthz", "/readyz"):
        check_eq(d.request("GET", p, admin=True, auth=False)[0], 200, f"{p} without a token")
    check_eq(d.request("GET", "/v1/transactions/x", admin=True)[0], 404, "GET with the token")
    check_eq(d.register("txa", "biza", TOKEN)[0], 201, "register with the token")


# ---- concurrency -----------------------------------------------------------------

def case_concurrent_identical_50(ctx):
    """50 identical callbacks at once on 50 connections: exactly one accepted,
    49 duplicate, one result row, 50 audit rows, one status change."""
    pg = ctx.pg()
    d = ctx.daemon(pg)
    register_ok(d, "txc", "bizc", TOKEN)
    path = "/idv/callback?" + query("txc", "Y", "200", TOKEN)
    res = run_threads([callback_at_barrier(d.public_port, path) for _ in range(50)])
    tally = collections.Counter(res)
    check_eq(dict(tally), {(200, BODY["accepted"]): 1, (200, BODY["duplicate"]): 49}, "answers")
    check_eq(count(pg, "SELECT count(*) FROM idv.callback_results"), 1, "result rows")
    check_eq(pg.rows("SELECT outcome, count(*) FROM idv.callback_events"
                     " WHERE transaction_id = 'txc' GROUP BY 1 ORDER BY 1"),
             [["accepted", "1"], ["duplicate", "49"]], "audit rows")
    check_eq(pg.psql("SELECT string_agg(status, ',' ORDER BY id) FROM idv.transaction_events"),
             "initiated,passed", "status events")
    check_eq((metric(d, "accepted"), metric(d, "duplicate")), (1.0, 49.0), "counters")


def case_concurrent_mixed(ctx):
    """Different callbacks at once (shared commits): each gets its own outcome
    (accepted, duplicate, conflict, rejected), not a neighbour's."""
    pg = ctx.pg()
    d = ctx.daemon(pg)
    toks = {f"tx{i:02d}": secret(f"x{i}") for i in range(24)}
    for i, (tx, t) in enumerate(toks.items()):
        register_ok(d, tx, f"biz{i}", t)
        if i < 12:
            expect_callback(d, "accepted", tx, "Y", "200", t)
    plan = []
    for i, (tx, t) in enumerate(toks.items()):
        if i < 6:
            plan.append((query(tx, "Y", "200", t), "duplicate"))
        elif i < 12:
            plan.append((query(tx, "N", "205", t), "conflict"))
        else:
            plan.append((query(tx, "N" if i % 2 else "Y", "200", t), "accepted"))
        other = toks[f"tx{(i + 1) % 24:02d}"]
        plan.append((query(tx, "Y", "200", other), "rejected"))
    res = run_threads([callback_at_barrier(d.public_port, "/idv/callback?" + q)
                       for q, _ in plan])
    for (q, want), got in zip(plan, res):
        check_eq(got, (BODY_STATUS[want], BODY[want]), f"answer to {q}")
    check_eq(count(pg, "SELECT count(*) FROM idv.callback_results"), 24, "result rows")
    check_eq(pg.psql("SELECT string_agg(transaction_id, ',' ORDER BY transaction_id)"
                     " FROM idv.callback_results WHERE passed = 'N'"),
             ",".join(f"tx{i:02d}" for i in range(13, 24, 2)), "results of the fresh ones")
    check_eq(pg.rows("SELECT outcome, count(*) FROM idv.callback_events GROUP BY 1 ORDER BY 1"),
             [["accepted", "24"], ["conflict", "6"], ["duplicate", "6"], ["rejected", "24"]],
             "audit rows")


def case_two_instances_race(ctx):
    """Two instances on one database get each callback at the same moment:
    exactly one accepted per transaction, whichever instance won."""
    pg = ctx.pg()
    da = ctx.daemon(pg, name="idv-a")
    db = ctx.daemon(pg, name="idv-b")
    n = 40
    toks = {}
    for i in range(n):
        toks[f"tx{i:02d}"] = secret(f"r{i}")
        register_ok(da if i % 2 else db, f"tx{i:02d}", f"biz{i}", toks[f"tx{i:02d}"])
    targets, keys = [], []
    for tx, t in toks.items():
        path = "/idv/callback?" + query(tx, "Y" if int(tx[2:]) % 3 else "N", "200", t)
        for d in (da, db):
            targets.append(callback_at_barrier(d.public_port, path))
            keys.append(tx)
    res = run_threads(targets)
    by_tx = collections.defaultdict(list)
    for tx, r in zip(keys, res):
        by_tx[tx].append(r)
    for tx in toks:
        check_eq(sorted(by_tx[tx]), [(200, BODY["accepted"]), (200, BODY["duplicate"])],
                 f"answers for {tx}")
    check_eq(count(pg, "SELECT count(*) FROM idv.callback_results"), n, "result rows")
    check_eq(count(pg, "SELECT count(*) FROM (SELECT transaction_id FROM idv.callback_events"
                   " GROUP BY 1 HAVING count(*) = 2 AND count(DISTINCT instance) = 2"
                   " AND count(*) FILTER (WHERE outcome = 'accepted') = 1) x"), n,
             "per transaction: one audit row per instance, one accepted")
    check_eq(count(pg, "SELECT count(*) FROM idv.callback_results r JOIN idv.callback_events e"
                   " ON e.transaction_id = r.transaction_id AND e.outcome = 'accepted'"
                   " AND e.instance = r.instance"), n, "the accepting instance owns the result")
    check_eq(count(pg, "SELECT count(*) FROM idv.transaction_status"
                   " WHERE status IN ('passed', 'not_passed')"), n, "final statuses")
    check_eq(metric(da, "accepted") + metric(db, "accepted"), float(n), "accepted counters")
    # Whichever instance recorded the first result, the other one keeps it.
    for tx, t in list(toks.items())[:4]:
        first = pg.psql(f"SELECT passed || ':' || instance FROM idv.callback_results"
                        f" WHERE transaction_id = '{tx}'")
        passed, inst = first.split(":")
        other = db if inst == "idv-a" else da
        expect_callback(other, "conflict", tx, "N" if passed == "Y" else "Y", "200", t)
        expect_callback(other, "duplicate", tx, passed, "200", t)
        check_eq(pg.psql(f"SELECT passed || ':' || instance FROM idv.callback_results"
                         f" WHERE transaction_id = '{tx}'"), first, f"first result of {tx} kept")


# ---- secrets, privileges, migrations, metrics -----------------------------------

def case_secrets_not_leaked(ctx):
    """After accepted, duplicate, rejected and malformed callbacks and failed
    registrations: no token in the daemon log (debug level), in PostgreSQL's
    statement log, or in pg_dumpall; the admin token (and a wrong one) never in
    the log. The digest is there: the search looked at the right data."""
    pg = ctx.pg(settings={"log_statement": "'all'", "log_min_messages": "info"})
    d = ctx.daemon(pg, log_level="debug")
    t_ok, t_other, t_unknown = secret("ok"), secret("other"), secret("unknown")
    t_bad_reg, t_malformed = secret("badreg"), secret("malformed")
    wrong_admin = secret("wrongadmin")
    register_ok(d, "tx1", "biz1", t_ok)
    register_ok(d, "tx2", "biz2", t_other)
    check_eq(d.register("tx3", "biz-3", t_bad_reg)[0], 400, "register with a bad bizId")
    check_eq(d.register("tx1", "biz1", t_unknown)[0], 409, "register with another token")
    expect_callback(d, "accepted", "tx1", "Y", "200", t_ok)
    expect_callback(d, "duplicate", "tx1", "Y", "200", t_ok)
    expect_callback(d, "conflict", "tx1", "N", "200", t_ok)
    expect_callback(d, "rejected", "tx1", "Y", "200", t_unknown)
    expect_callback(d, "rejected", "tx1", "Y", "200", t_other)
    expect_callback(d, "malformed", "tx1", "y", "200", t_malformed)
    expect_callback(d, "malformed", "tx1", "Y", "200", t_malformed, extra="&callbackToken=x")
    expect_callback(d, "malformed", "tx1", "Y", "200", t_malformed + "%")
    # The token in the path below the callback path is not a parameter, but a
    # log of the whole target would still show the query.
    expect_callback(d, "accepted", "tx2", "N", "201", t_other, path="/idv/callback/sub")
    st, _, _ = d.request("GET", "/metrics", admin=True, auth=False,
                         headers={"Authorization": f"Bearer {wrong_admin}"})
    check_eq(st, 401, "wrong admin token")
    wait_events(pg, 3, "outcome = 'malformed'")
    check_eq(d.stop(), 0, "daemon exit status")
    tokens = [t_ok, t_other, t_unknown, t_bad_reg, t_malformed]
    log = d.logs()
    check("request" in log and "tx1" in log, "the daemon log has request lines")
    with open(pg.log, errors="replace") as f:
        pglog = f.read()
    dump = pg.dump_all()
    for where, text in (("daemon log", log), ("PostgreSQL log", pglog), ("pg_dumpall", dump)):
        for t in tokens:
            for form in {t, urllib.parse.quote(t, safe="")}:
                check(form not in text, f"{where} holds a token ({form})")
        check("SeCrEt-" not in text, f"{where} holds part of a token")
    for s in (idvtest.ADMIN_TOKEN, wrong_admin):
        check(s not in log, f"the daemon log holds an admin token ({s})")
        check(s not in pglog, f"the PostgreSQL log holds an admin token ({s})")
    check(sha_hex(t_ok) in dump, "pg_dumpall holds the digest of the token")
    check(sha_hex(t_ok) in pglog, "the statement log holds the digest of the token")


def case_privileges(ctx):
    """idv_daemon cannot change or remove audit rows; idv_reader reads the audit
    objects only; the append-only triggers stop even the superuser."""
    pg = ctx.pg()
    d = ctx.daemon(pg)
    register_ok(d, "tx1", "biz1", TOKEN)
    expect_callback(d, "accepted", "tx1", "Y", "200", TOKEN)
    expect_callback(d, "duplicate", "tx1", "Y", "200", TOKEN)
    pg.psql("CREATE ROLE auditor LOGIN IN ROLE idv_reader")

    def refused(user, sql, why):
        r = pg.try_psql(sql, user=user)
        check(r.returncode != 0, f"{user} may run: {sql}")
        check(why in r.stderr, f"{user}: {sql}: expected '{why}', got: {r.stderr.strip()}")

    def allowed(user, sql):
        r = pg.try_psql(sql, user=user)
        check_eq(r.returncode, 0, f"{user}: {sql}: {r.stderr.strip()}")
        return r.stdout.strip()

    denied = "permission denied"
    # The daemon's role: it can log in and read what it needs...
    check_eq(allowed("idvapp", "SELECT status FROM idv.transaction_status"), "passed",
             "idvapp reads the status view")
    # ...but cannot touch the audit trail or the results.
    for sql in ("UPDATE idv.callback_events SET outcome = 'rejected'",
                "DELETE FROM idv.callback_events",
                "TRUNCATE idv.callback_events",
                "UPDATE idv.transaction_events SET status = 'expired'",
                "DELETE FROM idv.transaction_events",
                "TRUNCATE idv.transaction_events",
                "UPDATE idv.callback_results SET passed = 'N'",
                "DELETE FROM idv.callback_results",
                "DELETE FROM idv.transactions",
                "CREATE TABLE idv.x (a int)"):
        refused("idvapp", sql, denied)
    check_eq(allowed("auditor", "SELECT status, passed FROM idv.transaction_status"), "passed|Y",
             "auditor reads the status view")
    check_eq(allowed("auditor", "SELECT string_agg(outcome, ',' ORDER BY id)"
                                " FROM idv.callback_events"), "accepted,duplicate",
             "auditor reads the audit rows")
    allowed("auditor", "SELECT count(*) FROM idv.transaction_events")
    for sql in ("SELECT count(*) FROM idv.transactions",
                "SELECT count(*) FROM idv.callback_results",
                "INSERT INTO idv.callback_events (outcome, instance) VALUES ('malformed', 'x')",
                "UPDATE idv.callback_events SET outcome = 'rejected'",
                "DELETE FROM idv.callback_events",
                "SELECT idv.register_transaction('txq', 'b', '', repeat('ab', 32))"):
        refused("auditor", sql, denied)
    for sql in ("UPDATE idv.callback_events SET outcome = 'rejected'",
                "DELETE FROM idv.callback_events",
                "TRUNCATE idv.callback_events",
                "UPDATE idv.transaction_events SET status = 'expired'",
                "DELETE FROM idv.callback_results"):
        refused("postgres", sql, "append-only")
    check_eq(pg.psql("SELECT string_agg(outcome, ',' ORDER BY id) FROM idv.callback_events"),
             "accepted,duplicate", "audit rows unchanged")
    check_eq(pg.psql("SELECT passed FROM idv.callback_results"), "Y", "result unchanged")


def case_migrate_again(ctx):
    """migrate applies every file of sql/ once; running it again applies 0 and
    changes nothing."""
    pg = ctx.pg(schema=False)
    versions = sql_versions()
    out = pg.setup_schema()
    check(f"{len(versions)} migration(s) applied now" in out, f"first run: {out}")
    before = pg.psql("SELECT string_agg(version || ':' || applied_at, ',' ORDER BY version)"
                     " FROM idv.schema_migrations")
    for _ in range(2):
        r = pg.migrate()
        check_eq(r.returncode, 0, f"migrate again: {r.stdout}{r.stderr}")
        check("0 migration(s) applied now" in r.stdout, f"migrate again output: {r.stdout}")
        check("applied 0" not in r.stdout, f"nothing re-applied: {r.stdout}")
    check_eq(pg.psql("SELECT string_agg(version || ':' || applied_at, ',' ORDER BY version)"
                     " FROM idv.schema_migrations"), before, "schema_migrations unchanged")
    check_eq(pg.psql("SELECT string_agg(version::text, ',' ORDER BY version)"
                     " FROM idv.schema_migrations"), ",".join(map(str, versions)), "versions")
    ctx.daemon(pg)  # the schema is what the daemon needs (readyz 200)


def case_migrate_concurrent(ctx):
    """Four migrate runs at once on a fresh cluster all succeed, and every
    migration is applied exactly once."""
    pg = ctx.pg(schema=False)
    versions = sql_versions()
    env = dict(os.environ, IDV_DATABASE_URL=pg.url("postgres"))
    procs = [subprocess.Popen([idvtest.BIN, "migrate"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    for p, out in zip(procs, outs):
        check_eq(p.returncode, 0, f"a concurrent migrate failed: {out}")
    applied = 0
    for out in outs:
        m = re.search(r"(\d+) migration\(s\) applied now", out)
        check(m, f"migrate output: {out}")
        applied += int(m.group(1))
    check_eq(applied, len(versions), f"migrations applied over all runs: {outs}")
    check_eq(pg.rows("SELECT version, count(*) FROM idv.schema_migrations GROUP BY 1 ORDER BY 1"),
             [[str(v), "1"] for v in versions], "one row per version")
    pg.psql("CREATE ROLE idvapp LOGIN IN ROLE idv_daemon")
    d = ctx.daemon(pg)
    register_ok(d, "tx1", "biz1", TOKEN)
    expect_callback(d, "accepted", "tx1", "Y", "200", TOKEN)


SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)'
                    r'(?P<labels>\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"'
                    r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*")*,?)?\})?'
                    r' (?P<value>[-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|NaN|Inf))'
                    r'(?: -?[0-9]+)?$')


def case_metrics(ctx):
    """/metrics is Prometheus text (every sample line `name{labels} value`,
    names idv_*, a TYPE for each family, no sample twice) and counts callbacks
    by outcome."""
    pg = ctx.pg()
    d = ctx.daemon(pg)
    st, hd, _ = d.request("GET", "/metrics", admin=True)
    check(hd.get("Content-Type", "").startswith("text/plain; version=0.0.4"), f"type: {hd}")
    toks = [secret(f"m{i}") for i in range(3)]
    for i, t in enumerate(toks):
        register_ok(d, f"tx{i}", f"biz{i}", t)
        expect_callback(d, "accepted", f"tx{i}", "Y", "200", t)
    expect_callback(d, "duplicate", "tx0", "Y", "200", toks[0])
    expect_callback(d, "conflict", "tx0", "N", "200", toks[0])
    expect_callback(d, "rejected", "tx1", "Y", "200", toks[0])
    expect_callback(d, "malformed", "tx1", "Y")
    expect_callback(d, "malformed", "tx1", "X", "200", toks[1])
    expect_callback(d, "ok")
    expect_callback(d, "ok", extra="utm=1")
    text = d.metrics()
    types, seen = {}, set()
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            m = re.match(r"^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$", line)
            check(m, f"comment line: {line!r}")
            if m.group(1) == "TYPE":
                check(m.group(3) in ("counter", "gauge", "histogram", "summary", "untyped"),
                      f"TYPE: {line!r}")
                check(m.group(2) not in types, f"TYPE given twice: {line!r}")
                types[m.group(2)] = m.group(3)
            continue
        m = SAMPLE.match(line)
        check(m, f"not a sample line: {line!r}")
        name = m.group("name")
        check(name.startswith("idv_"), f"metric name: {line!r}")
        key = (name, m.group("labels") or "")
        check(key not in seen, f"sample given twice: {line!r}")
        seen.add(key)
        fam = [f for f in types if name == f or (types[f] in ("histogram", "summary") and
                                                 name in (f + "_bucket", f + "_sum", f + "_count"))]
        check(fam, f"sample without a TYPE line before it: {line!r}")
    want = {"ok": 2, "accepted": 3, "duplicate": 1, "conflict": 1, "rejected": 1,
            "malformed": 2, "unavailable": 0}
    for o, n in want.items():
        check_eq(idvtest.metric_value(text, "idv_callbacks_total", outcome=o), float(n),
                 f"idv_callbacks_total{{outcome=\"{o}\"}}")
    check_eq(types.get("idv_callbacks_total"), "counter", "idv_callbacks_total type")


if __name__ == "__main__":
    sys.exit(idvtest.main(globals()))
