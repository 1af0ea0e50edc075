"""No request content of any kind gets a 5xx: each class of hostile input is a 4xx problem that
names the field, over real HTTP against the running API and a real PostgreSQL.

Every class here used to reach the database (or a recursive parser) and answer 500.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.factories import TenantKeys, image_bytes, marker

PROBLEM = "application/problem+json"
INT4_OVERFLOW = 2**31


@pytest.fixture(scope="module")
def http(api_url: str) -> Iterator[httpx.Client]:
    # A new connection per request: after an unhandled error the server closes the connection,
    # and a 500 must show up as a 500 here, not as a reset on the next case.
    with httpx.Client(
        base_url=api_url, timeout=30, limits=httpx.Limits(max_keepalive_connections=0)
    ) as client:
        yield client


@pytest.fixture(scope="module")
def keys(migrated: str) -> TenantKeys:
    from tests.factories import make_tenant

    return make_tenant(migrated, "hostile")


def assert_problem(response: httpx.Response, status: int, loc: list[Any] | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status
    if loc is not None:
        locations = [error["loc"] for error in body.get("errors") or []]
        assert any(location[: len(loc)] == loc for location in locations), locations


def post_json(http: httpx.Client, keys: TenantKeys, raw: str | bytes) -> httpx.Response:
    return http.post(
        "/v1/submissions",
        content=raw,
        headers={**keys.headers(), "Content-Type": "application/json"},
    )


def submission(**fields: Any) -> dict[str, Any]:
    return {"external_id": marker(), "text": "hello", **fields}


def with_raw_metadata(metadata: str) -> str:
    """A submission whose metadata is written as raw JSON text (json.dumps would not write it)."""
    return '{"external_id": "' + marker() + '", "text": "hi", "metadata": ' + metadata + "}"


# --- NUL characters ----------------------------------------------------------------------------

NUL = "\x00"


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"external_id": f"a{NUL}b", "text": "hi"}, ["body", "external_id"]),
        (submission(text=f"hello{NUL}world"), ["body", "text"]),
        (submission(policy=f"def{NUL}ault"), ["body", "policy"]),
        (submission(metadata={f"k{NUL}": 1}), ["body", "metadata"]),
        (submission(metadata={"k": f"v{NUL}"}), ["body", "metadata", "k"]),
        (submission(metadata={"a": [{"b": f"{NUL}"}]}), ["body", "metadata", "a", 0, "b"]),
        (submission(images=[{"url": f"https://example.com/{NUL}.png"}]), ["body", "images", 0]),
        (submission(callback_url=f"https://example.com/{NUL}"), ["body", "callback_url"]),
    ],
    ids=["external_id", "text", "policy", "metadata-key", "metadata-value", "nested", "url", "cb"],
)
def test_nul_in_json_fields(http, keys, body, loc):
    assert_problem(post_json(http, keys, json.dumps(body)), 422, loc)


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"external_id": f"a{NUL}b", "text": "hi"}, ["body", "external_id"]),
        ({"external_id": marker(), "text": f"hi{NUL}"}, ["body", "text"]),
        ({"external_id": marker(), "text": "hi", "policy": f"x{NUL}"}, ["body", "policy"]),
        (
            {"external_id": marker(), "text": "hi", "metadata": '{"k": "\\u0000"}'},
            ["body", "metadata", "k"],
        ),
    ],
    ids=["external_id", "text", "policy", "metadata-escape"],
)
@pytest.mark.parametrize("form", ["multipart", "urlencoded"])
def test_nul_in_form_fields(http, keys, fields, loc, form):
    files = {"unused": ("", b"")} if form == "multipart" else None
    response = http.post("/v1/submissions", data=fields, files=files, headers=keys.headers())
    assert_problem(response, 422, loc)


@pytest.mark.parametrize(
    ("url", "loc"),
    [
        ("/v1/submissions?external_id=a%00b", ["query", "external_id"]),
        ("/v1/submissions?cursor=%00", ["query", "cursor"]),
        ("/v1/submissions?status=queued%00", ["query", "status"]),
        ("/v1/submissions?since=2026-01-01%00", ["query", "since"]),
        ("/v1/policies/def%00ault", ["path"]),
        ("/v1/policies/default/versions/1%00", ["path"]),
        ("/v1/submissions/%00", ["path"]),
    ],
)
def test_nul_in_query_and_path(http, keys, url, loc):
    assert_problem(http.get(url, headers=keys.headers("admin")), 422, loc)


# --- numbers that are not JSON -------------------------------------------------------------------


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_non_finite_numbers_in_metadata(http, keys, number):
    raw = with_raw_metadata('{"score": ' + number + "}")
    assert_problem(post_json(http, keys, raw), 422, ["body", "metadata"])


@pytest.mark.parametrize("number", ["NaN", "Infinity", "1e400"])
def test_non_finite_numbers_in_multipart_metadata(http, keys, number):
    fields = {"external_id": marker(), "text": "hi", "metadata": '{"score": ' + number + "}"}
    response = http.post("/v1/submissions", data=fields, headers=keys.headers())
    assert_problem(response, 422, ["body", "metadata"])


def test_non_finite_threshold_in_a_policy_draft(http, keys):
    category = '{"id": "spam", "name": "Spam", "definition": "unsolicited ads"}'
    draft = '{"title": "t", "instructions": "i", "min_confidence": NaN, "categories": ['
    draft += category + "]}"
    response = http.post(
        "/v1/policies/default/versions",
        content=draft,
        headers={**keys.headers("admin"), "Content-Type": "application/json"},
    )
    assert_problem(response, 422, ["body", "min_confidence"])


def test_numbers_too_long_to_parse_cheaply(http, keys):
    raw = with_raw_metadata('{"n": ' + "9" * 5000 + "}")
    assert_problem(post_json(http, keys, raw), 422, ["body"])


# --- nesting -----------------------------------------------------------------------------------


def _cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        _cursor(b"[" * 3000 + b"]" * 3000),
        _cursor(b'[["2026-01-01T00:00:00+00:00"], "x"]'),
        _cursor(b'["2026-01-01T00:00:00", "00000000-0000-0000-0000-000000000000"]'),
        _cursor(b'["2026-01-01T00:00:00+00:00\\u0000", "00000000-0000-0000-0000-000000000000"]'),
        _cursor(b'{"a": 1}'),
        _cursor(b"\xff\xfe"),
        "x" * 5000,
        "not a cursor!",
    ],
    ids=["deep", "nested", "naive-time", "nul", "object", "not-utf8", "long", "alphabet"],
)
def test_cursors_that_this_api_never_returned(http, keys, cursor):
    response = http.get("/v1/submissions", params={"cursor": cursor}, headers=keys.headers())
    assert_problem(response, 422, ["query", "cursor"])


@pytest.mark.parametrize("depth", [40, 5000])
def test_deep_multipart_metadata(http, keys, depth):
    fields = {"external_id": marker(), "text": "hi", "metadata": "[" * depth + "]" * depth}
    response = http.post("/v1/submissions", data=fields, headers=keys.headers())
    assert response.status_code in (413, 422), response.text
    assert_problem(response, response.status_code, ["body", "metadata"])


@pytest.mark.parametrize("depth", [40, 5000])
def test_deep_json_bodies(http, keys, depth):
    raw = '{"external_id": "x", "text": "hi", "metadata": {"a": %s}}' % ("[" * depth + "]" * depth)
    response = post_json(http, keys, raw)
    assert response.status_code in (413, 422), response.text
    assert_problem(response, response.status_code, ["body"])


def test_metadata_nested_beyond_its_own_limit(http, keys):
    nested: dict[str, Any] = {}
    inner = nested
    for _ in range(20):
        inner["k"] = {}
        inner = inner["k"]
    assert_problem(post_json(http, keys, json.dumps(submission(metadata=nested))), 422)


# --- integers beyond the column ----------------------------------------------------------------


@pytest.fixture(scope="module")
def stored_submission(http: httpx.Client, keys: TenantKeys) -> str:
    body = submission(images=[{"data": base64.b64encode(image_bytes(64, 64)).decode()}])
    accepted = post_json(http, keys, json.dumps(body))
    assert accepted.status_code == 202, accepted.text
    return str(accepted.json()["id"])


@pytest.mark.parametrize("position", [INT4_OVERFLOW, 10**30, -1])
def test_image_positions_beyond_the_column(http, keys, stored_submission, position):
    response = http.get(
        f"/v1/submissions/{stored_submission}/images/{position}", headers=keys.headers("reviewer")
    )
    assert_problem(response, 422, ["path", "position"])


@pytest.mark.parametrize("version", [INT4_OVERFLOW, 10**30, 0, -1])
@pytest.mark.parametrize("action", ["get", "activate"])
def test_policy_versions_beyond_the_column(http, keys, version, action):
    url = f"/v1/policies/default/versions/{version}"
    if action == "activate":
        response = http.post(f"{url}/activate", headers=keys.headers("admin"))
    else:
        response = http.get(url, headers=keys.headers("admin"))
    assert_problem(response, 422, ["path", "version"])


def test_slugs_that_could_never_name_a_policy(http, keys):
    for slug in ("a" * 200, "UPPER", "%ff%fe"):
        response = http.get(f"/v1/policies/{slug}", headers=keys.headers("admin"))
        assert_problem(response, 422, ["path", "slug"])


# --- text that is not Unicode ------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        '{"external_id": "x", "text": "lone \\ud800 surrogate"}',
        '{"external_id": "x", "text": "hi", "metadata": {"\\udc00": 1}}',
        b'{"external_id": "x", "text": "not utf-8 \xff\xfe"}',
    ],
    ids=["surrogate-text", "surrogate-key", "invalid-utf8"],
)
def test_text_that_is_not_unicode(http, keys, raw):
    assert_problem(post_json(http, keys, raw), 422, ["body"])


def test_surrogates_in_multipart_metadata(http, keys):
    fields = {"external_id": marker(), "text": "hi", "metadata": '{"k": "\\ud800"}'}
    response = http.post("/v1/submissions", data=fields, headers=keys.headers())
    assert_problem(response, 422, ["body", "metadata", "k"])


# --- URLs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http:///x", "https:///x.png", "http:\\\\example.com\\x", "http:example.com/x", "http://"],
)
@pytest.mark.parametrize("field", ["image", "callback"])
def test_urls_without_an_explicit_host(http, keys, url, field):
    body = submission(images=[{"url": url}]) if field == "image" else submission(callback_url=url)
    loc = ["body", "images", 0] if field == "image" else ["body", "callback_url"]
    assert_problem(post_json(http, keys, json.dumps(body)), 422, loc)


# --- size and shape ----------------------------------------------------------------------------


def test_millions_of_empty_images_are_refused_before_parsing(http, keys):
    body = b'{"external_id": "bomb", "images": [' + b",".join([b"{}"] * 2_000_000) + b"]}"
    assert_problem(post_json(http, keys, body), 413)


@pytest.mark.parametrize(
    "content_type",
    ["application/xml", "text/plain", "application/json-patch+json", "multipart/mixed", ""],
)
def test_content_types_no_route_takes(http, keys, content_type):
    response = http.post(
        "/v1/submissions",
        content=b'{"external_id": "x", "text": "hi"}',
        headers={**keys.headers(), "Content-Type": content_type},
    )
    assert response.status_code in (415, 422), response.text
    assert response.headers["content-type"] == PROBLEM


@pytest.mark.parametrize(
    "content_type", ["multipart/form-data", "multipart/form-data; boundary=zz"]
)
def test_malformed_multipart(http, keys, content_type):
    response = http.post(
        "/v1/submissions",
        content=b"this is not multipart",
        headers={**keys.headers(), "Content-Type": content_type},
    )
    assert_problem(response, response.status_code)
    assert 400 <= response.status_code < 500


# --- the review and webhook routes -------------------------------------------------------------

SOME_ID = "00000000-0000-0000-0000-000000000000"
TASK = f"/v1/review/tasks/{SOME_ID}"
PRIORITY_BEYOND_INT4 = b'[2147483648, "2026-01-01T00:00:00+00:00", "' + SOME_ID.encode() + b'"]'


@pytest.mark.parametrize(
    ("path", "role", "body", "loc"),
    [
        (f"{TASK}/decision", "reviewer", {"action": "allow", "notes": NUL}, "notes"),
        (f"{TASK}/escalate", "reviewer", {"notes": f"look{NUL}"}, "notes"),
        (f"/v1/submissions/{SOME_ID}/appeals", "ingest", {"reason": f"mine{NUL}"}, "reason"),
    ],
    ids=["decision-notes", "escalate-notes", "appeal-reason"],
)
def test_nul_in_review_bodies(http, keys, path, role, body, loc):
    response = http.post(path, json=body, headers=keys.headers(role))
    assert_problem(response, 422, ["body", loc])


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ({"cursor": _cursor(PRIORITY_BEYOND_INT4)}, ["query", "cursor"]),
        ({"cursor": _cursor(b"[" * 500 + b"]" * 500)}, ["query", "cursor"]),
        ({"older_than": "P999999999D"}, ["query", "older_than"]),
        ({"newer_than": "-P999999999D"}, ["query", "newer_than"]),
    ],
    ids=["priority-beyond-int4", "deep", "older-than-forever", "newer-than-forever"],
)
def test_review_queue_parameters_beyond_what_sql_holds(http, keys, query, loc):
    response = http.get("/v1/review/queue", params=query, headers=keys.headers("reviewer"))
    assert_problem(response, 422, loc)


def test_webhook_delivery_cursors(http, keys):
    response = http.get(
        "/v1/webhooks/deliveries",
        params={"cursor": _cursor(b"[" * 500 + b"]" * 500)},
        headers=keys.headers("admin"),
    )
    assert_problem(response, 422, ["query", "cursor"])


@pytest.mark.parametrize("url", ["http://exa mple.com/hook", "https://hooks.example.com/\x7f"])
def test_callback_urls_with_spaces_or_controls(http, keys, url):
    response = post_json(http, keys, json.dumps(submission(callback_url=url)))
    assert_problem(response, 422, ["body", "callback_url"])


@pytest.mark.parametrize("version", [INT4_OVERFLOW, 10**30])
def test_report_versions_beyond_the_column(http, keys, version):
    response = http.get(
        "/v1/reports/agreement",
        params={"policy": "default", "version": version},
        headers=keys.headers("admin"),
    )
    assert_problem(response, 422, ["query", "version"])
