"""Prometheus collectors for outages and limits, read from Postgres at scrape time.

Workers publish what only they know (their circuit breakers) to Postgres, so whichever API
process is scraped reports the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from moderation.config import Settings
from moderation.submissions import repository as submissions
from moderation.tenants import repository as tenants
from moderation.vlm.breaker import CircuitState
from moderation.vlm.service import circuit_summary


class OutageCollector(Collector):
    """Model circuit breakers, re-drives waiting, and each tenant's token spending today."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings) -> None:
        self.factory = factory
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        circuits = GaugeMetricFamily(
            "moderation_model_circuit_workers",
            "Live worker processes by the state of their model circuit breaker",
            labels=["state"],
        )
        circuit_open = GaugeMetricFamily(
            "moderation_model_circuit_open",
            "1 while any worker's model circuit breaker is open or probing",
        )
        redrive = GaugeMetricFamily(
            "moderation_submissions_awaiting_redrive",
            "Submissions an outage sent to review that will be judged again automatically",
        )
        used = GaugeMetricFamily(
            "moderation_tenant_tokens_today",
            "Model tokens (prompt + completion) a tenant spent today, UTC",
            labels=["tenant"],
        )
        budget = GaugeMetricFamily(
            "moderation_tenant_daily_token_budget",
            "A tenant's daily model-token budget (tenants with one)",
            labels=["tenant"],
        )
        exhausted = GaugeMetricFamily(
            "moderation_tenant_budget_exhausted",
            "1 when the tenant's daily token budget is spent: its submissions go to review",
            labels=["tenant"],
        )
        with self.factory() as session:
            summary = circuit_summary(session, self.settings)
            waiting = submissions.count_awaiting_redrive(session)
            usage = tenants.token_usage_today(session)
        for state in CircuitState:
            circuits.add_metric([state.value], float(summary.by_state.get(state, 0)))
        circuit_open.add_metric([], 1.0 if summary.open_workers else 0.0)
        redrive.add_metric([], float(waiting))
        for tenant_id, daily_budget, tokens in usage:
            used.add_metric([str(tenant_id)], float(tokens))
            if daily_budget is not None:
                budget.add_metric([str(tenant_id)], float(daily_budget))
                exhausted.add_metric([str(tenant_id)], 1.0 if tokens >= daily_budget else 0.0)
        yield from (circuits, circuit_open, redrive, used, budget, exhausted)
