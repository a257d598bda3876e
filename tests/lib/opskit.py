"""The operator's kit under test: HAProxy and Prometheus run on the files
shipped in systemd/examples/, for tests/integration/test_haproxy.py and
test_prometheus.py. Standard library only."""
import collections
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request

from idvtest import LogFile, check, free_port, wait_until

EXAMPLES = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                         "systemd", "examples"))
HAPROXY_CFG = os.path.join(EXAMPLES, "haproxy.cfg")
PROMETHEUS_YML = os.path.join(EXAMPLES, "prometheus.yml")
RULES = os.path.join(EXAMPLES, "idv-callbackd.rules.yml")
RULES_TEST = os.path.join(EXAMPLES, "idv-callbackd.rules.test.yml")
def _die_with_parent():
    """preexec_fn: SIGTERM when the test process dies (a ctest timeout kills
    it with SIGKILL), so that no HAProxy or Prometheus outlives its test."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


class Process(LogFile):
    """A server process of a test: its log file and its stop."""
    proc = None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class HAProxy(Process):
    """HAProxy on the shipped configuration, with its addresses in the
    environment; logs to a file. In master-worker mode (-W, as Debian's
    haproxy.service) by default, reloaded by reload(); standalone
    (master_worker=False, one process in the foreground), reloaded by
    reload_sf()."""

    def __init__(self, tmp, backends, master_worker=True):
        self.master_worker = master_worker
        self.old = []  # standalone: the processes replaced by reload_sf()
        self.dir = tmp.sub("haproxy")
        self.port = free_port()
        self.metrics_port = free_port()
        self.sock = os.path.join(self.dir, "admin.sock")
        self.master_sock = os.path.join(self.dir, "master.sock")
        self.log_path = os.path.join(self.dir, "haproxy.log")
        self.env = dict(os.environ)
        self.env.update({
            "IDV_HAPROXY_BIND": f"127.0.0.1:{self.port}",
            "IDV_HAPROXY_METRICS_BIND": f"127.0.0.1:{self.metrics_port}",
            "IDV_HAPROXY_SOCKET": self.sock,
            "IDV_HAPROXY_LOG": "stdout",
            "IDV_BACKEND1": f"127.0.0.1:{backends[0].public_port}",
            "IDV_BACKEND2": f"127.0.0.1:{backends[1].public_port}",
        })
        self.proc = None

    def _spawn(self, args):
        return subprocess.Popen([HAPROXY, "-f", HAPROXY_CFG] + args, env=self.env,
                                stdout=self.logf, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_parent)

    def start(self):
        self.logf = open(self.log_path, "ab")
        if self.master_worker:
            self.proc = self._spawn(["-W", "-S", self.master_sock])
        else:
            self.proc = self._spawn([])
        wait_until(lambda: self.proc.poll() is not None or
                   (self.servers() is not None and (not self.master_worker or self.workers())),
                   30, what="HAProxy's admin socket" + " and master CLI" * self.master_worker)
        check(self.proc.poll() is None, f"haproxy exited: {self.logs()[-3000:]}")
        return self

    def stop(self):
        for p in self.old:
            if p.poll() is None:
                p.kill()
                p.wait()
        super().stop()

    def pid(self):
        """The pid of the process that answers on the admin socket, or None."""
        m = re.search(r"^Pid: (\d+)$", self._cmd(self.sock, "show info") or "", re.M)
        return int(m.group(1)) if m else None

    def _cmd(self, path, cmd):
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(path)
                # The master CLI keeps the connection open after a command
                # unless told to quit; the admin socket closes it anyway.
                s.sendall(cmd.encode() + b"; quit\n")
                out = []
                while True:
                    b = s.recv(65536)
                    if not b:
                        break
                    out.append(b)
                return b"".join(out).decode()
        except OSError:
            return None

    def stat(self):
        """`show stat` as {(proxy, name): {field: value}}, or None."""
        out = self._cmd(self.sock, "show stat")
        if not out or not out.startswith("# "):
            return None
        lines = out.strip().splitlines()
        fields = lines[0][2:].split(",")
        rows = {}
        for ln in lines[1:]:
            v = dict(zip(fields, ln.split(",")))
            rows[(v["pxname"], v["svname"])] = v
        return rows

    def servers(self):
        """{"idv1": "UP", ...} as HAProxy sees the instances, or None."""
        st = self.stat()
        if st is None:
            return None
        return {sv: v["status"] for (px, sv), v in st.items()
                if px == "idv_callbackd" and sv not in ("FRONTEND", "BACKEND")}

    LOG_LINE = re.compile(r"haproxy\[(\d+)\]: \S+ \[(\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d\.\d{3})\] "
                          r"idv_public \S+ \S+ \d+ \d+ \S+ \d+/\d+/\d+/\d+/\+?(\d+) ")

    def requests_by_phase(self, phases):
        """From the request log (the pid of the process that logged it; %tr,
        the time HAProxy accepted the request; %rc, its retries):
        {(phase, pid, retried at least once): requests}, each request counted
        in the phase [(name, start time)] it was accepted in. The log, not the
        stats counters, because those restart from 0 with the processes of a
        reload."""
        out = collections.Counter()
        for m in self.LOG_LINE.finditer(self.logs()):
            t = time.mktime(time.strptime(m.group(2)[:-4], "%d/%b/%Y:%H:%M:%S"))
            t += int(m.group(2)[-3:]) / 1000
            name = None
            for p, start in phases:
                if t >= start:
                    name = p
            out[(name, int(m.group(1)), m.group(3) != "0")] += 1
        return out

    def retries_by_phase(self, phases):
        """{phase: requests retried at least once} (see requests_by_phase)."""
        out = collections.Counter()
        for (name, _, retried), n in self.requests_by_phase(phases).items():
            if retried:
                out[name] += n
        return out

    def wait_status(self, server, status, what=None):
        wait_until(lambda: (self.servers() or {}).get(server, "").startswith(status), 60, 0.05,
                   what or f"HAProxy to see {server} {status}")

    def workers(self):
        """Pids of the current workers (master CLI `show proc`)."""
        out = self._cmd(self.master_sock, "show proc") or ""
        pids, current = [], True
        for ln in out.splitlines():
            if ln.startswith("# old workers"):
                current = False
            elif current and " worker " in f" {ln} ":
                pids.append(int(ln.split()[0]))
        return pids

    def reload(self):
        """SIGUSR2 to the master, as Debian's `systemctl reload haproxy`;
        returns once a new worker replaced the old one."""
        before = self.workers()
        check(before, "HAProxy has a worker")
        self.proc.send_signal(signal.SIGUSR2)
        wait_until(lambda: (w := self.workers()) and not set(w) & set(before), 60, 0.05,
                   "a new HAProxy worker")
        check(self.proc.poll() is None, "the HAProxy master survived the reload")
        return before, self.workers()

    def reload_sf(self):
        """The standalone reload, as the shipped file says: a new process
        started with `-x <admin socket>` (it takes over the old process's
        listening sockets instead of binding new ones) and `-sf <old pid>`
        (once ready, it tells the old one to stop listening and to finish its
        connections). Returns (old process, new process) once the old one has
        exited."""
        check(not self.master_worker, "reload_sf() is the standalone reload")
        old = self.proc
        check(old.poll() is None, "the old HAProxy process runs")
        self.old.append(old)
        self.proc = self._spawn(["-x", self.sock, "-sf", str(old.pid)])
        # Bounds a hang only (the new one failing to start ends it too).
        wait_until(lambda: old.poll() is not None or self.proc.poll() is not None, 60, 0.05,
                   "the old HAProxy process to exit or the new one to fail")
        check(self.proc.poll() is None, f"the new haproxy exited: {self.logs()[-3000:]}")
        check(old.poll() is not None, "the old HAProxy process exited after the -sf reload")
        return old, self.proc


class Prometheus(Process):
    """A real Prometheus on a copy of the shipped prometheus.yml in which only
    the scrape targets and the two intervals are replaced. The rules file and
    the token file sit beside the copy, where the shipped file expects them
    (it names them relative to itself), so those lines are not touched."""

    def __init__(self, tmp, idv_targets, haproxy_target, token, interval="1s"):
        self.dir = tmp.sub("prometheus")
        self.port = free_port()
        self.cfg = os.path.join(self.dir, "prometheus.yml")
        self.log_path = os.path.join(self.dir, "prometheus.log")
        with open(PROMETHEUS_YML) as f:
            text = f.read()
        self.text = substitute(text, [
            ("scrape_interval: 15s", f"scrape_interval: {interval}"),
            ("evaluation_interval: 15s", f"evaluation_interval: {interval}"),
            ("          - 10.0.0.11:8081\n          - 10.0.0.12:8081\n",
             "".join(f"          - {t}\n" for t in idv_targets)),
            ("          - 127.0.0.1:8405\n", f"          - {haproxy_target}\n"),
        ])
        with open(self.cfg, "w") as f:
            f.write(self.text)
        shutil.copy(RULES, os.path.join(self.dir, os.path.basename(RULES)))
        tok = os.path.join(self.dir, "idv-callbackd.token")
        with open(tok, "w") as f:
            f.write(token + "\n")
        os.chmod(tok, 0o600)
        self.proc = None

    def start(self):
        self.logf = open(self.log_path, "ab")
        # Lean start-up: its own data directory, loopback only.
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.cfg}",
             f"--storage.tsdb.path={os.path.join(self.dir, 'data')}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.logf, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        wait_until(lambda: self.proc.poll() is not None or self._get("/-/ready") is not None, 60,
                   0.1, "Prometheus to be ready")
        check(self.proc.poll() is None, f"prometheus exited: {self.logs()[-3000:]}")
        return self

    def _get(self, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.read() if r.status == 200 else None
        except OSError:
            return None

    def api(self, path, **params):
        """GET /api/v1/<path>; returns its "data"."""
        q = urllib.parse.urlencode(params)
        raw = self._get(f"/api/v1/{path}" + (f"?{q}" if q else ""))
        check(raw is not None, f"Prometheus API {path} answered")
        doc = json.loads(raw)
        check(doc.get("status") == "success", f"Prometheus API {path}: {doc}")
        return doc["data"]

    def query(self, expr):
        """An instant query: {frozenset(labels.items()): float value}."""
        out = {}
        for r in self.api("query", query=expr)["result"]:
            out[frozenset(r["metric"].items())] = float(r["value"][1])
        return out

    def targets(self):
        """{(job, instance): health} of the active targets."""
        return {(t["labels"]["job"], t["labels"]["instance"]): t["health"]
                for t in self.api("targets")["activeTargets"]}

    def alerts(self):
        """[(alertname, state, labels)] of the pending and firing alerts."""
        return [(a["labels"]["alertname"], a["state"], a["labels"])
                for a in self.api("alerts")["alerts"]]


def substitute(text, pairs):
    """Replaces each `old` of pairs, which must occur exactly once: the copy
    differs from the shipped file only where the test says."""
    for old, new in pairs:
        check(text.count(old) == 1, f"{old!r} occurs once in the shipped file")
        text = text.replace(old, new)
    return text
