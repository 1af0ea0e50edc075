"""The streaming body caps and the JSON shape check, on a small app over real HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from moderation.core.limits import BodyLimits, BodySizeLimit
from moderation.core.problems import install_problem_handlers
from tests.conftest import free_port

LIMIT = 1000
JSON_LIMIT = 200_000


@pytest.fixture(scope="module")
def small_app_url() -> Iterator[str]:
    app = FastAPI()
    install_problem_handlers(app)
    app.add_middleware(
        BodySizeLimit,
        limits=BodyLimits(
            json_bytes=JSON_LIMIT, multipart_bytes=LIMIT, form_bytes=LIMIT, other_bytes=LIMIT
        ),
    )

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"received": len(await request.body())}

    @app.post("/form")
    async def form(request: Request) -> dict[str, int]:
        return {"fields": len(await request.form())}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=5)


def test_a_body_under_the_cap_passes(small_app_url):
    response = httpx.post(f"{small_app_url}/echo", content=b"x" * LIMIT)
    assert response.json() == {"received": LIMIT}


def test_a_declared_oversize_body_is_refused_before_reading(small_app_url):
    response = httpx.post(f"{small_app_url}/echo", content=b"x" * (LIMIT + 1))
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


def test_a_chunked_body_is_cut_off_at_the_cap(small_app_url):
    def chunks() -> Iterator[bytes]:
        for _ in range(50):
            yield b"x" * 100

    response = httpx.post(f"{small_app_url}/echo", content=chunks())
    assert response.status_code == 413


def test_a_multipart_upload_is_cut_off_at_the_cap(small_app_url):
    def chunks() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n\r\n'
        for _ in range(50):
            yield b"x" * 100

    response = httpx.post(
        f"{small_app_url}/form",
        content=chunks(),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert response.status_code == 413


def test_each_content_type_has_its_own_cap(small_app_url):
    body = b'{"text": "' + b"x" * (LIMIT * 10) + b'"}'
    as_json = httpx.post(
        f"{small_app_url}/echo", content=body, headers={"Content-Type": "application/json"}
    )
    assert as_json.json() == {"received": len(body)}
    as_text = httpx.post(
        f"{small_app_url}/echo", content=body, headers={"Content-Type": "text/plain"}
    )
    assert as_text.status_code == 413
    assert "text/plain" in as_text.json()["detail"]


def test_json_with_more_values_than_any_request_holds_is_refused_unparsed(small_app_url):
    # Sixty thousand empty objects in 180 KB: under the byte cap, far over the value cap.
    body = b'{"images": [' + b",".join([b"{}"] * 60_000) + b"]}"
    assert len(body) < JSON_LIMIT
    response = httpx.post(
        f"{small_app_url}/echo", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["loc"] == ["body"]


def test_deep_json_is_refused_unparsed(small_app_url):
    body = b'{"a": ' + b"[" * 100 + b"]" * 100 + b"}"
    response = httpx.post(
        f"{small_app_url}/echo", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["type"] == "json_too_deep"


def test_strings_full_of_commas_and_brackets_are_not_values(small_app_url):
    body = b'{"text": "' + b",[{" * 50_000 + b'"}'
    response = httpx.post(
        f"{small_app_url}/echo", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.json() == {"received": len(body)}
