#!/usr/bin/env python3
"""The shipped systemd/examples/haproxy.cfg, run as it is (addresses and ports
through the environment variables it reads), in front of two instances with
proxy_protocol = on (`haproxy -c -dW` on the file is the ctest entry
ops.haproxy_check_config).

`under_load` runs HAProxy in master-worker mode, as Debian's haproxy.service
does, and a load of callbacks through it -- each on a fresh connection from
127.0.0.2, so that the client is not the address HAProxy connects from
(127.0.0.1, the daemons' trusted proxy) -- while, one after the other:

  client address  callbacks carrying their own X-Forwarded-For;
  rolling restart SIGTERM to one instance, wait for its exit (drained), start
                  it, wait until HAProxy sees it UP, then the other;
  SIGHUP          a reload of each instance;
  HAProxy reload  SIGUSR2 to the master (what `systemctl reload haproxy` does);
  SIGKILL         one instance killed, HAProxy marks it DOWN, started again.

`reload_sf` runs HAProxy standalone (no -W) on the same file under the same
load, and reloads it the other way: a new process started with
`-x <admin socket> -sf <old pid>` takes over the listening sockets, the old
one finishes its connections and exits.

For each phase both print requests sent and failed (anything but a 200
accepted/duplicate, or no answer) and assert 0 failed. Afterwards every
acknowledged callback has its result row and every audit row names 127.0.0.2
as client_ip; under_load also checks that neither HAProxy's log nor the
daemons' hold a token. Nothing is asserted about time: waits are bounded only
so that a hang ends."""
import asyncio
import collections
import json
import os
import signal
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
sys.path.insert(0, os.path.dirname(__file__))
import idvtest  # noqa: E402
from opskit import HAProxy  # noqa: E402
from test_faults import read_response  # noqa: E402
from idvtest import check, check_eq, wait_until  # noqa: E402

CLIENT_ADDR = "127.0.0.2"  # the load's source address: not a trusted proxy
SALT = "SeCrEt-haproxy-load"


class Load(idvtest.AsyncLoad):
    """Callbacks through HAProxy from `workers` concurrent clients, each
    request on a fresh connection from CLIENT_ADDR, each for the next
    transaction of txs (every answer should be 200 accepted; a 200 duplicate
    is fine too: HAProxy retried a request whose first answer was lost). Each
    request is counted in the phase that was current when it was sent."""

    def __init__(self, port, txs, workers=8):
        super().__init__(workers)
        self.port = port
        self.txs = txs
        self.next = 0
        self.phase = "warm-up"
        self.sent = collections.Counter()
        self.failed = collections.defaultdict(list)
        self.acked = []  # transaction ids answered 200 accepted/duplicate
        self.duplicates = collections.Counter()  # 200 duplicate, by phase

    async def worker(self, _w):
        while not self.stopping.is_set():
            # Past the last transaction the load starts again from the first:
            # those answers are 200 duplicate.
            tx, token = self.txs[self.next % len(self.txs)]
            self.next += 1
            phase = self.phase
            self.sent[phase] += 1
            writer = None
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    "127.0.0.1", self.port, local_addr=(CLIENT_ADDR, 0)), 30)
                writer.write(f"GET /idv/callback?transactionId={tx}&passed=Y&subCode=200"
                             f"&callbackToken={token} HTTP/1.1\r\nHost: idv.test\r\n"
                             f"Connection: close\r\n\r\n".encode())
                # Bounds a hang only (HAProxy's own timeouts are shorter).
                status, result, _ = await asyncio.wait_for(read_response(reader), 90)
                if status == 200 and result in ("accepted", "duplicate"):
                    self.acked.append(tx)
                    if result == "duplicate":
                        self.duplicates[phase] += 1
                else:
                    self.failed[phase].append(f"{status} {result}")
            except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    asyncio.TimeoutError, ValueError, IndexError) as e:
                self.failed[phase].append(type(e).__name__)
            finally:
                if writer is not None:
                    writer.close()

    def set_phase(self, name):
        """Starts counting requests as phase `name` and waits until some have
        been answered in it, so that every phase runs under load."""
        self.phase = name
        self.wait_sent(name, 200)

    def wait_sent(self, phase, n):
        wait_until(lambda: self.sent[phase] >= n or self.error, 120, 0.02,
                   f"{n} requests in phase {phase}")
        check(self.error is None, f"load generator: {self.error}")



def daemons(ctx, pg):
    cfg = dict(proxy_protocol="on", trusted_proxies="127.0.0.1/32", db_pool_size="4",
               log_level="info", db_timeout_ms="5000", shutdown_timeout_ms="10000")
    return [ctx.daemon(pg, name=f"idv{i}", **cfg) for i in (1, 2)]


def report(load, hap, order):
    """Prints, for each phase of order [(name, time, monotonic time)] but the
    closing one, requests sent, failed, retried by HAProxy and answered
    duplicate; asserts that none failed."""
    retried = hap.retries_by_phase([(name, t) for name, t, _ in order])
    for i, (name, _, m) in enumerate(order[:-1]):
        print(f"{name}: requests sent {load.sent[name]}, failed {len(load.failed[name])}"
              f" {dict(collections.Counter(load.failed[name]))};"
              f" retried by HAProxy {retried.get(name, 0)},"
              f" answered duplicate {load.duplicates[name]} ({order[i + 1][2] - m:.1f} s)",
              flush=True)
    for name, _, _ in order[:-1]:
        check_eq(load.failed[name][:10], [], f"{name}: failed requests")


def check_recorded(pg, load, extra=()):
    """Nothing acknowledged (by the load, or the transactions of extra) is
    missing, and every audit row names the client."""
    acked = set(load.acked) | set(extra)
    rows = {r[0] for r in pg.rows("SELECT transaction_id FROM idv.callback_results")}
    check_eq(sorted(acked - rows)[:5], [], "acknowledged callbacks without a result row")
    ips = dict(pg.rows("SELECT host(client_ip), count(*) FROM idv.callback_events GROUP BY 1"))
    print(f"audit rows by client_ip: {ips}; acknowledged {len(acked)}, result rows {len(rows)}",
          flush=True)
    check_eq(list(ips), [CLIENT_ADDR], "client_ip of every audit row")


def case_under_load(ctx):
    """Client address from PROXY v2, rolling restart, SIGHUP reloads, a
    HAProxy reload and a SIGKILL, each under load with 0 failed requests."""
    pg = ctx.pg()
    txs = idvtest.register_bulk(pg, 12000, prefix="lb", salt=SALT)
    a, b = daemons(ctx, pg)
    hap = HAProxy(ctx.tmp, [a, b])
    ctx.cleanups.insert(0, hap.stop)
    hap.start()
    hap.wait_status("idv1", "UP")
    hap.wait_status("idv2", "UP")

    # The client's address, whatever X-Forwarded-For it sends.
    spoof = txs[-1]
    with socket.create_connection(("127.0.0.1", hap.port), source_address=(CLIENT_ADDR, 0),
                                  timeout=30) as s:
        s.sendall(f"GET /idv/callback?transactionId={spoof[0]}&passed=Y&subCode=200"
                  f"&callbackToken={spoof[1]} HTTP/1.1\r\nHost: idv.test\r\n"
                  f"X-Forwarded-For: 203.0.113.7, 127.0.0.1\r\nConnection: close\r\n\r\n"
                  .encode())
        data = b""
        while (chunk := s.recv(65536)):
            data += chunk
    st, _, body = idvtest.parse_responses(data)[0]
    check_eq((st, json.loads(body)["result"]), (200, "accepted"), "callback through HAProxy")
    check_eq(pg.psql(f"SELECT client_ip FROM idv.callback_events WHERE transaction_id ="
                     f" '{spoof[0]}'"), CLIENT_ADDR,
             "client_ip of a callback with its own X-Forwarded-For")
    print(f"client address: recorded {CLIENT_ADDR} for a callback from {CLIENT_ADDR} carrying"
          f" X-Forwarded-For: 203.0.113.7, 127.0.0.1", flush=True)

    load = Load(hap.port, txs[:-1]).start()
    order = [("warm-up", time.time(), time.monotonic())]
    load.wait_sent("warm-up", 300)

    def phase(name):
        order.append((name, time.time(), time.monotonic()))
        load.set_phase(name)

    # Rolling restart: one instance at a time, the next only once HAProxy
    # sends to the first again.
    phase("rolling restart")
    for d, name in ((a, "idv1"), (b, "idv2")):
        d.stop_clean()  # SIGTERM: drains, exits 0
        d.start()
        hap.wait_status(name, "UP")
        load.wait_sent("rolling restart", load.sent["rolling restart"] + 200)

    phase("SIGHUP")
    for d in (a, b):
        mark = len(d.logs())
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in d.logs()[mark:], 30, 0.05,
                   "the reload to be logged")
        load.wait_sent("SIGHUP", load.sent["SIGHUP"] + 200)

    phase("HAProxy reload")
    old, new = hap.reload()
    load.wait_sent("HAProxy reload", load.sent["HAProxy reload"] + 300)

    phase("SIGKILL")
    a.kill()
    hap.wait_status("idv1", "DOWN")
    load.wait_sent("SIGKILL", load.sent["SIGKILL"] + 200)
    a.start()
    hap.wait_status("idv1", "UP")
    load.wait_sent("SIGKILL", load.sent["SIGKILL"] + 200)

    phase("after")
    load.stop()
    order.append(("end", time.time(), time.monotonic()))
    report(load, hap, order)
    print(f"HAProxy workers before the reload {old}, after {new}", flush=True)
    check_recorded(pg, load, {spoof[0]})

    # No token in any log: HAProxy logs the path without the query string.
    hlog = hap.logs()
    check("/idv/callback" in hlog, "HAProxy logged the requests")
    check(SALT not in hlog and "callbackToken" not in hlog, "no token in HAProxy's log")
    for d in (a, b):
        check(SALT not in d.logs(), f"no token in the log of {d.cfg['instance_name']}")
    hap.stop()
    for d in (a, b):
        d.stop_clean()


def case_reload_sf(ctx):
    """The standalone reload under load: HAProxy without -W on the shipped
    file, then a new process started with `-x <admin socket> -sf <old pid>`
    takes over the listening sockets; the old one finishes its connections
    and exits. 0 failed requests, and afterwards only the new one serves."""
    pg = ctx.pg()
    txs = idvtest.register_bulk(pg, 3000, prefix="sf", salt=SALT)
    a, b = daemons(ctx, pg)
    hap = HAProxy(ctx.tmp, [a, b], master_worker=False)
    ctx.cleanups.insert(0, hap.stop)
    hap.start()
    hap.wait_status("idv1", "UP")
    hap.wait_status("idv2", "UP")
    check_eq(hap.pid(), hap.proc.pid, "the admin socket is the first process's")

    load = Load(hap.port, txs).start()
    order = [("warm-up", time.time(), time.monotonic())]
    load.wait_sent("warm-up", 200)
    # The load runs: the reload right away, then some more requests.
    order.append(("HAProxy -sf reload", time.time(), time.monotonic()))
    load.phase = "HAProxy -sf reload"
    old, new = hap.reload_sf()
    load.wait_sent("HAProxy -sf reload", load.sent["HAProxy -sf reload"] + 300)
    # Only the new process is left: what is sent now, it serves.
    order.append(("after", time.time(), time.monotonic()))
    load.set_phase("after")
    load.stop()
    order.append(("end", time.time(), time.monotonic()))
    report(load, hap, order)
    # Which process logged the requests of the reload phase.
    logged = collections.Counter()
    for (phase, pid, _), n in hap.requests_by_phase([(p, t) for p, t, _ in order]).items():
        if phase == "HAProxy -sf reload":
            logged[pid] += n
    print(f"HAProxy process before the reload {old.pid} (exit status {old.returncode}),"
          f" after {new.pid}; requests of the reload phase logged by the old process"
          f" {logged[old.pid]}, by the new {logged[new.pid]}", flush=True)
    check_eq(old.returncode, 0, "exit status of the old HAProxy process")
    check(new.poll() is None, "the new HAProxy process runs")
    check_eq(hap.pid(), new.pid, "the admin socket is the new process's")
    # Its own counters start at 0: the frontend sessions it accepted.
    served = int(hap.stat()[("idv_public", "FRONTEND")]["stot"])
    print(f"sessions accepted by the new process: {served}", flush=True)
    check(served >= load.sent["after"], "the new process served the requests sent after")
    check_recorded(pg, load)
    hap.stop()
    for d in (a, b):
        d.stop_clean()


if __name__ == "__main__":
    sys.exit(idvtest.main(globals()))
