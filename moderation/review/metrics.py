"""Review queue gauges for Prometheus, read from Postgres at scrape time like the others."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from moderation.review import repository
from moderation.review.models import TaskKind


class ReviewCollector(Collector):
    """Queue depth, the oldest waiting task, SLA breaches, and decisions by who made them."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "moderation_review_queue_depth",
            "Review tasks waiting for a reviewer, by kind and priority (higher is more urgent)",
            labels=["kind", "priority"],
        )
        oldest = GaugeMetricFamily(
            "moderation_review_oldest_task_age_seconds",
            "Age of the oldest review task still waiting, by kind",
            labels=["kind"],
        )
        breached = GaugeMetricFamily(
            "moderation_review_sla_breached_tasks",
            "Waiting review tasks past their due time, by kind",
            labels=["kind"],
        )
        decided_late = CounterMetricFamily(
            "moderation_review_decided_late",
            "Review tasks decided after their due time, by kind",
            labels=["kind"],
        )
        decisions = CounterMetricFamily(
            "moderation_decisions",
            "Decisions recorded, by source (model, reviewer, appeal...) and action",
            labels=["source", "action"],
        )
        with self.factory() as session:
            for kind, priority, count in repository.waiting_by_kind_and_priority(session):
                depth.add_metric([kind, str(priority)], float(count))
            waiting = {
                kind: (age, late)
                for kind, age, late in repository.waiting_age_and_breaches_by_kind(session)
            }
            late_decided = dict(repository.decided_late_by_kind(session))
            for source, action, count in repository.decisions_by_source_and_action(session):
                decisions.add_metric([source, action], float(count))
        # Every kind is reported, so an empty queue reads as zero rather than as no data.
        for kind in TaskKind:
            age, late = waiting.get(kind.value, (0.0, 0))
            oldest.add_metric([kind.value], age)
            breached.add_metric([kind.value], float(late))
            decided_late.add_metric([kind.value], float(late_decided.get(kind.value, 0)))
        yield depth
        yield oldest
        yield breached
        yield decided_late
        yield decisions
