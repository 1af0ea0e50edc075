"""End to end: HTTP in, real worker process, fake Qwen-VL over HTTP, decision stored."""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.factories import TenantKeys, image_b64, image_bytes, marker, wait_for_outcome
from tests.fakes import fake_vlm as fake
from tests.fakes.fake_vlm import FakeVLMServer
from tests.fakes.image_server import ImageServer


def submit(client: httpx.Client, tenant: TenantKeys, **body: object) -> dict[str, object]:
    body.setdefault("external_id", marker())
    response = client.post("/v1/submissions", json=body, headers=tenant.headers())
    assert response.status_code == 202, response.text
    return dict(response.json())


def moderate(
    client: httpx.Client,
    tenant: TenantKeys,
    fake_vlm: FakeVLMServer,
    replies: list[fake.Reply],
    *,
    with_image: bool = True,
) -> dict[str, object]:
    case = marker()
    fake_vlm.script(case, replies)
    images = [{"data": image_b64()}] if with_image else []
    accepted = submit(client, tenant, text=f"caption {case}", images=images)
    assert accepted["status"] == "queued"
    return wait_for_outcome(client, str(accepted["id"]), tenant.headers())


def test_safe_upload_is_allowed_with_full_provenance(client, tenant, fake_vlm):
    result = moderate(client, tenant, fake_vlm, [fake.verdict(fake.safe_verdict(0.96))])

    assert result["status"] == "decided"
    assert result["decision"]["action"] == "allow"
    assert result["decision"]["source"] == "model"
    [verdict] = result["verdicts"]
    assert verdict["rating"] == "safe" and verdict["confidence"] == 0.96
    assert 0.9 < verdict["rating_probability"] < 1.0  # read from the server's logprobs
    assert verdict["model"] == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert verdict["policy"] == "default" and verdict["policy_version"] == 1
    assert len(verdict["prompt_sha256"]) == 64
    assert verdict["input_tokens"] > 0 and verdict["output_tokens"] > 0
    [image] = result["images"]
    assert image["mime"] == "image/jpeg" and image["source_mime"] == "image/png"
    assert image["width"] % 28 == 0 and image["height"] % 28 == 0
    assert image["tokens"] <= 1024
    assert len(image["sha256"]) == 64


def test_unsafe_above_threshold_is_blocked(client, tenant, fake_vlm):
    result = moderate(
        client, tenant, fake_vlm, [fake.verdict(fake.unsafe_verdict("violence", 3, 0.93))]
    )
    assert result["decision"]["action"] == "block"
    assert result["decision"]["categories"][0]["category"] == "violence"
    assert result["decision"]["categories"][0]["severity"] == 3


def test_restrict_threshold_restricts(client, tenant, fake_vlm):
    result = moderate(
        client, tenant, fake_vlm, [fake.verdict(fake.unsafe_verdict("sexual", 2, 0.9))]
    )
    assert result["decision"]["action"] == "restrict"


def test_child_safety_blocks_at_severity_one(client, tenant, fake_vlm):
    result = moderate(
        client, tenant, fake_vlm, [fake.verdict(fake.unsafe_verdict("child_safety", 1, 0.85))]
    )
    assert result["decision"]["action"] == "block"


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (fake.verdict(fake.unsafe_verdict("harassment", 1, 0.55)), "below_threshold"),
        (fake.verdict(fake.unsafe_verdict("violence", 4, 0.5)), "below_threshold"),
        (fake.verdict(fake.safe_verdict(0.6)), "low_confidence"),
    ],
)
def test_uncertain_verdicts_go_to_review(client, tenant, fake_vlm, reply, reason):
    result = moderate(client, tenant, fake_vlm, [reply])
    assert result["status"] == "in_review"
    assert result["decision"]["action"] == "review"
    assert result["decision"]["reason"] == reason


@pytest.mark.parametrize("wrap", ["fenced", "think", "think_close_only", "prose"])
def test_real_qwen_output_quirks_are_understood(client, tenant, fake_vlm, wrap):
    result = moderate(
        client, tenant, fake_vlm, [fake.verdict(fake.unsafe_verdict("hate", 3, 0.9), wrap=wrap)]
    )
    assert result["decision"]["action"] == "block"
    assert len(result["verdicts"]) == 1


def test_invalid_output_is_asked_again_once(client, tenant, fake_vlm):
    replies = [fake.raw("I think this image is fine."), fake.verdict(fake.safe_verdict())]
    result = moderate(client, tenant, fake_vlm, replies)
    assert result["decision"]["action"] == "allow"
    assert [v["error"] is None for v in result["verdicts"]] == [False, True]


def test_truncated_output_is_asked_again(client, tenant, fake_vlm):
    replies = [
        fake.raw('{"rating": "unsafe", "confidence": 0.9, "violations": [{"cat', "length"),
        fake.verdict(fake.safe_verdict()),
    ]
    result = moderate(client, tenant, fake_vlm, replies)
    assert result["decision"]["action"] == "allow"
    assert result["verdicts"][0]["finish_reason"] == "length"


def test_invalid_output_twice_goes_to_review(client, tenant, fake_vlm):
    result = moderate(client, tenant, fake_vlm, [fake.raw("no json here")])
    assert result["decision"]["action"] == "review"
    assert result["decision"]["reason"] == "invalid_model_output"
    assert len(result["verdicts"]) == 2


def test_unknown_category_is_an_invalid_verdict(client, tenant, fake_vlm):
    result = moderate(
        client, tenant, fake_vlm, [fake.verdict(fake.unsafe_verdict("piracy", 3, 0.99))]
    )
    assert result["decision"]["reason"] == "invalid_model_output"


def test_model_down_after_retries_goes_to_review(client, tenant, fake_vlm):
    result = moderate(client, tenant, fake_vlm, [fake.error(503)])
    assert result["decision"]["action"] == "review"
    assert result["decision"]["reason"] == "model_unavailable"
    # MODERATION_VLM_MAX_RETRIES=2 in the test environment: three calls, all recorded.
    assert len(result["verdicts"]) == 3
    assert all(v["error"] for v in result["verdicts"])


def test_rate_limit_is_retried_after_the_servers_delay(client, tenant, fake_vlm):
    replies = [fake.error(429, headers={"Retry-After": "1"}), fake.verdict(fake.safe_verdict())]
    result = moderate(client, tenant, fake_vlm, replies)
    assert result["decision"]["action"] == "allow"


def test_model_timeout_then_recovery(client, tenant, fake_vlm):
    replies = [fake.delay(3.0), fake.verdict(fake.safe_verdict())]
    result = moderate(client, tenant, fake_vlm, replies)
    assert result["decision"]["action"] == "allow"


def test_provider_refusal_goes_to_review_without_retry(client, tenant, fake_vlm):
    refusal = fake.error(
        400,
        body={
            "error": {
                "code": "data_inspection_failed",
                "message": "Input data may contain inappropriate content.",
                "type": "data_inspection_failed",
            }
        },
    )
    result = moderate(client, tenant, fake_vlm, [refusal])
    assert result["decision"]["reason"] == "provider_refused"
    assert len(result["verdicts"]) == 1


def test_undecodable_image_goes_to_review_without_a_model_call(client, tenant, fake_vlm):
    case = marker()
    # It starts like a PNG, so ingest takes it; only decoding finds out it is not one.
    broken = base64.b64encode(b"\x89PNG\r\n\x1a\n<html>not an image</html>").decode()
    accepted = submit(client, tenant, text=case, images=[{"data": broken}])
    result = wait_for_outcome(client, str(accepted["id"]), tenant.headers())
    assert result["decision"]["reason"] == "decode_failed"
    assert result["decision"]["source"] == "system"
    assert result["verdicts"] == []
    assert fake_vlm.requests_for(case) == []


def test_image_url_on_the_allow_list_is_fetched(
    client, tenant, fake_vlm, image_server: ImageServer
):
    case = marker()
    url = image_server.put(f"/{case}.jpg", image_bytes(1920, 1080, fmt="JPEG"))
    accepted = submit(client, tenant, text=case, images=[{"url": url}])
    result = wait_for_outcome(client, str(accepted["id"]), tenant.headers())
    assert result["decision"]["action"] == "allow"
    [image] = result["images"]
    assert image["source_url"] == url and image["source_mime"] == "image/jpeg"
    assert image["width"] > image["height"]
    assert image_server.hits[f"/{case}.jpg"] == 1


def test_missing_image_url_is_a_fetch_failure(client, tenant, image_server: ImageServer):
    accepted = submit(client, tenant, images=[{"url": image_server.url("/nothing-here.jpg")}])
    result = wait_for_outcome(client, str(accepted["id"]), tenant.headers())
    assert result["decision"]["reason"] == "fetch_failed"
    assert "404" in result["images"][0]["error"]


def test_private_address_is_never_fetched(client, tenant):
    accepted = submit(client, tenant, images=[{"url": "http://169.254.169.254/latest/meta-data/"}])
    result = wait_for_outcome(client, str(accepted["id"]), tenant.headers())
    assert result["decision"]["reason"] == "fetch_failed"


def test_multipart_upload(client, tenant, fake_vlm):
    case = marker()
    fake_vlm.script(case, [fake.verdict(fake.unsafe_verdict("weapons_drugs", 4, 0.97))])
    response = client.post(
        "/v1/submissions",
        headers=tenant.headers(),
        data={"external_id": case, "text": f"for sale {case}", "metadata": '{"surface": "feed"}'},
        files=[
            ("images", ("a.png", image_bytes(300, 300), "image/png")),
            ("images", ("b.webp", image_bytes(200, 400, fmt="WEBP"), "image/webp")),
        ],
    )
    assert response.status_code == 202, response.text
    result = wait_for_outcome(client, response.json()["id"], tenant.headers())
    assert result["decision"]["action"] == "block"
    assert [i["source_mime"] for i in result["images"]] == ["image/png", "image/webp"]
    assert result["metadata"] == {"surface": "feed"}
    [request] = fake_vlm.requests_for(case)
    parts = request["messages"][-1]["content"]
    assert sum(1 for part in parts if part["type"] == "image_url") == 2


def test_text_only_submission(client, tenant, fake_vlm):
    result = moderate(
        client,
        tenant,
        fake_vlm,
        [fake.verdict(fake.unsafe_verdict("scam_spam", 3, 0.9, source="text", image=None))],
        with_image=False,
    )
    assert result["decision"]["action"] == "block"
    assert result["images"] == []


def test_reviewer_sees_the_normalized_image(client, tenant, fake_vlm):
    result = moderate(client, tenant, fake_vlm, [fake.verdict(fake.safe_verdict())])
    response = client.get(
        f"/v1/submissions/{result['id']}/images/0", headers=tenant.headers("reviewer")
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert response.content[:3] == b"\xff\xd8\xff"
    assert (
        client.get(
            f"/v1/submissions/{result['id']}/images/0", headers=tenant.headers("ingest")
        ).status_code
        == 403
    )


def test_audit_trail_tells_the_story(client, tenant, fake_vlm):
    result = moderate(client, tenant, fake_vlm, [fake.verdict(fake.safe_verdict())])
    response = client.get(
        f"/v1/submissions/{result['id']}/audit", headers=tenant.headers("reviewer")
    )
    assert response.status_code == 200
    events = [event["event"] for event in response.json()]
    assert events == [
        "received",
        "queued",
        "processing_started",
        "model_verdict",
        "decided",
        "media_purged",  # the inline original, once the decision is final
    ]
    assert (
        client.get(
            f"/v1/submissions/{result['id']}/audit", headers=tenant.headers("ingest")
        ).status_code
        == 403
    )


def test_identical_content_reuses_the_earlier_verdict(client, tenant, fake_vlm, migrated):
    from tests.factories import make_tenant

    case = marker()
    fake_vlm.script(case, [fake.verdict(fake.unsafe_verdict("violence", 3, 0.95))])
    image = image_b64(color=(1, 2, 3))
    first = submit(client, tenant, text=f"same {case}", images=[{"data": image}])
    first_result = wait_for_outcome(client, str(first["id"]), tenant.headers())
    assert first_result["decision"]["source"] == "model"

    second = submit(client, tenant, text=f"same {case}", images=[{"data": image}])
    result = wait_for_outcome(client, str(second["id"]), tenant.headers())
    assert result["decision"]["action"] == "block"
    assert result["decision"]["source"] == "cache"
    [verdict] = result["verdicts"]
    assert verdict["latency_ms"] == 0 and verdict["reused_from"] is not None
    assert verdict["prompt_sha256"] == first_result["verdicts"][0]["prompt_sha256"]
    assert len(fake_vlm.requests_for(case)) == 1

    # Another tenant's identical upload is judged afresh: verdicts are not shared across tenants.
    other = make_tenant(migrated, "other")
    third = submit(client, other, text=f"same {case}", images=[{"data": image}])
    assert (
        wait_for_outcome(client, str(third["id"]), other.headers())["decision"]["source"] == "model"
    )
    assert len(fake_vlm.requests_for(case)) == 2
