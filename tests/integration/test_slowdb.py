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
import json
import os
import sys
import time
import uuid

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, HERE)
import idvtest  # noqa: E402
import slowdb  # noqa: E402
from idvtest import check, check_eq, metric_value, wait_until  # noqa: E402
from netproxy import NetProxy  # noqa: E402

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


if __name__ == "__main__":
    sys.exit(idvtest.main(globals()))
