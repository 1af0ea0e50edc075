"""The streaming body cap, on a small app over real HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from moderation.core.limits import BodySizeLimit
from moderation.core.problems import install_problem_handlers
from tests.conftest import free_port

LIMIT = 1000


@pytest.fixture(scope="module")
def small_app_url() -> Iterator[str]:
    app = FastAPI()
    install_problem_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=LIMIT)

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
