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
              app_name="standby1"):
    """A primary with the schema and a streaming standby of it; with sync the
    standby is synchronous (FIRST 1 of it), else asynchronous. Returns
    (primary, standby) once the standby streams in the wanted mode."""
    primary = ctx.pg(primary_name, settings={"wal_level": "replica", "max_wal_senders": "4",
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

    def __init__(self, ctx, up_ms=0, down_ms=0, standby=True, proxy=True):
        if standby:
            self.primary, self.standby = sync_pair(ctx)
        else:
            self.primary, self.standby = ctx.pg("primary"), None
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


def slow_db(ctx, up_ms=0, down_ms=0, standby=True, proxy=True):
    return SlowDb(ctx, up_ms, down_ms, standby, proxy)


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


def check_all_2xx(replies, label):
    """Every request answered 2xx, the last one of the burst included; prints
    the figures either way."""
    counts, slowest, last = summary(replies)
    print(f"{label}: {len(replies)} requests: {counts}; slowest answer {slowest:.3f} s;"
          f" last request {last}", flush=True)
    bad = [r for r in replies if not 200 <= r.status < 300]
    if bad:
        first = bad[:3]
        tail = sum(1 for r in replies[-len(bad):] if not 200 <= r.status < 300)
        raise idvtest.TestFailure(
            f"{label}: {len(bad)} of {len(replies)} requests not 2xx ({counts}); of the last"
            f" {len(bad)} requests sent {tail} failed; e.g. "
            + "; ".join(f"#{r.i} {r.status} after {r.got - r.sent:.3f} s {r.body[:120]!r}"
                        for r in first))
