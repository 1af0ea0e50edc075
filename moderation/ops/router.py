"""Liveness, readiness and Prometheus metrics: unauthenticated, for orchestrators."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from moderation.config import Settings
from moderation.submissions.models import Submission
from moderation.vlm.service import circuit_summary

logger = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])


@router.get(
    "/healthz",
    responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}},
)
def healthz() -> dict[str, str]:
    """Alive: the process answers. Says nothing about its dependencies (see /readyz)."""
    return {"status": "ok"}


# A probe that has not answered by then counts as down: an orchestrator's probe has a timeout
# of its own, and a slow answer is as useless to it as none.
READINESS_DEADLINE_S = 3.0

_PROBES = ThreadPoolExecutor(max_workers=6, thread_name_prefix="readyz")


def _run_checks(probes: dict[str, Callable[[], bool]]) -> list[dict[str, Any]]:
    """Run the probes side by side; report each by name, ok or not, and how long it took.

    Why a probe failed stays in the server's log: this endpoint is unauthenticated, and an
    exception's text names hosts, ports, users and library versions.
    """
    started = time.monotonic()
    futures = {name: _PROBES.submit(probe) for name, probe in probes.items()}
    wait(futures.values(), timeout=READINESS_DEADLINE_S)
    results: list[dict[str, Any]] = []
    for name, future in futures.items():
        result: dict[str, Any] = {"name": name, "ok": False}
        if not future.done():
            result["error"] = "timed out"
            logger.warning("readiness: %s did not answer within %.0fs", name, READINESS_DEADLINE_S)
        elif future.exception() is not None:
            result["error"] = "unreachable"
            logger.warning("readiness: %s failed", name, exc_info=future.exception())
        elif not future.result():
            result["error"] = "not ready"
        else:
            result["ok"] = True
        result["ms"] = round((time.monotonic() - started) * 1000)
        results.append(result)
    return results


_READINESS_SCHEMA = {
    "type": "object",
    "required": ["status", "failing", "checks"],
    "properties": {
        "status": {"type": "string", "enum": ["ready", "not_ready"]},
        "failing": {
            "type": "array",
            "items": {"type": "string", "enum": ["database", "broker", "model"]},
        },
        "checks": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "ok", "ms"],
                "properties": {
                    "name": {"type": "string"},
                    "ok": {"type": "boolean"},
                    "ms": {"type": "integer"},
                    "error": {"type": "string", "enum": ["unreachable", "timed out", "not ready"]},
                },
            },
        },
    },
}


def _readiness(ok: bool) -> dict[str, Any]:
    model = {"name": "model", "ok": ok, "ms": 12 if ok else 2001}
    if not ok:
        model["error"] = "timed out"
    return {
        "description": "ready" if ok else "a dependency does not answer",
        "content": {
            "application/json": {
                "schema": _READINESS_SCHEMA,
                "example": {
                    "status": "ready" if ok else "not_ready",
                    "failing": [] if ok else ["model"],
                    "checks": [
                        {"name": "database", "ok": True, "ms": 2},
                        {"name": "broker", "ok": True, "ms": 3},
                        model,
                    ],
                },
            }
        },
    }


@router.get("/readyz", responses={200: _readiness(True), 503: _readiness(False)})
def readyz(request: Request) -> JSONResponse:
    """Ready when the database, the broker and the model endpoint all answer.

    The body names each dependency and whether it answered; `failing` lists the ones that did
    not. It never says where they are or what they said.
    """
    factory: sessionmaker[Session] = request.app.state.sessionmaker

    def database() -> bool:
        with factory() as session:
            return session.execute(text("SELECT 1")).scalar() == 1

    def broker() -> bool:
        from moderation.queue import celery_app

        with celery_app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
        return True

    def model() -> bool:
        return bool(request.app.state.vlm_client().ping(timeout=2.0))

    checks = _run_checks({"database": database, "broker": broker, "model": model})
    model_check = next(check for check in checks if check["name"] == "model")
    _add_circuit_state(model_check, factory, request.app.state.settings)
    failing = [check["name"] for check in checks if not check["ok"]]
    return JSONResponse(
        {"status": "not_ready" if failing else "ready", "failing": failing, "checks": checks},
        status_code=503 if failing else 200,
    )


def _add_circuit_state(
    check: dict[str, Any], factory: sessionmaker[Session], settings: Settings
) -> None:
    """The workers' circuit breakers: the model counts as down while any of them is open,
    even if it answers the API's own ping (they saw it fail; it may be failing still)."""
    try:
        with factory() as session:
            summary = circuit_summary(session, settings)
    except Exception:
        return  # the database check already says what is wrong
    check["circuit"] = {
        "state": summary.state.value,
        "workers": summary.workers,
        "open_workers": summary.open_workers,
    }
    if summary.open_workers:
        check["ok"] = False
        check["error"] = (
            f"circuit breaker open in {summary.open_workers} of {summary.workers} workers"
        )


class SubmissionCollector(Collector):
    """Reads work-in-progress from Postgres, the source of truth, at scrape time."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def collect(self) -> Any:
        by_status = GaugeMetricFamily(
            "moderation_submissions",
            "Submissions by status and current action",
            labels=["status", "action"],
        )
        oldest = GaugeMetricFamily(
            "moderation_queued_oldest_age_seconds", "Age of the oldest queued submission"
        )
        with self.factory() as session:
            rows = session.execute(
                select(Submission.status, Submission.action, func.count()).group_by(
                    Submission.status, Submission.action
                )
            )
            for status, action, count in rows:
                by_status.add_metric([str(status), str(action or "")], float(count))
            age = session.scalar(
                select(func.extract("epoch", func.now() - func.min(Submission.queued_at))).where(
                    Submission.status == "queued"
                )
            )
        oldest.add_metric([], float(age or 0.0))
        yield by_status
        yield oldest


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format",
            "content": {
                "text/plain": {
                    "schema": {"type": "string"},
                    "example": 'moderation_submissions{status="decided",action="allow"} 42.0\n',
                }
            },
        }
    },
)
def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
