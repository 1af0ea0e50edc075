"""Which fetch failures may pass by themselves (re-driven later) and which will not."""

from __future__ import annotations

import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread
from typing import Any

import httpx
import pytest

from moderation.config import Settings
from moderation.media.errors import ImageFetchError
from moderation.media.fetch import fetch_image


def _settings(**overrides: Any) -> Settings:
    return Settings(fetch_allow_hosts=["127.0.0.1:80"], fetch_timeout_s=2.0, **overrides)


def _failure(status: int) -> ImageFetchError:
    def answer(_: httpx.Request) -> httpx.Response:
        return httpx.Response(status)

    with pytest.raises(ImageFetchError) as caught:
        fetch_image("http://127.0.0.1/cat.png", _settings(), transport=httpx.MockTransport(answer))
    return caught.value


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
def test_server_trouble_is_transient(status: int) -> None:
    failure = _failure(status)
    assert failure.transient, failure
    assert f"HTTP {status}" in str(failure)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 451])
def test_answers_about_the_url_itself_are_permanent(status: int) -> None:
    assert not _failure(status).transient


def test_a_refused_connection_is_transient() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ImageFetchError, match="cannot connect") as caught:
        fetch_image(f"http://127.0.0.1:{port}/", Settings(fetch_allow_hosts=[f"127.0.0.1:{port}"]))
    assert caught.value.transient


def test_a_timeout_is_transient() -> None:
    class Slow(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            time.sleep(1.0)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        with pytest.raises(ImageFetchError, match="longer than") as caught:
            fetch_image(
                f"http://127.0.0.1:{port}/",
                Settings(fetch_allow_hosts=[f"127.0.0.1:{port}"], fetch_timeout_s=0.3),
            )
    finally:
        server.shutdown()
        server.server_close()
    assert caught.value.transient


@pytest.mark.parametrize(
    ("error", "transient"),
    [(socket.EAI_AGAIN, True), (socket.EAI_NONAME, False)],
)
def test_dns_trouble_is_transient_but_an_unknown_name_is_not(
    monkeypatch: pytest.MonkeyPatch, error: int, transient: bool
) -> None:
    def getaddrinfo(*_: Any, **__: Any) -> list[Any]:
        raise socket.gaierror(error, "resolver says no")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(ImageFetchError, match="cannot resolve") as caught:
        fetch_image("https://images.example/cat.png", Settings())
    assert caught.value.transient is transient


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/latest/meta-data/", "ftp://example.com/x.png"]
)
def test_refused_urls_are_permanent(url: str) -> None:
    with pytest.raises(ImageFetchError) as caught:
        fetch_image(url, Settings())
    assert not caught.value.transient
