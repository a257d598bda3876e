"""Highly available PostgreSQL for the tests: one etcd 3.4 and two PostgreSQL
nodes under Patroni (Debian 12: patroni 3.0.2, etcd-server 3.4.23), as the
README's "Running on highly available PostgreSQL" describes.

Every path a failure test needs to cut goes through a NetProxy (netproxy.py):
- the daemon reaches node X through X.db_proxy (database_url names both
  proxies, target_session_attrs=read-write);
- Patroni on node X reaches etcd through X.etcd_proxy (`use_proxies: true`,
  or Patroni would learn etcd's own address from etcd and go around it).
Replication between the nodes is direct.

Facts the harness relies on:
- etcd 3.4 has its v2 API off: Patroni's `etcd3:` section (not `etcd:`);
  Patroni's etcd3 module imports python3-etcd, which Debian does not pull in.
- PostgreSQL refuses to run as root: Patroni runs as the postgres user.
- Patroni starts the postmaster detached: killing a node means SIGKILL to
  Patroni, the postmaster and its children.
- No watchdog device here: watchdog mode off.
- `patronictl switchover` exits 0 even when it fails: its output is read.

Timing of the test cluster (the shipped systemd/examples/patroni.yml keeps
Patroni's defaults, ttl 30, loop_wait 10, retry_timeout 10): ttl 10,
loop_wait 1, retry_timeout 4. A failover waits for the leader key to expire
(ttl), so ttl bounds a scenario's length; loop_wait 1 makes Patroni notice a
switchover request, a promotion or a rejoin within a second; loop_wait +
2 x retry_timeout = 9 <= ttl, the rule Patroni documents, so that a leader
that merely retries its DCS update is not demoted by it.
"""
import json
import os
import pwd
import signal
import subprocess
import time
import urllib.request

import idvtest
from idvtest import PgCluster, TestFailure, check, free_port, wait_until
from netproxy import NetProxy

PATRONI = "/usr/bin/patroni"
PATRONICTL = "/usr/bin/patronictl"
ETCD = "/usr/bin/etcd"

TTL = 10
LOOP_WAIT = 1
RETRY_TIMEOUT = 4
SCOPE = "idvtest"


def _http_json(url, timeout=2.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def _kill_tree(pid):
    """SIGKILL pid and its children (ps --ppid), children first listed."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True).stdout
    for p in [pid] + [int(x) for x in out.split()]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Etcd:
    """A one-member etcd cluster on free ports, data in the test's temp dir."""

    def __init__(self, tmp):
        self.dir = tmp.sub("etcd")
        self.client_port = free_port()
        self.peer_port = free_port()
        self.log = os.path.join(self.dir, "etcd.log")
        self.proc = None

    def start(self):
        peer = f"http://127.0.0.1:{self.peer_port}"
        client = f"http://127.0.0.1:{self.client_port}"
        self.logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [ETCD, "--name", "etcd0", "--data-dir", os.path.join(self.dir, "data"),
             "--listen-client-urls", client, "--advertise-client-urls", client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"etcd0={peer}", "--initial-cluster-state", "new",
             "--log-level", "warn"], stdout=self.logf, stderr=subprocess.STDOUT)
        wait_until(lambda: (_http_json(f"{client}/health") or {}).get("health") == "true"
                   or self.proc.poll() is not None, 30, 0.1, "etcd to be healthy")
        check(self.proc.poll() is None, f"etcd exited: {self.tail()}")
        return self

    def tail(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class PatroniNode:
    """One PostgreSQL node under Patroni. `pg` is a PgCluster on the node's
    data directory and socket (for psql, the schema, the final cleanup);
    Patroni, not the PgCluster, runs it."""

    def __init__(self, tmp, name, etcd):
        self.name = name
        self.pg = PgCluster(tmp, f"node-{name}")
        self.rest_port = free_port()
        self.etcd_proxy = NetProxy(etcd.client_port)
        self.db_proxy = NetProxy(self.pg.port)
        self.config = os.path.join(self.pg.dir, "patroni.yml")
        self.log = os.path.join(self.pg.dir, "patroni.log")
        self.proc = None
        self.write_config()

    def settings(self):
        """The Patroni configuration (JSON is YAML too)."""
        return {
            "scope": SCOPE,
            "name": self.name,
            "restapi": {"listen": f"127.0.0.1:{self.rest_port}",
                        "connect_address": f"127.0.0.1:{self.rest_port}"},
            # use_proxies: the host is a proxy, and Patroni must not discover
            # (and then use) the addresses etcd advertises for itself.
            "etcd3": {"hosts": f"127.0.0.1:{self.etcd_proxy.port}", "use_proxies": True},
            "bootstrap": {
                "dcs": {
                    "ttl": TTL, "loop_wait": LOOP_WAIT, "retry_timeout": RETRY_TIMEOUT,
                    "maximum_lag_on_failover": 1048576,
                    "synchronous_mode": True,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {"wal_level": "replica", "hot_standby": "on",
                                       "wal_log_hints": "on", "max_wal_senders": 8,
                                       "max_replication_slots": 8, "synchronous_commit": "on",
                                       "max_connections": 100},
                    },
                },
                # The first node starts from a copy of the tests' initdb
                # template (idvtest), not an initdb of its own: ~2 s less.
                "method": "template",
                "template": {"command": self.bootstrap_script(),
                             "keep_existing_recovery_conf": False},
            },
            "postgresql": {
                "listen": f"127.0.0.1:{self.pg.port}",
                "connect_address": f"127.0.0.1:{self.pg.port}",
                "data_dir": self.pg.data,
                "bin_dir": idvtest.PG_BINDIR,
                "pgpass": os.path.join(self.pg.dir, "pgpass"),
                # A replica is made with pg_basebackup: a fast checkpoint on
                # the primary instead of a spread one.
                "basebackup": [{"checkpoint": "fast"}, "no-sync"],
                "authentication": {"superuser": {"username": "postgres"},
                                   "replication": {"username": "postgres"},
                                   "rewind": {"username": "postgres"}},
                "parameters": {"unix_socket_directories": self.pg.sock,
                               "shared_buffers": "32MB", "fsync": "on"},
                "pg_hba": ["local all all trust", "host all all 127.0.0.1/32 trust",
                           "host replication all 127.0.0.1/32 trust"],
            },
            "watchdog": {"mode": "off"},
            "log": {"level": "INFO"},
        }

    def bootstrap_script(self):
        """A custom bootstrap command: Patroni appends --scope=... and
        --datadir=...; the template is copied to that data directory."""
        path = os.path.join(self.pg.dir, "bootstrap-from-template.sh")
        with open(path, "w") as f:
            f.write("#!/bin/sh\nfor a; do case $a in --datadir=*) d=${a#--datadir=};; esac; done\n"
                    f"exec cp -a '{idvtest._initdb_template()}' \"$d\"\n")
        os.chmod(path, 0o755)
        return path

    def write_config(self):
        with open(self.config, "w") as f:
            json.dump(self.settings(), f, indent=1)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.config, pw.pw_uid, pw.pw_gid)

    def start(self):
        env = dict(os.environ, HOME=self.pg.dir)
        kw = {}
        if os.geteuid() == 0:
            # Patroni itself (not a runuser in between) is the child: its pid
            # is the one to kill.
            kw = dict(user="postgres", group="postgres", extra_groups=[])
        self.logf = open(self.log, "ab")
        self.proc = subprocess.Popen([PATRONI, self.config], stdout=self.logf,
                                     stderr=subprocess.STDOUT, env=env, cwd=self.pg.dir, **kw)
        return self

    def status(self):
        """Patroni's GET /patroni (role, state, ...), or None."""
        return _http_json(f"http://127.0.0.1:{self.rest_port}/patroni")

    def role(self):
        s = self.status() or {}
        r = s.get("role")
        return "primary" if r in ("master", "primary") else r

    def postmaster_pid(self):
        try:
            return self.pg.postmaster_pid()
        except (OSError, ValueError):
            return None

    def kill(self):
        """The node dies: Patroni and its PostgreSQL SIGKILLed together."""
        pm = self.postmaster_pid()
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if pm:
            _kill_tree(pm)
        wait_until(lambda: pm is None or not os.path.exists(f"/proc/{pm}"), 30, 0.05,
                   f"node {self.name}'s postmaster to die")

    def tail(self, n=3000):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def cleanup(self):
        try:
            self.kill()
        except Exception:
            pass
        self.etcd_proxy.close()
        self.db_proxy.close()


class PatroniCluster:
    """etcd and two Patroni nodes, a and b; a bootstraps and leads, b is its
    synchronous standby. Cleans up through ctx."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.etcd = Etcd(ctx.tmp)
        ctx.cleanups.append(self.cleanup)
        self.etcd.start()
        self.nodes = {n: PatroniNode(ctx.tmp, n, self.etcd) for n in ("a", "b")}

    def start(self):
        t0 = time.monotonic()
        self.nodes["a"].start()
        # b starts once a's Patroni runs its loop (its REST API answers): a
        # has taken the cluster's initialize key by then, so b waits for a's
        # bootstrap and clones it, while a's initdb is still under way.
        self.wait(lambda: self.nodes["a"].status() is not None, 60, "node a's Patroni to run")
        self.nodes["b"].start()
        self.wait(lambda: self.nodes["a"].role() == "primary", 60, "node a to lead")
        self.wait(lambda: self.sync_standby() == "b", 90, "node b to be the synchronous standby")
        self.setup_seconds = time.monotonic() - t0
        return self

    def wait(self, pred, timeout, what):
        try:
            wait_until(pred, timeout, 0.1, what)
        except TestFailure:
            raise TestFailure(f"timed out waiting for {what}; cluster: {self.members()}\n"
                              + "".join(f"---- patroni {n} log:\n{x.tail()}\n"
                                        for n, x in self.nodes.items()))

    def members(self):
        """[{name, role, state, ...}] from GET /cluster of any node that
        answers (roles: leader, sync_standby, replica)."""
        for n in self.nodes.values():
            c = _http_json(f"http://127.0.0.1:{n.rest_port}/cluster")
            if c and "members" in c:
                return c["members"]
        return []

    def leader(self):
        for m in self.members():
            if m.get("role") == "leader" and m.get("state") == "running":
                return m["name"]
        return None

    def sync_standby(self):
        for m in self.members():
            if m.get("role") == "sync_standby" and m.get("state") in ("running", "streaming"):
                return m["name"]
        return None

    def other(self, name):
        return "b" if name == "a" else "a"

    def url(self, user="idvapp", connect_timeout=2):
        """database_url through the daemon's proxies, a first."""
        a, b = self.nodes["a"], self.nodes["b"]
        return (f"host=127.0.0.1,127.0.0.1 port={a.db_proxy.port},{b.db_proxy.port}"
                f" user={user} dbname=postgres target_session_attrs=read-write"
                f" connect_timeout={connect_timeout}")

    def patronictl(self, *args):
        r = subprocess.run([PATRONICTL, "-c", self.nodes["a"].config] + list(args),
                           capture_output=True, text=True, timeout=120)
        return r.returncode, r.stdout + r.stderr

    def switchover(self, leader, candidate):
        """Planned switchover; patronictl exits 0 even when it fails, so its
        output must say it succeeded."""
        rc, out = self.patronictl("switchover", "--leader", leader, "--candidate", candidate,
                                  "--force")
        check(rc == 0 and "Successfully switched over" in out,
              f"patronictl switchover failed (exit {rc}):\n{out}")
        return out

    def cleanup(self):
        for n in self.nodes.values():
            n.cleanup()
        self.etcd.stop()
        for n in self.nodes.values():
            n.pg.stop("immediate")
