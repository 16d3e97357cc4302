"""The WSGI apps the benchmark serves: the same callables under every server.

Each is a whole WSGI app, so any server can run it alone::

    python ../../wsgihost.py --app apps:hello --port 8080
    waitress-serve --listen=127.0.0.1:8080 apps:hello
    gunicorn -k gthread --threads 8 -b 127.0.0.1:8080 apps:hello

- ``hello``: 14 bytes of text; measures the cost of a request itself.
- ``download``: 1 MiB, given whole (one bytes object), with Content-Length;
  measures how a server sends a large body.
- ``echo``: reads the request body from ``wsgi.input`` and returns it;
  bench.py posts 64 KiB, so this measures receiving and sending a body.
- ``broadcast``: GET says hello; POST sends the body, as text, to every
  WebSocket client of the ``/ws`` path through wsgihost's
  ``environ["wsgihost.channels"]`` and answers how many it reached. Only
  wsgihost has channels: other servers answer 404.

Standard library only, and no work beyond what each app is there to measure.
"""

HELLO = b"Hello, World!\n"

#: The download body: 1 MiB, built once at import.
DOWNLOAD = b"0123456789abcdef" * (1024 * 1024 // 16)

#: The largest body echo and broadcast read; more is answered 413.
MAX_BODY = 1024 * 1024

#: The websocket path broadcast sends to (bench.py's config mounts it as "ws").
CHANNEL_PATH = "/ws"


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(HELLO)))])
    return [HELLO]


def download(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(DOWNLOAD)))])
    return [DOWNLOAD]


def echo(environ, start_response):
    body = read_body(environ)
    if body is None:
        return answer(start_response, "413 Content Too Large", b"body too large\n")
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(body)))])
    return [body]


def broadcast(environ, start_response):
    if environ["REQUEST_METHOD"] != "POST":
        return hello(environ, start_response)
    body = read_body(environ)
    if body is None:
        return answer(start_response, "413 Content Too Large", b"body too large\n")
    channel = environ.get("wsgihost.channels", {}).get(CHANNEL_PATH)
    if channel is None:
        return answer(start_response, "404 Not Found", b"no /ws channel on this server\n")
    reached = channel.broadcast(body.decode("utf-8", "replace"))
    return answer(start_response, "200 OK", b"%d\n" % reached)


def read_body(environ):
    """The request body (at most MAX_BODY bytes, else None).

    PEP 3333: read no more than CONTENT_LENGTH bytes from wsgi.input.
    """
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > MAX_BODY:
        return None
    return environ["wsgi.input"].read(length) if length > 0 else b""


def answer(start_response, status, body):
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def websocket_echo(ws):
    """A WebSocket handler (wsgihost's handler path, a thread per client):
    every message back as it came, text as text, binary as binary.
    bench_websocket.py mounts it as ``{"type": "websocket", "module": "apps",
    "object": "websocket_echo"}``."""
    for message in ws:
        ws.send(message)
