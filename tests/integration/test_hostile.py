#!/usr/bin/env python3
"""Hostile clients over real sockets: the limits of the interface, request
smuggling payloads, slowloris, ten thousand idle keep-alive connections, and
secrets after a hostile run.

Cases that need no database run the daemon without one (the probe, /healthz
and the limits are answered without PostgreSQL). Each case prints what it
counted. No assertion is about time: wait_until and socket timeouts only
bound waits; a timeout is shown to count from accept by a client that keeps
sending bytes more often than the timeout, so that only a deadline from
accept can close it."""
import asyncio
import collections
import hashlib
import http.client
import os
import random
import re
import socket
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
import idvtest  # noqa: E402
from idvtest import check, check_eq, wait_until  # noqa: E402

OK_BODY = b'{"result":"ok"}'
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


# ---- helpers ----------------------------------------------------------------

def req(target, headers=(), body=b"", close=False, method="GET"):
    """The bytes of one HTTP/1.1 request with a Host header."""
    lines = [f"{method} {target} HTTP/1.1", "Host: idv.test"] + list(headers)
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def exchange(port, data, timeout=20.0):
    """Sends data on a fresh connection and reads until the server closes.
    Returns (bytes read, closed by the server)."""
    return idvtest.raw_http(port, data, timeout=timeout)


def responses(data):
    """(status, headers, body) of each response in data (GET answers only)."""
    return idvtest.parse_responses(data) if data else []


def metric(d, name, **labels):
    v = idvtest.metric_value(d.metrics(), name, **labels)
    return 0.0 if v is None else v


def nodb_daemon(ctx, **cfg):
    """A daemon whose database does not exist: the probe, /healthz and the
    HTTP limits need none."""
    return ctx.daemon(None, wait_ready=False, **cfg)


def callback_target(tx, token, passed="Y", sub="200"):
    return f"/idv/callback?transactionId={tx}&passed={passed}&subCode={sub}&callbackToken={token}"


def salt(tag):
    return f"SeCrEt-{tag}-{uuid.uuid4().hex[:12]}"


class Trickle:
    """A connection that sends its bytes one at a time, `interval` apart,
    until the server closes it or the bytes run out. Records what it read."""

    def __init__(self, port, first, rest, interval):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.s.sendall(first)
        self.rest = rest
        self.interval = interval
        self.sent = 0
        self.read = b""
        self.closed = False

    def run(self):
        for i in range(len(self.rest) + 1):
            # Waiting for the server is the pacing: a close shows up here.
            self.s.settimeout(self.interval)
            try:
                b = self.s.recv(65536)
                if not b:
                    self.closed = True
                    return self
                self.read += b
            except socket.timeout:
                pass
            except ConnectionResetError:
                self.closed = True
                return self
            if i == len(self.rest):
                return self
            try:
                self.s.sendall(self.rest[i:i + 1])
                self.sent += 1
            except (BrokenPipeError, ConnectionResetError):
                self.closed = True
                return self
        return self

    def close(self):
        self.s.close()


# ---- limits -----------------------------------------------------------------------

def line_of(n, prefix="/idv/callback?pad="):
    """A GET request line of exactly n bytes (without CRLF) on the callback
    path, with only an unknown parameter (a probe)."""
    pad = n - len("GET  HTTP/1.1") - len(prefix)
    return f"GET {prefix}{'a' * pad} HTTP/1.1"


def case_request_line_limit(ctx):
    """A request line of 8 KiB is served; one byte more is 414 and the
    connection is closed (a request after it is not answered); an endless
    line is 414 before its end arrives."""
    d = nodb_daemon(ctx)
    line = line_of(8192)
    check_eq(len(line), 8192, "length of the longest line")
    data, closed = exchange(d.public_port, (line + "\r\nHost: x\r\nConnection: close\r\n\r\n")
                            .encode())
    got = [(s, b) for s, _, b in responses(data)]
    check_eq(got, [(200, OK_BODY)], "8192-byte request line")
    counts = collections.Counter()
    for label, data_in in (
            ("8193-byte line", (line_of(8193) + "\r\nHost: x\r\n\r\n").encode() + req("/healthz")),
            ("64 KiB line", (line_of(65536) + "\r\nHost: x\r\n\r\n").encode() + req("/healthz")),
            ("20 KB without an end", b"GET /" + b"a" * 20000)):
        data, closed = exchange(d.public_port, data_in)
        got = responses(data)
        check_eq([s for s, _, _ in got], [414], f"{label}: answers")
        check_eq(got[0][1].get("connection"), "close", f"{label}: Connection header")
        check(closed, f"{label}: connection closed")
        counts[got[0][0]] += 1
    check_eq(metric(d, "idv_http_requests_total", listener="public", status="414"), 3.0,
             "414 counter")
    check_eq(metric(d, "idv_callbacks_total", outcome="ok"), 1.0,
             "requests after a 414 never reached the handler")
    print(f"request line: 8192 bytes -> 200; over 8 KiB -> {dict(counts)}, each closed,"
          " the request behind it unanswered", flush=True)
    d.stop_clean()


def headers_of(n):
    """Host plus one X-Pad line, the header lines with their CRLFs adding up
    to exactly n bytes."""
    return ["Host: x", "X-Pad: " + "p" * (n - len("Host: x\r\nX-Pad: \r\n"))]


def head_with(lines, close=False):
    extra = ["Connection: close"] if close else []
    return ("\r\n".join(["GET /idv/callback?pad=1 HTTP/1.1"] + lines + extra) +
            "\r\n\r\n").encode()


def case_header_limits(ctx):
    """Header lines of 16 KiB in all are served, one byte more is 431; 100
    fields are served, 101 are 431; 20 lines of 1000 bytes are 431. Each 431
    closes the connection and the request after it is not answered."""
    d = nodb_daemon(ctx)
    # Connection: close is a header line too: the limit cases carry none.
    for label, data_in in (("16 KiB of header lines", head_with(headers_of(16384))),
                           ("100 fields", head_with(["Host: x"] +
                                                    [f"X-F{i}: {i}" for i in range(1, 100)]))):
        data, closed = exchange(d.public_port, data_in + req("/healthz", close=True))
        check_eq([(s, b) for s, _, b in responses(data)][:1], [(200, OK_BODY)], label)
        check(closed, f"{label}: closed after Connection: close")
    refused = 0
    for label, data_in in (
            ("16 KiB + 1 of header lines", head_with(headers_of(16385))),
            ("101 fields", head_with(["Host: x"] + [f"X-F{i}: {i}" for i in range(1, 101)])),
            ("20 lines of 1000 bytes", head_with(["Host: x"] + ["X-Big: " + "b" * 1000] * 20)),
            ("an endless header line", b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 20000)):
        data, closed = exchange(d.public_port, data_in + req("/healthz"))
        got = responses(data)
        check_eq([s for s, _, _ in got], [431], f"{label}: answers")
        check_eq(got[0][1].get("connection"), "close", f"{label}: Connection header")
        check(closed, f"{label}: connection closed")
        refused += 1
    check_eq(metric(d, "idv_http_requests_total", listener="public", status="431"),
             float(refused), "431 counter")
    check_eq(metric(d, "idv_callbacks_total", outcome="ok"), 2.0, "probes that reached the handler")
    print(f"headers: 16384 bytes and 100 fields -> 200; {refused} over the limits -> 431,"
          " each closed, the request behind it unanswered", flush=True)
    d.stop_clean()


def case_header_timeout_from_accept(ctx):
    """A head not complete within header_timeout_ms, counted from accept (or
    from the first byte of a later request), closes the connection: a client
    that sends nothing, one that sends a byte four times per timeout, and a
    keep-alive client whose second request trickles. Nothing is answered to
    them."""
    d = nodb_daemon(ctx, header_timeout_ms=1000, idle_timeout_ms=600000)
    # Sends nothing at all.
    silent = Trickle(d.public_port, b"", b"", 30).run()
    # A byte every 250 ms: never 1000 ms without one, so only a deadline
    # counted from accept can close it; its head would take 50 s to finish.
    head = req(callback_target("txslow", "SeCrEt-slow-token-0001"))
    trickle = Trickle(d.public_port, head[:1], head[1:] + b"X" * 200, 0.25).run()
    # One request answered, then the next one trickles.
    ka = Trickle(d.public_port, req("/healthz") + head[:1], head[1:] + b"X" * 200, 0.25).run()
    for t in (silent, trickle, ka):
        t.close()
    print(f"header timeout: silent closed={silent.closed}; trickling closed={trickle.closed}"
          f" after {trickle.sent} of {len(head) + 199} bytes; keep-alive closed={ka.closed}"
          f" after {ka.sent} bytes of its second request", flush=True)
    check(silent.closed and silent.read == b"", "a silent connection is closed unanswered")
    check(trickle.closed, "a trickling head is closed")
    check_eq(trickle.read, b"", "nothing answered to the trickling head")
    check(trickle.sent < len(head) - 1, "closed before the head was complete")
    check(ka.closed, "a trickling second request is closed")
    check_eq([s for s, _, _ in responses(ka.read)], [200], "only the first request answered")
    check(ka.sent < len(head) - 1, "closed before the second head was complete")
    check_eq(metric(d, "idv_connections_timed_out_total", listener="public"), 3.0,
             "connections closed by the head deadline")
    check_eq(metric(d, "idv_callbacks_total", outcome="ok") +
             metric(d, "idv_callbacks_total", outcome="malformed"), 0.0,
             "trickled callbacks never reached the handler")
    d.stop_clean()


def case_idle_timeout(ctx):
    """A keep-alive connection idle for idle_timeout_ms is closed (the head
    deadline is ten minutes here, so it is the idle one); nothing is sent on
    it; a new connection is served afterwards."""
    d = nodb_daemon(ctx, header_timeout_ms=600000, idle_timeout_ms=1000)
    conns = []
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", d.public_port), timeout=30)
        s.sendall(req("/idv/callback"))
        conns.append(s)
    closed = 0
    for s in conns:
        data = b""
        while b'{"result":"ok"}' not in data:
            b = s.recv(4096)
            check(b, "the first request is answered")
            data += b
        check_eq([(st, b) for st, _, b in responses(data)], [(200, OK_BODY)], "first answer")
        s.settimeout(60)  # bounds the wait only
        try:
            rest = s.recv(4096)
        except ConnectionResetError:
            rest = b""
        check_eq(rest, b"", "an idle keep-alive connection is closed without an answer")
        closed += 1
        s.close()
    data, _ = exchange(d.public_port, req("/idv/callback", close=True))
    check_eq([(s, b) for s, _, b in responses(data)], [(200, OK_BODY)], "served afterwards")
    timed_out = metric(d, "idv_connections_timed_out_total", listener="public")
    print(f"idle timeout: {closed} idle keep-alive connections closed by the server;"
          f" head deadlines counted {timed_out:.0f}", flush=True)
    check_eq(timed_out, 0.0, "closed as idle, not by the head deadline")
    d.stop_clean()


def case_max_connections(ctx):
    """With max_connections open, a new connection (on either listener) is
    closed at once without an answer, while the open ones are still served;
    once one closes, a new one is served."""
    limit = 10
    d = nodb_daemon(ctx, max_connections=limit, header_timeout_ms=600000,
                    idle_timeout_ms=600000)
    refused = 0

    def admin_metrics():
        """/metrics, or None when the connection was refused (counted)."""
        nonlocal refused
        data, _ = exchange(d.admin_port, req("/metrics", [f"Authorization: Bearer"
                                                          f" {idvtest.ADMIN_TOKEN}"], close=True))
        if not data:
            refused += 1
            return None
        return data.partition(b"\r\n\r\n")[2].decode()

    def gauge(text, lis):
        return idvtest.metric_value(text, "idv_open_connections", listener=lis)
    # Nothing but this request open (the fixture's own checks have closed).
    wait_until(lambda: (lambda t: t and gauge(t, "public") == 0 and gauge(t, "admin") == 1)(
        admin_metrics()), 30, what="no connection open")
    held = []
    for _ in range(limit):
        c = http.client.HTTPConnection("127.0.0.1", d.public_port, timeout=30)
        c.request("GET", "/idv/callback")
        r = c.getresponse()
        check_eq((r.status, r.read()), (200, OK_BODY), "a held connection is served")
        held.append(c)
    for port in (d.public_port, d.public_port, d.admin_port):
        data, closed = exchange(port, req("/healthz"))
        check_eq(data, b"", "a connection over the limit is not answered")
        check(closed, "a connection over the limit is closed")
        refused += 1
    for c in held:
        c.request("GET", "/idv/callback")
        r = c.getresponse()
        check_eq((r.status, r.read()), (200, OK_BODY), "held connections still served")
    held.pop().close()

    def served():
        nonlocal refused
        data, _ = exchange(d.public_port, req("/healthz", close=True))
        if not data:
            refused += 1
        return data.startswith(b"HTTP/1.1 200 ")
    wait_until(served, 30, 0.05, "a new connection served once one closed")
    for c in held:
        c.close()
    text = wait_until(admin_metrics, 30, 0.05, "/metrics once the held connections closed")
    got = {lis: idvtest.metric_value(text, "idv_connections_refused_total", listener=lis)
           for lis in ("public", "admin")}
    print(f"max_connections={limit}: connections closed at once {refused}"
          f" (metric: {got}); the {limit} held ones served throughout", flush=True)
    check_eq(sum(got.values()), float(refused), "refused connections counted")
    check(got["admin"] >= 1.0, "the admin listener shares the limit")
    d.stop_clean()


def case_requests_per_connection(ctx):
    """max_requests_per_connection answers per connection, the last with
    Connection: close; pipelined requests beyond it are never answered and
    never reach the handler."""
    n = 5
    d = nodb_daemon(ctx, max_requests_per_connection=n)
    data, closed = exchange(d.public_port, b"".join(req("/idv/callback?i=%d" % i)
                                                    for i in range(n + 3)))
    got = responses(data)
    check_eq([(s, b) for s, _, b in got], [(200, OK_BODY)] * n, "pipelined answers")
    check_eq([h.get("connection") for _, h, _ in got], [None] * (n - 1) + ["close"],
             "Connection: close on the last answer only")
    check(closed, "closed after the last answer")
    c = http.client.HTTPConnection("127.0.0.1", d.public_port, timeout=30)
    c.connect()
    sock = c.sock
    last = None
    for i in range(n):
        check(c.sock is sock, f"request {i} on the same connection")
        c.request("GET", "/idv/callback")
        r = c.getresponse()
        check_eq((r.status, r.read()), (200, OK_BODY), f"request {i} in sequence")
        last = r.getheader("Connection")
    check_eq(last, "close", "the last of the sequence closes")
    c.close()
    check_eq(metric(d, "idv_callbacks_total", outcome="ok"), float(2 * n),
             "requests that reached the handler")
    print(f"max_requests_per_connection={n}: {n + 3} pipelined -> {len(got)} answered,"
          f" then closed; {n} in sequence, the last with Connection: close", flush=True)
    d.stop_clean()


# ---- smuggling -----------------------------------------------------------------------

def smuggling_payloads(carrier, smuggled):
    """(label, bytes of the refused request) with the sources of the CVE
    payloads (tests/unit/test_http.c has the same, byte for byte). carrier is
    a valid callback target: were the request not refused, it would be
    recorded. smuggled is the request hidden inside some payloads."""
    C = carrier
    S = smuggled.decode()
    return [
        ("obs-fold", f"GET {C} HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n 2\r\n\r\n"),
        ("obs-fold with a tab", f"GET {C} HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\t2\r\n\r\n"),
        ("whitespace before a colon", f"GET {C} HTTP/1.1\r\nHost : x\r\n\r\n"),
        ("tab before a colon", f"GET {C} HTTP/1.1\r\nHost: x\r\nContent-Length\t: 0\r\n\r\n"),
        ("lone CR in a value", f"GET {C} HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n"),
        ("lone CR before a header", f"GET {C} HTTP/1.1\r\nHost: x\r\rX-B: 1\r\n\r\n"),
        ("lone CR in the request line", f"GET {C}\r HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("header line starting with a space", f"GET {C} HTTP/1.1\r\n Host: x\r\n\r\n"),
        ("header line starting with a tab", f"GET {C} HTTP/1.1\r\nHost: x\r\n\tX-A: 1\r\n\r\n"),
        ("'@' in a header name", f"GET {C} HTTP/1.1\r\nHost: x\r\nX@Y: 1\r\n\r\n"),
        ("space in a header name", f"GET {C} HTTP/1.1\r\nHost: x\r\nX Y: 1\r\n\r\n"),
        ("byte 0x80 in a header name", f"GET {C} HTTP/1.1\r\nHost: x\r\nX\x80: 1\r\n\r\n"),
        ("empty header name", f"GET {C} HTTP/1.1\r\nHost: x\r\n: 1\r\n\r\n"),
        ("NUL in a value", f"GET {C} HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n"),
        ("bare LF", f"GET {C} HTTP/1.1\nHost: x\n\n"),
        ("two Host headers", f"GET {C} HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("absolute-form target", f"GET http://idv.test{C} HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("Transfer-Encoding: chunked", f"GET {C} HTTP/1.1\r\nHost: x\r\n"
                                       "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("Transfer-Encoding hiding a request",
         f"GET {C} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
         f"{len(S):x}\r\n{S}\r\n0\r\n\r\n"),
        ("Transfer-Encoding: identity", f"GET {C} HTTP/1.1\r\nHost: x\r\n"
                                        "Transfer-Encoding: identity\r\n\r\n"),
        ("Transfer-Encoding: gzip, chunked", f"GET {C} HTTP/1.1\r\nHost: x\r\n"
                                             "transfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        ("CL.TE", f"GET {C} HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nX"),
        ("TE.CL", f"GET {C} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  f"Content-Length: 4\r\n\r\n{len(S):x}\r\n{S}\r\n0\r\n\r\n"),
        ("a body on the callback", f"GET {C} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n"
                                   "abcd"),
        ("Content-Length hiding a request", f"GET {C} HTTP/1.1\r\nHost: x\r\n"
                                            f"Content-Length: {len(S)}\r\n\r\n{S}"),
        ("Content-Length: 0, 0", f"GET {C} HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 0\r\n\r\n"),
        ("Content-Length: 0 twice", f"GET {C} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                                    "Content-Length: 0\r\n\r\n"),
        ("Content-Length: +0", f"GET {C} HTTP/1.1\r\nHost: x\r\nContent-Length: +0\r\n\r\n"),
        ("Content-Length: 00", f"GET {C} HTTP/1.1\r\nHost: x\r\nContent-Length: 00\r\n\r\n"),
        ("Content-Length: -0", f"GET {C} HTTP/1.1\r\nHost: x\r\nContent-Length: -0\r\n\r\n"),
        ("Content-Length empty", f"GET {C} HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n"),
        ("POST with a body", f"POST {C} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"),
        # CVE-2021-22959: nodejs/llhttp test/request/content-length.md,
        # "Invalid whitespace token with Content-Length header field".
        ("CVE-2021-22959", "PUT /url HTTP/1.1\r\nConnection: upgrade\r\nContent-Length : 4\r\n"
                           "Upgrade: ws\r\n\r\nabcdefgh"),
        # CVE-2022-32214: nodejs/node test-http-missing-header-separator-cr.js.
        ("CVE-2022-32214", "GET / HTTP/1.1\r\nHost: localhost\r\nDummy: x\nContent-Length: 23\r\n"
                           "\r\nGET / HTTP/1.1\r\nDummy: GET /admin HTTP/1.1\r\n"
                           "Host: localhost\r\n\r\n"),
        ("CVE-2022-32214 with Transfer-Encoding",
         "POST / HTTP/1.1\r\nHost: localhost\r\nx:x\nTransfer-Encoding: chunked\r\n\r\n"
         "1\r\nA\r\n0\r\n\r\n"),
        # The same, its hidden request made a callback (lengths recomputed).
        ("CVE-2022-32214, hiding a callback",
         f"GET / HTTP/1.1\r\nHost: localhost\r\nDummy: x\nContent-Length: {len(S)}\r\n\r\n{S}"),
        # CVE-2022-32215: Zeyu Zhang, "HTTP Request Smuggling in the Multiverse
        # of Parsing Flaws", obs-fold; nodejs/llhttp transfer-encoding.md.
        ("CVE-2022-32215", "GET / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n"
                           " , identity\r\n\r\n0\r\n\r\n"),
        ("CVE-2022-32215, OBS fold after chunked",
         "PUT /url HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n  abc\r\n\r\n"
         "5\r\nWorld\r\n0\r\n\r\n"),
        # CVE-2023-30589: nodejs/llhttp test/request/invalid.md, "Empty headers
        # separated by CR"; google/megalista PR #148.
        ("CVE-2023-30589", "POST / HTTP/1.1\r\nConnection: Close\r\nHost: localhost:5000\r\n"
                           "x:\rTransfer-Encoding: chunked\r\n\r\n1\r\nA\r\n0\r\n\r\n"),
        ("CVE-2023-30589, aiohttp reproducer",
         "POST / HTTP/1.1\r\nHost: localhost:8080\r\nX-Abc: \rxTransfer-Encoding: chunked\r\n"
         "\r\n1\r\nA\r\n0\r\n\r\n"),
        # CVE-2024-27982: nodejs/llhttp test/request/invalid.md, "Spaces before
        # headers".
        ("CVE-2024-27982", "POST /hello HTTP/1.1\r\nHost: localhost\r\nFoo: bar\r\n"
                           " Content-Length: 38\r\n\r\nGET /bye HTTP/1.1\r\nHost: localhost\r\n"
                           "\r\n"),
        ("CVE-2024-27982, hiding a callback",
         f"POST /hello HTTP/1.1\r\nHost: localhost\r\nFoo: bar\r\n Content-Length: {len(S)}"
         f"\r\n\r\n{S}"),
    ]


def case_smuggling_payloads(ctx):
    """Each smuggling payload over a real socket: one answer, 400, and the
    connection closed. The callback appended after it (and the one hidden
    inside some of them) is never answered and never reaches the handler: no
    result and no audit row for its transaction. Sent on their own
    afterwards, the same callbacks are accepted."""
    pg = ctx.pg()
    d = ctx.daemon(pg)
    carrier = idvtest.register_bulk(pg, 1, prefix="carrier", salt=salt("carrier"))[0]
    n_max = 64
    smug = idvtest.register_bulk(pg, n_max, prefix="smug", salt=salt("smug"))
    ctarget = callback_target(*carrier)
    payloads = smuggling_payloads(ctarget, req(callback_target(*smug[0])))
    check(len(payloads) <= n_max, "enough smuggled transactions")
    results = collections.Counter()
    for k, (label, _) in enumerate(payloads):
        hidden = req(callback_target(*smug[k]))
        payload = smuggling_payloads(ctarget, hidden)[k][1].encode("latin-1")
        data, closed = exchange(d.public_port, payload + hidden)
        got = responses(data)
        check_eq([s for s, _, _ in got], [400], f"{label}: answers")
        check_eq(got[0][1].get("connection"), "close", f"{label}: Connection header")
        check(closed, f"{label}: connection closed")
        results[got[0][0]] += 1
    used = [tx for tx, _ in smug[:len(payloads)]]
    in_list = ",".join(f"'{tx}'" for tx in used)
    rows = int(pg.psql(f"SELECT count(*) FROM idv.callback_results WHERE transaction_id IN"
                       f" ({in_list}) OR transaction_id = '{carrier[0]}'"))
    # Audit rows of malformed requests are written after the answer: a later
    # callback's row being there means every earlier one is too.
    st, _, _, raw = d.callback(*smug[-1][:1], "Y", "200", smug[-1][1])
    check_eq((st, raw), (200, b'{"result":"accepted"}'), "a later callback")
    wait_until(lambda: pg.psql(f"SELECT count(*) FROM idv.callback_events"
                               f" WHERE transaction_id = '{smug[-1][0]}'") == "1",
               30, what="the audit row of the later callback")
    events = pg.rows(f"SELECT coalesce(transaction_id, '-'), outcome, count(*)"
                     f" FROM idv.callback_events WHERE transaction_id <> '{smug[-1][0]}'"
                     f" OR transaction_id IS NULL GROUP BY 1, 2 ORDER BY 1, 2")
    smuggled_events = [e for e in events if e[0] in used]
    print(f"smuggling: {len(payloads)} payloads -> answers {dict(results)}, each closed;"
          f" result rows of smuggled or carrier transactions {rows}; audit rows of smuggled"
          f" transactions {len(smuggled_events)}; other audit rows {events}", flush=True)
    check_eq(rows, 0, "results recorded for refused or smuggled requests")
    check_eq(smuggled_events, [], "audit rows of smuggled requests")
    check(all(e[0] == carrier[0] and e[1] == "malformed" for e in events),
          f"only malformed audit rows of the carrier: {events}")
    check_eq(metric(d, "idv_http_requests_total", listener="public", status="400"),
             float(len(payloads)), "400 answers")
    check_eq(metric(d, "idv_http_requests_total", listener="public", status="200"), 1.0,
             "200 answers (the later callback only)")
    # The smuggled callbacks were valid all along: on their own they are accepted.
    accepted = 0
    for tx, tok in smug[:len(payloads)]:
        st, _, _, raw = d.callback(tx, "Y", "200", tok)
        check_eq((st, raw), (200, b'{"result":"accepted"}'), f"{tx} on its own")
        accepted += 1
    print(f"smuggling: the {accepted} smuggled callbacks sent on their own: all accepted",
          flush=True)
    d.stop_clean()


# ---- slowloris ---------------------------------------------------------------------------

def case_slowloris_1000(ctx):
    """1000 connections sending a byte every 2 s (never 5 s without one) are
    all closed by the 5 s head deadline, unanswered, while a normal client
    keeps being served (every one of its callbacks accepted)."""
    idvtest.raise_nofile(4096)
    pg = ctx.pg()
    n = 1000
    d = ctx.daemon(pg, header_timeout_ms=5000)
    txs = idvtest.register_bulk(pg, 3000, prefix="n", salt=salt("normal"))
    normal = []
    stop = threading.Event()
    errors = []

    def normal_client():
        c = http.client.HTTPConnection("127.0.0.1", d.public_port, timeout=60)
        try:
            for tx, tok in txs:
                if stop.is_set():
                    return
                t = time.monotonic()
                c.request("GET", callback_target(tx, tok))
                r = c.getresponse()
                normal.append((r.status, r.read(), t, time.monotonic()))
                time.sleep(0.01)
        except Exception as e:  # reported below
            errors.append(repr(e))
        finally:
            c.close()

    state = collections.Counter()
    marks = {}

    async def slow(i, sem):
        async with sem:
            r, w = await asyncio.open_connection("127.0.0.1", d.public_port)
        state["connected"] += 1
        if state["connected"] == n:
            marks["connected"] = time.monotonic()
        head = req(callback_target(f"slow{i}", f"SeCrEt-slowloris-{i:04d}"))
        await asyncio.sleep(random.uniform(0, 2))
        try:
            for k in range(len(head)):
                w.write(head[k:k + 1])
                state["bytes"] += 1
                try:
                    b = await asyncio.wait_for(r.read(4096), 2.0)
                except asyncio.TimeoutError:
                    continue
                state["answered" if b else "closed"] += 1
                return
            state["completed"] += 1
        except (ConnectionResetError, BrokenPipeError):
            state["closed"] += 1
        finally:
            state["done"] += 1
            if state["done"] == n:
                marks["closed"] = time.monotonic()
            w.close()

    async def all_slow():
        sem = asyncio.Semaphore(200)
        await asyncio.gather(*(slow(i, sem) for i in range(n)))

    th = threading.Thread(target=normal_client, daemon=True)
    th.start()
    wait_until(lambda: normal, 30, what="the normal client's first answer")
    sampler_out = []

    def sampler():
        wait_until(lambda: "connected" in marks, 120, what="slowloris connected")
        sampler_out.append(metric(d, "idv_open_connections", listener="public"))
    sth = threading.Thread(target=sampler, daemon=True)
    sth.start()
    asyncio.run(all_slow())
    stop.set()
    th.join(60)
    sth.join(60)
    check_eq(errors, [], "normal client errors")
    during = [a for a in normal if marks["connected"] <= a[2] <= marks["closed"]]
    tallies = collections.Counter((s, b) for s, b, _, _ in normal)
    timed_out = metric(d, "idv_connections_timed_out_total", listener="public")
    print(f"slowloris: {n} connections, {state['bytes']} bytes trickled; closed by the server"
          f" {state['closed']}, answered {state['answered']}; head deadlines counted"
          f" {timed_out:.0f}; public connections open while they were all connected"
          f" {sampler_out}; normal client answers {dict(tallies)}, {len(during)} of them"
          f" while the slowloris connections were open", flush=True)
    check_eq(state["answered"], 0, "slowloris connections answered")
    check_eq(state["closed"], n, "slowloris connections closed")
    check_eq(timed_out, float(n), "closed by the head deadline")
    check_eq(state["completed"], 0, "slowloris heads completed")
    check_eq(set(tallies), {(200, b'{"result":"accepted"}')}, "normal client answers")
    check(len(during) >= 1, "the normal client was served while the slowloris were open")
    check_eq(int(pg.psql("SELECT count(*) FROM idv.callback_events"
                         " WHERE transaction_id LIKE 'slow%'")), 0, "slowloris audit rows")
    d.stop_clean()


# ---- ten thousand idle connections ----------------------------------------------------------

def case_idle_keepalive_10000(ctx):
    """One instance holds 10,000 idle keep-alive connections (from four
    source addresses) and serves every one of them afterwards. The daemon's
    RSS before and after is reported, not judged."""
    n = 10000
    limit = idvtest.raise_nofile(n + 1000)
    check(limit >= n + 500, f"open-file limit {limit}: raise the hard limit to run this test")
    d = nodb_daemon(ctx, max_connections=n + 100, idle_timeout_ms=600000,
                    header_timeout_ms=600000, log_level="warn")
    wait_until(lambda: d.status("/healthz") == 200, 30, what="healthz")
    time.sleep(0.2)
    rss = {"before": d.rss_kb()}
    req1 = req("/idv/callback?first=1")
    req2 = req("/idv/callback?second=1")
    conns = []
    tallies = collections.Counter()

    async def answer(r):
        head = await r.readuntil(b"\r\n\r\n")
        m = re.search(rb"Content-Length: (\d+)", head)
        body = await r.readexactly(int(m.group(1)))
        return int(head.split(b" ")[1]), body

    async def open_one(i, sem):
        async with sem:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((f"127.0.0.{2 + i % 4}", 0))
            s.setblocking(False)
            await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", d.public_port))
            r, w = await asyncio.open_connection(sock=s)
            w.write(req1)
            got = await asyncio.wait_for(answer(r), 60)
            tallies[("first",) + got] += 1
            conns.append((r, w))

    async def second(r, w, sem):
        async with sem:
            w.write(req2)
            got = await asyncio.wait_for(answer(r), 60)
            tallies[("second",) + got] += 1

    async def run():
        sem = asyncio.Semaphore(256)
        await asyncio.gather(*(open_one(i, sem) for i in range(n)))
        held = await asyncio.to_thread(
            lambda: metric(d, "idv_open_connections", listener="public"))
        rss["with 10000 idle"] = d.rss_kb()
        await asyncio.gather(*(second(r, w, sem) for r, w in conns))
        rss["after serving them all again"] = d.rss_kb()
        for _, w in conns:
            w.close()
        return held

    held = asyncio.run(run())
    print(f"10000 idle: connections held {held:.0f}; answers"
          f" {dict((k[0] + ' ' + str(k[1]), v) for k, v in tallies.items())};"
          f" daemon VmRSS (KiB) {rss}", flush=True)
    check_eq(held, float(n), "connections the daemon held")
    check_eq(dict(tallies), {("first", 200, OK_BODY): n, ("second", 200, OK_BODY): n},
             "every connection served twice")
    check_eq(metric(d, "idv_callbacks_total", outcome="ok"), float(2 * n), "probes handled")
    d.stop_clean()


# ---- 403 and secrets ----------------------------------------------------------------------------

def without_date(data):
    return re.sub(rb"\r\nDate: [^\r]*", b"", data)


def case_rejected_identical_more_causes(ctx):
    """The 403 is byte-identical (but the Date) for causes beyond those of
    test_foundation: the token of a transaction still initializing or whose
    Initialize failed (no transactionId), of a transaction that already has
    a result, of an expired one, a token or transactionId differing only in
    letter case; on GET and HEAD, alone and pipelined on one connection."""
    pg = ctx.pg()
    d = ctx.daemon(pg)
    s = salt("rej")
    (tx1, t1), (tx2, t2), (tx3, t3) = idvtest.register_bulk(pg, 3, prefix="rej", salt=s)
    t_init, t_failed = f"{s}-initializing", f"{s}-failed"
    pg.psql("INSERT INTO idv.transactions (merchant_biz_id, callback_token_sha256, status, origin)"
            f" VALUES ('bi', sha256(convert_to('{t_init}', 'UTF8')), 'initializing',"
            " 'initialized'), ('bf', sha256(convert_to('"
            f"{t_failed}', 'UTF8')), 'initialize_failed', 'initialized')")
    st, _, _, raw = d.callback(tx2, "Y", "200", t2)
    check_eq((st, raw), (200, b'{"result":"accepted"}'), "tx2 has a result")
    pg.psql(f"UPDATE idv.transactions SET status = 'expired', expires_at = now()"
            f" WHERE transaction_id = '{tx3}'")
    causes = [
        ("unknown token", callback_target(tx1, f"{s}-unknown")),
        ("token of a transaction still initializing", callback_target(tx1, t_init)),
        ("token of a failed Initialize, its own (absent) id", callback_target("none", t_failed)),
        ("token of a failed Initialize", callback_target(tx1, t_failed)),
        ("token of a transaction with a result", callback_target(tx1, t2)),
        ("token of an expired transaction", callback_target(tx1, t3)),
        ("token in other letter case", callback_target(tx1, t1.upper())),
        ("transactionId in other letter case", callback_target(tx1.upper(), t1)),
        ("token with a character more", callback_target(tx1, t1 + "x")),
    ]
    seen = {}
    for method in ("GET", "HEAD"):
        for label, target in causes:
            data, closed = exchange(d.public_port, req(target, close=True, method=method))
            check(data.startswith(b"HTTP/1.1 403 "), f"{method} {label}: {data[:40]!r}")
            seen.setdefault(method, []).append((label, without_date(data)))
        first = seen[method][0]
        for label, b in seen[method][1:]:
            check_eq(b, first[1], f"{method} bytes of '{label}' vs '{first[0]}'")
    check(seen["GET"][0][1].endswith(b'\r\n\r\n{"result":"rejected"}'), "the GET body")
    check(seen["HEAD"][0][1].endswith(b"\r\n\r\n"), "no body on HEAD")
    # Pipelined on one keep-alive connection: the same answer each time.
    data, closed = exchange(d.public_port, b"".join(
        req(t, close=(i == len(causes) - 1)) for i, (_, t) in enumerate(causes)))
    got = responses(data)
    check_eq([s for s, _, _ in got], [403] * len(causes), "pipelined answers")
    bodies = {(b, tuple(sorted((k, v) for k, v in h.items() if k not in ("date", "connection"))))
              for _, h, b in got}
    check_eq(len(bodies), 1, "pipelined 403s identical")
    check_eq(pg.psql(f"SELECT string_agg(transaction_id, ',') FROM idv.callback_results"),
             tx2, "no result but tx2's")
    check_eq(pg.psql(f"SELECT status FROM idv.transactions WHERE transaction_id = '{tx1}'"),
             "initiated", "tx1 unchanged")
    n_rej = int(pg.psql("SELECT count(*) FROM idv.callback_events WHERE outcome = 'rejected'"))
    check_eq(n_rej, 3 * len(causes), "rejected audit rows")
    print(f"403: {len(causes)} causes x (GET, HEAD, pipelined) = {3 * len(causes)} answers,"
          f" byte-identical but the Date; rejected audit rows {n_rej}", flush=True)
    d.stop_clean()


def case_secrets_after_hostile_run(ctx):
    """After a run whose tokens went through every hostile path (a 414 and a
    431 head, smuggled and hidden requests, bodies, Transfer-Encoding, a head
    closed by its deadline, requests pipelined beyond the per-connection
    bound, rejected and accepted callbacks, tokens in other headers): none of
    them in the daemon log (debug level), the PostgreSQL statement log, or
    pg_dumpall."""
    pg = ctx.pg(settings={"log_statement": "'all'", "log_min_messages": "info"})
    d = ctx.daemon(pg, log_level="debug", header_timeout_ms=1000,
                   max_requests_per_connection=3)
    s = salt("hostile")
    # Registered through the admin API: SQL written here would put the
    # tokens in the statement log itself.
    txs = [(f"h{i}", f"{s}-{i}") for i in range(20)]
    for tx, t in txs:
        check_eq(d.register(tx, f"b{tx}", t)[0], 201, f"register {tx}")
    tok = dict(txs)
    used = []

    def send(data):
        data_out, _ = exchange(d.public_port, data)
        return responses(data_out)

    # Accepted, duplicate, with the token also in other headers.
    for tx, t in txs[:2]:
        for _ in range(2):
            got = send(req(callback_target(tx, t), [f"Referer: https://x/?callbackToken={t}",
                                                    f"Cookie: t={t}"], close=True))
            check_eq([st for st, _, _ in got], [200], "accepted/duplicate")
    used += [t for _, t in txs[:2]]
    # 414 and 431 heads carrying a token.
    got = send((f"GET {callback_target('h2', tok['h2'])}&pad={'a' * 9000} HTTP/1.1\r\n"
                "Host: x\r\n\r\n").encode())
    check_eq([st for st, _, _ in got], [414], "414")
    got = send(req(callback_target("h3", tok["h3"]), ["Cookie: " + tok["h3"] * 700]))
    check_eq([st for st, _, _ in got], [431], "431")
    # Smuggled and hidden requests, bodies, Transfer-Encoding.
    for i, (label, payload) in enumerate(smuggling_payloads(
            callback_target("h4", tok["h4"]), req(callback_target("h5", tok["h5"])))):
        got = send(payload.encode("latin-1") + req(callback_target("h6", tok["h6"])))
        check_eq([st for st, _, _ in got], [400], label)
    # A head closed by its deadline.
    slow = Trickle(d.public_port, b"G", req(callback_target("h7", tok["h7"]))[1:], 0.25).run()
    slow.close()
    check(slow.closed, "the slow head is closed")
    # Pipelined beyond max_requests_per_connection (3): h8..h12.
    got = send(b"".join(req(callback_target(f"h{i}", tok[f"h{i}"])) for i in range(8, 13)))
    check_eq([st for st, _, _ in got], [200, 200, 200], "pipelined bound")
    # Rejected (a token of another transaction, an unknown one) and malformed.
    unknown = f"{s}-unknown"
    for target in (callback_target("h13", tok["h14"]), callback_target("h13", unknown),
                   callback_target("h15", tok["h15"], passed="maybe")):
        got = send(req(target, close=True))
        check(got and got[0][0] in (403, 400), f"rejected/malformed: {got}")
    # Every audit row is in: the last malformed one included.
    wait_until(lambda: pg.psql("SELECT count(*) FROM idv.callback_events"
                               " WHERE transaction_id = 'h15'") == "1", 30,
               what="the audit row of the last malformed callback")
    d.stop_clean()
    log = d.logs()
    with open(pg.log, errors="replace") as f:
        pglog = f.read()
    dump = pg.dump_all()
    tokens = list(tok.values()) + [unknown]
    found = {}
    for where, text in (("daemon log", log), ("PostgreSQL log", pglog), ("pg_dumpall", dump)):
        found[where] = [t for t in tokens if t in text]
        check_eq(found[where], [], f"tokens in the {where}")
        check(s not in text and "SeCrEt-" not in text, f"{where} holds part of a token")
    check("request" in log and "refused by the HTTP parser" in log, "the daemon log has lines")
    digest = hashlib.sha256(tok["h0"].encode()).hexdigest()
    check(digest in dump and digest in pglog, "the dump and the statement log hold the digest")
    print(f"secrets: {len(tokens)} tokens through every hostile path; found in the daemon log"
          f" ({len(log)} bytes) {len(found['daemon log'])}, the PostgreSQL log ({len(pglog)}"
          f" bytes) {len(found['PostgreSQL log'])}, pg_dumpall ({len(dump)} bytes)"
          f" {len(found['pg_dumpall'])}", flush=True)


if __name__ == "__main__":
    sys.exit(idvtest.main(globals()))
