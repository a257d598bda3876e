#!/usr/bin/env python3
"""Confirmation with CheckResult, the durable work queue, the sweeper and the
hand-off to business workflows, against the fake Alibaba API."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, HERE)
import idvtest  # noqa: E402
from idvtest import check, check_eq, wait_until  # noqa: E402
from test_initialize import alibaba, body, init  # noqa: E402

FAST = dict(confirm_poll_ms=100, sweep_interval_ms=200, confirm_grace_ms=0,
            confirm_backoff_ms=100, confirm_backoff_max_ms=400, confirm_max_attempts=4)


def start(ctx, **cfg):
    c = dict(FAST)
    c.update(cfg)
    return alibaba(ctx, **c)


def new_tx(s, biz):
    st, b, _ = init(s.d, body(biz=biz))
    check_eq(st, 201, f"initialize {biz}: {b}")
    return b["transactionId"]


def status_of(pg, tx):
    return pg.rows("SELECT status, passed, sub_code, confirmed, review_required, disagreement"
                   f" FROM idv.transaction_status WHERE transaction_id = '{tx}'")[0]


def wait_status(pg, tx, status, timeout=30):
    wait_until(lambda: status_of(pg, tx)[0] == status, timeout, what=f"{tx} to be {status}")


def case_confirm_path(ctx):
    """An accepted callback becomes callback_received, CheckResult confirms it:
    passed with confirmed = true, every Ext* field stored as jsonb; the status
    events are ordered and announced."""
    s = start(ctx)
    tx = new_tx(s, "conf1")
    s.fake.set_result(tx, "Y", "200", ExtFaceInfo={"faceAttack": "N", "score": 97.5},
                      ExtInfo="not json at all")
    res = s.fake.deliver_callback(tx, scheme="http")
    check_eq(json.loads(res["body"]), {"result": "accepted"}, "callback")
    wait_status(s.pg, tx, "passed")
    check_eq(status_of(s.pg, tx), ["passed", "Y", "200", "t", "f", "f"], "confirmed row")
    cr = s.pg.rows("SELECT passed, sub_code, ext_face_info->>'faceAttack',"
                   " (ext_face_info->>'score')::float, ext_info, jsonb_typeof(ext_basic_info),"
                   f" request_id IS NOT NULL FROM idv.check_results WHERE transaction_id = '{tx}'")
    check_eq(cr, [["Y", "200", "N", "97.5", '"not json at all"', "object", "t"]], "check_results")
    ev = s.pg.psql("SELECT string_agg(status, ',' ORDER BY id) FROM idv.transaction_events"
                   f" WHERE tx = (SELECT id FROM idv.transactions WHERE transaction_id = '{tx}')")
    check_eq(ev, "initializing,initiated,callback_received,passed", "status events in order")
    calls = [r for r in s.fake.requests("CheckResult") if r["params"]["TransactionId"] == tx]
    check_eq(len(calls), 1, "one CheckResult")
    check(calls[0]["signatureVerified"], "CheckResult signed")
    check_eq(calls[0]["params"]["MerchantBizId"], "conf1", "stored MerchantBizId used")
    m = s.d.metrics()
    check_eq(idvtest.metric_value(m, "idv_confirmations_total"), 1.0, "confirmations metric")
    # The life of this transaction as SQL shows it, for the reader of the log.
    for title, sql in (
            ("idv.transaction_events", "SELECT id, status, previous_status, passed, sub_code,"
             " confirmed, at FROM idv.transaction_events WHERE tx = (SELECT id FROM"
             f" idv.transactions WHERE transaction_id = '{tx}') ORDER BY id"),
            ("idv.callback_events", "SELECT id, received_at, outcome, passed, sub_code, client_ip,"
             f" instance FROM idv.callback_events WHERE transaction_id = '{tx}' ORDER BY id"),
            ("idv.check_results", "SELECT passed, sub_code, ext_face_info, request_id IS NOT NULL"
             f" AS has_request_id FROM idv.check_results WHERE transaction_id = '{tx}'"),
            ("idv.transaction_status", "SELECT transaction_id, merchant_biz_id, status, passed,"
             " sub_code, confirmed, initiated_at, completed_at, expires_at FROM"
             f" idv.transaction_status WHERE transaction_id = '{tx}'")):
        print(f"-- {title}\n{s.pg.psql(sql)}", flush=True)


def case_disagreement(ctx):
    """CheckResult disagrees with the callback: CheckResult wins, the
    disagreement is kept on the row and counted."""
    s = start(ctx)
    tx = new_tx(s, "dis1")
    s.fake.set_result(tx, "N", "205")
    res = s.fake.deliver_callback(tx, passed="Y", sub_code="200", scheme="http")
    check_eq(json.loads(res["body"]), {"result": "accepted"}, "callback")
    wait_status(s.pg, tx, "not_passed")
    row = status_of(s.pg, tx)
    check_eq(row, ["not_passed", "N", "205", "t", "f", "t"], "CheckResult wins, disagreement kept")
    check_eq(s.pg.psql("SELECT callback_passed || callback_sub_code FROM idv.transactions"
                       f" WHERE transaction_id = '{tx}'"), "Y200", "callback result kept")
    check_eq(idvtest.metric_value(s.d.metrics(), "idv_confirmation_disagreements_total"), 1.0,
             "metric")


def case_throttling_then_success(ctx):
    """Throttling.Api twice, then a result: retried with back-off, confirmed
    once, retries counted."""
    s = start(ctx)
    tx = new_tx(s, "thr1")
    s.fake.set_result(tx, "Y", "200")
    s.fake.queue("CheckResult", "error", count=2, status=403, code="Throttling.Api")
    s.fake.deliver_callback(tx, scheme="http")
    wait_status(s.pg, tx, "passed")
    check_eq(s.fake.calls("CheckResult"), 3, "two throttled calls and one answer")
    check_eq(idvtest.metric_value(s.d.metrics(), "idv_confirmation_retries_total"), 2.0,
             "retries metric")
    q = s.pg.rows("SELECT attempts, outcome, last_error LIKE '%Throttling.Api%' FROM idv.work_queue")
    check_eq(q, [["3", "confirmed", "t"]], "work item")


def case_outage_then_recovery(ctx):
    """Alibaba unreachable (5xx, resets), then back: the item waits, is retried
    and confirmed; none is lost."""
    s = start(ctx, confirm_max_attempts=10)
    tx = new_tx(s, "out1")
    s.fake.set_result(tx, "N", "205")
    s.fake.queue("CheckResult", "error", count=2, status=500, code="InternalError")
    s.fake.queue("CheckResult", "reset", count=1)
    s.fake.queue("CheckResult", "garbage", count=1)
    s.fake.deliver_callback(tx, scheme="http")
    wait_status(s.pg, tx, "not_passed")
    check_eq(s.fake.calls("CheckResult"), 5, "four failures and the answer")
    check_eq(status_of(s.pg, tx)[3], "t", "confirmed")


# The circuit of the dark test: open after 3 consecutive connect failures or
# timeouts, probe after 1 s (x0.5..x1.5), doubling up to 2 s.
CIRCUIT = dict(alibaba_circuit_failures=3, alibaba_circuit_open_ms=1000,
               alibaba_circuit_max_open_ms=2000)


def case_dark_then_back(ctx):
    """Alibaba goes dark (accepts connections, never answers) for a while, then
    comes back. Once the circuit is open, POST /v1/transactions answers at once
    503 UpstreamUnavailable with Retry-After and no call is made; the
    confirmation queue and the sweeper hold their items (no attempt burned,
    none given up); the calls that reach Alibaba while it is dark are bounded
    by the circuit's schedule; once it is back the first call succeeds without
    a restart and every confirmation completes. Throttling still gets its 429
    and does not open the circuit."""
    n = 6
    dark_s = 6.0
    s = start(ctx, alibaba_timeout_ms=1500, **CIRCUIT)
    txs = [new_tx(s, f"dark{i}") for i in range(n)]
    swept = new_tx(s, "darksw")
    for tx in txs + [swept]:
        s.fake.set_result(tx, "Y", "200")
    s.fake.set_dark(True)
    t_dark = time.monotonic()
    for tx in txs:
        check_eq(json.loads(s.fake.deliver_callback(tx, scheme="http")["body"]),
                 {"result": "accepted"}, "callback while Alibaba is dark")
    # Expired without a callback: the sweeper queues it while Alibaba is dark.
    s.pg.psql("UPDATE idv.transactions SET expires_at = now() - interval '1 second'"
              f" WHERE transaction_id = '{swept}'")
    # Initialize until the circuit answers for Alibaba.
    before = []

    def initialize_until_open():
        t0 = time.monotonic()
        st, b, hd = init(s.d, body(biz=f"dk{len(before)}"))
        before.append((st, b.get("code"), round(time.monotonic() - t0, 3)))
        return st == 503 and b.get("code") == "UpstreamUnavailable"
    try:
        wait_until(initialize_until_open, 60, 0.01, what="the circuit to open")
    finally:
        gave = s.pg.psql("SELECT count(*) FROM idv.work_queue WHERE gave_up")
        print(f"Initialize while dark, until the circuit opened: {len(before)} calls,"
              f" {sorted(set((x[0], x[1]) for x in before))}, slowest {max(x[2] for x in before)}"
              f" s; {s.fake.counters()['dark']}; confirmations given up: {gave}")
    open_answers, probes = [], []
    for i in range(5):
        t0 = time.monotonic()
        st, b, hd = init(s.d, body(biz=f"dko{i}"))
        took = round(time.monotonic() - t0, 3)
        if (st, b.get("code")) == (504, "UpstreamTimeout"):
            probes.append(took)  # this one was the probe: it waits its deadline
            continue
        check_eq((st, b.get("code")), (503, "UpstreamUnavailable"), f"while open: {b}")
        check(int(hd.get("Retry-After", "0")) >= 1, f"Retry-After: {hd}")
        open_answers.append(took)
    print(f"Initialize while the circuit is open: 503 in {open_answers} s; probes {probes}")
    check(len(probes) <= 1, f"more than one probe in a row: {probes}")
    m = s.d.metrics()
    check(idvtest.metric_value(m, "idv_alibaba_circuit_state") in (1.0, 2.0),
          "circuit state open or half-open in /metrics")
    wait_until(lambda: s.pg.psql("SELECT count(*) FROM idv.work_queue WHERE kind = 'sweep'")
               == "1", 30, what="the sweeper to queue the expired transaction")
    time.sleep(max(0.0, dark_s - (time.monotonic() - t_dark)))
    q = s.pg.rows("SELECT count(*) FILTER (WHERE gave_up), max(attempts),"
                  " count(*) FILTER (WHERE done_at IS NULL) FROM idv.work_queue")[0]
    dark = s.fake.counters()["dark"]
    calls_dark = dark["connections"] + dark["requests"]
    dark_for = time.monotonic() - t_dark
    s.fake.set_dark(False)
    t_back = time.monotonic()
    print(f"after {dark_for:.1f} s dark: items given up {q[0]}, most attempts {q[1]},"
          f" waiting {q[2]}; calls that reached Alibaba while dark: {calls_dark}"
          f" ({dark['connections']} connections, {dark['requests']} requests on kept ones)")
    check_eq(q[0], "0", "items given up while Alibaba was dark")
    check_eq(q[2], str(n + 1), "items waiting")
    # In flight when it went dark: the n items, one Initialize; then at most one
    # probe per open period, which lasts at least half of the open time.
    bound = n + 1 + int(dark_for / 0.5) + 1
    check(calls_dark <= bound, f"calls while dark {calls_dark} > {bound}")

    first = {}

    def first_success():
        st, b, _ = init(s.d, body(biz=f"back{len(first)}"))
        first[len(first)] = st
        return st == 201
    wait_until(first_success, 60, 0.02, what="an Initialize to succeed again")
    to_first = time.monotonic() - t_back
    wait_until(lambda: s.pg.psql("SELECT count(*) FROM idv.work_queue WHERE done_at IS NULL")
               == "0", 60, what="every held item to complete")
    to_all = time.monotonic() - t_back
    done = s.pg.rows("SELECT count(*) FILTER (WHERE outcome = 'confirmed'),"
                     " count(*) FILTER (WHERE gave_up) FROM idv.work_queue")[0]
    check_eq(done, [str(n + 1), "0"], "items confirmed, given up")
    check_eq(s.pg.psql("SELECT count(*) FROM idv.transactions WHERE status = 'passed'"
                       " AND confirmed"), str(n + 1), "transactions confirmed")
    m = s.d.metrics()
    check_eq(idvtest.metric_value(m, "idv_alibaba_circuit_state"), 0.0, "circuit closed")
    check(idvtest.metric_value(m, "idv_alibaba_circuit_opens_total") >= 1, "opens counted")
    check(idvtest.metric_value(m, "idv_alibaba_calls_short_circuited_total") >= 5,
          "short-circuited calls counted")
    logs = s.d.logs()
    check("circuit opened" in logs and "circuit closed" in logs, "log lines on open and close")
    print("\n".join(line for line in logs.splitlines() if "circuit" in line))
    # Throttling is an answer: 429 as before, the circuit stays closed.
    s.fake.queue("Initialize", "error", count=4, status=403, code="Throttling.Api")
    for i in range(4):
        st, b, hd = init(s.d, body(biz=f"thr{i}"))
        check_eq((st, b.get("code"), hd.get("Retry-After")), (429, "UpstreamThrottled", "2"),
                 "throttled")
    check_eq(idvtest.metric_value(s.d.metrics(), "idv_alibaba_circuit_state"), 0.0,
             "throttling does not open the circuit")
    print(f"dark then back: calls made while dark {calls_dark} (bound {bound}); time to the"
          f" first success after {to_first:.2f} s; confirmations completed {done[0]} of"
          f" {n + 1} (all held items done {to_all:.2f} s after); given up {done[1]}")
    s.d.stop_clean()


def case_give_up_stays_visible(ctx):
    """Past confirm_max_attempts the item is given up, stays in the queue with
    its last error, and is counted."""
    s = start(ctx, confirm_max_attempts=3)
    tx = new_tx(s, "giv1")
    s.fake.queue("CheckResult", "error", count=10, status=500, code="InternalError")
    s.fake.deliver_callback(tx, passed="Y", sub_code="200", scheme="http")
    wait_until(lambda: s.pg.psql("SELECT gave_up FROM idv.work_queue") == "t", 30,
               what="give-up")
    row = s.pg.rows("SELECT attempts, done_at IS NULL, last_error LIKE '%InternalError%'"
                    " FROM idv.work_queue")
    check_eq(row, [["3", "t", "t"]], "given-up item")
    check_eq(status_of(s.pg, tx)[0], "callback_received", "status stays unconfirmed")
    check_eq(idvtest.metric_value(s.d.metrics(), "idv_confirmation_giveups_total"), 1.0, "metric")


def case_sigkill_with_items_queued(ctx):
    """The daemon is killed with SIGKILL while confirmations are queued and in
    flight; after a restart every item is done exactly once."""
    n = 12
    s = start(ctx, alibaba_timeout_ms=1000, alibaba_qps=4)
    txs = [new_tx(s, f"kil{i}") for i in range(n)]
    for tx in txs:
        s.fake.set_result(tx, "Y", "200")
    s.fake.queue("CheckResult", "delay", count=n, ms=300)
    for tx in txs:
        check_eq(json.loads(s.fake.deliver_callback(tx, scheme="http")["body"]),
                 {"result": "accepted"}, "callback")
    wait_until(lambda: s.fake.calls("CheckResult") >= 2, 30, what="some CheckResult calls")
    s.d.proc.send_signal(signal.SIGKILL)
    s.d.proc.wait()
    done_before = int(s.pg.psql("SELECT count(*) FROM idv.work_queue WHERE done_at IS NOT NULL"))
    s.d.start()
    wait_until(lambda: s.pg.psql("SELECT count(*) FROM idv.work_queue WHERE done_at IS NULL")
               == "0", 60, what="every item done after the restart")
    rows = s.pg.rows("SELECT transaction_id, count(*) FROM idv.check_results GROUP BY 1")
    check_eq(len(rows), n, "a result per transaction")
    check(all(r[1] == "1" for r in rows), f"each recorded once: {rows}")
    check_eq(s.pg.psql("SELECT count(*) FROM idv.work_queue"), str(n), "one item per transaction")
    check_eq(s.pg.psql("SELECT count(*) FROM idv.transactions WHERE status = 'passed'"
                       " AND confirmed"), str(n), "all confirmed")
    print(f"items: {n}; done before the kill: {done_before}; CheckResult calls:"
          f" {s.fake.calls('CheckResult')}; results recorded: {len(rows)}; lost: 0")


def case_two_instances_share_the_queue(ctx):
    """Two instances on one database: every item is called once (no item is
    claimed by both), and both take part. At alibaba_qps = 4 an instance
    claims 4 items at a time and holds at most 8; each CheckResult takes
    200 ms upstream, so the first instance cannot hold all 20 and the second
    claims the rest (it polls every 100 ms)."""
    n = 20
    s = start(ctx, alibaba_qps=4)
    d2 = ctx.daemon(s.pg, name="idv2", start=False, **FAST, alibaba_qps=4)
    d2.cfg.update({k: v for k, v in s.d.cfg.items()
                   if k.startswith(("alibaba", "public_base")) and k != "alibaba_qps"})
    d2.start()
    txs = [new_tx(s, f"two{i}") for i in range(n)]
    for tx in txs:
        s.fake.set_result(tx, "N", "205")
    s.fake.queue("CheckResult", "delay", count=n, ms=200)
    for i, tx in enumerate(txs):
        s.fake.deliver_callback(tx, scheme="http")
    wait_until(lambda: s.pg.psql("SELECT count(*) FROM idv.work_queue WHERE done_at IS NULL")
               == "0", 60, what="all items done")
    per_tx = {}
    for r in s.fake.requests("CheckResult"):
        per_tx[r["params"]["TransactionId"]] = per_tx.get(r["params"]["TransactionId"], 0) + 1
    check_eq(sorted(per_tx), sorted(txs), "every transaction checked")
    check(all(v == 1 for v in per_tx.values()), f"called twice: {per_tx}")
    by = dict(s.pg.rows("SELECT done_by, count(*) FROM idv.work_queue GROUP BY 1"))
    print(f"items done per instance: {by}")
    check_eq(sorted(by), ["idv", "idv2"], "both instances did queue items")
    check_eq(sum(int(v) for v in by.values()), n, "items done in all")


def case_sweeper_finds_completed_and_expired(ctx):
    """Transactions still initiated past expires_at + grace are checked: one
    that completed at Alibaba (its callback never came) is recorded as if it
    had; one that never completed becomes expired."""
    s = start(ctx)
    done_tx = new_tx(s, "swp1")
    never_tx = new_tx(s, "swp2")
    s.fake.set_result(done_tx, "Y", "200")
    s.pg.psql("UPDATE idv.transactions SET expires_at = now() - interval '1 second'"
              f" WHERE transaction_id IN ('{done_tx}', '{never_tx}')")
    wait_status(s.pg, done_tx, "passed")
    wait_status(s.pg, never_tx, "expired")
    check_eq(status_of(s.pg, done_tx), ["passed", "Y", "200", "t", "f", "f"], "recorded")
    kinds = s.pg.rows("SELECT transaction_id, kind, outcome FROM idv.work_queue ORDER BY id")
    check_eq(sorted(kinds), sorted([[done_tx, "sweep", "confirmed"], [never_tx, "sweep",
                                                                      "expired"]]), "items")
    # A callback arriving late for the confirmed one: accepted (first callback)
    # but the confirmed result stays.
    res = s.fake.deliver_callback(done_tx, passed="N", sub_code="205", scheme="http")
    check_eq(json.loads(res["body"]), {"result": "accepted"}, "late callback")
    check_eq(status_of(s.pg, done_tx)[:3], ["passed", "Y", "200"], "confirmed result kept")


def case_sweeper_without_credentials(ctx):
    """Without credentials nobody can ask Alibaba: past expires_at + grace a
    registered transaction becomes expired; rows left initializing by a crash
    are marked initialize_failed."""
    pg = ctx.pg()
    d = ctx.daemon(pg, **FAST)
    check_eq(d.register("reg1", "biz1", "reg-token-0123456789abc")[0], 201, "register")
    pg.psql("UPDATE idv.transactions SET expires_at = now() - interval '1 second'"
            " WHERE transaction_id = 'reg1'")
    pg.psql("INSERT INTO idv.transactions (merchant_biz_id, callback_token_sha256, status, origin,"
            " initiated_at) VALUES ('crash1', sha256('x'), 'initializing', 'initialized',"
            " now() - interval '1 hour')")
    wait_status(pg, "reg1", "expired")
    wait_until(lambda: pg.psql("SELECT status || '/' || upstream_code FROM idv.transactions"
                               " WHERE merchant_biz_id = 'crash1'")
               == "initialize_failed/Abandoned", 30, what="abandoned row failed")


def case_subcode_unknown_means_review(ctx):
    """Passed=Y with a SubCode the table does not know is never a pass: status
    not_passed with review_required; known codes map through the table."""
    s = start(ctx)
    a = new_tx(s, "sc1")
    b = new_tx(s, "sc2")
    s.fake.set_result(a, "Y", "999")
    s.fake.set_result(b, "N", "204")
    s.fake.deliver_callback(a, scheme="http")
    s.fake.deliver_callback(b, scheme="http")
    wait_status(s.pg, a, "not_passed")
    wait_status(s.pg, b, "not_passed")
    check_eq(status_of(s.pg, a)[4], "t", "unknown code needs review")
    check_eq(status_of(s.pg, b)[4], "f", "known failure is not a review")
    meaning = s.pg.psql("SELECT meaning FROM idv.sub_codes WHERE sub_code = '205'")
    check_eq(meaning, "liveness attack suspected", "SubCode meanings are data")


def case_subcode_without_credentials(ctx):
    """The callback is final without credentials, and the same table applies."""
    pg = ctx.pg()
    d = ctx.daemon(pg)
    d.register("nc1", "biz1", "nc-token-0123456789abcd")
    st, b, _, _ = d.callback("nc1", "Y", "777", "nc-token-0123456789abcd")
    check_eq(b, {"result": "accepted"}, "callback")
    check_eq(status_of(pg, "nc1")[:5], ["not_passed", "Y", "777", "f", "t"], "review, unconfirmed")


def case_consumer_cannot_miss_events(ctx):
    """The README's consumer: LISTEN, then catch up with idv.events_after from
    its last (xid, id); every status change is seen once, in order, across a
    reconnect."""
    pg = ctx.pg()
    d = ctx.daemon(pg)
    pg.psql("CREATE ROLE consumer LOGIN IN ROLE idv_reader")
    seen = []
    pos = ("0", "0")

    def catch_up():
        nonlocal pos
        rows = pg.rows(f"SELECT xid, id, transaction_id, status FROM idv.events_after("
                       f"'{pos[0]}'::xid8, {pos[1]})", user="consumer")
        for r in rows:
            seen.append((r[2], r[3]))
            pos = (r[0], r[1])
        return len(rows)

    for i in range(5):
        d.register(f"ev{i}", "biz1", f"ev-token-{i}-0123456789ab")
    catch_up()
    # "Disconnected" meanwhile: more changes happen.
    for i in range(5):
        d.callback(f"ev{i}", "Y", "200", f"ev-token-{i}-0123456789ab")
    # Listen for the NOTIFY of the next change, then catch up again.
    listener = subprocess.Popen(
        ["psql", "-X", "-h", pg.sock, "-p", str(pg.port), "-U", "consumer", "-d", "postgres",
         "-c", "LISTEN idv_transaction_status", "-c", "SELECT pg_sleep(3)"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    import time
    time.sleep(1)
    d.register("ev9", "biz1", "ev-token-9-0123456789ab")
    out = listener.communicate(timeout=30)[0]
    check("idv_transaction_status" in out and '"transactionId" : "ev9"' in out.replace(
        '"transactionId": "ev9"', '"transactionId" : "ev9"'), f"NOTIFY received: {out}")
    catch_up()
    want = [(f"ev{i}", "initiated") for i in range(5)] + [(f"ev{i}", "passed") for i in range(5)] \
        + [("ev9", "initiated")]
    check_eq(seen, want, "every event once, in order")
    check_eq(catch_up(), 0, "nothing more")


def case_queue_metrics(ctx):
    """Queue depth and the oldest item's age are exported. The item must stay
    waiting until the statistics query (every 5 s) has seen it: with FAST's four
    attempts it was given up within a second, before the query ran, unless the
    machine happened to be slow."""
    s = start(ctx, confirm_max_attempts=1000)
    tx = new_tx(s, "met1")
    s.fake.queue("CheckResult", "error", count=100, status=500, code="InternalError")
    s.fake.deliver_callback(tx, passed="Y", sub_code="200", scheme="http")
    wait_until(lambda: idvtest.metric_value(s.d.metrics(), "idv_work_queue_depth") == 1.0, 30,
               what="depth 1 in metrics")
    m = s.d.metrics()
    oldest = idvtest.metric_value(m, "idv_work_queue_oldest_seconds")
    check(oldest is not None and oldest > 0, f"oldest age exported: {oldest}")
    check_eq(idvtest.metric_value(m, "idv_work_queue_given_up"), 0.0, "nothing given up")


if __name__ == "__main__":
    sys.exit(idvtest.main(globals()))
