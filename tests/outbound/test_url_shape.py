"""What can be known about a URL before any request is made: no DNS, no connection."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from moderation.outbound.http import OutboundError, check_url_shape

SETTING = "MODERATION_CALLBACK_ALLOW_HOSTS"


@pytest.fixture(autouse=True)
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checking a URL's shape must never look a name up."""
    real = socket.getaddrinfo

    def numeric_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        flags = kwargs.get("flags", args[3] if len(args) > 3 else 0)
        if not flags & socket.AI_NUMERICHOST:
            raise AssertionError(f"looked up {host!r}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", numeric_only)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/hook", "scheme"),
        ("javascript:alert(1)", "scheme"),
        ("data:text/plain,hi", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("http:///x", "no host"),
        ("https://", "no host"),
        ("http://user:pw@example.com/", "user name"),
        ("http://example.com:99999/", "port"),
        ("http://example.com:0/", "port"),
        ("http://127.0.0.1:8080/hook", "non-public"),
        ("http://10.1.2.3/hook", "non-public"),
        ("http://169.254.169.254/latest/", "non-public"),
        ("http://[::1]/hook", "non-public"),
        ("http://[::ffff:127.0.0.1]/hook", "non-public"),
        ("http://[fd00:ec2::254]/", "non-public"),
        ("http://0x7f000001/", "non-public"),
        ("http://2130706433/", "non-public"),
        ("http://127.1/", "non-public"),
        ("http://0.0.0.0/", "non-public"),
        ("http://localhost:8080/hook", "this machine"),
        ("http://api.localhost/hook", "this machine"),
        ("not a url", "scheme"),
        ("http://[::1/", "valid URL"),
    ],
)
def test_refuses_what_no_request_could_reach(url: str, why: str) -> None:
    with pytest.raises(OutboundError, match=why):
        check_url_shape(url, [], SETTING)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/moderation",
        "http://hooks.example.com:8443/m?token=abc",
        "https://93.184.216.34/hook",
        "https://[2606:4700:4700::1111]/hook",
        # A name is only resolved when sending: its addresses may change until then.
        "https://internal.corp.example/hook",
    ],
)
def test_accepts_what_may_be_reachable(url: str) -> None:
    check_url_shape(url, [], SETTING)


def test_the_allow_list_admits_an_exact_host_and_port() -> None:
    check_url_shape("http://127.0.0.1:9000/hook", ["127.0.0.1:9000"], SETTING)
    check_url_shape("http://localhost:9000/hook", ["localhost:9000"], SETTING)
    with pytest.raises(OutboundError, match=SETTING):
        check_url_shape("http://127.0.0.1:9001/hook", ["127.0.0.1:9000"], SETTING)
