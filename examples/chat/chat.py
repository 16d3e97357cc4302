"""A chat room: a WSGI app and a WebSocket path working together.

Run it with wsgihost, from the folder ``examples/chat``::

    python ../../wsgihost.py .crossbar/config.json

then open http://127.0.0.1:8080/ in two browser tabs and type in one of them.

``.crossbar/config.json`` mounts two things on one port:

- ``"/"``: this WSGI app, ``chat:app``. It serves the page, and two small
  HTTP endpoints;
- ``"ws"``: ``{"type": "websocket"}`` with no module or object, a
  *broadcast channel*. wsgihost itself sends every text message a client
  sends there to every client of the path, the sender included. That is
  the whole chat server: no Python code of ours runs for it.

The page's JavaScript opens a WebSocket to ``/ws``, shows every message
that arrives, and sends what the user types.

A WSGI app can broadcast too. wsgihost puts the channels of the websocket
paths in the environ, by URL path::

    channel = environ["wsgihost.channels"]["/ws"]
    channel.broadcast("hello")      # returns how many clients it reached
    len(channel)                    # how many clients are connected

so ``POST /say`` (a plain HTML form, or ``curl -d message=hello
http://127.0.0.1:8080/say``) posts into the room from plain HTTP, and
``GET /clients`` says how many are in it.

The routes:

    GET  /          the chat page (HTML, with inline CSS and JavaScript)
    POST /say       form field "message": broadcast it, then 303 to "/"
    GET  /clients   the number of connected WebSocket clients, as text
    anything else   404 Not Found, or 405 Method Not Allowed

The page understands ``/?say=TEXT``: once connected it sends TEXT by itself,
as if typed. Automated browser tests use it; people can ignore it.
"""

import urllib.parse

#: The URL path of the websocket path in .crossbar/config.json ("ws" under "/").
CHANNEL_PATH = "/ws"

#: The longest message POST /say accepts, in characters.
MAX_MESSAGE_CHARS = 1000

#: The largest request body POST /say reads, in bytes. A character may take
#: 4 bytes in UTF-8 and each byte 3 once percent-encoded ("%E2"), so 1000
#: characters fit in 12 KiB with room for the "message=" around them.
MAX_BODY_BYTES = 16 * 1024


def app(environ, start_response):
    """Send each request to the function that answers its path and method."""
    path = environ.get("PATH_INFO", "")
    method = environ["REQUEST_METHOD"]

    # path -> (methods allowed, function). HEAD is GET without the body: the
    # app answers it like GET, and the server leaves the body out.
    routes = {
        "/": (("GET", "HEAD"), page),
        "/say": (("POST",), say),
        "/clients": (("GET", "HEAD"), clients),
    }
    if path == "":
        path = "/"              # mounted on a sub-path, "/chat" arrives as ""
    if path not in routes:
        return text_response(start_response, "404 Not Found", "Not Found\n")
    methods, handler = routes[path]
    if method not in methods:
        # RFC 9110 §15.5.6: a 405 must say which methods would work.
        return text_response(start_response, "405 Method Not Allowed",
                             "Method Not Allowed\n", [("Allow", ", ".join(methods))])
    return handler(environ, start_response)


def page(environ, start_response):
    """GET /: the chat page. Everything it needs is inline, nothing is fetched."""
    body = PAGE.encode("utf-8")
    start_response("200 OK", [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Length", str(len(body))),
    ])
    return [body]


def say(environ, start_response):
    """POST /say: broadcast the form field "message" to every chat client."""
    channel = get_channel(environ)
    if channel is None:
        return text_response(start_response, "503 Service Unavailable",
                             "No %s channel: run this app with wsgihost\n" % CHANNEL_PATH)

    # Read the body, but never more than we are willing to hold in memory.
    # PEP 3333: read at most CONTENT_LENGTH bytes from wsgi.input.
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return text_response(start_response, "400 Bad Request", "Bad Content-Length\n")
    if length > MAX_BODY_BYTES:
        return text_response(start_response, "413 Content Too Large", "Body too large\n")
    body = environ["wsgi.input"].read(length) if length > 0 else b""

    # An HTML form posts "application/x-www-form-urlencoded": message=hello+there.
    # parse_qs undoes the encoding and gives a list of values per field name;
    # errors="replace" turns bytes that are not UTF-8 into U+FFFD, not a 500.
    fields = urllib.parse.parse_qs(body.decode("latin-1"), encoding="utf-8", errors="replace")
    message = fields.get("message", [""])[0]
    if not message.strip() or len(message) > MAX_MESSAGE_CHARS:
        return text_response(start_response, "400 Bad Request",
                             "message: 1 to %d characters, please\n" % MAX_MESSAGE_CHARS)

    # broadcast() queues the message for every client and returns at once; it
    # never waits for a slow client (wsgihost drops those instead).
    channel.broadcast(message)

    # 303 See Other: "the answer is elsewhere, GET it". A browser that posted
    # the form goes back to the chat page instead of showing a blank one, and
    # reloading that page does not post the message again.
    start_response("303 See Other", [
        ("Location", "/"),
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", "0"),
    ])
    return [b""]


def clients(environ, start_response):
    """GET /clients: how many WebSocket clients are connected to the chat."""
    channel = get_channel(environ)
    if channel is None:
        return text_response(start_response, "503 Service Unavailable",
                             "No %s channel: run this app with wsgihost\n" % CHANNEL_PATH)
    return text_response(start_response, "200 OK", "%d\n" % len(channel))


def get_channel(environ):
    """The /ws channel, or None when the server has none.

    "wsgihost.channels" is wsgihost's own environ key (PEP 3333 lets a
    server add keys with its name as prefix). Another WSGI server, or a
    config without the "ws" path, has no channel: the app says so (503)
    instead of failing with a KeyError.
    """
    return environ.get("wsgihost.channels", {}).get(CHANNEL_PATH)


def text_response(start_response, status, text, headers=()):
    """A short text/plain response."""
    body = text.encode("utf-8")
    start_response(status, [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
    ] + list(headers))
    return [body]


# The page. A plain string, not a template: nothing from the request goes
# into it, so there is nothing to escape on the server. Messages are other
# people's text and arrive in the browser; the JavaScript puts them in the page
# with textContent, which shows "<b>" as the four characters "<b>", never as
# HTML (innerHTML would run a message's <img onerror=...>).
#
# The form works without JavaScript too: it posts to /say, which redirects
# back here. With JavaScript, the submit is cancelled and the text goes over
# the WebSocket instead.
PAGE = """\
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>wsgihost chat</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 40em; margin: 2em auto; padding: 0 1em; }
  #status { font-size: 0.9em; color: #666; }
  #status.connected { color: #080; }
  #status.closed { color: #b00; }
  #messages { list-style: none; padding: 0.5em; border: 1px solid #ccc; border-radius: 4px;
              height: 20em; overflow-y: auto; }
  #messages li { padding: 0.2em 0; border-bottom: 1px solid #eee; white-space: pre-wrap;
                 overflow-wrap: anywhere; }
  form { display: flex; gap: 0.5em; }
  #message { flex: 1; padding: 0.4em; }
</style>
</head>
<body>
<h1>wsgihost chat</h1>
<p>Status: <span id="status">connecting</span></p>
<ul id="messages"></ul>
<form id="form" method="post" action="/say">
  <input id="message" name="message" maxlength="1000" autocomplete="off" required
         placeholder="Say something" aria-label="Message">
  <button type="submit">Send</button>
</form>
<script>
"use strict";
(function () {
  var status = document.getElementById("status");
  var messages = document.getElementById("messages");
  var form = document.getElementById("form");
  var input = document.getElementById("message");

  function setStatus(text) {
    status.textContent = text;
    status.className = text;
  }

  // Same host and port as the page; wss:// when the page came over https.
  var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
  var socket = new WebSocket(url);

  socket.onopen = function () {
    setStatus("connected");
    // /?say=TEXT sends TEXT once connected (for automated tests).
    var say = new URLSearchParams(location.search).get("say");
    if (say) {
      socket.send(say);
    }
  };

  socket.onmessage = function (event) {
    var item = document.createElement("li");
    item.textContent = event.data;      // text, never HTML
    messages.appendChild(item);
    messages.scrollTop = messages.scrollHeight;
  };

  socket.onclose = function () {
    setStatus("closed");
  };

  form.addEventListener("submit", function (event) {
    if (socket.readyState !== WebSocket.OPEN) {
      return;                   // not connected: let the form post to /say
    }
    event.preventDefault();
    if (input.value) {
      socket.send(input.value);
      input.value = "";
    }
    input.focus();
  });
})();
</script>
</body>
</html>
"""
