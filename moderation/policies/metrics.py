"""Shadow-run counters for Prometheus, read from Postgres at scrape time like the others.

Workers write the per-tenant daily budget rows; summing them here makes the counts right
however many worker processes there are.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from moderation.policies import repository


class ShadowCollector(Collector):
    """Model calls made for shadow policy versions, and shadow runs that were not made."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def collect(self) -> Iterator[Metric]:
        with self.factory() as session:
            calls, skipped, failed = repository.shadow_usage_totals(session)
        made = CounterMetricFamily(
            "moderation_shadow_model_calls", "Model calls made for shadow policy versions"
        )
        made.add_metric([], float(calls))
        not_run = CounterMetricFamily(
            "moderation_shadow_runs_skipped",
            "Shadow runs not made or not finished; the live decision stood either way",
            labels=["reason"],
        )
        not_run.add_metric(["daily_cap"], float(skipped))
        not_run.add_metric(["failed"], float(failed))
        yield made
        yield not_run
