#!/usr/bin/env python3
"""PostgreSQL failover: a primary and a streaming standby (pg_basebackup -R) on
this machine, two daemon instances pointed at both hosts with a multi-host
database_url and target_session_attrs=read-write, callbacks under load from a
client that records every answer; the primary is killed (`pg_ctl stop -m
immediate`) and the standby promoted (`pg_ctl promote`).

With a synchronous standby (synchronous_standby_names naming it,
synchronous_commit on) every callback answered 200 accepted/duplicate, before,
during or after the switch, must be in the promoted database with the same
result; requests answered while there is no primary get 503 only; /readyz
tracks it; both instances serve again (readyz 200, a fresh callback accepted)
within 10 seconds of the promotion: the one timed condition, a bound the issue
sets, printed with the time measured.

With an asynchronous standby the same run is an experiment: it prints how many
acknowledged callbacks the promoted database lacks and passes unless something
crashes. To make the loss observable rather than a matter of luck, the
primary's walsender is stopped (SIGSTOP) for a second of load before the kill,
so that WAL the primary flushed and acknowledged never reaches the standby.

The other cases check the pool's host list handling on its own: a standby
listed first without target_session_attrs, a primary turned read-only
(SQLSTATE 25006), a host that black-holes connections, host with hostaddr
lists."""
import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
sys.path.insert(0, os.path.dirname(__file__))
import idvtest  # noqa: E402
import slowdb  # noqa: E402
from idvtest import check, check_eq, metric_value, wait_until  # noqa: E402
from test_faults import Answer, Load, new_salt, tally, verify  # noqa: E402

SERVE_AGAIN_BOUND_S = 10.0  # the bound, from `pg_ctl promote` to serving


def replicated_pair(ctx, sync):
    """A primary with the schema and a streaming standby of it; with sync the
    standby is synchronous (synchronous_standby_names = 'FIRST 1 (standby1)',
    synchronous_commit = on), else asynchronous (tests/lib/slowdb.py)."""
    return slowdb.sync_pair(ctx, sync)


def multi_url(first, second, attrs="target_session_attrs=read-write", user="idvapp"):
    return (f"host=127.0.0.1,127.0.0.1 port={first.port},{second.port} user={user}"
            f" dbname=postgres {attrs}").strip()


def serve_again(d, probes, t0, out, stop):
    """From t0 on, polls /readyz (public listener, what a load balancer sees)
    and once it is 200 sends a fresh callback (a transaction nothing else
    sends), a new one after each 503, until one is accepted. Records the time
    of the first readyz 200 and of the accepted callback, and every answer."""
    name = d.cfg["instance_name"]
    rec = out[name] = {"ready": None, "accepted": None, "answers": []}
    while not stop.is_set() and probes:
        if d.status("/readyz") == 200:
            if rec["ready"] is None:
                rec["ready"] = time.monotonic() - t0
            tx, token = probes.pop(0)
            sent = time.monotonic()
            try:
                st, body, _, _ = d.callback(tx, "Y", "200", token)
            except OSError:
                continue
            result = (body or {}).get("result")
            rec["answers"].append(Answer(tx, "Y", "200", st, result, sent, time.monotonic()))
            if st == 200 and result == "accepted":
                rec["accepted"] = time.monotonic() - t0
                return
        time.sleep(0.02)


def walsender_pids(primary):
    out = primary.psql("SELECT pid FROM pg_stat_replication WHERE application_name = 'standby1'")
    return [int(x) for x in out.split()] if out else []


def failover_under_load(ctx, sync):
    label = "sync" if sync else "async"
    primary, standby = replicated_pair(ctx, sync)
    salt = new_salt(label)
    txs = idvtest.register_bulk(primary, 8000, prefix="x", salt=salt)
    # Fresh transactions for the probes of each instance (merchant bizIds
    # apart from the load's).
    probe = {n: idvtest.register_bulk(primary, 200, prefix=f"p{n}", salt=salt, start=start)
             for n, start in (("a", 100000), ("b", 200000))}
    # Instance a lists the primary first, instance b the standby first: both
    # orders of the host list must end on the primary.
    da = ctx.daemon(name="idv-a", database_url=multi_url(primary, standby),
                    db_pool_size=4, db_timeout_ms=2000)
    db = ctx.daemon(name="idv-b", database_url=multi_url(standby, primary),
                    db_pool_size=4, db_timeout_ms=2000)
    ds = [da, db]
    for d in ds:
        m = d.metrics()
        check_eq(metric_value(m, "idv_db_primary", host=f"127.0.0.1:{primary.port}"), 1.0,
                 f"{d.cfg['instance_name']}: idv_db_primary names the primary before the kill")
        check_eq(metric_value(m, "idv_db_failovers_total"), 0.0,
                 f"{d.cfg['instance_name']}: failovers before the kill")
    load = Load([da.public_port, db.public_port], txs, workers=32, resend=0.3,
                alternatives=False).start()
    probes_out, stop_probes = {}, threading.Event()
    readyz_outage = {}
    try:
        load.wait(1500, what="answers before the kill")
        stopped = []
        if not sync:
            # Delay the standby: the walsender stops sending while the load
            # goes on, so what the primary acknowledges meanwhile is on the
            # primary only.
            stopped = walsender_pids(primary)
            check(stopped, "a walsender to stop")
            for p in stopped:
                os.kill(p, signal.SIGSTOP)
            mark = load.count(lambda a: a.result == "accepted")
            load.wait(mark + 300, lambda a: a.result == "accepted",
                      what="accepted answers while the standby is delayed")
        t_kill = time.monotonic()
        if stopped:
            # A stopped walsender would hold the postmaster's exit: the
            # immediate stop is asked for without waiting, the walsender
            # continued (it dies on the pending SIGQUIT before sending more),
            # then the postmaster's exit is awaited.
            primary.pg_ctl("-W", "-m", "immediate", "stop")
            time.sleep(0.2)
            for p in stopped:
                try:
                    os.kill(p, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            wait_until(lambda: not os.path.exists(os.path.join(primary.data, "postmaster.pid")),
                       60, what="the primary to exit")
        else:
            primary.stop("immediate")
        t_killed = time.monotonic()
        # No primary now: the standby refuses writes and libpq skips it.
        load.wait(32, lambda a: a.sent > t_killed, what="answers while there is no primary")
        for d in ds:
            wait_until(lambda: d.status("/readyz") == 503, 30,
                       what=f"{d.cfg['instance_name']}: readyz 503 without a primary")
            readyz_outage[d.cfg["instance_name"]] = d.status("/readyz")
        t_promote = time.monotonic()
        threads = [threading.Thread(target=serve_again,
                                    args=(d, probe[n], t_promote, probes_out, stop_probes),
                                    daemon=True) for n, d in zip("ab", ds)]
        for t in threads:
            t.start()
        standby.promote()
        t_promoted = time.monotonic()
        for t in threads:
            t.join(60)
        stop_probes.set()
        t_served = time.monotonic()
        load.wait(500, lambda a: a.sent > t_served and a.result == "accepted",
                  what="accepted answers after the switch")
    finally:
        stop_probes.set()
        load.stop()
    answers = list(load.answers)
    probe_answers = [a for r in probes_out.values() for a in r["answers"]]
    switch = [a for a in answers if a.sent > t_killed and a.got < t_promote]
    print(f"{label}: pg_ctl promote took {t_promoted - t_promote:.2f} s; /readyz without a"
          f" primary {readyz_outage}", flush=True)
    for name, r in sorted(probes_out.items()):
        ready = f"{r['ready']:.2f} s" if r["ready"] is not None else "never"
        acc = f"{r['accepted']:.2f} s" if r["accepted"] is not None else "never"
        print(f"{label}: {name} after the promotion began: readyz 200 at {ready}, fresh callback"
              f" accepted at {acc} (probe answers {tally(r['answers'])})", flush=True)
    print(f"{label}: answers while there was no primary (sent after the kill, answered before"
          f" the promotion) {tally(switch)}", flush=True)
    print(f"{label}: all load answers {tally(answers)}", flush=True)

    acked = [a for a in answers + probe_answers
             if a.status == 200 and a.result in ("accepted", "duplicate")]
    rows = {r[0]: (r[1], r[2]) for r in
            standby.rows("SELECT transaction_id, passed, sub_code FROM idv.callback_results")}
    lost = [a for a in acked if rows.get(a.tx) != (a.passed, a.sub)]
    lost_tx = {a.tx for a in lost}
    print(f"{label}: acknowledged answers {len(acked)} ({len({a.tx for a in acked})}"
          f" transactions); result rows in the promoted database {len(rows)}; acknowledged"
          f" answers found there {len(acked) - len(lost)}; lost {len(lost)}"
          f" ({len(lost_tx)} transactions)", flush=True)

    if sync:
        check_eq(readyz_outage, {"idv-a": 503, "idv-b": 503}, "readyz without a primary")
        check(len(switch) >= 32, "answers while there was no primary")
        check_eq(tally(switch), {"503 unavailable": len(switch)},
                 "answers while there was no primary are all 503")
        for name, r in sorted(probes_out.items()):
            check(r["accepted"] is not None, f"{name} never served again after the promotion")
            check(r["accepted"] <= SERVE_AGAIN_BOUND_S,
                  f"{name} served again {r['accepted']:.2f} s after the promotion began,"
                  f" more than the issue's bound of {SERVE_AGAIN_BOUND_S:.0f} s")
        # Every acknowledged answer in the promoted database, and the rest of
        # the audit invariants of the fault tests.
        check_eq(lost[:5], [], f"{label}: acknowledged callbacks missing from the promoted database")
        verify(standby, answers + probe_answers, f"{label}, promoted database")
    else:
        print(f"{label}: LOSS COUNT {len(lost)} acknowledged answers ({len(lost_tx)} transactions)"
              f" missing from the promoted database; walsender stopped {len(stopped)}", flush=True)

    for d in ds:
        name = d.cfg["instance_name"]
        check_eq(d.status("/readyz"), 200, f"{name}: readyz after the switch")
        m = d.metrics()
        new = f"127.0.0.1:{standby.port}"
        if sync:
            check_eq(metric_value(m, "idv_db_primary", host=new), 1.0,
                     f"{name}: idv_db_primary names the promoted host")
            check_eq(metric_value(m, "idv_db_failovers_total"), 1.0, f"{name}: failovers counted")
            check(f"PostgreSQL primary changed" in d.logs() and
                  f"db_old_host=127.0.0.1:{primary.port}" in d.logs() and
                  f"db_host={new}" in d.logs(),
                  f"{name}: the switch is logged with the old and new host")
        print(f"{label}: {name}: idv_db_failovers_total"
              f" {metric_value(m, 'idv_db_failovers_total')}, idv_db_primary{{host=\"{new}\"}}"
              f" {metric_value(m, 'idv_db_primary', host=new)}", flush=True)
    for d in ds:
        d.stop_clean()


def case_sync_standby_failover(ctx):
    """Synchronous standby: nothing acknowledged is lost, 503 only while there
    is no primary, both instances serve again within 10 s of the promotion,
    the failover is counted and logged."""
    failover_under_load(ctx, sync=True)


def case_async_standby_failover_experiment(ctx):
    """Asynchronous standby, delayed: prints the acknowledged callbacks the
    promoted database lacks. Not a pass condition."""
    failover_under_load(ctx, sync=False)


def accepted_on(d, pg, tx, token, what):
    """A callback through d is accepted and its row is in pg."""
    st, body, _, _ = d.callback(tx, "Y", "200", token)
    check_eq((st, (body or {}).get("result")), (200, "accepted"), what)
    check_eq(pg.psql(f"SELECT passed || sub_code FROM idv.callback_results"
                     f" WHERE transaction_id = '{tx}'"), "Y200", f"{what}: the row")


def case_standby_first_without_session_attrs(ctx):
    """The standby listed first and no target_session_attrs: libpq would stay
    on the standby; the pool sees pg_is_in_recovery() at setup and goes on to
    the primary, and every connection ends there."""
    primary, standby = replicated_pair(ctx, sync=False)
    txs = idvtest.register_bulk(primary, 3, prefix="s", salt=new_salt("first"))
    d = ctx.daemon(name="idv", database_url=multi_url(standby, primary, attrs=""))
    wait_until(lambda: metric_value(d.metrics(), "idv_db_connections", state="ready") == 4.0, 30,
               what="the whole pool up")
    check_eq(metric_value(d.metrics(), "idv_db_primary", host=f"127.0.0.1:{primary.port}"), 1.0,
             "idv_db_primary names the primary")
    check("the server is a standby" in d.logs(), "the standby is named as the reason to move on")
    check(not any("PostgreSQL connection ready" in l and f"db_host=127.0.0.1:{standby.port}" in l
                  for l in d.logs().splitlines()), "no connection ready on the standby")
    for tx, token in txs:
        accepted_on(d, primary, tx, token, f"callback {tx}")
    check_eq(metric_value(d.metrics(), "idv_db_failovers_total"), 0.0, "no failover counted")
    d.stop_clean()


def case_primary_turned_read_only(ctx):
    """The one host turns read-only under a running daemon (what a demoted
    primary looks like): the callback that meets SQLSTATE 25006 gets 503, never
    200; the pool drops those connections and does not stay on a read-only
    server (/readyz 503); once the server is writable again the service comes
    back on its own."""
    pg = ctx.pg("pg")
    salt = new_salt("ro")
    txs = idvtest.register_bulk(pg, 3, prefix="r", salt=salt)
    spare = idvtest.register_bulk(pg, 200, prefix="w", salt=salt, start=1000)
    d = ctx.daemon(pg, name="idv")
    accepted_on(d, pg, txs[0][0], txs[0][1], "before read-only")
    pg.psql("ALTER SYSTEM SET default_transaction_read_only = on")
    pg.psql("SELECT pg_reload_conf()")
    # pg_reload_conf() only asks the postmaster to signal the backends, which
    # take the setting at their next command: until the first 503, a callback
    # may still commit (rightly: the server was writable for it). Spare
    # transactions are sent until then; the signal has reached every backend
    # by the time that answer comes back.
    spare_answers = []
    def first_refusal():
        t, k = spare.pop(0)
        st, body, _, _ = d.callback(t, "Y", "200", k)
        spare_answers.append((st, (body or {}).get("result")))
        return st == 503
    wait_until(first_refusal, 30, what="a 503 once the server is read-only")
    for st, result in spare_answers:
        check((st, result) in ((200, "accepted"), (503, "unavailable")),
              f"answers while the setting spreads: {spare_answers}")
    # From now on the callback that meets 25006 gets 503 on its connection,
    # and the pool finds the same at every reconnection.
    tx, token = txs[1]
    answers = []
    def refused():
        st, body, _, _ = d.callback(tx, "Y", "200", token)
        answers.append((st, (body or {}).get("result")))
        return st == 503 and d.status("/readyz") == 503
    wait_until(refused, 30, what="503 and /readyz 503 on a read-only server")
    check(all(a == (503, "unavailable") for a in answers), f"answers on a read-only server: {answers}")
    check_eq(pg.psql(f"SELECT count(*) FROM idv.callback_results WHERE transaction_id = '{tx}'"),
             "0", "nothing recorded on the read-only server")
    logs = d.logs()
    check("SQLSTATE 25006" in logs or "the session is read-only" in logs,
          "the read-only server is named as the reason the connections went")
    pg.psql("ALTER SYSTEM RESET default_transaction_read_only")
    pg.psql("SELECT pg_reload_conf()")
    wait_until(lambda: d.status("/readyz") == 200, 30, what="/readyz 200 once writable again")
    accepted_on(d, pg, tx, token, "after read-only")
    d.stop_clean()


def case_black_hole_host_first(ctx):
    """The first host accepts TCP connections and never answers (a listener
    nobody accepts on): each attempt gives that host its own deadline, then
    the next attempt starts at the host after it, so the pool comes up on the
    primary and serves."""
    pg = ctx.pg("pg")
    txs = idvtest.register_bulk(pg, 2, prefix="h", salt=new_salt("hole"))
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    try:
        url = (f"host=127.0.0.1,127.0.0.1 port={hole.getsockname()[1]},{pg.port} user=idvapp"
               f" dbname=postgres target_session_attrs=read-write")
        d = ctx.daemon(name="idv", database_url=url, db_timeout_ms=2000, wait_ready=False)
        wait_until(lambda: d.status("/readyz") == 200, 60, what="/readyz 200 past the black hole")
        check(f"connect deadline passed on 127.0.0.1:{hole.getsockname()[1]}" in d.logs(),
              "the deadline names the host that did not answer")
        for tx, token in txs:
            accepted_on(d, pg, tx, token, f"callback {tx}")
        d.stop_clean()
    finally:
        hole.close()


def case_host_and_hostaddr_lists(ctx):
    """host and hostaddr lists given together (no name resolution) with a
    port per host: the entries stay paired whichever the pool starts at; a
    list of unequal length is a configuration error (exit 2 at check-config,
    the key named)."""
    pg = ctx.pg("pg")
    free = idvtest.free_port()
    txs = idvtest.register_bulk(pg, 1, prefix="l", salt=new_salt("list"))
    url = (f"host=nowhere.invalid,localhost hostaddr=127.0.0.1,127.0.0.1 port={free},{pg.port}"
           f" user=idvapp dbname=postgres target_session_attrs=read-write")
    d = ctx.daemon(name="idv", database_url=url)
    accepted_on(d, pg, txs[0][0], txs[0][1], "callback over a hostaddr list")
    check_eq(metric_value(d.metrics(), "idv_db_primary", host=f"localhost:{pg.port}"), 1.0,
             "idv_db_primary names the host as written")
    d.stop_clean()
    bad = idvtest.Daemon(ctx.tmp, name="bad", database_url=(
        f"host=a,b,c hostaddr=127.0.0.1,127.0.0.1 port={free} user=idvapp dbname=postgres"))
    bad.write_config()
    r = subprocess.run([idvtest.BIN, "check-config", "--config", bad.conf], capture_output=True,
                       text=True)
    check_eq(r.returncode, 2, f"check-config on unequal lists: {r.stdout}{r.stderr}")
    check("database_url" in r.stderr, f"the key is named: {r.stderr}")


if __name__ == "__main__":
    sys.exit(idvtest.main(globals()))
