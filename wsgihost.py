"""wsgihost -- a WSGI host in one file of pure standard-library Python.

wsgihost serves WSGI applications (Flask, Django, Pyramid or plain WSGI) and
WebSocket endpoints from a Crossbar.io node configuration, as Crossbar's "WSGI
Host Service" does, with nothing to install: copy this file into a project, or
``pip install`` it, and run it.

Three ways to use it::

    python wsgihost.py .crossbar/config.json        # a Crossbar.io node config
    python wsgihost.py --app myapp:app --port 8080   # one app, no config file
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
- Crossbar.io's node config: router workers, web transports on TCP, paths
  dispatched per URL segment to ``wsgi`` apps, ``websocket`` endpoints and
  nested ``path`` trees.

What it does not do (yet): TLS, unix sockets, HTTP/2, ``static``,
``redirect`` and ``json`` services, and the WAMP router that Crossbar also is.

Reading order -- the sections follow the life of a request; ``grep -n "^# [0-9]"
wsgihost.py`` prints this map:

     1. Limits and protocol constants
     2. Errors
     3. The request head: parsing bytes           (pure: no sockets)
     4. Request bodies: wsgi.input
     5. The WSGI environ                          (pure)
     6. The WSGI response: start_response, write, framing
     7. The connection: one thread, many requests
     8. WebSocket (RFC 6455, RFC 7692): handshake, frames, compression, channels
     9. Path dispatch and app loading
    10. Configuration
    11. The socket server and the node
    12. Command line

Copyright (c) 2026 the wsgihost authors. MIT License (see LICENSE): use, copy,
modify and distribute freely, keeping this notice; no warranty.
"""

from __future__ import annotations

import _thread
import argparse
import base64
import codecs
import collections
import enum
import fnmatch
import hashlib
import http
import importlib
import json
import logging
import os
import queue
import re
import signal
import socket
import socketserver
import stat
import struct
import sys
import threading
import time
import traceback
import zlib
from urllib.parse import unquote

__version__ = "0.1.0"
__all__ = [
    "serve", "Node", "load_config", "ConfigError", "HTTPError",
    "FileWrapper", "parse_request_head", "parse_body_framing",
    "parse_request_target", "parse_chunk_size", "build_environ",
    "build_response_head", "main", "WebSocket", "Channel", "WebSocketError",
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
#: Connections served at once by one transport; further ones wait in the
#: listen backlog until a slot frees up.
MAX_CONNECTIONS = 1000
#: Listen backlog. socketserver's default of 5 drops connections in a burst;
#: the kernel caps this at net.core.somaxconn (4096 on current Linux).
LISTEN_BACKLOG = 1024
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
#: Seconds to wait for the client's Close after ours (Crossbar: 1 s).
CLOSE_HANDSHAKE_TIMEOUT = 1.0
#: Seconds of silence before a ping, and for its pong to come; then the
#: connection is dropped. Browsers answer pings by themselves.
AUTO_PING_INTERVAL = 30.0
AUTO_PING_TIMEOUT = 30.0
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
INFLATE_STEP = 256 * 1024

#: Bytes asked of the kernel per recv(); larger reads for big bodies.
RECV_SIZE = 64 * 1024
MAX_RECV_SIZE = 256 * 1024
#: Responses up to this size go out in one send() with their head.
MAX_COALESCED_BODY = 64 * 1024
#: Larger sends go in slices of this size, each with its own timeout: since
#: Python 3.5 a socket timeout bounds a whole sendall(), which would cut off a
#: big response to a slow but steady reader.
SEND_SLICE = 256 * 1024
#: An idle pool thread exits after this many seconds without a connection.
IDLE_THREAD_TIMEOUT = 60.0

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
# RFC 9110 §8.6: Content-Length = 1*DIGIT. No sign, no spaces, no list; 18
# digits keep the value under 2**63.
CONTENT_LENGTH_RE = re.compile(r"[0-9]{1,18}")
# RFC 9110 §7.2 and RFC 3986 §3.2.2: Host = uri-host [ ":" port ]
HOST_RE = re.compile(r"(?:\[[0-9A-Za-z:.%_~-]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::[0-9]*)?")
# RFC 9112 §7.1: chunk-size [ chunk-ext ] CRLF, where
# chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ),
# ext-val = token / quoted-string. Whitespace is allowed around ";" and "="
# only, never before the CRLF. 16 hex digits keep the size under 2**64.
_QUOTED_STRING = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
CHUNK_LINE_RE = re.compile(
    rb"([0-9A-Fa-f]{1,16})((?:[ \t]*;[ \t]*[%s]+(?:[ \t]*=[ \t]*(?:[%s]+|%s))?)*)\r\n"
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
    """A comma-separated list of case-insensitive tokens (RFC 9110 §5.6.1), lowered."""
    return [token.strip(" \t").lower() for token in value.split(",")]


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
        codings = parse_tokens(transfer_encoding)
        if codings == ["chunked"]:
            return None
        if codings[-1] != "chunked" or "chunked" in codings[:-1] or "" in codings:
            # RFC 9112 §6.3 (4): chunked must be final, and only once.
            raise HTTPError(400, "Transfer-Encoding %r: chunked must be the final coding, once"
                            % transfer_encoding)
        # RFC 9112 §6.1: 501 for a transfer coding the server does not understand.
        raise HTTPError(501, "Transfer-Encoding %r is not implemented (only chunked)"
                        % transfer_encoding)
    if content_length is None:
        return 0                    # RFC 9112 §6.3 (7): no body
    if CONTENT_LENGTH_RE.fullmatch(content_length) is None:
        raise HTTPError(400, "invalid Content-Length %s (expected 1 to 18 digits)"
                        % _show(content_length))
    return int(content_length)


def parse_chunk_size(line: bytes) -> int:
    """The size in a chunk-size line (CRLF included); extensions are checked and ignored."""
    match = CHUNK_LINE_RE.fullmatch(line)
    if match is None:
        raise HTTPError(400, "invalid chunk-size line %s (expected hex digits, optional "
                        ";extensions, CRLF)" % _show(line))
    return int(match.group(1), 16)


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

    __slots__ = ("sock", "buffer", "receiving")

    def __init__(self, sock, buffer: bytes = b""):
        self.sock = sock
        self.buffer = buffer
        self.receiving = False      # a request head has begun to arrive

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


def read_request_head(reader: SocketReader, limits: Limits):
    """Receive one request head; return its bytes without the empty line.

    None: the client closed, or stayed idle for ``client_timeout``, before
    sending a byte of a request. HTTPError: 408 when a head did not complete
    within ``client_timeout`` of its first byte, 414/431 when it outgrows its
    limits, 400 for bare LF line endings.
    """
    buffer = reader.buffer
    if buffer[:1] in (b"\r", b"\n"):
        buffer = buffer.lstrip(b"\r\n")        # RFC 9112 §2.2: empty lines before a request
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        buffer = _receive_head(reader, buffer, limits)
        if buffer is None:
            return None
        end = buffer.find(b"\r\n\r\n")
    if end + 4 > limits.max_head_size:          # it may have come whole in one recv()
        raise HTTPError(431, "request head of %d bytes, over the limit of %d"
                        % (end + 4, limits.max_head_size))
    reader.buffer = bytes(buffer[end + 4:])
    return bytes(buffer[:end])


def _receive_head(reader: SocketReader, buffer, limits: Limits):
    """recv() until the buffer holds a whole head; the slow path of read_request_head.

    The buffer grows as a bytearray and only new bytes are searched, so a
    head trickling in byte by byte costs linear time. Once any byte has come
    (an empty line too), the rest must come within client_timeout: each
    recv() waits only what is left (slowloris).
    """
    sock = reader.sock
    deadline = None
    searched = 0
    request_line_seen = False
    try:
        while True:
            if len(buffer) > limits.max_head_size:
                raise HTTPError(431, "request head over the limit of %d bytes" % limits.max_head_size)
            if not request_line_seen:
                request_line_seen = buffer.find(b"\r\n", 0, limits.max_request_line + 2) >= 0
                if not request_line_seen and len(buffer) > limits.max_request_line + 1:
                    raise HTTPError(414, "request line over the limit of %d bytes"
                                    % limits.max_request_line)
            if buffer.find(b"\n\n", max(0, searched - 1)) >= 0:
                raise HTTPError(400, "bare LF line endings (HTTP/1.1 needs CRLF)")
            searched = max(0, len(buffer) - 3)
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise socket.timeout()
                sock.settimeout(remaining)
            data = sock.recv(RECV_SIZE)
            if not data:
                return None         # closed by the client, before or in the middle of a head
            if deadline is None:
                deadline = time.monotonic() + limits.client_timeout
                reader.receiving = True
            if not buffer:
                buffer = data
            else:
                if type(buffer) is not bytearray:
                    buffer = bytearray(buffer)
                buffer += data
            if buffer[:1] in (b"\r", b"\n"):
                buffer = buffer.lstrip(b"\r\n")
                searched = request_line_seen = 0
            if buffer.find(b"\r\n\r\n", searched) >= 0:
                return buffer
    except socket.timeout:
        if buffer:
            raise HTTPError(408, "request head not complete within %gs"
                            % limits.client_timeout) from None
        return None
    finally:
        if deadline is not None:
            sock.settimeout(limits.client_timeout)


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

    def _read_part(self, limit: int, line: bool) -> bytes:
        if self.error is not None:
            raise self.error
        if self.finished:
            return b""
        try:
            if self._on_first_read is not None:
                send_continue, self._on_first_read = self._on_first_read, None
                send_continue()
            return self._read_more(limit, line)
        except (HTTPError, ClientDisconnected) as exc:
            self.error = exc
        except socket.timeout:
            self.error = HTTPError(408, "the request body stopped arriving (client_timeout)")
        except OSError as exc:
            self.error = ClientDisconnected("reading the request body: %s" % exc)
        raise self.error

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
            if CONTENT_LENGTH_RE.fullmatch(value) is None:
                raise ValueError("invalid Content-Length %s" % _show(value))
            if content_length is not None:
                if int(value) != content_length:
                    raise ValueError("two different Content-Length headers")
                continue    # the same twice: send it once
            content_length = int(value)
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
        self.headers_set = build_response_head(status, headers)
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
        if length is None and body_length is not None and code != 204 and code != 304 and (
                body_length or method != "HEAD"):
            length = body_length
            extra.append(b"Content-Length: %d\r\n" % length)
        if length is not None:
            if not self.no_body:
                self.remaining = length
        elif not self.no_body:
            if self.version == (1, 1):
                self.chunked = True
                extra.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.keep_alive = False     # RFC 9112 §6.3 (8): close-delimited
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
            if not self.keep_alive:
                extra.append(b"Connection: close\r\n")
        elif self.keep_alive:
            extra.append(b"Connection: keep-alive\r\n")
        if not head.has_date:
            extra.append(date_line())
        if not head.has_server:
            extra.append(_SERVER_LINE)
        self.headers_sent = True
        return b"".join((b"HTTP/1.1 ", head.status, b"\r\n", head.block, *extra, b"\r\n"))

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
            send_all(self.sock, data)
        except OSError as exc:
            self.client_gone = True
            self.keep_alive = False
            raise ClientDisconnected("sending the response: %s" % exc) from exc

    def write(self, data: bytes):
        """PEP 3333 write(): send ``data`` now, with the head if not yet sent."""
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
        self.finish()

    def _send_file(self, wrapper: FileWrapper) -> bool:
        """Send a real file with sendfile(); False if it is not one (then iterate)."""
        if self.headers_set is None or self.headers_sent or not hasattr(self.sock, "sendfile"):
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
        head = self._begin(count)
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
        body = plain_text_body(code, text)
        block = b"Content-Type: text/plain; charset=utf-8\r\n"
        for name, value in fields:
            block += ("%s: %s\r\n" % (name, value)).encode("latin-1")
        status = ("%d %s" % (code, _STATUS_PHRASES.get(code, "Error"))).encode("ascii")
        self.headers_set = ResponseHead(code, status, block, None, False, False)
        self.send_result([body])


def send_all(sock, data: bytes):
    """sendall() in slices of SEND_SLICE bytes, each with the socket's timeout."""
    if len(data) <= SEND_SLICE:
        sock.sendall(data)
        return
    view = memoryview(data)
    for start in range(0, len(data), SEND_SLICE):
        sock.sendall(view[start:start + SEND_SLICE])


def build_error_response(status: int, detail: str, fields=()) -> bytes:
    """The bytes of an error answer to a request the server could not accept."""
    phrase = _STATUS_PHRASES.get(status, "Error")
    body = plain_text_body(status, detail)
    return b"".join((
        b"HTTP/1.1 %d %s\r\n" % (status, phrase.encode("ascii")),
        b"Content-Type: text/plain; charset=utf-8\r\n",
        "".join("%s: %s\r\n" % field for field in fields).encode("latin-1"),
        b"Content-Length: %d\r\n" % len(body),
        b"Connection: close\r\n",
        date_line(), _SERVER_LINE, b"\r\n", body))


# =============================================================================
# 7. The connection: one thread, many requests
# =============================================================================
# A connection is served by one thread from accept to close: read a head,
# parse it, dispatch it, run the app, send the response, drain what is left
# of the body, and go on while the connection is persistent (RFC 9112 §9.3).
# Any HTTPError closes the connection after its answer: once a message has
# been misread, no later byte on that connection can be trusted.

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class HTTPConnection:
    """Serves the requests of one client connection, in the calling thread."""

    def __init__(self, transport: WebTransport, sock, client_address):
        self.transport = transport
        self.sock = sock
        self.client_address = client_address if isinstance(client_address, tuple) else ("", 0)
        self.reader = SocketReader(sock)
        self.base_environ = dict(transport.base_environ, REMOTE_ADDR=self.client_address[0],
                                 REMOTE_PORT=str(self.client_address[1]))
        self.handling = False       # a request is being served
        self.linger = False         # the client may still be sending: close slowly
        self.response = None

    @property
    def busy(self) -> bool:
        """A request has begun (see WebTransport.stop): not to be cut off."""
        return self.handling or self.reader.receiving or bool(self.reader.buffer)

    def serve(self):
        """Serve requests until the connection closes; while stopping, one at most."""
        limits = self.transport.limits
        reader = self.reader
        self.sock.settimeout(limits.client_timeout)
        while True:
            self.response = None
            reader.receiving = False
            try:
                head_bytes = read_request_head(reader, limits)
                if head_bytes is None:
                    return
                self.handling = True
                head = parse_request_head(head_bytes, limits)
                if not self.handle_request(head):
                    return
            except HTTPError as exc:
                self.send_error(exc)
                self.linger = True
                return
            except OSError as exc:      # client gone or too slow; ClientDisconnected too
                log.debug("connection from %s closed: %s", self.client_address[0], exc)
                return
            finally:
                self.handling = False

    def send_error(self, exc: HTTPError):
        log.debug("%d for %s: %s", exc.status, self.client_address[0], exc.detail)
        if self.response is not None and self.response.headers_sent:
            return
        try:
            self.sock.sendall(build_error_response(exc.status, exc.detail, exc.fields))
        except OSError:
            pass

    def _send_continue(self):
        response = self.response
        if response is not None and not response.headers_sent:
            self.sock.sendall(_CONTINUE)

    def handle_request(self, head: RequestHead) -> bool:
        """Serve one request; True if the connection can carry another."""
        transport = self.transport
        limits = transport.limits
        fields = head.fields
        version = head.version
        path, query, authority = parse_request_target(head.method, head.target)
        if authority is not None:
            fields["HTTP_HOST"] = authority     # RFC 9112 §3.2.2: the target's wins
        host = fields.get("HTTP_HOST")
        if host is None:
            if version == (1, 1):
                raise HTTPError(400, "HTTP/1.1 request without Host (RFC 9112 §3.2)")
        elif HOST_RE.fullmatch(host) is None:
            raise HTTPError(400, "invalid Host %s" % _show(host))
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

        response = self.response = Response(self.sock, head.method, version, keep_alive,
                                            body, transport)
        if path == "*":
            service, script_name, path_info = None, "", "*"
        else:
            path_info = decode_path(path)
            service, script_name, path_info = transport.resolve(path_info)
        environ = build_environ(self.base_environ, head, script_name, path_info, query, body)
        try:
            if service is None:
                if path == "*":
                    response.send_simple(200, "", [("Allow", "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS")])
                else:
                    response.send_simple(404, "nothing is served at %s" % _show(path, 200))
            else:
                service.serve(environ, response, self)
        except ClientDisconnected as exc:
            log.debug("client %s gone: %s", self.client_address[0], exc)
            return False
        finally:
            if transport.access_log:
                self.log_access(environ, response)
        if not response.keep_alive or body.error is not None or (
                not body.finished and not body.drain(MAX_DRAIN_SIZE)):
            self.linger = not body.finished
            return False
        return True

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
# the HTTP connection becomes a WebSocket for the rest of its life. The
# connection's thread reads frames (§5) and runs the path's handler -- by
# default a loop that broadcasts each message to the path's Channel. A second
# thread per connection writes the frames queued for it, so that a broadcast
# never waits on a slow client: a client whose queue a broadcast would take
# over max_send_queue is dropped with 1008 (policy violation).
#
# The frame functions are pure, like the HTTP parser: bytes in, values out,
# or a WebSocketError carrying the close code to send (§7.4.1).
#
# Compression (RFC 7692, permessage-deflate) is negotiated in the handshake by
# a pure function: the client's offers in, the agreed parameters and our
# answer out. Then each data message is one raw DEFLATE stream piece, flagged
# by RSV1 on its first frame. Ours are compressed by the writer thread, in
# the order they go out, because with "context takeover" each message may
# refer back to the ones before it; the client's are inflated as their bytes
# arrive, in steps, so max_message_size bounds the *inflated* size and a
# decompression bomb costs no more than an honest message. A message is
# assembled in one bytearray whatever its framing: fragments cost no memory
# of their own, and MAX_MESSAGE_FRAGMENTS bounds their number.

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


def apply_mask(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` (RFC 6455 §5.3).

    One XOR of two big integers instead of a loop over bytes: 16 MiB take
    tens of milliseconds, not seconds.
    """
    n = len(payload)
    if n == 0:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def build_frame(opcode: int, payload: bytes = b"", fin: bool = True, mask: bytes = None,
                rsv1: bool = False) -> bytes:
    """Serialize a frame: unmasked as a server sends it, or masked with ``mask`` as a client does.
    ``rsv1`` marks the first frame of a compressed message (RFC 7692 §6)."""
    length = len(payload)
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    mask_bit = 0x80 if mask else 0
    if length < 126:
        header = bytes((b0, mask_bit | length))
    elif length < 65536:
        header = struct.pack("!BBH", b0, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", b0, mask_bit | 127, length)
    if mask:
        return header + mask + apply_mask(payload, mask)
    return header + payload


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
    """

    def __init__(self, sock, reader: SocketReader, environ: dict, channel: Channel,
                 options: WebSocketOptions, protocol: str = None, send_timeout: float = CLIENT_TIMEOUT,
                 deflate: DeflateParams = None):
        self.sock = sock
        self.reader = reader
        self.environ = environ
        self.channel = channel
        self.options = options
        self.protocol = protocol
        self.send_timeout = send_timeout
        self.deflate = deflate
        self._codec = PerMessageDeflate(deflate) if deflate else None
        # Bytes received and not yet parsed, read from ``_pos`` on: frames are
        # sliced out of one recv() at a time, never copied as a whole again.
        self._buffer = reader.buffer if reader is not None else b""
        self._pos = 0
        if reader is not None:
            reader.buffer = b""         # ours now
        self.close_code = None          # set once closed: the code received, or sent, or 1006
        self.close_reason = ""
        self._close_sent = False
        self._close_received = False
        self._failed = False            # a protocol error: the client's bytes are not parsed any more
        self._dead = False              # the TCP connection is unusable
        self._drop_after_close = False
        self._close_written = threading.Event()     # our Close is on the wire
        self._queue = collections.deque()
        self._queued_bytes = 0
        self._cond = threading.Condition(threading.Lock())
        self._writer = threading.Thread(target=self._write_loop, name="wsgihost-ws-writer", daemon=True)
        self._ping_sent_at = None
        self._idle_timeout = options.auto_ping_interval or send_timeout

    @property
    def closed(self) -> bool:
        return self._close_sent or self._close_received or self._dead

    # -- the session: run by the connection's thread --------------------------

    def run(self, handler=None):
        """Serve the connection: ``handler(self)``, or broadcast every message."""
        self.sock.settimeout(self._idle_timeout)
        self._writer.start()
        self.channel._add(self)
        try:
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
        """End the closing handshake; the caller then closes TCP, server first (§7.1.1).

        Our Close is queued; the writer thread sends it, then waits up to
        close_handshake_timeout for the client's Close and cuts TCP if none
        comes. Meanwhile this thread reads until that Close -- frames within
        max_frame_size, data discarded; after a protocol error not even
        frames: nothing the client sends is parsed any more (§7.1.7).
        """
        try:
            if self._failed:
                self._close_written.wait(self.send_timeout)     # (or the client is gone)
                self.sock.shutdown(socket.SHUT_WR)
                while self.sock.recv(RECV_SIZE):
                    pass
                self._lose()
            else:
                while not (self._close_received or self._dead):
                    header = self._read_header(self.options.max_frame_size)
                    if header.opcode == Opcode.CLOSE:
                        self._on_close(self._read_control_payload(header))
                    else:
                        for _ in self._read_payload(header):
                            pass
        except (WebSocketError, OSError):
            self._lose()
        self._writer.join(self.send_timeout + self.options.close_handshake_timeout)
        if self.close_code is None:
            self.close_code = CloseCode.ABNORMAL

    def __iter__(self):
        while True:
            message = self.receive()
            if message is None:
                return
            yield message

    def receive(self):
        """The next message (str or bytes), or None when the connection is closed."""
        opcode = None                   # of the message being received
        while not (self._close_received or self._dead):
            try:
                header = self._read_header(self.options.max_frame_size)
                op = header.opcode
                if op >= Opcode.CLOSE:          # control frames, between fragments too (§5.4)
                    payload = self._read_control_payload(header)
                    if op == Opcode.CLOSE:
                        self._on_close(payload)
                        return None
                    if op == Opcode.PING:
                        self._enqueue(build_frame(Opcode.PONG, payload))    # §5.5.2: same payload
                    else:
                        self._ping_sent_at = None   # §5.5.3: a pong, solicited or not
                    continue
                if op == Opcode.CONTINUATION:
                    if opcode is None:
                        raise WebSocketError(CloseCode.PROTOCOL_ERROR,
                                             "continuation frame with no message to continue (§5.4)")
                elif opcode is not None:
                    raise WebSocketError(CloseCode.PROTOCOL_ERROR,
                                         "new message inside a fragmented one (§5.4)")
                else:
                    opcode, message, fragments = op, bytearray(), 0
                    compressed = header.rsv1            # RFC 7692 §6: set on the first frame
                    decoder = codecs.getincrementaldecoder("utf-8")() if op == Opcode.TEXT else None
                fragments += 1
                if fragments > MAX_MESSAGE_FRAGMENTS:
                    raise WebSocketError(CloseCode.MESSAGE_TOO_BIG, "message in more than %d "
                                         "fragments" % MAX_MESSAGE_FRAGMENTS)
                self._read_data(header, message, compressed, decoder)
            except WebSocketError as exc:
                self._fail(exc)
                return None
            except OSError as exc:              # timeouts, resets, ClientDisconnected
                log.debug("WebSocket on %s lost: %s", self.channel.path, exc)
                self._lose()
                return None
            if header.fin:
                if self._close_sent:            # §5.5.1: closing; data is discarded
                    opcode = None
                    continue
                # (validated as it came: this decoding cannot fail)
                return message.decode("utf-8") if decoder else bytes(message)
        return None

    def _read_data(self, header: FrameHeader, message: bytearray, compressed: bool, decoder):
        """Add a data frame's payload to ``message``: inflated if ``compressed``,
        validated as UTF-8 as it comes if ``decoder``, so that a violation fails
        the connection as soon as it is received, even mid-frame (§8.1)."""
        limit = self.options.max_message_size
        if not compressed and len(message) + header.payload_len > limit:
            raise WebSocketError(CloseCode.MESSAGE_TOO_BIG, "message over the limit of %d bytes" % limit)
        codec = self._codec
        for piece in self._read_payload(header):
            for data in codec.decompress(piece, limit - len(message)) if compressed else (piece,):
                if decoder is not None:
                    self._validate(decoder, data)
                message += data
        if header.fin:
            if compressed:                      # §7.2.2: the tail the sender stripped
                for data in codec.decompress(b"", limit - len(message), end=True):
                    if decoder is not None:
                        self._validate(decoder, data)
                    message += data
            if decoder is not None:
                self._validate(decoder, b"", True)

    @staticmethod
    def _validate(decoder, data: bytes, final: bool = False):
        try:
            decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            raise WebSocketError(CloseCode.INVALID_DATA, "text is not UTF-8: %s" % exc) from None

    def _read_header(self, max_payload) -> FrameHeader:
        """Read a frame header; wait through idle periods, pinging if configured."""
        while self._pos >= len(self._buffer):
            try:
                data = self.sock.recv(RECV_SIZE)
            except socket.timeout:
                self._on_idle()
                continue
            if not data:
                raise ClientDisconnected("the client closed the connection")
            self._buffer, self._pos = data, 0
        first = self._read_exact(2)
        size = frame_header_size(first)
        return parse_frame_header(first + self._read_exact(size - 2) if size > 2 else first,
                                  max_payload, compression=self._codec is not None)

    def _read_exact(self, size: int) -> bytes:
        """Exactly ``size`` bytes (a header, a control frame's payload)."""
        buffer, pos = self._buffer, self._pos
        if pos + size <= len(buffer):
            self._pos = pos + size
            return buffer[pos:pos + size]
        parts = [buffer[pos:]]
        missing = size - len(parts[0])
        self._buffer, self._pos = b"", 0
        while missing:
            data = self.sock.recv(RECV_SIZE)
            if not data:
                raise ClientDisconnected("the client closed the connection mid-frame")
            if len(data) > missing:
                self._buffer, self._pos = data, missing
                data = data[:missing]
            parts.append(data)
            missing -= len(data)
        return b"".join(parts)

    def _read_some(self, limit: int) -> bytes:
        """1 to ``limit`` bytes: from the buffer, else a large read straight
        from the socket, else (few bytes wanted) a refill of the buffer."""
        buffer, pos = self._buffer, self._pos
        if pos >= len(buffer):
            if limit >= RECV_SIZE:
                data = self.sock.recv(min(limit, MAX_RECV_SIZE))
                if not data:
                    raise ClientDisconnected("the client closed the connection mid-frame")
                return data
            buffer, pos = self.sock.recv(RECV_SIZE), 0
            if not buffer:
                raise ClientDisconnected("the client closed the connection mid-frame")
            self._buffer = buffer
        end = min(len(buffer), pos + limit)
        self._pos = end
        return buffer[pos:end]

    def _read_payload(self, header: FrameHeader):
        """A frame's payload, unmasked, in pieces as they arrive (none if empty)."""
        mask = header.mask
        received, length = 0, header.payload_len
        while received < length:
            piece = self._read_some(length - received)
            if mask:
                turn = received % 4     # the mask goes on where the last piece stopped
                piece = apply_mask(piece, mask[turn:] + mask[:turn] if turn else mask)
            received += len(piece)
            yield piece

    def _read_control_payload(self, header: FrameHeader) -> bytes:
        payload = self._read_exact(header.payload_len)      # at most 125 bytes (§5.5)
        return apply_mask(payload, header.mask) if header.mask else payload

    def _on_idle(self):
        """No frame for a while: ping (auto_ping_interval); no pong in time: drop."""
        interval = self.options.auto_ping_interval
        if not interval or self._close_sent:
            return                      # closing: the writer thread keeps the time
        now = time.monotonic()
        if self._ping_sent_at is not None:
            if now - self._ping_sent_at >= self.options.auto_ping_timeout:
                raise ClientDisconnected("no pong within %gs" % self.options.auto_ping_timeout)
            return
        self._ping_sent_at = now
        self._enqueue(build_frame(Opcode.PING, os.urandom(4)))
        self.sock.settimeout(min(interval, self.options.auto_ping_timeout))

    def _on_close(self, payload: bytes):
        """The client's Close (§5.5.1): answer it (unless we began), then end."""
        with self._cond:
            self._close_received = True     # even an invalid Close ends the client's side
            self._cond.notify_all()         # the writer may be waiting for it
        try:
            code, reason = parse_close_payload(payload)
        except WebSocketError as exc:
            self._fail(exc)
            return
        if self.close_code is None:
            self.close_code, self.close_reason = code or CloseCode.NO_STATUS, reason
        # Echo the code received (§5.5.1), or an empty Close if it had none.
        self._send_close(build_close_payload(code))

    def _fail(self, exc: WebSocketError):
        """A protocol violation (§7.1.7): Close with its code, then wait for the client's."""
        log.debug("WebSocket on %s: %s (close %d)", self.channel.path, exc.reason, exc.code)
        self._failed = True
        self.close(exc.code, exc.reason)

    def _lose(self):
        self._dead = True
        if self.close_code is None:
            self.close_code = CloseCode.ABNORMAL
        with self._cond:
            self._queue.clear()
            self._queued_bytes = 0
            self._cond.notify_all()
        _shutdown_socket(self.sock, socket.SHUT_RDWR)

    # -- sending: any thread ----------------------------------------------------

    def send(self, message):
        """Send a message (str: text, bytes: binary). Waits while this client's
        send queue is full (up to the send timeout, then the client is dropped).
        Raises ClientDisconnected if the connection is closed."""
        opcode, payload = message_payload(message)
        item = (opcode, payload) if self._codec else build_frame(opcode, payload)
        if not self._enqueue(item):
            raise ClientDisconnected("the WebSocket is closed")

    def close(self, code: int = CloseCode.NORMAL, reason: str = ""):
        """Start the closing handshake (§7.1.2); a no-op if it has begun."""
        if not is_valid_close_code(code):
            raise ValueError("close code %r may not be sent (RFC 6455 §7.4)" % (code,))
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self._send_close(build_close_payload(code, reason))

    def _send_close(self, payload: bytes):
        with self._cond:
            if self._close_sent or self._dead:
                return
            self._close_sent = True
            frame = build_frame(Opcode.CLOSE, payload)
            self._queue.append(frame)
            self._queued_bytes += len(frame)
            self._cond.notify_all()

    def _drop(self, code: int, reason: str):
        """Drop a client now: what it has queued is discarded, a Close sent, TCP shut."""
        log.info("dropping WebSocket client %s on %s: %s", self.environ.get("REMOTE_ADDR"),
                 self.channel.path, reason)
        with self._cond:
            if self._dead or self._drop_after_close:
                return
            close_written = self._close_sent and not self._queue
            self._queue.clear()
            self._queued_bytes = 0
            self._drop_after_close = True
            if self.close_code is None:
                self.close_code, self.close_reason = code, reason
            if not close_written:
                self._close_sent = True
                self._queue.append(build_frame(Opcode.CLOSE, build_close_payload(code, reason)))
                self._cond.notify_all()
        if close_written:
            self._lose()
        else:
            # The writer may be stuck in a send to this very client: cut TCP
            # after close_handshake_timeout whether the Close went out or not.
            timer = threading.Timer(self.options.close_handshake_timeout, self._lose)
            timer.daemon = True
            timer.start()

    def _enqueue(self, item, block: bool = True) -> bool:
        """Queue a frame for the writer thread; False if the connection is closed.

        ``item`` is a frame's bytes, or (opcode, payload) for a message the
        writer compresses as it sends it (the queue counts it uncompressed).
        A full queue (over max_send_queue bytes; one message always fits an
        empty queue) drops the client at once if ``block`` is false (a
        broadcast), else after waiting send_timeout seconds for room.
        """
        cond = self._cond
        limit = self.options.max_send_queue
        size = len(item) if isinstance(item, bytes) else len(item[1])
        with cond:
            if block:
                deadline = time.monotonic() + self.send_timeout
                while (self._queue and self._queued_bytes + size > limit
                       and not (self._close_sent or self._dead)):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    cond.wait(remaining)
            if self._close_sent or self._dead:
                return False
            if not self._queue or self._queued_bytes + size <= limit:
                self._queue.append(item)
                self._queued_bytes += size
                cond.notify_all()
                return True
        self._drop(CloseCode.POLICY_VIOLATION, "too slow: send queue over %d bytes" % limit)
        return False

    def _write_loop(self):
        """The writer thread: send what is queued, coalesced; end after the Close."""
        cond = self._cond
        while True:
            with cond:
                while not self._queue and not self._dead:
                    cond.wait()
                if self._dead:
                    return
                frames = list(self._queue)
                self._queue.clear()
                self._queued_bytes = 0
                last = self._close_sent         # the Close is always the last frame queued
                drop = self._drop_after_close
                cond.notify_all()               # room for senders waiting
            # Compressed here, in the order they go out: with context takeover
            # each message may refer back to the ones sent before it.
            frames = [item if isinstance(item, bytes) else
                      build_frame(item[0], self._codec.compress(item[1]), rsv1=True) for item in frames]
            try:
                send_all(self.sock, frames[0] if len(frames) == 1 else b"".join(frames))
            except OSError as exc:
                log.debug("WebSocket on %s: send failed: %s", self.channel.path, exc)
                self._lose()
                return
            if last:                            # our Close is out: the client has this long
                self._close_written.set()
                with cond:
                    answered = drop or cond.wait_for(lambda: self._close_received or self._dead,
                                                     self.options.close_handshake_timeout)
                if drop or not answered:
                    self._lose()
                return


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

    def __len__(self) -> int:
        return len(self._clients)

    @property
    def clients(self) -> list:
        with self._lock:
            return list(self._clients)

    def broadcast(self, message) -> int:
        """Send ``message`` (str or bytes) to every client; return how many.

        Built once for all uncompressed clients, and compressed once for all
        those that agreed on server_no_context_takeover with the same window
        and memLevel: each of their messages starts from an empty history, so
        the same bytes serve them all. With context takeover each client's
        compressor has its own history -- the messages it was sent before --
        so its writer thread compresses the message for it alone.
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
                    client._enqueue((opcode, payload), block=False)     # its writer compresses it
                    continue
                frame = frames.get(key)
                if frame is None:
                    frame = frames[key] = (build_frame(opcode, payload) if key is None else build_frame(
                        opcode, PerMessageDeflate(params).compress(payload), rsv1=True))
                client._enqueue(frame, block=False)
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
    """A websocket path: the handshake, then a WebSocket run by ``handler`` (or broadcast)."""

    kind = "websocket"

    def __init__(self, path: str = "/", handler=None, options: WebSocketOptions = None,
                 label: str = "broadcast"):
        self.handler = handler
        self.options = options or WebSocketOptions()
        self.channel = Channel(path)
        self.label = label

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
        websocket = WebSocket(conn.sock, conn.reader, environ, self.channel, self.options, protocol,
                              conn.transport.limits.client_timeout, agreed[0] if agreed else None)
        websocket.run(self.handler)

# =============================================================================
# 9. Path dispatch and app loading
# =============================================================================
# A web transport's "paths" is a tree: each key is one URL segment (or "/",
# the default for everything else) and each value a service, or a nested
# "path" node. A request path is matched segment by segment, exactly and
# case-sensitively; what matched becomes SCRIPT_NAME and the rest PATH_INFO,
# as in Crossbar (Twisted's resource traversal) and PEP 3333.

class PathNode:
    """One level of the path tree: services by segment, and a default for "/"."""

    def __init__(self, children: dict = None, default=None):
        self.children = children or {}
        self.default = default

    def resolve(self, path: str):
        """(service, SCRIPT_NAME, PATH_INFO) for a decoded path; service None: 404."""
        node = self
        script_name = ""
        while path:                 # path is "" or starts with "/"
            end = path.find("/", 1)
            segment = path[1:end] if end > 0 else path[1:]
            child = node.children.get(segment)
            if child is None:
                break
            script_name += "/" + segment
            path = path[end:] if end > 0 else ""
            if type(child) is not PathNode:
                return child, script_name, path
            node = child
        return node.default, script_name, path

    def services(self, prefix: str = ""):
        """(URL path, service) for every service in the tree, for start-up lines."""
        if self.default is not None:
            yield prefix + "/", self.default
        for segment, child in sorted(self.children.items()):
            if type(child) is PathNode:
                yield from child.services(prefix + "/" + segment)
            else:
                yield prefix + "/" + segment, child


class FairSemaphore:
    """A semaphore that serves waiters strictly in arrival order.

    threading.Semaphore lets a newcomer take a freed slot ahead of threads
    already waiting, and a woken waiter that finds the slot gone waits again
    at the back: under load some requests wait for seconds. Here release()
    hands the slot directly to the oldest waiter, so waiting is FIFO.
    """

    def __init__(self, slots: int):
        self._lock = threading.Lock()
        self._free = slots
        self._waiters = collections.deque()

    def acquire(self):
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                return
            waiter = threading.Lock()
            waiter.acquire()
            self._waiters.append(waiter)
        waiter.acquire()            # until release() hands this waiter the slot

    def release(self):
        with self._lock:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._free += 1


class WSGIService:
    """A WSGI app on a path; at most ``maxthreads`` requests run in it at once."""

    kind = "wsgi"

    def __init__(self, app, label: str, minthreads: int = 0, maxthreads: int = 20,
                 display_tracebacks: bool = False):
        self.app = app
        self.label = label
        self.minthreads = minthreads
        self.maxthreads = maxthreads
        self.slots = FairSemaphore(maxthreads)
        self.display_tracebacks = display_tracebacks

    def serve(self, environ: dict, response: Response, conn: HTTPConnection):
        """Run the app for one request; every error is answered or closes the connection."""
        slots = self.slots
        slots.acquire()
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
            slots.release()
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
# 10. Configuration
# =============================================================================
# In: a Crossbar.io node config (parsed JSON) and its node directory (CBDIR).
# Out: WebTransport objects, every app imported; or a ConfigError naming the
# file, the JSON path and the problem. Nothing is bound to a port here, so a
# bad config costs nothing and ``--check`` can run this alone.

#: The options of a web transport: name -> (default, kind). Those named in
#: _LIMIT_NAMES build the transport's Limits.
WEB_OPTIONS = {
    "access_log": (False, "bool"),
    "display_tracebacks": (False, "bool"),
    "hsts": (False, "bool"),
    "hsts_max_age": (31536000, "size"),
    "client_timeout": (CLIENT_TIMEOUT, "seconds"),
    "max_request_line": (MAX_REQUEST_LINE, "size"),
    "max_header_line": (MAX_HEADER_LINE, "size"),
    "max_head_size": (MAX_HEAD_SIZE, "size"),
    "max_header_fields": (MAX_HEADER_FIELDS, "size"),
    "max_body_size": (MAX_BODY_SIZE, "size or null"),
    "max_connections": (MAX_CONNECTIONS, "size"),
    "shutdown_grace": (SHUTDOWN_GRACE, "seconds"),
}
_LIMIT_NAMES = ("client_timeout", "max_request_line", "max_header_line", "max_head_size",
                "max_header_fields", "max_body_size", "max_connections", "shutdown_grace")
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
SERVICE_TYPES = ("json", "path", "redirect", "static", "websocket", "wsgi")
NOT_YET_SERVICE_TYPES = ("json", "redirect", "static")
WAMP_SERVICE_TYPES = ("caller", "publisher", "webhook", "longpoll", "reverseproxy", "cgi",
                      "resource", "wap", "fileupload", "nodeinfo", "schemadoc", "upload",
                      "archive", "mqtt", "rawsocket", "websocket-reverseproxy")


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


def load_config(path: str):
    """Read a config file (or a node directory holding config.json).

    Returns (config dict, CBDIR). Raises ConfigError.
    """
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError("", "cannot read the config: %s" % (exc.strerror or exc), path) from None
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise ConfigError("", "invalid JSON: %s" % exc, path) from None
    return config, os.path.dirname(os.path.abspath(path))


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
        for entry in reversed(pythonpath):
            directory = os.path.normpath(os.path.join(cbdir, entry))
            if directory not in sys.path:
                sys.path.insert(0, directory)
    transports = []
    for i, worker in enumerate(workers):
        where = root / "workers" / i
        _check_keys(where, worker, ("type", "options", "transports", "id"),
                    ignored=("realms", "components", "connections", "manhole"))
        _check_keys(where / "options", worker.get("options", {}), ("pythonpath",),
                    ignored=("env", "title", "cpu_affinity", "reactor", "expose_controller",
                             "expose_shared", "shutdown"))
        for j, transport in enumerate(_expect(where / "transports", worker.get("transports", []),
                                              list, "a list of transports")):
            transports.append(_build_web_transport(where / "transports" / j, transport, cbdir))
    if not transports:
        raise (root / "workers").error("no web transport to serve")
    return transports


def _build_web_transport(where: _Where, transport, cbdir: str) -> WebTransport:
    _expect(where, transport, dict, "a transport object")
    kind = transport.get("type")
    if kind != "web":
        raise (where / "type").error('transport type %s is not supported: wsgihost serves only '
                                     '"web" transports' % json.dumps(kind))
    _check_keys(where, transport, ("type", "endpoint", "paths", "options", "id"))
    values = _check_options(where / "options", transport.get("options", {}), WEB_OPTIONS,
                            ignored=("hixie76_aware", "cookie", "trust_x_forwarded_for"))
    if values["hsts"]:
        log.warning("%s: %s: hsts is ignored: it applies to TLS, which wsgihost does not "
                    "support yet", where.filename, (where / "options").path)
    host, port, family, backlog, shared = _parse_endpoint(where / "endpoint",
                                                          transport.get("endpoint"))
    paths = _expect(where / "paths", transport.get("paths"), dict, "an object of paths")
    root = _build_path_node(where / "paths", paths, values["display_tracebacks"])
    limits = Limits(**{name: values[name] for name in _LIMIT_NAMES})
    return WebTransport(root, host, port, family=family, backlog=backlog, shared=shared,
                        limits=limits, access_log=values["access_log"], where=where.path)


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
        elif kind == "ms":
            if _expect(w, value, float, "a number of milliseconds") < 0:
                raise w.error("must be 0 or more, got %s" % value)
        elif kind == "ms > 0":
            if _expect(w, value, float, "a number of milliseconds") <= 0:
                raise w.error("must be more than 0, got %s" % value)
        elif kind == "strings":
            _expect(w, value, list, "a list of strings")
            for i, item in enumerate(value):
                _expect(w / i, item, str, "a string")
        elif kind == "compression":
            value = _build_compression(w, value)
        elif value is not None or kind == "size":
            if _expect(w, value, int, "a positive integer" + (" or null" if kind != "size"
                                                              else "")) < 1:
                raise w.error("must be at least 1, got %d" % value)
        values[name] = value
    return values


def _parse_endpoint(where: _Where, endpoint):
    _expect(where, endpoint, dict, "an endpoint object")
    kind = endpoint.get("type")
    if kind == "unix":
        raise (where / "type").error("unix socket endpoints are not supported yet")
    if kind != "tcp":
        raise (where / "type").error('endpoint type %s is not supported (expected "tcp")'
                                     % json.dumps(kind))
    _check_keys(where, endpoint, ("type", "port", "interface", "backlog", "version", "shared",
                                  "tls"), ignored=("user_timeout",))
    if "tls" in endpoint:
        raise (where / "tls").error("TLS endpoints are not supported yet")
    port = endpoint.get("port")
    if isinstance(port, str) and port.startswith("$"):
        name = port[1:]
        if name not in os.environ:
            raise (where / "port").error("environment variable %s is not set" % name)
        value = os.environ[name]
        if not value.isdigit():
            raise (where / "port").error("environment variable %s is %r, not a port number"
                                         % (name, value))
        port = int(value)
    else:
        _expect(where / "port", port, int, 'a port number or "$ENVVAR"')
    if not 0 <= port <= 65535:
        raise (where / "port").error("port %d out of range (0-65535)" % port)
    interface = _expect(where / "interface", endpoint.get("interface", ""), str, "an address")
    backlog = _expect(where / "backlog", endpoint.get("backlog", LISTEN_BACKLOG), int, "an integer")
    if backlog < 1:
        raise (where / "backlog").error("must be at least 1, got %d" % backlog)
    version = endpoint.get("version", 4)
    if version not in (4, 6) or type(version) is not int:
        raise (where / "version").error("expected 4 or 6, got %s" % json.dumps(version))
    family = socket.AF_INET6 if version == 6 else socket.AF_INET
    shared = _expect(where / "shared", endpoint.get("shared", False), bool, "true or false")
    return interface, port, family, backlog, shared


_PATH_KEY_RE = re.compile(r"[a-z0-9A-Z_\-]+|/")     # Crossbar's rule for path keys


def _build_path_node(where: _Where, paths: dict, display_tracebacks: bool) -> PathNode:
    node = PathNode()
    for key, service in paths.items():
        w = where / key
        if _PATH_KEY_RE.fullmatch(key) is None:
            raise w.error("invalid path %s: a key is \"/\" or one URL segment of letters, digits, "
                          "\"_\" and \"-\"" % json.dumps(key))
        built = _build_service(w, service, display_tracebacks)
        if key == "/":
            node.default = built
        else:
            node.children[key] = built
    return node


def _build_service(where: _Where, service, display_tracebacks: bool):
    _expect(where, service, dict, "a service object")
    kind = service.get("type")
    if kind in WAMP_SERVICE_TYPES:
        raise (where / "type").error('type "%s" needs a WAMP router, which wsgihost does not '
                                     'provide' % kind)
    if kind not in SERVICE_TYPES:
        raise where.error("unknown type %s (expected one of: %s)"
                          % (json.dumps(kind), ", ".join(SERVICE_TYPES)))
    if kind in NOT_YET_SERVICE_TYPES:
        raise (where / "type").error('type "%s" is not supported by wsgihost %s yet'
                                     % (kind, __version__))
    if kind == "path":
        _check_keys(where, service, ("type", "paths"))
        paths = _expect(where / "paths", service.get("paths"), dict, "an object of paths")
        node = _build_path_node(where / "paths", paths, display_tracebacks)
        if type(node.default) is PathNode:
            raise (where / "paths" / "/").error('"/" must be a service, not a nested path')
        return node
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
# 11. The socket server and the node
# =============================================================================
# A WebTransport serves the connections of one web transport and stops them.
# One ThreadingTCPServer per transport: its accept loop hands each connection
# to a pool thread (threads are reused, not created per connection), after
# taking one of max_connections slots: while none is free nothing is accepted,
# so further clients wait in the listen backlog, not in the server's memory
# (socketserver accepts one more before asking, and holds it). A Node is the
# set of transports of one config, started and stopped together.

class WebTransport:
    """A web transport: where it listens, its path tree, its limits.

    ``serve_connection(sock, address)`` serves one accepted connection in the
    calling thread; it works on any object with recv/sendall/settimeout, which
    is how the tests drive it without a network.
    """

    def __init__(self, root: PathNode, host: str = "", port: int = 8080, *, family=socket.AF_INET,
                 backlog: int = LISTEN_BACKLOG, shared: bool = False, limits: Limits = None,
                 access_log: bool = False, where: str = ""):
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
        self.base_environ = build_base_environ(self.server_name(), port)
        # The channels of this transport's websocket paths, by URL path: a WSGI
        # app broadcasts with environ["wsgihost.channels"]["/ws"].broadcast(...).
        self.channels = {}
        for path, service in root.services():
            if service.kind == "websocket":
                service.channel.path = path
                self.channels[path] = service.channel
        self.base_environ["wsgihost.channels"] = self.channels
        self.stopping = False
        self.server = None
        self.connections = set()
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)

    def server_name(self) -> str:
        if self.host and self.host not in ("0.0.0.0", "::"):
            return self.host
        return socket.gethostname()

    def serve_connection(self, sock, client_address):
        conn = HTTPConnection(self, sock, client_address)
        with self.lock:
            self.connections.add(conn)
        try:
            conn.serve()
            if conn.linger:
                lingering_close(sock)
        finally:
            with self.lock:
                self.connections.discard(conn)
                self.idle.notify_all()

    def urls(self) -> list:
        host = self.host or ("::" if self.family == socket.AF_INET6 else "0.0.0.0")
        if ":" in host:
            host = "[%s]" % host
        urls = []
        for path, service in self.root.services():
            scheme = "ws" if service.kind == "websocket" else "http"
            what = service.kind + (" " + service.label if service.kind == "wsgi" else "")
            urls.append("%s://%s:%d%s (%s)" % (scheme, host, self.port, path, what))
        return urls

    def address(self) -> str:
        host = self.host or "*"
        return "[%s]:%d" % (host, self.port) if ":" in host else "%s:%d" % (host, self.port)

    def begin_stop(self):
        """Stop taking requests: WebSockets get 1001, idle connections are closed."""
        self.stopping = True
        for channel in self.channels.values():
            channel.close_all(CloseCode.GOING_AWAY, "server shutting down")    # RFC 6455 §7.4.1
        self._close_idle()

    def _close_idle(self):
        # An idle connection waits in recv(); shutting its reading side ends the
        # wait. One whose request has begun is left to finish (with Connection: close).
        with self.lock:
            for conn in list(self.connections):
                if not conn.busy:
                    _shutdown_socket(conn.sock, socket.SHUT_RD)

    def finish_stop(self, deadline: float):
        """Wait until ``deadline`` (time.monotonic()) for connections to end; then cut them."""
        while True:
            self._close_idle()              # including those whose request just ended
            with self.lock:
                if not self.connections:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    for conn in self.connections:
                        _shutdown_socket(conn.sock, socket.SHUT_RDWR)
                    break
                self.idle.wait(min(remaining, 0.1))
        if self.server is not None:
            self.server.pool.shutdown()

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
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_TIME
        received = 0
        while received < LINGER_SIZE:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            data = sock.recv(MAX_RECV_SIZE)
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


class WSGIServer(socketserver.ThreadingTCPServer):
    """The listening socket of one web transport; connections go to a ThreadPool."""

    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False

    def __init__(self, transport: WebTransport):
        self.transport = transport
        self.address_family = transport.family
        self.request_queue_size = transport.backlog
        super().__init__((transport.host, transport.port), socketserver.BaseRequestHandler,
                         bind_and_activate=False)
        try:
            if transport.shared:
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            self.server_bind()
            self.server_activate()
        except BaseException:
            self.server_close()
            raise
        keep = sum(service.minthreads for _, service in transport.root.services()
                   if service.kind == "wsgi")
        self.pool = ThreadPool(min(keep, transport.limits.max_connections))
        self.slots = threading.BoundedSemaphore(transport.limits.max_connections)

    def process_request(self, sock, client_address):
        # Hold the accept loop until a connection slot is free (max_connections).
        while not self.slots.acquire(timeout=0.5):
            if self.transport.stopping:
                self.shutdown_request(sock)
                return
        try:
            self.pool.submit(self._serve, sock, client_address)
        except Exception:               # e.g. RuntimeError: can't start new thread
            log.exception("cannot serve a connection from %s", client_address)
            self.shutdown_request(sock)
            self.slots.release()

    def _serve(self, sock, client_address):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.transport.serve_connection(sock, client_address)
        except Exception:
            log.exception("unexpected error serving %s", client_address)
        finally:
            self.shutdown_request(sock)
            self.slots.release()

    def handle_error(self, request, client_address):
        log.exception("error accepting a connection from %s", client_address)


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
        self.stopped = threading.Event()

    @classmethod
    def from_file(cls, path: str) -> Node:
        config, cbdir = load_config(path)
        return cls(config, cbdir, path if not os.path.isdir(path) else os.path.join(path, "config.json"))

    def start(self) -> Node:
        """Bind every transport, then serve in background threads. OSError if a bind fails."""
        servers = []
        for transport in self.transports:
            try:
                servers.append(WSGIServer(transport))
            except OSError as exc:
                for server in servers:
                    server.server_close()
                raise OSError(exc.errno, "cannot listen on %s: %s"
                              % (transport.address(), exc.strerror or exc)) from exc
        for transport, server in zip(self.transports, servers):
            transport.server = server
            transport.port = server.server_address[1]
            transport.base_environ["SERVER_PORT"] = str(transport.port)
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                      name="wsgihost-accept", daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

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
            transport.stopping = True
            if transport.server is not None:
                transport.server.shutdown()
                transport.server.server_close()
        for transport in self.transports:
            transport.begin_stop()
        for transport in self.transports:
            transport.finish_stop(deadline)
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
    label = getattr(app, "__module__", "app") + ":" + getattr(app, "__name__", type(app).__name__)
    service = WSGIService(app, label, display_tracebacks=options.get("display_tracebacks", False))
    limits = Limits(**{name: options[name] for name in _LIMIT_NAMES if name in options})
    return WebTransport(PathNode(default=service), host, port, limits=limits,
                        access_log=options.get("access_log", False))


def serve(app, host: str = "127.0.0.1", port: int = 8080, **options):
    """Serve one WSGI app until SIGINT or SIGTERM (or KeyboardInterrupt)."""
    run_node(Node(transports=[app_transport(app, host, port, **options)]))


def run_node(node: Node) -> int:
    """Start ``node``, log its URLs, serve until a signal, stop gracefully."""
    node.start()
    for transport in node.transports:
        log.info("serving %s", ", ".join(transport.urls()))
    stop = threading.Event()

    def on_signal(signum, frame):
        log.info("%s: stopping (requests in flight may finish)", signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    node.stop()
    log.info("stopped")
    return 0


# =============================================================================
# 12. Command line
# =============================================================================

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


def _count_paths(transports) -> int:
    return sum(1 for t in transports for _ in t.root.services())


def main(argv=None) -> int:
    """The command line (README: Command line). Returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="wsgihost", description="Serve WSGI apps from a Crossbar.io node config.")
    parser.add_argument("config_path", nargs="?", metavar="CONFIG",
                        help="config file, or node directory holding config.json "
                             "(default: .crossbar/config.json, else ./config.json)")
    parser.add_argument("--cbdir", help="node directory (Crossbar's flag)")
    parser.add_argument("--config", help="config file, relative to --cbdir")
    parser.add_argument("--app", metavar="MODULE:OBJECT", help="serve one WSGI app, no config file")
    parser.add_argument("--host", default="127.0.0.1", help="with --app (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="with --app (default 8080)")
    parser.add_argument("--check", action="store_true",
                        help="validate the config and import the apps, then exit")
    parser.add_argument("--loglevel", default="info", choices=["debug", "info", "warn", "error"])
    parser.add_argument("--version", action="version", version="wsgihost " + __version__)
    args = parser.parse_args(argv)

    level = {"warn": "WARNING"}.get(args.loglevel, args.loglevel.upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    try:
        if args.app:
            module, colon, obj = args.app.partition(":")
            if not colon or not module or not obj:
                raise ConfigError("--app", "expected MODULE:OBJECT, got %r" % args.app, "wsgihost")
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())     # like gunicorn: apps in the current directory
            config = {"workers": [{"type": "router", "transports": [{
                "type": "web", "endpoint": {"type": "tcp", "port": args.port, "interface": args.host},
                "paths": {"/": {"type": "wsgi", "module": module, "object": obj}}}]}]}
            node = Node(config, os.getcwd(), "--app")
        else:
            node = Node.from_file(_find_config(args))
    except ConfigError as exc:
        if args.loglevel == "debug":
            traceback.print_exc()
        print(exc, file=sys.stderr)
        return 2
    if args.check:
        print("ok: %d transports, %d paths" % (len(node.transports), _count_paths(node.transports)))
        return 0
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
