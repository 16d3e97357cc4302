"""wsgihost -- a WSGI host in one file of pure standard-library Python.

wsgihost serves WSGI applications (Flask, Django, Pyramid or plain WSGI) and
WebSocket endpoints from a Crossbar.io node configuration, as Crossbar's "WSGI
Host Service" does, with nothing to install: copy this file into a project, or
``pip install`` it, and run it.

Three ways to use it::

    python wsgihost.py .crossbar/config.json        # a Crossbar.io node config
    python wsgihost.py myapp:app --bind 127.0.0.1:8080 --workers 2   # as gunicorn
    import wsgihost; wsgihost.serve(app, "127.0.0.1", 8080)   # from Python

What it implements:

- PEP 3333 (WSGI 1.0.1): the environ, ``start_response`` with ``exc_info``,
  ``write()``, ``wsgi.file_wrapper`` (``os.sendfile`` for real files), and the
  iterable's ``close()`` on every path.
- RFC 9110 and RFC 9112 (HTTP/1.1): persistent connections, pipelining,
  HTTP/1.0 keep-alive, chunked bodies both ways, ``Expect: 100-continue``, and
  a strict parser that refuses every ambiguous message (request smuggling).
- RFC 6455 (WebSocket) on ``websocket`` paths: a broadcast channel by default,
  or a handler of yours; WSGI apps broadcast through
  ``environ["wsgihost.channels"]``. RFC 7692 (permessage-deflate) where the
  path's options turn it on. Autobahn|Testsuite cases 1-13 pass.
- Crossbar.io's node config: router workers, web transports (and the web
  part of universal ones) on TCP or unix sockets, paths dispatched per URL
  segment to ``wsgi`` apps, ``websocket`` endpoints, ``static`` files
  (conditional and range requests, RFC 9110 §13-14), ``redirect`` and
  ``json`` services, and nested ``path`` trees.
- TLS endpoints (https, wss), with client certificates.
- Connections that wait cost a socket in one selector, not a thread; so do
  the clients of a broadcast WebSocket path, however long they stay.
- Worker processes (``--workers N``, or router workers sharing a port) under
  one supervisor: restarted when they die, drained on SIGTERM, replaced one
  by one on SIGHUP; ``--reload`` for development.
- A websocket path's channel spans the worker processes (the supervisor
  relays its messages) and, through Redis pub/sub (a small RESP client),
  several nodes.

What it does not do (yet): HTTP/2, and the WAMP router that Crossbar also is.

Reading order -- the sections follow the life of a request; ``grep -n "^# [0-9]"
wsgihost.py`` prints this map:

     1. Limits and protocol constants
     2. Errors
     3. The request head: parsing bytes           (pure: no sockets)
     4. Request bodies: wsgi.input
     5. The WSGI environ                          (pure)
     6. The WSGI response: start_response, write, framing
     7. The connection: one request at a time
     8. WebSocket (RFC 6455, RFC 7692): handshake, frames, compression, channels
     9. Static files, redirects and JSON values   (plain WSGI apps)
    10. Path dispatch and app loading
    11. Configuration
    12. TLS: contexts and what the app learns of them
    13. The waiting room: connections that wait, in one selector
    14. The socket server and the node
    15. Channels across processes and machines: Redis pub/sub over RESP
    16. Worker processes: the supervisor
    17. Command line

CONFORMANCE.md lists, section by section, the rules of PEP 3333, RFC 9110/9112
and RFC 6455 that each section keeps (or keeps strictly, or not) and the tests
that check them; examples/primer follows one request through the sections.

Copyright (c) 2026 the wsgihost authors. MIT License (see LICENSE): use, copy,
modify and distribute freely, keeping this notice; no warranty.
"""

from __future__ import annotations

import _thread
import argparse
import base64
import calendar
import codecs
import collections
import enum
import errno
import fnmatch
import hashlib
import heapq
import html
import http
import importlib
import io
import ipaddress
import json
import logging
import mimetypes
import math
import os
import queue
import re
import select
import selectors
import signal
import socket
import socketserver
import stat
try:
    import fcntl
    import termios
except ImportError:         # not a Unix: no look into the kernel's send queue
    fcntl = termios = None
try:
    import ssl
except ImportError:         # a Python built without OpenSSL: no TLS endpoints
    ssl = None
import struct
import sys
import tempfile
import threading
import time
import traceback
import zlib
from urllib.parse import quote, unquote, urlsplit

__version__ = "0.1.0"
__all__ = [
    "serve", "Node", "load_config", "ConfigError", "HTTPError",
    "FileWrapper", "parse_request_head", "parse_body_framing",
    "parse_request_target", "parse_chunk_size", "build_environ",
    "build_response_head", "main", "WebSocket", "Channel", "WebSocketError",
    "StaticFiles", "Redirect", "JSONValue", "resolve_static_path", "parse_range",
]

log = logging.getLogger("wsgihost")
access_log = logging.getLogger("wsgihost.access")


# =============================================================================
# 1. Limits and protocol constants
# =============================================================================
# Each limit bounds what a client can make the server spend, and has an
# answer. The web transport's "options" override those named in _LIMIT_NAMES,
# under the same name in lower case (e.g. "max_head_size": 131072);
# LISTEN_BACKLOG is the endpoint's "backlog"; the WebSocket values are options
# of a websocket path (timeouts there in milliseconds, as in Crossbar); the
# others are fixed.

#: Longest request line, CRLF excluded. Answer: 414 URI Too Long.
#: (nginx 8 KiB, gunicorn 4 KiB, Apache 8 KiB.)
MAX_REQUEST_LINE = 8 * 1024
#: Longest header field line, CRLF excluded. Answer: 431.
MAX_HEADER_LINE = 8 * 1024
#: Whole request head, request line to the empty line included. Answer: 431.
#: (node.js 16 KiB, h11 16 KiB, Tomcat 8 KiB, Apache 100 x 8 KiB.)
MAX_HEAD_SIZE = 64 * 1024
#: Header field lines in one request. Answer: 431. (Apache and gunicorn: 100.)
MAX_HEADER_FIELDS = 100
#: Request body, in bytes; None: no limit, the body is streamed to the app.
#: Answer: 413 Content Too Large.
MAX_BODY_SIZE = None
#: Seconds a connection may sit idle between requests, that a request head may
#: take to arrive once its first byte came, and that any one receive, or send
#: of up to SEND_SLICE bytes, may wait. Answer: the connection is closed (after
#: a 408 if a request had begun).
CLIENT_TIMEOUT = 60.0
#: Open connections of one transport, idle ones included: a bound on memory
#: (an idle connection costs about 3 KiB and no thread). When all are open,
#: the one waiting longest for a request is closed to make room; when all are
#: being served, newcomers wait in the listen backlog. Each takes a file
#: descriptor: the soft open-files limit is raised to the hard one at start.
MAX_CONNECTIONS = 10000
#: Listen backlog. socketserver's default of 5 drops connections in a burst;
#: the kernel caps this at net.core.somaxconn (4096 on current Linux).
LISTEN_BACKLOG = 1024
#: A request body of up to this many bytes (by its Content-Length) is read
#: whole by the waiting room before the request takes a thread and a slot in
#: its app, as waitress and nginx buffer bodies: a slow upload then costs a
#: socket and this much memory, never an app slot. 0: bodies are streamed.
BODY_BUFFER_SIZE = 64 * 1024
#: The largest "backlog" a config may ask for (the largest net.core.somaxconn
#: older Linux kernels allow). A larger one is refused, not clamped: its author
#: expected a queue the kernel will not give, and 3e9 overflows listen().
MAX_LISTEN_BACKLOG = 65535
#: The longest timeout a config may give, in seconds (one year). Longer ones
#: are refused: socket.settimeout() overflows near 1e10 s, on every connection.
MAX_TIMEOUT = 365 * 24 * 3600.0
#: The slowest a request body streamed to an app may arrive, in bytes per
#: second, after MIN_RATE_GRACE seconds: slower gets 408, so that a client
#: cannot hold a thread and an app slot by sending a byte now and then
#: (Apache's mod_reqtimeout: 500 bytes/s). A GPRS phone sends 5 KB/s. 0: off.
MIN_RATE = 500
MIN_RATE_GRACE = 10.0
#: A chunk-size line with its extensions, CRLF included (RFC 9112 §7.1.1
#: allows extensions but sets no bound; h11 and node bound them too). Answer: 400.
MAX_CHUNK_LINE = 4 * 1024
#: The trailer section of a chunked body, which is read and discarded. Answer: 431.
MAX_TRAILER_SIZE = 8 * 1024
#: An unread request body up to this size is read and discarded after the
#: response so that the connection can be reused; a longer one closes it.
MAX_DRAIN_SIZE = 64 * 1024
#: Seconds a stopping server waits for requests in flight to finish.
SHUTDOWN_GRACE = 10.0
#: After an error answer or with a request body left unread, the server stops
#: sending, then reads and discards what the client still sends for up to this
#: long (and LINGER_SIZE bytes) before closing, so that the client reads the
#: answer instead of a TCP reset (RFC 9112 §9.6, "lingering close").
LINGER_TIME = 2.0
LINGER_SIZE = 16 * 1024 * 1024

# WebSocket limits: defaults for a websocket path's "options" (README: WebSocket).
#: Largest message, all fragments together, and largest frame. Answer: close 1009.
MAX_MESSAGE_SIZE = 16 * 1024 * 1024
#: Bytes queued for one client before a broadcast drops it (close 1008); a
#: handler's own send() waits for room instead, up to client_timeout.
MAX_SEND_QUEUE = 16 * 1024 * 1024
#: Seconds the closing handshake may take, from the first Close either way
#: (or a failure, or a drop); then the server cuts TCP (Crossbar: 1 s). A
#: Close queued behind other frames has client_timeout more for them to go out.
CLOSE_HANDSHAKE_TIMEOUT = 1.0
#: The largest Close frame a server sends: 2 header bytes, 125 of payload (§5.5).
MAX_CLOSE_FRAME = 127
#: Seconds of silence before a ping, and for its pong to come; then the
#: connection is dropped. Browsers answer pings by themselves.
AUTO_PING_INTERVAL = 30.0
AUTO_PING_TIMEOUT = 30.0
#: The kernel's send buffer of a WebSocket in the waiting room (SO_SNDBUF;
#: Linux doubles it). What a client has not read waits in its send queue,
#: bounded by max_send_queue, instead of the kernel's autotuned buffer (up to
#: 4 MiB per socket here): a dropped client's Close waits behind at most
#: this much, and 10,000 idle clients cannot pin gigabytes in the kernel.
WEBSOCKET_SEND_BUFFER = 16 * 1024
#: Frames in one message, empty ones included. Each frame costs work whatever
#: its size, so a message in 2-byte pieces, or an endless run of empty ones,
#: is bounded by count and not only by max_message_size. Answer: close 1009
#: (RFC 6455 §7.4.1: a message "too big for it to process"). Autobahn 9.3.1
#: sends 4 MiB in 65,536 fragments; browsers send a message in one frame.
MAX_MESSAGE_FRAGMENTS = 128 * 1024

# permessage-deflate (RFC 7692), on a websocket path whose options say
# "compression": {"deflate": {...}}; defaults for the keys Crossbar names.
# zlib's own defaults (a 32 KiB window, memLevel 8) cost about 200 KiB per
# connection for the compressor and 40 KiB for the decompressor; these (the
# `websockets` library's) about 38 KiB and 11 KiB, for a ratio a little worse.
#: Window of our compressor, in bits: 2**12 = 4 KiB ("max_window_bits").
DEFLATE_MAX_WINDOW_BITS = 12
#: Window asked of the client's compressor ("request_max_window_bits"; 0: ask nothing).
DEFLATE_REQUEST_MAX_WINDOW_BITS = 12
#: zlib's memLevel for our compressor, 1-9 ("memory_level").
DEFLATE_MEMORY_LEVEL = 5
#: Inflated bytes asked of zlib at once: a message is inflated in steps, so a
#: small frame that would inflate to gigabytes (a "decompression bomb") costs
#: at most max_message_size before its close 1009.
INFLATE_STEP = 64 * 1024

#: apply_mask() XORs a payload as big integers of this many bytes each (a
#: multiple of 4, so that every slice starts at mask byte 0): small enough
#: for the CPU's cache, large enough that the Python-level loop costs nothing.
#: Measured with timeit, Python 3.11, 2-core VM: 16 MiB in 39 ms with 16 KiB
#: slices, 50 with 4 KiB or 64 KiB ones, 92 with bytes.translate() over the
#: four interleaved byte runs; 64 KiB in 0.21 ms against translate's 0.27.
MASK_SLICE = 16 * 1024
#: A handler's message from this size on goes out with its frame header by
#: one sendmsg() (plain TCP), not copied after the header. At most
#: GATHER_MAX_BUFFERS buffers go to one sendmsg() (IOV_MAX is 1024 on Linux).
GATHER_MIN = 16 * 1024
GATHER_MAX_BUFFERS = 64

#: Bytes asked of the kernel per recv(); larger reads for big bodies.
RECV_SIZE = 64 * 1024
#: Plain sockets are read and written through their descriptor (os.read,
#: os.write) where a socket is a file descriptor, saving a system call or two
#: per request (section 13); not on Windows, where it is not.
RAW_SOCKET_IO = os.name == "posix"
MAX_RECV_SIZE = 256 * 1024
#: Responses up to this size go out in one send() with their head.
MAX_COALESCED_BODY = 64 * 1024
#: Larger sends go in slices of this size, each with its own timeout: since
#: Python 3.5 a socket timeout bounds a whole sendall(), which would cut off a
#: big response to a slow but steady reader.
SEND_SLICE = 256 * 1024
#: Validated response heads remembered (section 6): an app answers with the
#: same few again and again. Emptied when full, as the re module's cache is.
RESPONSE_HEAD_CACHE_SIZE = 256
#: An idle pool thread exits after this many seconds without a connection.
IDLE_THREAD_TIMEOUT = 60.0
#: Seconds a request may wait for a slot in its app (a wsgi path's
#: maxthreads) before it is answered 503 with Retry-After. A client that
#: leaves meanwhile is noticed at once and its request dropped.
QUEUE_TIMEOUT = 30.0
#: Seconds a pool thread waits for a keep-alive connection's next request
#: before the connection goes back to the waiting room (0: at once; the
#: cost of a round trip through the room is higher than a short wait).
KEEP_ALIVE_SPIN = 0.002 if hasattr(select, "poll") else 0
#: The waiting room wakes at least this often (seconds) to expire deadlines.
ROOM_TICK = 0.5
#: Connections accepted per wake-up of the waiting room, so that a burst of
#: connects does not keep it from the connections already open.
ACCEPT_BURST = 64
#: Seconds the waiting room stops accepting after running out of file
#: descriptors (EMFILE), instead of spinning on a listening socket that stays
#: readable.
ACCEPT_BACKOFF = 0.5
#: Requests served at once by one static, redirect or json path. They wait
#: on nothing but the client (a file sent to a slow reader holds its thread);
#: more wait in the waiting room, holding no thread.
BUILTIN_SERVICE_THREADS = 64
#: Seconds a browser may cache a static file without asking again: the
#: default of a static path's "cache_timeout" (Crossbar's: 12 hours).
STATIC_CACHE_TIMEOUT = 12 * 60 * 60

# Worker processes (section 16).
#: A worker that dies unexpectedly is replaced after this many seconds,
#: doubled for each worker in a row that died younger than WORKER_STABLE_TIME
#: (a crash loop costs little), up to RESTART_BACKOFF_MAX.
RESTART_BACKOFF = 0.1
RESTART_BACKOFF_MAX = 30.0
WORKER_STABLE_TIME = 10.0
#: Seconds a new worker has to import its apps and start serving; longer, and
#: it counts as failed (at a reload, the old workers stay).
WORKER_START_TIMEOUT = 120.0
#: Seconds between two looks at the mtimes of the imported modules (--reload).
RELOAD_POLL_INTERVAL = 1.0
#: Bytes of channel messages the supervisor's relay holds for one worker that
#: has not read them yet -- and a worker for the supervisor -- so that the
#: relay never waits for anyone (as MAX_SEND_QUEUE for a client; one message
#: always fits an empty buffer). A worker further behind misses messages: its
#: channel clients are then closed with RELAY_BEHIND_CLOSE_CODE (section 16).
RELAY_BUFFER = 16 * 1024 * 1024
#: Bytes the relay reads from, or writes to, one worker's link at a time.
RELAY_CHUNK = 256 * 1024
#: The close code for the clients of a worker that fell behind the relay:
#: 1013 "Try Again Later", from IANA's registry of WebSocket close codes
#: (RFC 6455 §11.7): the server, not the client, was too slow.
RELAY_BEHIND_CLOSE_CODE = 1013

SERVER_SOFTWARE = "wsgihost/" + __version__

# RFC 9110 §5.6.2: token = 1*tchar
_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
TOKEN_RE = re.compile(rb"[%s]+" % _TCHAR)
# RFC 9112 §3: request-line = method SP request-target SP HTTP-version
# method is a token; the target is checked for forbidden bytes here (CTLs, SP,
# DEL) and for its form in parse_request_target; RFC 9112 §2.3:
# HTTP-version = "HTTP" "/" DIGIT "." DIGIT, case-sensitive.
REQUEST_LINE_RE = re.compile(rb"([%s]+) ([^\x00-\x20\x7f]+) HTTP/([0-9])\.([0-9])" % _TCHAR)
# Bytes that never belong in a request head: NUL and the other controls but
# HTAB (RFC 9110 §5.5), DEL, and a CR or LF that is not part of a CRLF
# (RFC 9112 §2.2: a bare CR must be rejected; we refuse bare LF too, since a
# front end that splits lines differently is how requests get smuggled).
BAD_HEAD_BYTE_RE = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|(?<!\r)\n")
# RFC 9110 §8.6: Content-Length = 1*DIGIT. No sign, no spaces, no list. Any
# number of digits is valid; the value must fit in 18 significant digits
# (under 2**63), see parse_content_length.
CONTENT_LENGTH_RE = re.compile(r"[0-9]+")
MAX_CONTENT_LENGTH_DIGITS = 18
# RFC 9110 §7.2 and RFC 3986 §3.2.2: Host = uri-host [ ":" port ]
HOST_RE = re.compile(r"(?:\[[0-9A-Za-z:.%_~-]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?")
# RFC 9112 §7.1: chunk-size [ chunk-ext ] CRLF, where
# chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ),
# ext-val = token / quoted-string. Whitespace is allowed around ";" and "="
# only, never before the CRLF. chunk-size = 1*HEXDIG: any number of digits
# (the line is bounded by MAX_CHUNK_LINE), whose value must fit in 16
# significant hex digits (under 2**64), see parse_chunk_size.
_QUOTED_STRING = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
MAX_CHUNK_SIZE_DIGITS = 16
CHUNK_LINE_RE = re.compile(
    rb"([0-9A-Fa-f]+)((?:[ \t]*;[ \t]*[%s]+(?:[ \t]*=[ \t]*(?:[%s]+|%s))?)*)\r\n"
    % (_TCHAR, _TCHAR, _QUOTED_STRING))
# PEP 3333: status is "three-digit code, a space, and a reason phrase";
# RFC 9112 §4: reason-phrase = *( HTAB / SP / VCHAR / obs-text ). An app may
# send 200-599 (RFC 9110 §15); 1xx belong to the server (100 Continue, 101).
STATUS_RE = re.compile(r"([2-5][0-9][0-9]) [\t\x20-\x7e\x80-\xff]*")
# A response field value: no CR, LF, NUL or other control but HTAB (RFC 9110 §5.5).
BAD_VALUE_CHAR_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
RESPONSE_FIELD_NAME_RE = re.compile("[%s]+" % _TCHAR.decode("ascii"))     # token, as above

# RFC 9110 §7.6.1 and PEP 3333 ("Applications ... are forbidden from using
# HTTP/1.1 hop-by-hop features or headers"): the server owns these.
HOP_BY_HOP_FIELDS = frozenset([
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade",
])
# Request fields whose repetition makes the message ambiguous: RFC 9112 §3.2
# (Host), §6.3 (several Content-Length values make the length unreliable --
# we refuse any repetition, as nginx does, since no honest client sends two) and RFC 9110
# §8.3 (Content-Type is a single value: joining two would give the app a type
# nobody sent, and a proxy in front may have honoured either).
SINGLETON_FIELDS = frozenset(["HTTP_HOST", "CONTENT_LENGTH", "CONTENT_TYPE"])
# RFC 9110 §6.5.1: fields a sender must not put in a trailer -- framing,
# routing, authentication, content processing. Trailers are discarded anyway;
# one of these there means a client (or an attacker) hoping someone merges it.
FORBIDDEN_TRAILER_FIELDS = frozenset([
    b"content-length", b"transfer-encoding", b"host", b"trailer", b"te", b"content-type",
    b"content-encoding", b"content-range", b"authorization", b"expect", b"max-forwards",
    b"cache-control", b"set-cookie", b"cookie"])

_STATUS_PHRASES = {int(s): s.phrase for s in http.HTTPStatus}


# =============================================================================
# 2. Errors
# =============================================================================
# One small family. Parsers raise; the connection loop and the services turn
# errors into responses, and only the command line turns a ConfigError into
# exit 2.

class HTTPError(Exception):
    """A request the server answers itself with ``status``, then closes
    (but for a WebSocket 426, which leaves the connection open).

    ``detail`` says what was wrong with the request, for the response body
    and the log: the offending bytes (truncated) and what was expected.
    ``fields`` are header fields the answer must carry (e.g. for a 426).
    """

    def __init__(self, status: int, detail: str, fields=()):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.fields = list(fields)


class WebSocketError(Exception):
    """A violation of RFC 6455 by the client; ``code`` is the close code to send."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ClientDisconnected(ConnectionError):
    """The client went away, or stopped sending, in the middle of a request."""


class ConfigError(Exception):
    """A problem with the configuration, located by its JSON path.

    ``str(error)`` is the one line the command line prints:
    ``FILE: JSON.PATH: problem``.
    """

    def __init__(self, where: str, message: str, filename: str = "config"):
        super().__init__(message)
        self.where = where
        self.message = message
        self.filename = filename

    def __str__(self) -> str:
        parts = [self.filename, self.where, self.message]
        return ": ".join(p for p in parts if p)


def _show(data, limit: int = 60) -> str:
    """The repr of some offending input, truncated for a message."""
    return repr(data[:limit]) + ("..." if len(data) > limit else "")


# =============================================================================
# 3. The request head: parsing bytes
# =============================================================================
# In: the bytes of a request head, from the request line up to (not including)
# the empty line. Out: a RequestHead, or an HTTPError carrying the status to
# answer with. Nothing here touches a socket, so tests feed bytes directly.
#
# Header fields are turned into their CGI/WSGI names as they are parsed
# (``Content-Type`` -> ``CONTENT_TYPE``, ``X-Foo`` -> ``HTTP_X_FOO``), repeated
# fields joined with ", " (RFC 9110 §5.3), so the environ is built with one
# dict update. Names with "_" are dropped: after "-" becomes "_" they would be
# indistinguishable, and a proxy that checks ``X-Auth-User`` would not see
# ``X_Auth_User`` (the header-spoofing attack nginx and Apache also block).

class RequestHead:
    """A parsed request head: method, target, version and fields by CGI name."""

    __slots__ = ("method", "target", "version", "fields")

    def __init__(self, method: str, target: str, version: tuple, fields: dict):
        self.method = method        # "GET"
        self.target = target        # "/a%20b?x=1", latin-1 decoded
        self.version = version      # (1, 1)
        self.fields = fields        # {"HTTP_HOST": "example.com", ...}

    def __repr__(self) -> str:
        return "RequestHead(%r, %r, %r, %r)" % (self.method, self.target, self.version, self.fields)


_cgi_names: dict = {}   # raw field-name bytes -> CGI name, or None (dropped)


def cgi_name(field_name: bytes):
    """``b"X-Foo"`` -> ``"HTTP_X_FOO"``; None for names with "_" (dropped)."""
    try:
        return _cgi_names[field_name]
    except KeyError:
        pass
    upper = field_name.decode("ascii").upper()
    if "_" in upper or upper == "PROXY":
        # "_": see above. PROXY: HTTP_PROXY would pass for the proxy setting
        # that HTTP libraries read from the environment ("httpoxy", CVE-2016-5385).
        name = None
    elif upper in ("CONTENT-TYPE", "CONTENT-LENGTH"):
        name = upper.replace("-", "_")    # PEP 3333: no HTTP_ twins for these
    else:
        name = "HTTP_" + upper.replace("-", "_")
    if len(_cgi_names) < 1024:            # a cache that clients cannot grow forever
        _cgi_names[field_name] = name
    return name


def parse_request_head(head: bytes, limits: Limits = None) -> RequestHead:
    """Parse a request head (no final empty line) into a RequestHead.

    Raises HTTPError with 400, 414, 431 or 505.
    """
    limits = limits or DEFAULT_LIMITS
    bad = BAD_HEAD_BYTE_RE.search(head)
    if bad is not None:
        what = {b"\r": "bare CR", b"\n": "bare LF"}.get(bad.group(), "control character")
        line_start = head.rfind(b"\n", 0, bad.start()) + 1
        raise HTTPError(400, "%s %r in the request head, in line %s" % (
            what, bad.group(), _show(head[line_start:bad.end() + 20])))
    lines = head.split(b"\r\n")
    request_line = lines[0]
    if len(request_line) > limits.max_request_line:
        raise HTTPError(414, "request line of %d bytes, over the limit of %d"
                        % (len(request_line), limits.max_request_line))
    match = REQUEST_LINE_RE.fullmatch(request_line)
    if match is None:
        raise HTTPError(400, "malformed request line %s (expected: METHOD SP target SP HTTP/1.1)"
                        % _show(request_line))
    method, target, major, minor = match.groups()
    if not target.isascii():
        # RFC 9112 §3.2 and RFC 3986 §2: a request target is ASCII; other bytes
        # must be percent-encoded. Guessing their charset is how two servers
        # come to read one URL differently (gunicorn and waitress refuse them too).
        bad = next(b for b in target if b > 0x7f)
        raise HTTPError(400, "byte 0x%02X in the request target %s (expected ASCII; "
                        "percent-encode other bytes)" % (bad, _show(target)))
    version = (major[0] - 48, minor[0] - 48)
    if version != (1, 1) and version != (1, 0):
        # RFC 9110 §15.6.6: 505 for a major version we do not support; we
        # answer it for any version but 1.0 and 1.1 (HTTP/2 needs a preface).
        raise HTTPError(505, "HTTP version %d.%d is not supported (only 1.0 and 1.1)" % version)
    if len(lines) - 1 > limits.max_header_fields:
        raise HTTPError(431, "%d header fields, over the limit of %d"
                        % (len(lines) - 1, limits.max_header_fields))
    fields = {}
    max_line = limits.max_header_line
    for line in lines[1:]:
        if len(line) > max_line:
            raise HTTPError(431, "header field line of %d bytes, over the limit of %d: %s"
                            % (len(line), max_line, _show(line, 40)))
        name, colon, value = line.partition(b":")
        if not colon or TOKEN_RE.fullmatch(name) is None:
            if line[:1] in (b" ", b"\t"):
                # RFC 9112 §5.2: obs-fold; a server MUST reject it or unfold it.
                raise HTTPError(400, "obsolete line folding in %s" % _show(line))
            if colon and name.rstrip(b" \t") != name:
                # RFC 9112 §5.1: "No whitespace is allowed between the field
                # name and colon ... MUST reject" -- a classic smuggling vector.
                raise HTTPError(400, "whitespace before the colon in %s" % _show(line))
            raise HTTPError(400, "invalid header field %s (expected name: value)" % _show(line))
        key = cgi_name(name)
        if key is None:
            continue
        value = value.strip(b" \t").decode("latin-1")
        if key in fields:
            if key in SINGLETON_FIELDS:
                raise HTTPError(400, "%s given more than once" % name.decode("ascii"))
            fields[key] += ", " + value
        else:
            fields[key] = value
    return RequestHead(method.decode("ascii"), target.decode("latin-1"), version, fields)


def parse_tokens(value: str) -> list:
    """A comma-separated list of case-insensitive tokens (RFC 9110 §5.6.1), lowered.

    Empty elements (``", chunked"``, ``"close, "``) are skipped: "a recipient
    MUST parse and ignore a reasonable number of empty list elements" (the
    field line's length bounds how many).
    """
    tokens = []
    for token in value.split(","):
        token = token.strip(" \t")
        if token:
            tokens.append(token.lower())
    return tokens


def parse_request_target(method: str, target: str):
    """Split a request target into (path, query, authority).

    ``path`` is still percent-encoded; ``authority`` is the host of an
    absolute-form target (RFC 9112 §3.2.2), else None. Raises HTTPError.
    """
    authority = None
    if target[0] != "/":
        if target == "*" and method == "OPTIONS":
            return "*", "", None                    # RFC 9112 §3.2.4: asterisk-form
        scheme, sep, rest = target.partition("://")
        if not sep or scheme.lower() not in ("http", "https"):
            if method == "CONNECT":
                raise HTTPError(501, "CONNECT is not supported: wsgihost is not a proxy")
            raise HTTPError(400, "invalid request target %s (expected a path starting with /)"
                            % _show(target))
        # RFC 9112 §3.2.2: absolute-form; the server uses its authority as Host.
        cut = len(rest)
        for stop in "/?#":
            found = rest.find(stop)
            if 0 <= found < cut:
                cut = found
        authority, target = rest[:cut], rest[cut:]
        if "@" in authority or not HOST_RE.fullmatch(authority):
            raise HTTPError(400, "invalid authority %s in an absolute-form target" % _show(authority))
        if not target.startswith("/"):
            target = "/" + target
    # A fragment is never sent by a conforming client (RFC 9112 §3.2); some
    # do, and it is cut off here, as browsers would have.
    target = target.partition("#")[0]
    path, _, query = target.partition("?")
    return path, query, authority


def parse_host(version: tuple, host, authority):
    """The request's host: the ``Host`` field's value, or ``authority`` if the
    target was in absolute form; None for HTTP/1.0 with neither.

    RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code
    to any HTTP/1.1 request message that lacks a Host header field" -- an
    absolute-form target does not excuse it: the client MUST send Host there
    too -- "and to any request message that contains ... a Host header field
    with an invalid field value". RFC 9112 §3.2.2: with an absolute-form
    target the server uses its authority and ignores Host (checked all the same).
    """
    if host is None:
        if version == (1, 1):
            raise HTTPError(400, "HTTP/1.1 request without Host (RFC 9112 §3.2)")
    elif HOST_RE.fullmatch(host) is None:
        raise HTTPError(400, "invalid Host %s" % _show(host))
    return host if authority is None else authority


def parse_content_length(value: str) -> int:
    """RFC 9110 §8.6: Content-Length = 1*DIGIT, as an int; ValueError if not.

    Leading zeros are valid ("00000000000000000005" is 5); only a value over
    18 significant digits is refused, so that it fits a signed 64-bit offset.
    """
    if CONTENT_LENGTH_RE.fullmatch(value) is None:
        raise ValueError("invalid Content-Length %s (expected digits only)" % _show(value))
    digits = value.lstrip("0")
    if len(digits) > MAX_CONTENT_LENGTH_DIGITS:
        raise ValueError("Content-Length %s is too large (at most %d significant digits)"
                         % (_show(value), MAX_CONTENT_LENGTH_DIGITS))
    return int(digits or "0")       # stripped: int() refuses over 4300 digits (3.11+)


def parse_body_framing(head: RequestHead):
    """How the request body is delimited: its length in bytes, or None for chunked.

    RFC 9112 §6.3. Everything ambiguous is refused (HTTPError 400 or 501),
    because a proxy in front may have read the message differently.
    """
    fields = head.fields
    transfer_encoding = fields.get("HTTP_TRANSFER_ENCODING")
    content_length = fields.get("CONTENT_LENGTH")
    if transfer_encoding is not None:
        if content_length is not None:
            # RFC 9112 §6.3 (3): "ought to be handled as an error" -- the
            # CL.TE / TE.CL request-smuggling pattern.
            raise HTTPError(400, "Content-Length together with Transfer-Encoding")
        if head.version == (1, 0):
            # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
            raise HTTPError(400, "Transfer-Encoding in an HTTP/1.0 request")
        codings = parse_tokens(transfer_encoding)     # ",chunked" is ["chunked"]
        if codings == ["chunked"]:
            return None
        if not codings or codings[-1] != "chunked" or "chunked" in codings[:-1]:
            # RFC 9112 §6.3 (4): chunked must be final, and only once.
            raise HTTPError(400, "Transfer-Encoding %r: chunked must be the final coding, once"
                            % transfer_encoding)
        # RFC 9112 §6.1: 501 for a transfer coding the server does not understand.
        raise HTTPError(501, "Transfer-Encoding %r is not implemented (only chunked)"
                        % transfer_encoding)
    if content_length is None:
        return 0                    # RFC 9112 §6.3 (7): no body
    try:
        return parse_content_length(content_length)
    except ValueError as exc:
        raise HTTPError(400, str(exc)) from None


def parse_chunk_size(line: bytes) -> int:
    """The size in a chunk-size line (CRLF included); extensions are checked and ignored."""
    match = CHUNK_LINE_RE.fullmatch(line)
    if match is None:
        raise HTTPError(400, "invalid chunk-size line %s (expected hex digits, optional "
                        ";extensions, CRLF)" % _show(line))
    digits = match.group(1).lstrip(b"0")       # RFC 9112 §7.1: "000000a" is 10
    if len(digits) > MAX_CHUNK_SIZE_DIGITS:
        raise HTTPError(400, "chunk size %s is too large (at most %d significant hex digits)"
                        % (_show(match.group(1)), MAX_CHUNK_SIZE_DIGITS))
    return int(digits or b"0", 16)


# =============================================================================
# 4. Request bodies: wsgi.input
# =============================================================================
# The objects that read HTTP request bytes from the client. SocketReader buffers what
# recv() returned; the two wsgi.input classes take exactly the body's bytes
# from it, never more, so the next request on the connection starts at the
# right byte (pipelining). Errors in the body (a bad chunk, a stall, the client
# gone) are raised into the app and remembered, so WSGIService.serve can answer
# them (400/408/413/431) if the app lets them through; the connection is then
# closed in any case.

class SocketReader:
    """The bytes received from one socket, with a buffer; knows nothing of HTTP."""

    __slots__ = ("sock", "buffer")

    def __init__(self, sock, buffer: bytes = b""):
        self.sock = sock
        self.buffer = buffer

    def read_some(self, limit: int) -> bytes:
        """Up to ``limit`` bytes, at least one unless the peer closed (then b"")."""
        buffer = self.buffer
        if buffer:
            if len(buffer) <= limit:
                self.buffer = b""
                return buffer
            self.buffer = buffer[limit:]
            return buffer[:limit]
        return self.sock.recv(min(limit, MAX_RECV_SIZE))

    def read_line(self, limit: int) -> bytes:
        """Bytes up to and including b"\\n", at most ``limit``; less only at EOF."""
        buffer = self.buffer
        end = buffer.find(b"\n", 0, limit)
        if end >= 0 or len(buffer) >= limit:
            end = end + 1 if end >= 0 else limit
            self.buffer = buffer[end:]
            return buffer[:end]
        parts = [buffer]        # pieces, joined once: a long line costs linear time
        size = len(buffer)
        while size < limit:
            data = self.sock.recv(RECV_SIZE)
            if not data:
                break
            end = data.find(b"\n", 0, limit - size)
            if end >= 0:
                parts.append(data[:end + 1])
                self.buffer = data[end + 1:]
                return b"".join(parts)
            parts.append(data)
            size += len(data)
        line = b"".join(parts)
        self.buffer = line[limit:]
        return line[:limit]

    def read_exact(self, size: int) -> bytes:
        """Exactly ``size`` bytes, or ClientDisconnected."""
        parts = []
        while size > 0:
            part = self.read_some(size)
            if not part:
                raise ClientDisconnected("the client closed the connection mid-body")
            parts.append(part)
            size -= len(part)
        return b"".join(parts)


def strip_empty_lines(buffer):
    """RFC 9112 §2.2: a server SHOULD ignore empty lines received before a request."""
    if buffer[:1] in (b"\r", b"\n"):
        return buffer.lstrip(b"\r\n")
    return buffer


def scan_request_head(buffer, searched: int, limits: Limits):
    """Find where the request head at the start of ``buffer`` ends.

    Returns ``(end, searched)``: ``end`` is the index just past the head's
    empty line, or -1 while the head is incomplete; ``searched`` is where the
    next call may resume, so a head that trickles in byte by byte costs
    linear time, not quadratic. Raises HTTPError as soon as the bytes so far
    prove the head bad: 414 or 431 when it outgrows its limits (before it is
    complete: nothing over the limit is ever buffered for long), 400 for
    bare LF line endings. ``buffer`` starts with the request line (see
    strip_empty_lines). Pure: both the waiting room and read_request_head
    call it after each recv().
    """
    end = buffer.find(b"\r\n\r\n", max(0, searched - 3))
    if end >= 0:
        if end + 4 > limits.max_head_size:      # it may have come whole in one recv()
            raise HTTPError(431, "request head of %d bytes, over the limit of %d"
                            % (end + 4, limits.max_head_size))
        return end + 4, end + 4
    if len(buffer) > limits.max_head_size:
        raise HTTPError(431, "request head over the limit of %d bytes" % limits.max_head_size)
    if (len(buffer) > limits.max_request_line + 1
            and buffer.find(b"\r\n", 0, limits.max_request_line + 2) < 0):
        raise HTTPError(414, "request line over the limit of %d bytes" % limits.max_request_line)
    if buffer.find(b"\n\n", max(0, searched - 1)) >= 0:
        raise HTTPError(400, "bare LF line endings (HTTP/1.1 needs CRLF)")
    return -1, len(buffer)


def read_request_head(reader: SocketReader, limits: Limits):
    """Receive one request head, blocking; return its bytes without the empty line.

    The one-thread way to wait for a request (HTTPConnection.serve, used to
    drive a connection without a server, as the tests do); a server's
    connections wait in the waiting room instead (section 13), which scans
    with the same function. None: the client closed, or stayed idle for
    ``client_timeout``, before sending a byte of a request. HTTPError: 408
    when a head did not complete within ``client_timeout`` of its first
    byte (slowloris), and what scan_request_head raises.
    """
    sock = reader.sock
    buffer = strip_empty_lines(reader.buffer)
    end, searched = scan_request_head(buffer, 0, limits)
    deadline = None
    try:
        while end < 0:
            if deadline is None and buffer:
                deadline = time.monotonic() + limits.client_timeout
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise socket.timeout()
                sock.settimeout(remaining)
            data = sock.recv(RECV_SIZE)
            if not data:
                return None     # closed by the client, before or in the middle of a head
            if deadline is None:
                deadline = time.monotonic() + limits.client_timeout
            if not buffer:
                buffer = data
            else:
                if type(buffer) is not bytearray:
                    buffer = bytearray(buffer)      # grown in place: linear time
                buffer += data
            if buffer[:1] in (b"\r", b"\n"):
                buffer = strip_empty_lines(buffer)
                searched = 0
            end, searched = scan_request_head(buffer, searched, limits)
    except socket.timeout:
        if buffer:
            raise HTTPError(408, "request head not complete within %gs"
                            % limits.client_timeout) from None
        return None
    finally:
        if deadline is not None:
            sock.settimeout(limits.client_timeout)
    reader.buffer = bytes(buffer[end:])
    return bytes(buffer[:end - 4])


class _BodyInput:
    """PEP 3333 wsgi.input: read, readline, readlines and iteration.

    Subclasses provide ``_read_more(limit, line)``: up to ``limit`` bytes of
    body, up to a newline if ``line``. This base class sends the "100
    Continue" on the first read, turns socket errors into the module's own --
    408 for a body that stopped arriving, ClientDisconnected for one cut off
    -- and remembers the first error, raising it again on every later read.
    """

    error = None            # the exception that broke the body, if any
    finished = False        # the whole body has been read
    _on_first_read = None   # sends "100 Continue" (RFC 9110 §10.1.1)
    # The body's pace (min_rate): it may take MIN_RATE_GRACE seconds plus one
    # second per min_rate bytes read, counted from the first read.
    min_rate = 0            # bytes per second; 0: only client_timeout per receive
    timeout = CLIENT_TIMEOUT
    _started = None
    _taken = 0

    def _read_part(self, limit: int, line: bool) -> bytes:
        if self.error is not None:
            raise self.error
        if self.finished:
            return b""
        paced = False
        try:
            if self._on_first_read is not None:
                send_continue, self._on_first_read = self._on_first_read, None
                send_continue()
            if self.min_rate and not self.reader.buffer:
                paced = self._pace()
            data = self._read_more(limit, line)
            self._taken += len(data)
            return data
        except (HTTPError, ClientDisconnected) as exc:
            self.error = exc
        except socket.timeout:
            self.error = HTTPError(408, "the request body is arriving slower than %d bytes/s "
                                   "(min_rate)" % self.min_rate if paced else
                                   "the request body stopped arriving (client_timeout)")
        except OSError as exc:
            self.error = ClientDisconnected("reading the request body: %s" % exc)
        finally:
            if paced:
                self.reader.sock.settimeout(self.timeout)
        raise self.error

    def _pace(self) -> bool:
        """Bound the next receive by what min_rate allows; True if that is below the timeout.

        A client that sends its body a few bytes at a time, each within
        client_timeout, would otherwise hold its thread and app slot for
        as long as it likes (Apache's mod_reqtimeout "minrate" does this).
        """
        now = time.monotonic()
        if self._started is None:
            self._started = now
        allowed = self._started + MIN_RATE_GRACE + self._taken / self.min_rate - now
        if allowed <= 0:
            raise HTTPError(408, "the request body is arriving slower than %d bytes/s (min_rate)"
                            % self.min_rate)
        if allowed < self.timeout:
            self.reader.sock.settimeout(allowed)
            return True
        return False

    def drain(self, limit: int) -> bool:
        """Read and discard at most ``limit`` more bytes; True if the body ended.

        False at once while a 100 Continue is owed: the client may be holding
        the body back until it gets one.
        """
        if self._on_first_read is not None or self.error is not None:
            return self.finished
        try:
            while not self.finished and limit > 0:
                limit -= len(self._read_part(min(limit, MAX_RECV_SIZE), False))
        except (ClientDisconnected, HTTPError):
            return False
        return self.finished

    def _read(self, size, line: bool) -> bytes:
        if size is None or size < 0:
            size = sys.maxsize
        parts = []
        while size > 0:
            part = self._read_part(size, line)
            if not part:
                break
            parts.append(part)
            size -= len(part)
            if line and part[-1:] == b"\n":
                break
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read(self, size: int = -1) -> bytes:
        return self._read(size, False)

    def readline(self, size: int = -1) -> bytes:
        return self._read(size, True)

    def readlines(self, hint: int = -1) -> list:
        lines, total = [], 0
        for line in self:
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self):
        while True:
            line = self.readline()
            if not line:
                return
            yield line


class FixedLengthInput(_BodyInput):
    """A body delimited by Content-Length (RFC 9112 §6.2)."""

    def __init__(self, reader: SocketReader, length: int, on_first_read=None):
        self.reader = reader
        self.remaining = length
        self.finished = length == 0
        if length:
            self._on_first_read = on_first_read

    def _read_more(self, limit: int, line: bool) -> bytes:
        limit = min(limit, self.remaining)
        data = self.reader.read_line(limit) if line else self.reader.read_some(limit)
        if not data:
            raise ClientDisconnected("the client closed the connection with %d body bytes unsent"
                                     % self.remaining)
        self.remaining -= len(data)
        self.finished = self.remaining == 0
        return data


class ChunkedInput(_BodyInput):
    """A body in the chunked transfer coding (RFC 9112 §7.1)."""

    def __init__(self, reader: SocketReader, max_body_size=None, on_first_read=None):
        self.reader = reader
        self.max_body_size = max_body_size
        self.chunk_left = 0
        self.received = 0
        self._on_first_read = on_first_read

    def _read_more(self, limit: int, line: bool) -> bytes:
        if self.chunk_left == 0:
            self._start_chunk()
            if self.finished:
                return b""
        limit = min(limit, self.chunk_left)
        reader = self.reader
        data = reader.read_line(limit) if line else reader.read_some(limit)
        if not data:
            raise ClientDisconnected("the client closed the connection mid-chunk")
        self.chunk_left -= len(data)
        if self.chunk_left == 0 and reader.read_exact(2) != b"\r\n":
            raise HTTPError(400, "chunk data not followed by CRLF")
        return data
    def _start_chunk(self):
        line = self.reader.read_line(MAX_CHUNK_LINE)
        if not line.endswith(b"\n"):
            if len(line) >= MAX_CHUNK_LINE:
                raise HTTPError(400, "chunk-size line over the limit of %d bytes" % MAX_CHUNK_LINE)
            raise ClientDisconnected("the client closed the connection mid-body")
        size = parse_chunk_size(line)
        self.received += size
        if self.max_body_size is not None and self.received > self.max_body_size:
            raise HTTPError(413, "chunked body over the limit of %d bytes" % self.max_body_size)
        if size == 0:
            self._skip_trailers()
            self.finished = True
        self.chunk_left = size

    def _skip_trailers(self):
        # RFC 9112 §7.1.2: trailer fields may be discarded; they never reach
        # the environ, where they could pass for headers a proxy had checked.
        total = 0
        while True:
            line = self.reader.read_line(MAX_TRAILER_SIZE - total + 1)
            total += len(line)
            if total > MAX_TRAILER_SIZE:
                raise HTTPError(431, "chunked trailer section over %d bytes" % MAX_TRAILER_SIZE)
            if not line.endswith(b"\n"):
                raise ClientDisconnected("the client closed the connection in the trailers")
            if line == b"\r\n":
                return
            field = line[:-2]
            name, colon, _ = field.partition(b":")
            if (line[-2:] != b"\r\n" or not colon or TOKEN_RE.fullmatch(name) is None
                    or BAD_HEAD_BYTE_RE.search(field)):
                raise HTTPError(400, "invalid trailer field %s" % _show(line))
            if name.lower() in FORBIDDEN_TRAILER_FIELDS:
                raise HTTPError(400, "%s is not allowed in a trailer (RFC 9110 §6.5.1)"
                                % name.decode("ascii"))


class FileWrapper:
    """PEP 3333 ``wsgi.file_wrapper``: a file sent in blocks.

    When the app returns one around a real file, the server sends it with
    ``socket.sendfile`` (zero-copy ``os.sendfile``) instead of iterating.
    """

    def __init__(self, filelike, blksize: int = 64 * 1024):
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self):
        read = self.filelike.read
        while True:
            data = read(self.blksize)
            if not data:
                return
            yield data


# =============================================================================
# 5. The WSGI environ
# =============================================================================
# PEP 3333, "environ Variables". The parts that are the same for every request
# of a transport are built once (base_environ), and those of a connection
# (REMOTE_ADDR, REMOTE_PORT) once per connection; a request copies them and
# adds its own. PATH_INFO and SCRIPT_NAME are percent-decoded and carried as
# latin-1 "bytes in a str", as PEP 3333 asks of every environ string.

def build_base_environ(server_name: str, server_port: int, url_scheme: str = "http") -> dict:
    """The environ keys shared by all requests of one transport."""
    return {
        "SERVER_NAME": server_name,
        "SERVER_PORT": str(server_port),
        "SERVER_SOFTWARE": SERVER_SOFTWARE,
        "SCRIPT_NAME": "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": url_scheme,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "wsgi.file_wrapper": FileWrapper,
    }


def decode_path(path: str) -> str:
    """Percent-decode a path, keeping each byte as one latin-1 character."""
    if "%" not in path:
        return path
    return unquote(path, encoding="latin-1")


def build_environ(base: dict, head: RequestHead, script_name: str, path_info: str,
                  query: str, wsgi_input) -> dict:
    """The environ of one request (PEP 3333); nothing here does I/O.

    ``base`` holds the keys of the transport and the connection; see
    build_base_environ.
    """
    environ = base.copy()
    environ.update(head.fields)
    environ["REQUEST_METHOD"] = head.method
    environ["SCRIPT_NAME"] = script_name
    environ["PATH_INFO"] = path_info
    environ["QUERY_STRING"] = query
    environ["SERVER_PROTOCOL"] = "HTTP/1.1" if head.version == (1, 1) else "HTTP/1.0"
    environ["REQUEST_URI"] = environ["RAW_URI"] = head.target   # as gunicorn and uWSGI give them
    environ["wsgi.input"] = wsgi_input
    return environ


# Behind a proxy (the transport's "trusted_proxies"): the client's address,
# the scheme and the host the client used come from the proxy's Forwarded
# (RFC 7239) or X-Forwarded-For/-Proto/-Host fields -- but only when the
# peer is a trusted proxy: from anyone else those fields are the client's own
# words, left to the app and never believed. Each proxy appends the address
# it received from, so the list is read from the right: trusted proxies are
# skipped, and the first address that is not one is the client (as nginx's
# real_ip_recursive and gunicorn's forwarded_allow_ips do); anything left of
# it could have been written by the client itself.

# RFC 7239 §4: forwarded-pair = token "=" value; value = token / quoted-string.
_FORWARDED_PAIR_RE = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)=("(?:[^"\\]|\\.)*"|[^";,\s]*)\s*([;,]?)')


def parse_forwarded(value: str) -> list:
    """The elements of a Forwarded field (RFC 7239 §4), each a dict of its
    pairs with lower-case names and unquoted values; [] if it is malformed."""
    elements, element, pos = [], {}, 0
    while pos < len(value):
        match = _FORWARDED_PAIR_RE.match(value, pos)
        if match is None:
            return []
        name, raw, sep = match.groups()
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        element[name.lower()] = raw
        pos = match.end()
        if sep != ";":
            elements.append(element)
            element = {}
            if not sep and pos < len(value):
                return []
    return elements


def _node_address(node: str) -> str:
    """The address of a Forwarded "for" node or an X-Forwarded-For entry, without its port."""
    node = node.strip()
    if node.startswith("["):                    # RFC 7239 §6: "[2001:db8::1]:4711"
        return node[1:node.find("]")] if "]" in node else node
    if node.count(":") == 1:                    # "192.0.2.43:4711"
        return node.partition(":")[0]
    return node


def is_trusted(address: str, trusted) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def build_proxied_environ(environ: dict, trusted) -> dict:
    """What a trusted proxy says of the client: REMOTE_ADDR, wsgi.url_scheme, HTTP_HOST.

    ``trusted`` is a list of ipaddress networks. Returns the keys to update
    (none unless the peer, REMOTE_ADDR, is one of them).
    """
    if not is_trusted(environ["REMOTE_ADDR"], trusted):
        return {}
    hops = []                                   # (address, proto, host), left to right
    if "HTTP_FORWARDED" in environ:
        for element in parse_forwarded(environ["HTTP_FORWARDED"]):
            hops.append((_node_address(element.get("for", "unknown")), element.get("proto"),
                         element.get("host")))
    elif "HTTP_X_FORWARDED_FOR" in environ:
        hops = [(_node_address(a), None, None) for a in environ["HTTP_X_FORWARDED_FOR"].split(",")]
        if hops:                                # these speak of the nearest proxy's client
            last = hops[-1]
            hops[-1] = (last[0], environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[-1].strip()
                        or None, environ.get("HTTP_X_FORWARDED_HOST", "").split(",")[-1].strip()
                        or None)
    if not hops:
        return {}
    client = hops[0]
    for hop in reversed(hops):
        client = hop
        if not is_trusted(hop[0], trusted):
            break
    updates = {}
    try:
        updates["REMOTE_ADDR"] = str(ipaddress.ip_address(client[0]))
        updates["REMOTE_PORT"] = ""             # the client's port is the proxy's secret
    except ValueError:                          # "unknown", "_hidden": keep the proxy's
        pass
    proto = (client[1] or "").lower()
    if proto in ("http", "https"):
        updates["wsgi.url_scheme"] = proto
    if client[2] and HOST_RE.fullmatch(client[2]):
        updates["HTTP_HOST"] = client[2]
    return updates


# =============================================================================
# 6. The WSGI response: start_response, write, framing
# =============================================================================
# In: what the app gives (status, headers, body chunks). Out: bytes on the
# socket. start_response validates everything the app says before a byte is
# sent -- a CR or LF in a header would let the app's input split the response
# (response splitting) -- so a bad header is an exception in the app, a 500.
# The head goes out with the first non-empty body chunk, in one send (for
# bodies up to 64 KiB). A body given whole (a list or tuple, or any iterable
# of len() 1) gets a Content-Length; a streamed one is chunked on HTTP/1.1 and
# close-delimited on HTTP/1.0.
#
# A slow reader must not keep the app's thread and slot. A body given whole
# larger than 64 KiB, and a real file in wsgi.file_wrapper, are left in
# ``output`` for the waiting room (section 13) to send as the client reads,
# once the app is done. A streamed body is sent from the app's thread, as
# PEP 3333 wants each block on the wire before the next is asked for: it is
# held to min_rate, as request bodies are (section 4).

class ResponseHead:
    """What start_response was given, validated and serialized (but the framing)."""

    __slots__ = ("code", "status", "block", "content_length", "has_date", "has_server")

    def __init__(self, code, status, block, content_length, has_date, has_server):
        self.code = code                        # 200
        self.status = status                    # b"200 OK"
        self.block = block                      # b"Content-Type: text/plain\r\n..."
        self.content_length = content_length    # int, or None if the app gave none
        self.has_date = has_date
        self.has_server = has_server


def build_response_head(status: str, headers: list) -> ResponseHead:
    """Validate a WSGI status and header list (PEP 3333) and serialize them.

    Raises TypeError or ValueError, with what was wrong and what to do instead.
    """
    if type(status) is not str:
        raise TypeError("status must be a str like '200 OK', not %s" % type(status).__name__)
    if STATUS_RE.fullmatch(status) is None:
        raise ValueError("invalid status %s: expected three digits (200-599), a space and a "
                         "reason phrase, without control characters" % _show(status))
    code = int(status[:3])
    if type(headers) is not list:
        raise TypeError("response headers must be a list of (name, value) tuples, not %s"
                        % type(headers).__name__)
    lines = []
    content_length = None
    has_date = has_server = False
    for item in headers:
        if type(item) is not tuple or len(item) != 2:
            raise TypeError("each response header must be a (name, value) tuple, not %r" % (item,))
        name, value = item
        if type(name) is not str or type(value) is not str:
            raise TypeError("response header name and value must be str: %r" % (item,))
        if RESPONSE_FIELD_NAME_RE.fullmatch(name) is None:
            raise ValueError("invalid response header name %s" % _show(name))
        if BAD_VALUE_CHAR_RE.search(value) is not None:
            raise ValueError("control character (CR, LF, NUL...) in response header %s: %s"
                             % (name, _show(value)))
        lower = name.lower()
        if lower in HOP_BY_HOP_FIELDS:
            raise ValueError("hop-by-hop header %r is not allowed from a WSGI app (PEP 3333); "
                             "the server manages the connection" % name)
        if lower == "content-length":
            value = value.strip()
            length = parse_content_length(value)
            if content_length is not None:
                if length != content_length:
                    raise ValueError("two different Content-Length headers")
                continue    # the same twice: send it once
            content_length = length
            if code == 204:
                continue    # RFC 9110 §8.6: never in a 204
        elif lower == "date":
            has_date = True
        elif lower == "server":
            has_server = True
        lines.append("%s: %s\r\n" % (name, value))
    if code == 204:
        content_length = None
    try:
        block = "".join(lines).encode("latin-1")
        status_bytes = status.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise ValueError("response status and headers must be latin-1 (PEP 3333): %s" % exc) from None
    return ResponseHead(code, status_bytes, block, content_length, has_date, has_server)


_response_heads = {}    # (status, *headers) -> ResponseHead


def remembered_response_head(status: str, headers: list) -> ResponseHead:
    """build_response_head, for a status and headers seen before without the work.

    Validating and encoding the same two or three headers for every request
    was a twentieth of a hello's CPU. A ResponseHead is never changed once
    built, so one may serve every response that had the same head. Only
    exact types are taken from the cache: a str subclass equal to a valid
    name, or a namedtuple equal to a valid pair, is refused by
    build_response_head, so it must not be let through here.
    """
    if type(status) is str and type(headers) is list:
        try:
            key = (status, *headers)
            head = _response_heads.get(key)
        except TypeError:               # an unhashable item: refused below
            key = head = None
        if head is not None:
            for item in headers:
                if type(item) is not tuple or type(item[0]) is not str or type(item[1]) is not str:
                    break
            else:
                return head
        head = build_response_head(status, headers)
        if key is not None:
            if len(_response_heads) >= RESPONSE_HEAD_CACHE_SIZE:
                _response_heads.clear()
            _response_heads[key] = head
        return head
    return build_response_head(status, headers)


_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("", "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def format_http_date(timestamp: float) -> str:
    """RFC 9110 §5.6.7 IMF-fixdate: ``Sun, 06 Nov 1994 08:49:37 GMT``."""
    t = time.gmtime(timestamp)
    return "%s, %02d %s %04d %02d:%02d:%02d GMT" % (
        _WEEKDAYS[t.tm_wday], t.tm_mday, _MONTHS[t.tm_mon], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)


_date_line = (0, b"")   # (second, b"Date: ...\r\n"): formatted once a second


def date_line() -> bytes:
    global _date_line
    now = int(time.time())
    cached = _date_line
    if cached[0] != now:
        cached = _date_line = (now, b"Date: %s\r\n" % format_http_date(now).encode("ascii"))
    return cached[1]


_SERVER_LINE = b"Server: %s\r\n" % SERVER_SOFTWARE.encode("ascii")


def _check_chunk(chunk):
    if type(chunk) is not bytes:
        raise TypeError("the app's iterable gave %s; WSGI bodies are bytes (PEP 3333)"
                        % type(chunk).__name__)


def plain_text_body(status: int, text: str) -> bytes:
    """The body of an answer the server makes itself: status line, then the detail."""
    return ("%d %s\n%s\n" % (status, _STATUS_PHRASES.get(status, "Error"), text)).encode("utf-8", "replace")


class FilePart:
    """``count`` bytes of an open file from ``offset``, for the waiting room to send
    with os.sendfile once the app's slot is free.

    It holds its own descriptor (a dup), since the server closes the app's
    file as soon as the app is done (PEP 3333: it calls the result's close()).
    """

    __slots__ = ("fd", "offset", "count")

    def __init__(self, fileno: int, offset: int, count: int):
        self.fd = os.dup(fileno)
        self.offset = offset
        self.count = count

    def send(self, sock) -> int:
        """Send what the kernel takes now; the bytes sent. BlockingIOError: none."""
        total = 0
        try:
            while self.count:
                sent = os.sendfile(sock.fileno(), self.fd, self.offset, self.count)
                if not sent:        # the file shrank: the Content-Length cannot be kept
                    log.error("a file being sent ended %d bytes before its Content-Length; "
                              "connection closed", self.count)
                    raise OSError(errno.EIO, "the file ended %d bytes early" % self.count)
                self.offset += sent
                self.count -= sent
                total += sent
        except BlockingIOError:
            if not total:
                raise
        return total

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _closes_only_a_file(wrapper) -> bool:
    """Whether the wrapper's close() does nothing but close a file open()
    gave: then the file may be sent, from a descriptor of its own, after the
    server has called it (PEP 3333 wants close() "upon completion")."""
    close = getattr(wrapper, "close", None)
    return close is None or type(getattr(close, "__self__", None)) in (io.BufferedReader, io.FileIO)


def output_size(output) -> int:
    """Bytes in a response's unsent ``output``: its bytes-likes and FileParts."""
    return sum(item.count if type(item) is FilePart else len(item) for item in output or ())


def close_output(output):
    """Close the files in a response's unsent ``output``."""
    for item in output or ():
        if type(item) is FilePart:
            item.close()


class Response:
    """One response: PEP 3333's ``start_response`` and ``write``, and the framing.

    The attributes are PEP 3333's names: ``headers_set`` (what start_response
    was given), ``headers_sent`` (the head is on the wire).
    """

    def __init__(self, sock, method: str, version: tuple, keep_alive: bool, body_input=None,
                 transport=None):
        self.sock = sock
        self.transport = transport  # a stopping transport closes connections after a response
        self.method = method
        self.version = version
        self.keep_alive = keep_alive
        self.body_input = body_input
        self.headers_set = None
        self.headers_sent = False
        self.chunked = False
        self.no_body = False
        self.remaining = None       # body bytes still owed under the app's Content-Length
        self.body_bytes = 0         # body bytes sent, for the access log
        self.client_gone = False
        # A large body given whole may be left in ``output`` for the caller
        # to send (the waiting room does, once the app's slot is free).
        self.defer_output = False
        self.output = None
        # The pace of what is sent from this thread (min_rate, as a request
        # body's; 0: only client_timeout per send): _send_paced.
        self.min_rate = 0
        self._waited = 0.0          # seconds spent in sends, waiting for the client
        self._sent = 0              # bytes the kernel took
        self._carried = None        # bytes of earlier responses it still held then
        self._first = True          # nothing sent yet (written raw: _send)

    @property
    def code(self) -> int:
        return self.headers_set.code if self.headers_set else 0

    def start_response(self, status, headers, exc_info=None):
        """PEP 3333 start_response: remember the status and headers; send nothing."""
        if exc_info:
            try:
                if self.headers_sent:
                    # PEP 3333: too late to change the response; re-raise.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None     # PEP 3333: avoid a traceback/frame cycle
        elif self.headers_set is not None:
            raise AssertionError("start_response() called a second time without exc_info "
                                 "(PEP 3333: only an error handler may replace the headers)")
        self.headers_set = remembered_response_head(status, headers)
        return self.write

    def _begin(self, body_length) -> bytes:
        """Choose the framing and serialize the head; ``body_length`` if known."""
        head = self.headers_set
        code = head.code
        method = self.method
        if code == 204 or code == 304 or method == "HEAD":
            self.no_body = True     # RFC 9110 §6.4.1: these never carry content
        extra = []
        length = head.content_length
        # RFC 9110 §8.6: a HEAD's Content-Length must be GET's, a 304's the 200's. An
        # empty body given for HEAD says nothing of GET's, and a 304 has no body: so
        # neither gets one made up here.
        if length is None and body_length is not None and code != 204 and code != 304 and (
                body_length or method != "HEAD"):
            length = body_length
            extra.append(b"Content-Length: %d\r\n" % length)
        if length is not None:
            if not self.no_body:
                self.remaining = length
        elif not self.no_body:
            # RFC 9112 §6.1: never Transfer-Encoding in answer to HTTP/1.0.
            if self.version == (1, 1):
                self.chunked = True
                extra.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.keep_alive = False     # RFC 9112 §6.3 (8): close-delimited
        extra.append(self._connection_field())
        # RFC 9110 §6.6.1: an origin server with a clock sends Date.
        if not head.has_date:
            extra.append(date_line())
        if not head.has_server:
            extra.append(_SERVER_LINE)
        if self.transport is not None and self.transport.hsts_line:
            extra.append(self.transport.hsts_line)
        self.headers_sent = True
        return b"".join((b"HTTP/1.1 ", head.status, b"\r\n", head.block, *extra, b"\r\n"))

    def _connection_field(self) -> bytes:
        """Decide whether the connection outlives this response; its Connection line, or b""."""
        body = self.body_input
        if self.keep_alive and body is not None and not body.finished and (
                body._on_first_read is not None or
                isinstance(body, FixedLengthInput) and body.remaining > MAX_DRAIN_SIZE):
            # The rest of the body will not be drained: too long, or never
            # asked for with 100 Continue, so the client may never send it.
            self.keep_alive = False
        if self.transport is not None and self.transport.stopping:
            self.keep_alive = False
        if self.version == (1, 1):
            return b"" if self.keep_alive else b"Connection: close\r\n"
        return b"Connection: keep-alive\r\n" if self.keep_alive else b""

    def _frame(self, data: bytes) -> bytes:
        """Body bytes as they go on the wire, under the chosen framing."""
        if self.no_body:
            return b""
        if self.remaining is not None:
            if len(data) > self.remaining:
                log.error("app sent more than its Content-Length of %d bytes; response cut",
                          self.headers_set.content_length)
                data = data[:self.remaining]
                self.keep_alive = False
            self.remaining -= len(data)
        elif self.chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        self.body_bytes += len(data)
        return data

    def _send(self, data: bytes):
        try:
            if (self._first and len(data) <= SEND_SLICE and type(self.sock) is socket.socket
                    and RAW_SOCKET_IO):
                # A response's first bytes are written raw (a plain socket's
                # descriptor is O_NONBLOCK in timeout mode too): sendall()
                # would poll() first, and the kernel nearly always takes a
                # small response at once. Only the first: later ones are left
                # to sendall(), whose poll() waits until a slow reader has
                # drained a good part of the queue (raw writes would keep it
                # full, and then one wait outlasts the timeout).
                self._first = False
                try:
                    sent = os.write(self.sock.fileno(), data)
                except BlockingIOError:
                    sent = 0
                self._sent += sent
                if sent == len(data):
                    return
                data = memoryview(data)[sent:]
            if self.min_rate:
                self._send_paced(data)
            else:
                send_all(self.sock, data)
        except OSError as exc:
            self.client_gone = True
            self.keep_alive = False
            raise ClientDisconnected("sending the response: %s" % exc) from exc

    def _send_paced(self, data: bytes):
        """send_all() held to min_rate: a client that reads slower is reset.

        Each send is bounded by client_timeout; without a pace, a client that
        reads a few bytes now and then would hold the app's thread and slot
        for as long as a streamed body lasts. The time that counts is the
        time spent in sends, waiting for the client, not the app's own time
        between blocks: an event every 30 s to a client that reads it at
        once is never cut. The bytes that count are those the client has
        taken, not those the kernel queued (it takes megabytes at once,
        which would buy a slow reader hours). The bound: MIN_RATE_GRACE
        seconds, plus one per min_rate bytes taken, plus one slice.
        """
        if self._carried is None:
            # What the kernel still holds of earlier responses (a pipelining
            # client) goes first, TCP being in order: those bytes count as
            # taken when the client takes them, not against this pace.
            self._carried = queued_before(self.sock, self._sent)
        view = memoryview(data) if len(data) > SEND_SLICE else None
        for start in range(0, len(data), SEND_SLICE):
            if self._waited > MIN_RATE_GRACE and too_slow(
                    self.sock, self._waited, self._sent + self._carried, self.min_rate):
                raise socket.timeout("the client reads slower than %d bytes/s (min_rate)"
                                     % self.min_rate)
            piece = data if view is None else view[start:start + SEND_SLICE]
            began = time.monotonic()
            self.sock.sendall(piece)
            self._waited += time.monotonic() - began
            self._sent += len(piece)

    def write(self, data: bytes):
        """PEP 3333 write(): send ``data`` now, with the head if not yet sent."""
        # PEP 3333, "Buffering and Streaming": each block is on the wire before the
        # app is asked for the next; nothing is held back to fill a buffer.
        if type(data) is not bytes:
            raise TypeError("write() takes bytes, not %s (PEP 3333)" % type(data).__name__)
        if self.headers_set is None:
            raise AssertionError("write() called before start_response()")
        if not data:
            return
        if self.headers_sent:
            self._send(self._frame(data))
        else:
            head = self._begin(None)
            self._send(head + self._frame(data))

    def send_result(self, result):
        """Send what the app returned: a body given whole gets a Content-Length.

        Given whole means a list or tuple, or (as wsgiref has it) any iterable
        whose len() is 1: its one chunk is the body.
        """
        if type(result) is not list and type(result) is not tuple and type(result) is not FileWrapper:
            try:
                single = len(result) == 1
            except Exception:
                single = False
            if single:
                result = list(result)
        if type(result) is list or type(result) is tuple:
            for chunk in result:
                _check_chunk(chunk)
            body = result[0] if len(result) == 1 else b"".join(result)
            if self.headers_set is None:
                raise AssertionError("the app returned without calling start_response()")
            if self.headers_sent:
                self.write(body)
            else:
                head = self._begin(len(body))
                body = self._frame(body)
                if len(body) <= MAX_COALESCED_BODY:
                    self._send(head + body)
                elif self.defer_output:
                    self.output = [head, body]      # the waiting room sends it
                else:
                    self._send(head)
                    self._send(body)
        elif type(result) is FileWrapper and self._send_file(result):
            pass
        else:
            for chunk in result:
                _check_chunk(chunk)
                if chunk:
                    self.write(chunk)
                if self.remaining == 0:
                    # PEP 3333: the server "should stop iterating over the
                    # response when enough data has been sent" -- an endless
                    # iterable would otherwise be pulled forever.
                    break
        self.finish()

    def _send_file(self, wrapper: FileWrapper) -> bool:
        """Send a real file with sendfile(); False if it is not one (then iterate).

        Under TLS there is no sendfile (the ssl module would read and send
        in blocks): iterating does the same, held to min_rate.
        """
        if (self.headers_set is None or self.headers_sent or not hasattr(self.sock, "sendfile")
                or ssl is not None and isinstance(self.sock, ssl.SSLSocket)):
            return False
        try:
            offset = wrapper.filelike.tell()
            status = os.fstat(wrapper.filelike.fileno())
        except (AttributeError, OSError, ValueError):
            return False
        if not stat.S_ISREG(status.st_mode):
            return False            # a pipe or socket: its size is unknown, iterate
        count = max(0, status.st_size - offset)
        if self.headers_set.content_length is not None:
            count = min(count, self.headers_set.content_length)
        part = None
        if (self.defer_output and count and self.method != "HEAD" and hasattr(os, "sendfile")
                and _closes_only_a_file(wrapper)):
            try:
                part = FilePart(wrapper.filelike.fileno(), offset, count)
            except OSError:         # no descriptor to spare (EMFILE): send it from here
                part = None
        head = self._begin(count)
        if part is not None and not self.no_body:
            # The waiting room sends it once the app's slot is free.
            self.output = [head, part]
            self.remaining -= count
            self.body_bytes += count
            return True
        if part is not None:
            part.close()
        self._send(head)
        if not self.no_body and count:
            try:
                sent = self.sock.sendfile(wrapper.filelike, offset, count)
            except OSError as exc:
                self.client_gone = True
                self.keep_alive = False
                raise ClientDisconnected("sending a file: %s" % exc) from exc
            self.remaining -= sent
            self.body_bytes += sent
        return True

    def finish(self):
        """End the response: the head if not sent yet, the last chunk if chunked."""
        if self.headers_set is None:
            raise AssertionError("the app returned without calling start_response()")
        if not self.headers_sent:
            self._send(self._begin(0))
        elif self.chunked:
            self._send(b"0\r\n\r\n")    # RFC 9112 §7.1: last-chunk, no trailers
        if self.remaining:
            log.error("app sent %d bytes less than its Content-Length of %d; connection closed",
                      self.remaining, self.headers_set.content_length)
            self.keep_alive = False

    def send_simple(self, code: int, text: str, fields=()):
        """A response made by the server itself (404, 426, 500...): plain text."""
        hsts = self.transport.hsts_line if self.transport is not None else b""
        data = build_simple_response(code, text, self.method, fields,
                                     self._connection_field() + hsts)
        status = ("%d %s" % (code, _STATUS_PHRASES.get(code, "Error"))).encode("ascii")
        self.headers_set = ResponseHead(code, status, b"", None, True, True)
        self.headers_sent = True
        if self.method != "HEAD":
            self.body_bytes = len(plain_text_body(code, text))
        self._send(data)


def queued_before(sock, sent: int) -> int:
    """Bytes of earlier responses the kernel still holds for the client, once
    ``sent`` bytes of this one were given to it: the send queue less those.
    Exact while it is not 0: TCP is in order, so the client has taken none
    of this response's bytes while any earlier one is left."""
    return max(0, (unsent_bytes(sock) or 0) - sent)


def too_slow(sock, waited: float, sent: int, min_rate: int) -> bool:
    """Whether a client that kept us waiting ``waited`` seconds for ``sent`` bytes reads
    slower than ``min_rate``; if so, the socket is set to be reset when closed.

    What it has taken is ``sent`` less the kernel's send queue (unknown off
    Linux: then all of ``sent``). Reset, not close: the kernel would keep the
    megabytes it holds for the client until they are read (as nginx's
    reset_timedout_connection does).
    """
    taken = sent - (unsent_bytes(sock) or 0)
    if waited <= MIN_RATE_GRACE + taken / min_rate:
        return False
    log.info("closing the connection: the response is being read slower than %d bytes/s "
             "(min_rate)", min_rate)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return True


def send_all(sock, data: bytes):
    """sendall() in slices of SEND_SLICE bytes, each with the socket's timeout."""
    if len(data) <= SEND_SLICE:
        sock.sendall(data)
        return
    view = memoryview(data)
    for start in range(0, len(data), SEND_SLICE):
        sock.sendall(view[start:start + SEND_SLICE])


def build_simple_response(status: int, text: str, method: str = "", fields=(),
                          connection: bytes = b"Connection: close\r\n") -> bytes:
    """The bytes of an answer the server makes itself (400, 404, 500...), plain text.

    The one serializer of such answers, for a request refused before an app
    saw it and for Response.send_simple alike. For HEAD the body is left out
    and its Content-Length kept (RFC 9110 §9.3.2: the fields GET would get,
    no content). ``connection`` is the Connection line, b"" for none.
    """
    body = plain_text_body(status, text)
    return b"".join((
        b"HTTP/1.1 %d %s\r\n" % (status, _STATUS_PHRASES.get(status, "Error").encode("ascii")),
        b"Content-Type: text/plain; charset=utf-8\r\n",
        "".join("%s: %s\r\n" % field for field in fields).encode("latin-1"),
        b"Content-Length: %d\r\n" % len(body),
        connection, date_line(), _SERVER_LINE, b"\r\n",
        b"" if method == "HEAD" else body))


# =============================================================================
# 7. The connection: one request at a time
# =============================================================================
# A connection's life is a sequence of steps, each serving one request and
# saying what comes next (Next): KEEP the connection for another request
# (RFC 9112 §9.3), CLOSE it, or LINGER -- stop sending, then read and discard
# what the client still sends for a while before closing (§9.6), because the
# client may still be sending a body nobody will read. This is the one place
# where persistence is decided.
#
# A step is split in two: prepare() parses and checks the head and finds the
# service (cheap, never blocks -- the waiting room of section 13 runs it as
# soon as a head is complete, to know which app's queue the request joins),
# and run() serves it in a pool thread: the app, the response, draining the
# body. Any HTTPError closes the connection after its answer (refuse()): once
# a message has been misread, no later byte on that connection can be trusted.
# serve() strings the steps together in one thread, blocking; that is how a
# connection is driven without a server (the tests feed it a fake socket).

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Next(enum.Enum):
    """What a connection does after a request."""
    KEEP = "keep"           # persistent: wait for the next request
    CLOSE = "close"         # close now (the client is gone, or will not send more)
    LINGER = "linger"       # the client may still be sending: close slowly (lingering_close)
    WEBSOCKET = "websocket"     # upgraded, to a WebSocket the waiting room drives (section 13)


class Request:
    """A request whose head has been accepted: what prepare() found, for run()."""

    __slots__ = ("head", "service", "environ", "response", "body")

    def __init__(self, head, service, environ, response, body):
        self.head = head            # RequestHead
        self.service = service      # where it goes: a WSGIService, WebSocketService...
        self.environ = environ
        self.response = response
        self.body = body            # FixedLengthInput or ChunkedInput


class HTTPConnection:
    """One client connection: its socket, the bytes received, and its steps."""

    def __init__(self, transport: WebTransport, sock, client_address):
        self.transport = transport
        self.sock = sock
        self.client_address = client_address if isinstance(client_address, tuple) else ("", 0)
        self.reader = SocketReader(sock)
        self.base_environ = dict(transport.base_environ, REMOTE_ADDR=self.client_address[0],
                                 REMOTE_PORT=str(self.client_address[1]))
        self.response = None
        self.method = None          # of the request being prepared
        # The waiting room's bookkeeping (section 13).
        self.state = None           # WAITING, QUEUED, LINGERING, ACTIVE or CLOSED
        self.deadline = 0.0         # time.monotonic() when the present wait ends
        self.searched = 0           # bytes of the buffer scan_request_head has looked at
        self.registered = False     # in the selector
        self.armed = True           # and will report readiness (one-shot: until it has)
        self.receiving = False      # a request head has begun to arrive
        self.discarded = 0          # bytes read and thrown away while lingering
        self.queued = None          # the Request waiting for its app's slot, or its body
        self.output = None          # what is left to send of a response given whole
        self.output_since = 0.0     # when the app handed it over (its pace: min_rate)
        self.output_sent = 0        # bytes of it the kernel took (and earlier ones it held: _serve)
        self.unsent = sys.maxsize   # the kernel's send queue when last looked at
        self.after_output = None    # the Next step once it is sent
        self.unlogged = None        # (environ, response) whose access-log line waits for it
        self.websocket = None       # the WebSocket it became, driven by the waiting room
        self.fd = None              # plain TCP: the descriptor the room reads raw (section 13)

    def serve(self) -> Next:
        """Serve requests in the calling thread, blocking, until the connection is done."""
        limits = self.transport.limits
        self.sock.settimeout(limits.client_timeout)
        while True:
            try:
                head_bytes = read_request_head(self.reader, limits)
                if head_bytes is None:
                    return Next.CLOSE
                request = self.prepare(head_bytes)
            except HTTPError as exc:
                return self.refuse(exc)
            except OSError as exc:      # client gone or too slow
                log.debug("connection from %s closed: %s", self.client_address[0], exc)
                return Next.CLOSE
            next_step = self.run(request)
            if next_step is not Next.KEEP or self.transport.stopping:
                return next_step

    def refuse(self, exc: HTTPError) -> Next:
        """Answer a request the server could not accept; then the connection lingers."""
        log.debug("%d for %s: %s", exc.status, self.client_address[0], exc.detail)
        response = self.response
        if response is None or not response.headers_sent:
            try:
                self.sock.sendall(build_simple_response(exc.status, exc.detail, self.method or "",
                                                        exc.fields))
            except OSError:
                return Next.CLOSE
        return Next.LINGER

    def _send_continue(self):
        response = self.response
        if response is not None and not response.headers_sent:
            self.sock.sendall(_CONTINUE)

    def prepare(self, head_bytes: bytes) -> Request:
        """Parse and check a request head, and find its service. Raises HTTPError; no I/O."""
        transport = self.transport
        limits = transport.limits
        self.response = self.method = None
        head = parse_request_head(head_bytes, limits)
        self.method = head.method               # a HEAD's error answer has no body
        fields = head.fields
        version = head.version
        path, query, authority = parse_request_target(head.method, head.target)
        host = parse_host(version, fields.get("HTTP_HOST"), authority)
        if host is not None:
            fields["HTTP_HOST"] = host
        length = parse_body_framing(head)
        max_body = limits.max_body_size
        if max_body is not None and length is not None and length > max_body:
            raise HTTPError(413, "Content-Length %d over the limit of %d bytes" % (length, max_body))
        connection = fields.get("HTTP_CONNECTION")
        if connection is None:
            keep_alive = version == (1, 1)
        else:
            tokens = parse_tokens(connection)
            keep_alive = ("close" not in tokens) if version == (1, 1) else ("keep-alive" in tokens)
        on_first_read = None
        expect = fields.get("HTTP_EXPECT")
        if expect is not None and version == (1, 1):    # RFC 9110 §10.1.1: ignored on 1.0
            if expect.lower() != "100-continue":
                raise HTTPError(417, "Expect %s is not supported (only 100-continue)" % _show(expect))
            on_first_read = self._send_continue
        if length is None:
            body = ChunkedInput(self.reader, max_body, on_first_read)
        else:
            body = FixedLengthInput(self.reader, length, on_first_read)
        if path == "*":
            service, script_name, path_info = transport.own_answers, "", "*"
        else:
            service, script_name, path_info = transport.resolve(path)
            if service is None:
                service = transport.own_answers
        response = Response(self.sock, head.method, version, keep_alive, body, transport)
        if limits.min_rate:
            body.min_rate, body.timeout = limits.min_rate, limits.client_timeout
            response.min_rate = limits.min_rate
        environ = build_environ(self.base_environ, head, script_name, path_info, query, body)
        if transport.trusted_proxies:
            environ.update(build_proxied_environ(environ, transport.trusted_proxies))
        return Request(head, service, environ, response, body)

    def run(self, request: Request) -> Next:
        """Serve a prepared request, in the calling thread; say what comes next."""
        response = self.response = request.response
        body = request.body
        try:
            request.service.serve(request.environ, response, self)
        except HTTPError as exc:
            return self.refuse(exc)
        except OSError as exc:          # ClientDisconnected, a reset, a send timeout
            log.debug("client %s gone: %s", self.client_address[0], exc)
            return Next.CLOSE
        finally:
            self.response = None
            if self.transport.access_log:
                if response.output is None:
                    self.log_access(request.environ, response)
                else:
                    # The rest goes out from the waiting room: the line waits
                    # for it, to count what went out (WaitingRoom._sent_log).
                    self.unlogged = request.environ, response
        if self.websocket is not None:
            return Next.WEBSOCKET
        if not response.keep_alive or body.error is not None or (
                not body.finished and not body.drain(MAX_DRAIN_SIZE)):
            return Next.CLOSE if body.finished else Next.LINGER
        return Next.KEEP

    def log_access(self, environ: dict, response: Response):
        """One line in Apache's combined log format (quotes and controls escaped, as Apache does)."""
        t = time.localtime()
        tz = time.strftime("%z", t)
        request_line = "%s %s %s" % (environ["REQUEST_METHOD"], environ["REQUEST_URI"],
                                     environ["SERVER_PROTOCOL"])
        access_log.info('%s - - [%02d/%s/%04d:%02d:%02d:%02d %s] "%s" %d %s "%s" "%s"',
                        environ["REMOTE_ADDR"], t.tm_mday, _MONTHS[t.tm_mon], t.tm_year,
                        t.tm_hour, t.tm_min, t.tm_sec, tz, _log_escape(request_line), response.code,
                        response.body_bytes or "-", _log_escape(environ.get("HTTP_REFERER", "-")),
                        _log_escape(environ.get("HTTP_USER_AGENT", "-")))


_LOG_ESCAPE_RE = re.compile(r'["\\\x00-\x1f\x7f-\xff]')


def _log_escape(text: str) -> str:
    """A client's text made safe for one log line: \\" and \\xHH escapes."""
    return _LOG_ESCAPE_RE.sub(lambda m: "\\" + m.group() if m.group() in '"\\'
                              else "\\x%02x" % ord(m.group()), text)


# =============================================================================
# 8. WebSocket (RFC 6455, RFC 7692): handshake, frames, compression, channels
# =============================================================================
# A "websocket" path answers a valid opening handshake (§4.2) with 101, and
# the HTTP connection becomes a WebSocket for the rest of its life.
#
# The protocol is one object without I/O, WebSocketProtocol (in the manner of
# wsproto and h11): received bytes in, in pieces of any size, events and the
# frames it must answer with out; messages in, frames out. Its closing is one
# state -- OPEN, CLOSING (our Close sent, the client's awaited), CLOSED (both
# exchanged, or failed, or lost) -- and WebSocket keeps the one rule for TCP
# (§7.1.1: the server closes it first, once both Closes are exchanged and
# ours is out, or at the one closing deadline, close_handshake_timeout after
# the protocol left OPEN -- or after our Close went out, if it was queued
# behind other frames). The frame functions under it are pure too: bytes
# in, values out, or a WebSocketError carrying the close code (§7.4.1).
#
# Two drivers move the bytes. A broadcast path's client (no handler) lives in
# the waiting room's selector (section 13) and costs no thread: its bytes
# are read and fed there, its messages broadcast, and what it is sent goes
# out by non-blocking sends, the rest waiting in its queue until the socket
# is writable (ws:// and wss:// alike). A handler's client has the
# connection's thread, which reads frames and runs the handler with its
# blocking API, and a writer thread that sends what is queued. Either way a
# broadcast never waits on a slow client: one whose queue a broadcast would
# take over max_send_queue is dropped with 1008 (policy violation), its
# Close sent ahead of its queue, where the socket takes it.
#
# Compression (RFC 7692, permessage-deflate) is negotiated in the handshake by
# a pure function: the client's offers in, the agreed parameters and our
# answer out. Then each data message is one raw DEFLATE stream piece, flagged
# by RSV1 on its first frame. Ours are compressed as they are queued, under
# the client's lock, in the order they go out, because with "context
# takeover" each message may refer back to the ones before it; the client's
# are inflated as their bytes arrive, in steps, so max_message_size bounds
# the *inflated* size and a decompression bomb costs no more than an honest
# message. A message that comes in one read is joined once at its end; one
# that takes more reads or frames is gathered in a BytesIO as it comes (its
# buffer becomes the message's bytes, uncopied): fragments cost no memory of
# their own, MAX_MESSAGE_FRAGMENTS bounds their number, and nothing is
# allocated for bytes that have not arrived.

WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"      # RFC 6455 §1.3


class Opcode(enum.IntEnum):
    """RFC 6455 §5.2 frame opcodes; 0x3-0x7 and 0xB-0xF are reserved."""
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(enum.IntEnum):
    """RFC 6455 §7.4.1 close status codes."""
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005            # never on the wire: "the close frame had no code"
    ABNORMAL = 1006             # never on the wire: "the connection dropped"
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011


_OPCODES = frozenset(int(op) for op in Opcode)


def is_valid_close_code(code: int) -> bool:
    """A code a peer may send (§7.4): the defined ones but 1004-1006 and
    1015, IANA's 1012-1014, and 3000-4999 for libraries and applications."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def websocket_accept(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2, step 5.4)."""
    digest = hashlib.sha1((key + WEBSOCKET_GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


# A 426 names the protocol to upgrade to (RFC 9110 §15.5.22), with "upgrade"
# in Connection (§7.8), and the WebSocket versions spoken (RFC 6455 §4.2.2).
_UPGRADE_FIELDS = (("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"))


def check_websocket_handshake(environ: dict, options: WebSocketOptions):
    """Check an opening handshake (RFC 6455 §4.2.1); return (accept, subprotocol).

    Raises HTTPError: 426 without "Upgrade: websocket" or with a version
    other than 13, 403 for an origin not allowed, 400 for anything else.
    """
    if "websocket" not in parse_tokens(environ.get("HTTP_UPGRADE", "")):
        raise HTTPError(426, "this is a WebSocket endpoint: send Upgrade: websocket", _UPGRADE_FIELDS)
    if environ["REQUEST_METHOD"] != "GET":
        raise HTTPError(400, "a WebSocket handshake is a GET, not %s" % environ["REQUEST_METHOD"])
    if environ["SERVER_PROTOCOL"] != "HTTP/1.1":
        raise HTTPError(400, "a WebSocket handshake needs HTTP/1.1")
    if "upgrade" not in parse_tokens(environ.get("HTTP_CONNECTION", "")):
        raise HTTPError(400, "a WebSocket handshake needs Connection: Upgrade")
    if environ.get("CONTENT_LENGTH", "0") != "0" or "HTTP_TRANSFER_ENCODING" in environ:
        raise HTTPError(400, "a WebSocket handshake has no body")
    if environ.get("HTTP_SEC_WEBSOCKET_VERSION") != "13":
        # §4.2.2: answer with the versions we speak.
        raise HTTPError(426, "Sec-WebSocket-Version %s is not supported (only 13)"
                        % _show(environ.get("HTTP_SEC_WEBSOCKET_VERSION", "")), _UPGRADE_FIELDS)
    key = environ.get("HTTP_SEC_WEBSOCKET_KEY", "")
    try:
        valid_key = len(base64.b64decode(key.encode("latin-1"), validate=True)) == 16
    except ValueError:
        valid_key = False
    if not valid_key:
        # §4.1: "a randomly selected 16-byte value that has been base64-encoded"
        raise HTTPError(400, "Sec-WebSocket-Key %s is not 16 bytes in base64" % _show(key))
    origin = environ.get("HTTP_ORIGIN")
    if origin is not None and not any(fnmatch.fnmatchcase(origin.lower(), pattern.lower())
                                      for pattern in options.allowed_origins):
        # §4.2.2: a server that checks origins answers others with a 403.
        raise HTTPError(403, "origin %s is not allowed on this WebSocket endpoint" % _show(origin))
    protocol = None
    offered = environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL")
    if offered:
        # §4.2.2 step 4 (/subprotocol/): the first of the client's protocols that we speak.
        for name in (p.strip(" \t") for p in offered.split(",")):
            if name in options.protocols:
                protocol = name
                break
    return websocket_accept(key), protocol


# RFC 6455 §9.1: Sec-WebSocket-Extensions = 1#extension, where
# extension = extension-token *( ";" extension-param ) and
# extension-param = token [ "=" (token | quoted-string) ], with optional
# whitespace around the separators (RFC 9110 §5.6.1, §5.6.6).
_TOKEN = "[%s]+" % _TCHAR.decode("ascii")
_EXTENSION_RE = re.compile(r'(%s)((?:[ \t]*;[ \t]*%s(?:[ \t]*=[ \t]*(?:%s|"(?:[^"\\]|\\.)*"))?)*)'
                           % (_TOKEN, _TOKEN, _TOKEN))
_EXTENSION_PARAM_RE = re.compile(r'[ \t]*;[ \t]*(%s)(?:[ \t]*=[ \t]*(?:(%s)|"((?:[^"\\]|\\.)*)"))?'
                                 % (_TOKEN, _TOKEN))
# RFC 7692 §7.1.2.1 and §7.1.2.2: "a decimal integer value without leading
# zeroes between 8 to 15, inclusive".
_WINDOW_BITS_RE = re.compile("[89]|1[0-5]")
#: RFC 7692 §7.2.1: a message's compressed data, before the sender strips
#: them, ends with these 4 bytes (an empty stored block); §7.2.2: the
#: receiver appends them again.
DEFLATE_TAIL = b"\x00\x00\xff\xff"


def parse_extension_offers(value: str) -> list:
    """The offers of a Sec-WebSocket-Extensions field (RFC 6455 §9.1), in order:
    ``[(name, [(param, value or None), ...]), ...]``, quoted values unquoted.

    Raises HTTPError 400 for a field that does not follow the grammar (RFC
    6455 §4.2.1: a handshake that does not match is answered with 400).
    """
    offers = []
    pos, end = 0, len(value)
    while pos < end:
        if value[pos] in " \t,":            # RFC 9110 §5.6.1: empty list elements are allowed
            pos += 1
            continue
        match = _EXTENSION_RE.match(value, pos)
        pos = match.end() if match else pos
        while pos < end and value[pos] in " \t":
            pos += 1
        if match is None or pos < end and value[pos] != ",":
            raise HTTPError(400, "Sec-WebSocket-Extensions %s is not a list of extensions with "
                            "parameters (RFC 6455 §9.1)" % _show(value))
        params = [(m.group(1), m.group(2) if m.group(3) is None else re.sub(r"\\(.)", r"\1", m.group(3)))
                  for m in _EXTENSION_PARAM_RE.finditer(match.group(2))]
        offers.append((match.group(1), params))
    return offers


class DeflateOptions(collections.namedtuple("DeflateOptions", (
        "request_no_context_takeover", "request_max_window_bits", "no_context_takeover",
        "max_window_bits", "memory_level"))):
    """A websocket path's "compression": {"deflate": {...}}, with Crossbar's keys.

    ``request_*`` is what we ask of the client's compressor (the window, in
    bits, or 0 to ask nothing); the others are our own compressor's settings.
    """


DeflateOptions.__new__.__defaults__ = (False, DEFLATE_REQUEST_MAX_WINDOW_BITS, False,
                                       DEFLATE_MAX_WINDOW_BITS, DEFLATE_MEMORY_LEVEL)


class DeflateParams(collections.namedtuple("DeflateParams", (
        "server_no_context_takeover", "client_no_context_takeover", "server_max_window_bits",
        "client_max_window_bits", "memory_level"))):
    """The permessage-deflate parameters agreed with one client (RFC 7692 §7.1):
    whether each side starts every message afresh, each side's window in bits,
    and our compressor's memLevel."""


def negotiate_permessage_deflate(value, options: DeflateOptions):
    """Accept the first acceptable permessage-deflate offer of a
    Sec-WebSocket-Extensions field ``value`` (RFC 7692 §5, §7.1).

    Returns (DeflateParams, the Sec-WebSocket-Extensions value to answer), or
    None when no offer is acceptable (the connection is then uncompressed).
    HTTPError 400 for a field that does not parse (parse_extension_offers).
    """
    for name, params in parse_extension_offers(value or ""):
        if name == "permessage-deflate":
            accepted = _accept_deflate_offer(params, options)
            if accepted is not None:
                return accepted
    return None


def _accept_deflate_offer(params: list, options: DeflateOptions):
    """One offer's parameters -> (DeflateParams, answer), or None to decline it.

    RFC 7692 §7: "A server MUST decline an extension negotiation offer for
    this extension if ... an extension parameter not defined for use in an
    offer ... an extension parameter with an invalid value ... multiple
    extension parameters with the same name ... the server doesn't support
    the offered configuration." Declining one offer leaves the next to try.
    """
    offer = dict(params)
    if len(offer) < len(params):
        return None                                     # a parameter named twice
    for name, value in offer.items():
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            valid = value is None                       # §7.1.1: these have no value
        elif name == "server_max_window_bits":
            valid = value is not None and _WINDOW_BITS_RE.fullmatch(value)     # §7.1.2.1
        elif name == "client_max_window_bits":
            valid = value is None or _WINDOW_BITS_RE.fullmatch(value)         # §7.1.2.2
        else:
            valid = False                               # not defined for an offer
        if not valid:
            return None
    # Our side. §7.1.1.1 and §7.1.2.1: a server honours the client's asking
    # for server_no_context_takeover or a smaller server window, and may
    # announce either even unasked, which lets the client's inflater hold less.
    server_no_takeover = options.no_context_takeover or "server_no_context_takeover" in offer
    # zlib (since 1.2.9) cannot deflate with a 256-byte window: a configured 8
    # works as 9, and an offer that insists on 8 is one we do not support.
    server_bits = max(options.max_window_bits, 9)
    if "server_max_window_bits" in offer:
        requested = int(offer["server_max_window_bits"])
        if requested < 9:
            return None
        server_bits = min(server_bits, requested)
    # The client's side. §7.1.1.2: we may always ask it not to take over
    # context; its offering client_no_context_takeover is a promise not to, so
    # we echo it and inflate each message afresh, holding no window between
    # messages. §7.1.2.2: its window may be limited only if the offer has
    # client_max_window_bits; without it the client is accepted with a window
    # of up to 15 bits (Crossbar, with a window to ask for, declines instead).
    client_no_takeover = (options.request_no_context_takeover
                          or "client_no_context_takeover" in offer)
    client_bits = 15
    answer_client_bits = None
    if "client_max_window_bits" in offer:
        if offer["client_max_window_bits"] is not None:
            client_bits = int(offer["client_max_window_bits"])
        if options.request_max_window_bits:
            client_bits = answer_client_bits = min(client_bits, options.request_max_window_bits)
    answer = ["permessage-deflate"]
    if server_no_takeover:
        answer.append("server_no_context_takeover")
    if client_no_takeover:
        answer.append("client_no_context_takeover")
    if server_bits < 15 or "server_max_window_bits" in offer:
        answer.append("server_max_window_bits=%d" % server_bits)
    if answer_client_bits is not None:
        answer.append("client_max_window_bits=%d" % answer_client_bits)
    return (DeflateParams(server_no_takeover, client_no_takeover, server_bits, client_bits,
                          options.memory_level), "; ".join(answer))


class FrameHeader:
    """A parsed frame header (RFC 6455 §5.2)."""

    __slots__ = ("fin", "opcode", "payload_len", "mask", "rsv1")

    def __init__(self, fin: bool, opcode: int, payload_len: int, mask, rsv1: bool = False):
        self.fin = fin
        self.opcode = opcode
        self.payload_len = payload_len
        self.mask = mask            # 4 bytes, or None if the frame is not masked
        self.rsv1 = rsv1            # RFC 7692 §6: the message is compressed

    def __repr__(self) -> str:
        return "FrameHeader(fin=%r, opcode=%r, payload_len=%r, mask=%r, rsv1=%r)" % (
            self.fin, self.opcode, self.payload_len, self.mask, self.rsv1)


def frame_header_size(first_two: bytes) -> int:
    """The size of a frame header, from its first two bytes."""
    length_code = first_two[1] & 0x7F
    size = 2 + (2 if length_code == 126 else 8 if length_code == 127 else 0)
    return size + 4 if first_two[1] & 0x80 else size


def parse_frame_header(header: bytes, max_payload: int = None, require_mask: bool = True,
                       compression: bool = False) -> FrameHeader:
    """Parse a complete frame header; WebSocketError for every violation of §5.

    ``compression``: permessage-deflate was negotiated, so RSV1 may mark the
    first frame of a compressed message (RFC 7692 §6).
    """
    b0, b1 = header[0], header[1]
    if b0 & 0x30 or b0 & 0x40 and not compression:
        raise WebSocketError(CloseCode.PROTOCOL_ERROR,
                             "reserved bits set with no extension negotiated (RFC 6455 §5.2)")
    opcode = b0 & 0x0F
    if opcode not in _OPCODES:
        raise WebSocketError(CloseCode.PROTOCOL_ERROR, "reserved opcode 0x%X (RFC 6455 §5.2)" % opcode)
    if b0 & 0x40 and (opcode == Opcode.CONTINUATION or opcode >= 0x8):
        # RFC 7692 §6: "An endpoint MUST NOT set the 'Per-Message Compressed'
        # bit of control frames and non-first fragments of a data message."
        raise WebSocketError(CloseCode.PROTOCOL_ERROR, "RSV1 set on a %s frame (RFC 7692 §6)"
                             % ("continuation" if opcode == Opcode.CONTINUATION else "control"))
    fin = bool(b0 & 0x80)
    length = b1 & 0x7F
    pos = 2
    if length == 126:
        length = int.from_bytes(header[2:4], "big")
        pos = 4
        if length < 126:
            raise WebSocketError(CloseCode.PROTOCOL_ERROR, "payload length %d not in its minimal "
                                 "form (RFC 6455 §5.2)" % length)
    elif length == 127:
        length = int.from_bytes(header[2:10], "big")
        pos = 10
        if length >> 63:
            raise WebSocketError(CloseCode.PROTOCOL_ERROR, "64-bit payload length with its most "
                                 "significant bit set (RFC 6455 §5.2)")
        if length < 65536:
            raise WebSocketError(CloseCode.PROTOCOL_ERROR, "payload length %d not in its minimal "
                                 "form (RFC 6455 §5.2)" % length)
    if opcode >= 0x8:
        if not fin:
            raise WebSocketError(CloseCode.PROTOCOL_ERROR, "fragmented control frame (RFC 6455 §5.5)")
        if length > 125:
            raise WebSocketError(CloseCode.PROTOCOL_ERROR, "control frame payload of %d bytes, over "
                                 "125 (RFC 6455 §5.5)" % length)
    if b1 & 0x80:
        mask = header[pos:pos + 4]
    elif require_mask:
        raise WebSocketError(CloseCode.PROTOCOL_ERROR, "unmasked frame from a client (RFC 6455 §5.1)")
    else:
        mask = None
    if max_payload is not None and length > max_payload:
        raise WebSocketError(CloseCode.MESSAGE_TOO_BIG, "frame of %d bytes, over the limit" % length)
    return FrameHeader(fin, opcode, length, mask, bool(b0 & 0x40))


def apply_mask(payload, mask: bytes) -> bytes:
    """XOR ``payload`` (bytes-like) with the 4-byte ``mask`` (RFC 6455 §5.3).

    Never a loop over bytes in Python (16 MiB would take seconds): each
    MASK_SLICE of the payload is XORed as one big integer with the mask
    repeated (the mask times _MASK_REPEAT, kept in _slice_keys). Three
    passes over the bytes in C (from_bytes, ^, to_bytes); the alternatives
    measured slower (see MASK_SLICE).
    """
    parts = mask_in_slices(payload, mask)
    return parts[0] if len(parts) == 1 else b"".join(parts)


#: 1 every 4 bytes over MASK_SLICE bytes, as an integer: a 4-byte mask times
#: this is the mask repeated over a slice -- one multiplication by a small
#: integer, 3 times cheaper than from_bytes() over the mask repeated (4 us
#: against 11 for 16 KiB). A client picks a fresh mask for every frame (§5.3),
#: so most keys are made once per frame.
_MASK_REPEAT = int.from_bytes(b"\x01\x00\x00\x00" * (MASK_SLICE // 4), "little")
#: mask -> its key (the mask times _MASK_REPEAT): a frame received in many
#: pieces (a 16 MiB one comes in hundreds) needs one for each of its at most
#: 4 rotations, not one per piece. (Bounded; races among threads only make a
#: key twice.)
_slice_keys = {}


def mask_in_slices(payload, mask: bytes) -> list:
    """apply_mask() in pieces: a list of bytes, one per MASK_SLICE, that a
    receiver gathers into its message as they come (no join of its own)."""
    n = len(payload)
    from_bytes = int.from_bytes
    if n < MASK_SLICE:
        if n == 0:
            return [b""]
        key = from_bytes((mask * (n // 4 + 1))[:n], "little")      # (cheaper for n bytes)
        return [(from_bytes(payload, "little") ^ key).to_bytes(n, "little")]
    key = _slice_keys.get(mask)
    if key is None:
        if len(_slice_keys) >= 64:
            _slice_keys.clear()
        key = _slice_keys[mask] = from_bytes(mask, "little") * _MASK_REPEAT
    view = memoryview(payload)
    parts = [(from_bytes(view[start:start + MASK_SLICE], "little") ^ key).to_bytes(MASK_SLICE, "little")
             for start in range(0, n - MASK_SLICE + 1, MASK_SLICE)]
    tail = n % MASK_SLICE
    if tail:
        parts.append((from_bytes(view[n - tail:], "little") ^ (key & ((1 << 8 * tail) - 1)))
                     .to_bytes(tail, "little"))
    return parts


def build_frame(opcode: int, payload: bytes = b"", fin: bool = True, mask: bytes = None,
                rsv1: bool = False) -> bytes:
    """Serialize a frame: unmasked as a server sends it, or masked with ``mask`` as a client does.
    ``rsv1`` marks the first frame of a compressed message (RFC 7692 §6)."""
    header = build_frame_header(opcode, len(payload), fin, bool(mask), rsv1)
    if mask:
        return header + mask + apply_mask(payload, mask)
    return header + payload


def build_frame_header(opcode: int, length: int, fin: bool = True, masked: bool = False,
                       rsv1: bool = False) -> bytes:
    """The 2 to 10 bytes before a frame's mask and payload (RFC 6455 §5.2)."""
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    mask_bit = 0x80 if masked else 0
    if length < 126:
        return bytes((b0, mask_bit | length))
    if length < 65536:
        return struct.pack("!BBH", b0, mask_bit | 126, length)
    return struct.pack("!BBQ", b0, mask_bit | 127, length)


def parse_frame(data: bytes, require_mask: bool = True, compression: bool = False):
    """(FrameHeader, unmasked payload, bytes used) from ``data``, or None if incomplete."""
    if len(data) < 2 or len(data) < frame_header_size(data):
        return None
    size = frame_header_size(data)
    header = parse_frame_header(data[:size], require_mask=require_mask, compression=compression)
    end = size + header.payload_len
    if len(data) < end:
        return None
    payload = data[size:end]
    if header.mask:
        payload = apply_mask(payload, header.mask)
    return header, payload, end


def build_close_payload(code: int = None, reason: str = "") -> bytes:
    """The payload of a Close frame (§5.5.1): a code and a UTF-8 reason, within 125 bytes."""
    if code is None:
        return b""
    encoded = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")   # whole characters
    return struct.pack("!H", code) + encoded


def parse_close_payload(payload: bytes):
    """(code, reason) of a received Close frame; code None if it had none (1005)."""
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise WebSocketError(CloseCode.PROTOCOL_ERROR, "close frame with a 1-byte payload (RFC 6455 §5.5.1)")
    code = int.from_bytes(payload[:2], "big")
    if not is_valid_close_code(code):
        raise WebSocketError(CloseCode.PROTOCOL_ERROR, "invalid close code %d (RFC 6455 §7.4)" % code)
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise WebSocketError(CloseCode.INVALID_DATA, "close reason is not UTF-8 (RFC 6455 §5.5.1)") from None
    return code, reason


def message_payload(message):
    """(opcode, payload) of a message: TEXT and UTF-8 for str, BINARY for bytes."""
    if isinstance(message, str):
        return Opcode.TEXT, message.encode("utf-8")
    if isinstance(message, (bytes, bytearray, memoryview)):
        return Opcode.BINARY, bytes(message)
    raise TypeError("a WebSocket message is str (text) or bytes (binary), not %s"
                    % type(message).__name__)


def build_message_frame(message) -> bytes:
    """One unfragmented, uncompressed frame carrying ``message``."""
    return build_frame(*message_payload(message))


class PerMessageDeflate:
    """The permessage-deflate codec of one connection (RFC 7692 §7.2), for
    the DeflateParams agreed in its handshake.

    ``compress(data)`` gives a message's payload; ``decompress(data, limit)``
    inflates a piece of one as it arrives, ``end=True`` with its last piece.
    With context takeover a side keeps its zlib object (and its window) from
    message to message; without, it makes one per message and drops it after,
    so an idle connection holds none. Either is made only when first needed.
    """

    def __init__(self, params: DeflateParams):
        self.params = params
        self._deflater = None
        self._inflater = None

    def compress(self, data: bytes) -> bytes:
        """A message's payload: raw DEFLATE (no zlib header: negative wbits),
        sync-flushed, without the 00 00 ff ff that ends it (§7.2.1)."""
        deflater = self._deflater
        if deflater is None:
            deflater = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED,
                                        -self.params.server_max_window_bits, self.params.memory_level)
        payload = deflater.compress(data) + deflater.flush(zlib.Z_SYNC_FLUSH)
        self._deflater = None if self.params.server_no_context_takeover else deflater
        return payload[:-4]         # a sync flush always ends with DEFLATE_TAIL

    def decompress(self, data: bytes, limit: int, end: bool = False):
        """Inflate a piece of a compressed message, yielding the bytes as they
        come (§7.2.2); with ``end``, the DEFLATE_TAIL is appended after it.

        WebSocketError 1009 once more than ``limit`` bytes would come out --
        zlib is asked for INFLATE_STEP bytes at a time, so that is all a bomb
        costs -- and 1002 for data that is not DEFLATE.
        """
        if self._inflater is None:
            self._inflater = self._new_inflater()
        for out in self._inflate(data, limit):
            limit -= len(out)
            yield out
        if end:
            yield from self._inflate(DEFLATE_TAIL, limit)
            if self.params.client_no_context_takeover:
                self._inflater = None

    def _new_inflater(self):
        # At least 9 bits: a client whose zlib refuses a 256-byte window
        # (since 1.2.9) compresses with 512 bytes even when 8 was agreed.
        return zlib.decompressobj(-max(self.params.client_max_window_bits, 9))

    def _inflate(self, data: bytes, limit: int):
        inflater = self._inflater
        while True:
            step = min(limit + 1, INFLATE_STEP)
            try:
                out = inflater.decompress(data, step)
            except zlib.error as exc:
                raise WebSocketError(CloseCode.PROTOCOL_ERROR, "compressed data is not DEFLATE "
                                     "(RFC 7692 §7.2.2): %s" % exc) from None
            if len(out) > limit:
                raise WebSocketError(CloseCode.MESSAGE_TOO_BIG, "message inflates past the limit")
            limit -= len(out)
            if out:
                yield out
            if inflater.eof:
                # A block with BFINAL set ended the DEFLATE stream (§7.2.3.4):
                # whatever follows it starts a new one.
                data = inflater.unused_data
                inflater = self._inflater = self._new_inflater()
                if not data:
                    return
            else:
                data = inflater.unconsumed_tail
                if len(out) < step:     # all input used, nothing held back
                    return


class WebSocketState(enum.Enum):
    """The life of a WebSocket as its protocol sees it (RFC 6455 §7): one state,
    where a handful of booleans would leave gaps between them."""
    OPEN = "open"           # messages both ways
    CLOSING = "closing"     # our Close is sent; the client's is awaited (§7.1.2)
    CLOSED = "closed"       # both Closes exchanged -- or the connection failed (§7.1.7)
                            # or dropped: nothing more is read, ours is the last frame


class WebSocketProtocol:
    """RFC 6455 (with RFC 7692) for the server side of one connection, without I/O.

    ``receive_data(data)`` takes bytes as they come off the socket, in pieces
    of any size, and returns ``(events, reply)``: the events completed, as
    ``(opcode, value)`` pairs -- ``(Opcode.TEXT, str)``, ``(Opcode.BINARY,
    bytes)``, ``(Opcode.PING, payload)``, ``(Opcode.PONG, payload)``,
    ``(Opcode.CLOSE, (code, reason))`` -- and the frames the protocol itself
    must send in answer (a Pong for a Ping, §5.5.2; the Close echoed, §5.5.1;
    a Close with the code of a violation, §7.1.7), b"" if none.
    ``build_message``, ``build_ping`` and ``build_close`` give the bytes of
    frames to send (None where the state forbids them). Whoever holds the
    socket moves the bytes; the caller serializes the calls (a lock), so
    that compression with context takeover sees messages in sending order.

    Messages are assembled as their bytes come, whatever their framing, inflated
    as their bytes arrive and validated as UTF-8 as they come (§8.1: fail
    fast), within max_frame_size, max_message_size (inflated) and
    MAX_MESSAGE_FRAGMENTS. A violation fails the connection: the Close with
    its code is the reply, and nothing the client sends after it is parsed.
    After our own Close (CLOSING) frames are still parsed, for the client's
    Close and its Pings, but data is dropped unassembled (§1.4: a closing
    endpoint discards what arrives). ``state`` says where the closing
    handshake is; ``close_code`` and ``close_reason`` how it ended (1005: the
    client's Close had no code; 1006: the TCP connection was lost).
    """

    def __init__(self, max_frame_size: int = MAX_MESSAGE_SIZE, max_message_size: int = MAX_MESSAGE_SIZE,
                 deflate: DeflateParams = None):
        self.max_frame_size = max_frame_size
        self.max_message_size = max_message_size
        self.codec = PerMessageDeflate(deflate) if deflate else None
        self.state = WebSocketState.OPEN
        self.close_code = None          # once not OPEN: the code received, or sent, or 1006
        self.close_reason = ""
        self.error = None               # the WebSocketError that failed the connection
        self._pending = b""             # the start of a frame header, until it is whole
        self._frame = None              # the header of the frame being received
        self._received = 0              # of its payload
        self._control = b""             # a control frame's payload (at most 125 bytes)
        self._opcode = None             # of the data message being received; None between
        # Its payload so far -- a list of the pieces of its first read, then
        # a BytesIO -- or None: being discarded.
        self._message = None
        self._size = 0                  # bytes in it
        self._fragments = 0
        self._compressed = False        # RFC 7692 §6: RSV1 on its first frame
        self._decoder = None            # incremental UTF-8 for a text message

    # -- receiving -----------------------------------------------------------------

    def receive_data(self, data: bytes):
        """Bytes received -> (events completed, reply bytes to send)."""
        events, reply = [], []
        if self.error is not None or self.state is WebSocketState.CLOSED:
            return events, b""          # §7.1.7: nothing is parsed after a failure
        if self._pending:
            data, self._pending = self._pending + data, b""
        pos, end = 0, len(data)
        try:
            while pos < end and self.state is not WebSocketState.CLOSED:
                frame = self._frame
                if frame is None:
                    size = frame_header_size(data[pos:pos + 2]) if end - pos >= 2 else 2
                    if end - pos < size:
                        self._pending = data[pos:]
                        break
                    frame = parse_frame_header(data[pos:pos + size], self.max_frame_size,
                                               compression=self.codec is not None)
                    pos += size
                    self._begin_frame(frame)
                else:
                    take = min(end - pos, frame.payload_len - self._received)
                    # A view, not a slice: apply_mask() reads it, nothing copies it.
                    piece = memoryview(data)[pos:pos + take] if take < end or pos else data
                    pos += take
                    pieces = (piece,)
                    if frame.mask:
                        turn = self._received % 4   # the mask goes on where the last piece stopped
                        mask = frame.mask
                        pieces = mask_in_slices(piece, mask[turn:] + mask[:turn] if turn else mask)
                    self._received += take
                    if frame.opcode >= Opcode.CLOSE:
                        self._control += b"".join(pieces)
                    elif self._message is not None:
                        self._add_data(pieces)
                if self._received == frame.payload_len:
                    self._frame = None
                    self._end_frame(frame, events, reply)
        except WebSocketError as exc:
            reply.append(self._fail(exc))
        return events, b"".join(reply)

    def _begin_frame(self, frame: FrameHeader):
        self._frame, self._received = frame, 0
        op = frame.opcode
        if op >= Opcode.CLOSE:          # control frames, between fragments too (§5.4)
            self._control = b""
            return
        if op == Opcode.CONTINUATION:
            if self._opcode is None:
                raise WebSocketError(CloseCode.PROTOCOL_ERROR,
                                     "continuation frame with no message to continue (§5.4)")
        elif self._opcode is not None:
            raise WebSocketError(CloseCode.PROTOCOL_ERROR, "new message inside a fragmented one (§5.4)")
        else:
            self._opcode, self._fragments, self._compressed = op, 0, frame.rsv1
            if self.state is WebSocketState.OPEN:
                self._message, self._size = [], 0
                self._decoder = codecs.getincrementaldecoder("utf-8")() if op == Opcode.TEXT else None
        self._fragments += 1
        if self._fragments > MAX_MESSAGE_FRAGMENTS:
            raise WebSocketError(CloseCode.MESSAGE_TOO_BIG, "message in more than %d fragments"
                                 % MAX_MESSAGE_FRAGMENTS)
        limit = self.max_message_size
        if (self._message is not None and not self._compressed
                and self._size + frame.payload_len > limit):
            raise WebSocketError(CloseCode.MESSAGE_TOO_BIG, "message over the limit of %d bytes" % limit)

    def _add_data(self, pieces, end: bool = False):
        """Pieces of a data message, as one read brought them: inflated if
        compressed, validated if text, so that a violation fails the
        connection as soon as it arrives, even mid-frame (§8.1)."""
        decoder = self._decoder
        if self._compressed:
            pieces = self.codec.decompress(b"".join(pieces) if len(pieces) > 1 else pieces[0],
                                           self.max_message_size - self._size, end)
        message = self._message
        if type(message) is list and message:
            # More than one read's (or frame's) pieces: the message is
            # gathered in a BytesIO from now on. Its bytes are copied once,
            # as they come, and getvalue() hands over its buffer without a
            # copy: no join of megabytes waits after the last byte, the
            # pieces do not pile up beside it (the peak is the message's
            # size, not twice it), and a message in thousands of fragments
            # costs no object each.
            kept, message = message, io.BytesIO()
            for piece in kept:
                message.write(piece)
            self._message = message
        for piece in pieces:
            if decoder is not None:
                try:
                    decoder.decode(piece)
                except UnicodeDecodeError as exc:
                    raise WebSocketError(CloseCode.INVALID_DATA, "text is not UTF-8: %s" % exc) from None
            if piece:
                if type(message) is list:
                    # (a message that comes in one read is joined once, at its end)
                    message.append(piece if type(piece) is bytes else bytes(piece))
                else:
                    message.write(piece)
                self._size += len(piece)

    def _end_frame(self, frame: FrameHeader, events: list, reply: list):
        op = frame.opcode
        if op == Opcode.PING:
            # §5.5.2: a Pong with the same payload, "unless it already
            # received a Close frame" -- after our own Close too: §5.5.1 bars
            # only *data* frames after a Close, and the client may be waiting
            # for this Pong to decide we are alive.
            reply.append(build_frame(Opcode.PONG, self._control))
            events.append((Opcode.PING, self._control))
        elif op == Opcode.PONG:
            events.append((Opcode.PONG, self._control))       # §5.5.3: solicited or not
        elif op == Opcode.CLOSE:
            code, reason = parse_close_payload(self._control)
            if self.state is WebSocketState.OPEN:
                self.close_code, self.close_reason = code or CloseCode.NO_STATUS, reason
                # Echo the code received (§5.5.1), or an empty Close if it had none.
                reply.append(build_frame(Opcode.CLOSE, build_close_payload(code)))
            self.state = WebSocketState.CLOSED
            self._opcode = self._message = self._decoder = None
            events.append((Opcode.CLOSE, (code, reason)))
        elif frame.fin:
            message, decoder = self._message, self._decoder
            if message is not None:
                if self._compressed:            # §7.2.2: the tail the sender stripped
                    self._add_data((b"",), end=True)
                    message = self._message
                if decoder is not None:
                    try:
                        decoder.decode(b"", True)
                    except UnicodeDecodeError as exc:
                        raise WebSocketError(CloseCode.INVALID_DATA, "text is not UTF-8: %s" % exc) from None
                if type(message) is list:
                    # Joined once, at its end; a message in one piece (one
                    # frame, one unmasking) is not copied at all.
                    payload = message[0] if len(message) == 1 else b"".join(message)
                else:
                    payload = message.getvalue()
                if decoder is not None:
                    # (validated as it came: this decoding cannot fail)
                    events.append((Opcode.TEXT, str(payload, "utf-8")))
                else:
                    events.append((Opcode.BINARY, payload))
            self._opcode = self._message = self._decoder = None

    def _fail(self, exc: WebSocketError) -> bytes:
        """A violation (§7.1.7): our Close with its code, unless ours is sent already."""
        self.error = exc
        self._opcode = self._message = self._decoder = None
        frame = b""
        if self.state is WebSocketState.OPEN:
            self.close_code, self.close_reason = exc.code, exc.reason
            frame = build_frame(Opcode.CLOSE, build_close_payload(exc.code, exc.reason))
        self.state = WebSocketState.CLOSED
        return frame

    def connection_lost(self):
        """The TCP connection ended or was cut: CLOSED, with 1006 if no Close said how."""
        self.state = WebSocketState.CLOSED
        self._opcode = self._message = self._decoder = None
        if self.close_code is None:
            self.close_code = CloseCode.ABNORMAL

    # -- sending -------------------------------------------------------------------

    def build_message(self, message):
        """A data frame for ``message`` (str: text, bytes: binary), compressed
        if agreed; None once our Close is sent (§5.5.1: no data after it)."""
        opcode, payload = message_payload(message)
        return self.build_data_frame(opcode, payload)

    def build_data_frame(self, opcode: int, payload: bytes, apart: bool = False):
        """The frame's bytes; with ``apart``, (header, payload) for a sender
        that gathers them in one sendmsg() instead of copying the payload."""
        if self.state is not WebSocketState.OPEN:
            return None
        if self.codec is not None:
            payload, rsv1 = self.codec.compress(payload), True
        else:
            rsv1 = False
        if apart:
            return build_frame_header(opcode, len(payload), rsv1=rsv1), payload
        return build_frame(opcode, payload, rsv1=rsv1)

    def build_ping(self, payload: bytes = b""):
        """A Ping (§5.5.2), while OPEN; None after."""
        return build_frame(Opcode.PING, payload) if self.state is WebSocketState.OPEN else None

    def build_close(self, code: int = CloseCode.NORMAL, reason: str = ""):
        """Start the closing handshake (§7.1.2): our Close, and CLOSING; None if it has begun."""
        if self.state is not WebSocketState.OPEN:
            return None
        self.state = WebSocketState.CLOSING
        self.close_code, self.close_reason = code, reason
        self._message = self._decoder = None        # a message being received is discarded
        return build_frame(Opcode.CLOSE, build_close_payload(code, reason))


class WebSocketOptions:
    """The "options" of a websocket path, with Crossbar's names and units (milliseconds)."""

    def __init__(self, protocols=(), allowed_origins=("*",), max_message_size=MAX_MESSAGE_SIZE,
                 max_frame_size=None, open_handshake_timeout=None,
                 close_handshake_timeout=CLOSE_HANDSHAKE_TIMEOUT * 1000,
                 auto_ping_interval=AUTO_PING_INTERVAL * 1000,
                 auto_ping_timeout=AUTO_PING_TIMEOUT * 1000, max_send_queue=MAX_SEND_QUEUE,
                 compression: DeflateOptions = None):
        self.protocols = list(protocols)
        self.allowed_origins = list(allowed_origins)
        self.max_message_size = max_message_size
        self.max_frame_size = max_frame_size or max_message_size
        self.open_handshake_timeout = open_handshake_timeout
        self.close_handshake_timeout = close_handshake_timeout / 1000.0
        self.auto_ping_interval = auto_ping_interval / 1000.0       # 0: no pings
        self.auto_ping_timeout = auto_ping_timeout / 1000.0
        self.max_send_queue = max_send_queue
        self.compression = compression      # None: permessage-deflate is declined


# What the server does with the TCP connection under a WebSocket; the
# protocol's own state is WebSocketState.
TCP_OPEN, TCP_SHUT, TCP_CUT = "open", "shut", "cut"


class WebSocket:
    """One WebSocket connection, as a handler sees it (README: WebSocket, "Handlers").

    ``receive()`` (the connection's thread only) returns the next message --
    str for text, bytes for binary -- or None once the connection is closed;
    iterating gives the messages until then. ``send(message)`` and
    ``close(code, reason)`` may be called from any thread. ``environ`` is
    the handshake request's WSGI environ, ``channel`` the path's Channel,
    ``protocol`` the subprotocol chosen, ``deflate`` the permessage-deflate
    parameters agreed (DeflateParams, or None: uncompressed), ``close_code``
    how it ended.

    Around its WebSocketProtocol (``proto``) it keeps the bytes to send, in
    order, under one lock, and the one rule for the TCP connection
    (``_closing_rule``). Two drivers move the bytes: ``run()``, a thread per
    connection (a handler's) reading with blocking
    receives and a writer thread sending; or the waiting room's selector
    (section 13), for a broadcast path's clients (ws:// and wss://), which costs no thread:
    there ``room`` is set, every send is non-blocking, and what the socket
    does not take at once waits in the queue until it turns writable.
    """

    def __init__(self, sock, reader: SocketReader, environ: dict, channel: Channel,
                 options: WebSocketOptions, protocol: str = None, send_timeout: float = CLIENT_TIMEOUT,
                 deflate: DeflateParams = None):
        self.sock = sock
        self.environ = environ
        self.channel = channel
        self.options = options
        self.protocol = protocol
        self.send_timeout = send_timeout
        self.deflate = deflate
        self.proto = WebSocketProtocol(options.max_frame_size, options.max_message_size, deflate)
        self._early = b""               # bytes that came with the handshake
        if reader is not None:
            self._early, reader.buffer = reader.buffer, b""
        self._cond = threading.Condition(threading.Lock())     # guards proto, _out, tcp
        self._out = collections.deque()     # frames to send, in order
        self._out_bytes = 0
        self._partial = False           # _out[0] is partly sent (the selector's driver)
        # TLS, non-blocking: a send that raised SSLWantWriteError must be
        # retried with the same bytes (OpenSSL has sent some of its records).
        self._retry = False
        self._sending = False           # the writer thread is sending what it took from _out
        self.tcp = TCP_OPEN             # TCP_SHUT: our FIN is sent; TCP_CUT: closed or lost
        # RFC 6455 §7.1.1 and §7.1.3: one deadline for the closing
        # handshake, from the moment the protocol leaves OPEN.
        self.close_deadline = None
        self._close_behind = False      # our Close is queued behind other frames
        self._last_heard = time.monotonic()
        self._ping_sent_at = None
        self._inbox = collections.deque()   # messages received, for receive()
        self._writer = None
        self._poller = None
        # The threaded driver, plain TCP with poll(): the socket is
        # non-blocking, so that a send() may go out from the sender's own
        # thread when nothing is queued (no wake-up of the writer thread, about
        # a dozen futex calls a message), and no recv() or send() pays the
        # poll() that CPython makes before each on a socket with a timeout.
        self._nonblocking = False
        self.room = None                # the WaitingRoom driving it, or None: run() does
        self.conn = None                # its HTTPConnection there
        self._attending = False         # the room has been asked to look at it
        self.events = 0                 # what the room's selector watches for it

    @property
    def closed(self) -> bool:
        return self.proto.state is not WebSocketState.OPEN or self.tcp != TCP_OPEN

    @property
    def close_code(self):
        return self.proto.close_code

    @property
    def close_reason(self) -> str:
        return self.proto.close_reason

    # -- both drivers: under the lock ----------------------------------------------

    def _feed(self, data: bytes) -> list:
        """Bytes received (b"": TCP ended) -> the messages they complete."""
        messages = []
        with self._cond:
            if not data:
                self._cut("the client closed the connection")
                return messages
            events, reply = self.proto.receive_data(data)
            self._last_heard = time.monotonic()
            if reply:
                self._push(reply)
            self._after_proto()
        for opcode, value in events:
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                messages.append(value)
            elif opcode == Opcode.PONG:
                self._ping_sent_at = None
        return messages

    def _after_proto(self):
        """Once the protocol leaves OPEN: the closing deadline starts, and whoever waits is told."""
        proto = self.proto
        if proto.state is not WebSocketState.OPEN and self.close_deadline is None:
            wait = self.options.close_handshake_timeout
            if self._out_bytes > MAX_CLOSE_FRAME or self._sending:
                # Our Close waits behind frames queued before it (a close()
                # after a big broadcast, a drop keeping a frame partly sent):
                # the client has send_timeout more to take them, as for any
                # send, and close_handshake_timeout once they are out
                # (_sent_all), not a second for megabytes.
                wait += self.send_timeout
                self._close_behind = True
            self.close_deadline = time.monotonic() + wait
            if proto.error is not None:
                log.debug("WebSocket on %s: %s (close %d)", self.channel.path, proto.error.reason,
                          proto.error.code)
        if proto.state is not WebSocketState.OPEN:
            # (Not while OPEN: waking the writer thread for every piece
            # received cost a dozen futex calls a message, for nothing.)
            self._cond.notify_all()
            if self.room is not None:
                self._attend()

    def _push(self, frame: bytes):
        """Queue a frame. In the selector, another thread (an app's broadcast)
        sends it at once if it is first in line; the room's own thread lets
        frames gather and sends each client's in one go when it settles it
        (WaitingRoom._settle): a burst of broadcasts costs a send per client,
        not one per client and message."""
        if self.tcp != TCP_OPEN:
            return
        self._out.append(frame)
        # (a tuple, (header, payload), only from the threaded driver: _send_data)
        self._out_bytes += len(frame) if type(frame) is not tuple else len(frame[0]) + len(frame[1])
        room = self.room
        if room is None:
            self._cond.notify_all()     # the writer thread
            return
        if len(self._out) == 1 and room._thread is not threading.current_thread():
            self._flush()
        if self._out:
            self._attend()              # to send, or to watch for writability

    def _attend(self):
        if not self._attending and self.room is not None:
            self._attending = True
            self.room.attend(self.conn)

    def _closing_rule(self, now: float):
        """RFC 6455 §7.1.1: "the underlying TCP connection, in most normal
        cases, SHOULD be closed first by the server". The one rule: once the
        protocol is CLOSED (both Closes exchanged, or it failed or dropped the
        client) and our last frame is out, shut TCP for writing -- the client
        reads its end and closes too, which ends it; at the closing deadline,
        whatever is left, cut it. Returns the deadline, or None if not closing."""
        if self.tcp == TCP_CUT or self.close_deadline is None:
            return None
        if (self.proto.state is WebSocketState.CLOSED and not self._out and not self._sending
                and self.tcp == TCP_OPEN):
            _shutdown_socket(self.sock, socket.SHUT_WR)
            self.tcp = TCP_SHUT
        if now >= self.close_deadline:
            self._cut("no end of the closing handshake within %gs" % self.options.close_handshake_timeout)
            return None
        return self.close_deadline

    def _on_timer(self, now: float):
        """The closing rule, and auto-ping: a Ping after auto_ping_interval of
        silence; no answer within auto_ping_timeout, the client is dropped.
        Returns when to look again, or None."""
        with self._cond:
            if self.proto.state is not WebSocketState.OPEN or self.tcp != TCP_OPEN:
                return self._closing_rule(now)
            interval = self.options.auto_ping_interval
            if not interval:
                return None
            if self._ping_sent_at is not None:
                due = max(self._ping_sent_at, self._last_heard) + self.options.auto_ping_timeout
                if now >= due:
                    self._cut("no pong within %gs" % self.options.auto_ping_timeout)
                    return None
                return due
            due = self._last_heard + interval
            if now < due:
                return due
            self._ping_sent_at = now
            self._push(self.proto.build_ping(os.urandom(4)))
            return now + self.options.auto_ping_timeout

    def _cut(self, why: str):
        """Close TCP now: what is queued is dropped (lock held)."""
        if self.tcp == TCP_CUT:
            return
        log.debug("WebSocket on %s: connection closed: %s", self.channel.path, why)
        self.tcp = TCP_CUT
        self.proto.connection_lost()
        self._out.clear()
        self._out_bytes = 0
        _shutdown_socket(self.sock, socket.SHUT_RDWR)
        self._cond.notify_all()
        if self.room is not None:
            self._attend()

    def _flush(self):
        """The selector's driver: send what the socket takes now, coalesced (lock held)."""
        out = self._out
        try:
            while out:
                if len(out) > 1 and len(out[0]) < SEND_SLICE and not self._retry:
                    parts, size = [], 0
                    while out and size < SEND_SLICE:
                        size += len(out[0])
                        parts.append(out.popleft())
                    out.appendleft(b"".join(parts))     # still whole frames
                head = out[0]
                sent = self.sock.send(head)
                self._out_bytes -= sent
                if sent < len(head):
                    out[0] = memoryview(head)[sent:]
                    self._partial = True
                    break
                out.popleft()
                self._partial = self._retry = False
        except (BlockingIOError, InterruptedError):
            pass
        except _SSL_WANT:
            self._partial = self._retry = True
        except OSError as exc:
            self._cut("send failed: %s" % exc)
        if not out:
            self._sent_all()
        self._cond.notify_all()         # room for senders waiting

    def _sent_all(self):
        """The queue is empty (lock held): if our Close was behind other
        frames, it is out now, and the closing handshake has its own timeout."""
        if self._close_behind:
            self._close_behind = False
            self.close_deadline = min(self.close_deadline,
                                      time.monotonic() + self.options.close_handshake_timeout)

    # -- sending: any thread ----------------------------------------------------

    def send(self, message):
        """Send a message (str: text, bytes: binary). Waits while this client's
        send queue is full (up to the send timeout, then the client is dropped).
        Raises ClientDisconnected if the connection is closed."""
        if not self._send_data(message_payload(message)):
            raise ClientDisconnected("the WebSocket is closed")

    def close(self, code: int = CloseCode.NORMAL, reason: str = ""):
        """Start the closing handshake (§7.1.2); a no-op if it has begun."""
        if not is_valid_close_code(code):
            raise ValueError("close code %r may not be sent (RFC 6455 §7.4)" % (code,))
        with self._cond:
            frame = self.proto.build_close(code, reason)
            if frame is not None:
                self._push(frame)
                self._after_proto()

    def _send_data(self, item, block: bool = True) -> bool:
        """Queue a data frame; False if the connection is closing or closed.

        ``item`` is a frame's bytes, or (opcode, payload) for a message built
        -- and compressed -- here, under the lock, so that a compressor with
        context takeover sees messages in the order they go out. A full queue
        (over max_send_queue bytes; one message always fits an empty queue)
        drops the client at once if ``block`` is false (a broadcast), else
        after waiting send_timeout seconds for room.
        """
        cond = self._cond
        limit = self.options.max_send_queue
        size = len(item) if isinstance(item, bytes) else len(item[1])
        with cond:
            if block:
                deadline = time.monotonic() + self.send_timeout
                while self._out and self._out_bytes + size > limit and not self.closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    cond.wait(remaining)
            if self.closed:
                return False
            if not self._out or self._out_bytes + size <= limit:
                if isinstance(item, bytes):
                    frame = item
                else:
                    # A large payload goes out with its header by one
                    # sendmsg(), on a plain TCP socket: no copy of it.
                    frame = self.proto.build_data_frame(*item, apart=self._nonblocking and size >= GATHER_MIN)
                if self._nonblocking and not self._out and not self._sending and self.tcp == TCP_OPEN:
                    frame = self._send_now(frame)
                if frame is not None:
                    self._push(frame)
                return True
            self._drop(CloseCode.POLICY_VIOLATION, "too slow: send queue over %d bytes" % limit)
        return False

    def _drop(self, code: int, reason: str):
        """Drop a client (lock held): what it has queued is discarded, but for a
        frame partly sent, and our Close goes next, where the socket takes it
        (§5.5.1); the closing rule cuts TCP after close_handshake_timeout."""
        log.info("dropping WebSocket client %s on %s: %s", self.environ.get("REMOTE_ADDR"),
                 self.channel.path, reason)
        keep = self._out[0] if self._partial and self._out else None
        self._out.clear()
        self._out_bytes = 0
        if keep is not None:
            self._out.append(keep)
            self._out_bytes = len(keep)
        frame = self.proto.build_close(code, reason)
        if frame is not None:
            self._push(frame)
        self._after_proto()

    # -- the threaded driver: run by the connection's thread --------------------

    def _send_now(self, frame):
        """Nothing queued, nothing being sent (lock held, non-blocking socket):
        send what the socket takes at once; return what it did not, to queue
        for the writer thread, or None."""
        views = list(frame) if type(frame) is tuple else [frame]
        try:
            sent = self.sock.sendmsg(views)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._cut("send failed: %s" % exc)
            return None
        while views and sent >= len(views[0]):
            sent -= len(views.pop(0))
        if not views:
            return None
        if sent:
            views[0] = memoryview(views[0])[sent:]
        return views[0] if len(views) == 1 else tuple(views)

    def _send_waiting(self, buffers: list):
        """The writer's send on a non-blocking socket: all of ``buffers``, in
        order, gathered; waiting up to send_timeout each time the socket
        takes nothing (as send_all()'s slices do on a blocking one)."""
        sock, poller = self.sock, None
        views = [memoryview(b) for b in buffers]
        while views:
            try:
                sent = sock.sendmsg(views[:GATHER_MAX_BUFFERS])
            except (BlockingIOError, InterruptedError):
                if poller is None:
                    poller = select.poll()
                    poller.register(sock, select.POLLOUT)
                if not poller.poll(self.send_timeout * 1000):
                    raise socket.timeout("no send possible within %gs" % self.send_timeout)
                continue
            while views and sent >= len(views[0]):
                sent -= len(views.pop(0))
            if sent:
                views[0] = views[0][sent:]

    def run(self, handler=None):
        """Serve the connection: ``handler(self)``, or broadcast every message."""
        self._poller = select.poll() if hasattr(select, "poll") else None
        if self._poller is not None:
            self._poller.register(self.sock, select.POLLIN)
        self._nonblocking = (self._poller is not None and type(self.sock) is socket.socket
                             and hasattr(socket.socket, "sendmsg"))
        if self._nonblocking:
            self.sock.setblocking(False)
        else:
            self.sock.settimeout(self.send_timeout)     # the writer's: each send may wait this long
        self._writer = threading.Thread(target=self._write_loop, name="wsgihost-ws-writer", daemon=True)
        self._writer.start()
        self.channel._add(self)
        try:
            if self._early:
                self._inbox.extend(self._feed(self._early))
                self._early = b""
            if handler is None:
                for message in self:
                    self.channel.broadcast(message)
            else:
                handler(self)
        except ClientDisconnected:
            pass
        except BaseException as exc:    # SystemExit from a handler is a handler error too
            log.error("error in the WebSocket handler of %s", self.channel.path, exc_info=True)
            self.close(CloseCode.INTERNAL_ERROR, "handler error")
            if isinstance(exc, KeyboardInterrupt):
                raise
        finally:
            self.channel._remove(self)
            self.close(CloseCode.NORMAL)
            self._finish()

    def _finish(self):
        """Read on until the closing rule ends TCP: the protocol answers the
        client's Pings and notes its Close, and discards the rest."""
        try:
            while self.tcp != TCP_CUT:
                data = self._read()
                if data is not None:
                    self._feed(data)
        finally:
            with self._cond:
                self._cut("done")
            self._writer.join(self.send_timeout + self.options.close_handshake_timeout)
            if self._nonblocking:
                try:
                    self.sock.settimeout(self.send_timeout)     # as the connection had it
                except OSError:
                    pass

    def __iter__(self):
        while True:
            message = self.receive()
            if message is None:
                return
            yield message

    def receive(self):
        """The next message (str or bytes), or None when the connection is closed."""
        inbox = self._inbox
        while not inbox:
            if self.proto.state is WebSocketState.CLOSED or self.tcp == TCP_CUT:
                return None
            data = self._read()
            if data is not None:
                inbox.extend(self._feed(data))
        return inbox.popleft()

    def _read(self):
        """Bytes from the client, b"" once TCP has ended, or None when a timer
        (a ping, the closing deadline) came first and was seen to."""
        due = self._on_timer(time.monotonic())
        if self.tcp == TCP_CUT:
            return b""
        sock = self.sock
        timeout = None if due is None else max(due - time.monotonic(), 0.0)
        try:
            if self._poller is not None:
                # poll(), not the socket's timeout, which is the writer's (send_timeout)
                if not getattr(sock, "pending", int)() and not self._poller.poll(
                        None if timeout is None else timeout * 1000 + 1):
                    return None
            else:                       # no poll(): the socket's timeout serves for both
                sock.settimeout(self.send_timeout if timeout is None else max(timeout, 0.001))
            # Up to MAX_RECV_SIZE: what has arrived of a large message comes
            # in one piece, which is one pass of apply_mask() and one bytes.
            return sock.recv(MAX_RECV_SIZE)
        except (socket.timeout, BlockingIOError, InterruptedError):
            return None
        except OSError:
            return b""

    def _write_loop(self):
        """The writer thread: send what is queued, coalesced, in order; keep to
        the closing rule; end once TCP is shut or cut."""
        cond = self._cond
        out = self._out
        while True:
            with cond:
                while not out:
                    due = self._closing_rule(time.monotonic())
                    if self.tcp != TCP_OPEN:
                        return
                    cond.wait(None if due is None else max(due - time.monotonic(), 0.001))
                batch, size = [], 0
                while out and size < SEND_SLICE:
                    item = out.popleft()
                    if type(item) is tuple:     # (header, payload): a whole frame still
                        batch += item
                        size += len(item[0]) + len(item[1])
                    else:
                        batch.append(item)
                        size += len(item)
                self._out_bytes -= size
                self._sending = True
                cond.notify_all()               # room for senders waiting
            try:
                if self._nonblocking:
                    self._send_waiting(batch)
                else:
                    send_all(self.sock, batch[0] if len(batch) == 1 else b"".join(batch))
            except OSError as exc:
                with cond:
                    self._sending = False
                    self._cut("send failed: %s" % exc)
                return
            with cond:
                self._sending = False
                if not out:
                    self._sent_all()


class Channel:
    """The clients of one websocket path: ``broadcast(message)`` reaches all of them.

    Thread-safe: a WSGI app (through ``environ["wsgihost.channels"]``), a
    handler or any thread may broadcast. Every client gets messages in one
    order; a client too slow to take them is dropped, never waited for.
    """

    def __init__(self, path: str):
        self.path = path
        self._clients = set()
        self._lock = threading.Lock()
        # Where broadcasts go first when the channel spans several processes
        # or machines (a RedisBridge, section 15): they come back through
        # deliver(), in the one order every node sees.
        self.relay = None

    def __len__(self) -> int:
        """The clients connected to this process (not those of other workers or nodes)."""
        return len(self._clients)

    @property
    def clients(self) -> list:
        with self._lock:
            return list(self._clients)

    def broadcast(self, message) -> int:
        """Send ``message`` (str or bytes) to every client; return how many are local.

        With a relay (Redis) that is connected, the message goes out through
        it and reaches the clients here when it comes back, as it reaches
        those of every other node; else it is delivered here at once.
        """
        relay = self.relay
        if relay is not None and relay.connected:
            if isinstance(message, (bytearray, memoryview)):
                message = bytes(message)
            if not isinstance(message, (str, bytes)):
                raise TypeError("a WebSocket message is str (text) or bytes (binary), not %s"
                                % type(message).__name__)
            relay.publish(self.path, message)
            return len(self._clients)
        return self.deliver(message)

    def deliver(self, message) -> int:
        """Send ``message`` (str or bytes) to every client of this process; return how many.

        Built once for all uncompressed clients, and compressed once for all
        those that agreed on server_no_context_takeover with the same window
        and memLevel: each of their messages starts from an empty history, so
        the same bytes serve them all. With context takeover each client's
        compressor has its own history -- the messages it was sent before --
        so each compresses the message for itself, under its lock, in the
        order the channel's lock gives. A client of the waiting room is sent
        what its socket takes at once; a dropped client leaves the channel.
        """
        opcode, payload = message_payload(message)
        frames = {}                     # None (uncompressed) or (bits, memLevel) -> frame
        with self._lock:
            clients = list(self._clients)
            for client in clients:
                params = client.deflate
                if params is None:
                    key = None
                elif params.server_no_context_takeover:
                    key = (params.server_max_window_bits, params.memory_level)
                else:
                    if not client._send_data((opcode, payload), block=False):
                        self._clients.discard(client)
                    continue
                frame = frames.get(key)
                if frame is None:
                    frame = frames[key] = (build_frame(opcode, payload) if key is None else build_frame(
                        opcode, PerMessageDeflate(params).compress(payload), rsv1=True))
                if not client._send_data(frame, block=False):
                    self._clients.discard(client)
        return len(clients)

    def close_all(self, code: int = CloseCode.GOING_AWAY, reason: str = ""):
        for client in self.clients:
            client.close(code, reason)

    def _add(self, client: WebSocket):
        with self._lock:
            self._clients.add(client)

    def _remove(self, client: WebSocket):
        with self._lock:
            self._clients.discard(client)


class WebSocketService:
    """A websocket path: the handshake, then a WebSocket run by ``handler``
    in the connection's thread, or, without a handler (a broadcast channel),
    by the waiting room's selector, holding no thread."""

    kind = "websocket"
    gate = None             # WebSockets have a limit of their own (max_websockets), no queue

    def __init__(self, path: str = "/", handler=None, options: WebSocketOptions = None,
                 label: str = "broadcast"):
        self.handler = handler
        self.options = options or WebSocketOptions()
        self.channel = Channel(path)
        self.label = label
        # Its handshakes are served by the waiting room's own thread (section
        # 13): a broadcast client needs no thread at any point.
        self.in_room = handler is None

    def serve(self, environ: dict, response: Response, conn: HTTPConnection):
        if conn.transport.stopping:
            response.send_simple(503, "the server is shutting down")
            return
        try:
            accept, protocol = check_websocket_handshake(environ, self.options)
            # A path without compression speaks no extension: it does not
            # read the field at all (RFC 6455 §9.1: nothing is agreed).
            agreed = self.options.compression and negotiate_permessage_deflate(
                environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS"), self.options.compression)
        except HTTPError as exc:
            if exc.status != 426:
                response.keep_alive = False
            response.send_simple(exc.status, exc.detail, exc.fields)
            return
        head = [b"HTTP/1.1 101 Switching Protocols", b"Upgrade: websocket", b"Connection: Upgrade",
                b"Sec-WebSocket-Accept: " + accept.encode("ascii")]
        if protocol:
            head.append(b"Sec-WebSocket-Protocol: " + protocol.encode("latin-1"))
        if agreed:
            head.append(b"Sec-WebSocket-Extensions: " + agreed[1].encode("ascii"))
        response.headers_set = ResponseHead(101, b"101 Switching Protocols", b"", None, True, True)
        response.headers_sent = True
        response.keep_alive = False             # after the WebSocket, the connection ends
        conn.sock.sendall(b"\r\n".join(head) + b"\r\n\r\n")
        selector_driven = self.handler is None and conn.transport.server is not None
        if selector_driven:
            # The waiting room takes it from here (Next.WEBSOCKET). It keeps
            # of the environ only what a log line names: a thousand clients
            # hold no thousand copies of the request.
            environ = {key: environ[key] for key in ("REMOTE_ADDR", "REMOTE_PORT", "PATH_INFO",
                                                       "SCRIPT_NAME") if key in environ}
        websocket = WebSocket(conn.sock, conn.reader, environ, self.channel, self.options, protocol,
                              conn.transport.limits.client_timeout, agreed[0] if agreed else None)
        if selector_driven:
            conn.websocket = websocket
        else:
            websocket.run(self.handler)

# =============================================================================
# 9. Static files, redirects and JSON values
# =============================================================================
# Crossbar's "static", "redirect" and "json" path services, each a plain WSGI
# app: any WSGI server can run them, and the config mounts them in a
# WSGIService like any app, so they get the same limits, access log and error
# handling. In: the environ. Out: status, headers and body -- a file's body is
# wsgi.file_wrapper around the open file, which this server sends with
# os.sendfile. Nothing here touches a socket; the parse_*/build_* functions
# and resolve_static_path are pure (the last one reads symlinks, no more).
#
# A static path answers GET and HEAD (else 405). A path that would leave the
# directory, or names a hidden file, gets 404 like a missing file: a 403
# would confirm that it exists. A directory: 301 to its URL with a final "/"
# (so that relative links in its page resolve inside it), then its
# index.html, else a listing if enabled, else 404 (or the default file).
# Preconditions are evaluated in RFC 9110 §13.2.2's order, then Range.

# resolve_static_path is the one gate between a URL and the file system. The
# attacks it stops (each one has its own test):
#   ".." segments, also sent as %2e%2e (PATH_INFO arrives decoded), and ".";
#   a "/" smuggled in as %2f: "a%2f..%2fb" is "a/../b" once decoded, and
#     every "/" of the decoded path splits segments, whatever its spelling;
#   "\" (Windows' separator, and what some proxies turn into "/") and NUL
#     (it would cut the path short in C): refused anywhere in the path;
#   an absolute or drive component ("C:x" on Windows): refused;
#   symlinks leading out: the path is resolved with os.path.realpath and must
#     stay under the (resolved) root -- symlinks within the root are fine;
#   hidden segments (".git", ".env", ".crossbar/config.json"): refused unless
#     allowed, since a "directory" of ".." would otherwise serve the node's
#     config and TLS keys;
#   text that is not latin-1 (a PEP 3333 server never sends it).
# Empty segments ("//") are skipped: "//etc/passwd" is root/etc/passwd.

def resolve_static_path(root: str, path_info: str, allow_hidden: bool = False):
    """The path that ``path_info`` names under ``root``, or None if it is refused.

    ``root`` is a directory's real path (os.path.realpath); ``path_info`` a
    WSGI PATH_INFO (percent-decoded, latin-1). The result is a real path,
    ``root`` or under it, which may or may not exist.
    """
    try:
        raw = path_info.encode("latin-1")
    except UnicodeEncodeError:
        return None
    if b"\x00" in raw or b"\\" in raw:
        return None
    try:
        decoded = os.fsdecode(raw)      # POSIX: never fails (surrogateescape)
    except UnicodeDecodeError:
        return None
    segments = []
    for segment in decoded.split("/"):
        if not segment:
            continue
        if segment in (".", "..") or (segment[0] == "." and not allow_hidden):
            return None
        if os.path.isabs(segment) or os.path.splitdrive(segment)[0]:
            return None
        segments.append(segment)
    path = os.path.realpath(os.path.join(root, *segments))
    if path != root and not path.startswith(root.rstrip(os.sep) + os.sep):
        return None
    return path


# RFC 9110 §14.1.1: ranges-specifier = range-unit "=" range-set, with
# range-set = 1#range-spec; int-range = first-pos "-" [ last-pos ] and
# suffix-range = "-" suffix-length.
_RANGE_SPEC_RE = re.compile(r"([0-9]*)-([0-9]*)")


def _position(digits: str) -> int:
    # More than 18 digits is past the end of any file; int() of thousands of
    # digits would cost time (and raise, past sys.get_int_max_str_digits()).
    return int(digits) if len(digits) <= 18 else 10 ** 18


def parse_range(value: str, size: int):
    """The byte range a Range field asks of ``size`` bytes: (first, last), inclusive.

    None means "ignore the field and send it all", which RFC 9110 §14.2
    allows: another unit, bad syntax, or several ranges -- wsgihost does not
    build multipart/byteranges, and the whole file with 200 is a valid
    answer to several ranges. Raises HTTPError(416) for a range that is
    valid but not satisfiable (§14.1.1: it starts past the end).
    """
    unit, eq, range_set = value.partition("=")
    if not eq or unit.lower() != "bytes":
        return None
    specs = [spec for spec in (s.strip(" \t") for s in range_set.split(",")) if spec]
    if len(specs) != 1:         # (RFC 9110 §5.6.1: empty list elements are allowed)
        return None
    match = _RANGE_SPEC_RE.fullmatch(specs[0])
    if match is None or specs[0] == "-":
        return None
    first, last = match.groups()
    if not first:                           # suffix-range: the last N bytes
        suffix = _position(last)
        if suffix == 0:
            raise HTTPError(416, "the range %s asks for no bytes" % _show(value))
        if size == 0:
            return None     # §14.1.1: satisfiable, but an empty file has no byte to show
        return max(0, size - suffix), size - 1
    first = _position(first)
    if last and _position(last) < first:
        return None                         # §14.1.1: invalid, so ignored
    if first >= size:
        raise HTTPError(416, "the range %s starts past the end of the %d bytes"
                        % (_show(value), size))
    return first, size - 1 if not last else min(_position(last), size - 1)


# RFC 9110 §5.6.7: HTTP-date = IMF-fixdate / obs-date, and a recipient accepts
# all three forms: IMF-fixdate, rfc850-date and asctime-date.
_HTTP_DATE_RES = tuple(re.compile(pattern) for pattern in (
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (?P<d>[0-9]{2}) (?P<m>[A-Z][a-z]{2}) (?P<y>[0-9]{4}) "
    r"(?P<H>[0-9]{2}):(?P<M>[0-9]{2}):(?P<S>[0-9]{2}) GMT",
    r"(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day, (?P<d>[0-9]{2})-(?P<m>[A-Z][a-z]{2})-"
    r"(?P<y>[0-9]{2}) (?P<H>[0-9]{2}):(?P<M>[0-9]{2}):(?P<S>[0-9]{2}) GMT",
    r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) (?P<m>[A-Z][a-z]{2}) (?P<d>[ 0-9][0-9]) "
    r"(?P<H>[0-9]{2}):(?P<M>[0-9]{2}):(?P<S>[0-9]{2}) (?P<y>[0-9]{4})",
))


def parse_http_date(value: str):
    """Seconds since the epoch for an HTTP-date (RFC 9110 §5.6.7), or None if it is not one."""
    for regex in _HTTP_DATE_RES:
        match = regex.fullmatch(value)
        if match is not None:
            break
    else:
        return None
    day, hour, minute, second = (int(match[k]) for k in "dHMS")
    if match["m"] not in _MONTHS or not (1 <= day <= 31 and hour < 24 and minute < 60
                                         and second < 61):
        return None
    year = int(match["y"])
    if len(match["y"]) == 2:
        # §5.6.7: a two-digit year that would be more than 50 years ahead is in the past.
        year += 2000 if 2000 + year <= time.gmtime().tm_year + 50 else 1900
    return calendar.timegm((year, _MONTHS.index(match["m"]), day, hour, minute, second))


# RFC 9110 §8.8.3: entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE. A member of an
# If-Match or If-None-Match list that does not parse matches nothing.
_ENTITY_TAG_RE = re.compile(r'(W/)?("[\x21\x23-\x7e\x80-\xff]*")')


def _etag_in(field_value: str, etag: str, weak: bool) -> bool:
    """Does an If-Match / If-None-Match value match ``etag`` (a strong tag)?

    RFC 9110 §8.8.3.2: the weak comparison ignores "W/"; the strong one
    never matches a weak tag. "*" matches any current representation.
    """
    if field_value == "*":
        return True
    return any(tag == etag and (weak or not w) for w, tag in _ENTITY_TAG_RE.findall(field_value))


def evaluate_preconditions(environ: dict, etag: str, last_modified: int, size: int):
    """How to answer a GET or HEAD of a file: (status, (first, last) or None).

    The status is 200, 206 (with the byte range), 304 or 412; an
    unsatisfiable range raises HTTPError(416). RFC 9110 §13.2.2's order: If-Match, or without it If-Unmodified-Since
    (false: 412); then If-None-Match, or without it If-Modified-Since
    (false: 304); then Range, honoured only while If-Range, if sent, matches.
    """
    get = environ.get
    if_match = get("HTTP_IF_MATCH")
    if if_match is not None:
        if not _etag_in(if_match, etag, weak=False):                # §13.1.1
            return 412, None
    else:
        date = parse_http_date(get("HTTP_IF_UNMODIFIED_SINCE", ""))
        if date is not None and last_modified > date:               # §13.1.4
            return 412, None
    if_none_match = get("HTTP_IF_NONE_MATCH")
    if if_none_match is not None:
        if _etag_in(if_none_match, etag, weak=True):                # §13.1.2
            return 304, None
    else:
        date = parse_http_date(get("HTTP_IF_MODIFIED_SINCE", ""))   # invalid: ignored
        if date is not None and last_modified <= date:              # §13.1.3
            return 304, None
    range_value = get("HTTP_RANGE")
    if range_value is None or environ["REQUEST_METHOD"] != "GET":
        return 200, None        # §14.2: range handling is defined for GET only
    if_range = get("HTTP_IF_RANGE")
    # §13.1.5: an entity-tag (it starts with a DQUOTE or W/) must match
    # strongly, so a weak one never does; a date must equal Last-Modified.
    if if_range is not None and if_range != etag and (
            if_range.startswith(('"', "W/")) or parse_http_date(if_range) != last_modified):
        return 200, None
    byte_range = parse_range(range_value, size)
    return (200, None) if byte_range is None else (206, byte_range)


def build_directory_listing(url_path: str, names: list) -> bytes:
    """An HTML page listing ``names`` (file names; a directory's ends with "/").

    ``url_path`` is the directory's SCRIPT_NAME + PATH_INFO (latin-1). Names
    are HTML-escaped as text and percent-encoded in links, so a file called
    ``<script>`` or ``a:b`` shows as itself and links to itself.
    """
    title = html.escape(url_path.encode("latin-1").decode("utf-8", "replace"))
    items = "".join('<li><a href="%s">%s</a></li>\n' % (
        html.escape(quote(os.fsencode(name), safe="/")),
        html.escape(os.fsencode(name).decode("utf-8", "replace"))) for name in names)
    return ('<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Index of %s</title></head>\n'
            '<body><h1>Index of %s</h1>\n<ul>\n%s</ul></body></html>\n'
            % (title, title, items)).encode("utf-8")


def _answer(environ: dict, start_response, code: int, text: str, headers=()) -> list:
    """A short plain-text answer (301, 404, 405...) from one of these apps."""
    body = plain_text_body(code, text)
    start_response("%d %s" % (code, _STATUS_PHRASES[code]),
                   [("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(body))), *headers])
    return [] if environ["REQUEST_METHOD"] == "HEAD" else [body]


def _open_static(path: str, flags: int) -> int:
    # O_NONBLOCK: opening a FIFO would otherwise wait for a writer forever
    # (reading a regular file ignores it); O_NOFOLLOW: a symlink put in place
    # after resolve_static_path looked is refused, not followed.
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))


class _FileSlice:
    """A file read no further than offset ``stop``: one byte range.

    It keeps fileno() and tell(), so this server still sends it with
    os.sendfile (from tell(), capped by Content-Length); a server that
    iterates over wsgi.file_wrapper reads no more than the range either.
    """

    def __init__(self, f, stop: int):
        self.file = f
        self.stop = stop
        self.fileno, self.tell, self.seek, self.close = f.fileno, f.tell, f.seek, f.close

    def read(self, size: int = -1) -> bytes:
        left = max(0, self.stop - self.file.tell())
        return self.file.read(left if size is None or size < 0 else min(size, left))


class StaticFiles:
    """Crossbar's "static" service as a WSGI app: the files under ``directory``.

    >>> app = StaticFiles("public", cache_timeout=None)     # runs under any WSGI server

    ``default_file`` (relative to the directory) is served with 200 for any
    path that names nothing -- what a single-page app's client-side routes
    need -- but never for a refused one. ``cache_timeout`` None sends no
    Cache-Control; 0 sends ``max-age=0`` (caches revalidate every time,
    cheaply, with the ETag). ``mime_types`` maps extensions (".svg") to
    media types, over the ``mimetypes`` module's.
    """

    def __init__(self, directory: str, *, enable_directory_listing: bool = False,
                 mime_types: dict = None, cache_timeout=STATIC_CACHE_TIMEOUT,
                 default_file: str = None, allow_hidden_files: bool = False):
        self.root = os.path.realpath(directory)
        if not os.path.isdir(self.root):
            raise ValueError("%s is not a directory" % self.root)
        self.listing = enable_directory_listing
        self.allow_hidden = allow_hidden_files
        self.mime_types = {"." + ext.lstrip(".").lower(): media_type
                           for ext, media_type in (mime_types or {}).items()}
        self.cache_control = (None if cache_timeout is None
                              else "max-age=%d, public" % cache_timeout)
        if not mimetypes.inited:
            mimetypes.init()    # now, not in the first requests' threads at once
        self.default_file = None
        if default_file is not None:
            self.default_file = resolve_static_path(
                self.root, "/" + os.fsencode(default_file).decode("latin-1"), True)
            if self.default_file is None or not os.path.isfile(self.default_file):
                raise ValueError('"%s" is not a file in %s' % (default_file, self.root))

    def __call__(self, environ: dict, start_response) -> list:
        if environ["REQUEST_METHOD"] not in ("GET", "HEAD"):
            return _answer(environ, start_response, 405, "a static path answers GET and HEAD only",
                           [("Allow", "GET, HEAD")])
        path_info = environ.get("PATH_INFO", "")
        path = resolve_static_path(self.root, path_info, self.allow_hidden)
        if path is None:
            return self._not_found(environ, start_response)
        if os.path.isdir(path):
            if not path_info.endswith("/"):
                return self._redirect_to_directory(environ, start_response)
            index = resolve_static_path(self.root, path_info + "index.html", self.allow_hidden)
            if index is not None and os.path.isfile(index):
                path = index
            elif self.listing:
                return self._send_listing(environ, start_response, path, path_info)
        elif path_info.endswith("/"):
            path = None         # "/a.txt/" asks for a directory, and a.txt is none
        result = None if path is None else self._send_file(environ, start_response, path)
        if result is None and self.default_file is not None:
            result = self._send_file(environ, start_response, self.default_file)
        return result if result is not None else self._not_found(environ, start_response)

    def _not_found(self, environ: dict, start_response) -> list:
        url_path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        return _answer(environ, start_response, 404, "nothing is served at %s" % _show(url_path, 200))

    def _redirect_to_directory(self, environ: dict, start_response) -> list:
        # Empty segments are dropped: "//evil.example" + "/" would be a
        # protocol-relative URL, an open redirect.
        rest = "/".join(segment for segment in environ.get("PATH_INFO", "").split("/") if segment)
        location = quote(environ.get("SCRIPT_NAME", "") + ("/" + rest if rest else "") + "/",
                         safe="/!$&'()*+,;=:@", encoding="latin-1")
        if environ.get("QUERY_STRING"):
            location += "?" + environ["QUERY_STRING"]
        return _answer(environ, start_response, 301, "see %s" % location, [("Location", location)])

    def _send_listing(self, environ: dict, start_response, directory: str, path_info: str) -> list:
        try:
            with os.scandir(directory) as entries:
                names = sorted(entry.name + "/" if entry.is_dir() else entry.name
                               for entry in entries
                               if self.allow_hidden or not entry.name.startswith("."))
        except OSError:
            return self._not_found(environ, start_response)
        if path_info != "/":
            names.insert(0, "../")
        body = build_directory_listing(environ.get("SCRIPT_NAME", "") + path_info, names)
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                  ("Content-Length", str(len(body)))])
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [body]

    def media_type(self, path: str) -> str:
        """The Content-Type of the file at ``path``, from its extension."""
        ext = os.path.splitext(path)[1].lower()
        media_type = self.mime_types.get(ext)
        if media_type is None:
            media_type, encoding = mimetypes.guess_type("x" + ext)
            if media_type is None or encoding is not None:
                # Unknown; or compressed (".gz"), when the type would be that of
                # the content once uncompressed: a download, as nginx has it.
                return "application/octet-stream"
        # JavaScript is text/ from Python 3.12 and application/ before: same charset.
        if ((media_type.startswith("text/") or media_type == "application/javascript")
                and "charset" not in media_type.lower()):
            media_type += "; charset=utf-8"
        return media_type

    def _send_file(self, environ: dict, start_response, path: str):
        """Answer with the regular file at ``path``; None, with nothing sent, if it is not one."""
        try:
            f = open(path, "rb", opener=_open_static)
        except OSError as exc:      # missing, a directory, unreadable, a symlink swapped in
            log.debug("static file %s: %s", path, exc)
            return None
        try:
            status = os.fstat(f.fileno())
            if not stat.S_ISREG(status.st_mode):    # a FIFO, a device, a socket
                f.close()
                return None
            size = status.st_size
            # RFC 9110 §8.8.2.1: Last-Modified is never later than now.
            last_modified = min(int(status.st_mtime), int(time.time()))
            etag = '"%x-%x"' % (status.st_mtime_ns, size)
            headers = [("ETag", etag)]
            if self.cache_control is not None:
                headers.append(("Cache-Control", self.cache_control))
            try:
                code, byte_range = evaluate_preconditions(environ, etag, last_modified, size)
            except HTTPError as exc:
                f.close()
                return _answer(environ, start_response, 416, exc.detail,
                               [("Content-Range", "bytes */%d" % size)])    # §15.5.17
            if code == 304:     # RFC 9110 §15.4.5: the 200's ETag and Cache-Control, no content
                f.close()
                start_response("304 Not Modified", headers)
                return []
            if code == 412:
                f.close()
                return _answer(environ, start_response, 412, "the file has changed")
            first, last = byte_range or (0, size - 1)
            headers += [("Last-Modified", format_http_date(last_modified)),
                        ("Content-Type", self.media_type(path)),
                        ("Content-Length", str(last - first + 1)), ("Accept-Ranges", "bytes")]
            if code == 206:
                headers.append(("Content-Range", "bytes %d-%d/%d" % (first, last, size)))
            start_response("200 OK" if code == 200 else "206 Partial Content", headers)
            if environ["REQUEST_METHOD"] == "HEAD" or first > last:
                f.close()
                return []
            f.seek(first)
            return environ.get("wsgi.file_wrapper", FileWrapper)(_FileSlice(f, last + 1))
        except BaseException:
            f.close()
            raise


class Redirect:
    """Crossbar's "redirect" service: every request gets ``status`` to ``url``.

    Every method is redirected (Crossbar: GET only); 307 and 308 keep the
    method and body, 301 and 302 let clients turn a POST into a GET.
    """

    def __init__(self, url: str, status: int = 302):
        self.status = "%d %s" % (status, _STATUS_PHRASES[status])
        self.url = url
        self.body = plain_text_body(status, "see %s" % url)

    def __call__(self, environ: dict, start_response) -> list:
        start_response(self.status, [("Location", self.url),
                                     ("Content-Type", "text/plain; charset=utf-8"),
                                     ("Content-Length", str(len(self.body)))])
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [self.body]


class JSONValue:
    """Crossbar's "json" service: GET returns ``value`` as application/json.

    The value is serialized once, as Crossbar does it: UTF-8, compact, or
    with ``prettify`` sorted and indented by 3.
    """

    def __init__(self, value, prettify: bool = False, discourage_caching: bool = False):
        if prettify:
            text = json.dumps(value, ensure_ascii=False, sort_keys=True, indent=3)
        else:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        # A lone surrogate (only an escape like "\ud800" makes one) cannot be UTF-8:
        # backslashreplace writes it back as that same JSON escape.
        self.body = text.encode("utf-8", "backslashreplace")
        self.headers = [("Content-Type", "application/json"),
                        ("Content-Length", str(len(self.body)))]
        if discourage_caching:
            self.headers.append(("Cache-Control", "no-store"))

    def __call__(self, environ: dict, start_response) -> list:
        method = environ["REQUEST_METHOD"]
        if method != "GET" and method != "HEAD":
            return _answer(environ, start_response, 405, "a json path answers GET and HEAD only",
                           [("Allow", "GET, HEAD")])
        start_response("200 OK", list(self.headers))
        return [] if method == "HEAD" else [self.body]


# =============================================================================
# 10. Path dispatch and app loading
# =============================================================================
# A web transport's "paths" is a tree: each key is one URL segment (or "/",
# the default for everything else) and each value a service, or a nested
# "path" node. A request path is matched segment by segment, exactly and
# case-sensitively; what matched becomes SCRIPT_NAME and the rest PATH_INFO,
# as in Crossbar (Twisted's resource traversal) and PEP 3333. Segments are
# cut on the raw path's "/" and percent-decoded after, as Twisted does, so an
# encoded "%2F" is never a separator.

class PathNode:
    """One level of the path tree: services by segment, and a default for "/"."""

    def __init__(self, children: dict = None, default=None):
        self.children = children or {}
        self.default = default

    def resolve(self, path: str):
        """(service, SCRIPT_NAME, PATH_INFO) for a raw path; service None: 404.

        ``path`` is still percent-encoded. It is cut into segments on its raw
        "/" and each segment decoded before it is looked up, as Twisted's
        ``Request.process`` does (``map(unquote, path[1:].split(b"/"))``), so
        ``/app%2Fx`` is the one segment "app/x" -- never the mount "app" --
        while ``/%61pp/x`` is "app" then "x". SCRIPT_NAME and PATH_INFO come
        out percent-decoded, latin-1, as PEP 3333 asks (an encoded "/" in
        PATH_INFO is then a "/" like any other: PEP 3333 cannot tell them apart).
        """
        node = self
        script_name = ""
        while path:                 # path is "" or starts with "/"
            end = path.find("/", 1)
            segment = decode_path(path[1:end] if end > 0 else path[1:])
            child = node.children.get(segment)
            if child is None:
                break
            script_name += "/" + segment
            path = path[end:] if end > 0 else ""
            if type(child) is not PathNode:
                return child, script_name, decode_path(path)
            node = child
        return node.default, script_name, decode_path(path)

    def services(self, prefix: str = ""):
        """(URL path, service) for every service in the tree, for start-up lines."""
        if self.default is not None:
            yield prefix + "/", self.default
        for segment, child in sorted(self.children.items()):
            if type(child) is PathNode:
                yield from child.services(prefix + "/" + segment)
            else:
                yield prefix + "/" + segment, child


class Gate:
    """At most ``slots`` requests in one service at once; the others wait in
    arrival order, holding no thread.

    The waiting room (section 13) admits a request whose head is complete: it
    takes a free slot and goes to a pool thread, or joins ``waiting`` and
    stays parked in the selector (where a client that leaves is noticed, and
    queue_timeout is kept). A finished request hands its slot straight to the
    oldest waiter, so waiting is FIFO: nobody is overtaken by a newcomer.
    A waiter whose client leaves is taken out at once, whatever its place.
    Not thread-safe by itself: the waiting room's lock guards every use.
    """

    __slots__ = ("slots", "free", "waiting")

    def __init__(self, slots: int):
        self.slots = slots
        self.free = slots
        self.waiting = collections.OrderedDict()   # HTTPConnection -> None, oldest first


class OwnAnswers:
    """The answers the server gives itself: 404 where nothing is mounted,
    and ``OPTIONS *`` (RFC 9110 §9.3.7), through a gate of their own so
    that a flood of them costs a few threads at most."""

    kind = "server"
    label = "server"

    def __init__(self, slots: int = 4):
        self.gate = Gate(slots)

    def serve(self, environ: dict, response: Response, conn: HTTPConnection):
        if environ["PATH_INFO"] == "*" and environ["REQUEST_URI"] == "*":
            response.send_simple(200, "", [("Allow", "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS")])
        else:
            response.send_simple(404, "nothing is served at %s"
                                 % _show(environ["REQUEST_URI"].partition("?")[0], 200))


class WSGIService:
    """A WSGI app on a path; at most ``maxthreads`` requests run in it at once.

    ``kind`` names it in the start-up line: "wsgi", or the static, redirect
    and json services (section 9), which are WSGI apps too.
    """

    def __init__(self, app, label: str, minthreads: int = 0, maxthreads: int = 20,
                 display_tracebacks: bool = False, kind: str = "wsgi"):
        self.app = app
        self.label = label
        self.kind = kind
        self.minthreads = minthreads
        self.maxthreads = maxthreads
        self.gate = Gate(maxthreads)
        self.display_tracebacks = display_tracebacks

    def serve(self, environ: dict, response: Response, conn: HTTPConnection):
        """Run the app for one request (its Gate slot held by the caller);
        every error is answered or closes the connection."""
        result = None
        body = response.body_input      # not environ["wsgi.input"]: middleware may wrap it
        try:
            result = self.app(environ, response.start_response)
            response.send_result(result)
        except ClientDisconnected:
            if response.client_gone or body.error is not None:
                raise
            self._fail(environ, response)
        except HTTPError as exc:
            if exc is not body.error:
                self._fail(environ, response)
            elif not response.headers_sent:     # a bad body the app let through: answer it
                response.keep_alive = False
                response.headers_set = None
                response.send_simple(exc.status, exc.detail)
        except BaseException as exc:    # SystemExit from an app is an app error too
            self._fail(environ, response)
            if isinstance(exc, KeyboardInterrupt):
                raise
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("error in close() of the iterable of %s", self.label)

    def _fail(self, environ: dict, response: Response):
        """An exception in the app: log it; 500 if nothing was sent, else close."""
        log.error("error in %s for %s %s", self.label, environ["REQUEST_METHOD"],
                  environ["REQUEST_URI"], exc_info=True)
        response.keep_alive = False
        if response.headers_sent or response.client_gone:
            return
        text = "the application raised an exception"
        if self.display_tracebacks:
            text += ":\n\n" + traceback.format_exc()
        response.headers_set = None
        response.chunked = response.no_body = False
        response.remaining = None
        response.send_simple(500, text)


def load_object(module_name: str, object_name: str, where: str = "", filename: str = "config"):
    """Import ``module_name`` and return its attribute ``object_name`` (dotted allowed).

    Raises ConfigError: 'cannot import module "m": ...', 'module "m" has no object "o"'.
    """
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(where, 'cannot import module "%s": %s (search path: %s)'
                          % (module_name, exc, sys.path), filename) from exc
    except Exception as exc:
        raise ConfigError(where, 'cannot import module "%s": %s: %s'
                          % (module_name, type(exc).__name__, exc), filename) from exc
    obj = module
    for part in object_name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(where, 'module "%s" has no object "%s"'
                              % (module_name, object_name), filename) from None
    return obj


# =============================================================================
# 11. Configuration
# =============================================================================
# In: a Crossbar.io node config (parsed JSON) and its node directory (CBDIR).
# Out: WebTransport objects, every app imported; or a ConfigError naming the
# file, the JSON path and the problem. Nothing is bound to a port here, so a
# bad config costs nothing and ``--check`` can run this alone.

#: The options of a web transport: name -> (default, kind). Those named in
#: _LIMIT_NAMES build the transport's Limits.
WEB_OPTIONS = {
    "access_log": (False, "bool"),
    "trusted_proxies": ([], "strings"),
    "display_tracebacks": (False, "bool"),
    "hsts": (False, "bool"),
    "hsts_max_age": (31536000, "size"),
    "client_timeout": (CLIENT_TIMEOUT, "seconds"),
    "max_request_line": (MAX_REQUEST_LINE, "size"),
    "max_header_line": (MAX_HEADER_LINE, "size"),
    "max_head_size": (MAX_HEAD_SIZE, "size"),
    "max_header_fields": (MAX_HEADER_FIELDS, "size"),
    "max_body_size": (MAX_BODY_SIZE, "size or null"),
    "body_buffer_size": (BODY_BUFFER_SIZE, "size or 0"),
    "max_connections": (MAX_CONNECTIONS, "size"),
    "max_websockets": (None, "size or null"),
    "max_connections_per_client": (None, "size or null"),
    "min_rate": (MIN_RATE, "size or 0"),
    "queue_timeout": (QUEUE_TIMEOUT, "seconds"),
    "shutdown_grace": (SHUTDOWN_GRACE, "seconds"),
}
_LIMIT_NAMES = ("client_timeout", "max_request_line", "max_header_line", "max_head_size",
                "max_header_fields", "max_body_size", "body_buffer_size", "max_connections",
                "max_websockets",
                "max_connections_per_client", "min_rate", "queue_timeout", "shutdown_grace")
#: The options of a websocket path, with Crossbar's names and units.
WEBSOCKET_OPTIONS = {
    "protocols": ([], "strings"),
    "allowed_origins": (["*"], "strings"),
    "max_message_size": (MAX_MESSAGE_SIZE, "size"),
    "max_frame_size": (None, "size or null"),
    "close_handshake_timeout": (CLOSE_HANDSHAKE_TIMEOUT * 1000, "ms"),
    "auto_ping_interval": (AUTO_PING_INTERVAL * 1000, "ms"),
    "auto_ping_timeout": (AUTO_PING_TIMEOUT * 1000, "ms > 0"),
    "max_send_queue": (MAX_SEND_QUEUE, "size"),
    "compression": (None, "compression"),
}
#: The keys of a websocket path's "compression": {"deflate": {...}}, as in
#: Crossbar: name -> (default, lowest, highest) (a bool's range is None).
DEFLATE_OPTIONS = {
    "request_no_context_takeover": (False, None, None),
    "request_max_window_bits": (DEFLATE_REQUEST_MAX_WINDOW_BITS, 8, 15),     # or 0
    "no_context_takeover": (False, None, None),
    "max_window_bits": (DEFLATE_MAX_WINDOW_BITS, 8, 15),
    "memory_level": (DEFLATE_MEMORY_LEVEL, 1, 9),
}
#: Crossbar's websocket options that have no meaning here: accepted, with a warning.
IGNORED_WEBSOCKET_OPTIONS = (
    "open_handshake_timeout", "require_websocket_subprotocol", "enable_webstatus",
    "fail_by_drop", "echo_close_codereason", "tcp_nodelay", "utf8_validation", "validate_utf8",
    "mask_server_frames", "require_masked_frames", "apply_mask", "auto_fragment_size",
    "enable_flash_policy", "flash_policy", "max_connections", "auto_ping_size",
    "auto_ping_restart_on_any_traffic", "show_server_version", "server")
#: The options of a static path: Crossbar's, and allow_hidden_files. Kind
#: None: checked by _build_static.
STATIC_OPTIONS = {
    "enable_directory_listing": (False, "bool"),
    "allow_hidden_files": (False, "bool"),
    "cache_timeout": (STATIC_CACHE_TIMEOUT, None),
    "default_file": (None, None),
    "mime_types": ({}, None),
}
#: The options of a json path (Crossbar's "allow_cross_origin" is ignored).
JSON_OPTIONS = {"prettify": (False, "bool"), "discourage_caching": (False, "bool")}
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
# RFC 9110 §8.3.1: media-type = type "/" subtype parameters.
MEDIA_TYPE_RE = re.compile(r'[{0}]+/[{0}]+(?:[ \t]*;[ \t]*[{0}]+=(?:[{0}]+|"[\t \x21\x23-\x5b\x5d-\x7e]*"))*'
                           .format(_TCHAR.decode("ascii")))
# A Location value: a URI-reference (RFC 3986) is printable ASCII, no space.
URL_RE = re.compile(r"[\x21-\x7e]+")
SERVICE_TYPES = ("json", "path", "redirect", "static", "websocket", "wsgi")
WAMP_SERVICE_TYPES = ("caller", "publisher", "webhook", "longpoll", "reverseproxy", "cgi",
                      "resource", "wap", "fileupload", "schemadoc", "upload",
                      "archive", "mqtt", "rawsocket", "websocket-reverseproxy")
#: The parts of a "universal" transport that carry WAMP, not HTTP, and over what.
UNIVERSAL_WAMP_PARTS = {"rawsocket": "RawSocket", "websocket": "WebSocket", "mqtt": "MQTT"}


class Limits:
    """The bounds one web transport puts on what a client can make it spend."""

    __slots__ = _LIMIT_NAMES

    def __init__(self, **values):
        for name in _LIMIT_NAMES:
            setattr(self, name, values.pop(name, WEB_OPTIONS[name][0]))
        if values:
            raise TypeError("unknown limits: %s" % ", ".join(sorted(values)))


DEFAULT_LIMITS = Limits()


class _Where:
    """A JSON path being validated, and the file it is in, for ConfigError."""

    def __init__(self, filename: str, path: str = ""):
        self.filename = filename
        self.path = path

    def __truediv__(self, key) -> _Where:
        if isinstance(key, int):
            return _Where(self.filename, "%s[%d]" % (self.path, key))
        if self.path.endswith("paths"):
            return _Where(self.filename, '%s["%s"]' % (self.path, key))
        return _Where(self.filename, "%s.%s" % (self.path, key) if self.path else key)

    def error(self, message: str) -> ConfigError:
        return ConfigError(self.path, message, self.filename)


def _type_name(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def _expect(where: _Where, value, kind, what: str):
    """``value`` if it is of ``kind``, else a ConfigError saying what was expected."""
    if kind is int:
        ok = type(value) is int
    elif kind is float:
        ok = type(value) in (int, float)
        if type(value) is float and not math.isfinite(value):
            # json.loads reads 1e400 as inf; inf and nan pass every "> 0" test
            # and then fail in settimeout() or wait forever.
            raise where.error("expected %s, got a number that is not finite (%s)" % (what, value))
    else:
        ok = type(value) is kind
    if not ok:
        raise where.error("expected %s, got %s %s" % (what, _type_name(value),
                                                      json.dumps(value)[:60]))
    return value


def _check_keys(where: _Where, obj: dict, allowed, ignored=()):
    for key in obj:
        if key in ignored:
            log.warning("%s: %s: %r is ignored by wsgihost", where.filename, where.path, key)
        elif key not in allowed:
            raise where.error('unknown key "%s" (expected one of: %s)'
                              % (key, ", ".join(sorted(allowed))))


def config_file(path: str) -> str:
    """The config file a path names: the path itself, or for a directory its
    ``.crossbar/config.json`` (where a plain run looks), else its ``config.json``."""
    if not os.path.isdir(path):
        return path
    nested = os.path.join(path, ".crossbar", "config.json")
    return nested if os.path.isfile(nested) else os.path.join(path, "config.json")


def load_config(path: str):
    """Read a config file (or a directory: see config_file).

    Returns (config dict, CBDIR). Raises ConfigError.
    """
    path = config_file(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError("", "cannot read the config: %s" % (exc.strerror or exc), path) from None
    except UnicodeDecodeError as exc:
        # RFC 8259 §8.1: JSON exchanged between systems is UTF-8.
        raise ConfigError("", "the config is not UTF-8 text: byte 0x%02X at offset %d"
                          % (exc.object[exc.start], exc.start), path) from None
    try:
        config = json.loads(text, parse_constant=_refuse_json_constant)
    except ValueError as exc:
        raise ConfigError("", "invalid JSON: %s" % exc, path) from None
    return config, os.path.dirname(os.path.abspath(path))


def _refuse_json_constant(name: str):
    # json.loads accepts NaN, Infinity and -Infinity, which JSON does not have
    # (RFC 8259 §6), and they would pass as timeouts.
    raise ValueError("%s is not a JSON number (RFC 8259 §6: no Infinity or NaN)" % name)


def build_transports(config: dict, cbdir: str = ".", filename: str = "config") -> list:
    """Validate a whole node config and import its apps; return its WebTransports."""
    root = _Where(filename)
    if type(config) is not dict:
        raise root.error("the config must be a JSON object, not %s" % _type_name(config))
    _check_keys(root, config, ("version", "controller", "workers", "$schema"))
    version = config.get("version")
    if version is not None and version != 2:
        raise (root / "version").error("unsupported config version %s (expected 2, or none)"
                                       % json.dumps(version))
    workers = _expect(root / "workers", config.get("workers"), list, "a list of workers")
    # First pass: every worker's pythonpath, so that imports see all of them.
    for i, worker in enumerate(workers):
        where = root / "workers" / i
        _expect(where, worker, dict, "a worker object")
        kind = worker.get("type")
        if kind != "router":
            raise (where / "type").error('worker type %s is not supported: wsgihost hosts only '
                                         '"router" workers\' web transports' % json.dumps(kind))
        options = _expect(where / "options", worker.get("options", {}), dict, "an object")
        pythonpath = _expect(where / "options" / "pythonpath", options.get("pythonpath", []),
                             list, "a list of directories")
        for j, entry in enumerate(pythonpath):
            _expect(where / "options" / "pythonpath" / j, entry, str, "a directory")
            directory = os.path.normpath(os.path.join(cbdir, entry))
            if not os.path.exists(directory):
                # A warning, not an error: Crossbar adds it all the same, and
                # an app that imports nothing from it still runs.
                log.warning("%s: %s: %s does not exist (%s, relative to the node directory %s)",
                            filename, (where / "options" / "pythonpath" / j).path, directory,
                            json.dumps(entry), cbdir)
        for entry in reversed(pythonpath):
            directory = os.path.normpath(os.path.join(cbdir, entry))
            if directory not in sys.path:
                sys.path.insert(0, directory)
    transports = []
    for i, worker in enumerate(workers):
        where = root / "workers" / i
        _check_keys(where, worker, ("type", "options", "transports", "id"),
                    ignored=("realms", "components", "connections", "manhole"))
        _check_keys(where / "options", worker.get("options", {}), ("pythonpath", "channels"),
                    ignored=("env", "title", "cpu_affinity", "reactor", "expose_controller",
                             "expose_shared", "shutdown"))
        channels = _parse_channels(where / "options" / "channels",
                                   worker.get("options", {}).get("channels"))
        for j, transport in enumerate(_expect(where / "transports", worker.get("transports", []),
                                              list, "a list of transports")):
            built = _build_web_transport(where / "transports" / j, transport, cbdir)
            if built is not None:
                built.redis = channels
                transports.append(built)
    if not transports:
        raise (root / "workers").error("no web transport to serve")
    return transports


def _parse_channels(where: _Where, channels):
    """A router worker's "channels" option: (Redis URL, prefix), or None.

    wsgihost's own (Crossbar routes WAMP, not channels):
    ``"channels": {"redis": "redis://[:password@]host:port/db", "prefix": "wsgihost"}``.
    """
    if channels is None:
        return None
    _expect(where, channels, dict, "an object")
    _check_keys(where, channels, ("redis", "prefix"))
    if "redis" not in channels:
        raise where.error('"channels" needs "redis" (a URL like redis://host:6379/0)')
    url = _expect(where / "redis", channels["redis"], str, "a redis:// or rediss:// URL")
    try:
        parse_redis_url(url)
    except ValueError as exc:
        raise (where / "redis").error(str(exc)) from None
    prefix = _expect(where / "prefix", channels.get("prefix", "wsgihost"), str, "a string")
    return url, prefix


def _build_web_transport(where: _Where, transport, cbdir: str) -> WebTransport:
    """A "web" transport, or the web part of a "universal" one (None if it has none)."""
    _expect(where, transport, dict, "a transport object")
    kind = transport.get("type")
    if kind == "universal":
        web, part = _universal_web_part(where, transport)
        if part is None:
            return None
    elif kind != "web":
        raise (where / "type").error('transport type %s is not supported: wsgihost serves only '
                                     '"web" transports' % json.dumps(kind))
    else:
        _check_keys(where, transport, ("type", "endpoint", "paths", "options", "id"))
        web, part = where, transport
    values = _check_options(web / "options", part.get("options", {}), WEB_OPTIONS,
                            ignored=("hixie76_aware", "cookie", "trust_x_forwarded_for"))
    _check_networks(web / "options" / "trusted_proxies", values["trusted_proxies"])
    endpoint = transport.get("endpoint")
    host, port, family, backlog, shared = _parse_endpoint(where / "endpoint", endpoint, cbdir)
    tls = None
    if isinstance(endpoint, dict) and "tls" in endpoint:
        tls = build_tls_context(where / "endpoint" / "tls", endpoint["tls"], cbdir)
    elif values["hsts"]:
        log.warning("%s: %s: hsts is ignored: it applies to TLS endpoints only",
                    where.filename, (web / "options").path)
    paths = _expect(web / "paths", part.get("paths"), dict, "an object of paths")
    root = _build_path_node(web / "paths", paths, values["display_tracebacks"], cbdir)
    limits = Limits(**{name: values[name] for name in _LIMIT_NAMES})
    return WebTransport(root, host, port, family=family, backlog=backlog, shared=shared,
                        limits=limits, access_log=values["access_log"], where=where.path,
                        tls=tls, hsts_max_age=values["hsts_max_age"] if values["hsts"] else None,
                        trusted_proxies=values["trusted_proxies"])


def _check_networks(where: _Where, networks: list):
    for i, network in enumerate(networks):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise (where / i).error("%s is not an address or a CIDR range (e.g. 10.0.0.0/8, ::1)"
                                    % json.dumps(network)) from None


def _universal_web_part(where: _Where, transport: dict):
    """Crossbar's "universal" transport: one endpoint whose connections are told
    apart by their first bytes (what ``crossbar init`` wrote from 2016 to 2019).

    Returns (its JSON path, its "web" part), or (None, None) when it has none.
    wsgihost serves the web part; WAMP over RawSocket, WebSocket or MQTT needs
    a WAMP router, so those parts get a warning each and are not served.
    """
    _check_keys(where, transport, ("type", "endpoint", "id", "web", *UNIVERSAL_WAMP_PARTS))
    for part, carrier in UNIVERSAL_WAMP_PARTS.items():
        if part in transport:
            log.warning('%s: %s: not served: WAMP over %s needs a WAMP router, which wsgihost '
                        'does not provide (the "web" part is served)', where.filename,
                        (where / part).path, carrier)
    if "web" not in transport:
        log.warning('%s: %s: a universal transport without a "web" part: nothing to serve',
                    where.filename, where.path)
        return None, None
    web = _expect(where / "web", transport["web"], dict, 'an object with "paths"')
    _check_keys(where / "web", web, ("paths", "options"))
    return where / "web", web


def _check_options(where: _Where, options, schema: dict, ignored=()) -> dict:
    """Validate an "options" object against ``schema``; return every option's value."""
    _expect(where, options, dict, "an object")
    _check_keys(where, options, schema, ignored)
    values = {}
    for name, (default, kind) in schema.items():
        value = options.get(name, default)
        w = where / name
        if kind == "bool":
            _expect(w, value, bool, "true or false")
        elif kind == "seconds":
            if _expect(w, value, float, "a number of seconds") <= 0:
                raise w.error("must be more than 0, got %s" % value)
            if value > MAX_TIMEOUT:
                raise w.error("must be at most %d seconds (a year), got %s" % (MAX_TIMEOUT, value))
        elif kind in ("ms", "ms > 0"):
            _expect(w, value, float, "a number of milliseconds")
            if value < 0 or value == 0 and kind == "ms > 0":
                raise w.error("must be %s, got %s" % ("0 or more" if kind == "ms" else
                                                      "more than 0", value))
            if value > MAX_TIMEOUT * 1000:
                raise w.error("must be at most %d milliseconds (a year), got %s"
                              % (MAX_TIMEOUT * 1000, value))
        elif kind == "strings":
            _expect(w, value, list, "a list of strings")
            for i, item in enumerate(value):
                _expect(w / i, item, str, "a string")
        elif kind is None:
            pass                # the caller checks it
        elif kind == "size or 0":
            if _expect(w, value, int, "a number of bytes") < 0:
                raise w.error("must be 0 or more, got %d" % value)
        elif kind == "compression":
            value = _build_compression(w, value)
        elif value is not None or kind == "size":
            if _expect(w, value, int, "a positive integer" + (" or null" if kind != "size"
                                                              else "")) < 1:
                raise w.error("must be at least 1, got %d" % value)
        values[name] = value
    return values


def _parse_endpoint(where: _Where, endpoint, cbdir: str = "."):
    _expect(where, endpoint, dict, "an endpoint object")
    kind = endpoint.get("type")
    if kind == "unix":
        return _parse_unix_endpoint(where, endpoint, cbdir)
    if kind != "tcp":
        raise (where / "type").error('endpoint type %s is not supported (expected "tcp" or '
                                     '"unix")' % json.dumps(kind))
    _check_keys(where, endpoint, ("type", "port", "interface", "backlog", "version", "shared",
                                  "tls"), ignored=("user_timeout",))
    port = endpoint.get("port")
    if isinstance(port, str) and port.startswith("$"):
        name = port[1:]
        if name not in os.environ:
            raise (where / "port").error("environment variable %s is not set" % name)
        value = os.environ[name]
        # [0-9], not str.isdigit(): "²" is a digit to isdigit() but not to int().
        if re.fullmatch(r"[0-9]{1,5}", value) is None:
            raise (where / "port").error("environment variable %s is %r, not a port number"
                                         % (name, value))
        port = int(value)
    else:
        _expect(where / "port", port, int, 'a port number or "$ENVVAR"')
    if not 0 <= port <= 65535:
        raise (where / "port").error("port %d out of range (0-65535)" % port)
    interface = _expect(where / "interface", endpoint.get("interface", ""), str, "an address")
    backlog = _expect(where / "backlog", endpoint.get("backlog", LISTEN_BACKLOG), int, "an integer")
    if not 1 <= backlog <= MAX_LISTEN_BACKLOG:       # refused, not clamped: see the constant
        raise (where / "backlog").error("must be 1 to %d, got %d" % (MAX_LISTEN_BACKLOG, backlog))
    family = _address_family(where, interface, endpoint.get("version"))
    shared = _expect(where / "shared", endpoint.get("shared", False), bool, "true or false")
    return interface, port, family, backlog, shared


def _address_family(where: _Where, interface: str, version=None):
    """AF_INET or AF_INET6 for an endpoint: its "version", else its interface's.

    An IPv6 address as the interface ("::1") means IPv6 without "version": 6;
    a "version" that contradicts the interface's address is an error. A host
    name, or "" (all interfaces), is IPv4 unless "version" says 6.
    """
    try:
        address = ipaddress.ip_address(interface)
    except ValueError:
        address = None
    if version is None:
        version = address.version if address is not None else 4
    elif version not in (4, 6) or type(version) is not int:
        raise (where / "version").error("expected 4 or 6, got %s" % json.dumps(version))
    elif address is not None and address.version != version:
        raise (where / "version").error('is %d, but the interface "%s" is an IPv%d address'
                                        % (version, interface, address.version))
    return socket.AF_INET6 if version == 6 else socket.AF_INET


def _parse_unix_endpoint(where: _Where, endpoint: dict, cbdir: str):
    """(socket file path, 0, AF_UNIX, backlog, False); the path is relative to CBDIR."""
    if not hasattr(socket, "AF_UNIX"):
        raise (where / "type").error("unix sockets are not available on this platform")
    _check_keys(where, endpoint, ("type", "path", "backlog"))
    if "path" not in endpoint:
        raise where.error('a "unix" endpoint needs "path" (the socket file, relative to the '
                          'node directory)')
    given = _expect(where / "path", endpoint["path"], str, "a file path")
    if not given:
        raise (where / "path").error("expected a file path, got an empty string")
    backlog = _expect(where / "backlog", endpoint.get("backlog", LISTEN_BACKLOG), int, "an integer")
    if backlog < 1:
        raise (where / "backlog").error("must be at least 1, got %d" % backlog)
    return os.path.abspath(os.path.join(cbdir, given)), 0, socket.AF_UNIX, backlog, False


_PATH_KEY_RE = re.compile(r"[a-z0-9A-Z_\-]+|/")     # Crossbar's rule for path keys


def _build_path_node(where: _Where, paths: dict, display_tracebacks: bool,
                     cbdir: str = ".") -> PathNode:
    node = PathNode()
    for key, service in paths.items():
        w = where / key
        if _PATH_KEY_RE.fullmatch(key) is None:
            raise w.error("invalid path %s: a key is \"/\" or one URL segment of letters, digits, "
                          "\"_\" and \"-\"" % json.dumps(key))
        if type(service) is dict and service.get("type") == "nodeinfo":
            log.warning('%s: %s: not served: "nodeinfo" is Crossbar\'s page about its own node',
                        w.filename, w.path)
            continue
        built = _build_service(w, service, display_tracebacks, cbdir)
        if key == "/":
            if type(built) is PathNode:
                # "/" takes what no segment matched; it is one service, never a tree.
                raise w.error('"/" must be a service, not a nested path')
            node.default = built
        else:
            node.children[key] = built
    return node


def _build_service(where: _Where, service, display_tracebacks: bool, cbdir: str = "."):
    _expect(where, service, dict, "a service object")
    kind = service.get("type")
    if kind in WAMP_SERVICE_TYPES:
        raise (where / "type").error('type "%s" needs a WAMP router, which wsgihost does not '
                                     'provide' % kind)
    if kind not in SERVICE_TYPES:
        raise where.error("unknown type %s (expected one of: %s)"
                          % (json.dumps(kind), ", ".join(SERVICE_TYPES)))
    if kind in ("static", "redirect", "json"):
        build = {"static": _build_static, "redirect": _build_redirect, "json": _build_json}[kind]
        app, label = build(where, service, cbdir)
        return WSGIService(app, label, 0, BUILTIN_SERVICE_THREADS, display_tracebacks, kind=kind)
    if kind == "path":
        _check_keys(where, service, ("type", "paths"))
        paths = _expect(where / "paths", service.get("paths"), dict, "an object of paths")
        return _build_path_node(where / "paths", paths, display_tracebacks, cbdir)
    if kind == "websocket":
        _check_keys(where, service, ("type", "module", "object", "options"),
                    ignored=("serializers", "auth", "cookie", "debug", "url"))
        values = _check_options(where / "options", service.get("options", {}), WEBSOCKET_OPTIONS,
                                ignored=IGNORED_WEBSOCKET_OPTIONS)
        handler, label = None, "broadcast"
        if "module" in service or "object" in service:
            handler = _load_app(where, service, "handler")
            label = "%s:%s" % (service["module"], service["object"])
        return WebSocketService(handler=handler, options=WebSocketOptions(**values), label=label)
    _check_keys(where, service, ("type", "module", "object", "minthreads", "maxthreads"))
    app = _load_app(where, service, "app")
    minthreads = _expect(where / "minthreads", service.get("minthreads", 0), int, "an integer")
    maxthreads = _expect(where / "maxthreads", service.get("maxthreads", 20), int, "an integer")
    if minthreads < 0:
        raise (where / "minthreads").error("must be 0 or more, got %d" % minthreads)
    if maxthreads < 1:
        raise (where / "maxthreads").error("must be at least 1, got %d" % maxthreads)
    if minthreads > maxthreads:
        raise where.error("minthreads (%d) must not exceed maxthreads (%d)" % (minthreads, maxthreads))
    label = "%s:%s" % (service["module"], service["object"])
    return WSGIService(app, label, minthreads, maxthreads, display_tracebacks)


def _build_static(where: _Where, service: dict, cbdir: str):
    """A "static" service's StaticFiles app and label; relative paths from CBDIR."""
    _check_keys(where, service, ("type", "directory", "package", "resource", "options"))
    if "directory" in service:
        if "package" in service or "resource" in service:
            raise where.error('give "directory", or "package" and "resource", not both')
        given = _expect(where / "directory", service["directory"], str, "a directory")
        directory = os.path.abspath(os.path.join(cbdir, given))
        if not os.path.isdir(directory):
            raise (where / "directory").error('"%s": no such directory (%s)' % (given, directory))
    elif "package" in service and "resource" in service:
        package = _expect(where / "package", service["package"], str, "a package name")
        resource = _expect(where / "resource", service["resource"], str, "a folder of the package")
        load_object(package, "__name__", where.path, where.filename)     # import it
        module = sys.modules[package]
        folders = list(getattr(module, "__path__", None) or
                       [os.path.dirname(getattr(module, "__file__", None) or "")])
        for folder in folders:
            directory = os.path.join(folder, resource)
            if os.path.isdir(directory):
                break
        else:
            raise (where / "resource").error('package "%s" has no folder "%s" (looked in: %s)'
                                             % (package, resource, ", ".join(folders)))
    else:
        raise where.error('a "static" service needs "directory", or "package" and "resource"')
    w = where / "options"
    values = _check_options(w, service.get("options", {}), STATIC_OPTIONS)
    timeout = values["cache_timeout"]
    if timeout is not None and _expect(w / "cache_timeout", timeout, int,
                                       "a whole number of seconds or null") < 0:
        raise (w / "cache_timeout").error("must be 0 or more, got %d" % timeout)
    mime_types = _expect(w / "mime_types", values["mime_types"], dict,
                         'an object like {".svg": "image/svg+xml"}')
    for ext, media_type in mime_types.items():
        if type(media_type) is not str or MEDIA_TYPE_RE.fullmatch(media_type) is None:
            raise (w / "mime_types").error('%s: expected a media type like "image/svg+xml", got %s'
                                           % (json.dumps(ext), json.dumps(media_type)[:60]))
    if values["default_file"] is not None:
        _expect(w / "default_file", values["default_file"], str, "a file name or null")
    try:
        app = StaticFiles(directory, enable_directory_listing=values["enable_directory_listing"],
                          mime_types=mime_types, cache_timeout=timeout,
                          default_file=values["default_file"],
                          allow_hidden_files=values["allow_hidden_files"])
    except ValueError as exc:       # only default_file is left to fail
        raise (w / "default_file").error(str(exc)) from None
    return app, "static " + app.root


def _build_redirect(where: _Where, service: dict, cbdir: str):
    _check_keys(where, service, ("type", "url", "status"))
    if "url" not in service:
        raise where.error('a "redirect" service needs "url" (where to send the client)')
    url = _expect(where / "url", service["url"], str, "a URL")
    if URL_RE.fullmatch(url) is None:
        raise (where / "url").error("invalid URL %s: expected printable ASCII without spaces "
                                    "(percent-encode the rest)" % json.dumps(url)[:80])
    status = service.get("status", 302)
    if type(status) is not int or status not in REDIRECT_STATUSES:
        raise (where / "status").error("expected one of 301, 302, 303, 307, 308, got %s"
                                       % json.dumps(status)[:60])
    return Redirect(url, status), "redirect " + url


def _build_json(where: _Where, service: dict, cbdir: str):
    _check_keys(where, service, ("type", "value", "options"))
    if "value" not in service:
        raise where.error('a "json" service needs "value" (the JSON value to serve)')
    values = _check_options(where / "options", service.get("options", {}), JSON_OPTIONS,
                            ignored=("allow_cross_origin",))
    return JSONValue(service["value"], values["prettify"], values["discourage_caching"]), "json"


def _build_compression(where: _Where, compression):
    """A websocket path's "compression" option: DeflateOptions, or None (off).

    Crossbar's meaning: absent, or without "deflate", compression is off;
    "deflate": {} turns permessage-deflate on with the defaults.
    """
    if compression is None:
        return None
    _expect(where, compression, dict, "an object")
    _check_keys(where, compression, ("deflate",))
    if "deflate" not in compression:
        return None
    where = where / "deflate"
    deflate = _expect(where, compression["deflate"], dict, "an object")
    _check_keys(where, deflate, DEFLATE_OPTIONS)
    values = {}
    for name, (default, low, high) in DEFLATE_OPTIONS.items():
        value = values[name] = deflate.get(name, default)
        if low is None:
            _expect(where / name, value, bool, "true or false")
        elif not low <= _expect(where / name, value, int, "an integer") <= high and not (
                value == 0 and name == "request_max_window_bits"):
            raise (where / name).error("must be %s%d to %d, got %d" % (
                "0 (ask nothing) or " if name == "request_max_window_bits" else "", low, high, value))
    return DeflateOptions(**values)


def _load_app(where: _Where, service: dict, what: str):
    """Import the service's "module" and return its callable "object"."""
    kind = service.get("type")
    module = service.get("module")
    obj = service.get("object")
    if not module:
        raise where.error('a "%s" %s needs "module" (the Python module of the %s)'
                          % (kind, "service" if what == "app" else what, what))
    if not obj:
        raise where.error('a "%s" %s needs "object" (the name of the %s in "%s")'
                          % (kind, "service" if what == "app" else what, what, module))
    _expect(where / "module", module, str, "a module name")
    _expect(where / "object", obj, str, "an object name")
    loaded = load_object(module, obj, where.path, where.filename)
    if not callable(loaded):
        signature = ("callable(environ, start_response)" if what == "app" else
                     "callable(websocket)")
        raise (where / "object").error('object "%s" of module "%s" is not callable: a %s %s is a %s'
                                       % (obj, module, "WSGI" if what == "app" else "WebSocket",
                                          what, signature))
    return loaded


# =============================================================================
# 12. TLS: contexts and what the app learns of them
# =============================================================================
# In: an endpoint's "tls" object (Crossbar's keys; files relative to CBDIR).
# Out: an ssl.SSLContext for the waiting room, which wraps each accepted
# socket and runs the handshake without blocking (section 13): a client that
# connects and never says hello holds a socket for client_timeout, never a
# thread. After the handshake, tls_environ() gives the app what Apache's
# mod_ssl would (HTTPS, SSL_PROTOCOL, SSL_CLIENT_S_DN...). TLS 1.2 or newer
# only (RFC 8996 retires 1.0 and 1.1); ALPN offers http/1.1 (RFC 7301), the
# only protocol spoken here.

TLS_KEYS = ("key", "certificate", "chain_certificates", "ca_certificates", "ciphers", "dhparam")


def build_tls_context(where: _Where, tls, cbdir: str) -> ssl.SSLContext:
    """An SSLContext for a "tls" endpoint object; ConfigError naming the file that fails."""
    if ssl is None:
        raise where.error("TLS needs Python's ssl module, which this Python lacks")
    _expect(where, tls, dict, "an object")
    _check_keys(where, tls, TLS_KEYS)

    def path_of(key: str, value) -> str:
        _expect(where / key, value, str, "a file name")
        path = os.path.join(cbdir, value)
        if not os.path.isfile(path):
            raise (where / key).error("no such file: %s" % path)
        return path
    for key in ("key", "certificate"):
        if key not in tls:
            raise where.error('a TLS endpoint needs "%s" (a PEM file)' % key)
    key = path_of("key", tls["key"])
    certificate = path_of("certificate", tls["certificate"])
    chain = [path_of("chain_certificates", c) for c in
             _expect(where / "chain_certificates", tls.get("chain_certificates", []), list,
                     "a list of files")]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        if chain:
            # load_cert_chain takes the certificate and its chain in one file.
            with tempfile.NamedTemporaryFile("wb", suffix=".pem") as combined:
                for part in [certificate] + chain:
                    with open(part, "rb") as f:
                        combined.write(f.read().rstrip(b"\n") + b"\n")
                combined.flush()
                context.load_cert_chain(combined.name, key)
        else:
            context.load_cert_chain(certificate, key)
    except (ssl.SSLError, OSError) as exc:
        raise where.error("cannot load the certificate %s with the key %s: %s"
                          % (tls["certificate"], tls["key"], exc)) from None
    cas = _expect(where / "ca_certificates", tls.get("ca_certificates", []), list,
                  "a list of files")
    if cas:
        # Crossbar's meaning: clients must present a certificate signed by one of these.
        for ca in cas:
            try:
                context.load_verify_locations(path_of("ca_certificates", ca))
            except (ssl.SSLError, OSError) as exc:
                raise (where / "ca_certificates").error("cannot load %s: %s" % (ca, exc)) from None
        context.verify_mode = ssl.CERT_REQUIRED
    if "ciphers" in tls:
        try:
            context.set_ciphers(_expect(where / "ciphers", tls["ciphers"], str, "an OpenSSL cipher list"))
        except ssl.SSLError as exc:
            raise (where / "ciphers").error("no usable cipher in %r: %s" % (tls["ciphers"], exc)) from None
    if "dhparam" in tls:
        try:
            context.load_dh_params(path_of("dhparam", tls["dhparam"]))
        except (ssl.SSLError, OSError) as exc:
            raise (where / "dhparam").error("cannot load %s: %s" % (tls["dhparam"], exc)) from None
    return context


def format_distinguished_name(name) -> str:
    """An X.509 name as ssl's getpeercert() gives it, in RFC 4514 order and
    escaping, as mod_ssl's SSL_CLIENT_S_DN (most specific part first)."""
    parts = []
    for rdn in reversed(name):
        parts.append("+".join("%s=%s" % (_DN_SHORT_NAMES.get(attr, attr), _dn_escape(value))
                              for attr, value in rdn))
    return ",".join(parts)


_DN_SHORT_NAMES = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
                   "countryName": "C", "stateOrProvinceName": "ST", "localityName": "L",
                   "emailAddress": "emailAddress", "domainComponent": "DC", "userId": "UID"}


def _dn_escape(value: str) -> str:
    # RFC 4514 §2.4: escape , + " \ < > ; and a leading # or space, a trailing space.
    value = re.sub(r'([,+"\\<>;])', r"\\\1", value)
    if value[:1] in ("#", " "):
        value = "\\" + value
    if value.endswith(" "):
        value = value[:-1] + "\\ "
    return value


def tls_environ(sock) -> dict:
    """The mod_ssl variables of a TLS connection, for the environ of its requests."""
    environ = {"HTTPS": "on", "SSL_PROTOCOL": sock.version() or "",
               "SSL_CIPHER": (sock.cipher() or ("",))[0]}
    cert = sock.getpeercert()
    if cert:            # only a verified certificate is given (CERT_REQUIRED)
        subject = cert.get("subject", ())
        environ["SSL_CLIENT_VERIFY"] = "SUCCESS"
        environ["SSL_CLIENT_S_DN"] = format_distinguished_name(subject)
        environ["SSL_CLIENT_I_DN"] = format_distinguished_name(cert.get("issuer", ()))
        for rdn in subject:
            for attr, value in rdn:
                short = _DN_SHORT_NAMES.get(attr)
                if short:
                    environ.setdefault("SSL_CLIENT_S_DN_" + short.replace("emailAddress", "Email"),
                                       value)
        environ["SSL_CLIENT_M_SERIAL"] = cert.get("serialNumber", "")
        environ["SSL_CLIENT_V_START"] = cert.get("notBefore", "")
        environ["SSL_CLIENT_V_END"] = cert.get("notAfter", "")
    else:
        environ["SSL_CLIENT_VERIFY"] = "NONE"
    return environ


def send_close_notify(sock):
    """End a TLS connection's stream with a closure alert (close_notify), if it is TLS.

    RFC 9112 §9.8: a server "MUST attempt to initiate an exchange of closure
    alerts with the client before closing the connection", so that the
    client can tell the end of a response from a truncation. Ours is sent
    without waiting for the client's (the socket is made non-blocking: the
    client's alert, if it ever comes, is discarded with what else it sends).
    """
    if ssl is None or not isinstance(sock, ssl.SSLSocket) or sock._sslobj is None:
        return
    try:
        sock.setblocking(False)
        sock.unwrap()                   # sends ours; then it would read theirs
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        pass                            # ours is out (or queued); theirs is not awaited
    except (OSError, ValueError):       # the client is gone: nothing to tell it
        pass


# =============================================================================
# 13. The waiting room: connections that wait, in one selector
# =============================================================================
# A connection spends most of its life waiting: for its first request, between
# keep-alive requests, while a head trickles in, for a slot in a busy app.
# None of that needs a thread. Each transport has one WaitingRoom: one thread
# running one selector (epoll where there is one; never select(), which
# breaks past 1,024 descriptors) over the listening socket and every waiting
# connection. A connection takes a pool thread only once a whole request head
# has arrived and its app has a free slot, and gives it back after the
# response: a thread per request being served, not per client.
#
# The states of a connection, each with one deadline (OrderedDicts in
# deadline order, since each state has one timeout; expiry pops their front):
#
#   HANDSHAKE  TLS only: the handshake, step by step    client_timeout: close
#   WAITING    in the selector, reading a head          client_timeout: 408/close
#   BODY       reading a small body whole (body_buffer_size), before any slot
#                                                       client_timeout: 408
#   QUEUED     whole head, its app's Gate full          queue_timeout: 503
#   ACTIVE     a pool thread serves it (HTTPConnection.run)
#   SENDING    the rest of a response given whole (or a file, with
#              os.sendfile), its app slot and thread
#              already free                             client_timeout of no progress: close
#                                                       slower than min_rate: reset
#   LINGERING  shut for writing, input discarded       LINGER_TIME: close
#   WEBSOCKET  a broadcast path's WebSocket (section 8), for good: read and
#              fed to its protocol, written when it has bytes waiting
#                                  its own timers: auto-ping, the closing deadline
#   CLOSED
#
#   accept -> (HANDSHAKE ->) WAITING -> (head complete) (-> BODY) -> ACTIVE or QUEUED -> ACTIVE
#   ACTIVE (-> SENDING) -> Next.KEEP: WAITING (or ACTIVE again, for a pipelined request)
#          -> Next.LINGER: LINGERING -> CLOSED;  Next.CLOSE: CLOSED
#          -> Next.WEBSOCKET (101 sent, no handler): WEBSOCKET -> CLOSED
#
# A WebSocket's timers differ per path and move with every frame, so they
# wait in a heap instead of a room; it watches for writability only while
# bytes wait for it. Other threads (an app's broadcast, the Redis bridge,
# close_all) never take the room's lock for it: they send what the socket
# takes at once under the WebSocket's own lock, and ask the room to look at
# it (attend) for the rest. Messages it receives are broadcast outside the
# room's lock. Locks are taken in one order: room, channel, WebSocket.
#
# max_connections bounds open connections, that is memory: when they are all
# open, the one that has waited longest gives its place to a newcomer (as
# nginx reuses idle keep-alive connections); only when every connection is
# being served do newcomers wait in the listen backlog. A QUEUED client that
# leaves is noticed at once (its socket turns readable with nothing to read),
# and its request is dropped before the app sees it. One lock guards the
# room, its Gates and the selector's registrations, which pool threads make
# too: an epoll or kqueue takes them while the room's thread sleeps in it.
#
# What a kept-alive request costs in system calls is counted: a plain socket
# stays in timeout mode for good (its descriptor is non-blocking in it too),
# and the room reads and writes that descriptor raw, so no ioctl switches it
# and no poll() precedes a call; with epoll a connection is registered
# one-shot (OneShotEpoll) and stays registered while it is served, armed
# again by one epoll_ctl when it waits again. TLS sockets switch modes.

HANDSHAKE, WAITING, BODY, QUEUED, ACTIVE, SENDING, LINGERING, WEBSOCKET, CLOSED = (
    "handshake", "waiting", "body", "queued", "active", "sending", "lingering", "websocket", "closed")

# A non-blocking TLS socket that needs more bytes (or room to send) says so
# with these, not BlockingIOError.
_SSL_WANT = (ssl.SSLWantReadError, ssl.SSLWantWriteError) if ssl is not None else ()


def unsent_bytes(sock):
    """Bytes a socket's kernel send queue still holds for the peer, or None if unknown.

    epoll says "writable" only once a good part of that queue has drained,
    which a slow reader may take minutes to do; the queue's size tells
    whether it reads at all (Linux's SIOCOUTQ, alias TIOCOUTQ).
    """
    if termios is None or not hasattr(termios, "TIOCOUTQ"):
        return None
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except (AttributeError, OSError, ValueError):      # not a real socket, or closed
        return None


def read_pending(sock, data: bytes) -> bytes:
    """``data``, and the bytes a TLS socket has decrypted and holds: no
    readiness event tells of those, since they have left the kernel."""
    pending = getattr(sock, "pending", None)
    if pending is not None:
        while pending():
            data += sock.recv(pending())
    return data


class OneShotEpoll:
    """The part of the ``selectors`` API the waiting room uses, over
    select.epoll, with one-shot registrations (EPOLLONESHOT) for requests.

    A connection that has reported readiness stays registered but silent
    while a pool thread serves it; modify() arms it again when it goes back
    to wait: one epoll_ctl per keep-alive request where unregister() and
    register() cost two. Where there is no epoll the room uses
    selectors.DefaultSelector, registering and unregistering.
    """

    def __init__(self):
        self._epoll = select.epoll()
        self._keys = {}             # fileobj -> SelectorKey
        self._by_fd = {}            # fd -> SelectorKey
        self._oneshot = set()       # fds registered one-shot

    def _mask(self, fd: int, events: int) -> int:
        return ((select.EPOLLIN if events & selectors.EVENT_READ else 0)
                | (select.EPOLLOUT if events & selectors.EVENT_WRITE else 0)
                | (select.EPOLLONESHOT if fd in self._oneshot else 0))

    def register(self, fileobj, events: int, data=None, oneshot: bool = False):
        fd = fileobj.fileno()
        if oneshot:
            self._oneshot.add(fd)
        try:
            self._epoll.register(fd, self._mask(fd, events))
        except BaseException:
            self._oneshot.discard(fd)
            raise
        self._keys[fileobj] = self._by_fd[fd] = key = selectors.SelectorKey(fileobj, fd, events, data)
        return key

    def modify(self, fileobj, events: int, data=None):
        """New events (or data); a one-shot registration is armed again."""
        key = self._keys[fileobj]
        self._epoll.modify(key.fd, self._mask(key.fd, events))
        self._keys[fileobj] = self._by_fd[key.fd] = key = key._replace(events=events, data=data)
        return key

    def unregister(self, fileobj):
        key = self._keys.pop(fileobj)
        del self._by_fd[key.fd]
        self._oneshot.discard(key.fd)
        try:
            self._epoll.unregister(key.fd)
        except OSError:             # closed already: the kernel has dropped it
            pass
        return key

    def get_key(self, fileobj):
        return self._keys[fileobj]

    def select(self, timeout=None):
        timeout = -1 if timeout is None else max(math.ceil(timeout * 1e3) * 1e-3, 0)
        try:
            events = self._epoll.poll(timeout, max(len(self._by_fd), 1))
        except InterruptedError:
            return []
        ready = []
        for fd, event in events:
            key = self._by_fd.get(fd)
            if key is not None:
                # As selectors does: an error or hang-up wakes readers and writers.
                mask = ((selectors.EVENT_READ if event & ~select.EPOLLOUT else 0)
                        | (selectors.EVENT_WRITE if event & ~select.EPOLLIN else 0))
                ready.append((key, mask & key.events))
        return ready

    def close(self):
        self._epoll.close()
        self._keys.clear()
        self._by_fd.clear()


class WaitingRoom:
    """The selector loop of one transport: accepts, waits, admits, expires."""

    def __init__(self, transport: WebTransport, server: WSGIServer):
        self.transport = transport
        self.limits = limits = transport.limits
        self.server = server                # accepts (get_request) and closes sockets
        # One-shot registrations for connections where epoll has them.
        self.oneshot = hasattr(select, "epoll") and hasattr(select, "EPOLLONESHOT")
        self.selector = OneShotEpoll() if self.oneshot else selectors.DefaultSelector()
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)   # a connection closed
        keep = sum(service.minthreads for _, service in transport.root.services()
                   if service.kind == "wsgi")
        self.pool = ThreadPool(min(keep, limits.max_connections))
        self.handshaking = collections.OrderedDict()    # conn -> None, oldest deadline first
        self.waiting = collections.OrderedDict()
        self.queued = collections.OrderedDict()
        self.lingering = collections.OrderedDict()
        self.bodies = collections.OrderedDict()
        self.sending = collections.OrderedDict()
        # WebSockets (state WEBSOCKET): their timers differ per path and
        # move, so they wait in a heap of (when, n, conn) instead, an entry
        # current only while conn.deadline is its time; and other threads
        # (a broadcast, close_all) ask the room to look at one through
        # ``attention`` (WebSocket._attend), never taking the room's lock.
        self.ws_timers = []
        self._ws_timer_count = 0
        self.attention = collections.deque()
        self._rooms = {HANDSHAKE: (self.handshaking, limits.client_timeout),
                       WAITING: (self.waiting, limits.client_timeout),
                       BODY: (self.bodies, limits.client_timeout),
                       SENDING: (self.sending, limits.client_timeout),
                       QUEUED: (self.queued, limits.queue_timeout),
                       LINGERING: (self.lingering, LINGER_TIME)}
        self.count = 0                      # open connections
        self.websockets = 0                 # of which WebSockets (or handshakes)
        self.unlogged = collections.deque()  # access-log lines to write (_sent_log)
        # HTTP keeps a reserve that WebSockets cannot take (a fifth by default).
        self.max_websockets = (limits.max_websockets if limits.max_websockets is not None
                               else limits.max_connections - limits.max_connections // 5)
        self.per_client = {}                # client address -> open connections
        self.accepting = False              # the listening socket is in the selector
        self.stopped = False                # no more accepting, ever
        self.resume_at = None               # EMFILE back-off: accept again at this time
        self.running = True                 # until shutdown(), which may come before run()
        self.exited = threading.Event()
        self._emfile_logged = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # epoll and kqueue take a registration while another thread waits in
        # them; poll() and select() only see it at their next call.
        self._live_register = type(self.selector).__name__ in (
            "OneShotEpoll", "EpollSelector", "KqueueSelector", "DevpollSelector")

    # -- the loop: the room's own thread ---------------------------------------

    def run(self):
        """Accept, receive heads, admit and expire until shutdown()."""
        selector = self.selector
        selector.register(self._wake_r, selectors.EVENT_READ, self)
        with self.lock:
            self._listen()
        try:
            while self.running:
                events = selector.select(self._timeout())
                received = []           # (WebSocket, message) to broadcast
                with self.lock:
                    for key, mask in events:
                        conn = key.data
                        try:
                            if conn is None:
                                self._accept()
                            elif conn is self:
                                self._drain_wakeups()
                            elif conn.state is WEBSOCKET:
                                self._on_websocket(conn, mask, received)
                            else:
                                conn.armed = not self.oneshot   # (it reported: silent now)
                                self._on_ready(conn)
                                if (not conn.armed and conn.registered
                                        and conn.state in self._rooms):
                                    self._rearm(conn)       # still waiting
                        except Exception:
                            log.exception("unexpected error in the waiting room")
                            if isinstance(conn, HTTPConnection):
                                self._close(conn)
                    self._expire(time.monotonic())
                    self._attend_all()
                self._write_logs()
                if received:
                    # Outside the room's lock: a broadcast to thousands takes
                    # their locks (and the channel's), never the room's.
                    self._broadcast(received)
        finally:
            with self.lock:
                self.running = False
                self._unlisten()
            selector.close()
            self._wake_r.close()
            self._wake_w.close()
            self.exited.set()

    def _timeout(self) -> float:
        """Until the earliest deadline, at most ROOM_TICK (for waits added by pool threads)."""
        now = time.monotonic()
        timeout = ROOM_TICK
        for room, _ in self._rooms.values():
            if room:
                timeout = min(timeout, next(iter(room)).deadline - now)
        if self.resume_at is not None:
            timeout = min(timeout, self.resume_at - now)
        if self.ws_timers:
            timeout = min(timeout, self.ws_timers[0][0] - now)
        if self.attention:
            timeout = 0.0
        return max(timeout, 0.0)

    def wake(self):
        try:
            self._wake_w.send(b"x")
        except OSError:         # full (a wake-up is pending anyway) or closed
            pass

    def _drain_wakeups(self):
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    # -- accepting ---------------------------------------------------------------

    def _listen(self):
        if not self.accepting and not self.stopped and self.running:
            self.selector.register(self.server.socket, selectors.EVENT_READ, None)
            self.accepting = True
            self.resume_at = None

    def _unlisten(self):
        if self.accepting:
            self.selector.unregister(self.server.socket)
            self.accepting = False

    def _accept(self):
        """Accept what the backlog holds (a burst at a time)."""
        max_connections = self.limits.max_connections
        for _ in range(ACCEPT_BURST):
            if self.count >= max_connections and not (self.waiting or self.handshaking):
                self._unlisten()        # all busy: newcomers wait in the backlog
                return
            try:
                sock, address = self.server.get_request()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: the listening socket stays readable,
                    # and accepting again at once would spin a core. Free the
                    # oldest waiting connection, say so once, and back off.
                    if not self._emfile_logged:
                        log.error("cannot accept connections on %s: %s (raise the open files "
                                  "limit, ulimit -n, or lower max_connections); backing off",
                                  self.transport.address(), exc.strerror or exc)
                        self._emfile_logged = True
                    self._evict_oldest()
                    self._unlisten()
                    self.resume_at = time.monotonic() + ACCEPT_BACKOFF
                else:
                    log.debug("accept() failed: %s", exc)
                return
            if self.count >= max_connections:
                self._evict_oldest()
            self._welcome(sock, address)

    def _welcome(self, sock, address):
        per_client = self.limits.max_connections_per_client
        if per_client is not None and isinstance(address, tuple):
            open_ = self.per_client.get(address[0], 0)
            if open_ >= per_client:
                log.debug("%s has %d connections open (max_connections_per_client): closed",
                          address[0], open_)
                sock.close()
                return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        tls = self.transport.tls
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except OSError:
                sock.close()
                return
        conn = HTTPConnection(self.transport, sock, address)
        if tls is None and RAW_SOCKET_IO:
            # Timeout mode for good (its descriptor is O_NONBLOCK in it too):
            # the room reads and writes the descriptor raw, so no ioctl pair
            # per request switches it between the room and a pool thread.
            sock.settimeout(self.limits.client_timeout)
            conn.fd = sock.fileno()
        if per_client is not None and isinstance(address, tuple):
            self.per_client[address[0]] = self.per_client.get(address[0], 0) + 1
        self.count += 1
        self.transport.connections.add(conn)
        self._move(conn, WAITING if tls is None else HANDSHAKE)

    def _evict_oldest(self) -> bool:
        """Close the connection that has waited longest for a request, to make room."""
        fronts = [next(iter(room)) for room in (self.handshaking, self.waiting) if room]
        if not fronts:
            return False
        conn = min(fronts, key=lambda c: c.deadline)
        log.debug("max_connections reached: closing the connection of %s, waiting longest",
                  conn.client_address[0])
        self._close(conn)
        return True

    # -- waiting ---------------------------------------------------------------------

    def _move(self, conn: HTTPConnection, state: str):
        """``conn`` leaves its state for ``state``: in the selector while it waits."""
        old = self._rooms.get(conn.state)
        if old is not None:
            old[0].pop(conn, None)
        conn.state = state
        new = self._rooms.get(state)
        if new is not None:
            room, timeout = new
            room[conn] = None
            conn.deadline = time.monotonic() + timeout
            events = selectors.EVENT_WRITE if state is SENDING else selectors.EVENT_READ
            try:
                # WAITING and BODY read a plain socket raw, and QUEUED waits
                # for one event; the rest use its methods, which must not wait
                # in the room's thread (TLS: every state).
                if ((conn.fd is None or state is SENDING or state is LINGERING)
                        and conn.sock.gettimeout() != 0.0):
                    conn.sock.setblocking(False)
                if not conn.registered:
                    if self.oneshot:
                        self.selector.register(conn.sock, events, conn, oneshot=True)
                    else:
                        self.selector.register(conn.sock, events, conn)
                    conn.registered = True
                elif not conn.armed or self.selector.get_key(conn.sock).events != events:
                    self.selector.modify(conn.sock, events, conn)
                conn.armed = True
            except (OSError, ValueError, KeyError):     # the socket is already dead
                if conn.registered:
                    self._unregister(conn)
                self._close(conn)
                return
            if not self._live_register and threading.current_thread() is not self._thread:
                self.wake()
            if state is WAITING and not self.accepting and self.resume_at is None:
                self._listen()          # it could make room for a newcomer
        elif conn.registered and not (state is ACTIVE and self.oneshot):
            # (ACTIVE, one-shot: it stays registered, silent once it has
            # reported; an event it reports meanwhile is ignored)
            self._unregister(conn)

    def _rearm(self, conn: HTTPConnection):
        """A one-shot registration that has reported: report again (its deadline stays)."""
        try:
            self.selector.modify(conn.sock, self.selector.get_key(conn.sock).events, conn)
            conn.armed = True
        except (OSError, ValueError, KeyError):     # the socket is already dead
            self._unregister(conn)
            self._close(conn)

    def _unregister(self, conn: HTTPConnection):
        conn.registered = False
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass

    def _on_ready(self, conn: HTTPConnection):
        state = conn.state
        if state is WAITING:
            self._receive(conn)
        elif state is HANDSHAKE:
            self._handshake(conn)
        elif state is BODY:
            self._receive_body(conn)
        elif state is SENDING:
            self._send_some(conn)
        elif state is QUEUED:
            try:        # the raw socket's bytes, under TLS too
                conn.sock.setblocking(False)    # (a plain one came in timeout mode)
                alive = socket.socket.recv(conn.sock, 1, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                alive = b""
            if alive:                   # body or pipelined bytes: stop watching
                self._unregister(conn)
            else:                       # the client left: drop its request unserved
                log.debug("client %s left while its request waited", conn.client_address[0])
                self._close(conn)
        elif state is LINGERING:
            try:        # raw bytes, discarded: under TLS, past our close_notify
                data = socket.socket.recv(conn.sock, MAX_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            conn.discarded += len(data)
            if not data or conn.discarded >= LINGER_SIZE:
                self._close(conn)
        # else: a stale event for a connection that has moved on

    def _handshake(self, conn: HTTPConnection):
        """One step of a TLS handshake; WAITING once it is done."""
        sock = conn.sock
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            return
        except ssl.SSLWantWriteError:       # our flight did not fit the send buffer
            self.selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
            conn.armed = True
            return
        except (OSError, ValueError) as exc:    # not TLS, a bad certificate, the client gone
            log.debug("TLS handshake with %s failed: %s", conn.client_address[0], exc)
            self._close(conn)
            return
        self.selector.modify(sock, selectors.EVENT_READ, conn)
        conn.armed = True
        conn.base_environ.update(tls_environ(sock))
        self._move(conn, WAITING)

    def _receive(self, conn: HTTPConnection):
        """Bytes of a request head: once it is whole, admit the request."""
        try:
            data = (os.read(conn.fd, RECV_SIZE) if conn.fd is not None
                    else read_pending(conn.sock, conn.sock.recv(RECV_SIZE)))
        except (BlockingIOError, InterruptedError) + _SSL_WANT:
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        reader = conn.reader
        buffer = reader.buffer
        if not buffer:
            buffer = data
        else:
            if type(buffer) is not bytearray:
                buffer = bytearray(buffer)          # grown in place: linear time
            buffer += data
        if not conn.receiving:
            # The head has begun: from its first byte (an empty line too) it
            # has client_timeout to arrive whole (slowloris).
            conn.receiving = True
            conn.deadline = time.monotonic() + self.limits.client_timeout
            self.waiting.move_to_end(conn)
        if buffer[:1] in (b"\r", b"\n"):
            buffer = strip_empty_lines(buffer)
            conn.searched = 0
        reader.buffer = buffer
        try:
            end, conn.searched = scan_request_head(buffer, conn.searched, self.limits)
        except HTTPError as exc:
            self._refuse(conn, exc)
            return
        if end >= 0:
            self._begin(conn, end)

    def _begin(self, conn: HTTPConnection, end: int):
        """The head in the buffer ends at ``end``: take it, and admit its request."""
        reader = conn.reader
        head_bytes = bytes(reader.buffer[:end - 4])
        reader.buffer = bytes(reader.buffer[end:])
        conn.searched = 0
        conn.receiving = False
        request = self._admit(conn, head_bytes)
        if request is None:
            return
        self._move(conn, ACTIVE)
        if getattr(request.service, "in_room", False):
            conn.sock.setblocking(False)            # the room's thread never waits on one
            self._serve_here(conn, request)
        else:
            self.pool.submit(self._serve, conn, request)

    def _serve_here(self, conn: HTTPConnection, request: Request):
        """Serve a request in the room's thread: a broadcast path's handshake,
        which is a check and a 101 of a few hundred bytes, into a socket that
        has sent its request and not read since (it takes them at once; else
        it is closed). A burst of 10,000 handshakes then costs no thread."""
        try:
            next_step = conn.run(request)
        except Exception:
            log.exception("unexpected error serving %s", conn.client_address[0])
            next_step = Next.CLOSE
        if next_step is not Next.WEBSOCKET:
            self._release(request.service.gate)
        request = self._after(conn, next_step)
        if request is not None:             # a pipelined request after a 426
            self._move(conn, ACTIVE)
            self.pool.submit(self._serve, conn, request)

    def _admit(self, conn: HTTPConnection, head_bytes: bytes):
        """Prepare a request; return it if it may run now (its slot taken), else None."""
        try:
            request = conn.prepare(head_bytes)
        except HTTPError as exc:
            self._refuse(conn, exc)
            return None
        body = request.body
        if (type(body) is FixedLengthInput and 0 < body.remaining <= self.limits.body_buffer_size
                and body._on_first_read is None and len(conn.reader.buffer) < body.remaining):
            # A small body is read whole here first, as waitress and nginx do:
            # a slow upload then costs a socket, not a thread and an app slot.
            conn.queued = request
            if conn.fd is not None:
                # The rest has often come with the head (a client writes
                # both at once): read it now, not after a turn of the
                # selector. A plain socket's descriptor never blocks.
                request = self._read_body(conn)
                if request is not None or conn.state is QUEUED or conn.state is CLOSED:
                    return request
            self._move(conn, BODY)
            return None
        return self._enter_gate(conn, request)

    def _receive_body(self, conn: HTTPConnection):
        request = self._read_body(conn)
        if request is not None:
            self._move(conn, ACTIVE)
            self.pool.submit(self._serve, conn, request)

    def _read_body(self, conn: HTTPConnection):
        """Bytes of a small body: its request once whole and its slot taken, else None."""
        try:
            data = (os.read(conn.fd, MAX_RECV_SIZE) if conn.fd is not None
                    else read_pending(conn.sock, conn.sock.recv(MAX_RECV_SIZE)))
        except (BlockingIOError, InterruptedError) + _SSL_WANT:
            return None
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return None
        reader = conn.reader
        request = conn.queued
        if type(reader.buffer) is bytes and len(reader.buffer) + len(data) >= request.body.remaining:
            reader.buffer += data       # whole at the first read: one copy, not two
        else:                           # in pieces: no quadratic copying
            if type(reader.buffer) is not bytearray:
                reader.buffer = bytearray(reader.buffer)
            reader.buffer += data
        if len(reader.buffer) >= request.body.remaining:
            reader.buffer = bytes(reader.buffer)
            conn.queued = None
            return self._enter_gate(conn, request)
        return None

    def _enter_gate(self, conn: HTTPConnection, request: Request):
        """Take a slot in the request's service, or queue for one; the request if it runs now."""
        gate = request.service.gate
        if gate is None:            # a WebSocket: a limit of its own, not a queue
            if self.websockets >= self.max_websockets:
                self._refuse(conn, HTTPError(503, "too many WebSocket connections (max_websockets "
                                             "is %d)" % self.max_websockets, [("Retry-After", "5")]))
                return None
            self.websockets += 1        # until its thread is done, or it leaves WEBSOCKET
            return request
        if gate.free and not gate.waiting:
            gate.free -= 1
            return request
        conn.queued = request
        gate.waiting[conn] = None
        self._move(conn, QUEUED)
        return None

    def _release(self, gate: Gate, take: bool = False):
        """A request is done: its slot goes to the oldest waiter still there.

        With ``take`` the caller (a pool thread) serves the waiter itself:
        (conn, request) is returned instead of handed to another thread.
        """
        if gate is None:
            self.websockets -= 1
            return None
        if gate.waiting:
            conn = gate.waiting.popitem(last=False)[0]
            request, conn.queued = conn.queued, None
            self._move(conn, ACTIVE)
            if take:
                return conn, request
            self.pool.submit(self._serve, conn, request)
        else:
            gate.free += 1
        return None

    def _unqueue(self, conn: HTTPConnection):
        """Take a request out of its Gate's queue, unserved."""
        if conn.queued is not None:
            conn.queued.service.gate.waiting.pop(conn, None)
            conn.queued = None

    def _refuse(self, conn: HTTPConnection, exc: HTTPError):
        """Answer an error without blocking the room, then linger."""
        try:
            conn.sock.setblocking(False)    # a client that does not read cannot stall us
        except OSError:
            pass
        if conn.refuse(exc) is Next.LINGER:
            self._linger(conn)
        else:
            self._close(conn)

    def _linger(self, conn: HTTPConnection):
        """RFC 9112 §9.6, without a thread: shut for writing, discard input for a while."""
        send_close_notify(conn.sock)    # RFC 9112 §9.8, under TLS
        _shutdown_socket(conn.sock, socket.SHUT_WR)
        conn.discarded = 0
        self._move(conn, LINGERING)

    def _close(self, conn: HTTPConnection):
        if conn.state is CLOSED:
            return
        if conn.state is WEBSOCKET:
            self.websockets -= 1
            websocket = conn.websocket
            websocket.channel._remove(websocket)
            with websocket._cond:
                websocket._cut("closed")
        self._unqueue(conn)
        self._move(conn, CLOSED)
        if conn.output is not None:     # a response cut short: its files, its log line
            self._sent_log(conn, output_size(conn.output))
            close_output(conn.output)
            conn.output = None
        send_close_notify(conn.sock)    # RFC 9112 §9.8, under TLS (a no-op if sent)
        self.server.shutdown_request(conn.sock)
        self.count -= 1
        address = conn.client_address[0]
        if address in self.per_client:
            self.per_client[address] -= 1
            if not self.per_client[address]:
                del self.per_client[address]
        self.transport.connections.discard(conn)
        if not self.accepting and self.resume_at is None:
            self._listen()              # room again, unless stopping
        self.changed.notify_all()

    def _expire(self, now: float):
        """Deadlines passed: 408 (or close) while waiting, 503 while queued, close while lingering."""
        handshaking = self.handshaking
        while handshaking:
            conn = next(iter(handshaking))
            if conn.deadline > now:
                break
            self._close(conn)
        waiting = self.waiting
        while waiting:
            conn = next(iter(waiting))
            if conn.deadline > now:
                break
            if conn.reader.buffer:
                self._refuse(conn, HTTPError(408, "request head not complete within %gs"
                                             % self.limits.client_timeout))
            else:
                self._close(conn)
        bodies = self.bodies
        while bodies:
            conn = next(iter(bodies))
            if conn.deadline > now:
                break
            conn.queued = None
            self._refuse(conn, HTTPError(408, "the request body did not arrive within %gs"
                                         % self.limits.client_timeout))
        sending = self.sending
        while sending:
            conn = next(iter(sending))
            if conn.deadline > now:
                break
            unsent = unsent_bytes(conn.sock)
            if unsent is not None and unsent < conn.unsent:
                # The client reads, but too slowly to wake us: the kernel's
                # queue has shrunk, which is progress.
                conn.unsent = unsent
                conn.deadline = now + self.limits.client_timeout
                sending.move_to_end(conn)
                continue
            log.debug("%s stopped reading its response", conn.client_address[0])
            self._close(conn)
        queued = self.queued
        while queued:
            conn = next(iter(queued))
            if conn.deadline > now:
                break
            self._unqueue(conn)
            retry = max(1, int(self.limits.queue_timeout))
            self._refuse(conn, HTTPError(503, "the application is busy: no free slot within %gs"
                                         % self.limits.queue_timeout,
                                         [("Retry-After", str(retry))]))
        lingering = self.lingering
        while lingering:
            conn = next(iter(lingering))
            if conn.deadline > now:
                break
            self._close(conn)
        self._expire_websockets(now)
        if self.resume_at is not None and now >= self.resume_at:
            self._listen()

    # -- serving: pool threads ---------------------------------------------------

    def _serve(self, conn: HTTPConnection, request: Request):
        """Run requests of ``conn`` while it has one ready and a slot; then back to the room.

        A request that waited for the slot this thread frees is served next
        by this thread: waking another one to take it costs more.
        """
        timeout = self.limits.client_timeout
        while request is not None:
            gate = served = request.service.gate
            if conn.sock.gettimeout() != timeout:   # (it left timeout mode in the room)
                conn.sock.settimeout(timeout)
            try:
                request.response.defer_output = conn.sock.__class__ is socket.socket   # not TLS
                next_step = conn.run(request)
                output = request.response.output
                if output is not None:
                    # The app is done: its slot is free while its bytes go out,
                    # and a slow reader takes the rest from the waiting room.
                    with self.lock:
                        self._release(gate)
                    gate = False
                    conn.output, conn.after_output = output, next_step
                    conn.output_since, conn.output_sent = time.monotonic(), 0
                    conn.unsent = sys.maxsize       # (the last look at the queue: _expire)
                    if not self._send_now(conn):
                        if self.limits.min_rate:
                            # Its pace starts behind what the kernel holds of
                            # earlier responses (Response._send_paced).
                            conn.output_sent += queued_before(conn.sock, conn.output_sent)
                        with self.lock:
                            self._move(conn, SENDING)
                        return
                    next_step = conn.after_output
                # Spin only while nobody waits for this app's slot: a thread
                # that spins keeps it, and under load (wrk -c256, 20 slots)
                # spinning for clients that answer late cost 1.5x the CPU
                # per request of handing them back to the room. (A response
                # the room sent has freed its slot already: a thread spinning
                # then is one thread more, up to one per connection.)
                if (next_step is Next.KEEP and not conn.reader.buffer and KEEP_ALIVE_SPIN
                        and not self.transport.stopping and not (served and served.waiting)):
                    next_step = self._await_next(conn)
            except BaseException:
                log.exception("unexpected error serving %s", conn.client_address[0])
                next_step = Next.CLOSE
                if conn.output is None:             # not handed over yet: its files
                    self._sent_log(conn, output_size(request.response.output))
                    close_output(request.response.output)
            with self.lock:
                waiter = None
                if gate is not False and next_step is not Next.WEBSOCKET:
                    # (a WebSocket keeps its place until it closes)
                    waiter = self._release(gate, take=True)
                request = self._after(conn, next_step)
            self._write_logs()
            if waiter is not None:
                if request is not None:     # this connection goes on: the waiter to another thread
                    self.pool.submit(self._serve, *waiter)
                else:
                    conn, request = waiter

    def _send_now(self, conn: HTTPConnection) -> bool:
        """Send what the kernel takes of ``conn.output`` without waiting; True once all is out."""
        sock = conn.sock
        if conn.fd is not None:         # written raw: its timeout mode stays
            return self._send_some(conn, locked=False)
        sock.setblocking(False)
        try:
            return self._send_some(conn, locked=False)
        finally:
            if conn.state is ACTIVE:
                sock.settimeout(self.limits.client_timeout)

    def _send_some(self, conn: HTTPConnection, locked: bool = True) -> bool:
        """Non-blocking sends of ``conn.output``; then on to what comes after the response."""
        output = conn.output
        try:
            while output:
                item = output[0]
                if type(item) is FilePart:
                    conn.output_sent += item.send(conn.sock)
                    done = not item.count
                else:
                    done = self._write_some(conn, output)
                    if done:
                        continue
                if not done:
                    if locked:                  # progress: client_timeout again
                        now = time.monotonic()
                        # and the pace: the app is done, so all this time was
                        # spent waiting for the client (Response._send_paced).
                        waited = now - conn.output_since
                        if self.limits.min_rate and waited > MIN_RATE_GRACE and too_slow(
                                conn.sock, waited, conn.output_sent, self.limits.min_rate):
                            raise socket.timeout("slower than min_rate")
                        conn.deadline = now + self.limits.client_timeout
                        self.sending.move_to_end(conn)
                    return False
                item.close()                # a FilePart, all sent
                output.pop(0)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            conn.after_output = Next.CLOSE
            unsent = output_size(output)
            close_output(output)
            output.clear()
        else:
            unsent = 0
        conn.output = None
        self._sent_log(conn, unsent)
        if locked:                              # in the room: what comes next
            request = self._after(conn, conn.after_output)
            if request is not None:
                self._move(conn, ACTIVE)
                self.pool.submit(self._serve, conn, request)
        return True

    def _sent_log(self, conn: HTTPConnection, unsent: int):
        """The access-log line of a response the room sent, once it is out or
        cut short: ``unsent`` bytes never went, and the size logged is what
        did (nginx's $body_bytes_sent, for a client gone mid-download). The
        head goes first, so ``unsent`` counts the body's bytes, and the head's
        only when none of the body went (hence the floor of 0). Written by
        _write_logs, out of the room's lock: a log handler that blocks
        must not stop the room."""
        if conn.unlogged is not None:
            environ, response = conn.unlogged
            conn.unlogged = None
            response.body_bytes = max(0, response.body_bytes - unsent)
            self.unlogged.append((conn, environ, response))

    def _write_logs(self):
        """Write the access-log lines _sent_log kept (outside the room's lock;
        a deque's append and popleft are atomic, with the lock held or not)."""
        unlogged = self.unlogged
        while unlogged:
            try:
                conn, environ, response = unlogged.popleft()
            except IndexError:          # another thread wrote it
                return
            conn.log_access(environ, response)

    @staticmethod
    def _write_some(conn: HTTPConnection, output: list) -> bool:
        """Write the bytes at the front of ``output`` (up to a FilePart), popping
        what went out; True if all of them did. A response's head and body go
        in one writev(): one system call, and no segment on the wire with the
        head alone (which the client's kernel would take as one more packet)."""
        count, size = 1, len(output[0])
        if conn.fd is not None:
            # (at most 1 GiB: macOS refuses a writev() of over INT_MAX bytes)
            while (count < len(output) and count < GATHER_MAX_BUFFERS
                   and type(output[count]) is not FilePart and size + len(output[count]) <= 1 << 30):
                size += len(output[count])
                count += 1
        if count > 1:
            sent = os.writev(conn.fd, output[:count])
        elif conn.fd is not None:
            sent = os.write(conn.fd, output[0])
        else:                           # TLS: the ssl module's send()
            sent = conn.sock.send(output[0])
        conn.output_sent += sent
        for _ in range(count):
            size = len(output[0])
            if sent < size:
                if sent:
                    output[0] = memoryview(output[0])[sent:]
                return False
            sent -= size
            output.pop(0)
        return True

    def _await_next(self, conn: HTTPConnection) -> Next:
        """Wait a moment in this thread for the connection's next request.

        A busy client sends it as soon as it has read the response; handing
        the connection to the room and back would cost more than waiting
        KEEP_ALIVE_SPIN seconds (the app slot is kept meanwhile, so _serve
        spins only while no other request waits for it).
        """
        poller = select.poll()
        poller.register(conn.sock, select.POLLIN)
        try:
            if getattr(conn.sock, "pending", int)() or poller.poll(KEEP_ALIVE_SPIN * 1000):
                data = (os.read(conn.fd, RECV_SIZE) if conn.fd is not None     # (no second poll)
                        else read_pending(conn.sock, conn.sock.recv(RECV_SIZE)))
                if not data:
                    return Next.CLOSE
                conn.reader.buffer = data
        except (BlockingIOError, InterruptedError):     # a false alarm: wait in the room
            pass
        except OSError:             # reset by the client: nothing to tell anyone
            return Next.CLOSE
        return Next.KEEP

    def _after(self, conn: HTTPConnection, next_step: Next):
        """Where a connection goes after a request; a pipelined request ready to run, or None."""
        if next_step is Next.LINGER:
            self._linger(conn)
        elif next_step is Next.WEBSOCKET:
            self._enter_websocket(conn)
        elif next_step is not Next.KEEP or (self.transport.stopping and not conn.reader.buffer):
            self._close(conn)       # stopping: a request already read is served first
        else:
            reader = conn.reader
            if getattr(conn.sock, "pending", int)():    # TLS: decrypted bytes the fd won't signal
                reader.buffer += read_pending(conn.sock, b"")
            buffer = reader.buffer = strip_empty_lines(reader.buffer)
            if buffer:                  # pipelined: the next head may be here already
                try:
                    end, conn.searched = scan_request_head(buffer, 0, self.limits)
                except HTTPError as exc:
                    self._refuse(conn, exc)
                    return None
                conn.receiving = True
                if end >= 0:
                    reader.buffer = bytes(buffer[end:])
                    conn.searched = 0
                    conn.receiving = False
                    return self._admit(conn, bytes(buffer[:end - 4]))
            self._move(conn, WAITING)
        return None

    # -- WebSockets: a broadcast path's clients, in the selector -------------------

    def _enter_websocket(self, conn: HTTPConnection):
        """An upgraded connection (101 sent) joins the selector for good: its
        bytes are read, fed to its WebSocket's protocol and broadcast here."""
        websocket = conn.websocket
        self._move(conn, WEBSOCKET)
        conn.base_environ = None                # (a WebSocket keeps what it needs)
        conn.deadline = None
        try:
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, WEBSOCKET_SEND_BUFFER)
            conn.sock.setblocking(False)
            self.selector.register(conn.sock, selectors.EVENT_READ, conn)
        except (OSError, ValueError, KeyError):    # the client is gone already
            self._close(conn)
            return
        conn.registered = True
        websocket.room, websocket.conn, websocket.events = self, conn, selectors.EVENT_READ
        try:                                    # TLS: bytes decrypted with the handshake's
            websocket._early += read_pending(conn.sock, b"")
        except OSError:
            pass
        websocket.channel._add(websocket)
        if self.transport.stopping:
            websocket.close(CloseCode.GOING_AWAY, "server shutting down")     # as close_all does
        if websocket._early:                    # (rare: frames sent with the handshake)
            early, websocket._early = websocket._early, b""
            for message in websocket._feed(early):
                websocket.channel.broadcast(message)
        self._settle(conn)
        if not self._live_register and threading.current_thread() is not self._thread:
            self.wake()

    def _on_websocket(self, conn: HTTPConnection, mask: int, received: list):
        websocket = conn.websocket
        if mask & selectors.EVENT_WRITE:
            with websocket._cond:
                websocket._flush()
        if mask & selectors.EVENT_READ:
            try:
                # Under its lock: a TLS connection's state is not to be read
                # here and written by a broadcasting thread at the same time.
                with websocket._cond:
                    data = read_pending(conn.sock, conn.sock.recv(RECV_SIZE))
            except (BlockingIOError, InterruptedError) + _SSL_WANT:
                data = None
            except OSError:
                data = b""
            if data is not None:
                received.extend((websocket, message) for message in websocket._feed(data))
        self._settle(conn)

    def attend(self, conn: HTTPConnection):
        """Any thread: look at this WebSocket soon (its queue, its timers)."""
        self.attention.append(conn)
        if threading.current_thread() is not self._thread:
            self.wake()

    def _attend_all(self):
        attention = self.attention
        while attention:
            conn = attention.popleft()
            if conn.state is WEBSOCKET:
                self._settle(conn)

    def _settle(self, conn: HTTPConnection):
        """After anything happened to a WebSocket: its timers (pings, the
        closing rule), what the selector watches (writability only while
        bytes wait), and its end once TCP is cut."""
        websocket = conn.websocket
        websocket._attending = False
        if websocket._out and not websocket.events & selectors.EVENT_WRITE:
            with websocket._cond:
                websocket._flush()              # what gathered (WebSocket._push)
        due = websocket._on_timer(time.monotonic())
        if websocket.tcp == TCP_CUT:
            self._close(conn)
            return
        with websocket._cond:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if websocket._out else 0)
            if events != websocket.events:
                try:
                    self.selector.modify(conn.sock, events, conn)
                    websocket.events = events
                except (OSError, ValueError, KeyError):
                    websocket._cut("the socket is gone")
        if websocket.tcp == TCP_CUT:
            self._close(conn)
            return
        # An earlier time gets an entry now; a later one when the present entry comes due.
        if due is not None and (conn.deadline is None or due < conn.deadline):
            conn.deadline = due
            self._ws_timer_count += 1
            heapq.heappush(self.ws_timers, (due, self._ws_timer_count, conn))

    def _expire_websockets(self, now: float):
        timers = self.ws_timers
        while timers and timers[0][0] <= now:
            when, _, conn = heapq.heappop(timers)
            if conn.state is WEBSOCKET and when == conn.deadline:
                conn.deadline = None
                self._settle(conn)

    def _broadcast(self, received: list):
        for websocket, message in received:
            try:
                websocket.channel.broadcast(message)
            except Exception:
                log.exception("broadcasting on %s failed", websocket.channel.path)
        if self.attention:
            with self.lock:
                self._attend_all()

    # -- stopping: any thread ------------------------------------------------------

    def stop_accepting(self):
        """Take in what the listen backlog holds, then close the listening socket.

        From then on the port refuses connections (a client can go elsewhere
        at once); those already made wait in the room like any other, so a
        request that has reached us is served (close_idle reads them once).
        """
        with self.lock:
            if self.stopped:
                return
            self.stopped = True
            self._unlisten()
            for _ in range(self.server.request_queue_size):
                try:
                    sock, address = self.server.get_request()
                except OSError:             # BlockingIOError: the backlog is empty
                    break
                self._welcome(sock, address)
            self.server.socket.close()

    def close_idle(self):
        """Close the connections waiting for a request that has not begun.

        Each is read once more first: a request that has reached the server is
        served (with Connection: close); one not begun is never half-read, so
        its client may safely send it again elsewhere.
        """
        with self.lock:
            for conn in list(self.waiting):
                if conn.state is WAITING and not conn.reader.buffer:
                    self._receive(conn)
                if conn.state is WAITING and not conn.reader.buffer:
                    self._close(conn)

    def wait_closed(self, deadline: float) -> bool:
        """Wait until every connection has closed, or ``deadline``; True if they have."""
        with self.lock:
            while self.count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.changed.wait(min(remaining, 0.1))
            return True

    def cut_all(self):
        """The grace period is over: close what waits, cut what is being served."""
        with self.lock:
            for conn in list(self.transport.connections):
                if conn.state is ACTIVE:
                    _shutdown_socket(conn.sock, socket.SHUT_RDWR)   # its thread closes it
                else:
                    self._close(conn)

    def shutdown(self):
        """End the loop (after stop_accepting), and let the pool's threads go."""
        with self.lock:
            self.running = False
        self.wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self.exited.wait()
        self.pool.shutdown()

    _thread = None


# =============================================================================
# 14. The socket server and the node
# =============================================================================
# A WebTransport is one web transport of the config: where it listens, its
# paths, its limits; its WSGIServer (socketserver's ThreadingTCPServer, bound
# and listening) accepts in the waiting room's loop, which hands requests to
# pool threads (threads are reused, not created per connection). A Node is the
# set of transports of one config, started and stopped together. A transport
# listens on TCP, or on a unix socket (AF_UNIX: a file, as behind nginx),
# whose clients are on this machine: REMOTE_ADDR is then 127.0.0.1, port 0.

_AF_UNIX = getattr(socket, "AF_UNIX", None)     # None on platforms without unix sockets
#: The client address of a unix socket's connection (its own is usually
#: unnamed): REMOTE_ADDR and REMOTE_PORT say "this machine", which a check
#: for local clients understands; waitress says "localhost", gunicorn "".
UNIX_PEER = ("127.0.0.1", 0)

class WebTransport:
    """A web transport: where it listens, its path tree, its limits.

    Its server (a WSGIServer, once started) serves its connections through a
    waiting room. ``serve_connection(sock, address)`` serves one connection
    in the calling thread instead, blocking; it works on any object with
    recv/sendall/settimeout, which is how the tests drive it without a network.
    """

    def __init__(self, root: PathNode, host: str = "", port: int = 8080, *, family=socket.AF_INET,
                 backlog: int = LISTEN_BACKLOG, shared: bool = False, limits: Limits = None,
                 access_log: bool = False, where: str = "", tls=None, hsts_max_age=None,
                 trusted_proxies=()):
        self.root = root
        self.host = host
        self.port = port
        self.family = family
        self.backlog = backlog
        self.shared = shared
        self.limits = limits or DEFAULT_LIMITS
        self.access_log = access_log
        self.where = where
        self.resolve = root.resolve
        self.tls = tls                  # an ssl.SSLContext, or None
        self.trusted_proxies = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]
        # RFC 6797 §7.2: HSTS only over a secure transport.
        self.hsts_line = (b"Strict-Transport-Security: max-age=%d\r\n" % hsts_max_age
                          if tls is not None and hsts_max_age is not None else b"")
        self.base_environ = build_base_environ(self.server_name(), port,
                                               "https" if tls is not None else "http")
        # The channels of this transport's websocket paths, by URL path: a WSGI
        # app broadcasts with environ["wsgihost.channels"]["/ws"].broadcast(...).
        self.channels = {}
        for path, service in root.services():
            if service.kind == "websocket":
                service.channel.path = path
                self.channels[path] = service.channel
        self.base_environ["wsgihost.channels"] = self.channels
        self.own_answers = OwnAnswers()
        self.redis = None               # (URL, prefix) of the worker's "channels", or None
        self.stopping = False
        self.server = None
        self.connections = set()        # every open HTTPConnection

    #: A bound, listening socket to serve instead of binding one: a worker
    #: process's, inherited from the supervisor (section 16).
    listener = None

    def server_name(self) -> str:
        if self.family == _AF_UNIX:
            return "localhost"          # a socket file has no host name
        if self.host and self.host not in ("0.0.0.0", "::"):
            return self.host
        return socket.gethostname()

    def serve_connection(self, sock, client_address):
        conn = HTTPConnection(self, sock, client_address)
        self.connections.add(conn)
        try:
            if conn.serve() is Next.LINGER:
                lingering_close(sock)
        finally:
            self.connections.discard(conn)

    def urls(self) -> list:
        if self.family == _AF_UNIX:
            authority = "unix:%s:" % self.host      # nginx's spelling: http://unix:/a.sock:/path
        else:
            host = self.host or ("::" if self.family == socket.AF_INET6 else "0.0.0.0")
            authority = "[%s]:%d" % (host, self.port) if ":" in host else "%s:%d" % (host, self.port)
        urls = []
        for path, service in self.root.services():
            scheme = ("ws" if service.kind == "websocket" else "http") + ("s" if self.tls else "")
            what = service.kind + (" " + service.label if service.kind == "wsgi" else "")
            urls.append("%s://%s%s (%s)" % (scheme, authority, path, what))
        return urls

    def address(self) -> str:
        return endpoint_address(self.family, self.host, self.port)

    def begin_stop(self):
        """Stop taking requests: WebSockets get 1001, idle connections are closed.

        Requests in flight, queued or whose head has begun are served, with
        Connection: close; the waiting room closes each connection after it.
        """
        self.stopping = True
        if self.server is not None:
            self.server.room.stop_accepting()
        for channel in self.channels.values():
            channel.close_all(CloseCode.GOING_AWAY, "server shutting down")    # RFC 6455 §7.4.1
        if self.server is not None:
            self.server.room.close_idle()

    def finish_stop(self, deadline: float):
        """Wait until ``deadline`` (time.monotonic()) for connections to end; then cut them."""
        if self.server is None:
            return
        room = self.server.room
        if not room.wait_closed(deadline):
            room.cut_all()
        self.server.shutdown()
        self.server.server_close()
        room._write_logs()

    def stop(self, grace: float):
        """Stop serving: idle connections close now, busy ones after their response."""
        self.begin_stop()
        self.finish_stop(time.monotonic() + grace)


def lingering_close(sock):
    """RFC 9112 §9.6: stop sending, then read and discard for a while before closing.

    Closing a socket with unread data makes the kernel send a TCP reset, and
    a client still uploading (to a 413, say) would get the reset instead of
    the answer waiting in its receive buffer.
    """
    send_close_notify(sock)             # RFC 9112 §9.8, under TLS
    # What comes is discarded unread: raw bytes, since under TLS they follow
    # our close_notify, which ends what the TLS layer will read.
    recv = sock.recv if type(sock) is not getattr(ssl, "SSLSocket", None) else (
        lambda size: socket.socket.recv(sock, size))
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_TIME
        received = 0
        while received < LINGER_SIZE:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            data = recv(MAX_RECV_SIZE)
            if not data:
                break
            received += len(data)
    except OSError:
        pass


def _shutdown_socket(sock, how):
    try:
        sock.shutdown(how)
    except OSError:
        pass


class ThreadPool:
    """Threads that serve connections; an idle one waits for the next.

    ``keep`` threads are started up front and stay until shutdown() (the sum
    of the apps' ``minthreads``, at most max_connections); others exit after
    IDLE_THREAD_TIMEOUT idle.
    """

    _STOP = object()

    def __init__(self, keep: int = 0, name: str = "wsgihost"):
        self.keep = keep
        self.name = name
        self.tasks = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.idle = 0
        self.threads = 0
        for _ in range(keep):
            self._spawn(None)

    def submit(self, fn, *args):
        with self.lock:
            if self.idle:
                self.idle -= 1
                self.tasks.put((fn, args))
                return
        self._spawn((fn, args))

    def shutdown(self):
        """Let every thread exit once it is done with its connection."""
        with self.lock:
            count, self.keep = self.threads, 0
        for _ in range(count):
            self.tasks.put(self._STOP)

    def _spawn(self, task):
        with self.lock:
            self.threads += 1
            if task is None:
                self.idle += 1
        thread = threading.Thread(target=self._work, args=(task,), name=self.name, daemon=True)
        try:
            # Thread.start() waits until the new thread runs, and under load the
            # new thread waits for the GIL behind every busy one: started from
            # the accept loop, a burst of 256 new connections would be accepted
            # one slow start at a time (p99 600 ms at wrk -c256 from cold; 50 ms
            # this way). So a short-lived helper thread does the waiting.
            _thread.start_new_thread(self._start, (thread, task))
        except BaseException:
            self._unspawn(task)
            raise

    def _start(self, thread, task):
        try:
            thread.start()
        except BaseException:           # e.g. RuntimeError: can't start new thread
            self._unspawn(task)
            if task is not None:
                fn, args = task
                fn(*args)               # serve it here rather than lose it

    def _unspawn(self, task):
        with self.lock:
            self.threads -= 1
            if task is None:
                self.idle -= 1

    def _work(self, task):
        while True:
            if task is self._STOP:
                with self.lock:
                    self.idle -= 1
                    self.threads -= 1
                return
            if task is not None:
                fn, args = task
                try:
                    fn(*args)
                except BaseException:
                    log.exception("unexpected error in a connection thread")
                task = None
                with self.lock:
                    self.idle += 1
            try:
                task = self.tasks.get(timeout=IDLE_THREAD_TIMEOUT)
            except queue.Empty:
                with self.lock:
                    try:
                        task = self.tasks.get_nowait()  # submitted as we timed out
                    except queue.Empty:
                        if self.threads > self.keep:
                            self.idle -= 1
                            self.threads -= 1
                            return


def endpoint_address(family, host: str, port: int) -> str:
    """How a log line or error names an endpoint: 127.0.0.1:8080, [::1]:8080, unix:/a.sock."""
    if family == _AF_UNIX:
        return "unix:" + host
    host = host or "*"
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def bind_listener(family, host: str, port: int, backlog: int, shared: bool = False):
    """A bound, listening socket; OSError if the address cannot be had.

    TCP: SO_REUSEADDR (a restart need not wait for old connections in
    TIME_WAIT), and SO_REUSEPORT when the endpoint is "shared", so that
    other processes can listen on the port too. Unix: ``host`` is the socket
    file's path; a file left by a server that died is removed first.
    """
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == _AF_UNIX:
            _remove_stale_socket_file(host)
            sock.bind(host)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if shared and hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def _remove_stale_socket_file(path: str):
    """Remove a unix socket file nobody answers on; OSError if it is live, or not a socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, "a file that is not a socket is there (not removed)")
    with socket.socket(_AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except ConnectionRefusedError:      # nobody listens: a dead server's file
            os.unlink(path)
            return
        except socket.timeout:              # a server too busy to answer is still a server
            pass
    raise OSError(errno.EADDRINUSE, "Address already in use (a server answers on this socket)")


class WSGIServer(socketserver.ThreadingTCPServer):
    """The listening socket of one web transport, and its waiting room.

    bind_listener binds and listens (or the transport brings its listener,
    inherited from the supervisor), socketserver's get_request() accepts; but
    the loop is the waiting room's (serve_forever), not one thread per
    connection: ThreadingTCPServer's process_request is never called.
    """

    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False

    def __init__(self, transport: WebTransport):
        self.transport = transport
        self.address_family = transport.family
        self.request_queue_size = transport.backlog
        address = transport.host if transport.family == _AF_UNIX else (transport.host, transport.port)
        super().__init__(address, socketserver.BaseRequestHandler, bind_and_activate=False)
        self.socket.close()                     # socketserver's own, never bound
        self.bound_here = transport.listener is None    # then closing it is ours to do
        self.socket = transport.listener or bind_listener(
            transport.family, transport.host, transport.port, transport.backlog, transport.shared)
        try:
            self.server_address = self.socket.getsockname()
            self.socket.setblocking(False)      # the room accepts only when it is readable
        except BaseException:
            self.server_close()
            raise
        self.room = WaitingRoom(transport, self)

    def get_request(self):
        sock, address = self.socket.accept()
        return sock, (UNIX_PEER if self.address_family == _AF_UNIX else address)

    def server_close(self):
        super().server_close()
        if self.bound_here and self.address_family == _AF_UNIX:
            try:
                os.unlink(self.transport.host)      # as gunicorn and nginx do
            except OSError:
                pass

    def serve_forever(self, poll_interval: float = 0.5):
        self.room._thread = threading.current_thread()
        self.room.run()

    def shutdown(self):
        self.room.stop_accepting()
        self.room.shutdown()

    def handle_error(self, request, client_address):
        log.exception("error accepting a connection from %s", client_address)


def raise_open_files_limit(wanted: int) -> int:
    """Raise the soft limit on open files to the hard one; warn if still below ``wanted``.

    Every connection is a descriptor, and the usual soft limit (1024) is
    far below max_connections. Returns the soft limit now in force.
    """
    try:
        import resource
    except ImportError:         # not on this platform (Windows): nothing to raise
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted + 64)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < wanted + 64:
        log.warning("the open files limit is %d, too low for max_connections %d: raise it "
                    "(ulimit -n) or lower max_connections; accept() backs off when it is reached",
                    soft, wanted)
    return soft


class Node:
    """The web transports of one config, started and stopped together.

    >>> node = Node({"workers": [...]}).start()    # serves in background threads
    >>> node.stop()

    ``Node.from_file(path)`` reads a config file; ``node.transports[i].port``
    is the port actually bound (useful with port 0).
    """

    def __init__(self, config=None, cbdir: str = ".", filename: str = "config", transports=None):
        self.transports = transports if transports is not None else build_transports(
            config, cbdir, filename)
        self.threads = []
        self.bridges = []               # RedisBridges of the workers' "channels", a WorkerRelay
        self.stopped = threading.Event()

    @classmethod
    def from_file(cls, path: str) -> Node:
        config, cbdir = load_config(path)
        return cls(config, cbdir, config_file(path))

    def start(self) -> Node:
        """Bind every transport, then serve in background threads. OSError if a bind fails."""
        for transport in self.transports:   # a stopped node may start again: take requests again
            transport.stopping = False
        self.stopped.clear()
        self.threads, self.bridges = [], []
        raise_open_files_limit(sum(t.limits.max_connections for t in self.transports))
        servers = []
        for transport in self.transports:
            try:
                servers.append(WSGIServer(transport))
            except OSError as exc:
                for server in servers:
                    server.server_close()
                raise OSError(exc.errno, "cannot listen on %s: %s"
                              % (transport.address(), exc.strerror or exc)) from exc
        self._join_channels()           # before the first client: its broadcasts must travel
        for transport, server in zip(self.transports, servers):
            transport.server = server
            if transport.family == _AF_UNIX:
                transport.base_environ["SERVER_PORT"] = "80"    # a client's default, for URLs
            else:
                transport.port = server.server_address[1]
                transport.base_environ["SERVER_PORT"] = str(transport.port)
            thread = threading.Thread(target=server.serve_forever, name="wsgihost-room",
                                      daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    #: In a worker process with other workers: its end of the supervisor's
    #: relay (section 16), which the channels of transports without Redis join.
    worker_link = None

    def _join_channels(self):
        """Channels that span processes: one RedisBridge per Redis configured, for
        the channels of its workers' transports; in a worker process, the
        supervisor's relay for the others (Redis spans the workers already:
        a channel on both would get each message twice)."""
        joined = {}                     # (URL, prefix), or "relay" -> {path: [Channel]}
        if self.worker_link is not None:
            joined["relay"] = {}        # read even with no channel here: the relay never waits
        for transport in self.transports:
            via = transport.redis if transport.redis is not None else (
                "relay" if self.worker_link is not None else None)
            if via is not None:
                for path, channel in transport.channels.items():
                    joined.setdefault(via, {}).setdefault(path, []).append(channel)
        for via, channels in joined.items():
            if via == "relay":
                bridge = WorkerRelay(self.worker_link, channels).start()
            else:
                def deliver(path, message, channels=channels):
                    for channel in channels.get(path, ()):
                        channel.deliver(message)
                bridge = RedisBridge(via[0], list(channels), deliver, via[1]).start()
            for group in channels.values():
                for channel in group:
                    channel.relay = bridge
            self.bridges.append(bridge)

    def urls(self) -> list:
        return [url for transport in self.transports for url in transport.urls()]

    def stop(self, grace: float = None):
        """Stop accepting, let requests in flight finish (up to ``grace`` seconds), close.

        All transports wind down together, against one deadline.
        """
        if grace is None:
            grace = max(t.limits.shutdown_grace for t in self.transports)
        deadline = time.monotonic() + grace
        for transport in self.transports:
            transport.begin_stop()
        for transport in self.transports:
            transport.finish_stop(deadline)
        for bridge in self.bridges:
            bridge.stop()
        self.stopped.set()

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


def app_transport(app, host: str = "127.0.0.1", port: int = 8080, **options) -> WebTransport:
    """A WebTransport serving one WSGI app object on "/"; ``options`` as in the config."""
    unknown = set(options) - set(WEB_OPTIONS)
    if unknown:
        raise TypeError("unknown options: %s" % ", ".join(sorted(unknown)))
    where = _Where("app_transport")
    values = _check_options(where, options, WEB_OPTIONS)    # ConfigError, as for a config
    _check_networks(where / "trusted_proxies", values["trusted_proxies"])
    label = getattr(app, "__module__", "app") + ":" + getattr(app, "__name__", type(app).__name__)
    service = WSGIService(app, label, display_tracebacks=values["display_tracebacks"])
    limits = Limits(**{name: values[name] for name in _LIMIT_NAMES})
    return WebTransport(PathNode(default=service), host, port, limits=limits,
                        family=_address_family(where, host), access_log=values["access_log"],
                        trusted_proxies=values["trusted_proxies"])


def serve(app, host: str = "127.0.0.1", port: int = 8080, **options):
    """Serve one WSGI app until SIGINT or SIGTERM (or KeyboardInterrupt)."""
    run_node(Node(transports=[app_transport(app, host, port, **options)]))


def run_node(node: Node) -> int:
    """Start ``node``, log its URLs, serve until a signal, stop gracefully."""
    stop = threading.Event()

    def on_signal(signum, frame):
        log.info("%s: stopping (requests in flight may finish)", signal.Signals(signum).name)
        stop.set()

    # The handlers go in before the sockets listen (a SIGTERM sent as soon as
    # the port answers is a graceful stop, not a kill), and the caller's come back.
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {signum: signal.signal(signum, on_signal)
                    for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        node.start()
        for transport in node.transports:
            log.info("serving %s", ", ".join(transport.urls()))
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        node.stop()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    log.info("stopped")
    return 0


# =============================================================================
# 15. Channels across processes and machines: Redis pub/sub over RESP
# =============================================================================
# A websocket path's Channel delivers to the clients of one process; the
# workers of one node share it through the supervisor's relay (section 16),
# with nothing to configure. With a Redis server configured (router worker
# option "channels": {"redis": URL}), every broadcast is PUBLISHed to Redis
# and delivered when it comes back from a SUBSCRIBE, so every node sharing
# that Redis -- and every client of every node, whichever its worker -- gets
# every message, in the one order Redis gives them.
# Delivery is at most once: Redis pub/sub keeps nothing for a subscriber
# that is away, so what is published while a node is disconnected never
# reaches its clients (and while it is disconnected, its own broadcasts are
# delivered to its own clients only).
#
# RESP, the Redis protocol (redis.io "RESP protocol spec"), fits in two pure
# functions: build_command() serializes a command as an array of bulk
# strings, parse_reply() reads one reply from a buffer. The RedisBridge runs
# two connections, each in a thread of its own -- a subscriber, and a
# publisher fed through a bounded queue, so that a Redis that hangs never
# delays a request: its messages are dropped, with a log line.

REDIS_DEFAULT_PORT = 6379
#: Nesting and size bounds on what a Redis server may send us.
MAX_REDIS_NESTING = 8
MAX_REDIS_BULK = 512 * 1024 * 1024
#: Messages waiting to be published; over this, new ones are dropped.
REDIS_PUBLISH_QUEUE = 10000
#: Reconnection back-off, in seconds: doubling from the first to the last.
REDIS_BACKOFF = (0.1, 5.0)
#: Seconds to connect (and to authenticate) before trying again later.
REDIS_CONNECT_TIMEOUT = 5.0


class RedisError(Exception):
    """A Redis protocol error, or an error reply (``-ERR ...``) where none was expected."""


def build_command(*args) -> bytes:
    """A Redis command as RESP: an array of bulk strings (str is UTF-8, int in decimal)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode("utf-8")
        elif isinstance(arg, int):
            arg = b"%d" % arg
        parts.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(parts)


def parse_reply(buffer, start: int = 0, depth: int = 0):
    """One RESP2 reply from ``buffer[start:]``: (value, end), or None while incomplete.

    Simple strings come as str, errors as RedisError instances (not raised:
    they are a reply), integers as int, bulk strings as bytes, arrays as
    lists, nil as None. Raises RedisError for bytes that are not RESP.
    """
    line_end = buffer.find(b"\r\n", start)
    if line_end < 0:
        if len(buffer) - start > 64 * 1024:
            raise RedisError("a RESP line over 64 KiB: %s" % _show(bytes(buffer[start:start + 60])))
        return None
    kind, line = buffer[start:start + 1], bytes(buffer[start + 1:line_end])
    end = line_end + 2
    if kind == b"+":
        return line.decode("utf-8", "replace"), end
    if kind == b"-":
        return RedisError(line.decode("utf-8", "replace")), end
    try:
        number = int(line)
    except ValueError:
        raise RedisError("not RESP: %s" % _show(bytes(buffer[start:line_end]))) from None
    if kind == b":":
        return number, end
    if kind == b"$":
        if number == -1:
            return None, end
        if not 0 <= number <= MAX_REDIS_BULK:
            raise RedisError("bulk string of %d bytes" % number)
        if len(buffer) < end + number + 2:
            return None
        if buffer[end + number:end + number + 2] != b"\r\n":
            raise RedisError("bulk string not followed by CRLF")
        return bytes(buffer[end:end + number]), end + number + 2
    if kind == b"*":
        if number == -1:
            return None, end
        if depth >= MAX_REDIS_NESTING or number < 0:
            raise RedisError("array of %d, nested %d deep" % (number, depth))
        items = []
        for _ in range(number):
            parsed = parse_reply(buffer, end, depth + 1)
            if parsed is None:
                return None
            item, end = parsed
            items.append(item)
        return items, end
    raise RedisError("not RESP: %s" % _show(bytes(buffer[start:line_end])))


def parse_redis_url(url: str):
    """``redis://[[user]:password@]host[:port][/db]`` or ``rediss://`` (TLS):
    (host, port, user, password, db, tls). ValueError says what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("expected redis://host:port/db or rediss://..., got %r" % url)
    try:
        port = parts.port or REDIS_DEFAULT_PORT
    except ValueError:
        raise ValueError("invalid port in %r" % url) from None
    db = parts.path.strip("/") or "0"
    if not db.isdigit() or not db.isascii():
        raise ValueError("the database in %r is not a number" % url)
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return (parts.hostname or "localhost", port, user, password, int(db), parts.scheme == "rediss")


def encode_channel_message(message) -> bytes:
    """A WebSocket message for Redis: its kind in one byte, so text and binary survive."""
    if isinstance(message, str):
        return b"t" + message.encode("utf-8")
    return b"b" + bytes(message)


def decode_channel_message(data: bytes):
    return data[1:].decode("utf-8") if data[:1] == b"t" else data[1:]


class RedisConnection:
    """One blocking connection to Redis: commands out, replies in (RESP)."""

    def __init__(self, url: str):
        self.host, self.port, self.user, self.password, self.db, self.tls = parse_redis_url(url)
        self.sock = None
        self.buffer = bytearray()

    def connect(self):
        sock = socket.create_connection((self.host, self.port), timeout=REDIS_CONNECT_TIMEOUT)
        if self.tls:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
        self.sock, self.buffer = sock, bytearray()
        if self.password is not None:
            auth = ("AUTH", self.user, self.password) if self.user else ("AUTH", self.password)
            self.call(*auth)
        if self.db:
            self.call("SELECT", self.db)

    def send(self, *args):
        self.sock.sendall(build_command(*args))

    def read(self):
        """The next reply (blocking, within the socket's timeout)."""
        while True:
            parsed = parse_reply(self.buffer)
            if parsed is not None:
                value, end = parsed
                del self.buffer[:end]
                return value
            data = self.sock.recv(RECV_SIZE)
            if not data:
                raise ConnectionError("Redis closed the connection")
            self.buffer += data

    def call(self, *args):
        self.send(*args)
        reply = self.read()
        if isinstance(reply, RedisError):
            raise reply
        return reply

    def close(self):
        sock, self.sock = self.sock, None       # stop() may close it from another thread
        if sock is not None:
            _shutdown_socket(sock, socket.SHUT_RDWR)
            sock.close()

    def alive(self) -> bool:
        """False if Redis has closed this idle connection (a restart, a timeout)."""
        sock = self.sock                    # stop() may set it to None meanwhile
        if sock is None:
            return False
        try:
            poller = select.poll()          # not select(): descriptors past 1,024 break it
            poller.register(sock, select.POLLIN)
            return not poller.poll(0) or socket.socket.recv(sock, 1, socket.MSG_PEEK) != b""
        except (OSError, ValueError, TypeError):
            return False


class RedisBridge:
    """Channels of this node, joined through Redis pub/sub with every other node.

    ``publish(path, message)`` queues a message for Redis (never blocking);
    ``deliver(path, message)`` -- given by the node -- hands each message that
    comes back to the local clients of that path. ``connected`` says whether
    the subscription is live (when it is not, broadcasts stay local).
    """

    def __init__(self, url: str, paths, deliver, prefix: str = "wsgihost"):
        self.url = url
        self.prefix = prefix
        self.channels = {"%s:%s" % (prefix, path): path for path in paths}
        self.deliver = deliver
        self.connected = False
        self.running = True
        self.queue = queue.Queue(REDIS_PUBLISH_QUEUE)
        self._subscriber = None
        self._publisher = None
        self._threads = []

    def start(self):
        for target, name in ((self._subscribe_loop, "wsgihost-redis-sub"),
                             (self._publish_loop, "wsgihost-redis-pub")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self):
        self.running = False
        for conn in (self._subscriber, self._publisher):
            if conn is not None:
                conn.close()
        try:
            self.queue.put_nowait(None)
        except queue.Full:
            pass

    def publish(self, path: str, message) -> bool:
        """Queue ``message`` for the channel of ``path``; False if it had to be dropped."""
        try:
            self.queue.put_nowait(("%s:%s" % (self.prefix, path), encode_channel_message(message)))
            return True
        except queue.Full:
            log.warning("Redis publish queue full (%d messages): a broadcast is dropped",
                        REDIS_PUBLISH_QUEUE)
            return False

    def _retrying(self, what: str, attempt):
        """Run ``attempt(conn)`` on fresh connections until stopped, backing off between failures."""
        delay, failures = REDIS_BACKOFF[0], 0
        while self.running:
            conn = RedisConnection(self.url)
            try:
                conn.connect()
                if failures:
                    log.info("Redis at %s:%d reachable again (%s)", conn.host, conn.port, what)
                failures, delay = 0, REDIS_BACKOFF[0]
                attempt(conn)
            except Exception as exc:        # OSError, RedisError; anything, once stopped
                if self.running:
                    if failures == 0:
                        log.error("Redis at %s:%d is unreachable (%s): %s; retrying with back-off "
                                  "up to %gs; meanwhile broadcasts stay on this node", conn.host,
                                  conn.port, what, exc, REDIS_BACKOFF[1])
                    failures += 1
            finally:
                self.connected = self.connected and what != "subscriber"
                conn.close()
            if self.running:
                time.sleep(delay)
                delay = min(delay * 2, REDIS_BACKOFF[1])

    def _subscribe_loop(self):
        self._retrying("subscriber", self._subscribe)

    def _subscribe(self, conn: RedisConnection):
        self._subscriber = conn
        conn.sock.settimeout(None)          # a quiet channel is not an error
        conn.send("SUBSCRIBE", *self.channels)
        for _ in self.channels:
            reply = conn.read()             # ["subscribe", channel, count]
            if not isinstance(reply, list) or reply[:1] != [b"subscribe"]:
                raise RedisError("unexpected answer to SUBSCRIBE: %r" % (reply,))
        self.connected = True
        while self.running:
            reply = conn.read()
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                path = self.channels.get(reply[1].decode("utf-8", "replace"))
                if path is not None:
                    self.deliver(path, decode_channel_message(reply[2]))

    def _publish_loop(self):
        self._retrying("publisher", self._publish)

    def _publish(self, conn: RedisConnection):
        self._publisher = conn
        conn.sock.settimeout(REDIS_CONNECT_TIMEOUT)
        while self.running:
            item = self.queue.get()
            if item is None:
                return
            if not conn.alive():
                # Redis went away while we were idle: publish on a new
                # connection instead of losing this message on the old one.
                self.queue.put(item)        # (it waits at the back; order across a restart
                raise ConnectionError("the connection was closed while idle")   # is not kept)
            batch = [item]
            while len(batch) < 256:         # pipelined: one write, then the replies
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.running = False
                    break
                batch.append(item)
            conn.sock.sendall(b"".join(build_command("PUBLISH", channel, data)
                                       for channel, data in batch))
            for _ in batch:
                reply = conn.read()
                if isinstance(reply, RedisError):
                    log.error("Redis refused a PUBLISH: %s", reply)


# =============================================================================
# 16. Worker processes: the supervisor
# =============================================================================
# One process uses one core for Python: the GIL runs one thread at a time.
# With --workers N, or when the config's router workers share a port
# ("shared": true; Crossbar runs each router worker as a process), the
# command line starts a Supervisor instead of serving: a process that holds
# the listening sockets, serves nothing itself, and keeps worker processes --
# each a Node -- running. Node stays one process; this is the command line's.
#
# In: the config (parsed, not yet checked), how many workers, --reload.
# Out: workers serving; exit status 0 after a graceful stop, 2 for a bad
# config or app at the start (its one line, before any worker starts), 1 for
# an address that cannot be had.
#
# Signals, as gunicorn's arbiter.py tables them:
#
#   TERM  graceful stop: passed on to every worker, which stops accepting,
#         closes its idle connections (WebSockets with 1001) and finishes the
#         requests in flight (up to shutdown_grace); then the supervisor
#         closes the listening sockets and exits 0. Connections still in a
#         listen backlog were never read: they are reset, as if refused.
#         A second TERM or INT kills the workers that are left.
#   INT   the same. (Ctrl-C signals every process of the terminal's group:
#         the workers ignore INT and wait for the supervisor's TERM.)
#   HUP   reload, one worker at a time: read the config again, check it and
#         import its apps in a short-lived child, then start a new worker and,
#         once it serves, stop an old one (gracefully, as TERM does); and so
#         on. The listening sockets stay open throughout, so no connection is
#         refused. If the config or an app fails, or a new worker does not
#         start, the workers that serve stay.
#   CHLD  reap a worker that exited. One that was not asked to stop is
#         replaced after RESTART_BACKOFF, doubled for each in a row that died
#         younger than WORKER_STABLE_TIME (up to RESTART_BACKOFF_MAX).
#
# A worker stops gracefully on TERM, ignores INT and HUP, and stops by itself
# when its supervisor is gone; it says "ready" on a pipe once it serves. With
# --reload each worker also looks at the mtimes of its imported modules'
# files and of the config every RELOAD_POLL_INTERVAL, and asks for a reload
# (as HUP) when one changes: only the workers know what they imported.
#
# Why it is built this way:
# - The listening sockets belong to the supervisor: they are bound before
#   any worker starts and never closed while the node runs, so a worker that
#   stops (HUP) or dies drops nothing that is queued -- the connections wait
#   for its replacement (Linux resets those queued on a SO_REUSEPORT socket
#   when it closes: 9 of 20 in a test here). On Linux each worker has its
#   own SO_REUSEPORT socket per TCP endpoint, and the kernel spreads new
#   connections evenly (a hash of the addresses); with one socket shared by
#   all, every worker wakes for each connection and whichever runs first
#   takes it; the price of a socket each is that a dead worker's share of new
#   connections waits for its replacement instead of going to the others.
#   Measured here with 2 workers: 16 connections opened at once all went to
#   one worker in 6 tries of 40 (0 of 40 with a socket each), and under
#   wrk -c16 one worker did all the work in 3 runs of 6 (never with a socket
#   each).
#   Elsewhere (SO_REUSEPORT does not balance there) and for unix sockets,
#   the workers share one socket. Before a group of SO_REUSEPORT sockets is
#   bound, a plain bind checks that nobody else listens there, so that a
#   port in use is still an error when the endpoint is not "shared".
# - The supervisor imports no app and starts no thread. fork() copies only
#   the calling thread, so a lock held by another would stay held forever in
#   the child (Python 3.12 warns); and a reload must run the apps' new code,
#   which a child forked from a process that had imported the old code would
#   not. So a short-lived child checks the config and imports the apps (a bad
#   config is one line and exit 2, as without workers) and reports the
#   endpoints to bind; each worker imports its apps after the fork.
# - --workers N runs N copies of the whole node; without it, router workers
#   that share a port run one process each. wsgi.multiprocess is then True.
# - One channel across the workers, with nothing to set up: the supervisor
#   relays channel messages. Each worker (when there are several) gets a
#   unix socketpair to it at fork -- a fresh one for a replacement or a
#   reloaded worker. A broadcast in a worker (a client's message on a
#   broadcast path, or channel.broadcast() from an app or handler) goes up
#   its link as one length-prefixed frame (build_relay_frame: path, text or
#   binary, payload); the supervisor sends each whole frame, in the order it
#   read them, to every worker -- the sender too, which delivers its own
#   broadcast when it comes back, as from Redis (section 15) -- so every
#   client of the node gets every message in one order: the supervisor is
#   the sequencer. A channel on the relay is named by its URL path, as on
#   Redis: two transports of the node with the same websocket path share it.
#   Transports whose router worker configures Redis use Redis instead (it
#   spans the processes already), so nothing arrives twice -- and while
#   Redis is unreachable their broadcasts stay in their worker. A node of
#   one process needs neither.
#   The relay never waits for a worker: the supervisor's links are
#   non-blocking, and it holds at most RELAY_BUFFER bytes for each worker. A
#   worker further behind (stopped, or starved of CPU) misses what does not
#   fit; once it has read the rest, it gets a "behind" frame and closes its
#   channel clients with 1013 (Try Again Later), since they missed messages
#   and the promise is every message in one order: they reconnect, and
#   memory stays bounded. (Killing the worker would also cost its HTTP
#   requests; delivering with gaps would break the promise unseen.) A
#   worker's own side queues at most RELAY_BUFFER bytes for the supervisor
#   and drops broadcasts beyond, with a log line, as the Redis publisher
#   does. A dead worker costs only its own clients. Delivery is at most
#   once, as through Redis. The supervisor relays in its one thread: it
#   waits only in _wait(), which moves the relay's bytes meanwhile -- in
#   its loop, while a child checks the config at a reload, while the
#   workers stop.

#: The signals the supervisor handles; blocked around fork() so that a worker
#: never runs the supervisor's handlers.
_SUPERVISOR_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD) \
    if hasattr(signal, "SIGCHLD") else ()
#: Whether the kernel spreads connections over sockets sharing a port with
#: SO_REUSEPORT (Linux 3.9+); BSD and macOS give them all to one.
REUSEPORT_BALANCES = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def _shares_ports(config) -> bool:
    """Whether two router workers of a config (not yet checked) have "shared": true endpoints."""
    sharing = 0
    for worker in (config.get("workers") if type(config) is dict else None) or ():
        transports = worker.get("transports") if type(worker) is dict else None
        sharing += any(type(t) is dict and type(t.get("endpoint")) is dict
                       and t["endpoint"].get("shared") is True for t in transports or ())
    return sharing > 1


def _router_worker(transport: WebTransport) -> int:
    """The index of the router worker a transport belongs to (from its JSON path)."""
    return int(re.match(r"workers\[(\d+)\]", transport.where).group(1))


def _exit_reason(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return "was killed by %s" % signal.Signals(-code).name
    return "exited with status %d" % code


class _PidFormatter(logging.Formatter):
    """Puts the process id before each message: the processes share one stderr."""

    def __init__(self, inner: logging.Formatter = None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record) -> str:
        record = logging.makeLogRecord(record.__dict__)     # a copy: other handlers get theirs
        record.msg, record.args = "[%d] %s" % (record.process, record.getMessage()), None
        return self.inner.format(record)


def _log_with_pids():
    for logger in (logging.getLogger(), log):
        for handler in logger.handlers:
            if not isinstance(handler.formatter, _PidFormatter):
                handler.setFormatter(_PidFormatter(handler.formatter))


class _ModuleWatcher:
    """--reload: the mtimes of the files of imported modules, and of other files."""

    def __init__(self, files=()):
        self.files = [f for f in files if f]
        self.mtimes = {}
        self.changed()

    def changed(self):
        """A file changed since the last look, or None. Modules imported since
        then are remembered as they are."""
        found = None
        modules = list(sys.modules.values())
        for path in [getattr(m, "__file__", None) for m in modules] + self.files:
            if type(path) is not str:
                continue
            try:
                mtime = os.stat(path).st_mtime_ns
            except OSError:
                continue
            if self.mtimes.setdefault(path, mtime) != mtime:
                self.mtimes[path] = mtime
                found = found or path
        return found


# -- the relay's frames (pure) ---------------------------------------------------

#: A relay frame's header: the bytes after it (path and payload), the kind
#: (b"t" text, b"b" binary, b"!" behind), and the path's length; then the
#: path (UTF-8) and the payload. The length comes first so that the
#: supervisor forwards whole frames without decoding them.
RELAY_HEADER = struct.Struct("!IBH")
#: What the supervisor sends a worker that fell behind, once it caught up.
RELAY_BEHIND_FRAME = RELAY_HEADER.pack(0, ord("!"), 0)


def build_relay_frame(path: str, message) -> bytes:
    """A channel message (str: text, bytes: binary) on ``path`` as one relay frame."""
    path_bytes = path.encode("utf-8")
    if isinstance(message, str):
        kind, payload = b"t", message.encode("utf-8")
    else:
        kind, payload = b"b", bytes(message)
    size = len(path_bytes) + len(payload)
    if size >= 2 ** 32 or len(path_bytes) >= 2 ** 16:
        raise ValueError("a channel message of %d bytes on %s is too large for the relay"
                         % (len(payload), _show(path)))
    return RELAY_HEADER.pack(size, kind[0], len(path_bytes)) + path_bytes + payload


def relay_frame_end(buffer, start: int = 0):
    """Where the relay frame at ``buffer[start:]`` ends, or None while it is incomplete.

    ValueError for bytes that are no frame (an unknown kind, a path longer
    than the frame): the supervisor then closes that worker's link.
    """
    if len(buffer) - start < RELAY_HEADER.size:
        return None
    size, kind, path_size = RELAY_HEADER.unpack_from(buffer, start)
    if kind not in b"tb!" or path_size > size or (kind == ord("!") and size):
        raise ValueError("not a relay frame: %s (expected a length, then t, b or !)"
                         % _show(bytes(buffer[start:start + RELAY_HEADER.size + 16])))
    end = start + RELAY_HEADER.size + size
    return end if end <= len(buffer) else None


def parse_relay_frame(buffer, start: int = 0):
    """The relay frame at ``buffer[start:]``: ((path, message), end), or None while incomplete.

    ``message`` is str for text, bytes for binary; the "behind" frame gives
    (None, None). ValueError as relay_frame_end, or for a path or text that
    is not UTF-8.
    """
    end = relay_frame_end(buffer, start)
    if end is None:
        return None
    _, kind, path_size = RELAY_HEADER.unpack_from(buffer, start)
    if kind == ord("!"):
        return (None, None), end
    path_end = start + RELAY_HEADER.size + path_size
    try:
        path = bytes(buffer[start + RELAY_HEADER.size:path_end]).decode("utf-8")
        payload = bytes(buffer[path_end:end])
        return (path, payload.decode("utf-8") if kind == ord("t") else payload), end
    except UnicodeDecodeError as exc:
        raise ValueError("a relay frame that is not UTF-8 where it must be: %s" % exc) from None


class WorkerRelay:
    """A worker's end of the supervisor's relay: the Channel.relay of its websocket paths.

    ``publish(path, message)`` queues a frame for the supervisor and returns
    at once (False if it had to be dropped); a thread writes the queue to
    the link; another reads what the supervisor sends -- every worker's
    broadcasts, this one's too, in one order -- and delivers each to the
    clients here of its path. ``connected`` is False once the link is gone
    (the supervisor died: the worker stops within RELOAD_POLL_INTERVAL);
    broadcasts then stay in this process.
    """

    def __init__(self, link: socket.socket, channels: dict):
        self.link = link                # a connected unix socket, blocking
        self.channels = channels        # path -> [Channel]: transports may share a path
        self.connected = True
        self.running = True
        self.pending = bytearray()      # frames for the supervisor, at most RELAY_BUFFER
        self.dropping = False           # logged once per run of dropped broadcasts
        self.cond = threading.Condition()

    def start(self) -> WorkerRelay:
        for target, name in ((self._read_loop, "wsgihost-relay-in"),
                             (self._write_loop, "wsgihost-relay-out")):
            threading.Thread(target=target, name=name, daemon=True).start()
        return self

    def stop(self):
        self.running = self.connected = False
        with self.cond:
            self.cond.notify_all()
        # Shut down, not closed: the reader may be in recv() on it, and a
        # descriptor closed under it could be handed to a new socket.
        _shutdown_socket(self.link, socket.SHUT_RDWR)

    def publish(self, path: str, message) -> bool:
        try:
            frame = build_relay_frame(path, message)
        except ValueError as exc:
            log.warning("a broadcast is dropped: %s", exc)
            return False
        with self.cond:
            if self.pending and len(self.pending) + len(frame) > RELAY_BUFFER:
                if not self.dropping:
                    log.warning("the supervisor's relay is %d bytes behind this worker: "
                                "broadcasts are dropped until it catches up", len(self.pending))
                self.dropping = True
                return False
            self.dropping = False
            self.pending += frame
            self.cond.notify()
        return True

    def _write_loop(self):
        try:
            while True:
                with self.cond:
                    while self.running and not self.pending:
                        self.cond.wait()
                    if not self.running:
                        return
                    data, self.pending = self.pending, bytearray()
                self.link.sendall(data)     # all that queued meanwhile, in one write
        except OSError as exc:
            if self.running:
                log.error("the link to the supervisor's relay failed: %s", exc)
        finally:
            self.connected = False

    def _read_loop(self):
        buffer = bytearray()
        try:
            while self.running:
                data = self.link.recv(RELAY_CHUNK)
                if not data:
                    break
                buffer += data
                start = 0
                while True:
                    parsed = parse_relay_frame(buffer, start)
                    if parsed is None:
                        break
                    (path, message), start = parsed
                    if path is None:
                        self._fell_behind()
                    else:
                        for channel in self.channels.get(path, ()):
                            channel.deliver(message)
                del buffer[:start]
        except (OSError, ValueError) as exc:
            if self.running:
                log.error("the link to the supervisor's relay failed: %s", exc)
        finally:
            self.connected = False
            if self.running:
                log.warning("no link to the supervisor's relay: channels reach the clients "
                            "of this worker only")

    def _fell_behind(self):
        """This worker missed messages: its clients are closed, to reconnect (see above)."""
        groups = list(self.channels.values())
        log.warning("this worker fell over %d MiB behind the channel relay and missed "
                    "messages: closing its %d channel clients with %d", RELAY_BUFFER // 2 ** 20,
                    sum(len(channel) for group in groups for channel in group),
                    RELAY_BEHIND_CLOSE_CODE)
        for group in groups:
            for channel in group:
                channel.close_all(RELAY_BEHIND_CLOSE_CODE, "missed messages: reconnect")


class _Worker:
    """The supervisor's record of one worker process."""

    def __init__(self, pid: int, index: int, status_fd: int, generation: int, keys: list):
        self.pid = pid
        self.index = index              # its place in the plan: what it serves, its sockets
        self.keys = keys                # the endpoint keys of the config it was started with
        self.status = status_fd         # read end of its pipe: "ready" and "reload" lines
        self.pending = b""
        self.generation = generation    # which reload started it
        self.started = time.monotonic()
        self.ready = False
        self.stopping = False           # sent TERM: its exit is expected
        self.link = None                # the relay's non-blocking socket to it, if any
        self.inbox = bytearray()        # what it sent, up to a frame not yet whole
        self.outbox = bytearray()       # frames for it, at most RELAY_BUFFER (one may be over)
        self.behind = False             # frames for it were dropped: owes it the "behind" frame


class Supervisor:
    """A node run as worker processes on the supervisor's listening sockets (see above)."""

    def __init__(self, config, cbdir: str, filename: str, workers: int = 1, *,
                 config_path: str = None, reload: bool = False, access_log: bool = False,
                 debug: bool = False):
        self.config, self.cbdir, self.filename = config, cbdir, filename
        self.config_path = config_path      # read again at a reload (None for --app)
        self.copies = workers
        self.watch = reload
        self.access_log = access_log
        self.debug = debug
        self.pid = os.getpid()
        self.sockets = {}               # (endpoint key, n) -> listening socket
        self.keys = []                  # each transport's endpoint key, in config order
        self.plan = []                  # worker i serves plan[i]: a router worker, or None for all
        self.workers = {}               # pid -> _Worker
        self.signals = collections.deque()    # appended to by the signal handler
        self.stop_requests = 0                # TERMs and INTs received, ever
        self.generation = 0
        self.serving = False            # every first worker has started
        self.stopping = False
        self.status = 0
        self.grace = SHUTDOWN_GRACE
        self.restarts = []              # (time.monotonic(), index) of workers to start again
        self.young_deaths = 0
        self.reloading = None           # during a reload: the state to go back to if it fails
        self.to_start = []              # indexes a reload has still to start
        self.to_stop = []               # old workers a reload has still to stop
        self.newcomer = None            # the new worker a reload waits for
        self.reload_again = False

    # -- the supervisor's loop ---------------------------------------------------

    def run(self) -> int:
        """Check, bind, start the workers, supervise until TERM or INT; the exit status."""
        if not hasattr(os, "fork"):
            print("wsgihost: worker processes need fork(), which this platform lacks",
                  file=sys.stderr)
            return 2
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        previous = {signum: signal.signal(signum, self._on_signal) for signum in _SUPERVISOR_SIGNALS}
        old_wakeup = signal.set_wakeup_fd(self._wake_w)
        try:
            report = self._check()
            if report is None:
                return 2            # the checker said why, in one line
            try:
                self._listen(report)
            except OSError as exc:
                print(exc.strerror or exc, file=sys.stderr)
                return 1
            _log_with_pids()
            log.info("supervisor: starting %d worker process%s", len(self.plan),
                     "es" if len(self.plan) > 1 else "")
            for index in range(len(self.plan)):
                self._spawn(index)
            while not self.stopping:
                self._step()
            self._stop_all()
            return self.status
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._close_sockets(set())
            for worker in self.workers.values():
                self._unlink(worker)
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _on_signal(self, signum, frame):
        self.signals.append(signum)
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stop_requests += 1

    def _step(self):
        """One turn: wait for a signal, a worker's word or a due restart; act on them."""
        now = time.monotonic()
        timeout = min([1.0] + [when - now for when, _ in self.restarts])
        fds = [self._wake_r] + [w.status for w in self.workers.values() if w.status is not None]
        for fd in self._wait(fds, max(timeout, 0.0)):
            if fd == self._wake_r:
                _drain(fd)
                continue
            worker = next((w for w in self.workers.values() if w.status == fd), None)
            if worker is not None:          # (a reload while hearing another may have moved it)
                self._hear(worker)
        while self.signals:
            signum = self.signals.popleft()
            if signum in (signal.SIGTERM, signal.SIGINT):
                log.info("%s: stopping the workers (requests in flight may finish)",
                         signal.Signals(signum).name)
                self.stopping = True
                return
            if signum == signal.SIGHUP:
                log.info("SIGHUP: reloading")
                self._reload()
        self._reap()
        now = time.monotonic()
        for entry in [r for r in self.restarts if r[0] <= now]:
            self.restarts.remove(entry)
            if entry[1] < len(self.plan):
                self._spawn(entry[1])
        if self.reloading is not None:
            self._roll()

    def _hear(self, worker: _Worker):
        """Read a worker's status lines: "ready", "reload"."""
        try:
            data = os.read(worker.status, 4096)
        except BlockingIOError:
            return
        if not data:                        # it exited, or is exiting: _reap hears of it
            os.close(worker.status)
            worker.status = None
            return
        *lines, worker.pending = (worker.pending + data).split(b"\n")
        for line in lines:
            if line == b"ready":
                worker.ready = True
                if not self.serving and all(w.ready for w in self.workers.values()):
                    self.serving = True
            elif line == b"reload" and worker.generation == self.generation and not worker.stopping:
                self._reload()

    # -- the channel relay -------------------------------------------------------------

    def _wait(self, fds: list, timeout: float) -> list:
        """select() on ``fds`` for up to ``timeout`` s; which are readable.

        Meanwhile the relay moves: frames from every worker's link are
        queued for every worker, and queued frames sent as far as each
        link takes them without waiting.
        """
        links = {w.link: w for w in self.workers.values() if w.link is not None}
        sending = [w.link for w in links.values() if w.outbox or w.behind]
        readable, _, _ = select.select(fds + list(links), sending, [], timeout)
        ready = []
        for item in readable:
            worker = links.get(item)
            if worker is None:
                ready.append(item)
            elif worker.link is not None:
                self._relay_in(worker)
        for worker in links.values():
            if worker.link is not None and (worker.outbox or worker.behind):
                self._relay_out(worker)
        return ready

    def _relay_in(self, worker: _Worker):
        """Read from a worker's link; queue its whole frames for every worker, it too."""
        try:
            data = worker.link.recv(RELAY_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:                        # it exited: _reap hears of it
            self._unlink(worker)
            return
        inbox = worker.inbox
        inbox += data
        end = 0
        try:
            while True:
                frame_end = relay_frame_end(inbox, end)
                if frame_end is None:
                    break
                end = frame_end
        except ValueError as exc:
            log.error("worker %d: %s; its link to the relay is closed", worker.pid, exc)
            self._unlink(worker)
            return
        if end:
            frames = bytes(inbox[:end])
            del inbox[:end]
            for other in self.workers.values():
                if other.link is not None:
                    self._relay_queue(other, frames)

    def _relay_queue(self, worker: _Worker, frames: bytes):
        if worker.behind:
            return                          # it gets the "behind" frame once it catches up
        if worker.outbox and len(worker.outbox) + len(frames) > RELAY_BUFFER:
            log.warning("worker %d is %d bytes behind the channel relay: it misses messages "
                        "from now until it catches up, then its channel clients are closed "
                        "(%d)", worker.pid, len(worker.outbox), RELAY_BEHIND_CLOSE_CODE)
            worker.behind = True
            return
        worker.outbox += frames

    def _relay_out(self, worker: _Worker):
        """Send a worker what is queued for it, as far as its link takes it now."""
        while True:
            if not worker.outbox:
                if not worker.behind:
                    return
                worker.behind = False       # it has read all it was sent: now it may know
                worker.outbox += RELAY_BEHIND_FRAME
            try:
                sent = worker.link.send(worker.outbox[:RELAY_CHUNK])
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._unlink(worker)
                return
            del worker.outbox[:sent]        # (cheap: a bytearray drops its head in place)

    def _unlink(self, worker: _Worker):
        if worker.link is not None:
            worker.link.close()
        worker.link, worker.inbox, worker.outbox, worker.behind = None, bytearray(), bytearray(), False

    # -- workers: start, reap, replace ----------------------------------------------

    def _fork(self, child) -> int:
        """Fork; the child runs ``child()`` and exits with what it returns."""
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SUPERVISOR_SIGNALS)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            raise
        if pid:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            return pid
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for signum in _SUPERVISOR_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(self._wake_r)
            os.close(self._wake_w)
            for worker in self.workers.values():
                if worker.status is not None:
                    os.close(worker.status)
                if worker.link is not None:
                    worker.link.close()
            code = child()
        except SystemExit as exc:
            code = exc.code if type(exc.code) is int else 1
        except BaseException:
            log.exception("a worker process failed")
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def _spawn(self, index: int) -> _Worker:
        read_fd, write_fd = os.pipe()
        # The relay's link (see above), where there are other workers to reach.
        link, worker_end = socket.socketpair() if len(self.plan) > 1 else (None, None)
        try:
            pid = self._fork(lambda: self._serve(index, read_fd, write_fd, worker_end, link))
        except BaseException:
            os.close(read_fd)
            for sock in (link, worker_end):
                if sock is not None:
                    sock.close()
            raise
        finally:
            os.close(write_fd)
            if worker_end is not None:
                worker_end.close()
        os.set_blocking(read_fd, False)
        worker = self.workers[pid] = _Worker(pid, index, read_fd, self.generation, self.keys)
        if link is not None:
            link.setblocking(False)
            worker.link = link
        return worker

    def _reap(self):
        for worker in list(self.workers.values()):
            try:
                pid, status = os.waitpid(worker.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = worker.pid, 0
            if pid:
                self._exited(worker, status)

    def _exited(self, worker: _Worker, status: int):
        del self.workers[worker.pid]
        if worker.status is not None:
            os.close(worker.status)
        self._unlink(worker)
        reason = _exit_reason(status)
        if worker.stopping:
            log.debug("worker %d stopped: it %s", worker.pid, reason)
            return
        if worker is self.newcomer:
            log.error("reload failed: the new worker %d %s before serving; the workers "
                      "that serve stay", worker.pid, reason)
            self._abandon_reload()
            return
        if not self.serving and not worker.ready:
            log.error("worker %d %s before serving; stopping", worker.pid, reason)
            self.status = 2 if os.waitstatus_to_exitcode(status) == 2 else 1
            self.stopping = True
            return
        young = time.monotonic() - worker.started < WORKER_STABLE_TIME
        self.young_deaths = self.young_deaths + 1 if young else 0
        if worker in self.to_stop:          # the reload under way replaces it
            self.to_stop.remove(worker)
            log.warning("worker %d %s", worker.pid, reason)
            return
        delay = min(RESTART_BACKOFF * 2 ** self.young_deaths, RESTART_BACKOFF_MAX)
        log.warning("worker %d %s; starting another in %.1f s", worker.pid, reason, delay)
        self.restarts.append((time.monotonic() + delay, worker.index))

    def _stop_worker(self, worker: _Worker, how=signal.SIGTERM):
        worker.stopping = True
        try:
            os.kill(worker.pid, how)
        except ProcessLookupError:
            pass

    def _stop_all(self):
        """TERM to every worker; wait for them (shutdown_grace, and a margin); KILL the rest."""
        self.restarts = []
        for worker in self.workers.values():
            self._stop_worker(worker)
        deadline = time.monotonic() + self.grace + 5.0
        requests = self.stop_requests
        while self.workers and time.monotonic() < deadline:
            self._reap()
            self._wait([self._wake_r], 0.05)
            _drain(self._wake_r)
            if self.stop_requests > requests:
                log.info("stopping now: killing the workers")
                break
        for worker in list(self.workers.values()):
            self._stop_worker(worker, signal.SIGKILL)
            os.waitpid(worker.pid, 0)
            del self.workers[worker.pid]
            self._unlink(worker)
        log.info("stopped")

    # -- reloading ---------------------------------------------------------------

    def _reload(self):
        """Check the config again, then replace the workers one by one (_roll)."""
        if self.reloading is not None:
            self.reload_again = True        # once this one is done
            return
        saved = (self.config, self.cbdir, self.keys, self.plan)
        try:
            if self.config_path is not None:
                self.config, self.cbdir = load_config(self.config_path)
            report = self._check()
            if report is None:
                raise ConfigError("", "the config or an app does not load (see above)", "")
            self._listen(report)
        except (ConfigError, OSError) as exc:
            log.error("reload failed: %s; the workers stay",
                      exc.strerror if isinstance(exc, OSError) else exc)
            self.config, self.cbdir, self.keys, self.plan = saved
            return
        self.generation += 1
        self.reloading = saved
        self.to_start = list(range(len(self.plan)))
        self.to_stop = sorted((w for w in self.workers.values() if not w.stopping),
                              key=lambda w: w.started)
        self._roll()

    def _roll(self):
        """The next step of a reload: start a worker, or, once it serves, stop an old one."""
        newcomer = self.newcomer
        if newcomer is not None:
            if not newcomer.ready:
                if time.monotonic() - newcomer.started > WORKER_START_TIMEOUT:
                    log.error("reload failed: the new worker %d did not start within %g s; the "
                              "workers that serve stay", newcomer.pid, WORKER_START_TIMEOUT)
                    self._stop_worker(newcomer, signal.SIGKILL)
                    self._abandon_reload()
                return
            self.newcomer = None
            if self.to_stop:                # the old worker in its place, else the oldest
                old = next((w for w in self.to_stop if w.index == newcomer.index), self.to_stop[0])
                self.to_stop.remove(old)
                self._stop_worker(old)
        if self.to_start:
            self.newcomer = self._spawn(self.to_start.pop(0))
            return
        for worker in self.to_stop:
            self._stop_worker(worker)
        self.to_stop = []
        self.reloading = None
        log.info("reloaded: workers %s", ", ".join(
            str(w.pid) for w in self.workers.values() if not w.stopping))
        self._close_sockets(self._wanted())
        if self.reload_again:
            self.reload_again = False
            self._reload()

    def _abandon_reload(self):
        self.config, self.cbdir, self.keys, self.plan = self.reloading
        self.reloading = self.newcomer = None
        self.to_start, self.to_stop = [], []
        self._close_sockets(self._wanted())     # a new endpoint nobody serves must not listen
        # A worker of the old plan that died meanwhile is replaced now.
        covered = {w.index for w in self.workers.values() if not w.stopping}
        covered.update(index for _, index in self.restarts)
        for index in range(len(self.plan)):
            if index not in covered:
                self.restarts.append((time.monotonic(), index))

    # -- checking the config, and its sockets ------------------------------------------

    def _check(self):
        """Check the config and import its apps in a short-lived child: its report, or None.

        The report: each transport's endpoint, in config order, and the
        longest shutdown_grace. Waits for the child (up to WORKER_START_TIMEOUT).
        """
        read_fd, write_fd = os.pipe()
        pid = self._fork(lambda: self._check_in_child(read_fd, write_fd))
        os.close(write_fd)
        data, deadline = b"", time.monotonic() + WORKER_START_TIMEOUT
        try:
            while True:
                if time.monotonic() > deadline:
                    log.error("checking the config took over %g s: given up", WORKER_START_TIMEOUT)
                    os.kill(pid, signal.SIGKILL)
                    break
                if self.stop_requests:
                    os.kill(pid, signal.SIGKILL)        # stopping: no time for it
                    break
                if self._wait([read_fd], 0.5):
                    chunk = os.read(read_fd, 65536)
                    if not chunk:
                        break
                    data += chunk
        finally:
            os.close(read_fd)
            _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0 or not data:
            return None
        return json.loads(data)

    def _check_in_child(self, read_fd: int, write_fd: int) -> int:
        os.close(read_fd)
        for sock in self.sockets.values():
            sock.close()
        try:
            transports = build_transports(self.config, self.cbdir, self.filename)
        except ConfigError as exc:
            if self.debug:
                traceback.print_exc()
            print(exc, file=sys.stderr)
            return 2
        report = {"grace": max(t.limits.shutdown_grace for t in transports),
                  "endpoints": [{"worker": _router_worker(t), "family": int(t.family),
                                 "host": t.host, "port": t.port, "backlog": t.backlog,
                                 "shared": t.shared} for t in transports]}
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(json.dumps(report).encode())
        return 0

    def _listen(self, report: dict):
        """Plan the workers for a report, and bind the sockets they need that are not
        bound yet. OSError, naming the address, if one cannot be had."""
        endpoints = report["endpoints"]
        keys, shared = [], {}
        for i, e in enumerate(endpoints):
            family = socket.AddressFamily(e["family"])
            # TCP port 0 is "any free port": never the same socket as another's.
            key = (family, e["host"], e["port"] if e["port"] or family == _AF_UNIX else "#%d" % i)
            if key in shared and not (shared[key] and e["shared"]):
                raise OSError(errno.EADDRINUSE, "cannot listen on %s: Address already in use (by "
                              "another transport of the config)"
                              % endpoint_address(family, e["host"], e["port"]))
            shared[key] = e["shared"]
            keys.append(key)
        plan = self._plan(keys, endpoints)
        opened = {}
        try:
            for key, e in zip(keys, endpoints):
                # Linux: a socket per worker (see above); the first checks the port is free.
                own = len(plan) if REUSEPORT_BALANCES and key[0] != _AF_UNIX else 1
                have = [self.sockets.get((key, n)) or opened.get((key, n)) for n in range(own)]
                port = e["port"]
                for n in range(own):
                    if have[n] is None:
                        address = endpoint_address(key[0], e["host"], port)
                        try:
                            if own > 1 and n == 0 and not e["shared"]:
                                bind_listener(key[0], e["host"], port, 1).close()
                            have[n] = opened[key, n] = bind_listener(
                                key[0], e["host"], port, e["backlog"], e["shared"] or own > 1)
                        except OSError as exc:
                            raise OSError(exc.errno, "cannot listen on %s: %s"
                                          % (address, exc.strerror or exc)) from exc
                    if n == 0 and key[0] != _AF_UNIX:
                        port = have[0].getsockname()[1]     # port 0: the others join the first
        except BaseException:
            for sock in opened.values():
                sock.close()
            raise
        self.sockets.update(opened)
        self.keys, self.plan, self.grace = keys, plan, report["grace"]

    def _plan(self, keys: list, endpoints: list) -> list:
        """What each worker serves: N copies of everything, or a router worker each."""
        if self.copies == 1:
            owners = collections.defaultdict(set)
            for key, e in zip(keys, endpoints):
                owners[key].add(e["worker"])
            if any(len(workers) > 1 for workers in owners.values()):
                return sorted({e["worker"] for e in endpoints})
        return [None] * self.copies

    def _wanted(self) -> set:
        """The sockets that the plan and the workers serving (not stopping) use."""
        wanted = {(key, n) for key in self.keys for n in range(len(self.plan))}
        for worker in self.workers.values():
            if not worker.stopping:
                wanted.update((key, n) for key in worker.keys for n in (0, worker.index))
        return wanted

    def _close_sockets(self, keep: set):
        for key, n in [k for k in self.sockets if k not in keep]:
            self.sockets.pop((key, n)).close()
            if key[0] == _AF_UNIX:
                try:
                    os.unlink(key[1])
                except OSError:
                    pass

    # -- a worker process ---------------------------------------------------------------

    def _serve(self, index: int, read_fd: int, write_fd: int, link=None, supervisor_end=None) -> int:
        """A worker: import the apps, serve on the inherited sockets until TERM.

        ``link``: its end of the relay's socketpair (None without other workers).
        """
        os.close(read_fd)
        if supervisor_end is not None:
            supervisor_end.close()
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
        logging.disable(logging.WARNING)      # the checker has said it once
        try:
            transports = build_transports(self.config, self.cbdir, self.filename)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        finally:
            logging.disable(logging.NOTSET)
        serves = self.plan[index]
        mine = []
        for transport, key in zip(transports, self.keys):
            if serves is None or _router_worker(transport) == serves:
                sock = self.sockets.get((key, index)) or self.sockets[key, 0]
                transport.listener = sock.dup()
                transport.base_environ["wsgi.multiprocess"] = len(self.plan) > 1
                transport.access_log = transport.access_log or self.access_log
                mine.append(transport)
        for sock in self.sockets.values():
            sock.close()            # those it serves are dup()ed; the others are not its own
        watcher = _ModuleWatcher([self.config_path]) if self.watch else None    # before serving
        node = Node(transports=mine)
        node.worker_link = link
        node.start()
        for transport in mine:
            log.info("serving %s", ", ".join(transport.urls()))
        os.write(write_fd, b"ready\n")
        while not stop.wait(RELOAD_POLL_INTERVAL):
            if os.getppid() != self.pid:
                log.warning("the supervisor is gone: stopping")
                break
            changed = watcher and watcher.changed()
            if changed:
                log.info("%s changed: asking for a reload", changed)
                try:
                    os.write(write_fd, b"reload\n")
                except OSError:
                    pass
        node.stop()
        return 0


def _drain(fd: int):
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


# =============================================================================
# 17. Command line
# =============================================================================
# Crossbar's habits (a config file or node directory, --cbdir, --config) and
# gunicorn's (MODULE:OBJECT, --bind, --workers, --reload): an app given on the
# command line becomes a config of one router worker with one web transport
# per --bind, so that both ways run the same code.

#: A positional argument that is not a file or folder, and reads as
#: module:object, is an app to serve (as gunicorn takes it).
APP_SPEC_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def parse_bind(text: str) -> dict:
    """A --bind address as a config endpoint: HOST:PORT, [IPV6]:PORT or unix:PATH.

    ``parse_bind("[::1]:8000")`` is ``{"type": "tcp", "interface": "::1",
    "port": 8000, "version": 6}``; ":8000" is every interface. ValueError if
    it is none of these.
    """
    if text.startswith("unix:"):
        if not text[5:]:
            raise ValueError("unix: needs the socket file's path, as in unix:/run/app.sock")
        return {"type": "unix", "path": text[5:]}
    host, colon, port = text.rpartition(":")
    if not colon or re.fullmatch(r"[0-9]{1,5}", port) is None:
        raise ValueError("expected HOST:PORT, [IPV6]:PORT or unix:PATH, got %r" % text)
    if int(port) > 65535:
        raise ValueError("port %s out of range (0-65535) in %r" % (port, text))
    endpoint = {"type": "tcp", "port": int(port), "interface": host}
    if host.startswith("[") and host.endswith("]"):
        endpoint.update(interface=host[1:-1], version=6)
    elif ":" in host:
        raise ValueError("an IPv6 address goes in brackets, as in [%s]:%s" % (host, port))
    return endpoint


def _command_line_config(args):
    """The config the arguments ask for: (config, CBDIR, its name, its file or None)."""
    app = args.app
    target = args.config_path
    if target and not os.path.exists(target) and APP_SPEC_RE.fullmatch(target):
        if app:
            raise ConfigError("--app", "two apps given (%s and %s): serve one" % (app, target),
                              "wsgihost")
        app, target = target, None
    if app is None:
        for flag, value in (("--bind", args.bind), ("--host", args.host), ("--port", args.port),
                            ("--certfile", args.certfile), ("--keyfile", args.keyfile),
                            ("--forwarded-allow-ips", args.forwarded_allow_ips)):
            if value is not None:
                raise ConfigError(flag, "applies to an app given on the command line; a config "
                                  "file names its own endpoints", "wsgihost")
        path = config_file(_find_config(args))
        config, cbdir = load_config(path)
        return config, cbdir, path, path
    if target or args.cbdir or args.config:
        raise ConfigError("--app", "an app and a config file (%s) given: serve one or the other"
                          % (target or _find_config(args)), "wsgihost")
    module, colon, obj = app.partition(":")
    if not colon or not module or not obj:
        raise ConfigError("--app", "expected MODULE:OBJECT, got %r" % app, "wsgihost")
    if args.bind and (args.host is not None or args.port is not None):
        raise ConfigError("--bind", "give --bind, or --host and --port, not both", "wsgihost")
    try:
        endpoints = [parse_bind(text) for text in args.bind or ()] or [{
            "type": "tcp", "port": 8080 if args.port is None else args.port,
            "interface": "127.0.0.1" if args.host is None else args.host}]
    except ValueError as exc:
        raise ConfigError("--bind", str(exc), "wsgihost") from None
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())     # like gunicorn: apps in the current directory
    if (args.certfile is None) != (args.keyfile is None):
        raise ConfigError("--certfile" if args.keyfile else "--keyfile",
                          "TLS needs both --certfile and --keyfile", "wsgihost")
    options = {}
    if args.forwarded_allow_ips:            # gunicorn's spelling: "127.0.0.1,10.0.0.0/8"
        options["trusted_proxies"] = [ip.strip() for ip in args.forwarded_allow_ips.split(",")
                                      if ip.strip()]
    if args.certfile:
        for endpoint in endpoints:
            if endpoint["type"] == "tcp":
                endpoint["tls"] = {"certificate": args.certfile, "key": args.keyfile}
    service = {"type": "wsgi", "module": module, "object": obj}
    transports = [{"type": "web", "endpoint": e, "paths": {"/": service}, "options": options}
                  for e in endpoints]
    return {"workers": [{"type": "router", "transports": transports}]}, os.getcwd(), "--app", None


def _positive(text: str) -> int:
    if re.fullmatch(r"[0-9]{1,6}", text) is None or int(text) < 1:
        raise argparse.ArgumentTypeError("expected a number of processes (1 or more), got %r" % text)
    return int(text)


def _find_config(args) -> str:
    if args.config_path:
        return args.config_path
    if args.cbdir or args.config:
        return os.path.join(args.cbdir or ".crossbar", args.config or "config.json")
    for default in (os.path.join(".crossbar", "config.json"), "config.json"):
        if os.path.exists(default):
            return default
    raise ConfigError("", "no config given, and neither .crossbar/config.json nor ./config.json "
                      "exists here (%s)" % os.getcwd(), "wsgihost")


def configure_logging(level: str) -> logging.Handler:
    """Send the ``wsgihost`` loggers' records to stderr at ``level``.

    Only the server's own loggers: the root logger is left to the apps. A
    handler there (logging.basicConfig) would print a second copy of every
    line of an app that configures its own, as Django does, and with
    propagation off the server's lines are printed once whatever the app sets
    up. Calling this again replaces the handler it added before.
    """
    logger = logging.getLogger("wsgihost")
    for handler in list(logger.handlers):
        if getattr(handler, "wsgihost_own", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.wsgihost_own = True
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handler


def _count_paths(transports) -> int:
    return sum(1 for t in transports for _ in t.root.services())


def main(argv=None) -> int:
    """The command line (README: Command line). Returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="wsgihost", description="Serve WSGI apps from a Crossbar.io node config, or one app.")
    parser.add_argument("config_path", nargs="?", metavar="CONFIG | MODULE:OBJECT",
                        help="config file, or a directory holding .crossbar/config.json or "
                             "config.json (default: the current one); or an app to serve")
    parser.add_argument("--cbdir", help="node directory (Crossbar's flag)")
    parser.add_argument("--config", help="config file, relative to --cbdir")
    parser.add_argument("--app", metavar="MODULE:OBJECT", help="serve one WSGI app, no config file")
    parser.add_argument("-b", "--bind", action="append", metavar="ADDRESS",
                        help="with an app: HOST:PORT, [IPV6]:PORT or unix:PATH; repeatable "
                             "(default 127.0.0.1:8080)")
    parser.add_argument("--host", help="with an app (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="with an app (default 8080)")
    parser.add_argument("-w", "--workers", type=_positive, default=1, metavar="N",
                        help="worker processes sharing the listening sockets (default 1)")
    parser.add_argument("--reload", action="store_true",
                        help="development: restart the workers when a module they imported, "
                             "or the config, changes")
    parser.add_argument("--certfile", help="with an app: serve https with this certificate (PEM)")
    parser.add_argument("--keyfile", help="with an app: the certificate's private key (PEM)")
    parser.add_argument("--forwarded-allow-ips", metavar="IPS",
                        help="with an app: proxies (addresses, CIDR ranges, comma-separated) "
                             "whose Forwarded/X-Forwarded-* fields are believed (trusted_proxies)")
    parser.add_argument("--access-log", action="store_true",
                        help="log every request (Apache combined format), on every transport")
    parser.add_argument("--check", action="store_true",
                        help="validate the config and import the apps, then exit")
    parser.add_argument("--loglevel", default="info", choices=["debug", "info", "warn", "error"])
    parser.add_argument("--version", action="version", version="wsgihost " + __version__)
    args = parser.parse_args(argv)

    configure_logging({"warn": "WARNING"}.get(args.loglevel, args.loglevel.upper()))
    try:
        config, cbdir, filename, path = _command_line_config(args)
        processes = not args.check and (args.workers > 1 or args.reload or _shares_ports(config))
        if not processes:
            node = Node(config, cbdir, filename)
    except ConfigError as exc:
        if args.loglevel == "debug":
            traceback.print_exc()
        print(exc, file=sys.stderr)
        return 2
    if args.check:
        print("ok: %d transports, %d paths" % (len(node.transports), _count_paths(node.transports)))
        return 0
    if processes:
        return Supervisor(config, cbdir, filename, args.workers, config_path=path,
                          reload=args.reload, access_log=args.access_log,
                          debug=args.loglevel == "debug").run()
    for transport in node.transports:
        transport.access_log = transport.access_log or args.access_log
    try:
        return run_node(node)
    except OSError as exc:          # a port in use, an address not ours
        print(exc.strerror or exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    # An app that does "import wsgihost" must get this running module, not a
    # second copy with its own state.
    sys.modules.setdefault("wsgihost", sys.modules[__name__])
    sys.exit(main())
