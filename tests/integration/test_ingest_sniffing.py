"""A file that is not an image is refused at ingest with 415, not accepted and failed later."""

from __future__ import annotations

import base64

import pytest

from tests.factories import image_bytes, marker

PDF = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n"
TEXT = b"just some text, saved as photo.jpg\n"


@pytest.mark.parametrize("data", [PDF, TEXT], ids=["pdf", "text"])
@pytest.mark.parametrize("form", ["plain", "data-url"])
def test_inline_files_that_are_not_images_are_415(client, tenant, data, form):
    encoded = base64.b64encode(data).decode()
    inline = f"data:image/jpeg;base64,{encoded}" if form == "data-url" else encoded
    body = {
        "external_id": marker(),
        "text": "hi",
        "images": [{"data": base64.b64encode(image_bytes(32, 32)).decode()}, {"data": inline}],
    }
    response = client.post("/v1/submissions", json=body, headers=tenant.headers())
    assert response.status_code == 415, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["loc"] == ["body", "images", 1]
    # Nothing was stored: the same external_id with a real image is a new submission.
    body["images"] = body["images"][:1]
    assert client.post("/v1/submissions", json=body, headers=tenant.headers()).status_code == 202


@pytest.mark.parametrize("data", [PDF, TEXT], ids=["pdf", "text"])
def test_uploaded_files_that_are_not_images_are_415(client, tenant, data):
    response = client.post(
        "/v1/submissions",
        data={"external_id": marker(), "text": "hi"},
        files=[("images", ("photo.jpg", data, "image/jpeg"))],
        headers=tenant.headers(),
    )
    assert response.status_code == 415, response.text
    assert response.json()["errors"][0]["loc"] == ["body", "images", 0]


def test_real_images_are_accepted_whatever_their_declared_type(client, tenant):
    response = client.post(
        "/v1/submissions",
        data={"external_id": marker(), "text": "hi"},
        files=[("images", ("scan.pdf", image_bytes(32, 32, fmt="GIF"), "application/pdf"))],
        headers=tenant.headers(),
    )
    assert response.status_code == 202, response.text
