"""Per-key rate limits: counted per key and route class, in memory or in Redis, failing open."""

from __future__ import annotations

import time
import uuid

import pytest

from moderation.config import Settings
from moderation.core.errors import TooManyRequests
from moderation.core.rate_limits import RateLimiter, RouteClass, rate_limit_storage_uri


def test_a_key_over_its_limit_is_refused_with_a_retry_after():
    limiter = RateLimiter(Settings(rate_limit_admin="2/minute"))
    key = str(uuid.uuid4())
    limiter.check(RouteClass.admin, key)
    limiter.check(RouteClass.admin, key)
    with pytest.raises(TooManyRequests) as refused:
        limiter.check(RouteClass.admin, key)
    assert refused.value.status == 429
    assert 1 <= refused.value.retry_after_s <= 60
    assert refused.value.headers == {"Retry-After": str(refused.value.retry_after_s)}


def test_keys_and_route_classes_have_budgets_of_their_own():
    limiter = RateLimiter(Settings(rate_limit_admin="1/minute", rate_limit_read="1/minute"))
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    limiter.check(RouteClass.admin, first)
    limiter.check(RouteClass.admin, second)
    limiter.check(RouteClass.read, first)
    with pytest.raises(TooManyRequests):
        limiter.check(RouteClass.admin, first)


def test_every_limit_of_a_class_applies():
    per_minute = RateLimiter(Settings(rate_limit_ingest="2/minute;10/hour"))
    per_hour = RateLimiter(Settings(rate_limit_ingest="10/minute;3/hour"))
    key = str(uuid.uuid4())
    for limiter, allowed, words in (
        (per_minute, 2, "2 per 1 minute"),
        (per_hour, 3, "3 per 1 hour"),
    ):
        for _ in range(allowed):
            limiter.check(RouteClass.ingest, key)
        with pytest.raises(TooManyRequests, match=words):
            limiter.check(RouteClass.ingest, key)


def test_switched_off_nothing_is_counted():
    limiter = RateLimiter(Settings(rate_limit_enabled=False, rate_limit_admin="1/minute"))
    for _ in range(5):
        limiter.check(RouteClass.admin, "key")


def test_the_store_is_redis_when_there_is_one():
    assert rate_limit_storage_uri(Settings()) == "memory://"
    assert rate_limit_storage_uri(Settings(broker_url="redis://r:6379/1")) == "redis://r:6379/1"
    assert rate_limit_storage_uri(Settings(broker_url="amqp://mq//")) == "memory://"
    assert (
        rate_limit_storage_uri(
            Settings(broker_url="redis://r/1", rate_limit_storage_url="redis://limits/0")
        )
        == "redis://limits/0"
    )


def test_limits_in_redis_are_shared_by_every_api_process(broker_url: str):
    if not broker_url.startswith("redis://"):
        pytest.skip("needs Redis as the test broker (MODERATION_TEST_BROKER_URL=redis://…)")
    settings = Settings(rate_limit_storage_url=broker_url, rate_limit_review="3/minute")
    one, other = RateLimiter(settings), RateLimiter(settings)
    key = str(uuid.uuid4())
    one.check(RouteClass.review, key)
    other.check(RouteClass.review, key)
    one.check(RouteClass.review, key)
    with pytest.raises(TooManyRequests):
        other.check(RouteClass.review, key)


def test_an_unreachable_store_lets_requests_through_quickly():
    limiter = RateLimiter(
        Settings(rate_limit_storage_url="redis://127.0.0.1:1/0", rate_limit_admin="1/minute")
    )
    started = time.monotonic()
    for _ in range(20):
        limiter.check(RouteClass.admin, "key")
    assert time.monotonic() - started < 3.0
