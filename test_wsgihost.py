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
import unittest
import unittest.mock
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

    def test_max_connections_all_busy_newcomers_wait_in_the_backlog(self):
        release = threading.Event()
        entered = []

        def app(environ, start_response):
            entered.append(1)
            release.wait(10)
            start_response("200 OK", TEXT)
            return [b"done"]
        node, port = start_node(app, max_connections=2, client_timeout=10)
        self.addCleanup(node.stop, 0)
        self.addCleanup(release.set)
        busy = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        for sock in busy:
            self.addCleanup(sock.close)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        deadline = time.monotonic() + 10
        while len(entered) < 2:                     # both connections are being served
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)
        waiting = socket.create_connection(("127.0.0.1", port), timeout=5)   # in the backlog
        self.addCleanup(waiting.close)
        waiting.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        waiting.settimeout(0.5)
        with self.assertRaises(socket.timeout):
            waiting.recv(4096)                      # not served while both are busy
        self.assertEqual(len(entered), 2)
        release.set()
        waiting.settimeout(10)
        self.assertTrue(waiting.recv(4096).startswith(b"HTTP/1.1 200 OK"))
        for sock in busy:
            self.assertTrue(sock.recv(4096).startswith(b"HTTP/1.1 200 OK"))

    def test_max_connections_the_longest_idle_connection_makes_room(self):
        node, port = start_node(hello_app, max_connections=2, client_timeout=30)
        self.addCleanup(node.stop, 0)
        oldest = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(oldest.close)
        deadline = time.monotonic() + 10
        while len(node.transports[0].connections) < 1:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)
        younger = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(younger.close)
        while len(node.transports[0].connections) < 2:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)
        fresh = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(fresh.close)
        fresh.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(fresh.recv(4096).startswith(b"HTTP/1.1 200 OK"))     # served at once
        self.assertEqual(oldest.recv(4096), b"")                            # closed for it
        younger.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(younger.recv(4096).startswith(b"HTTP/1.1 200 OK"))   # still open

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


class GateTests(unittest.TestCase):
    """maxthreads: requests over it wait in the waiting room, in arrival order, with no thread."""

    def test_waiters_served_in_arrival_order(self):
        release = threading.Event()
        order = []

        def app(environ, start_response):
            if environ["PATH_INFO"] == "/first":
                release.wait(10)
            order.append(environ["PATH_INFO"])
            start_response("200 OK", TEXT)
            return [b"ok"]
        service = wsgihost.WSGIService(app, "test:app", maxthreads=1)
        transport = wsgihost.WebTransport(wsgihost.PathNode(default=service), "127.0.0.1", 0)
        node = wsgihost.Node(transports=[transport]).start()
        self.addCleanup(node.stop, 0)
        self.addCleanup(release.set)
        entered = threading.Event()
        inner = app

        def app(environ, start_response):
            entered.set()
            return inner(environ, start_response)
        service.app = app
        socks = []
        threads_serving_one = None
        for i, path in enumerate(["/first", "/0", "/1", "/2", "/3"]):
            sock = socket.create_connection(("127.0.0.1", transport.port), timeout=10)
            self.addCleanup(sock.close)
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path.encode())
            socks.append(sock)
            if threads_serving_one is None:
                self.assertTrue(entered.wait(10))
                threads_serving_one = threading.active_count()
            deadline = time.monotonic() + 10
            while len(service.gate.waiting) < i:    # queued: its arrival order is i
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.005)
        self.assertLessEqual(threading.active_count(), threads_serving_one)   # no thread each
        release.set()
        for sock in socks:
            self.assertTrue(sock.recv(4096).startswith(b"HTTP/1.1 200 OK"))
        self.assertEqual(order, ["/first", "/0", "/1", "/2", "/3"])


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


class WSClient:
    """A minimal RFC 6455 client for the tests, on the module's own frame functions."""

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
        header = wsgihost.parse_frame_header(bytes(self.buffer[:size]), require_mask=False)
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
        clients = [self.client() for _ in range(100)]
        self.wait_for(lambda: len(self.channels["/ws"]) == 100)
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

# -----------------------------------------------------------------------------
# 8a. Static files, redirects and JSON values
# -----------------------------------------------------------------------------

MTIME_NS = 1_600_000_000_123_456_789          # Sun, 13 Sep 2020 12:26:40 GMT
HELLO = b"Hello, static world!\n"             # 21 bytes
HELLO_ETAG = '"%x-%x"' % (MTIME_NS, len(HELLO))
HELLO_DATE = "Sun, 13 Sep 2020 12:26:40 GMT"


def make_static_tree(base: str) -> str:
    """A static root under ``base``, with secrets beside it and traps inside; returns the root."""
    def write(rel, data=b"x"):
        path = os.path.join(base, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, ns=(MTIME_NS, MTIME_NS))

    write("outside.txt", b"TOP SECRET outside\n")
    write("outdir/passwd", b"TOP SECRET passwd\n")
    write("root2/sibling.txt", b"TOP SECRET sibling\n")   # "root2" starts like "root"
    write("root/hello.txt", HELLO)
    write("root/data.bin", bytes(range(100)))
    write("root/empty.txt", b"")
    write("root/.secret", b"TOP SECRET hidden\n")
    write("root/.hiddendir/x.txt", b"TOP SECRET in a hidden folder\n")
    write("root/site/index.html", b"<p>site index</p>\n")
    write("root/sub/a.txt", b"a\n")
    write('root/sub/<b>&"q".txt', b"q\n")
    write("root/sub/a:b.txt", b"ab\n")
    write("root/sub/.hidden", b"h\n")
    write("root/sub/inner/z.txt", b"z\n")
    write("root/app.html", b"<p>single page</p>\n")
    write("root/weird.ZZQQ", b"xyz")
    write("root/archive.tar.gz", b"\x1f\x8b\x08\x00")
    write("root/script.js", b"1;\n")
    write("root/LICENSE", b"MIT\n")
    root = os.path.join(base, "root")
    os.symlink(os.path.join(base, "outside.txt"), os.path.join(root, "out"))
    os.symlink(os.path.join(base, "outdir"), os.path.join(root, "outdir"))
    os.symlink(os.path.join(base, "root2", "sibling.txt"), os.path.join(root, "sibling"))
    os.symlink("hello.txt", os.path.join(root, "inlink"))
    if hasattr(os, "mkfifo"):
        os.mkfifo(os.path.join(root, "fifo"))
    return root


class StaticTreeTestCase(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.addClassCleanup(cls.tmp.cleanup)
        cls.base = os.path.realpath(cls.tmp.name)
        cls.root = make_static_tree(cls.base)

    def get(self, target: str, *fields: str, method: str = "GET", validate: bool = True,
            **options) -> Resp:
        """One request to a StaticFiles app on "/" (with ``options``), through the fake socket."""
        app = wsgihost.StaticFiles(self.root, **options)
        head = "%s %s HTTP/1.1\r\nHost: a\r\n%s\r\n" % (method, target,
                                                       "".join(f + "\r\n" for f in fields))
        return one(app, head.encode("latin-1"), validate=validate)


class ResolveStaticPathTests(StaticTreeTestCase):
    """The path check alone, one attack at a time."""

    def resolve(self, path_info, allow_hidden=False):
        return wsgihost.resolve_static_path(self.root, path_info, allow_hidden)

    def test_file_and_root(self):
        self.assertEqual(self.resolve("/hello.txt"), os.path.join(self.root, "hello.txt"))
        self.assertEqual(self.resolve("/sub/a.txt"), os.path.join(self.root, "sub", "a.txt"))
        self.assertEqual(self.resolve("/"), self.root)
        self.assertEqual(self.resolve(""), self.root)
        self.assertEqual(self.resolve("/no/such/file"), os.path.join(self.root, "no", "such", "file"))

    def test_dot_dot_and_dot_segments_refused(self):
        for path in ("/..", "/../outside.txt", "/sub/../../outside.txt", "/sub/../hello.txt",
                     "/sub/..", "/.", "/./hello.txt", "/sub/./a.txt"):
            with self.subTest(path=path):
                self.assertIsNone(self.resolve(path))
                self.assertIsNone(self.resolve(path, allow_hidden=True))

    def test_percent_encoded_dot_dot_and_slash_refused_once_decoded(self):
        # The server decodes PATH_INFO (PEP 3333): %2e%2e is "..", %2f is "/".
        for target in ("/%2e%2e/outside.txt", "/%2E%2E%2Foutside.txt", "/sub%2f..%2f..%2foutside.txt",
                       "/.%2e/outside.txt", "/sub/%2e%2e/%2e%2e/outdir/passwd"):
            with self.subTest(target=target):
                path_info = wsgihost.decode_path(target)
                self.assertIn("..", path_info)
                self.assertIsNone(self.resolve(path_info, allow_hidden=True))

    def test_double_encoding_and_overlong_utf8_are_just_names_inside(self):
        # %252e%252e decodes once, to the name "%2e%2e"; %c0%ae is no "." in any
        # decoder that matters: both stay names under the root.
        for target in ("/%252e%252e/outside.txt", "/%c0%ae%c0%ae/outside.txt"):
            with self.subTest(target=target):
                path = self.resolve(wsgihost.decode_path(target))
                self.assertTrue(path.startswith(self.root + os.sep), path)

    def test_backslash_refused(self):
        for path in ("/..\\outside.txt", "/sub\\a.txt", "/\\\\server\\share", "/%5c.."):
            with self.subTest(path=path):
                self.assertIsNone(self.resolve(wsgihost.decode_path(path), allow_hidden=True))

    def test_nul_refused(self):
        self.assertIsNone(self.resolve("/hello.txt\x00.png"))
        self.assertIsNone(self.resolve(wsgihost.decode_path("/hello.txt%00")))

    def test_empty_segments_and_absolute_looking_paths_stay_inside(self):
        self.assertEqual(self.resolve("//etc/passwd"), os.path.join(self.root, "etc", "passwd"))
        self.assertEqual(self.resolve("///sub//a.txt"), os.path.join(self.root, "sub", "a.txt"))
        self.assertEqual(self.resolve("/" + self.base + "/outside.txt"),
                         os.path.join(self.root, self.base.lstrip("/"), "outside.txt"))

    def test_hidden_segments_refused_unless_allowed(self):
        for path in ("/.secret", "/.hiddendir/x.txt", "/sub/.hidden", "/.crossbar/config.json"):
            with self.subTest(path=path):
                self.assertIsNone(self.resolve(path))
                self.assertTrue(self.resolve(path, allow_hidden=True).startswith(self.root + os.sep))

    def test_symlinks_out_refused_symlinks_in_followed(self):
        self.assertIsNone(self.resolve("/out"))
        self.assertIsNone(self.resolve("/outdir/passwd"))
        self.assertIsNone(self.resolve("/outdir"))
        self.assertIsNone(self.resolve("/sibling"))     # root2/..., beside root: not under it
        self.assertEqual(self.resolve("/inlink"), os.path.join(self.root, "hello.txt"))

    def test_text_that_is_not_latin1_refused(self):
        self.assertIsNone(self.resolve("/\u20ac.txt"))


class StaticFilesTests(StaticTreeTestCase):

    def test_get_a_file(self):
        r = self.get("/hello.txt")
        self.assertEqual((r.status, r.body), (200, HELLO))
        self.assertEqual(r.headers["content-type"], "text/plain; charset=utf-8")
        self.assertEqual(r.headers["content-length"], "21")
        self.assertEqual(r.headers["last-modified"], HELLO_DATE)
        self.assertEqual(r.headers["etag"], HELLO_ETAG)
        self.assertEqual(r.headers["accept-ranges"], "bytes")
        self.assertEqual(r.headers["cache-control"], "max-age=43200, public")
        self.assertNotIn("connection", r.headers)        # the connection stays open

    def test_head_has_the_headers_and_no_body(self):
        raw = run_raw(wsgihost.StaticFiles(self.root),
                      b"HEAD /hello.txt HTTP/1.1\r\nHost: a\r\n\r\nGET /sub/a.txt HTTP/1.1\r\nHost: a\r\n\r\n")
        head, second = split_responses(raw, ["HEAD", "GET"])
        self.assertEqual((head.status, head.body, head.headers["content-length"]), (200, b"", "21"))
        self.assertEqual(head.headers["etag"], HELLO_ETAG)
        self.assertEqual((second.status, second.body), (200, b"a\n"))   # nothing left over

    def test_if_none_match(self):
        for value in (HELLO_ETAG, "W/" + HELLO_ETAG, '"other", ' + HELLO_ETAG, "*"):
            with self.subTest(value=value):
                r = self.get("/hello.txt", "If-None-Match: " + value)
                self.assertEqual((r.status, r.body), (304, b""))
                self.assertEqual(r.headers["etag"], HELLO_ETAG)
                self.assertEqual(r.headers["cache-control"], "max-age=43200, public")
                self.assertNotIn("content-type", r.headers)
                self.assertNotIn("content-length", r.headers)
        for value in ('"other"', HELLO_ETAG[:-2] + '"', "garbage"):
            with self.subTest(value=value):
                self.assertEqual(self.get("/hello.txt", "If-None-Match: " + value).status, 200)

    def test_if_modified_since(self):
        for value in (HELLO_DATE, "Sun, 13 Sep 2020 12:26:41 GMT", "Sunday, 13-Sep-20 12:26:40 GMT",
                      "Sun Sep 13 12:26:40 2020"):
            with self.subTest(value=value):
                r = self.get("/hello.txt", "If-Modified-Since: " + value)
                self.assertEqual((r.status, r.body), (304, b""))
        for value in ("Sun, 13 Sep 2020 12:26:39 GMT", "yesterday", "Sun, 13 Sep 2020 12:26:40 CET"):
            with self.subTest(value=value):
                self.assertEqual(self.get("/hello.txt", "If-Modified-Since: " + value).status, 200)
        # RFC 9110 §13.1.3: ignored when If-None-Match is present.
        r = self.get("/hello.txt", 'If-None-Match: "other"', "If-Modified-Since: " + HELLO_DATE)
        self.assertEqual((r.status, r.body), (200, HELLO))

    def test_if_match_and_if_unmodified_since(self):
        self.assertEqual(self.get("/hello.txt", "If-Match: " + HELLO_ETAG).status, 200)
        self.assertEqual(self.get("/hello.txt", "If-Match: *").status, 200)
        self.assertEqual(self.get("/hello.txt", 'If-Match: "other"').status, 412)
        self.assertEqual(self.get("/hello.txt", "If-Match: W/" + HELLO_ETAG).status, 412)  # strong
        self.assertEqual(self.get("/hello.txt", "If-Unmodified-Since: " + HELLO_DATE).status, 200)
        self.assertEqual(self.get("/hello.txt", "If-Unmodified-Since: Sun, 13 Sep 2020 12:26:39 GMT"
                                  ).status, 412)

    def test_ranges(self):
        cases = {"bytes=0-4": (b"Hello", "bytes 0-4/21"), "bytes=7-": (HELLO[7:], "bytes 7-20/21"),
                 "bytes=-7": (HELLO[-7:], "bytes 14-20/21"), "bytes=5-1000": (HELLO[5:], "bytes 5-20/21"),
                 "bytes=-1000": (HELLO, "bytes 0-20/21"), "bytes=20-20": (b"\n", "bytes 20-20/21"),
                 "BYTES=0-0": (b"H", "bytes 0-0/21"), "bytes= 1-2 ,": (b"el", "bytes 1-2/21"),
                 "bytes=0-" + "9" * 30: (HELLO, "bytes 0-20/21")}
        app = wsgihost.StaticFiles(self.root)
        for value, (body, content_range) in cases.items():
            for validate in (True, False):      # the iterated wrapper, and the server's own
                with self.subTest(value=value, validate=validate):
                    # A second request on the connection: sending more than the
                    # range would have cost the connection (and this answer).
                    raw = run_raw(app, b"GET /hello.txt HTTP/1.1\r\nHost: a\r\nRange: %s\r\n\r\n"
                                       b"GET /sub/a.txt HTTP/1.1\r\nHost: a\r\n\r\n" % value.encode(),
                                  validate=validate)
                    r, after = split_responses(raw)
                    self.assertEqual((r.status, r.body), (206, body))
                    self.assertEqual(r.headers["content-range"], content_range)
                    self.assertEqual(r.headers["content-length"], str(len(body)))
                    self.assertEqual(r.headers["etag"], HELLO_ETAG)
                    self.assertEqual((after.status, after.body), (200, b"a\n"))

    def test_unsatisfiable_ranges_get_416(self):
        for value in ("bytes=21-", "bytes=100-200", "bytes=-0", "bytes=" + "9" * 30 + "-"):
            with self.subTest(value=value):
                r = self.get("/hello.txt", "Range: " + value)
                self.assertEqual(r.status, 416)
                self.assertEqual(r.headers["content-range"], "bytes */21")
        r = self.get("/empty.txt", "Range: bytes=0-")
        self.assertEqual((r.status, r.headers["content-range"]), (416, "bytes */0"))

    def test_several_or_invalid_ranges_get_everything(self):
        # RFC 9110 §14.2: a server may ignore Range; several ranges get the file whole.
        for value in ("bytes=0-1,5-6", "bytes=5-2", "items=0-1", "bytes=x-y", "bytes=", "bytes=-",
                      "bytes 0-1", "bytes=1-2-3"):
            with self.subTest(value=value):
                r = self.get("/hello.txt", "Range: " + value)
                self.assertEqual((r.status, r.body), (200, HELLO))
                self.assertNotIn("content-range", r.headers)
        r = self.get("/empty.txt", "Range: bytes=-5")
        self.assertEqual((r.status, r.body, r.headers["content-length"]), (200, b"", "0"))

    def test_if_range(self):
        for value in (HELLO_ETAG, HELLO_DATE):
            with self.subTest(value=value):
                r = self.get("/hello.txt", "Range: bytes=0-4", "If-Range: " + value)
                self.assertEqual((r.status, r.body), (206, b"Hello"))
        for value in ('"other"', "W/" + HELLO_ETAG, "Sun, 13 Sep 2020 12:26:41 GMT", "junk"):
            with self.subTest(value=value):
                r = self.get("/hello.txt", "Range: bytes=0-4", "If-Range: " + value)
                self.assertEqual((r.status, r.body), (200, HELLO))
        self.assertEqual(self.get("/hello.txt", "If-Range: " + HELLO_ETAG).status, 200)

    def test_a_range_of_a_binary_file(self):
        r = self.get("/data.bin", "Range: bytes=10-19")
        self.assertEqual((r.status, r.body), (206, bytes(range(10, 20))))
        self.assertEqual(r.headers["content-type"], "application/octet-stream")

    def test_directory_redirects_to_its_url_with_a_slash(self):
        for target, location in (("/sub", "/sub/"), ("/sub?x=1&y", "/sub/?x=1&y"),
                                 ("/sub/inner", "/sub/inner/"), ("//sub", "/sub/"),
                                 ("/sub//inner", "/sub/inner/")):
            with self.subTest(target=target):
                r = self.get(target)
                self.assertEqual((r.status, r.headers["location"]), (301, location))

    def test_directory_index_html(self):
        r = self.get("/site/")
        self.assertEqual((r.status, r.body), (200, b"<p>site index</p>\n"))
        self.assertEqual(r.headers["content-type"], "text/html; charset=utf-8")

    def test_directory_listing_when_enabled_is_escaped(self):
        r = self.get("/sub/", enable_directory_listing=True)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers["content-type"], "text/html; charset=utf-8")
        page = r.body.decode("utf-8")
        self.assertIn('<li><a href="%3Cb%3E%26%22q%22.txt">&lt;b&gt;&amp;&quot;q&quot;.txt</a></li>', page)
        self.assertIn('<li><a href="a%3Ab.txt">a:b.txt</a></li>', page)
        self.assertIn('<li><a href="inner/">inner/</a></li>', page)
        self.assertIn('<li><a href="../">../</a></li>', page)
        self.assertIn("<title>Index of /sub/</title>", page)
        self.assertNotIn("hidden", page)
        self.assertNotIn("<b>", page)
        root = self.get("/", enable_directory_listing=True).body.decode("utf-8")
        self.assertIn('<a href="hello.txt">hello.txt</a>', root)
        self.assertNotIn("../", root)
        self.assertNotIn("secret", root)
        shown = self.get("/sub/", enable_directory_listing=True, allow_hidden_files=True)
        self.assertIn(b'<a href=".hidden">.hidden</a>', shown.body)

    def test_directory_without_index_is_404_when_listing_is_off(self):
        for target in ("/sub/", "/"):
            with self.subTest(target=target):
                r = self.get(target)
                self.assertEqual(r.status, 404)
                self.assertNotIn(b"a.txt", r.body)

    def test_default_file_for_paths_that_name_nothing(self):
        for target in ("/no/such/route", "/sub/", "/nothing.js", "/hello.txt/"):
            with self.subTest(target=target):
                r = self.get(target, default_file="app.html")
                self.assertEqual((r.status, r.body), (200, b"<p>single page</p>\n"))
                self.assertEqual(r.headers["content-type"], "text/html; charset=utf-8")
        self.assertEqual(self.get("/hello.txt", default_file="app.html").body, HELLO)
        for target in ("/.secret", "/../outside.txt", "/out"):    # refused stays refused
            with self.subTest(target=target):
                self.assertEqual(self.get(target, default_file="app.html").status, 404)
        with self.assertRaises(ValueError):
            wsgihost.StaticFiles(self.root, default_file="../outside.txt")

    def test_hidden_files_refused_unless_allowed(self):
        for target in ("/.secret", "/.hiddendir/x.txt", "/sub/.hidden", "/%2esecret"):
            with self.subTest(target=target):
                r = self.get(target)
                self.assertEqual(r.status, 404)
                self.assertNotIn(b"TOP SECRET", r.body)
        r = self.get("/.secret", allow_hidden_files=True)
        self.assertEqual((r.status, r.body), (200, b"TOP SECRET hidden\n"))

    def test_symlinks_out_refused(self):
        for target in ("/out", "/outdir/passwd", "/sibling"):
            with self.subTest(target=target):
                r = self.get(target, allow_hidden_files=True, enable_directory_listing=True)
                self.assertEqual(r.status, 404)
                self.assertNotIn(b"TOP SECRET", r.body)
        self.assertEqual(self.get("/inlink").body, HELLO)

    def test_traversal_variants_through_the_server(self):
        for target in ("/../outside.txt", "/%2e%2e/outside.txt", "/sub/..%2f..%2foutside.txt",
                       "/..%5coutside.txt", "/sub/%2e%2e/%2e%2e/outdir/passwd", "/hello.txt%00",
                       "/%2e%2e%2f%2e%2e%2froot2/sibling.txt", "/.%2e/.%2e/outside.txt",
                       "/sub/../../outside.txt", "/%5C..%5Coutside.txt"):
            with self.subTest(target=target):
                raw = run_raw(wsgihost.StaticFiles(self.root, allow_hidden_files=True,
                                                   default_file="app.html"),
                              b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % target.encode())
                self.assertTrue(raw.startswith(b"HTTP/1.1 404 "), raw[:40])
                self.assertNotIn(b"TOP SECRET", raw)

    def test_media_types(self):
        cases = {"/weird.ZZQQ": "application/octet-stream", "/archive.tar.gz": "application/octet-stream",
                 "/LICENSE": "application/octet-stream", "/site/index.html": "text/html; charset=utf-8"}
        for target, media_type in cases.items():
            with self.subTest(target=target):
                self.assertEqual(self.get(target).headers["content-type"], media_type)
        self.assertIn(self.get("/script.js").headers["content-type"],
                      ("text/javascript; charset=utf-8", "application/javascript; charset=utf-8"))
        types = {".zzqq": "application/x-test", "gz": "application/gzip", ".html": "text/x-mine",
                 ".txt": "text/plain; charset=latin-1"}
        for target, media_type in (("/weird.ZZQQ", "application/x-test"),
                                   ("/archive.tar.gz", "application/gzip"),
                                   ("/site/index.html", "text/x-mine; charset=utf-8"),
                                   ("/hello.txt", "text/plain; charset=latin-1")):
            with self.subTest(target=target, mime_types=True):
                self.assertEqual(self.get(target, mime_types=types).headers["content-type"], media_type)

    def test_cache_timeout(self):
        self.assertEqual(self.get("/hello.txt", cache_timeout=60).headers["cache-control"],
                         "max-age=60, public")
        self.assertEqual(self.get("/hello.txt", cache_timeout=0).headers["cache-control"],
                         "max-age=0, public")
        r = self.get("/hello.txt", cache_timeout=None)
        self.assertEqual(r.status, 200)
        self.assertNotIn("cache-control", r.headers)
        r = self.get("/hello.txt", "If-None-Match: " + HELLO_ETAG, cache_timeout=None)
        self.assertEqual(r.status, 304)
        self.assertNotIn("cache-control", r.headers)

    def test_other_methods_get_405(self):
        for method in ("POST", "PUT", "DELETE", "OPTIONS"):
            with self.subTest(method=method):
                r = self.get("/hello.txt", "Content-Length: 0", method=method)
                self.assertEqual((r.status, r.headers["allow"]), (405, "GET, HEAD"))

    def test_a_file_named_as_a_directory_is_not_found(self):
        self.assertEqual(self.get("/hello.txt/").status, 404)
        self.assertEqual(self.get("/hello.txt").status, 200)

    def test_empty_file(self):
        r = self.get("/empty.txt")
        self.assertEqual((r.status, r.body, r.headers["content-length"]), (200, b"", "0"))

    @unittest.skipUnless(hasattr(os, "mkfifo"), "no FIFOs here")
    def test_a_fifo_is_not_opened_for_reading_nor_served(self):
        done = []
        thread = threading.Thread(target=lambda: done.append(self.get("/fifo")), daemon=True)
        thread.start()
        thread.join(10)
        self.assertEqual([r.status for r in done], [404])   # not stuck waiting for a writer

    def test_file_slice_reads_no_further_than_its_range(self):
        with open(os.path.join(self.root, "hello.txt"), "rb") as f:
            f.seek(7)
            piece = wsgihost._FileSlice(f, 12)
            self.assertEqual((piece.tell(), piece.read(3), piece.read(), piece.read(1)),
                             (7, b"sta", b"ti", b""))

    def test_parse_range_pure(self):
        self.assertEqual(wsgihost.parse_range("bytes=0-4", 21), (0, 4))
        self.assertEqual(wsgihost.parse_range("bytes=-5", 3), (0, 2))
        self.assertIsNone(wsgihost.parse_range("bytes=0-1, 3-4", 21))
        with self.assertRaises(HTTPError) as ctx:
            wsgihost.parse_range("bytes=30-", 21)
        self.assertEqual((ctx.exception.status, ctx.exception.detail),
                         (416, "the range 'bytes=30-' starts past the end of the 21 bytes"))

    def test_parse_http_date_pure(self):
        expected = 784111777     # RFC 9110 §5.6.7's example, in all three forms
        for value in ("Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT",
                      "Sun Nov  6 08:49:37 1994"):
            with self.subTest(value=value):
                self.assertEqual(wsgihost.parse_http_date(value), expected)
        for value in ("Sun, 06 Nov 1994 08:49:37 +0000", "Sun, 06 Nov 1994 08:49:37 GMT, x",
                      "Sun, 32 Nov 1994 08:49:37 GMT", "Sun, 06 Foo 1994 08:49:37 GMT", ""):
            with self.subTest(value=value):
                self.assertIsNone(wsgihost.parse_http_date(value))


class RedirectAndJSONTests(unittest.TestCase):

    def test_redirect_every_method_with_302(self):
        app = wsgihost.Redirect("https://example.com/new?a=1")
        for method in ("GET", "POST", "HEAD"):
            with self.subTest(method=method):
                r = one(app, b"%s /old/x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n" % method.encode())
                self.assertEqual((r.status, r.headers["location"]), (302, "https://example.com/new?a=1"))
                self.assertEqual(r.body, b"" if method == "HEAD" else
                                 b"302 Found\nsee https://example.com/new?a=1\n")

    def test_redirect_status(self):
        r = one(wsgihost.Redirect("/elsewhere", 308), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual((r.status, r.headers["location"]), (308, "/elsewhere"))

    def test_json_value(self):
        app = wsgihost.JSONValue({"b": [1, "\u00e9"], "a": None})
        r = one(app, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual((r.status, r.headers["content-type"]), (200, "application/json"))
        self.assertEqual(r.body, '{"b":[1,"\u00e9"],"a":null}'.encode("utf-8"))
        self.assertEqual(r.headers["content-length"], str(len(r.body)))
        self.assertNotIn("cache-control", r.headers)
        length = r.headers["content-length"]
        r = one(app, b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual((r.status, r.body, r.headers["content-length"]), (200, b"", length))
        r = one(app, b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual((r.status, r.headers["allow"]), (405, "GET, HEAD"))

    def test_json_options_and_odd_values(self):
        r = one(wsgihost.JSONValue({"b": 1, "a": 2}, prettify=True, discourage_caching=True),
                b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(r.body, b'{\n   "a": 2,\n   "b": 1\n}')
        self.assertEqual(r.headers["cache-control"], "no-store")
        self.assertEqual(one(wsgihost.JSONValue(None), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").body, b"null")
        lone = json.loads('"\\ud800x"')
        body = one(wsgihost.JSONValue(lone), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").body
        self.assertEqual((body, json.loads(body)), (b'"\\ud800x"', lone))


class StaticSocketTests(unittest.TestCase):
    """A static path beside an app on "/" (Django's STATIC_URL habit), over real sockets."""

    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        base = os.path.realpath(tmp.name)
        root = make_static_tree(base)
        self.big = random.Random(7).randbytes(1024 * 1024)
        with open(os.path.join(root, "big.bin"), "wb") as f:
            f.write(self.big)
        config = web_config({"/": {"type": "wsgi", "module": "test_wsgihost", "object": "hello_app"},
                             "static": {"type": "static", "directory": "root"}},
                            {"type": "tcp", "port": 0, "interface": "127.0.0.1"})
        self.node = wsgihost.Node(config, cbdir=base).start()
        self.addCleanup(self.node.stop, 1)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.node.transports[0].port, timeout=10)
        self.addCleanup(self.conn.close)

    def request(self, method, target, headers=None):
        self.conn.request(method, target, headers=headers or {})
        resp = self.conn.getresponse()
        return resp.status, dict((k.lower(), v) for k, v in resp.getheaders()), resp.read()

    def test_static_files_and_an_app_on_one_connection_with_sendfile(self):
        calls = []
        real_sendfile = os.sendfile

        def counting_sendfile(*args):
            calls.append(args[2:])          # (offset, count)
            return real_sendfile(*args)
        with unittest.mock.patch.object(os, "sendfile", counting_sendfile):
            status, headers, body = self.request("GET", "/static/hello.txt")
            self.assertEqual((status, body), (200, HELLO))
            sock = self.conn.sock
            status, headers, body = self.request("GET", "/static/big.bin",
                                                 {"Range": "bytes=1000-500999"})
            self.assertEqual((status, headers["content-range"]), (206, "bytes 1000-500999/1048576"))
            self.assertTrue(body == self.big[1000:501000], "wrong bytes in the range")
            status, headers, body = self.request("GET", "/static/big.bin")
            self.assertEqual((status, len(body)), (200, len(self.big)))
            self.assertTrue(body == self.big, "wrong bytes in the file")
        self.assertEqual(calls[0][0], 0)                # hello.txt, from its start
        self.assertIn(1000, [offset for offset, count in calls])
        status, headers, body = self.request("HEAD", "/static/big.bin")
        self.assertEqual((status, headers["content-length"], body), (200, "1048576", b""))
        self.assertEqual(self.request("GET", "/app/page")[::2], (200, b"Hello, World!"))
        status, headers, body = self.request("GET", "/static")
        self.assertEqual((status, headers["location"]), (301, "/static/"))
        self.assertEqual(self.request("GET", "/static/../static/.secret")[0], 404)
        self.assertIs(self.conn.sock, sock)             # one connection throughout


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
        self.assertConfigError(web_config({}, {"type": "tcp", "port": 1, "tls": {}}),
                               ".crossbar/config.json: workers[0].transports[0].endpoint.tls: TLS "
                               "endpoints are not supported yet")

    def test_unix_endpoint(self):
        paths = {"ws": {"type": "websocket"}}
        transport = wsgihost.build_transports(
            web_config(paths, {"type": "unix", "path": "run/app.sock", "backlog": 7}), "/srv/node")[0]
        self.assertEqual((transport.family, transport.host, transport.backlog),
                         (socket.AF_UNIX, "/srv/node/run/app.sock", 7))     # CBDIR-relative
        self.assertEqual(transport.address(), "unix:/srv/node/run/app.sock")
        self.assertEqual(transport.urls(), ["ws://unix:/srv/node/run/app.sock:/ws (websocket)"])
        self.assertConfigError(web_config(paths, {"type": "unix"}),
                               '.crossbar/config.json: workers[0].transports[0].endpoint: a "unix" '
                               'endpoint needs "path" (the socket file, relative to the node directory)')
        self.assertConfigError(web_config(paths, {"type": "unix", "path": ""}),
                               ".crossbar/config.json: workers[0].transports[0].endpoint.path: "
                               "expected a file path, got an empty string")
        self.assertConfigError(web_config(paths, {"type": "unix", "path": "a", "port": 80}),
                               '.crossbar/config.json: workers[0].transports[0].endpoint: unknown key '
                               '"port" (expected one of: backlog, path, type)')
        self.assertConfigError(web_config(paths, {"type": "pipe"}),
                               '.crossbar/config.json: workers[0].transports[0].endpoint.type: endpoint '
                               'type "pipe" is not supported (expected "tcp" or "unix")')

    def test_universal_transport_serves_its_web_part(self):
        web = {"paths": {"/": {"type": "wsgi", "module": "test_wsgihost", "object": "hello_app"}},
               "options": {"access_log": True}}
        universal = {"type": "universal", "endpoint": {"type": "tcp", "port": 8080},
                     "rawsocket": {}, "websocket": {"ws": {"type": "websocket"}}, "web": web}
        config = {"workers": [{"type": "router", "transports": [universal]}]}
        with self.assertLogs("wsgihost", "WARNING") as logs:
            transport, = wsgihost.build_transports(config, ".", ".crossbar/config.json")
        self.assertEqual((transport.port, transport.access_log), (8080, True))
        self.assertEqual(transport.urls(), ["http://0.0.0.0:8080/ (wsgi test_wsgihost:hello_app)"])
        self.assertEqual([r.getMessage() for r in logs.records], [
            '.crossbar/config.json: workers[0].transports[0].rawsocket: not served: WAMP over RawSocket '
            'needs a WAMP router, which wsgihost does not provide (the "web" part is served)',
            '.crossbar/config.json: workers[0].transports[0].websocket: not served: WAMP over WebSocket '
            'needs a WAMP router, which wsgihost does not provide (the "web" part is served)'])
        # Errors in the web part name its JSON path.
        web["paths"]["/"]["type"] = "wsgj"
        self.assertConfigError(config, '.crossbar/config.json: workers[0].transports[0].web.paths["/"]: '
                                       'unknown type "wsgj" (expected one of: json, path, redirect, '
                                       'static, websocket, wsgi)')
        self.assertConfigError(dict(config, workers=[{"type": "router", "transports": [
            dict(universal, web={"paths": {}, "endpoint": {}})]}]),
            '.crossbar/config.json: workers[0].transports[0].web: unknown key "endpoint" (expected one '
            'of: options, paths)')
        with self.assertLogs("wsgihost", "WARNING") as logs:
            self.assertConfigError({"workers": [{"type": "router", "transports": [
                {"type": "universal", "endpoint": {"type": "tcp", "port": 8080}, "rawsocket": {}}]}]},
                ".crossbar/config.json: workers: no web transport to serve")
        self.assertIn('workers[0].transports[0]: a universal transport without a "web" part: nothing '
                      'to serve', logs.output[-1])

    def test_nodeinfo_path_is_skipped_with_a_warning(self):
        with self.assertLogs("wsgihost", "WARNING") as logs:
            transport, = wsgihost.build_transports(web_config(
                {"info": {"type": "nodeinfo"}, "ws": {"type": "websocket"}}), ".", "c.json")
        self.assertEqual([path for path, _ in transport.root.services()], ["/ws"])
        self.assertEqual(logs.records[0].getMessage(), 'c.json: workers[0].transports[0].paths["info"]: '
                         'not served: "nodeinfo" is Crossbar\'s page about its own node')

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
                               'queue_timeout, shutdown_grace)')
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
                               'auto_ping_timeout, close_handshake_timeout, max_frame_size, max_message_size, '
                               'max_send_queue, protocols)')

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


class ServiceConfigTests(unittest.TestCase):
    """The static, redirect and json services in a config: what they build, their errors."""

    assertConfigError = ConfigTests.assertConfigError
    PATH = '.crossbar/config.json: workers[0].transports[0].paths["s"]'

    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.cbdir = os.path.realpath(tmp.name)
        self.web = os.path.join(self.cbdir, "web")
        os.mkdir(self.web)
        with open(os.path.join(self.web, "app.html"), "wb") as f:
            f.write(b"<p>app</p>")
        with open(os.path.join(self.cbdir, "file.txt"), "wb") as f:
            f.write(b"not a folder")

    def config(self, kind, **service):
        return web_config({"s": dict(service, type=kind)})

    def serve(self, config, request: bytes) -> Resp:
        transport = wsgihost.build_transports(config, self.cbdir)[0]
        sock = FakeSocket(request)
        transport.serve_connection(sock, REMOTE)
        return split_responses(bytes(sock.sent), [request.split(b" ", 1)[0].decode()])[0]

    def test_static_directory_relative_to_cbdir(self):
        r = self.serve(self.config("static", directory="web", options={"cache_timeout": None}),
                       b"GET /s/app.html HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual((r.status, r.body), (200, b"<p>app</p>"))
        self.assertNotIn("cache-control", r.headers)
        self.assertEqual(self.serve(self.config("static", directory=self.web),
                                    b"GET /s/app.html HTTP/1.1\r\nHost: a\r\n\r\n").status, 200)

    def test_static_directory_errors(self):
        self.assertConfigError(self.config("static", directory="nope"),
                               self.PATH + '.directory: "nope": no such directory (%s)'
                               % os.path.join(self.cbdir, "nope"), self.cbdir)
        self.assertConfigError(self.config("static", directory="file.txt"),
                               self.PATH + '.directory: "file.txt": no such directory (%s)'
                               % os.path.join(self.cbdir, "file.txt"), self.cbdir)
        self.assertConfigError(self.config("static", directory=5),
                               self.PATH + ".directory: expected a directory, got a number 5")
        self.assertConfigError(self.config("static", directory="web", package="p", resource="r"),
                               self.PATH + ': give "directory", or "package" and "resource", not both')
        for service in ({}, {"package": "json"}, {"resource": "x"}):
            with self.subTest(service=service):
                self.assertConfigError(self.config("static", **service), self.PATH +
                                       ': a "static" service needs "directory", or "package" and "resource"')
        self.assertConfigError(self.config("static", dir="web"),
                               self.PATH + ': unknown key "dir" (expected one of: directory, options, '
                               'package, resource, type)')

    def test_static_option_errors(self):
        cases = [
            ({"enable_directory_listing": "yes"}, '.options.enable_directory_listing: expected true or '
                                                  'false, got a string "yes"'),
            ({"allow_hidden_files": 1}, ".options.allow_hidden_files: expected true or false, got a "
                                        "number 1"),
            ({"cache_timeout": -1}, ".options.cache_timeout: must be 0 or more, got -1"),
            ({"cache_timeout": "1h"}, '.options.cache_timeout: expected a whole number of seconds or '
                                      'null, got a string "1h"'),
            ({"cache_timeout": 1.5}, ".options.cache_timeout: expected a whole number of seconds or "
                                     "null, got a number 1.5"),
            ({"mime_types": []}, '.options.mime_types: expected an object like {".svg": '
                                 '"image/svg+xml"}, got a list []'),
            ({"mime_types": {".svg": 5}}, '.options.mime_types: ".svg": expected a media type like '
                                          '"image/svg+xml", got 5'),
            ({"mime_types": {".svg": "svg"}}, '.options.mime_types: ".svg": expected a media type '
                                              'like "image/svg+xml", got "svg"'),
            ({"mime_types": {".x": "a/b\r\nX: y"}}, '.options.mime_types: ".x": expected a media type '
                                                    'like "image/svg+xml", got "a/b\\r\\nX: y"'),
            ({"default_file": "nope.html"}, '.options.default_file: "nope.html" is not a file in %s'
                                            % self.web),
            ({"default_file": "../file.txt"}, '.options.default_file: "../file.txt" is not a file in %s'
                                              % self.web),
            ({"default_file": 3}, ".options.default_file: expected a file name or null, got a number 3"),
            ({"listing": True}, '.options: unknown key "listing" (expected one of: allow_hidden_files, '
                                'cache_timeout, default_file, enable_directory_listing, mime_types)'),
            ([], ".options: expected an object, got a list []"),
        ]
        for options, message in cases:
            with self.subTest(options=options):
                self.assertConfigError(self.config("static", directory="web", options=options),
                                       self.PATH + message, self.cbdir)
        transport = wsgihost.build_transports(self.config("static", directory="web", options={
            "enable_directory_listing": True, "mime_types": {"svg": "image/svg+xml; charset=\"x\""},
            "cache_timeout": 0, "default_file": "app.html", "allow_hidden_files": False}), self.cbdir)[0]
        self.assertEqual(transport.resolve("/s/x")[0].app.default_file,
                         os.path.join(self.web, "app.html"))

    def test_static_package_and_resource(self):
        package = os.path.join(self.cbdir, "wsgihost_static_probe")
        os.makedirs(os.path.join(package, "assets"))
        open(os.path.join(package, "__init__.py"), "w").close()
        with open(os.path.join(package, "assets", "p.txt"), "wb") as f:
            f.write(b"from a package")
        sys.path.insert(0, self.cbdir)
        self.addCleanup(sys.path.remove, self.cbdir)
        self.addCleanup(sys.modules.pop, "wsgihost_static_probe", None)
        config = self.config("static", package="wsgihost_static_probe", resource="assets")
        r = self.serve(config, b"GET /s/p.txt HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual((r.status, r.body), (200, b"from a package"))
        self.assertConfigError(self.config("static", package="wsgihost_static_probe", resource="nope"),
                               self.PATH + '.resource: package "wsgihost_static_probe" has no folder '
                               '"nope" (looked in: %s)' % package)
        with self.assertRaises(wsgihost.ConfigError) as ctx:
            wsgihost.build_transports(self.config("static", package="no_such_pkg_xyz", resource="a"),
                                      ".", ".crossbar/config.json")
        self.assertTrue(str(ctx.exception).startswith(
            self.PATH + ': cannot import module "no_such_pkg_xyz": No module named'), str(ctx.exception))

    def test_redirect(self):
        r = self.serve(self.config("redirect", url="https://example.com/"),
                       b"GET /s/x HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual((r.status, r.headers["location"]), (302, "https://example.com/"))
        r = self.serve(self.config("redirect", url="/new", status=301), b"GET /s HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual((r.status, r.headers["location"]), (301, "/new"))
        cases = [
            ({}, ': a "redirect" service needs "url" (where to send the client)'),
            ({"url": 5}, ".url: expected a URL, got a number 5"),
            ({"url": "/a b"}, '.url: invalid URL "/a b": expected printable ASCII without spaces '
                              '(percent-encode the rest)'),
            ({"url": "/\u00e9"}, '.url: invalid URL "/\\u00e9": expected printable ASCII without spaces '
                                 '(percent-encode the rest)'),
            ({"url": ""}, '.url: invalid URL "": expected printable ASCII without spaces '
                          '(percent-encode the rest)'),
            ({"url": "/", "status": 200}, ".status: expected one of 301, 302, 303, 307, 308, got 200"),
            ({"url": "/", "status": "302"}, '.status: expected one of 301, 302, 303, 307, 308, got "302"'),
            ({"url": "/", "code": 301}, ': unknown key "code" (expected one of: status, type, url)'),
        ]
        for service, message in cases:
            with self.subTest(service=service):
                self.assertConfigError(self.config("redirect", **service), self.PATH + message)

    def test_json(self):
        r = self.serve(self.config("json", value={"ok": True}), b"GET /s HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual((r.status, r.body), (200, b'{"ok":true}'))
        r = self.serve(self.config("json", value=None), b"GET /s HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual((r.status, r.body), (200, b"null"))
        self.assertConfigError(self.config("json"),
                               self.PATH + ': a "json" service needs "value" (the JSON value to serve)')
        self.assertConfigError(self.config("json", value=1, options={"prettify": 1}),
                               self.PATH + ".options.prettify: expected true or false, got a number 1")
        self.assertConfigError(self.config("json", value=1, values=2),
                               self.PATH + ': unknown key "values" (expected one of: options, type, value)')
        with self.assertLogs("wsgihost", "WARNING") as logs:
            wsgihost.build_transports(self.config("json", value=1, options={"allow_cross_origin": True}))
        self.assertIn("'allow_cross_origin' is ignored by wsgihost", logs.output[0])

    def test_start_up_line_names_each_kind(self):
        node = wsgihost.Node(web_config({
            "/": {"type": "wsgi", "module": "test_wsgihost", "object": "hello_app"},
            "static": {"type": "static", "directory": "web"},
            "go": {"type": "redirect", "url": "/static/"},
            "info": {"type": "path", "paths": {"v": {"type": "json", "value": [1]}}}}), self.cbdir)
        self.assertEqual(node.urls(), ["http://0.0.0.0:0/ (wsgi test_wsgihost:hello_app)",
                                       "http://0.0.0.0:0/go (redirect)",
                                       "http://0.0.0.0:0/info/v (json)",
                                       "http://0.0.0.0:0/static (static)"])


@unittest.skipUnless(hasattr(socket, "AF_UNIX"), "no unix sockets on this platform")
class UnixSocketTests(unittest.TestCase):
    """{"type": "unix", "path": ...} endpoints: CBDIR-relative, stale files removed, live ones kept."""

    def setUp(self):
        self.cbdir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.cbdir)
        self.path = os.path.join(self.cbdir, "run", "app.sock")
        os.mkdir(os.path.dirname(self.path))

    def start(self):
        config = web_config({"/": {"type": "wsgi", "module": "test_wsgihost", "object": "environ_app"}},
                            {"type": "unix", "path": "run/app.sock"})
        node = wsgihost.Node(config, self.cbdir).start()
        self.addCleanup(node.stop, 1)
        return node

    def get(self, path="/x") -> Resp:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(self.path)
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n" % path.encode())
            return split_responses(recv_until_closed(sock))[0]

    def test_served_with_a_local_remote_addr(self):
        node = self.start()
        self.assertEqual(node.urls(), ["http://unix:%s:/ (wsgi test_wsgihost:environ_app)" % self.path])
        resp = self.get()
        self.assertEqual(resp.status, 200)
        environ = json.loads(resp.body)
        self.assertEqual({k: environ[k] for k in ("REMOTE_ADDR", "REMOTE_PORT", "SERVER_NAME",
                                                   "SERVER_PORT", "PATH_INFO", "HTTP_HOST")},
                         {"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "0", "SERVER_NAME": "localhost",
                          "SERVER_PORT": "80", "PATH_INFO": "/x", "HTTP_HOST": "app"})
        node.stop(1)
        self.assertFalse(os.path.exists(self.path))     # the socket file goes with the server

    def test_stale_socket_file_is_replaced(self):
        dead = socket.socket(socket.AF_UNIX)
        dead.bind(self.path)            # bound, never listening: what a killed server leaves
        dead.close()
        self.assertTrue(os.path.exists(self.path))
        self.start()
        self.assertEqual(self.get().status, 200)

    def test_live_socket_is_an_error(self):
        live = socket.socket(socket.AF_UNIX)
        self.addCleanup(live.close)
        live.bind(self.path)
        live.listen()
        with self.assertRaises(OSError) as ctx:
            self.start()
        self.assertEqual(str(ctx.exception.strerror), "cannot listen on unix:%s: Address already in "
                         "use (a server answers on this socket)" % self.path)
        self.assertTrue(os.path.exists(self.path))       # still the other server's

    def test_a_file_that_is_not_a_socket_is_left_alone(self):
        with open(self.path, "w") as f:
            f.write("data")
        with self.assertRaises(OSError) as ctx:
            self.start()
        self.assertEqual(ctx.exception.strerror, "cannot listen on unix:%s: a file that is not a "
                         "socket is there (not removed)" % self.path)
        with open(self.path) as f:
            self.assertEqual(f.read(), "data")


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

    def test_check_finds_the_node_directory_of_a_project(self):
        # As a plain run does: DIR/.crossbar/config.json, else DIR/config.json.
        status, out, err = self.run_main("--check", os.path.join(HERE, "examples", "hello"))
        self.assertEqual((status, out), (0, "ok: 1 transports, 3 paths\n"))

    def test_app_and_config_together_is_an_error(self):
        hello = os.path.join(HERE, "examples", "hello")
        status, out, err = self.run_main("--app", "test_wsgihost:hello_app", hello)
        self.assertEqual((status, err), (2, "wsgihost: --app: an app and a config file (%s) given: "
                                            "serve one or the other\n" % hello))
        status, out, err = self.run_main("test_wsgihost:hello_app", "--app", "test_wsgihost:environ_app")
        self.assertEqual((status, err), (2, "wsgihost: --app: two apps given (test_wsgihost:environ_app "
                                            "and test_wsgihost:hello_app): serve one\n"))

    def test_listening_flags_belong_to_an_app(self):
        hello = os.path.join(HERE, "examples", "hello")
        for flags in (["--bind", "127.0.0.1:1"], ["--port", "1"], ["--host", "::1"]):
            status, out, err = self.run_main(hello, *flags)
            self.assertEqual((status, err), (2, "wsgihost: %s: applies to an app given on the command "
                                                "line; a config file names its own endpoints\n" % flags[0]))
        status, out, err = self.run_main("test_wsgihost:hello_app", "--bind", "127.0.0.1:1", "--port", "2")
        self.assertEqual((status, err), (2, "wsgihost: --bind: give --bind, or --host and --port, not both\n"))
        status, out, err = self.run_main("test_wsgihost:hello_app", "--bind", "localhost")
        self.assertEqual((status, err), (2, "wsgihost: --bind: expected HOST:PORT, [IPV6]:PORT or "
                                            "unix:PATH, got 'localhost'\n"))

    def test_app_given_as_gunicorn_takes_it(self):
        status, out, err = self.run_main("--check", "test_wsgihost:hello_app", "-b", "127.0.0.1:8000",
                                         "--bind", "[::1]:8000", "--bind", "unix:app.sock")
        self.assertEqual((status, out, err), (0, "ok: 3 transports, 3 paths\n", ""))
        status, out, err = self.run_main("--check", "no_such_module_here:app")
        self.assertEqual(status, 2)
        self.assertTrue(err.startswith('--app: workers[0].transports[0].paths["/"]: cannot import module '
                                       '"no_such_module_here"'), err)

    def test_workers_must_be_a_positive_number(self):
        for value in ("0", "-1", "two"):
            status, out, err = self.run_main("test_wsgihost:hello_app", "--workers", value)
            self.assertEqual(status, 2)
            self.assertIn("argument -w/--workers: expected a number of processes (1 or more), got %r"
                          % value, err)


class ParseBindTests(unittest.TestCase):

    def test_addresses(self):
        self.assertEqual(wsgihost.parse_bind("127.0.0.1:8000"),
                         {"type": "tcp", "interface": "127.0.0.1", "port": 8000})
        self.assertEqual(wsgihost.parse_bind("[::1]:8000"),
                         {"type": "tcp", "interface": "::1", "port": 8000, "version": 6})
        self.assertEqual(wsgihost.parse_bind(":80"), {"type": "tcp", "interface": "", "port": 80})
        self.assertEqual(wsgihost.parse_bind("unix:/run/app.sock"), {"type": "unix", "path": "/run/app.sock"})
        self.assertEqual(wsgihost.parse_bind("unix:app.sock"), {"type": "unix", "path": "app.sock"})

    def test_errors(self):
        for text, message in [
                ("localhost", "expected HOST:PORT, [IPV6]:PORT or unix:PATH, got 'localhost'"),
                ("host:http", "expected HOST:PORT, [IPV6]:PORT or unix:PATH, got 'host:http'"),
                ("host:", "expected HOST:PORT, [IPV6]:PORT or unix:PATH, got 'host:'"),
                ("host:+80", "expected HOST:PORT, [IPV6]:PORT or unix:PATH, got 'host:+80'"),
                ("host:70000", "port 70000 out of range (0-65535) in 'host:70000'"),
                ("::1:8000", "an IPv6 address goes in brackets, as in [::1]:8000"),
                ("unix:", "unix: needs the socket file's path, as in unix:/run/app.sock")]:
            with self.assertRaises(ValueError) as ctx:
                wsgihost.parse_bind(text)
            self.assertEqual(str(ctx.exception), message)


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


    def test_crossbar_init_config_serves_its_web_part(self):
        """The node config ``crossbar init`` wrote from July 2016 to February 2019 (Crossbar's
        crossbar/node/templates/default/.crossbar/config.json): a universal transport.
        Only the interface is added, so that the test listens on loopback only."""
        project = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, project)
        os.mkdir(os.path.join(project, "web"))
        with open(os.path.join(project, "web", "README.md"), "w") as f:
            f.write("Put your web assets here.\n")
        port = free_port()
        anonymous = {"name": "anonymous", "permissions": [{
            "uri": "", "match": "prefix", "cache": True,
            "allow": {"call": True, "register": True, "publish": True, "subscribe": True},
            "disclose": {"caller": False, "publisher": False}}]}
        config = {
            "$schema": "https://raw.githubusercontent.com/crossbario/crossbar/master/crossbar.json",
            "version": 2,
            "controller": {},
            "workers": [{
                "type": "router",
                "realms": [{"name": "realm1", "roles": [anonymous]}],
                "transports": [{
                    "type": "universal",
                    "endpoint": {"type": "tcp", "port": port, "interface": "127.0.0.1"},
                    "rawsocket": {},
                    "websocket": {"ws": {"type": "websocket"}},
                    "web": {"paths": {
                        "/": {"type": "static", "directory": "../web",
                              "options": {"enable_directory_listing": True}},
                        "info": {"type": "nodeinfo"}}}}]}]}
        os.mkdir(os.path.join(project, ".crossbar"))
        write_json(os.path.join(project, ".crossbar", "config.json"), config)
        proc = self.start([], project)          # as "crossbar start" would be run
        self.wait_for_port(port, proc)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/")
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        self.assertIn(b'<a href="README.md">README.md</a>', resp.read())
        conn.request("GET", "/README.md")
        self.assertEqual(conn.getresponse().read(), b"Put your web assets here.\n")
        conn.close()
        proc.terminate()
        out, err = proc.communicate(timeout=30)
        self.assertEqual(proc.returncode, 0, err)
        err = err.decode()
        where = ".crossbar/config.json: workers[0]"
        for warning in ["%s: 'realms' is ignored by wsgihost" % where,
                        "%s.transports[0].rawsocket: not served: WAMP over RawSocket" % where,
                        "%s.transports[0].websocket: not served: WAMP over WebSocket" % where,
                        '%s.transports[0].web.paths["info"]: not served: "nodeinfo"' % where,
                        "serving http://127.0.0.1:%d/ (static" % port]:
            self.assertIn(warning, err)

    def test_app_on_a_unix_socket_and_tcp_with_access_log(self):
        run = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, run)
        port = free_port()
        proc = self.start(["test_wsgihost:environ_app", "--bind", "unix:" + os.path.join(run, "app.sock"),
                           "-b", "127.0.0.1:%d" % port, "--access-log"], HERE)
        self.wait_for_port(port, proc)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(os.path.join(run, "app.sock"))
            sock.sendall(b"GET /via-unix HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
            environ = json.loads(split_responses(recv_until_closed(sock))[0].body)
        self.assertEqual((environ["REMOTE_ADDR"], environ["PATH_INFO"]), ("127.0.0.1", "/via-unix"))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/via-tcp")
        self.assertEqual(json.loads(conn.getresponse().read())["PATH_INFO"], "/via-tcp")
        conn.close()
        proc.terminate()
        out, err = proc.communicate(timeout=30)
        self.assertEqual(proc.returncode, 0, err)
        err = err.decode()
        self.assertIn("serving http://unix:%s/app.sock:/ (wsgi test_wsgihost:environ_app)" % run, err)
        self.assertRegex(err, r'127\.0\.0\.1 - - \[[^]]+\] "GET /via-unix HTTP/1\.1" 200 \d+ "-" "-"')
        self.assertRegex(err, r'127\.0\.0\.1 - - \[[^]]+\] "GET /via-tcp HTTP/1\.1" 200 \d+ "-" ')
        self.assertFalse(os.path.exists(os.path.join(run, "app.sock")))


def module_identity_app(environ, start_response):
    import wsgihost as imported
    start_response("200 OK", TEXT)
    return [str(imported is sys.modules["__main__"]).encode()]


# -----------------------------------------------------------------------------
# 13. Worker processes: the supervisor
# -----------------------------------------------------------------------------

def pid_app(environ, start_response):
    """For the worker tests: which process answers. A POST's body is a request
    id; the app appends it to $WSGIHOST_TEST_LOG as it starts on it, then takes
    $WSGIHOST_TEST_DELAY seconds."""
    body = environ["wsgi.input"].read()
    if body:
        fd = os.open(os.environ["WSGIHOST_TEST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, body + b"\n")
        finally:
            os.close(fd)
        time.sleep(float(os.environ.get("WSGIHOST_TEST_DELAY", "0")))
    reply = json.dumps({"pid": os.getpid(), "multiprocess": environ["wsgi.multiprocess"],
                        "id": body.decode()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(reply)))])
    return [reply]


def get_json(port: int, path: str = "/") -> dict:
    """GET on a new connection; the JSON answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, (resp.status, body)
        return json.loads(body)
    finally:
        conn.close()


class KeepAliveLoad:
    """Client threads sending numbered POSTs on keep-alive connections, and what became of each.

    A request sent on a connection that the server closes before any answer
    (it was stopping, and closed the connections waiting for a request) is
    sent again on a new one, as RFC 9112 §9.3.1 lets a client do; the app's
    log shows whether it had reached the app (it must not have). A new
    connection that cannot be made is "refused", and ends that client.
    """

    def __init__(self, port: int, clients: int = 6):
        self.port = port
        self.answered = {}              # id -> (pid, time.monotonic() of the answer)
        self.retried = 0
        self.refused = []               # (id, error)
        self.errors = []                # wrong answers, or a failure once an answer had begun
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(n,), daemon=True)
                        for n in range(clients)]
        for thread in self.threads:
            thread.start()

    def _client(self, n: int):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            for i in range(100000):
                if self.stopping.is_set() or not self._send(conn, "%d-%d" % (n, i)):
                    return
        finally:
            conn.close()

    def _send(self, conn, rid: str) -> bool:
        for _ in range(100):
            if conn.sock is None:
                try:
                    conn.connect()
                except OSError as exc:
                    with self.lock:
                        self.refused.append((rid, repr(exc)))
                    return False
            try:
                conn.request("POST", "/", body=rid.encode())
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException):
                conn.close()                # closed before any answer: send it again
                with self.lock:
                    self.retried += 1
                continue
            try:
                answer = json.loads(resp.read())
                if resp.status != 200 or answer["id"] != rid:
                    raise ValueError((resp.status, answer))
            except Exception as exc:
                with self.lock:
                    self.errors.append((rid, repr(exc)))
                return False
            with self.lock:
                self.answered[rid] = (answer["pid"], time.monotonic())
            return True
        with self.lock:
            self.errors.append((rid, "closed before any answer 100 times"))
        return False

    def finish(self, timeout: float = 60):
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "clients still running"

    def pids(self, since: float = 0.0) -> set:
        with self.lock:
            return {pid for pid, when in self.answered.values() if when > since}


class WorkerProcessTests(unittest.TestCase):
    """--workers N, shared router workers, and the supervisor's signals, through the command line."""

    def start(self, args, port: int, cwd=HERE, delay=0.0, wait=True):
        """The command line in a subprocess serving on ``port`` (waits until GET / is
        answered, unless not ``wait``), in a process group of its own as from a
        terminal; stderr goes to a file."""
        self.port = port
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.log_path = os.path.join(self.tmp, "processed.log")
        self.err_path = os.path.join(self.tmp, "stderr.txt")
        env = dict(os.environ, WSGIHOST_TEST_LOG=self.log_path, WSGIHOST_TEST_DELAY=str(delay))
        with open(self.err_path, "wb") as err:
            proc = subprocess.Popen([sys.executable, os.path.join(HERE, "wsgihost.py")] + args,
                                    cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True)
        self.addCleanup(self.kill_all, proc)
        if wait:
            self.wait_for(lambda: proc.poll() is not None or _answers(port) is not None, "the server")
            self.assertIsNone(proc.poll(), self.stderr())
        return proc

    def kill_all(self, proc):
        """After a failed test: TERM (the supervisor passes it on), then KILL."""
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def stderr(self) -> str:
        with open(self.err_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_for(self, condition, what: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                self.fail("%s: not within %g s; stderr:\n%s" % (what, timeout, self.stderr()))
            time.sleep(0.05)

    def processed(self) -> list:
        """The request ids the app started on, in every worker."""
        try:
            with open(self.log_path) as f:
                return f.read().split()
        except FileNotFoundError:
            return []

    def pids_seen(self, count: int, timeout: float = 60) -> set:
        """Fresh connections until ``count`` different worker pids have answered."""
        pids = set()
        deadline = time.monotonic() + timeout
        while len(pids) < count:
            if time.monotonic() > deadline:
                self.fail("only pids %s answered within %g s; stderr:\n%s" % (pids, timeout, self.stderr()))
            answer = get_json(self.port)
            self.assertIs(answer["multiprocess"], True)
            pids.add(answer["pid"])
        return pids

    def stop(self, proc):
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(60), 0, self.stderr())

    def start_app(self, *args, delay=0.0, cwd=HERE):
        """``wsgihost APP -w 2 -b 127.0.0.1:PORT``, as a gunicorn user types it."""
        port = free_port()
        return self.start(list(args) + ["--workers", "2", "--bind", "127.0.0.1:%d" % port], port,
                          cwd, delay)

    def test_two_workers_answer_from_two_processes(self):
        proc = self.start_app("test_wsgihost:pid_app")
        pids = self.pids_seen(2)
        self.assertNotIn(proc.pid, pids)
        self.stop(proc)
        err = self.stderr()
        self.assertIn("[%d] supervisor: starting 2 worker processes" % proc.pid, err)
        for pid in pids:                # each worker logs with its pid
            self.assertIn("[%d] serving http://127.0.0.1:%d/ (wsgi test_wsgihost:pid_app)"
                          % (pid, self.port), err)
        self.assertIn("[%d] SIGTERM: stopping the workers" % proc.pid, err)

    def test_ctrl_c_reaches_every_process_and_stops_them_gracefully(self):
        proc = self.start_app("test_wsgihost:pid_app")
        pids = self.pids_seen(2)
        os.killpg(proc.pid, signal.SIGINT)          # what a terminal does on Ctrl-C
        self.assertEqual(proc.wait(60), 0, self.stderr())
        self.assertFalse(any(_alive(pid) for pid in pids))
        self.assertIn("[%d] SIGINT: stopping the workers" % proc.pid, self.stderr())

    def test_workers_stop_when_the_supervisor_is_killed(self):
        proc = self.start_app("test_wsgihost:pid_app")
        pids = self.pids_seen(2)
        proc.kill()
        proc.wait(30)
        self.wait_for(lambda: not any(_alive(pid) for pid in pids), "the workers' exit")
        for pid in pids:
            self.assertIn("[%d] the supervisor is gone: stopping" % pid, self.stderr())

    def test_a_killed_worker_is_replaced_and_the_node_keeps_serving(self):
        proc = self.start_app("test_wsgihost:pid_app")
        pids = self.pids_seen(2)
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        seen = set()
        deadline = time.monotonic() + 60
        while not seen - pids:          # every request is answered meanwhile
            self.assertLess(time.monotonic(), deadline, "no new worker; stderr:\n" + self.stderr())
            seen.add(get_json(self.port)["pid"])
        self.assertNotIn(victim, seen)
        self.assertIn("worker %d was killed by SIGKILL; starting another in" % victim, self.stderr())
        self.stop(proc)

    def test_sigterm_under_load_loses_no_request(self):
        proc = self.start_app("test_wsgihost:pid_app", delay=0.2)
        load = KeepAliveLoad(self.port)
        self.addCleanup(load.stopping.set)
        self.wait_for(lambda: len(load.answered) >= 30, "30 answers")
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(60), 0, self.stderr())
        load.finish()
        processed = self.processed()
        self.assertEqual(len(processed), len(set(processed)))       # each reached the app once
        self.assertEqual(set(processed), set(load.answered))        # and each that did was answered
        self.assertEqual(load.errors, [])
        self.assertTrue(load.pids(since=signalled), "no request in flight finished after SIGTERM")
        self.assertIn("SIGTERM: stopping the workers (requests in flight may finish)", self.stderr())

    def test_sighup_under_load_replaces_the_workers_and_refuses_nothing(self):
        proc = self.start_app("test_wsgihost:pid_app", delay=0.02)
        load = KeepAliveLoad(self.port)
        self.addCleanup(load.stopping.set)
        old = self.pids_seen(2)
        self.wait_for(lambda: len(load.answered) >= 50, "50 answers")
        proc.send_signal(signal.SIGHUP)
        self.wait_for(lambda: "reloaded: workers" in self.stderr(), "the reload")
        self.wait_for(lambda: not any(_alive(pid) for pid in old), "the old workers' exit")
        gone = time.monotonic()
        count = len(load.answered)
        self.wait_for(lambda: len(load.answered) >= count + 50, "50 answers after the reload")
        load.finish()
        self.assertTrue(load.pids(since=gone))
        self.assertFalse(self.pids_seen(2) & old)            # two new workers serve
        self.assertEqual(load.refused, [])
        self.assertEqual(load.errors, [])
        processed = self.processed()
        self.assertEqual(len(processed), len(set(processed)))       # a retried request had not arrived
        self.assertEqual(set(processed), set(load.answered))
        self.stop(proc)

    def test_a_reload_that_fails_keeps_the_workers(self):
        app_dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, app_dir)
        module = os.path.join(app_dir, "versioned.py")
        write_module(module, "v1")
        proc = self.start_app("versioned:app", cwd=app_dir)
        before = self.pids_seen(2)
        write_module(module, "v2", broken=True)
        proc.send_signal(signal.SIGHUP)
        self.wait_for(lambda: "reload failed" in self.stderr(), "the failed reload")
        self.assertIn('--app: workers[0].transports[0].paths["/"]: cannot import module "versioned": '
                      'SyntaxError', self.stderr())
        self.assertEqual(self.pids_seen(2), before)         # the same workers, still serving
        self.assertEqual(get_json(self.port)["version"], "v1")
        write_module(module, "v3")
        proc.send_signal(signal.SIGHUP)
        self.wait_for(lambda: (_answers(self.port) or {}).get("version") == "v3", "v3 served")
        self.stop(proc)

    def test_reload_flag_follows_module_and_config_changes(self):
        project = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, project)
        module = os.path.join(project, "versioned.py")
        write_module(module, "v1")
        os.mkdir(os.path.join(project, ".crossbar"))
        config_path = os.path.join(project, ".crossbar", "config.json")
        paths = {"/": {"type": "wsgi", "module": "versioned", "object": "app"}}
        config = web_config(paths, {"type": "tcp", "port": free_port(), "interface": "127.0.0.1"})
        config["workers"][0]["options"] = {"pythonpath": [".."]}
        write_json(config_path, config)
        proc = self.start(["--reload"], config["workers"][0]["transports"][0]["endpoint"]["port"],
                          cwd=project)
        self.assertEqual(get_json(self.port)["version"], "v1")
        write_module(module, "v2")
        self.wait_for(lambda: (_answers(self.port) or {}).get("version") == "v2", "v2 served")
        self.assertIn("versioned.py changed: asking for a reload", self.stderr())
        paths["json"] = {"type": "json", "value": {"version": "from the config"}}
        write_json(config_path, config)
        self.wait_for(lambda: _answers(self.port, "/json") == {"version": "from the config"},
                      "the new path")
        self.stop(proc)

    def test_workers_on_ipv6_loopback(self):
        try:
            with socket.socket(socket.AF_INET6) as probe:
                probe.bind(("::1", 0))
                port = probe.getsockname()[1]
        except OSError:
            self.skipTest("no IPv6 loopback here")
        proc = self.start(["test_wsgihost:environ_app", "-w", "2", "-b", "[::1]:%d" % port], port,
                          wait=False)
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("::1", port, timeout=30)
                conn.request("GET", "/six")
                environ = json.loads(conn.getresponse().read())
                conn.close()
                break
            except OSError:
                self.assertLess(time.monotonic(), deadline, self.stderr())
                self.assertIsNone(proc.poll(), self.stderr())
                time.sleep(0.1)
        self.assertEqual((environ["REMOTE_ADDR"], environ["PATH_INFO"]), ("::1", "/six"))
        self.assertIn("serving http://[::1]:%d/ (wsgi test_wsgihost:environ_app)" % port, self.stderr())
        self.stop(proc)

    def test_router_workers_sharing_a_port_run_as_processes(self):
        node_dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, node_dir)
        port = free_port()
        transport = {"type": "web", "endpoint": {"type": "tcp", "port": port, "interface": "127.0.0.1",
                                                 "shared": True},
                     "paths": {"/": {"type": "wsgi", "module": "test_wsgihost", "object": "pid_app"}}}
        write_json(os.path.join(node_dir, "config.json"), {"workers": [
            {"type": "router", "options": {"pythonpath": [HERE]}, "transports": [transport]},
            {"type": "router", "options": {"pythonpath": [HERE]}, "transports": [transport]}]})
        proc = self.start([node_dir], port)
        self.pids_seen(2)
        self.assertIn("supervisor: starting 2 worker processes", self.stderr())
        self.stop(proc)

    def test_bad_config_is_one_line_and_exit_2_before_any_worker(self):
        proc = self.start(["test_wsgihost:no_such_app", "-w", "2"], 0, wait=False)
        self.assertEqual(proc.wait(60), 2)
        self.assertEqual(self.stderr(), '--app: workers[0].transports[0].paths["/"]: module '
                                        '"test_wsgihost" has no object "no_such_app"\n')

    def test_port_in_use_is_exit_1(self):
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            proc = self.start(["test_wsgihost:pid_app", "-w", "2", "-b", "127.0.0.1:%d" % port], port,
                              wait=False)
            self.assertEqual(proc.wait(60), 1)
        self.assertEqual(self.stderr(), "cannot listen on 127.0.0.1:%d: Address already in use\n" % port)


def _alive(pid: int) -> bool:
    """Whether a process runs (one that exited but is not reaped yet does not)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _answers(port: int, path: str = "/"):
    """The JSON a GET gets, or None if nothing answers yet."""
    try:
        return get_json(port, path)
    except (OSError, AssertionError):
        return None


def write_module(path: str, version: str, broken: bool = False):
    """A WSGI app answering {"version": version}, with an mtime that differs from the last."""
    with open(path, "w") as f:
        f.write("import json, os\n"
                "def app(environ, start_response):\n"
                "    start_response('200 OK', [('Content-Type', 'application/json')])\n"
                "    return [json.dumps({'version': %r, 'pid': os.getpid(),\n"
                "                        'multiprocess': environ['wsgi.multiprocess']}).encode()]\n"
                % version)
        if broken:
            f.write("def broken(:\n")
    _bump_mtime(path)


_MTIME_STEPS = iter(range(2, 10**6, 2))


def _bump_mtime(path: str):
    """A later mtime than the file's last, by whole seconds (mtimes can be coarse)."""
    stamp = time.time() + next(_MTIME_STEPS)
    os.utime(path, (stamp, stamp))


def write_json(path: str, value):
    with open(path, "w") as f:
        json.dump(value, f)
    _bump_mtime(path)


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
