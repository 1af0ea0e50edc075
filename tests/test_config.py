from __future__ import annotations

import pytest
from pydantic import ValidationError

from moderation.config import Settings


def test_time_limits_form_a_chain():
    settings = Settings(vlm_timeout_s=60, task_soft_time_limit_s=300)
    assert (
        settings.vlm_timeout_s
        < settings.task_soft_time_limit_s
        < settings.task_hard_time_limit_s
        < settings.broker_visibility_timeout_s
    )


def test_a_killed_workers_items_return_within_a_minute_by_default():
    """The lease is renewed by the heartbeat, so it is short: lease + one relay sweep."""
    settings = Settings()
    assert settings.lease_s <= 60
    assert settings.lease_renew_interval_s * 3 <= settings.lease_s
    assert settings.lease_s + settings.relay_interval_s <= 60


def test_rate_limits_are_checked_when_read():
    assert Settings(rate_limit_admin="2/second;30/minute").rate_limit_admin
    with pytest.raises(ValidationError, match="rate limit"):
        Settings(rate_limit_ingest="lots")


def test_redrive_backoff_cannot_start_above_its_cap():
    with pytest.raises(ValidationError, match="REDRIVE_BASE_DELAY_S"):
        Settings(redrive_base_delay_s=600, redrive_max_delay_s=60)


def test_model_timeout_must_fit_in_the_soft_limit():
    with pytest.raises(ValidationError, match="SOFT_TIME_LIMIT"):
        Settings(vlm_timeout_s=300, task_soft_time_limit_s=300)


def test_allow_hosts_are_read_from_a_comma_separated_variable(monkeypatch):
    monkeypatch.setenv("MODERATION_FETCH_ALLOW_HOSTS", " Media.internal:8080, 127.0.0.1:9000 ,")
    assert Settings().fetch_allow_hosts == ["media.internal:8080", "127.0.0.1:9000"]


@pytest.mark.parametrize(
    ("model", "unit"),
    [("Qwen/Qwen2.5-VL-7B-Instruct", 28), ("qwen-vl-max", 28), ("Qwen/Qwen3-VL-8B-Instruct", 32)],
)
def test_patch_unit_follows_the_model_family(model, unit):
    assert Settings(vlm_model=model).patch_unit == unit


def test_celery_settings_protect_against_lost_and_duplicated_work():
    from moderation.queue import celery_config

    settings = Settings(broker_url="redis://127.0.0.1:6379/0")
    config = celery_config(settings)
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["worker_prefetch_multiplier"] == 1
    assert config["accept_content"] == ["json"]
    assert (
        settings.vlm_timeout_s
        < config["task_soft_time_limit"]
        < config["task_time_limit"]
        < config["broker_transport_options"]["visibility_timeout"]
    )


def test_allow_hosts_given_as_a_list_are_normalized_too():
    assert Settings(fetch_allow_hosts=[" CDN.example:443 ", ""]).fetch_allow_hosts == [
        "cdn.example:443"
    ]


def test_workers_run_more_threads_than_model_calls_in_flight():
    assert Settings(vlm_max_concurrency=32).worker_thread_count == 48
    assert Settings(vlm_max_concurrency=1).worker_thread_count == 3
    assert Settings(vlm_max_concurrency=32, worker_threads=40).worker_thread_count == 40
