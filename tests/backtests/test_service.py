"""Starting and reading backtests: every bad field named, one tenant's backtests its own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from moderation.backtests import service
from moderation.backtests.schemas import BacktestCreate
from moderation.core.errors import NotFound, ValidationFailed
from moderation.database import get_sessionmaker, session_scope
from tests.backtests.conftest import ALLOW, BLOCK, Past
from tests.factories import make_tenant


def refused(past: Past, **fields) -> list:
    request = BacktestCreate(**{"policy": "default", "draft_version": 1, **fields})
    with (
        pytest.raises(ValidationFailed) as caught,
        session_scope(get_sessionmaker(past.database_url)) as session,
    ):
        service.start_backtest(session, past.tenant.tenant_id, request, requested_by="t")
    return [error["loc"] for error in caught.value.errors or []]


def test_an_unknown_policy_or_version_or_an_empty_sample_is_named(past: Past):
    past.decided(ALLOW, BLOCK)
    assert refused(past, policy="nope") == [["body", "policy"]]
    assert refused(past, draft_version=99) == [["body", "draft_version"]]
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    window = {"since": long_ago, "until": long_ago + timedelta(days=1)}
    assert refused(past, sample=window) == [["body", "sample"]]
    assert refused(past, sample={"only_reviewed": True}) == [["body", "sample"]]


def test_the_request_schema_names_each_bad_field():
    now = datetime.now(UTC)
    cases = {
        ("sample", "until"): {"sample": {"since": now, "until": now - timedelta(hours=1)}},
        ("sample", "since"): {"sample": {"since": "2026-11-01T00:00:00"}},
        ("sample", "limit"): {"sample": {"limit": 0}},
        ("draft_version",): {"draft_version": 0},
        ("policy",): {"policy": "Not A Slug"},
        ("sample", "surprise"): {"sample": {"surprise": 1}},
    }
    for loc, fields in cases.items():
        with pytest.raises(ValidationError) as caught:
            BacktestCreate.model_validate({"policy": "default", "draft_version": 1, **fields})
        assert [error["loc"] for error in caught.value.errors()] == [loc]


def test_another_tenant_neither_reads_nor_lists_a_backtest(past: Past):
    past.decided(ALLOW, BLOCK)
    backtest_id = past.start(1)
    other = make_tenant(past.database_url, "other")
    with session_scope(get_sessionmaker(past.database_url)) as session:
        with pytest.raises(NotFound):
            service.read_backtest(session, other.tenant_id, backtest_id)
        assert service.list_backtests(session, other.tenant_id, limit=50, cursor=None).items == []
        mine = service.list_backtests(session, past.tenant.tenant_id, limit=50, cursor=None)
        assert [b.id for b in mine.items] == [backtest_id]
        assert service.tenant_of_backtest(session, backtest_id) == past.tenant.tenant_id


def test_the_list_pages_newest_first(past: Past):
    past.decided(ALLOW, BLOCK)
    started = [past.start(1) for _ in range(3)]
    with session_scope(get_sessionmaker(past.database_url)) as session:
        first = service.list_backtests(session, past.tenant.tenant_id, limit=2, cursor=None)
        assert first.next_cursor is not None
        second = service.list_backtests(
            session, past.tenant.tenant_id, limit=2, cursor=first.next_cursor
        )
    assert [b.id for b in first.items + second.items] == started[::-1]
    assert second.next_cursor is None
    queued = first.items[0]
    assert queued.status == "queued" and queued.progress.pending == queued.progress.total == 1
    assert queued.active_version == 1 and queued.link == f"/v1/backtests/{queued.id}"
