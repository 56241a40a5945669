"""A small fault-injecting HTTP proxy for GCS emulators, for tests of retries, timeouts and re-runs.

It listens on 127.0.0.1 only and forwards every request to the emulator (fake-gcs-server), unless a rule of its
fault plan matches the request; then it does what the rule says instead, a set number of times:

    with FaultProxy(emulator.url) as proxy:                       # STORAGE_EMULATOR_HOST=proxy.url
        proxy.add(status(503), kind="multipart", times=3)          # the next 3 simple uploads get a 503
        proxy.add(reset(after_body_bytes=4096), kind="multipart", skip=2)   # cut the 3rd upload mid-body
        proxy.add(status(410), kind="chunk")                       # the resumable session is gone
        proxy.add(lose_response(), kind="final_chunk")             # the server finished; the answer is lost
        proxy.add(stall(10), kind="upload")                        # forward, then hold the answer 10 s

Faults:
- `status(code)`: answer `code` with a GCS-style JSON error body, without forwarding (the server saw nothing).
- `reset(after_body_bytes=None)`: reset the connection (TCP RST) at once, or after reading that many bytes of
  the request body; nothing is forwarded.
- `lose_response()`: forward the request (the server acts on it), then reset instead of answering.
- `stall(seconds, forward=True)`: forward (or not), then hold the connection for `seconds` (cut short when
  the proxy stops) and close it without an answer, as a server that hangs. The client's timeout fires first.

Requests are classified by `kind`: "multipart" (a simple upload), "resumable_start" (the POST that opens a
resumable session), "chunk" (a PUT to a session; "final_chunk" only the one that completes it), "upload" (any
of those), "download" (object bytes), "list" (objects of a bucket), "bucket" (bucket metadata), "metadata"
(object metadata), "delete", or "any". A rule may also name the method, and regular expressions on the path, on the (unquoted) query
string (a resumable upload's object name is there, `name=...`) and on the request body's first 64 KiB (a
multipart upload's object name is in its metadata part, `"name": "..."`).

The proxy rewrites the emulator's own address in `Location` headers and JSON bodies (resumable session URLs,
media links) to its own, so follow-up requests come back through it. `log` records every request with the
fault it met. Responses are HTTP/1.0 (one request per connection), so a fault never leaks into the next request.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import struct
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
    "accept-encoding",
}
_FORWARD_TIMEOUT_S = 30.0
KINDS = (
    "any",
    "upload",
    "multipart",
    "resumable_start",
    "chunk",
    "final_chunk",
    "download",
    "list",
    "bucket",
    "metadata",
    "delete",
    "other",
)


# ---- faults --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    action: str  # "status", "reset", "lose_response", "stall"
    code: int = 0
    after_body_bytes: int | None = None
    seconds: float = 0.0
    forward: bool = False

    def __str__(self) -> str:
        if self.action == "status":
            return f"status {self.code}"
        if self.action == "reset":
            return "reset" + (f" after {self.after_body_bytes} body bytes" if self.after_body_bytes else "")
        if self.action == "stall":
            return f"stall {self.seconds:g} s" + (" after forwarding" if self.forward else "")
        return self.action


def status(code: int) -> Fault:
    return Fault("status", code=code)


def reset(after_body_bytes: int | None = None) -> Fault:
    return Fault("reset", after_body_bytes=after_body_bytes)


def lose_response() -> Fault:
    return Fault("lose_response")


def stall(seconds: float, forward: bool = True) -> Fault:
    return Fault("stall", seconds=seconds, forward=forward)


@dataclass
class Rule:
    """Apply `fault` to requests matching kind/method/path: let `skip` matches through, then fault the next
    `times` (None: every one from then on)."""

    fault: Fault
    kind: str = "any"
    method: str | None = None
    path: str | None = None
    query: str | None = None
    body: bytes | None = None
    skip: int = 0
    times: int | None = 1
    matched: int = 0  # matching requests seen
    hits: int = 0  # faults applied

    def matches(self, method: str, path: str, query: str, kinds: set[str], body: bytes | None) -> bool:
        return (
            (self.kind == "any" or self.kind in kinds)
            and (self.method is None or self.method == method)
            and (self.path is None or re.search(self.path, path) is not None)
            and (self.query is None or re.search(self.query, urllib.parse.unquote(query)) is not None)
            and (self.body is None or (body is not None and re.search(self.body, body[:65536]) is not None))
        )


@dataclass
class Seen:
    """One request the proxy received."""

    number: int
    method: str
    path: str
    query: str
    kinds: frozenset[str]
    fault: Fault | None = None
    status: int | None = None  # the status forwarded to the client; None when it got none
    body_bytes: int = 0
    headers: dict[str, str] = field(default_factory=dict)


def classify(method: str, path: str, query: dict[str, list[str]], headers) -> set[str]:
    """The kinds a request is (see the module docstring)."""
    kinds: set[str] = set()
    if path.startswith("/upload/"):
        kinds.add("upload")
        upload_type = (query.get("uploadType") or [""])[0]
        if "upload_id" in query:
            kinds.add("chunk")
            content_range = headers.get("Content-Range", "")
            m = re.fullmatch(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)", content_range.strip())
            if m and m.group(3) != "*":
                total = int(m.group(3))
                if m.group(2) is None or int(m.group(2)) == total - 1:
                    kinds.add("final_chunk")
        elif upload_type == "resumable":
            kinds.add("resumable_start")
        else:
            kinds.add("multipart")
    elif path.startswith("/download/") or (query.get("alt") or [""])[0] == "media":
        kinds.add("download")
    elif method == "DELETE":
        kinds.add("delete")
    elif re.fullmatch(r"/storage/v1/b/[^/]+/o/?", path):
        kinds.add("list" if method == "GET" else "other")
    elif re.fullmatch(r"/storage/v1/b/[^/]+/?", path):
        kinds.add("bucket")
    elif re.fullmatch(r"/storage/v1/b/[^/]+/o/.+", path):
        kinds.add("metadata")
    else:
        kinds.add("other")
    return kinds


# ---- the proxy -----------------------------------------------------------------------------------------------


class FaultProxy:
    """A threaded proxy on 127.0.0.1 in front of `target` (e.g. "http://127.0.0.1:4443") with a fault plan."""

    def __init__(self, target: str):
        parts = urllib.parse.urlsplit(target if "://" in target else f"http://{target}")
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the fault proxy forwards to loopback only, not {target!r}")
        self.target = f"{parts.scheme}://{parts.netloc}"
        self._target_host = parts.hostname
        self._target_port = parts.port or 80
        self.rules: list[Rule] = []
        self.log: list[Seen] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FaultProxy:
        if self._server is not None:
            return self
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.proxy = self  # type: ignore[attr-defined]
        self._server = server
        self._release.clear()
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fault-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()  # end any stall
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # the plan

    def add(
        self,
        fault: Fault,
        *,
        kind: str = "any",
        method: str | None = None,
        path: str | None = None,
        query: str | None = None,
        body: bytes | None = None,
        skip: int = 0,
        times: int | None = 1,
    ) -> Rule:
        """Add a rule; the first rule that matches a request and still has faults to give applies."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; use one of {', '.join(KINDS)}")
        rule = Rule(fault, kind, method, path, query, body, skip, times)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        """Drop every rule (the log stays)."""
        with self._lock:
            self.rules.clear()

    def seen(self, kind: str = "any") -> list[Seen]:
        with self._lock:
            return [s for s in self.log if kind == "any" or kind in s.kinds]

    def _wants_body(self) -> bool:
        with self._lock:
            return any(r.body is not None for r in self.rules)

    def _admit(
        self, method: str, path: str, query: str, kinds: set[str], headers, body: bytes | None
    ) -> tuple[Seen, Fault | None]:
        with self._lock:
            seen = Seen(
                len(self.log) + 1, method, path, query, frozenset(kinds), headers=dict(headers.items())
            )
            self.log.append(seen)
            for rule in self.rules:
                if not rule.matches(method, path, query, kinds, body):
                    continue
                rule.matched += 1
                if rule.matched <= rule.skip:
                    continue
                if rule.times is not None and rule.hits >= rule.times:
                    continue
                rule.hits += 1
                seen.fault = rule.fault
                return seen, rule.fault
        return seen, None

    def _rewrite(self, data: bytes) -> bytes:
        return data.replace(self.target.encode(), self.url.encode())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server_version = "fault-proxy"

    def log_message(self, format: str, *args) -> None:  # quiet
        pass

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass

    def _proxy(self) -> None:
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        parts = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parts.query)
        kinds = classify(self.command, parts.path, query, self.headers)
        # A rule on the body needs it read first; then a reset comes after the whole body was sent.
        body = self._read_body() if proxy._wants_body() else None
        seen, fault = proxy._admit(self.command, parts.path, parts.query, kinds, self.headers, body)

        if fault is not None and fault.action == "reset":
            if body is None and fault.after_body_bytes:
                seen.body_bytes = len(self._read_body(limit=fault.after_body_bytes))
            return self._reset()
        if body is None:
            body = self._read_body()
        seen.body_bytes = len(body)
        if fault is not None and fault.action == "status":
            seen.status = fault.code
            error = {
                "error": {
                    "code": fault.code,
                    "message": f"injected by the fault proxy: {fault}",
                    "errors": [{"reason": "backendError", "message": "injected"}],
                }
            }
            return self._respond(
                fault.code, [("Content-Type", "application/json")], json.dumps(error).encode()
            )
        if fault is not None and fault.action == "stall" and not fault.forward:
            proxy._release.wait(fault.seconds)
            return self._close()

        code, headers, data = self._forward(proxy, body)
        if fault is not None and fault.action == "lose_response":
            return self._reset()
        if fault is not None and fault.action == "stall":
            proxy._release.wait(fault.seconds)
            return self._close()
        seen.status = code
        self._respond(code, headers, data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _proxy

    def _read_body(self, limit: int | None = None) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                out += self.rfile.read(size)
                self.rfile.readline()
                if limit is not None and len(out) >= limit:
                    break
            return bytes(out if limit is None else out[:limit])
        length = int(self.headers.get("Content-Length") or 0)
        if limit is not None:
            length = min(length, limit)
        return self.rfile.read(length) if length else b""

    def _forward(self, proxy: FaultProxy, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(proxy._target_host, proxy._target_port, timeout=_FORWARD_TIMEOUT_S)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers["Host"] = f"{proxy._target_host}:{proxy._target_port}"
            send = body if body or self.command in ("POST", "PUT", "PATCH") else None
            conn.request(self.command, self.path, body=send, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out_headers = []
            for k, v in resp.getheaders():
                if k.lower() == "location":
                    v = v.replace(proxy.target, proxy.url)
                out_headers.append((k, v))
            if "json" in (resp.getheader("Content-Type") or ""):
                data = proxy._rewrite(data)
            return resp.status, out_headers, data
        finally:
            conn.close()

    def _respond(self, code: int, headers: list[tuple[str, str]], data: bytes) -> None:
        try:
            self.send_response(code)
            for k, v in headers:
                if k.lower() not in _HOP_BY_HOP and k.lower() not in ("date", "server"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        except OSError:  # the client gave up (its timeout fired)
            self.close_connection = True

    def _reset(self) -> None:
        """Abort the connection with a TCP RST, as a dropped connection looks to the client."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def _close(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
