"""Backtests judged in this process: submissions decided by the real pipeline against the fake
model, then a draft version run over them by the real runner."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import delete

from moderation.backtests import service
from moderation.backtests.runner import run_backtest_job
from moderation.backtests.schemas import BacktestCreate, BacktestRead
from moderation.config import Settings, get_settings
from moderation.database import get_sessionmaker, session_scope
from moderation.jobs.models import Job
from moderation.pipeline.moderate import moderate_submission
from moderation.pipeline.runtime import PipelineRuntime
from moderation.policies import service as policies
from moderation.vlm.client import VLMClient
from tests.factories import TenantKeys, make_queued_submission, make_tenant, marker
from tests.fakes import fake_vlm as fake
from tests.fakes.fake_vlm import FakeVLMServer, Reply

DRAFT_WORDS = "Treat any visible weapon as a violation."

ALLOW = fake.verdict(fake.safe_verdict(0.97))
BLOCK = fake.verdict(fake.unsafe_verdict("violence", 3, 0.95))
UNSURE = fake.verdict(fake.unsafe_verdict("violence", 2, 0.5))


@pytest.fixture
def tenant(migrated: str) -> TenantKeys:
    return make_tenant(migrated)


@pytest.fixture
def runtime_with(migrated: str) -> Iterator[Callable[..., PipelineRuntime]]:
    """A worker's runtime in this process, with settings of the test's choosing."""
    made: list[PipelineRuntime] = []

    def build(**settings: Any) -> PipelineRuntime:
        chosen: Settings = get_settings().model_copy(update=settings)
        runtime = PipelineRuntime(chosen, get_sessionmaker(migrated), VLMClient(chosen))
        made.append(runtime)
        return runtime

    yield build
    for runtime in made:
        runtime.vlm.close()


@dataclass
class Past:
    """Decided submissions of a tenant and a draft version to run over them."""

    database_url: str
    tenant: TenantKeys
    fake_vlm: FakeVLMServer
    runtime: PipelineRuntime
    # The marker in each submission's caption, which picks its script in the fake model.
    markers: dict[uuid.UUID, str] = field(default_factory=dict)

    def decided(self, live: Reply, draft: Reply | list[Reply], *, images: int = 1) -> uuid.UUID:
        """A submission the pipeline decided on `live`; the draft will be answered `draft`."""
        case = marker()
        later = draft if isinstance(draft, list) else [draft]
        self.fake_vlm.script(case, [live, *later])
        submission = make_queued_submission(
            self.database_url, self.tenant, f"caption {case}", images=images
        )
        moderate_submission(submission, self.runtime)
        self.markers[submission] = case
        return submission

    def draft_version(self, words: str = DRAFT_WORDS) -> int:
        with session_scope(get_sessionmaker(self.database_url)) as session:
            _, v1 = policies.version_document(session, self.tenant.tenant_id, "default", 1)
            body = v1.model_dump(mode="json", exclude={"slug", "version"})
            body["instructions"] = f"{body['instructions']}\n{words}"
            return policies.create_draft_version(
                session, self.tenant.tenant_id, "default", body
            ).version

    def start(self, version: int, **sample: Any) -> uuid.UUID:
        """Start a backtest and keep its job for this test's own runs: a worker of the test
        session (if one is up) would otherwise pick it from the jobs table."""
        request = BacktestCreate(policy="default", draft_version=version, sample=sample)
        with session_scope(get_sessionmaker(self.database_url)) as session:
            started = service.start_backtest(
                session, self.tenant.tenant_id, request, requested_by="test"
            )
            session.execute(delete(Job).where(Job.key == service.run_job_key(started.id)))
        return started.id

    def run_to_end(self, backtest_id: uuid.UUID, runtime: PipelineRuntime | None = None) -> int:
        """Run the job as the sweeper would, as often as it asks; how many runs it took."""
        runs = 0
        while run_backtest_job(backtest_id, runtime or self.runtime) is not None:
            runs += 1
            assert runs < 200, "the backtest never ended"
        return runs + 1

    def read(self, backtest_id: uuid.UUID) -> BacktestRead:
        with session_scope(get_sessionmaker(self.database_url)) as session:
            return service.read_backtest(session, self.tenant.tenant_id, backtest_id)


@pytest.fixture
def past(migrated: str, tenant: TenantKeys, fake_vlm: FakeVLMServer, runtime_with: Any) -> Past:
    return Past(migrated, tenant, fake_vlm, runtime_with())
