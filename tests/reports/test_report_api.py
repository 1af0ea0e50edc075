"""The agreement report over HTTP and from the command line."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

import httpx
import pytest

from moderation.cli import main
from moderation.database import get_sessionmaker, session_scope
from tests.factories import TenantKeys, make_tenant
from tests.reports.factories import add_item, make_policy, verdict


@pytest.fixture
def keys(migrated: str) -> TenantKeys:
    keys = make_tenant(migrated, "report-api")
    with session_scope(get_sessionmaker(migrated)) as session:
        version = make_policy(session, keys.tenant_id)
        for human in (("allow", []), ("block", ["hate"]), None):
            add_item(
                session,
                keys.tenant_id,
                version,
                parsed=verdict("unsafe", 0.9, ("hate", 3, 0.9)),
                auto=("block", None),
                human=human,
            )
        add_item(
            session,
            keys.tenant_id,
            version,
            parsed=verdict("safe", 0.6),
            auto=("review", "low_confidence"),
            human=("allow", []),
        )
    return keys


@pytest.fixture
def http(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=60) as client:
        yield client


def test_json_by_default(http, keys):
    response = http.get("/v1/reports/agreement", headers=keys.headers("admin"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    (section,) = body["versions"]
    assert section["submissions"] == 4 and section["reviewed"] == 3
    assert section["decisions"]["counts"][2] == [1, 0, 1]
    assert body["scope"]["tenant_id"] == str(keys.tenant_id)


def test_csv_and_html_on_request(http, keys):
    headers = keys.headers("admin")
    as_csv = http.get("/v1/reports/agreement", headers={**headers, "Accept": "text/csv"})
    assert as_csv.status_code == 200
    assert as_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    agreement = next(r for r in rows if r["table"] == "rates" and r["row"] == "agreement")
    assert (agreement["numerator"], agreement["denominator"]) == ("1", "2")
    as_html = http.get(
        "/v1/reports/agreement",
        params={"target_precision": 0.9},
        headers={**headers, "Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"},
    )
    assert as_html.status_code == 200
    assert as_html.headers["content-type"].startswith("text/html")
    assert "<!doctype html>" in as_html.text and "data:image/svg+xml;base64," in as_html.text
    assert "target precision 90%" in as_html.text


@pytest.mark.parametrize(
    ("params", "headers", "status"),
    [
        ({}, {"Accept": "image/png"}, 406),
        ({"version": 1}, {}, 422),
        ({"policy": "Not A Slug"}, {}, 422),
        ({"policy": "no-such-policy"}, {}, 404),
        ({"target_precision": 1.5}, {}, 422),
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, {}, 422),
        ({"since": "yesterday"}, {}, 422),
    ],
)
def test_bad_requests_are_problems(http, keys, params, headers, status):
    response = http.get(
        "/v1/reports/agreement", params=params, headers={**keys.headers("admin"), **headers}
    )
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == status


def test_only_admins_read_reports(http, keys):
    for role in ("ingest", "reviewer"):
        assert http.get("/v1/reports/agreement", headers=keys.headers(role)).status_code == 403
    assert http.get("/v1/reports/agreement").status_code == 401


def test_another_tenants_admin_sees_none_of_it(http, keys, migrated):
    other = make_tenant(migrated, "report-other")
    body = http.get("/v1/reports/agreement", headers=other.headers("admin")).json()
    assert body["versions"] == []


def test_command_writes_each_form(keys, tmp_path, capsys, service_env):
    for name in ("report.html", "report.csv", "report.json"):
        out = tmp_path / name
        code = main(
            [
                "report",
                "agreement",
                "--tenant",
                str(keys.tenant_id),
                "--target-precision",
                "0.9",
                "--out",
                str(out),
                "--json",
            ]
        )
        assert code == 0
        printed = json.loads(capsys.readouterr().out)
        assert printed["reviewed"] == 3 and printed["out"] == str(out)
        assert out.stat().st_size > 0
    assert json.loads((tmp_path / "report.json").read_text())["scope"]["target_precision"] == 0.9
    assert (tmp_path / "report.csv").read_text().startswith("policy,version,table")


def test_command_refuses_what_it_cannot_do(keys, tmp_path, capsys, service_env):
    assert (
        main(
            [
                "report",
                "agreement",
                "--tenant",
                str(keys.tenant_id),
                "--out",
                str(tmp_path / "r.pdf"),
            ]
        )
        == 1
    )
    assert "--out must end in" in capsys.readouterr().err
    assert main(["report", "agreement", "--tenant", "acme", "--out", str(tmp_path / "r.json")]) == 1
    assert "--tenant must be a tenant id" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(
            [
                "report",
                "agreement",
                "--tenant",
                str(keys.tenant_id),
                "--target-precision",
                "95",
                "--out",
                "r.json",
            ]
        )
    assert usage.value.code == 2
