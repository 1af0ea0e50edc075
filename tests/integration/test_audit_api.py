"""A reviewer sees a submission's history as a chain: positions, links and hashes."""

from __future__ import annotations

import itertools

from tests.factories import TenantKeys, image_b64, marker, wait_for_outcome
from tests.fakes import fake_vlm as fake


def test_the_audit_trail_shows_the_chain(client, tenant: TenantKeys, fake_vlm):
    case = marker()
    fake_vlm.script(case, [fake.verdict(fake.safe_verdict())])
    accepted = client.post(
        "/v1/submissions",
        json={"external_id": marker(), "text": f"hi {case}", "images": [{"data": image_b64()}]},
        headers=tenant.headers(),
    ).json()
    wait_for_outcome(client, accepted["id"], tenant.headers())
    response = client.get(
        f"/v1/submissions/{accepted['id']}/audit", headers=tenant.headers("reviewer")
    )
    assert response.status_code == 200, response.text
    events = response.json()
    assert [e["event"] for e in events][:2] == ["received", "queued"]
    # The inline original is deleted right after the final decision.
    assert [e["event"] for e in events][-2:] == ["decided", "media_purged"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["prev_sha256"] is None
    for before, after in itertools.pairwise(events):
        assert after["prev_sha256"] == before["sha256"]
    assert all(len(e["sha256"]) == 64 for e in events)
    assert len({e["sha256"] for e in events}) == len(events)
