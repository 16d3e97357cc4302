"""Two small WSGI apps, written with nothing but the standard library.

Read this file to see what WSGI (PEP 3333) asks of an application; run it with
wsgihost to see it work. From the folder ``examples/hello``::

    python ../../wsgihost.py .crossbar/config.json

then open http://127.0.0.1:8080/ and http://127.0.0.1:8080/info/some/path?x=1

A WSGI application is just a callable taking two arguments:

- ``environ``: a dict describing the request (CGI-style keys such as
  ``REQUEST_METHOD`` and ``PATH_INFO``, one ``HTTP_*`` key per request header,
  and ``wsgi.*`` keys such as ``wsgi.input``, the request body);
- ``start_response(status, headers)``: a function the app calls once, before
  sending any body, with a status line such as ``"200 OK"`` and a list of
  ``(name, value)`` header pairs, all plain ``str``.

It returns an iterable of ``bytes``: the response body. Here a one-item list.

``.crossbar/config.json`` mounts ``app`` at "/" and ``info`` at "info": the
server cuts the URL path in two. What it matched goes into ``SCRIPT_NAME``
(where the app is mounted), the rest into ``PATH_INFO`` (the path *inside*
the app). For ``/info/some/path`` that is ``SCRIPT_NAME: /info`` and
``PATH_INFO: /some/path``. Apps that build links from both keep working
wherever they are mounted.
"""

import html


def app(environ, start_response):
    """A home page at "/", and 404 Not Found for every other path."""
    path = environ.get("PATH_INFO", "")

    # PATH_INFO is the path inside this app. It may be "" rather than "/"
    # when the app is mounted on a sub-path and the URL has no trailing slash:
    # both mean "the root of this app".
    if path not in ("", "/"):
        body = b"Not Found\n"
        start_response("404 Not Found", [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
        ])
        return [body]

    # Anything the client sent is escaped before it goes into HTML.
    method = html.escape(environ["REQUEST_METHOD"])
    shown_path = html.escape(as_text(path))
    page = (
        "<!DOCTYPE html>\n"
        "<html>\n"
        "<head><meta charset=\"utf-8\"><title>Hello from wsgihost</title></head>\n"
        "<body>\n"
        "<h1>Hello from wsgihost</h1>\n"
        "<p>Request method: <code>%s</code></p>\n"
        "<p>PATH_INFO: <code>%s</code></p>\n"
        "<p>See how a mount splits the path: "
        "<a href=\"/info/some/path?x=1\">/info/some/path?x=1</a></p>\n"
        "</body>\n"
        "</html>\n" % (method, shown_path)
    )

    # The body must be bytes: encode the text, and name the encoding in the
    # Content-Type. Content-Length is the length in bytes, not characters.
    body = page.encode("utf-8")
    start_response("200 OK", [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Length", str(len(body))),
    ])
    return [body]


def info(environ, start_response):
    """Show, as plain text, the environ keys that describe the request."""
    lines = []

    # The keys every request has, in the order a reader wants them.
    for key in ("SCRIPT_NAME", "PATH_INFO", "QUERY_STRING",
                "REQUEST_METHOD", "SERVER_PROTOCOL"):
        lines.append("%s: %s" % (key, as_text(environ.get(key, ""))))

    # Two request headers are not HTTP_* keys: CGI names them CONTENT_TYPE
    # and CONTENT_LENGTH. They are there only when the request sent them.
    for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(key):
            lines.append("%s: %s" % (key, as_text(environ[key])))

    # Every other request header: "User-Agent" arrives as HTTP_USER_AGENT.
    for key in sorted(k for k in environ if k.startswith("HTTP_")):
        lines.append("%s: %s" % (key, as_text(environ[key])))

    # A request body (a POST form, say) is read from wsgi.input.
    body = read_body(environ)
    if body is not None:
        lines.append("body: %d bytes" % len(body))

    text = "\n".join(lines) + "\n"
    data = text.encode("utf-8")
    start_response("200 OK", [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(data))),
    ])
    return [data]


def read_body(environ):
    """The request body as bytes, or None if the request has no body.

    A request says it has a body with a Content-Length header (the
    CONTENT_LENGTH key) or with "Transfer-Encoding: chunked".
    """
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH", "")
    if length:
        # PEP 3333: read no more than CONTENT_LENGTH bytes. Some servers hand
        # the app the raw connection, where reading on would wait forever for
        # bytes the client never sends.
        try:
            size = int(length)
        except ValueError:
            size = 0
        return stream.read(size) if size > 0 else b""
    if "HTTP_TRANSFER_ENCODING" in environ and environ.get("wsgi.input_terminated"):
        # A chunked body has no length up front. A server that sets
        # wsgi.input_terminated (wsgihost does) ends wsgi.input at the end of
        # the body, so the app reads until read() returns b"".
        chunks = []
        while True:
            chunk = stream.read(65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    return None


def as_text(value):
    """An environ string as readable text.

    PEP 3333 keeps the raw bytes of the request in environ strings decoded as
    latin-1, one character per byte; a UTF-8 path such as /caf%C3%A9 arrives
    as "/cafÃ©". Encoding back to latin-1 gives the bytes, which are then
    decoded as the UTF-8 they most likely are.
    """
    try:
        return value.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:      # a server that did not follow PEP 3333
        return value
