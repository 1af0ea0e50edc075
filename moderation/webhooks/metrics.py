"""Callback outcomes for /metrics, read from Postgres at scrape time like the other gauges."""

from __future__ import annotations

from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from moderation.webhooks import repository
from moderation.webhooks.models import AttemptOutcome, DeliveryStatus


class WebhookCollector(Collector):
    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def collect(self) -> Any:
        deliveries = GaugeMetricFamily(
            "moderation_webhook_deliveries",
            "Callback deliveries by status (pending, delivered, failed, disabled)",
            labels=["status"],
        )
        attempts = GaugeMetricFamily(
            "moderation_webhook_attempts",
            "Callback attempts by outcome (succeeded, failed, gone)",
            labels=["outcome"],
        )
        disabled = GaugeMetricFamily(
            "moderation_webhook_endpoints_disabled", "Receiver URLs that answered 410 Gone"
        )
        with self.factory() as session:
            by_status = dict(repository.count_deliveries_by_status(session))
            by_outcome = dict(repository.count_attempts_by_outcome(session))
            disabled_count = repository.count_disabled_endpoints(session)
        # Every label is reported, zeros included, so alerts need no absent() special cases.
        for status in DeliveryStatus:
            deliveries.add_metric([status.value], float(by_status.get(status.value, 0)))
        for outcome in AttemptOutcome:
            attempts.add_metric([outcome.value], float(by_outcome.get(outcome.value, 0)))
        disabled.add_metric([], float(disabled_count))
        yield deliveries
        yield attempts
        yield disabled
