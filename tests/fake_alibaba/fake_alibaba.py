#!/usr/bin/env python3
"""A fake Alibaba Cloud ID Verification (Cloudauth-intl 2022-08-09) server for
tests. Python 3.11, standard library only. See README.md beside this file for
the full description of the CLI and the control API.

Two listeners:
  * the API: HTTPS (TLS 1.2+) on 127.0.0.1, RPC style `POST /` with the
    business parameters in the query string, every request authenticated with
    ACS3-HMAC-SHA256 (verified by this module's own canonical request);
    actions `Initialize` and `CheckResult`;
  * the control API: plain HTTP + JSON on 127.0.0.1, to read what the API
    received, set verification results, queue misbehaviours, and so on.

Use it in-process:

    fake = FakeAlibaba(cert, key, {"AKID": "secret"}).start()
    ... fake.port, fake.control_port, fake.requests(), fake.set_result(...)
    fake.stop()

or as a subprocess:

    python3 fake_alibaba.py --cert C --key K --port P --access-key-id ID \
        --access-key-secret S --control-port CP

which prints one JSON line `{"port": P, "controlPort": CP, "pid": N}` on
stdout once both listeners accept connections, and stops on SIGTERM/SIGINT
(exit status 0).
"""
import argparse
import copy
import datetime as _dt
import hashlib
import hmac
import http.client
import json
import re
import secrets
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API_VERSION = "2022-08-09"
ALGORITHM = "ACS3-HMAC-SHA256"
ACTIONS = ("Initialize", "CheckResult")
REQUIRED_SIGNED = ("host", "x-acs-action", "x-acs-version", "x-acs-date",
                   "x-acs-signature-nonce", "x-acs-content-sha256")
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_BODY = 1 << 20

# Default messages of the codes a test is likely to queue (the seed's table
# and Alibaba's common signature errors).
DEFAULT_MESSAGES = {
    "MissingParameter": "Parameter cannot be empty.",
    "InvalidParameter": "Invalid parameter.",
    "Forbidden.RAMUserAccessDenied": "You need to grant the RAM user the "
                                     "AliyunAntCloudAuthFullAccess permission.",
    "Forbidden.AccountAccessDenied": "Ensure that you have activated ID verification and "
                                     "your account has no overdue payment.",
    "Throttling.Api": "API request is blocked due to throttling.",
    "InternalError": "Internal system error.",
    "ServiceUnavailable": "The request has failed due to a temporary failure of the server.",
}
BEHAVIOURS = ("error", "stall", "close_mid_response", "garbage", "truncated", "reset", "delay",
              "stray", "overlong")
# What `stray` writes after a correct answer by default: the head of a second
# response whose body never comes, so that a client reusing the connection
# reads it as the answer to its next request and waits for the body.
DEFAULT_STRAY = ("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 "Content-Length: 4096\r\n\r\n{")
# What `overlong` sends after the body its Content-Length announced.
DEFAULT_OVERLONG = "\r\n<html>502 Bad Gateway</html>\r\n"
# Headers Alibaba's V3 rule wants signed whenever a request carries them
# (besides the six REQUIRED_SIGNED): content-type, and every x-acs-* one.
def must_be_signed(name):
    n = name.lower()
    return n in ("host", "content-type") or n.startswith("x-acs-")
RESULT_FIELDS = ("ExtBasicInfo", "ExtFaceInfo", "ExtIdInfo", "ExtInfo", "ExtRiskInfo",
                 "ExtSourceInfo", "EkycResult")


# --------------------------------------------------------------------------
# ACS3-HMAC-SHA256, written from the facts page.

def percent_encode(s):
    """RFC 3986: unreserved A-Z a-z 0-9 - _ . ~ kept, everything else %XX of
    its UTF-8 bytes (space -> %20, * -> %2A)."""
    return urllib.parse.quote(s, safe="-_.~", encoding="utf-8", errors="strict")


def canonical_query(pairs):
    """pairs: (name, value) of the decoded parameters, in any order."""
    items = sorted(pairs, key=lambda kv: (kv[0], kv[1]))
    return "&".join(percent_encode(k) + "=" + percent_encode(v) for k, v in items)


def canonical_request(method, path, pairs, headers, signed_names, body_sha256):
    """headers: {lower-case name: value}; signed_names: lower-case names."""
    names = sorted(signed_names)
    canon_headers = "".join(f"{n}:{headers[n].strip()}\n" for n in names)
    return "\n".join([method.upper(), path or "/", canonical_query(pairs), canon_headers,
                      ";".join(names), body_sha256])


def string_to_sign(creq):
    return ALGORITHM + "\n" + hashlib.sha256(creq.encode("utf-8")).hexdigest()


def signature(secret, creq):
    return hmac.new(secret.encode("utf-8"), string_to_sign(creq).encode("utf-8"),
                    hashlib.sha256).hexdigest()


def sign(secret, access_key_id, method, path, pairs, headers, body=b""):
    """Signs a request (every header in `headers` is signed). Returns the
    Authorization value. Offered to other tests; the self-test does not use
    it to sign (it has its own signer)."""
    h = {k.lower(): v for k, v in headers.items()}
    names = sorted(h)
    creq = canonical_request(method, path, pairs, h, names, hashlib.sha256(body).hexdigest())
    return (f"{ALGORITHM} Credential={access_key_id},SignedHeaders={';'.join(names)},"
            f"Signature={signature(secret, creq)}")


_AUTH_RE = re.compile(r"^ACS3-HMAC-SHA256 +(.*)$")


def parse_authorization(value):
    """{'Credential', 'SignedHeaders', 'Signature'} or None."""
    m = _AUTH_RE.match(value.strip())
    if not m:
        return None
    out = {}
    for part in m.group(1).split(","):
        k, sep, v = part.strip().partition("=")
        if not sep or k in out:
            return None
        out[k] = v.strip()
    if set(out) != {"Credential", "SignedHeaders", "Signature"}:
        return None
    return out


def parse_query(raw):
    """Decoded (name, value) pairs of a raw query string, in order. '+' is a
    literal plus (RFC 3986), not a space."""
    pairs = []
    for piece in raw.split("&"):
        if not piece:
            continue
        k, _, v = piece.partition("=")
        pairs.append((urllib.parse.unquote(k), urllib.parse.unquote(v)))
    return pairs


def acs_date(ts):
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_acs_date(s):
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", s or ""):
        return None
    try:
        d = _dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.timezone.utc)
    except ValueError:
        return None
    return d.timestamp()


def new_request_id():
    return str(uuid.uuid4()).upper()


class ApiError(Exception):
    def __init__(self, status, code, message):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def _missing(name):
    return ApiError(400, "MissingParameter",
                    f'The input parameter "{name}" that is mandatory for processing this '
                    f'request is not supplied.')


def _invalid(name, why=""):
    return ApiError(400, "InvalidParameter",
                    f'The specified parameter "{name}" is not valid.' + (f" {why}" if why else ""))


def _is_json(s):
    try:
        json.loads(s)
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------
# The servers.

class _TLSServer(ThreadingHTTPServer):
    """Accepts plain sockets in the serving thread and does the TLS handshake
    in the connection's own thread, so a client that never finishes its
    handshake blocks nobody."""
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, handler, fake, ssl_ctx):
        self.fake = fake
        self.ssl_ctx = ssl_ctx
        super().__init__(addr, handler)

    def finish_request(self, request, client_address):
        if self.fake._dark_accept(request):
            return
        try:
            request.settimeout(10)
            tls = self.ssl_ctx.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as e:
            self.fake._tls_failure(client_address, e)
            try:
                request.close()
            except OSError:
                pass
            return
        self.fake._track(tls, True)
        try:
            super().finish_request(tls, client_address)
        finally:
            self.fake._track(tls, False)
            try:
                tls.close()
            except OSError:
                pass

    def handle_error(self, request, client_address):
        if self.fake.verbose:
            super().handle_error(request, client_address)


class _PlainServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, handler, fake):
        self.fake = fake
        super().__init__(addr, handler)

    def handle_error(self, request, client_address):
        if self.fake.verbose:
            super().handle_error(request, client_address)


class _BaseHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeAlibaba/1.0"
    sys_version = ""
    timeout = 120  # idle keep-alive connections are closed after this

    def log_message(self, fmt, *args):
        if self.server.fake.verbose:
            sys.stderr.write("fake_alibaba: %s - %s\n" % (self.address_string(), fmt % args))

    def finish(self):
        try:
            super().finish()
        except Exception:
            pass

    def read_body(self):
        """The request body (Content-Length or chunked), or raises ValueError."""
        te = self.headers.get("Transfer-Encoding")
        if te is not None:
            if te.strip().lower() != "chunked":
                raise ValueError("unsupported Transfer-Encoding")
            out = bytearray()
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                if len(out) + size > MAX_BODY:
                    raise ValueError("body too large")
                out += self.rfile.read(size)
                self.rfile.readline(8)
        cls = self.headers.get_all("Content-Length") or []
        if not cls:
            return b""
        if len(cls) > 1 or not cls[0].strip().isdigit():
            raise ValueError("bad Content-Length")
        n = int(cls[0])
        if n > MAX_BODY:
            raise ValueError("body too large")
        data = self.rfile.read(n)
        if len(data) != n:
            raise ValueError("short body")
        return data

    def send_json(self, status, obj, extra_headers=None):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _ApiHandler(_BaseHandler):
    def do_POST(self):
        self.server.fake._handle_api(self)

    do_GET = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_POST


class _ControlHandler(_BaseHandler):
    def do_GET(self):
        self.server.fake._handle_control(self)

    do_POST = do_PUT = do_DELETE = do_GET


class FakeAlibaba:
    """The fake server. All public methods are thread-safe."""

    def __init__(self, cert, key, access_keys=None, port=0, control_port=0, host="127.0.0.1",
                 max_skew=900, probe_callback="off", callback_ca_file=None, verbose=False):
        """access_keys: {AccessKeyId: AccessKeySecret}. port / control_port: 0
        picks a free one. max_skew: seconds x-acs-date may be off the fake's
        clock. probe_callback: "off" (default), "https" (GET the CallbackUrl
        as given during Initialize, like Alibaba's reachability check) or
        "http" (the same with the scheme rewritten to http, for a daemon whose
        test listener is plain HTTP). callback_ca_file: CA bundle to verify an
        https callback target with (default: the system's)."""
        self.cert, self.key = cert, key
        self.access_keys = dict(access_keys or {})
        self.host = host
        self._want_port, self._want_control_port = port, control_port
        self.max_skew = max_skew
        self.verbose = verbose
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._conns = set()
        self._server = self._control = None
        self._threads = []
        self._config = {"probeCallback": probe_callback, "callbackCaFile": callback_ca_file,
                        "callbackVerify": True, "strictSignedHeaders": True}
        self._reset_state()

    # ---- lifecycle
    def start(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert, self.key)
        self._server = _TLSServer((self.host, self._want_port), _ApiHandler, self, ctx)
        self._control = _PlainServer((self.host, self._want_control_port), _ControlHandler, self)
        for srv in (self._server, self._control):
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1},
                                 daemon=True, name=f"fake-alibaba-{srv.server_address[1]}")
            t.start()
            self._threads.append(t)
        return self

    def stop(self):
        self._stop.set()
        for srv in (self._server, self._control):
            if srv is not None:
                srv.shutdown()
                srv.server_close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:  # idle keep-alive and stalled connections
            try:
                socket.socket.shutdown(c, socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(5)
        self._threads = []

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def port(self):
        return self._server.server_address[1]

    @property
    def control_port(self):
        return self._control.server_address[1]

    @property
    def endpoint(self):
        return f"https://{self.host}:{self.port}"

    def _track(self, conn, add):
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def _tls_failure(self, addr, err):
        with self._lock:
            self._counters["tlsHandshakeFailures"] += 1
            self._tls_errors.append(str(err))
            del self._tls_errors[:-20]

    # ---- state
    def _reset_state(self):
        with self._lock:
            self._requests = []
            self._seq = 0
            self._calls = {}
            self._counters = {"tlsHandshakeFailures": 0}
            self._tls_errors = []
            self._transactions = {}
            self._nonces = {}
            self._queues = {}
            self._clock_offset = 0.0
            self._dark = False
            self._dark_counts = {"connections": 0, "requests": 0}

    # ---- dark: accepts connections and never answers
    def set_dark(self, on):
        """While dark the API accepts TCP connections and never answers: no TLS
        handshake on a new connection, no answer to a request on a kept-alive
        one (what a black-holed upstream or a hung load balancer looks like).
        Counted in counters()["dark"]. When it ends, the connections held are
        closed without an answer."""
        with self._lock:
            self._dark = bool(on)
            return {"dark": self._dark, **self._dark_counts}

    def dark(self):
        with self._lock:
            return self._dark

    def _hold_while_dark(self, sock):
        """Holds a connection without answering until the dark period ends, the
        client closes or the fake stops; then closes it."""
        self._hold(sock, 1e9, lambda: not self.dark())
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass

    def _dark_accept(self, sock):
        """A new API connection: held unanswered when dark (True), else False."""
        with self._lock:
            if not self._dark:
                return False
            self._dark_counts["connections"] += 1
        self._hold_while_dark(sock)
        try:
            sock.close()
        except OSError:
            pass
        return True

    def reset(self):
        """Forgets requests, counters, transactions, nonces, queued behaviours
        and the clock offset (configuration and keys stay)."""
        self._reset_state()

    def now(self):
        with self._lock:
            return time.time() + self._clock_offset

    def set_clock_offset(self, seconds):
        """The fake's clock (for x-acs-date checks) runs `seconds` ahead."""
        with self._lock:
            self._clock_offset = float(seconds)

    def configure(self, **kw):
        """probeCallback ("off"|"https"|"http"), callbackCaFile, callbackVerify,
        maxSkew, accessKeys ({id: secret}, added)."""
        with self._lock:
            for k, v in kw.items():
                if k == "probeCallback":
                    if v not in ("off", "https", "http"):
                        raise ValueError("probeCallback must be off, https or http")
                    self._config[k] = v
                elif k in ("callbackCaFile", "callbackVerify", "strictSignedHeaders"):
                    self._config[k] = v
                elif k == "maxSkew":
                    self.max_skew = float(v)
                elif k == "accessKeys":
                    self.access_keys.update(v)
                else:
                    raise ValueError(f"unknown setting {k}")
            return dict(self._config, maxSkew=self.max_skew,
                        accessKeyIds=sorted(self.access_keys))

    def requests(self, action=None, since=0):
        """The API requests received (oldest first), each a dict: seq, time,
        action, method, path, rawQuery, params, pairs, headers, body,
        signatureVerified, authError, accessKeyId, behaviour, status, code,
        requestId, transactionId, outcome (and callbackProbe / stallEnded
        where they apply)."""
        with self._lock:
            return [copy.deepcopy(r) for r in self._requests
                    if (action is None or r["action"] == action) and r["seq"] > since]

    def clear_requests(self):
        with self._lock:
            self._requests = []

    def counters(self):
        """{"calls": {action: n, ...}, "tlsHandshakeFailures": n}: every API
        request counts under its x-acs-action ("" when absent), whatever
        became of it."""
        with self._lock:
            return {"calls": dict(self._calls),
                    "tlsHandshakeFailures": self._counters["tlsHandshakeFailures"],
                    "tlsErrors": list(self._tls_errors),
                    "dark": dict(self._dark_counts, on=self._dark)}

    def calls(self, action):
        with self._lock:
            return self._calls.get(action, 0)

    def queue(self, action, behaviour, count=1, **kw):
        """Queues a behaviour for the next `count` calls of `action`
        ("Initialize", "CheckResult", or "*" for any). kw by behaviour:
          error: status (int), code, message (default from the seed's table)
          stall: seconds (the longest the stall may last, default 300)
          delay: ms (then answers normally)
          close_mid_response, truncated: extra (truncated: how many bytes
            Content-Length overstates, default 64)
          stray: ms (default 100), data - the answer, then data ms later on
            the kept-alive connection
          overlong: data - the answer, then data right after its body
          stall, reset, garbage, close_mid_response, truncated: process
            (bool) - also do what a normal call would (create the transaction)
            before misbehaving; default true for close_mid_response and
            truncated (they send part of that answer), false for the others.
            A delayed call is always processed; a queued error never is.
        The queue of the action is used before the "*" queue."""
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {', '.join(BEHAVIOURS)}")
        if action not in ACTIONS + ("*",):
            raise ValueError(f"action must be one of {', '.join(ACTIONS)} or *")
        unknown = set(kw) - {"status", "code", "message", "seconds", "ms", "extra", "process",
                             "data"}
        if unknown:
            raise ValueError(f"unknown behaviour setting(s): {', '.join(sorted(unknown))}")
        count = int(count)
        if count < 1:
            raise ValueError("count must be >= 1")
        b = {"behaviour": behaviour}
        if behaviour == "error":
            if "status" not in kw or "code" not in kw:
                raise ValueError("error needs status and code")
            b["status"] = int(kw["status"])
            b["code"] = str(kw["code"])
            b["message"] = str(kw.get("message") or DEFAULT_MESSAGES.get(b["code"], b["code"]))
        elif behaviour == "stall":
            b["seconds"] = float(kw.get("seconds", 300))
        elif behaviour == "delay":
            b["ms"] = int(kw.get("ms", 1000))
        elif behaviour == "truncated":
            b["extra"] = max(1, int(kw.get("extra", 64)))
        elif behaviour == "stray":
            b["ms"] = int(kw.get("ms", 100))
            b["data"] = str(kw.get("data", DEFAULT_STRAY))
        elif behaviour == "overlong":
            b["data"] = str(kw.get("data", DEFAULT_OVERLONG))
        b["process"] = bool(kw.get("process", behaviour in ("close_mid_response", "truncated",
                                                            "delay", "stray", "overlong")))
        with self._lock:
            q = self._queues.setdefault(action, [])
            q.extend(dict(b) for _ in range(count))
            return self.behaviours()

    def behaviours(self):
        with self._lock:
            return {a: [dict(b) for b in q] for a, q in self._queues.items() if q}

    def clear_behaviours(self):
        with self._lock:
            self._queues = {}

    def _pop_behaviour(self, action):
        with self._lock:
            for a in (action, "*"):
                q = self._queues.get(a)
                if q:
                    return q.pop(0)
        return None

    def transactions(self):
        with self._lock:
            return [copy.deepcopy(t) for t in self._transactions.values()]

    def transaction(self, tx):
        with self._lock:
            t = self._transactions.get(tx)
            return copy.deepcopy(t) if t else None

    def add_transaction(self, transaction_id, merchant_biz_id=None, callback_token=None,
                        callback_url=None, merchant_user_id=None):
        """Makes a transaction known without an Initialize call (e.g. one the
        business initialized itself and registered with the daemon)."""
        with self._lock:
            t = self._transactions.get(transaction_id)
            if t is None:
                t = self._new_tx(transaction_id, {})
            for k, v in (("merchantBizId", merchant_biz_id), ("callbackToken", callback_token),
                         ("callbackUrl", callback_url), ("merchantUserId", merchant_user_id)):
                if v is not None:
                    t[k] = v
            return copy.deepcopy(t)

    def _new_tx(self, tx, params):
        now = time.time()
        t = {"transactionId": tx,
             "merchantBizId": params.get("MerchantBizId"),
             "merchantUserId": params.get("MerchantUserId"),
             "callbackToken": params.get("CallbackToken"),
             "callbackUrl": params.get("CallbackUrl"),
             "transactionUrl": f"https://fake-idv.invalid/web/index.html?clientcfg={tx}",
             "protocol": secrets.token_hex(16),
             "params": dict(params),
             "createdAt": now,
             "expiresAt": now + 1800,
             "result": None,
             "checkResultCalls": 0}
        self._transactions[tx] = t
        return t

    def set_result(self, transaction_id, passed=None, sub_code=None, raw=None, **ext):
        """Sets what CheckResult answers for a transaction (creating the
        transaction if unknown). passed: "Y"/"N"; sub_code: e.g. "200".
        ext: ExtBasicInfo, ExtFaceInfo, ExtIdInfo, ExtInfo, ExtRiskInfo,
        ExtSourceInfo, EkycResult (also in lower camel case: extFaceInfo...):
        a dict/list is JSON-encoded, a string is sent as it is, None leaves the
        field out. Fields not given get a plausible default. raw: a dict sent
        verbatim as Result (everything else ignored). Returns the Result."""
        if raw is not None:
            if not isinstance(raw, dict):
                raise ValueError("raw must be an object")
            result = copy.deepcopy(raw)
        else:
            if passed not in ("Y", "N"):
                raise ValueError("passed must be Y or N")
            sub_code = str(sub_code if sub_code is not None else ("200" if passed == "Y" else "205"))
            given = {}
            for k, v in ext.items():
                name = k[0].upper() + k[1:]
                if name not in RESULT_FIELDS:
                    raise ValueError(f"unknown result field {k}")
                given[name] = v
            with self._lock:
                t = self._transactions.get(transaction_id) or {}
                biz = t.get("merchantBizId")
            defaults = {
                "ExtBasicInfo": {"certifyId": transaction_id, "merchantBizId": biz,
                                 "productCode": "FACE_LIVENESS"},
                "ExtFaceInfo": {"faceAttack": "N" if passed == "Y" else "Y",
                                "faceOcclusion": "N", "faceQualityScore": 93.5},
                "ExtIdInfo": {}, "ExtInfo": {}, "ExtRiskInfo": {}, "ExtSourceInfo": {},
                "EkycResult": {},
            }
            result = {"Passed": passed, "SubCode": sub_code}
            for name in RESULT_FIELDS:
                v = given[name] if name in given else defaults[name]
                if v is None:
                    continue
                result[name] = v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
        with self._lock:
            t = self._transactions.get(transaction_id) or self._new_tx(transaction_id, {})
            t["result"] = result
            return copy.deepcopy(result)

    def clear_result(self, transaction_id):
        """Back to "not completed"."""
        with self._lock:
            t = self._transactions.get(transaction_id)
            if t is None:
                return False
            t["result"] = None
            return True

    def deliver_callback(self, transaction_id, passed=None, sub_code=None, url=None,
                         scheme=None, extra_query=None, timeout=10):
        """Does what Alibaba does when a verification completes: GET the
        transaction's CallbackUrl with transactionId, passed, subCode and (when
        a CallbackToken was given at Initialize) callbackToken appended.
        passed / sub_code default to the result set with set_result. url
        replaces the stored CallbackUrl; scheme ("http") rewrites its scheme;
        extra_query (a raw string) is appended as is. Returns {"url",
        "status", "body"} or {"url", "error"}."""
        with self._lock:
            t = copy.deepcopy(self._transactions.get(transaction_id))
            cfg = dict(self._config)
        if t is None and url is None:
            raise ValueError("unknown transaction and no url")
        t = t or {"transactionId": transaction_id}
        res = t.get("result") or {}
        passed = passed or res.get("Passed")
        sub_code = sub_code if sub_code is not None else res.get("SubCode")
        base = url or t.get("callbackUrl")
        if not base or passed is None or sub_code is None:
            raise ValueError("need a callback url, passed and subCode")
        q = [("transactionId", transaction_id), ("passed", passed), ("subCode", sub_code)]
        if t.get("callbackToken"):
            q.append(("callbackToken", t["callbackToken"]))
        full = base + ("&" if "?" in base else "?") + urllib.parse.urlencode(
            q, quote_via=urllib.parse.quote, safe="")
        if extra_query:
            full += extra_query
        if scheme:
            full = scheme + full[full.index(":"):]
        return self._http_get(full, cfg, timeout)

    def _http_get(self, url, cfg, timeout):
        u = urllib.parse.urlsplit(url)
        try:
            if u.scheme == "https":
                if cfg.get("callbackVerify", True):
                    ctx = ssl.create_default_context(cafile=cfg.get("callbackCaFile"))
                else:
                    ctx = ssl._create_unverified_context()
                c = http.client.HTTPSConnection(u.hostname, u.port or 443, timeout=timeout,
                                                context=ctx)
            elif u.scheme == "http":
                c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
            else:
                return {"url": url, "error": f"unsupported scheme {u.scheme!r}"}
            try:
                c.request("GET", (u.path or "/") + (f"?{u.query}" if u.query else ""),
                          headers={"User-Agent": "FakeAlibaba-Callback/1.0"})
                r = c.getresponse()
                body = r.read()
                return {"url": url, "status": r.status,
                        "body": body.decode("utf-8", errors="replace")}
            finally:
                c.close()
        except (OSError, http.client.HTTPException) as e:
            return {"url": url, "error": f"{type(e).__name__}: {e}"}

    # ---- the API
    def _log(self, entry):
        with self._lock:
            self._seq += 1
            entry["seq"] = self._seq
            self._requests.append(entry)
            return entry

    def _verify(self, h, method, path, pairs, body, headers):
        """Returns (access_key_id, None) or (access_key_id, ApiError). Checks
        the signature, then the date and the nonce (the nonce is only taken
        when the signature is good)."""
        auth = h.headers.get_all("Authorization") or []
        if len(auth) != 1:
            return None, ApiError(400, "IncompleteSignature",
                                  "The request signature does not conform to Aliyun standards: "
                                  "missing Authorization.")
        a = parse_authorization(auth[0])
        if a is None:
            return None, ApiError(400, "IncompleteSignature",
                                  "The request signature does not conform to Aliyun standards: "
                                  "malformed Authorization (want ACS3-HMAC-SHA256 Credential=..,"
                                  "SignedHeaders=..,Signature=..).")
        akid = a["Credential"]
        signed = a["SignedHeaders"].split(";")
        if any(n != n.lower() or not n for n in signed) or len(set(signed)) != len(signed):
            return akid, ApiError(400, "IncompleteSignature",
                                  "SignedHeaders must be distinct lower-case header names.")
        for n in REQUIRED_SIGNED:
            if n not in signed:
                return akid, ApiError(400, "IncompleteSignature",
                                      f"The header {n} must be signed.")
        for n in signed:
            vals = h.headers.get_all(n) or []
            if len(vals) != 1:
                return akid, ApiError(400, "IncompleteSignature",
                                      f"The signed header {n} is "
                                      f"{'missing' if not vals else 'repeated'}.")
        # Alibaba's V3 rule: every header the request carries that is one of
        # the signed kinds (content-type, x-acs-*) must be signed; a gateway
        # may refuse an unsigned one. (Off with strictSignedHeaders = false.)
        if self._config.get("strictSignedHeaders", True):
            for n in sorted({k.lower() for k in h.headers.keys()}):
                if must_be_signed(n) and n not in signed:
                    return akid, ApiError(400, "IncompleteSignature",
                                          f"The header {n} is present but not signed.")
        secret = self.access_keys.get(akid)
        if secret is None:
            return akid, ApiError(403, "InvalidAccessKeyId.NotFound",
                                  "Specified access key is not found.")
        body_sha = hashlib.sha256(body).hexdigest()
        try:
            creq = canonical_request(method, path, pairs, headers, signed,
                                     headers["x-acs-content-sha256"].strip())
        except UnicodeEncodeError:
            return akid, ApiError(400, "IncompleteSignature", "Undecodable query string.")
        want = signature(secret, creq)
        if not hmac.compare_digest(want.encode(),
                                   a["Signature"].lower().encode("utf-8", "replace")):
            return akid, ApiError(400, "SignatureDoesNotMatch",
                                  "Specified signature does not match our calculation.")
        if headers["x-acs-content-sha256"].strip().lower() != body_sha:
            return akid, ApiError(400, "ContentSHA256NotMatched",
                                  "The x-acs-content-sha256 header does not match the body.")
        ts = parse_acs_date(headers["x-acs-date"].strip())
        if ts is None:
            return akid, ApiError(400, "InvalidTimeStamp.Format",
                                  "Specified time stamp or date value is not well formatted.")
        if abs(self.now() - ts) > self.max_skew:
            return akid, ApiError(400, "InvalidTimeStamp.Expired",
                                  "Specified time stamp or date value is expired.")
        nonce = headers["x-acs-signature-nonce"].strip()
        with self._lock:
            if not nonce:
                return akid, ApiError(400, "MissingSignatureNonce",
                                      "SignatureNonce is mandatory for this action.")
            if (akid, nonce) in self._nonces:
                return akid, ApiError(400, "SignatureNonceUsed",
                                      "Specified signature nonce was used already.")
            self._nonces[(akid, nonce)] = time.time()
        return akid, None

    def _handle_api(self, h):
        with self._lock:
            dark = self._dark
            if dark:
                self._dark_counts["requests"] += 1
        if dark:
            # A request on a connection kept alive from before: never answered.
            h.close_connection = True
            self._hold_while_dark(h.connection)
            return
        rid = new_request_id()
        split = urllib.parse.urlsplit(h.path)
        path, raw_query = split.path or "/", split.query
        headers = {}
        for k in h.headers.keys():
            headers.setdefault(k.lower(), h.headers.get(k))
        action = headers.get("x-acs-action", "")
        entry = {"time": time.time(), "action": action, "method": h.command, "path": path,
                 "rawQuery": raw_query, "headers": headers,
                 "rawHeaders": [[k, v] for k, v in h.headers.items()], "requestId": rid,
                 "signatureVerified": False, "authError": None, "accessKeyId": None,
                 "behaviour": None, "status": None, "code": None, "transactionId": None,
                 "outcome": None, "callbackProbe": None, "stallEnded": None,
                 "strayWritten": None}
        with self._lock:
            self._calls[action] = self._calls.get(action, 0) + 1
        try:
            body = h.read_body()
        except (ValueError, OSError) as e:
            entry.update(pairs=[], params={}, body=None, outcome=f"bad framing: {e}",
                         status=400, code="InvalidRequest")
            self._log(entry)
            h.close_connection = True
            self._send_error(h, ApiError(400, "InvalidRequest", f"Bad request framing: {e}"),
                             rid)
            return
        pairs = parse_query(raw_query)
        ctype = (headers.get("content-type") or "").split(";")[0].strip().lower()
        body_pairs = []
        if body and ctype == "application/x-www-form-urlencoded":
            try:
                body_pairs = parse_query(body.decode("utf-8").replace("+", "%20"))
            except UnicodeDecodeError:
                body_pairs = []
        params = {}
        for k, v in pairs + body_pairs:
            params.setdefault(k, v)  # the first of a repeated parameter counts
        entry.update(pairs=[list(p) for p in pairs], params=params,
                     body=body.decode("utf-8", errors="replace"))
        akid, err = self._verify(h, h.command, path, pairs, body, headers)
        entry["accessKeyId"] = akid
        entry["signatureVerified"] = err is None or err.code in (
            "ContentSHA256NotMatched", "InvalidTimeStamp.Format", "InvalidTimeStamp.Expired",
            "SignatureNonceUsed", "MissingSignatureNonce")
        entry["authError"] = err.code if err else None
        self._log(entry)

        b = self._pop_behaviour(action)
        if b is not None:
            self._set(entry, behaviour=b["behaviour"])
        if b is None:
            status, obj = self._process(h, entry, err, params, path, rid)
            self._finish(entry, status, obj)
            h.send_json(status, obj, {"x-acs-request-id": rid})
            return
        kind = b["behaviour"]
        if kind == "error":
            self._set(entry, status=b["status"], code=b["code"], outcome="queued error")
            self._send_error(h, ApiError(b["status"], b["code"], b["message"]), rid)
            return
        if b["process"] or kind == "delay":
            status, obj = self._process(h, entry, err, params, path, rid)
        else:
            status, obj = None, None
        if kind == "delay":
            self._stop.wait(b["ms"] / 1000.0)
            self._finish(entry, status, obj)
            h.send_json(status, obj, {"x-acs-request-id": rid})
            return
        if kind == "stall":
            self._set(entry, outcome="stalled")
            ended = self._stall(h, b["seconds"])
            self._set(entry, stallEnded=ended)
            h.close_connection = True
            return
        if kind == "reset":
            self._set(entry, outcome="reset")
            h.close_connection = True
            try:
                h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
            except OSError:
                pass
            self._hard_close(h, shutdown=False)
            return
        if kind in ("stray", "overlong"):
            # A correct answer (the connection kept alive), then bytes that
            # belong to no answer: `stray` writes them after `ms`, on their
            # own; `overlong` right after the body, as if the body were longer
            # than its Content-Length. Both in a TLS record of their own, so a
            # client cannot see them while it reads the answer.
            if status is None:
                status, obj = self._process(h, entry, err, params, path, rid)
            self._finish(entry, status, obj, kind)
            h.send_json(status, obj, {"x-acs-request-id": rid})
            try:
                h.wfile.flush()
                if kind == "stray":
                    self._stop.wait(b["ms"] / 1000.0)
                h.wfile.write(b["data"].encode())
                h.wfile.flush()
                self._set(entry, strayWritten=time.time())
            except OSError:
                pass
            return
        if kind == "garbage":
            data = (b"<html><head><title>502 Bad Gateway</title></head><body>"
                    b"Tengine</body></html>\n")
            self._set(entry, status=200, outcome="garbage")
            self._raw_response(h, 200, data, len(data), rid)
            return
        # close_mid_response / truncated: a real answer, framed wrong.
        if obj is None:
            status, obj = 200, {"RequestId": rid, "Code": "Success", "Message": "success",
                                "Result": {}}
        self._finish(entry, status, obj, kind)
        data = json.dumps(obj).encode()
        if kind == "close_mid_response":
            self._raw_response(h, status, data[:len(data) // 2], len(data), rid)
        else:
            self._raw_response(h, status, data, len(data) + b["extra"], rid)
        self._hard_close(h, shutdown=True)

    def _set(self, entry, **kw):
        """Updates a logged request (others may be copying it)."""
        with self._lock:
            entry.update(kw)

    def _finish(self, entry, status, obj, outcome="answered"):
        self._set(entry, status=status, outcome=outcome,
                  code=obj.get("Code") if isinstance(obj, dict) else None)

    def _send_error(self, h, err, rid):
        h.send_json(err.status, {"RequestId": rid, "Code": err.code, "Message": err.message},
                    {"x-acs-request-id": rid})

    def _raw_response(self, h, status, data, content_length, rid):
        h.close_connection = True
        head = (f"HTTP/1.1 {status} {http.client.responses.get(status, 'Status')}\r\n"
                f"Server: {h.server_version}\r\n"
                f"Date: {h.date_time_string()}\r\n"
                f"Content-Type: application/json;charset=utf-8\r\n"
                f"Content-Length: {content_length}\r\n"
                f"x-acs-request-id: {rid}\r\n\r\n").encode()
        try:
            h.wfile.write(head + data)
            h.wfile.flush()
        except OSError:
            pass

    def _hard_close(self, h, shutdown):
        """Closes the connection without a TLS close_notify: FIN when
        shutdown, else (with SO_LINGER 0) RST."""
        h.close_connection = True
        try:
            if shutdown:
                socket.socket.shutdown(h.connection, socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            fd = h.connection.detach() if hasattr(h.connection, "detach") else None
            if fd is not None and fd >= 0:
                socket.socket(fileno=fd).close()
        except (OSError, ValueError):
            try:
                h.connection.close()
            except OSError:
                pass

    def _stall(self, h, seconds):
        """Holds the connection without answering until the client closes it,
        the fake stops, or `seconds` pass. Returns which."""
        return self._hold(h.connection, seconds)

    def _hold(self, sock, seconds, ended=lambda: False):
        """Reads and drops what a held connection sends until the client
        closes it ("client_closed"), the fake stops ("server_stopped"),
        `seconds` pass ("timeout") or ended() is true ("ended")."""
        end = time.monotonic() + seconds
        while True:
            if self._stop.is_set():
                return "server_stopped"
            if time.monotonic() >= end:
                return "timeout"
            if ended():
                return "ended"
            try:
                sock.settimeout(0.1)
                data = sock.recv(4096)
            except (TimeoutError, socket.timeout, ssl.SSLWantReadError):
                continue
            except (OSError, ssl.SSLError):
                return "client_closed"
            if not data:
                return "client_closed"

    def _process(self, h, entry, auth_err, params, path, rid):
        """The normal answer: (status, JSON object)."""
        def err(e):
            return e.status, {"RequestId": rid, "Code": e.code, "Message": e.message}
        if auth_err is not None:
            return err(auth_err)
        if h.command != "POST":
            return err(ApiError(405, "UnsupportedHTTPMethod",
                                f"The HTTP method {h.command} is not supported; use POST."))
        if path != "/":
            return err(ApiError(404, "InvalidAction.NotFound",
                                f"Specified path {path} is not valid; use /."))
        if entry["headers"].get("x-acs-version", "").strip() != API_VERSION:
            return err(ApiError(400, "InvalidVersion",
                                "Specified parameter Version is not valid."))
        action = entry["action"].strip()
        try:
            if action == "Initialize":
                res = self._initialize(params, entry)
            elif action == "CheckResult":
                res = self._check_result(params, entry)
            else:
                raise ApiError(404, "InvalidAction.NotFound",
                               "Specified api is not found, please check your url and method.")
        except ApiError as e:
            return err(e)
        return 200, {"RequestId": rid, "Code": "Success", "Message": "success", "Result": res}

    @staticmethod
    def _req(params, name):
        v = params.get(name)
        if v is None or v == "":
            raise _missing(name)
        return v

    @staticmethod
    def _enum(params, name, allowed):
        v = params.get(name)
        if v is not None and v not in allowed:
            raise _invalid(name, f"Valid values: {', '.join(allowed)}.")

    def _initialize(self, p, entry):
        if self._req(p, "ProductCode") != "FACE_LIVENESS":
            raise _invalid("ProductCode", "The only valid value is FACE_LIVENESS.")
        biz = self._req(p, "MerchantBizId")
        if not re.fullmatch(r"[A-Za-z0-9]{1,32}", biz):
            raise _invalid("MerchantBizId", "Up to 32 letters and digits.")
        meta = self._req(p, "MetaInfo")
        if not _is_json(meta):
            raise _invalid("MetaInfo", "It must be JSON.")
        self._req(p, "MerchantUserId")
        cb = p.get("CallbackUrl")
        if cb is not None:
            u = urllib.parse.urlsplit(cb)
            if u.scheme.lower() != "https" or not u.hostname:
                raise _invalid("CallbackUrl", "It must be an https URL.")
        self._enum(p, "SecurityLevel", ("01", "02"))
        self._enum(p, "Model", ("LIVENESS", "PHOTINUS_LIVENESS", "SILENT"))
        self._enum(p, "DocVideo", ("Y", "N"))
        self._enum(p, "AppQualityCheck", ("Y", "N"))
        self._enum(p, "ShowGuidePage", ("1", "0"))
        self._enum(p, "ProcedurePriority", ("url", "keep"))
        sc = p.get("SceneCode")
        if sc is not None and not re.fullmatch(r"[A-Za-z0-9_]{1,10}", sc):
            raise _invalid("SceneCode", "Up to 10 letters, digits or underscores.")
        for name in ("LanguageConfig", "StyleConfig"):
            v = p.get(name)
            if v is not None and not _is_json(v):
                raise _invalid(name, "It must be JSON.")
        with self._lock:
            mode = self._config["probeCallback"]
            cfg = dict(self._config)
        if cb is not None and mode != "off":
            probe_url = cb if mode == "https" else "http" + cb[cb.index(":"):]
            r = self._http_get(probe_url, cfg, 10)
            self._set(entry, callbackProbe=r)
            if r.get("status") != 200:
                raise ApiError(400, "InvalidParameter",
                               'The specified parameter "CallbackUrl" is not valid. '
                               'The callback address is not reachable.')
        with self._lock:
            tx = "hks" + secrets.token_hex(15)[:29]
            t = self._new_tx(tx, p)
        self._set(entry, transactionId=tx)
        return {"TransactionId": tx, "TransactionUrl": t["transactionUrl"],
                "Protocol": t["protocol"]}

    def _check_result(self, p, entry):
        biz = self._req(p, "MerchantBizId")
        tx = self._req(p, "TransactionId")
        self._enum(p, "IsReturnImage", ("Y", "N"))
        self._set(entry, transactionId=tx)
        with self._lock:
            t = self._transactions.get(tx)
            if t is None:
                raise _invalid("TransactionId", "No such transaction.")
            if t.get("merchantBizId") and t["merchantBizId"] != biz:
                raise _invalid("MerchantBizId", "It does not match the transaction.")
            t["checkResultCalls"] += 1
            if t["result"] is None:
                # Not completed yet: Success with an empty verdict (see README).
                return {"Passed": "", "SubCode": ""}
            return copy.deepcopy(t["result"])

    # ---- the control API
    def _handle_control(self, h):
        try:
            raw = h.read_body()
            body = json.loads(raw) if raw.strip() else {}
        except (ValueError, OSError) as e:
            h.close_connection = True
            h.send_json(400, {"error": f"bad request body: {e}"})
            return
        u = urllib.parse.urlsplit(h.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        parts = [urllib.parse.unquote(x) for x in u.path.split("/") if x]
        m = h.command
        try:
            st, obj = self._control_route(m, parts, q, body)
        except (ValueError, TypeError, KeyError) as e:
            st, obj = 400, {"error": str(e)}
        h.send_json(st, obj)

    def _control_route(self, m, parts, q, body):
        if not isinstance(body, (dict, list)):
            raise ValueError("body must be a JSON object")
        if parts == ["health"] and m == "GET":
            return 200, {"ok": True, "port": self.port, "controlPort": self.control_port}
        if parts == ["requests"]:
            if m == "GET":
                return 200, {"requests": self.requests(q.get("action"), int(q.get("since", 0)))}
            if m == "DELETE":
                self.clear_requests()
                return 200, {"ok": True}
        if parts == ["counters"] and m == "GET":
            return 200, self.counters()
        if parts == ["behaviours"]:
            if m == "GET":
                return 200, {"behaviours": self.behaviours()}
            if m == "DELETE":
                self.clear_behaviours()
                return 200, {"ok": True}
            if m == "POST":
                items = body if isinstance(body, list) else [body]
                for it in items:
                    it = dict(it)
                    action = it.pop("action")
                    kind = it.pop("behaviour", None) or it.pop("type")
                    count = it.pop("count", 1)
                    self.queue(action, kind, count, **it)
                return 200, {"behaviours": self.behaviours()}
        if parts == ["transactions"]:
            if m == "GET":
                return 200, {"transactions": self.transactions()}
            if m == "POST":
                t = self.add_transaction(body["transactionId"], body.get("merchantBizId"),
                                         body.get("callbackToken"), body.get("callbackUrl"),
                                         body.get("merchantUserId"))
                return 200, {"transaction": t}
        if len(parts) == 2 and parts[0] == "transactions" and m == "GET":
            t = self.transaction(parts[1])
            return (200, {"transaction": t}) if t else (404, {"error": "no such transaction"})
        if len(parts) == 3 and parts[0] == "transactions" and parts[2] == "result":
            if m == "POST":
                b = dict(body)
                passed = b.pop("passed", None)
                sub = b.pop("subCode", None)
                raw = b.pop("raw", None)
                return 200, {"result": self.set_result(parts[1], passed, sub, raw, **b)}
            if m == "DELETE":
                ok = self.clear_result(parts[1])
                return (200, {"ok": True}) if ok else (404, {"error": "no such transaction"})
        if len(parts) == 3 and parts[0] == "transactions" and parts[2] == "callback" \
                and m == "POST":
            return 200, self.deliver_callback(parts[1], body.get("passed"), body.get("subCode"),
                                              body.get("url"), body.get("scheme"),
                                              body.get("extraQuery"),
                                              float(body.get("timeout", 10)))
        if parts == ["clock"] and m == "POST":
            self.set_clock_offset(body.get("offsetSeconds", 0))
            return 200, {"offsetSeconds": float(body.get("offsetSeconds", 0)),
                         "now": acs_date(self.now())}
        if parts == ["config"]:
            if m == "GET":
                return 200, self.configure()
            if m == "POST":
                return 200, self.configure(**body)
        if parts == ["dark"] and m == "POST":
            return 200, self.set_dark(body.get("dark", True))
        if parts == ["reset"] and m == "POST":
            self.reset()
            return 200, {"ok": True}
        return 404, {"error": f"no route {m} /{'/'.join(parts)}"}


class Control:
    """A small client of the control API (for a fake run as a subprocess)."""

    def __init__(self, port, host="127.0.0.1", timeout=30):
        self.host, self.port, self.timeout = host, port, timeout

    def call(self, method, path, body=None):
        c = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            c.request(method, path, body=data,
                      headers={"Content-Type": "application/json"} if data else {})
            r = c.getresponse()
            out = json.loads(r.read() or b"null")
            if r.status != 200:
                raise RuntimeError(f"control {method} {path}: {r.status} {out}")
            return out
        finally:
            c.close()

    def requests(self, action=None):
        p = "/requests" + (f"?action={urllib.parse.quote(action)}" if action else "")
        return self.call("GET", p)["requests"]

    def counters(self):
        return self.call("GET", "/counters")

    def queue(self, action, behaviour, count=1, **kw):
        return self.call("POST", "/behaviours",
                         dict(kw, action=action, behaviour=behaviour, count=count))

    def set_result(self, tx, passed=None, sub_code=None, **kw):
        b = dict(kw)
        if passed is not None:
            b["passed"] = passed
        if sub_code is not None:
            b["subCode"] = sub_code
        return self.call("POST", f"/transactions/{urllib.parse.quote(tx, safe='')}/result",
                         b)["result"]

    def transactions(self):
        return self.call("GET", "/transactions")["transactions"]

    def reset(self):
        return self.call("POST", "/reset", {})

    def set_dark(self, on=True):
        return self.call("POST", "/dark", {"dark": bool(on)})


def main(argv=None):
    ap = argparse.ArgumentParser(description="Fake Alibaba Cloud ID Verification server")
    ap.add_argument("--cert", required=True, help="server certificate (PEM)")
    ap.add_argument("--key", required=True, help="server private key (PEM)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="HTTPS API port (0: any free one)")
    ap.add_argument("--control-port", type=int, default=0,
                    help="plain HTTP control port (0: any free one)")
    ap.add_argument("--access-key-id", required=True)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--access-key-secret")
    g.add_argument("--access-key-secret-file")
    ap.add_argument("--max-skew", type=float, default=900,
                    help="seconds x-acs-date may differ from the clock (default 900)")
    ap.add_argument("--probe-callback", choices=("off", "https", "http"), default="off")
    ap.add_argument("--callback-ca-file")
    ap.add_argument("--ready-file", help="also write the ready JSON line to this file")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args(argv)
    secret = a.access_key_secret
    if secret is None:
        with open(a.access_key_secret_file) as f:
            secret = f.read().strip()
    fake = FakeAlibaba(a.cert, a.key, {a.access_key_id: secret}, port=a.port,
                       control_port=a.control_port, host=a.host, max_skew=a.max_skew,
                       probe_callback=a.probe_callback, callback_ca_file=a.callback_ca_file,
                       verbose=a.verbose)
    stop = threading.Event()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.set())
    fake.start()
    line = json.dumps({"port": fake.port, "controlPort": fake.control_port,
                       "pid": __import__("os").getpid()})
    if a.ready_file:
        with open(a.ready_file + ".tmp", "w") as f:
            f.write(line + "\n")
        __import__("os").replace(a.ready_file + ".tmp", a.ready_file)
    print(line, flush=True)
    while not stop.wait(0.5):
        pass
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
