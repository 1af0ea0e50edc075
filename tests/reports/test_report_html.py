"""The HTML report, opened in a real browser: no errors, and every chart loads."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from html import unescape

import pytest

from moderation.database import get_sessionmaker, session_scope
from moderation.reports.render import render_html
from moderation.reports.service import ReportRequest, agreement_report
from moderation.tenants.service import create_tenant
from tests.reports.factories import add_item, add_shadow_outcome, make_policy, verdict

# Put first in <head>, so it hears every error, and reports on the page once all has loaded.
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", (event) => {
  const source = (event.target && event.target.src) || "";
  window.__errors.push(event.message || "failed to load " + source.slice(0, 60));
}, true);
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  document.body.setAttribute("data-probe", JSON.stringify({
    images: images.length,
    loaded: images.filter((i) => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0).length,
    errors: window.__errors,
    width: document.documentElement.scrollWidth,
  }));
});
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "no chromium on this machine: install Debian's `chromium` package "
        "(apt-get install -y chromium; .ci/run does this) to run the browser check"
    )


def test_report_renders_in_a_browser_with_every_chart(migrated, tmp_path):
    browser = chromium()
    with session_scope(get_sessionmaker(migrated)) as session:
        tenant = create_tenant(
            session, f"html-{uuid.uuid4().hex[:6]}", with_policy_templates=False
        ).id
        version = make_policy(session, tenant)
        cases = [
            (verdict("unsafe", 0.9, ("hate", 3, 0.9)), ("block", None), ("block", ["hate"])),
            (verdict("unsafe", 0.85, ("hate", 2, 0.85)), ("restrict", None), ("allow", [])),
            (
                verdict("unsafe", 0.7, ("violence", 3, 0.7)),
                ("review", "below_threshold"),
                ("block", ["violence"]),
            ),
            (verdict("safe", 0.95), ("allow", None), ("allow", [])),
            (verdict("safe", 0.55), ("review", "low_confidence"), ("restrict", ["spam"])),
            (
                verdict("unsafe", 0.95, ("spam", 1, 0.95)),
                ("restrict", None),
                ("restrict", ["spam"]),
            ),
        ]
        shadow = make_policy(session, tenant, min_confidence=0.7)
        for round_ in range(4):
            for parsed, auto, human in cases:
                item = add_item(
                    session,
                    tenant,
                    version,
                    parsed=parsed,
                    auto=auto,
                    human=human,
                    rating_probability=0.5 + 0.1 * round_,
                )
                add_shadow_outcome(session, item, shadow, human[0] if round_ else auto[0])
        add_item(session, tenant, version, parsed=None, auto=("review", "fetch_failed"), calls=0)
        report = agreement_report(session, ReportRequest(tenant_id=tenant))
    page = render_html(report)
    assert "<script" not in page, "the report itself runs no scripts"
    assert page.count("data:image/svg+xml;base64,") == 3
    assert "Shadow versions" in page

    probed = tmp_path / "report.html"
    probed.write_text(page.replace("<head>", "<head>\n" + PROBE, 1), encoding="utf-8")
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--window-size=1280,4000",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probed.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r'data-probe="([^"]*)"', result.stdout)
    assert found, f"the page never finished loading:\n{result.stderr[-2000:]}"
    probe = json.loads(unescape(found.group(1)))
    assert probe["errors"] == []
    assert probe["images"] == 3 and probe["loaded"] == 3
    # Nothing spills sideways out of a 1280-pixel window.
    assert probe["width"] <= 1280
