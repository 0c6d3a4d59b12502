"""A fault-injecting HTTP proxy for an S3 endpoint, in-process and on loopback only.

Tests point boto3 at the proxy (`AWS_ENDPOINT_URL=proxy.url`); the proxy forwards every request to
the real endpoint (the moto server) unless a rule matches, in which case it injects the rule's fault:

=============== ==================================================================================
kind            what the client sees
=============== ==================================================================================
``slowdown``    HTTP 503 with S3's ``SlowDown`` XML error (a throttling error for botocore)
``unavailable`` HTTP 503 with S3's ``ServiceUnavailable`` XML error (transient, not throttling)
``internal``    HTTP 500 with S3's ``InternalError`` XML error
``reset``       the connection is reset (RST) after the request was read; no response at all
``truncate``    the upstream response's status and headers (full Content-Length), then only half
                of its body, then the connection closes
``slow``        the request waits ``delay`` seconds, then is forwarded normally
``short_body``  only the first half of the request body reaches the endpoint (Content-Length says
                half): bytes lost between the client and S3, for PUTs and multipart parts
=============== ==================================================================================

A rule matches on the HTTP method, substrings of the URL path (``/bucket/key``, percent-decoded,
without the query string) and of the raw query string (``partNumber=2``, ``uploadId=``: one part
of a multipart upload, or its completion), and fires ``times`` times (``None``: every time). Every
request is recorded, so a test can assert how many attempts the client made.

Example:
    ```python
    with FaultProxy("http://127.0.0.1:5000") as proxy:
        rule = proxy.add(Rule(method="PUT", key="/_staging/", kind="slowdown", times=2))
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        ...
        assert rule.hits == 2
    ```
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

FaultKind = Literal["slowdown", "unavailable", "internal", "reset", "truncate", "slow", "short_body"]

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "transfer-encoding", "upgrade", "expect"}
)  # fmt: skip
_ERRORS: dict[str, tuple[int, str, str]] = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "unavailable": (503, "ServiceUnavailable", "Service is unable to handle request."),
    "internal": (500, "InternalError", "We encountered an internal error. Please try again."),
}
_MAX_BODY = 512 * 1024 * 1024  # a request body larger than this is refused, never buffered
_MAX_CHUNKS = 1_000_000  # bounds the chunked-body reader even for a misbehaving client
_MAX_DELAY = 30.0  # a "slow" rule never parks a thread longer than this


@dataclass
class Rule:
    """Inject `kind` into requests with `method` whose path contains `key` (and not `exclude`).

    Attributes:
        method: HTTP method (GET, PUT, HEAD, POST, DELETE), or "" for any.
        key: substring the percent-decoded path (`/bucket/key`) must contain; "" matches every path.
        kind: the fault, see the module docstring.
        times: how many matching requests get the fault; None for every one (a persistent fault).
        exclude: substring the path must NOT contain ("" excludes nothing).
        delay: seconds a `slow` request waits before it is forwarded.
        query: substring the raw query string must contain ("" matches any, including none).
        hits: how many requests this rule has faulted so far.
    """

    method: str = ""
    key: str = ""
    kind: FaultKind = "internal"
    times: int | None = 1
    exclude: str = ""
    delay: float = 1.0
    query: str = ""
    hits: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.kind not in (
            "slowdown",
            "unavailable",
            "internal",
            "reset",
            "truncate",
            "slow",
            "short_body",
        ):
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if not 0 <= self.delay <= _MAX_DELAY:
            raise ValueError(f"delay must be between 0 and {_MAX_DELAY} seconds")
        if self.times is not None and self.times < 0:
            raise ValueError("times must be >= 0 or None")

    def matches(self, method: str, path: str, query: str = "") -> bool:
        """True when a request (`method`, decoded `path`, raw `query`) is one this rule is about
        (ignores `times`)."""
        return (
            (not self.method or self.method.upper() == method)
            and self.key in path
            and not (self.exclude and self.exclude in path)
            and self.query in query
        )


@dataclass(frozen=True)
class Seen:
    """One request the proxy received: method, decoded path, the fault injected (or "") and the raw
    query string."""

    method: str
    path: str
    fault: str
    query: str = ""


class FaultProxy:
    """A threaded HTTP proxy on 127.0.0.1 in front of `upstream` (``http://host:port``)."""

    def __init__(self, upstream: str, *, upstream_timeout: float = 60.0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http://host:port URL, got {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.upstream_timeout = upstream_timeout
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._seen: list[Seen] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The proxy's endpoint URL, for AWS_ENDPOINT_URL."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        """Serve in a daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="fault-proxy",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket (in-flight handlers are daemon threads)."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- rules and records ---------------------------------------------------------------------------

    def add(self, rule: Rule) -> Rule:
        """Activate `rule` (rules are tried in the order added; the first that fires wins)."""
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule: from now on every request is forwarded untouched."""
        with self._lock:
            self._rules.clear()

    def seen(self, method: str = "", key: str = "", query: str = "") -> list[Seen]:
        """Requests received so far, optionally filtered by method, path and query substrings."""
        with self._lock:
            return [
                s
                for s in self._seen
                if (not method or s.method == method) and key in s.path and query in s.query
            ]

    def part_numbers(self, key: str) -> set[int]:
        """The multipart part numbers uploaded (`PUT ...?partNumber=N`) to paths containing `key`."""
        return {
            int(value)
            for seen in self.seen("PUT", key, "partNumber=")
            for name, value in parse_qsl(seen.query)
            if name == "partNumber"
        }

    def _fault_for(self, method: str, path: str, query: str) -> Rule | None:
        with self._lock:
            chosen = None
            for rule in self._rules:
                if rule.matches(method, path, query) and (rule.times is None or rule.hits < rule.times):
                    rule.hits += 1
                    chosen = rule
                    break
            self._seen.append(Seen(method, path, chosen.kind if chosen else "", query))
            return chosen

    # -- forwarding ----------------------------------------------------------------------------------

    def _forward(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(
            self.upstream_host, self.upstream_port, timeout=self.upstream_timeout
        )
        try:
            conn.request(method, target, body=body if body or method in ("PUT", "POST") else None,
                         headers=dict(headers))  # fmt: skip
            response = conn.getresponse()
            data = response.read()
            return response.status, response.reason, response.getheaders(), data
        finally:
            conn.close()


def _handler_for(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like S3; Expect: 100-continue is answered for us

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: requests are recorded in proxy.seen()

        def do_GET(self) -> None:
            self._handle()

        do_PUT = do_POST = do_HEAD = do_DELETE = do_GET

        def _read_body(self) -> bytes | None:
            length = self.headers.get("Content-Length")
            if length is not None:
                size = int(length)
                if size > _MAX_BODY:
                    return None
                return self.rfile.read(size)
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks: list[bytes] = []
                total = 0
                for _ in range(_MAX_CHUNKS):
                    size = int(self.rfile.readline(1024).split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        for _ in range(1000):  # trailer lines, then the blank line
                            if self.rfile.readline(65536) in (b"\r\n", b"\n", b""):
                                break
                        return b"".join(chunks)
                    total += size
                    if total > _MAX_BODY:
                        return None
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline(1024)
                return None
            return b""

        def _handle(self) -> None:
            method = self.command
            target = self.path
            split = urlsplit(target)
            path = unquote(split.path)
            body = self._read_body()
            if body is None:
                self._send_error(413, "EntityTooLarge", "the fault proxy does not buffer bodies this large")
                return
            rule = proxy._fault_for(method, path, split.query)
            kind = rule.kind if rule else ""
            if kind in _ERRORS:
                self._send_error(*_ERRORS[kind])
                return
            if kind == "reset":
                self._reset()
                return
            if kind == "slow":
                assert rule is not None
                time.sleep(rule.delay)
            headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            if kind == "short_body":
                body = body[: len(body) // 2]
            if body or method in ("PUT", "POST"):
                headers.append(("Content-Length", str(len(body))))
            try:
                status, reason, response_headers, data = proxy._forward(method, target, headers, body)
            except OSError as exc:
                self._send_error(502, "BadGateway", f"fault proxy could not reach the upstream: {exc}")
                return
            self.send_response_only(status, reason)
            has_length = False
            for name, value in response_headers:
                lower = name.lower()
                if lower in _HOP_BY_HOP:
                    continue
                has_length |= lower == "content-length"
                self.send_header(name, value)
            if not has_length and method != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            if kind == "truncate" and method != "HEAD" and len(data) > 1:
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(data)

        def _send_error(self, status: int, code: str, message: str) -> None:
            request_id = uuid.uuid4().hex[:16].upper()
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{code}</Code><Message>{message}</Message>"
                f"<RequestId>{request_id}</RequestId><HostId>fault-proxy</HostId></Error>"
            ).encode()
            self.send_response_only(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("x-amz-request-id", request_id)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _reset(self) -> None:
            # SO_LINGER with a zero timeout makes close() send RST instead of FIN: a connection reset.
            self.close_connection = True
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.rfile.close()  # drop the makefile() reference so close() really closes the socket
                self.connection.close()
            except OSError:
                pass

    return Handler
