"""Download a tenant-supplied image URL without letting the URL reach inside our network.

An image URL is an attacker-chosen request made from inside our network (SSRF): it could read
cloud metadata credentials, an admin port on loopback or a neighbour on the private network.
So every hop, including every redirect:

- must be http or https, without user:password;
- is resolved exactly once, and refused if ANY resolved address is not a public unicast address
  (unless the operator listed its exact "host:port" in MODERATION_FETCH_ALLOW_HOSTS);
- is then connected to by that checked address, never by name, so a second DNS answer cannot
  swap in an internal address (DNS rebinding). The URL is rewritten to the address, the `Host`
  header keeps the name, and for https the TLS SNI and certificate check use the name too.

The socket layer enforces the same: it refuses to open a connection to anything but the
addresses checked for the current hop, and it bounds every connect, read and write by one
deadline shared by all hops and the body, so a server trickling bytes cannot hold a worker.
Bodies are capped while streaming, and no proxy, netrc or cookie from the environment is used.

Not bounded by the deadline: the operating system's DNS lookup itself (getaddrinfo has no
timeout; the resolver's own, usually 5 s per try, applies).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from moderation.config import Settings
from moderation.media.errors import ImageFetchError

USER_AGENT = "moderation-fetch/0.1"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_FETCHABLE_SCHEMES = frozenset({"http", "https"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})

# Listed explicitly although the `ipaddress` properties already cover them: these are the
# addresses an attacker is actually after, and they must stay refused whatever a future Python
# decides `is_global` means.
_CLOUD_METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
_CARRIER_GRADE_NAT = ipaddress.ip_network("100.64.0.0/10")
# NAT64 gateways translate these to the IPv4 address in the low 32 bits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_blocked_address(address: IPAddress) -> bool:
    """True for every address a fetch must not reach: anything but public unicast.

    IPv6 forms that carry an IPv4 address (mapped ::ffff:a.b.c.d, NAT64, 6to4) are also judged
    by the IPv4 address they lead to, since that is where the packets end up, whatever the IPv6
    address's own properties say.
    """
    embedded = _embedded_ipv4(address)
    if embedded is not None and is_blocked_address(embedded):
        return True
    return (
        address in _CLOUD_METADATA_ADDRESSES
        or address in _CARRIER_GRADE_NAT
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def fetch_image(
    url: str, settings: Settings, *, transport: httpx.BaseTransport | None = None
) -> bytes:
    """Return the body of `url`, following redirects, within the size and time caps.

    `transport` replaces the network for tests; the address checks still run, but the socket
    layer's pinning and deadline are then the test transport's business.
    """
    deadline = _Deadline(settings.fetch_timeout_s)
    pinned_backend = _PinnedBackend(deadline)
    allowed_hosts = set(settings.fetch_allow_hosts)
    with httpx.Client(
        transport=transport or _PinnedTransport(pinned_backend),
        trust_env=False,
        follow_redirects=False,
    ) as client:
        current_url = _parse_url(url)
        for _hop in range(settings.fetch_max_redirects + 1):
            target = _check_target(current_url, allowed_hosts)
            pinned_backend.permit(target.addresses)
            response = _send_to_checked_address(client, target, deadline)
            try:
                if response.status_code in _REDIRECT_STATUSES:
                    current_url = _redirect_location(current_url, response)
                    continue
                if not 200 <= response.status_code < 300:
                    raise ImageFetchError(
                        f"{_redacted(current_url)} answered HTTP {response.status_code}",
                        transient=_is_transient_status(response.status_code),
                    )
                return _read_capped_body(response, settings.image_max_bytes, deadline)
            except httpx.TimeoutException as exc:
                raise deadline.exceeded_error() from exc
            except httpx.HTTPError as exc:
                raise _transfer_error(current_url, exc, deadline) from exc
            finally:
                response.close()
    raise ImageFetchError(f"more than {settings.fetch_max_redirects} redirects")


@dataclass(frozen=True)
class _Target:
    url: httpx.URL
    host: str
    port: int
    addresses: tuple[IPAddress, ...]


class _Deadline:
    """One clock for the whole fetch: every hop, connect, TLS handshake and body read."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._ends_at = time.monotonic() + seconds

    def remaining(self) -> float:
        return self._ends_at - time.monotonic()

    def exceeded_error(self) -> ImageFetchError:
        return ImageFetchError(f"fetch took longer than {self.seconds:g} s", transient=True)

    def clamp(self, timeout: float | None, on_expiry: type[Exception]) -> float:
        left = self.remaining()
        if left <= 0:
            raise on_expiry("fetch deadline passed")
        return left if timeout is None else min(timeout, left)


def _parse_url(raw_url: str) -> httpx.URL:
    try:
        return httpx.URL(raw_url)
    except httpx.InvalidURL as exc:
        raise ImageFetchError(f"not a valid URL: {exc}") from exc


def _check_target(url: httpx.URL, allowed_hosts: set[str]) -> _Target:
    if url.scheme not in _FETCHABLE_SCHEMES:
        raise ImageFetchError(f"scheme {url.scheme!r} is not fetched; use http or https")
    if url.userinfo:
        raise ImageFetchError("URLs with a user name or password are not fetched")
    host = url.raw_host.decode("ascii").lower()
    if not host:
        raise ImageFetchError("URL has no host")
    port = url.port or _DEFAULT_PORTS[url.scheme]
    addresses = _resolve(host, port)
    if _allow_list_key(host, port) not in allowed_hosts:
        blocked = [str(address) for address in addresses if is_blocked_address(address)]
        if blocked:
            raise ImageFetchError(
                f"{host} resolves to a non-public address ({', '.join(blocked)}); "
                "list it in MODERATION_FETCH_ALLOW_HOSTS to allow it"
            )
    return _Target(url=url, host=host, port=port, addresses=addresses)


def _allow_list_key(host: str, port: int) -> str:
    """The form MODERATION_FETCH_ALLOW_HOSTS is written in: host:port, IPv6 in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _resolve(host: str, port: int) -> tuple[IPAddress, ...]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        # EAI_AGAIN: the resolver did not answer in time; "no such name" will not change.
        transient = isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_AGAIN
        raise ImageFetchError(f"cannot resolve {host}: {exc}", transient=transient) from exc
    addresses: list[IPAddress] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        # An IPv6 link-local answer may carry a zone ("fe80::1%eth0"); the address is the rest.
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise ImageFetchError(f"{host} has no IPv4 or IPv6 address")
    return tuple(addresses)


def _send_to_checked_address(
    client: httpx.Client, target: _Target, deadline: _Deadline
) -> httpx.Response:
    """Send the GET to each checked address in turn until one accepts the connection.

    A name often resolves to both IPv6 and IPv4 while the server listens on only one of them;
    moving on is only done when nothing was sent, so the request is never repeated.
    """
    headers = {
        "Host": target.url.netloc.decode("ascii"),
        "User-Agent": USER_AGENT,
        "Accept": "image/*",
        # Images are compressed already; a compressed body could also expand past the size cap
        # within a single chunk.
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
        extensions["timeout"] = httpx.Timeout(left).as_dict()
        request = httpx.Request(
            "GET",
            target.url.copy_with(host=str(address)),
            headers=headers,
            extensions=dict(extensions),
        )
        try:
            return client.send(request, stream=True)
        except httpx.ConnectError as exc:
            refused = exc
        except httpx.TimeoutException as exc:
            raise deadline.exceeded_error() from exc
        except httpx.HTTPError as exc:
            raise _transfer_error(target.url, exc, deadline) from exc
    assert refused is not None  # _resolve never returns an empty tuple
    raise ImageFetchError(
        f"cannot connect to {target.host}:{target.port}: {refused}", transient=True
    )


def _redirect_location(current_url: httpx.URL, response: httpx.Response) -> httpx.URL:
    location = response.headers.get("Location")
    if not location:
        raise ImageFetchError(f"HTTP {response.status_code} redirect without a Location")
    try:
        # Relative to this hop's URL with its name, not to the address it was sent to.
        return current_url.join(location)
    except httpx.InvalidURL as exc:
        raise ImageFetchError(f"redirect to an invalid URL: {exc}") from exc


def _read_capped_body(response: httpx.Response, max_bytes: int, deadline: _Deadline) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ImageFetchError(f"body of {declared} bytes is above the {max_bytes} byte limit")
    chunks: list[bytes] = []
    received = 0
    for chunk in response.iter_bytes():
        received += len(chunk)
        if received > max_bytes:
            raise ImageFetchError(f"body grew above the {max_bytes} byte limit")
        if deadline.remaining() <= 0:
            raise deadline.exceeded_error()
        chunks.append(chunk)
    return b"".join(chunks)


def _transfer_error(url: httpx.URL, exc: httpx.HTTPError, deadline: _Deadline) -> ImageFetchError:
    if deadline.remaining() <= 0:
        return deadline.exceeded_error()
    return ImageFetchError(
        f"fetching {_redacted(url)} failed: {type(exc).__name__}: {exc}", transient=True
    )


def _is_transient_status(status: int) -> bool:
    """Server errors, timeouts reported by a proxy, and rate limiting pass; the rest stays."""
    return status >= 500 or status in (408, 425, 429)


def _redacted(url: httpx.URL) -> str:
    """The URL without its query, which often carries signed-URL tokens that must not be logged."""
    return str(url.copy_with(query=None, fragment=None))


class _PinnedStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, deadline: _Deadline) -> None:
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

    def __init__(self, deadline: _Deadline) -> None:
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
        raise httpcore.ConnectError("image fetches never use unix sockets")


class _PinnedTransport(httpx.HTTPTransport):
    """httpx's own transport, running over the pinned socket layer.

    httpx has no public way to hand its transport a network backend, so the connection pool it
    builds is replaced by one that uses ours. Keep-alive is off so a TLS connection made for one
    name is never reused for another name that resolved to the same address.
    """

    def __init__(self, backend: _PinnedBackend) -> None:
        super().__init__(verify=_tls_context(), trust_env=False)
        if not isinstance(getattr(self, "_pool", None), httpcore.ConnectionPool):
            raise RuntimeError("this httpx version keeps its pool elsewhere; fetches are unsafe")
        self._pool = httpcore.ConnectionPool(
            ssl_context=_tls_context(),
            max_keepalive_connections=0,
            network_backend=backend,
        )


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """Loading the CA bundle takes milliseconds, so every fetch and thread shares one context.

    It honours SSL_CERT_FILE / SSL_CERT_DIR, so an operator can trust an internal media store's
    CA; that is the only thing read from the environment.
    """
    return httpx.create_ssl_context()
