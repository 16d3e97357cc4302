"""The WSGI primer, runnable: an application, two middlewares, and their stack.

From the folder ``examples/primer``::

    python ../../wsgihost.py .crossbar/config.json

then, in another terminal::

    curl -i 'http://127.0.0.1:8080/hello?name=reader'        # the app, under both middlewares
    curl -i http://127.0.0.1:8080/health                      # answered by a middleware alone
    curl -i 'http://127.0.0.1:8080/plain/hello?name=reader'  # the same app, bare

README.md follows the first of these requests from the bytes on the wire to
the bytes sent back.

WSGI (PEP 3333) in four sentences. The server calls an *application* with
two arguments: ``environ``, a dict describing the request, and
``start_response``, a function to call with a status and a list of headers.
The application calls ``start_response`` once and returns an iterable of
``bytes``, the body; if that iterable has a ``close()`` method, the server
calls it when the response is done. A *middleware* is an application that
calls another one: to the server it is an application, to the application it
is a server. So middlewares nest, each able to look at the request on its way
in and at the status, headers and body on their way out.

``.crossbar/config.json`` mounts ``application`` (the app inside both
middlewares) on "/" and the bare ``app`` on "plain", so that one ``curl``
beside the other shows what the middlewares changed.
"""

import time
from urllib.parse import parse_qs


# -- The application ----------------------------------------------------------

#: The environ keys the app shows, in the order a reader wants them. PEP 3333
#: requires the first seven (SCRIPT_NAME, PATH_INFO and QUERY_STRING may be
#: empty); REMOTE_ADDR is one of the CGI extras a server should add;
#: CONTENT_TYPE and CONTENT_LENGTH are there only when the request sent them.
CGI_KEYS = ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING",
            "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "REMOTE_ADDR",
            "CONTENT_TYPE", "CONTENT_LENGTH")
WSGI_KEYS = ("wsgi.version", "wsgi.url_scheme", "wsgi.multithread", "wsgi.multiprocess",
             "wsgi.run_once")


def app(environ, start_response):
    """Greet ``?name=``, and show the environ this request arrived in.

    Every path gets the same page: a mount decides which URLs reach an app,
    and this one answers all of them.
    """
    # QUERY_STRING is raw, as the client sent it: decoding it is the app's job.
    name = parse_qs(environ.get("QUERY_STRING", "")).get("name", ["world"])[0]
    lines = ["Hello, %s!" % name, "", "The environ this app received:"]
    for key in CGI_KEYS:
        if key in environ:
            lines.append("  %s: %r" % (key, environ[key]))
    # Every other request header arrives as an HTTP_* key: Accept as HTTP_ACCEPT.
    for key in sorted(k for k in environ if k.startswith("HTTP_")):
        lines.append("  %s: %r" % (key, environ[key]))
    for key in WSGI_KEYS:
        lines.append("  %s: %r" % (key, environ[key]))
    # The body, if any, is read from wsgi.input: a file-like object of the server's.
    lines.append("  wsgi.input: a %s" % type(environ["wsgi.input"]).__name__)
    body = ("\n".join(lines) + "\n").encode("utf-8")

    # Status and headers are str; the body is bytes. Content-Length counts
    # bytes. (Given a one-item list, a server could count them itself -- but
    # a middleware that wraps the list hides its length, as Timing does.)
    start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8"),
                              ("Content-Length", str(len(body)))])
    return [body]


# -- Middleware 1: one that serves a path itself ------------------------------

class ServePath:
    """Answer ``path`` with ``body``; pass every other request on to ``app``.

    The application never sees the requests this answers -- how health
    checks, robots.txt or static files are often served in front of an app.
    """

    def __init__(self, app, path: str, body: bytes,
                 content_type: str = "text/plain; charset=utf-8"):
        self.app = app
        self.path = path
        self.body = body
        self.content_type = content_type

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO") != self.path:
            return self.app(environ, start_response)        # not ours: on it goes
        start_response("200 OK", [("Content-Type", self.content_type),
                                  ("Content-Length", str(len(self.body)))])
        return [self.body]


# -- Middleware 2: one that times requests ------------------------------------

class Timing:
    """Time each request; tell the client in a header, and the log at the end.

    The header must be decided before the body is sent, so it carries the time
    until the app called start_response (``Server-Timing: app;dur=0.12``, in
    milliseconds, a header browsers' developer tools show). The whole
    request, body sent included, is over only when the server calls
    ``close()`` on the body: then one line goes to ``wsgi.errors``, the
    server's error log.
    """

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        said = []           # the status, once the app has given it

        def timed_start_response(status, headers, exc_info=None):
            elapsed = (time.perf_counter() - started) * 1000
            said[:] = [status]
            headers = headers + [("Server-Timing", "app;dur=%.2f" % elapsed)]
            # Return what the server's start_response returns: write().
            return start_response(status, headers, exc_info)

        def log_request():
            elapsed = (time.perf_counter() - started) * 1000
            environ["wsgi.errors"].write("primer: %s %s -> %s in %.2f ms\n" % (
                environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""),
                said[0] if said else "no status", elapsed))

        body = self.app(environ, timed_start_response)
        return ClosingBody(body, log_request)


class ClosingBody:
    """The body of another app, with ``on_close`` run after its own close().

    PEP 3333: a middleware that wraps the iterable must pass close() on, or
    the app's clean-up (a file, a database cursor) would never run.
    """

    def __init__(self, body, on_close):
        self.body = body
        self.on_close = on_close

    def __iter__(self):
        return iter(self.body)

    def close(self):
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.on_close()


# -- The stack ----------------------------------------------------------------

#: What "/" serves: Timing around ServePath around the app. A request goes
#: in through Timing, then ServePath, then (unless it is /health) the app;
#: the answer comes back out the same way.
application = Timing(ServePath(app, "/health", b"ok\n"))
