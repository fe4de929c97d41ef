"""What keeps one web client from holding or fooling the server: the HTTP-level guards around `app.py`'s API.

- `HostAllowList`: a request whose `Host` is not an allowed name gets 400 (a DNS-rebinding page would otherwise be
  same-origin with this server, which defeats the JSON-only Content-Type defence).
- `SecurityHeaders`: nosniff, no framing and a Content-Security-Policy that allows this server's own files only.
- `InFlightLimit`: at most `max_concurrent_requests` requests inside the app, and at most `max_per_client` from one
  client address; one more gets a JSON 503 with Retry-After at once.
- `BodyGuard`: every request body is read whole, within `body_timeout_s`, before the app sees it; the bytes of the
  bodies in flight are capped (`max_body_bytes_in_flight`, announced lengths counted before a byte arrives).
- `guarded_protocol`: uvicorn's h11 protocol with a deadline for request headers (and idle connections) and a cap
  on open connections, in all and per client address, whose refusal is a JSON 503 with Retry-After (uvicorn's own
  `limit_concurrency` answers a bare text 503 without it).

`ServerLoad` counts what is in flight; `/healthz` and `/readyz` report it against the limits.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .cli import UsageError

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
MIB = 1 << 20

# Everything the page uses comes from this server: no inline script or style (app.js sets styles through the CSSOM,
# which CSP allows), no other origin, no framing. The favicon is a data: URL.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"referrer-policy", b"no-referrer"),
]


@dataclass(frozen=True)
class GuardLimits:
    """The server's bounds on clients, as `app.py`'s flags set them."""

    max_concurrent_requests: int = 200  # requests inside the app at once
    max_body_bytes_in_flight: int = 64 * MIB  # bytes of request bodies held at once (announced or received)
    body_timeout_s: float = 10.0  # a request's whole body must arrive within this
    header_timeout_s: float = 5.0  # a connection must send a request's headers within this (idle ones close)
    max_connections: int | None = None  # open connections; None: 4 x max_concurrent_requests
    # Connections open and requests in flight from one client address; None: half of max_concurrent_requests, so
    # that one address reconnecting slow clients can never hold every slot (another address keeps at least half).
    max_per_client: int | None = None
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS  # Host header names served; "*" serves any

    def __post_init__(self):
        for name in ("max_concurrent_requests", "max_body_bytes_in_flight"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} {getattr(self, name)}: must be at least 1")
        for name in ("max_connections", "max_per_client"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UsageError(f"--{name} {getattr(self, name)}: must be at least 1")
        for name in ("body_timeout_s", "header_timeout_s"):
            if not getattr(self, name) > 0:
                raise UsageError(f"--{name[:-2]} {getattr(self, name)}: must be more than 0 seconds")
        if not self.allowed_hosts:
            raise UsageError("--allowed_hosts: name at least one host")

    @property
    def connection_limit(self) -> int:
        return self.max_connections if self.max_connections is not None else 4 * self.max_concurrent_requests

    @property
    def per_client_limit(self) -> int:
        return self.max_per_client if self.max_per_client is not None else max(1, self.max_concurrent_requests // 2)


def normalise_host(host: str) -> str:
    """`Host` header value or allowed name -> a comparable name: lower case, no port, no brackets, no final dot."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        host = host.split(":")[0]
    return host.rstrip(".")


@dataclass
class ServerLoad:
    """What is in flight now; one event loop updates it, so no lock."""

    limits: GuardLimits
    max_body_bytes: int  # one request's bound (ServingLimits.max_body_bytes)
    requests_in_flight: int = 0
    body_bytes_in_flight: int = 0
    connections: int = 0
    # Per client address (the peer's IP, or the ASGI scope's client host); an address leaves when its count is 0.
    connections_by_client: dict[str, int] = field(default_factory=dict)
    requests_by_client: dict[str, int] = field(default_factory=dict)
    shed: dict[str, int] = field(
        default_factory=lambda: {"requests": 0, "body_bytes": 0, "connections": 0, "per_client": 0}
    )

    def __post_init__(self):
        if self.limits.max_body_bytes_in_flight < self.max_body_bytes:
            raise UsageError(
                f"--max_body_mib_in_flight {self.limits.max_body_bytes_in_flight / MIB:g}: must hold one largest "
                f"request ({self.max_body_bytes / MIB:.1f} MiB from --max_texts and --max_text_chars)"
            )

    def reserve_body_bytes(self, n: int) -> bool:
        if self.body_bytes_in_flight + n > self.limits.max_body_bytes_in_flight:
            return False
        self.body_bytes_in_flight += n
        return True

    def release_body_bytes(self, n: int) -> None:
        self.body_bytes_in_flight -= n

    def client_at_limit(self, counts: dict[str, int], client: str | None) -> bool:
        """Whether `client` already holds `per_client_limit` of `counts` (connections or requests); an unknown
        address (a Unix socket, a server that gives none) is not limited: it cannot be told apart from others."""
        return client is not None and counts.get(client, 0) >= self.limits.per_client_limit

    @staticmethod
    def count_client(counts: dict[str, int], client: str | None, change: int) -> None:
        if client is None:
            return
        counts[client] = counts.get(client, 0) + change
        if counts[client] <= 0:
            del counts[client]

    def report(self) -> dict[str, Any]:
        """In-flight counts against their limits, and `saturated`: a new request may be refused now."""
        limits = self.limits
        saturated = (
            self.requests_in_flight >= limits.max_concurrent_requests
            or self.body_bytes_in_flight >= limits.max_body_bytes_in_flight
            or self.connections >= limits.connection_limit
        )
        return {
            "saturated": saturated,
            "requests_in_flight": self.requests_in_flight,
            "max_concurrent_requests": limits.max_concurrent_requests,
            "body_bytes_in_flight": self.body_bytes_in_flight,
            "max_body_bytes_in_flight": limits.max_body_bytes_in_flight,
            "connections": self.connections,
            "max_connections": limits.connection_limit,
            "max_per_client": limits.per_client_limit,
            "busiest_client_connections": max(self.connections_by_client.values(), default=0),
            "shed": dict(self.shed),
        }


def per_client_message(limits: GuardLimits, what: str) -> str:
    return (
        f"too busy for one client: {limits.per_client_limit} {what} from your address (--max_per_client); "
        "retry shortly"
    )


def json_error_body(status: int, message: str) -> bytes:
    return json.dumps({"error": message, "status": status}).encode()


async def send_json_error(
    send: Any, status: int, message: str, retry_after: int | None = None, close: bool = False
) -> None:
    """A JSON error straight from a middleware (the app's own errors go through `app.error_response`)."""
    body = json_error_body(status, message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    if close:  # the body was not read: the connection cannot carry another request
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class SecurityHeaders:
    """Adds `SECURITY_HEADERS` to every HTTP response the app or the guards inside it send."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class HostAllowList:
    """400 unless the request's `Host` is an allowed name (any port)."""

    def __init__(self, app: Any, allowed_hosts: Iterable[str]) -> None:
        self.app = app
        self.allowed = {normalise_host(h) for h in allowed_hosts}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or "*" in self.allowed:
            await self.app(scope, receive, send)
            return
        host = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"host"), "")
        if normalise_host(host) not in self.allowed:
            shown = host[:80] or "none"
            message = f"Host {shown} is not served here: use one of {', '.join(sorted(self.allowed))} (--allowed_hosts)"
            await send_json_error(send, 400, message)
            return
        await self.app(scope, receive, send)


def client_address(scope: dict) -> str | None:
    """The client's address as the server saw it (uvicorn puts the peer's IP in the scope; TestClient a name)."""
    client = scope.get("client")
    return client[0] if client else None


class InFlightLimit:
    """At most `max_concurrent_requests` HTTP requests inside the app at once, and at most `per_client_limit` from
    one client address; one more gets a JSON 503 with Retry-After at once. /healthz and /readyz are never refused
    (they report the saturation)."""

    def __init__(self, app: Any, load: ServerLoad, retry_after: int) -> None:
        self.app = app
        self.load = load
        self.retry_after = retry_after

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in ("/healthz", "/readyz"):
            await self.app(scope, receive, send)
            return
        limit = self.load.limits.max_concurrent_requests
        if self.load.requests_in_flight >= limit:
            self.load.shed["requests"] += 1
            message = f"server busy: {limit} requests in flight (--max_concurrent_requests); retry shortly"
            await send_json_error(send, 503, message, self.retry_after, close=True)
            return
        client = client_address(scope)
        if self.load.client_at_limit(self.load.requests_by_client, client):
            self.load.shed["per_client"] += 1
            message = per_client_message(self.load.limits, "requests in flight")
            await send_json_error(send, 503, message, self.retry_after, close=True)
            return
        self.load.requests_in_flight += 1
        self.load.count_client(self.load.requests_by_client, client, +1)
        try:
            await self.app(scope, receive, send)
        finally:
            self.load.requests_in_flight -= 1
            self.load.count_client(self.load.requests_by_client, client, -1)


class BodyGuard:
    """Reads each request's whole body before the app runs: within `body_timeout_s` (else 408), at most
    `max_body_bytes` (else 413), and only while the bodies in flight fit `max_body_bytes_in_flight` (else 503 with
    Retry-After). A declared Content-Length is reserved before a byte is read, so clients that announce big bodies
    and send them slowly are refused at once instead of holding memory and slots."""

    def __init__(self, app: Any, load: ServerLoad, retry_after: int) -> None:
        self.app = app
        self.load = load
        self.retry_after = retry_after

    def _busy(self) -> str:
        mib = self.load.limits.max_body_bytes_in_flight / MIB
        return f"server busy: {mib:g} MiB of request bodies in flight (--max_body_mib_in_flight); retry shortly"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.load.max_body_bytes
        too_big = f"request body over {max_bytes} bytes: send fewer or shorter texts"
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        try:
            reserved = int(declared) if declared is not None else 0
        except ValueError:  # h11 refuses these before the app; kept for other servers
            await send_json_error(send, 400, "Content-Length is not a number", close=True)
            return
        if reserved > max_bytes:
            await send_json_error(send, 413, too_big, close=True)
            return
        if not self.load.reserve_body_bytes(reserved):
            self.load.shed["body_bytes"] += 1
            await send_json_error(send, 503, self._busy(), self.retry_after, close=True)
            return
        try:
            chunks, size, more = [], 0, True
            deadline = asyncio.get_running_loop().time() + self.load.limits.body_timeout_s
            while more:
                remaining = deadline - asyncio.get_running_loop().time()
                try:
                    message = await asyncio.wait_for(receive(), max(remaining, 0))
                except asyncio.TimeoutError:
                    timeout = self.load.limits.body_timeout_s
                    message_text = f"request body not received within {timeout:g} s (--body_timeout); send it at once"
                    await send_json_error(send, 408, message_text, close=True)
                    return
                if message["type"] == "http.disconnect":
                    return  # the client went away: nothing to answer
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > max_bytes:
                    await send_json_error(send, 413, too_big, close=True)
                    return
                if size > reserved:  # no (or a wrong) Content-Length: reserve as the bytes arrive
                    if not self.load.reserve_body_bytes(size - reserved):
                        self.load.shed["body_bytes"] += 1
                        await send_json_error(send, 503, self._busy(), self.retry_after, close=True)
                        return
                    reserved = size
                chunks.append(chunk)
                more = message.get("more_body", False)
            body = b"".join(chunks)
            del chunks
            replayed = False

            async def replay() -> dict:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()  # later calls wait for the disconnect, as the server's receive does

            await self.app(scope, replay, send)
        finally:
            self.load.release_body_bytes(reserved)


def raw_json_response(status: int, reason: str, message: str, retry_after: int | None = None) -> bytes:
    """A whole HTTP/1.1 response, for the protocol level where no request (hence no ASGI app) is in progress."""
    body = json_error_body(status, message)
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}"]
    if retry_after is not None:
        head.append(f"retry-after: {retry_after}")
    head += [f"{name.decode()}: {value.decode()}" for name, value in SECURITY_HEADERS]
    head.append("connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def guarded_protocol(load: ServerLoad, retry_after: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol, bounded: a connection must send a request's headers within `header_timeout_s` of
    opening or of its last response (else 408, or a silent close when it sent nothing), and past `connection_limit`
    open connections, or `per_client_limit` from its address, a new one gets a JSON 503 with Retry-After. Pass it as
    uvicorn's `http=`."""
    limits = load.limits

    async def refuse_connection(scope: dict, receive: Any, send: Any) -> None:
        load.shed["connections"] += 1
        message = f"server busy: {limits.connection_limit} connections open (--max_connections); retry shortly"
        await send_json_error(send, 503, message, retry_after, close=True)

    async def refuse_client(scope: dict, receive: Any, send: Any) -> None:
        load.shed["per_client"] += 1
        await send_json_error(send, 503, per_client_message(limits, "connections open"), retry_after, close=True)

    over_capacity = SecurityHeaders(refuse_connection)  # it bypasses the app's middleware: same headers
    over_client_capacity = SecurityHeaders(refuse_client)

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            load.connections = len(self.connections)
            self._header_timer: asyncio.TimerHandle | None = None
            self._bytes_waiting = False  # bytes of a request whose headers are not complete yet
            # The peer's IP, not X-Forwarded-For: a client cannot name itself another address at this level.
            self._client_address = self.client[0] if self.client else None
            if len(self.connections) > limits.connection_limit:
                self.app = over_capacity  # this connection's request is answered 503, then it closes
            elif load.client_at_limit(load.connections_by_client, self._client_address):
                self.app = over_client_capacity  # the same, for an address that holds its share already
            load.count_client(load.connections_by_client, self._client_address, +1)
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)
            load.connections = len(self.connections)
            load.count_client(load.connections_by_client, self._client_address, -1)

        def _request_in_progress(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(limits.header_timeout_s, self._header_timeout)

        def _cancel_header_timer(self) -> None:
            if getattr(self, "_header_timer", None) is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def data_received(self, data: bytes) -> None:
            if not self._request_in_progress():
                self._bytes_waiting = True
            super().data_received(data)

        def handle_events(self) -> None:
            super().handle_events()
            if self._request_in_progress():  # headers complete: the body has BodyGuard's deadline
                self._cancel_header_timer()
                self._bytes_waiting = False

        def on_response_complete(self) -> None:
            self._arm_header_timer()  # before super(): it may start a pipelined request, which cancels it
            super().on_response_complete()

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or self._request_in_progress():
                return
            if self._bytes_waiting and self.conn.their_state is h11.IDLE:
                message = f"request headers not received within {limits.header_timeout_s:g} s (--header_timeout)"
                self.transport.write(raw_json_response(408, "Request Timeout", message))
            self.transport.close()

    return GuardedH11Protocol


def server_options(load: ServerLoad, retry_after: int) -> dict[str, Any]:
    """uvicorn.run / uvicorn.Config keyword arguments that put `guarded_protocol` in place of uvicorn's limits."""
    return {
        "http": guarded_protocol(load, retry_after),
        "limit_concurrency": None,  # the guarded protocol caps connections with a JSON 503 and Retry-After
        "timeout_keep_alive": max(1, int(load.limits.header_timeout_s)),
        "h11_max_incomplete_event_size": 16 * 1024,  # request line and headers: 16 KiB at most
    }
