"""SSRF-safe fetching, against a real HTTP server on loopback.

Loopback is itself a forbidden destination, so most tests allow-list the server's exact
"127.0.0.1:PORT" and then check that everything else stays refused. A guard on
`socket.create_connection` fails any test that lets the fetcher open a connection to anything
but loopback, or to a name instead of an address: refusals must happen before connecting, and no
test ever sends a packet off this machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from moderation.config import Settings
from moderation.media.errors import ImageFetchError
from moderation.media.fetch import USER_AGENT, fetch_image, is_blocked_address

IMAGE_BODY = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
MAX_BYTES = 64 * 1024
TRICKLE_INTERVAL_S = 0.05
DEADLINE_S = 0.6
# How late a deadline may fire: one trickle interval plus scheduling noise on a busy 2-core box.
DEADLINE_SLACK_S = 0.5


class _RecordingServer(ThreadingHTTPServer):
    daemon_threads = True
    requests: list[tuple[str, dict[str, str]]]


class _Handler(BaseHTTPRequestHandler):
    server: _RecordingServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append((self.path, dict(self.headers.items())))
        route = _ROUTES.get(self.path, _not_found)
        # The fetcher hanging up early is what several tests want: too big or too slow.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            route(self)

    def send_body(self, body: bytes, content_type: str = "image/png") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location: str, *extra_headers: tuple[str, str]) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        for name, value in extra_headers:
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


def _image(handler: _Handler) -> None:
    handler.send_body(IMAGE_BODY)


def _not_found(handler: _Handler) -> None:
    handler.send_response(404)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


def _declared_too_big(handler: _Handler) -> None:
    handler.send_body(b"x" * (MAX_BYTES + 1))


def _growing_without_length(handler: _Handler) -> None:
    # HTTP/1.0 without Content-Length: the body ends when the server closes the connection.
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    handler.end_headers()
    for _ in range(64):
        handler.wfile.write(b"x" * 8192)


def _trickling_body(handler: _Handler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Length", "200")
    handler.end_headers()
    for _ in range(200):
        handler.wfile.write(b"x")
        handler.wfile.flush()
        time.sleep(TRICKLE_INTERVAL_S)


def _trickling_headers(handler: _Handler) -> None:
    handler.wfile.write(b"HTTP/1.0 200 OK\r\n")
    for _ in range(200):
        handler.wfile.write(b"X-Slow: y\r\n")
        handler.wfile.flush()
        time.sleep(TRICKLE_INTERVAL_S)


def _slow_redirect_loop(handler: _Handler) -> None:
    time.sleep(DEADLINE_S / 3)
    handler.redirect("/redirect/slow")


def _server_port(handler: _Handler) -> int:
    return int(handler.server.server_address[1])


_ROUTES: dict[str, Callable[[_Handler], None]] = {
    "/image.png": _image,
    "/redirect/relative": lambda h: h.redirect("/image.png"),
    "/redirect/absolute": lambda h: h.redirect(f"http://127.0.0.1:{_server_port(h)}/image.png"),
    "/redirect/private": lambda h: h.redirect("http://10.0.0.1/image.png"),
    "/redirect/metadata": lambda h: h.redirect("http://169.254.169.254/latest/meta-data/"),
    "/redirect/mapped-metadata": lambda h: h.redirect("http://[::ffff:169.254.169.254]/"),
    "/redirect/ftp": lambda h: h.redirect(f"ftp://127.0.0.1:{_server_port(h)}/image.png"),
    "/redirect/file": lambda h: h.redirect("file:///etc/passwd"),
    "/redirect/data": lambda h: h.redirect("data:image/png;base64,iVBORw0KGgo="),
    "/redirect/data-short": lambda h: h.redirect("data:,x"),
    "/redirect/javascript": lambda h: h.redirect("javascript:alert(1)"),
    "/redirect/bad-idna": lambda h: h.redirect("https://xn--/"),
    "/redirect/bad-port": lambda h: h.redirect("http://example.com:99999/"),
    "/redirect/loop": lambda h: h.redirect("/redirect/loop"),
    "/redirect/without-location": lambda h: h.redirect(""),
    "/redirect/with-cookie": lambda h: h.redirect(
        "/image.png", ("Set-Cookie", "session=secret; Path=/")
    ),
    "/redirect/slow": _slow_redirect_loop,
    "/too-big/declared": _declared_too_big,
    "/too-big/growing": _growing_without_length,
    "/slow/body": _trickling_body,
    "/slow/headers": _trickling_headers,
}


@pytest.fixture(scope="module")
def running_server() -> Iterator[_RecordingServer]:
    server = _RecordingServer(("127.0.0.1", 0), _Handler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def server(running_server: _RecordingServer) -> _RecordingServer:
    running_server.requests.clear()
    return running_server


@pytest.fixture
def port(server: _RecordingServer) -> int:
    return int(server.server_address[1])


@pytest.fixture(autouse=True)
def only_loopback_connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    forbidden_attempts: list[object] = []
    real_create_connection = socket.create_connection

    def guarded(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        try:
            is_loopback = ipaddress.ip_address(address[0]).is_loopback
        except ValueError:
            is_loopback = False  # a name: the fetcher must connect to checked addresses only
        if not is_loopback:
            forbidden_attempts.append(address)
            raise ConnectionRefusedError(f"test guard: no connection to {address}")
        return real_create_connection(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)
    yield forbidden_attempts
    assert forbidden_attempts == []


def make_settings(*allow_hosts: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "fetch_allow_hosts": list(allow_hosts),
        "fetch_timeout_s": 5.0,
        "image_max_bytes": MAX_BYTES,
    }
    values.update(overrides)
    return Settings(**values)


def fake_dns(
    monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]
) -> dict[str, int]:
    """Answer `getaddrinfo` for the given names, one list of addresses per successive lookup."""
    real_getaddrinfo = socket.getaddrinfo
    lookups: dict[str, int] = {}

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in answers:
            return real_getaddrinfo(host, port, *args, **kwargs)
        count = lookups.get(host, 0)
        lookups[host] = count + 1
        addresses = answers[host][min(count, len(answers[host]) - 1)]
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (
                socket.AF_INET6 if ":" in address else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (address, port),
            )
            for address in addresses
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


def paths(server: _RecordingServer) -> list[str]:
    return [path for path, _headers in server.requests]


def test_fetches_from_an_allow_listed_loopback_port(server: _RecordingServer, port: int) -> None:
    body = fetch_image(f"http://127.0.0.1:{port}/image.png", make_settings(f"127.0.0.1:{port}"))

    assert body == IMAGE_BODY
    _path, headers = server.requests[-1]
    assert headers["User-Agent"] == USER_AGENT
    assert headers["Host"] == f"127.0.0.1:{port}"
    assert "Cookie" not in headers


def test_refuses_loopback_that_is_not_allow_listed(server: _RecordingServer, port: int) -> None:
    with pytest.raises(ImageFetchError, match=r"non-public address \(127\.0\.0\.1\)") as caught:
        fetch_image(f"http://127.0.0.1:{port}/image.png", make_settings())

    assert caught.value.reason == "fetch_failed"
    assert server.requests == []


def test_allow_list_entry_is_for_one_port_only(server: _RecordingServer, port: int) -> None:
    with pytest.raises(ImageFetchError, match="non-public"):
        fetch_image(f"http://127.0.0.1:{port}/image.png", make_settings("127.0.0.1:1"))

    assert server.requests == []


def test_localhost_is_resolved_and_checked_like_any_name(
    server: _RecordingServer, port: int
) -> None:
    with pytest.raises(ImageFetchError, match="non-public"):
        fetch_image(f"http://localhost:{port}/image.png", make_settings())
    assert server.requests == []

    body = fetch_image(f"http://LocalHost:{port}/image.png", make_settings(f"localhost:{port}"))

    assert body == IMAGE_BODY
    assert server.requests[-1][1]["Host"] == f"localhost:{port}"


@pytest.mark.parametrize("start", ["/redirect/relative", "/redirect/absolute"])
def test_follows_redirects_within_the_allow_list(
    server: _RecordingServer, port: int, start: str
) -> None:
    body = fetch_image(f"http://127.0.0.1:{port}{start}", make_settings(f"127.0.0.1:{port}"))

    assert body == IMAGE_BODY
    assert paths(server) == [start, "/image.png"]


@pytest.mark.parametrize(
    ("start", "refused_address"),
    [
        ("/redirect/private", "10.0.0.1"),
        ("/redirect/metadata", "169.254.169.254"),
        ("/redirect/mapped-metadata", "::ffff:a9fe:a9fe"),
    ],
)
def test_refuses_redirects_to_internal_addresses_before_connecting(
    server: _RecordingServer, port: int, start: str, refused_address: str
) -> None:
    with pytest.raises(ImageFetchError, match=re.escape(refused_address)):
        fetch_image(f"http://127.0.0.1:{port}{start}", make_settings(f"127.0.0.1:{port}"))

    assert paths(server) == [start]


@pytest.mark.parametrize(
    "start",
    [
        "/redirect/ftp",
        "/redirect/file",
        "/redirect/data",
        "/redirect/data-short",
        "/redirect/javascript",
    ],
)
def test_refuses_redirects_to_other_schemes(
    server: _RecordingServer, port: int, start: str
) -> None:
    with pytest.raises(ImageFetchError, match="scheme"):
        fetch_image(f"http://127.0.0.1:{port}{start}", make_settings(f"127.0.0.1:{port}"))


@pytest.mark.parametrize("start", ["/redirect/bad-idna", "/redirect/bad-port"])
def test_a_redirect_to_an_unusable_url_is_a_fetch_failure(
    server: _RecordingServer, port: int, start: str
) -> None:
    with pytest.raises(ImageFetchError) as caught:
        fetch_image(f"http://127.0.0.1:{port}{start}", make_settings(f"127.0.0.1:{port}"))

    assert caught.value.reason == "fetch_failed"
    assert paths(server) == [start]


def test_stops_after_the_configured_number_of_redirects(
    server: _RecordingServer, port: int
) -> None:
    settings = make_settings(f"127.0.0.1:{port}", fetch_max_redirects=3)

    with pytest.raises(ImageFetchError, match="more than 3 redirects"):
        fetch_image(f"http://127.0.0.1:{port}/redirect/loop", settings)

    assert len(server.requests) == 4


def test_refuses_a_redirect_without_location(server: _RecordingServer, port: int) -> None:
    with pytest.raises(ImageFetchError, match="without a Location"):
        fetch_image(
            f"http://127.0.0.1:{port}/redirect/without-location",
            make_settings(f"127.0.0.1:{port}"),
        )


def test_cookies_set_by_a_redirect_are_not_sent_on(server: _RecordingServer, port: int) -> None:
    fetch_image(f"http://127.0.0.1:{port}/redirect/with-cookie", make_settings(f"127.0.0.1:{port}"))

    assert paths(server) == ["/redirect/with-cookie", "/image.png"]
    assert "Cookie" not in server.requests[-1][1]


def test_refuses_a_declared_length_above_the_limit(port: int) -> None:
    with pytest.raises(ImageFetchError, match=f"{MAX_BYTES + 1} bytes is above"):
        fetch_image(f"http://127.0.0.1:{port}/too-big/declared", make_settings(f"127.0.0.1:{port}"))


def test_stops_reading_a_body_that_grows_above_the_limit(port: int) -> None:
    started = time.monotonic()

    with pytest.raises(ImageFetchError, match="grew above"):
        fetch_image(f"http://127.0.0.1:{port}/too-big/growing", make_settings(f"127.0.0.1:{port}"))

    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("path", ["/slow/body", "/slow/headers", "/redirect/slow"])
def test_one_deadline_bounds_the_whole_fetch(port: int, path: str) -> None:
    """Each byte (or hop) arrives well within any per-read timeout; only the total is too long."""
    settings = make_settings(
        f"127.0.0.1:{port}", fetch_timeout_s=DEADLINE_S, fetch_max_redirects=20
    )
    started = time.monotonic()

    with pytest.raises(ImageFetchError, match="longer than"):
        fetch_image(f"http://127.0.0.1:{port}{path}", settings)

    assert time.monotonic() - started < DEADLINE_S + DEADLINE_SLACK_S


def test_reports_the_status_of_an_error_response(port: int) -> None:
    with pytest.raises(ImageFetchError, match="HTTP 404"):
        fetch_image(f"http://127.0.0.1:{port}/missing", make_settings(f"127.0.0.1:{port}"))


def test_error_messages_leave_out_the_query(port: int) -> None:
    with pytest.raises(ImageFetchError) as caught:
        fetch_image(
            f"http://127.0.0.1:{port}/missing?signature=s3cr3t", make_settings(f"127.0.0.1:{port}")
        )

    assert "s3cr3t" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/image.png",
        "gopher://example.com/",
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
        "//example.com/image.png",
        "not a url",
        "http:///image.png",
    ],
)
def test_refuses_urls_that_are_not_http(url: str) -> None:
    with pytest.raises(ImageFetchError):
        fetch_image(url, make_settings())


def test_refuses_credentials_in_the_url(server: _RecordingServer, port: int) -> None:
    with pytest.raises(ImageFetchError, match="user name or password"):
        fetch_image(
            f"http://user:pass@127.0.0.1:{port}/image.png", make_settings(f"127.0.0.1:{port}")
        )

    assert server.requests == []


def test_refuses_a_name_if_any_of_its_addresses_is_internal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_dns(monkeypatch, {"images.example": [["93.184.216.34", "10.1.2.3"]]})

    with pytest.raises(ImageFetchError, match=r"10\.1\.2\.3"):
        fetch_image("https://images.example/cat.png", make_settings())


def test_reports_a_name_that_does_not_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"gone.example": [[]]})

    with pytest.raises(ImageFetchError, match=r"cannot resolve gone\.example"):
        fetch_image("https://gone.example/cat.png", make_settings())


def test_connects_to_the_checked_address_and_never_resolves_again(
    monkeypatch: pytest.MonkeyPatch, server: _RecordingServer, port: int
) -> None:
    """DNS rebinding: a second lookup would answer 10.0.0.1; there must be no second lookup."""
    lookups = fake_dns(monkeypatch, {"images.example": [["127.0.0.1"], ["10.0.0.1"]]})

    body = fetch_image(
        f"http://images.example:{port}/image.png", make_settings(f"images.example:{port}")
    )

    assert body == IMAGE_BODY
    assert lookups == {"images.example": 1}
    assert server.requests[-1][1]["Host"] == f"images.example:{port}"


def test_tries_the_next_checked_address_when_one_refuses(
    monkeypatch: pytest.MonkeyPatch, server: _RecordingServer, port: int
) -> None:
    fake_dns(monkeypatch, {"dual.example": [["::1", "127.0.0.1"]]})
    try:
        socket.create_connection(("::1", port), timeout=1).close()
        pytest.skip("something listens on [::1] at the test server's port")
    except OSError:
        pass

    body = fetch_image(
        f"http://dual.example:{port}/image.png", make_settings(f"dual.example:{port}")
    )

    assert body == IMAGE_BODY


def test_reports_a_port_nobody_listens_on() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]

    with pytest.raises(ImageFetchError, match="cannot connect"):
        fetch_image(f"http://127.0.0.1:{free_port}/", make_settings(f"127.0.0.1:{free_port}"))


def test_https_sends_the_name_for_sni_and_host_but_connects_to_the_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_dns(monkeypatch, {"images.example": [["93.184.216.34"]]})
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=IMAGE_BODY)

    body = fetch_image(
        "https://images.example/cat.png?size=large",
        make_settings(),
        transport=httpx.MockTransport(answer),
    )

    assert body == IMAGE_BODY
    (request,) = seen
    assert str(request.url) == "https://93.184.216.34/cat.png?size=large"
    assert request.headers["Host"] == "images.example"
    assert request.extensions["sni_hostname"] == "images.example"
    assert request.headers["User-Agent"] == USER_AGENT


def test_redirect_hops_are_checked_through_a_custom_transport_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_dns(monkeypatch, {"images.example": [["93.184.216.34"]]})
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(301, headers={"Location": "http://169.254.169.254/latest/"})

    with pytest.raises(ImageFetchError, match=r"169\.254\.169\.254"):
        fetch_image(
            "https://images.example/cat.png", make_settings(), transport=httpx.MockTransport(answer)
        )

    assert seen == ["https://93.184.216.34/cat.png"]


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "127.0.0.1",
        "127.8.9.10",
        "0.0.0.0",
        "169.254.169.254",
        "169.254.1.1",
        "100.64.0.1",
        "100.127.255.254",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.1",
        "198.18.0.1",
        "::",
        "::1",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",
        "ff02::1",
        "ff0e::1",
        "2001:db8::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::127.0.0.1",
        "64:ff9b::a00:1",
        "2002:a00:1::1",
    ],
)
def test_blocks_every_non_public_address(address: str) -> None:
    assert is_blocked_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450::1"]
)
def test_lets_public_unicast_through(address: str) -> None:
    assert not is_blocked_address(ipaddress.ip_address(address))
