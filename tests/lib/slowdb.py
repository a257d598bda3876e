"""The slow database fixture: PostgreSQL as production runs it, for the tests.

- `sync_pair(ctx)`: a primary and a streaming standby made with
  `pg_basebackup -R`, the standby synchronous (synchronous_standby_names
  naming it, synchronous_commit on), so that every commit waits for the
  standby to flush its WAL.
- `slow_db(ctx, ...)`: that pair (or a lone primary) behind a `NetProxy`
  (netproxy.py) with an added delay per direction: the network between the
  daemon and the database. `url()` is the daemon's database_url through it.
- `burst(...)`: many concurrent requests from client threads, each answer
  recorded, for the assertions and the figures the tests print.

Standard library only; builds on idvtest (PgCluster, Ctx).
"""
import collections
import http.client
import json
import os
import threading
import time

import idvtest
from idvtest import check, check_eq, wait_until
from netproxy import NetProxy


def sync_pair(ctx, sync=True, primary_name="primary", standby_name="standby",
              app_name="standby1", schema=True):
    """A primary with the schema (none without schema) and a streaming standby
    of it; with sync the standby is synchronous (FIRST 1 of it), else
    asynchronous. Returns (primary, standby) once the standby streams in the
    wanted mode."""
    primary = ctx.pg(primary_name, schema=schema,
                     settings={"wal_level": "replica", "max_wal_senders": "4",
                               "wal_keep_size": "'512MB'"})
    primary.allow_replication()
    primary.psql("SELECT pg_reload_conf()")
    standby = ctx.standby(primary, standby_name, app_name=app_name)
    mode = f"SELECT sync_state FROM pg_stat_replication WHERE application_name = '{app_name}'"
    wait_until(lambda: primary.psql(f"SELECT count(*) FROM pg_stat_replication WHERE"
                                    f" application_name = '{app_name}' AND state = 'streaming'")
               == "1", 60, what="the standby to stream")
    if sync:
        # Set once the standby streams: before, every commit would wait for it.
        primary.psql(f"ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 ({app_name})'")
        primary.psql("ALTER SYSTEM SET synchronous_commit = 'on'")
        primary.psql("SELECT pg_reload_conf()")
        wait_until(lambda: primary.psql(mode) == "sync", 60, what="the standby to be synchronous")
    check_eq(primary.psql(mode), "sync" if sync else "async", "replication mode")
    check_eq(standby.psql("SELECT pg_is_in_recovery()"), "t", "the standby is in recovery")
    return primary, standby


class SlowDb:
    """A primary (with a synchronous standby unless standby=False) reached
    through a proxy that adds up_ms/down_ms to every packet each way."""

    def __init__(self, ctx, up_ms=0, down_ms=0, standby=True, proxy=True, schema=True):
        if standby:
            self.primary, self.standby = sync_pair(ctx, schema=schema)
        else:
            self.primary, self.standby = ctx.pg("primary", schema=schema), None
        self.proxy = None
        if proxy:
            self.proxy = NetProxy(self.primary.port, up_ms=up_ms, down_ms=down_ms)
            ctx.cleanups.append(self.proxy.close)

    def url(self, user="idvapp", two_hosts=False):
        """database_url for the daemon: through the proxy when there is one;
        with two_hosts the standby is listed too (target_session_attrs=read-write),
        as the README recommends."""
        port = self.proxy.port if self.proxy else self.primary.port
        if two_hosts and self.standby:
            return (f"host=127.0.0.1,127.0.0.1 port={port},{self.standby.port} user={user}"
                    f" dbname=postgres target_session_attrs=read-write")
        return f"host=127.0.0.1 port={port} user={user} dbname=postgres"


def slow_db(ctx, up_ms=0, down_ms=0, standby=True, proxy=True, schema=True):
    return SlowDb(ctx, up_ms, down_ms, standby, proxy, schema)


Reply = collections.namedtuple("Reply", "i status body sent got retry_after")


def burst(port, n, threads, make_request, timeout=60):
    """Sends n requests from `threads` client threads, each on a keep-alive
    connection of its own (a new one after an error or a close), as fast as
    the answers come. make_request(i) gives (method, path, body or None,
    headers). Returns the n Replies in request order (status 0: no answer,
    the connection broke)."""
    replies = [None] * n
    lock = threading.Lock()
    nxt = [0]

    def worker():
        conn = None
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= n:
                break
            method, path, body, headers = make_request(i)
            sent = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                conn.request(method, path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                replies[i] = Reply(i, r.status, data, sent, time.monotonic(),
                                   r.getheader("Retry-After"))
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                replies[i] = Reply(i, 0, repr(e).encode(), sent, time.monotonic(), None)
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    ts = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout * 2 + n)
    check(not any(t.is_alive() for t in ts), "a client thread of the burst did not finish")
    return replies


def admin_headers(body=None):
    h = {"Authorization": f"Bearer {idvtest.ADMIN_TOKEN}"}
    if body is not None:
        h["Content-Type"] = "application/json"
    return h


def register_request(prefix, salt):
    """make_request for burst(): POST /v1/transactions/register of
    transaction {prefix}{i} with token {salt}-{i}."""
    def make(i):
        b = json.dumps({"transactionId": f"{prefix}{i}", "merchantBizId": f"b{prefix}{i}",
                        "callbackToken": f"{salt}-{i}"})
        return "POST", "/v1/transactions/register", b, admin_headers(b)
    return make


def status_request(txs):
    """make_request for burst(): GET /v1/transactions/{tx} of txs[i]."""
    def make(i):
        return "GET", f"/v1/transactions/{txs[i % len(txs)][0]}", None, admin_headers()
    return make


def summary(replies):
    """{"201": n, "503": m, ...}, the slowest answer in seconds, and the
    status of the last request of the burst."""
    c = collections.Counter(str(r.status) for r in replies)
    slowest = max((r.got - r.sent for r in replies), default=0.0)
    return dict(sorted(c.items())), slowest, replies[-1].status if replies else None


def problems_2xx(replies, label):
    """Prints the figures of a burst; returns what is wrong ("" when every
    request was answered 2xx, the last one of the burst included)."""
    counts, slowest, last = summary(replies)
    print(f"{label}: {len(replies)} requests: {counts}; slowest answer {slowest:.3f} s;"
          f" last request {last}", flush=True)
    bad = [r for r in replies if not 200 <= r.status < 300]
    if not bad:
        return ""
    tail = sum(1 for r in replies[-len(bad):] if not 200 <= r.status < 300)
    return (f"{label}: {len(bad)} of {len(replies)} requests not 2xx ({counts}); of the last"
            f" {len(bad)} requests sent {tail} failed; e.g. "
            + "; ".join(f"#{r.i} {r.status} after {r.got - r.sent:.3f} s {r.body[:300]!r}"
                        for r in bad[:3]))


def check_all_2xx(replies, label):
    """Every request answered 2xx, the last one of the burst included; prints
    the figures either way."""
    problem = problems_2xx(replies, label)
    if problem:
        raise idvtest.TestFailure(problem)


Answer = collections.namedtuple(
    "Answer", "kind instance tx passed sub status result sent got retry_after")


class SteadyLoad:
    """Callbacks and registrations from client threads until stop(), every
    answer recorded: the load of a failover test.

    instances: [(name, public port, admin port)]; callback thread k sends to
    instance k % len(instances) (likewise registration threads). Callbacks
    go through txs ([(transaction id, token)], registered beforehand) in
    order, each once, then again from the start (duplicates). A registration
    thread registers new transactions `{prefix}{thread}n{i}`. pause: seconds
    between one answer and the next request of a thread (keeps two cores
    free enough for Patroni's loop)."""

    def __init__(self, instances, txs, callback_threads=4, register_threads=4, prefix="g",
                 salt="SteadyLoad-salt", pause=0.005, timeout=30):
        self.instances = list(instances)
        self.txs = txs
        self.cb_threads = callback_threads
        self.reg_threads = register_threads
        self.prefix = prefix
        self.salt = salt
        self.pause = pause
        self.timeout = timeout
        self.answers = []
        self.lock = threading.Lock()
        self.next_tx = 0
        self.stopping = threading.Event()
        self.threads = []

    def _callback_job(self):
        with self.lock:
            i = self.next_tx % len(self.txs)
            self.next_tx += 1
        tx, token = self.txs[i][:2]
        passed, sub = ("Y", "200") if i % 2 == 0 else ("N", "205")
        path = (f"/idv/callback?transactionId={tx}&passed={passed}&subCode={sub}"
                f"&callbackToken={token}")
        return "callback", tx, passed, sub, "GET", path, None, {}

    def _register_job(self, k, n):
        tx = f"{self.prefix}{k}n{n}"
        b = json.dumps({"transactionId": tx, "merchantBizId": f"b{tx}",
                        "callbackToken": f"{self.salt}-{k}-{n}"})
        return "register", tx, None, None, "POST", "/v1/transactions/register", b, \
            admin_headers(b)

    def _worker(self, kind, k):
        name, public, admin = self.instances[k % len(self.instances)]
        port = public if kind == "callback" else admin
        conn = None
        n = 0
        while not self.stopping.is_set():
            job = self._callback_job() if kind == "callback" else self._register_job(k, n)
            n += 1
            what, tx, passed, sub, method, path, body, headers = job
            sent = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=self.timeout)
                conn.request(method, path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                try:
                    j = json.loads(data)
                    result = j.get("result") or j.get("code") or j.get("transactionId")
                except ValueError:
                    result = None
                a = Answer(what, name, tx, passed, sub, r.status, result, sent,
                           time.monotonic(), r.getheader("Retry-After"))
                if r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                a = Answer(what, name, tx, passed, sub, 0, repr(e), sent, time.monotonic(),
                           None)
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
            with self.lock:
                self.answers.append(a)
            if self.pause:
                time.sleep(self.pause)
        if conn is not None:
            conn.close()

    def start(self):
        for k in range(self.cb_threads):
            self.threads.append(threading.Thread(target=self._worker, args=("callback", k),
                                                 daemon=True))
        for k in range(self.reg_threads):
            self.threads.append(threading.Thread(target=self._worker, args=("register", k),
                                                 daemon=True))
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(self.timeout * 2)
        check(not any(t.is_alive() for t in self.threads), "a load thread did not stop")

    def snapshot(self):
        with self.lock:
            return list(self.answers)

    def wait(self, pred, n, timeout, what):
        """Waits until n answers match pred (a bounded wait, not a timed
        assertion)."""
        wait_until(lambda: sum(1 for a in self.snapshot() if pred(a)) >= n, timeout, 0.05, what)


def acknowledged(a):
    """A 2xx that promises the write is committed: a callback accepted or a
    duplicate, a registration created (201) or confirmed (200)."""
    if a.kind == "callback":
        return a.status == 200 and a.result in ("accepted", "duplicate")
    return a.status in (200, 201)


def missing_acknowledged(pg, answers):
    """The acknowledged answers whose write is not in pg (callbacks: the
    recorded result must be the one acknowledged)."""
    results = {r[0]: (r[1], r[2]) for r in
               pg.rows("SELECT transaction_id, passed, sub_code FROM idv.callback_results")}
    regs = {r[0] for r in pg.rows("SELECT transaction_id FROM idv.transactions")}
    lost = []
    for a in answers:
        if not acknowledged(a):
            continue
        if a.kind == "callback" and results.get(a.tx) != (a.passed, a.sub):
            lost.append(a)
        elif a.kind == "register" and a.tx not in regs:
            lost.append(a)
    return lost
