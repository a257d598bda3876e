#!/usr/bin/env python3
"""The pool on a slow database: PostgreSQL with a synchronous standby and a
network in between (tests/lib/slowdb.py, netproxy.py), as production runs it.

A commit that takes milliseconds instead of microseconds makes queries wait
in the pool's queue while every connection is busy. Each user of the pool is
given more concurrent work than pool connections x pipeline depth (4 x 1
here: a connection carries one unit of work at a time) and every request must
be answered 2xx, the last one of the burst included, round after round; no
query may reach its deadline (idv_db_query_timeouts_total stays 0). A query
left in the queue when the work in flight completes waits for an unrelated
submit or dies at its deadline: the stranding these tests catch.

Figures are printed. The sizes are small for CI; the same cases run the
issue's full burst with, e.g.:
  IDV_SLOWDB_N=3000 IDV_SLOWDB_THREADS=16 IDV_SLOWDB_ROUNDS=3 IDV_SLOWDB_LATENCY_MS=0 \
    python3 tests/integration/test_slowdb.py --bin build/debug/daemon/idv-callbackd register_burst
(IDV_SLOWDB_LATENCY_MS=0: no proxy, the standby's commit wait alone;
IDV_SLOWDB_TWO_HOSTS=1: a database_url naming the primary and the standby.)
"""
import collections
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, HERE)
import idvtest  # noqa: E402
import slowdb  # noqa: E402
from idvtest import check, check_eq, metric_value, wait_until  # noqa: E402
from netproxy import NetProxy  # noqa: E402
from test_partitions import (RETENTION_KEYS, TABLES, apply_up_to, old_history,  # noqa: E402
                             partitions)

N = int(os.environ.get("IDV_SLOWDB_N", "120"))
THREADS = int(os.environ.get("IDV_SLOWDB_THREADS", "16"))
ROUNDS = int(os.environ.get("IDV_SLOWDB_ROUNDS", "2"))
LATENCY_MS = float(os.environ.get("IDV_SLOWDB_LATENCY_MS", "3"))
TWO_HOSTS = os.environ.get("IDV_SLOWDB_TWO_HOSTS") == "1"
POOL = 4
TIMEOUT_MS = 2000


def salt(label):
    return f"{label}-{uuid.uuid4().hex[:12]}"


def setup(ctx, standby=True, **cfg):
    """The slow database and a daemon on it (pool of 4, 2 s deadline)."""
    db = slowdb.slow_db(ctx, LATENCY_MS, LATENCY_MS, standby=standby, proxy=LATENCY_MS > 0)
    check(THREADS > POOL, "the burst must exceed pool connections x pipeline depth")
    d = ctx.daemon(name="idv", database_url=db.url(two_hosts=TWO_HOSTS), db_pool_size=POOL,
                   db_timeout_ms=TIMEOUT_MS, **cfg)
    print(f"setup: synchronous standby {'yes' if db.standby else 'no'}, added latency"
          f" {LATENCY_MS} ms each way, {'two hosts' if TWO_HOSTS else 'one host'},"
          f" pool {POOL}, db_timeout_ms {TIMEOUT_MS}, {THREADS} client threads", flush=True)
    return db, d


def check_no_timeouts(d, label):
    m = d.metrics()
    t = metric_value(m, "idv_db_query_timeouts_total")
    lost = metric_value(m, "idv_db_queries_lost_total")
    print(f"{label}: idv_db_query_timeouts_total {t}, idv_db_queries_lost_total {lost}",
          flush=True)
    check_eq(t, 0.0, f"{label}: queries that reached their deadline")


def case_register_burst(ctx):
    """POST /v1/transactions/register, ROUNDS rounds of N from THREADS
    threads, over a synchronous standby and a slow link: all 201, every row
    there."""
    db, d = setup(ctx)
    problems = []
    for rnd in range(ROUNDS):
        replies = slowdb.burst(d.admin_port, N, THREADS,
                               slowdb.register_request(f"r{rnd}x", salt(f"reg{rnd}")))
        problems.append(slowdb.problems_2xx(replies, f"register round {rnd + 1} of {ROUNDS}"))
        rows = db.primary.psql(f"SELECT count(*) FROM idv.transactions WHERE transaction_id"
                               f" LIKE 'r{rnd}x%'")
        print(f"register round {rnd + 1}: {rows} rows", flush=True)
        created = sum(1 for r in replies if r.status == 201)
        check_eq(int(rows), created, f"round {rnd + 1}: rows and 201s")
    check_eq([p for p in problems if p], [], "rounds with requests not answered 2xx")
    check_no_timeouts(d, "register")
    d.stop_clean()


def case_status_burst(ctx):
    """GET /v1/transactions/{id}, ROUNDS rounds of N from THREADS threads:
    all 200 with the transaction asked for. A read waits for no standby: the
    slow link alone (in the full-size run, IDV_SLOWDB_LATENCY_MS=0, the
    standby is there as in the issue's setup)."""
    db, d = setup(ctx, standby=LATENCY_MS == 0)
    txs = idvtest.register_bulk(db.primary, N, prefix="st", salt=salt("status"))
    problems = []
    for rnd in range(ROUNDS):
        replies = slowdb.burst(d.admin_port, N, THREADS, slowdb.status_request(txs))
        problems.append(slowdb.problems_2xx(replies, f"status round {rnd + 1} of {ROUNDS}"))
        for r in replies:
            if r.status == 200:
                check_eq(json.loads(r.body)["transactionId"], txs[r.i][0], f"reply #{r.i}")
    check_eq([p for p in problems if p], [], "rounds with requests not answered 2xx")
    check_no_timeouts(d, "status")
    d.stop_clean()


def callback_request(txs):
    def make(i):
        tx, token = txs[i]
        return ("GET", f"/idv/callback?transactionId={tx}&passed=Y&subCode=200"
                f"&callbackToken={token}", None, {})
    return make


def case_callback_burst(ctx):
    """Callbacks, ROUNDS rounds of N from THREADS threads, over the slow link
    (the standby only in the full-size run, IDV_SLOWDB_LATENCY_MS=0): all 200
    accepted and recorded."""
    db, d = setup(ctx, standby=LATENCY_MS == 0)
    txs = idvtest.register_bulk(db.primary, N * ROUNDS, prefix="cb", salt=salt("callback"))
    for rnd in range(ROUNDS):
        part = txs[rnd * N:(rnd + 1) * N]
        replies = slowdb.burst(d.public_port, N, THREADS, callback_request(part))
        slowdb.check_all_2xx(replies, f"callback round {rnd + 1} of {ROUNDS}")
        check_eq({json.loads(r.body)["result"] for r in replies}, {"accepted"}, "results")
    check_eq(db.primary.psql("SELECT count(*) FROM idv.callback_results"), str(N * ROUNDS),
             "results recorded")
    check_no_timeouts(d, "callback")
    d.stop_clean()


def alibaba_on_slow_db(ctx, **cfg):
    """The fake Alibaba and a daemon calling it, with its database behind a
    slow link (no standby: the fake's setup makes its own cluster)."""
    from test_initialize import alibaba
    s = alibaba(ctx, db_pool_size=POOL, db_timeout_ms=TIMEOUT_MS, alibaba_qps=1000, **cfg)
    # The helper starts the daemon on the cluster directly: restarted on the
    # slow link.
    # 20 ms each way: longer than the fake's answer, so that the database and
    # not Alibaba is what the requests queue for.
    proxy = NetProxy(s.pg.port, up_ms=max(LATENCY_MS, 50), down_ms=max(LATENCY_MS, 50))
    ctx.cleanups.append(proxy.close)
    s.d.stop_clean()
    s.d.cfg["database_url"] = f"host=127.0.0.1 port={proxy.port} user=idvapp dbname=postgres"
    s.d.start()
    return s


def case_initialize_burst(ctx):
    """POST /v1/transactions (Initialize at the fake Alibaba: a row before the
    call, the outcome after it), ROUNDS rounds of N from THREADS threads:
    all 201."""
    from test_initialize import body
    s = alibaba_on_slow_db(ctx)
    n = N
    for rnd in range(ROUNDS):
        def make(i, rnd=rnd):
            b = json.dumps(body(biz=f"ini{rnd}x{i}"))
            return "POST", "/v1/transactions", b, slowdb.admin_headers(b)
        replies = slowdb.burst(s.d.admin_port, n, THREADS, make)
        slowdb.check_all_2xx(replies, f"initialize round {rnd + 1} of {ROUNDS}")
        check_eq({r.status for r in replies}, {201}, "every one initialized")
    check_eq(s.pg.psql("SELECT count(*) FROM idv.transactions WHERE status = 'initiated'"),
             str(n * ROUNDS), "initiated rows")
    check_no_timeouts(s.d, "initialize")
    s.d.stop_clean()


def case_confirm_burst(ctx):
    """Callbacks with Alibaba credentials: each accepted one queues a
    confirmation; claims (nudged by the callbacks, the poll timer off) and
    completions run over the slow link. Every item is confirmed at its first
    attempt: no claim or completion reached its deadline."""
    s = alibaba_on_slow_db(ctx, confirm_poll_ms=600000, sweep_interval_ms=3600000)
    n = max(N // 2, THREADS * 2)
    txs = idvtest.register_bulk(s.pg, n, prefix="cf", salt=salt("confirm"))
    for tx, _ in txs:
        s.fake.set_result(tx, "Y", "200")
    replies = slowdb.burst(s.d.public_port, n, THREADS, callback_request(txs))
    slowdb.check_all_2xx(replies, "confirm: callbacks")
    def items():
        return s.pg.rows("SELECT coalesce(outcome, 'open'), attempts, count(*) FROM"
                         " idv.work_queue GROUP BY 1, 2 ORDER BY 1, 2")
    try:
        wait_until(lambda: s.pg.psql("SELECT count(*) FROM idv.work_queue WHERE done_at IS NULL")
                   == "0", 30, what="every confirmation done")
    finally:
        rows = items()
        print(f"confirm: work items (outcome, attempts, count): {rows}", flush=True)
    check_eq(rows, [["confirmed", "1", str(n)]], "every item confirmed at its first attempt")
    check("confirmation not recorded" not in s.d.logs(), "no completion failed")
    # The last claim (after the last completion) must not be stranded either.
    wait_until(lambda: metric_value(s.d.metrics(), "idv_db_queued_queries") == 0.0, 30,
               what="the pool's queue to drain")
    wait_until(lambda: metric_value(s.d.metrics(), "idv_db_connections", state="busy") == 0.0,
               TIMEOUT_MS / 1000 * 3, what="every connection idle")
    check_no_timeouts(s.d, "confirm")
    s.d.stop_clean()


def case_background_queries(ctx):
    """The sweeper and the statistics query (the work queue figures of
    /metrics) on a pool of one connection over a link of 100 ms each way:
    the sweeper runs back to back (every 10 ms), so the statistics query
    (first after 1 s) waits behind a sweep, and the next sweep behind it.
    Neither may be left waiting when the one before completes: after the
    statistics arrived and one deadline more, no query has timed out."""
    db = slowdb.slow_db(ctx, 100, 100, standby=False)
    d = ctx.daemon(name="idv", database_url=db.url(), db_pool_size=1,
                   db_timeout_ms=TIMEOUT_MS, sweep_interval_ms=10)
    wait_until(lambda: metric_value(d.metrics(), "idv_work_queue_depth") is not None, 30,
               what="the statistics query to complete")
    # One deadline and a half after the statistics query was answered: a
    # sweep stranded behind it would have timed out by now.
    time.sleep(TIMEOUT_MS / 1000 * 1.5)
    m = d.metrics()
    print(f"background: idv_work_queue_depth {metric_value(m, 'idv_work_queue_depth')},"
          f" queued {metric_value(m, 'idv_db_queued_queries')}", flush=True)
    check_no_timeouts(d, "background")
    d.stop_clean()


def case_lost_connection_logs(ctx):
    """A lost connection is explained by libpq and the server, never by the
    event loop's error name: a connection reset (RST, which the loop sees as
    POLLERR) logs libpq's message; a backend terminated by the administrator
    (pg_terminate_backend: the server sends its FATAL to an idle session and
    closes) logs libpq's message and the server's `FATAL: terminating
    connection due to administrator command (SQLSTATE 57P01)`."""
    db = slowdb.slow_db(ctx, 0, 0, standby=False)
    d = ctx.daemon(name="idv", database_url=db.url(), db_pool_size=2, db_timeout_ms=TIMEOUT_MS)

    def downs():
        return [l for l in d.logs().splitlines() if "PostgreSQL connection down" in l]

    def pool_whole():
        wait_until(lambda: metric_value(d.metrics(), "idv_db_connections", state="ready") == 2.0,
                   30, what="the pool whole again")

    db.proxy.reset()
    wait_until(lambda: len(downs()) >= 2, 30, what="the reset connections logged")
    reset = downs()
    print("after a reset:\n" + "\n".join(reset), flush=True)
    for l in reset:
        check("bad file descriptor" not in l and "reason=" in l,
              f"libpq's message, not libuv's: {l}")
    pool_whole()
    db.primary.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE usename = 'idvapp'")
    wait_until(lambda: len(downs()) >= 4, 30, what="the terminated connections logged")
    terminated = downs()[2:]
    print("after pg_terminate_backend:\n" + "\n".join(terminated), flush=True)
    for l in terminated:
        check("57P01" in l and "terminating connection due to administrator command" in l,
              f"the server's FATAL and its SQLSTATE: {l}")
    pool_whole()
    d.stop_clean()


# ---- partition maintenance and migration on the sync pair -----------------------

# maintain's deadline for one step in these cases (maintain_timeout_ms): a
# step over the slow link takes milliseconds; a cut one is given up after this.
MAINTAIN_TIMEOUT_MS = 3000


class Maintain:
    """`idv-callbackd maintain` running in the background as idvapp through
    url, its output read line by line as it comes."""

    def __init__(self, url):
        env = dict(os.environ, IDV_DATABASE_URL=url,
                   IDV_MAINTAIN_TIMEOUT_MS=str(MAINTAIN_TIMEOUT_MS))
        for k in RETENTION_KEYS.values():
            env.pop(k, None)
        self.proc = subprocess.Popen([idvtest.BIN, "maintain"], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait(self, timeout=30):
        """(exit status, output); a run still going after timeout seconds
        (ten deadlines) is killed and the case fails: a wait without end."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.reader.join(10)
            raise idvtest.TestFailure(f"maintain still running after {timeout} s (killed);"
                                      " output:\n" + "\n".join(self.lines))
        self.reader.join(10)
        out = "\n".join(self.lines)
        print(f"maintain: exit status {self.proc.returncode}; output:\n{out}", flush=True)
        return self.proc.returncode, out


def caught_up(db):
    """Waits until the standby has replayed all the primary wrote so far."""
    lsn = db.primary.psql("SELECT pg_current_wal_lsn()")
    wait_until(lambda: db.standby.psql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn")
               == "t", 60, what="the standby to replay the primary's WAL")


# What a maintain step cut half-way could leave behind, were a step not one
# transaction: a partition without an index of its parent or without its
# TRUNCATE guard, a table made for a partition and never attached, the fence
# of a DEFAULT-partition repair.
HALF_MADE_SQL = r"""
SELECT 'partition ' || c.relname || ' lacks ' || pi.indexrelid::regclass::text
FROM idv.history_tables h
JOIN pg_inherits i ON i.inhparent = to_regclass('idv.' || h.table_name)
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_index pi ON pi.indrelid = i.inhparent
WHERE NOT EXISTS (SELECT 1 FROM pg_inherits ii JOIN pg_index ci ON ci.indexrelid = ii.inhrelid
                  WHERE ii.inhparent = pi.indexrelid AND ci.indrelid = c.oid)
UNION ALL
SELECT 'partition ' || c.relname || ' without its TRUNCATE guard'
FROM idv.history_tables h
JOIN pg_inherits i ON i.inhparent = to_regclass('idv.' || h.table_name)
JOIN pg_class c ON c.oid = i.inhrelid
WHERE NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid
                  AND t.tgname LIKE '%no\_truncate')
UNION ALL
SELECT 'table ' || c.relname || ' named as a partition but not one'
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'idv' AND c.relkind = 'r' AND NOT c.relispartition
  AND c.relname ~ '^(callback_events|transaction_events|check_results)_(p\d{8}|pmin|x\d+|default)$'
UNION ALL
SELECT 'fence ' || k.conname || ' left standing'
FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace
WHERE n.nspname = 'idv' AND k.conname LIKE '%\_fence'
UNION ALL
SELECT 'repair of ' || table_name || ' left half-way' FROM idv.history_tables
WHERE fence_from IS NOT NULL
"""


def half_made(pg):
    out = pg.psql(HALF_MADE_SQL)
    return out.splitlines() if out else []


def partitions_ahead(pg, table=None):
    """Names of the partitions wholly ahead: from a time after now, or an xid
    past the next one."""
    where = f" AND h.table_name = '{table}'" if table else ""
    return {r[0] for r in pg.rows(
        "SELECT p.partition_name FROM idv.history_tables h, idv.history_partitions(h.table_name) p"
        " WHERE NOT p.is_default AND (p.range_from > now()"
        " OR p.xid_from > pg_snapshot_xmax(pg_current_snapshot()))" + where)}


def check_answers(db, answers, label):
    """Every callback answered 200 or 503, some 200; every 200 committed on
    the primary and, replayed, on the standby."""
    counts = collections.Counter(a.status for a in answers)
    print(f"{label}: {len(answers)} callbacks answered: {dict(counts)}", flush=True)
    check(set(counts) <= {200, 503}, f"{label}: answers other than 200 or 503: {dict(counts)};"
          f" e.g. {[a for a in answers if a.status not in (200, 503)][:3]}")
    check(counts[200] > 0, f"{label}: no callback accepted")
    check_eq(slowdb.missing_acknowledged(db.primary, answers), [],
             f"{label}: callbacks answered 200 and not recorded on the primary")
    caught_up(db)
    check_eq(slowdb.missing_acknowledged(db.standby, answers), [],
             f"{label}: callbacks answered 200 and not recorded on the standby")


def case_maintain_on_sync_standby(ctx):
    """`maintain` as production runs it: as the daemon's role, over a slow
    link to a primary with a synchronous standby, while a daemon on the same
    link takes callbacks.
    1. The partitions ahead (dropped beforehand) are made again, on the
       primary and, replayed, on the standby, none half-made.
    2. The link cut while maintain waits for a lock (check_results held in
       SHARE by another session), first as a black hole (nothing answers:
       maintain gives up at its deadline), then as a reset: maintain exits
       non-zero with one clear line, leaves nothing half-made and makes
       nothing of the step that was cut (a run started in the black hole
       gives up connecting); the next run, the link back, makes what was
       missing, on the standby too.
    Throughout, every callback is answered 200 or 503 (the cut), and every 200
    is recorded on the primary and on the standby."""
    db = slowdb.slow_db(ctx, LATENCY_MS, LATENCY_MS)
    pg = db.primary
    url = db.url()
    d = ctx.daemon(name="idv", database_url=url, db_pool_size=POOL, db_timeout_ms=TIMEOUT_MS)
    ahead = partitions_ahead(pg)
    for t in TABLES:
        check(any(p.startswith(t + "_") for p in ahead), f"{t}: partitions ahead: {ahead}")
    pg.psql("; ".join(f"DROP TABLE idv.{p}" for p in sorted(ahead)))
    check_eq(partitions_ahead(pg), set(), "no partition ahead left")
    txs = idvtest.register_bulk(pg, 200, prefix="mt", salt=salt("maintain"))
    load = slowdb.SteadyLoad([("idv", d.public_port, d.admin_port)], txs, callback_threads=4,
                             register_threads=0, pause=0.005)
    ctx.cleanups.append(load.stopping.set)
    load.start()
    load.wait(lambda a: a.status == 200, 20, 60, "callbacks before maintain")

    # 1. maintain while the callbacks come.
    rc, out = Maintain(url).wait()
    check_eq(rc, 0, "maintain's exit status")
    n = len(load.snapshot())
    load.wait(lambda a: True, n + 20, 60, "callbacks after maintain")
    created = set(re.findall(r"^maintain: created partition idv\.(\w+) ", out, re.M))
    for t in TABLES:
        check(any(p.startswith(t + "_") for p in created), f"{t}: partitions made: {created}")
    time_ahead = {p for p in ahead if not p.startswith("transaction_events_")}
    check(time_ahead <= created, f"the months ahead made again: {time_ahead - created} missing")
    made = partitions(pg)
    caught_up(db)
    check_eq(partitions(db.standby), made, "the standby's partitions")
    check_eq(half_made(pg), [], "half-made on the primary")
    check_eq(half_made(db.standby), [], "half-made on the standby")

    # 2. The link cut while maintain waits for its lock on check_results.
    cr_ahead = partitions_ahead(pg, "check_results")
    check(cr_ahead, "check_results has partitions ahead")
    pg.psql("; ".join(f"DROP TABLE idv.{p}" for p in sorted(cr_ahead)))
    holder = subprocess.Popen(["psql", "-X", "-A", "-t", "-q", "-h", pg.sock, "-p", str(pg.port),
                               "-U", "postgres", "-d", "postgres"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ctx.cleanups.append(holder.kill)
    holder.stdin.write("BEGIN;\nLOCK TABLE idv.check_results IN SHARE MODE;\nSELECT 'locked';\n")
    holder.stdin.flush()
    check_eq(holder.stdout.readline().strip(), "locked", "check_results held in SHARE")

    def maintain_backends(waiting=False):
        return int(pg.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name ="
                           " 'idv-callbackd maintain'"
                           + (" AND wait_event_type = 'Lock'" if waiting else "")))

    def cut(how):
        m = Maintain(url)
        wait_until(lambda: maintain_backends(waiting=True) == 1, 30, 0.02,
                   what="maintain waiting for its lock on check_results")
        if how == "blackhole":
            db.proxy.blackhole(True)
            rc, out = m.wait()
            # A run started in the black hole: its connection has the deadline too.
            crc, cout = Maintain(url).wait()
            check(crc != 0 and re.fullmatch(r"maintain: cannot connect: .*timeout expired", cout),
                  f"a maintain started in the black hole: {crc}, {cout}")
            db.proxy.reset()  # what the black hole held goes nowhere
            db.proxy.blackhole(False)
        else:
            db.proxy.reset()
            rc, out = m.wait()
        check(rc != 0, f"{how}: maintain's exit status {rc}")
        lines = out.splitlines()
        check(all(l.startswith("maintain: ") for l in lines),
              f"{how}: every line of maintain's output its own message:\n{out}")
        # The server ends the cut session when its lock wait times out and it
        # finds the connection gone: then maintain's advisory lock is free.
        wait_until(lambda: maintain_backends() == 0, 30, what="the cut session to end")
        return lines[-1]

    last = cut("blackhole")
    check(re.fullmatch(r"maintain: making partitions: no answer from the database within"
                       rf" {MAINTAIN_TIMEOUT_MS // 1000} s \(maintain_timeout_ms\); .*",
                       last),
          f"black hole: maintain's last line: {last}")
    last = cut("reset")
    check(re.fullmatch(r"maintain: making partitions failed: \S.*", last) and "\t" not in last,
          f"reset: maintain's last line: {last}")
    check_eq(half_made(pg), [], "half-made after the cuts")
    check_eq(partitions_ahead(pg, "check_results"), set(),
             "the cut step made nothing of check_results")
    # 3. The link back, the lock still held: the step that cannot get its
    # lock within lock_timeout says so and is tried again after a back-off,
    # and goes through once the lock is free.
    t_back = time.monotonic()
    m = Maintain(url)
    retry = "maintain: making partitions: a lock was not free within lock_timeout; again in"
    wait_until(lambda: any(line.startswith(retry) for line in m.lines), 30, 0.02,
               what="maintain saying it will try again")
    holder.communicate("COMMIT;\n\\q\n", timeout=30)
    rc, out = m.wait()
    check_eq(rc, 0, "maintain's exit status, the link back")
    created = set(re.findall(r"^maintain: created partition idv\.(\w+) ", out, re.M))
    check_eq({p for p in created if p.startswith("check_results_")}, cr_ahead,
             "the next run made what was missing")
    load.wait(lambda a: a.status == 200 and a.sent > t_back, 20, 60,
              "callbacks accepted again, the link back")
    load.stop()
    made = partitions(pg)
    caught_up(db)
    check_eq(partitions(db.standby), made, "the standby's partitions")
    check_eq(half_made(db.standby), [], "half-made on the standby")
    check_answers(db, load.snapshot(), "maintain")
    d.stop_clean()


def case_migrate_on_sync_standby(ctx):
    """`migrate` of an installation at schema 5 over the slow link to a
    primary with a synchronous standby, callbacks recorded through the same
    link during the whole migration as a daemon of the previous version would
    (idv.record_callbacks, 10 a transaction): it completes; no row is lost
    or doubled; the standby has the partitioned tables and every row."""
    db = slowdb.slow_db(ctx, LATENCY_MS, LATENCY_MS, schema=False)
    pg = db.primary
    apply_up_to(pg, 5)
    pg.psql("CREATE ROLE idvapp LOGIN IN ROLE idv_daemon")
    idvtest.register_bulk(pg, 600, prefix="mg", salt="migrate-salt")
    old_history(pg, 2)
    before = {t: pg.psql(f"SELECT count(*) || ' ' || sum(id) || ' ' || max(id) FROM idv.{t}")
              for t in TABLES}
    fresh = idvtest.register_bulk(pg, 500, prefix="live", salt="live-migrate")
    batches = [fresh[i:i + 10] for i in range(0, len(fresh), 10)]
    stop = threading.Event()
    accepted, errors = [], []

    def writer():
        for b in batches:
            if stop.is_set():
                break
            arr = lambda xs: "ARRAY[" + ", ".join(f"'{x}'" for x in xs) + "]"  # noqa: E731
            dg = [hashlib.sha256(tok.encode()).hexdigest() for _, tok in b]
            sql = (f"SELECT outcome FROM idv.record_callbacks({arr(tx for tx, _ in b)},"
                   f" {arr(dg)}, {arr('Y' for _ in b)}, {arr('200' for _ in b)},"
                   f" {arr('192.0.2.10' for _ in b)}, 'live', true)")
            r = subprocess.run(["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
                                "-h", "127.0.0.1", "-p", str(db.proxy.port), "-U", "idvapp",
                                "-d", "postgres", "-c", sql], capture_output=True, text=True)
            if r.returncode == 0:
                accepted.extend(zip((tx for tx, _ in b), r.stdout.split()))
            else:
                errors.append(r.stderr.strip())

    th = threading.Thread(target=writer, daemon=True)
    th.start()
    wait_until(lambda: len(accepted) >= 30 or not th.is_alive(), 60,
               what="callbacks before the migration")
    env = dict(os.environ, IDV_DATABASE_URL=db.url(user="postgres"),
               IDV_MIGRATE_BATCH_BLOCKS="2")
    n0 = len(accepted)
    r = subprocess.run([idvtest.BIN, "migrate"], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=120)
    n = len(accepted)
    print(f"migrate: exit status {r.returncode}; {n - n0} callbacks recorded while it ran;"
          f" output:\n{r.stdout}", flush=True)
    wait_until(lambda: len(accepted) >= n + 30 or not th.is_alive(), 60,
               what="callbacks after the migration")
    stop.set()
    th.join(60)
    check_eq(r.returncode, 0, "migrate's exit status")
    check("1 migration(s) applied now" in r.stdout, "0006 applied")
    for t in TABLES:
        check(re.search(rf"idv\.{t}: [\d,]+ rows moved in [\d.]+ s; swapped in", r.stdout),
              f"{t}: moved and swapped")
    check_eq(errors, [], "callbacks that failed")
    check(len(accepted) > n, "callbacks recorded after the migration")
    check_eq({o for _, o in accepted}, {"accepted"}, "outcomes")
    for t in TABLES:
        old = pg.psql(f"SELECT count(*) || ' ' || sum(id) || ' ' || max(id) FROM idv.{t}"
                      f" WHERE id <= {before[t].split()[2]}")
        check_eq(old, before[t], f"{t}: the rows from before, ids kept")
        check_eq(pg.psql(f"SELECT count(DISTINCT id) = count(*) FROM idv.{t}"), "t",
                 f"{t}: ids unique")
    check_eq(pg.psql("SELECT count(*) FROM idv.callback_events WHERE instance = 'live'"),
             str(len(accepted)), "one audit row per callback during the migration")
    check_eq(pg.psql("SELECT count(*) FROM idv.transaction_events e JOIN idv.transactions t"
                     " ON t.id = e.tx WHERE t.transaction_id LIKE 'live%'"
                     " AND e.status = 'passed'"), str(len(accepted)), "one status event each")
    counts = pg.psql("SELECT " + ", ".join(f"(SELECT count(*) || ' ' || sum(id) FROM idv.{t})"
                                           for t in TABLES))
    caught_up(db)
    for who, c in (("primary", pg), ("standby", db.standby)):
        for t in TABLES:
            check_eq(c.psql(f"SELECT relkind FROM pg_class WHERE oid = 'idv.{t}'::regclass"),
                     "p", f"{who}: {t} partitioned")
        check_eq(c.psql("SELECT count(*) FROM pg_class WHERE relname LIKE '%unpartitioned%'"
                        " OR relname LIKE '%\\_new'"), "0", f"{who}: old tables and names gone")
        check_eq(half_made(c), [], f"{who}: half-made")
    check_eq(partitions(db.standby), partitions(pg), "the standby's partitions")
    check_eq(db.standby.psql("SELECT " + ", ".join(
        f"(SELECT count(*) || ' ' || sum(id) FROM idv.{t})" for t in TABLES)), counts,
        "the standby's history rows")


if __name__ == "__main__":
    sys.exit(idvtest.main(globals()))
