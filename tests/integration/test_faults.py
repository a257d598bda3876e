#!/usr/bin/env python3
"""Faults under load: the daemon killed, PostgreSQL restarted or frozen, and
several instances racing on one database. The rule under test is the
contract's first one: a 200 accepted/duplicate is sent only after the commit,
so nothing acknowledged is ever lost.

A load generator (asyncio, on a thread of its own) sends callbacks for
transactions registered in bulk and records every answer; after the fault the
answers are checked against idv.callback_results. Each case prints what it
counted so that the figures can be quoted. No assertion is about time:
wait_until only bounds waits, and the time stamps of answers only order them
around a fault (sent after PostgreSQL was stopped, answered before it was
started again)."""
import asyncio
import collections
import hashlib
import json
import os
import random
import signal
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
import idvtest  # noqa: E402
from idvtest import check, check_eq, wait_until  # noqa: E402

# The two results a callback of transaction i may carry: with alternatives the
# load picks either (so that conflicts happen and the recorded result says
# which one won), without it always the first one of i's parity.
RESULTS = (("Y", "200"), ("N", "205"))

Answer = collections.namedtuple("Answer", "tx passed sub status result sent got")


async def read_response(reader):
    """One Content-Length framed response: (status, result field of the JSON
    body or None, whether the server closes after it)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    hdrs = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(hdrs.get("content-length", "0")))
    try:
        result = json.loads(body).get("result")
    except ValueError:
        result = None
    return status, result, hdrs.get("connection", "").lower() == "close"


class Load(idvtest.AsyncLoad):
    """Callbacks from `workers` keep-alive connections until stop().

    txs is [(transaction id, token)], or [(transaction id, token, passed,
    subCode)] to fix the result each one carries. Without `once`, each worker takes the
    next transaction not sent yet, or (with probability `resend`, and always
    once all were sent) one sent before again. With `once` every transaction
    of txs is sent exactly once (a connection that cannot be opened is tried
    again; a request whose connection breaks is not). Every answer is kept in
    `answers`; requests whose connection broke before an answer (a killed
    daemon) are counted in `broken`."""

    def __init__(self, ports, txs, workers=32, resend=0.3, alternatives=True, once=False,
                 seed=None):
        super().__init__(workers)
        self.ports = list(ports)
        self.txs = txs
        self.resend = resend
        self.alternatives = alternatives
        self.once = once
        self.rng = random.Random(seed if seed is not None else 6)
        self.next = 0
        self.answers = []
        self.broken = []
        self.connect_errors = 0

    def values(self, i):
        if len(self.txs[i]) == 4:
            return tuple(self.txs[i][2:])
        if self.alternatives:
            return RESULTS[self.rng.randrange(2)]
        return RESULTS[i % 2]

    def pick(self):
        if self.once:
            if self.next >= len(self.txs):
                return None
        elif self.next >= len(self.txs) or (self.next > 0 and self.rng.random() < self.resend):
            i = self.rng.randrange(self.next)
            return (i,) + self.values(i)
        i = self.next
        self.next += 1
        return (i,) + self.values(i)

    async def worker(self, w):
        port = self.ports[w % len(self.ports)]
        reader = writer = None
        while not self.stopping.is_set():
            job = self.pick()
            if job is None:
                break
            i, passed, sub = job
            tx, token = self.txs[i][:2]
            while writer is None and not self.stopping.is_set():
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    self.connect_errors += 1
                    await asyncio.sleep(0.02)
            if writer is None:
                break
            req = (f"GET /idv/callback?transactionId={tx}&passed={passed}&subCode={sub}"
                   f"&callbackToken={token} HTTP/1.1\r\nHost: idv.test\r\n\r\n").encode()
            sent = time.monotonic()
            try:
                writer.write(req)
                # Bounds a hang only: the daemon answers at db_timeout_ms.
                status, result, close = await asyncio.wait_for(read_response(reader), 60)
            except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    asyncio.TimeoutError, ValueError, IndexError):
                self.broken.append((tx, passed, sub, sent))
                writer.close()
                reader = writer = None
                continue
            self.answers.append(Answer(tx, passed, sub, status, result, sent, time.monotonic()))
            if close:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    def count(self, pred=lambda a: True):
        return sum(1 for a in list(self.answers) if pred(a))

    def wait(self, n, pred=lambda a: True, timeout=120, what="answers"):
        """Waits until n answers match pred (bounded wait, not an assertion
        about time)."""
        wait_until(lambda: self.count(pred) >= n or self.error or not self.thread.is_alive(),
                   timeout, 0.02, what)
        check(self.error is None, f"load generator failed: {self.error}")
        check(self.count(pred) >= n, f"the load generator stopped before {n} {what}")


def tally(answers):
    """{"200 accepted": n, ...} of a list of answers."""
    c = collections.Counter(f"{a.status} {a.result}" for a in answers)
    return dict(sorted(c.items()))


def verify(pg, answers, label):
    """Checks every answer against PostgreSQL and prints the figures:
    every 200 accepted/duplicate has its row in idv.callback_results with the
    same passed/subCode (else it is lost), every 409 a row with another
    result, at most one accepted answer per transaction, each result row with
    exactly one accepted audit row and the transaction's status set from it.
    Returns the result rows {tx: (passed, subCode)}."""
    rows = {r[0]: (r[1], r[2]) for r in
            pg.rows("SELECT transaction_id, passed, sub_code FROM idv.callback_results")}
    lost, bad_conflict, unexpected = [], [], []
    accepted = collections.Counter()
    acknowledged = set()
    for a in answers:
        if a.status == 200 and a.result in ("accepted", "duplicate"):
            acknowledged.add(a.tx)
            if rows.get(a.tx) != (a.passed, a.sub):
                lost.append(a)
            if a.result == "accepted":
                accepted[a.tx] += 1
        elif a.status == 409 and a.result == "conflict":
            if a.tx not in rows or rows[a.tx] == (a.passed, a.sub):
                bad_conflict.append(a)
        elif not (a.status == 503 and a.result == "unavailable"):
            unexpected.append(a)
    twice = {tx: n for tx, n in accepted.items() if n > 1}
    unacked = sum(1 for tx in rows if tx not in acknowledged)
    print(f"{label}: answers {tally(answers)}; result rows {len(rows)}"
          f" (of which committed but never acknowledged {unacked});"
          f" lost {len(lost)}; wrong conflicts {len(bad_conflict)};"
          f" other answers {len(unexpected)}; accepted twice {len(twice)}", flush=True)
    check_eq(lost[:5], [], f"{label}: acknowledged callbacks whose result is not recorded (lost)")
    check_eq(bad_conflict[:5], [], f"{label}: 409 without another recorded result")
    check_eq(unexpected[:5], [], f"{label}: answers other than 200/409/503")
    check_eq(twice, {}, f"{label}: transactions answered accepted more than once")
    check_eq(pg.psql("SELECT count(*) FROM idv.callback_results r WHERE (SELECT count(*)"
                     " FROM idv.callback_events e WHERE e.transaction_id = r.transaction_id"
                     " AND e.outcome = 'accepted') <> 1"), "0",
             f"{label}: result rows without exactly one accepted audit row")
    check_eq(pg.psql("SELECT count(*) FROM idv.callback_events e WHERE e.outcome = 'accepted'"
                     " AND NOT EXISTS (SELECT 1 FROM idv.callback_results r"
                     " WHERE r.transaction_id = e.transaction_id)"), "0",
             f"{label}: accepted audit rows without a result")
    check_eq(pg.psql("SELECT count(*) FROM idv.callback_results r JOIN idv.transactions t"
                     " USING (transaction_id) WHERE t.passed IS DISTINCT FROM r.passed"
                     " OR t.sub_code IS DISTINCT FROM r.sub_code OR t.status NOT IN"
                     " ('passed', 'not_passed')"), "0",
             f"{label}: transactions whose status disagrees with their result")
    return rows


def check_no_tokens(d_list, pg, txs, salt, label):
    """No token of the run (they all start with salt) in any daemon log or in
    pg_dumpall; the digests are there, so the search looked at the data."""
    dump = pg.dump_all()
    check(salt not in dump, f"{label}: pg_dumpall holds a token")
    check(hashlib.sha256(txs[0][1].encode()).hexdigest() in dump,
          f"{label}: pg_dumpall holds the digest of a token")
    for d in d_list:
        log = d.logs()
        check("request" in log, f"{label}: the log of {d.cfg['instance_name']} has request lines")
        check(salt not in log, f"{label}: the log of {d.cfg['instance_name']} holds a token")
    print(f"{label}: no token in {len(d_list)} daemon log(s) ({sum(len(d.logs()) for d in d_list)}"
          f" bytes) or in pg_dumpall ({len(dump)} bytes)", flush=True)


def new_salt(tag):
    return f"SeCrEt-{tag}-{uuid.uuid4().hex[:12]}"


# ---- the daemon killed ------------------------------------------------------------

KILL_ROUNDS = 20


def case_sigkill_under_load(ctx):
    """The daemon is killed with SIGKILL under load, 20 times, and started
    again on the same database each time. Every 200 accepted/duplicate that a
    client saw is in idv.callback_results with the same passed/subCode; no
    200 for a callback whose row is missing; no token in the logs or the
    dump."""
    pg = ctx.pg()
    salt = new_salt("kill")
    txs = idvtest.register_bulk(pg, 12000, prefix="k", salt=salt)
    d = ctx.daemon(pg, db_pool_size=4, db_timeout_ms=2000, log_level="info")
    load = Load([d.public_port], txs, workers=32, resend=0.3).start()
    pids = set()
    try:
        for rnd in range(KILL_ROUNDS):
            pids.add(d.pid)
            mark = load.count()
            # Under load: answers are flowing from this incarnation.
            load.wait(mark + 150, what=f"150 answers in round {rnd}")
            time.sleep(random.uniform(0, 0.1))
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait()
            check_eq(d.proc.returncode, -signal.SIGKILL, f"round {rnd}: killed by SIGKILL")
            d.start()
        mark = load.count()
        load.wait(mark + 300, what="answers after the last restart")
    finally:
        load.stop()
    check_eq(len(pids), KILL_ROUNDS, "distinct daemon processes killed")
    print(f"sigkill: {KILL_ROUNDS} kills; requests cut by a kill (no answer) {len(load.broken)};"
          f" connection attempts refused while down {load.connect_errors}", flush=True)
    # A kill that cut no request in flight would not test anything.
    check(len(load.broken) > 0, "some requests were in flight when the daemon was killed")
    rows = verify(pg, load.answers, "sigkill")
    check(any(a.result == "accepted" for a in load.answers), "callbacks were accepted")
    check(len(rows) > 0, "results recorded")
    # The requests a kill cut, sent again now: each is answered from the
    # record (accepted when it never committed, duplicate or conflict when it
    # did), and the answers agree with the rows.
    token = dict(txs)
    again = Load([d.public_port], [(tx, token[tx], p, s) for tx, p, s, _ in load.broken],
                 workers=16, once=True).start().join()
    print(f"sigkill: the {len(load.broken)} cut requests sent again: {tally(again.answers)}",
          flush=True)
    check_eq(len(again.answers), len(load.broken), "answers to the cut requests sent again")
    verify(pg, load.answers + again.answers, "sigkill, all answers")
    d.stop_clean()
    check_no_tokens([d], pg, txs, salt, "sigkill")


# ---- PostgreSQL restarted -------------------------------------------------------------

def pg_restart_under_load(ctx, mode):
    pg = ctx.pg()
    salt = new_salt("restart")
    txs = idvtest.register_bulk(pg, 6000, prefix="r", salt=salt)
    d = ctx.daemon(pg, db_pool_size=4, db_timeout_ms=1000)
    pid = d.pid
    load = Load([d.public_port], txs, workers=32, resend=0.3).start()
    try:
        load.wait(500, what="answers before the restart")
        t_stop = time.monotonic()
        pg.stop(mode)
        t_down = time.monotonic()  # PostgreSQL is gone (pg_ctl -w waited for it)
        load.wait(64, lambda a: a.sent > t_down, what="answers during the outage")
        check_eq(d.status("/healthz"), 200, "healthz during the outage")
        wait_until(lambda: d.status("/readyz") == 503, 30, what="readyz 503 during the outage")
        t_up = time.monotonic()
        pg.start()
        t_started = time.monotonic()
        load.wait(300, lambda a: a.sent > t_started and a.result == "accepted",
                  what="accepted answers after PostgreSQL came back")
    finally:
        load.stop()
    check(d.proc.poll() is None and d.pid == pid, "the daemon was not restarted")
    answers = list(load.answers)
    # Sent once pg_ctl stop had returned, answered before pg_ctl start began:
    # nothing can have committed them.
    outage = [a for a in answers if a.sent > t_down and a.got < t_up]
    across = [a for a in answers if a.sent <= t_down and a.got >= t_stop]
    print(f"pg {mode}: answers to requests sent during the outage {tally(outage)};"
          f" to requests in flight while it stopped {tally(across)}", flush=True)
    check(len(outage) >= 64, "answers during the outage")
    check_eq(tally(outage), {"503 unavailable": len(outage)},
             "answers during the outage are all 503")
    after = [a for a in answers if a.sent > t_started]
    print(f"pg {mode}: answers after PostgreSQL came back {tally(after)}", flush=True)
    verify(pg, answers, f"pg {mode}")
    d.stop_clean()
    check_no_tokens([d], pg, txs, salt, f"pg {mode}")


def case_pg_restart_fast(ctx):
    """PostgreSQL stopped with `pg_ctl stop -m fast` under load and started
    again: requests sent while it is down get only 503; every 200 is
    recorded; service returns without restarting the daemon."""
    pg_restart_under_load(ctx, "fast")


def case_pg_restart_immediate(ctx):
    """The same with `pg_ctl stop -m immediate` (no shutdown checkpoint,
    crash recovery at start): commits in flight are ambiguous, and still no
    200 is given for one that did not commit."""
    pg_restart_under_load(ctx, "immediate")


# ---- PostgreSQL frozen ------------------------------------------------------------------

def case_pg_frozen_under_load(ctx):
    """PostgreSQL frozen with SIGSTOP under load: callbacks get 503 (the
    daemon's db_timeout_ms deadline), never 200; /healthz still answers 200
    during the freeze. After SIGCONT, full service: once /readyz is 200 again
    every callback is accepted or duplicate, including every one that got a
    503 during the freeze."""
    pg = ctx.pg()
    salt = new_salt("freeze")
    txs = idvtest.register_bulk(pg, 6000, prefix="f", salt=salt)
    d = ctx.daemon(pg, db_pool_size=4, db_timeout_ms=1500)
    # One result per transaction: a callback sent again is accepted or
    # duplicate, never a conflict.
    load = Load([d.public_port], txs, workers=32, resend=0.3, alternatives=False).start()
    healthz = collections.Counter()
    try:
        load.wait(500, what="answers before the freeze")
        pg.freeze()
        t_frozen = time.monotonic()
        try:
            load.wait(64, lambda a: a.sent > t_frozen, what="answers during the freeze")
            for _ in range(5):
                healthz[d.status("/healthz")] += 1
        finally:
            t_thaw = time.monotonic()
            pg.thaw()
        wait_until(lambda: d.status("/readyz") == 200, 60, what="readyz 200 after the thaw")
        t_full = time.monotonic()
        load.wait(500, lambda a: a.sent > t_full, what="answers after the thaw")
    finally:
        load.stop()
    answers = list(load.answers)
    frozen = [a for a in answers if a.sent > t_frozen and a.got < t_thaw]
    after = [a for a in answers if a.sent > t_full]
    print(f"pg frozen: /healthz during the freeze {dict(healthz)}; answers to requests sent"
          f" during the freeze {tally(frozen)}; after readyz came back {tally(after)}",
          flush=True)
    check_eq(dict(healthz), {200: 5}, "healthz during the freeze")
    check(len(frozen) >= 64, "answers during the freeze")
    check_eq(tally(frozen), {"503 unavailable": len(frozen)},
             "answers during the freeze are all 503")
    check_eq({k: v for k, v in tally(after).items()
              if k not in ("200 accepted", "200 duplicate")}, {},
             "answers after the thaw other than accepted/duplicate")
    verify(pg, answers, "pg frozen")
    # Everything that got a 503 at any time, sent again once: recorded now.
    unavailable = sorted({a.tx for a in answers if a.status == 503})
    token = dict(txs)
    again = Load([d.public_port],
                 [(tx, token[tx]) + RESULTS[int(tx[1:]) % 2] for tx in unavailable],
                 workers=16, once=True).start().join()
    check_eq(len(again.answers), len(unavailable), "answers to the callbacks sent again")
    print(f"pg frozen: the {len(unavailable)} transactions answered 503, sent again:"
          f" {tally(again.answers)}", flush=True)
    check_eq({k: v for k, v in tally(again.answers).items()
              if k not in ("200 accepted", "200 duplicate")}, {},
             "callbacks answered 503 during the freeze, sent again")
    verify(pg, answers + again.answers, "pg frozen, all answers")
    d.stop_clean()
    check_no_tokens([d], pg, txs, salt, "pg frozen")


# ---- several instances ------------------------------------------------------------------

def case_three_instances_same_callbacks(ctx):
    """Three instances on one database receive the same callbacks at the same
    moment: exactly one accepted per transaction (recorded by the instance
    that answered it), the others duplicate, no 5xx; then a different result
    sent to all three is a conflict everywhere and the first result stays."""
    pg = ctx.pg()
    salt = new_salt("three")
    n = 600
    txs = idvtest.register_bulk(pg, n, prefix="t", salt=salt)
    ds = [ctx.daemon(pg, name=f"idv-{x}", db_pool_size=4, db_timeout_ms=5000) for x in "abc"]

    async def one(port, path):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: idv.test\r\n\r\n".encode())
            status, result, _ = await asyncio.wait_for(read_response(reader), 60)
            return status, result
        finally:
            writer.close()

    async def race(flip):
        sem = asyncio.Semaphore(40)  # transactions racing at once (120 requests)

        async def tx_race(i, tx, tok):
            passed, sub = RESULTS[(i + flip) % 2]
            path = (f"/idv/callback?transactionId={tx}&passed={passed}&subCode={sub}"
                    f"&callbackToken={tok}")
            async with sem:
                return await asyncio.gather(*(one(d.public_port, path) for d in ds))
        return await asyncio.gather(*(tx_race(i, tx, tok) for i, (tx, tok) in enumerate(txs)))

    first = asyncio.run(race(0))
    all_answers = collections.Counter(r for rs in first for r in rs)
    winner = {}
    bad = []
    for (tx, _), rs in zip(txs, first):
        if sorted(rs) != [(200, "accepted"), (200, "duplicate"), (200, "duplicate")]:
            bad.append((tx, rs))
        for d, r in zip(ds, rs):
            if r == (200, "accepted"):
                winner[tx] = d.cfg["instance_name"]
    by_instance = collections.Counter(winner.values())
    print(f"three instances: {n} transactions x 3 instances: answers {dict(all_answers)};"
          f" accepted by instance {dict(sorted(by_instance.items()))};"
          f" transactions without exactly one accepted {len(bad)}", flush=True)
    check_eq(bad[:5], [], "transactions without exactly one accepted and two duplicates")
    check_eq(sum(v for (st, _), v in all_answers.items() if st >= 500), 0, "5xx answers")
    rows = {r[0]: (r[1], r[2], r[3]) for r in pg.rows(
        "SELECT transaction_id, passed, sub_code, instance FROM idv.callback_results")}
    check_eq(len(rows), n, "result rows")
    mismatch = [tx for i, (tx, _) in enumerate(txs)
                if rows.get(tx) != RESULTS[i % 2] + (winner.get(tx),)]
    check_eq(mismatch[:5], [], "result recorded by the instance that answered accepted")
    check_eq(pg.rows("SELECT outcome, count(*) FROM idv.callback_events GROUP BY 1 ORDER BY 1"),
             [["accepted", str(n)], ["duplicate", str(2 * n)]], "audit rows")
    # The other result, to all three at once: conflict everywhere, nothing changes.
    second = asyncio.run(race(1))
    c2 = collections.Counter(r for rs in second for r in rs)
    print(f"three instances: the other result to all three: answers {dict(c2)}", flush=True)
    check_eq(dict(c2), {(409, "conflict"): 3 * n}, "answers to the other result")
    rows2 = {r[0]: (r[1], r[2], r[3]) for r in pg.rows(
        "SELECT transaction_id, passed, sub_code, instance FROM idv.callback_results")}
    check_eq(rows2, rows, "first results kept")
    print(f"three instances: result rows {len(rows2)}, lost 0", flush=True)
    for d in ds:
        d.stop_clean()
    check_no_tokens(ds, pg, txs, salt, "three instances")


if __name__ == "__main__":
    sys.exit(idvtest.main(globals()))
