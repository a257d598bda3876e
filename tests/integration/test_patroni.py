#!/usr/bin/env python3
"""Patroni as the real HA component: one etcd 3.4 and two PostgreSQL nodes
under Patroni 3.0 with synchronous_mode (tests/lib/hapg.py), two daemon
instances whose database_url names both nodes (through proxies, so that the
network can be cut) with target_session_attrs=read-write, and callbacks plus
registrations from several client threads, every answer recorded.

Scenarios, one ctest entry each (each builds its own etcd and nodes):
- switchover: `patronictl switchover` (planned);
- kill_and_rejoin: the leader's node killed (Patroni and its PostgreSQL
  SIGKILLed together), then brought back: it rejoins as a replica;
- daemon_cut_from_leader: the daemons' path to the leader black-holed while
  Patroni keeps it leader, then healed;
- leader_isolated_and_rejoin: the leader cut off from etcd and from the
  daemons while it keeps running: Patroni demotes it after ttl, the standby
  is promoted, the daemons follow; then the old leader's network heals and
  it rejoins as a replica.

In every phase: no acknowledged callback or registration is missing from the
leader at the end; during the gap only 503 with Retry-After (never 500), and
no answer later than db_timeout_ms plus one connect timeout; the first 200
after the gap within 15 s of a switchover, ttl + 15 s of a failover (the
issue's bounds: the only timed conditions, with the times printed), within
15 s of the black hole's end. A table row per phase is printed: scenario,
requests sent, acknowledged, lost, 503s, seconds to the first 200.
"""
import collections
import os
import re
import sys
import time
import uuid

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import hapg  # noqa: E402
import idvtest  # noqa: E402
import slowdb  # noqa: E402
from idvtest import check, check_eq, metric_value, wait_until  # noqa: E402

TIMEOUT_MS = 2000
CONNECT_TIMEOUT_S = 2
SWITCHOVER_BOUND_S = 15.0
FAILOVER_BOUND_S = hapg.TTL + 15.0
HEAL_BOUND_S = 15.0


class Setup:
    pass


def setup(ctx):
    """The cluster (a leads, b is its synchronous standby), the schema, 20,000
    registered transactions for the callbacks, and two daemons: idv-a lists
    node a first, idv-b node b first."""
    s = Setup()
    s.pc = hapg.PatroniCluster(ctx).start()
    s.leader = s.pc.nodes["a"].pg
    s.leader.setup_schema()
    s.salt = f"ha-{uuid.uuid4().hex[:12]}"
    s.txs = idvtest.register_bulk(s.leader, 20000, prefix="p", salt=s.salt)
    a, b = s.pc.nodes["a"], s.pc.nodes["b"]
    rev = (f"host=127.0.0.1,127.0.0.1 port={b.db_proxy.port},{a.db_proxy.port} user=idvapp"
           f" dbname=postgres target_session_attrs=read-write"
           f" connect_timeout={CONNECT_TIMEOUT_S}")
    s.ds = [ctx.daemon(name="idv-a", database_url=s.pc.url(connect_timeout=CONNECT_TIMEOUT_S),
                       db_pool_size=4, db_timeout_ms=TIMEOUT_MS),
            ctx.daemon(name="idv-b", database_url=rev, db_pool_size=4, db_timeout_ms=TIMEOUT_MS)]
    print(f"setup: etcd + 2 Patroni nodes (ttl {hapg.TTL}, loop_wait {hapg.LOOP_WAIT},"
          f" retry_timeout {hapg.RETRY_TIMEOUT}, synchronous_mode) up in"
          f" {s.pc.setup_seconds:.1f} s; members {s.pc.members()}", flush=True)
    return s


def start_load(s, label):
    load = slowdb.SteadyLoad([(d.cfg["instance_name"], d.public_port, d.admin_port)
                              for d in s.ds], s.txs, prefix=f"{label[:3]}",
                             salt=f"{s.salt}-{label}").start()
    # Steady state first: both instances answering 200.
    for d in s.ds:
        name = d.cfg["instance_name"]
        load.wait(lambda a, name=name: a.instance == name and a.status in (200, 201), 50, 60,
                  f"{name} to serve before the fault")
    return load


def wait_served(s, load, since, what, timeout=90):
    """Waits until every instance has answered 2xx to 20 requests sent after
    `since` (monotonic), of both kinds."""
    for d in s.ds:
        name = d.cfg["instance_name"]
        for kind in ("callback", "register"):
            load.wait(lambda a, name=name, kind=kind: a.instance == name and a.kind == kind and
                      a.sent >= since and slowdb.acknowledged(a), 20, timeout,
                      f"{name} to serve {kind}s {what}")


def first_2xx_after(answers, t):
    """Seconds from t to the first 2xx answered to a request sent after t,
    the largest over the instances."""
    worst = 0.0
    for inst in sorted({a.instance for a in answers}):
        ok = [a.got for a in answers if a.instance == inst and a.sent >= t and
              200 <= a.status < 300]
        check(ok, f"{inst}: no 2xx after {t}")
        worst = max(worst, min(ok) - t)
    return worst


def first_200_after_gap(answers, t0):
    """Seconds from t0 to the first 2xx answered to a request sent after the
    first 503 that followed t0, per instance (0.0 when no 503 came: no gap
    seen); the largest over the instances, and whether a gap was seen."""
    worst, gap = 0.0, False
    for inst in sorted({a.instance for a in answers}):
        mine = [a for a in answers if a.instance == inst and a.sent >= t0]
        first_503 = min((a.sent for a in mine if a.status == 503), default=None)
        if first_503 is None:
            continue
        gap = True
        ok = [a.got for a in mine if a.sent >= first_503 and 200 <= a.status < 300]
        check(ok, f"{inst}: no 2xx after the gap")
        worst = max(worst, min(ok) - t0)
    return worst, gap


Row = collections.namedtuple("Row", "scenario sent acked lost n503 first200 bound")


def judge(label, answers, t0, final_pg, bound, heal=None):
    """Checks the answers of one phase (sent from t0 on) and prints its row.
    The seconds to the first 200 are counted from t0 to the first 2xx after
    the gap; with heal (a time), from heal to the first 2xx to a request sent
    after it."""
    phase = [a for a in answers if a.sent >= t0]
    counts = collections.Counter(f"{a.kind} {a.status}" for a in phase)
    acked = [a for a in phase if slowdb.acknowledged(a)]
    lost = slowdb.missing_acknowledged(final_pg, acked)
    n503 = [a for a in phase if a.status == 503]
    others = [a for a in phase if a.status not in (200, 201, 503)]
    slowest = max((a.got - a.sent for a in phase), default=0.0)
    if heal is None:
        first200, gap = first_200_after_gap(phase, t0)
    else:
        first200, gap = first_2xx_after(phase, heal), True
    row = Row(label, len(phase), len(acked), len(lost), len(n503), first200, bound)
    print(f"ROW | {label} | sent {row.sent} | acknowledged {row.acked} | lost {row.lost} |"
          f" 503s {row.n503} | seconds to the first 200 {first200:.2f}"
          f"{'' if gap else ' (no gap seen)'} (bound {bound:.0f}) | slowest answer"
          f" {slowest:.2f} s | {dict(sorted(counts.items()))}", flush=True)
    check_eq(lost[:5], [], f"{label}: acknowledged writes missing from the leader")
    check_eq(others[:5], [], f"{label}: answers other than 200/201/503")
    check_eq([a for a in n503 if not a.retry_after][:5], [], f"{label}: 503 without Retry-After")
    limit = TIMEOUT_MS / 1000 + CONNECT_TIMEOUT_S
    check(slowest <= limit, f"{label}: an answer took {slowest:.2f} s, more than db_timeout_ms"
          f" plus one connect timeout ({limit:.1f} s)")
    check(first200 <= bound, f"{label}: first 200 {first200:.2f} s after the fault, more than"
          f" {bound:.0f} s")
    return row


def leader_pg(s):
    name = s.pc.leader()
    check(name is not None, f"a leader: {s.pc.members()}")
    return s.pc.nodes[name].pg


def check_primary(s, node):
    """Every daemon writes to node (idv_db_primary names its proxy)."""
    host = f"127.0.0.1:{s.pc.nodes[node].db_proxy.port}"
    for d in s.ds:
        wait_until(lambda d=d: metric_value(d.metrics(), "idv_db_primary", host=host) == 1.0, 30,
                   what=f"{d.cfg['instance_name']} to write to node {node}")


def check_never_written(s, node, since_line):
    """No daemon connection came up on node after the log line count
    since_line[name] (the daemon only ever writes through a ready one)."""
    host = f"db_host=127.0.0.1:{s.pc.nodes[node].db_proxy.port}"
    for d in s.ds:
        name = d.cfg["instance_name"]
        later = d.logs().splitlines()[since_line[name]:]
        up = [l for l in later if "PostgreSQL connection ready" in l and host in l]
        check_eq(up, [], f"{name}: connections ready on node {node}")


def wait_rejoined(s, load, node, t1, since):
    """Waits until the old leader is back as a replica, then as the leader's
    synchronous standby, and the daemons serve on."""
    s.pc.wait(lambda: any(m["name"] == node and m.get("role") in ("replica", "sync_standby") and
                          m.get("state") in ("running", "streaming")
                          for m in s.pc.members()), 120, f"{node} to rejoin as a replica")
    s.pc.wait(lambda: s.pc.sync_standby() == node, 60, f"{node} to be the synchronous standby")
    print(f"rejoin: {node} is the synchronous standby {time.monotonic() - t1:.2f} s after"
          f" {since}; pg_rewind in its log: {'pg_rewind' in s.pc.nodes[node].tail(200000)}",
          flush=True)
    wait_served(s, load, time.monotonic(), "after the rejoin")


def log_marks(s):
    return {d.cfg["instance_name"]: len(d.logs().splitlines()) for d in s.ds}


def print_failover_logs(s, marks):
    for d in s.ds:
        name = d.cfg["instance_name"]
        lines = [l for l in d.logs().splitlines()[marks[name]:]
                 if re.search(r"connection down|primary changed|server message", l)]
        print(f"{name} log during the scenario (first 6 of {len(lines)}):\n  "
              + "\n  ".join(lines[:6]), flush=True)


def finish(s, load, rows):
    load.stop()
    for d in s.ds:
        d.stop_clean()
    print("TABLE | scenario | sent | acknowledged | lost | 503s | s to first 200", flush=True)
    for r in rows:
        print(f"TABLE | {r.scenario} | {r.sent} | {r.acked} | {r.lost} | {r.n503} |"
              f" {r.first200:.2f}", flush=True)


def case_switchover(ctx):
    """patronictl switchover a -> b under load."""
    s = setup(ctx)
    load = start_load(s, "switchover")
    marks = log_marks(s)
    t0 = time.monotonic()
    out = s.pc.switchover("a", "b")
    said = [l for l in out.splitlines() if "Successfully" in l]
    print(f"switchover: patronictl said: {said[0].strip()} after"
          f" {time.monotonic() - t0:.2f} s", flush=True)
    s.pc.wait(lambda: s.pc.leader() == "b", 60, "b to lead")
    wait_served(s, load, time.monotonic(), "after the switchover")
    load.stop()
    check_primary(s, "b")
    row = judge("switchover", load.snapshot(), t0, leader_pg(s), SWITCHOVER_BOUND_S)
    print_failover_logs(s, marks)
    check(any("terminating connection due to administrator command" in d.logs()
              for d in s.ds), "the old primary's FATAL is in a daemon's log")
    finish(s, load, [row])


def case_kill_and_rejoin(ctx):
    """The leader's node killed (Patroni and PostgreSQL SIGKILLed); b is
    promoted once the leader key expires; then a is started again and
    rejoins as a replica; the daemons never write to it."""
    s = setup(ctx)
    load = start_load(s, "kill")
    marks = log_marks(s)
    t0 = time.monotonic()
    s.pc.nodes["a"].kill()
    s.pc.wait(lambda: s.pc.leader() == "b", hapg.TTL + 60, "b to lead after the kill")
    print(f"kill: b leads {time.monotonic() - t0:.2f} s after the kill", flush=True)
    wait_served(s, load, time.monotonic(), "after the failover")
    check_primary(s, "b")
    rows = [judge("leader killed", load.snapshot(), t0, leader_pg(s), FAILOVER_BOUND_S)]
    # Back: Patroni on a again; it must become a replica of b.
    t1 = time.monotonic()
    s.pc.nodes["a"].start()
    wait_rejoined(s, load, "a", t1, "its start")
    load.stop()
    check_eq(s.pc.nodes["a"].pg.psql("SELECT pg_is_in_recovery()"), "t", "a is a standby")
    check_never_written(s, "a", marks)
    check_primary(s, "b")
    rows.append(judge("old leader rejoins", load.snapshot(), t1, leader_pg(s), FAILOVER_BOUND_S))
    print_failover_logs(s, marks)
    finish(s, load, rows)


def case_daemon_cut_from_leader(ctx):
    """The daemons' path to the leader black-holed for 8 s (longer than
    three query deadlines: the stuck connections are replaced) while Patroni
    keeps a leader: only 503s, each at its deadline; 200s again within
    seconds of the link healing; nothing acknowledged lost."""
    s = setup(ctx)
    load = start_load(s, "hole")
    marks = log_marks(s)
    proxy = s.pc.nodes["a"].db_proxy
    t0 = time.monotonic()
    proxy.blackhole(True)
    time.sleep(8)
    check_eq(s.pc.leader(), "a", "Patroni kept a as leader")
    t_heal = time.monotonic()
    proxy.blackhole(False)
    wait_served(s, load, time.monotonic(), "after the heal")
    load.stop()
    answers = load.snapshot()
    during = [a for a in answers if a.sent >= t0 + 0.1 and a.got < t_heal]
    late = [a for a in during if a.status != 503]
    print(f"black hole: {len(during)} answers to requests sent during it (before the heal):"
          f" {dict(collections.Counter(a.status for a in during))}; slowest"
          f" {max((a.got - a.sent for a in during), default=0):.2f} s", flush=True)
    check(len(during) > 0, "answers during the black hole")
    check_eq(late[:5], [], "answers during the black hole are 503")
    # Each 503 at its deadline: db_timeout_ms, checked by the pool's 100 ms
    # tick, seen by a client thread that shares two cores with the rest.
    slow = [a for a in during if a.got - a.sent > TIMEOUT_MS / 1000 + 0.5]
    check_eq(slow[:5], [], "503s answered later than db_timeout_ms (+0.5 s)")
    check_primary(s, "a")
    row = judge("daemon cut from the leader", answers, t0, leader_pg(s), HEAL_BOUND_S,
                heal=t_heal)
    print_failover_logs(s, marks)
    finish(s, load, [row])


def case_leader_isolated_and_rejoin(ctx):
    """The leader cut off from etcd and from the daemons while it keeps
    running: Patroni demotes it (it cannot renew its key), b is promoted when
    the key expires, the daemons follow. Then a's network heals: it rejoins
    as a replica and the daemons never write to it."""
    s = setup(ctx)
    load = start_load(s, "isolated")
    marks = log_marks(s)
    a = s.pc.nodes["a"]
    t0 = time.monotonic()
    a.etcd_proxy.blackhole(True)
    a.db_proxy.blackhole(True)
    s.pc.wait(lambda: s.pc.nodes["b"].role() == "primary", hapg.TTL + 60,
              "b to be promoted")
    print(f"isolation: b promoted {time.monotonic() - t0:.2f} s after a was cut off; a says"
          f" role {a.role()}", flush=True)
    wait_served(s, load, time.monotonic(), "after the failover")
    check_primary(s, "b")
    rows = [judge("leader isolated", load.snapshot(), t0, s.pc.nodes["b"].pg,
                  FAILOVER_BOUND_S)]
    t1 = time.monotonic()
    a.etcd_proxy.blackhole(False)
    a.db_proxy.blackhole(False)
    wait_rejoined(s, load, "a", t1, "the heal")
    load.stop()
    check_eq(s.pc.leader(), "b", "b still leads")
    check_eq(a.pg.psql("SELECT pg_is_in_recovery()"), "t", "a is a standby")
    check_never_written(s, "a", marks)
    rows.append(judge("isolated leader rejoins", load.snapshot(), t1, leader_pg(s),
                      FAILOVER_BOUND_S))
    print_failover_logs(s, marks)
    finish(s, load, rows)


if __name__ == "__main__":
    sys.exit(idvtest.main(globals()))
