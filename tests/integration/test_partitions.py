#!/usr/bin/env python3
"""Partitioned history (sql/0006): plans, partitions made ahead without a
superuser, retention, a consumer of idv.events_after across a partition
boundary and across a retention drop, a DEFAULT partition that caught rows
while maintenance had stopped, and `migrate` moving an unpartitioned
installation in place while callbacks are recorded.

Every case starts its own cluster. History older than today is written by the
superuser with explicit times (the daemon writes now()); what the cases assert
about plans comes from EXPLAIN, never from timing."""
import hashlib
import os
import re
import subprocess
import sys
import threading

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import idvtest  # noqa: E402
from idvtest import check, check_eq, wait_until  # noqa: E402

SQL_DIR = os.path.join(HERE, "..", "..", "sql")
TABLES = {"callback_events": "received_at", "transaction_events": "at",
          "check_results": "checked_at"}
RETENTION_KEYS = {"callback_events": "IDV_RETENTION_CALLBACK_EVENTS_DAYS",
                  "transaction_events": "IDV_RETENTION_TRANSACTION_EVENTS_DAYS",
                  "check_results": "IDV_RETENTION_CHECK_RESULTS_DAYS"}


# ---- helpers ------------------------------------------------------------------

def maintain(pg, user="idvapp", retention=None, check_rc=0):
    """Runs `idv-callbackd maintain` as user; retention: days for every
    history table. Returns its output."""
    env = dict(os.environ, IDV_DATABASE_URL=pg.url(user))
    for k in RETENTION_KEYS.values():
        env.pop(k, None)
        if retention is not None:
            env[k] = str(retention)
    r = subprocess.run([idvtest.BIN, "maintain"], env=env, capture_output=True, text=True)
    out = r.stdout + r.stderr
    if check_rc is not None:
        check_eq(r.returncode, check_rc, f"maintain exit status; output:\n{out}")
    return out


def partitions(pg, table=None):
    """{partition name: (from, to)} of a history table (the DEFAULT one as
    (None, None); bounds are times, or xids for transaction_events); without
    table, {table: that} of all three."""
    rows = pg.rows("SELECT h.table_name, p.partition_name, coalesce(p.range_from::text,"
                   " p.xid_from::text), coalesce(p.range_to::text, p.xid_to::text) FROM"
                   " idv.history_tables h, idv.history_partitions(h.table_name) p")
    out = {t: {} for t in TABLES}
    for r in rows:
        out[r[0]][r[1]] = (r[2] or None, r[3] or None)
    return out[table] if table else out


def small_xid_partitions(pg, n, width):
    """Replaces the (empty) partitions of transaction_events from the current
    xid on by n partitions of `width` xids each, then one large one: events
    written in transactions of their own then fall into successive
    partitions, as a month of xids would on a real installation."""
    next_xid = int(pg.psql("SELECT pg_snapshot_xmax(pg_current_snapshot())"))
    first = next_xid
    for name, (lo, hi) in partitions(pg, "transaction_events").items():
        if hi and int(hi) > next_xid:
            check_eq(pg.psql(f"SELECT count(*) FROM idv.{name}"), "0", f"{name} empty")
            pg.psql(f"DROP TABLE idv.{name}")
            first = min(first, int(lo))
    start = int(pg.psql("SELECT pg_snapshot_xmax(pg_current_snapshot())")) + 2
    bounds = [first] + [start + i * width for i in range(n + 1)] + [start + 10 ** 7]
    pg.psql(" ".join(f"SELECT idv.history_add_partition('transaction_events', '{a}', '{b}');"
                     for a, b in zip(bounds, bounds[1:])))


def burn_xids(pg, n):
    """n transactions that each take an xid: the xid counter moves on."""
    pg.psql(" ".join(["BEGIN; SELECT pg_current_xact_id(); COMMIT;"] * n))


def months_back(pg, n):
    """The first instant (UTC) of the month n months before the current one."""
    return pg.psql(f"SELECT (date_trunc('month', now() AT TIME ZONE 'UTC')"
                   f" - interval '{n} months') AT TIME ZONE 'UTC'")


def make_past_partitions(pg, months):
    """Partitions for the last `months` months, made by the daemon's role
    (no superuser), as maintain makes the ones ahead."""
    pg.psql(f"SELECT idv.history_make_partitions(t, now() - interval '{months} months', now())"
            f" FROM unnest(ARRAY['callback_events', 'transaction_events', 'check_results']) t",
            user="idvapp")


def history_sql(tx, month_ago, outcome="accepted", events=("initiated",), check=True, day=10):
    """SQL writing history rows of transaction tx (which must exist) in the
    month month_ago months back (day `day`, UTC): one callback event, the
    status events named, one CheckResult if check. Each status event in a
    transaction of its own, so that xids grow in the order written."""
    at = f"(date_trunc('month', now() AT TIME ZONE 'UTC') - interval '{month_ago} months'" \
         f" + interval '{day - 1} days') AT TIME ZONE 'UTC'"
    sql = [f"INSERT INTO idv.callback_events (received_at, outcome, transaction_id, passed,"
           f" sub_code, client_ip, instance) VALUES ({at}, '{outcome}', '{tx}', 'Y', '200',"
           f" '192.0.2.1', 'old');"]
    for st in events:
        sql.append(f"BEGIN; INSERT INTO idv.transaction_events (at, tx, transaction_id,"
                   f" merchant_biz_id, status, passed, sub_code, confirmed) SELECT {at}, id,"
                   f" transaction_id, merchant_biz_id, '{st}', 'Y', '200', false"
                   f" FROM idv.transactions WHERE transaction_id = '{tx}'; COMMIT;")
    if check:
        sql.append(f"INSERT INTO idv.check_results (tx, transaction_id, checked_at, passed,"
                   f" sub_code, instance) SELECT id, transaction_id, {at}, 'Y', '200', 'old'"
                   f" FROM idv.transactions WHERE transaction_id = '{tx}';")
    return " ".join(sql)


class Consumer:
    """The README's consumer: a position (xid, id), pages of idv.events_after,
    as a member of idv_reader."""

    def __init__(self, pg, user="consumer", page=3):
        self.pg, self.user, self.page = pg, user, page
        self.pos = ("0", "0")
        self.seen = []  # (xid, id, transaction_id, status)

    def read(self, max_pages=None):
        """Reads pages until events_after returns nothing (or max_pages);
        returns the events of this call."""
        got, pages = [], 0
        while max_pages is None or pages < max_pages:
            rows = self.pg.rows(f"SELECT xid, id, transaction_id, status FROM idv.events_after("
                                f"'{self.pos[0]}'::xid8, {self.pos[1]}, {self.page})",
                                user=self.user)
            pages += 1
            if not rows:
                break
            for r in rows:
                got.append(tuple(r))
                self.pos = (r[0], r[1])
        self.seen += got
        return got

    def lost(self):
        """What idv.events_dropped_after says this consumer lost."""
        return self.pg.rows(f"SELECT partition_name FROM idv.events_dropped_after("
                            f"'{self.pos[0]}'::xid8, {self.pos[1]})", user=self.user)


def count_rows(pg):
    r = pg.rows("SELECT " + ", ".join(f"(SELECT count(*) FROM idv.{t})" for t in TABLES))[0]
    return dict(zip(TABLES, map(int, r)))


def all_events(pg):
    """Every event, in (xid, id) order."""
    return [tuple(r) for r in pg.rows("SELECT xid, id, transaction_id, status"
                                      " FROM idv.transaction_events ORDER BY xid, id")]


def scanned(plan, table):
    """Names of the partitions of table an EXPLAIN text plan reads, with the
    kind of scan: {partition: set of node names}."""
    out = {}
    for m in re.finditer(r"(Seq Scan|(?<!Bitmap )Index Scan|Index Only Scan|Bitmap Heap Scan)"
                         r"(?: using \S+)? on (" + table + r"_(?:p\d{8}|pmin|x\d+|default))\b", plan):
        out.setdefault(m.group(2), set()).add(m.group(1))
    return out


def tiny_partitions(pg):
    """Names of the history partitions of at most one page (empty, or the
    one-transaction xid partitions of these tests): a sequential scan of one
    page is what an index scan would cost, and the planner may take either."""
    return {r[0] for r in pg.rows(
        "SELECT p.partition_name FROM idv.history_tables h, idv.history_partitions(h.table_name) p"
        " WHERE pg_relation_size(('idv.' || p.partition_name)::regclass) <= 8192")}


def audit_queries(tx):
    """The statements of sql/audit-queries.sql, comments dropped, :'tx'
    replaced: [(number, title, text)]."""
    with open(os.path.join(SQL_DIR, "audit-queries.sql")) as f:
        text = f.read()
    out = []
    for m in re.finditer(r"^-- (\d+)\. (.*?)\n((?:--.*\n)*)((?:(?!--).*\n)+?)(?=\n|\Z)", text,
                         re.M):
        title = re.sub(r"\s*\(.*", "", m.group(2)).rstrip(".:")[:60]
        stmt = m.group(4).strip().rstrip(";").replace(":'tx'", f"'{tx}'")
        out.append((int(m.group(1)), title, stmt))
    return out


# ---- plans -------------------------------------------------------------------

def case_plans(ctx):
    """Four months of history, a few thousand rows: each time-bounded audit
    query reads only the partitions of its range; the point paths (audit
    queries by transaction, the status GET, callbacks accepted and replayed,
    events_after, the sweeper, the confirmation claim) scan no history table
    sequentially (auto_explain of every statement, nested ones included)."""
    pg = ctx.pg()
    make_past_partitions(pg, 3)
    small_xid_partitions(pg, 12, 1)
    txs = idvtest.register_bulk(pg, 3000, prefix="pl", salt="plans-salt")
    ids = ", ".join(f"'{t}'" for t, _ in txs)
    # Three callbacks and two status events a transaction, spread over the
    # four months (the current one up to today); a few rejected and conflicts.
    now_day = int(pg.psql("SELECT extract(day FROM now() AT TIME ZONE 'UTC')::int"))
    for back in range(4):
        last = now_day if back == 0 else 28
        pg.psql(f"""
            WITH t AS (SELECT id, transaction_id, merchant_biz_id, row_number() OVER () AS n
                       FROM idv.transactions WHERE transaction_id IN ({ids})),
                 w AS (SELECT t.*, (date_trunc('month', now() AT TIME ZONE 'UTC')
                                    - interval '{back} months'
                                    + (t.n % {last}) * interval '1 day'
                                    + (t.n % 1440) * interval '1 minute') AT TIME ZONE 'UTC' AS at
                       FROM t WHERE (date_trunc('month', now() AT TIME ZONE 'UTC')
                                     - interval '{back} months'
                                     + (t.n % {last}) * interval '1 day') AT TIME ZONE 'UTC'
                                    <= now() - interval '1 hour'),
                 ce AS (INSERT INTO idv.callback_events (received_at, outcome, transaction_id,
                            passed, sub_code, client_ip, instance)
                        SELECT w.at + k * interval '1 second',
                               CASE WHEN k = 0 THEN 'accepted' WHEN w.n % 50 = 0 THEN 'conflict'
                                    WHEN w.n % 7 = 0 THEN 'rejected' ELSE 'duplicate' END,
                               w.transaction_id, 'Y', '200', ('10.0.' || (w.n % 200) || '.1')::inet,
                               'i' || (w.n % 3)
                        FROM w, generate_series(0, 2) k),
                 te AS (INSERT INTO idv.transaction_events (at, tx, transaction_id,
                            merchant_biz_id, status, passed, sub_code, confirmed)
                        SELECT w.at, w.id, w.transaction_id, w.merchant_biz_id, s, 'Y', '200', false
                        FROM w, unnest(ARRAY['initiated', 'passed']) s)
            INSERT INTO idv.check_results (tx, transaction_id, checked_at, passed, sub_code,
                                           instance)
            SELECT w.id, w.transaction_id, w.at, 'Y', '200', 'i1' FROM w WHERE w.n % 4 = 0""")
    pg.psql("ANALYZE")
    per_part = pg.rows("SELECT partition_name, n FROM (SELECT p.partition_name, (SELECT count(*)"
                       " FROM idv.callback_events e WHERE e.received_at >= p.range_from"
                       " AND e.received_at < p.range_to) n FROM"
                       " idv.history_partitions('callback_events') p WHERE NOT p.is_default) x"
                       " WHERE n > 0")
    check(len(per_part) >= 3, f"history in several partitions: {per_part}")

    tx = txs[10][0]
    pg.psql("CREATE ROLE auditor LOGIN IN ROLE idv_reader")
    tiny = tiny_partitions(pg)
    for num, _, stmt in audit_queries(tx):
        rows = pg.rows(stmt, user="auditor")  # every query runs as a member of idv_reader
        if num in (1, 4, 6):
            check(rows, f"audit query {num} finds rows")
        plan = pg.psql("EXPLAIN (COSTS OFF) " + stmt, user="postgres")
        if "received_at >" in stmt:
            days = 30 if "30 days" in stmt else 1
            want = {r[0] for r in pg.rows(
                f"SELECT partition_name FROM idv.history_partitions('callback_events')"
                f" WHERE NOT is_default AND range_from <= now()"
                f" AND range_to > now() - interval '{days} days'")}
            got = scanned(plan, "callback_events")
            check_eq(set(got), want, f"audit query {num}: partitions read\n{plan}")
            check("Subplans Removed" in plan or len(want) == len(partitions(pg, "callback_events")),
                  f"audit query {num}: pruned\n{plan}")
        elif "transaction_id = " in stmt:
            table = "transaction_events" if "transaction_events" in stmt else "callback_events"
            got = scanned(plan, table)
            check_eq(set(got), set(partitions(pg, table)),
                     f"audit query {num}: every partition, by index\n{plan}")
            for part, kinds in got.items():
                # An empty partition (months ahead, DEFAULT) costs nothing to
                # scan, and the planner knows it.
                check("Seq Scan" not in kinds or part in tiny,
                      f"audit query {num}: {part} scanned in full\n{plan}")

    # events_after from a position reads the partitions from the position's
    # on, not those below (transaction_events is partitioned by xid).
    pg.psql(" ".join(f"BEGIN; INSERT INTO idv.transaction_events (tx, transaction_id,"
                     f" merchant_biz_id, status, confirmed) SELECT id, transaction_id,"
                     f" merchant_biz_id, 'expired', false FROM idv.transactions"
                     f" WHERE transaction_id = 'pl{i}'; COMMIT;" for i in range(6)))
    mid = pg.rows("SELECT xid, id FROM idv.transaction_events WHERE transaction_id = 'pl3'"
                  " AND status = 'expired'")[0]
    plan = pg.psql(f"EXPLAIN (COSTS OFF) SELECT * FROM idv.events_after('{mid[0]}'::xid8,"
                   f" {mid[1]}, 1000)")
    got = set(scanned(plan, "transaction_events"))
    want = {r[0] for r in pg.rows(
        f"SELECT partition_name FROM idv.history_partitions('transaction_events')"
        f" WHERE xid_to > '{mid[0]}'::xid8 AND xid_from <= pg_snapshot_xmax(pg_current_snapshot())")}
    check(got and got <= want, f"events_after reads {got}, the partitions from {mid} on: {want}"
          f"\n{plan}")
    check(len(partitions(pg, "transaction_events")) - len(got) >= 4,
          f"events_after leaves the partitions below the position out\n{plan}")

    # The point paths, every nested statement's plan printed as a NOTICE.
    consumer_pos = pg.psql("SELECT xid || ' ' || id FROM idv.transaction_events"
                           " ORDER BY xid DESC, id DESC OFFSET 1500 LIMIT 1").split()
    new = idvtest.register_bulk(pg, 2, prefix="pp", salt="point-paths")
    digest = [hashlib.sha256(tok.encode()).hexdigest() for _, tok in new]
    arr = lambda xs: "ARRAY[" + ",".join(f"'{x}'" for x in xs) + "]"  # noqa: E731
    batch = (f"{arr([t for t, _ in new])}, {arr(digest)}, ARRAY['Y','N'], ARRAY['200','205'],"
             f" ARRAY['192.0.2.7','192.0.2.8'], 'plans', true")
    paths = [
        f"SELECT * FROM idv.transaction_status WHERE transaction_id = '{tx}'",
        f"SELECT * FROM idv.record_callbacks({batch})",          # accepted
        f"SELECT * FROM idv.record_callbacks({batch})",          # replayed
        f"SELECT count(*) FROM idv.events_after('{consumer_pos[0]}'::xid8, {consumer_pos[1]})",
        "SELECT idv.sweep('5 minutes', '10 minutes', false)",
        "SELECT * FROM idv.claim_work('plans', 10, '30 seconds')",
    ]
    r = pg.try_psql("LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;"
                    " SET auto_explain.log_nested_statements = on;"
                    " SET auto_explain.log_level = notice; SET client_min_messages = notice;"
                    + "; ".join(paths), user="postgres")
    check_eq(r.returncode, 0, f"point paths: {r.stderr}")
    check(r.stderr.count("NOTICE:  duration") >= len(paths), f"plans printed: {r.stderr[:2000]}")
    check(re.search(r"Index (Only )?Scan using \S+ on transaction_events_x\d+", r.stderr),
          f"events_after reads the partitions by index:\n{r.stderr}")
    for t in TABLES:
        seq = [p for p in re.findall(r"Seq Scan on (" + t + r"_(?:p\d{8}|pmin|x\d+|default))\b",
                                     r.stderr) if p not in tiny_partitions(pg)]
        check(not seq, f"point paths scan {t} in full ({seq}):\n{r.stderr}")
    out = pg.rows("SELECT outcome FROM idv.callback_events WHERE instance = 'plans' ORDER BY id")
    check_eq([o[0] for o in out], ["accepted", "accepted", "duplicate", "duplicate"],
             "the point paths ran for real")


# ---- retention, and a consumer across partition boundaries and a drop ---------

def case_retention_and_consumer(ctx):
    """History of 16 months, retention 365 days for every table: exactly the
    partitions whose rows are all older than a year go (by time: the months
    before; transaction_events, by xid: the partitions whose xids have all
    ended and whose newest event is that old), except those holding a row of a
    transaction still open or named by a work item not done (kept, and named);
    once those are done, the next run drops them. The daemon's role may make
    partitions but not drop them. A consumer reads across partition boundaries
    (events of a later month written before events of an earlier one) once
    each, in (xid, id) order; across the drop it loses exactly the events of
    the dropped partitions after its position, and idv.events_dropped_after
    tells it; a consumer that was ahead of the drop loses nothing."""
    pg = ctx.pg()
    d = ctx.daemon(pg)
    pg.psql("CREATE ROLE consumer LOGIN IN ROLE idv_reader;"
            " CREATE ROLE maint LOGIN IN ROLE idv_maintainer")
    make_past_partitions(pg, 16)
    small_xid_partitions(pg, 60, 1)  # one transaction per partition
    idvtest.register_bulk(pg, 12, prefix="rt", salt="retention-salt")
    # Finished transactions, one per month, oldest first, plus the later month
    # written before the earlier one (xid order differs from month order).
    sql = [history_sql(f"rt{i}", back, events=("initiated", "passed"))
           for i, back in enumerate([15, 14, 13, 2, 1])]
    sql.append(history_sql("rt5", 0, events=("initiated",), check=False, day=1))
    sql.append(history_sql("rt6", 1, events=("initiated",), check=False))
    # Live: rt10 still initiated, created 15 months ago; rt11 passed but with a
    # confirmation given up (not done), its CheckResult 14 months ago.
    sql.append("UPDATE idv.transactions SET initiated_at = now() - interval '15 months'"
               " WHERE transaction_id IN ('rt10', 'rt11');")
    sql.append(history_sql("rt10", 15, events=("initiated",), check=False))
    sql.append(history_sql("rt11", 14, outcome="duplicate", events=(), check=True, day=20))
    sql.append("INSERT INTO idv.work_queue (kind, tx, transaction_id, merchant_biz_id, gave_up,"
               " last_error) SELECT 'confirm', id, transaction_id, merchant_biz_id, true, 'boom'"
               " FROM idv.transactions WHERE transaction_id = 'rt11';")
    pg.psql(" ".join(sql))
    pg.psql("UPDATE idv.transactions SET status = 'passed' WHERE transaction_id LIKE 'rt%'"
            " AND transaction_id <> 'rt10'")
    burn_xids(pg, 5)  # every partition with events of the past has closed

    everything = all_events(pg)
    ahead, behind = Consumer(pg), Consumer(pg)
    ahead.read()
    check_eq(ahead.seen, everything, "a consumer reads every event once, in order")
    months = [r[0] for r in pg.rows("SELECT to_char(at AT TIME ZONE 'UTC', 'YYYYMM') FROM"
                                    " idv.transaction_events ORDER BY xid, id")]
    check(months != sorted(months), f"events read out of month order: {months}")
    parts_read = pg.psql("SELECT count(DISTINCT tableoid) FROM idv.transaction_events")
    check(int(parts_read) >= 5, f"the events lie in {parts_read} partitions")
    behind.page = 2
    behind.read(max_pages=1)  # two events of the registrations
    behind.page = 3
    check_eq(len(behind.seen), 2, "the late consumer read one page")

    # What must go. By time: the months that end a year ago or before, but
    # those holding a row of rt10 (open) or rt11 (work item not done).
    live = ("rt10", "rt11")
    expired = {t: set() for t in TABLES}
    for r in pg.rows("SELECT h.table_name, p.partition_name FROM idv.history_tables h,"
                     " idv.history_partitions(h.table_name) p"
                     " WHERE NOT p.is_default AND p.range_to <= now() - interval '365 days'"):
        expired[r[0]].add(r[1])
    holding_live = {t: {r[0] for r in pg.rows(
        f"SELECT DISTINCT tableoid::regclass FROM idv.{t} WHERE transaction_id IN {live}")}
        for t in ("callback_events", "check_results")}
    # By xid: each partition's events; it goes when its newest is a year old
    # and none is of a live transaction.
    by_part = {}
    for r in pg.rows("SELECT tableoid::regclass, xid, id, transaction_id,"
                     " at < now() - interval '365 days' FROM idv.transaction_events"):
        by_part.setdefault(r[0].replace("idv.", ""), []).append(r[1:])
    ev_gone = {p for p, evs in by_part.items()
               if all(e[3] == "t" for e in evs) and not any(e[2] in live for e in evs)}
    ev_kept_live = {p for p, evs in by_part.items()
                    if all(e[3] == "t" for e in evs) and any(e[2] in live for e in evs)}
    check(len(ev_gone) >= 3 and ev_kept_live, f"events to drop {ev_gone}, kept {ev_kept_live}")
    gone_events = [e for e in everything if any((e[0], e[1]) == (x[0], x[1])
                                                for p in ev_gone for x in by_part[p])]
    before = partitions(pg)
    counts = count_rows(pg)
    with_rows = {t: {r[0].replace("idv.", "") for r in pg.rows(
        f"SELECT DISTINCT tableoid::regclass FROM idv.{t}")} for t in TABLES}

    # The daemon's role makes partitions but cannot drop any.
    out = maintain(pg, user="idvapp", retention=365, check_rc=1)
    check("permission denied" in out, f"idvapp may not drop history: {out}")
    check_eq(count_rows(pg), counts, "nothing dropped by idvapp")

    out = maintain(pg, user="maint", retention=365)
    now_parts = partitions(pg)
    for t in ("callback_events", "check_results"):
        gone = set(before[t]) - set(now_parts[t])
        check_eq(gone, expired[t] - {p.replace("idv.", "") for p in holding_live[t]},
                 f"{t}: dropped\n{out}")
        check(holding_live[t], f"{t}: a partition kept for a live transaction")
    check(not (ev_gone & set(now_parts["transaction_events"])),
          f"transaction_events: {ev_gone} dropped\n{out}")
    check(ev_kept_live <= set(now_parts["transaction_events"]),
          f"transaction_events: {ev_kept_live} kept\n{out}")
    now_all = all_events(pg)
    check_eq(now_all, [e for e in everything if e not in gone_events],
             "exactly the events of the dropped partitions are gone")
    check("rt10" in out and "rt11" in out and "live transaction" in out,
          f"maintain names the live transactions: {out}")
    drops = {tuple(r) for r in pg.rows("SELECT table_name, partition_name FROM"
                                       " idv.history_drops WHERE row_count > 0",
                                       user="consumer")}
    check_eq(drops, {(t, p) for t in ("callback_events", "check_results")
                     for p in expired[t] - {x.replace("idv.", "") for x in holding_live[t]}
                     if p in with_rows[t]}
             | {("transaction_events", p) for p in ev_gone}, "history_drops")
    left = count_rows(pg)
    check(all(0 < left[t] < counts[t] for t in TABLES), f"rows {counts} -> {left}")

    # New events after the drop; both consumers go on.
    st, _ = d.register("rt-new", "bizn", "rt-new-token-0123456789")
    check_eq(st, 201, "register after the drop")
    now_all = all_events(pg)
    pos = (int(behind.seen[1][0]), int(behind.seen[1][1]))
    check_eq(behind.read(), [e for e in now_all if (int(e[0]), int(e[1])) > pos],
             "the late consumer reads what is left after its position, once")
    lost = {p for p in ev_gone if any((int(x[0]), int(x[1])) > pos for x in by_part[p])}
    check(lost, "the late consumer lost events")
    late = Consumer(pg)
    late.pos = behind.seen[1][:2]
    check_eq({r[0] for r in late.lost()}, lost, "events_dropped_after tells the late consumer")
    check_eq({r[0] for r in Consumer(pg).lost()}, ev_gone, "events_dropped_after from the start")
    check_eq(ahead.read(), [e for e in now_all if e not in everything],
             "the consumer that was ahead gets the new events only")
    check_eq(ahead.lost(), [], "the consumer that was ahead lost nothing")

    # Once the live transactions are done, their partitions go too.
    pg.psql("UPDATE idv.transactions SET status = 'expired' WHERE transaction_id = 'rt10';"
            " UPDATE idv.work_queue SET done_at = now(), outcome = 'confirmed'"
            " WHERE transaction_id = 'rt11'")
    out = maintain(pg, user="maint", retention=365)
    now_parts = partitions(pg)
    for t in ("callback_events", "check_results"):
        check(not ({p.replace("idv.", "") for p in holding_live[t]} & set(now_parts[t])),
              f"{t}: {holding_live[t]} dropped now\n{out}")
    check(not (ev_kept_live & set(now_parts["transaction_events"])),
          f"transaction_events: {ev_kept_live} dropped now\n{out}")
    check_eq([e[2:] for e in ahead.read()], [("rt10", "expired")],
             "the status change of rt10 is read once")


# ---- maintenance stopped: the DEFAULT partition --------------------------------

def case_missing_partitions(ctx):
    """Maintenance stopped long enough that this month has no partition:
    callbacks are accepted all the same (their rows go to the DEFAULT
    partition), also while maintain repairs it step by step; maintain, run
    as the daemon's role, turns those rows into a partition and makes the
    months ahead again; a consumer reads every event once throughout."""
    pg = ctx.pg()
    d = ctx.daemon(pg)
    pg.psql("CREATE ROLE consumer LOGIN IN ROLE idv_reader")
    make_past_partitions(pg, 2)
    cur = months_back(pg, 0)
    next_xid = int(pg.psql("SELECT pg_snapshot_xmax(pg_current_snapshot())"))

    def ahead(t, lo, hi):
        return int(hi) > next_xid if t == "transaction_events" else lo >= cur

    for t in TABLES:
        for name, (lo, hi) in partitions(pg, t).items():
            if lo is not None and ahead(t, lo, hi):
                pg.psql(f"DROP TABLE idv.{name}")
    check(not any(lo is not None and ahead(t, lo, hi) for t in TABLES
                  for lo, hi in partitions(pg, t).values()), "no partition from now on")
    consumer = Consumer(pg, page=3)
    n = 0

    def callbacks(k):
        nonlocal n
        for _ in range(k):
            tok = f"mp-token-{n}-0123456789"
            check_eq(d.register(f"mp{n}", f"biz{n}", tok)[0], 201, f"register mp{n}")
            st, body, _, _ = d.callback(f"mp{n}", "Y", "200", tok)
            check_eq((st, body), (200, {"result": "accepted"}), f"callback mp{n}")
            n += 1

    callbacks(3)
    check_eq(pg.psql("SELECT count(*) FROM idv.callback_events_default"), "3",
             "rows caught by the DEFAULT partition")
    consumer.read()
    # The repair, one step at a time, with callbacks in between.
    steps = []
    for _ in range(3):
        r = pg.rows("SELECT action, again FROM idv.history_repair_default('callback_events')",
                    user="idvapp")
        steps.append(r[0][0])
        callbacks(1)
    check("fenced" in steps[0] and "validated" in steps[1] and "became partition" in steps[2],
          f"repair steps: {steps}")
    out = maintain(pg, user="idvapp")
    check("created partition" in out, f"maintain made partitions: {out}")
    callbacks(2)
    for t in TABLES:
        check_eq(pg.psql(f"SELECT count(*) FROM idv.{t}_default"), "0", f"{t}: DEFAULT empty")
        check_eq(pg.psql(f"SELECT coalesce(max(range_to) >= now() + interval '2 months',"
                         f" max(xid_to) > pg_snapshot_xmax(pg_current_snapshot())) FROM"
                         f" idv.history_partitions('{t}')"), "t",
                 f"{t}: partitions ahead again: {partitions(pg, t)}")
    check_eq(pg.psql("SELECT count(*) FROM idv.callback_events WHERE outcome = 'accepted'"),
             str(n), "every accepted callback recorded")
    consumer.read()
    check_eq(consumer.seen, all_events(pg), "the consumer read every event once, in order")
    check_eq(len([e for e in consumer.seen if e[3] == "passed"]), n, "a passed event each")


# ---- migrate in place ---------------------------------------------------------

def apply_up_to(pg, last):
    """Applies sql/ files up to version `last` as migrate would (one
    transaction each, recorded with their checksum): an installation from
    before the partitioned history."""
    pg.psql("CREATE SCHEMA idv; CREATE TABLE idv.schema_migrations (version integer PRIMARY KEY,"
            " name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())")
    for f in sorted(os.listdir(SQL_DIR)):
        m = re.match(r"^(\d{4})_(.*)\.sql$", f)
        if not m or int(m.group(1)) > last:
            continue
        with open(os.path.join(SQL_DIR, f), "rb") as fh:
            data = fh.read()
        r = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-h", pg.sock,
                            "-p", str(pg.port), "-U", "postgres", "-d", "postgres", "-f", "-"],
                           input=data, capture_output=True)
        check_eq(r.returncode, 0, f"{f}: {r.stderr.decode()}")
        pg.psql(f"INSERT INTO idv.schema_migrations (version, name, checksum) VALUES"
                f" ({int(m.group(1))}, '{f[:-4]}', '{hashlib.sha256(data).hexdigest()}')")


def old_history(pg, months):
    """History of the transactions mg%, written as a daemon from before
    sql/0006 would have: over the last `months` months (each transaction in
    one of them), two callback events, a passed event and a CheckResult
    each."""
    for back in range(months, 0, -1):
        pg.psql(f"""
            WITH t AS (SELECT id, transaction_id, merchant_biz_id FROM idv.transactions
                       WHERE transaction_id LIKE 'mg%' AND id % {months} = {back - 1}),
                 ce AS (INSERT INTO idv.callback_events (received_at, outcome, transaction_id,
                            passed, sub_code, client_ip, instance)
                        SELECT now() - interval '{back} months' + t.id * interval '1 second',
                               o, t.transaction_id, 'Y', '200', '192.0.2.9', 'old'
                        FROM t, unnest(ARRAY['accepted', 'duplicate']) o),
                 te AS (INSERT INTO idv.transaction_events (at, tx, transaction_id,
                            merchant_biz_id, status, passed, sub_code, confirmed)
                        SELECT now() - interval '{back} months' + t.id * interval '1 second',
                               t.id, t.transaction_id, t.merchant_biz_id, 'passed', 'Y', '200',
                               false FROM t)
            INSERT INTO idv.check_results (tx, transaction_id, checked_at, passed, sub_code,
                                           instance)
            SELECT t.id, t.transaction_id,
                   now() - interval '{back} months' + t.id * interval '1 second', 'Y', '200',
                   'old' FROM t""")


def case_migrate_in_place(ctx):
    """An installation from before sql/0006 with history, callbacks recorded
    all along: `migrate` (two at once) moves the rows in batches, printing
    its progress, and swaps each table in with a short lock; no row is lost or
    doubled, ids are kept and go on, a consumer reads every event once across
    the migration, and the history is partitioned afterwards."""
    pg = ctx.pg(schema=False)
    apply_up_to(pg, 5)
    pg.psql("CREATE ROLE idvapp LOGIN IN ROLE idv_daemon; CREATE ROLE consumer LOGIN"
            " IN ROLE idv_reader")
    idvtest.register_bulk(pg, 1200, prefix="mg", salt="migrate-salt")
    old_history(pg, 3)
    before = {t: pg.psql(f"SELECT count(*) || ' ' || sum(id) || ' ' || max(id) FROM idv.{t}")
              for t in TABLES}
    consumer = Consumer(pg, page=1000)
    consumer.read()

    # Callbacks recorded during the whole migration, as a daemon of the
    # previous version would: each batch its own transaction, outcomes kept.
    stop = threading.Event()
    accepted, errors = [], []
    fresh = idvtest.register_bulk(pg, 400, prefix="live", salt="live-migrate")

    def writer():
        for tx, tok in fresh:
            if stop.is_set():
                break
            dg = hashlib.sha256(tok.encode()).hexdigest()
            r = pg.try_psql(f"SELECT outcome FROM idv.record_callbacks(ARRAY['{tx}'],"
                            f" ARRAY['{dg}'], ARRAY['Y'], ARRAY['200'], ARRAY['192.0.2.10'],"
                            f" 'live', true)", user="idvapp")
            if r.returncode == 0:
                accepted.append((tx, r.stdout.strip()))
            else:
                errors.append(r.stderr.strip())

    # One session open across the migration, as a daemon's connection is: it
    # has compiled the status trigger and the batch function before the swap
    # and calls both after it (a row type bound by oid would fail it then).
    held_tx = idvtest.register_bulk(pg, 4, prefix="held", salt="held-migrate")
    held = subprocess.Popen(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", pg.sock,
                             "-p", str(pg.port), "-U", "postgres", "-d", "postgres"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def held_do(cb, expire):
        tx, tok = cb
        dg = hashlib.sha256(tok.encode()).hexdigest()
        held.stdin.write(f"SELECT idv.record_callback_batch(ARRAY['{tx}'], ARRAY['{dg}'],"
                         f" ARRAY['Y'], ARRAY['200'], ARRAY['192.0.2.11'], 'held', true);\n"
                         f"UPDATE idv.transactions SET status = 'expired', updated_at = now()"
                         f" WHERE transaction_id = '{expire[0]}';\n")
        held.stdin.flush()
        wait_until(lambda: pg.psql("SELECT count(*) FROM idv.transactions WHERE transaction_id"
                                   f" IN ('{tx}', '{expire[0]}') AND status IN"
                                   " ('passed', 'expired')") == "2", 60,
                   what="the held session's callback and status change")

    held_do(held_tx[0], held_tx[1])
    th = threading.Thread(target=writer)
    th.start()
    wait_until(lambda: len(accepted) >= 20, 60, what="callbacks before the migration")
    env = dict(os.environ, IDV_DATABASE_URL=pg.url("postgres"), IDV_MIGRATE_BATCH_BLOCKS="3")
    procs = [subprocess.Popen([idvtest.BIN, "migrate"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    wait_until(lambda: len(accepted) >= 60 or not th.is_alive(), 60,
               what="callbacks after the migration")
    stop.set()
    th.join(60)
    for p, out in zip(procs, outs):
        check_eq(p.returncode, 0, f"migrate: {out}")
    held_do(held_tx[2], held_tx[3])
    _, held_err = held.communicate("\\q\n", timeout=60)
    check_eq((held.returncode, held_err), (0, ""), "the session held across the swap")
    check_eq(pg.psql("SELECT string_agg(e.previous_status || '>' || e.status, ' '"
                     " ORDER BY t.transaction_id) FROM idv.transaction_events e"
                     " JOIN idv.transactions t ON t.id = e.tx WHERE t.transaction_id LIKE"
                     " 'held%'"),
             "initiated>passed initiated>expired initiated>passed initiated>expired",
             "its status events, before and after the swap")
    check_eq(pg.psql("SELECT string_agg(transaction_id || ' ' || passed || ' ' || instance, ','"
                     " ORDER BY transaction_id) FROM idv.callback_results"
                     " WHERE transaction_id LIKE 'held%'"), "held0 Y held,held2 Y held",
             "the first-results view reads the partitioned audit rows")
    out = max(outs, key=len)
    check("1 migration(s) applied now" in out, f"one run applied 0006: {outs}")
    check(any("0 migration(s) applied now" in o and "waiting" in o for o in outs),
          f"the other waited and found nothing to do: {outs}")
    for t in TABLES:
        check(re.search(rf"idv\.{t}: [\d,]+ of [\d,]+ rows to move", out), f"{t}: total\n{out}")
        check(re.search(rf"idv\.{t}: [\d,]+ rows moved in [\d.]+ s; swapped in, holding its"
                        rf" lock [\d.]+ ms", out), f"{t}: swap\n{out}")
        check_eq(pg.psql(f"SELECT relkind FROM pg_class WHERE oid = 'idv.{t}'::regclass"), "p",
                 f"{t} partitioned")
    check_eq(errors, [], "no callback failed")
    check(all(o == "accepted" for _, o in accepted), f"outcomes: {set(o for _, o in accepted)}")
    check_eq(pg.psql("SELECT count(*) FROM pg_class WHERE relname LIKE '%unpartitioned%'"
                     " OR relname LIKE '%\\_new'"), "0", "old tables and names gone")
    # Nothing lost or doubled: the old rows are there with their ids, and each
    # callback recorded during the migration once.
    n_live = len(accepted)
    for t in TABLES:
        old = pg.psql(f"SELECT count(*) || ' ' || sum(id) || ' ' || max(id) FROM idv.{t}"
                      f" WHERE id <= {before[t].split()[2]}")
        check_eq(old, before[t], f"{t}: the rows from before, ids kept")
    check_eq(pg.psql("SELECT count(*) FROM idv.callback_events WHERE instance = 'live'"),
             str(n_live), "one audit row per callback during the migration")
    check_eq(pg.psql("SELECT count(DISTINCT id) = count(*) FROM idv.callback_events"), "t",
             "ids unique")
    check_eq(pg.psql("SELECT count(*) FROM idv.transaction_events e JOIN idv.transactions t"
                     " ON t.id = e.tx WHERE t.transaction_id LIKE 'live%'"
                     " AND e.status = 'passed'"), str(n_live), "one status event each")
    got = consumer.read()
    check_eq(sorted(e[2] for e in got if e[3] == "passed" and e[2].startswith("live")),
             sorted(tx for tx, _ in accepted),
             "the consumer reads each event of the migration once")
    check_eq(consumer.seen, all_events(pg), "... and every event once overall")
    # Ids go on after the swap; privileges and append-only as before.
    pg.psql("INSERT INTO idv.callback_events (outcome, instance) VALUES ('malformed', 'after')")
    check_eq(pg.psql("SELECT id > (SELECT max(id) FROM idv.callback_events WHERE instance <>"
                     " 'after') FROM idv.callback_events WHERE instance = 'after'"), "t",
             "ids go on")
    for sql in ("DELETE FROM idv.callback_events", "TRUNCATE idv.transaction_events",
                "UPDATE idv.check_results SET passed = 'N'"):
        r = pg.try_psql(sql)
        check(r.returncode != 0 and "append-only" in r.stderr, f"{sql}: {r.stderr}")
    r = pg.try_psql("SELECT count(*) FROM idv.callback_events", user="idvapp")
    check("permission denied" in r.stderr, f"idvapp may not read the audit rows: {r.stderr}")
    check_eq(pg.psql("SELECT count(*) > 0 FROM idv.check_results", user="consumer"), "t",
             "idv_reader reads check_results")
    # The daemon runs on the result.
    d = ctx.daemon(pg)
    check_eq(d.register("after1", "bizafter", "after-token-0123456789")[0], 201, "register")
    st, body, _, _ = d.callback("after1", "N", "205", "after-token-0123456789")
    check_eq((st, body), (200, {"result": "accepted"}), "callback after the migration")


if __name__ == "__main__":
    sys.exit(idvtest.main(globals()))
