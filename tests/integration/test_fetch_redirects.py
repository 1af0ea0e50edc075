"""An image URL that redirects somewhere no fetch may go ends in review as `fetch_failed`."""

from __future__ import annotations

import pytest

from tests.factories import marker, wait_for_outcome


@pytest.mark.parametrize(
    "location",
    [
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
        "file:///etc/passwd",
        "http://169.254.169.254/latest/meta-data/",
        "https://xn--/",
    ],
)
def test_a_redirect_out_of_bounds_is_a_fetch_failure(client, tenant, image_server, location):
    url = image_server.redirect(f"/bounce/{marker()}.png", location)
    accepted = client.post(
        "/v1/submissions",
        json={"external_id": marker(), "images": [{"url": url}]},
        headers=tenant.headers(),
    )
    assert accepted.status_code == 202, accepted.text

    result = wait_for_outcome(client, accepted.json()["id"], tenant.headers())

    assert result["decision"]["action"] == "review"
    assert result["decision"]["reason"] == "fetch_failed"
