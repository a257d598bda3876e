#!/usr/bin/env python3
"""A TCP proxy for the tests: a slow or broken network between two programs
(the daemon and PostgreSQL, a Patroni node and etcd). Standard library only.

Every byte goes through unchanged, in order, after an added delay that can be
set per direction (`up`: from the client that connected to the proxy towards
the target, `down`: back). In black-hole mode the proxy still accepts
connections (the kernel completes the handshake) but forwards nothing in
either direction: what the two sides send is held, as TCP would hold it while
a network partition lasts with both machines alive. When the black hole ends,
what was held is delivered (late, as TCP's retransmissions would) and new
connections reach the target. `reset` aborts every connection (RST to both
sides): a partition long enough for TCP to give up, or a middlebox dropping
its state.

It runs as a process of its own, so that the test's threads and the proxy do
not share one interpreter lock:

    proxy = NetProxy(target_port)          # listens on proxy.port
    proxy.set_latency(up_ms=5, down_ms=5)
    proxy.blackhole(True); ...; proxy.blackhole(False)
    proxy.close()

`python3 netproxy.py --target HOST:PORT [--listen PORT]` runs it by hand: it
prints `listening PORT` and then reads commands on stdin, one per line
(`latency UP_MS DOWN_MS`, `blackhole on|off`, `reset`, `stats`), answering
each with one line starting with `ok`.
"""
import argparse
import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time


class _Pipe:
    """One direction of one connection: reads chunks as they come and writes
    each one `delay` seconds after it was read, in order, while the proxy
    is not a black hole."""

    def __init__(self, proxy, reader, direction):
        self.proxy = proxy
        self.reader = reader
        self.direction = direction
        self.queue = asyncio.Queue()

    async def read_loop(self):
        try:
            while True:
                data = await self.reader.read(65536)
                due = time.monotonic() + self.proxy.delay[self.direction]
                self.queue.put_nowait((due, data))
                if not data:
                    return
                self.proxy.bytes[self.direction] += len(data)
        except (ConnectionError, OSError):
            self.queue.put_nowait((0.0, None))

    async def write_loop(self, writer):
        """Returns once the other side's end of stream (b"") or an error
        (None) was passed on."""
        while True:
            due, data = await self.queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self.proxy.flowing.wait()
            if data is None:
                return False
            if not data:
                try:
                    if writer.can_write_eof():
                        writer.write_eof()
                except (ConnectionError, OSError, RuntimeError):
                    pass
                return True
            try:
                writer.write(data)
                await writer.drain()
            except (ConnectionError, OSError, RuntimeError):
                return False


class Proxy:
    def __init__(self, target_host, target_port):
        self.target = (target_host, target_port)
        self.delay = {"up": 0.0, "down": 0.0}
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.writers = {}  # connection number: [client writer, target writer]
        self.accepted = 0
        self.bytes = {"up": 0, "down": 0}

    async def handle(self, creader, cwriter):
        self.accepted += 1
        key = self.accepted
        self.writers[key] = [cwriter]
        try:
            # In a black hole the connection is accepted and goes nowhere yet.
            await self.flowing.wait()
            try:
                sreader, swriter = await asyncio.open_connection(*self.target)
            except OSError:
                return
            self.writers[key].append(swriter)
            up = _Pipe(self, creader, "up")
            down = _Pipe(self, sreader, "down")
            readers = [asyncio.ensure_future(up.read_loop()),
                       asyncio.ensure_future(down.read_loop())]
            writers = [asyncio.ensure_future(up.write_loop(swriter)),
                       asyncio.ensure_future(down.write_loop(cwriter))]
            pending = set(writers)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if any(not t.result() for t in done):
                    break  # an error on one side: both go (RST)
            clean = not pending and all(t.result() for t in writers)
            for t in readers + list(pending):
                t.cancel()
            for w in (cwriter, swriter):
                if clean:
                    w.close()
                else:
                    w.transport.abort()
        finally:
            del self.writers[key]
            if not cwriter.transport.is_closing():
                cwriter.transport.abort()

    def reset(self):
        for ws in list(self.writers.values()):
            for w in ws:
                # Linger 0: close() sends RST, not FIN.
                sock = w.get_extra_info("socket")
                if sock is not None:
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                    except OSError:
                        pass
                w.transport.abort()

    def command(self, line):
        parts = line.split()
        if not parts:
            return "ok"
        if parts[0] == "latency" and len(parts) == 3:
            self.delay["up"] = float(parts[1]) / 1000.0
            self.delay["down"] = float(parts[2]) / 1000.0
            return "ok"
        if parts[0] == "blackhole" and len(parts) == 2 and parts[1] in ("on", "off"):
            if parts[1] == "on":
                self.flowing.clear()
            else:
                self.flowing.set()
            return "ok"
        if parts[0] == "reset":
            self.reset()
            return "ok"
        if parts[0] == "stats":
            return "ok " + json.dumps({"accepted": self.accepted, "open": len(self.writers),
                                       "bytes_up": self.bytes["up"],
                                       "bytes_down": self.bytes["down"],
                                       "blackhole": not self.flowing.is_set()})
        return f"error unknown command {line!r}"


async def serve(target_host, target_port, listen_port):
    proxy = Proxy(target_host, target_port)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", listen_port)
    port = server.sockets[0].getsockname()[1]
    print(f"listening {port}", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break  # the test went away: so does the proxy
        print(proxy.command(line.decode().strip()), flush=True)
    server.close()
    proxy.reset()
    # Connections still open are not waited for: the test is done with them.
    sys.stdout.flush()
    os._exit(0)


class NetProxy:
    """The proxy as a child process of the test; see the module comment."""

    def __init__(self, target_port, target_host="127.0.0.1", up_ms=0, down_ms=0,
                 listen_port=0):
        self.target_port = target_port
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--target",
                                      f"{target_host}:{target_port}", "--listen",
                                      str(listen_port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     bufsize=1)
        self.lock = threading.Lock()
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "listening":
            self.proc.kill()
            raise RuntimeError(f"netproxy did not start: {line}")
        self.port = int(line[1])
        if up_ms or down_ms:
            self.set_latency(up_ms, down_ms)

    def _cmd(self, text):
        with self.lock:
            self.proc.stdin.write(text + "\n")
            self.proc.stdin.flush()
            answer = self.proc.stdout.readline().strip()
        if not answer.startswith("ok"):
            raise RuntimeError(f"netproxy {text!r}: {answer!r}")
        return answer[2:].strip()

    def set_latency(self, up_ms, down_ms):
        """Added delay in milliseconds, towards the target and back."""
        self._cmd(f"latency {up_ms} {down_ms}")

    def blackhole(self, on=True):
        self._cmd(f"blackhole {'on' if on else 'off'}")

    def reset(self):
        """Aborts every connection through the proxy (RST to both sides)."""
        self._cmd("reset")

    def stats(self):
        return json.loads(self._cmd("stats"))

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", required=True, help="HOST:PORT to forward to")
    ap.add_argument("--listen", type=int, default=0, help="port on 127.0.0.1 (0: any free one)")
    a = ap.parse_args()
    host, _, port = a.target.rpartition(":")
    asyncio.run(serve(host or "127.0.0.1", int(port), a.listen))


if __name__ == "__main__":
    main()
