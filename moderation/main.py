"""The API application."""

from __future__ import annotations

import functools
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client.registry import CollectorRegistry

from moderation.backtests.router import router as backtests_router
from moderation.config import Settings, get_settings
from moderation.core.limits import BodyLimits
from moderation.core.middleware import RequestBoundary
from moderation.core.openapi import install_openapi, operation_id
from moderation.core.problems import install_problem_handlers, problem_response
from moderation.core.rate_limits import RateLimiter
from moderation.database import (
    DATABASE_OUTAGES,
    AsyncPool,
    database_unavailable,
    get_sessionmaker,
    resolve_database_url,
)
from moderation.ops.collectors import OutageCollector
from moderation.ops.router import SubmissionCollector
from moderation.ops.router import router as ops_router
from moderation.policies.metrics import ShadowCollector
from moderation.policies.router import router as policies_router
from moderation.reports.router import router as reports_router
from moderation.review.metrics import ReviewCollector
from moderation.review.router import appeals_router
from moderation.review.router import router as review_router
from moderation.submissions.fast_lane import IngestFastLane
from moderation.submissions.router import router as submissions_router
from moderation.vlm.client import VLMClient
from moderation.webhooks.metrics import WebhookCollector
from moderation.webhooks.router import router as webhooks_router

logger = logging.getLogger(__name__)


def tune_garbage_collector() -> None:
    """Keep the cycle collector off the request path of a server process.

    Everything loaded by now (modules, mappers, schemas, the app) lives as long as the process.
    Out of the collector's sight, a full collection no longer walks a few hundred thousand
    objects: a pause of a tenth of a second and more, for every request in flight when it
    strikes. And what a request allocates is nearly all freed by reference counting when it
    ends, but the requests in flight together hold enough that at the default threshold (700)
    a young collection runs every few requests, walking all of them.

    For a process that only serves: objects frozen here are never collected, which is right for
    what a server loads once and wrong for a process (a test run) that builds many apps.
    """
    gc.freeze()
    gc.set_threshold(20_000, *gc.get_threshold()[1:])


def create_server_app() -> FastAPI:
    """The app as `moderation api` serves it, in each of its processes."""
    return create_app(tune_gc=True)


def create_app(settings: Settings | None = None, *, tune_gc: bool = False) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database_url = resolve_database_url(settings)
        factory = get_sessionmaker(
            database_url,
            connect_timeout_s=settings.database_connect_timeout_s,
            pool_timeout_s=settings.database_pool_timeout_s,
        )
        app.state.settings = settings
        app.state.sessionmaker = factory
        ingest_pool = AsyncPool(
            database_url,
            connect_timeout_s=settings.database_connect_timeout_s,
            pool_timeout_s=settings.database_pool_timeout_s,
        )
        app.state.ingest_pool = ingest_pool
        registry = CollectorRegistry()
        registry.register(SubmissionCollector(factory))
        registry.register(ShadowCollector(factory))
        registry.register(ReviewCollector(factory))
        registry.register(WebhookCollector(factory))
        registry.register(OutageCollector(factory, settings))
        app.state.metrics_registry = registry
        app.state.rate_limiter = RateLimiter(settings)

        @functools.cache
        def vlm_client() -> VLMClient:
            return VLMClient(settings)

        app.state.vlm_client = vlm_client
        if tune_gc:
            tune_garbage_collector()
        yield
        await ingest_pool.close()
        if vlm_client.cache_info().currsize:
            vlm_client().close()

    app = FastAPI(
        title="Moderation",
        version="0.1.0",
        summary="Content moderation with visual context, on your own rubrics and your own model.",
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
    )
    install_problem_handlers(app)
    install_openapi(app)

    async def _database_outage(_: Request, exc: Exception) -> JSONResponse:
        # Requests with a session get this from request_session already; this catches the
        # paths without one (the metrics collector, looking up a key not seen lately).
        error = database_unavailable(exc)
        return problem_response(
            error.status,
            error.title,
            error.detail,
            type_slug=error.type_slug,
            headers=error.headers,
        )

    for outage in DATABASE_OUTAGES:
        app.add_exception_handler(outage, _database_outage)
    # Added first, so it runs inside the boundary (the last added is the outermost layer).
    app.add_middleware(IngestFastLane)
    app.add_middleware(
        RequestBoundary,
        limits=BodyLimits(
            json_bytes=settings.json_body_max_bytes,
            multipart_bytes=settings.multipart_body_max_bytes,
        ),
    )
    app.include_router(ops_router)
    app.include_router(submissions_router)
    app.include_router(policies_router)
    app.include_router(review_router)
    app.include_router(appeals_router)
    app.include_router(webhooks_router)
    app.include_router(reports_router)
    app.include_router(backtests_router)
    return app
