#!/usr/bin/env python3
"""A year of history (issue 17): the same paths timed on an empty database and
on one filled with COPY to 20 million callback_events and 10 million
transactions, side by side, with the EXPLAIN plans; or (--migration) the
in-place migration of an unpartitioned installation of 10 million
callback_events while callbacks keep coming.

Started by tests/bench/scale.sh (which builds the release binaries); standard
library only. Figures: median and p99 of each path, in milliseconds, measured
by the client (HTTP paths: one keep-alive connection, one request at a time;
SQL paths: psql's \\timing of each statement on one session). Both columns come
from the same run, the same cluster and the same settings.
"""
import argparse
import datetime
import hashlib
import http.client
import json
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import idvtest  # noqa: E402  (PgCluster, Daemon, TempDir)
from bench import cpu_ticks, machine  # noqa: E402
from test_partitions import apply_up_to, audit_queries  # noqa: E402

PG_BINDIR = "/usr/lib/postgresql/15/bin"
POINT_TARGET = 1.5  # a point path on the full database: at most this times the empty one


def log(msg):
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Fail(Exception):
    pass


# ---- the machine ----------------------------------------------------------------

def cpu_busy():
    """(busy, total, steal) jiffies of the whole machine, from /proc/stat
    (steal: time the hypervisor gave this machine's CPUs to someone else)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v), v[7]


# A side of the comparison measured while processes outside this run used
# more than OTHER_MAX of the machine is not compared: the point paths take a
# millisecond, and a busy neighbour doubles that (a 20 M run measured its
# full side at load 4 and read 5.8x where the quiet re-run reads 1.0x). Nor
# are two sides whose steal time (the hypervisor running another guest on
# this machine's CPUs; it grows with this run's own load, some 10 % at two
# busy CPUs on the VM this was written on) differs by more than STEAL_GAP.
OTHER_MAX = 0.10
STEAL_GAP = 0.10
ROUNDS = 5  # turns of the empty and the full side (see Scale.empty_then_full)


class Busy:
    """The share of the machine's CPU in use between start and stop; of it,
    the steal time and, given ours (a function giving the jiffies of this
    run's processes so far), the share of other processes."""

    def __init__(self, ours=None):
        self.ours = ours
        self.b0, self.t0, self.s0 = cpu_busy()
        self.o0 = ours() if ours else 0
        self.l0 = os.getloadavg()[0]

    def stop(self):
        b1, t1, s1 = cpu_busy()
        total = max(1, t1 - self.t0)
        r = {"busy": round((b1 - self.b0) / total, 3), "steal": round((s1 - self.s0) / total, 3),
             "load1_start": round(self.l0, 2), "load1_end": round(os.getloadavg()[0], 2)}
        if self.ours:
            mine = self.ours() - self.o0
            r["other"] = round(max(0, (b1 - self.b0) - mine - (s1 - self.s0)) / total, 3)
        return r


def pct(vals, p):
    """The p-th percentile (nearest rank) of vals."""
    s = sorted(vals)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))]


# ---- PostgreSQL helpers -----------------------------------------------------------

def psql_timed(pg, statements, user="postgres"):
    """Runs statements on one psql session with \\timing; returns the time of
    each (ms, as psql measured it: sent to answered)."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False, dir=pg.tmp.path) as f:
        f.write("\\timing on\n")
        for s in statements:
            f.write(s.rstrip().rstrip(";") + ";\n")
        path = f.name
    os.chmod(path, 0o644)
    r = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-o", "/dev/null", "-h",
                        pg.sock, "-p", str(pg.port), "-U", user, "-d", "postgres", "-f", path],
                       capture_output=True, text=True)
    os.unlink(path)
    if r.returncode != 0:
        raise Fail(f"psql: {r.stderr.strip()[:2000]}")
    times = [float(m.group(1)) for m in re.finditer(r"^Time: ([\d.]+) ms", r.stdout, re.M)]
    if len(times) != len(statements):
        raise Fail(f"psql timed {len(times)} of {len(statements)} statements: {r.stdout[:500]}")
    return times


def copy_in(pg, table, columns, rows, settings=""):
    """COPY rows (an iterator of tab-separated lines, no newline) into table
    through psql; returns the number of rows."""
    p = subprocess.Popen(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", pg.sock, "-p",
                          str(pg.port), "-U", "postgres", "-d", "postgres", "-c",
                          f"{settings} COPY {table} ({', '.join(columns)}) FROM STDIN"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, bufsize=1 << 20)
    n = 0
    buf = []
    for line in rows:
        buf.append(line)
        n += 1
        if len(buf) >= 20000:
            p.stdin.write("\n".join(buf) + "\n")
            buf = []
    if buf:
        p.stdin.write("\n".join(buf) + "\n")
    out, err = p.communicate()
    if p.returncode != 0:
        raise Fail(f"COPY {table}: {err.strip()[:2000]}")
    return n


def columns_of(pg, table):
    return pg.psql(f"SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute"
                   f" WHERE attrelid = '{table}'::regclass AND attnum > 0"
                   f" AND NOT attisdropped").split(",")


# ---- the fill ---------------------------------------------------------------------

class Fill:
    """A year and a month of history, in time order, written with COPY: n_tx
    transactions (90 % passed, 8 % not passed, 2 % expired without a
    callback), each with its callback (accepted) and Alibaba's retry
    (duplicate), a rejected callback where needed to reach n_ce callback
    events, two status events, and for one in ten a CheckResult and its done
    work item. Transaction ids and token digests are hashes (random order in
    their indexes, as in life). Event xids are below the cluster's current
    one, ascending with time, so that idv.events_after sees them."""

    def __init__(self, pg, n_tx, n_ce, months=13):
        self.pg, self.n_tx, self.n_ce = pg, n_tx, n_ce
        now = time.time()
        self.t0 = now - months * 30.44 * 86400
        self.span = now - 3600 - self.t0
        self.base_id = int(pg.psql("SELECT coalesce(max(id), 0) FROM idv.transactions"))
        self.xid_top = int(pg.psql("SELECT pg_current_xact_id()::text::bigint")) - 2
        self.extra_every = max(1, int(n_tx / max(1, n_ce - 2 * n_tx * 0.98))) \
            if n_ce > 2 * n_tx * 0.98 else 0

    def at(self, i, plus=0.0):
        return self.t0 + self.span * i / self.n_tx + plus

    _days = {}

    @classmethod
    def ts(cls, t):
        """t (epoch seconds) as COPY text, UTC; the date part cached per day
        (formatting ten million timestamps with datetime costs minutes)."""
        s = int(t)
        d, r = divmod(s, 86400)
        day = cls._days.get(d)
        if day is None:
            day = cls._days[d] = time.strftime("%Y-%m-%d", time.gmtime(d * 86400))
        h, r = divmod(r, 3600)
        m, sec = divmod(r, 60)
        return f"{day} {h:02d}:{m:02d}:{sec:02d}.{int((t - s) * 1e6):06d}+00"

    def status(self, i):
        r = i % 50
        return "expired" if r == 7 else ("not_passed" if r % 12 == 5 else "passed")

    def txid(self, i):
        return "hks" + hashlib.blake2b(b"%d" % i, digest_size=12).hexdigest()

    def xid(self, i):
        return 3 + (self.xid_top - 3) * i // self.n_tx

    TX_COLUMNS = ["transaction_id", "merchant_biz_id", "callback_token_sha256", "status",
                  "origin", "initiated_at", "expires_at", "passed", "sub_code", "completed_at",
                  "confirmed", "updated_at", "callback_passed", "callback_sub_code",
                  "callback_received_at", "callback_instance"]

    def transactions(self, cols):
        pick = [self.TX_COLUMNS.index(c) for c in cols]
        for i in range(self.n_tx):
            st = self.status(i)
            t = self.at(i)
            cb = st != "expired"
            passed = "Y" if st == "passed" else ("N" if cb else "\\N")
            sub = ("200" if st == "passed" else "205") if cb else "\\N"
            t60 = self.ts(t + 60)
            row = (self.txid(i), f"b{i}", "\\\\x" + hashlib.sha256(b"scale-%d" % i).hexdigest(),
                   st, "registered", self.ts(t), self.ts(t + 1800), passed, sub,
                   t60 if cb else "\\N", "f", t60, passed, sub, t60 if cb else "\\N",
                   "fill" if cb else "\\N")
            yield "\t".join([row[k] for k in pick])

    def tx_columns(self, table_cols):
        return [c for c in self.TX_COLUMNS if c in table_cols]

    def callback_events(self):
        for i in range(self.n_tx):
            st, t, tx = self.status(i), self.at(i), self.txid(i)
            ip = f"198.51.{(i >> 8) & 255}.{i & 255}"
            if st != "expired":
                p, s = ("Y", "200") if st == "passed" else ("N", "205")
                yield f"{self.ts(t + 60)}\taccepted\t{tx}\t{p}\t{s}\t{ip}\ti{i % 3}"
                yield f"{self.ts(t + 90)}\tduplicate\t{tx}\t{p}\t{s}\t{ip}\ti{(i + 1) % 3}"
            if self.extra_every and i % self.extra_every == 0:
                yield f"{self.ts(t + 120)}\trejected\t{tx}\tY\t200\t203.0.113.{i % 250}\ti0"

    def transaction_events(self):
        for i in range(self.n_tx):
            st, t, tx = self.status(i), self.at(i), self.txid(i)
            x = self.xid(i)
            yield (f"{x}\t{self.ts(t)}\t{self.base_id + i + 1}\t{tx}\tb{i}\tinitiated\t\\N\t\\N"
                   f"\t\\N\tf")
            p, s = ("Y", "200") if st == "passed" else (("N", "205") if st != "expired"
                                                        else ("\\N", "\\N"))
            yield (f"{x}\t{self.ts(t + 60)}\t{self.base_id + i + 1}\t{tx}\tb{i}\t{st}\tinitiated"
                   f"\t{p}\t{s}\tf")

    def check_results(self):
        for i in range(0, self.n_tx, 10):
            st = self.status(i)
            if st == "expired":
                continue
            p, s = ("Y", "200") if st == "passed" else ("N", "205")
            yield (f"{self.base_id + i + 1}\t{self.txid(i)}\t{self.ts(self.at(i, 120))}\t"
                   f"req-{i}\t{p}\t{s}\t{{\"FaceAttack\": \"N\"}}\tfill")

    def work_items(self):
        for i in range(0, self.n_tx, 10):
            if self.status(i) == "expired":
                continue
            t = self.at(i, 65)
            yield (f"confirm\t{self.base_id + i + 1}\t{self.txid(i)}\tb{i}\t{self.ts(t)}\t"
                   f"{self.ts(t)}\t1\t{self.ts(t + 55)}\tfill\tconfirmed")

    def run(self, with_check_results=True):
        pg, fast = self.pg, "SET session_replication_role = replica; SET synchronous_commit = off;"
        counts = {}
        if pg.psql("SELECT to_regclass('idv.history_tables') IS NOT NULL") == "t":
            # The partitions the year's maintain runs would have made: by
            # month for the time-partitioned tables; for transaction_events, a
            # month of the xids of this fill each, in place of the one
            # partition that migrate made for every xid before its own.
            pg.psql(f"SELECT idv.history_make_partitions(table_name, to_timestamp({self.t0}),"
                    f" now()) FROM idv.history_tables", user="idvapp")
            first = pg.rows("SELECT partition_name, xid_to FROM"
                            " idv.history_partitions('transaction_events')"
                            " WHERE xid_from = '0'")[0]
            if pg.psql(f"SELECT count(*) FROM idv.{first[0]}") != "0":
                raise Fail(f"{first[0]} is not empty")
            pg.psql(f"DROP TABLE idv.{first[0]}")
            bounds = [0]
            m = datetime.datetime.fromtimestamp(self.t0, datetime.timezone.utc).replace(
                day=1, hour=0, minute=0, second=0, microsecond=0)
            while True:
                m = (m + datetime.timedelta(days=32)).replace(day=1)
                i = int((m.timestamp() - self.t0) / self.span * self.n_tx)
                if i >= self.n_tx:
                    break
                bounds.append(self.xid(i))
            bounds.append(int(first[1]))
            pg.psql(" ".join(f"SELECT idv.history_add_partition('transaction_events', '{a}',"
                             f" '{b}');" for a, b in zip(bounds, bounds[1:]) if a < b))
        t = time.monotonic()
        cols = self.tx_columns(columns_of(pg, "idv.transactions"))
        # Bulk-load practice: the indexes of idv.transactions (random keys:
        # ids, token digests) are dropped and built again after the COPY, by
        # sorting; the same definitions, names and constraints.
        idx = pg.rows("SELECT c.relname, pg_get_indexdef(i.indexrelid), coalesce(x.conname, ''),"
                      " coalesce(pg_get_constraintdef(x.oid), '')"
                      " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                      " LEFT JOIN pg_constraint x ON x.conindid = i.indexrelid"
                      "  AND x.conrelid = i.indrelid"
                      " WHERE i.indrelid = 'idv.transactions'::regclass")
        referenced = set(pg.psql("SELECT string_agg(conindid::regclass::text, ',') FROM"
                                 " pg_constraint WHERE contype = 'f' AND confrelid ="
                                 " 'idv.transactions'::regclass").split(","))
        rebuild = [r for r in idx if f"idv.{r[0]}" not in referenced]
        for name, _, con, _ in rebuild:
            pg.psql(f"ALTER TABLE idv.transactions DROP CONSTRAINT {con}" if con
                    else f"DROP INDEX idv.{name}")
        counts["transactions"] = copy_in(pg, "idv.transactions", cols, self.transactions(cols),
                                         fast)
        t_idx = time.monotonic()
        for name, idef, con, condef in rebuild:
            pg.psql(f"SET maintenance_work_mem = '1GB'; ALTER TABLE idv.transactions ADD"
                    f" CONSTRAINT {con} {condef}" if con
                    else f"SET maintenance_work_mem = '1GB'; {idef}")
        log(f"  transactions: {counts['transactions']:,} in {time.monotonic() - t:.0f} s"
            f" ({time.monotonic() - t_idx:.0f} s of it building {len(rebuild)} indexes)")
        first = int(pg.psql(f"SELECT min(id) FROM idv.transactions WHERE transaction_id ="
                            f" '{self.txid(0)}'"))
        if first != self.base_id + 1:
            raise Fail(f"transaction ids start at {first}, not {self.base_id + 1}")
        t = time.monotonic()
        counts["callback_events"] = copy_in(
            pg, "idv.callback_events", ["received_at", "outcome", "transaction_id", "passed",
                                        "sub_code", "client_ip", "instance"],
            self.callback_events(), fast)
        log(f"  callback_events: {counts['callback_events']:,} in {time.monotonic() - t:.0f} s")
        t = time.monotonic()
        counts["transaction_events"] = copy_in(
            pg, "idv.transaction_events", ["xid", "at", "tx", "transaction_id", "merchant_biz_id",
                                           "status", "previous_status", "passed", "sub_code",
                                           "confirmed"],
            self.transaction_events(), fast)
        log(f"  transaction_events: {counts['transaction_events']:,} in"
            f" {time.monotonic() - t:.0f} s")
        if with_check_results:
            t = time.monotonic()
            counts["check_results"] = copy_in(
                pg, "idv.check_results", ["tx", "transaction_id", "checked_at", "request_id",
                                          "passed", "sub_code", "ext_face_info", "instance"],
                self.check_results(), fast)
            counts["work_queue"] = copy_in(
                pg, "idv.work_queue", ["kind", "tx", "transaction_id", "merchant_biz_id",
                                       "created_at", "not_before", "attempts", "done_at",
                                       "done_by", "outcome"], self.work_items(), fast)
            log(f"  check_results and done work items: {counts['check_results']:,} and"
                f" {counts['work_queue']:,} in {time.monotonic() - t:.0f} s")
        return counts


# ---- what is measured ---------------------------------------------------------------

class Scale:
    def __init__(self, a):
        self.a = a
        self.results = {"machine": machine(), "command": " ".join(sys.argv),
                        "started": datetime.datetime.now().isoformat(timespec="seconds")}
        self.tmp = idvtest.TempDir("idv-scale-") if not a.dir else None
        if a.dir:
            os.makedirs(a.dir, exist_ok=True)
            os.chmod(a.dir, 0o755)
            self.tmp = idvtest.TempDir.__new__(idvtest.TempDir)
            self.tmp.path = tempfile.mkdtemp(prefix="idv-scale-", dir=a.dir)
            os.chmod(self.tmp.path, 0o755)
        self.pg = self.daemon = None
        self.empty = self.full = None  # (cluster, daemon) of each side
        self.next_fresh = 0
        self.tag = "r" + time.strftime("%H%M%S")  # prefixes of this run's rows (--reuse)

    def start_pg(self, schema=True, name="pg"):
        settings = {
            "shared_buffers": self.a.shared_buffers,
            "max_connections": "100",
            "fsync": "on",
            "synchronous_commit": "on",
            "max_wal_size": "16GB",
            "checkpoint_timeout": "30min",
            "autovacuum": "off",  # VACUUM (ANALYZE) after each fill instead
            "maintenance_work_mem": "512MB",
            "log_min_messages": "warning",
        }
        self.pg = idvtest.PgCluster(self.tmp, name, settings=settings).initdb()
        self.advance_xids(self.a.xids)
        self.pg.start()
        if schema:
            log("migrate: " + self.pg.setup_schema().strip().splitlines()[-1])
        self.results["postgres"] = {k: settings[k] for k in
                                    ("shared_buffers", "fsync", "synchronous_commit",
                                     "autovacuum")}

    def advance_xids(self, n):
        """Moves the new cluster's transaction id counter to n (pg_resetwal
        -x, with the commit-log segment it needs): the history written by
        COPY carries xids below it, spread over the year like real ones, and
        idv.events_after sees them (it returns events below the oldest running
        xid)."""
        seg = os.path.join(self.pg.data, "pg_xact", "%04X" % (n // (32768 * 32)))
        with open(seg, "wb") as f:
            f.write(b"\0" * (8192 * 32))
        shutil.chown(seg, "postgres", "postgres")
        r = subprocess.run(idvtest._as_postgres([os.path.join(PG_BINDIR, "pg_resetwal"), "-x",
                                                 str(n), "-D", self.pg.data]),
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise Fail(f"pg_resetwal: {r.stderr.strip()}")

    def roles(self):
        self.pg.psql("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname ="
                     " 'idvapp') THEN CREATE ROLE idvapp LOGIN IN ROLE idv_daemon; END IF; END $$;"
                     " CREATE ROLE auditor LOGIN IN ROLE idv_reader;"
                     " CREATE ROLE consumer LOGIN IN ROLE idv_reader")

    def vacuum(self):
        t = time.monotonic()
        self.pg.psql("VACUUM (ANALYZE)")
        self.pg.psql("CHECKPOINT")
        log(f"VACUUM (ANALYZE) and CHECKPOINT: {time.monotonic() - t:.0f} s")

    def register_fresh(self, n, prefix="fresh"):
        """n new transactions with known tokens (status initiated, expiring
        in an hour), registered as the admin API would."""
        first = self.next_fresh
        self.next_fresh += n
        prefix = prefix + self.tag
        self.pg.psql(
            "INSERT INTO idv.transactions (transaction_id, merchant_biz_id, callback_token_sha256,"
            " status, origin, expires_at)"
            f" SELECT '{prefix}' || g, 'fb' || g,"
            f" sha256(convert_to('scale-token-{self.tag}-' || lpad(g::text, 12, '0'), 'UTF8')),"
            f" 'initiated', 'registered', now() + interval '1 hour'"
            f" FROM generate_series({first}, {first + n - 1}) g")
        return [(f"{prefix}{g}", f"scale-token-{self.tag}-{g:012d}")
                for g in range(first, first + n)]

    def http_times(self, port, paths, want):
        """Times each GET on one keep-alive connection; checks each answer."""
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        out = []
        hdr = {"Authorization": f"Bearer {idvtest.ADMIN_TOKEN}"} if port == self.daemon.admin_port \
            else {}
        for p in paths:
            t = time.perf_counter()
            c.request("GET", p, headers=hdr)
            r = c.getresponse()
            body = r.read()
            out.append((time.perf_counter() - t) * 1000)
            if not want(r.status, body):
                raise Fail(f"GET {p.split('callbackToken')[0]}: {r.status} {body[:200]!r}")
        c.close()
        return out

    def measure(self, label, n=None, audit_reps=2):
        """Every path, timed (n samples of the HTTP paths, a quarter as many of
        the SQL ones, audit_reps of each audit query); returns {path: [ms]}."""
        pg, d, n = self.pg, self.daemon, n or self.a.samples
        busy = Busy(self.own_ticks)
        m = {}
        # Status GET of transactions picked at random among all of them.
        big = float(pg.psql("SELECT reltuples FROM pg_class"
                            " WHERE oid = 'idv.transactions'::regclass")) > 100000
        ids = [r[0] for r in pg.rows(
            "SELECT transaction_id FROM idv.transactions"
            + (" TABLESAMPLE SYSTEM (1)" if big else "")
            + f" WHERE transaction_id IS NOT NULL ORDER BY random() LIMIT {n}")]
        m["status GET, any of the year"] = self.http_times(
            d.admin_port, [f"/v1/transactions/{t}" for t in ids], lambda s, b: s == 200)
        # What status GETs mostly ask for: the transactions of the day.
        recent = [r[0] for r in pg.rows(
            "SELECT transaction_id FROM idv.transactions WHERE initiated_at > now() - interval"
            f" '1 day' AND transaction_id IS NOT NULL ORDER BY random() LIMIT {n}")]
        m["status GET, of the last day"] = self.http_times(
            d.admin_port, [f"/v1/transactions/{t}" for t in recent], lambda s, b: s == 200)
        # Callbacks of fresh transactions, then the same again.
        fresh = self.register_fresh(n)
        urls = [f"/idv/callback?transactionId={t}&passed=Y&subCode=200&callbackToken={k}"
                for t, k in fresh]
        m["callback accept"] = self.http_times(d.public_port, urls,
                                               lambda s, b: b == b'{"result":"accepted"}')
        m["callback replay"] = self.http_times(d.public_port, urls,
                                               lambda s, b: b == b'{"result":"duplicate"}')
        # The sweeper and the claim, as the daemon calls them. Items to claim
        # are made ready first (the claim leases them for an hour).
        k = max(50, n // 4)
        m["sweeper pass"] = psql_timed(pg, ["SELECT idv.sweep('5 minutes', '10 minutes', false)"]
                                       * k, user="idvapp")
        items = self.register_fresh(k * 10, prefix=f"claim{label}")
        pg.psql("INSERT INTO idv.work_queue (kind, tx, transaction_id, merchant_biz_id)"
                " SELECT 'confirm', id, transaction_id, merchant_biz_id FROM idv.transactions"
                f" WHERE transaction_id LIKE 'claim{label}{self.tag}%'")
        # Each claim is followed (untimed) by the completion of what it
        # claimed, as the daemon completes its items: leased items left in the
        # queue would make every later claim skip over them.
        done = ("UPDATE idv.work_queue SET done_at = now(), done_by = 'scale', outcome = 'scale'"
                " WHERE leased_by = 'scale' AND done_at IS NULL")
        m["confirmation claim"] = psql_timed(
            pg, ["SELECT count(*) FROM idv.claim_work('scale', 10, '1 hour')", done] * k,
            user="idvapp")[0::2]
        del items
        # events_after: a page of 1000 from positions in the last weeks, and
        # the poll of a consumer that is caught up.
        pos = pg.rows("SELECT xid, id FROM (SELECT xid, id FROM idv.transaction_events"
                      " WHERE at > now() - interval '30 days' ORDER BY xid DESC, id DESC"
                      " OFFSET 1000 LIMIT 200000) x ORDER BY random()"
                      f" LIMIT {k}") or [("0", "0")]
        if len(pos) < k:
            pos = (pos * (k // max(1, len(pos)) + 1))[:k]
        m["events_after page of 1000"] = psql_timed(
            pg, [f"SELECT count(*) FROM idv.events_after('{x}'::xid8, {i}, 1000)" for x, i in pos],
            user="consumer")
        head = pg.psql("SELECT xid || ' ' || id FROM idv.transaction_events"
                       " ORDER BY xid DESC, id DESC LIMIT 1").split()
        m["events_after caught up"] = psql_timed(
            pg, [f"SELECT count(*) FROM idv.events_after('{head[0]}'::xid8, {head[1]}, 1000)"]
            * k, user="consumer")
        # The audit queries, as a member of idv_reader.
        tx = random.choice(ids)
        for num, title, stmt in audit_queries(tx):
            m[f"audit {num}: {title}"] = psql_timed(pg, [stmt] * audit_reps, user="auditor")
        self.results.setdefault("machine_busy", {})[label] = busy.stop()
        return m

    def plans(self, label):
        """EXPLAIN (ANALYZE, BUFFERS) of the audit queries and the SQL point
        paths; the statements inside functions through auto_explain."""
        pg = self.pg
        out = {}
        tx = pg.psql("SELECT transaction_id FROM idv.transactions WHERE transaction_id LIKE"
                     " 'hks%' OR transaction_id LIKE 'fresh%' ORDER BY id DESC LIMIT 1")
        for num, title, stmt in audit_queries(tx):
            out[f"audit {num}: {title}"] = pg.psql("EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) "
                                                   + stmt)
        head = pg.psql("SELECT xid || ' ' || id FROM idv.transaction_events"
                       " ORDER BY xid DESC, id DESC OFFSET (SELECT least(1000, count(*) / 2)"
                       " FROM idv.transaction_events) LIMIT 1").split()
        out["status GET"] = pg.psql(
            "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) SELECT * FROM idv.transaction_status"
            f" WHERE transaction_id = '{tx}'")
        out["events_after page of 1000"] = pg.psql(
            "EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) SELECT * FROM idv.events_after("
            f"'{head[0]}'::xid8, {head[1]}, 1000)")
        fresh = self.register_fresh(2, prefix=f"plan{label}")
        dg = [hashlib.sha256(k.encode()).hexdigest() for _, k in fresh]
        batch = (f"ARRAY['{fresh[0][0]}','{fresh[1][0]}'], ARRAY['{dg[0]}','{dg[1]}'],"
                 " ARRAY['Y','Y'], ARRAY['200','200'], ARRAY['192.0.2.1','192.0.2.2'],"
                 " 'plans', true")
        r = pg.try_psql("LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;"
                        " SET auto_explain.log_nested_statements = on;"
                        " SET auto_explain.log_analyze = on; SET auto_explain.log_buffers = on;"
                        " SET auto_explain.log_timing = off;"
                        " SET auto_explain.log_level = notice; SET client_min_messages = notice;"
                        f" SELECT * FROM idv.record_callbacks({batch});"
                        f" SELECT * FROM idv.record_callbacks({batch});"
                        " SELECT idv.sweep('5 minutes', '10 minutes', false);"
                        " SELECT * FROM idv.claim_work('plans', 10, '1 hour')")
        out["inside the functions (auto_explain: accept, replay, sweep, claim)"] = r.stderr
        return out

    # ---- modes ------------------------------------------------------------------

    def start_daemon(self):
        self.daemon = idvtest.Daemon(self.tmp, self.pg, name="scale" + self.tag, db_pool_size=4,
                                     log_level="warn", db_timeout_ms=10000)
        self.daemon.start()

    def adopt(self, data):
        """The cluster a run with --keep left in data (stopped): started again
        (with its own port and socket directory)."""
        c = idvtest.PgCluster.__new__(idvtest.PgCluster)
        c.tmp, c.data, c.listeners = self.tmp, data, []
        c.dir = os.path.dirname(data)
        c.log = os.path.join(c.dir, "postgres.log")
        auto = os.path.join(data, "postgresql.auto.conf")
        with open(auto) as f:
            conf = dict(re.findall(r"^(\w+) = (.*)$", f.read(), re.M))
        if conf.get("shared_buffers", "").strip("'") != self.a.shared_buffers:
            # This run's --shared-buffers, on both sides (the last line wins).
            with open(auto, "a") as f:
                f.write(f"shared_buffers = '{self.a.shared_buffers}'\n")
            conf["shared_buffers"] = self.a.shared_buffers
        c.port = int(conf["port"])
        c.sock = conf["unix_socket_directories"].strip("'")
        c.settings = conf
        c.start()
        self.pg = c

    def own_ticks(self):
        """Jiffies used so far by this run: this process and the children it
        waited for (psql, the load generator), PostgreSQL (the postmaster with
        the backends it reaped, and the live ones) and the daemon."""
        ru = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        t = sum(r.ru_utime + r.ru_stime for r in ru) * os.sysconf("SC_CLK_TCK")
        if self.pg:
            try:
                pm = self.pg.postmaster_pid()
                t += cpu_ticks(pm, reaped=True) + sum(cpu_ticks(c) for c in self.pg._children())
            except OSError:
                pass
        if self.daemon:
            t += cpu_ticks(self.daemon.proc.pid)
        return t

    def empty_then_full(self):
        """The full database (filled now, or the one a --keep run left) and an
        empty one beside it, each with its daemon, measured in turns: ROUNDS
        rounds, each a fifth of the samples of every path on one side then on
        the other (the order alternating), so that both sides see the same
        machine: a neighbour's burst or the hypervisor's steal time falls on
        both, not on the side that happened to be measured then."""
        a = self.a
        if a.reuse:
            # The full database of an earlier run (--keep): no fill this time.
            self.adopt(a.reuse)
            self.start_daemon()
            self.results["fill"] = {"reused": a.reuse}
            log(f"full database: {a.reuse} (filled by an earlier run)")
        else:
            self.start_pg()
            self.roles()
            log(f"filling: {a.transactions:,} transactions, {a.callback_events:,} callback"
                " events (COPY)")
            busy = Busy()
            t = time.monotonic()
            counts = Fill(self.pg, a.transactions, a.callback_events).run()
            fill_s = time.monotonic() - t
            t_m = time.monotonic()
            r = subprocess.run([a.bin, "maintain"], capture_output=True, text=True,
                               env=dict(os.environ, IDV_DATABASE_URL=self.pg.url("idvapp")))
            if r.returncode != 0:
                raise Fail(f"maintain: {r.stdout}{r.stderr}")
            self.results["maintain_after_fill"] = {"seconds": round(time.monotonic() - t_m, 1),
                                                   "output": r.stdout}
            log(f"maintain after the fill: {time.monotonic() - t_m:.0f} s; "
                + "; ".join(x for x in r.stdout.splitlines() if "partitions, from" in x))
            self.vacuum()
            self.results["fill"] = {"seconds": round(fill_s), "rows": counts,
                                    "with_vacuum_seconds": round(time.monotonic() - t),
                                    "machine": busy.stop()}
            log(f"filled in {fill_s:.0f} s ({time.monotonic() - t:.0f} s with VACUUM)")
            self.start_daemon()
        full = self.full = (self.pg, self.daemon)
        self.results["rows"] = self.row_counts()
        self.results["sizes"] = self.sizes()
        self.results["transactions_size"] = self.pg.psql(
            "SELECT pg_size_pretty(pg_total_relation_size('idv.transactions'))")
        # The empty database beside it.
        self.pg = self.daemon = None
        self.start_pg(name="pg-empty")
        self.roles()
        self.start_daemon()
        self.empty = (self.pg, self.daemon)
        self.register_fresh(a.samples, prefix="base")
        self.vacuum()
        sides = {"empty": self.empty, "full": full}
        times = {"empty": {}, "full": {}}
        log(f"measuring the empty and the full database in turns ({ROUNDS} rounds)")
        for label, side in sides.items():
            self.pg, self.daemon = side
            self.measure(f"{label}-warmup", n=max(50, a.samples // 10))
        for r in range(ROUNDS):
            order = ["empty", "full"] if r % 2 == 0 else ["full", "empty"]
            for label in order:
                self.pg, self.daemon = sides[label]
                if label == "empty":
                    # Each round registers a few thousand transactions: with
                    # statistics of the first hundred, plans (the daemon's
                    # generic ones too) would scan tables that are no longer
                    # tiny, and the empty side would look slow.
                    self.pg.psql("ANALYZE")
                m = self.measure(f"{label}-r{r + 1}", n=max(50, a.samples // ROUNDS),
                                 audit_reps=max(2, a.audit_samples // ROUNDS))
                for k, v in m.items():
                    times[label].setdefault(k, []).extend(v)
        plans = {}
        for label, side in sides.items():
            self.pg, self.daemon = side
            plans[label] = self.plans(label)
        self.pg, self.daemon = full
        self.report(times["empty"], times["full"], plans["empty"], plans["full"])
        if a.keep:
            log(f"kept: {self.pg.data} (--reuse it to measure again without a fill)")

    def sizes(self):
        """Per history table: partitions, size with indexes, and bytes per
        row (table and indexes: what sizing a retention needs)."""
        return self.pg.rows(
            "SELECT h.table_name, count(*), pg_size_pretty(sum(pg_total_relation_size("
            "('idv.' || p.partition_name)::regclass))), round(sum(pg_total_relation_size("
            "('idv.' || p.partition_name)::regclass)) / greatest(1, (SELECT sum(c.reltuples)"
            " FROM pg_class c JOIN idv.history_partitions(h.table_name) q"
            " ON c.oid = ('idv.' || q.partition_name)::regclass)))"
            " FROM idv.history_tables h, idv.history_partitions(h.table_name) p"
            " GROUP BY 1 ORDER BY 1")

    def row_counts(self):
        return dict(self.pg.rows(
            "SELECT 'transactions', count(*) FROM idv.transactions UNION ALL"
            " SELECT 'callback_events', count(*) FROM idv.callback_events UNION ALL"
            " SELECT 'transaction_events', count(*) FROM idv.transaction_events UNION ALL"
            " SELECT 'check_results', count(*) FROM idv.check_results UNION ALL"
            " SELECT 'work_queue', count(*) FROM idv.work_queue"))

    def report(self, empty, full, empty_plans, full_plans):
        rows = []
        # Per side: the rounds' shares averaged, the load's range.
        per_side = {}
        for k, v in self.results["machine_busy"].items():
            if "warmup" not in k:
                per_side.setdefault(k.split("-r")[0], []).append(v)
        mb = self.results["machine_busy"] = {
            side: {"busy": round(statistics.mean(x["busy"] for x in vs), 3),
                   "other": round(statistics.mean(x["other"] for x in vs), 3),
                   "steal": round(statistics.mean(x["steal"] for x in vs), 3),
                   "load1_start": min(x["load1_start"] for x in vs),
                   "load1_end": max(x["load1_end"] for x in vs), "rounds": len(vs)}
            for side, vs in per_side.items()}
        noisy = {k: v["other"] for k, v in mb.items() if v.get("other", 0) > OTHER_MAX}
        steals = [v.get("steal", 0) for v in mb.values()]
        if steals and max(steals) - min(steals) > STEAL_GAP:
            noisy.update({f"{k} steal": v.get("steal", 0) for k, v in mb.items()})
        self.results["comparable"] = not noisy
        for k in empty:
            e, f = empty[k], full[k]
            em, fm = statistics.median(e), statistics.median(f)
            point = not k.startswith("audit")
            ratio = fm / em if em > 0 else float("inf")
            rows.append({"path": k, "samples": len(f), "empty_median": em, "empty_p99": pct(e, 99),
                         "full_median": fm, "full_p99": pct(f, 99), "ratio": ratio,
                         "target": f"<= {POINT_TARGET}x" if point else "",
                         "pass": (ratio <= POINT_TARGET) if point and not noisy else None})
        self.results["paths"] = rows
        pruning = {}
        for k, plan in full_plans.items():
            parts = sorted(set(re.findall(r" on ((?:callback_events|transaction_events|"
                                          r"check_results)_(?:p\d{8}|pmin|x\d+|default))\b", plan)))
            removed = re.findall(r"Subplans Removed: (\d+)", plan)
            pruning[k] = {"partitions_read": parts, "subplans_removed": removed,
                          "seq_scans": sorted(set(re.findall(r"Seq Scan on (\S+)", plan)))}
        self.results["pruning_full"] = pruning
        self.results["plans"] = {"empty": empty_plans, "full": full_plans}
        lines = [
            "rows (full): " + ", ".join(f"{k} {int(v):,}" for k, v in
                                        self.results["rows"].items()),
            (f"fill: {self.results['fill']['seconds']} s with COPY"
             f" ({self.results['fill']['with_vacuum_seconds']} s with VACUUM (ANALYZE));"
             f" machine busy {self.results['fill']['machine']['busy']:.0%}"
             if "seconds" in self.results["fill"]
             else f"fill: reused {self.results['fill']['reused']}"),
            f"size: idv.transactions {self.results['transactions_size']}, history "
            + ", ".join(f"{r[0]} {r[2]} in {r[1]} partitions ({r[3]} bytes a row with its"
                        " indexes)" for r in self.results["sizes"]),
            "machine busy while measuring: " + ", ".join(
                f"{k} {v['busy']:.0%}, of it other processes {v['other']:.0%}"
                f" and steal {v['steal']:.0%} (load {v['load1_start']}-{v['load1_end']},"
                f" {v['rounds']} rounds in turns)"
                for k, v in self.results["machine_busy"].items()),
            ("" if not noisy else
             "NOT COMPARED: other processes used more than"
             f" {OTHER_MAX:.0%} of the machine, or the steal time of the two sides differed by"
             f" more than {STEAL_GAP:.0%}, while measuring "
             + ", ".join(f"{k} ({v:.0%})" for k, v in noisy.items())
             + "; the ratios below are printed, not judged: measure again on a quiet machine"
             " (--reuse the kept cluster)"),
            "",
            "| path | samples | empty median ms | empty p99 ms | full median ms | full p99 ms"
            " | full/empty | target |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for r in rows:
            res = ("" if not r["target"] else " NOT COMPARED" if r["pass"] is None
                   else " PASS" if r["pass"] else " MISS")
            lines.append(f"| {r['path']} | {r['samples']} | {r['empty_median']:.3f} |"
                         f" {r['empty_p99']:.3f} | {r['full_median']:.3f} | {r['full_p99']:.3f}"
                         f" | {r['ratio']:.2f}x | {r['target']}{res} |")
        lines += ["", "partitions read on the full database (EXPLAIN ANALYZE):"]
        for k, v in pruning.items():
            if k.startswith("inside"):
                continue
            lines.append(f"- {k}: {len(v['partitions_read'])} partition(s)"
                         f" {', '.join(v['partitions_read']) if len(v['partitions_read']) <= 3 else ''}"
                         f"{'; subplans removed ' + '/'.join(v['subplans_removed']) if v['subplans_removed'] else ''}"
                         f"{'; seq scans ' + ', '.join(v['seq_scans']) if v['seq_scans'] else ''}")
        text = "\n".join(lines)
        print(text, flush=True)
        self.write(text)

    def write(self, text):
        os.makedirs(self.a.results_dir, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = os.path.join(self.a.results_dir, f"scale-{stamp}")
        with open(base + ".json", "w") as f:
            json.dump(self.results, f, indent=1, default=str)
        with open(base + ".txt", "w") as f:
            f.write(text + "\n\n")
            for side in ("empty", "full"):
                for k, plan in self.results.get("plans", {}).get(side, {}).items():
                    f.write(f"==== {side}: {k}\n{plan}\n\n")
            if "migration_output" in self.results:
                f.write("==== migrate output\n" + self.results["migration_output"] + "\n")
        log(f"wrote {base}.json and {base}.txt")

    def migration(self):
        """An installation from before sql/0006 (its daemon: --old-bin) with
        a.callback_events rows, callbacks at a fixed rate through that daemon
        all along, then `migrate` of this build: its lock times, the
        callbacks' latency and answers meanwhile, and nothing lost."""
        a = self.a
        self.start_pg(schema=False)
        apply_up_to(self.pg, 5)
        self.roles()
        n_tx = a.callback_events // 2
        log(f"filling the unpartitioned schema: {n_tx:,} transactions,"
            f" {a.callback_events:,} callback events (COPY)")
        t = time.monotonic()
        counts = Fill(self.pg, n_tx, a.callback_events).run()
        self.vacuum()
        self.results["fill"] = {"seconds": round(time.monotonic() - t), "rows": counts}
        rate, seconds, base_s = a.rate, a.load_seconds, 30
        fresh = self.register_fresh(int(rate * (seconds + base_s) * 1.1) + 10, prefix="mig")
        urls, base_urls = (os.path.join(self.tmp.path, n) for n in ("urls", "base_urls"))
        cut = int(rate * base_s * 1.05) + 5
        for path, part in ((base_urls, fresh[:cut]), (urls, fresh[cut:])):
            with open(path, "w") as f:
                for tx, tok in part:
                    f.write(f"/idv/callback?transactionId={tx}&passed=Y&subCode=200"
                            f"&callbackToken={tok}\n")
        idvtest.BIN = a.old_bin
        self.daemon = idvtest.Daemon(self.tmp, self.pg, name="old", db_pool_size=4,
                                     log_level="warn", db_timeout_ms=5000)
        self.daemon.start()
        idvtest.BIN = a.bin
        before = self.row_counts()
        # The same load without a migration first: what this machine gives.
        log(f"callbacks at {rate}/s for {base_s} s, no migration (baseline)")
        b = subprocess.run([a.loadgen, "--port", str(self.daemon.public_port), "--urls",
                            base_urls, "--rate", str(rate), "--duration", str(base_s), "--once",
                            "--connections", "16"], capture_output=True, text=True)
        baseline = json.loads(b.stdout)
        self.results["baseline_load"] = baseline
        log(f"callbacks at {rate}/s for {seconds} s through the daemon of the previous version;"
            " migrate starts after 10 s")
        lg = subprocess.Popen([a.loadgen, "--port", str(self.daemon.public_port), "--urls", urls,
                               "--rate", str(rate), "--duration", str(seconds), "--once",
                               "--connections", "16"], stdout=subprocess.PIPE, text=True)
        time.sleep(10)
        busy = Busy()
        t = time.monotonic()
        mig = subprocess.run([a.bin, "migrate"],
                             env=dict(os.environ, IDV_DATABASE_URL=self.pg.url("postgres")),
                             capture_output=True, text=True)
        mig_s = time.monotonic() - t
        self.results["migration_output"] = mig.stdout + mig.stderr
        print(mig.stdout + mig.stderr, flush=True)
        if mig.returncode != 0:
            raise Fail("migrate failed")
        self.results["machine_busy"] = {"migration": busy.stop()}
        lg_out, _ = lg.communicate(timeout=seconds + 120)
        load = json.loads(lg_out)
        self.results["load"] = load
        if lg.returncode != 0:
            raise Fail(f"loadgen: {lg_out}")
        after = self.row_counts()
        self.pg.psql("VACUUM (ANALYZE) idv.callback_events, idv.transaction_events,"
                     " idv.check_results")
        sizes = self.results["sizes"] = self.sizes()
        answered = load.get("result", {})
        accepted = answered.get("accepted", 0) + baseline.get("result", {}).get("accepted", 0)
        live = int(self.pg.psql("SELECT count(*) FROM idv.callback_events"
                                " WHERE transaction_id LIKE 'mig%' AND outcome = 'accepted'"))
        results = int(self.pg.psql("SELECT count(*) FROM idv.transactions"
                                   " WHERE transaction_id LIKE 'mig%' AND callback_passed"
                                   " IS NOT NULL"))
        swaps = re.findall(r"idv\.(\w+): ([\d,]+) rows moved in ([\d.]+) s; swapped in,"
                           r" holding its lock ([\d.]+) ms", mig.stdout)
        self.results["migration"] = {
            "seconds": round(mig_s, 1), "swaps": swaps, "before": before, "after": after,
            "accepted_answers": accepted, "accepted_rows": live, "results_recorded": results}
        lat = load.get("latency_ms", {})
        text = "\n".join([
            "rows before: " + ", ".join(f"{k} {int(v):,}" for k, v in before.items()),
            f"migrate: {mig_s:.1f} s; machine busy {self.results['machine_busy']['migration']}",
        ] + [f"- idv.{t}: {r} rows moved in {s} s, swap held its lock {ms} ms"
             for t, r, s, ms in swaps] + [
            f"callbacks during the run (loadgen, {rate}/s, {seconds} s): statuses"
            f" {load.get('status')}, results {answered}",
            f"latency ms: {json.dumps(lat)}",
            f"the same load before, without a migration ({base_s} s): statuses"
            f" {baseline.get('status')}, latency ms {json.dumps(baseline.get('latency_ms'))}",
            f"accepted answers {accepted}, accepted audit rows {live}, results recorded"
            f" {results}: {'nothing lost' if accepted == live == results else 'MISMATCH'}",
            "size after: " + ", ".join(f"{r[0]} {r[2]} in {r[1]} partitions ({r[3]} bytes a"
                                       " row with its indexes)" for r in sizes)])
        print(text, flush=True)
        self.write(text)
        if not (accepted == live == results):
            raise Fail("accepted callbacks and recorded rows differ")

    def cleanup(self):
        """Stops every daemon and cluster of this run: the full one is kept
        (stopped) with --keep, the empty side never."""
        empty = self.empty or (None, None)
        seen = set()
        for pg, d in (empty, self.full or (None, None), (self.pg, self.daemon)):
            if d and id(d) not in seen:
                seen.add(id(d))
                d.kill()
            if pg and id(pg) not in seen:
                seen.add(id(pg))
                if self.a.keep and pg is not empty[0]:
                    pg.stop("fast")
                else:
                    pg.cleanup()
        if not self.a.keep:
            shutil.rmtree(self.tmp.path, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="idv-callbackd of this build (release)")
    ap.add_argument("--loadgen", help="tests/bench/loadgen (for --migration)")
    ap.add_argument("--old-bin", help="idv-callbackd of the version before (for --migration)")
    ap.add_argument("--migration", action="store_true")
    ap.add_argument("--callback-events", type=int, default=20_000_000)
    ap.add_argument("--transactions", type=int, default=10_000_000)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--audit-samples", type=int, default=20)
    ap.add_argument("--shared-buffers", default="1GB")
    ap.add_argument("--xids", type=int, default=0,
                    help="the cluster's xid counter starts here (default 2 x transactions + 1M)")
    ap.add_argument("--rate", type=int, default=200, help="callbacks/s during --migration")
    ap.add_argument("--load-seconds", type=int, default=600)
    ap.add_argument("--dir", help="where the cluster goes (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the cluster (stopped) and the temporary directory")
    ap.add_argument("--reuse", help="the data directory a --keep run left: measure it again"
                    " (with a fresh empty database beside it) instead of filling one")
    ap.add_argument("--results-dir", default=os.path.join(HERE, "results"))
    a = ap.parse_args()
    a.bin = os.path.abspath(a.bin)
    if not a.xids:
        a.xids = 2 * (a.callback_events // 2 if a.migration else a.transactions) + 1_000_000
    idvtest.BIN = a.bin
    idvtest.PG_BINDIR = PG_BINDIR
    if a.migration and not (a.old_bin and a.loadgen):
        ap.error("--migration needs --old-bin and --loadgen")
    if a.migration:
        a.old_bin, a.loadgen = os.path.abspath(a.old_bin), os.path.abspath(a.loadgen)
    # SIGTERM (an operator stopping the run) cleans up like an error: the
    # daemon and the cluster stop, the temporary directory goes.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(Fail("terminated")))
    s = Scale(a)
    m = s.results["machine"]
    log(f"machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB; load {os.getloadavg()}")
    try:
        s.migration() if a.migration else s.empty_then_full()
        return 0
    except Fail as e:
        log(f"FAILED: {e}")
        return 1
    finally:
        s.cleanup()


if __name__ == "__main__":
    sys.exit(main())
