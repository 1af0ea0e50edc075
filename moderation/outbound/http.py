"""Send one HTTP request to a tenant-chosen URL without letting it reach inside our network.

Image fetches and callbacks both go through `send_guarded`. Every hop, including every redirect:

- must be http or https, without user:password;
- is resolved exactly once, and refused if ANY resolved address is not a public unicast address
  (unless the operator listed its exact "host:port" in the caller's allow-list);
- is then connected to by that checked address, never by name, so a second DNS answer cannot
  swap in an internal address (DNS rebinding). The URL is rewritten to the address, the `Host`
  header keeps the name, and for https the TLS SNI and certificate check use the name too.

The socket layer enforces the same: it refuses to open a connection to anything but the
addresses checked for the current hop, and it bounds every connect, read and write by one
deadline shared by all hops and the body, so a server trickling bytes cannot hold a worker.
No proxy, netrc or cookie from the environment is used, and nothing from one hop (cookies,
authentication) is carried to the next.

Each hop is handed straight to the transport rather than to an `httpx.Client`: the client
builds the next request of every redirect even when it is told not to follow it, and a
`Location: data:...` then escapes as an `InvalidURL` that is no `httpx.HTTPError`. Here a
redirect to anything but http(s) is an `OutboundError` like every other refusal.

Not bounded by the deadline: the operating system's DNS lookup itself (getaddrinfo has no
timeout; the resolver's own, usually 5 s per try, applies).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from moderation.outbound.addresses import (
    IPAddress,
    allow_list_key,
    is_blocked_address,
    literal_address,
    resolve,
)

SENDABLE_SCHEMES = frozenset({"http", "https"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class OutboundError(Exception):
    """The request was refused before sending, or did not complete within its limits.

    `timed_out` tells a slow server from a refusal, for callers that retry the one and not the
    other. `transient` is wider: the failure may pass by itself (a timeout, a refused or dropped
    connection, a DNS server that did not answer), where a refused address, scheme or size will
    not change.
    """

    def __init__(
        self, message: str, *, timed_out: bool = False, transient: bool | None = None
    ) -> None:
        super().__init__(message)
        self.timed_out = timed_out
        self.transient = timed_out if transient is None else transient


@dataclass(frozen=True)
class OutboundLimits:
    """What one caller allows: where to, for how long, how many redirects."""

    allow_hosts: frozenset[str]
    # The setting an operator edits to extend `allow_hosts`; named in refusals.
    allow_hosts_setting: str
    total_timeout_s: float
    connect_timeout_s: float | None = None
    # 0 means a redirect is handed back to the caller as the response, not followed.
    max_redirects: int = 0


@dataclass(frozen=True)
class _Target:
    url: httpx.URL
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


class Deadline:
    """One clock for the whole request: every hop, connect, TLS handshake and body read."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._ends_at = time.monotonic() + seconds

    def remaining(self) -> float:
        return self._ends_at - time.monotonic()

    def exceeded_error(self) -> OutboundError:
        return OutboundError(f"the request took longer than {self.seconds:g} s", timed_out=True)

    def clamp(self, timeout: float | None, on_expiry: type[Exception]) -> float:
        left = self.remaining()
        if left <= 0:
            raise on_expiry("request deadline passed")
        return left if timeout is None else min(timeout, left)


@dataclass
class GuardedResponse:
    """The final hop's answer; the body is read by the caller, within the same deadline."""

    status_code: int
    headers: httpx.Headers
    url: httpx.URL
    _response: httpx.Response
    _deadline: Deadline

    def read_capped(self, max_bytes: int) -> bytes:
        """The whole body; an OutboundError if it is (or grows) larger than `max_bytes`."""
        declared = self.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise OutboundError(f"body of {declared} bytes is above the {max_bytes} byte limit")
        chunks: list[bytes] = []
        received = 0
        for chunk in self._chunks():
            received += len(chunk)
            if received > max_bytes:
                raise OutboundError(f"body grew above the {max_bytes} byte limit")
            chunks.append(chunk)
        return b"".join(chunks)

    def read_prefix(self, max_bytes: int) -> bytes:
        """At most the first `max_bytes` of the body, for a log; the rest is never read."""
        chunks: list[bytes] = []
        received = 0
        for chunk in self._chunks():
            chunks.append(chunk)
            received += len(chunk)
            if received >= max_bytes:
                break
        return b"".join(chunks)[:max_bytes]

    def _chunks(self) -> Iterator[bytes]:
        if self._response.is_stream_consumed:
            # A test transport that built its response from bytes has nothing left to stream.
            yield self._response.content
            return
        try:
            # Raw bytes: a body the server compressed anyway is never expanded here.
            for chunk in self._response.iter_raw():
                if self._deadline.remaining() <= 0:
                    raise self._deadline.exceeded_error()
                yield chunk
        except httpx.TimeoutException as exc:
            raise self._deadline.exceeded_error() from exc
        except httpx.HTTPError as exc:
            raise _transfer_error(self.url, exc, self._deadline) from exc


@contextmanager
def send_guarded(
    method: str,
    url: str,
    limits: OutboundLimits,
    *,
    headers: Mapping[str, str],
    content: bytes | None = None,
    transport: httpx.BaseTransport | None = None,
) -> Iterator[GuardedResponse]:
    """Send `method url` under `limits` and yield the final response, body unread.

    Redirects are followed (as GET for 303, with the same method and body for 307/308) up to
    `limits.max_redirects`; with 0 the redirect itself is yielded. `transport` replaces the
    network for tests; the address checks still run, but the socket layer's pinning and
    deadline are then the test transport's business.
    """
    deadline = Deadline(limits.total_timeout_s)
    backend = _PinnedBackend(deadline)
    own_transport = _PinnedTransport(backend) if transport is None else None
    transport = own_transport or transport
    assert transport is not None
    current_url = parse_url(url)
    try:
        for _hop in range(limits.max_redirects + 1):
            target = _check_target(current_url, limits)
            backend.permit(target.addresses)
            response = _send_to_checked_address(
                transport, method, target, headers, content, deadline, limits.connect_timeout_s
            )
            try:
                if response.status_code in REDIRECT_STATUSES and limits.max_redirects > 0:
                    current_url = _redirect_location(current_url, response)
                    if response.status_code == 303 or (
                        response.status_code in (301, 302) and method == "POST"
                    ):
                        method, content = "GET", None
                    continue
                yield GuardedResponse(
                    status_code=response.status_code,
                    headers=response.headers,
                    url=current_url,
                    _response=response,
                    _deadline=deadline,
                )
                return
            finally:
                response.close()
        raise OutboundError(f"more than {limits.max_redirects} redirects")
    finally:
        if own_transport is not None:
            own_transport.close()


def parse_url(raw_url: str) -> httpx.URL:
    try:
        return httpx.URL(raw_url)
    except (httpx.InvalidURL, UnicodeError, ValueError, TypeError) as exc:
        raise OutboundError(f"not a valid URL: {exc}") from exc


def check_url_shape(raw_url: str, allow_hosts: Iterable[str], allow_hosts_setting: str) -> None:
    """Refuse now what a request to `raw_url` would certainly refuse later, without any DNS.

    For URLs stored to be called later (callbacks): the scheme, a missing host, credentials, an
    impossible port, and a host that is literally a non-public address (or `localhost`) are
    known at once. A name that resolves to a private address can only be found when sending.
    """
    url = parse_url(raw_url)
    if url.scheme not in SENDABLE_SCHEMES:
        raise OutboundError(f"scheme {url.scheme!r} is not allowed; use http or https")
    if url.userinfo:
        raise OutboundError("URLs with a user name or password are not allowed")
    host = _host_of(url)
    if not host:
        raise OutboundError("URL has no host")
    port = url.port if url.port is not None else _DEFAULT_PORTS[url.scheme]
    if not 0 < port < 65536:
        raise OutboundError(f"port {port} is out of range")
    if allow_list_key(host, port) in set(allow_hosts):
        return
    address = literal_address(host)
    if address is not None and is_blocked_address(address):
        raise OutboundError(
            f"{host} is a non-public address; list it in {allow_hosts_setting} to allow it"
        )
    # Reserved for loopback (RFC 6761): every resolver answers it with 127.0.0.1 or ::1.
    if host == "localhost" or host.endswith(".localhost"):
        raise OutboundError(f"{host} is this machine; list it in {allow_hosts_setting} to allow it")


def _host_of(url: httpx.URL) -> str:
    return url.raw_host.decode("ascii").lower()


def _check_target(url: httpx.URL, limits: OutboundLimits) -> _Target:
    if url.scheme not in SENDABLE_SCHEMES:
        raise OutboundError(f"scheme {url.scheme!r} is not allowed; use http or https")
    if url.userinfo:
        raise OutboundError("URLs with a user name or password are not allowed")
    host = _host_of(url)
    if not host:
        raise OutboundError("URL has no host")
    port = url.port if url.port is not None else _DEFAULT_PORTS[url.scheme]
    if not 0 < port < 65536:
        raise OutboundError(f"port {port} is out of range")
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError) as exc:
        # EAI_AGAIN: the resolver did not answer in time; "no such name" will not change.
        transient = isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_AGAIN
        raise OutboundError(f"cannot resolve {host}: {exc}", transient=transient) from exc
    if allow_list_key(host, port) not in limits.allow_hosts:
        blocked = [str(address) for address in addresses if is_blocked_address(address)]
        if blocked:
            raise OutboundError(
                f"{host} resolves to a non-public address ({', '.join(blocked)}); "
                f"list it in {limits.allow_hosts_setting} to allow it"
            )
    return _Target(url=url, host=host, port=port, addresses=addresses)


def _send_to_checked_address(
    transport: httpx.BaseTransport,
    method: str,
    target: _Target,
    headers: Mapping[str, str],
    content: bytes | None,
    deadline: Deadline,
    connect_timeout_s: float | None,
) -> httpx.Response:
    """Send to each checked address in turn until one accepts the connection.

    A name often resolves to both IPv6 and IPv4 while the server listens on only one of them;
    moving on is only done when nothing was sent, so the request is never repeated.
    """
    all_headers = {
        **headers,
        "Host": target.url.netloc.decode("ascii"),
        # A compressed body could expand past any size cap within a single chunk.
        "Accept-Encoding": "identity",
    }
    extensions: dict[str, Any] = {}
    if target.url.scheme == "https":
        extensions["sni_hostname"] = target.host
    refused: httpx.ConnectError | None = None
    for address in target.addresses:
        left = deadline.remaining()
        if left <= 0:
            raise deadline.exceeded_error()
        connect = left if connect_timeout_s is None else min(connect_timeout_s, left)
        extensions["timeout"] = httpx.Timeout(left, connect=connect).as_dict()
        request = httpx.Request(
            method,
            target.url.copy_with(host=str(address)),
            headers=all_headers,
            content=content,
            extensions=dict(extensions),
        )
        try:
            return transport.handle_request(request)
        except httpx.ConnectTimeout as exc:
            if deadline.remaining() <= 0:
                raise deadline.exceeded_error() from exc
            raise OutboundError(
                f"connecting to {target.host}:{target.port} took longer than {connect:g} s",
                timed_out=True,
            ) from exc
        except httpx.ConnectError as exc:
            refused = exc
        except httpx.TimeoutException as exc:
            raise deadline.exceeded_error() from exc
        except httpx.HTTPError as exc:
            raise _transfer_error(target.url, exc, deadline) from exc
    assert refused is not None  # resolve never returns an empty tuple
    raise OutboundError(f"cannot connect to {target.host}:{target.port}: {refused}", transient=True)


def _redirect_location(current_url: httpx.URL, response: httpx.Response) -> httpx.URL:
    location = response.headers.get("Location")
    if not location:
        raise OutboundError(f"HTTP {response.status_code} redirect without a Location")
    try:
        # Relative to this hop's URL with its name, not to the address it was sent to.
        return current_url.join(location)
    except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
        raise OutboundError(f"redirect to an invalid URL: {exc}") from exc


def _transfer_error(url: httpx.URL, exc: httpx.HTTPError, deadline: Deadline) -> OutboundError:
    if deadline.remaining() <= 0:
        return deadline.exceeded_error()
    return OutboundError(
        f"request to {redacted(url)} failed: {type(exc).__name__}: {exc}", transient=True
    )


def redacted(url: httpx.URL) -> str:
    """The URL without its query, which often carries signed-URL tokens that must not be logged."""
    return str(url.copy_with(query=None, fragment=None))


class _PinnedStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, deadline: Deadline) -> None:
        self._stream = stream
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._deadline.clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._deadline.clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        tls_stream = self._stream.start_tls(
            ssl_context, server_hostname, self._deadline.clamp(timeout, httpcore.ConnectTimeout)
        )
        return _PinnedStream(tls_stream, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _PinnedBackend(httpcore.NetworkBackend):
    """The socket layer: connects only to the addresses checked for the current hop."""

    def __init__(self, deadline: Deadline) -> None:
        self._deadline = deadline
        self._permitted: frozenset[IPAddress] = frozenset()
        self._sockets = httpcore.SyncBackend()

    def permit(self, addresses: Iterable[IPAddress]) -> None:
        self._permitted = frozenset(addresses)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address not in self._permitted:
            raise httpcore.ConnectError(f"refusing to connect to unchecked address {host}")
        stream = self._sockets.connect_tcp(
            host,
            port,
            timeout=self._deadline.clamp(timeout, httpcore.ConnectTimeout),
            local_address=local_address,
            socket_options=socket_options,
        )
        return _PinnedStream(stream, self._deadline)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("outbound requests never use unix sockets")


class _PinnedTransport(httpx.HTTPTransport):
    """httpx's own transport, running over the pinned socket layer.

    httpx has no public way to hand its transport a network backend, so the connection pool it
    builds is replaced by one that uses ours. Keep-alive is off so a TLS connection made for one
    name is never reused for another name that resolved to the same address.
    """

    def __init__(self, backend: _PinnedBackend) -> None:
        super().__init__(verify=_tls_context(), trust_env=False)
        if not isinstance(getattr(self, "_pool", None), httpcore.ConnectionPool):
            raise RuntimeError("this httpx version keeps its pool elsewhere; requests are unsafe")
        self._pool = httpcore.ConnectionPool(
            ssl_context=_tls_context(),
            max_keepalive_connections=0,
            network_backend=backend,
        )


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """Loading the CA bundle takes milliseconds, so every request and thread shares one context.

    It honours SSL_CERT_FILE / SSL_CERT_DIR, so an operator can trust an internal media store's
    or receiver's CA; that is the only thing read from the environment.
    """
    return httpx.create_ssl_context()
