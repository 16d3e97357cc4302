"""Broadcast throughput of a wsgihost channel: in one process, across the
workers of a node (the supervisor's relay), and across two nodes (Redis).

Standard library only; Linux (or any Unix with fork). Run from anywhere::

    python3 bench_channels.py                         # 3 rounds, 16-byte and 4 KiB messages
    python3 bench_channels.py --rounds 5 --messages 50000 --json out.json

Each setup serves a broadcast path ``/ws`` and a small app ``/who`` that
says which process answers:

- ``in-process``: ``python wsgihost.py CONFIG``, one process;
- ``relay``: the same with ``--workers 2``; the sender is a client of one
  worker, the receiver of the other (each connection asks ``/who`` on
  keep-alive before its Upgrade, so the benchmark knows where it landed);
- ``redis``: two single-process nodes on two ports sharing a redis-server
  (started here on a free port, ``--redis-server``); the sender on one, the
  receiver on the other. Skipped when there is no redis-server.

A run: the sender sends N messages of one size as WebSocket frames; the
receiver counts them as they arrive; the figure is N / (the time from the
first send to the Nth arrival), in messages per second. The sender keeps at
most ``--window`` messages ahead of the receiver, so that no bounded queue
on the way (a client's max_send_queue, the relay's buffers, the Redis
publish queue) overflows: this measures the sustained rate, not how much a
queue absorbs. The sender is on the channel too and reads its copies (a
client that does not read is dropped as slow). Setups take turns within a
round, in an order that rotates, so that load from others on a shared
machine hits them alike; the table shows medians, and each setup's ratio to
the in-process channel (taken round by round). The client is this Python
process: with small messages it may be the bottleneck itself -- compare the
columns, not the absolute numbers.
"""

import argparse
import base64
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WSGIHOST = os.path.normpath(os.path.join(HERE, "..", "..", "wsgihost.py"))

#: Message sizes measured, in bytes.
SIZES = (16, 4 * 1024)
#: Seconds a server may take to answer after it is started (a busy machine).
START_TIMEOUT = 60.0
#: Seconds a run may take before it is reported as incomplete.
RUN_TIMEOUT = 120.0
#: Frames the sender writes at once.
SEND_BATCH = 64


def who(environ, start_response):
    """GET /who: the answering process's pid, as JSON (a WSGI app)."""
    body = json.dumps({"pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


# -- servers ------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_config(port, redis_url=None):
    options = {"pythonpath": [HERE]}
    if redis_url:
        options["channels"] = {"redis": redis_url}
    return {"workers": [{"type": "router", "options": options, "transports": [{
        "type": "web", "endpoint": {"type": "tcp", "port": port, "interface": "127.0.0.1"},
        "paths": {"who": {"type": "wsgi", "module": "bench_channels", "object": "who"},
                  "ws": {"type": "websocket", "options": {"auto_ping_interval": 0}}}}]}]}


class Server:
    """A process serving on ``port`` until stop(); its output goes to a file in ``folder``."""

    def __init__(self, argv, port, folder, name):
        self.port = port
        self.log_path = os.path.join(folder, name + ".log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                get_pid(port)
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("%s did not start; its log:\n%s" % (name, self.log()))
                time.sleep(0.1)

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()[-3000:]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()


def start_wsgihost(folder, name, workers=None, redis_url=None):
    port = free_port()
    path = os.path.join(folder, name + ".json")
    with open(path, "w") as f:
        json.dump(node_config(port, redis_url), f)
    argv = [sys.executable, WSGIHOST, path] + (["--workers", str(workers)] if workers else [])
    return Server(argv, port, folder, name)


def start_redis(folder, executable):
    port = free_port()
    argv = [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)


# -- clients ------------------------------------------------------------------------

def read_answer(sock, buffer):
    """One HTTP answer with a Content-Length from ``sock``: its body (``buffer`` keeps the rest)."""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before an answer")
        buffer += data
    head, _, _ = bytes(buffer).partition(b"\r\n\r\n")
    fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:])
    length = int({k.strip().lower(): v for k, v in fields.items()}.get(b"content-length", b"0"))
    end = len(head) + 4 + length
    while len(buffer) < end:
        buffer += sock.recv(65536)
    body = bytes(buffer[len(head) + 4:end])
    del buffer[:end]
    return head, body


def get_pid(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return json.loads(read_answer(sock, bytearray())[1])["pid"]


class Client:
    """A WebSocket client of /ws that knows which process it reached (``pid``) and
    counts the messages it receives, in a thread of its own."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=RUN_TIMEOUT)
        self.buffer = bytearray()
        self.sock.sendall(b"GET /who HTTP/1.1\r\nHost: x\r\n\r\n")
        self.pid = json.loads(read_answer(self.sock, self.buffer)[1])["pid"]
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(65536)
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError("no WebSocket: %r" % head[:80])
        self.buffer = bytearray(rest)
        self.count = 0
        self.closed = False
        threading.Thread(target=self._count, daemon=True).start()

    def _count(self):
        """Count text and binary frames (the server sends them unmasked, whole)."""
        buffer, count = self.buffer, 0
        try:
            while True:
                start = 0
                while len(buffer) - start >= 2:
                    size = buffer[start + 1] & 0x7F
                    header = 2 if size < 126 else (4 if size == 126 else 10)
                    if len(buffer) - start < header:
                        break
                    if size == 126:
                        size = int.from_bytes(buffer[start + 2:start + 4], "big")
                    elif size == 127:
                        size = int.from_bytes(buffer[start + 2:start + 10], "big")
                    if len(buffer) - start < header + size:
                        break
                    if buffer[start] & 0x0F in (1, 2):
                        count += 1
                    start += header + size
                del buffer[:start]
                self.count = count
                data = self.sock.recv(1024 * 1024)
                if not data:
                    break
                buffer += data
        except OSError:
            pass
        self.closed = True

    def send_frames(self, payload, n):
        """``n`` text frames of ``payload``, masked with a zero key (RFC 6455 §5.3:
        any key is valid; zero leaves the bytes as they are, so the client costs less)."""
        size = len(payload)
        header = bytes([0x81]) + (bytes([0x80 | size]) if size < 126 else bytes([0xFE]) + size.to_bytes(2, "big"))
        self.sock.sendall((header + b"\0\0\0\0" + payload) * n)

    def close(self):
        self.sock.close()


def pinned_clients(port, count, want_other_than=None, tries=200):
    """``count`` clients on one process (not ``want_other_than``'s, if given)."""
    kept = []
    for _ in range(tries):
        client = Client(port)
        if want_other_than is not None and client.pid == want_other_than:
            client.close()
            continue
        kept.append(client)
        if len(kept) == count:
            return kept
    raise RuntimeError("%d connections did not reach another worker" % tries)


def warm_up(sender, receiver, timeout=60.0):
    """Send a message now and then until the receiver gets one (a Redis
    subscription takes a moment: before it, broadcasts stay on their node)."""
    base = receiver.count
    deadline = time.monotonic() + timeout
    while receiver.count == base:
        if time.monotonic() > deadline:
            raise RuntimeError("the receiver never got a message")
        sender.send_frames(b"warm-up", 1)
        time.sleep(0.1)
    time.sleep(0.5)                     # the copies still on their way


def run(sender, receiver, size, messages, window):
    """Messages per second from ``sender`` to ``receiver`` (None if some never came)."""
    payload = (b"m" * size)[:size]
    base_r, base_s = receiver.count, sender.count
    sent, started = 0, time.perf_counter()
    deadline = time.monotonic() + RUN_TIMEOUT
    while sent < messages:
        if sent - (receiver.count - base_r) < window:
            n = min(SEND_BATCH, messages - sent)
            sender.send_frames(payload, n)
            sent += n
        else:
            time.sleep(0.0002)
            if time.monotonic() > deadline or receiver.closed:
                return None
    while receiver.count - base_r < messages:
        if time.monotonic() > deadline or receiver.closed:
            return None
        time.sleep(0.0002)
    took = time.perf_counter() - started
    while sender.count - base_s < messages and time.monotonic() < deadline:
        time.sleep(0.001)               # the sender's own copies, before the next run
    return messages / took


# -- the command line ------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=20000, help="per run (default 20000)")
    parser.add_argument("--window", type=int, default=500,
                        help="messages the sender may be ahead of the receiver (default 500)")
    parser.add_argument("--redis-server", default=shutil.which("redis-server") or "/usr/bin/redis-server")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="bench-channels-")
    servers, setups, redis = [], {}, None
    load_before = os.getloadavg()
    try:
        one = start_wsgihost(folder, "in-process")
        servers.append(one)
        setups["in-process"] = pinned_clients(one.port, 2)
        two = start_wsgihost(folder, "relay", workers=2)
        servers.append(two)
        sender = Client(two.port)
        setups["relay"] = [sender] + pinned_clients(two.port, 1, want_other_than=sender.pid)
        if os.path.exists(args.redis_server):
            redis, redis_port = start_redis(folder, args.redis_server)
            url = "redis://127.0.0.1:%d/0" % redis_port
            a = start_wsgihost(folder, "redis-a", redis_url=url)
            b = start_wsgihost(folder, "redis-b", redis_url=url)
            servers += [a, b]
            setups["redis"] = [Client(a.port), Client(b.port)]
        else:
            print("no redis-server at %s: the redis setup is skipped" % args.redis_server, file=sys.stderr)
        names = list(setups)
        for name in names:
            warm_up(*setups[name])
        results = {(name, size): [] for name in names for size in SIZES}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                sender, receiver = setups[name]
                for size in SIZES:
                    rate = run(sender, receiver, size, args.messages, args.window)
                    results[name, size].append(rate)
                    print("round %d  %-10s %5d B  %s" % (r + 1, name, size,
                          "incomplete" if rate is None else "%.0f msg/s" % rate), file=sys.stderr)
        load_after = os.getloadavg()
        report(results, names, args, load_before, load_after)
    finally:
        for server in servers:
            server.stop()
        if redis is not None:
            redis.terminate()
            redis.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def report(results, names, args, load_before, load_after):
    def median(values):
        done = [v for v in values if v is not None]
        return statistics.median(done) if len(done) == len(values) else None
    medians = {key: median(values) for key, values in results.items()}
    # Ratios are taken round by round (the setups of a round ran within a few
    # seconds of each other, under about the same load), then their median.
    ratios = {(name, size): median([None if v is None or not base else v / base for v, base in zip(
              results[name, size], results["in-process", size])]) for name in names for size in SIZES}
    print("\nbroadcast throughput, messages/s received by one client (median of %d rounds, %d "
          "messages a run, window %d); ratio to in-process, round by round" % (
              args.rounds, args.messages, args.window))
    print("%-12s" % "setup" + "".join("%14s%10s" % ("%d B msg/s" % s, "ratio") for s in SIZES))
    for name in names:
        cells = ""
        for size in SIZES:
            value, ratio = medians[name, size], ratios[name, size]
            cells += "%14s%10s" % ("-" if value is None else "%.0f" % value,
                                   "-" if ratio is None else "%.2f" % ratio)
        print("%-12s%s" % (name, cells))
    print("load average before %.1f, after %.1f; %d CPUs; python %s" % (
        load_before[0], load_after[0], os.cpu_count(), sys.version.split()[0]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rounds": args.rounds, "messages": args.messages, "window": args.window,
                       "load_before": load_before, "load_after": load_after,
                       "results": {"%s %d" % key: values for key, values in results.items()}}, f, indent=1)


if __name__ == "__main__":
    main()
