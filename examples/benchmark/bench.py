"""Benchmark wsgihost side by side with waitress and gunicorn (gthread).

Standard library only; it drives external tools (wrk, taskset) and servers.
Read README.md in this folder first: how to install the peers, how to read
the numbers. Two modes::

    python bench.py http [--duration 10] [--rounds 3] [--peers-venv /tmp/peers]
    python bench.py idle [--idle 1000] [--peers-venv /tmp/peers]

``http`` starts every server on the same apps (apps.py: hello, a 1 MiB
download, a 64 KiB echo), drives each with wrk at 1, 16 and 256 keep-alive
connections and with ``Connection: close``, and prints req/s, latency, errors,
the server's CPU time per request and its peak memory, with wsgihost's ratios
to each peer taken round by round (the servers take turns within a round, so
a burst of load on a shared machine hits all of them alike).

``idle`` holds N connections open from a separate client process -- after
one request (idle keep-alive), connected but silent, sending a request
head one byte every 5 s (slowloris), and for wsgihost WebSockets on a
broadcast path -- and prints the server's memory and
threads, how long a fresh client waits for an answer meanwhile, and how
long one broadcast takes to reach all N WebSocket clients.

The server runs on one core and the client (wrk, the idle holder) on another
when ``taskset`` exists and there are two cores; ``--no-pin`` turns that off.
Measurements of a server are taken from /proc over its whole process tree
(gunicorn's arbiter and workers): CPU is utime + stime, memory VmRSS sampled
ten times a second, threads the "Threads" lines summed.

How it is built, top to bottom: 1. /proc readings; 2. starting and stopping
servers; 3. wrk; 4. the http mode; 5. the idle mode and its holder process;
6. tables; 7. the command line.
"""

import argparse
import base64
import collections
import json
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_WSGIHOST = os.path.normpath(os.path.join(HERE, "..", "..", "wsgihost.py"))

#: What each app is asked, as wrk sends it. "echo" posts ECHO_SIZE bytes.
APPS = ("hello", "download", "echo")
ECHO_SIZE = 64 * 1024
DOWNLOAD_SIZE = 1024 * 1024
#: Keep-alive connection counts, and the count for the Connection: close run.
CONNECTIONS = (1, 16, 256)
CLOSE_CONNECTIONS = 16

#: How often a server's memory and threads are sampled during a run (s).
SAMPLE_INTERVAL = 0.1
#: How long a server may take to listen after it is started (s); the machine
#: may be busy.
START_TIMEOUT = 30.0
#: How long a stopping server gets after SIGTERM before SIGKILL (s).
STOP_TIMEOUT = 15.0
#: Fresh requests measured while N connections are idle, and the wait for each.
FRESH_REQUESTS = 20
FRESH_TIMEOUT = 5.0
#: The idle holder opens connections in batches of this many, and bench.py
#: checks the machine between batches (see idle_safety).
HOLD_BATCH = 500
#: Keep at least this many process ids and this much memory free for the
#: other users of the machine, and stop a server that spends threads per
#: connection at this many: it would otherwise take the machine (a load
#: average of 2,000 was seen with 9,000 threads). The holder stops opening then.
PID_RESERVE = 8000
MAX_SERVER_THREADS = 2500
MEMORY_RESERVE = 2 * 1024 * 1024 * 1024
#: How long one broadcast may take to reach every client before we give up (s).
BROADCAST_TIMEOUT = 30.0

CLK_TCK = os.sysconf("SC_CLK_TCK")


# =============================================================================
# 1. Readings from /proc: a server's process tree, CPU, memory, threads
# =============================================================================

def read_stat(pid):
    """(ppid, utime + stime in clock ticks) of ``pid``, or None if it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after it.
    fields = data[data.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def process_tree(root):
    """``root`` and every descendant (gunicorn's workers), as a list of pids."""
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = read_stat(int(name))
            if stat:
                children.setdefault(stat[0], []).append(int(name))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, ()))
    return pids


def tree_cpu_ticks(pids):
    """utime + stime of ``pids`` summed, in clock ticks."""
    return sum(stat[1] for stat in map(read_stat, pids) if stat)


def read_status(pid):
    """{"VmRSS": KiB, "VmHWM": KiB, "Threads": n} of ``pid`` (empty if gone)."""
    values = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "Threads"):
                    values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values


def tree_memory(pids):
    """(RSS in KiB, threads) of ``pids``, summed."""
    rss = threads = 0
    for pid in pids:
        status = read_status(pid)
        rss += status.get("VmRSS", 0)
        threads += status.get("Threads", 0)
    return rss, threads


class Sampler:
    """Samples a process tree's RSS and threads in a thread; keeps the peaks.

    Reading every process's stat to find the tree costs more than reading
    the tree's status files, so the tree is found again only once a second.
    """

    def __init__(self, root):
        self.root = root
        self.peak_rss = self.peak_threads = 0
        self._pids, self._found_at = [], None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self):
        if self._found_at is None or time.monotonic() - self._found_at > 1.0:
            self._pids, self._found_at = process_tree(self.root), time.monotonic()
        rss, threads = tree_memory(self._pids)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_threads = max(self.peak_threads, threads)

    def _run(self):
        while True:
            self._sample()
            if self._stop.wait(SAMPLE_INTERVAL):
                return


def machine_load():
    """The 1-minute load average and the number of threads on the machine."""
    with open("/proc/loadavg") as f:
        fields = f.read().split()
    return float(fields[0]), int(fields[3].split("/")[1])


def memory_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def raise_open_files_limit():
    """Raise the soft RLIMIT_NOFILE to the hard one; return the new limit.

    bench.py does it for itself first thing, so that the servers it starts
    (which inherit it) can hold as many connections as the holder opens:
    wsgihost raises its own, waitress and gunicorn do not.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1024 * 1024
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# =============================================================================
# 2. Servers: which exist, starting them pinned, stopping them
# =============================================================================

class Pinning:
    """Which core the server runs on and which the client, or no pinning."""

    def __init__(self, enabled, server_cpu=None, client_cpu=None):
        cpus = sorted(os.sched_getaffinity(0))
        self.taskset = shutil.which("taskset")
        self.enabled = bool(enabled and self.taskset and len(cpus) >= 2)
        self.server_cpu = cpus[0] if server_cpu is None else server_cpu
        self.client_cpu = cpus[1 % len(cpus)] if client_cpu is None else client_cpu
        if enabled and not self.taskset:
            self.why_not = "taskset not found"
        elif enabled and len(cpus) < 2:
            self.why_not = "only one core"
        else:
            self.why_not = "--no-pin"

    def move_here_to_client(self):
        """Run bench.py itself (its sampler, the fresh clients) on the client's core."""
        if self.enabled:
            os.sched_setaffinity(0, {self.client_cpu})

    def server(self, argv):
        return [self.taskset, "-c", str(self.server_cpu)] + argv if self.enabled else argv

    def client(self, argv):
        return [self.taskset, "-c", str(self.client_cpu)] + argv if self.enabled else argv

    def describe(self):
        if self.enabled:
            return "server on CPU %d, client on CPU %d (taskset)" % (self.server_cpu, self.client_cpu)
        return "not pinned (%s)" % self.why_not


class ServerKind:
    """A server under test: its name and how to start it on an app and a port.

    ``argv(target, port, idle)`` gives the command; ``target`` is
    "apps:hello" or, for wsgihost, a config file (the idle mode's WebSocket
    path needs one). ``idle`` is True in the idle mode, where the peers'
    connection limits are raised (see README: "the idle mode").
    """

    def __init__(self, name, python, argv, websocket=False):
        self.name = name
        self.python = python
        self._argv = argv
        self.websocket = websocket

    def argv(self, target, port, idle=False):
        return self._argv(self.python, target, port, idle)


def wsgihost_kind(python, path, workers=None, name="wsgihost"):
    def argv(python, target, port, idle):
        command = [python, path]
        if target.endswith(".json"):
            command += [target]
        else:
            command += ["--app", target, "--host", "127.0.0.1", "--port", str(port)]
        if workers:
            command += ["--workers", str(workers)]
        return command + ["--loglevel", "warn"]
    return ServerKind(name, python, argv, websocket=True)


def waitress_kind(python):
    def argv(python, target, port, idle):
        command = [python, "-m", "waitress", "--listen=127.0.0.1:%d" % port]
        if idle:
            # Its default connection_limit (100) would stop accepting long
            # before N; raise it so that the idle cost itself is measured.
            command.append("--connection-limit=%d" % (idle + 100))
        return command + [target]
    return ServerKind("waitress", python, argv)


def gunicorn_kind(python, workers=1, name="gunicorn"):
    def argv(python, target, port, idle):
        command = [python, "-m", "gunicorn", "--worker-class", "gthread", "--workers", str(workers),
                   "--threads", "8", "--bind", "127.0.0.1:%d" % port, "--log-level", "warning"]
        if idle:
            # Defaults: 1000 worker_connections (all N would fill them) and a
            # 2 s keep-alive (idle connections would be closed before we look).
            command += ["--worker-connections", str(idle + 100), "--keep-alive", "600"]
        return command + [target]
    return ServerKind(name, python, argv)


def python_has(python, module):
    return subprocess.run([python, "-c", "import " + module], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


def wsgihost_has_workers(python, path):
    result = subprocess.run([python, path, "--help"], capture_output=True, text=True)
    return "--workers" in result.stdout


def find_servers(args, out=sys.stderr):
    """The servers to run: wsgihost always, each peer when it is installed."""
    wanted = set(args.servers.split(","))
    servers = []
    if "wsgihost" in wanted:
        servers.append(wsgihost_kind(sys.executable, args.wsgihost))
        if args.wsgihost_workers:
            if not wsgihost_has_workers(sys.executable, args.wsgihost):
                sys.exit("bench.py: %s has no --workers option (--wsgihost-workers)" % args.wsgihost)
            servers.append(wsgihost_kind(sys.executable, args.wsgihost, args.wsgihost_workers,
                                         "wsgihost-w%d" % args.wsgihost_workers))
    peer_python = sys.executable
    if args.peers_venv:
        peer_python = os.path.join(args.peers_venv, "bin", "python")
        if not os.path.exists(peer_python):
            sys.exit("bench.py: no %s (--peers-venv should be a virtualenv's folder)" % peer_python)
    for module, make in (("waitress", lambda: [waitress_kind(peer_python)]),
                         ("gunicorn", lambda: [gunicorn_kind(peer_python)] + (
                             [gunicorn_kind(peer_python, args.gunicorn_workers,
                                            "gunicorn-w%d" % args.gunicorn_workers)]
                             if args.gunicorn_workers and args.gunicorn_workers != 1 else []))):
        if module not in wanted:
            continue
        if python_has(peer_python, module):
            servers.extend(make())
        else:
            print("note: %s is not installed in %s: skipped (see README: installing the peers)"
                  % (module, peer_python), file=out)
    return servers


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningServer:
    """One started server: its process, port and log file."""

    def __init__(self, kind, target, pinning, idle=False, cwd=HERE):
        self.kind = kind
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="bench-%s-" % kind.name, suffix=".log",
                                               delete=False)
        if target.endswith(".json"):
            target = write_port(target, self.port)
        argv = pinning.server(kind.argv(target, self.port, idle))
        self.argv = argv
        self.proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid            # taskset execs the server: same pid
        self._wait_listening()

    def _wait_listening(self):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with status %s at start:\n%s"
                                   % (self.kind.name, self.proc.returncode, self.log_tail()))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("%s did not listen on port %d within %d s:\n%s"
                           % (self.kind.name, self.port, START_TIMEOUT, self.log_tail()))

    def pids(self):
        return process_tree(self.pid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)    # its own session: its workers too
                self.proc.wait()
        self.log.close()

    def log_tail(self, lines=15):
        with open(self.log.name, errors="replace") as f:
            return "".join(f.readlines()[-lines:])

    def log_problems(self):
        """The errors the server logged, as "N x message: exception" lines (an anomaly)."""
        with open(self.log.name, errors="replace") as f:
            return summarize_log(f)


#: A log line reporting an error, in wsgihost's, waitress's and gunicorn's formats.
LOG_ERROR_RE = re.compile(r"\b(?:ERROR|CRITICAL)\]?:?\s*(.*)")


def summarize_log(lines):
    """Error lines of a log, each with the last line of its traceback, counted."""
    counts = collections.Counter()
    message = None
    for line in lines:
        line = line.rstrip()
        match = LOG_ERROR_RE.search(line)
        if match:
            if message is not None:
                counts[message] += 1
            message = match.group(1)
        elif message is not None and line and not line[0].isspace() \
                and not line.startswith("Traceback"):
            counts[message + ": " + line] += 1      # the exception that ends a traceback
            message = None
    if message is not None:
        counts[message] += 1
    return ["%d x %s" % (n, text) for text, n in counts.most_common()]


def write_port(config_path, port):
    """A copy of a wsgihost config template with its "port" set."""
    with open(config_path) as f:
        config = json.load(f)
    for worker in config["workers"]:
        for transport in worker["transports"]:
            transport["endpoint"]["port"] = port
    path = config_path[:-len(".json")] + "-%d.json" % port
    with open(path, "w") as f:
        json.dump(config, f)
    return path


# =============================================================================
# 3. wrk: one run, its numbers read by a Lua done() hook
# =============================================================================

#: wrk calls done() once at the end; it prints one JSON line we read back.
#: Latencies are in microseconds; summary.requests counts completed responses.
WRK_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH-JSON {"requests": %.0f, "duration_us": %.0f, "bytes": %.0f, ' ..
    '"connect": %.0f, "read": %.0f, "write": %.0f, "timeout": %.0f, "status": %.0f, ' ..
    '"p50_us": %.0f, "p90_us": %.0f, "p99_us": %.0f, "max_us": %.0f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""

WRK_POST = """
wrk.method = "POST"
wrk.body = string.rep("x", %d)
wrk.headers["Content-Type"] = "application/octet-stream"
""" % ECHO_SIZE


def write_wrk_scripts(folder):
    """{app: path of its Lua script}: the done() hook, plus the POST body for echo."""
    scripts = {}
    for app in APPS:
        path = os.path.join(folder, "wrk-%s.lua" % app)
        with open(path, "w") as f:
            f.write((WRK_POST if app == "echo" else "") + WRK_DONE)
        scripts[app] = path
    return scripts


def run_wrk(port, script, connections, close, args, pinning, duration=None):
    """One wrk run; the numbers its done() hook printed, as a dict."""
    threads = max(1, min(args.wrk_threads, connections))
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", "%ds" % (duration or args.duration),
            "--timeout", "%ds" % args.wrk_timeout, "--latency", "-s", script]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append("http://127.0.0.1:%d/" % port)
    result = subprocess.run(pinning.client(argv), capture_output=True, text=True,
                            timeout=(duration or args.duration) + 60)
    for line in result.stdout.splitlines():
        if line.startswith("BENCH-JSON "):
            return json.loads(line[len("BENCH-JSON "):])
    raise RuntimeError("wrk printed no result (status %d):\n%s%s"
                       % (result.returncode, result.stdout, result.stderr))


def check_wrk():
    if not shutil.which("wrk"):
        sys.exit("bench.py: wrk is not installed. It is the load generator of the http mode: "
                 "`sudo apt-get install wrk` (Debian/Ubuntu), or build it from "
                 "https://github.com/wg/wrk and put it on PATH.")


# =============================================================================
# 4. The http mode
# =============================================================================

def check_app(port, app):
    """One request with http.client: the server serves ``app`` correctly, or RuntimeError."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        if app == "echo":
            body = os.urandom(ECHO_SIZE)
            conn.request("POST", "/", body, {"Content-Type": "application/octet-stream"})
            expected = body
        else:
            conn.request("GET", "/")
            expected = None
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError("%s: status %d" % (app, response.status))
    if app == "download" and len(data) != DOWNLOAD_SIZE:
        raise RuntimeError("download: %d bytes, expected %d" % (len(data), DOWNLOAD_SIZE))
    if expected is not None and data != expected:
        raise RuntimeError("echo: the body came back different (%d bytes)" % len(data))


def measure_run(server, port, script, connections, close, args, pinning):
    """wrk against a running server, with its CPU and memory over the run."""
    pids = server.pids()
    cpu_before = tree_cpu_ticks(pids)
    with Sampler(server.pid) as sampler:
        result = run_wrk(port, script, connections, close, args, pinning)
    cpu_ticks = tree_cpu_ticks(server.pids()) - cpu_before
    seconds = result["duration_us"] / 1e6
    requests = result["requests"]
    return {
        "req_s": requests / seconds if seconds else 0.0,
        "requests": requests,
        "p50_ms": result["p50_us"] / 1000, "p90_ms": result["p90_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000, "max_ms": result["max_us"] / 1000,
        "socket_errors": result["connect"] + result["read"] + result["write"] + result["timeout"],
        "errors": {k: result[k] for k in ("connect", "read", "write", "timeout", "status")},
        "cpu_us_per_req": cpu_ticks / CLK_TCK * 1e6 / requests if requests else None,
        "server_cpu_s": cpu_ticks / CLK_TCK,
        "peak_rss_kib": sampler.peak_rss,
        "peak_threads": sampler.peak_threads,
    }


def scenarios(args):
    """(label, connections, close) for each wrk run of an app."""
    runs = [("ka %d" % c, c, False) for c in args.connections]
    if args.close_connections:
        runs.append(("close %d" % args.close_connections, args.close_connections, True))
    return runs


def http_mode(args):
    check_wrk()
    pinning = Pinning(not args.no_pin, args.server_cpu, args.client_cpu)
    pinning.move_here_to_client()
    servers = find_servers(args)
    apps = args.apps.split(",")
    for app in apps:
        if app not in APPS:
            sys.exit("bench.py: unknown app %r (expected some of %s)" % (app, ",".join(APPS)))
    header = describe_machine(args, pinning, servers)
    print(header, file=sys.stderr)
    runs = []           # one dict per wrk run
    problems = {}       # server name -> log lines reporting errors
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        scripts = write_wrk_scripts(folder)
        for app in apps:
            running = []
            try:
                for kind in servers:
                    running.append(RunningServer(kind, "apps:" + app, pinning))
                for server in running:
                    check_app(server.port, app)
                    if args.warmup:
                        run_wrk(server.port, scripts[app], 16, False, args, pinning, args.warmup)
                for round_number in range(args.rounds):
                    for label, connections, close in scenarios(args):
                        # Take turns, starting one further each round, so that
                        # no server always runs first (or right after another).
                        shift = round_number % len(running)
                        for server in running[shift:] + running[:shift]:
                            run = measure_run(server, server.port, scripts[app], connections,
                                              close, args, pinning)
                            run.update(app=app, scenario=label, server=server.kind.name,
                                       round=round_number + 1)
                            runs.append(run)
                            print("  %-8s %-9s round %d %-12s %9.0f req/s  p99 %7.1f ms  "
                                  "%6s us/req  errors %d"
                                  % (app, label, round_number + 1, server.kind.name, run["req_s"],
                                     run["p99_ms"], fmt(run["cpu_us_per_req"], 0),
                                     run["socket_errors"] + run["errors"]["status"]),
                                  file=sys.stderr, flush=True)
            finally:
                for server in running:
                    server.stop()
                    lines = server.log_problems()
                    if lines:
                        problems.setdefault(server.kind.name, []).extend(
                            "%s: %s" % (app, line) for line in lines)
                    os.unlink(server.log.name)
    summary = summarize_http(runs, [kind.name for kind in servers], apps, args)
    header += "\nload average at the end: %.1f" % machine_load()[0]
    print_http(summary, header, problems)
    if args.json:
        write_json(args.json, {"mode": "http", "header": header, "runs": runs,
                               "summary": summary, "log_problems": problems})


def summarize_http(runs, names, apps, args):
    """Medians over rounds per (app, scenario, server); ratios taken round by round."""
    rows, ratios = [], []
    subject = names[0]
    for app in apps:
        for label, _, _ in scenarios(args):
            by_server = {name: [r for r in runs if r["app"] == app and r["scenario"] == label
                                and r["server"] == name] for name in names}
            for name in names:
                mine = by_server[name]
                if not mine:
                    continue
                rows.append({
                    "app": app, "scenario": label, "server": name, "rounds": len(mine),
                    "req_s": median(r["req_s"] for r in mine),
                    "p50_ms": median(r["p50_ms"] for r in mine),
                    "p99_ms": median(r["p99_ms"] for r in mine),
                    "socket_errors": sum(r["socket_errors"] for r in mine),
                    "non_2xx": sum(r["errors"]["status"] for r in mine),
                    "cpu_us_per_req": median(r["cpu_us_per_req"] for r in mine),
                    "peak_rss_mib": max(r["peak_rss_kib"] for r in mine) / 1024,
                    "peak_threads": max(r["peak_threads"] for r in mine),
                })
            for peer in names[1:]:
                pairs = list(zip(sorted(by_server[subject], key=lambda r: r["round"]),
                                 sorted(by_server[peer], key=lambda r: r["round"])))
                if not pairs:
                    continue
                ratios.append({
                    "app": app, "scenario": label, "subject": subject, "peer": peer,
                    "req_s": median(ratio(a["req_s"], b["req_s"]) for a, b in pairs),
                    "cpu_per_req": median(ratio(a["cpu_us_per_req"], b["cpu_us_per_req"])
                                          for a, b in pairs),
                    "p99": median(ratio(a["p99_ms"], b["p99_ms"]) for a, b in pairs),
                })
    return {"rows": rows, "ratios": ratios}


# =============================================================================
# 5. The idle mode: a holder process keeps N connections open
# =============================================================================
# bench.py starts a server, then a holder (this file, "_hold") pinned to the
# client core. The holder raises its open-files limit, opens connections in
# batches of HOLD_BATCH, and after each batch prints a JSON line and waits
# for "go" (or "stop") on stdin, so that bench.py can stop it before the
# server's threads eat the machine's process ids. Then bench.py measures the
# server and a fresh client, and asks the holder, over stdin, to wait for a
# broadcast ("broadcast TOKEN") and to count what the server closed
# ("status"). All times are time.monotonic(), which on Linux is one clock
# for every process, so the holder's arrival times and bench.py's send time
# can be subtracted.

IDLE_KINDS = ("keepalive", "silent", "slowloris", "websocket")
#: A slowloris holder sends one byte of a header line on every connection
#: each SLOWLORIS_PERIOD seconds, after a request line: a head that never ends.
SLOWLORIS_PERIOD = 5.0
SLOWLORIS_BYTES = b"X-Slow: 1\r\n"

WS_KEY = base64.b64encode(b"bench.py ws key!").decode("ascii")     # any 16 bytes


def hold_request(kind, ws_path):
    if kind == "keepalive":
        return b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    if kind == "websocket":
        return ("GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
                % (ws_path, WS_KEY)).encode("ascii")
    if kind == "slowloris":
        return b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"        # and never the blank line
    return b""


def response_complete(kind, data):
    """True once ``data`` holds the whole answer to hold_request(kind); ValueError if wrong."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return False
    head = data[:end].decode("latin-1").lower()
    status = head.split(" ", 2)[1] if " " in head else ""
    if kind == "websocket":
        if status != "101":
            raise ValueError("handshake answered %r" % head.split("\r\n")[0])
        return True
    if status != "200":
        raise ValueError("answered %r" % head.split("\r\n")[0])
    for line in head.split("\r\n"):
        if line.startswith("content-length:"):
            return len(data) - end - 4 >= int(line.split(":")[1])
    raise ValueError("no Content-Length in the answer")


def emit(**event):
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def open_batch(host, port, kind, ws_path, count, timeout):
    """Open ``count`` connections of ``kind``; (sockets, error messages)."""
    socks, errors = [], []
    request = hold_request(kind, ws_path)
    for _ in range(count):
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            if request:
                sock.sendall(request)
            socks.append(sock)
        except OSError as exc:
            errors.append("connect: %s" % exc)
    if not request or kind == "slowloris":
        return socks, errors            # no answer to wait for
    # Read every answer, all sockets at once.
    selector = selectors.DefaultSelector()
    buffers = {}
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
        buffers[sock] = b""
    done, deadline = [], time.monotonic() + timeout
    while buffers and time.monotonic() < deadline:
        for key, _ in selector.select(0.5):
            sock = key.fileobj
            try:
                data = sock.recv(65536)
            except OSError as exc:
                data, error = b"", str(exc)
            else:
                error = "closed by the server before answering"
            try:
                if not data:
                    raise ValueError(error)
                buffers[sock] += data
                if response_complete(kind, buffers[sock]):
                    done.append(sock)
                else:
                    continue
            except ValueError as exc:
                errors.append(str(exc))
                sock.close()
            selector.unregister(sock)
            del buffers[sock]
    for sock in buffers:
        errors.append("no answer within %g s" % timeout)
        selector.unregister(sock)
        sock.close()
    selector.close()
    return done, errors


def wait_broadcast(socks, token, timeout):
    """Read every socket until ``token`` arrives; (count, first, last arrival)."""
    selector = selectors.DefaultSelector()
    buffers = {}
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
        buffers[sock] = b""
    emit(event="armed")
    first = last = None
    deadline = time.monotonic() + timeout
    got = 0
    while buffers and time.monotonic() < deadline:
        for key, _ in selector.select(0.5):
            sock = key.fileobj
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            arrived = data and token in buffers[sock] + data
            if data and not arrived:
                buffers[sock] = (buffers[sock] + data)[-len(token):]
                continue
            if arrived:
                now = time.monotonic()
                first = now if first is None else first
                last = now
                got += 1
            selector.unregister(sock)
            del buffers[sock]
    selector.close()
    return got, first, last


def count_closed(socks):
    """How many of ``socks`` the server has closed (readable, and EOF or reset)."""
    closed = 0
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    for key, _ in selector.select(0):
        try:
            if key.fileobj.recv(65536, socket.MSG_PEEK) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    selector.close()
    return closed


def trickle(socks):
    """The slowloris holder's thread: a header byte on every connection each
    SLOWLORIS_PERIOD seconds, for as long as the holder lives."""
    tick = 0
    while True:
        byte = SLOWLORIS_BYTES[tick % len(SLOWLORIS_BYTES):][:1]
        for sock in socks:
            try:
                sock.send(byte)
            except OSError:         # closed by the server (its head timeout), or full
                pass
        tick += 1
        time.sleep(SLOWLORIS_PERIOD)


def hold_main(args):
    """The holder process (bench.py _hold): see the comment above."""
    limit = raise_open_files_limit()
    if limit < args.count + 64:
        emit(event="error", message="the open-files hard limit is %d, too low for %d connections "
                                    "(raise it: ulimit -Hn, or /etc/security/limits.conf)"
                                    % (limit, args.count))
        return 1
    socks, errors = [], []
    while len(socks) < args.count:
        batch, batch_errors = open_batch(args.host, args.port, args.kind, args.ws_path,
                                         min(HOLD_BATCH, args.count - len(socks)), args.timeout)
        socks += batch
        errors += batch_errors
        emit(event="progress", open=len(socks), errors=len(errors))
        if batch_errors and not batch:
            break           # nothing gets through: stop trying
        if sys.stdin.readline().strip() != "go":
            break
    emit(event="ready", open=len(socks), errors=len(errors), first_errors=sorted(set(errors))[:5])
    for sock in socks:
        sock.setblocking(False)
    if args.kind == "slowloris":
        threading.Thread(target=trickle, args=(socks,), daemon=True).start()
    for line in sys.stdin:
        command = line.split()
        if not command or command[0] == "quit":
            break
        if command[0] == "status":
            emit(event="status", open=len(socks), closed=count_closed(socks))
        elif command[0] == "broadcast":
            got, first, last = wait_broadcast(socks, command[1].encode("ascii"), BROADCAST_TIMEOUT)
            emit(event="received", count=got, first=first, last=last)
    for sock in socks:
        sock.close()
    return 0


class Holder:
    """bench.py's side of a holder process."""

    def __init__(self, port, kind, count, ws_path, pinning, timeout):
        argv = [sys.executable, os.path.abspath(__file__), "_hold", "--port", str(port),
                "--kind", kind, "--count", str(count), "--ws-path", ws_path,
                "--timeout", str(timeout)]
        self.proc = subprocess.Popen(pinning.client(argv), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)

    def read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the holder process ended (status %s)" % self.proc.wait())
        event = json.loads(line)
        if event["event"] == "error":
            raise RuntimeError(event["message"])
        return event

    def send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def idle_safety(server_pids, max_server_threads):
    """None if the machine has room for more connections, else why not."""
    _, server_threads = tree_memory(server_pids)
    if server_threads > max_server_threads:
        # Thousands of threads waiting for one GIL keep the machine's run
        # queue long (a load average in the thousands on two cores).
        return ("the server has %d threads (over --max-server-threads %d): stopped opening"
                % (server_threads, max_server_threads))
    _, threads = machine_load()
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    if pid_max - threads < PID_RESERVE:
        return ("%d threads on the machine (pid_max %d): stopped to leave %d process ids "
                "to others" % (threads, pid_max, PID_RESERVE))
    available = memory_available()
    if available is not None and available < MEMORY_RESERVE:
        return "only %d MiB of memory available: stopped" % (available // 2**20)
    return None


def fresh_latency(port, count=FRESH_REQUESTS, timeout=FRESH_TIMEOUT):
    """Seconds for each of ``count`` fresh clients (connect, GET /, whole answer); None: failed."""
    times = []
    failures_in_a_row = 0
    for _ in range(count):
        start = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                data = b""
                while not response_complete("keepalive", data):
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise OSError("closed before the whole answer")
                    data += chunk
            times.append(time.monotonic() - start)
            failures_in_a_row = 0
        except (OSError, ValueError):
            times.append(None)
            failures_in_a_row += 1
            if failures_in_a_row >= 3:
                break           # the server is not answering: do not wait 20 x timeout
        time.sleep(0.05)
    return times


def post_broadcast(port, token):
    """POST the token to the broadcast app; how many clients the server says it reached."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/", token.encode("ascii"), {"Content-Type": "text/plain"})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    return int(body) if response.status == 200 else None


def wsgihost_idle_config(folder, most):
    """A config template (port set per run): the broadcast app on "/", a broadcast path "ws",
    and room for ``most`` WebSockets (by default a fifth of max_connections is kept for HTTP)."""
    path = os.path.join(folder, "idle.json")
    limits = {"max_connections": max(most + 1000, 10000), "max_websockets": max(most + 100, 8000)}
    with open(path, "w") as f:
        json.dump({"workers": [{"type": "router", "options": {"pythonpath": [HERE]},
                                "transports": [{
                                    "type": "web", "options": limits,
                                    "endpoint": {"type": "tcp", "port": 0, "interface": "127.0.0.1"},
                                    "paths": {"/": {"type": "wsgi", "module": "apps",
                                                    "object": "broadcast"},
                                              # The holder answers no pings: with them on,
                                              # the server would rightly drop its clients.
                                              "ws": {"type": "websocket",
                                                     "options": {"auto_ping_interval": 0}}}}]}]}, f)
    return path


def idle_run(kind, idle_kind, count, config, pinning, args):
    """Start a server, hold ``count`` connections of ``idle_kind``, measure; a result dict."""
    target = config if kind.websocket else "apps:hello"
    server = RunningServer(kind, target, pinning, idle=count)
    holder = None
    result = {"server": kind.name, "kind": idle_kind, "asked": count}
    try:
        fresh_latency(server.port, 3)                   # warm: imports, first threads
        before = [t for t in fresh_latency(server.port, 10) if t is not None]
        result["fresh_before_ms"] = median(before) * 1000 if before else None
        time.sleep(0.5)
        result["base_rss_kib"], result["base_threads"] = tree_memory(server.pids())
        holder = Holder(server.port, idle_kind, count, "/ws", pinning, args.hold_timeout)
        started = time.monotonic()
        while True:
            event = holder.read()
            if event["event"] == "ready":
                break
            reason = idle_safety(server.pids(), args.max_server_threads)
            if reason:
                result["stopped"] = reason
            holder.send("stop" if reason else "go")
        result["open_s"] = time.monotonic() - started
        result["open"] = event["open"]
        result["open_errors"] = event["errors"]
        result["first_errors"] = event["first_errors"]
        if idle_kind == "slowloris":
            # The fresh clients come while the next round of bytes trickles
            # in (one each SLOWLORIS_PERIOD from "ready").
            time.sleep(max(args.settle, SLOWLORIS_PERIOD - 0.5))
        else:
            time.sleep(args.settle)
        result["rss_kib"], result["threads"] = tree_memory(server.pids())
        if result["open"]:
            result["kib_per_conn"] = (result["rss_kib"] - result["base_rss_kib"]) / result["open"]
        times = fresh_latency(server.port)
        answered = [t for t in times if t is not None]
        result["fresh_ms"] = [None if t is None else t * 1000 for t in times]
        result["fresh_failed"] = len(times) - len(answered)
        result["fresh_median_ms"] = median(answered) * 1000 if answered else None
        result["fresh_max_ms"] = max(answered) * 1000 if answered else None
        if idle_kind == "websocket" and result["open"]:
            token = "bench-%d" % time.monotonic_ns()
            holder.send("broadcast " + token)
            holder.read()                               # armed
            sent = time.monotonic()
            result["broadcast_reached"] = post_broadcast(server.port, token)
            event = holder.read()
            result["broadcast_received"] = event["count"]
            result["broadcast_ms"] = (event["last"] - sent) * 1000 if event["last"] else None
            result["broadcast_first_ms"] = (event["first"] - sent) * 1000 if event["first"] else None
        holder.send("status")
        result["closed_by_server"] = holder.read()["closed"]
        result["peak_rss_kib"] = sum(read_status(pid).get("VmHWM", 0) for pid in server.pids())
    except (RuntimeError, OSError, ValueError) as exc:
        # Keep what was measured before it failed (a server that fell over
        # under N connections is a result too).
        result["failed"] = "%s: %s" % (type(exc).__name__, exc)
        print("  failed: %s" % result["failed"], file=sys.stderr)
    finally:
        if holder:
            holder.close()
        server.stop()
        result["log_problems"] = server.log_problems()
        os.unlink(server.log.name)
    return result


def idle_mode(args):
    pinning = Pinning(not args.no_pin, args.server_cpu, args.client_cpu)
    pinning.move_here_to_client()
    servers = find_servers(args)
    header = describe_machine(args, pinning, servers)
    print(header, file=sys.stderr)
    kinds = args.idle_kinds.split(",")
    counts = args.idle
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        config = wsgihost_idle_config(folder, max(counts))
        for count in counts:
            for kind in servers:
                if kind.name != "wsgihost" and count > args.peers_idle_max:
                    continue
                for idle_kind in kinds:
                    if idle_kind == "websocket" and not kind.websocket:
                        continue
                    print("  %s: %d %s connections ..." % (kind.name, count, idle_kind),
                          file=sys.stderr, flush=True)
                    try:
                        results.append(idle_run(kind, idle_kind, count, config, pinning, args))
                    except RuntimeError as exc:         # the server did not start
                        print("  failed: %s" % exc, file=sys.stderr)
                        results.append({"server": kind.name, "kind": idle_kind, "asked": count,
                                        "failed": str(exc)})
    header += "\nload average at the end: %.1f" % machine_load()[0]
    print_idle(results, header)
    if args.json:
        write_json(args.json, {"mode": "idle", "header": header, "results": results})


# =============================================================================
# 6. Tables and numbers
# =============================================================================

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(value, digits=1, suffix=""):
    if value is None:
        return "-"
    return "%.*f%s" % (digits, value, suffix)


def table(headings, rows):
    """Rows of strings, in columns: the first two left-aligned, the others right."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headings, *rows)]
    lines = []
    for row in [headings] + rows:
        cells = [str(c).ljust(w) if i < 3 else str(c).rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def describe_machine(args, pinning, servers):
    load, threads = machine_load()
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0] \
        if shutil.which("wrk") else "wrk: not installed"
    lines = [
        "bench.py %s: %d CPUs, load average %.1f at the start, %d threads on the machine"
        % (args.mode, os.cpu_count(), load, threads),
        "pinning: %s" % pinning.describe(),
        "wsgihost: %s (Python %s)" % (args.wsgihost, sys.version.split()[0]),
    ]
    idle = 1000 if args.mode == "idle" else False
    for kind in servers:
        lines.append("  %-12s %s" % (kind.name, " ".join(kind.argv("APP", 0, idle))))
    if args.mode == "http":
        lines.append("%s; %d s x %d rounds, wrk --timeout %ds, %d warm-up s"
                     % (wrk.strip(), args.duration, args.rounds, args.wrk_timeout, args.warmup))
    return "\n".join(lines)


def print_http(summary, header, problems):
    print(header)
    print()
    rows = [[r["app"], r["scenario"], r["server"], fmt(r["req_s"], 0), fmt(r["p50_ms"], 2),
             fmt(r["p99_ms"], 1), str(r["socket_errors"]), str(r["non_2xx"]),
             fmt(r["cpu_us_per_req"], 0), fmt(r["peak_rss_mib"], 1), str(r["peak_threads"])]
            for r in summary["rows"]]
    print(table(["app", "conns", "server", "req/s", "p50 ms", "p99 ms", "sock err", "non-2xx",
                 "CPU us/req", "RSS MiB", "threads"], rows))
    print()
    print("Ratios, %s / peer: the median over rounds of each round's ratio "
          "(req/s: higher is better for %s; CPU/req and p99: lower is)"
          % (summary["ratios"][0]["subject"] if summary["ratios"] else "wsgihost",
             summary["ratios"][0]["subject"] if summary["ratios"] else "wsgihost"))
    rows = [[r["app"], r["scenario"], r["peer"], fmt(r["req_s"], 2, "x"),
             fmt(r["cpu_per_req"], 2, "x"), fmt(r["p99"], 2, "x")] for r in summary["ratios"]]
    if rows:
        print(table(["app", "conns", "peer", "req/s", "CPU/req", "p99"], rows))
    else:
        print("  (no peer ran)")
    for name, lines in problems.items():
        print()
        print("%s logged errors (app: count x message: exception):" % name)
        for line in lines[:10]:
            print("  " + line[:240])


def print_idle(results, header):
    print(header)
    print()
    rows = []
    for r in results:
        get = r.get
        opened = "-" if get("open") is None else str(r["open"]) + (
            "" if r["open"] == r["asked"] else "/%d" % r["asked"])
        fresh = "%s / %s" % (fmt(get("fresh_median_ms"), 1), fmt(get("fresh_max_ms"), 1))
        if get("fresh_failed"):
            fresh += " (%d failed)" % r["fresh_failed"]
        broadcast = "-"
        if get("broadcast_ms") is not None:
            broadcast = "%s ms, %d/%d" % (fmt(r["broadcast_ms"], 0), r["broadcast_received"],
                                           r["open"])
        elif r["kind"] == "websocket":
            broadcast = "not received (%s)" % get("broadcast_received")
        kib = lambda key: None if get(key) is None else r[key] / 1024
        rows.append([r["server"], r["kind"], opened, str(get("open_errors", "-")),
                     fmt(get("open_s"), 1), fmt(kib("base_rss_kib"), 1), fmt(kib("rss_kib"), 1),
                     fmt(get("kib_per_conn"), 1),
                     "%s -> %s" % (get("base_threads", "-"), get("threads", "-")),
                     fmt(get("fresh_before_ms"), 1), fresh, str(get("closed_by_server", "-")),
                     broadcast + (" FAILED" if get("failed") else "")])
    print(table(["server", "idle", "open", "errors", "open s", "RSS before MiB", "RSS MiB",
                 "KiB/conn", "threads", "fresh ms before", "fresh ms median / max",
                 "closed by server", "broadcast to all"], rows))
    for r in results:
        for key, label in (("failed", "failed"), ("stopped", "stopped early"),
                           ("first_errors", "errors opening")):
            if r.get(key):
                print("%s %s %d: %s: %s" % (r["server"], r["kind"], r["asked"], label, r[key]))
        if r.get("log_problems"):
            print("%s %s %d: the server logged errors:" % (r["server"], r["kind"], r["asked"]))
            for line in r["log_problems"][:5]:
                print("  " + line[:240])


def write_json(path, data):
    text = json.dumps(data, indent=1)
    if path == "-":
        print(text)
    else:
        with open(path, "w") as f:
            f.write(text + "\n")
        print("wrote %s" % path, file=sys.stderr)


# =============================================================================
# 7. Command line
# =============================================================================

def int_list(text):
    return [int(part) for part in text.split(",") if part]


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--peers-venv", metavar="DIR",
                        help="a virtualenv holding waitress and/or gunicorn (default: this Python)")
    common.add_argument("--servers", default="wsgihost,waitress,gunicorn",
                        help="which servers, comma-separated (default: %(default)s)")
    common.add_argument("--wsgihost", default=DEFAULT_WSGIHOST, metavar="PATH",
                        help="the wsgihost.py to run (default: this checkout's)")
    common.add_argument("--gunicorn-workers", type=int, metavar="N",
                        help="also run gunicorn gthread with N workers (e.g. 2)")
    common.add_argument("--wsgihost-workers", type=int, metavar="N",
                        help="also run wsgihost --workers N (when it has that option)")
    common.add_argument("--no-pin", action="store_true",
                        help="do not pin server and client to separate cores")
    common.add_argument("--server-cpu", type=int, help="the server's core (default: the first)")
    common.add_argument("--client-cpu", type=int, help="the client's core (default: the second)")
    common.add_argument("--json", metavar="FILE", help="also write every number as JSON ('-': stdout)")

    http = modes.add_parser("http", parents=[common], help="throughput, latency, CPU, memory")
    http.add_argument("--duration", type=int, default=10, help="seconds per wrk run (default 10)")
    http.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    http.add_argument("--warmup", type=int, default=1, help="seconds of warm-up per server and app")
    http.add_argument("--apps", default=",".join(APPS), help="default: %(default)s")
    http.add_argument("--connections", type=int_list, default=list(CONNECTIONS),
                      help="keep-alive connection counts (default 1,16,256)")
    http.add_argument("--close-connections", type=int, default=CLOSE_CONNECTIONS,
                      help="connections of the 'Connection: close' run (0: none; default 16)")
    http.add_argument("--wrk-threads", type=int, default=1, help="wrk -t (default 1)")
    http.add_argument("--wrk-timeout", type=int, default=10,
                      help="wrk --timeout in seconds: slower answers count as timeout errors")

    idle = modes.add_parser("idle", parents=[common], help="N idle connections")
    idle.add_argument("--idle", type=int_list, default=[1000], metavar="N[,N...]",
                      help="connections to hold (default 1000; e.g. 1000,10000)")
    idle.add_argument("--peers-idle-max", type=int, default=1000, metavar="N",
                      help="run peers only for counts up to N (default 1000)")
    idle.add_argument("--idle-kinds", default=",".join(IDLE_KINDS), help="default: %(default)s")
    idle.add_argument("--settle", type=float, default=1.0,
                      help="seconds to wait after opening before measuring (default 1)")
    idle.add_argument("--max-server-threads", type=int, default=MAX_SERVER_THREADS, metavar="N",
                      help="stop opening connections once the server has more threads "
                           "(default %(default)s; see README)")
    idle.add_argument("--hold-timeout", type=float, default=30.0,
                      help="seconds the holder waits for one connection or answer (default 30)")

    hold = modes.add_parser("_hold", help=argparse.SUPPRESS)
    hold.add_argument("--host", default="127.0.0.1")
    hold.add_argument("--port", type=int, required=True)
    hold.add_argument("--kind", choices=IDLE_KINDS, required=True)
    hold.add_argument("--count", type=int, required=True)
    hold.add_argument("--ws-path", default="/ws")
    hold.add_argument("--timeout", type=float, default=30.0)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.mode == "_hold":
        return hold_main(args)
    raise_open_files_limit()
    if args.mode == "http":
        http_mode(args)
    else:
        idle_mode(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
