"""Tests for wsgihost, ordered like the module. Standard library only.

Run: python test_wsgihost.py      (or: python -m unittest test_wsgihost)

Most tests are pure: raw request bytes in, values or exact bytes out, through
a fake socket -- no network. Then a few socket tests run the real server on
port 0 in a thread, and a subprocess runs ``python wsgihost.py CONFIG``.
Tests that need Flask skip without it; with WSGIHOST_REQUIRE_ALL=1 (as in
.ci/run) a skip fails the run.
"""

import base64
import contextlib
import http.client
import io
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import unittest
import zlib
from unittest import mock
from wsgiref.validate import validator

import wsgihost
from wsgihost import HTTPError, parse_request_head, parse_body_framing, parse_request_target

HERE = os.path.dirname(os.path.abspath(__file__))
REMOTE = ("127.0.0.1", 54321)
TEXT = [("Content-Type", "text/plain")]


def setUpModule():
    # Quiet during tests (tests that want logs use assertLogs) -- but not when a
    # server subprocess imports this module for its apps.
    logging.getLogger("wsgihost").setLevel(logging.CRITICAL)


# -----------------------------------------------------------------------------
# Helpers: a fake socket, a runner, and a response splitter
# -----------------------------------------------------------------------------

class FakeSocket:
    """A socket that receives ``data`` (in pieces of ``piece`` bytes) and records what is sent."""

    def __init__(self, data: bytes, piece: int = None):
        self.incoming = data
        self.piece = piece
        self.sent = bytearray()
        self.closed = False

    def recv(self, n):
        size = min(n, self.piece or n)
        data, self.incoming = self.incoming[:size], self.incoming[size:]
        return data

    def sendall(self, data):
        self.sent += data

    def settimeout(self, t):
        pass

    def shutdown(self, how):
        pass

    def close(self):
        self.closed = True


def run_raw(app, data: bytes, piece: int = None, validate: bool = True, **options) -> bytes:
    """Serve one connection carrying ``data`` to ``app``; return the bytes sent back."""
    transport = wsgihost.app_transport(validator(app) if validate else app, **options)
    sock = FakeSocket(data, piece)
    transport.serve_connection(sock, REMOTE)
    return bytes(sock.sent)


class Resp:
    def __init__(self, status, headers, body, head):
        self.status, self.headers, self.body, self.head = status, headers, body, head

    def __repr__(self):
        return "Resp(%d, %r, %r)" % (self.status, self.headers, self.body[:80])


def split_responses(data: bytes, methods=()) -> list:
    """Parse the responses in ``data``; ``methods`` gives the request method of each (HEAD!)."""
    responses, i, n = [], 0, 0
    methods = list(methods)
    while i < len(data):
        end = data.index(b"\r\n\r\n", i)
        head = data[i:end].decode("latin-1")
        lines = head.split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(": ")
            headers.setdefault(name.lower(), []).append(value)
        headers = {k: ", ".join(v) for k, v in headers.items()}
        i = end + 4
        if status == 100:
            responses.append(Resp(status, headers, b"", head))
            continue
        method = methods[n] if n < len(methods) else "GET"
        n += 1
        if method == "HEAD" or status in (204, 304):
            body = b""
        elif "content-length" in headers:
            length = int(headers["content-length"])
            body = data[i:i + length]
            i += length
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                eol = data.index(b"\r\n", i)
                size = int(data[i:eol], 16)
                body += data[eol + 2:eol + 2 + size]
                i = eol + 2 + size + 2
                if size == 0:
                    break
        else:
            body, i = data[i:], len(data)
        responses.append(Resp(status, headers, body, head))
    return responses


def recv_until_closed(sock) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def one(app, data: bytes, **kw) -> Resp:
    responses = split_responses(run_raw(app, data, **kw), [data.split(b" ", 1)[0].decode()])
    return responses[0]


def hello_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello, World!"]


def environ_app(environ, start_response):
    """Echoes the environ's CGI keys as JSON, and the body it read."""
    body = b""
    if environ.get("CONTENT_LENGTH") or environ.get("HTTP_TRANSFER_ENCODING"):
        while True:
            part = environ["wsgi.input"].read(7)
            if not part:
                break
            body += part
    data = {k: v for k, v in environ.items() if isinstance(v, str)}
    data["body"] = body.decode("latin-1")
    out = json.dumps(data).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(out)))])
    return [out]


def body_reading_app(environ, start_response):
    """Reads the whole body (as frameworks do), then answers."""
    environ["wsgi.input"].read()
    start_response("200 OK", TEXT)
    return [b"read it"]


def get_environ(request: bytes, **kw) -> dict:
    resp = one(environ_app, request, **kw)
    assert resp.status == 200, resp
    return json.loads(resp.body)


# -----------------------------------------------------------------------------
# 3. The request head
# -----------------------------------------------------------------------------

class ParseRequestHeadTests(unittest.TestCase):

    def assertRejected(self, head: bytes, status: int = 400):
        with self.assertRaises(HTTPError) as ctx:
            parse_request_head(head)
        self.assertEqual(ctx.exception.status, status, ctx.exception.detail)
        return ctx.exception

    def test_simple_get(self):
        head = parse_request_head(b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*")
        self.assertEqual(head.method, "GET")
        self.assertEqual(head.target, "/a?b=1")
        self.assertEqual(head.version, (1, 1))
        self.assertEqual(head.fields, {"HTTP_HOST": "example.com", "HTTP_ACCEPT": "*/*"})

    def test_http_1_0_without_fields(self):
        head = parse_request_head(b"GET / HTTP/1.0")
        self.assertEqual((head.version, head.fields), ((1, 0), {}))

    def test_repeated_fields_joined_with_comma_space(self):
        head = parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\nX-Foo: 1\r\nx-foo: 2\r\nX-FOO: 3")
        self.assertEqual(head.fields["HTTP_X_FOO"], "1, 2, 3")

    def test_content_type_and_length_have_no_http_prefix(self):
        head = parse_request_head(b"POST / HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 3")
        self.assertEqual(head.fields, {"CONTENT_TYPE": "text/plain", "CONTENT_LENGTH": "3"})

    def test_field_names_with_underscore_are_dropped(self):
        head = parse_request_head(b"GET / HTTP/1.1\r\nX_Auth_User: admin\r\nX-Auth-User: bob")
        self.assertEqual(head.fields, {"HTTP_X_AUTH_USER": "bob"})

    def test_underscore_content_length_does_not_frame_the_body(self):
        head = parse_request_head(b"POST / HTTP/1.1\r\nContent_Length: 5")
        self.assertEqual(parse_body_framing(head), 0)

    def test_field_value_whitespace_trimmed_inner_kept(self):
        head = parse_request_head(b"GET / HTTP/1.1\r\nX-A: \t a  b \t")
        self.assertEqual(head.fields["HTTP_X_A"], "a  b")

    def test_field_value_obs_text_decoded_as_latin1(self):
        head = parse_request_head(b"GET / HTTP/1.1\r\nX-A: caf\xe9")
        self.assertEqual(head.fields["HTTP_X_A"], "caf\xe9")

    def test_target_bytes_kept_as_latin1(self):
        self.assertEqual(parse_request_head(b"GET /\xe2\x82\xac HTTP/1.1").target, "/\xe2\x82\xac")

    def test_bare_cr_rejected(self):
        self.assertIn("bare CR", self.assertRejected(b"GET / HTTP/1.1\r\nX-A: a\rb").detail)

    def test_bare_lf_rejected(self):
        self.assertIn("bare LF", self.assertRejected(b"GET / HTTP/1.1\nHost: a\r\nX: y").detail)

    def test_nul_in_field_value_rejected(self):
        self.assertRejected(b"GET / HTTP/1.1\r\nX-A: a\x00b")

    def test_control_character_in_field_value_rejected(self):
        self.assertRejected(b"GET / HTTP/1.1\r\nX-A: a\x01b")
        self.assertRejected(b"GET / HTTP/1.1\r\nX-A: a\x7fb")

    def test_tab_in_field_value_accepted(self):
        self.assertEqual(parse_request_head(b"GET / HTTP/1.1\r\nX-A: a\tb").fields["HTTP_X_A"], "a\tb")

    def test_obs_fold_rejected(self):
        error = self.assertRejected(b"GET / HTTP/1.1\r\nX-A: a\r\n  b")
        self.assertIn("folding", error.detail)

    def test_whitespace_before_colon_rejected(self):
        error = self.assertRejected(b"GET / HTTP/1.1\r\nHost : a")
        self.assertIn("whitespace before the colon", error.detail)
        self.assertRejected(b"GET / HTTP/1.1\r\nTransfer-Encoding\t: chunked")

    def test_invalid_field_name_rejected(self):
        for line in (b": x", b"X A: b", b"X(A): b", b"\xe9: b", b"no colon"):
            with self.subTest(line=line):
                self.assertRejected(b"GET / HTTP/1.1\r\n" + line)

    def test_invalid_method_token_rejected(self):
        for line in (b"G(T / HTTP/1.1", b"GE T / HTTP/1.1", b" GET / HTTP/1.1", b"GET\t/ HTTP/1.1"):
            with self.subTest(line=line):
                self.assertRejected(line)

    def test_unknown_method_token_accepted(self):
        self.assertEqual(parse_request_head(b"PURGE / HTTP/1.1").method, "PURGE")

    def test_malformed_request_lines_rejected(self):
        for line in (b"GET /", b"GET  / HTTP/1.1", b"GET / HTTP/1.1 ", b"GET / http/1.1",
                     b"GET / HTTP/1.10", b"GET / HTTP/11", b"GET / HTTP/1", b"GET a b HTTP/1.1"):
            with self.subTest(line=line):
                self.assertRejected(line)

    def test_unsupported_http_version_answered_505(self):
        for line in (b"GET / HTTP/2.0", b"GET / HTTP/0.9", b"GET / HTTP/1.2", b"GET / HTTP/3.0"):
            with self.subTest(line=line):
                self.assertRejected(line, 505)

    def test_host_twice_rejected(self):
        self.assertRejected(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b")

    def test_content_type_twice_rejected(self):
        self.assertRejected(b"POST / HTTP/1.1\r\nContent-Type: a/b\r\nContent-Type: c/d")

    def test_content_length_twice_rejected_even_if_equal(self):
        self.assertRejected(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1")

    def test_request_line_limit(self):
        # "GET " + target + " HTTP/1.1" = 4 + n + 9 bytes
        limits = wsgihost.Limits(max_request_line=100)
        parse_request_head(b"GET /" + b"a" * 86 + b" HTTP/1.1", limits)          # 100 bytes
        with self.assertRaises(HTTPError) as ctx:
            parse_request_head(b"GET /" + b"a" * 87 + b" HTTP/1.1", limits)      # 101 bytes
        self.assertEqual(ctx.exception.status, 414)

    def test_header_line_limit(self):
        limits = wsgihost.Limits(max_header_line=50)
        parse_request_head(b"GET / HTTP/1.1\r\nX-A: " + b"v" * 45, limits)      # 5 + 45 = 50
        with self.assertRaises(HTTPError) as ctx:
            parse_request_head(b"GET / HTTP/1.1\r\nX-A: " + b"v" * 46, limits)  # 51
        self.assertEqual(ctx.exception.status, 431)

    def test_header_field_count_limit(self):
        fields = b"".join(b"\r\nX-%d: v" % i for i in range(100))
        parse_request_head(b"GET / HTTP/1.1" + fields)
        with self.assertRaises(HTTPError) as ctx:
            parse_request_head(b"GET / HTTP/1.1" + fields + b"\r\nX-Last: v")
        self.assertEqual(ctx.exception.status, 431)


class ParseRequestTargetTests(unittest.TestCase):

    def test_origin_form(self):
        self.assertEqual(parse_request_target("GET", "/a/b?x=1&y"), ("/a/b", "x=1&y", None))

    def test_query_kept_raw(self):
        self.assertEqual(parse_request_target("GET", "/?a=%20+b"), ("/", "a=%20+b", None))

    def test_fragment_cut_off(self):
        self.assertEqual(parse_request_target("GET", "/p?q=1#frag"), ("/p", "q=1", None))

    def test_absolute_form_takes_path_and_authority(self):
        self.assertEqual(parse_request_target("GET", "http://example.com:8080/a?b"),
                         ("/a", "b", "example.com:8080"))
        self.assertEqual(parse_request_target("GET", "HTTPS://example.com"), ("/", "", "example.com"))

    def test_asterisk_form_only_for_options(self):
        self.assertEqual(parse_request_target("OPTIONS", "*"), ("*", "", None))
        with self.assertRaises(HTTPError):
            parse_request_target("GET", "*")

    def test_invalid_targets_rejected(self):
        for target in ("a/b", "ftp://x/y", "http://user@host/", "http://ho st/"):
            with self.subTest(target=target), self.assertRaises(HTTPError) as ctx:
                parse_request_target("GET", target)
            self.assertEqual(ctx.exception.status, 400)

    def test_connect_not_implemented(self):
        with self.assertRaises(HTTPError) as ctx:
            parse_request_target("CONNECT", "example.com:443")
        self.assertEqual(ctx.exception.status, 501)


class ParseBodyFramingTests(unittest.TestCase):

    def framing(self, fields: bytes, version=b"1.1"):
        return parse_body_framing(parse_request_head(b"POST / HTTP/" + version + fields))

    def assertRejected(self, fields: bytes, status=400, version=b"1.1"):
        with self.assertRaises(HTTPError) as ctx:
            self.framing(fields, version)
        self.assertEqual(ctx.exception.status, status, ctx.exception.detail)

    def test_no_body(self):
        self.assertEqual(self.framing(b""), 0)

    def test_content_length(self):
        self.assertEqual(self.framing(b"\r\nContent-Length: 42"), 42)
        self.assertEqual(self.framing(b"\r\nContent-Length: 007"), 7)

    def test_chunked(self):
        self.assertIsNone(self.framing(b"\r\nTransfer-Encoding: chunked"))
        self.assertIsNone(self.framing(b"\r\nTransfer-Encoding: Chunked"))

    def test_content_length_with_transfer_encoding_rejected(self):
        self.assertRejected(b"\r\nContent-Length: 5\r\nTransfer-Encoding: chunked")
        self.assertRejected(b"\r\nTransfer-Encoding: chunked\r\nContent-Length: 5")

    def test_malformed_content_length_rejected(self):
        for value in (b"+5", b"-5", b"5 5", b"0x5", b"5,5", b"5, 5", b"", b"1e3", b"\xb2",
                      b"1234567890123456789"):
            with self.subTest(value=value):
                self.assertRejected(b"\r\nContent-Length: " + value)

    def test_transfer_encoding_other_than_final_chunked_rejected(self):
        for value in (b"chunked, gzip", b"gzip", b"identity", b"chunked, chunked", b"", b"chunked,"):
            with self.subTest(value=value):
                self.assertRejected(b"\r\nTransfer-Encoding: " + value)

    def test_transfer_encoding_split_over_two_lines_rejected(self):
        self.assertRejected(b"\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked")

    def test_unknown_coding_before_chunked_not_implemented(self):
        self.assertRejected(b"\r\nTransfer-Encoding: gzip, chunked", 501)

    def test_transfer_encoding_in_http_1_0_rejected(self):
        self.assertRejected(b"\r\nTransfer-Encoding: chunked", 400, b"1.0")


class ParseChunkSizeTests(unittest.TestCase):

    def test_sizes(self):
        self.assertEqual(wsgihost.parse_chunk_size(b"0\r\n"), 0)
        self.assertEqual(wsgihost.parse_chunk_size(b"1aF\r\n"), 0x1AF)
        self.assertEqual(wsgihost.parse_chunk_size(b"ffffffffffffffff\r\n"), 2 ** 64 - 1)

    def test_extensions_accepted_and_ignored(self):
        self.assertEqual(wsgihost.parse_chunk_size(b'5;name=value;flag ; q="a \\"b\\""\r\n'), 5)

    def test_invalid_chunk_size_lines_rejected(self):
        for line in (b"-1\r\n", b"+1\r\n", b"0x5\r\n", b"\r\n", b" 5\r\n", b"5\n", b"g\r\n",
                     b"1ffffffffffffffff\r\n", b"5;\r\n", b"5;a=\r\n", b'5;a="x\r\n', b"5;a\x00\r\n",
                     b"5 \r\n", b"5\t\r\n", b"0 \r\n", b"5;a=b \r\n"):     # no whitespace before CRLF
            with self.subTest(line=line), self.assertRaises(HTTPError):
                wsgihost.parse_chunk_size(line)


# -----------------------------------------------------------------------------
# 4-7. Bodies, environ, response and the connection, through a fake socket
# -----------------------------------------------------------------------------

class EnvironTests(unittest.TestCase):

    def test_build_environ_pure(self):
        from wsgiref.validate import check_environ
        head = parse_request_head(b"POST /x%20y?q HTTP/1.0\r\nContent-Type: a/b\r\nContent-Length: 0\r\n"
                                  b"X-A: 1")
        base = dict(wsgihost.build_base_environ("example", 8080), REMOTE_ADDR="10.0.0.1",
                    REMOTE_PORT="4321")
        body = wsgihost.FixedLengthInput(wsgihost.SocketReader(None), 0)
        environ = wsgihost.build_environ(base, head, "/app", "/x y", "q", body)
        self.assertEqual({k: environ[k] for k in ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO",
                                                 "QUERY_STRING", "SERVER_PROTOCOL", "SERVER_NAME",
                                                 "SERVER_PORT", "CONTENT_TYPE", "CONTENT_LENGTH",
                                                 "HTTP_X_A", "REMOTE_ADDR", "REMOTE_PORT")},
                         {"REQUEST_METHOD": "POST", "SCRIPT_NAME": "/app", "PATH_INFO": "/x y",
                          "QUERY_STRING": "q", "SERVER_PROTOCOL": "HTTP/1.0", "SERVER_NAME": "example",
                          "SERVER_PORT": "8080", "CONTENT_TYPE": "a/b", "CONTENT_LENGTH": "0",
                          "HTTP_X_A": "1", "REMOTE_ADDR": "10.0.0.1", "REMOTE_PORT": "4321"})
        self.assertIs(environ["wsgi.input"], body)
        self.assertNotIn("HTTP_X_A", base)                      # the base is not changed
        check_environ(environ)                                  # wsgiref's own PEP 3333 checks

    def test_environ_keys(self):
        env = get_environ(b"GET /a/b?x=%20y HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: t\r\n\r\n")
        self.assertEqual(env["REQUEST_METHOD"], "GET")
        self.assertEqual(env["SCRIPT_NAME"], "")
        self.assertEqual(env["PATH_INFO"], "/a/b")
        self.assertEqual(env["QUERY_STRING"], "x=%20y")
        self.assertEqual(env["SERVER_PROTOCOL"], "HTTP/1.1")
        self.assertEqual(env["HTTP_HOST"], "example.com:8080")
        self.assertEqual(env["HTTP_USER_AGENT"], "t")
        self.assertEqual(env["REMOTE_ADDR"], "127.0.0.1")
        self.assertEqual(env["REMOTE_PORT"], "54321")
        self.assertEqual(env["SERVER_PORT"], "8080")
        self.assertEqual(env["wsgi.url_scheme"], "http")
        self.assertEqual(env["REQUEST_URI"], "/a/b?x=%20y")
        self.assertNotIn("CONTENT_LENGTH", env)
        self.assertNotIn("HTTP_CONTENT_LENGTH", env)

    def test_wsgi_keys(self):
        seen = {}

        def app(environ, start_response):
            seen.update(environ)
            start_response("204 No Content", [])
            return []
        run_raw(app, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(seen["wsgi.version"], (1, 0))
        self.assertIs(seen["wsgi.multithread"], True)
        self.assertIs(seen["wsgi.multiprocess"], False)
        self.assertIs(seen["wsgi.run_once"], False)
        self.assertIs(seen["wsgi.input_terminated"], True)
        self.assertIs(seen["wsgi.file_wrapper"], wsgihost.FileWrapper)
        self.assertTrue(hasattr(seen["wsgi.errors"], "write"))

    def test_path_info_percent_decoded_as_latin1(self):
        env = get_environ(b"GET /a%20b/%E2%82%AC/%2F HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(env["PATH_INFO"], "/a b/\xe2\x82\xac//")
        self.assertEqual(env["PATH_INFO"].encode("latin-1").decode("utf-8"), "/a b/\u20ac//")

    def test_content_length_and_type(self):
        env = get_environ(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\n"
                          b"Content-Length: 5\r\n\r\nhello")
        self.assertEqual((env["CONTENT_TYPE"], env["CONTENT_LENGTH"], env["body"]),
                         ("text/plain", "5", "hello"))
        self.assertNotIn("HTTP_CONTENT_TYPE", env)

    def test_repeated_header_joined_in_environ(self):
        env = get_environ(b"GET / HTTP/1.1\r\nHost: a\r\nAccept: a/b\r\nAccept: c/d\r\n\r\n")
        self.assertEqual(env["HTTP_ACCEPT"], "a/b, c/d")

    def test_absolute_form_target_sets_host_and_path(self):
        env = get_environ(b"GET http://other.example/p/q?r HTTP/1.1\r\nHost: ignored\r\n\r\n")
        self.assertEqual((env["HTTP_HOST"], env["PATH_INFO"], env["QUERY_STRING"]),
                         ("other.example", "/p/q", "r"))

    def test_http_1_1_without_host_rejected(self):
        resp = one(hello_app, b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(resp.status, 400)
        self.assertEqual(resp.headers["connection"], "close")

    def test_http_1_0_without_host_accepted(self):
        self.assertEqual(one(hello_app, b"GET / HTTP/1.0\r\n\r\n").status, 200)

    def test_invalid_host_rejected(self):
        self.assertEqual(one(hello_app, b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n").status, 400)


MOUNT_CONFIG = {"workers": [{"type": "router", "transports": [{
    "type": "web", "endpoint": {"type": "tcp", "port": 0, "interface": "127.0.0.1"},
    "paths": {
        "/": {"type": "wsgi", "module": "test_wsgihost", "object": "environ_app"},
        "app": {"type": "wsgi", "module": "test_wsgihost", "object": "environ_app"},
        "api": {"type": "path", "paths": {
            "v1": {"type": "wsgi", "module": "test_wsgihost", "object": "environ_app"}}},
        "ws": {"type": "websocket"},
    }}]}]}


class MountTests(unittest.TestCase):
    """SPEC §2's mount table: SCRIPT_NAME is the mount, PATH_INFO the rest."""

    transport = wsgihost.build_transports(MOUNT_CONFIG)[0]

    def environ_for(self, path: bytes) -> dict:
        sock = FakeSocket(b"GET " + path + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        self.transport.serve_connection(sock, REMOTE)
        resp = split_responses(bytes(sock.sent))[0]
        self.assertEqual(resp.status, 200, resp)
        return json.loads(resp.body)

    def test_mount_table(self):
        for path, script_name, path_info in [
                (b"/x", "", "/x"), (b"/app", "/app", ""), (b"/app/", "/app", "/"),
                (b"/app/x/y", "/app", "/x/y"), (b"/api/v1/x", "/api/v1", "/x"),
                (b"/appx", "", "/appx"), (b"/App", "", "/App"),
                (b"/", "", "/"), (b"/%61pp/x", "/app", "/x")]:
            with self.subTest(path=path):
                env = self.environ_for(path)
                self.assertEqual((env["SCRIPT_NAME"], env["PATH_INFO"]), (script_name, path_info))

    def test_no_backtracking_out_of_a_nested_path(self):
        # Twisted's traversal, as in Crossbar: /api/v2 is under "api", which has no "v2" nor "/".
        sock = FakeSocket(b"GET /api/v2 HTTP/1.1\r\nHost: a\r\n\r\nGET /api HTTP/1.1\r\nHost: a\r\n\r\n")
        self.transport.serve_connection(sock, REMOTE)
        self.assertEqual([r.status for r in split_responses(bytes(sock.sent))], [404, 404])

    def test_no_default_path_gives_404(self):
        config = json.loads(json.dumps(MOUNT_CONFIG))
        del config["workers"][0]["transports"][0]["paths"]["/"]
        transport = wsgihost.build_transports(config)[0]
        sock = FakeSocket(b"GET /nothing HTTP/1.1\r\nHost: a\r\n\r\nGET /app/x HTTP/1.1\r\nHost: a\r\n\r\n")
        transport.serve_connection(sock, REMOTE)
        self.assertEqual([r.status for r in split_responses(bytes(sock.sent))], [404, 200])

    def test_plain_get_on_a_websocket_path_answers_426(self):
        sock = FakeSocket(b"GET /ws HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        self.transport.serve_connection(sock, REMOTE)
        responses = split_responses(bytes(sock.sent))
        self.assertEqual([r.status for r in responses], [426, 200])     # the connection goes on
        self.assertEqual(responses[0].headers["upgrade"], "websocket")
        self.assertEqual(responses[0].headers["sec-websocket-version"], "13")


class RequestBodyTests(unittest.TestCase):

    def test_chunked_body(self):
        env = get_environ(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        self.assertEqual(env["body"], "hello world")
        self.assertNotIn("CONTENT_LENGTH", env)

    def test_chunked_body_with_extension(self):
        env = get_environ(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"5;ext=1\r\nhello\r\n0;last\r\n\r\n")
        self.assertEqual(env["body"], "hello")

    def test_chunked_trailers_never_reach_the_environ(self):
        seen = {}

        def app(environ, start_response):
            seen["body"] = environ["wsgi.input"].read()
            seen.update(environ)
            start_response("200 OK", TEXT)
            return [b""]
        run_raw(app, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n0\r\nX-Trailer: evil\r\nX-Checksum: 1\r\n\r\n", validate=False)
        self.assertEqual(seen["body"], b"abc")
        self.assertNotIn("HTTP_X_TRAILER", seen)
        self.assertNotIn("HTTP_X_CHECKSUM", seen)

    def test_bad_chunk_size_answered_400_and_closed(self):
        data = run_raw(body_reading_app, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"-5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", validate=False)
        responses = split_responses(data)
        self.assertEqual([r.status for r in responses], [400])
        self.assertEqual(responses[0].headers["connection"], "close")

    def test_chunk_data_without_crlf_rejected(self):
        data = run_raw(body_reading_app, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"3\r\nabcXY0\r\n\r\n", validate=False)
        self.assertEqual(split_responses(data)[0].status, 400)

    def test_body_read_one_byte_at_a_time(self):
        request = (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"5\r\nhello\r\n1;x=y\r\n!\r\n0\r\n\r\n")
        resp = one(environ_app, request, piece=1)
        self.assertEqual(json.loads(resp.body)["body"], "hello!")

    def test_input_read_readline_readlines_iteration(self):
        seen = {}

        def app(environ, start_response):
            stream = environ["wsgi.input"]
            seen["line1"] = stream.readline()
            seen["part"] = stream.readline(3)
            seen["read"] = stream.read(4)
            seen["lines"] = stream.readlines()
            seen["end"] = stream.read(10)
            start_response("200 OK", TEXT)
            return [b""]
        body = b"first\nsecond line\nthird\nlast"
        run_raw(app, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        self.assertEqual(seen, {"line1": b"first\n", "part": b"sec", "read": b"ond ",
                                "lines": [b"line\n", b"third\n", b"last"], "end": b""})

    def test_input_iteration_and_read_all(self):
        seen = []

        def app(environ, start_response):
            seen.extend(environ["wsgi.input"])
            start_response("200 OK", TEXT)
            return [b""]
        run_raw(app, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"4\r\na\nbc\r\n2\r\nd\n\r\n0\r\n\r\n", validate=False)
        self.assertEqual(seen, [b"a\n", b"bcd\n"])

    def test_input_never_reads_past_the_body(self):
        def app(environ, start_response):
            data = environ["wsgi.input"].read(100)
            start_response("200 OK", TEXT)
            return [data]
        data = run_raw(app, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
                            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nde")
        self.assertEqual([r.body for r in split_responses(data)], [b"abc", b"de"])

    def test_unread_body_is_drained_before_the_next_request(self):
        data = run_raw(hello_app, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n"
                                  b"0123456789"
                                  b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        responses = split_responses(data)
        self.assertEqual([r.status for r in responses], [200, 200])
        self.assertNotIn("connection", responses[0].headers)

    def test_unread_chunked_body_is_drained(self):
        data = run_raw(hello_app, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual([r.status for r in split_responses(data)], [200, 200])

    def test_large_unread_body_closes_the_connection(self):
        body = b"x" * (wsgihost.MAX_DRAIN_SIZE + 1)
        data = run_raw(hello_app, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s"
                                  b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" % (len(body), body))
        responses = split_responses(data)
        self.assertEqual(len(responses), 1)
        self.assertEqual(responses[0].headers["connection"], "close")

    def test_max_body_size_content_length(self):
        data = run_raw(environ_app, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n"
                                    b"hello world", max_body_size=10)
        self.assertEqual(split_responses(data)[0].status, 413)
        ok = run_raw(environ_app, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n"
                                  b"hello worl", max_body_size=10)
        self.assertEqual(split_responses(ok)[0].status, 200)

    def test_max_body_size_chunked(self):
        request = (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        self.assertEqual(split_responses(run_raw(environ_app, request, max_body_size=10))[0].status, 413)
        self.assertEqual(split_responses(run_raw(environ_app, request, max_body_size=11))[0].status, 200)

    def test_client_gone_mid_body_costs_nothing_else(self):
        closed = []

        class Body:
            def __init__(self, stream):
                self.stream = stream

            def __iter__(self):
                yield self.stream.read(10)      # the client is gone after 3 bytes

            def close(self):
                closed.append(True)

        def app(environ, start_response):
            start_response("200 OK", TEXT)
            return Body(environ["wsgi.input"])
        data = run_raw(app, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        self.assertEqual(data, b"")
        self.assertEqual(closed, [True])


class ExpectContinueTests(unittest.TestCase):

    def test_100_continue_sent_when_the_app_reads(self):
        data = run_raw(environ_app, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                                    b"Expect: 100-continue\r\n\r\nhello")
        self.assertTrue(data.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"), data)
        self.assertEqual(json.loads(split_responses(data)[1].body)["body"], "hello")

    def test_100_continue_not_sent_when_the_app_does_not_read(self):
        data = run_raw(hello_app, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                                  b"Expect: 100-continue\r\n\r\n")
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK\r\n"), data)
        self.assertNotIn(b"100 Continue", data)
        self.assertEqual(split_responses(data)[0].headers["connection"], "close")

    def test_100_continue_ignored_on_http_1_0(self):
        data = run_raw(environ_app, b"POST / HTTP/1.0\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi")
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK\r\n"), data)

    def test_unknown_expectation_answered_417(self):
        resp = one(hello_app, b"GET / HTTP/1.1\r\nHost: a\r\nExpect: something\r\n\r\n")
        self.assertEqual(resp.status, 417)


class ResponseFramingTests(unittest.TestCase):

    def test_exact_bytes_of_a_simple_response(self):
        # validate=False here and below: the validator wraps the list in an
        # iterator, which hides that the body was given whole.
        data = run_raw(hello_app, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", validate=False)
        date = wsgihost.date_line()
        self.assertEqual(data, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n"
                               + date + b"Server: wsgihost/" + wsgihost.__version__.encode()
                               + b"\r\n\r\nHello, World!")

    def test_list_body_gets_content_length(self):
        def app(environ, start_response):
            start_response("200 OK", TEXT)
            return [b"ab", b"", b"cde"]
        resp = one(app, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", validate=False)
        self.assertEqual((resp.headers["content-length"], resp.body), ("5", b"abcde"))

    def test_any_iterable_of_length_one_gets_content_length(self):
        class OneChunk:
            def __len__(self):
                return 1

            def __iter__(self):
                yield b"whole"

            def close(self):
                pass

        def app(environ, start_response):
            start_response("200 OK", TEXT)
            return OneChunk()
        data = run_raw(app, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", validate=False)
        self.assertIn(b"Content-Length: 5\r\n", data)
        self.assertNotIn(b"chunked", data)
        self.assertTrue(data.endswith(b"\r\n\r\nwhole"))

    def test_generator_body_chunked_on_1_1(self):
        def app(environ, start_response):
            start_response("200 OK", TEXT)
            yield b"ab"
            yield b""
            yield b"cde"
        data = run_raw(app, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertIn(b"Transfer-Encoding: chunked\r\n", data)
        self.assertTrue(data.endswith(b"\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"), data)

    def test_generator_body_close_delimited_on_1_0(self):
        def app(environ, start_response):
            start_response("200 OK", TEXT)
            yield b"ab"
            yield b"cd"
        data = run_raw(app, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        self.assertNotIn(b"Transfer-Encoding", data)
        self.assertNotIn(b"Content-Length", data)
        self.assertTrue(data.endswith(b"\r\n\r\nabcd"))

    def test_app_content_length_used_for_a_stream(self):
        def app(environ, start_response):
            start_response("200 OK", TEXT + [("Content-Length", "4")])
            yield b"ab"
            yield b"cd"
        data = run_raw(app, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertNotIn(b"chunked", data)
        self.assertTrue(data.endswith(b"\r\n\r\nabcd"))

    def test_head_has_no_body_but_the_length(self):
        data = run_raw(hello_app, b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
                       validate=False)
        responses = split_responses(data, ["HEAD", "GET"])
        self.assertEqual(responses[0].headers["content-length"], "13")
        self.assertTrue(data.count(b"Hello, World!") == 1 and data.endswith(b"Hello, World!"))

    def test_head_of_a_stream_has_no_body_and_no_chunked(self):
        def app(environ, start_response):
            start_response("200 OK", TEXT)
            yield b"data"
        data = run_raw(app, b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(data.endswith(b"\r\n\r\n"))
        self.assertNotIn(b"data", data)
        self.assertNotIn(b"chunked", data)

    def test_head_with_app_content_length_keeps_the_connection(self):
        def app(environ, start_response):
            start_response("200 OK", TEXT + [("Content-Length", "100")])
            return []
        data = run_raw(app, b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nHEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
        responses = split_responses(data, ["HEAD", "HEAD"])
        self.assertEqual([r.headers["content-length"] for r in responses], ["100", "100"])

    def test_204_and_304_have_no_body(self):
        for status in ("204 No Content", "304 Not Modified"):
            def app(environ, start_response, status=status):
                start_response(status, [("Content-Length", "4")] if status[0:3] == "304" else [])
                return [b"body"]
            with self.subTest(status=status):
                data = run_raw(app, b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
                self.assertNotIn(b"body", data)
                self.assertNotIn(b"chunked", data)
                self.assertEqual(len(split_responses(data)), 2)

    def test_204_never_carries_content_length(self):
        def app(environ, start_response):
            start_response("204 No Content", [("Content-Length", "0")])
            return []
        self.assertNotIn(b"Content-Length", run_raw(app, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"))

    def test_app_date_and_server_kept(self):
        def app(environ, start_response):
            start_response("200 OK", TEXT + [("Server", "mine"), ("Date", "Thu, 01 Jan 1970 00:00:00 GMT")])
            return [b""]
        resp = one(app, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual((resp.headers["server"], resp.headers["date"]),
                         ("mine", "Thu, 01 Jan 1970 00:00:00 GMT"))

    def test_format_http_date(self):
        self.assertEqual(wsgihost.format_http_date(784111777), "Sun, 06 Nov 1994 08:49:37 GMT")

    def test_write_callable(self):
        def app(environ, start_response):
            write = start_response("200 OK", TEXT)
            write(b"one ")
            write(b"")
            return [b"two"]
        resp = one(app, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(resp.body, b"one two")

    def test_headers_wait_for_the_first_non_empty_chunk(self):
        def app(environ, start_response):
            start_response("200 OK", TEXT)
            yield b""
            start_response("500 Oops", [], sys.exc_info())   # still allowed: nothing sent
            yield b"x"
        resp = one(app, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", validate=False)
        self.assertEqual(resp.status, 500)

    def test_exc_info_replaces_headers_not_yet_sent(self):
        def app(environ, start_response):
            start_response("200 OK", TEXT + [("X-First", "1")])
            try:
                raise ValueError("boom")
            except ValueError:
                start_response("500 Internal Server Error", TEXT + [("X-Second", "2")], sys.exc_info())
            return [b"error page"]
        resp = one(app, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual((resp.status, resp.body), (500, b"error page"))
        self.assertNotIn("x-first", resp.headers)
        self.assertEqual(resp.headers["x-second"], "2")

    def test_exc_info_after_headers_sent_reraises_and_closes(self):
        def app(environ, start_response):
            write = start_response("200 OK", TEXT)
            write(b"partial")
            try:
                raise ValueError("boom")
            except ValueError:
                start_response("500 Internal Server Error", [], sys.exc_info())
            return [b"never"]
        with self.assertLogs("wsgihost", "ERROR") as logs:
            data = run_raw(app, b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertIn("ValueError: boom", "\n".join(logs.output))
        self.assertTrue(data.endswith(b"7\r\npartial\r\n"), data)   # no last-chunk: the client sees it cut
        self.assertEqual(data.count(b"HTTP/1.1 200"), 1)

    def test_content_length_not_filled_closes_the_connection(self):
        def app(environ, start_response):
            start_response("200 OK", [("Content-Length", "10")])
            return [b"short"]
        with self.assertLogs("wsgihost", "ERROR"):
            data = run_raw(app, b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
                           validate=False)
        self.assertEqual(data.count(b"HTTP/1.1 200"), 1)
        self.assertTrue(data.endswith(b"short"))

    def test_content_length_overflow_is_cut(self):
        def app(environ, start_response):
            start_response("200 OK", [("Content-Length", "3")])
            return [b"abcdef"]
        with self.assertLogs("wsgihost", "ERROR"):
            data = run_raw(app, b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
                           validate=False)
        self.assertTrue(data.endswith(b"\r\n\r\nabc"))
        self.assertEqual(data.count(b"HTTP/1.1 200"), 1)

    def test_file_wrapper_without_sendfile_iterates(self):
        def app(environ, start_response):
            start_response("200 OK", TEXT)
            return environ["wsgi.file_wrapper"](io.BytesIO(b"file body"), 4)
        resp = one(app, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(resp.body, b"file body")


class KeepAliveTests(unittest.TestCase):

    def test_pipelined_requests_answered_in_order(self):
        def app(environ, start_response):
            start_response("200 OK", TEXT)
            return [environ["PATH_INFO"].encode()]
        request = b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(10))
        for piece in (None, 1, 7):
            with self.subTest(piece=piece):
                bodies = [r.body for r in split_responses(run_raw(app, request, piece=piece))]
                self.assertEqual(bodies, [b"/%d" % i for i in range(10)])

    def test_connection_close_honoured(self):
        data = run_raw(hello_app, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                                  b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        responses = split_responses(data)
        self.assertEqual(len(responses), 1)
        self.assertEqual(responses[0].headers["connection"], "close")

    def test_http_1_0_closes_by_default(self):
        data = run_raw(hello_app, b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n")
        responses = split_responses(data)
        self.assertEqual(len(responses), 1)
        self.assertNotIn("connection", responses[0].headers)

    def test_http_1_0_keep_alive(self):
        data = run_raw(hello_app, b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"
                                  b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", validate=False)
        responses = split_responses(data)
        self.assertEqual([r.headers["connection"] for r in responses], ["keep-alive", "keep-alive"])

    def test_empty_lines_before_a_request_ignored(self):
        data = run_raw(hello_app, b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(split_responses(data)[0].status, 200)

    def test_options_asterisk(self):
        resp = one(hello_app, b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(resp.status, 200)
        self.assertIn("GET", resp.headers["allow"])

    def test_bad_request_answered_and_closed(self):
        data = run_raw(hello_app, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
                                  b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"
                                  b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        responses = split_responses(data)
        self.assertEqual([r.status for r in responses], [200, 400])
        self.assertEqual(responses[1].headers["connection"], "close")
        self.assertIn(b"whitespace before the colon", responses[1].body)

    def test_head_limits_while_receiving(self):
        resp = split_responses(run_raw(hello_app, b"GET /" + b"a" * 200, max_request_line=100))
        self.assertEqual(resp[0].status, 414)
        resp = split_responses(run_raw(hello_app, b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 40,
                                       max_head_size=200))
        self.assertEqual(resp[0].status, 431)

    def test_head_size_limit_at_n_and_n_plus_1(self):
        # "GET / HTTP/1.0\r\n" (16) + "X-A: " (5) + value (n) + "\r\n\r\n" (4) = 25 + n bytes
        for size, status in ((200, 200), (201, 431)):
            with self.subTest(size=size):
                request = b"GET / HTTP/1.0\r\nX-A: " + b"v" * (size - 25) + b"\r\n\r\n"
                self.assertEqual(len(request), size)
                resp = split_responses(run_raw(hello_app, request, max_head_size=200))
                self.assertEqual(resp[0].status, status)

    def test_max_connections_makes_further_clients_wait(self):
        node, port = start_node(hello_app, max_connections=2, client_timeout=5)
        self.addCleanup(node.stop, 0)
        first = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        waiting = socket.create_connection(("127.0.0.1", port), timeout=5)   # in the backlog
        self.addCleanup(waiting.close)
        waiting.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        waiting.settimeout(0.5)
        with self.assertRaises(socket.timeout):
            waiting.recv(4096)                      # not served while both slots are taken
        first[0].close()
        waiting.settimeout(5)
        self.assertTrue(waiting.recv(4096).startswith(b"HTTP/1.1 200 OK"))
        first[1].close()

    def test_lf_only_request_rejected(self):
        self.assertEqual(split_responses(run_raw(hello_app, b"GET / HTTP/1.1\nHost: a\n\n"))[0].status, 400)


class ReviewRegressionTests(unittest.TestCase):
    """Defects found in review, each with the input that showed it."""

    def test_system_exit_in_an_app_is_a_500(self):
        def app(environ, start_response):
            raise SystemExit(3)
        with self.assertLogs("wsgihost", "ERROR"):
            resp = one(app, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", validate=False)
        self.assertEqual(resp.status, 500)

    def test_proxy_header_dropped_httpoxy(self):
        env = get_environ(b"GET / HTTP/1.1\r\nHost: a\r\nProxy: http://evil:8080\r\n\r\n")
        self.assertNotIn("HTTP_PROXY", env)

    def test_status_outside_200_599_refused(self):
        with self.assertLogs("wsgihost", "ERROR"):
            resp = one(lambda e, s: (s("600 Odd", []), [b""])[1], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
                       validate=False)
        self.assertEqual(resp.status, 500)

    def test_access_log_escapes_quotes_and_controls(self):
        with self.assertLogs("wsgihost.access", "INFO") as logs:
            run_raw(hello_app, b'GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: x" "y\xe9\r\n\r\n',
                    access_log=True)
        self.assertIn('"x\\" \\"y\\xe9"', logs.output[0])

    def test_empty_lines_do_not_hold_a_connection_past_client_timeout(self):
        node, port = start_node(hello_app, client_timeout=0.5)
        self.addCleanup(node.stop, 0)
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.addCleanup(sock.close)
        start = time.monotonic()
        with self.assertRaises(OSError):
            for _ in range(20):                                  # 4 s of CRLFs, if allowed
                sock.sendall(b"\r\n")
                time.sleep(0.2)
                sock.setblocking(False)
                try:
                    if sock.recv(4096) == b"":
                        raise ConnectionResetError("closed")
                except BlockingIOError:
                    pass
                sock.setblocking(True)
        self.assertLess(time.monotonic() - start, 2)

    def test_a_large_response_to_a_slow_steady_reader_is_not_cut(self):
        body = os.urandom(8 * 1024 * 1024)
        node, port = start_node(lambda e, s: (s("200 OK", TEXT), [body])[1], client_timeout=1)
        self.addCleanup(node.stop, 0)
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.addCleanup(sock.close)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        data = bytearray()
        while True:                                 # about 2.5 s in all, over client_timeout
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if data.endswith(body[-100:]):
                break
            time.sleep(0.02)
        self.assertTrue(bytes(data).endswith(body))

    def test_413_reaches_a_client_still_uploading(self):
        node, port = start_node(hello_app, max_body_size=1000)
        self.addCleanup(node.stop, 0)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.addCleanup(conn.close)
        conn.request("POST", "/", body=b"x" * (4 * 1024 * 1024))   # sent whole before reading
        self.assertEqual(conn.getresponse().status, 413)

    def test_stop_releases_every_thread(self):
        before = threading.active_count()
        for _ in range(3):
            service = wsgihost.WSGIService(hello_app, "test:hello", minthreads=5)
            transport = wsgihost.WebTransport(wsgihost.PathNode(default=service), "127.0.0.1", 0)
            node = wsgihost.Node(transports=[transport]).start()
            http.client.HTTPConnection("127.0.0.1", transport.port, timeout=5).request("GET", "/")
            node.stop(1)
        deadline = time.monotonic() + 5
        while threading.active_count() > before and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual(threading.active_count(), before)

    def test_stop_of_several_transports_takes_one_grace_period(self):
        def slow(environ, start_response):
            time.sleep(5)
            start_response("200 OK", TEXT)
            return [b""]
        transports = [wsgihost.app_transport(slow, "127.0.0.1", 0) for _ in range(3)]
        node = wsgihost.Node(transports=transports).start()
        conns = []
        for t in transports:
            conn = http.client.HTTPConnection("127.0.0.1", t.port, timeout=10)
            conn.request("GET", "/")
            conns.append(conn)
        time.sleep(0.2)
        start = time.monotonic()
        node.stop(1)
        self.assertLess(time.monotonic() - start, 2.5)
        for conn in conns:
            conn.close()


class AppErrorTests(unittest.TestCase):

    def assert500(self, app, validate=False):
        with self.assertLogs("wsgihost", "ERROR") as logs:
            data = run_raw(app, b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
                           validate=validate)
        responses = split_responses(data)
        self.assertEqual([r.status for r in responses], [500])
        self.assertEqual(responses[0].headers["connection"], "close")
        self.assertNotIn(b"Traceback", responses[0].body)
        return "\n".join(logs.output)

    def test_app_raises(self):
        def app(environ, start_response):
            raise RuntimeError("kaputt")
        self.assertIn("RuntimeError: kaputt", self.assert500(app))

    def test_app_raises_while_iterating_and_close_is_called(self):
        closed = []

        class Body:
            def __iter__(self):
                raise RuntimeError("in iteration")

            def close(self):
                closed.append(True)

        def app(environ, start_response):
            start_response("200 OK", TEXT)
            return Body()
        self.assert500(app)
        self.assertEqual(closed, [True])

    def test_app_never_calls_start_response(self):
        self.assertIn("without calling start_response", self.assert500(lambda e, s: [b"x"]))
        self.assert500(lambda e, s: iter([b"x"]))

    def test_app_returns_non_iterable(self):
        self.assert500(lambda e, s: s("200 OK", TEXT) and None)

    def test_app_yields_str(self):
        def app(environ, start_response):
            start_response("200 OK", TEXT)
            return ["text"]
        self.assertIn("WSGI bodies are bytes", self.assert500(app))

    def test_start_response_twice_without_exc_info(self):
        def app(environ, start_response):
            start_response("200 OK", TEXT)
            start_response("200 OK", TEXT)
            return [b""]
        self.assertIn("second time", self.assert500(app))

    def test_header_with_newline_never_reaches_the_wire(self):
        def app(environ, start_response):
            start_response("200 OK", [("X-A", "a\r\nSet-Cookie: evil=1")])
            return [b""]
        self.assertIn("control character", self.assert500(app))

    def test_status_with_newline_refused(self):
        self.assert500(lambda e, s: s("200 OK\r\nX: y", []) or [b""])

    def test_invalid_statuses_refused(self):
        for status in ("200", "20 OK", "OK 200", "100 Continue", "2000 OK", b"200 OK"):
            with self.subTest(status=status):
                self.assert500(lambda e, s, status=status: s(status, []) or [b""])

    def test_hop_by_hop_header_refused(self):
        for name in ("Connection", "Transfer-Encoding", "Keep-Alive", "Upgrade"):
            with self.subTest(name=name):
                self.assertIn("hop-by-hop", self.assert500(lambda e, s, n=name: s("200 OK", [(n, "x")]) or [b""]))

    def test_non_latin1_header_refused(self):
        self.assert500(lambda e, s: s("200 OK", [("X-A", "\u20ac")]) or [b""])

    def test_display_tracebacks(self):
        def app(environ, start_response):
            raise RuntimeError("shown")
        with self.assertLogs("wsgihost", "ERROR"):
            resp = one(app, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", display_tracebacks=True)
        self.assertEqual(resp.status, 500)
        self.assertIn(b"RuntimeError: shown", resp.body)

    def test_close_called_on_normal_end(self):
        closed = []

        class Body(list):
            def close(self):
                closed.append(True)

        def app(environ, start_response):
            start_response("200 OK", TEXT)
            return Body([b"x"])
        run_raw(app, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(closed, [True])

    def test_close_called_when_the_client_is_gone(self):
        closed = []

        class Gone(FakeSocket):
            def sendall(self, data):
                raise BrokenPipeError(32, "Broken pipe")

        def app(environ, start_response):
            start_response("200 OK", TEXT)

            def body():
                try:
                    yield b"x"
                    yield b"y"
                finally:
                    closed.append(True)
            return body()
        transport = wsgihost.app_transport(app)
        transport.serve_connection(Gone(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), REMOTE)
        self.assertEqual(closed, [True])


class FairSemaphoreTests(unittest.TestCase):

    def test_waiters_served_in_arrival_order(self):
        sem = wsgihost.FairSemaphore(1)
        sem.acquire()
        order = []

        def waiter(i):
            sem.acquire()
            order.append(i)
            sem.release()
        threads = []
        for i in range(5):
            t = threading.Thread(target=waiter, args=(i,))
            t.start()
            threads.append(t)
            while len(sem._waiters) < i + 1:     # wait until it queues: arrival order is i
                time.sleep(0.001)
        sem.release()
        for t in threads:
            t.join(5)
        self.assertEqual(order, [0, 1, 2, 3, 4])
        sem.acquire()       # all slots back: one is free again
        sem.release()


class ResponseHeadTests(unittest.TestCase):
    """build_response_head alone: PEP 3333's rules for status and headers."""

    def test_serialized(self):
        head = wsgihost.build_response_head("404 Not Found", [("Content-Type", "text/html"),
                                                              ("Content-Length", " 12 ")])
        self.assertEqual((head.code, head.status, head.content_length), (404, b"404 Not Found", 12))
        self.assertEqual(head.block, b"Content-Type: text/html\r\nContent-Length: 12\r\n")

    def test_headers_must_be_a_list_of_str_tuples(self):
        for headers in ((("A", "b"),), [("A", b"b")], [["A", "b"]], [("A", "b", "c")]):
            with self.subTest(headers=headers), self.assertRaises(TypeError):
                wsgihost.build_response_head("200 OK", headers)



# -----------------------------------------------------------------------------
# 8. WebSocket (RFC 6455)
# -----------------------------------------------------------------------------

from wsgihost import Opcode, WebSocketError, build_frame, parse_frame  # noqa: E402


class WebSocketFrameTests(unittest.TestCase):
    """Pure frame functions: RFC 6455 test vectors and each violation's close code."""

    def test_accept_key_rfc_6455_section_1_3(self):
        self.assertEqual(wsgihost.websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
                         "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")

    def test_section_5_7_examples(self):
        mask = bytes([0x37, 0xfa, 0x21, 0x3d])
        for data, fin, opcode, payload in [
                (b"\x81\x05\x48\x65\x6c\x6c\x6f", True, Opcode.TEXT, b"Hello"),        # unmasked text
                (b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", True, Opcode.TEXT, b"Hello"),  # masked
                (b"\x01\x03\x48\x65\x6c", False, Opcode.TEXT, b"Hel"),                  # fragment 1
                (b"\x80\x02\x6c\x6f", True, Opcode.CONTINUATION, b"lo"),                # fragment 2
                (b"\x89\x05\x48\x65\x6c\x6c\x6f", True, Opcode.PING, b"Hello"),         # unmasked ping
                (b"\x8a\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", True, Opcode.PONG, b"Hello"),  # masked pong
                (b"\x82\x7e\x01\x00" + b"x" * 256, True, Opcode.BINARY, b"x" * 256),    # 256 bytes
                (b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00" + b"y" * 65536, True, Opcode.BINARY,
                 b"y" * 65536)]:                                                        # 64 KiB
            with self.subTest(data=data[:12]):
                header, got, used = parse_frame(data, require_mask=False)
                self.assertEqual((header.fin, header.opcode, got, used), (fin, opcode, payload, len(data)))
                self.assertEqual(build_frame(opcode, payload, fin, mask if data[1] & 0x80 else None), data)

    def test_incomplete_frames(self):
        data = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
        for n in range(len(data)):
            self.assertIsNone(parse_frame(data[:n]))

    def test_mask_is_its_own_inverse_and_fast_for_16_mib(self):
        payload = os.urandom(16 * 1024 * 1024)
        masked = wsgihost.apply_mask(payload, b"\x01\x02\x03\x04")
        self.assertEqual(masked[:4], bytes(b ^ m for b, m in zip(payload[:4], b"\x01\x02\x03\x04")))
        self.assertEqual(wsgihost.apply_mask(masked, b"\x01\x02\x03\x04"), payload)

    def assertViolation(self, data: bytes, code: int, **kw):
        with self.assertRaises(WebSocketError) as ctx:
            parse_frame(data, **kw)
        self.assertEqual(ctx.exception.code, code, ctx.exception.reason)

    def test_violations_and_their_close_codes(self):
        mask = b"\x00\x00\x00\x00"
        cases = [
            (b"\xc1\x80" + mask, 1002),                     # RSV1 without an extension (§5.2)
            (b"\xa1\x80" + mask, 1002),                     # RSV2
            (b"\x91\x80" + mask, 1002),                     # RSV3
            (b"\x83\x80" + mask, 1002),                     # reserved data opcode 0x3
            (b"\x8b\x80" + mask, 1002),                     # reserved control opcode 0xB
            (b"\x81\x00", 1002),                            # unmasked client frame (§5.1)
            (b"\x89\xfe\x00\x7e" + mask, 1002),             # control frame over 125 bytes (§5.5)
            (b"\x09\x80" + mask, 1002),                     # fragmented control frame (§5.5)
            (b"\x82\xfe\x00\x05" + mask, 1002),             # 16-bit length not minimal (§5.2)
            (b"\x82\xff" + b"\x00" * 6 + b"\x01\x00" + mask, 1002),     # 64-bit length not minimal
            (b"\x82\xff\x80" + b"\x00" * 7 + mask, 1002),   # 64-bit length, top bit set
        ]
        for data, code in cases:
            with self.subTest(data=data):
                self.assertViolation(data, code)

    def test_reserved_bits_with_permessage_deflate(self):
        mask = b"\x00\x00\x00\x00"
        self.assertTrue(parse_frame(b"\xc1\x80" + mask, compression=True)[0].rsv1)      # compressed text
        self.assertTrue(parse_frame(b"\x42\x80" + mask, compression=True)[0].rsv1)      # first fragment
        self.assertFalse(parse_frame(b"\x81\x80" + mask, compression=True)[0].rsv1)     # uncompressed
        for data in (b"\xc0\x80" + mask,             # RSV1 on a continuation frame (RFC 7692 §6)
                     b"\xc9\x80" + mask,             # ... on a ping
                     b"\xc8\x80" + mask,             # ... on a close
                     b"\xe1\x80" + mask,             # RSV2, and RSV3: no extension defines them
                     b"\xd1\x80" + mask):
            with self.subTest(data=data):
                self.assertViolation(data, 1002, compression=True)
        self.assertViolation(b"\xc1\x80" + mask, 1002)  # RSV1 without the extension

    def test_frame_over_the_limit_is_1009(self):
        header = build_frame(Opcode.BINARY, b"x" * 1001, mask=b"abcd")[:8]
        with self.assertRaises(WebSocketError) as ctx:
            wsgihost.parse_frame_header(header, max_payload=1000)
        self.assertEqual(ctx.exception.code, 1009)
        wsgihost.parse_frame_header(build_frame(Opcode.BINARY, b"x" * 1000, mask=b"abcd")[:8], 1000)

    def test_close_payloads(self):
        self.assertEqual(wsgihost.parse_close_payload(b""), (None, ""))
        self.assertEqual(wsgihost.parse_close_payload(b"\x03\xe8bye"), (1000, "bye"))
        for code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999):
            self.assertEqual(wsgihost.parse_close_payload(code.to_bytes(2, "big"))[0], code)
        for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535):
            with self.subTest(code=code), self.assertRaises(WebSocketError) as ctx:
                wsgihost.parse_close_payload(code.to_bytes(2, "big"))
            self.assertEqual(ctx.exception.code, 1002)
        with self.assertRaises(WebSocketError) as ctx:
            wsgihost.parse_close_payload(b"\x03")               # 1 byte (§5.5.1)
        self.assertEqual(ctx.exception.code, 1002)
        with self.assertRaises(WebSocketError) as ctx:
            wsgihost.parse_close_payload(b"\x03\xe8\xff")       # reason not UTF-8
        self.assertEqual(ctx.exception.code, 1007)

    def test_close_payload_reason_truncated_to_fit_125_bytes(self):
        self.assertEqual(len(wsgihost.build_close_payload(1000, "x" * 500)), 125)

    def test_close_payload_reason_truncated_on_a_character_boundary(self):
        payload = wsgihost.build_close_payload(1000, "\u00e9" * 100)     # 200 bytes of UTF-8
        self.assertEqual(len(payload), 2 + 122)
        self.assertEqual(wsgihost.parse_close_payload(payload), (1000, "\u00e9" * 61))


def handshake_environ(**changes):
    environ = {"REQUEST_METHOD": "GET", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_UPGRADE": "websocket",
               "HTTP_CONNECTION": "keep-alive, Upgrade", "HTTP_SEC_WEBSOCKET_VERSION": "13",
               "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ=="}
    environ.update(changes)
    return {k: v for k, v in environ.items() if v is not None}


class WebSocketHandshakeTests(unittest.TestCase):

    def check(self, options=None, **changes):
        return wsgihost.check_websocket_handshake(handshake_environ(**changes),
                                                  options or wsgihost.WebSocketOptions())

    def assertRefused(self, status, options=None, **changes):
        with self.assertRaises(HTTPError) as ctx:
            self.check(options, **changes)
        self.assertEqual(ctx.exception.status, status, ctx.exception.detail)
        return ctx.exception

    def test_valid_handshake(self):
        self.assertEqual(self.check(), ("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", None))
        self.assertEqual(self.check(HTTP_UPGRADE="WebSocket", HTTP_CONNECTION="upgrade")[1], None)

    def test_no_upgrade_is_426(self):
        error = self.assertRefused(426, HTTP_UPGRADE=None)
        self.assertIn(("Upgrade", "websocket"), error.fields)

    def test_wrong_version_is_426_naming_13(self):
        error = self.assertRefused(426, HTTP_SEC_WEBSOCKET_VERSION="8")
        # RFC 9110 §15.5.22: a 426 carries Upgrade (and "upgrade" in Connection, §7.8)
        self.assertEqual(error.fields, [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                                        ("Sec-WebSocket-Version", "13")])
        self.assertRefused(426, HTTP_SEC_WEBSOCKET_VERSION=None)

    def test_bad_requests_are_400(self):
        for changes in ({"REQUEST_METHOD": "POST"}, {"SERVER_PROTOCOL": "HTTP/1.0"},
                        {"HTTP_CONNECTION": "keep-alive"}, {"HTTP_CONNECTION": None},
                        {"HTTP_SEC_WEBSOCKET_KEY": None}, {"HTTP_SEC_WEBSOCKET_KEY": "c2hvcnQ="},
                        {"HTTP_SEC_WEBSOCKET_KEY": "not base64 at all!!!!!!!"},
                        {"CONTENT_LENGTH": "5"}, {"HTTP_TRANSFER_ENCODING": "chunked"}):
            with self.subTest(changes=changes):
                self.assertRefused(400, **changes)

    def test_allowed_origins(self):
        options = wsgihost.WebSocketOptions(allowed_origins=["https://*.example.com", "http://localhost:*"])
        self.check(options, HTTP_ORIGIN="https://app.example.com")
        self.check(options, HTTP_ORIGIN="http://localhost:8080")
        self.check(options)                                     # no Origin: not a browser
        self.assertRefused(403, options, HTTP_ORIGIN="https://evil.com")

    def test_subprotocol_is_the_clients_first_that_the_server_speaks(self):
        options = wsgihost.WebSocketOptions(protocols=["wamp.2.json", "chat"])
        self.assertEqual(self.check(options, HTTP_SEC_WEBSOCKET_PROTOCOL="x, chat, wamp.2.json")[1], "chat")
        self.assertEqual(self.check(options, HTTP_SEC_WEBSOCKET_PROTOCOL="x, y")[1], None)


def hx(text: str) -> bytes:
    return bytes.fromhex(text)


def inflate_all(codec, payload: bytes, limit: int = 1 << 20) -> bytes:
    return b"".join(codec.decompress(payload, limit, end=True))


TAKEOVER = wsgihost.DeflateParams(False, False, 15, 15, 8)
NO_TAKEOVER = wsgihost.DeflateParams(True, True, 15, 15, 8)


class PerMessageDeflateTests(unittest.TestCase):
    """The codec against RFC 7692 §7.2.3's examples, byte for byte, and the bomb."""

    def test_hello_in_one_compressed_block_7_2_3_1(self):
        codec = wsgihost.PerMessageDeflate(TAKEOVER)
        self.assertEqual(codec.compress(b"Hello"), hx("f2 48 cd c9 c9 07 00"))
        self.assertEqual(build_frame(Opcode.TEXT, hx("f2 48 cd c9 c9 07 00"), rsv1=True),
                         hx("c1 07 f2 48 cd c9 c9 07 00"))
        self.assertEqual(inflate_all(wsgihost.PerMessageDeflate(TAKEOVER), hx("f2 48 cd c9 c9 07 00")),
                         b"Hello")

    def test_hello_fragmented_7_2_3_1(self):
        first, payload1, _ = parse_frame(hx("41 03 f2 48 cd"), require_mask=False, compression=True)
        second, payload2, _ = parse_frame(hx("80 04 c9 c9 07 00"), require_mask=False, compression=True)
        self.assertEqual((first.rsv1, first.fin, second.rsv1, second.fin), (True, False, False, True))
        codec = wsgihost.PerMessageDeflate(TAKEOVER)
        data = b"".join(codec.decompress(payload1, 100))
        data += b"".join(codec.decompress(payload2, 100, end=True))
        self.assertEqual(data, b"Hello")

    def test_sharing_the_window_7_2_3_2(self):
        codec = wsgihost.PerMessageDeflate(TAKEOVER)
        self.assertEqual([codec.compress(b"Hello"), codec.compress(b"Hello")],
                         [hx("f2 48 cd c9 c9 07 00"), hx("f2 00 11 00 00")])
        inflater = wsgihost.PerMessageDeflate(TAKEOVER)
        self.assertEqual([inflate_all(inflater, hx("f2 48 cd c9 c9 07 00")),
                          inflate_all(inflater, hx("f2 00 11 00 00"))], [b"Hello", b"Hello"])
        # server_no_context_takeover: every message starts afresh (§7.1.1.1)
        codec = wsgihost.PerMessageDeflate(NO_TAKEOVER)
        self.assertEqual([codec.compress(b"Hello"), codec.compress(b"Hello")],
                         [hx("f2 48 cd c9 c9 07 00")] * 2)
        # client_no_context_takeover: the second message may not refer to the first
        inflater = wsgihost.PerMessageDeflate(NO_TAKEOVER)
        self.assertEqual(inflate_all(inflater, hx("f2 48 cd c9 c9 07 00")), b"Hello")
        with self.assertRaises(WebSocketError) as ctx:
            inflate_all(inflater, hx("f2 00 11 00 00"))
        self.assertEqual(ctx.exception.code, 1002)

    def test_block_with_no_compression_7_2_3_3(self):
        self.assertEqual(inflate_all(wsgihost.PerMessageDeflate(TAKEOVER), hx("00 05 00 fa ff 48 65 6c 6c 6f 00")),
                         b"Hello")

    def test_block_with_bfinal_7_2_3_4_and_the_next_message(self):
        codec = wsgihost.PerMessageDeflate(TAKEOVER)
        self.assertEqual(inflate_all(codec, hx("f3 48 cd c9 c9 07 00 00")), b"Hello")
        # the stream ended: the sender starts a new one for the next message
        self.assertEqual(inflate_all(codec, hx("f2 48 cd c9 c9 07 00")), b"Hello")

    def test_two_blocks_in_one_message_7_2_3_5(self):
        self.assertEqual(inflate_all(wsgihost.PerMessageDeflate(TAKEOVER),
                                     hx("f2 48 05 00 00 00 ff ff ca c9 c9 07 00")), b"Hello")

    def test_empty_message_7_2_3_6(self):
        codec = wsgihost.PerMessageDeflate(TAKEOVER)
        self.assertEqual(codec.compress(b""), hx("00"))
        self.assertEqual(inflate_all(codec, hx("00")), b"")
        self.assertEqual(inflate_all(codec, b""), b"")      # a flush with nothing in it

    def test_not_deflate_is_1002(self):
        with self.assertRaises(WebSocketError) as ctx:
            inflate_all(wsgihost.PerMessageDeflate(TAKEOVER), b"\xff\xff\xff\xff")
        self.assertEqual(ctx.exception.code, 1002)

    def test_the_limit_is_on_inflated_bytes(self):
        payload = wsgihost.PerMessageDeflate(TAKEOVER).compress(b"a" * 1000)
        self.assertEqual(inflate_all(wsgihost.PerMessageDeflate(TAKEOVER), payload, 1000), b"a" * 1000)
        with self.assertRaises(WebSocketError) as ctx:
            inflate_all(wsgihost.PerMessageDeflate(TAKEOVER), payload, 999)
        self.assertEqual(ctx.exception.code, 1009)

    def test_a_bomb_is_stopped_having_spent_about_the_limit(self):
        # 1 MiB on the wire that would inflate to 1 GiB, against a 16 MiB limit
        deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
        chunk = deflater.compress(b"\0" * (64 << 20)) + deflater.flush(zlib.Z_SYNC_FLUSH)
        bomb = chunk * 16                                       # sync-flushed pieces concatenate
        self.assertLess(len(bomb), 1100 * 1024)
        codec = wsgihost.PerMessageDeflate(TAKEOVER)
        limit = 16 << 20
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        out = 0
        with self.assertRaises(WebSocketError) as ctx:
            for data in codec.decompress(bomb, limit):
                out += len(data)
        peak = tracemalloc.get_traced_memory()[1]
        self.assertEqual(ctx.exception.code, 1009)
        self.assertEqual(out, limit)                            # every byte up to the limit, not one more
        self.assertLess(peak, limit // 4 + 2 * len(bomb))       # yielded in steps, never held whole


class NegotiationTests(unittest.TestCase):
    """permessage-deflate negotiation (RFC 7692 §5, §7.1), a pure function."""

    def answer(self, offer, **options):
        agreed = wsgihost.negotiate_permessage_deflate(offer, wsgihost.DeflateOptions(**options))
        return agreed and agreed[1]

    def test_a_browsers_offer(self):        # Chromium and Firefox send this
        params, answer = wsgihost.negotiate_permessage_deflate(
            "permessage-deflate; client_max_window_bits", wsgihost.DeflateOptions())
        self.assertEqual(answer, "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12")
        self.assertEqual(params, wsgihost.DeflateParams(False, False, 12, 12, 5))

    def test_each_parameter(self):
        for offer, answer in [
                ("permessage-deflate", "permessage-deflate; server_max_window_bits=12"),
                ("permessage-deflate; server_no_context_takeover",
                 "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"),
                ("permessage-deflate; client_no_context_takeover",
                 "permessage-deflate; client_no_context_takeover; server_max_window_bits=12"),
                ("permessage-deflate; server_max_window_bits=10", "permessage-deflate; server_max_window_bits=10"),
                ("permessage-deflate; server_max_window_bits=15", "permessage-deflate; server_max_window_bits=12"),
                ('permessage-deflate; server_max_window_bits="9"', "permessage-deflate; server_max_window_bits=9"),
                ("permessage-deflate; client_max_window_bits=10",
                 "permessage-deflate; server_max_window_bits=12; client_max_window_bits=10"),
                ("permessage-deflate; client_max_window_bits=15",
                 "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"),
                ("PerMessage-Deflate", None)]:
            with self.subTest(offer=offer):
                self.assertEqual(self.answer(offer), answer)

    def test_without_client_max_window_bits_the_clients_window_is_not_limited(self):
        params, answer = wsgihost.negotiate_permessage_deflate("permessage-deflate", wsgihost.DeflateOptions())
        self.assertEqual((params.client_max_window_bits, answer),       # §7.1.2.2: MUST NOT answer it
                         (15, "permessage-deflate; server_max_window_bits=12"))

    def test_invalid_offers_are_declined(self):
        for params in ["server_max_window_bits", "server_max_window_bits=7", "server_max_window_bits=16",
                       "server_max_window_bits=010", 'server_max_window_bits="1 0"', "client_max_window_bits=16",
                       "client_max_window_bits=0", "server_no_context_takeover=1",
                       'client_no_context_takeover=""', "mux", "x=1",
                       "client_max_window_bits; client_max_window_bits=10",             # named twice
                       "server_no_context_takeover; server_no_context_takeover",
                       "server_max_window_bits=8"]:                     # zlib cannot deflate with 256 bytes
            with self.subTest(params=params):
                self.assertIsNone(self.answer("permessage-deflate; " + params))

    def test_the_first_acceptable_offer_is_taken(self):
        self.assertEqual(self.answer("x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=8, "
                                     "permessage-deflate; server_max_window_bits=10, permessage-deflate"),
                         "permessage-deflate; server_max_window_bits=10")
        self.assertEqual(self.answer("permessage-deflate; client_no_context_takeover,permessage-deflate"),
                         "permessage-deflate; client_no_context_takeover; server_max_window_bits=12")
        self.assertIsNone(self.answer("x-webkit-deflate-frame"))
        self.assertIsNone(self.answer(None))
        self.assertIsNone(self.answer(""))
        self.assertEqual(self.answer(" , permessage-deflate ,"), "permessage-deflate; server_max_window_bits=12")

    def test_a_field_that_does_not_parse_is_400(self):
        for field in ["permessage-deflate;", "permessage-deflate; a=", "permessage-deflate a", ";",
                      'permessage-deflate; a="b', "permessage-deflate; a=b c", "permessage-deflate; =1"]:
            with self.subTest(field=field), self.assertRaises(HTTPError) as ctx:
                self.answer(field)
            self.assertEqual(ctx.exception.status, 400)
            self.assertIn("Sec-WebSocket-Extensions %r" % field, ctx.exception.detail)

    def test_parse_extension_offers(self):
        self.assertEqual(wsgihost.parse_extension_offers('a; b; c=1 ,d;e="x\\"y" , '),
                         [("a", [("b", None), ("c", "1")]), ("d", [("e", 'x"y')])])

    def test_the_paths_options(self):
        offer = "permessage-deflate; client_max_window_bits"
        both = "server_max_window_bits=12; client_max_window_bits=12"
        for options, answer in [
                ({"no_context_takeover": True}, "permessage-deflate; server_no_context_takeover; " + both),
                ({"request_no_context_takeover": True}, "permessage-deflate; client_no_context_takeover; " + both),
                ({"request_max_window_bits": 0}, "permessage-deflate; server_max_window_bits=12"),
                ({"request_max_window_bits": 9},
                 "permessage-deflate; server_max_window_bits=12; client_max_window_bits=9"),
                ({"max_window_bits": 15, "request_max_window_bits": 0}, "permessage-deflate"),
                ({"max_window_bits": 8}, "permessage-deflate; server_max_window_bits=9; client_max_window_bits=12")]:
            with self.subTest(options=options):
                self.assertEqual(self.answer(offer, **options), answer)
        params = wsgihost.negotiate_permessage_deflate(offer, wsgihost.DeflateOptions(memory_level=9))[0]
        self.assertEqual(params.memory_level, 9)


class WSClient:
    """A minimal RFC 6455 client for the tests, on the module's own frame functions."""

    compression = False         # RSV1 allowed on the server's frames (DeflateClient)

    def __init__(self, port, path="/ws", headers=(), timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = ["GET %s HTTP/1.1" % path, "Host: 127.0.0.1:%d" % port, "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Key: " + key, "Sec-WebSocket-Version: 13"]
        lines += ["%s: %s" % h for h in headers]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buffer = bytearray()
        while b"\r\n\r\n" not in self.buffer:
            data = self.sock.recv(4096)
            if not data:
                break
            self.buffer += data
        end = self.buffer.find(b"\r\n\r\n") + 4
        self.head = bytes(self.buffer[:end]).decode("latin-1")
        del self.buffer[:end]
        self.status = int(self.head.split(" ")[1])
        if self.status == 101:
            assert ("Sec-WebSocket-Accept: %s\r\n" % wsgihost.websocket_accept(key)) in self.head, self.head

    def send(self, opcode, payload=b"", fin=True, mask=True):
        self.sock.sendall(build_frame(opcode, payload, fin, os.urandom(4) if mask else None))

    def send_text(self, text):
        self.send(Opcode.TEXT, text.encode())

    def _fill(self, n):
        while len(self.buffer) < n:
            data = self.sock.recv(max(65536, n - len(self.buffer)))
            if not data:
                raise EOFError("connection closed")
            self.buffer += data

    def recv_frame(self):
        self._fill(2)
        size = wsgihost.frame_header_size(self.buffer[:2])
        self._fill(size)
        header = wsgihost.parse_frame_header(bytes(self.buffer[:size]), require_mask=False,
                                             compression=self.compression)
        self.rsv1 = header.rsv1
        self._fill(size + header.payload_len)
        payload = bytes(self.buffer[size:size + header.payload_len])
        del self.buffer[:size + header.payload_len]
        return header.opcode, payload

    def recv_text(self):
        opcode, payload = self.recv_frame()
        assert opcode == Opcode.TEXT, (opcode, payload)
        return payload.decode()

    def expect_close(self):
        """Read until the server's Close; return its code (None if empty), check TCP then closes."""
        while True:
            opcode, payload = self.recv_frame()
            if opcode == Opcode.CLOSE:
                code = int.from_bytes(payload[:2], "big") if payload else None
                break
        try:
            self.send(Opcode.CLOSE, payload)        # complete the handshake if still open
        except OSError:
            pass
        self.sock.settimeout(5)
        try:
            rest = self.sock.recv(4096)
        except ConnectionResetError:
            rest = b""
        assert rest == b"", rest
        return code

    def close(self):
        self.sock.close()


class DeflateClient(WSClient):
    """A WSClient that offers permessage-deflate, and compresses and inflates
    with zlib itself (not with the module's codec, which it tests)."""

    compression = True

    def __init__(self, port, path="/z", offer="permessage-deflate; client_max_window_bits", headers=(), **kw):
        super().__init__(port, path, headers=list(headers) + [("Sec-WebSocket-Extensions", offer)], **kw)
        fields = [line.split(":", 1)[1].strip() for line in self.head.split("\r\n")
                  if line.lower().startswith("sec-websocket-extensions:")]
        self.agreed = fields[0] if fields else None
        self.deflater = zlib.compressobj(6, zlib.DEFLATED, -9)     # within any window agreed
        self.inflater = zlib.decompressobj(-15)

    def compress(self, data: bytes) -> bytes:
        out = self.deflater.compress(data) + self.deflater.flush(zlib.Z_SYNC_FLUSH)
        assert out.endswith(b"\x00\x00\xff\xff")
        return out[:-4]

    def send_compressed(self, opcode, data: bytes):
        self.sock.sendall(build_frame(opcode, self.compress(data), mask=os.urandom(4), rsv1=True))

    def recv_message(self):
        """(opcode, payload inflated, whether it was compressed) of an unfragmented message."""
        opcode, payload = self.recv_frame()
        compressed = self.rsv1
        if compressed:
            if "server_no_context_takeover" in self.agreed:
                self.inflater = zlib.decompressobj(-15)
            payload = self.inflater.decompress(payload + b"\x00\x00\xff\xff")
        return opcode, payload, compressed


def upper_handler(ws):
    """A handler for the tests: answers each message in upper case, with the client count."""
    ws.send("hello %s, %d here" % (ws.environ["REMOTE_ADDR"], len(ws.channel)))
    for message in ws:                  # after close() this goes on until the client's Close
        if message == "bye":
            ws.close(4000, "asked to")
        else:
            ws.send(message.upper() if isinstance(message, str) else message[::-1])


def raising_handler(ws):
    message = ws.receive()
    if message == "exit":
        raise SystemExit(1)
    raise RuntimeError("handler failed")


def broadcasting_app(environ, start_response):
    """A WSGI app that broadcasts its query string to the clients of /ws."""
    count = environ["wsgihost.channels"]["/ws"].broadcast(environ["QUERY_STRING"])
    start_response("200 OK", TEXT)
    return [str(count).encode()]


WS_CONFIG = {"workers": [{"type": "router", "transports": [{
    "type": "web", "endpoint": {"type": "tcp", "port": 0, "interface": "127.0.0.1"},
    "options": {"client_timeout": 5},
    "paths": {
        "/": {"type": "wsgi", "module": "test_wsgihost", "object": "broadcasting_app"},
        "ws": {"type": "websocket"},
        "upper": {"type": "websocket", "module": "test_wsgihost", "object": "upper_handler"},
        "boom": {"type": "websocket", "module": "test_wsgihost", "object": "raising_handler"},
        "small": {"type": "websocket", "options": {"max_message_size": 1000, "max_send_queue": 65536,
                                                   "auto_ping_interval": 0}},
        "ping": {"type": "websocket", "options": {"auto_ping_interval": 200, "auto_ping_timeout": 200}},
        "quiet": {"type": "websocket", "options": {"auto_ping_interval": 0}},
        "chat": {"type": "websocket", "options": {"protocols": ["chat"],
                                                  "allowed_origins": ["http://good.example"]}},
    }}]}]}


class WebSocketSocketTests(unittest.TestCase):

    def setUp(self):
        self.node = wsgihost.Node(WS_CONFIG).start()
        self.addCleanup(self.node.stop, 2)
        self.port = self.node.transports[0].port
        self.channels = self.node.transports[0].channels

    def client(self, path="/ws", **kw):
        client = WSClient(self.port, path, **kw)
        self.addCleanup(client.close)
        return client

    def wait_for(self, condition, timeout=5):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                self.fail("timed out")
            time.sleep(0.01)

    def test_echo_on_the_broadcast_path(self):
        c = self.client()
        self.assertEqual(c.status, 101)
        c.send_text("hello")
        self.assertEqual(c.recv_text(), "hello")
        c.send(Opcode.BINARY, b"\x00\xff")
        self.assertEqual(c.recv_frame(), (Opcode.BINARY, b"\x00\xff"))

    def test_fragmented_message_with_a_ping_between(self):
        c = self.client()
        c.send(Opcode.TEXT, "h\u00e9".encode()[:2], fin=False)       # splits the é
        c.send(Opcode.PING, b"p")
        c.send(Opcode.CONTINUATION, "h\u00e9".encode()[2:] + b"!", fin=True)
        self.assertEqual(c.recv_frame(), (Opcode.PONG, b"p"))
        self.assertEqual(c.recv_text(), "h\u00e9!")

    def test_ping_answered_with_the_same_payload(self):
        c = self.client()
        c.send(Opcode.PING, b"x" * 125)
        self.assertEqual(c.recv_frame(), (Opcode.PONG, b"x" * 125))

    def test_a_16_mib_message(self):
        c = self.client()
        payload = os.urandom(16 * 1024 * 1024)
        c.send(Opcode.BINARY, payload)
        self.assertEqual(c.recv_frame(), (Opcode.BINARY, payload))

    def test_broadcast_100_clients_100_messages_nothing_lost_order_kept(self):
        # No pings: on a busy machine this takes over auto_ping_interval, and
        # a ping among the 10,000 texts is not what this test is about.
        clients = [self.client("/quiet") for _ in range(100)]
        self.wait_for(lambda: len(self.channels["/quiet"]) == 100)
        received = [[] for _ in clients]

        def read(i):
            c = clients[i]
            c.sock.settimeout(60)
            for _ in range(100 * 100):
                received[i].append(c.recv_text())

        def write(i):
            for n in range(100):
                clients[i].send_text("%d:%d" % (i, n))
        readers = [threading.Thread(target=read, args=(i,)) for i in range(100)]
        writers = [threading.Thread(target=write, args=(i,)) for i in range(100)]
        for t in readers + writers:
            t.start()
        for t in readers + writers:
            t.join(120)
        for messages in received:
            self.assertEqual(len(messages), 10000)
            self.assertEqual(messages, received[0])             # one order for everyone
        for sender in range(100):                               # each sender's order kept
            self.assertEqual([m for m in received[0] if m.startswith("%d:" % sender)],
                             ["%d:%d" % (sender, n) for n in range(100)])

    def test_wsgi_app_broadcasts_to_websocket_clients(self):
        a, b = self.client(), self.client()
        self.wait_for(lambda: len(self.channels["/ws"]) == 2)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        conn.request("GET", "/?news")
        self.assertEqual(conn.getresponse().read(), b"2")
        conn.close()
        self.assertEqual((a.recv_text(), b.recv_text()), ("news", "news"))

    def test_close_handshake_echoes_the_code_and_server_closes_tcp(self):
        c = self.client()
        c.send(Opcode.CLOSE, b"\x0f\xa0bye")                   # 4000
        self.assertEqual(c.expect_close(), 4000)
        self.wait_for(lambda: len(self.channels["/ws"]) == 0)

    def test_empty_close_answered_with_an_empty_close(self):
        c = self.client()
        c.send(Opcode.CLOSE, b"")
        self.assertIsNone(c.expect_close())

    def test_protocol_errors_close_with_their_codes(self):
        for frames, code in [
                ([build_frame(Opcode.TEXT, b"x")], 1002),                               # unmasked
                ([build_frame(Opcode.TEXT, b"\xff", mask=b"abcd")], 1007),              # not UTF-8
                ([build_frame(Opcode.CONTINUATION, b"x", mask=b"abcd")], 1002),        # nothing to continue
                ([build_frame(Opcode.TEXT, b"x", fin=False, mask=b"abcd"),
                  build_frame(Opcode.TEXT, b"y", mask=b"abcd")], 1002),                 # interleaved message
                ([build_frame(Opcode.CLOSE, b"\x03\xed", mask=b"abcd")], 1002),         # close code 1005
                ([bytes([0x85, 0x80]) + b"abcd"], 1002)]:                               # reserved opcode
            with self.subTest(code=code, frames=frames):
                c = self.client()
                start = time.monotonic()
                c.sock.sendall(b"".join(frames))
                self.assertEqual(c.expect_close(), code)
                # the server closes TCP at once (§7.1.1), not after close_handshake_timeout (1 s)
                self.assertLess(time.monotonic() - start, 0.9)

    def test_message_over_max_message_size_is_1009(self):
        c = self.client("/small")
        c.send(Opcode.TEXT, b"x" * 1000)
        self.assertEqual(c.recv_text(), "x" * 1000)
        c.send(Opcode.TEXT, b"x" * 600, fin=False)
        c.send(Opcode.CONTINUATION, b"x" * 401)                 # 1001 bytes in all
        self.assertEqual(c.expect_close(), 1009)

    def test_handler_api(self):
        c = self.client("/upper")
        self.assertEqual(c.recv_text(), "hello 127.0.0.1, 1 here")
        c.send_text("abc")
        self.assertEqual(c.recv_text(), "ABC")
        c.send(Opcode.BINARY, b"abc")
        self.assertEqual(c.recv_frame(), (Opcode.BINARY, b"cba"))
        c.send_text("bye")
        self.assertEqual(c.expect_close(), 4000)

    def test_handler_that_raises_closes_with_1011_and_the_server_goes_on(self):
        c = self.client("/boom")
        with self.assertLogs("wsgihost", "ERROR") as logs:
            c.send_text("go")
            self.assertEqual(c.expect_close(), 1011)
        self.assertIn("RuntimeError: handler failed", "\n".join(logs.output))
        d = self.client()
        d.send_text("still here")
        self.assertEqual(d.recv_text(), "still here")

    def test_handler_calling_sys_exit_closes_with_1011_too(self):
        c = self.client("/boom")
        with self.assertLogs("wsgihost", "ERROR") as logs:
            c.send_text("exit")
            self.assertEqual(c.expect_close(), 1011)
        self.assertIn("SystemExit", "\n".join(logs.output))

    def test_handshake_errors_over_the_wire(self):
        self.assertEqual(self.client(headers=[("Origin", "http://evil.example")], path="/chat").status, 403)
        good = self.client("/chat", headers=[("Origin", "http://good.example"),
                                             ("Sec-WebSocket-Protocol", "other, chat")])
        self.assertEqual(good.status, 101)
        self.assertIn("Sec-WebSocket-Protocol: chat\r\n", good.head)
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.addCleanup(sock.close)
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n")
        self.assertTrue(sock.recv(4096).startswith(b"HTTP/1.1 400 "))

    def test_slow_client_is_dropped_and_never_blocks_the_sender(self):
        slow = WSClient(self.port, "/small")
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.addCleanup(slow.close)
        channel = self.channels["/small"]
        self.wait_for(lambda: len(channel) == 1)
        start = time.monotonic()
        message = "x" * 1000
        for _ in range(20000):                                  # 20 MB, never read
            channel.broadcast(message)
        self.assertLess(time.monotonic() - start, 10)           # broadcast never waited long
        self.wait_for(lambda: len(channel) == 0, timeout=10)

    def test_auto_ping_and_a_client_that_does_not_answer_is_dropped(self):
        c = self.client("/ping")
        opcode, payload = c.recv_frame()
        self.assertEqual((opcode, len(payload)), (Opcode.PING, 4))
        c.send(Opcode.PONG, payload)
        self.assertEqual(c.recv_frame()[0], Opcode.PING)         # pinged again; this time no answer
        c.sock.settimeout(5)
        with self.assertRaises((EOFError, ConnectionResetError)):
            while True:
                c.recv_frame()

    def test_control_frame_between_fragments_does_not_count_toward_the_message(self):
        c = self.client("/small")                               # max_message_size 1000
        c.send(Opcode.TEXT, b"x" * 990, fin=False)
        c.send(Opcode.PING, b"p" * 20)
        c.send(Opcode.CONTINUATION, b"y" * 10)
        self.assertEqual(c.recv_frame(), (Opcode.PONG, b"p" * 20))
        self.assertEqual(c.recv_text(), "x" * 990 + "y" * 10)

    def test_messages_after_the_servers_close_are_discarded_cleanly(self):
        c = self.client("/upper")
        c.recv_text()
        c.send_text("bye")                                      # the handler closes with 4000
        c.send_text("one")
        c.send_text("two")
        c.send(Opcode.CLOSE, b"\x0f\xa0")
        self.assertEqual(c.expect_close(), 4000)

    def test_a_large_message_then_return_is_sent_whole_before_the_close(self):
        c = self.client("/upper")
        c.recv_text()
        c.send(Opcode.BINARY, b"z" * (8 * 1024 * 1024))         # echoed reversed, 8 MiB
        c.send_text("bye")
        self.assertEqual(c.recv_frame(), (Opcode.BINARY, b"z" * (8 * 1024 * 1024)))
        self.assertEqual(c.expect_close(), 4000)

    def test_close_from_another_thread_cuts_a_silent_client_after_the_timeout(self):
        c = self.client()
        self.wait_for(lambda: len(self.channels["/ws"]) == 1)
        start = time.monotonic()
        self.channels["/ws"].close_all(1001)
        self.assertEqual(c.recv_frame()[0], Opcode.CLOSE)       # ... and never answer it
        c.sock.settimeout(10)
        with self.assertRaises((EOFError, ConnectionResetError)):
            c.recv_frame()
        self.assertLess(time.monotonic() - start, 3)            # close_handshake_timeout is 1 s

    def test_a_huge_frame_while_closing_is_not_buffered(self):
        c = self.client("/small")
        self.wait_for(lambda: len(self.channels["/small"]) == 1)
        self.channels["/small"].close_all(1000)
        self.assertEqual(c.recv_frame()[0], Opcode.CLOSE)
        c.sock.sendall(b"\x82\xff" + (2 ** 40).to_bytes(8, "big") + b"abcd" + b"x" * 65536)
        c.sock.settimeout(10)
        with self.assertRaises((EOFError, ConnectionResetError, BrokenPipeError)):
            while True:
                c.recv_frame()
        self.wait_for(lambda: not self.node.transports[0].connections)

    def test_close_with_a_code_that_may_not_be_sent_raises(self):
        ws = wsgihost.WebSocket(None, None, {}, wsgihost.Channel("/x"), wsgihost.WebSocketOptions())
        for code in (1005, 1006, 1015, 999, 70000):
            with self.subTest(code=code), self.assertRaises(ValueError):
                ws.close(code)

    def test_stop_closes_websockets_with_1001(self):
        c = self.client()
        self.wait_for(lambda: len(self.channels["/ws"]) == 1)
        threading.Thread(target=self.node.stop, args=(5,)).start()
        self.assertEqual(c.expect_close(), 1001)

DEFLATE_CONFIG = {"workers": [{"type": "router", "transports": [{
    "type": "web", "endpoint": {"type": "tcp", "port": 0, "interface": "127.0.0.1"},
    "options": {"client_timeout": 5},
    "paths": {
        "z": {"type": "websocket", "options": {"compression": {"deflate": {}}, "auto_ping_interval": 0}},
        "zsmall": {"type": "websocket", "options": {"compression": {"deflate": {}}, "max_message_size": 1000,
                                                    "auto_ping_interval": 0}},
        "plain": {"type": "websocket", "options": {"auto_ping_interval": 0}},
    }}]}]}


class WebSocketNodeCase(unittest.TestCase):
    """A node serving DEFLATE_CONFIG, and helpers; its subclasses have the tests."""

    def setUp(self):
        self.node = wsgihost.Node(DEFLATE_CONFIG).start()
        self.addCleanup(self.node.stop, 2)
        self.port = self.node.transports[0].port
        self.channels = self.node.transports[0].channels

    def client(self, path="/z", cls=DeflateClient, **kw):
        client = cls(self.port, path, **kw)
        self.addCleanup(client.close)
        return client

    def wait_for(self, condition, timeout=10):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                self.fail("timed out")
            time.sleep(0.01)


class WebSocketCompressionTests(WebSocketNodeCase):
    """permessage-deflate over the wire: RSV1, both directions, limits, broadcasts."""

    def test_agreed_and_echoed_compressed_both_ways(self):
        c = self.client()
        self.assertEqual((c.status, c.agreed),
                         (101, "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"))
        c.send_compressed(Opcode.TEXT, "h\u00e9llo".encode())
        self.assertEqual(c.recv_message(), (Opcode.TEXT, "h\u00e9llo".encode(), True))
        blob = os.urandom(50000) + b"abc" * 30000
        c.send_compressed(Opcode.BINARY, blob)
        self.assertEqual(c.recv_message(), (Opcode.BINARY, blob, True))
        c.send_text("sent uncompressed")                        # RSV1 clear: allowed (§6)
        self.assertEqual(c.recv_message(), (Opcode.TEXT, b"sent uncompressed", True))
        c.send_compressed(Opcode.TEXT, b"")
        self.assertEqual(c.recv_message(), (Opcode.TEXT, b"", True))

    def test_compressed_fragmented_message_with_a_ping_between(self):
        c = self.client()
        text = ("\u00e9\u4e2d\U0001f600 " * 2000).encode()         # 2-, 3- and 4-byte characters
        payload = c.compress(text)
        cuts = [0, 5, len(payload) // 2, len(payload) - 1, len(payload)]   # characters split anyhow
        for i, (start, end) in enumerate(zip(cuts, cuts[1:])):
            fin = end == len(payload)
            c.sock.sendall(build_frame(Opcode.TEXT if i == 0 else Opcode.CONTINUATION, payload[start:end],
                                       fin, os.urandom(4), rsv1=i == 0))
            if i == 1:
                c.send(Opcode.PING, b"p")
        self.assertEqual(c.recv_frame(), (Opcode.PONG, b"p"))
        self.assertEqual(c.recv_message(), (Opcode.TEXT, text, True))

    def test_text_not_utf8_once_inflated_is_1007_at_once(self):
        c = self.client()
        c.send_compressed(Opcode.TEXT, b"ok \xff")
        self.assertEqual(c.expect_close(), 1007)
        c = self.client()                                       # fails fast: before the message ends
        c.sock.sendall(build_frame(Opcode.TEXT, c.compress(b"x" * 1000 + b"\xc0\xaf"), False, os.urandom(4),
                                   rsv1=True))
        self.assertEqual(c.expect_close(), 1007)

    def test_reserved_bits_over_the_wire(self):
        for path, frames in [
                ("/z", [build_frame(Opcode.TEXT, b"\x00", False, b"abcd", rsv1=True),
                        build_frame(Opcode.CONTINUATION, b"\x00", True, b"abcd", rsv1=True)]),
                ("/z", [build_frame(Opcode.PING, b"", mask=b"abcd", rsv1=True)]),
                ("/z", [bytes([0xa1, 0x80]) + b"abcd"]),                          # RSV2
                ("/plain", [build_frame(Opcode.TEXT, b"\x00", mask=b"abcd", rsv1=True)])]:  # not agreed
            with self.subTest(path=path, frames=frames):
                c = self.client(path)
                self.assertEqual(c.agreed is None, path == "/plain")
                c.sock.sendall(b"".join(frames))
                self.assertEqual(c.expect_close(), 1002)

    def test_small_frame_inflating_past_max_message_size_is_1009(self):
        c = self.client("/zsmall")                              # max_message_size 1000
        c.send_compressed(Opcode.BINARY, b"a" * 1000)
        self.assertEqual(c.recv_message(), (Opcode.BINARY, b"a" * 1000, True))
        bomb = c.compress(b"a" * 1000000)
        self.assertLess(len(bomb), 1100)
        c.sock.sendall(build_frame(Opcode.BINARY, bomb, mask=os.urandom(4), rsv1=True))
        self.assertEqual(c.expect_close(), 1009)

    def test_data_that_is_not_deflate_is_1002(self):
        c = self.client()
        c.sock.sendall(build_frame(Opcode.BINARY, b"\xff\xff\xff", mask=os.urandom(4), rsv1=True))
        self.assertEqual(c.expect_close(), 1002)

    def test_broadcast_to_compressed_and_uncompressed_clients(self):
        plain = self.client(cls=WSClient)
        takeover = self.client()
        fresh = [self.client(offer="permessage-deflate; server_no_context_takeover; client_max_window_bits")
                 for _ in range(2)]
        self.assertIn("server_no_context_takeover", fresh[0].agreed)
        self.assertNotIn("server_no_context_takeover", takeover.agreed)
        self.wait_for(lambda: len(self.channels["/z"]) == 4)
        message = "the same news, again and again. " * 40
        with mock.patch.object(wsgihost.PerMessageDeflate, "compress", autospec=True,
                               side_effect=wsgihost.PerMessageDeflate.compress) as compress:
            for _ in range(2):
                self.assertEqual(self.channels["/z"].broadcast(message), 4)
            raw = {}
            for name, c in [("plain", plain), ("takeover", takeover), ("fresh0", fresh[0]), ("fresh1", fresh[1])]:
                raw[name] = [c.recv_frame() + (c.rsv1,) for _ in range(2)]
        self.assertEqual(raw["plain"], [(Opcode.TEXT, message.encode(), False)] * 2)
        inflater = zlib.decompressobj(-15)                      # one history: takeover
        self.assertEqual([inflater.decompress(p + b"\x00\x00\xff\xff") for _, p, _ in raw["takeover"]],
                         [message.encode()] * 2)
        self.assertLess(len(raw["takeover"][1][1]), len(raw["takeover"][0][1]))    # refers to the first
        self.assertEqual(raw["fresh0"], raw["fresh1"])          # the same bytes for both ...
        self.assertEqual(raw["fresh0"][0], raw["fresh0"][1])    # ... and for each message
        self.assertEqual(zlib.decompressobj(-15).decompress(raw["fresh0"][0][1] + b"\x00\x00\xff\xff"),
                         message.encode())
        # compressed once per broadcast for both "fresh" clients, once for "takeover"
        self.assertEqual(compress.call_count, 4)

    def test_a_path_without_compression_declines_the_offer(self):
        c = self.client("/plain")
        self.assertIsNone(c.agreed)
        c.send_text("hi")
        self.assertEqual(c.recv_message(), (Opcode.TEXT, b"hi", False))
        self.assertEqual(self.channels["/plain"].clients[0].deflate, None)

    def test_a_malformed_extensions_field_is_400_where_compression_is_on(self):
        bad = [("Sec-WebSocket-Extensions", "permessage-deflate;")]
        self.assertEqual(self.client("/z", cls=WSClient, headers=bad).status, 400)
        self.assertEqual(self.client("/plain", cls=WSClient, headers=bad).status, 101)    # not read there

    def test_the_websocket_knows_what_was_agreed(self):
        self.client(offer="permessage-deflate; client_no_context_takeover; server_max_window_bits=10")
        self.wait_for(lambda: len(self.channels["/z"]) == 1)
        self.assertEqual(self.channels["/z"].clients[0].deflate, wsgihost.DeflateParams(False, True, 10, 15, 5))


class WebSocketFragmentTests(WebSocketNodeCase):
    """Issue 9: a message costs the same memory however it is framed, and its
    fragments are bounded in number, empty ones included."""

    def test_fragments_per_message_bounded_at_n_and_n_plus_1(self):
        with mock.patch.object(wsgihost, "MAX_MESSAGE_FRAGMENTS", 100):
            for path in ("/plain", "/z"):
                with self.subTest(path=path):
                    c = self.client(path)
                    frames = [build_frame(Opcode.TEXT, b"a", False, b"abcd")]
                    frames += [build_frame(Opcode.CONTINUATION, b"a", False, b"abcd")] * 98
                    c.sock.sendall(b"".join(frames + [build_frame(Opcode.CONTINUATION, b"a", True, b"abcd")]))
                    self.assertEqual(c.recv_message()[:2], (Opcode.TEXT, b"a" * 100))
                    c.sock.sendall(b"".join(frames + [build_frame(Opcode.CONTINUATION, b"a", False, b"abcd"),
                                                      build_frame(Opcode.CONTINUATION, b"a", True, b"abcd")]))
                    self.assertEqual(c.expect_close(), 1009)

    def test_a_flood_of_empty_fragments_is_closed_with_1009(self):
        c = self.client("/plain")
        mask = b"abcd"
        c.sock.settimeout(60)
        c.sock.sendall(b"\x02\x80" + mask + (b"\x00\x80" + mask) * wsgihost.MAX_MESSAGE_FRAGMENTS)
        self.assertEqual(c.expect_close(), 1009)

    def test_a_message_in_tiny_fragments_costs_no_memory_per_fragment(self):
        c = self.client("/plain")
        count, piece = 16384, 2                                 # a 32 KiB message
        mask = b"\x00\x00\x00\x00"                              # masked with zeros: the bytes as they are
        data = os.urandom(count * piece)
        middle = range(piece, len(data) - piece, piece)
        frames = b"".join([b"\x02\x82" + mask + data[:piece]] +
                          [b"\x00\x82" + mask + data[i:i + piece] for i in middle] +
                          [b"\x80\x82" + mask + data[-piece:]])
        c.sock.settimeout(60)
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        c.sock.sendall(frames)
        self.assertEqual(c.recv_message(), (Opcode.BINARY, data, False))
        peak = tracemalloc.get_traced_memory()[1]
        # The message and its few copies take ~0.3 MiB at the peak, both ends
        # of the connection counted; 16,384 pieces kept apart would add 1.7.
        self.assertLess(peak, 1 << 20)


# -----------------------------------------------------------------------------
# 10. The real server, over sockets
# -----------------------------------------------------------------------------

def start_node(app, **options):
    transport = wsgihost.app_transport(app, "127.0.0.1", 0, **options)
    node = wsgihost.Node(transports=[transport]).start()
    return node, transport.port


class SocketTests(unittest.TestCase):

    def setUp(self):
        self.node, self.port = start_node(validator(hello_app), client_timeout=2)
        self.addCleanup(self.node.stop, 1)

    def connect(self):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.addCleanup(sock.close)
        return sock

    def test_http_client_keep_alive(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        self.addCleanup(conn.close)
        for _ in range(3):
            conn.request("GET", "/")
            resp = conn.getresponse()
            self.assertEqual((resp.status, resp.read()), (200, b"Hello, World!"))
        self.assertEqual(len(self.node.transports[0].connections), 1)

    def test_burst_of_256_simultaneous_connections(self):
        socks = [self.connect() for _ in range(256)]
        for sock in socks:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        deadline = time.monotonic() + 10
        for sock in socks:
            resp = split_responses(recv_until_closed(sock))
            self.assertEqual([(r.status, r.body) for r in resp], [(200, b"Hello, World!")])
        self.assertLess(time.monotonic(), deadline)

    def test_partial_head_times_out_with_408(self):
        self.node.stop(0)
        self.node, self.port = start_node(hello_app, client_timeout=0.3)
        sock = self.connect()
        sock.sendall(b"GET / HTTP/1.1\r\nHost:")
        self.assertTrue(sock.recv(4096).startswith(b"HTTP/1.1 408 "))

    def test_slow_head_cut_at_the_deadline(self):
        self.node.stop(0)
        self.node, self.port = start_node(hello_app, client_timeout=0.5)
        sock = self.connect()
        start = time.monotonic()
        data = b""
        for byte in b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 100:   # one byte per 0.05 s
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.05)
            sock.setblocking(False)
            try:
                data += sock.recv(4096)
            except BlockingIOError:
                pass
            sock.setblocking(True)
            if data:
                break
        self.assertTrue(data.startswith(b"HTTP/1.1 408 "), data)
        self.assertLess(time.monotonic() - start, 1.5)

    def test_idle_connection_closed_silently(self):
        self.node.stop(0)
        self.node, self.port = start_node(hello_app, client_timeout=0.3)
        sock = self.connect()
        self.assertEqual(sock.recv(4096), b"")

    def test_file_wrapper_sent_with_sendfile(self):
        self.node.stop(0)
        with tempfile.NamedTemporaryFile(delete=False) as f:
            f.write(b"0123456789" * 100000)
        self.addCleanup(os.unlink, f.name)

        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "application/octet-stream")])
            fh = open(f.name, "rb")
            fh.seek(10)
            return environ["wsgi.file_wrapper"](fh)
        self.node, self.port = start_node(app)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        self.addCleanup(conn.close)
        conn.request("GET", "/")
        resp = conn.getresponse()
        self.assertEqual(resp.getheader("Content-Length"), str(1000000 - 10))
        self.assertEqual(resp.read(), (b"0123456789" * 100000)[10:])

    def test_maxthreads_bounds_calls_into_the_app(self):
        self.node.stop(0)
        state = {"now": 0, "max": 0}
        lock = threading.Lock()

        def app(environ, start_response):
            with lock:
                state["now"] += 1
                state["max"] = max(state["max"], state["now"])
            time.sleep(0.05)
            with lock:
                state["now"] -= 1
            start_response("200 OK", TEXT)
            return [b"ok"]
        service = wsgihost.WSGIService(app, "test:app", maxthreads=2)
        transport = wsgihost.WebTransport(wsgihost.PathNode(default=service), "127.0.0.1", 0)
        self.node = wsgihost.Node(transports=[transport]).start()
        results = []

        def fetch():
            conn = http.client.HTTPConnection("127.0.0.1", transport.port, timeout=10)
            conn.request("GET", "/")
            results.append(conn.getresponse().read())
            conn.close()
        threads = [threading.Thread(target=fetch) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(results, [b"ok"] * 8)
        self.assertEqual(state["max"], 2)

    def test_graceful_stop_lets_a_request_in_flight_finish(self):
        self.node.stop(0)
        started = threading.Event()

        def app(environ, start_response):
            started.set()
            time.sleep(0.5)
            start_response("200 OK", TEXT)
            return [b"finished"]
        self.node, self.port = start_node(app)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        self.addCleanup(conn.close)
        conn.request("GET", "/")
        started.wait(5)
        stopper = threading.Thread(target=self.node.stop, args=(5,))
        stopper.start()
        resp = conn.getresponse()
        self.assertEqual((resp.status, resp.read(), resp.getheader("Connection")), (200, b"finished", "close"))
        stopper.join()
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", self.port), timeout=1)



# -----------------------------------------------------------------------------
# Hardening (SPEC §4): smuggling patterns, limits, slow clients, faults, fuzzing, load
# -----------------------------------------------------------------------------

class SmugglingTests(unittest.TestCase):
    """Each request-smuggling pattern is refused with its status and Connection: close,
    and nothing after it on the connection is served."""

    def assertRefused(self, request: bytes, status: int = 400):
        served = []

        def app(environ, start_response):
            served.append(environ["PATH_INFO"])
            environ["wsgi.input"].read()
            start_response("200 OK", [])
            return [b"served"]
        data = run_raw(app, request + b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", validate=False)
        responses = split_responses(data)
        self.assertEqual([r.status for r in responses][-1:], [status], data)
        self.assertEqual(responses[-1].headers.get("connection"), "close")
        self.assertNotIn("/smuggled", served)

    def test_cl_te(self):
        self.assertRefused(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nG")

    def test_te_cl(self):
        self.assertRefused(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                           b"Content-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n")

    def test_te_te_obfuscated(self):
        for value in (b"xchunked", b"chunked, identity", b"chunked\x0b", b" chunked, x",
                      b"chunk", b"CHUNKED, chunked"):
            with self.subTest(value=value):
                self.assertRefused(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: " + value
                                   + b"\r\n\r\n0\r\n\r\n")

    def test_transfer_encoding_with_space_before_colon(self):
        self.assertRefused(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n"
                           b"Content-Length: 4\r\n\r\n0\r\n\r\n")

    def test_transfer_encoding_folded(self):
        self.assertRefused(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n")

    def test_differing_content_lengths(self):
        self.assertRefused(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc")

    def test_content_length_list(self):
        self.assertRefused(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc")

    def test_content_length_overflow(self):
        self.assertRefused(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n")

    def test_chunk_size_overflow(self):
        self.assertRefused(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"10000000000000000\r\n")

    def test_chunk_size_with_sign_or_prefix(self):
        for size in (b"+5", b"-5", b"0x5", b" 5", b"5 5"):
            with self.subTest(size=size):
                self.assertRefused(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   + size + b"\r\nhello\r\n0\r\n\r\n")

    def test_chunk_extension_over_the_line_limit(self):
        ext = b";x=" + b"a" * wsgihost.MAX_CHUNK_LINE
        self.assertRefused(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5"
                           + ext + b"\r\nhello\r\n0\r\n\r\n")

    def test_chunk_with_bare_lf(self):
        self.assertRefused(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"5\nhello\r\n0\r\n\r\n")

    def test_trailer_section_over_the_limit(self):
        trailers = b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 100) for i in range(100))   # ~11 KB > 8 KiB
        self.assertRefused(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"0\r\n" + trailers + b"\r\n", 431)

    def test_invalid_trailer_field(self):
        self.assertRefused(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"0\r\nBad Trailer: x\r\n\r\n")

    def test_framing_and_routing_fields_in_a_trailer(self):
        for field in (b"Content-Length: 99", b"Host: evil.example", b"Transfer-Encoding: chunked"):
            with self.subTest(field=field):
                self.assertRefused(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   b"5\r\nhello\r\n0\r\n" + field + b"\r\n\r\n")

    def test_bare_cr_in_a_header(self):
        self.assertRefused(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rTransfer-Encoding: chunked\r\n\r\n")

    def test_nul_in_the_request_line(self):
        self.assertRefused(b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n")

    def test_host_missing_or_twice(self):
        self.assertRefused(b"GET / HTTP/1.1\r\n\r\n")
        self.assertRefused(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")

    def test_unsupported_version_505(self):
        self.assertRefused(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505)

    def test_http_0_9_request_line(self):
        self.assertRefused(b"GET /\r\n\r\n")

    def test_header_name_with_underscore_cannot_pose_as_another(self):
        env = get_environ(b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded_For: evil\r\n"
                          b"Content_Length: 5\r\n\r\n")
        self.assertNotIn("HTTP_X_FORWARDED_FOR", env)
        self.assertNotIn("CONTENT_LENGTH", env)


class SlowClientTests(unittest.TestCase):

    def test_slowloris_burst_does_not_delay_a_good_client(self):
        node, port = start_node(hello_app, client_timeout=3)
        self.addCleanup(node.stop, 0)
        stalled = []
        for _ in range(500):                        # half a request head each, then nothing
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
            stalled.append(sock)
        self.addCleanup(lambda: [sock.close() for sock in stalled])
        start = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/")
        self.assertEqual(conn.getresponse().read(), b"Hello, World!")
        conn.close()
        self.assertLess(time.monotonic() - start, 1.0)
        self.assertTrue(stalled[0].recv(4096).startswith(b"HTTP/1.1 408 "))    # and they are cut off

    def test_stalled_body_answered_408_and_closed(self):
        node, port = start_node(environ_app, client_timeout=0.5)
        self.addCleanup(node.stop, 0)
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.addCleanup(sock.close)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly ten b")
        data = recv_until_closed(sock)
        self.assertTrue(data.startswith(b"HTTP/1.1 408 "), data)
        self.wait_until_idle(node)

    def wait_until_idle(self, node):
        deadline = time.monotonic() + 5
        while node.transports[0].connections:
            self.assertLess(time.monotonic(), deadline, "a connection thread was not released")
            time.sleep(0.01)

    def test_client_gone_mid_body_releases_the_thread(self):
        node, port = start_node(environ_app, client_timeout=5)
        self.addCleanup(node.stop, 0)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\npartial")
            time.sleep(0.1)
        self.wait_until_idle(node)

    def test_client_gone_mid_response_calls_close_and_releases_the_thread(self):
        closed = threading.Event()

        def app(environ, start_response):
            start_response("200 OK", TEXT)

            def body():
                try:
                    for _ in range(10000):
                        yield b"x" * 65536
                finally:
                    closed.set()
            return body()
        node, port = start_node(app, client_timeout=5)
        self.addCleanup(node.stop, 0)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            sock.recv(65536)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.assertTrue(closed.wait(5))
        self.wait_until_idle(node)

    def test_websocket_client_gone_mid_frame(self):
        node = wsgihost.Node(WS_CONFIG).start()
        self.addCleanup(node.stop, 0)
        client = WSClient(node.transports[0].port)
        channel = node.transports[0].channels["/ws"]
        deadline = time.monotonic() + 5
        while len(channel) != 1:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)
        client.sock.sendall(build_frame(Opcode.TEXT, b"x" * 1000, mask=b"abcd")[:100])
        client.close()
        while len(channel) or node.transports[0].connections:
            self.assertLess(time.monotonic(), deadline, "the WebSocket was not released")
            time.sleep(0.01)


def slow_app(environ, start_response):
    """For the shutdown test: a response that takes a second."""
    time.sleep(1.0)
    start_response("200 OK", TEXT)
    return [b"slow but whole " * 1000]


class ShutdownTests(unittest.TestCase):

    def test_sigterm_lets_the_request_in_flight_finish(self):
        port = free_port()
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, "wsgihost.py"), "--app",
                                 "test_wsgihost:slow_app", "--port", str(port)], cwd=HERE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(proc.kill)
        SubprocessTests.wait_for_port(self, port, proc)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        time.sleep(0.3)                             # the app is now sleeping
        proc.send_signal(signal.SIGTERM)
        resp = conn.getresponse()
        self.assertEqual((resp.status, resp.read()), (200, b"slow but whole " * 1000))
        self.assertEqual(resp.getheader("Connection"), "close")
        conn.close()
        out, err = proc.communicate(timeout=10)
        self.assertEqual(proc.returncode, 0, err)
        self.assertIn("SIGTERM: stopping", err.decode())


class FuzzTests(unittest.TestCase):
    """Random and mutated input: the parsers only ever return a value or raise their own error."""

    SEEDS = [
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /a/b?c=d HTTP/1.0\r\nUser-Agent: x\r\nAccept: */*\r\n\r\n",
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
        b"GET http://example.com:80/p HTTP/1.1\r\nHost: b\r\nConnection: keep-alive, Upgrade\r\n\r\n",
    ]
    INTERESTING = [b"\r", b"\n", b"\r\n", b"\x00", b" ", b"\t", b":", b",", b";", b"\x7f", b"\xff",
                   b"0", b"-", b"+", b"_", b"chunked", b"Content-Length: 3\r\n",
                   b"Transfer-Encoding: chunked\r\n", b"Host: x\r\n", b"%", b"?", b"#", b"/"]

    def mutate(self, rng: random.Random, data: bytes) -> bytes:
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(6)
            pos = rng.randrange(len(data) + 1)
            if op == 0 and data:
                data = data[:pos] + bytes([rng.randrange(256)]) + data[pos + 1:]
            elif op == 1:
                data = data[:pos] + rng.choice(self.INTERESTING) + data[pos:]
            elif op == 2:
                data = data[:pos] + data[pos + rng.randint(1, 8):]
            elif op == 3:
                end = min(len(data), pos + rng.randint(1, 30))
                data = data[:pos] + data[pos:end] * rng.randint(2, 4) + data[end:]
            elif op == 4:
                data = data[:pos]
            else:
                data = data + rng.choice(self.SEEDS)
        return data

    def parse_all(self, data: bytes):
        head = data.partition(b"\r\n\r\n")[0]
        try:
            request = parse_request_head(head)
            parse_request_target(request.method, request.target)
            parse_body_framing(request)
        except HTTPError as exc:
            self.assertIn(exc.status, (400, 414, 417, 431, 501, 505))

    def test_request_parser_with_5000_mutated_requests(self):
        rng = random.Random(20261121)
        for _ in range(5000):
            self.parse_all(self.mutate(rng, rng.choice(self.SEEDS)))

    def test_request_parser_with_random_bytes(self):
        rng = random.Random(6455)
        for _ in range(2000):
            self.parse_all(bytes(rng.randrange(256) for _ in range(rng.randint(0, 200))))

    def test_connection_with_2000_mutated_requests(self):
        rng = random.Random(3333)
        transport = wsgihost.app_transport(environ_app, client_timeout=1)
        for _ in range(2000):
            data = self.mutate(rng, rng.choice(self.SEEDS) + rng.choice(self.SEEDS))
            sock = FakeSocket(data, piece=rng.choice([None, 1, 3, 17]))
            transport.serve_connection(sock, REMOTE)          # no exception may escape
            out = bytes(sock.sent)
            self.assertTrue(out == b"" or out.startswith(b"HTTP/1.1 "), out[:100])
            for response in split_responses(out, ["HEAD" if b"HEAD" in data else "GET"] * 10):
                self.assertIn(response.status // 100, (1, 2, 4, 5))

    def test_frame_parser_with_mutated_frames(self):
        rng = random.Random(1011)
        seeds = [build_frame(Opcode.TEXT, b"hello", mask=b"abcd"),
                 build_frame(Opcode.BINARY, b"x" * 300, mask=b"abcd"),
                 build_frame(Opcode.CLOSE, b"\x03\xe8bye", mask=b"abcd"),
                 build_frame(Opcode.PING, b"p", mask=b"abcd"),
                 build_frame(Opcode.TEXT, b"frag", fin=False, mask=b"abcd")]
        for _ in range(5000):
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 3)):
                if data:
                    data[rng.randrange(len(data))] = rng.randrange(256)
            try:
                result = parse_frame(bytes(data[:rng.randint(0, len(data))]))
                if result is not None and result[0].opcode == Opcode.CLOSE:
                    wsgihost.parse_close_payload(result[1])
            except WebSocketError as exc:
                self.assertIn(exc.code, (1002, 1007, 1009))

    def test_hypothesis_request_parser_and_frame_parser(self):
        try:
            from hypothesis import given, settings, strategies as st
        except ImportError:
            self.skipTest("Hypothesis is not installed")

        @settings(max_examples=1500, deadline=None, database=None)
        @given(st.binary(max_size=300), st.sampled_from(self.SEEDS), st.integers(0, 300))
        def check_request(noise, seed, pos):
            self.parse_all(seed[:pos] + noise + seed[pos:])

        @settings(max_examples=1500, deadline=None, database=None)
        @given(st.binary(max_size=200))
        def check_frame(data):
            try:
                parse_frame(data)
            except WebSocketError as exc:
                self.assertIn(exc.code, (1002, 1007, 1009))
        check_request()
        check_frame()


class LoadTests(unittest.TestCase):

    def test_200_keep_alive_clients_50_requests_each_with_bodies(self):
        def app(environ, start_response):
            body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
            reply = environ["PATH_INFO"].encode() + b"|" + body
            start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                      ("Content-Length", str(len(reply)))])
            return [reply]
        node, port = start_node(app, client_timeout=30)
        self.addCleanup(node.stop, 0)
        errors = []

        def client(n):
            rng = random.Random(n)
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                buffer = b""
                for i in range(50):
                    body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 2000)))
                    path = b"/c%d/r%d" % (n, i)
                    sock.sendall(b"POST %s HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s"
                                 % (path, len(body), body))
                    expected_body = path + b"|" + body
                    while b"\r\n\r\n" not in buffer:
                        buffer += sock.recv(65536)
                    head, _, buffer = buffer.partition(b"\r\n\r\n")
                    while len(buffer) < len(expected_body):
                        buffer += sock.recv(65536)
                    got, buffer = buffer[:len(expected_body)], buffer[len(expected_body):]
                    expected_head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                                     b"Content-Length: %d\r\n" % len(expected_body))
                    if not head.startswith(expected_head) or got != expected_body or buffer:
                        errors.append((n, i, head, got[:50]))
                        return
                sock.close()
            except Exception as exc:
                errors.append((n, repr(exc)))
        threads = [threading.Thread(target=client, args=(n,)) for n in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(errors, [])

# -----------------------------------------------------------------------------
# 9. Configuration and 11. the command line
# -----------------------------------------------------------------------------

def web_config(paths, endpoint=None, **transport):
    transport.update({"type": "web", "endpoint": endpoint or {"type": "tcp", "port": 0}, "paths": paths})
    return {"workers": [{"type": "router", "transports": [transport]}]}


class ConfigTests(unittest.TestCase):

    def assertConfigError(self, config, message, cbdir="."):
        with self.assertRaises(wsgihost.ConfigError) as ctx:
            wsgihost.build_transports(config, cbdir, ".crossbar/config.json")
        self.assertEqual(str(ctx.exception), message)

    def test_unknown_type(self):
        self.assertConfigError(
            web_config({"ws": {"type": "websockt"}}),
            '.crossbar/config.json: workers[0].transports[0].paths["ws"]: unknown type "websockt" '
            '(expected one of: json, path, redirect, static, websocket, wsgi)')

    def test_module_not_found(self):
        with self.assertRaises(wsgihost.ConfigError) as ctx:
            wsgihost.build_transports(web_config({"/": {"type": "wsgi", "module": "no_such_mod_xyz",
                                                        "object": "app"}}), ".", "c.json")
        self.assertTrue(str(ctx.exception).startswith(
            'c.json: workers[0].transports[0].paths["/"]: cannot import module "no_such_mod_xyz": '
            "No module named 'no_such_mod_xyz' (search path: ["), str(ctx.exception))

    def test_missing_object(self):
        self.assertConfigError(
            web_config({"/": {"type": "wsgi", "module": "test_wsgihost", "object": "ap"}}),
            '.crossbar/config.json: workers[0].transports[0].paths["/"]: module "test_wsgihost" '
            'has no object "ap"')

    def test_object_not_callable(self):
        self.assertConfigError(
            web_config({"/": {"type": "wsgi", "module": "test_wsgihost", "object": "HERE"}}),
            '.crossbar/config.json: workers[0].transports[0].paths["/"].object: object "HERE" of '
            'module "test_wsgihost" is not callable: a WSGI app is a callable(environ, start_response)')

    def test_wamp_service_types(self):
        self.assertConfigError(
            web_config({"call": {"type": "caller", "realm": "r"}}),
            '.crossbar/config.json: workers[0].transports[0].paths["call"].type: type "caller" needs '
            'a WAMP router, which wsgihost does not provide')

    def test_version(self):
        config = web_config({"/": {"type": "wsgi", "module": "test_wsgihost", "object": "hello_app"}})
        wsgihost.build_transports(dict(config, version=2))
        self.assertConfigError(dict(config, version=3), ".crossbar/config.json: version: unsupported "
                                                        "config version 3 (expected 2, or none)")

    def test_other_worker_types(self):
        self.assertConfigError(
            {"workers": [{"type": "container"}]},
            '.crossbar/config.json: workers[0].type: worker type "container" is not supported: '
            'wsgihost hosts only "router" workers\' web transports')

    def test_other_transport_types(self):
        self.assertConfigError(
            {"workers": [{"type": "router", "transports": [{"type": "rawsocket"}]}]},
            '.crossbar/config.json: workers[0].transports[0].type: transport type "rawsocket" is not '
            'supported: wsgihost serves only "web" transports')

    def test_invalid_path_key(self):
        self.assertConfigError(
            web_config({"a/b": {"type": "websocket"}}),
            '.crossbar/config.json: workers[0].transports[0].paths["a/b"]: invalid path "a/b": a key '
            'is "/" or one URL segment of letters, digits, "_" and "-"')

    def test_threads_validated(self):
        base = {"type": "wsgi", "module": "test_wsgihost", "object": "hello_app"}
        self.assertConfigError(web_config({"/": dict(base, maxthreads=0)}),
                               '.crossbar/config.json: workers[0].transports[0].paths["/"].maxthreads: '
                               'must be at least 1, got 0')
        self.assertConfigError(web_config({"/": dict(base, minthreads=-1)}),
                               '.crossbar/config.json: workers[0].transports[0].paths["/"].minthreads: '
                               'must be 0 or more, got -1')
        self.assertConfigError(web_config({"/": dict(base, minthreads=5, maxthreads=4)}),
                               '.crossbar/config.json: workers[0].transports[0].paths["/"]: minthreads '
                               '(5) must not exceed maxthreads (4)')

    def test_unsupported_yet(self):
        self.assertConfigError(web_config({"/": {"type": "static", "directory": "."}}),
                               '.crossbar/config.json: workers[0].transports[0].paths["/"].type: type '
                               '"static" is not supported by wsgihost %s yet' % wsgihost.__version__)
        self.assertConfigError(web_config({}, {"type": "tcp", "port": 1, "tls": {}}),
                               ".crossbar/config.json: workers[0].transports[0].endpoint.tls: TLS "
                               "endpoints are not supported yet")
        self.assertConfigError(web_config({}, {"type": "unix", "path": "x"}),
                               ".crossbar/config.json: workers[0].transports[0].endpoint.type: unix "
                               "socket endpoints are not supported yet")

    def test_port_values(self):
        self.assertConfigError(web_config({}, {"type": "tcp", "port": "8080"}),
                               '.crossbar/config.json: workers[0].transports[0].endpoint.port: expected '
                               'a port number or "$ENVVAR", got a string "8080"')
        self.assertConfigError(web_config({}, {"type": "tcp", "port": 70000}),
                               ".crossbar/config.json: workers[0].transports[0].endpoint.port: port "
                               "70000 out of range (0-65535)")
        os.environ["WSGIHOST_TEST_PORT"] = "8123"
        self.addCleanup(os.environ.pop, "WSGIHOST_TEST_PORT")
        transport = wsgihost.build_transports(web_config(
            {"ws": {"type": "websocket"}}, {"type": "tcp", "port": "$WSGIHOST_TEST_PORT"}))[0]
        self.assertEqual(transport.port, 8123)
        self.assertConfigError(web_config({}, {"type": "tcp", "port": "$WSGIHOST_NO_SUCH_VAR"}),
                               ".crossbar/config.json: workers[0].transports[0].endpoint.port: "
                               "environment variable WSGIHOST_NO_SUCH_VAR is not set")

    def test_options_validated(self):
        self.assertConfigError(web_config({}, options={"client_timout": 5}),
                               '.crossbar/config.json: workers[0].transports[0].options: unknown key '
                               '"client_timout" (expected one of: access_log, client_timeout, '
                               'display_tracebacks, hsts, hsts_max_age, max_body_size, max_connections, '
                               'max_head_size, max_header_fields, max_header_line, max_request_line, '
                               'shutdown_grace)')
        self.assertConfigError(web_config({}, options={"max_body_size": "1M"}),
                               '.crossbar/config.json: workers[0].transports[0].options.max_body_size: '
                               'expected a positive integer or null, got a string "1M"')
        transport = wsgihost.build_transports(web_config({"ws": {"type": "websocket"}},
                                                         options={"client_timeout": 5, "max_body_size": 9}))[0]
        self.assertEqual((transport.limits.client_timeout, transport.limits.max_body_size), (5, 9))

    def test_websocket_options_validated(self):
        self.assertConfigError(web_config({"ws": {"type": "websocket", "options": {"auto_ping_timeout": 0}}}),
                               '.crossbar/config.json: workers[0].transports[0].paths["ws"].options.'
                               'auto_ping_timeout: must be more than 0, got 0')
        self.assertConfigError(web_config({"ws": {"type": "websocket", "options": {"protocol": ["x"]}}}),
                               '.crossbar/config.json: workers[0].transports[0].paths["ws"].options: unknown '
                               'key "protocol" (expected one of: allowed_origins, auto_ping_interval, '
                               'auto_ping_timeout, close_handshake_timeout, compression, max_frame_size, '
                               'max_message_size, max_send_queue, protocols)')

    def test_compression_is_off_unless_deflate_is_given(self):
        def compression(options):
            transport = wsgihost.build_transports(web_config({"ws": {"type": "websocket", "options": options}}))[0]
            return dict(transport.root.services())["/ws"].options.compression
        self.assertIsNone(compression({}))                      # as in Crossbar: absent is off
        self.assertIsNone(compression({"compression": {}}))
        self.assertEqual(compression({"compression": {"deflate": {}}}),
                         wsgihost.DeflateOptions(False, 12, False, 12, 5))
        self.assertEqual(compression({"compression": {"deflate": {
            "request_no_context_takeover": True, "request_max_window_bits": 0, "no_context_takeover": True,
            "max_window_bits": 15, "memory_level": 9}}}), wsgihost.DeflateOptions(True, 0, True, 15, 9))

    def test_compression_options_validated(self):
        where = '.crossbar/config.json: workers[0].transports[0].paths["ws"].options.compression'
        for compression, message in [
                ([], ": expected an object, got a list []"),
                ({"gzip": {}}, ': unknown key "gzip" (expected one of: deflate)'),
                ({"deflate": True}, ".deflate: expected an object, got a boolean true"),
                ({"deflate": {"window_bits": 10}}, '.deflate: unknown key "window_bits" (expected one of: '
                 'max_window_bits, memory_level, no_context_takeover, request_max_window_bits, '
                 'request_no_context_takeover)'),
                ({"deflate": {"request_no_context_takeover": 1}},
                 ".deflate.request_no_context_takeover: expected true or false, got a number 1"),
                ({"deflate": {"no_context_takeover": "yes"}},
                 '.deflate.no_context_takeover: expected true or false, got a string "yes"'),
                ({"deflate": {"request_max_window_bits": 7}},
                 ".deflate.request_max_window_bits: must be 0 (ask nothing) or 8 to 15, got 7"),
                ({"deflate": {"request_max_window_bits": 16}},
                 ".deflate.request_max_window_bits: must be 0 (ask nothing) or 8 to 15, got 16"),
                ({"deflate": {"max_window_bits": 16}}, ".deflate.max_window_bits: must be 8 to 15, got 16"),
                ({"deflate": {"max_window_bits": 0}}, ".deflate.max_window_bits: must be 8 to 15, got 0"),
                ({"deflate": {"max_window_bits": 12.0}}, ".deflate.max_window_bits: expected an integer, got a "
                 "number 12.0"),
                ({"deflate": {"memory_level": 0}}, ".deflate.memory_level: must be 1 to 9, got 0"),
                ({"deflate": {"memory_level": 10}}, ".deflate.memory_level: must be 1 to 9, got 10")]:
            with self.subTest(compression=compression):
                self.assertConfigError(web_config({"ws": {"type": "websocket",
                                                          "options": {"compression": compression}}}),
                                       where + message)
        for value in (0, 8, 15):                                # the ends of the ranges are accepted
            wsgihost.build_transports(web_config({"ws": {"type": "websocket", "options": {"compression": {
                "deflate": {"request_max_window_bits": value, "max_window_bits": max(value, 8),
                            "memory_level": 1 + value // 2}}}}}))

    def test_pythonpath_relative_to_cbdir(self):
        with tempfile.TemporaryDirectory() as project:
            os.mkdir(os.path.join(project, ".crossbar"))
            with open(os.path.join(project, "wsgihost_cbdir_probe.py"), "w") as f:
                f.write("def app(environ, start_response):\n"
                        "    start_response('200 OK', [])\n    return [b'probe']\n")
            config = web_config({"/": {"type": "wsgi", "module": "wsgihost_cbdir_probe", "object": "app"}})
            config["workers"][0]["options"] = {"pythonpath": [".."]}
            path = os.path.join(project, ".crossbar", "config.json")
            with open(path, "w") as f:
                json.dump(config, f)
            node = wsgihost.Node.from_file(os.path.join(project, ".crossbar"))
            self.assertIn(os.path.normpath(project), sys.path)
            self.assertEqual(node.urls(), ["http://0.0.0.0:0/ (wsgi wsgihost_cbdir_probe:app)"])

    def test_invalid_json(self):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            f.write('{"workers": [}')
        self.addCleanup(os.unlink, f.name)
        with self.assertRaises(wsgihost.ConfigError) as ctx:
            wsgihost.load_config(f.name)
        self.assertEqual(str(ctx.exception), "%s: invalid JSON: Expecting value: line 1 column 14 "
                                             "(char 13)" % f.name)


class CommandLineTests(unittest.TestCase):

    def run_main(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = wsgihost.main(list(argv))
            except SystemExit as exc:
                status = exc.code
        return status, out.getvalue(), err.getvalue()

    def test_check_ok(self):
        status, out, err = self.run_main("--check", os.path.join(HERE, "examples", "hello", ".crossbar"))
        self.assertEqual((status, out), (0, "ok: 1 transports, 3 paths\n"))

    def test_config_error_is_one_line_and_exit_2(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "config.json")
            with open(path, "w") as f:
                json.dump(web_config({"/": {"type": "wsgi", "module": "test_wsgihost", "object": "ap"}}), f)
            status, out, err = self.run_main(path)
        self.assertEqual(status, 2)
        self.assertEqual(err, '%s: workers[0].transports[0].paths["/"]: module "test_wsgihost" has no '
                              'object "ap"\n' % path)

    def test_missing_config_file(self):
        status, out, err = self.run_main("/nonexistent/wsgihost/config.json")
        self.assertEqual(status, 2)
        self.assertEqual(err, "/nonexistent/wsgihost/config.json: cannot read the config: "
                              "No such file or directory\n")

    def test_version(self):
        status, out, err = self.run_main("--version")
        self.assertEqual((status, out), (0, "wsgihost %s\n" % wsgihost.__version__))

    def test_bad_app_spec(self):
        status, out, err = self.run_main("--app", "nocolon")
        self.assertEqual((status, err), (2, "wsgihost: --app: expected MODULE:OBJECT, got 'nocolon'\n"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SubprocessTests(unittest.TestCase):
    """``python wsgihost.py CONFIG`` as a user runs it."""

    def start(self, args, cwd):
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, "wsgihost.py")] + args, cwd=cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(proc.kill)
        return proc

    def wait_for_port(self, port, proc):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if proc.poll() is not None:
                    self.fail("server exited: %r" % (proc.communicate(),))
                time.sleep(0.05)
        self.fail("server did not start")

    def copy_example(self, name):
        """A copy of examples/NAME with its port changed to a free one."""
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root)
        target = os.path.join(root, name)
        shutil.copytree(os.path.join(HERE, "examples", name), target)
        path = os.path.join(target, ".crossbar", "config.json")
        with open(path) as f:
            config = json.load(f)
        port = free_port()
        config["workers"][0]["transports"][0]["endpoint"]["port"] = port
        with open(path, "w") as f:
            json.dump(config, f)
        return target, port

    def test_hello_example_served_and_stopped_by_sigterm(self):
        target, port = self.copy_example("hello")
        proc = self.start([".crossbar/config.json"], target)
        self.wait_for_port(port, proc)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/")
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        self.assertIn(b"Hello", resp.read())
        conn.request("GET", "/info/some/path?x=1")
        resp = conn.getresponse()
        body = resp.read()
        self.assertIn(b"SCRIPT_NAME: /info", body)
        self.assertIn(b"PATH_INFO: /some/path", body)
        conn.close()
        # 256 simultaneous connections, all answered, no socket error
        socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(256)]
        for sock in socks:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        for sock in socks:
            data = recv_until_closed(sock)
            sock.close()
            self.assertEqual(split_responses(data)[0].status, 200)
        proc.terminate()
        out, err = proc.communicate(timeout=10)
        self.assertEqual(proc.returncode, 0, err)
        self.assertIn("serving http://127.0.0.1:%d/ (wsgi hello:app), http://127.0.0.1:%d/info "
                      "(wsgi hello:info), ws://127.0.0.1:%d/ws (websocket)" % (port, port, port),
                      err.decode())

    def test_port_in_use_is_exit_1(self):
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            proc = self.start(["--app", "test_wsgihost:hello_app", "--port", str(port)], HERE)
            out, err = proc.communicate(timeout=10)
        self.assertEqual(proc.returncode, 1)
        self.assertEqual(err.decode().strip().splitlines()[-1],
                         "cannot listen on 127.0.0.1:%d: Address already in use" % port)

    def test_app_importing_wsgihost_gets_the_running_module(self):
        port = free_port()
        proc = self.start(["--app", "test_wsgihost:module_identity_app", "--port", str(port)], HERE)
        self.wait_for_port(port, proc)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/")
        self.assertEqual(conn.getresponse().read(), b"True")
        conn.close()
        proc.terminate()
        proc.communicate(timeout=10)


def module_identity_app(environ, start_response):
    import wsgihost as imported
    start_response("200 OK", TEXT)
    return [str(imported is sys.modules["__main__"]).encode()]


class FlaskExampleTests(unittest.TestCase):
    """The seed's Flask example, verbatim, served and fetched."""

    def test_flask_example(self):
        try:
            import flask  # noqa: F401
        except ImportError:
            self.skipTest("Flask is not installed")
        cbdir = os.path.join(HERE, "examples", "flask", ".crossbar")
        config, cbdir = wsgihost.load_config(os.path.join(cbdir, "config.json"))
        config["workers"][0]["transports"][0]["endpoint"]["port"] = 0
        config["workers"][0]["transports"][0]["endpoint"]["interface"] = "127.0.0.1"
        node = wsgihost.Node(config, cbdir).start()
        self.addCleanup(node.stop, 1)
        conn = http.client.HTTPConnection("127.0.0.1", node.transports[0].port, timeout=5)
        conn.request("GET", "/")
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        self.assertIn(b"<h1>Hello from Crossbar.io</h1>", resp.read())
        conn.close()


class ChromiumPipe:
    """Headless Chromium driven over the DevTools protocol on a pipe (stdlib only).

    With --remote-debugging-pipe Chromium reads NUL-terminated JSON commands
    on its fd 3 and writes replies and events on its fd 4; a small Python
    trampoline puts our pipe ends there and execs it.
    """

    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-quic", "--remote-debugging-pipe"]
    TRAMPOLINE = ("import fcntl, os, sys\n"
                  "fds = [int(fd) for fd in sys.argv[1:3]]\n"
                  "high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in fds]\n"
                  "for fd in fds: os.close(fd)\n"
                  "os.dup2(high[0], 3); os.dup2(high[1], 4)\n"
                  "for fd in high: os.close(fd)\n"
                  "os.execvp(sys.argv[3], sys.argv[3:])\n")

    def __init__(self, executable, profile_dir, log_path):
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()
        with open(log_path, "wb") as log:           # a file: Chromium's chatter must not block it
            self.proc = subprocess.Popen(
                [sys.executable, "-c", self.TRAMPOLINE, str(to_chrome_r), str(from_chrome_w),
                 executable] + self.FLAGS + ["--user-data-dir=" + profile_dir, "about:blank"],
                pass_fds=(to_chrome_r, from_chrome_w), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.buffer = b""
        self.last_id = 0

    def send(self, method, params=None, session_id=None, timeout=15.0):
        import select
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        os.write(self.to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self.buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no answer from Chromium to " + method)
                if select.select([self.from_chrome], [], [], left)[0]:
                    data = os.read(self.from_chrome, 65536)
                    if not data:
                        raise EOFError("Chromium exited (%s)" % self.proc.poll())
                    self.buffer += data
            raw, _, self.buffer = self.buffer.partition(b"\0")
            reply = json.loads(raw)
            if reply.get("id") == self.last_id:     # anything else is an event
                if "error" in reply:
                    raise RuntimeError("%s: %s" % (method, reply["error"]))
                return reply.get("result", {})

    def close(self):
        try:
            self.send("Browser.close", timeout=3)
        except Exception:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        os.close(self.to_chrome)
        os.close(self.from_chrome)


class BrowserTests(unittest.TestCase):
    """examples/chat in a real browser: messages from the page and from a POST appear in it."""

    def test_chat_example_in_headless_chromium(self):
        executable = shutil.which("chromium") or shutil.which("chromium-browser")
        if executable is None:
            self.skipTest("Chromium is not installed (.ci/run installs Debian's chromium)")
        config, cbdir = wsgihost.load_config(os.path.join(HERE, "examples", "chat", ".crossbar",
                                                          "config.json"))
        config["workers"][0]["transports"][0]["endpoint"]["port"] = 0
        node = wsgihost.Node(config, cbdir).start()
        self.addCleanup(node.stop, 1)
        port = node.transports[0].port
        channel = node.transports[0].channels["/ws"]
        inflated = []                   # what the server inflated: the page's messages, compressed
        decompress = wsgihost.PerMessageDeflate.decompress

        def recording_decompress(codec, data, limit, end=False):
            for out in decompress(codec, data, limit, end):
                inflated.append(out)
                yield out
        patcher = mock.patch.object(wsgihost.PerMessageDeflate, "decompress", recording_decompress)
        patcher.start()
        self.addCleanup(patcher.stop)
        profile = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, profile, True)
        browser = ChromiumPipe(executable, os.path.join(profile, "profile"),
                               os.path.join(profile, "chromium.log"))
        self.addCleanup(browser.close)
        target = browser.send("Target.createTarget",
                              {"url": "http://127.0.0.1:%d/?say=from-page" % port})
        session = browser.send("Target.attachToTarget",
                               {"targetId": target["targetId"], "flatten": True})["sessionId"]
        deadline = time.monotonic() + 30
        while len(channel) < 1:
            self.assertLess(time.monotonic(), deadline, "the page never connected to /ws")
            time.sleep(0.02)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("POST", "/say", "message=from-post",
                     {"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(conn.getresponse().status, 303)
        conn.close()
        state = {}
        while time.monotonic() < deadline:
            result = browser.send("Runtime.evaluate", {"returnByValue": True, "expression":
                                  'JSON.stringify({status: document.getElementById("status").textContent,'
                                  ' messages: Array.from(document.querySelectorAll("#messages li"),'
                                  ' li => li.textContent)})'}, session)
            state = json.loads(result["result"]["value"])
            if {"from-page", "from-post"} <= set(state["messages"]):
                break
            time.sleep(0.05)
        self.assertEqual(state["status"], "connected")
        self.assertEqual(sorted(state["messages"]), ["from-page", "from-post"])    # either order
        # examples/chat turns compression on: Chromium negotiated permessage-deflate,
        # its frame came with RSV1 (or the server would not have inflated it) and
        # the page read what the server sent compressed.
        client = channel.clients[0]
        self.assertIsNotNone(client.deflate)
        self.assertIn(b"from-page", b"".join(inflated))


# -----------------------------------------------------------------------------
# Runner: a closing line "N passed, N failed, N skipped"
# -----------------------------------------------------------------------------

def run_tests() -> int:
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    result = unittest.TextTestRunner(verbosity=1).run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    passed = result.testsRun - failed - skipped
    print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
    if skipped and os.environ.get("WSGIHOST_REQUIRE_ALL"):
        print("WSGIHOST_REQUIRE_ALL is set: skipped tests count as failures:")
        for test, reason in result.skipped:
            print("  %s: %s" % (test.id(), reason))
        return 1
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.modules.setdefault("test_wsgihost", sys.modules[__name__])
    sys.exit(run_tests())
