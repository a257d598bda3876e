"""Shared fixtures of the integration tests: a private throwaway PostgreSQL
cluster, the daemon under test, and raw HTTP helpers. Standard library only.

A test script defines functions named `case_<name>` and ends with
`idvtest.main(globals())`: `script --list` prints the cases, `script --bin B
--pg-bindir D NAME` runs one.
"""
import argparse
import asyncio
import http.client
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

BIN = None
PG_BINDIR = "/usr/lib/postgresql/15/bin"
KEEP = os.environ.get("IDV_TEST_KEEP") == "1"


class TestFailure(AssertionError):
    pass


def check(cond, msg="check failed"):
    if not cond:
        raise TestFailure(msg)


def check_eq(a, b, what="value"):
    if a != b:
        raise TestFailure(f"{what}: {a!r} != {b!r}")


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def free_port():
    """A port that nothing listens on now, outside the kernel's ephemeral
    range: a port the kernel handed out for bind(0) is also what it hands the
    outgoing connections of the tests running beside this one (a thousand at
    once in slowloris_1000), so a server started on it a moment later could
    find it taken ("Address already in use", seen in a CI rehearsal)."""
    lo, hi = _ephemeral_range()
    candidates = [p for p in range(20000, 32000) if not lo <= p <= hi]
    for _ in range(200):
        port = random.choice(candidates) if candidates else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout=30.0, interval=0.05, what="condition"):
    """Polls pred() until it is true. Not a timed assertion: the deadline only
    bounds a test that would otherwise hang."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise TestFailure(f"timed out waiting for {what}")


class AsyncLoad:
    """Load from `workers` coroutines (self.worker(w), w = 0..workers-1) on an
    event loop in a thread of its own, from start() until self.stopping is set;
    an exception that ends the loop is kept in self.error for the test to
    report."""

    def __init__(self, workers):
        self.workers = workers
        self.stopping = threading.Event()
        self.error = None
        self.thread = None

    async def main(self):
        await asyncio.gather(*(self.worker(w) for w in range(self.workers)))

    def _run(self):
        try:
            asyncio.run(self.main())
        except Exception as e:  # reported by stop()
            self.error = repr(e)

    def start(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.stopping.set()
        return self.join()

    def join(self):
        """Waits for the workers to end (by themselves, or after stop())."""
        self.thread.join(120)
        check(not self.thread.is_alive(), "the load generator did not stop")
        check(self.error is None, f"load generator failed: {self.error}")
        return self


class LogFile:
    """A process of a test that writes its log to self.log_path."""
    log_path = None

    def logs(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""


class TempDir:
    """A temporary directory that the postgres user can use too."""

    def __init__(self, prefix="idvtest-"):
        self.path = tempfile.mkdtemp(prefix=prefix)
        os.chmod(self.path, 0o755)

    def sub(self, name, owner_postgres=False):
        p = os.path.join(self.path, name)
        os.makedirs(p, exist_ok=True)
        if owner_postgres and os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(p, pw.pw_uid, pw.pw_gid)
        return p

    def cleanup(self):
        if not KEEP:
            shutil.rmtree(self.path, ignore_errors=True)


def _as_postgres(cmd):
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--"] + cmd
    return cmd


def _initdb_template():
    """Returns the path of a pristine data directory made by `initdb` (trust
    authentication, user postgres, UTF8), creating it on first use. It lives
    in the temporary directory under a name that carries the user and the
    server's version, is made under an exclusive lock (tests run in
    parallel) and published by a rename, so a half-made template is never
    copied."""
    import fcntl
    import hashlib
    version = subprocess.run([os.path.join(PG_BINDIR, "postgres"), "--version"],
                             capture_output=True, text=True, check=True).stdout.strip()
    key = hashlib.sha256(f"{PG_BINDIR}|{version}".encode()).hexdigest()[:12]
    base = os.path.join(tempfile.gettempdir(), f"idvtest-initdb-{os.geteuid()}-{key}")
    data = os.path.join(base, "data")
    if os.path.isdir(data):
        return data
    os.makedirs(base, exist_ok=True)
    os.chmod(base, 0o755)
    with open(os.path.join(base, "lock"), "w") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        if not os.path.isdir(data):
            work = tempfile.mkdtemp(prefix="make-", dir=base)
            os.chmod(work, 0o755)
            if os.geteuid() == 0:
                pw = pwd.getpwnam("postgres")
                os.chown(work, pw.pw_uid, pw.pw_gid)
            subprocess.run(_as_postgres([os.path.join(PG_BINDIR, "initdb"), "-D",
                                         os.path.join(work, "data"), "-A", "trust", "-U",
                                         "postgres", "--no-sync", "-E", "UTF8"]),
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            os.rename(os.path.join(work, "data"), data)
            os.rmdir(work)
    return data


class PgCluster:
    """A PostgreSQL 15 cluster of its own: data directory and Unix socket in a
    temporary directory, a free TCP port on 127.0.0.1. Runs as postgres when
    the tests run as root (PostgreSQL refuses root)."""

    def __init__(self, tmp, name="pg", port=None, settings=None):
        self.tmp = tmp
        self.dir = tmp.sub(name, owner_postgres=True)
        self.data = os.path.join(self.dir, "data")
        self.sock = self.dir
        self.port = port or free_port()
        self.log = os.path.join(self.dir, "postgres.log")
        self.listeners = []
        self.settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.sock}'",
            "port": str(self.port),
            "fsync": "on",
            "synchronous_commit": "on",
            "max_connections": "200",
            "shared_buffers": "32MB",
            "log_min_messages": "warning",
        }
        if settings:
            self.settings.update(settings)

    def initdb(self):
        """A fresh data directory: a copy of a pristine `initdb` made once per
        machine, user and PostgreSQL version (see _initdb_template), so that
        each test pays a copy (~0.1 s) instead of an initdb (~2 s). The copy
        is the test's own: nothing is shared between clusters."""
        template = _initdb_template()
        subprocess.run(["cp", "-a", template, self.data], check=True)
        with open(os.path.join(self.data, "postgresql.auto.conf"), "a") as f:
            for k, v in self.settings.items():
                f.write(f"{k} = {v}\n")
        return self

    def standby_from(self, primary, app_name="standby1"):
        """Makes this cluster a streaming standby of primary (instead of
        initdb): `pg_basebackup -R` over TCP, then this cluster's own settings
        appended to the postgresql.auto.conf the backup copied (later lines
        win), with a primary_conninfo naming app_name as the walreceiver's
        application_name (what synchronous_standby_names matches)."""
        r = subprocess.run(_as_postgres([os.path.join(PG_BINDIR, "pg_basebackup"), "-D", self.data,
                                         "-h", "127.0.0.1", "-p", str(primary.port), "-U",
                                         "postgres", "-R", "-X", "stream", "-c", "fast",
                                         "--no-sync"]),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if r.returncode != 0:
            raise TestFailure(f"pg_basebackup failed: {r.stderr.decode(errors='replace')}")
        self.settings["primary_conninfo"] = (f"'host=127.0.0.1 port={primary.port} user=postgres"
                                             f" application_name={app_name}'")
        with open(os.path.join(self.data, "postgresql.auto.conf"), "a") as f:
            for k, v in self.settings.items():
                f.write(f"{k} = {v}\n")
        return self

    def allow_replication(self):
        """Adds a pg_hba entry letting postgres replicate over 127.0.0.1
        without a password (read at the next start or reload)."""
        with open(os.path.join(self.data, "pg_hba.conf"), "a") as f:
            f.write("host replication postgres 127.0.0.1/32 trust\n")
        return self

    def promote(self):
        """`pg_ctl promote -w`: returns once the standby accepts writes."""
        self.pg_ctl("-w", "-t", "60", "promote")

    def pg_ctl(self, *args, check=True):
        r = subprocess.run(_as_postgres([os.path.join(PG_BINDIR, "pg_ctl"), "-D", self.data,
                                         "-l", self.log] + list(args)),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if check and r.returncode != 0:
            try:
                with open(self.log, errors="replace") as f:
                    tail = f.read()[-3000:]
            except OSError:
                tail = ""
            raise TestFailure(f"pg_ctl {' '.join(args)} failed ({r.returncode}): "
                              f"{r.stderr.decode(errors='replace').strip()}\n"
                              f"---- postgres.log:\n{tail}")
        return r

    def start(self):
        self.pg_ctl("-w", "-t", "60", "start")
        return self

    def stop(self, mode="fast"):
        self.pg_ctl("-w", "-t", "60", "-m", mode, "stop", check=False)

    def restart(self, mode="fast"):
        self.stop(mode)
        self.start()

    def postmaster_pid(self):
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            return int(f.readline())

    def freeze(self):
        """SIGSTOP the postmaster and every backend: the server is frozen with
        its sockets open."""
        pids = [self.postmaster_pid()] + self._children()
        for p in pids:
            os.kill(p, signal.SIGSTOP)
        self._frozen = pids

    def thaw(self):
        for p in getattr(self, "_frozen", []):
            try:
                os.kill(p, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self._frozen = []

    def _children(self):
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.postmaster_pid())],
                             capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]

    def psql(self, sql, user="postgres", db="postgres", check=True):
        """Runs SQL with psql; returns the unaligned, tuples-only output."""
        r = subprocess.run(["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
                            "-h", self.sock, "-p", str(self.port), "-U", user, "-d", db,
                            "-c", sql], capture_output=True, text=True)
        if check and r.returncode != 0:
            raise TestFailure(f"psql failed: {r.stderr.strip()}\nSQL: {sql}")
        return r.stdout.strip() if r.returncode == 0 else None

    def try_psql(self, sql, user="postgres", db="postgres"):
        """Runs SQL with psql and returns the CompletedProcess (returncode,
        stdout, stderr) without judging it: for statements expected to fail."""
        return subprocess.run(["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
                               "-h", self.sock, "-p", str(self.port), "-U", user, "-d", db,
                               "-c", sql], capture_output=True, text=True)

    def migrate(self, user="postgres"):
        """Runs `idv-callbackd migrate` against this cluster; returns the
        CompletedProcess."""
        return subprocess.run([BIN, "migrate"],
                              env=dict(os.environ, IDV_DATABASE_URL=self.url(user)),
                              capture_output=True, text=True)

    def dump_all(self):
        """pg_dumpall of the whole cluster (as postgres, through the socket)."""
        r = subprocess.run(_as_postgres(["pg_dumpall", "-h", self.sock, "-p", str(self.port),
                                         "-U", "postgres"]), capture_output=True, text=True)
        if r.returncode != 0:
            raise TestFailure(f"pg_dumpall failed: {r.stderr.strip()}")
        return r.stdout

    def listen(self, channel):
        """A psql session LISTENing on channel (closed with the cluster); see
        PgListener."""
        lis = PgListener(self, channel)
        self.listeners.append(lis)
        return lis

    def rows(self, sql, **kw):
        out = self.psql(sql, **kw)
        return [line.split("|") for line in out.splitlines()] if out else []

    def url(self, user="idvapp", db="postgres", tcp=False):
        host = "127.0.0.1" if tcp else self.sock
        return f"host={host} port={self.port} user={user} dbname={db}"

    def setup_schema(self, app_user="idvapp"):
        """Applies the migrations as superuser and makes the daemon's login
        role, a member of idv_daemon only."""
        r = subprocess.run([BIN, "migrate"], env=dict(os.environ, IDV_DATABASE_URL=self.url("postgres")),
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise TestFailure(f"migrate failed: {r.stdout}{r.stderr}")
        self.psql(f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{app_user}') "
                  f"THEN CREATE ROLE {app_user} LOGIN IN ROLE idv_daemon; END IF; END $$")
        return r.stdout

    def cleanup(self):
        for lis in self.listeners:
            lis.kill()
        self.thaw()
        self.stop("immediate")


class PgListener:
    """A psql coprocess that LISTENs on a channel. psql prints notifications
    only after a command, so wait_for() keeps sending cheap SELECTs while it
    polls the collected output."""

    NOTE = re.compile(r'^Asynchronous notification "(.*)" with payload "(.*)" received from '
                      r'server process with PID \d+\.$')

    def __init__(self, pg, channel):
        self.proc = subprocess.Popen(["psql", "-X", "-A", "-t", "-q", "-h", pg.sock, "-p",
                                      str(pg.port), "-U", "postgres", "-d", "postgres"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._send(f'LISTEN "{channel}";\nSELECT \'listening\';\n')
        # Once the SELECT after LISTEN answered, the LISTEN is in effect.
        wait_until(lambda: "listening\n" in self.lines, 30, what="LISTEN to take effect")

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def _send(self, text):
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def notifications(self):
        """(channel, payload) of every notification received so far."""
        out = []
        for line in list(self.lines):
            m = self.NOTE.match(line.rstrip("\n"))
            if m:
                out.append((m.group(1), m.group(2)))
        return out

    def wait_for(self, pred, timeout=30.0, what="a notification"):
        """Waits until pred(notifications()) is true; returns the notifications."""
        def poll():
            self._send("SELECT 1;\n")
            n = self.notifications()
            return n if pred(n) else None
        return wait_until(poll, timeout, 0.05, what)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


ADMIN_TOKEN = "test-admin-token-0123456789abcdef"


class Daemon(LogFile):
    """The daemon under test, with a config file in a temporary directory."""

    def __init__(self, tmp, pg=None, name="idv", database_url=None, **cfg):
        self.tmp = tmp
        self.dir = tmp.sub(name)
        self.public_port = free_port()
        self.admin_port = free_port()
        self.log_path = os.path.join(self.dir, "daemon.log")
        self.conf = os.path.join(self.dir, "idv-callbackd.conf")
        token_file = os.path.join(self.dir, "admin.token")
        with open(token_file, "w") as f:
            f.write(ADMIN_TOKEN + "\n")
        os.chmod(token_file, 0o600)
        self.cfg = {
            "listen": f"127.0.0.1:{self.public_port}",
            "admin_listen": f"127.0.0.1:{self.admin_port}",
            "database_url": database_url or (pg.url() if pg else "host=/nonexistent"),
            "admin_token_file": token_file,
            "db_pool_size": "4",
            "db_timeout_ms": "2000",
            "log_format": "text",
            "log_level": "info",
            "instance_name": name,
        }
        self.cfg.update({k: str(v) for k, v in cfg.items()})
        self.proc = None
        self.env = dict(os.environ)

    def write_config(self):
        with open(self.conf, "w") as f:
            for k, v in self.cfg.items():
                if v is not None:
                    f.write(f"{k} = {v}\n")

    def start(self, wait_ready=True, extra_env=None):
        self.write_config()
        env = dict(self.env)
        if extra_env:
            env.update(extra_env)
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([BIN, "serve", "--config", self.conf], stdout=self.logf,
                                     stderr=subprocess.STDOUT, env=env)
        wait_until(lambda: self._listening() or self.proc.poll() is not None, 30,
                   what="the daemon to listen")
        check(self.proc.poll() is None, f"daemon exited: {self.logs()}")
        if wait_ready:
            wait_until(lambda: self.status("/readyz", admin=True) == 200, 30,
                       what="/readyz to answer 200")
        return self

    def _listening(self):
        try:
            socket.create_connection(("127.0.0.1", self.admin_port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise TestFailure("daemon did not stop in time")

    def stop_clean(self):
        """SIGTERM; checks that the daemon exits 0 (under the sanitizers: no
        leak) and that no sanitizer report is in its log."""
        rc = self.stop()
        log = self.logs()
        for mark in ("runtime error:", "AddressSanitizer", "LeakSanitizer"):
            at = log.find(mark)
            check(at < 0, f"{self.cfg.get('instance_name')}: '{mark}' in the log:\n"
                  f"{log[max(0, at - 2000):][:6000]}")
        check_eq(rc, 0, f"exit status of {self.cfg.get('instance_name')}")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def rss_kb(self):
        """The daemon's resident set (VmRSS of /proc/PID/status) in KiB, or
        None once it has exited."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except (OSError, AttributeError):
            return None
        return None

    # ---- HTTP helpers
    def request(self, method, path, body=None, headers=None, admin=False, auth=True, timeout=30):
        """One request on a fresh connection; returns (status, headers, body bytes)."""
        port = self.admin_port if admin else self.public_port
        h = dict(headers or {})
        if admin and auth and "Authorization" not in h:
            h["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            h.setdefault("Content-Type", "application/json")
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def status(self, path, admin=False):
        try:
            return self.request("GET", path, admin=admin, auth=False, timeout=5)[0]
        except OSError:
            return None

    def callback(self, tx=None, passed=None, sub=None, token=None, extra="", method="GET",
                 path=None, headers=None):
        """A callback request on a fresh connection; values are sent as given
        (already percent-encoded). Returns (status, JSON body or None, headers,
        raw body)."""
        q = []
        if tx is not None:
            q.append(f"transactionId={tx}")
        if passed is not None:
            q.append(f"passed={passed}")
        if sub is not None:
            q.append(f"subCode={sub}")
        if token is not None:
            q.append(f"callbackToken={token}")
        base = path or self.cfg.get("callback_path") or "/idv/callback"
        st, hd, body = self.request(method, base + "?" + "&".join(q) + extra, headers=headers)
        return st, (json.loads(body) if body else None), hd, body

    def register(self, tx, biz, token, user=None):
        b = {"transactionId": tx, "merchantBizId": biz, "callbackToken": token}
        if user is not None:
            b["merchantUserId"] = user
        st, hd, body = self.request("POST", "/v1/transactions/register", body=b, admin=True)
        return st, json.loads(body) if body else None

    def metrics(self):
        st, _, body = self.request("GET", "/metrics", admin=True)
        check_eq(st, 200, "/metrics status")
        return body.decode()


def metric_value(text, name, **labels):
    """The value of one sample of the Prometheus text, or None."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{want}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return None


def raw_http(port, data, timeout=5.0, read_until_close=True, host="127.0.0.1"):
    """Sends raw bytes and returns everything read until the server closes (or
    the timeout passes). Returns (bytes, closed_by_server). A send cut short
    because the server closed already is not an error: what it answered is
    still read."""
    s = socket.create_connection((host, port), timeout=timeout)
    try:
        if data:
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass
        chunks = []
        closed = False
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            s.settimeout(max(0.05, end - time.monotonic()))
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not b:
                closed = True
                break
            chunks.append(b)
            if not read_until_close:
                break
        return b"".join(chunks), closed
    finally:
        s.close()


def raise_nofile(want=None):
    """Raises this process's soft open-file limit to the hard limit (or to
    want, when lower); returns the new soft limit."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if want is None or hard == resource.RLIM_INFINITY else min(want, hard)
    if want is not None and hard == resource.RLIM_INFINITY:
        target = want
    if target > soft or soft == resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def register_bulk(pg, n, prefix="tx", salt="SeCrEt-bulk", start=0):
    """Registers n transactions with one SQL INSERT, as the admin API would
    (status initiated, origin registered, only the SHA-256 of the token):
    transaction `{prefix}{i}`, token `{salt}-{i}` (salt must be at least 8
    characters of [A-Za-z0-9-], so that every token is a valid one). Returns
    [(transaction id, token)]."""
    check(re.fullmatch(r"[A-Za-z0-9-]{8,200}", salt), f"salt {salt!r}")
    check(re.fullmatch(r"[A-Za-z0-9_-]{1,100}", prefix), f"prefix {prefix!r}")
    pg.psql("INSERT INTO idv.transactions (transaction_id, merchant_biz_id,"
            " callback_token_sha256, status, origin, expires_at)"
            f" SELECT '{prefix}' || i, 'b' || i,"
            f" sha256(convert_to('{salt}-' || i, 'UTF8')), 'initiated', 'registered',"
            f" now() + interval '30 minutes' FROM generate_series({start}, {start + n - 1}) i")
    return [(f"{prefix}{i}", f"{salt}-{i}") for i in range(start, start + n)]


def parse_responses(data):
    """Splits a byte stream of HTTP/1.1 responses (Content-Length framed) into
    a list of (status, headers dict lower-case, body)."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            raise TestFailure(f"incomplete response: {data[:200]!r}")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        hdrs = {}
        for l in lines[1:]:
            k, _, v = l.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        n = int(hdrs.get("content-length", "0"))
        out.append((status, hdrs, rest[:n]))
        data = rest[n:]
    return out


def main(ns):
    global BIN, PG_BINDIR
    cases = {k[len("case_"):]: v for k, v in ns.items() if k.startswith("case_") and callable(v)}
    ap = argparse.ArgumentParser()
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--bin")
    ap.add_argument("--pg-bindir", default=PG_BINDIR)
    ap.add_argument("case", nargs="?")
    a = ap.parse_args()
    if a.list:
        for name in cases:
            print(name)
        return 0
    BIN = os.path.abspath(a.bin) if a.bin else None
    PG_BINDIR = a.pg_bindir
    if not BIN or a.case not in cases:
        print(f"usage: {sys.argv[0]} --bin BINARY CASE (cases: {', '.join(cases)})", file=sys.stderr)
        return 2
    tmp = TempDir()
    ctx = Ctx(tmp)
    try:
        cases[a.case](ctx)
        print(f"PASS {a.case}")
        return 0
    except Exception:
        traceback.print_exc()
        for d in ctx.daemons:
            # Requests are one line each and would hide the rest: the other
            # lines first, then the last requests.
            lines = d.logs().splitlines()
            other, req = [], []
            for l in lines:
                (req if " request " in l or '"msg":"request"' in l else other).append(l)
            print(f"---- log of daemon {d.cfg.get('instance_name')} (not requests, last 60):\n"
                  + "\n".join(other[-60:]) + "\n---- last 10 requests:\n" + "\n".join(req[-10:]),
                  file=sys.stderr)
        print(f"FAIL {a.case}", file=sys.stderr)
        return 1
    finally:
        ctx.cleanup()
        tmp.cleanup()


class Ctx:
    """What a test case gets: a temp dir, and factories that clean up after."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.daemons = []
        self.clusters = []
        self.cleanups = []  # callables run after the daemons are gone

    def pg(self, name="pg", schema=True, **kw):
        c = PgCluster(self.tmp, name, **kw).initdb()
        self.clusters.append(c)
        c.start()
        if schema:
            c.setup_schema()
        return c

    def standby(self, primary, name="standby", app_name="standby1", **kw):
        """A streaming standby of primary made with pg_basebackup -R, started
        (primary needs allow_replication() first)."""
        c = PgCluster(self.tmp, name, **kw).standby_from(primary, app_name)
        self.clusters.append(c)
        c.start()
        return c

    def daemon(self, pg=None, name="idv", start=True, wait_ready=True, **cfg):
        d = Daemon(self.tmp, pg, name=name, **cfg)
        self.daemons.append(d)
        if start:
            d.start(wait_ready=wait_ready)
        return d

    def cleanup(self):
        for d in self.daemons:
            try:
                d.kill()
            except Exception:
                pass
        for f in self.cleanups:
            try:
                f()
            except Exception:
                pass
        for c in self.clusters:
            try:
                c.cleanup()
            except Exception:
                pass
