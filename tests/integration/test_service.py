#!/usr/bin/env python3
"""Running as a production service: systemd notify and socket activation,
SIGTERM and SIGHUP, X-Forwarded-For and PROXY headers, TLS, logs."""
import hashlib
import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
import idvtest  # noqa: E402
from idvtest import check, check_eq, wait_until  # noqa: E402


def token(i):
    return f"svc-token-{i:06d}-abcdefghij"


def register_bulk(pg, prefix, n):
    """Registers n transactions with SQL (faster than the API)."""
    pg.psql(
        "INSERT INTO idv.transactions (transaction_id, merchant_biz_id, callback_token_sha256,"
        " status, origin, expires_at)"
        f" SELECT '{prefix}' || i, 'biz' || i,"
        f" sha256(convert_to('svc-token-' || lpad(i::text, 6, '0') || '-abcdefghij', 'UTF8')),"
        f" 'initiated', 'registered', now() + interval '30 minutes'"
        f" FROM generate_series(0, {n - 1}) AS i")


def cb_path(tx, i, passed="Y", sub="200"):
    return f"/idv/callback?transactionId={tx}&passed={passed}&subCode={sub}&callbackToken={token(i)}"


def get_raw(port, path, extra_headers=b"", src=None, prefix=b""):
    s = socket.socket()
    if src:
        s.bind((src, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(prefix + f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
              + extra_headers + b"\r\n")
    data = b""
    while True:
        try:
            b = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not b:
            break
        data += b
    s.close()
    return data


class NotifySocket:
    """A fake NOTIFY_SOCKET: collects what the daemon sends to systemd."""

    def __init__(self, tmp):
        self.path = os.path.join(tmp.path, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages = []
        self.lock = threading.Lock()
        self.stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop:
            try:
                m = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.messages.append(m)

    def has(self, prefix):
        with self.lock:
            return any(line.startswith(prefix) for m in self.messages for line in m.split("\n"))

    def lines(self):
        with self.lock:
            return [line for m in self.messages for line in m.split("\n")]

    def close(self):
        self.stop = True
        self.sock.close()


def case_notify_ready_status_watchdog_stopping(ctx):
    """READY=1 once PostgreSQL answered, STATUS lines, WATCHDOG pings from the
    loop, RELOADING on SIGHUP, STOPPING on SIGTERM, exit 0."""
    pg = ctx.pg()
    ns = NotifySocket(ctx.tmp)
    try:
        d = ctx.daemon(pg, start=False)
        d.env["NOTIFY_SOCKET"] = ns.path
        d.env["WATCHDOG_USEC"] = "400000"
        d.start()
        wait_until(lambda: ns.has("READY=1"), 30, what="READY=1")
        check(ns.has("STATUS=serving"), f"STATUS line: {ns.lines()}")
        wait_until(lambda: sum(1 for x in ns.lines() if x == "WATCHDOG=1") >= 3, 30,
                   what="three watchdog pings")
        d.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: ns.has("RELOADING=1"), 30, what="RELOADING=1")
        check_eq(d.stop(signal.SIGTERM), 0, "exit status after SIGTERM")
        check(ns.has("STOPPING=1"), f"STOPPING=1 in {ns.lines()}")
        print("notify lines:", sorted(set(ns.lines())))
    finally:
        ns.close()


def case_notify_not_ready_without_database(ctx):
    """With PostgreSQL down the listeners are up but READY=1 is not sent; it
    comes once the database answers."""
    pg = ctx.pg()
    pg.stop()
    ns = NotifySocket(ctx.tmp)
    try:
        d = ctx.daemon(pg, start=False)
        d.env["NOTIFY_SOCKET"] = ns.path
        d.start(wait_ready=False)
        check_eq(d.status("/healthz"), 200, "/healthz while the database is down")
        check_eq(d.status("/readyz"), 503, "/readyz while the database is down")
        check(not ns.has("READY=1"), "READY=1 before the database answered")
        pg.start()
        wait_until(lambda: ns.has("READY=1"), 30, what="READY=1 after the database came back")
    finally:
        ns.close()


def case_socket_activation(ctx):
    """systemd-socket-activate hands the daemon both listening sockets; it
    serves on them (and says so in its log)."""
    pg = ctx.pg()
    d = ctx.daemon(pg, start=False)
    d.write_config()
    logf = open(d.log_path, "ab")
    cmd = ["systemd-socket-activate", "-l", f"127.0.0.1:{d.public_port}",
           "-l", f"127.0.0.1:{d.admin_port}", idvtest.BIN, "serve", "--config", d.conf]
    d.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
    # The activator spawns the daemon on the first connection.
    wait_until(lambda: d.status("/readyz", admin=True) == 200, 30, what="readyz via activation")
    d.register("sa1", "biz1", token(1))
    st, body, _, _ = d.callback("sa1", "Y", "200", token(1))
    check_eq((st, body), (200, {"result": "accepted"}), "callback on the activated socket")
    check("using sockets passed by systemd" in d.logs(), "log names socket activation")
    check_eq(d.stop(signal.SIGTERM), 0, "exit status")


def case_sigterm_under_load_loses_nothing(ctx):
    """SIGTERM while clients send callbacks: every request sent before the
    signal gets an answer (200 committed, or 503), every 200 is in the
    database, the daemon exits 0."""
    pg = ctx.pg()
    n = 600
    register_bulk(pg, "st", n)
    d = ctx.daemon(pg)
    results = {}
    lock = threading.Lock()
    stop_at = [None]

    def client(k):
        conn = None
        for i in range(k, n, 8):
            path = cb_path(f"st{i}", i)
            try:
                if conn is None:
                    conn = socket.create_connection(("127.0.0.1", d.public_port), timeout=10)
                conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                sent = time.monotonic()
                data = b""
                while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + int(
                        data.split(b"Content-Length: ")[1].split(b"\r\n")[0]):
                    b = conn.recv(4096)
                    if not b:
                        raise ConnectionError("closed without an answer")
                    data += b
                status = int(data.split(b" ")[1])
                with lock:
                    results[i] = (status, data.split(b"\r\n\r\n", 1)[1], sent)
                if b"Connection: close" in data:
                    conn.close()
                    conn = None
            except OSError as e:
                with lock:
                    results[i] = ("error", str(e), time.monotonic())
                if conn:
                    conn.close()
                conn = None
                if stop_at[0] is not None:
                    break
        if conn:
            conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    wait_until(lambda: len(results) >= n // 4, 60, what="a quarter of the load")
    stop_at[0] = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(60)
    rc = d.proc.wait(60)
    check_eq(rc, 0, "exit status")
    committed = set(r[0] for r in pg.rows("SELECT transaction_id FROM idv.callback_results"))
    counts = {}
    for i, (st, body, sent) in results.items():
        counts[st] = counts.get(st, 0) + 1
        if st == "error":
            # Only requests sent after the signal may go unanswered.
            check(sent >= stop_at[0], f"request {i} sent before SIGTERM got no answer: {body}")
        elif st == 200:
            check(f"st{i}" in committed, f"200 for st{i} but no committed row")
        else:
            check_eq(st, 503, f"status of st{i}")
    lost = sum(1 for i, r in results.items() if r[0] == 200 and f"st{i}" not in committed)
    print(f"answers: {counts}; rows: {len(committed)}; lost: {lost}")
    check_eq(lost, 0, "acknowledged but not committed")


def case_sigterm_finishes_pipelined_and_readyz_503(ctx):
    """A request waiting on a frozen database when SIGTERM comes is still
    answered, the /readyz pipelined behind it answers 503, then the connection
    closes and the daemon exits 0."""
    pg = ctx.pg()
    d = ctx.daemon(pg, db_timeout_ms=3000)
    d.register("pp1", "biz1", token(1))
    s = socket.create_connection(("127.0.0.1", d.public_port), timeout=30)
    pg.freeze()
    try:
        s.sendall(f"GET {cb_path('pp1', 1)} HTTP/1.1\r\nHost: x\r\n\r\n"
                  "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        time.sleep(0.3)  # let both reach the daemon before the signal
        d.proc.send_signal(signal.SIGTERM)
    finally:
        pg.thaw()
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
    s.close()
    resp = idvtest.parse_responses(data)
    check_eq(len(resp), 2, f"two answers: {data!r}")
    check(resp[0][0] in (200, 503), f"callback status {resp[0][0]}")
    check_eq(resp[1][0], 503, "readyz while draining")
    check_eq(resp[1][1].get("connection"), "close", "last answer closes")
    check_eq(d.proc.wait(30), 0, "exit status")
    if resp[0][0] == 200:
        check_eq(pg.psql("SELECT count(*) FROM idv.callback_results"), "1", "committed row")


def case_xff_trusted_and_spoofed(ctx):
    """X-Forwarded-For is believed only from trusted peers, right-most
    untrusted address first; from an untrusted peer it is ignored."""
    pg = ctx.pg()
    register_bulk(pg, "xf", 6)
    d = ctx.daemon(pg, trusted_proxies="127.0.0.1/32, 10.0.0.0/8")
    cases = [
        (0, b"X-Forwarded-For: 203.0.113.9\r\n", None, "203.0.113.9"),
        (1, b"X-Forwarded-For: 198.51.100.1, 10.1.2.3\r\n", None, "198.51.100.1"),
        (2, b"X-Forwarded-For: 6.6.6.6, 7.7.7.7\r\n", None, "7.7.7.7"),
        (3, b"X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 10.9.9.9\r\n", None, "6.6.6.6"),
        # Not from a trusted peer: the header is a spoof, the peer is the client.
        (4, b"X-Forwarded-For: 203.0.113.77\r\n", "127.0.0.2", "127.0.0.2"),
        (5, b"X-Forwarded-For: garbage\r\n", None, "127.0.0.1"),
    ]
    for i, hdr, src, want in cases:
        data = get_raw(d.public_port, cb_path(f"xf{i}", i), hdr, src=src)
        check(b'"accepted"' in data, f"case {i}: {data!r}")
        got = pg.psql(f"SELECT host(client_ip) FROM idv.callback_events WHERE transaction_id = 'xf{i}'")
        check_eq(got, want, f"client_ip of case {i}")


def proxy_v2(src, sport=4000, dst="127.0.0.1", dport=80, cmd=0x21):
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack(">HH", sport, dport)
    return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([cmd, 0x11]) + struct.pack(">H", len(body)) + body)


def case_proxy_protocol(ctx):
    """With proxy_protocol = on, a PROXY v1 or v2 header from a trusted peer
    names the client; a trusted peer without one is closed; an untrusted
    peer's PROXY line is not believed (it is not HTTP either: 400)."""
    pg = ctx.pg()
    register_bulk(pg, "px", 4)
    d = ctx.daemon(pg, trusted_proxies="127.0.0.1/32", proxy_protocol="on")
    data = get_raw(d.public_port, cb_path("px0", 0),
                   prefix=b"PROXY TCP4 192.0.2.10 127.0.0.1 5555 80\r\n")
    check(b'"accepted"' in data, f"v1: {data!r}")
    data = get_raw(d.public_port, cb_path("px1", 1), prefix=proxy_v2("192.0.2.11"))
    check(b'"accepted"' in data, f"v2: {data!r}")
    data = get_raw(d.public_port, cb_path("px2", 2), prefix=proxy_v2("192.0.2.12", cmd=0x20))
    check(b'"accepted"' in data, f"v2 LOCAL: {data!r}")
    rows = dict(pg.rows("SELECT transaction_id, host(client_ip) FROM idv.callback_events"))
    check_eq(rows.get("px0"), "192.0.2.10", "client from PROXY v1")
    check_eq(rows.get("px1"), "192.0.2.11", "client from PROXY v2")
    check_eq(rows.get("px2"), "127.0.0.1", "LOCAL keeps the peer")
    # A trusted peer that sends no PROXY header: closed without an answer.
    data = get_raw(d.public_port, cb_path("px3", 3))
    check_eq(data, b"", "no answer without a PROXY header")
    # An untrusted peer's PROXY line is not believed.
    data = get_raw(d.public_port, cb_path("px3", 3), src="127.0.0.2",
                   prefix=b"PROXY TCP4 192.0.2.99 127.0.0.1 5555 80\r\n")
    check(data.startswith(b"HTTP/1.1 400"), f"untrusted PROXY line: {data[:80]!r}")
    check_eq(pg.psql("SELECT count(*) FROM idv.callback_events WHERE client_ip = '192.0.2.99'"),
             "0", "spoofed address recorded")
    # A header that is not a valid PROXY header is closed.
    data = get_raw(d.public_port, "/healthz", prefix=b"PROXY TCP4 not-an-ip x 1 2\r\n")
    check_eq(data, b"", "invalid PROXY header")


def make_cert(tmp, name, cn):
    key = os.path.join(tmp.path, f"{name}.key")
    crt = os.path.join(tmp.path, f"{name}.crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", crt,
                    "-days", "2", "-subj", f"/CN={cn}", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    return crt, key


def s_client(port, *args):
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-brief"]
                       + list(args), input=b"", capture_output=True, timeout=30)
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


def case_tls_versions_and_ciphers(ctx):
    """TLS 1.3 and 1.2 with AEAD work; TLS 1.1 and a non-AEAD suite fail; a
    callback over TLS is accepted."""
    pg = ctx.pg()
    crt, key = make_cert(ctx.tmp, "a", "idv-a")
    d = ctx.daemon(pg, tls_cert_file=crt, tls_key_file=key)
    rc, out = s_client(d.public_port, "-tls1_3")
    check(rc == 0 and "TLSv1.3" in out, f"TLS 1.3: {out}")
    rc, out = s_client(d.public_port, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
    check(rc == 0 and "TLSv1.2" in out, f"TLS 1.2 AEAD: {out}")
    rc, out = s_client(d.public_port, "-tls1_1")
    check(rc != 0, f"TLS 1.1 must fail: {out}")
    rc, out = s_client(d.public_port, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA")
    check(rc != 0, f"non-AEAD suite must fail: {out}")
    # A real request over TLS, trusting the self-signed certificate.
    sc = ssl.create_default_context(cafile=crt)
    d.register("tl1", "biz1", token(1))
    with socket.create_connection(("127.0.0.1", d.public_port), timeout=10) as raw:
        with sc.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(f"GET {cb_path('tl1', 1)} HTTP/1.1\r\nHost: x\r\n\r\n"
                      "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                b = s.recv(65536)
                if not b:
                    break
                data += b
    resp = idvtest.parse_responses(data)
    check_eq([r[0] for r in resp], [200, 200], "answers over TLS")
    check_eq(json.loads(resp[0][2]), {"result": "accepted"}, "callback over TLS")


def cert_fingerprint(port):
    pem = ssl.get_server_certificate(("127.0.0.1", port))
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def case_tls_certificate_reload(ctx):
    """SIGHUP serves the new certificate to new connections; a bad file keeps
    the old one and says why in the log."""
    pg = ctx.pg()
    crt, key = make_cert(ctx.tmp, "live", "idv-old")
    d = ctx.daemon(pg, tls_cert_file=crt, tls_key_file=key)
    old = cert_fingerprint(d.public_port)
    new_crt, new_key = make_cert(ctx.tmp, "next", "idv-new")
    os.replace(new_crt, crt)
    os.replace(new_key, key)
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "TLS certificate reloaded" in d.logs(), 30, what="reload logged")
    new = cert_fingerprint(d.public_port)
    check(new != old, "new connections get the new certificate")
    with open(crt, "w") as f:
        f.write("not a certificate\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "TLS certificate not reloaded" in d.logs(), 30, what="refusal logged")
    check_eq(cert_fingerprint(d.public_port), new, "bad file keeps the previous certificate")


def case_reload_log_level_and_bad_config(ctx):
    """SIGHUP applies log_level; an invalid file is refused and the daemon
    keeps serving with the old configuration."""
    pg = ctx.pg()
    d = ctx.daemon(pg, log_level="warn")
    d.request("GET", "/healthz")
    check("path=/healthz" not in d.logs(), "no request line at warn")
    d.cfg["log_level"] = "info"
    d.write_config()
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in d.logs(), 30, what="reload")
    d.request("GET", "/healthz")
    wait_until(lambda: "path=/healthz" in d.logs(), 30, what="request line at info")
    d.cfg["db_pool_size"] = "many"
    d.write_config()
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in d.logs(), 30, what="refusal")
    check("db_pool_size" in d.logs(), "refusal names the key")
    check_eq(d.status("/readyz"), 200, "still serving")


def case_json_logs_without_secrets(ctx):
    """log_format = json: one JSON object per line, the request line has the
    transaction id and outcome, never the query string or the token."""
    pg = ctx.pg()
    d = ctx.daemon(pg, log_format="json")
    d.register("jl1", "biz1", token(1))
    d.callback("jl1", "Y", "200", token(1))
    d.callback("jl1", "Y", "200", "wrong-token-0123456789")
    lines = [json.loads(x) for x in d.logs().splitlines() if x.strip()]
    req = [x for x in lines if x.get("msg") == "request" and x.get("listener") == "public"
           and x.get("transaction_id") == "jl1"]
    check_eq(sorted(x["outcome"] for x in req), ["accepted", "rejected"], "request lines")
    check(all(x["path"] == "/idv/callback" for x in req), "path without query")
    text = d.logs()
    check(token(1) not in text and "wrong-token" not in text and "callbackToken" not in text,
          "no token or query string in the log")


def case_check_config_and_version(ctx):
    """check-config prints the effective configuration with secrets masked and
    exits 2 naming the key on a bad value; version lists the libraries."""
    pg = ctx.pg()
    d = ctx.daemon(pg, start=False, database_url=pg.url() + " password=hunter2secret")
    d.write_config()
    r = subprocess.run([idvtest.BIN, "check-config", "--config", d.conf], capture_output=True,
                       text=True)
    check_eq(r.returncode, 0, f"check-config: {r.stderr}")
    check("hunter2secret" not in r.stdout and idvtest.ADMIN_TOKEN not in r.stdout,
          "secrets masked")
    check("password=********" in r.stdout, "password shown masked")
    d.cfg["idle_timeout_ms"] = "-5"
    d.write_config()
    r = subprocess.run([idvtest.BIN, "check-config", "--config", d.conf], capture_output=True,
                       text=True)
    check_eq(r.returncode, 2, "exit status on a bad value")
    check("idle_timeout_ms" in r.stderr, f"names the key: {r.stderr}")
    r = subprocess.run([idvtest.BIN, "version"], capture_output=True, text=True)
    check_eq(r.returncode, 0, "version")
    for lib in ("idv-callbackd", "libuv", "llhttp", "OpenSSL", "libpq"):
        check(lib in r.stdout, f"{lib} in version output")
    r = subprocess.run([idvtest.BIN, "frobnicate"], capture_output=True, text=True)
    check_eq(r.returncode, 2, "unknown command")


if __name__ == "__main__":
    sys.exit(idvtest.main(globals()))
