"""Tests for wsgihost, ordered like the module. Standard library only.

Run: python test_wsgihost.py      (or: python -m unittest test_wsgihost)

Most tests are pure: raw request bytes in, values or exact bytes out, through
a fake socket -- no network. Then a few socket tests run the real server on
port 0 in a thread, and a subprocess runs ``python wsgihost.py CONFIG``.
Tests that need Flask, Django, Pyramid, Bottle, Falcon, Hypothesis or Chromium
skip without them; with WSGIHOST_REQUIRE_ALL=1 (as in .ci/run) a skip fails the run.
"""

import base64
import collections
import contextlib
import hashlib
import http.client
import importlib.util
import io
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import unittest
import warnings
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

    def test_raw_byte_over_0x7f_in_target_rejected_rfc9112_3_2(self):
        # RFC 9112 §3.2 and RFC 3986 §2: the request target is ASCII, other bytes
        # are percent-encoded; gunicorn and waitress refuse raw ones with 400 too.
        for target in (b"/\xe2\x82\xac", b"/caf\xe9", b"/?q=\x80", b"/\xff"):
            with self.subTest(target=target):
                self.assertIn("expected ASCII", self.assertRejected(b"GET " + target + b" HTTP/1.1").detail)
        resp = one(hello_app, b"GET /caf\xe9 HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual((resp.status, resp.headers["connection"]), (400, "close"))
        # Percent-encoded, the same bytes are welcome (and decoded into PATH_INFO, see EnvironTests).
        self.assertEqual(parse_request_head(b"GET /%E2%82%AC HTTP/1.1").target, "/%E2%82%AC")

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

    def test_absolute_form_without_host_rejected_rfc9112_3_2(self):
        # RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to
        # any HTTP/1.1 request message that lacks a Host header field" -- a client MUST
        # send Host with an absolute-form target too -- "and to any request message
        # that contains ... a Host header field with an invalid field value".
        resp = one(hello_app, b"GET http://example.com/ HTTP/1.1\r\n\r\n")
        self.assertEqual((resp.status, resp.headers["connection"]), (400, "close"))
        self.assertIn(b"without Host", resp.body)
        self.assertEqual(one(hello_app, b"GET http://example.com/ HTTP/1.1\r\nHost: a/b\r\n\r\n").status,
                         400)
        self.assertEqual(one(hello_app, b"GET http://example.com/ HTTP/1.0\r\n\r\n").status, 200)
        # The pure decision handle_request takes: RFC 9112 §3.2.2, the target's authority wins.
        self.assertEqual(wsgihost.parse_host((1, 1), "ignored", "example.com"), "example.com")
        self.assertEqual(wsgihost.parse_host((1, 0), None, "example.com"), "example.com")
        self.assertIsNone(wsgihost.parse_host((1, 0), None, None))
        with self.assertRaises(HTTPError) as ctx:
            wsgihost.parse_host((1, 1), None, "example.com")
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
        for value in (b"chunked, gzip", b"gzip", b"identity", b"chunked, chunked", b"", b",", b" , ,",
                      b"chunked, ,chunked"):
            with self.subTest(value=value):
                self.assertRejected(b"\r\nTransfer-Encoding: " + value)

    def test_transfer_encoding_split_over_two_lines_rejected(self):
        self.assertRejected(b"\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked")

    def test_unknown_coding_before_chunked_not_implemented(self):
        self.assertRejected(b"\r\nTransfer-Encoding: gzip, chunked", 501)

    def test_empty_transfer_encoding_list_elements_ignored_rfc9110_5_6_1(self):
        # RFC 9110 §5.6.1: "a recipient MUST parse and ignore a reasonable number of
        # empty list elements": ",chunked" and "chunked, " are plain chunked.
        for value in (b",chunked", b"chunked, ", b"chunked,", b" , chunked ,,"):
            with self.subTest(value=value):
                self.assertIsNone(self.framing(b"\r\nTransfer-Encoding: " + value))
        self.assertRejected(b"\r\nTransfer-Encoding: ,gzip, ,chunked", 501)
        env = get_environ(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,chunked\r\n\r\n"
                          b"5\r\nhello\r\n0\r\n\r\n")
        self.assertEqual(env["body"], "hello")

    def test_long_content_length_digit_strings_accepted_rfc9110_8_6(self):
        # RFC 9110 §8.6: Content-Length = 1*DIGIT -- any number of digits; only a
        # value too large to hold is refused (19 significant digits: over 2**63).
        self.assertEqual(self.framing(b"\r\nContent-Length: 00000000000000000005"), 5)
        self.assertEqual(self.framing(b"\r\nContent-Length: " + b"0" * 5000 + b"7"), 7)   # no int() limit
        self.assertEqual(self.framing(b"\r\nContent-Length: 0" + b"9" * 18), 10 ** 18 - 1)
        self.assertRejected(b"\r\nContent-Length: 0" + b"1" + b"0" * 18)                   # 19 digits
        env = get_environ(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 00000000000000000005"
                          b"\r\n\r\nhello")
        self.assertEqual(env["body"], "hello")

    def test_transfer_encoding_in_http_1_0_rejected(self):
        self.assertRejected(b"\r\nTransfer-Encoding: chunked", 400, b"1.0")


class ParseChunkSizeTests(unittest.TestCase):

    def test_sizes(self):
        self.assertEqual(wsgihost.parse_chunk_size(b"0\r\n"), 0)
        self.assertEqual(wsgihost.parse_chunk_size(b"1aF\r\n"), 0x1AF)
        self.assertEqual(wsgihost.parse_chunk_size(b"ffffffffffffffff\r\n"), 2 ** 64 - 1)

    def test_extensions_accepted_and_ignored(self):
        self.assertEqual(wsgihost.parse_chunk_size(b'5;name=value;flag ; q="a \\"b\\""\r\n'), 5)

    def test_zero_padded_chunk_size_accepted_rfc9112_7_1(self):
        # RFC 9112 §7.1: chunk-size = 1*HEXDIG -- leading zeros are digits like any other.
        self.assertEqual(wsgihost.parse_chunk_size(b"000000a\r\n"), 10)
        self.assertEqual(wsgihost.parse_chunk_size(b"0" * 100 + b"1;x=y\r\n"), 1)
        self.assertEqual(wsgihost.parse_chunk_size(b"0" * 16 + b"ffffffffffffffff\r\n"), 2 ** 64 - 1)
        self.assertEqual(wsgihost.parse_chunk_size(b"00000\r\n"), 0)
        with self.assertRaises(HTTPError):                  # the value still must fit: 17 digits
            wsgihost.parse_chunk_size(b"0000" + b"1ffffffffffffffff\r\n")
        env = get_environ(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"000000005\r\nhello\r\n00000\r\n\r\n")
        self.assertEqual(env["body"], "hello")
        # The line stays bounded by MAX_CHUNK_LINE, zeros or not.
        resp = one(body_reading_app, b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + b"0" * wsgihost.MAX_CHUNK_LINE + b"5\r\nhello\r\n0\r\n\r\n", validate=False)
        self.assertEqual(resp.status, 400)

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


class ProxyTests(unittest.TestCase):
    """trusted_proxies: Forwarded (RFC 7239) and X-Forwarded-*, believed only from a trusted peer."""

    def environ_via(self, request: bytes, trusted, peer="127.0.0.1"):
        transport = wsgihost.app_transport(environ_app, trusted_proxies=trusted)
        sock = FakeSocket(request)
        transport.serve_connection(sock, (peer, 40000))
        return json.loads(split_responses(bytes(sock.sent))[0].body)

    def test_parse_forwarded_rfc_7239(self):
        self.assertEqual(wsgihost.parse_forwarded(
            'for="_gazonk", For="[2001:db8:cafe::17]:4711";proto=https;host="ex.org", for=192.0.2.60'),
            [{"for": "_gazonk"}, {"for": "[2001:db8:cafe::17]:4711", "proto": "https", "host": "ex.org"},
             {"for": "192.0.2.60"}])
        self.assertEqual(wsgihost.parse_forwarded('for="\\"x\\"";proto=http'), [{"for": '"x"', "proto": "http"}])
        for bad in ("for", "for=a b", "=x", 'for="open', 'for="\\"x\\";proto=http'):
            with self.subTest(bad=bad):
                self.assertEqual(wsgihost.parse_forwarded(bad), [])

    def test_x_forwarded_from_a_trusted_proxy_sets_addr_scheme_host(self):
        env = self.environ_via(b"GET / HTTP/1.1\r\nHost: internal:8080\r\nX-Forwarded-For: 203.0.113.7\r\n"
                               b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: example.org\r\n\r\n",
                               ["127.0.0.1"])
        self.assertEqual((env["REMOTE_ADDR"], env["wsgi.url_scheme"], env["HTTP_HOST"]),
                         ("203.0.113.7", "https", "example.org"))

    def test_forwarded_wins_and_ipv6_ports_are_cut(self):
        env = self.environ_via(b'GET / HTTP/1.1\r\nHost: a\r\nForwarded: for="[2001:db8::17]:4711";'
                               b'proto=https;host=example.org\r\nX-Forwarded-For: 198.51.100.1\r\n\r\n',
                               ["127.0.0.0/8"])
        self.assertEqual((env["REMOTE_ADDR"], env["wsgi.url_scheme"], env["HTTP_HOST"]),
                         ("2001:db8::17", "https", "example.org"))

    def test_from_an_untrusted_peer_nothing_is_believed(self):
        request = (b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.7\r\n"
                   b"X-Forwarded-Proto: https\r\n\r\n")
        for trusted, peer in (([], "127.0.0.1"), (["10.0.0.0/8"], "192.0.2.1")):
            with self.subTest(trusted=trusted, peer=peer):
                env = self.environ_via(request, trusted, peer)
                self.assertEqual((env["REMOTE_ADDR"], env["wsgi.url_scheme"]), (peer, "http"))
                self.assertEqual(env["HTTP_X_FORWARDED_FOR"], "203.0.113.7")   # left to the app

    def test_a_chain_is_read_from_the_right_up_to_the_first_untrusted(self):
        # The client wrote "1.1.1.1" itself; 198.51.100.9 is who reached our first proxy.
        env = self.environ_via(b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1, 198.51.100.9, "
                               b"10.0.0.5\r\n\r\n", ["127.0.0.1", "10.0.0.0/8"])
        self.assertEqual(env["REMOTE_ADDR"], "198.51.100.9")
        env = self.environ_via(b"GET / HTTP/1.1\r\nHost: a\r\nForwarded: for=unknown\r\n\r\n",
                               ["127.0.0.1"])
        self.assertEqual(env["REMOTE_ADDR"], "127.0.0.1")                      # nothing better

    def test_trusted_proxies_validated(self):
        with self.assertRaises(wsgihost.ConfigError) as caught:
            wsgihost.build_transports(web_config({}, options={"trusted_proxies": ["10.0.0.0/33"]}),
                                      ".", ".crossbar/config.json")
        self.assertEqual(str(caught.exception), '.crossbar/config.json: workers[0].transports[0].options.'
                         'trusted_proxies[0]: "10.0.0.0/33" is not an address or a CIDR range '
                         '(e.g. 10.0.0.0/8, ::1)')


class NginxTests(unittest.TestCase):
    """The README's nginx snippet, for real: nginx in front, trusted_proxies behind it."""

    def test_behind_nginx_the_app_sees_the_client_and_websockets_pass(self):
        nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
        if nginx is None:
            if os.environ.get("WSGIHOST_REQUIRE_ALL"):
                self.fail("nginx is not installed (.ci/run installs Debian's nginx)")
            self.skipTest("nginx is not installed (.ci/run installs Debian's nginx)")
        config = json.loads(json.dumps(WS_CONFIG))
        config["workers"][0]["transports"][0]["options"]["trusted_proxies"] = ["127.0.0.1"]
        config["workers"][0]["transports"][0]["paths"]["info"] = {
            "type": "wsgi", "module": "test_wsgihost", "object": "environ_app"}
        node = wsgihost.Node(config).start()
        self.addCleanup(node.stop, 0)
        backend = node.transports[0].port
        port = free_port()
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)
        with open(os.path.join(root, "nginx.conf"), "w") as f:
            f.write("""daemon off; pid %(root)s/nginx.pid; error_log %(root)s/error.log;
events { worker_connections 64; }
http {
    access_log off;
    client_body_temp_path %(root)s; proxy_temp_path %(root)s; fastcgi_temp_path %(root)s;
    uwsgi_temp_path %(root)s; scgi_temp_path %(root)s;
    upstream wsgihost { server 127.0.0.1:%(backend)d; keepalive 32; }
    server {
        listen 127.0.0.1:%(port)d;
        location / {
            proxy_pass http://wsgihost;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header Connection "";
        }
        location /ws {
            proxy_pass http://wsgihost;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 1h;
        }
    }
}
""" % {"root": root, "backend": backend, "port": port})
        proc = subprocess.Popen([nginx, "-c", os.path.join(root, "nginx.conf"), "-p", root],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(proc.wait, 10)
        self.addCleanup(proc.terminate)
        SubprocessTests.wait_for_port(self, port, proc)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.addCleanup(conn.close)
        conn.request("GET", "/info", headers={"Host": "example.org",
                                              "X-Forwarded-For": "203.0.113.9"})
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        env = json.loads(resp.read())
        # nginx appended the address it saw (127.0.0.1, trusted), so the client is the one
        # before it -- here a value the client sent, as a proxy in front of nginx would.
        self.assertEqual(env["REMOTE_ADDR"], "203.0.113.9")
        self.assertEqual(env["HTTP_HOST"], "example.org")
        self.assertEqual(env["wsgi.url_scheme"], "http")
        client = WSClient(port)
        self.addCleanup(client.close)
        self.assertEqual(client.status, 101)
        client.send_text("through nginx")
        self.assertEqual(client.recv_text(), "through nginx")


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

    def test_encoded_slash_is_not_a_segment_separator_as_in_twisted(self):
        # Twisted's Request.process (so Crossbar): postpath = map(unquote,
        # path[1:].split(b"/")) -- cut on the raw "/", decode each segment after.
        # "%2F" is data inside a segment (RFC 3986 §2.2), never a separator;
        # "%61pp" decodes to the segment "app" and so does reach it.
        for path, script_name, path_info in [
                (b"/app%2Fx", "", "/app/x"), (b"/app%2fx/y", "", "/app/x/y"),
                (b"/api%2Fv1/x", "", "/api/v1/x"), (b"/app/a%2Fb", "/app", "/a/b"),
                (b"/%61pp/x", "/app", "/x"), (b"/api/%76%31/x", "/api/v1", "/x")]:
            with self.subTest(path=path):
                env = self.environ_for(path)
                self.assertEqual((env["SCRIPT_NAME"], env["PATH_INFO"]), (script_name, path_info))
        # Inside "api", "v1%2Fx" is one segment "v1/x": not "v1", and api has no "/".
        sock = FakeSocket(b"GET /api/v1%2Fx HTTP/1.1\r\nHost: a\r\n\r\n")
        self.transport.serve_connection(sock, REMOTE)
        self.assertEqual(split_responses(bytes(sock.sent))[0].status, 404)

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

    def test_error_answer_to_head_has_no_body_rfc9110_9_3_2(self):
        # RFC 9110 §9.3.2: the server "MUST NOT send content in the response" to
        # HEAD -- its own error answers included -- with the fields GET would get.
        for request in (b"HEAD / HTTP/1.1\r\n\r\n",                                  # no Host: 400
                        b"HEAD / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                        b"HEAD / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n"):      # 417
            with self.subTest(request=request):
                head_data = run_raw(hello_app, request)
                get_data = run_raw(hello_app, b"GET" + request[4:])
                self.assertTrue(head_data.endswith(b"\r\n\r\n"), head_data)
                get = split_responses(get_data)[0]
                head = split_responses(head_data, ["HEAD"])[0]
                self.assertGreater(len(get.body), 0)
                self.assertEqual((head.status, head.headers["content-length"]),
                                 (get.status, str(len(get.body))))
        # The one serializer, pure: HEAD is GET's head without the body.
        get = wsgihost.build_simple_response(404, "nothing here", "GET")
        head = wsgihost.build_simple_response(404, "nothing here", "HEAD")
        drop_date = lambda data: [l for l in data.split(b"\r\n") if not l.startswith(b"Date:")]
        self.assertEqual(drop_date(get[:len(head)]), drop_date(head))
        self.assertEqual(get[len(head):], wsgihost.plain_text_body(404, "nothing here"))

    def test_iteration_stops_once_content_length_is_sent_pep3333(self):
        # PEP 3333: the server "should stop iterating over the response when enough
        # data has been sent"; an endless iterable would be pulled forever.
        pulled, closed = [], []

        class Body:
            def __iter__(self):
                for i in range(10000):              # "endless", but bounded for the test
                    pulled.append(i)
                    yield b"x"

            def close(self):
                closed.append(True)

        def app(environ, start_response):
            start_response("200 OK", TEXT + [("Content-Length", "5")])
            return Body()
        with self.assertLogs("wsgihost", "DEBUG") as logs:
            wsgihost.log.debug("sentinel")
            data = run_raw(app, b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(len(pulled), 10)           # 5 per request, both requests served
        self.assertEqual(closed, [True, True])
        self.assertEqual([r.body for r in split_responses(data)], [b"xxxxx", b"xxxxx"])
        self.assertEqual([r for r in logs.records if r.levelno >= logging.ERROR], [])

    def test_chunk_past_content_length_logged_once_and_iteration_stops_pep3333(self):
        pulled, closed = [], []

        class Body:
            def __iter__(self):
                for i in range(10000):
                    pulled.append(i)
                    yield b"abc"

            def close(self):
                closed.append(True)

        def app(environ, start_response):
            start_response("200 OK", TEXT + [("Content-Length", "5")])
            return Body()
        with self.assertLogs("wsgihost", "ERROR") as logs:
            data = run_raw(app, b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(len(pulled), 2)            # "abc" + "ab|c": the second chunk overshoots
        self.assertEqual(closed, [True])            # the connection closed after the cut response
        self.assertEqual(len(logs.records), 1, [r.getMessage() for r in logs.records])
        self.assertIn("more than its Content-Length of 5", logs.records[0].getMessage())
        responses = split_responses(data)
        self.assertEqual([r.body for r in responses], [b"abcab"])

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
        deadline = time.monotonic() + 30
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
        waiting.settimeout(30)
        self.assertTrue(waiting.recv(4096).startswith(b"HTTP/1.1 200 OK"))
        for sock in busy:
            self.assertTrue(sock.recv(4096).startswith(b"HTTP/1.1 200 OK"))

    def test_max_connections_the_longest_idle_connection_makes_room(self):
        node, port = start_node(hello_app, max_connections=2, client_timeout=30)
        self.addCleanup(node.stop, 0)
        oldest = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(oldest.close)
        deadline = time.monotonic() + 30
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
            for _ in range(50):                                  # 10 s of CRLFs, if allowed
                sock.sendall(b"\r\n")
                time.sleep(0.2)
                sock.setblocking(False)
                try:
                    if sock.recv(4096) == b"":
                        raise ConnectionResetError("closed")
                except BlockingIOError:
                    pass
                sock.setblocking(True)
        self.assertLess(time.monotonic() - start, 5)             # cut at 0.5 s, not after 10

    def test_a_large_response_to_a_slow_steady_reader_is_not_cut(self):
        body = os.urandom(8 * 1024 * 1024)
        node, port = start_node(lambda e, s: (s("200 OK", TEXT), [body])[1], client_timeout=3)
        self.addCleanup(node.stop, 0)
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.addCleanup(sock.close)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        data = bytearray()
        while True:                                 # about 6.5 s in all, twice client_timeout
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if data.endswith(body[-100:]):
                break
            time.sleep(0.05)
        self.assertTrue(bytes(data).endswith(body))

    def test_413_reaches_a_client_still_uploading(self):
        node, port = start_node(hello_app, max_body_size=1000)
        self.addCleanup(node.stop, 0)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.addCleanup(conn.close)
        conn.request("POST", "/", body=b"x" * (4 * 1024 * 1024))   # sent whole before reading
        self.assertEqual(conn.getresponse().status, 413)

    def test_stop_releases_every_thread(self):
        before = set(threading.enumerate())     # other tests' threads may end meanwhile
        for _ in range(3):
            service = wsgihost.WSGIService(hello_app, "test:hello", minthreads=5)
            transport = wsgihost.WebTransport(wsgihost.PathNode(default=service), "127.0.0.1", 0)
            node = wsgihost.Node(transports=[transport]).start()
            http.client.HTTPConnection("127.0.0.1", transport.port, timeout=5).request("GET", "/")
            node.stop(1)
        deadline = time.monotonic() + 30
        while set(threading.enumerate()) - before and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual(set(threading.enumerate()) - before, set())

    def test_stop_of_several_transports_takes_one_grace_period(self):
        inside, release = [], threading.Event()
        self.addCleanup(release.set)

        def slow(environ, start_response):     # in flight for as long as the test lasts
            inside.append(1)
            release.wait(60)
            start_response("200 OK", TEXT)
            return [b""]
        transports = [wsgihost.app_transport(slow, "127.0.0.1", 0) for _ in range(3)]
        node = wsgihost.Node(transports=transports).start()
        conns = []
        for t in transports:
            conn = http.client.HTTPConnection("127.0.0.1", t.port, timeout=60)
            self.addCleanup(conn.close)
            conn.request("GET", "/")
            conns.append(conn)
        wait_until(lambda: len(inside) == 3, "the requests never reached the app")
        start = time.monotonic()
        node.stop(3)
        self.assertLess(time.monotonic() - start, 7.5)      # 3 s for all, not 3 s each


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
            deadline = time.monotonic() + 30
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

    def test_a_remembered_head_is_the_same_and_refuses_what_build_refuses(self):
        headers = [("Content-Type", "text/plain"), ("X-Seen", "twice")]
        first = wsgihost.remembered_response_head("200 OK", list(headers))
        self.assertIs(wsgihost.remembered_response_head("200 OK", list(headers)), first)
        self.assertEqual(first.block, b"Content-Type: text/plain\r\nX-Seen: twice\r\n")

        class Str(str):
            pass
        Pair = collections.namedtuple("Pair", "name value")
        # Equal to the remembered key, but of types PEP 3333 does not allow.
        for bad in ([("Content-Type", "text/plain"), ("X-Seen", Str("twice"))],
                    [(Str("Content-Type"), "text/plain"), ("X-Seen", "twice")],
                    [Pair("Content-Type", "text/plain"), ("X-Seen", "twice")]):
            with self.subTest(bad=bad), self.assertRaises(TypeError):
                wsgihost.remembered_response_head("200 OK", bad)
        for bad in ([["Content-Type", "text/plain"]], tuple(headers)):      # unhashable, not a list
            with self.subTest(bad=bad), self.assertRaises(TypeError):
                wsgihost.remembered_response_head("200 OK", bad)
        with self.assertRaises(ValueError):
            wsgihost.remembered_response_head("200 OK", [("X-Bad", "a\r\nInjected: 1")])

    def test_remembered_heads_stay_bounded(self):
        for i in range(3 * wsgihost.RESPONSE_HEAD_CACHE_SIZE):
            head = wsgihost.remembered_response_head("200 OK", [("ETag", '"%d"' % i)])
            self.assertEqual(head.block, b'ETag: "%d"\r\n' % i)
            self.assertLessEqual(len(wsgihost._response_heads), wsgihost.RESPONSE_HEAD_CACHE_SIZE)



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

    def __init__(self, port, path="/ws", headers=(), timeout=30, context=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if context is not None:                         # wss://
            self.sock = context.wrap_socket(self.sock, server_hostname="localhost")
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

    def read_frame(self):
        """The next frame as it came, Pings included: (opcode, payload)."""
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

    def recv_frame(self):
        """The next frame that is not a Ping. A Ping is answered as any client
        would (RFC 6455 §5.5.2: a Pong, same payload, masked): on a busy machine
        a test may outlast auto_ping_interval, and the server then pings."""
        while True:
            opcode, payload = self.read_frame()
            if opcode != Opcode.PING:
                return opcode, payload
            try:
                self.send(Opcode.PONG, payload)
            except OSError:
                pass                    # the server has gone; the next read says how

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
        self.sock.settimeout(30)
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


class WSClientTests(unittest.TestCase):

    def test_the_test_client_answers_a_ping_with_a_masked_pong(self):
        ours, server = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(server.close)
        ours.settimeout(5)
        server.settimeout(5)
        c = WSClient.__new__(WSClient)                          # no handshake: just the frames
        c.sock, c.buffer = ours, bytearray()
        server.sendall(build_frame(Opcode.PING, b"are you there") + build_frame(Opcode.TEXT, b"hi"))
        self.assertEqual(c.recv_text(), "hi")
        header, payload, used = parse_frame(server.recv(4096))   # require_mask: a client masks
        self.assertEqual((header.opcode, payload), (Opcode.PONG, b"are you there"))


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
        "slowping": {"type": "websocket", "options": {"auto_ping_interval": 1000,
                                                      "auto_ping_timeout": 5000}},
        "ping": {"type": "websocket", "options": {"auto_ping_interval": 200, "auto_ping_timeout": 5000}},
        "patient": {"type": "websocket", "options": {"close_handshake_timeout": 20000}},
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

    def wait_for(self, condition, timeout=30):
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
        errors = []

        def read(i):
            c = clients[i]
            c.sock.settimeout(60)                               # between two frames
            try:
                for _ in range(100 * 100):
                    received[i].append(c.recv_text())
            except Exception as exc:
                errors.append("client %d, after %d messages: %r" % (i, len(received[i]), exc))

        def write(i):
            for n in range(100):
                clients[i].send_text("%d:%d" % (i, n))
        readers = [threading.Thread(target=read, args=(i,)) for i in range(100)]
        writers = [threading.Thread(target=write, args=(i,)) for i in range(100)]
        for t in readers + writers:
            t.start()
        # A million frames through one process: 25 s idle, a minute or more on
        # a busy machine (the server then auto-pings, and WSClient answers).
        deadline = time.monotonic() + 600
        for t in readers + writers:
            t.join(max(0, deadline - time.monotonic()))
        self.assertEqual(errors, [])
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
                c = self.client("/patient")
                start = time.monotonic()
                c.sock.sendall(b"".join(frames))
                self.assertEqual(c.expect_close(), code)
                # the server closes TCP at once (§7.1.1), not after close_handshake_timeout (20 s)
                self.assertLess(time.monotonic() - start, 10)

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
        self.wait_for(lambda: len(channel) == 0)

    def test_a_dropped_slow_client_receives_the_1008_close(self):
        slow = WSClient(self.port, "/small")                    # max_send_queue 64 KiB
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.addCleanup(slow.close)
        channel = self.channels["/small"]
        self.wait_for(lambda: len(channel) == 1)
        with self.assertLogs("wsgihost", "INFO") as logs:
            for _ in range(20000):                              # never read while sent
                channel.broadcast("x" * 1000)
                if any("dropping" in line for line in logs.output):
                    break
        self.assertTrue(any("too slow" in line for line in logs.output))
        code = None
        while code is None:                                     # read it all now, quickly
            opcode, payload = slow.recv_frame()
            if opcode == Opcode.CLOSE:
                code = int.from_bytes(payload[:2], "big")
        self.assertEqual(code, 1008)

    def test_a_writer_is_given_send_timeout_not_the_pings_interval(self):
        """Review finding: the writer's sends used the reader's idle timeout, so a client that
        paused reading for longer than auto_ping_interval was cut mid-frame."""
        c = self.client("/ping")                                # pings every 200 ms
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        c.send(Opcode.BINARY, b"z" * (12 * 1024 * 1024))        # broadcast back to us: 12 MiB
        time.sleep(3.0)                                         # not reading, 15 intervals
        received = 0
        while received < 12 * 1024 * 1024:
            opcode, payload = c.recv_frame()
            if opcode == Opcode.BINARY:
                received += len(payload)
        self.assertEqual(received, 12 * 1024 * 1024)

    def test_pings_keep_to_auto_ping_interval_after_the_first(self):
        """Review finding: after the first Ping, Pings came every auto_ping_timeout."""
        c = self.client("/slowping")                            # interval 1 s, timeout 5 s
        times = []
        for _ in range(3):
            opcode, payload = c.read_frame()
            self.assertEqual(opcode, Opcode.PING)
            times.append(time.monotonic())
            c.send(Opcode.PONG, payload)
        self.assertGreaterEqual(times[2] - times[1], 0.8)       # not every 5 s, nor at once
        self.assertLess(times[2] - times[1], 4.5)

    def test_a_client_trickling_bytes_after_a_protocol_error_is_cut(self):
        """Review finding: after an invalid Close code, a byte every 0.5 s held the connection."""
        c = self.client("/ws")
        c.send(Opcode.CLOSE, (999).to_bytes(2, "big"))          # an invalid code: 1002
        self.assertEqual(c.recv_frame()[0], Opcode.CLOSE)
        start = time.monotonic()
        with self.assertRaises(OSError):
            for _ in range(40):                                 # 20 s of trickle, if allowed
                c.sock.send(b"x")
                time.sleep(0.5)
        self.assertLess(time.monotonic() - start, 15)           # close_handshake_timeout: 1 s

    def test_auto_ping_and_a_client_that_does_not_answer_is_dropped(self):
        c = self.client("/ping")
        opcode, payload = c.read_frame()
        self.assertEqual((opcode, len(payload)), (Opcode.PING, 4))
        c.send(Opcode.PONG, payload)
        self.assertEqual(c.read_frame()[0], Opcode.PING)         # pinged again; this time no answer
        c.sock.settimeout(30)                                   # dropped 5 s after that Ping
        with self.assertRaises((EOFError, ConnectionResetError)):
            while True:
                c.read_frame()

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
        # close_handshake_timeout is 1 s; client_timeout, the next timeout that could cut it, 5 s
        self.assertLess(time.monotonic() - start, 4.5)

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

    def wait_for(self, condition, timeout=30):
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
        c.sock.settimeout(300)                                  # 128 Ki frames: seconds idle, more loaded
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
        c.sock.settimeout(300)                                  # tracemalloc slows every thread; load slows more
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        c.sock.sendall(frames)
        self.assertEqual(c.recv_message(), (Opcode.BINARY, data, False))
        peak = tracemalloc.get_traced_memory()[1]
        # The message and its few copies take ~0.3 MiB at the peak, both ends
        # of the connection counted; 16,384 pieces kept apart would add 1.7.
        self.assertLess(peak, 1 << 20)


class WebSocketProtocolTests(unittest.TestCase):
    """The sans-IO core (WebSocketProtocol): bytes in, events and replies out, no socket.
    Every input is fed whole, one byte at a time, and with the next frame's first bytes."""

    OPEN, CLOSING, CLOSED = (wsgihost.WebSocketState.OPEN, wsgihost.WebSocketState.CLOSING,
                             wsgihost.WebSocketState.CLOSED)

    def feed(self, proto, data: bytes, piece: int = None):
        """All events and replies for ``data``, fed in pieces of ``piece`` bytes (None: whole)."""
        events, replies = [], b""
        for start in range(0, len(data), piece or len(data) or 1):
            got, reply = proto.receive_data(data[start:start + (piece or len(data))])
            events += got
            replies += reply
        return events, replies

    def each_way(self, data: bytes, **kw):
        """feed() whole, byte by byte and in 3-byte pieces: the same events and replies each
        way (a Close's reason may say where in the piece the fault was)."""
        results = [self.feed(wsgihost.WebSocketProtocol(**kw), data, piece) for piece in (None, 1, 3)]
        for events, reply in results[1:]:
            self.assertEqual((events, reply[:4]), (results[0][0], results[0][1][:4]))
        return results[0]

    def test_a_message_in_fragments_with_control_frames_between(self):
        text = "h\u00e9llo w\u00f6rld".encode()
        data = (build_frame(Opcode.TEXT, text[:2], False, b"abcd")           # splits the é
                + build_frame(Opcode.PING, b"p1", mask=b"wxyz")
                + build_frame(Opcode.CONTINUATION, text[2:7], False, b"efgh")
                + build_frame(Opcode.PONG, b"", mask=b"ijkl")
                + build_frame(Opcode.CONTINUATION, text[7:], True, b"mnop")
                + build_frame(Opcode.BINARY, b"\x00\xff", mask=b"qrst"))
        events, reply = self.each_way(data)
        self.assertEqual(events, [(Opcode.PING, b"p1"), (Opcode.PONG, b""),
                                  (Opcode.TEXT, "h\u00e9llo w\u00f6rld"), (Opcode.BINARY, b"\x00\xff")])
        self.assertEqual(reply, b"\x8a\x02p1")                  # §5.5.2: a Pong, same payload, unmasked

    def test_an_incomplete_frame_waits_for_its_bytes(self):
        proto = wsgihost.WebSocketProtocol()
        frame = build_frame(Opcode.TEXT, b"hello", mask=b"abcd")
        self.assertEqual(proto.receive_data(frame[:6]), ([], b""))
        self.assertEqual(proto.receive_data(frame[6:] + frame[:1]), ([(Opcode.TEXT, "hello")], b""))
        self.assertEqual(proto.receive_data(frame[1:]), ([(Opcode.TEXT, "hello")], b""))

    def test_the_client_closes_first_and_its_code_is_echoed(self):
        proto = wsgihost.WebSocketProtocol()
        events, reply = self.each_way(build_frame(Opcode.CLOSE, b"\x0f\xa0bye", mask=b"abcd"))
        self.assertEqual(events, [(Opcode.CLOSE, (4000, "bye"))])
        self.assertEqual(reply, b"\x88\x02\x0f\xa0")            # §5.5.1: the code echoed
        events, reply = proto.receive_data(build_frame(Opcode.CLOSE, b"", mask=b"abcd"))
        self.assertEqual((events, reply, proto.state, proto.close_code), (
            [(Opcode.CLOSE, (None, ""))], b"\x88\x00", self.CLOSED, 1005))
        self.assertEqual(proto.receive_data(build_frame(Opcode.PING, b"late", mask=b"abcd")), ([], b""))
        self.assertIsNone(proto.build_message("after the close"))
        self.assertIsNone(proto.build_close(1000))              # both Closes exchanged: none again

    def test_the_server_closes_first_then_discards_data_but_answers_pings(self):
        proto = wsgihost.WebSocketProtocol()
        proto.receive_data(build_frame(Opcode.TEXT, b"half", False, b"abcd"))
        self.assertEqual(proto.build_close(1001, "going"), b"\x88\x07\x03\xe9going")
        self.assertEqual((proto.state, proto.close_code), (self.CLOSING, 1001))
        self.assertIsNone(proto.build_message("no data after our Close"))          # §5.5.1
        self.assertIsNone(proto.build_close(1000))
        events, reply = proto.receive_data(build_frame(Opcode.CONTINUATION, b" a message", True, b"abcd")
                                           + build_frame(Opcode.BINARY, b"x" * 300, mask=b"abcd")
                                           + build_frame(Opcode.PING, b"still there?", mask=b"abcd"))
        # §5.5.2: a Pong "unless it already received a Close frame" -- ours does not count.
        self.assertEqual((events, reply), ([(Opcode.PING, b"still there?")], b"\x8a\x0cstill there?"))
        events, reply = proto.receive_data(build_frame(Opcode.CLOSE, b"\x03\xe9", mask=b"abcd"))
        self.assertEqual((events, reply, proto.state), ([(Opcode.CLOSE, (1001, ""))], b"", self.CLOSED))
        self.assertEqual(proto.close_code, 1001)                # ours: we began

    def test_protocol_errors_reply_with_their_close_code_and_stop_parsing(self):
        mask = b"abcd"
        for data, code in [
                (build_frame(Opcode.TEXT, b"x"), 1002),                                     # unmasked
                (build_frame(Opcode.TEXT, b"ok \xff", mask=mask), 1007),                    # not UTF-8
                (build_frame(Opcode.TEXT, b"\xc0", False, mask), 1007),                     # fails fast, mid-message
                (build_frame(Opcode.CONTINUATION, b"x", mask=mask), 1002),                  # nothing to continue
                (build_frame(Opcode.TEXT, b"x", False, mask) + build_frame(Opcode.BINARY, b"y", mask=mask), 1002),
                (build_frame(Opcode.CLOSE, b"\x03\xed", mask=mask), 1002),                  # close code 1005
                (build_frame(Opcode.CLOSE, b"\x03", mask=mask), 1002),                      # 1-byte close payload
                (build_frame(Opcode.PING, b"x" * 126, mask=mask), 1002),                    # control over 125
                (build_frame(Opcode.PING, b"", False, mask), 1002),                         # fragmented control
                (bytes([0x85, 0x80]) + mask, 1002),                                         # reserved opcode
                (build_frame(Opcode.TEXT, b"x", mask=mask, rsv1=True), 1002),               # RSV1, not agreed
                (build_frame(Opcode.BINARY, b"x" * 1001, mask=mask), 1009)]:                # frame over the limit
            with self.subTest(data=data[:12], code=code):
                events, reply = self.each_way(data + build_frame(Opcode.TEXT, b"never parsed", mask=mask),
                                              max_message_size=1000)
                self.assertEqual(events, [])
                self.assertEqual(reply[:4], b"\x88" + bytes([len(reply) - 2]) + code.to_bytes(2, "big"))
                proto = wsgihost.WebSocketProtocol(max_message_size=1000)
                proto.receive_data(data)
                self.assertEqual((proto.state, proto.close_code, proto.error.code), (self.CLOSED, code, code))
                self.assertEqual(proto.receive_data(build_frame(Opcode.PING, b"", mask=mask)), ([], b""))

    def test_a_message_over_max_message_size_across_fragments_is_1009(self):
        data = (build_frame(Opcode.BINARY, b"x" * 600, False, b"abcd")
                + build_frame(Opcode.CONTINUATION, b"x" * 401, True, b"abcd"))       # 1001 bytes in all
        events, reply = self.each_way(data, max_message_size=1000)
        self.assertEqual((events, reply[2:4]), ([], b"\x03\xf1"))
        events, _ = self.each_way(data[:-1], max_message_size=1001)     # its last byte missing: not yet
        self.assertEqual(events, [])
        events, _ = self.each_way(data, max_message_size=1001)
        self.assertEqual(events, [(Opcode.BINARY, b"x" * 1001)])

    def test_fragments_per_message_bounded_empty_ones_included(self):
        with mock.patch.object(wsgihost, "MAX_MESSAGE_FRAGMENTS", 10):
            nine = build_frame(Opcode.TEXT, b"", False, b"abcd") + build_frame(
                Opcode.CONTINUATION, b"", False, b"abcd") * 8
            events, reply = self.feed(wsgihost.WebSocketProtocol(),
                                      nine + build_frame(Opcode.CONTINUATION, b"", True, b"abcd"))
            self.assertEqual((events, reply), ([(Opcode.TEXT, "")], b""))
            events, reply = self.feed(wsgihost.WebSocketProtocol(), nine + build_frame(
                Opcode.CONTINUATION, b"", False, b"abcd") * 2)
            self.assertEqual((events, reply[2:4]), ([], b"\x03\xf1"))

    def test_the_1009_bomb_a_small_compressed_frame_inflating_past_the_limit(self):
        params = wsgihost.DeflateParams(False, False, 12, 15, 5)
        deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
        bomb = (deflater.compress(b"\x00" * (64 * 1024 * 1024)) + deflater.flush(zlib.Z_SYNC_FLUSH))[:-4]
        self.assertLess(len(bomb), 100 * 1024)                  # 64 MiB in under 100 KiB
        proto = wsgihost.WebSocketProtocol(max_message_size=1024 * 1024, deflate=params)
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        events, reply = proto.receive_data(build_frame(Opcode.BINARY, bomb, mask=b"abcd", rsv1=True))
        peak = tracemalloc.get_traced_memory()[1]
        self.assertEqual((events, reply[2:4], proto.state), ([], b"\x03\xf1", self.CLOSED))
        self.assertLess(peak, 8 * 1024 * 1024)                  # the limit and a few steps, not 64 MiB

    def test_compressed_messages_both_ways_with_context_takeover(self):
        params = wsgihost.DeflateParams(False, False, 12, 15, 5)
        proto = wsgihost.WebSocketProtocol(deflate=params)
        deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
        frames = b""
        for text in ("h\u00e9llo", "h\u00e9llo again"):
            payload = (deflater.compress(text.encode()) + deflater.flush(zlib.Z_SYNC_FLUSH))[:-4]
            frames += build_frame(Opcode.TEXT, payload[:3], False, b"abcd", rsv1=True)
            frames += build_frame(Opcode.CONTINUATION, payload[3:], True, b"abcd")
        self.assertEqual(self.feed(proto, frames, 1)[0], [(Opcode.TEXT, "h\u00e9llo"),
                                                          (Opcode.TEXT, "h\u00e9llo again")])
        inflater = zlib.decompressobj(-12)
        sent = [proto.build_message("news " * 20) for _ in range(2)]
        payloads = [parse_frame(frame, require_mask=False, compression=True) for frame in sent]
        self.assertTrue(all(header.rsv1 for header, _, _ in payloads))
        self.assertEqual([inflater.decompress(p + b"\x00\x00\xff\xff") for _, p, _ in payloads],
                         [b"news " * 20] * 2)
        self.assertLess(len(payloads[1][1]), len(payloads[0][1]))     # the second refers to the first

    def test_connection_lost_is_1006(self):
        proto = wsgihost.WebSocketProtocol()
        proto.connection_lost()
        self.assertEqual((proto.state, proto.close_code), (self.CLOSED, 1006))
        self.assertIsNone(proto.build_ping(b"x"))

class BroadcastWebSocketsInTheSelectorTests(unittest.TestCase):
    """Issue 8: a broadcast path's clients wait in the waiting room's selector, holding no
    thread; issue 9: a slow one is dropped with 1008, the others keep receiving."""

    def setUp(self):
        self.node = wsgihost.Node(WS_CONFIG).start()
        self.addCleanup(self.node.stop, 2)
        self.transport = self.node.transports[0]
        self.port = self.transport.port
        self.channels = self.transport.channels

    def client(self, path="/ws", **kw):
        client = WSClient(self.port, path, **kw)
        self.addCleanup(client.close)
        self.assertEqual(client.status, 101)
        return client

    def wait_for(self, condition, message="timed out", timeout=30):
        deadline = time.monotonic() + timeout
        while not condition():
            self.assertLess(time.monotonic(), deadline, message)
            time.sleep(0.01)

    def states(self):
        """The waiting room's states of the connections open."""
        return sorted(conn.state for conn in list(self.transport.connections))

    def test_500_idle_broadcast_websockets_add_no_threads_and_all_receive_a_broadcast(self):
        baseline = threading.active_count()
        clients = []
        for _ in range(500):
            clients.append(self.client("/quiet", timeout=60))
        self.wait_for(lambda: len(self.channels["/quiet"]) == 500)
        # The handshakes ran in pool threads; 500 clients on the old driver held 1,000.
        self.assertLessEqual(threading.active_count(), baseline + 10)
        self.assertEqual(set(self.states()), {"websocket"})
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        self.addCleanup(conn.close)
        conn.request("GET", "/?to%20all")                       # broadcasting_app, on /ws ...
        self.assertEqual(conn.getresponse().read(), b"0")
        self.assertEqual(self.channels["/quiet"].broadcast("hello, 500"), 500)    # ... and here
        for client in clients:
            self.assertEqual(client.recv_text(), "hello, 500")
        self.assertLessEqual(threading.active_count(), baseline + 10)

    def test_a_slow_client_is_dropped_with_1008_while_the_others_keep_receiving(self):
        # /small's options, but 30 s for the slow reader to reach its Close, however busy
        # the machine: at the deadline TCP is cut, and a Close still queued is lost.
        config = json.loads(json.dumps(WS_CONFIG))
        config["workers"][0]["transports"][0]["paths"]["small"]["options"]["close_handshake_timeout"] = 30000
        node = wsgihost.Node(config).start()
        self.addCleanup(node.stop, 2)
        self.port = node.transports[0].port
        channel = node.transports[0].channels["/small"]         # max_send_queue 64 KiB
        slow = WSClient(self.port, "/small")
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.addCleanup(slow.close)
        fast = [self.client("/small") for _ in range(3)]
        self.wait_for(lambda: len(channel) == 4)
        received = [[] for _ in fast]

        def read(i):
            while len(received[i]) < 400:
                received[i].append(fast[i].recv_text())
        dropped = threading.Event()
        close_codes = []

        def read_slow():
            # Once dropped, it reads (within close_handshake_timeout) what the socket
            # holds for it: its Close comes after that (README: slow clients).
            dropped.wait(60)
            while not close_codes:
                opcode, payload = slow.recv_frame()
                if opcode == Opcode.CLOSE:
                    close_codes.append(int.from_bytes(payload[:2], "big"))
        readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(3)]
        readers.append(threading.Thread(target=read_slow, daemon=True))
        for reader in readers:
            reader.start()
        with self.assertLogs("wsgihost", "INFO") as logs:
            for n in range(400):                                # 400 KB: over 64 KiB for the slow one
                channel.broadcast("%04d" % n + "x" * 996)
                if len(channel) == 3:
                    dropped.set()
                if n % 10 == 0:
                    time.sleep(0.1)                             # (the fast ones keep up)
            self.wait_for(lambda: len(channel) == 3, "the slow client was not dropped")
            dropped.set()
        self.assertTrue(any("dropping" in line and "too slow" in line for line in logs.output), logs.output)
        for reader in readers:
            reader.join(60)
        expected = ["%04d" % n + "x" * 996 for n in range(400)]
        for messages in received:
            self.assertEqual(messages, expected)                # all, in order
        self.assertEqual(close_codes, [1008])

    def test_a_client_that_vanishes_is_removed(self):
        c = self.client()
        self.wait_for(lambda: len(self.channels["/ws"]) == 1)
        room = self.transport.server.room
        self.assertEqual(room.websockets, 1)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.sock.close()                                          # a reset, no Close
        self.wait_for(lambda: len(self.channels["/ws"]) == 0 and not self.transport.connections,
                      "the WebSocket was not released")
        self.assertEqual(room.websockets, 0)
        self.assertEqual(self.channels["/ws"].broadcast("anyone?"), 0)

    def test_auto_ping_in_the_selector(self):
        c = self.client("/ping")                                # every 200 ms, pong within 5 s
        self.wait_for(lambda: self.states() == ["websocket"])
        for _ in range(3):
            opcode, payload = c.read_frame()
            self.assertEqual((opcode, len(payload)), (Opcode.PING, 4))
            c.send(Opcode.PONG, payload)
        c.send_text("still here")
        self.assertEqual(c.recv_text(), "still here")

    def test_a_handler_path_keeps_its_thread_and_its_api(self):
        before = threading.active_count()
        c = self.client("/upper")
        self.assertEqual(c.recv_text(), "hello 127.0.0.1, 1 here")
        self.assertGreaterEqual(threading.active_count(), before + 1)    # the handler's (and its writer)
        self.assertEqual(self.states(), ["active"])          # its thread serves it
        c.send_text("abc")
        self.assertEqual(c.recv_text(), "ABC")
        b = self.client()                                       # the broadcast path, meanwhile
        b.send_text("echo")
        self.assertEqual(b.recv_text(), "echo")
        c.send_text("bye")
        self.assertEqual(c.expect_close(), 4000)

    def test_pings_after_the_servers_close_get_pongs_rfc6455_5_5_2(self):
        """Review finding: after the server's own Close, the client's Pings got no Pong.
        §5.5.2: a Pong "unless it already received a Close frame"; §5.5.1 bars only data."""
        for path in ("/patient", "/upper"):                     # the selector's driver, the threaded one
            with self.subTest(path=path):
                c = self.client(path)
                if path == "/upper":
                    c.recv_text()
                    c.send_text("bye")                          # the handler closes with 4000
                else:
                    self.wait_for(lambda: len(self.channels[path]) == 1)
                    self.channels[path].close_all(4000)
                opcode, payload = c.recv_frame()
                self.assertEqual((opcode, payload[:2]), (Opcode.CLOSE, b"\x0f\xa0"))
                c.send(Opcode.PING, b"after your close")
                self.assertEqual(c.read_frame(), (Opcode.PONG, b"after your close"))
                c.send(Opcode.CLOSE, b"\x0f\xa0")
                c.sock.settimeout(10)
                self.assertEqual(c.sock.recv(4096), b"")        # both Closes: the server ends TCP

    def test_a_broadcast_from_many_threads_reaches_everyone_in_one_order(self):
        clients = [self.client("/quiet") for _ in range(20)]
        channel = self.channels["/quiet"]
        self.wait_for(lambda: len(channel) == 20)

        def send(t):
            for n in range(50):
                channel.broadcast("%d:%d" % (t, n))
        threads = [threading.Thread(target=send, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        first = [clients[0].recv_text() for _ in range(200)]
        for t in range(4):
            self.assertEqual([m for m in first if m.startswith("%d:" % t)], ["%d:%d" % (t, n) for n in range(50)])
        for client in clients[1:]:
            self.assertEqual([client.recv_text() for _ in range(200)], first)

    def test_stop_sends_1001_and_cuts_a_silent_client_after_the_close_handshake_timeout(self):
        answering, silent = self.client(), self.client()
        self.wait_for(lambda: len(self.channels["/ws"]) == 2)
        start = time.monotonic()
        stopper = threading.Thread(target=self.node.stop, args=(30,))
        stopper.start()
        self.addCleanup(stopper.join, 60)
        self.assertEqual(answering.expect_close(), 1001)
        self.assertEqual(silent.recv_frame(), (Opcode.CLOSE, b"\x03\xe9server shutting down"))
        silent.sock.settimeout(30)
        with self.assertRaises((EOFError, ConnectionResetError)):
            silent.recv_frame()                                 # never answered: cut at 1 s
        stopper.join(60)
        self.assertLess(time.monotonic() - start, 20)           # not the 30 s grace

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
        with mock.patch.object(os, "sendfile", counting_sendfile):
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
        deadline = time.monotonic() + 60
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
        for byte in b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 300:   # one byte per 0.05 s: 16 s
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
        self.assertLess(time.monotonic() - start, 5)             # cut at 0.5 s, not after 16

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
            # On a busy machine the 8 requests may arrive spread out: wait
            # (2 s at most) for a second one, so that the bound is reached.
            deadline = time.monotonic() + 2
            while state["max"] < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
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
            wait_until(lambda: self.node.transports[0].stopping, "the server never began to stop")
            time.sleep(0.5)                     # ... and is stopping while this runs
            start_response("200 OK", TEXT)
            return [b"finished"]
        self.node, self.port = start_node(app)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        self.addCleanup(conn.close)
        conn.request("GET", "/")
        self.assertTrue(started.wait(30))
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

# -----------------------------------------------------------------------------
# TLS: https and wss (section 10a; the handshake in the waiting room)
# -----------------------------------------------------------------------------
# Self-signed test certificates (P-256, valid until 2126): the server's, for
# localhost, 127.0.0.1 and ::1, and a client's, which is its own CA.
SERVER_CERT = """-----BEGIN CERTIFICATE-----
MIIB4TCCAYagAwIBAgIUOpvKxaD5aWPyhQ4NEaUSAeHlZGQwCgYIKoZIzj0EAwIw
LTESMBAGA1UEAwwJbG9jYWxob3N0MRcwFQYDVQQKDA53c2dpaG9zdCB0ZXN0czAg
Fw0yNjEyMDIxMTU3MjVaGA8yMTI2MTEwODExNTcyNVowLTESMBAGA1UEAwwJbG9j
YWxob3N0MRcwFQYDVQQKDA53c2dpaG9zdCB0ZXN0czBZMBMGByqGSM49AgEGCCqG
SM49AwEHA0IABOo8l3dQe77389jArP/ovWPOLT0fgqswyjFzjhV5s1OW7jbVuZua
pu2FhcbVBPkmUfRdG/pf0jQrMOdDl8BFlwyjgYEwfzAdBgNVHQ4EFgQUw/AnQK+a
1Wk12clJ8PWeCpbic9AwHwYDVR0jBBgwFoAUw/AnQK+a1Wk12clJ8PWeCpbic9Aw
DwYDVR0TAQH/BAUwAwEB/zAsBgNVHREEJTAjgglsb2NhbGhvc3SHBH8AAAGHEAAA
AAAAAAAAAAAAAAAAAAEwCgYIKoZIzj0EAwIDSQAwRgIhAMLX+aZwp6Z8Dp9otGmS
P/6OAdZ1ligBpp9uYDDbreGpAiEA+043vWPQdAf6Z6XOkSxEOToSpjGD+E493scw
3agve6E=
-----END CERTIFICATE-----
"""
SERVER_KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgYGeqmsyVTWFgP/LL
wSmJ77fFS2qoAzHLjlwt9rHK2pmhRANCAATqPJd3UHu+9/PYwKz/6L1jzi09H4Kr
MMoxc44VebNTlu421bmbmqbthYXG1QT5JlH0XRv6X9I0KzDnQ5fARZcM
-----END PRIVATE KEY-----
"""
CLIENT_CERT = """-----BEGIN CERTIFICATE-----
MIIB+jCCAaGgAwIBAgIUZLoYMQTkNRrYVN0o+/W4wfzLL7YwCgYIKoZIzj0EAwIw
UjEVMBMGA1UEAwwMQWxpY2UgQ2xpZW50MRcwFQYDVQQKDA53c2dpaG9zdCB0ZXN0
czEgMB4GCSqGSIb3DQEJARYRYWxpY2VAZXhhbXBsZS5vcmcwIBcNMjYxMjAyMTE1
NzI1WhgPMjEyNjExMDgxMTU3MjVaMFIxFTATBgNVBAMMDEFsaWNlIENsaWVudDEX
MBUGA1UECgwOd3NnaWhvc3QgdGVzdHMxIDAeBgkqhkiG9w0BCQEWEWFsaWNlQGV4
YW1wbGUub3JnMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEWWtSXqdL/7WDs7oh
uio1P/sD/b6NreIWKvLo0VNOTOy8MmKSpN6lT3T3ODazAddETaNmjyVqY9TC/rhY
ufKP7KNTMFEwHQYDVR0OBBYEFMh0WF1U4zVWz/BBlCFXLcVo8usyMB8GA1UdIwQY
MBaAFMh0WF1U4zVWz/BBlCFXLcVo8usyMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZI
zj0EAwIDRwAwRAIgFZ2etooO42fxnOujSMhJehMt8HHsm+5wu+/lMcouhIgCIEi1
wAKz2XcSd5D6U+oG0f+5KvhpKWxuc0wOsfLXQysX
-----END CERTIFICATE-----
"""
CLIENT_KEY = """-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgGLgoUQUw2aMxtyPe
nY69X3ZII0r2BF+2h6pxzmkTX/WhRANCAARZa1Jep0v/tYOzuiG6KjU/+wP9vo2t
4hYq8ujRU05M7LwyYpKk3qVPdPc4NrMB10RNo2aPJWpj1ML+uFi58o/s
-----END PRIVATE KEY-----
"""


def tls_environ_app(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({k: v for k, v in environ.items()
                        if k.startswith(("SSL_", "HTTPS", "wsgi.url_scheme"))}).encode()]


class TLSTests(unittest.TestCase):

    def setUp(self):
        self.cbdir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.cbdir, True)
        for name, text in (("server.pem", SERVER_CERT), ("server.key", SERVER_KEY),
                           ("client.pem", CLIENT_CERT), ("client.key", CLIENT_KEY)):
            with open(os.path.join(self.cbdir, name), "w") as f:
                f.write(text)
        self.client_context = ssl.create_default_context(cadata=SERVER_CERT)

    def start(self, tls=None, options=None, paths=None):
        tls = dict({"key": "server.key", "certificate": "server.pem"}, **(tls or {}))
        config = web_config(paths or {"/": {"type": "wsgi", "module": "test_wsgihost",
                                             "object": "tls_environ_app"},
                                       "ws": {"type": "websocket"}},
                            {"type": "tcp", "port": 0, "interface": "127.0.0.1", "tls": tls},
                            **(options or {}))
        node = wsgihost.Node(config, self.cbdir).start()
        self.addCleanup(node.stop, 0)
        return node, node.transports[0].port

    def get(self, port, path="/", context=None):
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context or self.client_context,
                                           timeout=10)
        self.addCleanup(conn.close)
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp, resp.read()

    def test_https_and_wss_to_a_client_that_verifies_the_certificate(self):
        node, port = self.start(options={"options": {"hsts": True, "hsts_max_age": 600}})
        self.assertEqual(node.urls(), ["https://127.0.0.1:%d/ (wsgi test_wsgihost:tls_environ_app)" % port,
                                       "wss://127.0.0.1:%d/ws (websocket)" % port])
        for _ in range(2):                          # keep-alive over TLS
            resp, body = self.get(port)
            self.assertEqual(resp.status, 200)
            environ = json.loads(body)
            self.assertEqual(environ["wsgi.url_scheme"], "https")
            self.assertEqual(environ["HTTPS"], "on")
            self.assertIn(environ["SSL_PROTOCOL"], ("TLSv1.2", "TLSv1.3"))
            self.assertEqual(environ["SSL_CLIENT_VERIFY"], "NONE")
            self.assertEqual(resp.getheader("Strict-Transport-Security"), "max-age=600")   # RFC 6797
        client = WSClient(port, context=self.client_context)
        self.addCleanup(client.close)
        self.assertEqual(client.status, 101)
        client.send_text("over wss")
        self.assertEqual(client.recv_text(), "over wss")

    def test_tls_1_1_is_refused_and_alpn_says_http_1_1(self):
        node, port = self.start()
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(cadata=SERVER_CERT)
        try:
            with warnings.catch_warnings():     # deprecated, which is the point
                warnings.simplefilter("ignore", DeprecationWarning)
                old.maximum_version = ssl.TLSVersion.TLSv1_1
                old.minimum_version = ssl.TLSVersion.TLSv1
        except (ValueError, ssl.SSLError):
            self.skipTest("this OpenSSL cannot even offer TLS 1.1")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with self.assertRaises(ssl.SSLError):
                old.wrap_socket(raw, server_hostname="localhost")
        context = ssl.create_default_context(cadata=SERVER_CERT)
        context.set_alpn_protocols(["h2", "http/1.1"])
        with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                                 server_hostname="localhost") as sock:
            self.assertEqual(sock.selected_alpn_protocol(), "http/1.1")

    def test_100_clients_stuck_before_the_handshake_do_not_delay_a_fresh_client(self):
        node, port = self.start(options={"options": {"client_timeout": 30}})
        stuck = []
        for _ in range(100):                        # connect, never say hello
            stuck.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        self.addCleanup(lambda: [sock.close() for sock in stuck])
        half = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(half.close)
        half.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, then nothing
        start = time.monotonic()
        resp, body = self.get(port)
        self.assertEqual(resp.status, 200)
        self.assertLess(time.monotonic() - start, 10)   # held by them: 30 s (client_timeout)

    def test_a_stalled_handshake_is_closed_at_client_timeout(self):
        node, port = self.start(options={"options": {"client_timeout": 0.5}})
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(sock.close)
        start = time.monotonic()
        self.assertEqual(sock.recv(100), b"")
        self.assertLess(time.monotonic() - start, 5)

    def test_plain_http_on_a_tls_port_is_closed_and_others_served(self):
        node, port = self.start()
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(sock.close)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertNotIn(b"200 OK", recv_until_closed(sock))
        self.assertEqual(self.get(port)[0].status, 200)

    def test_client_certificate_subject_reaches_the_app(self):
        node, port = self.start(tls={"ca_certificates": ["client.pem"]})
        context = ssl.create_default_context(cadata=SERVER_CERT)
        context.load_cert_chain(os.path.join(self.cbdir, "client.pem"),
                                os.path.join(self.cbdir, "client.key"))
        resp, body = self.get(port, context=context)
        environ = json.loads(body)
        self.assertEqual(environ["SSL_CLIENT_VERIFY"], "SUCCESS")
        self.assertEqual(environ["SSL_CLIENT_S_DN"],
                         "emailAddress=alice@example.org,O=wsgihost tests,CN=Alice Client")
        self.assertEqual(environ["SSL_CLIENT_S_DN_CN"], "Alice Client")
        self.assertEqual(environ["SSL_CLIENT_S_DN_Email"], "alice@example.org")
        self.assertEqual(environ["SSL_CLIENT_I_DN"], environ["SSL_CLIENT_S_DN"])  # self-signed
        with self.assertRaises((ssl.SSLError, ConnectionError)):   # no certificate: refused
            self.get(port)

    def test_distinguished_names_are_escaped_as_rfc_4514_says(self):
        name = ((("countryName", "DE"),), (("organizationName", "A, B + C"),),
                (("commonName", " #x "),))
        self.assertEqual(wsgihost.format_distinguished_name(name), "CN=\\ #x\\ ,O=A\\, B \\+ C,C=DE")

    def test_tls_config_errors_name_the_file(self):
        cases = [
            ({"key": "missing.key", "certificate": "server.pem"},
             'endpoint.tls.key: no such file: %s' % os.path.join(self.cbdir, "missing.key")),
            ({"key": "client.key", "certificate": "server.pem"},
             "endpoint.tls: cannot load the certificate server.pem with the key client.key: "),
            ({"certificate": "server.pem"}, 'endpoint.tls: a TLS endpoint needs "key" (a PEM file)'),
            ({"key": "server.key", "certificate": "server.pem", "ciphers": "NO-SUCH-CIPHER"},
             "endpoint.tls.ciphers: no usable cipher in 'NO-SUCH-CIPHER'"),
            ({"key": "server.key", "certificate": "server.pem", "sni": {}},
             'endpoint.tls: unknown key "sni" (expected one of: ca_certificates, certificate, '
             'chain_certificates, ciphers, dhparam, key)'),
        ]
        for tls, message in cases:
            with self.subTest(tls=tls):
                config = web_config({"/": {"type": "wsgi", "module": "test_wsgihost",
                                           "object": "hello_app"}},
                                    {"type": "tcp", "port": 0, "tls": tls})
                with self.assertRaises(wsgihost.ConfigError) as caught:
                    wsgihost.build_transports(config, self.cbdir, ".crossbar/config.json")
                self.assertIn(".crossbar/config.json: workers[0].transports[0]." + message,
                              str(caught.exception))
                self.assertNotIn("\n", str(caught.exception))

    def test_wss_broadcast_clients_wait_in_the_selector(self):
        """wss:// on a broadcast path: no thread per client; a message larger than the
        socket takes at once (TLS sends that must be retried), a broadcast, the close."""
        node, port = self.start()
        transport = node.transports[0]
        clients = [WSClient(port, context=self.client_context) for _ in range(5)]
        for client in clients:
            self.addCleanup(client.close)
            self.assertEqual(client.status, 101)
        channel = transport.channels["/ws"]
        deadline = time.monotonic() + 30
        while len(channel) < 5:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)
        self.assertEqual(sorted(conn.state for conn in transport.connections), ["websocket"] * 5)
        big = os.urandom(2 * 1024 * 1024)
        clients[0].send(Opcode.BINARY, big)
        for client in clients:                                  # broadcast: everyone, the sender too
            self.assertEqual(client.recv_frame(), (Opcode.BINARY, big))
        self.assertEqual(channel.broadcast("over wss"), 5)
        for client in clients:
            self.assertEqual(client.recv_text(), "over wss")
        clients[1].send(Opcode.CLOSE, b"\x03\xe8")
        self.assertEqual(clients[1].expect_close(), 1000)


class WaitingRoomTests(unittest.TestCase):
    """Section 11: what waits holds a socket, not a thread; every wait has a bound."""

    def wait_for(self, condition, timeout=10, what="condition"):
        deadline = time.monotonic() + timeout
        while not condition():
            self.assertLess(time.monotonic(), deadline, what)
            time.sleep(0.01)

    def hung_node(self, maxthreads=2, **options):
        """A node with an app that hangs (until released) on /hung and a quick one on /ok."""
        release = threading.Event()
        self.addCleanup(release.set)

        def hung(environ, start_response):
            release.wait(30)
            start_response("200 OK", TEXT)
            return [b"late"]
        children = {"hung": wsgihost.WSGIService(hung, "test:hung", maxthreads=maxthreads),
                    "ok": wsgihost.WSGIService(hello_app, "test:ok")}
        limits = wsgihost.Limits(**options)
        transport = wsgihost.WebTransport(wsgihost.PathNode(children), "127.0.0.1", 0, limits=limits)
        node = wsgihost.Node(transports=[transport]).start()
        self.addCleanup(node.stop, 0)
        return transport, release

    def get(self, port, path, timeout=10):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.addCleanup(conn.close)
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp, resp.read()

    def test_a_hung_app_and_1000_abandoned_requests_cost_another_app_nothing(self):
        threads_before = threading.active_count()
        transport, release = self.hung_node()
        for _ in range(1000):                   # sent, then abandoned at once
            with socket.create_connection(("127.0.0.1", transport.port), timeout=10) as sock:
                sock.sendall(b"GET /hung HTTP/1.1\r\nHost: a\r\n\r\n")
        start = time.monotonic()
        resp, body = self.get(transport.port, "/ok")
        self.assertEqual((resp.status, body), (200, b"Hello, World!"))
        self.assertLess(time.monotonic() - start, 10)   # blocked: until the hang ends, 30 s
        # The two requests inside the hung app keep their connections; every
        # other one is gone, and no thread was spent on any of them.
        self.wait_for(lambda: len(transport.connections) <= 2, what="abandoned requests not dropped")
        self.assertLessEqual(threading.active_count(), threads_before + 2 + 2)  # + room, + /ok's
        self.assertEqual(len(transport.server.room.queued), 0)
        self.assertEqual(len(transport.root.children["hung"].gate.waiting), 0)
        release.set()
        self.wait_for(lambda: not transport.connections, what="hung requests not finished")

    def test_queue_timeout_answers_503_with_retry_after(self):
        transport, release = self.hung_node(maxthreads=1, queue_timeout=0.5)
        first = socket.create_connection(("127.0.0.1", transport.port), timeout=10)
        self.addCleanup(first.close)
        first.sendall(b"GET /hung HTTP/1.1\r\nHost: a\r\n\r\n")
        self.wait_for(lambda: any(c.state == "active" for c in list(transport.connections)))
        start = time.monotonic()
        resp, body = self.get(transport.port, "/hung")
        self.assertEqual(resp.status, 503)
        self.assertEqual(resp.getheader("Retry-After"), "1")
        self.assertEqual(resp.getheader("Connection"), "close")
        self.assertGreaterEqual(time.monotonic() - start, 0.4)
        release.set()
        self.assertTrue(first.recv(4096).startswith(b"HTTP/1.1 200 OK"))

    def test_max_websockets_is_a_limit_apart_from_http(self):
        config = web_config({"ws": {"type": "websocket"}, "/": {"type": "wsgi", "module": "test_wsgihost",
                                                                "object": "hello_app"}},
                            {"type": "tcp", "port": 0, "interface": "127.0.0.1"},
                            options={"max_websockets": 2})
        node = wsgihost.Node(config).start()
        self.addCleanup(node.stop, 0)
        port = node.transports[0].port
        clients = [WSClient(port) for _ in range(2)]
        for client in clients:
            self.addCleanup(client.close)
            self.assertEqual(client.status, 101)
        third = WSClient(port)
        self.addCleanup(third.close)
        self.assertEqual(third.status, 503)
        self.assertIn("Retry-After: 5\r\n", third.head)
        self.assertEqual(self.get(port, "/")[0].status, 200)      # HTTP keeps its own room
        clients[0].close()
        channel = node.transports[0].channels["/ws"]
        self.wait_for(lambda: len(channel) == 1)
        deadline = time.monotonic() + 30
        while True:                             # the slot frees once its thread is done
            again = WSClient(port)
            self.addCleanup(again.close)
            if again.status == 101 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertEqual(again.status, 101)

    def test_max_connections_per_client(self):
        node, port = start_node(hello_app, max_connections_per_client=3)
        self.addCleanup(node.stop, 0)
        socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        for sock in socks:
            self.addCleanup(sock.close)
        self.wait_for(lambda: len(node.transports[0].connections) == 3)
        fourth = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(fourth.close)
        self.assertEqual(fourth.recv(100), b"")                 # closed unread
        socks[0].close()
        self.wait_for(lambda: len(node.transports[0].connections) == 2)
        self.assertEqual(self.get(port, "/")[0].status, 200)

    def test_slow_uploads_and_slow_readers_do_not_hold_the_apps_slots(self):
        """20 clients sending a body at 2 bytes/s and 20 reading a large response at 8 KiB/s,
        to an app with maxthreads 20: a fresh request to it is answered (within 2 s, idle)."""
        big = b"x" * (4 * 1024 * 1024)

        def app(environ, start_response):
            if environ["REQUEST_METHOD"] == "POST":
                body = environ["wsgi.input"].read()
                start_response("200 OK", TEXT)
                return [b"got %d" % len(body)]
            start_response("200 OK", TEXT)
            return [big if environ["PATH_INFO"] == "/big" else b"small"]
        node, port = start_node(app, client_timeout=30)
        self.addCleanup(node.stop, 0)
        slow = []
        self.addCleanup(lambda: [sock.close() for sock in slow])
        for _ in range(20):                     # uploads: the head, then a trickle
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\nab")
            slow.append(sock)
        readers = []
        for _ in range(20):                     # readers of 4 MiB that take 8 KiB now and then
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
            readers.append(sock)
        slow.extend(readers)
        stop = threading.Event()
        self.addCleanup(stop.set)

        def trickle():
            while not stop.wait(0.5):
                for sock in slow[:20]:
                    sock.send(b"c")             # 2 bytes/s
                for sock in readers:
                    sock.recv(4096)             # 8 KiB/s
        threading.Thread(target=trickle, daemon=True).start()
        time.sleep(1.5)                         # all 40 are in, and slow
        start = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.addCleanup(conn.close)
        conn.request("GET", "/small")
        self.assertEqual(conn.getresponse().read(), b"small")
        self.assertLess(time.monotonic() - start, 10)   # held: as long as they trickle
        stop.set()
        time.sleep(0.6)                         # the trickle has stopped
        for sock in readers[:3]:                # the slow readers are still being served
            sock.settimeout(10)
            received = 0
            while received < 256 * 1024:
                chunk = sock.recv(65536)
                self.assertTrue(chunk)
                received += len(chunk)

    def test_a_reader_that_stops_reading_a_whole_response_is_closed_at_client_timeout(self):
        big = b"x" * (16 * 1024 * 1024)
        node, port = start_node(lambda e, s: (s("200 OK", TEXT), [big])[1], client_timeout=1)
        self.addCleanup(node.stop, 0)
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(sock.close)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.wait_for(lambda: [c.state for c in node.transports[0].connections] == ["sending"],
                      what="the rest of the response was not left to the waiting room")
        self.wait_for(lambda: not node.transports[0].connections, what="never closed")

    def test_a_streamed_body_slower_than_min_rate_gets_408(self):
        node, port = start_node(environ_app, client_timeout=30, min_rate=1000,
                                body_buffer_size=0)
        self.addCleanup(node.stop, 0)
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.addCleanup(sock.close)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n")
        start = time.monotonic()
        data = b""
        while not data:                         # a byte a second: under min_rate after 10 s
            sock.send(b"z")
            sock.settimeout(1.0)
            try:
                data = sock.recv(4096)
            except socket.timeout:
                pass
            self.assertLess(time.monotonic() - start, 25)
        self.assertTrue(data.startswith(b"HTTP/1.1 408 "), data)
        self.assertIn(b"slower than 1000 bytes/s", data)
        self.assertGreater(time.monotonic() - start, 9)    # MIN_RATE_GRACE first

    def test_a_small_body_is_read_whole_before_the_app_runs(self):
        calls = []

        def app(environ, start_response):
            calls.append(environ["wsgi.input"].read())
            start_response("200 OK", TEXT)
            return [b"ok"]
        node, port = start_node(app, client_timeout=30)
        self.addCleanup(node.stop, 0)
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(sock.close)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabc")
        time.sleep(0.5)
        self.assertEqual(calls, [])             # the app has not been called yet
        self.assertEqual([c.state for c in node.transports[0].connections], ["body"])
        sock.sendall(b"def")
        self.assertTrue(sock.recv(4096).startswith(b"HTTP/1.1 200 OK"))
        self.assertEqual(calls, [b"abcdef"])

    def test_out_of_descriptors_accept_backs_off_instead_of_spinning(self):
        if not os.path.exists("/proc/self/stat"):
            self.skipTest("needs /proc to read the server's CPU time")
        import resource
        port = free_port()
        limit = 48

        def low_limit():
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, "wsgihost.py"), "--app",
                                 "test_wsgihost:hello_app", "--port", str(port)], cwd=HERE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                preexec_fn=low_limit)
        self.addCleanup(proc.kill)
        SubprocessTests.wait_for_port(self, port, proc)
        socks = []
        self.addCleanup(lambda: [s.close() for s in socks])
        for _ in range(limit + 20):             # more than it has descriptors for
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))

        def cpu_seconds():
            with open("/proc/%d/stat" % proc.pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        time.sleep(0.5)
        before = cpu_seconds()
        time.sleep(2.0)
        self.assertLess(cpu_seconds() - before, 0.5)             # a spinning loop burns ~2 s
        for sock in socks:
            sock.close()
        deadline = time.monotonic() + 30
        while True:                             # served again once descriptors are free
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/")
                self.assertEqual(conn.getresponse().read(), b"Hello, World!")
                conn.close()
                break
            except OSError:
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1].decode()
        self.assertIn("cannot accept connections", err)
        self.assertEqual(err.count("cannot accept connections"), 1)     # said once

    def slot_node(self, app, **options):
        """``app`` on "/" with one slot (maxthreads 1), "/ok" beside it sharing nothing."""
        service = wsgihost.WSGIService(app, "test:app", maxthreads=1)
        transport = wsgihost.WebTransport(wsgihost.PathNode(default=service), "127.0.0.1", 0,
                                          limits=wsgihost.Limits(**options))
        node = wsgihost.Node(transports=[transport]).start()
        self.addCleanup(node.stop, 0)
        return transport

    def test_a_streamed_response_read_slower_than_min_rate_is_cut_and_frees_the_slot(self):
        # Issue 9: a client that reads a streamed body a little at a time, each
        # send within client_timeout, held the app's thread and slot for as long
        # as the body lasted. Now it is held to min_rate after the grace.
        def app(environ, start_response):
            start_response("200 OK", TEXT)
            if environ["PATH_INFO"] == "/small":
                return [b"small"]
            return (b"x" * 16384 for _ in range(4096))     # 64 MiB, streamed (chunked)
        # 100 KB/s: what the kernel holds for the client (megabytes) does not count
        # as read, or it would buy this reader minutes.
        transport = self.slot_node(app, min_rate=100000, client_timeout=30, queue_timeout=30)
        slow = socket.create_connection(("127.0.0.1", transport.port), timeout=10)
        self.addCleanup(slow.close)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        received = []

        def read_slowly():                      # about 40 KB/s
            try:
                while True:
                    chunk = slow.recv(4096)
                    if not chunk:
                        break
                    received.append(len(chunk))
                    time.sleep(0.1)
            except OSError:
                pass
        with mock.patch.object(wsgihost, "MIN_RATE_GRACE", 1.0), \
                self.assertLogs("wsgihost", "INFO") as logs:
            slow.sendall(b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n")
            reader = threading.Thread(target=read_slowly, daemon=True)
            reader.start()
            self.wait_for(lambda: received, what="the streamed response never started")
            # The one slot is taken by the slow reader; this request waits for it
            # and gets it once the reader is cut (on the old code: 503 after 30 s).
            resp, body = self.get(transport.port, "/small", timeout=60)
            self.assertEqual((resp.status, body), (200, b"small"))
            reader.join(60)
            self.assertFalse(reader.is_alive(), "the slow reader was never cut")
        self.assertLess(sum(received), 64 * 1024 * 1024)     # cut before the end
        self.assertTrue(any("slower than 100000 bytes/s (min_rate)" in line
                            for line in logs.output), logs.output)

    def test_a_fast_reader_of_a_long_streamed_response_is_not_cut_by_min_rate(self):
        def app(environ, start_response):
            start_response("200 OK", TEXT)
            for _ in range(200):                # 3.2 MiB over more than twice the grace
                time.sleep(0.0125)
                yield b"y" * 16384
        transport = self.slot_node(app, min_rate=1000, client_timeout=30)
        with mock.patch.object(wsgihost, "MIN_RATE_GRACE", 1.0):
            resp, body = self.get(transport.port, "/", timeout=60)
        self.assertEqual((resp.status, len(body)), (200, 200 * 16384))

    def test_bytes_of_an_earlier_response_still_queued_do_not_count_against_the_next(self):
        # A pipelining client reads the responses in order, so the kernel may
        # still hold megabytes of the first when the next begins to go out. Those
        # count as taken when the client takes them, not against the next one's
        # pace (issue 9's review: a client reading at 3x min_rate was cut).
        size = 3 * 1024 * 1024

        def app(environ, start_response):
            start_response("200 OK", TEXT)
            if environ["PATH_INFO"] == "/stream":
                return (b"s" * 65536 for _ in range(size // 65536))     # _send_paced
            if environ["PATH_INFO"] == "/last":     # long enough to be paced past the grace
                return [b"w" * (2 * size)]
            return [b"w" * size]                # given whole: the room sends it
        transport = self.slot_node(app, min_rate=512 * 1024, client_timeout=30)
        sock = socket.create_connection(("127.0.0.1", transport.port), timeout=10)
        self.addCleanup(sock.close)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        # Read at 3x min_rate: the kernel holds up to about 4 MB for the client,
        # which it takes more than the grace to read.
        rate = 1536 * 1024
        with mock.patch.object(wsgihost, "MIN_RATE_GRACE", 1.0), \
                self.assertLogs("wsgihost", "DEBUG") as logs:
            # (The kernel's send buffer grows while the first goes out.) Then
            # the thread's pace (a streamed body) and the room's (given whole)
            # each begin behind megabytes of the response before.
            sock.sendall(b"GET /whole HTTP/1.1\r\nHost: a\r\n\r\n" * 2
                         + b"GET /stream HTTP/1.1\r\nHost: a\r\n\r\n"
                         b"GET /last HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            received = bytearray()
            start = time.monotonic()
            while True:
                try:
                    chunk = sock.recv(16384)
                except ConnectionResetError:    # cut: the log says why
                    break
                if not chunk:
                    break
                received += chunk
                ahead = start + len(received) / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            logging.getLogger("wsgihost").debug("(the end)")
        self.assertFalse([line for line in logs.output if "min_rate" in line])
        self.assertEqual(received.count(b"HTTP/1.1 200 OK"), 4, received[-200:])
        runs = lambda byte: sum(map(len, re.findall(byte + b"{1000,}", received)))  # noqa: E731
        self.assertEqual((runs(b"w"), runs(b"s")), (4 * size, size))

    def test_an_app_that_streams_slowly_to_a_fast_reader_is_not_cut_by_min_rate(self):
        # Server-sent events, long polling: the app's own time between blocks is
        # not the client's slowness (review of the first min_rate for responses,
        # which cut this stream after the grace).
        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/event-stream")])
            for n in range(8):
                time.sleep(0.5)                 # 4 s in all, four times the grace
                yield b"data: tick %d\n\n" % n
        transport = self.slot_node(app, min_rate=100000, client_timeout=30)
        with mock.patch.object(wsgihost, "MIN_RATE_GRACE", 1.0):
            resp, body = self.get(transport.port, "/", timeout=60)
        self.assertEqual(resp.status, 200)
        self.assertEqual(body, b"".join(b"data: tick %d\n\n" % n for n in range(8)))

    def test_one_large_streamed_block_read_slower_than_min_rate_is_cut(self):
        # The pace is checked between the slices of one send, not only between
        # the app's blocks: one 64 MiB block is not one free pass.
        def app(environ, start_response):
            start_response("200 OK", TEXT)
            if environ["PATH_INFO"] == "/small":
                return [b"small"]
            return iter([b"x" * (64 * 1024 * 1024)])    # streamed: no len()
        transport = self.slot_node(app, min_rate=100000, client_timeout=30, queue_timeout=30)
        slow = socket.create_connection(("127.0.0.1", transport.port), timeout=10)
        self.addCleanup(slow.close)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        received = []

        def read_slowly():                      # about 40 KB/s
            try:
                while True:
                    chunk = slow.recv(4096)
                    if not chunk:
                        break
                    received.append(len(chunk))
                    time.sleep(0.1)
            except OSError:
                pass
        with mock.patch.object(wsgihost, "MIN_RATE_GRACE", 1.0):
            slow.sendall(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
            reader = threading.Thread(target=read_slowly, daemon=True)
            reader.start()
            self.wait_for(lambda: received, what="the response never started")
            resp, body = self.get(transport.port, "/small", timeout=60)
            self.assertEqual((resp.status, body), (200, b"small"))
            reader.join(60)
            self.assertFalse(reader.is_alive(), "the slow reader was never cut")
        self.assertLess(sum(received), 64 * 1024 * 1024)

    def test_a_body_given_whole_read_slower_than_min_rate_is_reset_by_the_waiting_room(self):
        # The rest of a response given whole goes out from the selector, with no
        # thread; it too is held to min_rate, so that slow readers cannot keep
        # sockets (and the body's memory) for as long as they keep reading a little.
        big = b"z" * (32 * 1024 * 1024)
        transport = self.slot_node(lambda e, s: (s("200 OK", TEXT), [big])[1],
                                   min_rate=100000, client_timeout=30)
        slow = socket.create_connection(("127.0.0.1", transport.port), timeout=10)
        self.addCleanup(slow.close)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        received = []
        with mock.patch.object(wsgihost, "MIN_RATE_GRACE", 1.0), \
                self.assertLogs("wsgihost", "INFO") as logs:
            slow.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            start = time.monotonic()
            try:
                while time.monotonic() - start < 60:     # about 40 KB/s
                    chunk = slow.recv(4096)
                    if not chunk:
                        break
                    received.append(len(chunk))
                    time.sleep(0.1)
            except OSError:                     # the reset
                pass
            self.assertLess(time.monotonic() - start, 60, "never cut")
        self.assertLess(sum(received), len(big))
        self.assertTrue(any("(min_rate)" in line for line in logs.output), logs.output)
        self.wait_for(lambda: not transport.connections, what="the connection was not closed")

    def test_the_access_log_counts_the_bytes_the_room_sent_not_those_handed_to_it(self):
        # A body given whole, or a file, goes out from the waiting room after the
        # app is done; its access-log line waits for the end of the sending, and
        # says what went out -- as nginx's $body_bytes_sent does for a client
        # that leaves mid-download -- not what was handed over.
        big = os.urandom(16 * 1024 * 1024)      # four times what the kernel queues
        service = wsgihost.WSGIService(lambda e, s: (s("200 OK", TEXT), [big])[1], "test:app")
        transport = wsgihost.WebTransport(wsgihost.PathNode(default=service), "127.0.0.1", 0,
                                          limits=wsgihost.Limits(client_timeout=30),
                                          access_log=True)
        node = wsgihost.Node(transports=[transport]).start()
        self.addCleanup(node.stop, 0)
        with self.assertLogs("wsgihost.access", "INFO") as logs:
            whole = socket.create_connection(("127.0.0.1", transport.port), timeout=10)
            self.addCleanup(whole.close)
            whole.sendall(b"GET /whole HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            received = bytearray()
            while True:
                chunk = whole.recv(1 << 20)
                if not chunk:
                    break
                received += chunk
            self.assertEqual(received[-len(big):], big)
            self.wait_for(lambda: any("/whole" in line for line in logs.output),
                          what="no access-log line for the whole download")

            gone = socket.create_connection(("127.0.0.1", transport.port), timeout=10)
            self.addCleanup(gone.close)
            gone.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            gone.sendall(b"GET /gone HTTP/1.1\r\nHost: a\r\n\r\n")
            got = 0
            while got < 100000:
                chunk = gone.recv(65536)
                self.assertTrue(chunk, "closed after %d bytes" % got)
                got += len(chunk)
            self.wait_for(lambda: transport.connections and all(
                conn.state is wsgihost.SENDING for conn in list(transport.connections)),
                what="the rest of the body was not handed to the room")
            self.assertFalse(any("/gone" in line for line in logs.output),
                             "logged before its bytes went out: %r" % logs.output)
            # Gone with a reset: the room's next send fails.
            gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            gone.close()
            self.wait_for(lambda: any("/gone" in line for line in logs.output),
                          what="no access-log line for the download cut short")
        sizes = {line.split('"')[1].split()[1]: line.split('"')[2].split()[1] for line in logs.output}
        self.assertEqual(sizes["/whole"], str(len(big)))
        self.assertGreaterEqual(int(sizes["/gone"]), 100000 - 200)       # (less its head)
        self.assertLess(int(sizes["/gone"]), len(big) // 2)

    def test_a_file_response_leaves_the_app_slot_while_a_slow_client_reads_it(self):
        # Issue 9: wsgi.file_wrapper around a real file (and so every static
        # file) was sent with sendfile() from the app's thread, which a client
        # that reads slowly held for as long as it liked. Now the waiting room
        # sends it, from a descriptor of its own, once the app is done.
        content = os.urandom(4 * 1024 * 1024)
        tmp = tempfile.NamedTemporaryFile(delete=False)
        self.addCleanup(os.unlink, tmp.name)
        tmp.write(content)
        tmp.close()

        def app(environ, start_response):
            if environ["PATH_INFO"] == "/small":
                start_response("200 OK", TEXT)
                return [b"small"]
            start_response("200 OK", [("Content-Type", "application/octet-stream")])
            return environ["wsgi.file_wrapper"](open(tmp.name, "rb"))
        transport = self.slot_node(app, client_timeout=60, queue_timeout=10)
        fds = lambda: len(os.listdir("/proc/self/fd"))      # noqa: E731
        baseline = fds() if os.path.isdir("/proc/self/fd") else None
        readers = []
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", transport.port), timeout=30)
            self.addCleanup(sock.close)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            sock.sendall(b"GET /file HTTP/1.1\r\nHost: a\r\n\r\n")
            readers.append(sock)
        self.wait_for(lambda: [c.state for c in list(transport.connections)] == ["sending"] * 2,
                      what="the files were not left to the waiting room")
        # The app's one slot is free while both clients read nothing: on the old
        # code this request waited for it and got 503 after queue_timeout.
        resp, body = self.get(transport.port, "/small", timeout=60)
        self.assertEqual((resp.status, body), (200, b"small"))
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < len(content):
            chunk = readers[0].recv(65536)
            self.assertTrue(chunk, "closed before the whole file")
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        self.assertIn(b"\r\nContent-Length: %d\r\n" % len(content), head)
        self.assertEqual(body, content)         # every byte, in order
        readers[1].close()                      # the other leaves halfway: its file is closed
        readers[0].close()
        if baseline is not None:
            self.wait_for(lambda: fds() <= baseline,
                          what="descriptors left open: %d > %d" % (fds(), baseline))


class TLSCommandLineTests(unittest.TestCase):
    """--certfile/--keyfile and --forwarded-allow-ips, as a gunicorn user types them."""

    def test_an_app_over_https_with_trusted_proxies_from_the_command_line(self):
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder, True)
        for name, text in (("server.pem", SERVER_CERT), ("server.key", SERVER_KEY)):
            with open(os.path.join(folder, name), "w") as f:
                f.write(text)
        port = free_port()
        env = dict(os.environ, PYTHONPATH=HERE)
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, "wsgihost.py"),
                                 "test_wsgihost:environ_app", "--bind", "127.0.0.1:%d" % port,
                                 "--certfile", "server.pem", "--keyfile", "server.key",
                                 "--forwarded-allow-ips", "127.0.0.1, 10.0.0.0/8"], cwd=folder, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.addCleanup(proc.kill)
        SubprocessTests.wait_for_port(self, port, proc)
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=30,
                                           context=ssl.create_default_context(cadata=SERVER_CERT))
        self.addCleanup(conn.close)
        conn.request("GET", "/", headers={"X-Forwarded-For": "198.51.100.4"})
        env = json.loads(conn.getresponse().read())
        self.assertEqual((env["wsgi.url_scheme"], env["HTTPS"], env["REMOTE_ADDR"]),
                         ("https", "on", "198.51.100.4"))
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=60)[1].decode()
        self.assertEqual(proc.returncode, 0, err)
        self.assertIn("serving https://127.0.0.1:%d/" % port, err)

    def test_tls_flags_need_each_other_and_an_app(self):
        for argv, message in ((["x:app", "--certfile", "a.pem"],
                               "wsgihost: --keyfile: TLS needs both --certfile and --keyfile"),
                              ([os.path.join(HERE, "examples", "hello", ".crossbar"), "--certfile", "a"],
                               "wsgihost: --certfile: applies to an app given on the command line; "
                               "a config file names its own endpoints")):
            with self.subTest(argv=argv):
                status, out, err = CommandLineTests.run_main(self, *argv, "--check")
                self.assertEqual(status, 2)
                self.assertEqual(err.strip().splitlines()[-1], message)


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
        node, port = start_node(hello_app, client_timeout=10)
        self.addCleanup(node.stop, 0)
        stalled = []
        for _ in range(500):                        # half a request head each, then nothing
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
            stalled.append(sock)
        self.addCleanup(lambda: [sock.close() for sock in stalled])
        start = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/")
        self.assertEqual(conn.getresponse().read(), b"Hello, World!")
        conn.close()
        self.assertLess(time.monotonic() - start, 3.0)  # the waiting room: milliseconds, idle
        # Not delayed: served while all 500 still wait, before client_timeout
        # cuts the first of them -- the clock that matters, not a wall-clock
        # bound (a busy machine takes seconds to open 500 connections).
        for sock in stalled:
            sock.settimeout(0)
            with self.assertRaises(BlockingIOError):
                sock.recv(4096)                     # no answer, no FIN: still waiting
            sock.settimeout(30)
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
        deadline = time.monotonic() + 30
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
        self.assertTrue(closed.wait(30))
        self.wait_until_idle(node)

    def test_websocket_client_gone_mid_frame(self):
        node = wsgihost.Node(WS_CONFIG).start()
        self.addCleanup(node.stop, 0)
        client = WSClient(node.transports[0].port)
        channel = node.transports[0].channels["/ws"]
        deadline = time.monotonic() + 30
        while len(channel) != 1:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)
        client.sock.sendall(build_frame(Opcode.TEXT, b"x" * 1000, mask=b"abcd")[:100])
        client.close()
        while len(channel) or node.transports[0].connections:
            self.assertLess(time.monotonic(), deadline, "the WebSocket was not released")
            time.sleep(0.01)


def slow_app(environ, start_response):
    """For the shutdown test: a response in flight until the test has sent SIGTERM.

    It creates the file named by its query string to say it has begun, then
    waits until the test removes it (30 s at most).
    """
    flag = environ["QUERY_STRING"]
    open(flag, "w").close()
    deadline = time.monotonic() + 30
    while os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.01)
    start_response("200 OK", TEXT)
    return [b"slow but whole " * 1000]


def counting_app(environ, start_response):
    """For the shutdown test: appends the request's id to $WSGIHOST_TEST_LOG, echoes it."""
    ident = environ["wsgi.input"].read()
    with open(os.environ["WSGIHOST_TEST_LOG"], "ab") as f:
        f.write(ident + b"\n")
    start_response("200 OK", TEXT)
    return [ident]


class ShutdownTests(unittest.TestCase):

    def test_sigterm_under_keep_alive_load_loses_nothing_20_times(self):
        """A request is answered, or its connection closed before the app saw it (so a client
        may send it again): 50 keep-alive POST loops, SIGTERM mid-load, 20 runs."""
        log_dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, log_dir, True)
        for run in range(20):
            log_file = os.path.join(log_dir, "run%d" % run)
            port = free_port()
            proc = subprocess.Popen([sys.executable, os.path.join(HERE, "wsgihost.py"), "--app",
                                     "test_wsgihost:counting_app", "--port", str(port),
                                     "--loglevel", "error"], cwd=HERE,
                                    env=dict(os.environ, WSGIHOST_TEST_LOG=log_file),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self.addCleanup(proc.kill)
            SubprocessTests.wait_for_port(self, port, proc)
            answered, unanswered = set(), set()
            lock = threading.Lock()
            started = threading.Barrier(51)
            first_answers = threading.Semaphore(0)

            def client(n):
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
                except OSError:
                    started.wait()
                    return
                started.wait()
                with sock:
                    for i in range(100000):
                        ident = b"%d-%d" % (n, i)
                        try:
                            sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s"
                                         % (len(ident), ident))
                            data = b""
                            while not data.endswith(b"\r\n\r\n" + ident):
                                chunk = sock.recv(4096)
                                if not chunk:
                                    raise ConnectionResetError("closed")
                                data += chunk
                        except OSError:
                            with lock:
                                unanswered.add(ident)
                            return
                        with lock:
                            answered.add(ident)
                        if i == 0:
                            first_answers.release()
                        if b"Connection: close" in data:
                            return
            threads = [threading.Thread(target=client, args=(n,)) for n in range(50)]
            for thread in threads:
                thread.start()
            started.wait()
            for _ in range(50):                 # every client is in its loop...
                self.assertTrue(first_answers.acquire(timeout=30))
            time.sleep(0.1)                     # ... and the load goes on
            proc.send_signal(signal.SIGTERM)
            for thread in threads:
                thread.join(30)
            err = proc.communicate(timeout=60)[1]
            self.assertEqual(proc.returncode, 0, err)
            with open(log_file, "rb") as f:
                seen = set(f.read().split())
            self.assertGreaterEqual(len(answered), 50)
            self.assertEqual(unanswered & seen, set(), "run %d: requests the app served, unanswered"
                             % run)
            self.assertEqual(answered - seen, set())

    def test_sigterm_lets_the_request_in_flight_finish(self):
        port = free_port()
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, "wsgihost.py"), "--app",
                                 "test_wsgihost:slow_app", "--port", str(port)], cwd=HERE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(proc.kill)
        SubprocessTests.wait_for_port(self, port, proc)
        flag = os.path.join(tempfile.mkdtemp(), "in-flight")
        self.addCleanup(shutil.rmtree, os.path.dirname(flag))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/?" + flag)
        wait_until(lambda: os.path.exists(flag), "the app never began")
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: refused(port), "the server went on accepting after SIGTERM")
        os.remove(flag)                             # only now may the app finish
        resp = conn.getresponse()
        self.assertEqual((resp.status, resp.read()), (200, b"slow but whole " * 1000))
        self.assertEqual(resp.getheader("Connection"), "close")
        conn.close()
        out, err = proc.communicate(timeout=60)
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
        deadline = time.monotonic() + 600
        for t in threads:
            t.join(max(0, deadline - time.monotonic()))
        self.assertEqual(errors, [])
        self.assertEqual([t for t in threads if t.is_alive()], [])     # every client finished

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

    def test_tls_endpoint_without_its_key(self):
        self.assertConfigError(web_config({}, {"type": "tcp", "port": 1, "tls": {}}),
                               '.crossbar/config.json: workers[0].transports[0].endpoint.tls: a TLS '
                               'endpoint needs "key" (a PEM file)')

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
                               '"client_timout" (expected one of: access_log, body_buffer_size, '
                               'client_timeout, display_tracebacks, hsts, hsts_max_age, max_body_size, '
                               'max_connections, max_connections_per_client, max_head_size, '
                               'max_header_fields, max_header_line, max_request_line, max_websockets, '
                               'min_rate, queue_timeout, shutdown_grace, trusted_proxies)')
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

    def test_non_finite_and_endless_timeouts_refused(self):
        # json.loads gives inf for 1e400 and accepts Infinity and NaN; each passes a
        # "> 0" test and then breaks settimeout() on every connection (or never fires).
        where = ".crossbar/config.json: workers[0].transports[0]."
        for value, shown in ((float("inf"), "inf"), (float("nan"), "nan"), (float("-inf"), "-inf")):
            with self.subTest(value=value):
                self.assertConfigError(web_config({}, options={"client_timeout": value}),
                                       where + "options.client_timeout: expected a number of seconds, "
                                       "got a number that is not finite (%s)" % shown)
        self.assertConfigError(web_config({"ws": {"type": "websocket", "options": {
                                   "close_handshake_timeout": float("inf")}}}),
                               where + 'paths["ws"].options.close_handshake_timeout: expected a number '
                               'of milliseconds, got a number that is not finite (inf)')
        self.assertConfigError(web_config({}, options={"shutdown_grace": 1e10}),
                               where + "options.shutdown_grace: must be at most 31536000 seconds "
                               "(a year), got 10000000000.0")
        self.assertConfigError(web_config({"ws": {"type": "websocket", "options": {
                                   "auto_ping_interval": 10 ** 11}}}),
                               where + 'paths["ws"].options.auto_ping_interval: must be at most '
                               '31536000000 milliseconds (a year), got 100000000000')
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "config.json")
            with open(path, "w") as f:
                f.write('{"workers": [], "x": Infinity}')
            with self.assertRaises(wsgihost.ConfigError) as ctx:
                wsgihost.load_config(path)
        self.assertEqual(str(ctx.exception), "%s: invalid JSON: Infinity is not a JSON number "
                                             "(RFC 8259 §6: no Infinity or NaN)" % path)

    def test_top_level_slash_of_type_path_refused(self):
        hello = {"type": "wsgi", "module": "test_wsgihost", "object": "hello_app"}
        for paths, where in (({"/": {"type": "path", "paths": {"a": hello}}}, 'paths["/"]'),
                             ({"p": {"type": "path", "paths": {"/": {"type": "path", "paths": {}}}}},
                              'paths["p"].paths["/"]')):
            with self.subTest(where=where):
                self.assertConfigError(web_config(paths), '.crossbar/config.json: workers[0].transports[0].'
                                                          '%s: "/" must be a service, not a nested path' % where)

    def test_backlog_bounded(self):
        # 3e9 would overflow listen(); the kernel caps at net.core.somaxconn anyway.
        self.assertConfigError(web_config({}, {"type": "tcp", "port": 0, "backlog": 3000000000}),
                               ".crossbar/config.json: workers[0].transports[0].endpoint.backlog: "
                               "must be 1 to 65535, got 3000000000")
        self.assertConfigError(web_config({}, {"type": "tcp", "port": 0, "backlog": 65536}),
                               ".crossbar/config.json: workers[0].transports[0].endpoint.backlog: "
                               "must be 1 to 65535, got 65536")
        transport = wsgihost.build_transports(web_config({"ws": {"type": "websocket"}},
                                                         {"type": "tcp", "port": 0, "backlog": 65535}))[0]
        self.assertEqual(transport.backlog, 65535)

    def test_port_env_var_must_be_ascii_digits(self):
        # "²".isdigit() is True, int("²") a ValueError: a traceback instead of one line.
        for value in ("\u00b2", "\u0661\u0662", "80 ", "+80", "123456"):
            with self.subTest(value=value):
                os.environ["WSGIHOST_TEST_PORT"] = value
                self.addCleanup(os.environ.pop, "WSGIHOST_TEST_PORT", None)
                self.assertConfigError(web_config({}, {"type": "tcp", "port": "$WSGIHOST_TEST_PORT"}),
                                       ".crossbar/config.json: workers[0].transports[0].endpoint.port: "
                                       "environment variable WSGIHOST_TEST_PORT is %r, not a port number"
                                       % value)

    def test_ipv6_interface_chooses_ipv6(self):
        ws = {"ws": {"type": "websocket"}}
        for endpoint, family in (({"interface": "::1"}, socket.AF_INET6),
                                 ({"interface": "::"}, socket.AF_INET6),
                                 ({"interface": "127.0.0.1"}, socket.AF_INET),
                                 ({"interface": "localhost"}, socket.AF_INET),
                                 ({}, socket.AF_INET),
                                 ({"version": 6}, socket.AF_INET6),
                                 ({"interface": "localhost", "version": 6}, socket.AF_INET6),
                                 ({"interface": "::1", "version": 6}, socket.AF_INET6)):
            with self.subTest(endpoint=endpoint):
                transport = wsgihost.build_transports(web_config(ws, dict(endpoint, type="tcp", port=0)))[0]
                self.assertEqual(transport.family, family)
        where = ".crossbar/config.json: workers[0].transports[0].endpoint.version: "
        self.assertConfigError(web_config(ws, {"type": "tcp", "port": 0, "interface": "::1", "version": 4}),
                               where + 'is 4, but the interface "::1" is an IPv6 address')
        self.assertConfigError(web_config(ws, {"type": "tcp", "port": 0, "interface": "127.0.0.1",
                                               "version": 6}),
                               where + 'is 6, but the interface "127.0.0.1" is an IPv4 address')
        self.assertEqual(wsgihost.app_transport(hello_app, "::1", 0).family, socket.AF_INET6)

    def test_app_transport_options_type_checked(self):
        # A string client_timeout used to pass, then fail in settimeout() on every connection.
        for options, message in (
                ({"client_timeout": "5"}, 'client_timeout: expected a number of seconds, got a string "5"'),
                ({"max_body_size": 0}, "max_body_size: must be at least 1, got 0"),
                ({"access_log": 1}, "access_log: expected true or false, got a number 1")):
            with self.subTest(options=options), self.assertRaises(wsgihost.ConfigError) as ctx:
                wsgihost.app_transport(hello_app, **options)
            self.assertEqual(str(ctx.exception), "app_transport: " + message)
        self.assertEqual(wsgihost.app_transport(hello_app, client_timeout=5).limits.client_timeout, 5)

    def test_missing_pythonpath_entry_warns(self):
        with tempfile.TemporaryDirectory() as cbdir:
            config = web_config({"ws": {"type": "websocket"}})
            config["workers"][0]["options"] = {"pythonpath": [".", "no-such-dir"]}
            missing = os.path.join(cbdir, "no-such-dir")
            self.addCleanup(lambda: [sys.path.remove(p) for p in (missing, os.path.normpath(cbdir))
                                     if p in sys.path])
            with self.assertLogs("wsgihost", "WARNING") as logs:
                wsgihost.build_transports(config, cbdir, "c.json")
        self.assertEqual([r.getMessage() for r in logs.records],
                         ['c.json: workers[0].options.pythonpath[1]: %s does not exist ("no-such-dir", '
                          'relative to the node directory %s)' % (missing, cbdir)])

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
        # main() configures the "wsgihost" logger: put it back as the other tests expect it.
        logger = logging.getLogger("wsgihost")
        saved = logger.handlers[:], logger.level, logger.propagate
        self.addCleanup(lambda: (setattr(logger, "handlers", saved[0]), logger.setLevel(saved[1]),
                                 setattr(logger, "propagate", saved[2])))
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

    def test_config_not_utf8_is_one_line_and_exit_2(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "config.json")
            with open(path, "wb") as f:
                f.write(b'{"workers": [], "title": "caf\xe9"}')     # latin-1, not UTF-8
            status, out, err = self.run_main("--check", path)
        self.assertEqual((status, err), (2, "%s: the config is not UTF-8 text: byte 0xE9 at offset 29\n"
                                         % path))

    def test_check_refuses_non_finite_timeout(self):
        # --check said "ok" for 1e400 (json.loads: inf), and the server then failed on
        # every connection.
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "config.json")
            with open(path, "w") as f:
                f.write(json.dumps(web_config({"ws": {"type": "websocket"}})).replace(
                    '"type": "web"', '"type": "web", "options": {"client_timeout": 1e400}'))
            status, out, err = self.run_main("--check", path)
        self.assertEqual((status, out), (2, ""))
        self.assertEqual(err, "%s: workers[0].transports[0].options.client_timeout: expected a number "
                              "of seconds, got a number that is not finite (inf)\n" % path)

    def test_logging_configures_the_wsgihost_logger_never_the_root(self):
        # basicConfig() on the root logger printed every line of an app that has its
        # own handler (Django) a second time. The server's logger gets its own handler.
        root = logging.getLogger()
        saved = root.handlers[:], root.level
        root.handlers = []
        self.addCleanup(lambda: (setattr(root, "handlers", saved[0]), root.setLevel(saved[1])))
        status, out, err = self.run_main("--loglevel", "warn", "--check",
                                         os.path.join(HERE, "examples", "hello", ".crossbar"))
        self.assertEqual(status, 0)
        self.assertEqual((root.handlers, root.level), ([], saved[1]))
        logger = logging.getLogger("wsgihost")
        own = [h for h in logger.handlers if getattr(h, "wsgihost_own", False)]
        self.assertEqual((len(own), logger.level, logger.propagate), (1, logging.WARNING, False))
        # An app's logger with its own handler: its line comes out once.
        app_log, app_out = logging.getLogger("test_wsgihost.django_like"), io.StringIO()
        app_handler = logging.StreamHandler(app_out)
        app_log.addHandler(app_handler)
        self.addCleanup(app_log.removeHandler, app_handler)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            app_log.warning("app line")
        self.assertEqual((app_out.getvalue(), err.getvalue()), ("app line\n", ""))
        # The server's own lines go to its handler, once, and not to the root.
        with contextlib.redirect_stderr(err):
            wsgihost.configure_logging("INFO")
            logging.getLogger("wsgihost").warning("server line")
        self.assertEqual(err.getvalue().count("server line"), 1)
        self.assertEqual(len([h for h in logger.handlers if getattr(h, "wsgihost_own", False)]), 1)

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


def wait_until(condition, message, timeout=30):
    """Poll ``condition`` until it is true; AssertionError(message) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("%s (waited %g s)" % (message, timeout))
        time.sleep(0.01)


def refused(port) -> bool:
    """Whether 127.0.0.1:port refuses a connection: nobody listens (refused), or
    the listening socket closed with this connection still in its backlog (reset)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return False
    except (ConnectionRefusedError, ConnectionResetError):
        return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ipv6_port(test: unittest.TestCase) -> int:
    """A free port on ::1, or the test is skipped where there is no IPv6 loopback."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
            return probe.getsockname()[1]
    except OSError:
        test.skipTest("no IPv6 loopback here")


class SubprocessTests(unittest.TestCase):
    """``python wsgihost.py CONFIG`` as a user runs it."""

    def start(self, args, cwd):
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, "wsgihost.py")] + args, cwd=cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(proc.kill)
        return proc

    def wait_for_port(self, port, proc):
        deadline = time.monotonic() + 60                        # a busy machine starts Python slowly
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
        out, err = proc.communicate(timeout=60)
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
            out, err = proc.communicate(timeout=60)
        self.assertEqual(proc.returncode, 1)
        self.assertEqual(err.decode().strip().splitlines()[-1],
                         "cannot listen on 127.0.0.1:%d: Address already in use" % port)

    def test_app_with_ipv6_host_serves(self):
        # "--app ... --host ::1" bound an IPv4 socket to an IPv6 address and failed.
        port = free_ipv6_port(self)
        proc = self.start(["--app", "test_wsgihost:hello_app", "--host", "::1", "--port", str(port)], HERE)
        deadline = time.monotonic() + 60                        # a busy machine starts Python slowly
        while True:
            try:
                socket.create_connection(("::1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    self.fail("server exited: %r" % (proc.communicate(),))
                if time.monotonic() > deadline:
                    self.fail("server did not start")
                time.sleep(0.05)
        conn = http.client.HTTPConnection("::1", port, timeout=30)
        conn.request("GET", "/")
        resp = conn.getresponse()
        self.assertEqual((resp.status, resp.read()), (200, b"Hello, World!"))
        conn.close()
        proc.terminate()
        out, err = proc.communicate(timeout=60)
        self.assertIn("serving http://[::1]:%d/" % port, err.decode())

    def test_app_importing_wsgihost_gets_the_running_module(self):
        port = free_port()
        proc = self.start(["--app", "test_wsgihost:module_identity_app", "--port", str(port)], HERE)
        self.wait_for_port(port, proc)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/")
        self.assertEqual(conn.getresponse().read(), b"True")
        conn.close()
        proc.terminate()
        proc.communicate(timeout=60)


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
        port = free_ipv6_port(self)
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
        # (A worker serves before it logs that it does: the line may come just after the answer.)
        self.wait_for(lambda: "serving http://[::1]:%d/ (wsgi test_wsgihost:environ_app)" % port
                      in self.stderr(), "the serving line")
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


def build_multipart(fields: dict, files: dict):
    """A multipart/form-data body as a browser sends it; returns (body, Content-Type)."""
    boundary = "----wsgihost-boundary-%016x" % random.getrandbits(64)
    parts = []
    for name, value in fields.items():
        parts.append(('--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
                      % (boundary, name, value)).encode())
    for name, (filename, data) in files.items():
        parts.append(('--%s\r\nContent-Disposition: form-data; name="%s"; filename="%s"\r\n'
                      'Content-Type: application/octet-stream\r\n\r\n'
                      % (boundary, name, filename)).encode() + data + b"\r\n")
    parts.append(("--%s--\r\n" % boundary).encode())
    return b"".join(parts), "multipart/form-data; boundary=" + boundary


def upload_data() -> bytes:
    """3 MiB and a bit: over Django's 2.5 MB in-memory limit, so it goes to a temporary
    file; random bytes laced with what a multipart parser could mistake for a boundary."""
    noise = random.Random(7)
    chunks = []
    for _ in range(48):
        chunks.append(bytes(noise.getrandbits(8) for _ in range(64)) * 1024)
        chunks.append(b"\r\n------wsgihost-boundary-\r\n\r\n--\r\n")
    return b"".join(chunks)


class FrameworkMatrixTests(unittest.TestCase):
    """examples/django, and examples/frameworks (Pyramid, Bottle, Falcon and Flask side by
    side), each served by a Node on port 0 and fetched over real HTTP. A test skips only
    when its framework is not installed (.ci/run installs them all)."""

    LABELS = {"django": "Django", "flask": "Flask", "pyramid": "Pyramid", "bottle": "Bottle",
              "falcon": "Falcon"}
    static_root = None      # collectstatic's folder, made once for the class

    def need(self, framework):
        if importlib.util.find_spec(framework) is None:
            self.skipTest("%s is not installed" % self.LABELS[framework])

    def start(self, config, cbdir, env=None) -> int:
        transport = config["workers"][0]["transports"][0]
        transport["endpoint"]["port"] = 0
        transport["endpoint"]["interface"] = "127.0.0.1"
        with unittest.mock.patch.dict(os.environ, env or {}), warnings.catch_warnings():
            # WebOb (Pyramid's) still imports cgi: its warning, not ours
            warnings.filterwarnings("ignore", "'cgi' is deprecated", DeprecationWarning)
            node = wsgihost.Node(config, cbdir).start()
        self.addCleanup(node.stop, 1)
        self.port = node.transports[0].port
        return self.port

    def fetch(self, method, path, body=None, headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body, headers or {})
            resp = conn.getresponse()
            return resp, resp.read()
        finally:
            conn.close()

    # -- examples/frameworks ---------------------------------------------------

    def start_frameworks(self) -> int:
        """The example's one config, less the paths whose framework is not installed."""
        config, cbdir = wsgihost.load_config(
            os.path.join(HERE, "examples", "frameworks", ".crossbar", "config.json"))
        paths = config["workers"][0]["transports"][0]["paths"]
        for mount in list(paths):
            if importlib.util.find_spec(mount) is None:
                del paths[mount]
        return self.start(config, cbdir)

    def check_mounted(self, framework):
        """A route of the app at /FRAMEWORK answers, and the URL the app generates for its
        own route carries the mount (SCRIPT_NAME)."""
        self.need(framework)
        port = self.start_frameworks()
        resp, body = self.fetch("GET", "/%s/hello/Zo%%C3%%AB?greeting=Hi" % framework)
        self.assertEqual(resp.status, 200, body)
        answer = json.loads(body)
        self.assertEqual(answer["framework"], framework)
        self.assertEqual(answer["greeting"], "Hi, Zo\u00eb!")     # UTF-8 path, decoded by the app
        self.assertEqual(answer["path_url"], "/%s/hello/world" % framework)
        self.assertEqual(answer["url"], "http://127.0.0.1:%d/%s/hello/world" % (port, framework))
        resp, body = self.fetch("GET", answer["path_url"])
        self.assertEqual(resp.status, 200, body)
        self.assertEqual(json.loads(body)["greeting"], "Hello, world!")

    def test_pyramid_route_and_generated_url_under_its_mount(self):
        self.check_mounted("pyramid")

    def test_bottle_route_and_generated_url_under_its_mount(self):
        self.check_mounted("bottle")

    def test_falcon_route_and_generated_url_under_its_mount(self):
        self.check_mounted("falcon")

    def test_flask_route_and_generated_url_under_its_mount(self):
        self.check_mounted("flask")

    def test_flask_multipart_upload(self):
        self.need("flask")
        self.start_frameworks()
        data = upload_data()
        body, content_type = build_multipart({}, {"file": ("my data.bin", data)})
        resp, answer = self.fetch("POST", "/flask/upload", body, {"Content-Type": content_type})
        self.assertEqual(resp.status, 200, answer[:500])
        self.assertEqual(json.loads(answer), {"name": "my data.bin", "size": len(data),
                                              "sha256": hashlib.sha256(data).hexdigest()})

    # -- examples/django -------------------------------------------------------

    def start_django(self) -> int:
        """examples/django with DEBUG off, as its README says to run it, but with the
        static files collected into a temporary folder (served by the config's "static"
        path) and the database there too, holding one admin user."""
        self.need("django")
        project = os.path.join(HERE, "examples", "django")
        cls = type(self)
        if cls.static_root is None:
            tmp = tempfile.mkdtemp()
            cls.addClassCleanup(shutil.rmtree, tmp)
            env = dict(os.environ, DJANGO_STATIC_ROOT=os.path.join(tmp, "static"),
                       DJANGO_SQLITE_PATH=os.path.join(tmp, "db.sqlite3"),
                       DJANGO_SUPERUSER_PASSWORD="not-a-secret-42")
            env.pop("DJANGO_DEBUG", None)
            for command in (["collectstatic", "--noinput"], ["migrate"],
                            ["createsuperuser", "--noinput", "--username", "admin",
                             "--email", "admin@example.org"]):
                done = subprocess.run([sys.executable, "manage.py"] + command, cwd=project,
                                      env=env, capture_output=True, timeout=300)
                self.assertEqual(done.returncode, 0, done.stderr.decode(errors="replace"))
            cls.static_root, cls.db_path = env["DJANGO_STATIC_ROOT"], env["DJANGO_SQLITE_PATH"]
        config, cbdir = wsgihost.load_config(os.path.join(project, ".crossbar", "config.json"))
        config["workers"][0]["transports"][0]["paths"]["static"]["directory"] = cls.static_root
        # Django reads its settings once per process, at the first start.
        return self.start(config, cbdir, {"DJANGO_SQLITE_PATH": cls.db_path, "DJANGO_DEBUG": "0"})

    @staticmethod
    def cookies(resp, jar=None) -> dict:
        jar = dict(jar or {})
        for field in resp.headers.get_all("Set-Cookie") or ():
            name, _, value = field.split(";", 1)[0].partition("=")
            jar[name.strip()] = value
        return jar

    @staticmethod
    def cookie_header(jar: dict) -> str:
        return "; ".join("%s=%s" % item for item in jar.items())

    def csrf_form(self, path):
        """GET a form: its CSRF cookie (the jar) and the token in its hidden field."""
        resp, body = self.fetch("GET", path)
        self.assertEqual(resp.status, 200, body[:500])
        jar = self.cookies(resp)
        self.assertIn("csrftoken", jar)
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', body)
        self.assertIsNotNone(token, body[:1000])
        return jar, token.group(1).decode()

    def test_django_view_echoes_the_request(self):
        self.start_django()
        resp, body = self.fetch("GET", "/?q=wsgihost")
        self.assertEqual(resp.status, 200, body[:500])
        self.assertEqual(resp.getheader("Content-Type"), "text/html; charset=utf-8")
        self.assertIn(b"Path: <code>/</code>, q: <code>wsgihost</code>", body)
        self.assertIn(b'<a href="/hello/">form</a>', body)
        # DEBUG is off, so ALLOWED_HOSTS is enforced: another Host is refused by Django
        resp, body = self.fetch("GET", "/", headers={"Host": "evil.example"})
        self.assertEqual(resp.status, 400)

    def test_django_form_post_with_csrf_cookie_and_token(self):
        self.start_django()
        jar, token = self.csrf_form("/hello/")
        resp, body = self.fetch("POST", "/hello/", "csrfmiddlewaretoken=%s&name=Ada" % token,
                                {"Content-Type": "application/x-www-form-urlencoded",
                                 "Cookie": self.cookie_header(jar)})
        self.assertEqual(resp.status, 302, body[:1000])
        self.assertEqual(resp.getheader("Location"), "/hello/")
        jar = self.cookies(resp, jar)
        self.assertIn("messages", jar)     # the message travels in its own Set-Cookie
        resp, body = self.fetch("GET", "/hello/", headers={"Cookie": self.cookie_header(jar)})
        self.assertEqual(resp.status, 200)
        self.assertIn(b'<ul class="messages"><li>Hello, Ada!</li></ul>', body)

    def test_django_post_without_csrf_token_is_403(self):
        self.start_django()
        jar, token = self.csrf_form("/hello/")
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        resp, body = self.fetch("POST", "/hello/", "name=Ada", dict(form, Cookie=self.cookie_header(jar)))
        self.assertEqual(resp.status, 403)          # the cookie, but no token
        resp, body = self.fetch("POST", "/hello/", "csrfmiddlewaretoken=%s&name=Ada" % token, form)
        self.assertEqual(resp.status, 403)          # the token, but no cookie
        self.assertNotIn("messages", self.cookies(resp))

    def test_django_admin_login_page_styled_by_the_static_path(self):
        self.start_django()
        resp, body = self.fetch("GET", "/admin/")
        self.assertEqual(resp.status, 302)
        self.assertEqual(resp.getheader("Location"), "/admin/login/?next=/admin/")
        resp, body = self.fetch("GET", "/admin/login/?next=/admin/")
        self.assertEqual(resp.status, 200, body[:500])
        self.assertIn(b'<link rel="stylesheet" href="/static/admin/css/base.css">', body)
        self.assertIn(b'name="csrfmiddlewaretoken"', body)
        resp, css = self.fetch("GET", "/static/admin/css/base.css")
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.getheader("Content-Type"), "text/css; charset=utf-8")
        import django.contrib.admin
        with open(os.path.join(os.path.dirname(django.contrib.admin.__file__),
                               "static", "admin", "css", "base.css"), "rb") as f:
            self.assertEqual(css, f.read())
        self.assertIn(b"body {", css)
        resp, body = self.fetch("GET", "/static/admin/css/no-such.css")
        self.assertEqual(resp.status, 404)

    def test_django_admin_login_and_its_session(self):
        self.start_django()
        jar, token = self.csrf_form("/admin/login/")
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        login = "csrfmiddlewaretoken=%s&username=admin&password=%s&next=/admin/"
        resp, body = self.fetch("POST", "/admin/login/", login % (token, "wrong"),
                                dict(form, Cookie=self.cookie_header(jar)))
        self.assertEqual(resp.status, 200)
        self.assertIn(b"Please enter the correct username and password", body)
        resp, body = self.fetch("POST", "/admin/login/", login % (token, "not-a-secret-42"),
                                dict(form, Cookie=self.cookie_header(jar)))
        self.assertEqual(resp.status, 302, body[:1000])
        self.assertEqual(resp.getheader("Location"), "/admin/")
        jar = self.cookies(resp, jar)
        self.assertIn("sessionid", jar)
        resp, body = self.fetch("GET", "/admin/", headers={"Cookie": self.cookie_header(jar)})
        self.assertEqual(resp.status, 200)
        self.assertIn(b"Site administration", body)
        self.assertIn(b"<strong>admin</strong>", body)

    def test_django_multipart_upload(self):
        self.start_django()
        jar, token = self.csrf_form("/upload/")
        data = upload_data()
        body, content_type = build_multipart({"csrfmiddlewaretoken": token},
                                             {"file": ("my data.bin", data)})
        resp, answer = self.fetch("POST", "/upload/", body, {"Content-Type": content_type,
                                                             "Cookie": self.cookie_header(jar)})
        self.assertEqual(resp.status, 200, answer[:1000])
        self.assertEqual(json.loads(answer), {"name": "my data.bin", "size": len(data),
                                              "sha256": hashlib.sha256(data).hexdigest()})


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

    def send(self, method, params=None, session_id=None, timeout=60.0):
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
        deadline = time.monotonic() + 120                 # Chromium starts slowly on a busy machine
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


class RESPTests(unittest.TestCase):
    """Section 12a: the Redis protocol, as pure functions over bytes."""

    def test_build_command(self):
        self.assertEqual(wsgihost.build_command("PUBLISH", "wsgihost:/ws", b"t\xc3\xa9"),
                         b"*3\r\n$7\r\nPUBLISH\r\n$12\r\nwsgihost:/ws\r\n$3\r\nt\xc3\xa9\r\n")
        self.assertEqual(wsgihost.build_command("SELECT", 3), b"*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n")

    def test_parse_each_kind_whole_and_byte_by_byte(self):
        cases = [(b"+OK\r\n", "OK"), (b":42\r\n", 42), (b":-1\r\n", -1), (b"$5\r\nhe\r\no\r\n", b"he\r\no"),
                 (b"$0\r\n\r\n", b""), (b"$-1\r\n", None), (b"*-1\r\n", None), (b"*0\r\n", []),
                 (b"*3\r\n$7\r\nmessage\r\n$3\r\n/ws\r\n$2\r\nhi\r\n", [b"message", b"/ws", b"hi"]),
                 (b"*2\r\n*1\r\n:1\r\n$-1\r\n", [[1], None])]
        for data, value in cases:
            with self.subTest(data=data):
                self.assertEqual(wsgihost.parse_reply(data + b"+next\r\n"), (value, len(data)))
                for cut in range(len(data)):        # every prefix is "not yet"
                    self.assertIsNone(wsgihost.parse_reply(data[:cut]))
        error, end = wsgihost.parse_reply(b"-ERR unknown command\r\n")
        self.assertIsInstance(error, wsgihost.RedisError)
        self.assertEqual(str(error), "ERR unknown command")

    def test_bytes_that_are_not_resp_raise(self):
        nested = b"*1\r\n" * 9 + b":1\r\n"      # deeper than MAX_REDIS_NESTING (8)
        for data in (b"?x\r\n", b":abc\r\n", b"$3\r\nabcde\r\n", b"$-5\r\n", nested,
                     b"+" + b"x" * (65 * 1024)):
            with self.subTest(data=data[:20]), self.assertRaises(wsgihost.RedisError):
                wsgihost.parse_reply(data)

    def test_redis_urls(self):
        self.assertEqual(wsgihost.parse_redis_url("redis://localhost"),
                         ("localhost", 6379, None, None, 0, False))
        self.assertEqual(wsgihost.parse_redis_url("rediss://:s%40cret@redis.example:6380/2"),
                         ("redis.example", 6380, None, "s@cret", 2, True))
        self.assertEqual(wsgihost.parse_redis_url("redis://app:pw@[::1]:7000/0"),
                         ("::1", 7000, "app", "pw", 0, False))
        for bad in ("http://x", "redis://x:port", "redis://x/abc"):
            with self.subTest(url=bad), self.assertRaises(ValueError):
                wsgihost.parse_redis_url(bad)

    def test_text_and_binary_messages_survive(self):
        for message in ("héllo", "", b"\x00\xff", b""):
            with self.subTest(message=message):
                decoded = wsgihost.decode_channel_message(wsgihost.encode_channel_message(message))
                self.assertEqual((type(decoded), decoded), (type(message), message))


def start_redis(test) -> int:
    """A redis-server of our own on a free port (Debian's package; .ci/run installs it)."""
    server = shutil.which("redis-server")
    if server is None:
        if os.environ.get("WSGIHOST_REQUIRE_ALL"):
            test.fail("redis-server is not installed (.ci/run installs Debian's redis-server)")
        test.skipTest("redis-server is not installed (.ci/run installs Debian's redis-server)")
    port = free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    test.addCleanup(proc.wait, 10)
    test.addCleanup(proc.terminate)
    SubprocessTests.wait_for_port(test, port, proc)
    return port, proc


class RedisBridgeTests(unittest.TestCase):
    """Section 12a against a real redis-server: two bridges, as two nodes would have."""

    def bridge(self, url, paths=("/ws",)):
        received = []
        bridge = wsgihost.RedisBridge(url, paths, lambda path, message: received.append((path, message)))
        bridge.start()
        self.addCleanup(bridge.stop)
        return bridge, received

    def wait_for(self, condition, timeout=10, what="condition"):
        deadline = time.monotonic() + timeout
        while not condition():
            self.assertLess(time.monotonic(), deadline, what)
            time.sleep(0.01)

    def test_two_nodes_get_every_message_in_one_order_text_and_binary(self):
        port, _ = start_redis(self)
        url = "redis://127.0.0.1:%d/0" % port
        (a, got_a), (b, got_b) = self.bridge(url), self.bridge(url)
        self.wait_for(lambda: a.connected and b.connected, what="not subscribed")
        sent = []
        for i in range(200):
            message = "text %d é" % i if i % 2 else b"\x00binary %d" % i
            (a if i % 3 else b).publish("/ws", message)
            sent.append(("/ws", message))
        self.wait_for(lambda: len(got_a) == len(got_b) == 200, what="messages missing")
        self.assertEqual(got_a, got_b)                      # one order for both
        self.assertEqual(sorted(map(repr, got_a)), sorted(map(repr, sent)))
        for (_, mine), (_, theirs) in zip(got_a, got_a):
            self.assertIs(type(mine), type(theirs))

    def test_after_redis_restarts_messages_flow_again_within_5_s(self):
        port, proc = start_redis(self)
        url = "redis://127.0.0.1:%d/0" % port
        (a, got_a), (b, got_b) = self.bridge(url), self.bridge(url)
        self.wait_for(lambda: a.connected and b.connected)
        with self.assertLogs("wsgihost", "ERROR") as logs:
            proc.terminate()
            proc.wait(10)
            self.wait_for(lambda: not a.connected and not b.connected, what="the loss not seen")
        self.assertIn("unreachable", "\n".join(logs.output))
        server = shutil.which("redis-server")
        again = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        self.addCleanup(again.wait, 10)
        self.addCleanup(again.terminate)
        start = time.monotonic()
        self.wait_for(lambda: a.connected and b.connected, timeout=10, what="no reconnection")
        a.publish("/ws", "after")
        self.wait_for(lambda: ("/ws", "after") in got_b, timeout=10)
        self.assertLess(time.monotonic() - start, 5.0 + 1.0)   # back-off is at most 5 s

    def test_a_redis_that_never_answers_does_not_block_publish(self):
        silent = socket.socket()
        self.addCleanup(silent.close)
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)                                   # accepts, never answers
        bridge, got = self.bridge("redis://127.0.0.1:%d/0" % silent.getsockname()[1])
        start = time.monotonic()
        for i in range(1000):
            bridge.publish("/ws", "m%d" % i)
        self.assertLess(time.monotonic() - start, 1.0)
        self.assertFalse(bridge.connected)


class RedisChannelTests(unittest.TestCase):
    """Two nodes on different ports sharing a real redis-server: one channel."""

    def node(self, redis_port, prefix="wsgihost"):
        config = json.loads(json.dumps(WS_CONFIG))
        config["workers"][0]["options"] = {"channels": {"redis": "redis://127.0.0.1:%d/0" % redis_port,
                                                        "prefix": prefix}}
        node = wsgihost.Node(config).start()
        self.addCleanup(node.stop, 0)
        deadline = time.monotonic() + 30
        while not all(b.connected for b in node.bridges):
            self.assertLess(time.monotonic(), deadline, "never subscribed")
            time.sleep(0.02)
        return node

    def test_clients_of_two_nodes_get_every_message_in_one_order(self):
        redis_port, _ = start_redis(self)
        a, b = self.node(redis_port), self.node(redis_port)
        clients = []
        for node in (a, a, b, b):
            client = WSClient(node.transports[0].port)
            self.addCleanup(client.close)
            self.assertEqual(client.status, 101)
            clients.append(client)
        for node in (a, b):
            channel = node.transports[0].channels["/ws"]
            deadline = time.monotonic() + 30
            while len(channel) != 2:                    # len(): the clients of this node
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.02)
        for i in range(50):                             # from clients of both nodes...
            clients[i % 4].send_text("m%d" % i)
        conn = http.client.HTTPConnection("127.0.0.1", b.transports[0].port, timeout=30)
        self.addCleanup(conn.close)
        conn.request("GET", "/?from-wsgi")              # ... and from a WSGI app on node b
        self.assertEqual(conn.getresponse().read(), b"2")     # it counts node b's clients
        orders = []
        for client in clients:
            got = [client.recv_text() for _ in range(51)]
            self.assertEqual(sorted(got), sorted(["m%d" % i for i in range(50)] + ["from-wsgi"]))
            orders.append(got)
        self.assertTrue(all(order == orders[0] for order in orders))     # one order for all
        for client in clients:
            client.send(Opcode.BINARY, b"\x00\xffbinary")
        for client in clients:
            for _ in range(4):
                self.assertEqual(client.recv_frame(), (Opcode.BINARY, b"\x00\xffbinary"))

    def test_channels_config_validated(self):
        config = web_config({"ws": {"type": "websocket"}})
        config["workers"][0]["options"] = {"channels": {"redis": "http://x"}}
        with self.assertRaises(wsgihost.ConfigError) as caught:
            wsgihost.build_transports(config, ".", ".crossbar/config.json")
        self.assertEqual(str(caught.exception), ".crossbar/config.json: workers[0].options.channels."
                         "redis: expected redis://host:port/db or rediss://..., got 'http://x'")


# -----------------------------------------------------------------------------
# 16. One channel across the workers of a node: the supervisor's relay
# -----------------------------------------------------------------------------

def worker_channel_app(environ, start_response):
    """For the relay tests: GET answers which worker this is and how many
    clients its /ws channel has here; a POST broadcasts its body to /ws."""
    channel = environ["wsgihost.channels"]["/ws"]
    body = environ["wsgi.input"].read()
    if environ["REQUEST_METHOD"] == "POST":
        channel.broadcast(body.decode())
    relay = channel.relay
    reply = json.dumps({"pid": os.getpid(), "clients": len(channel),
                        "relay": relay and [type(relay).__name__, relay.connected]}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(reply)))])
    return [reply]


def read_http_json(sock, buffer: bytearray):
    """One keep-alive answer with a Content-Length, read from ``sock``: its JSON."""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(4096)
        assert data, "closed before an answer"
        buffer += data
    head, _, _ = bytes(buffer).partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)\r\nContent-Length: *(\d+)", head).group(1))
    end = len(head) + 4 + length
    while len(buffer) < end:
        data = sock.recv(4096)
        assert data, "closed inside an answer"
        buffer += data
    answer = json.loads(bytes(buffer[len(head) + 4:end]))
    del buffer[:end]
    return answer


class WorkerWSClient(WSClient):
    """A WSClient that first asks, on the same connection, which worker process it
    reached (``self.pid``): a GET of ``who`` on keep-alive, then the Upgrade.
    The kernel chose the worker by a hash of the addresses; this is how a test
    knows where each client is."""

    def __init__(self, port, path="/ws", who="/who", timeout=30):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % who.encode())
        self.buffer = bytearray()
        self.pid = read_http_json(self.sock, self.buffer)["pid"]
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                           "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13"
                           "\r\n\r\n" % (path, port, key)).encode())
        while b"\r\n\r\n" not in self.buffer:
            data = self.sock.recv(4096)
            assert data, "closed before the handshake's answer"
            self.buffer += data
        end = self.buffer.find(b"\r\n\r\n") + 4
        self.head = bytes(self.buffer[:end]).decode("latin-1")
        del self.buffer[:end]
        self.status = int(self.head.split(" ")[1])
        assert ("Sec-WebSocket-Accept: %s\r\n" % wsgihost.websocket_accept(key)) in self.head, self.head


class WorkerHTTP:
    """A keep-alive HTTP connection to one worker (``self.pid``), for GETs and POSTs of JSON."""

    def __init__(self, port, who="/who"):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buffer = bytearray()
        self.who = who
        self.pid = self.request("GET", who)["pid"]

    def request(self, method, path, body=b""):
        self.sock.sendall(b"%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s"
                          % (method.encode(), path.encode(), len(body), body))
        return read_http_json(self.sock, self.buffer)

    def close(self):
        self.sock.close()


def worker_channel_config(port, redis_port=None, **ws_options):
    """A node config for the relay tests: "/who" (worker_channel_app) and "/ws" (broadcast)."""
    paths = {"who": {"type": "wsgi", "module": "test_wsgihost", "object": "worker_channel_app"},
             "ws": {"type": "websocket", "options": ws_options}}
    config = web_config(paths, {"type": "tcp", "port": port, "interface": "127.0.0.1"},
                        options={"client_timeout": 30})
    config["workers"][0]["options"] = {"pythonpath": [HERE]}
    if redis_port is not None:
        config["workers"][0]["options"]["channels"] = {"redis": "redis://127.0.0.1:%d/0" % redis_port}
    return config


class WorkerChannelTests(unittest.TestCase):
    """--workers 2: one channel across the workers, relayed by the supervisor."""

    start = WorkerProcessTests.start
    kill_all = WorkerProcessTests.kill_all
    stderr = WorkerProcessTests.stderr
    wait_for = WorkerProcessTests.wait_for

    def start_node(self, config_path=None, port=None, redis_port=None, workers=2, **ws_options):
        """``wsgihost CONFIG --workers 2`` (by default a worker_channel_config on a
        free port); returns the process, once both workers answer /who."""
        if config_path is None:
            port = free_port()
            config_dir = tempfile.mkdtemp()
            self.addCleanup(shutil.rmtree, config_dir, True)
            config_path = os.path.join(config_dir, "config.json")
            write_json(config_path, worker_channel_config(port, redis_port, **ws_options))
        workers_flag = ["--workers", str(workers)] if workers else []   # None: as the config says
        proc = self.start([config_path] + workers_flag, port, wait=False)
        self.wait_for(lambda: proc.poll() is not None or _answers(port, "/who") is not None, "the server")
        self.assertIsNone(proc.poll(), self.stderr())
        self.pids = self.worker_pids(workers or 2)
        return proc

    def worker_pids(self, count, timeout=60) -> set:
        """Fresh connections to /who until ``count`` different workers have answered."""
        pids = set()
        deadline = time.monotonic() + timeout
        while len(pids) < count:
            self.assertLess(time.monotonic(), deadline, "only %s answered; stderr:\n%s"
                            % (pids, self.stderr()))
            answer = _answers(self.port, "/who")
            if answer is not None:
                pids.add(answer["pid"])
        return pids

    def clients(self, per_worker: dict, cls=None) -> dict:
        """WebSocket clients pinned to workers: pid -> [clients], ``per_worker[pid]`` each
        (others are closed). New connections go where the kernel's hash puts them:
        up to 200 are tried."""
        found = {pid: [] for pid in per_worker}
        for _ in range(200):
            if all(len(found[pid]) >= n for pid, n in per_worker.items()):
                break
            client = (cls or WorkerWSClient)(self.port)
            self.addCleanup(client.close)
            self.assertEqual(client.status, 101, client.head)
            if client.pid in found and len(found[client.pid]) < per_worker[client.pid]:
                found[client.pid].append(client)
            else:
                client.close()
        else:
            self.fail("200 connections did not reach every worker: %s" % {
                pid: len(c) for pid, c in found.items()})
        return found

    def http_to(self, pid) -> WorkerHTTP:
        """A keep-alive HTTP connection to worker ``pid``."""
        for _ in range(200):
            conn = WorkerHTTP(self.port)
            self.addCleanup(conn.close)
            if conn.pid == pid:
                return conn
            conn.close()
        self.fail("200 connections did not reach worker %d" % pid)

    def wait_for_channels(self, expected: dict):
        """Until each worker's /ws channel has the clients expected of it (its
        client joins the channel just after the handshake's answer)."""
        seen = {}

        def settled():
            answer = _answers(self.port, "/who")
            if answer is not None:
                seen[answer["pid"]] = answer["clients"]
            return all(seen.get(pid) == n for pid, n in expected.items())
        self.wait_for(settled, "channel clients %s (seen %s)" % (expected, seen))

    def receive(self, clients, count: int, timeout: float = 120) -> list:
        """What each client receives, ``count`` text messages each, read in threads
        (a client that stops reading would be dropped as slow)."""
        got = [[] for _ in clients]
        errors = []

        def read(client, into):
            try:
                for _ in range(count):
                    into.append(client.recv_text())
            except Exception as exc:
                errors.append(repr(exc))
        threads = [threading.Thread(target=read, args=(c, g), daemon=True) for c, g in zip(clients, got)]
        for thread in threads:
            thread.start()
        self._readers = threads
        self._got, self._errors, self._deadline = got, errors, time.monotonic() + timeout
        return got

    def received(self):
        """Wait for the readers that receive() started; their lists."""
        for thread in self._readers:
            thread.join(max(0.1, self._deadline - time.monotonic()))
        self.assertEqual(self._errors, [])
        self.assertFalse(any(t.is_alive() for t in self._readers),
                         "messages missing: got %s" % [len(g) for g in self._got])
        return self._got

    def test_a_client_on_each_worker_gets_every_message_in_one_order(self):
        proc = self.start_node()
        a, b = sorted(self.pids)
        by_pid = self.clients({a: 2, b: 2})
        self.wait_for_channels({a: 2, b: 2})
        clients = by_pid[a] + by_pid[b]
        http_a, http_b = self.http_to(a), self.http_to(b)
        got = self.receive(clients, 60)
        sent = []
        for i in range(50):                         # from the clients of both workers...
            clients[i % 4].send_text("m%d" % i)
            sent.append("m%d" % i)
            if i % 5 == 0:                          # ... and from a WSGI app in each
                conn = (http_a, http_b)[i // 5 % 2]
                self.assertEqual(conn.request("POST", "/who", b"w%d" % i),
                                 {"pid": conn.pid, "clients": 2,     # len(): its own clients
                                  "relay": ["WorkerRelay", True]})
                sent.append("w%d" % i)
        got = self.received()
        self.assertEqual(sorted(got[0]), sorted(sent))
        for order in got[1:]:
            self.assertEqual(order, got[0])         # one order for all
        for i in range(4):                          # a client's own messages keep their order
            own = [m for m in got[0] if m in {"m%d" % n for n in range(i, 50, 4)}]
            self.assertEqual(own, ["m%d" % n for n in range(i, 50, 4)])
        by_pid[b][0].send(Opcode.BINARY, b"\x00\xffbinary")      # binary stays binary
        for client in clients:
            self.assertEqual(client.recv_frame(), (Opcode.BINARY, b"\x00\xffbinary"))
        self.stop(proc)

    def stop(self, proc):
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(60), 0, self.stderr())

    def test_order_under_load_10_senders_of_1000_messages(self):
        # 10 clients, 5 on each worker, each sending 1,000 messages and receiving
        # all 10,000: 100,000 frames out of the node, every client in one order.
        proc = self.start_node()
        a, b = sorted(self.pids)
        by_pid = self.clients({a: 5, b: 5})
        self.wait_for_channels({a: 5, b: 5})
        clients = by_pid[a] + by_pid[b]
        got = self.receive(clients, 10 * 1000, timeout=300)
        started = time.monotonic()

        def send(n, client):
            payload = b"".join(build_frame(Opcode.TEXT, b"%d-%d" % (n, i), True, os.urandom(4))
                               for i in range(1000))
            client.sock.sendall(payload)
        senders = [threading.Thread(target=send, args=(n, c), daemon=True) for n, c in enumerate(clients)]
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join(120)
        got = self.received()
        took = time.monotonic() - started
        for order in got[1:]:
            self.assertEqual(order, got[0])
        self.assertEqual(len(got[0]), 10000)
        for n in range(10):                         # each sender's messages in its order
            self.assertEqual([m for m in got[0] if m.startswith("%d-" % n)],
                             ["%d-%d" % (n, i) for i in range(1000)])
        print("\n  (relay order under load: 10 x 1,000 messages to 10 clients on 2 workers "
              "in %.1f s; load average %.1f)" % (took, os.getloadavg()[0]), file=sys.stderr)
        self.stop(proc)

    def test_a_killed_worker_costs_only_its_own_clients(self):
        proc = self.start_node()
        victim, survivor = sorted(self.pids)
        by_pid = self.clients({victim: 1, survivor: 2})
        self.wait_for_channels({victim: 1, survivor: 2})
        doomed, (one, two) = by_pid[victim][0], by_pid[survivor]
        http = self.http_to(survivor)
        os.kill(victim, signal.SIGKILL)
        with self.assertRaises((EOFError, ConnectionError)):
            doomed.recv_frame()                     # its connection ends with it
        got = self.receive([one, two], 3)
        one.send_text("still here")
        two.send_text("me too")
        http.request("POST", "/who", b"and the app")
        got = self.received()
        self.assertEqual(got[0], got[1])
        self.assertEqual(sorted(got[0]), ["and the app", "me too", "still here"])
        # Its replacement gets a fresh link: its new clients and the others' hear each other.
        self.wait_for(lambda: "worker %d was killed by SIGKILL; starting another" % victim
                      in self.stderr(), "the restart")
        # (New connections meant for the dead worker wait in its socket's queue
        # for the replacement: the first two pids to answer are those serving.)
        (newcomer,) = self.worker_pids(2) - {survivor}
        self.assertNotEqual(newcomer, victim)
        fresh = self.clients({newcomer: 1, survivor: 0})[newcomer][0]
        self.wait_for_channels({newcomer: 1, survivor: 2})
        got = self.receive([fresh, one, two], 2)
        one.send_text("to the new one")
        fresh.send_text("from the new one")
        got = self.received()
        self.assertEqual(got[0], got[1])
        self.assertEqual(got[1], got[2])
        self.assertEqual(sorted(got[0]), ["from the new one", "to the new one"])
        self.stop(proc)

    def test_a_worker_that_falls_behind_closes_its_clients_and_the_others_go_on(self):
        # Worker "stalled" is stopped (SIGSTOP) while 24 MiB are broadcast: the
        # supervisor holds RELAY_BUFFER (16 MiB) for it and no more, the other
        # worker's clients get everything meanwhile; resumed, the stalled worker
        # delivers what it was sent, then closes its clients with 1013, and its
        # new clients are on the channel again. (Its clients' queues are made
        # larger than what it delivers at once, or they would be dropped as slow.)
        proc = self.start_node(max_send_queue=64 * 1024 * 1024)
        stalled, live = sorted(self.pids)
        by_pid = self.clients({stalled: 1, live: 1})
        self.wait_for_channels({stalled: 1, live: 1})
        behind, sender = by_pid[stalled][0], by_pid[live][0]
        os.kill(stalled, signal.SIGSTOP)
        self.addCleanup(lambda: _alive(stalled) and os.kill(stalled, signal.SIGCONT))
        big = ["%02d" % i + "x" * (1024 * 1024 - 2) for i in range(24)]
        self.receive([sender], 24)
        for message in big:
            sender.send_text(message)
        (got,) = self.received()
        self.assertEqual(got, big)                  # the live worker's client missed nothing
        self.assertIn("worker %d is " % stalled, self.stderr())
        self.assertIn("bytes behind the channel relay", self.stderr())
        seen, codes = [], []

        def read_until_close():
            while True:
                opcode, payload = behind.recv_frame()
                if opcode == Opcode.CLOSE:
                    codes.append(int.from_bytes(payload[:2], "big"))
                    return
                seen.append(payload.decode())
        reader = threading.Thread(target=read_until_close, daemon=True)
        reader.start()
        os.kill(stalled, signal.SIGCONT)
        reader.join(120)
        self.assertFalse(reader.is_alive(), "no Close for the client of the worker behind")
        self.assertEqual(codes, [1013])             # Try Again Later
        self.assertEqual(seen, big[:len(seen)])     # what it got, in order, then nothing
        self.assertLess(len(seen), 24)
        self.assertIn("[%d] this worker fell over" % stalled, self.stderr())
        self.wait_for_channels({stalled: 0, live: 1})
        again = self.clients({stalled: 1, live: 0})[stalled][0]
        self.wait_for_channels({stalled: 1, live: 1})
        got = self.receive([again, sender], 2)
        sender.send_text("from the live one")
        again.send_text("back again")
        got = self.received()
        self.assertEqual(got[0], got[1])
        self.assertEqual(sorted(got[0]), ["back again", "from the live one"])
        self.stop(proc)

    def test_with_redis_the_workers_use_redis_and_nothing_arrives_twice(self):
        redis_port, _ = start_redis(self)
        proc = self.start_node(redis_port=redis_port)
        connected = {}

        def subscribed():
            answer = _answers(self.port, "/who")
            if answer is not None:
                connected[answer["pid"]] = answer["relay"]
            return [connected.get(pid) for pid in self.pids] == [["RedisBridge", True]] * 2
        self.wait_for(subscribed, "both workers subscribed to Redis (seen %s)" % connected)
        a, b = sorted(self.pids)
        by_pid = self.clients({a: 1, b: 1})
        self.wait_for_channels({a: 1, b: 1})
        clients = by_pid[a] + by_pid[b]
        got = self.receive(clients, 21)
        for i in range(20):
            clients[i % 2].send_text("m%d" % i)
        self.http_to(b).request("POST", "/who", b"from-wsgi")
        got = self.received()
        self.assertEqual(got[0], got[1])
        self.assertEqual(sorted(got[0]), sorted(["m%d" % i for i in range(20)] + ["from-wsgi"]))
        got = self.receive(clients, 1)
        clients[0].send_text("last")                # a second copy of any would come before it
        self.assertEqual(self.received(), [["last"], ["last"]])
        self.stop(proc)

    def test_chat_example_with_two_workers_in_headless_chromium(self):
        # examples/chat as it is (its port changed, and a /who path added for the
        # test to see the workers), with --workers 2: a page, and a client on each
        # worker; every message -- the page's, each client's, a POST's -- reaches
        # all of them, in one order.
        executable = shutil.which("chromium") or shutil.which("chromium-browser")
        if executable is None:
            self.skipTest("Chromium is not installed (.ci/run installs Debian's chromium)")
        target, port = SubprocessTests.copy_example(self, "chat")
        config_path = os.path.join(target, ".crossbar", "config.json")
        with open(config_path) as f:
            config = json.load(f)
        config["workers"][0]["options"]["pythonpath"].append(HERE)
        config["workers"][0]["transports"][0]["paths"]["who"] = {
            "type": "wsgi", "module": "test_wsgihost", "object": "worker_channel_app"}
        write_json(config_path, config)
        proc = self.start_node(config_path, port)
        a, b = sorted(self.pids)
        by_pid = self.clients({a: 1, b: 1})
        self.wait_for_channels({a: 1, b: 1})
        clients = by_pid[a] + by_pid[b]
        profile = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, profile, True)
        browser = ChromiumPipe(executable, os.path.join(profile, "profile"),
                               os.path.join(profile, "chromium.log"))
        self.addCleanup(browser.close)
        target_id = browser.send("Target.createTarget",
                                 {"url": "http://127.0.0.1:%d/?say=from-page" % port})["targetId"]
        session = browser.send("Target.attachToTarget",
                               {"targetId": target_id, "flatten": True})["sessionId"]
        seen = {}

        def page_connected():               # Chromium starts slowly on a busy machine
            answer = _answers(self.port, "/who")
            if answer is not None:
                seen[answer["pid"]] = answer["clients"]
            return len(seen) == 2 and sum(seen.values()) == 3
        self.wait_for(page_connected, "the page's WebSocket", timeout=120)
        clients[0].send_text("from-worker-a")
        clients[1].send_text("from-worker-b")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/say", "message=from-post", {"Content-Type": "application/x-www-form-urlencoded"})
        self.assertEqual(conn.getresponse().status, 303)
        conn.close()
        expected = ["from-page", "from-post", "from-worker-a", "from-worker-b"]
        self.receive(clients, 4)
        got = self.received()
        state, deadline = {}, time.monotonic() + 120
        while time.monotonic() < deadline:
            result = browser.send("Runtime.evaluate", {"returnByValue": True, "expression":
                                  'JSON.stringify({status: document.getElementById("status").textContent,'
                                  ' messages: Array.from(document.querySelectorAll("#messages li"),'
                                  ' li => li.textContent)})'}, session)
            state = json.loads(result["result"]["value"])
            if len(state["messages"]) >= 4:
                break
            time.sleep(0.05)
        self.assertEqual(state["status"], "connected")
        self.assertEqual(sorted(state["messages"]), expected)
        self.assertEqual(got[0], state["messages"])         # one order: the page's and the clients'
        self.assertEqual(got[1], state["messages"])
        self.stop(proc)

    def test_after_sighup_the_new_workers_share_one_channel(self):
        proc = self.start_node()
        old = set(self.pids)
        proc.send_signal(signal.SIGHUP)
        self.wait_for(lambda: "reloaded: workers" in self.stderr(), "the reload")
        self.wait_for(lambda: not any(_alive(pid) for pid in old), "the old workers' exit")
        self.pids = self.worker_pids(2)
        self.assertFalse(self.pids & old)
        a, b = sorted(self.pids)
        by_pid = self.clients({a: 1, b: 1})         # each new worker has a fresh link
        self.wait_for_channels({a: 1, b: 1})
        clients = by_pid[a] + by_pid[b]
        got = self.receive(clients, 2)
        clients[0].send_text("from a")
        clients[1].send_text("from b")
        got = self.received()
        self.assertEqual(got[0], got[1])
        self.assertEqual(sorted(got[0]), ["from a", "from b"])
        self.stop(proc)

    def test_router_workers_sharing_a_port_share_the_channel(self):
        port = free_port()
        transport = worker_channel_config(port)["workers"][0]["transports"][0]
        transport["endpoint"]["shared"] = True
        config_dir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, config_dir, True)
        config_path = os.path.join(config_dir, "config.json")
        write_json(config_path, {"workers": [
            {"type": "router", "options": {"pythonpath": [HERE]}, "transports": [transport]},
            {"type": "router", "options": {"pythonpath": [HERE]}, "transports": [transport]}]})
        proc = self.start_node(config_path, port, workers=None)
        a, b = sorted(self.pids)
        by_pid = self.clients({a: 1, b: 1})
        self.wait_for_channels({a: 1, b: 1})
        clients = by_pid[a] + by_pid[b]
        got = self.receive(clients, 3)
        clients[0].send_text("from a")
        clients[1].send_text("from b")
        self.http_to(a).request("POST", "/who", b"from the app")
        got = self.received()
        self.assertEqual(got[0], got[1])
        self.assertEqual(sorted(got[0]), ["from a", "from b", "from the app"])
        self.stop(proc)

    def test_the_slow_client_rule_holds_in_each_worker(self):
        # A client of worker "a" that reads nothing is dropped there, as in one
        # process (max_send_queue 1 MiB; 20 MB are broadcast, far more than the
        # kernel's buffers hold); the other client of "a" and the client of "b"
        # get every message, in one order. The sender keeps at most 20 messages
        # (200 KB) ahead of the readers, so that they are never the slow ones.
        proc = self.start_node(max_send_queue=1024 * 1024)
        a, b = sorted(self.pids)
        by_pid = self.clients({a: 2, b: 1})
        self.wait_for_channels({a: 2, b: 1})
        (slow, fast), (sender,) = by_pid[a], by_pid[b]
        slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        got = self.receive([fast, sender], 2000)
        messages = ["%04d" % i + "x" * 9996 for i in range(2000)]
        deadline = time.monotonic() + 120
        for i, message in enumerate(messages):
            while i - min(len(g) for g in got) > 20 and not self._errors:
                self.assertLess(time.monotonic(), deadline, "the readers fell behind")
                time.sleep(0.001)
            sender.send_text(message)
        got = self.received()
        self.assertEqual(got[0], messages)
        self.assertEqual(got[1], messages)
        self.wait_for(lambda: "[%d] dropping WebSocket client" % a in self.stderr(), "the drop")
        self.wait_for_channels({a: 1, b: 1})
        self.stop(proc)


class RelayFrameTests(unittest.TestCase):
    """Section 16: the relay's frames, as pure functions over bytes."""

    def test_text_and_binary_survive_whole_and_byte_by_byte(self):
        for path, message in (("/ws", "héllo"), ("/ws", ""), ("/a/b", b"\x00\xff"), ("/ws", b""),
                              ("/é", "x" * 70000)):
            with self.subTest(path=path, message=message[:10]):
                frame = wsgihost.build_relay_frame(path, message)
                self.assertEqual(wsgihost.relay_frame_end(frame + b"next"), len(frame))
                (got_path, got), end = wsgihost.parse_relay_frame(frame + b"next")
                self.assertEqual((got_path, type(got), got, end), (path, type(message), message, len(frame)))
                for cut in range(0, len(frame), max(1, len(frame) // 50)):   # a prefix is "not yet"
                    self.assertIsNone(wsgihost.parse_relay_frame(frame[:cut]))

    def test_the_layout(self):
        # 4 bytes: what follows the header (3 + 2); "t"; 2 bytes: the path's length.
        self.assertEqual(wsgihost.build_relay_frame("/ws", "hi"), b"\x00\x00\x00\x05t\x00\x03/wshi")
        self.assertEqual(wsgihost.build_relay_frame("/ws", b"hi"), b"\x00\x00\x00\x05b\x00\x03/wshi")
        self.assertEqual(wsgihost.RELAY_BEHIND_FRAME, b"\x00\x00\x00\x00!\x00\x00")
        self.assertEqual(wsgihost.parse_relay_frame(wsgihost.RELAY_BEHIND_FRAME), ((None, None), 7))

    def test_frames_found_one_after_another(self):
        frames = b"".join(wsgihost.build_relay_frame("/ws", m) for m in ("a", b"b", "c"))
        end, found = 0, []
        while end < len(frames):
            message, end = wsgihost.parse_relay_frame(frames, end)
            found.append(message)
        self.assertEqual(found, [("/ws", "a"), ("/ws", b"b"), ("/ws", "c")])

    def test_bytes_that_are_no_frame_raise(self):
        for data in (b"\x00\x00\x00\x02x\x00\x00ab",           # unknown kind
                     b"\x00\x00\x00\x02t\x00\x03/ws",           # a path longer than the frame
                     b"\x00\x00\x00\x01!\x00\x00x",             # a "behind" frame with a body
                     b"\x00\x00\x00\x02t\x00\x00\xff\xfe"):     # text that is not UTF-8
            with self.subTest(data=data), self.assertRaises(ValueError):
                wsgihost.parse_relay_frame(data)


# -----------------------------------------------------------------------------
# The reference map (CONFORMANCE.md), and the primer that starts from it
# -----------------------------------------------------------------------------

class ConformanceMapTests(unittest.TestCase):
    """CONFORMANCE.md cannot rot: every function and test it names exists, each row sits
    under the section of wsgihost.py that keeps its rule, and every test that cites a
    rule in its name or docstring is in it. Then the tests of the rules no test checked
    before the map was written, and examples/primer as its README tells it."""

    maxDiff = None          # a failure lists every broken row
    MAP = os.path.join(HERE, "CONFORMANCE.md")
    PRIMER = os.path.join(HERE, "examples", "primer")
    COLUMNS = ["§", "Rule, in our words", "Level", "wsgihost", "Kept by", "Checked by"]
    #: The "wsgihost" column: how the rule is kept.
    HOW = ("kept", "stricter", "lenient", "not kept", "left to the app")

    # -- the map and its names -----------------------------------------------------

    _banners = None

    @classmethod
    def banners(cls) -> list:
        """(line number, "N. Title") of each section banner of wsgihost.py, in order."""
        import re
        if cls._banners is None:
            with open(os.path.join(HERE, "wsgihost.py"), encoding="utf-8") as f:
                lines = f.read().split("\n")
            cls._banners = [(i + 1, line[2:]) for i, line in enumerate(lines) if i and lines[
                i - 1].startswith("# ====") and re.fullmatch(r"# \d+a?\. .+", line)]
        return cls._banners

    @classmethod
    def section_of(cls, name: str):
        """The banner ("N. Title") under which ``wsgihost.a.b`` is defined; None if nowhere."""
        import inspect
        import re
        if not re.fullmatch(r"wsgihost(\.\w+)+", name):
            return None
        obj = wsgihost
        for part in name.split(".")[1:]:
            obj = getattr(obj, part, cls)       # the class itself: "no such attribute"
            if obj is cls:
                return None
        if isinstance(obj, property):
            obj = obj.fget
        try:
            line = inspect.getsourcelines(obj)[1]
        except TypeError:               # a constant: where the module assigns it
            with open(os.path.join(HERE, "wsgihost.py"), encoding="utf-8") as f:
                found = [i + 1 for i, text in enumerate(f)
                         if re.match(r"%s\s*=" % re.escape(name.split(".")[-1]), text)]
            if len(name.split(".")) != 2 or not found:
                return None
            line = found[0]
        above = [title for first, title in cls.banners() if first <= line]
        return above[-1] if above else None

    @staticmethod
    def names_a_test(name: str) -> bool:
        """Is ``Class.test_name`` a test of this file?"""
        cls_name, _, method = name.partition(".")
        cls = globals().get(cls_name)
        return (isinstance(cls, type) and issubclass(cls, unittest.TestCase)
                and method.startswith("test_") and callable(getattr(cls, method, None)))

    def read_map(self) -> list:
        """(line number, chapter, section heading, cells) of every rule row of the map."""
        rows, chapter, section, header = [], None, None, None
        with open(self.MAP, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.startswith("## "):
                    chapter, section, header = line[3:].strip(), None, None
                elif line.startswith("### "):
                    section, header = line[4:].strip(), None
                elif line.startswith("|"):
                    cells = [cell.strip() for cell in line.strip()[1:-1].split("|")]
                    if header is None:
                        header = cells
                    elif not set("".join(cells)) <= set("-: ") and "Kept by" in header:
                        rows.append((number, chapter, section, dict(zip(header, cells))))
                else:
                    header = None
        return rows

    def test_every_row_names_code_and_tests_that_exist_in_its_section(self):
        """Each row: under a heading that is a banner of wsgihost.py, the first function
        it names defined under that banner, every name real, at least one test."""
        import re
        banners = {title for _, title in self.banners()}
        rows = self.read_map()
        self.assertGreater(len(rows), 100)
        errors = []
        for number, chapter, section, row in rows:
            where = "CONFORMANCE.md:%d" % number
            if list(row) != self.COLUMNS:
                errors.append("%s: columns %s, expected %s" % (where, list(row), self.COLUMNS))
                continue
            if section not in banners:
                errors.append("%s: %r is not a section banner of wsgihost.py" % (where, section))
            if not row["§"] or row["wsgihost"] not in self.HOW:
                errors.append("%s: no §, or %r is not one of %s" % (where, row["wsgihost"], self.HOW))
            code = re.findall(r"`([^`]+)`", row["Kept by"])
            tests = re.findall(r"`([^`]+)`", row["Checked by"])
            if not code or not tests:
                errors.append("%s: names no code or no test" % where)
            for i, name in enumerate(code):
                found = self.section_of(name)
                if found is None:
                    errors.append("%s: %s is not in wsgihost.py" % (where, name))
                elif i == 0 and found != section:
                    errors.append("%s: %s is in section %r, not %r" % (where, name, found, section))
            errors += ["%s: %s is not a test of test_wsgihost.py" % (where, name)
                       for name in tests if not self.names_a_test(name)]
        self.assertEqual(errors, [])

    def test_every_test_that_cites_a_rule_is_in_the_map(self):
        """A test named after a rule (..._rfc9112_3_2, ..._pep3333), or whose docstring
        cites one by its number, makes a claim about that rule: the map lists it."""
        import re
        mapped = {name for *_, row in self.read_map()
                  for name in re.findall(r"`([^`]+)`", row.get("Checked by", ""))}
        citing = []
        for cls_name, cls in sorted(globals().items()):
            if isinstance(cls, type) and issubclass(cls, unittest.TestCase):
                for method in sorted(dir(cls)):
                    doc = getattr(getattr(cls, method), "__doc__", None) or ""
                    if method.startswith("test_") and (re.search(r"rfc|pep_?3333", method, re.I)
                                                       or re.search(r"RFC ?\d{4}|PEP 3333", doc)):
                        citing.append("%s.%s" % (cls_name, method))
        self.assertIn("ParseRequestHeadTests.test_raw_byte_over_0x7f_in_target_rejected_rfc9112_3_2",
                      citing)               # the search finds what it should
        self.assertEqual([name for name in citing if name not in mapped], [],
                         "tests that cite a rule but are missing from CONFORMANCE.md")

    def test_the_map_has_its_chapters_and_the_module_points_at_it(self):
        with open(self.MAP, encoding="utf-8") as f:
            chapters = [line[3:].strip() for line in f if line.startswith("## ")]
        for chapter in ("PEP 3333", "RFC 9110 and RFC 9112", "RFC 6455", "RFC 7692"):
            self.assertTrue(any(c.startswith(chapter) for c in chapters), chapter)
        self.assertIn("CONFORMANCE.md", wsgihost.__doc__)

    # -- rules no earlier test checked -------------------------------------------

    def test_whitespace_line_after_the_request_line_rejected_rfc9112_2_2(self):
        # RFC 9112 §2.2: whitespace between the start-line and the first field MUST be
        # rejected (or the line consumed): read as a field, " Host: b" would give one
        # server a different Host than another that skipped it.
        with self.assertRaises(HTTPError) as caught:
            parse_request_head(b"GET / HTTP/1.1\r\n Host: b\r\nHost: a")
        self.assertEqual(caught.exception.status, 400)
        resp = one(hello_app, b"GET / HTTP/1.1\r\n Host: b\r\nHost: a\r\n\r\n")
        self.assertEqual((resp.status, resp.headers["connection"]), (400, "close"))

    def test_request_line_of_8000_octets_accepted_rfc9112_3(self):
        # RFC 9112 §3: "It is RECOMMENDED that all HTTP senders and recipients support,
        # at a minimum, request-line lengths of 8000 octets": 4 + 7987 + 9 = 8000.
        target = b"/" + b"a" * 7986
        request_line = b"GET " + target + b" HTTP/1.1"
        self.assertEqual(len(request_line), 8000)
        resp = one(environ_app, request_line + b"\r\nHost: a\r\n\r\n")
        self.assertEqual((resp.status, json.loads(resp.body)["PATH_INFO"]), (200, target.decode()))

    def test_streamed_response_to_http_1_0_keep_alive_closes_rfc9112_9_3(self):
        # RFC 9112 §9.3: a connection persists only if every message has a length of its
        # own; a streamed body to HTTP/1.0 (no chunked there) ends when the connection does.
        def app(environ, start_response):
            start_response("200 OK", TEXT)
            yield b"ab"
            yield b"cd"
        data = run_raw(app, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        responses = split_responses(data)
        self.assertEqual([(r.body, r.headers.get("connection")) for r in responses], [(b"abcd", None)])

    def test_date_on_every_answer_rfc9110_6_6_1(self):
        # RFC 9110 §6.6.1: an origin server with a clock MUST send Date in its 2xx, 3xx
        # and 4xx responses -- the app's and the server's own alike -- as IMF-fixdate.
        import re
        service = wsgihost.WSGIService(hello_app, "test:hello")
        transport = wsgihost.WebTransport(wsgihost.PathNode({"app": service}), "127.0.0.1", 0)
        sock = FakeSocket(b"GET /app HTTP/1.1\r\nHost: a\r\n\r\nGET /nothing HTTP/1.1\r\nHost: a\r\n\r\n"
                          b"GET /app HTTP/1.1\r\n\r\n")
        transport.serve_connection(sock, REMOTE)
        responses = split_responses(bytes(sock.sent))
        self.assertEqual([r.status for r in responses], [200, 404, 400])
        for resp in responses:
            self.assertRegex(resp.headers["date"], r"\A[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} "
                                                   r"\d\d:\d\d:\d\d GMT\Z")
            self.assertLess(abs(wsgihost.parse_http_date(resp.headers["date"]) - time.time()), 60)

    def test_head_answered_with_an_empty_list_gets_no_invented_content_length_rfc9110_8_6(self):
        # RFC 9110 §8.6: a Content-Length in a response to HEAD MUST be what GET would
        # send. An app that returns nothing for HEAD says nothing of its length, and
        # "Content-Length: 0" would be a lie: GET sends 8 bytes.
        def app(environ, start_response):
            start_response("200 OK", TEXT)
            return [] if environ["REQUEST_METHOD"] == "HEAD" else [b"the body"]
        data = run_raw(app, b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
                       validate=False)
        head, get = split_responses(data, ["HEAD", "GET"])
        self.assertNotIn("content-length", head.headers)
        self.assertNotIn("transfer-encoding", head.headers)
        self.assertEqual((get.headers["content-length"], get.body), ("8", b"the body"))

    def static_file(self, mtime=None) -> str:
        """A folder holding f.txt ("hello world"), modified at ``mtime``; its path."""
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)
        path = os.path.join(root, "f.txt")
        with open(path, "wb") as f:
            f.write(b"hello world")
        if mtime is not None:
            os.utime(path, (mtime, mtime))
        return root

    def test_if_unmodified_since_ignored_with_if_match_or_invalid_rfc9110_13_1_4(self):
        # RFC 9110 §13.1.4: If-Unmodified-Since MUST be ignored when If-Match is present,
        # or when it is not a valid HTTP-date (a list of dates included).
        app = wsgihost.StaticFiles(self.static_file(mtime=1_600_000_000))
        before = "Sun, 13 Sep 2020 12:26:39 GMT"        # a second before the file's mtime
        for fields, status in ((["If-Unmodified-Since: " + before], 412),      # honoured alone
                               (["If-Match: *", "If-Unmodified-Since: " + before], 200),
                               (["If-Unmodified-Since: yesterday"], 200),
                               (["If-Unmodified-Since: %s, %s" % (before, before)], 200)):
            with self.subTest(fields=fields):
                request = "GET /f.txt HTTP/1.1\r\nHost: a\r\n%s\r\n\r\n" % "\r\n".join(fields)
                self.assertEqual(one(app, request.encode()).status, status)

    def test_last_modified_never_later_than_now_rfc9110_8_8_2_1(self):
        # RFC 9110 §8.8.2.1: an origin server MUST NOT send a Last-Modified later than
        # the moment of the response (a file's clock may be ahead, or its mtime set so).
        app = wsgihost.StaticFiles(self.static_file(mtime=time.time() + 10 * 24 * 3600))
        resp = one(app, b"GET /f.txt HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(resp.status, 200)
        self.assertLessEqual(wsgihost.parse_http_date(resp.headers["last-modified"]),
                             wsgihost.parse_http_date(resp.headers["date"]))

    def test_range_on_head_ignored_rfc9110_14_2(self):
        """RFC 9110 §14.2: "A server MUST ignore a Range header field received with a
        request method ... for which range handling is not defined" -- every method but
        GET (found writing CONFORMANCE.md: a static path used to answer HEAD with 206)."""
        app = wsgihost.StaticFiles(self.static_file())
        resp = one(app, b"HEAD /f.txt HTTP/1.1\r\nHost: a\r\nRange: bytes=0-1\r\n\r\n")
        self.assertEqual((resp.status, resp.headers.get("content-range")), (200, None))

    def test_tls_connection_closed_with_a_closure_alert_rfc9112_9_8(self):
        """RFC 9112 §9.8: "Servers MUST attempt to initiate an exchange of closure alerts
        with the client before closing the connection": the stream ends with a TLS
        close_notify, so a strict client can tell the end of the response from a truncation."""
        cbdir = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, cbdir, True)
        for name, text in (("server.pem", SERVER_CERT), ("server.key", SERVER_KEY)):
            with open(os.path.join(cbdir, name), "w") as f:
                f.write(text)
        config = web_config({"/": {"type": "wsgi", "module": "test_wsgihost", "object": "hello_app"}},
                            {"type": "tcp", "port": 0, "interface": "127.0.0.1",
                             "tls": {"key": "server.key", "certificate": "server.pem"}})
        node = wsgihost.Node(config, cbdir).start()
        self.addCleanup(node.stop, 0)
        context = ssl.create_default_context(cadata=SERVER_CERT)
        # Some Pythons (3.9) have the client take a cut connection for a clean end: not here.
        context.options &= ~getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
        raw = socket.create_connection(("127.0.0.1", node.transports[0].port), timeout=10)
        sock = context.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)
        self.addCleanup(sock.close)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        data = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:               # a close_notify ended the stream
                    break
                data += chunk
        except ssl.SSLError as exc:         # SSLEOFError, or 3.9's "unexpected eof"
            self.fail("the connection ended without a TLS closure alert (%s), after %d bytes"
                      % (exc, len(data)))
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK\r\n"), data[:60])

    def test_hsts_only_over_tls_rfc6797_7_2(self):
        # RFC 6797 §7.2: Strict-Transport-Security MUST NOT be sent over plain http,
        # where an attacker in the middle could set it: the option warns and does nothing.
        config = web_config({"/": {"type": "wsgi", "module": "test_wsgihost", "object": "hello_app"}},
                            options={"hsts": True})
        with self.assertLogs("wsgihost", "WARNING") as logs:
            transport = wsgihost.build_transports(config, ".", ".crossbar/config.json")[0]
        self.assertIn("hsts is ignored: it applies to TLS endpoints only", logs.output[0])
        sock = FakeSocket(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        transport.serve_connection(sock, REMOTE)
        self.assertTrue(bytes(sock.sent).startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertNotIn(b"Strict-Transport-Security", bytes(sock.sent))

    def test_each_chunk_sent_before_the_next_is_asked_for_pep3333(self):
        """PEP 3333, "Buffering and Streaming": a server must not delay the transmission
        of any block; each is on the wire before the app is asked for the next."""
        sock = FakeSocket(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        sent_before_second = []

        def app(environ, start_response):
            start_response("200 OK", TEXT)
            yield b"first"
            sent_before_second.append(bytes(sock.sent))
            yield b"second"
        wsgihost.app_transport(app).serve_connection(sock, REMOTE)
        self.assertTrue(sent_before_second[0].endswith(b"\r\n\r\n5\r\nfirst\r\n"), sent_before_second)
        self.assertTrue(bytes(sock.sent).endswith(b"6\r\nsecond\r\n0\r\n\r\n"))

    def test_write_past_content_length_is_cut_and_closes_pep3333(self):
        """PEP 3333, "Handling the Content-Length Header": the server should not send more
        than the app's Content-Length. write() past it: cut, logged, connection closed."""
        def app(environ, start_response):
            write = start_response("200 OK", [("Content-Length", "3")])
            write(b"abcdef")
            return []
        with self.assertLogs("wsgihost", "ERROR") as logs:
            data = run_raw(app, b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
                           validate=False)
        self.assertTrue(data.endswith(b"\r\n\r\nabc"), data)
        self.assertEqual(data.count(b"HTTP/1.1 200"), 1)
        self.assertIn("more than its Content-Length of 3", logs.output[0])

    def ws_node(self):
        node = wsgihost.Node(WS_CONFIG).start()
        self.addCleanup(node.stop, 0)
        return node.transports[0].port, node.transports[0].channels

    def wait_for(self, condition):
        deadline = time.monotonic() + 30
        while not condition():
            self.assertLess(time.monotonic(), deadline, "timed out")
            time.sleep(0.01)

    def test_101_carries_upgrade_connection_and_accept_rfc6455_4_2_2(self):
        # RFC 6455 §4.2.2 and RFC 9110 §7.8: a 101 names the protocol switched to in
        # Upgrade, with "upgrade" in Connection, and the accept key of §1.3's example.
        port, _ = self.ws_node()
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(sock.close)
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            byte = sock.recv(1)
            self.assertTrue(byte, head)         # not closed before the head is whole
            head += byte
        self.assertEqual(head, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                               b"Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
                               b"\r\n\r\n")

    def test_extension_offers_declined_rfc6455_9_1(self):
        # RFC 6455 §9.1: the server answers only extensions it accepts; none here, so no
        # Sec-WebSocket-Extensions, and a frame claiming one (RSV1: compressed) fails 1002.
        port, _ = self.ws_node()
        client = WSClient(port, headers=[("Sec-WebSocket-Extensions",
                                          "permessage-deflate; client_max_window_bits")])
        self.addCleanup(client.close)
        self.assertEqual(client.status, 101)
        self.assertNotIn("sec-websocket-extensions", client.head.lower())
        client.sock.sendall(bytes([0xC1, 0x85]) + b"abcd" + wsgihost.apply_mask(b"hello", b"abcd"))
        self.assertEqual(client.expect_close(), 1002)

    def test_server_frames_are_never_masked_rfc6455_5_1(self):
        # RFC 6455 §5.1: "A server MUST NOT mask any frames that it sends to the client."
        port, _ = self.ws_node()
        client = WSClient(port)
        self.addCleanup(client.close)
        client.send_text("hi")
        client.send(Opcode.PING, b"p")
        client._fill(7)
        self.assertEqual(bytes(client.buffer[:7]), b"\x81\x02hi\x8a\x01p")   # mask bits clear

    def test_no_data_frame_after_the_servers_close_rfc6455_5_5_1(self):
        # RFC 6455 §5.5.1: "After sending a Close frame, the application MUST NOT send any
        # more data frames": a broadcast right after close_all() does not reach the client.
        port, channels = self.ws_node()
        client = WSClient(port)
        self.addCleanup(client.close)
        self.wait_for(lambda: len(channels["/ws"]) == 1)
        channels["/ws"].close_all(1000)
        channels["/ws"].broadcast("too late")
        self.assertEqual(client.recv_frame(), (Opcode.CLOSE, b"\x03\xe8"))
        client.send(Opcode.CLOSE, b"\x03\xe8")            # the handshake done, TCP ends...
        try:
            rest = bytes(client.buffer) + client.sock.recv(4096)
        except ConnectionResetError:
            rest = bytes(client.buffer)
        self.assertEqual(rest, b"")                         # ...with nothing after the Close

    def test_text_sent_is_always_utf8_rfc6455_5_6(self):
        # RFC 6455 §5.6: a text message MUST be valid UTF-8. A str that cannot be encoded
        # (a lone surrogate) raises in the sender; nothing invalid reaches the wire.
        self.assertEqual(wsgihost.build_message_frame("h\u00e9"), b"\x81\x03h\xc3\xa9")
        with self.assertRaises(UnicodeEncodeError):
            wsgihost.build_message_frame("\ud800")
        with self.assertRaises(UnicodeEncodeError):
            wsgihost.Channel("/x").broadcast("\ud800")

    # -- examples/primer -----------------------------------------------------------

    def test_primer_example_as_its_readme_says(self):
        """examples/primer on port 0: the README's request gets the README's answer (but
        its date, timing and port), /health is the middleware's, /plain the bare app's,
        close() writes its log line, and every section and name it cites exists."""
        import re
        with open(os.path.join(self.PRIMER, "README.md"), encoding="utf-8") as f:
            readme = f.read()
        banners = {title for _, title in self.banners()}
        for title in re.findall(r"`# (\d+a?\. [^`]+)`", readme):
            self.assertIn(title, banners)
        for name in set(re.findall(r"`(wsgihost\.(?!py`)[\w.]+)`", readme)):
            self.assertIsNotNone(self.section_of(name), name)
        for name in re.findall(r"`(\w+Tests\.test_\w+)`", readme):
            self.assertTrue(self.names_a_test(name), name)
        request, response = re.findall(r"```http\n(.*?)```", readme, re.S)
        config, cbdir = wsgihost.load_config(os.path.join(self.PRIMER, ".crossbar", "config.json"))
        config["workers"][0]["transports"][0]["endpoint"]["port"] = 0
        node = wsgihost.Node(config, cbdir)
        errors = io.StringIO()
        node.transports[0].base_environ["wsgi.errors"] = errors
        node.start()
        self.addCleanup(node.stop, 1)
        port = node.transports[0].port

        def send(head: bytes) -> bytes:
            """One request on a new connection; the response, read to its Content-Length."""
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(head)
                data = b""
                while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < int(
                        re.search(rb"Content-Length: (\d+)", data).group(1)):
                    chunk = sock.recv(65536)
                    self.assertTrue(chunk, data)
                    data += chunk
                return data

        def normal(text: str) -> str:
            """What differs from run to run made as the README has it: port, date, timing."""
            text = text.replace("127.0.0.1:%d" % port, "127.0.0.1:8080").replace("'%d'" % port, "'8080'")
            for pattern, fixed in ((r"dur=[0-9.]+", "dur=1.43"), (r"Date: [^\r\n]+", "Date: D"),
                                   (r"wsgihost/[0-9.]+", "wsgihost/V"),
                                   (r"Content-Length: \d+", "Content-Length: N")):
                text = re.sub(pattern, fixed, text)
            return text
        head = request.rstrip("\n").replace("\n", "\r\n") + "\r\n\r\n"
        live_head, _, live_body = send(head.replace(":8080", ":%d" % port).encode()).decode().partition(
            "\r\n\r\n")
        shown_head, _, shown_body = response.partition("\n\n")
        for head_text, body_text in ((live_head, live_body), (shown_head, shown_body)):
            self.assertEqual(re.search(r"Content-Length: (\d+)", head_text).group(1),
                             str(len(body_text.encode())))         # each tells its own length
        self.assertEqual(normal(live_head), normal(shown_head.replace("\n", "\r\n")))
        self.assertEqual(normal(live_body), normal(shown_body))
        self.wait_for(lambda: errors.getvalue())       # close() runs once the response is sent
        self.assertRegex(errors.getvalue(), r"\Aprimer: GET /hello -> 200 OK in [0-9.]+ ms\n\Z")
        health = split_responses(send(b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
        self.assertEqual((health[0].status, health[0].body), (200, b"ok\n"))
        self.assertRegex(health[0].headers["server-timing"], r"\Aapp;dur=[0-9.]+\Z")
        for path, path_info in ((b"/plain/hello?name=reader", "/hello"), (b"/plain/health", "/health")):
            with self.subTest(path=path):
                plain = split_responses(send(b"GET %s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                                             % path))[0]
                self.assertNotIn("server-timing", plain.headers)
                self.assertIn(b"  SCRIPT_NAME: '/plain'\n  PATH_INFO: '%s'\n" % path_info.encode(),
                              plain.body)


class MaskTests(unittest.TestCase):
    """apply_mask (a big-integer XOR per MASK_SLICE bytes, the last slice
    shorter) against the definition, byte by byte, at and around the slice edges."""

    def test_mask_both_ways_at_every_size_rfc6455_5_3(self):
        # RFC 6455 §5.3: "octet i of the transformed data is the XOR of octet i of the
        # original data with octet at index i modulo 4 of the masking key".
        edge = wsgihost.MASK_SLICE
        for size in (0, 1, 2, 3, 4, 5, 125, edge - 1, edge, edge + 1, edge + 2, edge + 3, 3 * edge + 7):
            payload = os.urandom(size)
            for mask in (b"\x00\x00\x00\x00", b"\xff\x01\x80\x7f", os.urandom(4)):
                expected = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                for given in (payload, bytearray(payload), memoryview(payload)):
                    with self.subTest(size=size, mask=mask, type=type(given).__name__):
                        masked = wsgihost.apply_mask(given, mask)
                        self.assertEqual((type(masked), masked), (bytes, expected))


class DeflateConformanceTests(WebSocketNodeCase):
    """RFC 7692 rules over the wire that the other deflate tests did not check."""

    def test_control_frames_are_never_compressed_rfc7692_6(self):
        # RFC 7692 §6: PMCEs operate on data messages only; "An endpoint MUST NOT set the
        # 'Per-Message Compressed' bit of control frames": the Pong and the Close of a
        # compressed connection go out with RSV1 clear, its data messages with RSV1 set.
        c = self.client()
        self.assertIsNotNone(c.agreed)
        c.send(Opcode.PING, b"ping")
        self.assertEqual(c.read_frame() + (c.rsv1,), (Opcode.PONG, b"ping", False))
        c.send_compressed(Opcode.TEXT, b"data")
        self.assertEqual(c.recv_message(), (Opcode.TEXT, b"data", True))
        c.send(Opcode.CLOSE, b"\x03\xe8")
        self.assertEqual(c.read_frame() + (c.rsv1,), (Opcode.CLOSE, b"\x03\xe8", False))
        # ... and a Close the server starts (close_all, as at shutdown), once the
        # first client has left the channel (else it could be the one counted)
        self.wait_for(lambda: len(self.channels["/z"]) == 0)
        c = self.client()
        self.wait_for(lambda: len(self.channels["/z"]) == 1)
        self.channels["/z"].close_all()
        self.assertEqual(c.read_frame() + (c.rsv1,), (Opcode.CLOSE, b"\x03\xe9", False))

    def test_the_servers_window_is_what_was_agreed_rfc7692_7_1_2_1(self):
        # RFC 7692 §7.1.2.1: with server_max_window_bits=9 agreed, the server's messages
        # refer back at most 512 bytes, so a client keeping a 512-byte window between
        # messages reads them. Here the second of two messages of the same 1,000 random
        # bytes: with a larger window it is a reference 1,000 bytes back, which such a
        # client cannot follow (zlib: "invalid distance too far back").
        block = os.urandom(1000)

        def two_messages(client):
            payloads = []
            for _ in range(2):
                client.send_compressed(Opcode.BINARY, block)
                opcode, payload = client.recv_frame()
                self.assertEqual((opcode, client.rsv1), (Opcode.BINARY, True))
                payloads.append(payload + b"\x00\x00\xff\xff")
            return payloads

        c = self.client(offer="permessage-deflate; server_max_window_bits=9; client_max_window_bits")
        self.assertIn("server_max_window_bits=9", c.agreed)
        first, second = two_messages(c)
        inflater = zlib.decompressobj(-9)
        self.assertEqual([inflater.decompress(first), inflater.decompress(second)], [block, block])
        self.assertGreater(len(second), 900)            # the repeat is out of reach
        first, second = two_messages(self.client())      # the default window, 12 bits, reaches it
        self.assertLess(len(second), 100)
        inflater = zlib.decompressobj(-9)
        self.assertEqual(inflater.decompress(first), block)
        with self.assertRaises(zlib.error):
            inflater.decompress(second)


# -----------------------------------------------------------------------------
# Runner: a closing line "N passed, N failed, N skipped"
# -----------------------------------------------------------------------------

class AttackTests(unittest.TestCase):
    """Issue 9 as a hostile client plays it, for what no other test covers yet: each
    test asserts what the client sees and that the server goes on serving others.
    Counts are small and every wait is bounded. Covered elsewhere (not repeated here):
    fragments and empty fragments (WebSocketFragmentTests), a hung app and abandoned
    queued requests, queue_timeout, max_websockets, max_connections_per_client, slow
    uploads and readers, min_rate (WaitingRoomTests), slowloris (SlowClientTests),
    smuggling (SmugglingTests), SIGTERM under load (ShutdownTests), the 1008 Close and
    the writer's send timeout (WebSocketSocketTests), the parsing fixes
    (ParseRequestHeadTests, ParseRequestTargetTests, ParseBodyFramingTests,
    ParseChunkSizeTests, MountTests) and the config values (ConfigTests)."""

    def wait_for(self, condition, what, timeout=30):
        deadline = time.monotonic() + timeout
        while not condition():
            self.assertLess(time.monotonic(), deadline, what)
            time.sleep(0.01)

    def node(self, paths, **options):
        config = web_config(paths, {"type": "tcp", "port": 0, "interface": "127.0.0.1"},
                            options=options)
        node = wsgihost.Node(config).start()
        self.addCleanup(node.stop, 0)
        return node, node.transports[0].port

    def exchange(self, port, request: bytes) -> bytes:
        """Send ``request`` on a fresh connection; everything until the server closes it."""
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(sock.close)
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)           # nothing more: the server's linger ends at once
        return recv_until_closed(sock)

    def assertServed(self, port, path="/"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        self.assertEqual(resp.status, 200, body)
        return json.loads(body)

    def test_bad_targets_over_the_wire_get_400_and_close_and_others_are_served(self):
        # RFC 9112 §3.2 (absolute-form without Host), §3 and RFC 3986 §2 (raw bytes
        # 0x80-0xFF in the target): 400 with Connection: close; the request pipelined
        # behind it is not served, and a fresh client is.
        app = {"type": "wsgi", "module": "test_wsgihost", "object": "environ_app"}
        node, port = self.node({"/": app, "fault": app})
        follow = b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n"
        for request in (b"GET /caf\xe9 HTTP/1.1\r\nHost: a\r\n\r\n",
                        b"GET /" + bytes(range(0x80, 0x100)) + b" HTTP/1.1\r\nHost: a\r\n\r\n",
                        b"GET /?q=\xff HTTP/1.1\r\nHost: a\r\n\r\n",
                        b"GET http://example.com/fault/x HTTP/1.1\r\n\r\n"):
            with self.subTest(request=request):
                data = self.exchange(port, request + follow)
                self.assertTrue(data.startswith(b"HTTP/1.1 400 Bad Request\r\n"), data)
                self.assertIn(b"\r\nConnection: close\r\n", data)
                self.assertEqual(len(split_responses(data)), 1, data)   # /after not served
                self.assertEqual(self.assertServed(port)["PATH_INFO"], "/")

    def test_an_encoded_slash_does_not_reach_a_mount_by_its_raw_prefix(self):
        # Split on the raw "/", decode each segment after (Crossbar, the README's mount
        # table): "/fault%2Fx" is one segment "fault/x", so it goes to "/", never to the
        # "fault" mount, whose own segment is still reached however it is spelled.
        app = {"type": "wsgi", "module": "test_wsgihost", "object": "environ_app"}
        node, port = self.node({"/": app, "fault": app})
        for path, script_name, path_info in [
                ("/fault%2Fx", "", "/fault/x"), ("/fault%2fx/y", "", "/fault/x/y"),
                ("/%66ault%2Fx", "", "/fault/x"), ("/%66ault/x", "/fault", "/x"),
                ("/fault/x", "/fault", "/x")]:
            with self.subTest(path=path):
                env = self.assertServed(port, path)
                self.assertEqual((env["SCRIPT_NAME"], env["PATH_INFO"]), (script_name, path_info))

    def test_websockets_cannot_take_the_http_reserve_by_default(self):
        # No max_websockets given: WebSockets may hold four fifths of max_connections
        # (8 of 10); the ninth handshake gets 503, and HTTP is still answered.
        node, port = self.node({"ws": {"type": "websocket"},
                                "/": {"type": "wsgi", "module": "test_wsgihost",
                                      "object": "environ_app"}},
                               max_connections=10)
        clients = []
        for _ in range(8):
            client = WSClient(port, timeout=10)
            self.addCleanup(client.close)
            clients.append(client)
            self.assertEqual(client.status, 101, client.head)
        extra = WSClient(port, timeout=10)
        self.addCleanup(extra.close)
        self.assertTrue(extra.head.startswith("HTTP/1.1 503 "), extra.head)
        self.assertIn("Retry-After: 5\r\n", extra.head)
        for _ in range(2):                      # the reserve: both HTTP slots answer
            self.assertEqual(self.assertServed(port)["PATH_INFO"], "/")
        clients[0].send_text("still here")      # and the WebSockets are undisturbed
        self.assertEqual(clients[0].recv_text(), "still here")

    def test_a_stray_crlf_after_a_body_leaves_the_connection_idle_for_stop(self):
        # RFC 9112 §2.2: a server SHOULD ignore at least one empty line received
        # before a request-line. The CRLF a client adds after a body is such a line:
        # the connection is idle, the next request on it is served, and stopping
        # the node closes it at once instead of waiting out shutdown_grace.
        node, port = start_node(body_reading_app, shutdown_grace=60)
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.addCleanup(sock.close)
        reader = sock.makefile("rb")
        self.addCleanup(reader.close)

        def response() -> bytes:
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                line = reader.readline()
                self.assertTrue(line, "closed before a whole response head")
                head += line
            self.assertTrue(head.startswith(b"HTTP/1.1 200 OK\r\n"), head)
            length = int(re.search(rb"\r\nContent-Length: (\d+)\r\n", head).group(1))
            return reader.read(length)
        connections = node.transports[0].connections
        for request in (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\r\n",
                        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"5\r\nhello\r\n0\r\n\r\n\r\n"):
            sock.sendall(request)
            self.assertEqual(response(), b"read it")
            self.wait_for(lambda: [c.state for c in list(connections)] == ["waiting"],
                          "the stray CRLF left the connection busy")
        start = time.monotonic()
        node.stop()                             # shutdown_grace: 60 s, if anything were busy
        self.assertLess(time.monotonic() - start, 30)     # half of it: nothing was awaited
        self.assertEqual(reader.read(), b"")              # closed, with nothing more to say

    def test_a_stopped_node_started_again_serves_keep_alive_and_websockets(self):
        # A stopped Node used to keep its transports "stopping": started again, it
        # answered every request with Connection: close and every handshake with 503.
        config = web_config({"ws": {"type": "websocket"},
                             "/": {"type": "wsgi", "module": "test_wsgihost", "object": "hello_app"}},
                            {"type": "tcp", "port": 0, "interface": "127.0.0.1"})
        node = wsgihost.Node(config).start()
        self.addCleanup(node.stop, 0)
        node.stop(0)
        node.start()
        port = node.transports[0].port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.addCleanup(conn.close)
        for _ in range(2):                      # two requests on one connection
            conn.request("GET", "/")
            resp = conn.getresponse()
            self.assertEqual((resp.status, resp.read(), resp.getheader("Connection")),
                             (200, b"Hello, World!", None))
        self.assertIsNotNone(conn.sock)         # kept alive, not closed after each
        client = WSClient(port, timeout=10)
        self.addCleanup(client.close)
        self.assertEqual(client.status, 101, client.head)
        client.send_text("echo")
        self.assertEqual(client.recv_text(), "echo")

    def test_serve_puts_back_the_callers_signal_handlers(self):
        # serve() handles SIGTERM and SIGINT while it runs; once it returns, the
        # process's own handlers are back (they used to stay replaced for good).
        code = "\n".join([
            "import os, signal, sys, threading, time",
            "sys.path.insert(0, %r)" % HERE,
            "import wsgihost",
            "def mine(signum, frame): pass",
            "signal.signal(signal.SIGTERM, mine)",
            "signal.signal(signal.SIGINT, mine)",      # (a background job inherits SIGINT ignored)
            "def stop_once_serving():",
            "    deadline = time.monotonic() + 60",
            "    while signal.getsignal(signal.SIGTERM) is mine and time.monotonic() < deadline:",
            "        time.sleep(0.01)",
            "    os.kill(os.getpid(), signal.SIGTERM)",
            "threading.Thread(target=stop_once_serving, daemon=True).start()",
            "wsgihost.serve(lambda environ, start_response: [], '127.0.0.1', 0)",
            "print(signal.getsignal(signal.SIGTERM) is mine, signal.getsignal(signal.SIGINT) is mine)"])
        proc = subprocess.run([sys.executable, "-c", code], cwd=HERE, capture_output=True,
                              timeout=120)
        self.assertEqual((proc.returncode, proc.stdout), (0, b"True True\n"), proc.stderr)

    def test_a_ping_after_the_servers_close_gets_its_pong(self):
        """Issue 9's review: once the server has sent its Close, a Ping from the
        client still gets its Pong, until the client's Close comes (the protocol
        core answers it in CLOSING; only data frames stop after a Close, §5.5.1)."""
        # RFC 6455 §5.5.2: "Upon receipt of a Ping frame, an endpoint MUST send a Pong
        # frame in response, unless it already received a Close frame."
        node, port = self.node({"ws": {"type": "websocket"}})
        client = WSClient(port, timeout=10)
        self.addCleanup(client.close)
        channel = node.transports[0].channels["/ws"]
        self.wait_for(lambda: len(channel) == 1, "the client never joined")
        channel.close_all(1000)
        self.assertEqual(client.read_frame(), (Opcode.CLOSE, b"\x03\xe8"))
        client.send(Opcode.PING, b"still there?")
        self.assertEqual(client.read_frame(), (Opcode.PONG, b"still there?"))
        client.send(Opcode.CLOSE, b"\x03\xe8")
        self.assertEqual(client.sock.recv(100), b"")


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



class WebSocketPiecesTests(unittest.TestCase):
    """A received frame is unmasked piece by piece, in MASK_SLICE slices kept
    apart until the message is whole: the message is the same however the
    bytes arrive, a slice edge inside a piece or a character included."""

    def receive_in_pieces(self, frame: bytes, sizes):
        proto = wsgihost.WebSocketProtocol(max_message_size=1 << 20, max_frame_size=1 << 20)
        events, pos = [], 0
        for size in sizes:
            got, reply = proto.receive_data(frame[pos:pos + size])
            self.assertEqual(reply, b"")
            events += got
            pos += size
        self.assertEqual(pos, len(frame))
        return events

    def test_binary_message_across_slice_edges_in_uneven_pieces(self):
        edge = wsgihost.MASK_SLICE
        payload = os.urandom(2 * edge + 3)
        frame = build_frame(Opcode.BINARY, payload, mask=os.urandom(4))
        rest = len(frame) - (1 + 7 + edge + 5)
        for sizes in ([len(frame)], [1, 7, edge + 5, rest], [3] + [edge - 1] * 2 + [len(frame) - 3 - 2 * (edge - 1)]):
            with self.subTest(sizes=sizes):
                events = self.receive_in_pieces(frame, sizes)
                self.assertEqual(events, [(Opcode.BINARY, payload)])
                self.assertIs(type(events[0][1]), bytes)

    def test_text_with_a_character_across_a_slice_edge(self):
        edge = wsgihost.MASK_SLICE
        text = "a" * (edge - 1) + "\u00e9" + "b" * 10          # é's 2 bytes straddle the edge
        frame = build_frame(Opcode.TEXT, text.encode(), mask=os.urandom(4))
        for sizes in ([len(frame)], [5, edge, len(frame) - 5 - edge]):
            with self.subTest(sizes=sizes):
                self.assertEqual(self.receive_in_pieces(frame, sizes), [(Opcode.TEXT, text)])

    def test_invalid_utf8_in_a_later_slice_fails_with_1007(self):
        edge = wsgihost.MASK_SLICE
        frame = build_frame(Opcode.TEXT, b"a" * (edge + 10) + b"\xff" + b"b" * 10, mask=os.urandom(4))
        proto = wsgihost.WebSocketProtocol()
        events, reply = proto.receive_data(frame)
        self.assertEqual(events, [])
        self.assertEqual(parse_frame(reply, require_mask=False)[1][:2], b"\x03\xef")     # 1007

    def test_a_message_over_many_reads_and_fragments_is_whole_bytes(self):
        # Gathered as it comes (a BytesIO after the first read): the same bytes
        # and the same type, bytes, however it was framed and read, with a Ping
        # between fragments answered on the way (RFC 6455 §5.4: control frames
        # may be injected in the middle of a fragmented message).
        payload = os.urandom(200 * 1024 + 3)
        mask = os.urandom(4)
        parts = [payload[:1], payload[1:70000], b"", payload[70000:]]
        wire = b"".join(build_frame(Opcode.BINARY if i == 0 else Opcode.CONTINUATION, part,
                                    fin=i == len(parts) - 1, mask=os.urandom(4))
                        for i, part in enumerate(parts))
        ping = build_frame(Opcode.PING, b"p", mask=mask)
        cut = len(build_frame(Opcode.BINARY, parts[0], fin=False, mask=mask))
        wire = wire[:cut] + ping + wire[cut:]
        for read in (len(wire), 65536, 4093, 1):
            with self.subTest(read=read):
                proto = wsgihost.WebSocketProtocol(max_message_size=1 << 20)
                events, replies = [], b""
                for pos in range(0, len(wire), read):
                    got, reply = proto.receive_data(wire[pos:pos + read])
                    events += got
                    replies += reply
                self.assertEqual(replies, build_frame(Opcode.PONG, b"p"))
                self.assertEqual(events, [(Opcode.PING, b"p"), (Opcode.BINARY, payload)])
                self.assertIs(type(events[1][1]), bytes)

    def test_a_text_message_over_many_reads_is_validated_and_whole(self):
        text = "\u00e9t\u00e9 \U0001f600 " * 20000                 # 2- and 4-byte characters
        wire = build_frame(Opcode.TEXT, text.encode(), mask=os.urandom(4))
        proto = wsgihost.WebSocketProtocol(max_message_size=1 << 20)
        events = []
        for pos in range(0, len(wire), 7777):            # splits characters and slices
            events += proto.receive_data(wire[pos:pos + 7777])[0]
        self.assertEqual(events, [(Opcode.TEXT, text)])

    def test_memory_follows_the_bytes_that_arrived_not_the_header(self):
        # An attacker's 1,000 connections each announce a frame of
        # max_message_size (16 MiB) and send 1,000 bytes of it: what is held
        # grows with what arrived (about 1 MB in all), never with what the
        # headers promise (16 GB).
        header = wsgihost.build_frame_header(Opcode.BINARY, wsgihost.MAX_MESSAGE_SIZE, masked=True)
        data = header + os.urandom(4) + os.urandom(1000)
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        protos = [wsgihost.WebSocketProtocol() for _ in range(1000)]
        for proto in protos:
            self.assertEqual(proto.receive_data(data), ([], b""))
            self.assertEqual(proto.receive_data(data[:1] * 500), ([], b""))     # a second read
        peak = tracemalloc.get_traced_memory()[1]
        self.assertLess(peak, 64 * 1024 * 1024, "%d bytes held for 1.5 MB received" % peak)


class WebSocketHandlerSendTests(unittest.TestCase):
    """A handler's send() goes out from its own thread when nothing is queued
    (plain TCP: the socket is non-blocking there); what the socket does not
    take at once is queued for the writer thread, in order, before anything
    sent after it."""

    def setUp(self):
        self.node = wsgihost.Node(WS_CONFIG).start()
        self.addCleanup(self.node.stop, 2)
        self.port = self.node.transports[0].port

    def client(self):
        client = WSClient(self.port, "/upper")
        self.addCleanup(client.close)
        self.assertTrue(client.recv_text().startswith("hello "))
        return client

    def test_a_16_mib_message_through_a_handler(self):
        c = self.client()
        payload = os.urandom(16 * 1024 * 1024)
        c.send(Opcode.BINARY, payload)
        self.assertEqual(c.recv_frame(), (Opcode.BINARY, payload[::-1]))

    def test_more_than_the_socket_takes_then_a_text_in_order(self):
        c = self.client()
        payload = os.urandom(8 * 1024 * 1024)       # more than the kernel buffers of both ends
        c.send(Opcode.BINARY, payload)
        c.send_text("after")
        time.sleep(1.0)         # not reading: the handler's send cannot go out at once
        self.assertEqual(c.recv_frame(), (Opcode.BINARY, payload[::-1]))
        self.assertEqual(c.recv_frame(), (Opcode.TEXT, b"AFTER"))
        c.send_text("bye")
        self.assertEqual(c.recv_frame()[0], Opcode.CLOSE)

    def test_many_small_messages_from_two_threads_arrive_whole(self):
        c = self.client()
        for i in range(200):
            c.send_text("m%d" % i)
        for i in range(200):
            self.assertEqual(c.recv_text(), "M%d" % i)

    def test_a_message_trickling_in_over_many_reads_comes_back_whole(self):
        # On the wire: one 1 MiB frame sent in pieces with pauses, so that the
        # handler's thread reads it in many reads; then a fragmented text with
        # a Ping between its fragments. The echo is byte for byte, in order.
        c = self.client()
        payload = os.urandom(1024 * 1024 + 5)
        frame = build_frame(Opcode.BINARY, payload, mask=os.urandom(4))
        for pos in range(0, len(frame), 300 * 1024):
            c.sock.sendall(frame[pos:pos + 300 * 1024])
            time.sleep(0.05)
        self.assertEqual(c.recv_frame(), (Opcode.BINARY, payload[::-1]))
        c.send(Opcode.TEXT, b"ab", fin=False)
        c.send(Opcode.PING, b"between")
        c.send(Opcode.CONTINUATION, b"c" * 70000)
        self.assertEqual(c.read_frame(), (Opcode.PONG, b"between"))
        self.assertEqual(c.recv_frame(), (Opcode.TEXT, b"AB" + b"C" * 70000))



class OneShotWaitingTests(unittest.TestCase):
    """Section 13: with epoll, a connection stays registered one-shot while a
    pool thread serves it, and is armed again when it goes back to wait."""

    @unittest.skipUnless(hasattr(wsgihost.select, "epoll"), "no epoll on this platform")
    def test_a_one_shot_registration_reports_once_until_armed_again(self):
        selector = wsgihost.OneShotEpoll()
        self.addCleanup(selector.close)
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        selector.register(a, wsgihost.selectors.EVENT_READ, "a", oneshot=True)
        b.sendall(b"x")
        self.assertEqual([(key.data, mask) for key, mask in selector.select(5)],
                         [("a", wsgihost.selectors.EVENT_READ)])
        self.assertEqual(selector.select(0.2), [])          # still readable, but silent
        selector.modify(a, wsgihost.selectors.EVENT_READ, "a")       # armed again
        self.assertEqual([key.data for key, _ in selector.select(5)], ["a"])
        selector.unregister(a)
        self.assertRaises(KeyError, selector.get_key, a)

    def read_response(self, sock) -> bytes:
        """One response with a Content-Length, whole."""
        data = b""
        while b"\r\n\r\n" not in data:
            piece = sock.recv(4096)
            self.assertTrue(piece, "closed before a whole response: %r" % data)
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
        while len(body) < length:
            piece = sock.recv(4096)
            self.assertTrue(piece, "closed in the body: %r" % data)
            body += piece
        self.assertEqual(len(body), length, "more than one response at once")
        return head + b"\r\n\r\n" + body

    def test_a_request_sent_while_the_previous_one_is_served_is_answered(self):
        # One slot: B's first request queues behind A's, then runs; B's second
        # request arrives while its first is served (the room sees it and must
        # not lose it once the connection waits again: with C queued, B's
        # thread goes on to C and B goes back to the room). The order of
        # events depends on the machine's load; every order must answer all.
        def slow(environ, start_response):
            time.sleep(1.0)
            start_response("200 OK", TEXT)
            return [environ["QUERY_STRING"].encode("ascii")]
        transport = wsgihost.WebTransport(
            wsgihost.PathNode({"slow": wsgihost.WSGIService(slow, "test:slow", maxthreads=1)}),
            "127.0.0.1", 0, limits=wsgihost.Limits())
        node = wsgihost.Node(transports=[transport]).start()
        self.addCleanup(node.stop, 0)
        port = transport.port
        a, b, c = (socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(3))
        for sock in (a, b, c):
            self.addCleanup(sock.close)
        a.sendall(b"GET /slow?a1 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)
        b.sendall(b"GET /slow?b1 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)
        c.sendall(b"GET /slow?c1 HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(self.read_response(a).endswith(b"\r\n\r\na1"))
        time.sleep(0.3)                     # b1 is being served now, on an idle machine
        b.sendall(b"GET /slow?b2 HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(self.read_response(b).endswith(b"\r\n\r\nb1"))
        self.assertTrue(self.read_response(c).endswith(b"\r\n\r\nc1"))
        self.assertTrue(self.read_response(b).endswith(b"\r\n\r\nb2"))


class SmallBodyInRoomTests(unittest.TestCase):
    """Section 13: a small body is read whole before its app runs -- at once
    when it came with its head, in the selector when it trickles in -- and
    every way it can arrive ends in the app's answer or a closed socket."""

    def setUp(self):
        self.calls = []
        self.release = threading.Event()
        self.addCleanup(self.release.set)

        def echo(environ, start_response):
            body = environ["wsgi.input"].read()
            self.calls.append(body)
            if environ["PATH_INFO"] == "/hold":
                self.release.wait(30)
            start_response("200 OK", [("Content-Type", "application/octet-stream")])
            return [body]
        transport = wsgihost.WebTransport(
            wsgihost.PathNode(default=wsgihost.WSGIService(echo, "test:echo", maxthreads=1)),
            "127.0.0.1", 0, limits=wsgihost.Limits())
        node = wsgihost.Node(transports=[transport]).start()
        self.addCleanup(node.stop, 0)
        self.transport = transport

    def connect(self):
        sock = socket.create_connection(("127.0.0.1", self.transport.port), timeout=30)
        self.addCleanup(sock.close)
        return sock

    def head(self, path, length):
        return b"POST %s HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % (path.encode(), length)

    def read_response(self, sock) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65536)
            self.assertTrue(piece, "closed before a whole head: %r" % data[:200])
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
        while len(body) < length:
            piece = sock.recv(65536)
            self.assertTrue(piece, "closed in the body")
            body += piece
        self.assertTrue(head.startswith(b"HTTP/1.1 200 OK"), head)
        return body

    def test_a_body_sent_with_its_head_is_echoed_whole(self):
        body = os.urandom(64 * 1024)
        sock = self.connect()
        for _ in range(3):                      # kept alive: each request the same way
            sock.sendall(self.head("/", len(body)) + body)
            self.assertEqual(self.read_response(sock), body)

    def test_a_body_that_trickles_in_after_its_head_is_echoed_whole(self):
        body = os.urandom(48 * 1024)
        sock = self.connect()
        sock.sendall(self.head("/", len(body)) + body[:1000])
        time.sleep(0.3)
        sock.sendall(body[1000:30000])
        time.sleep(0.3)
        sock.sendall(body[30000:])
        self.assertEqual(self.read_response(sock), body)
        self.assertEqual(self.calls, [body])

    def test_a_client_gone_in_its_body_never_reaches_the_app(self):
        for pause in (0, 0.3):                  # gone with the head, or after a wait
            sock = self.connect()
            sock.sendall(self.head("/", 10000) + b"x" * 4000)
            time.sleep(pause)
            sock.close()
        other = self.connect()                  # and everyone else is served
        other.sendall(self.head("/", 5) + b"hello")
        self.assertEqual(self.read_response(other), b"hello")
        self.assertEqual(self.calls, [b"hello"])

    def test_a_whole_body_waits_for_a_busy_apps_slot_then_is_served(self):
        first, second = self.connect(), self.connect()
        first.sendall(self.head("/hold", 3) + b"one")
        deadline = time.monotonic() + 10
        while not self.calls:
            self.assertLess(time.monotonic(), deadline, "the first request never ran")
            time.sleep(0.01)
        body = os.urandom(32 * 1024)
        second.sendall(self.head("/", len(body)) + body)    # whole, but the one slot is taken
        time.sleep(0.3)
        self.assertEqual(len(self.calls), 1)
        self.release.set()
        self.assertEqual(self.read_response(first), b"one")
        self.assertEqual(self.read_response(second), body)


if __name__ == "__main__":
    sys.modules.setdefault("test_wsgihost", sys.modules[__name__])
    sys.exit(run_tests())
