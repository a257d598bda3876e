#!/usr/bin/env python3
"""Writes the hand-made seeds of the fuzz corpora (tests/fuzz/corpus/<target>/).

Each seed is a small meaningful input named for what it is; the fuzzer starts
from them. Inputs the fuzzer found and that were kept sit next to them under
their SHA-1 (libFuzzer's naming) and are left alone by this script.

fuzz_request inputs start with two control bytes (see fuzz_request.c):
  b"p" + x   public listener, second run split at x/256 of the input
  b"a" + x   admin listener, the same
  b"b" + x   public listener, second run in chunks of x+1 bytes
  b"c" + x   admin listener, the same
Usage: tests/fuzz/make_corpus.py   (from anywhere)
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
TOKEN = "Zm9vYmFyYmF6cXV4cXV1eC1zZWNyZXQtdG9rZW4tMDE"  # 43 URL-safe characters
VALID_Q = "transactionId=hksb7b9f0c0d1e2&passed=Y&subCode=200&callbackToken=" + TOKEN


def req(target, *headers, method="GET", version="HTTP/1.1", body=b"", host=True):
    lines = [f"{method} {target} {version}"]
    if host:
        lines.append("Host: idv.example.com")
    lines += headers
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head + body


def cb(q=VALID_Q, *headers, **kw):
    return req("/idv/callback?" + q if q is not None else "/idv/callback", *headers, **kw)


REQUEST = {
    # What Alibaba sends, and what load balancers and probes send.
    "valid-callback": b"p@" + cb(),
    "valid-callback-head": b"p\x80" + cb(method="HEAD"),
    "valid-callback-byte-at-a-time": b"b\x00" + cb(),
    "valid-callback-chunks-7": b"b\x06" + cb(),
    "valid-callback-below-path": b"p " + req("/idv/callback/v2?" + VALID_Q),
    "valid-callback-pct-token": b"p@" + cb(VALID_Q.replace("Zm9v", "%5A%6D9v") + "&x=%2F"),
    "valid-callback-http10": b"p@" + cb(version="HTTP/1.0", host=False),
    "valid-callback-cl-zero": b"p@" + cb(VALID_Q, "Content-Length: 0"),
    "probe-no-query": b"p@" + cb(None),
    "probe-empty-query": b"p@" + req("/idv/callback?"),
    "probe-unknown-params": b"p@" + cb("foo=bar&&baz"),
    "malformed-passed": b"p@" + cb(VALID_Q.replace("passed=Y", "passed=X")),
    "malformed-repeated": b"p@" + cb(VALID_Q + "&passed=N"),
    "malformed-bad-pct": b"p@" + cb(VALID_Q + "&x=%zz"),
    "malformed-missing": b"p@" + cb("transactionId=abc&passed=Y"),
    "healthz": b"p@" + req("/healthz"),
    "readyz-head": b"p@" + req("/readyz", method="HEAD"),
    "healthz-post": b"p@" + req("/healthz", "Content-Length: 0", method="POST"),
    "callback-post-405": b"p@" + cb(VALID_Q, "Content-Length: 0", method="POST"),
    "callback-delete-405": b"p@" + cb(method="DELETE"),
    "not-found": b"p@" + req("/favicon.ico"),
    "prefix-not-below": b"p@" + req("/idv/callbackX?" + VALID_Q),
    "xff-five": b"p@" + cb(None, *[f"X-Forwarded-For: 10.0.0.{i}, 192.0.2.{i}" for i in range(5)]),
    "authorization-twice": b"a@" + req("/v1/transactions/x", "Authorization: Bearer a",
                                       "Authorization: Bearer b"),
    # Keep-alive and pipelining.
    "pipelined-three": b"p\x55" + cb() + req("/healthz") + cb(method="HEAD"),
    "pipelined-then-close": b"p\x40" + req("/healthz", "Connection: close") + cb(),
    "pipelined-second-bare-lf": b"p\x90" + req("/healthz") + b"GET / HTTP/1.1\nHost: x\n\n",
    "pipelined-chunks-3": b"b\x02" + req("/healthz") + req("/readyz") + cb(),
    "http10-keep-alive": b"p@" + req("/healthz", "Connection: keep-alive", version="HTTP/1.0",
                                     host=False) + req("/healthz"),
    "http10-keep-alive-and-close": b"p@" + req("/healthz", "Connection: keep-alive, close",
                                               version="HTTP/1.0", host=False) + req("/healthz"),
    "connection-close-tab": b"p@" + req("/healthz", "Connection: close\t") + req("/healthz"),
    # Smuggling attempts and framing errors.
    "obs-fold": b"p@" + cb(None, "X-A: a", " folded"),
    "obs-fold-tab": b"p@" + cb(None, "Transfer-Encoding: x", "\tchunked"),
    "leading-space-first-field": b"p@" + b"GET / HTTP/1.1\r\n Host: x\r\n\r\n",
    "space-before-colon": b"p@" + cb(None, "Content-Length : 5") + b"hello",
    "tab-before-colon": b"p@" + cb(None, "Transfer-Encoding\t: chunked"),
    "lone-cr-value": b"p@" + b"GET /idv/callback HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n",
    "lone-cr-request-line": b"p@" + b"GET /idv/callback\rHTTP/1.1\r\nHost: x\r\n\r\n",
    "bare-lf-header": b"p@" + b"GET /healthz HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",
    "bare-lf-end": b"p@" + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\n",
    "nul-in-value": b"p@" + b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
    "del-in-name": b"p@" + b"GET /healthz HTTP/1.1\r\nHost: x\r\nX\x7fY: a\r\n\r\n",
    "non-token-name": b"p@" + b"GET /healthz HTTP/1.1\r\nHost: x\r\nX(Y): a\r\n\r\n",
    "obs-text-value": b"p@" + b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: caf\xc3\xa9\r\n\r\n",
    "te-chunked": b"p@" + cb(None, "Transfer-Encoding: chunked") + b"5\r\nhello\r\n0\r\n\r\n",
    "te-and-cl": b"p@" + cb(None, "Content-Length: 0", "Transfer-Encoding: chunked") + b"0\r\n\r\n",
    "cl-public-body": b"p@" + cb(VALID_Q, "Content-Length: 5") + b"hello",
    "cl-twice": b"p@" + cb(None, "Content-Length: 0", "Content-Length: 0"),
    "cl-leading-zero": b"p@" + cb(None, "Content-Length: 00"),
    "cl-sign": b"a@" + req("/v1/x", "Content-Length: +5", method="POST") + b"hello",
    "cl-list": b"a@" + req("/v1/x", "Content-Length: 5, 5", method="POST") + b"hello",
    "cl-huge": b"a@" + req("/v1/x", "Content-Length: 99999999999999999999", method="POST"),
    "cl-65537": b"a@" + req("/v1/x", "Content-Length: 65537", method="POST"),
    "host-twice": b"p@" + cb(None, "Host: other"),
    "host-missing": b"p@" + cb(host=False),
    "http2-version": b"p@" + cb(version="HTTP/2.0"),
    "http12-version": b"p@" + cb(version="HTTP/1.2", host=False),
    "absolute-form": b"p@" + req("http://idv.example.com/idv/callback?" + VALID_Q),
    "asterisk-form": b"p@" + req("*", method="OPTIONS"),
    "connect": b"p@" + req("idv.example.com:443", method="CONNECT"),
    "fragment": b"p@" + req("/idv/callback?" + VALID_Q + "#frag"),
    "expect-other": b"p@" + cb(None, "Expect: 200-ok"),
    "upgrade-websocket": b"p@" + req("/healthz", "Connection: Upgrade", "Upgrade: websocket")
    + req("/healthz"),
    "leading-crlf": b"p@" + b"\r\n" + req("/healthz"),
    "lowercase-method": b"p@" + req("/healthz", method="get"),
    "double-space": b"p@" + b"GET  /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    # Limits.
    "request-line-8192": b"p\xf0" + req("/idv/callback?pad=" + "a" * (8192 - 32)),
    "request-line-9000": b"p\xf0" + req("/idv/callback?pad=" + "a" * 9000),
    "request-line-9000-bare-lf": b"p\x80" + b"GET /" + b"a" * 9000 + b" HTTP/1.1\n\n",
    "header-16k": b"p\xf8" + req("/healthz", "X-Big: " + "b" * (16384 - 40)),
    "header-17k": b"b\xff" + req("/healthz", "X-Big: " + "b" * 17000),
    "fields-101": b"p@" + req("/healthz", *[f"X-{i}: v" for i in range(100)]),
    # Admin listener bodies.
    "admin-json": b"a@" + req("/v1/transactions/register", "Content-Type: application/json",
                              "Content-Length: 24", method="POST") + b'{"transactionId":"tx-1"}',
    "admin-json-then-get": b"a\xc0" + req("/v1/x", "Content-Length: 2", method="POST") + b"{}"
    + req("/v1/transactions/tx-1"),
    "admin-expect-continue": b"c\x0f" + req("/v1/x", "Expect: 100-continue",
                                             "Content-Length: 2", method="POST") + b"{}",
    "admin-body-grows-buffer": b"a\x10" + req("/v1/x", "Content-Length: 33000", method="POST")
    + b"x" * 33000 + req("/healthz"),
    "admin-upgrade-with-body": b"a@" + req("/v1/x", "Connection: Upgrade", "Upgrade: h2c",
                                           "Content-Length: 5", method="POST") + b"hello"
    + req("/healthz"),
    # Found by the fuzzer (stop 22): llhttp does not read a CONNECT's body.
    "admin-connect-with-body": b"a\xc0" + req("/x", "Content-Length: 2", method="CONNECT")
    + b"{}" + req("/v1/transactions/tx-1"),
    "admin-body-truncated": b"a@" + req("/v1/x", "Content-Length: 100", method="POST") + b"{}",
}

QUERY = {
    "valid": VALID_Q,
    "valid-mixed-case-names": VALID_Q.replace("transactionId", "TRANSACTIONID")
    .replace("subCode", "subcode"),
    "valid-pct-names": VALID_Q.replace("passed", "p%61ssed").replace("subCode", "%73ubCode"),
    "valid-pct-token": "transactionId=t&passed=N&subCode=A.b-c_1&callbackToken=%21%22%23%24%25"
    "%26%27%28%29%2A+%2C-./0123",
    "valid-unknown-extra": "a=1&" + VALID_Q + "&z=%41&empty=&noeq",
    "valid-longest": "transactionId=" + "t" * 128 + "&passed=Y&subCode=" + "s" * 16
    + "&callbackToken=" + "k" * 256,
    "probe-empty": "",
    "probe-amps": "&&&",
    "probe-unknown": "foo=bar&baz&=x",
    "probe-near-names": "transaction_id=x&pass=Y&sub_code=1&token=0123456789abcdef",
    "tx-129": "transactionId=" + "t" * 129 + "&passed=Y&subCode=1&callbackToken=" + TOKEN,
    "sub-17": "transactionId=t&passed=Y&subCode=" + "s" * 17 + "&callbackToken=" + TOKEN,
    "token-15": "transactionId=t&passed=Y&subCode=1&callbackToken=" + "k" * 15,
    "token-257": "transactionId=t&passed=Y&subCode=1&callbackToken=" + "k" * 257,
    "token-space": "transactionId=t&passed=Y&subCode=1&callbackToken=0123456789%20abcdef",
    "passed-lower": VALID_Q.replace("passed=Y", "passed=y"),
    "passed-two": VALID_Q.replace("passed=Y", "passed=YN"),
    "passed-empty": VALID_Q.replace("passed=Y", "passed="),
    "passed-no-eq": VALID_Q.replace("passed=Y", "passed"),
    "repeated-tx": VALID_Q + "&transactionId=other",
    "repeated-token-pct-name": VALID_Q + "&callback%54oken=" + TOKEN,
    "missing-token": "transactionId=t&passed=Y&subCode=1",
    "only-passed": "passed=N",
    "bad-pct-unknown": VALID_Q + "&x=%G0",
    "bad-pct-end": VALID_Q + "&x=%4",
    "bad-pct-name": VALID_Q + "&%zz=1",
    "bad-pct-lone": "%",
    "nul-in-tx": "transactionId=a%00b&passed=Y&subCode=1&callbackToken=" + TOKEN,
    "nul-in-name": "passed%00=Y",
    "plus-kept": "transactionId=a+b&passed=Y&subCode=1&callbackToken=" + TOKEN,
    "non-ascii": "transactionId=caf\u00e9&passed=Y&subCode=1&callbackToken=" + TOKEN,
    "long-name": "transactionIdtransactionId=1&" + VALID_Q,
}


def v2(cmd, fam, addr=b"", tlvs=b"", ver=2, plen=None):
    body = addr + tlvs
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    n = len(body) if plen is None else plen
    return sig + bytes([ver << 4 | cmd, fam]) + struct.pack(">H", n) + body


A4 = bytes([192, 0, 2, 7, 198, 51, 100, 1]) + struct.pack(">HH", 51234, 443)
A6 = (bytes.fromhex("20010db8000000000000000000000007") +
      bytes.fromhex("20010db8000000000000000000000001") + struct.pack(">HH", 51234, 443))
A6M = (bytes.fromhex("00000000000000000000ffffc0000207") +
       bytes.fromhex("00000000000000000000ffffc6336401") + struct.pack(">HH", 1, 2))
ALPN = b"\x01\x00\x08http/1.1"
AUTH = b"\x02\x00\x0fidv.example.com"
CRC = b"\x03\x00\x04\xde\xad\xbe\xef"
SSL = b"\x20\x00\x0e\x07\x00\x00\x00\x00\x21\x00\x07TLSv1.3"
HTTP = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"

PROXY = {
    "v1-tcp4": b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 443\r\n" + HTTP,
    "v1-tcp6": b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n",
    "v1-tcp6-mapped": b"PROXY TCP6 ::ffff:192.0.2.7 ::ffff:198.51.100.1 1 2\r\n",
    "v1-unknown": b"PROXY UNKNOWN\r\n" + HTTP,
    "v1-unknown-addresses": b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
    "v1-longest": b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
    b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
    "v1-unknown-107": b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n",
    "v1-unknown-108": b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n",
    "v1-port-65536": b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 443\r\n",
    "v1-port-leading-zero": b"PROXY TCP4 192.0.2.7 198.51.100.1 0443 443\r\n",
    "v1-port-zero": b"PROXY TCP4 192.0.2.7 198.51.100.1 0 0\r\n",
    "v1-double-space": b"PROXY TCP4  192.0.2.7 198.51.100.1 1 2\r\n",
    "v1-seven-fields": b"PROXY TCP4 192.0.2.7 198.51.100.1 1111 2222 3333\r\n",
    "v1-seven-fields-short": b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2 3\r\n",
    "v1-five-fields": b"PROXY TCP4 192.0.2.7 198.51.100.1 1111\r\n",
    "v1-trailing-space": b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2 \r\n",
    "v1-family-mismatch": b"PROXY TCP4 2001:db8::7 198.51.100.1 1 2\r\n",
    "v1-v4-leading-zero": b"PROXY TCP4 192.0.02.7 198.51.100.1 1 2\r\n",
    "v1-lowercase": b"proxy TCP4 192.0.2.7 198.51.100.1 1 2\r\n",
    "v1-bare-lf": b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2\n",
    "v1-lone-cr": b"PROXY TCP4 192.0.2.7\r198.51.100.1 1 2\r\n",
    "v1-truncated": b"PROXY TCP4 192.0.2.7 198.5",
    "v1-bad-byte-waiting-for-lf": b"PROXY TCP4 1\x1d92.0.2.7 198.51.100.1 1 2\r",
    "v1-no-cr-106": b"PROXY UNKNOWN" + b"x" * 93,
    "v1-udp4": b"PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n",
    "v2-local": v2(0, 0x00) + HTTP,
    "v2-local-with-addresses": v2(0, 0x11, A4),
    "v2-tcp4": v2(1, 0x11, A4) + HTTP,
    "v2-tcp6": v2(1, 0x21, A6),
    "v2-tcp6-mapped": v2(1, 0x21, A6M),
    "v2-unspec": v2(1, 0x00),
    "v2-tcp4-tlvs": v2(1, 0x11, A4, ALPN + AUTH + CRC + SSL) + HTTP,
    "v2-tcp4-short-block": v2(1, 0x11, A4[:11]),
    "v2-tcp6-short-block": v2(1, 0x21, A6[:35]),
    "v2-udp4": v2(1, 0x12, A4),
    "v2-unix": v2(1, 0x31, b"/tmp/a".ljust(108, b"\0") + b"/tmp/b".ljust(108, b"\0")),
    "v2-version-1": v2(1, 0x11, A4, ver=1),
    "v2-command-2": v2(2, 0x11, A4),
    "v2-largest": v2(1, 0x11, A4, b"\x04\x01\xf1" + b"\0" * 497),
    "v2-too-large": v2(1, 0x11, A4, b"\x04\x01\xf2" + b"\0" * 498),
    "v2-length-lies": v2(1, 0x11, A4, plen=200),
    "v2-signature-only": v2(1, 0x11, A4)[:12],
    "v2-fixed-part-only": v2(1, 0x11, A4)[:16],
    "v2-bad-signature": b"\r\n\r\n\x00\r\nQUIZ\n!\x11\x00\x0c" + A4,
    "not-proxy-http": HTTP,
}


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        if isinstance(data, str):
            data = data.encode()
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


write("fuzz_request", REQUEST)
write("fuzz_query", QUERY)
write("fuzz_proxy", PROXY)
