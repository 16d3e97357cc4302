"""WebSocket echo speed: wsgihost's handler path beside the ``websockets`` library.

Standard library only (the peer runs in the virtualenv that has websockets)::

    python3 bench_websocket.py --ws-venv /tmp/wsvenv [--rounds 5] [--seconds 3]

Two servers echo every message back: wsgihost with ``apps:websocket_echo``
on a handler path (a thread per client, as any handler), and the
``websockets`` library's asyncio server with ``async for m in ws: await
ws.send(m)``, both without compression. Each runs on one core, the client
on the other (taskset). One client, the same for both, measures:

- ``64K msg/s``: 64 KiB binary messages echoed one after another (the next
  is sent when the last came back) for ``--seconds``;
- ``16M s``: one 16 MiB message echoed, from its first byte sent to its
  last received (the median of ``--big`` of them);
- ``CPU us/msg``: the server's user + system CPU time during the 64 KiB run
  (/proc, clock ticks) divided by the messages echoed; ``CPU ms/16M`` the
  same for the 16 MiB run.

The client does no masking work while it measures: each frame is built and
masked (with a random key) before the clock starts, and sent as it is, so
the figures are the servers' and the loopback's, not the client's. (The 64
KiB run cycles through 4 such frames, so it sends 4 masks over and over,
where a browser picks a fresh one per frame: a server that keeps what it
derives from a mask -- wsgihost's _slice_keys -- gains a few microseconds
per message here that it would not with a browser.)

Every echo is compared with what was sent, as a bytearray: one memcmp(),
1.4 ms for 16 MiB. (Compared through a memoryview, it went byte by byte:
37 ms for 16 MiB, 146 us for 64 KiB -- client time inside every
measurement, which drew the ratios of both servers towards 1.) Servers
take turns within a round, the order alternating; the ratios (wsgihost /
websockets) are taken round by
round and their median printed, with the load average at each round.
"""

import argparse
import base64
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import bench     # same folder: /proc readings, pinning, ports

HERE = os.path.dirname(os.path.abspath(__file__))

SMALL = 64 * 1024
BIG = 16 * 1024 * 1024
TIMEOUT = 60.0

PEER_SERVER = r"""
import asyncio, sys
from websockets.asyncio.server import serve

async def echo(ws):
    async for message in ws:
        await ws.send(message)

async def main(port):
    async with serve(echo, "127.0.0.1", port, compression=None, max_size=None,
                     ping_interval=None) as server:
        await server.serve_forever()

asyncio.run(main(int(sys.argv[1])))
"""


# -- the client ------------------------------------------------------------------

def masked_frame(payload: bytes) -> bytes:
    """A final binary frame, masked with a random key, as a client sends it (RFC 6455 §5.2)."""
    mask = os.urandom(4)
    n = len(payload)
    header = struct.pack("!BB", 0x82, 0x80 | 127) + struct.pack("!Q", n) if n >= 65536 else (
        struct.pack("!BBH", 0x82, 0x80 | 126, n) if n >= 126 else struct.pack("!BB", 0x82, 0x80 | n))
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
    return header + mask + (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")


def recv_exactly(sock, buf: memoryview):
    while buf:
        got = sock.recv_into(buf)
        if not got:
            raise ConnectionError("the server closed the connection")
        buf = buf[got:]


def read_frame(sock, buf: bytearray) -> memoryview:
    """One unmasked frame from the server, its payload in ``buf``."""
    head = bytearray(10)
    recv_exactly(sock, memoryview(head)[:2])
    length = head[1] & 0x7F
    if length >= 126:
        extra = 2 if length == 126 else 8
        recv_exactly(sock, memoryview(head)[2:2 + extra])
        length = int.from_bytes(head[2:2 + extra], "big")
    if head[0] != 0x82:
        raise ValueError("unexpected frame %r" % bytes(head[:2]))
    view = memoryview(buf)[:length]
    recv_exactly(sock, view)
    return view


def connect(port: int):
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(("GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                  % (port, key)).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(1)
        if not data:
            raise ConnectionError("no handshake answer")
        head += data
    if not head.startswith(b"HTTP/1.1 101"):
        raise ValueError("handshake refused: %r" % head[:200])
    return sock


def client_small(port: int, seconds: float) -> dict:
    payloads = [os.urandom(SMALL) for _ in range(4)]
    frames = [masked_frame(p) for p in payloads]
    buf = bytearray(SMALL)
    sock = connect(port)
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        i = count % 4
        sock.sendall(frames[i])
        if len(read_frame(sock, buf)) != SMALL or buf != payloads[i]:
            raise ValueError("echo differs")
        count += 1
        if count % 16 == 0 and time.perf_counter() > deadline:
            break
    elapsed = time.perf_counter() - start
    sock.close()
    return {"messages": count, "seconds": elapsed}


def client_big(port: int, count: int) -> dict:
    payload = os.urandom(BIG)
    frame = masked_frame(payload)
    buf = bytearray(BIG)
    sock = connect(port)
    times = []
    for _ in range(count):
        start = time.perf_counter()
        sock.sendall(frame)
        if len(read_frame(sock, buf)) != BIG or buf != payload:
            raise ValueError("echo differs")
        times.append(time.perf_counter() - start)
    sock.close()
    return {"times": times}


# -- the servers -----------------------------------------------------------------

def wsgihost_config(folder: str, port: int) -> str:
    path = os.path.join(folder, "ws.json")
    with open(path, "w") as f:
        json.dump({"workers": [{"type": "router", "options": {"pythonpath": [HERE]},
                                "transports": [{
                                    "type": "web",
                                    "endpoint": {"type": "tcp", "port": port, "interface": "127.0.0.1"},
                                    "paths": {"ws": {"type": "websocket", "module": "apps",
                                                     "object": "websocket_echo",
                                                     "options": {"auto_ping_interval": 0,
                                                                 "max_message_size": 2 * BIG}}}}]}]}, f)
    return path


def start(argv, port: int, pinning):
    proc = subprocess.Popen(pinning.server(argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("server exited: %s" % proc.stderr.read().decode(errors="replace"))
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not listen: %r" % argv)


def run_client(pinning, port: int, mode: str, amount) -> dict:
    argv = pinning.client([sys.executable, os.path.abspath(__file__), "--client", mode,
                           "--port", str(port), "--amount", str(amount)])
    out = subprocess.run(argv, stdout=subprocess.PIPE, check=True, timeout=600).stdout
    return json.loads(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ws-venv", default="/tmp/wsvenv", help="a virtualenv with websockets")
    parser.add_argument("--wsgihost", default=bench.DEFAULT_WSGIHOST, metavar="PATH")
    parser.add_argument("--baseline", metavar="PATH",
                        help="another wsgihost.py (e.g. main's) to run beside, as 'baseline'")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="of 64 KiB echoes per run")
    parser.add_argument("--big", type=int, default=3, help="16 MiB echoes per run")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--amount", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        result = (client_small(args.port, args.amount) if args.client == "small"
                  else client_big(args.port, int(args.amount)))
        print(json.dumps(result))
        return
    pinning = bench.Pinning(not args.no_pin)
    pinning.move_here_to_client()
    peer_python = os.path.join(args.ws_venv, "bin", "python")
    folder = tempfile.mkdtemp(prefix="bench-ws-")
    peer_script = os.path.join(folder, "peer.py")
    with open(peer_script, "w") as f:
        f.write(PEER_SERVER)
    ports = {"wsgihost": bench.free_port(), "websockets": bench.free_port()}
    servers = {"wsgihost": start([sys.executable, args.wsgihost, wsgihost_config(folder, ports["wsgihost"])],
                                 ports["wsgihost"], pinning),
               "websockets": start([peer_python, peer_script, str(ports["websockets"])],
                                   ports["websockets"], pinning)}
    if args.baseline:
        ports["baseline"] = bench.free_port()
        servers["baseline"] = start([sys.executable, args.baseline, wsgihost_config(
            tempfile.mkdtemp(prefix="bench-ws-"), ports["baseline"])], ports["baseline"], pinning)
    print("WebSocket echo, %s; Python %s; %d rounds, %gs of 64 KiB echoes and %d x 16 MiB per run"
          % (pinning.describe(), sys.version.split()[0], args.rounds, args.seconds, args.big))
    rows, ratios, base_ratios = {name: [] for name in servers}, [], []
    try:
        for n in range(args.rounds):
            load = bench.machine_load()[0]
            order = list(servers) if n % 2 == 0 else list(servers)[::-1]
            got = {}
            for name in order:
                pid, port = servers[name].pid, ports[name]
                before = bench.tree_cpu_ticks(bench.process_tree(pid))
                small = run_client(pinning, port, "small", args.seconds)
                cpu = bench.tree_cpu_ticks(bench.process_tree(pid)) - before
                before = bench.tree_cpu_ticks(bench.process_tree(pid))
                big = run_client(pinning, port, "big", args.big)
                big_cpu = bench.tree_cpu_ticks(bench.process_tree(pid)) - before
                rate = small["messages"] / small["seconds"]
                got[name] = (rate, statistics.median(big["times"]),
                             cpu / bench.CLK_TCK / small["messages"] * 1e6,
                             big_cpu / bench.CLK_TCK / args.big * 1e3)
                rows[name].append(got[name])
            w, p = got["wsgihost"], got["websockets"]
            ratios.append(tuple(w[i] / p[i] for i in range(4)))
            print("round %d (load %.2f): " % (n + 1, load) + "; ".join(
                "%s %.0f msg/s, 16M %.3f s, %.0f us/msg, %.0f ms/16M" % ((name,) + got[name])
                for name in servers)
                + "; ratios: msg/s %.2f, 16M time %.2f, CPU/msg %.2f, CPU/16M %.2f" % ratios[-1], flush=True)
            if args.baseline:
                b = got["baseline"]
                base_ratios.append(tuple(w[i] / b[i] for i in range(4)))
    finally:
        for proc in servers.values():
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    print("\n%-11s %10s %9s %11s %12s" % ("server", "64K msg/s", "16M s", "CPU us/msg", "CPU ms/16M"))
    for name, values in rows.items():
        print("%-11s %10.0f %9.3f %11.0f %12.0f" % ((name,) + tuple(statistics.median(v[i] for v in values)
                                                                     for i in range(4))))
    print("wsgihost / websockets, median of rounds: msg/s %.2f (target >= 0.8), 16 MiB time %.2f "
          "(target <= 1.2), CPU per message %.2f, CPU per 16 MiB %.2f; load now %.2f" % (
              tuple(statistics.median(r[i] for r in ratios) for i in range(4)) + (bench.machine_load()[0],)))
    if base_ratios:
        print("wsgihost / baseline, median of rounds: msg/s %.2f, 16 MiB time %.2f, CPU per message %.2f, "
              "CPU per 16 MiB %.2f" % tuple(statistics.median(r[i] for r in base_ratios) for i in range(4)))


if __name__ == "__main__":
    main()
