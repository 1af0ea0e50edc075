"""The one place that reads the environment.

Every setting of the service lives here, with the `MODERATION_` prefix; a `.env` file in the working
directory is read too. Nothing else in the service looks at `os.environ`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Literal

from limits import parse_many
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ResponseFormat = Literal["none", "json_object", "json_schema"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MODERATION_", env_file=".env", extra="ignore", frozen=True
    )

    # Storage and broker. Unset means "the embedded default" (see moderation.embedded).
    database_url: str | None = None
    broker_url: str | None = None
    data_dir: Path = Path(".moderation")
    # A request meets an unreachable database with a 503 within about these many seconds,
    # not a hang: one bounds a connection attempt, the other the wait for a pooled connection.
    database_connect_timeout_s: int = Field(default=5, ge=1, le=300)
    database_pool_timeout_s: float = Field(default=5.0, gt=0, le=300)

    # The vision-language model: any OpenAI-compatible server (vLLM, SGLang, Ollama, DashScope).
    vlm_base_url: str = "http://127.0.0.1:8000/v1"
    vlm_api_key: SecretStr = SecretStr("EMPTY")
    vlm_model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    vlm_timeout_s: float = Field(default=60.0, gt=0)
    vlm_max_retries: int = Field(default=3, ge=0, le=10)
    vlm_max_concurrency: int = Field(default=16, ge=1, le=256)
    # Worker threads; unset means the model concurrency and half as many again, so some threads
    # fetch, decode and store while the others keep every model slot busy.
    worker_threads: int | None = Field(default=None, ge=1, le=1024)
    vlm_response_format: ResponseFormat = "json_schema"
    # Ask for token log-probabilities (vLLM, SGLang, OpenAI-compatible servers that support
    # them) and record the probability of the rating token with every verdict.
    vlm_logprobs: bool = False
    vlm_max_output_tokens: int = Field(default=1024, ge=64)
    # Reuse an earlier verdict for a byte-identical prompt (same normalized images, caption,
    # policy version and model) instead of asking the model again.
    verdict_cache: bool = True
    # Model calls a tenant's shadow policy versions may make per UTC day; past it, live traffic
    # is decided as usual and the shadow run is skipped (and counted). 0 turns shadows off.
    shadow_daily_call_cap: int = Field(default=1000, ge=0)
    # Backtests share the model with live traffic at lower priority: at most this fraction of
    # VLM_MAX_CONCURRENCY (at least one) per worker process, and only while no live judgement
    # waits for a slot.
    backtest_share: float = Field(default=0.25, gt=0, le=1)
    # One run of a backtest job judges items for about this long, then gives its sweeper slot
    # back and is woken again at once; a worker that dies loses at most one slice of work.
    backtest_slice_s: float = Field(default=60.0, gt=0, le=600)
    # When the model cannot be reached, a backtest waits this long before trying its items
    # again, and gives an item up after this many tries.
    backtest_retry_delay_s: float = Field(default=30.0, ge=0, le=3600)
    backtest_item_max_attempts: int = Field(default=3, ge=1, le=20)
    # Qwen2/2.5-VL merge 2x2 patches of 14 px (28 px per token); Qwen3-VL uses 16 px (32).
    # None means "infer from the model name".
    vlm_patch_unit: Literal[28, 32] | None = None

    # Media limits.
    image_max_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    image_max_pixels: int = Field(default=64_000_000, gt=0)
    image_token_budget: int = Field(default=1024, ge=16, le=16384)
    image_max_count: int = Field(default=8, ge=1, le=32)
    # What one image may take once decoded: Pillow holds 1 byte per pixel for grey and palette
    # images, 2 for 16-bit grey and 4 for any colour image, alpha or not. JPEGs are counted at
    # the reduced scale they decode at. The default takes an 8000x8000 RGBA PNG.
    image_max_decoded_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    # Decoding memory a worker process may use at once across all its threads. A large image
    # waits for room, small ones never wait, and an image that could never fit is refused.
    image_decode_budget_bytes: int = Field(default=320 * 1024 * 1024, gt=0)
    # Frames of one animation or multi-page file shown to the model. They share the image's
    # token budget: each gets IMAGE_TOKEN_BUDGET divided by the number of frames sent.
    image_max_frames: int = Field(default=8, ge=2, le=64)
    # Every frame is examined (decoded to a thumbnail) before frames are chosen; a file with
    # more frames, or more pixels over all its frames, goes to review rather than being judged
    # on a part of it.
    image_frame_scan_limit: int = Field(default=1000, ge=2)
    image_frame_scan_max_pixels: int = Field(default=500_000_000, gt=0)
    fetch_timeout_s: float = Field(default=10.0, gt=0)
    fetch_max_redirects: int = Field(default=5, ge=0, le=20)
    fetch_allow_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Work scheduling. The chain of limits is checked below: a model call always ends before the
    # task's soft limit, the soft before the hard limit, and the hard limit before the broker
    # would hand the same message to another worker.
    task_soft_time_limit_s: float = Field(default=300.0, gt=0)
    # One broker can serve several deployments (or test runs) when each has its own queue.
    queue_name: str = Field(default="moderation", pattern=r"^[A-Za-z0-9_.-]{1,100}$")
    # How long a claim on a submission lasts without news from its worker. A worker renews the
    # leases it holds every third of this (the heartbeat), so the lease need not outlast a task:
    # it only has to outlast a missed heartbeat or two. Short means a killed worker's items are
    # back in flight soon: about lease + relay interval after the kill.
    lease_s: float = Field(default=45.0, ge=1.0, le=3600.0)
    # The relay sweeps for lost work this often, and re-sends a submission left queued this long
    # (a message the broker dropped, or one a killed worker had prefetched).
    relay_interval_s: float = Field(default=5.0, gt=0)
    relay_grace_s: float = Field(default=30.0, ge=0)
    max_attempts: int = Field(default=3, ge=1, le=20)
    # The sweeper looks for due jobs (callback attempts among them) this often, and runs up to
    # `job_concurrency` of them at once per worker process.
    job_poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    job_concurrency: int = Field(default=4, ge=1, le=64)

    # Callbacks. The first attempt is immediate; after a failure, the next one waits the next
    # delay of this list, in seconds: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (8 attempts over
    # about 27.5 hours). Comma-separated in the environment; empty means no retries.
    webhook_retry_schedule_s: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        max_length=50,
    )
    # Each retry waits up to this fraction longer, so receivers that come back are not hit by
    # every sender's backlog in the same second.
    webhook_retry_jitter: float = Field(default=0.1, ge=0, le=1)
    webhook_connect_timeout_s: float = Field(default=5.0, gt=0)
    # The whole attempt: connect, send, and the receiver's answer (the delivery's lease in the
    # job table outlasts it).
    webhook_timeout_s: float = Field(default=15.0, gt=0, le=60)
    # How long past its timeout an attempt still counts as in flight. A worker that dies
    # mid-attempt leaves its delivery for this long (plus the timeout) before another worker
    # sends it again; a database that is away that long cannot make a second POST either.
    webhook_attempt_grace_s: float = Field(default=30.0, ge=1, le=600)
    # Callback hosts that may be called although private ("host:port", like the fetch list);
    # kept apart so that a media store open to fetches does not also take tenants' POSTs.
    callback_allow_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # How long a rotated secret keeps working (signing both ways) unless told otherwise.
    secret_rotation_overlap_hours: float = Field(default=24.0, ge=0, le=24 * 30)

    # Re-drive: a submission sent to review because the model or an image host was down is
    # judged again by itself, with exponential backoff, for this long after its first failure;
    # reviewers do not see it in the meantime. 0 switches re-drive off.
    redrive_window_s: float = Field(default=6 * 3600.0, ge=0)
    redrive_base_delay_s: float = Field(default=60.0, gt=0)
    redrive_max_delay_s: float = Field(default=900.0, gt=0)

    # The circuit breaker around the model client (one per worker process): after this many
    # consecutive failed calls (connection errors, timeouts, 5xx) it stops calling the model for
    # the cool-down, then lets one probe call through.
    vlm_breaker_failures: int = Field(default=5, ge=1, le=1000)
    vlm_breaker_cooldown_s: float = Field(default=30.0, gt=0)

    # Per-key rate limits by route class, in the `limits` notation ("100/second;2000/minute").
    # Kept in Redis when one is configured (MODERATION_RATE_LIMIT_STORAGE_URL, else a redis://
    # broker URL), so every API process shares them; in memory otherwise.
    rate_limit_enabled: bool = True
    rate_limit_storage_url: str | None = None
    rate_limit_ingest: str = "100/second"
    rate_limit_read: str = "50/second"
    rate_limit_review: str = "20/second"
    # An admin script may burst; a runaway one is held to 60 changes a minute, 600 an hour.
    rate_limit_admin: str = "20/second;60/minute;600/hour"

    # How long a reviewer holds a claimed task before it returns to the queue, unless renewed;
    # a claim may ask for its own length, up to review_lease_max_s.
    review_lease_s: int = Field(default=900, ge=1)
    review_lease_max_s: int = Field(default=4 * 3600, ge=1)

    # Privacy. The uploaded original (with whatever EXIF, GPS position or camera serial it
    # carries) is deleted once the submission has a final decision, or this many days after it;
    # submissions in review keep theirs, since judging them again needs them. 0 = at once.
    retain_originals_days: float = Field(default=0, ge=0)
    # The normalized images (metadata-free, what the model and reviewers saw) are deleted this
    # many days after the final decision, keeping hashes, sizes and every decision and verdict.
    # Unset keeps them: they are the evidence behind each decision, for appeals and audits.
    retain_normalized_days: float | None = Field(default=None, ge=0)
    # How often a worker looks for media past its retention.
    media_purge_interval_s: float = Field(default=3600.0, gt=0)

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=1, le=65535)
    log_level: str = "INFO"

    @field_validator("webhook_retry_schedule_s", mode="before")
    @classmethod
    def _split_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("webhook_retry_schedule_s")
    @classmethod
    def _schedule_is_sane(cls, value: list[float]) -> list[float]:
        if any(delay < 0 for delay in value):
            raise ValueError("retry delays cannot be negative")
        return value

    @field_validator("fetch_allow_hosts", "callback_allow_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        """`host:port` entries, trimmed and lowercased, from a comma-separated string or a list."""
        parts = value.split(",") if isinstance(value, str) else value
        if isinstance(parts, list | tuple):
            return [str(part).strip().lower() for part in parts if str(part).strip()]
        return value

    @field_validator(
        "rate_limit_ingest", "rate_limit_read", "rate_limit_review", "rate_limit_admin"
    )
    @classmethod
    def _check_rate_limit(cls, value: str) -> str:
        try:
            parse_many(value)
        except ValueError as exc:
            raise ValueError(f"not a rate limit like '100/second;2000/minute': {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _check_time_chain(self) -> Settings:
        """Model timeout < soft limit < hard limit < broker visibility timeout.

        The lease is not part of the chain: the heartbeat renews it while the task runs, up to
        the hard limit, so a slow model call keeps its lease however short the lease is.
        """
        if self.vlm_timeout_s >= self.task_soft_time_limit_s:
            raise ValueError(
                "MODERATION_VLM_TIMEOUT_S must be below MODERATION_TASK_SOFT_TIME_LIMIT_S"
            )
        if self.redrive_base_delay_s > self.redrive_max_delay_s:
            raise ValueError(
                "MODERATION_REDRIVE_BASE_DELAY_S must not exceed MODERATION_REDRIVE_MAX_DELAY_S"
            )
        if self.review_lease_s > self.review_lease_max_s:
            raise ValueError(
                "MODERATION_REVIEW_LEASE_S must not exceed MODERATION_REVIEW_LEASE_MAX_S"
            )
        if self.webhook_connect_timeout_s > self.webhook_timeout_s:
            raise ValueError(
                "MODERATION_WEBHOOK_CONNECT_TIMEOUT_S must not exceed MODERATION_WEBHOOK_TIMEOUT_S"
            )
        return self

    @model_validator(mode="after")
    def _check_retention(self) -> Settings:
        if (
            self.retain_normalized_days is not None
            and self.retain_normalized_days < self.retain_originals_days
        ):
            raise ValueError(
                "MODERATION_RETAIN_NORMALIZED_DAYS must not be shorter than "
                "MODERATION_RETAIN_ORIGINALS_DAYS"
            )
        return self

    @model_validator(mode="after")
    def _check_frames_fit_the_budget(self) -> Settings:
        # smart_resize never goes below 4 tokens an image.
        if self.image_token_budget // self.image_max_frames < 4:
            raise ValueError(
                "MODERATION_IMAGE_TOKEN_BUDGET must give each of MODERATION_IMAGE_MAX_FRAMES "
                "frames at least 4 tokens"
            )
        return self

    @property
    def _limit_margin_s(self) -> float:
        return max(5.0, self.task_soft_time_limit_s * 0.1)

    @property
    def task_hard_time_limit_s(self) -> float:
        return self.task_soft_time_limit_s + self._limit_margin_s

    @property
    def broker_visibility_timeout_s(self) -> float:
        """Redis re-delivers an unacknowledged message after this; it must outlast any task."""
        return self.task_hard_time_limit_s * 2 + 60.0

    @property
    def lease_renew_interval_s(self) -> float:
        """The heartbeat: three renewals per lease, so one late or failed renewal costs nothing."""
        return self.lease_s / 3

    @property
    def json_body_max_bytes(self) -> int:
        """A JSON body holds one image at the cap, base64-encoded, plus text and metadata.

        JSON is read and parsed whole, several copies at once (bytes, base64 text, image
        bytes), so it is kept to one image's worth; more or larger images go as multipart
        files or by URL, which are never held as text.
        """
        return self.image_max_bytes * 4 // 3 + 4 + 1024 * 1024

    @property
    def multipart_body_max_bytes(self) -> int:
        """Every image at the cap as a file part, plus the text fields."""
        return self.image_max_count * (self.image_max_bytes + 1024) + 1024 * 1024

    @property
    def request_max_bytes(self) -> int:
        """The largest request body of any kind worth reading."""
        return max(self.json_body_max_bytes, self.multipart_body_max_bytes)

    @property
    def worker_thread_count(self) -> int:
        if self.worker_threads is not None:
            return self.worker_threads
        return self.vlm_max_concurrency + max(2, self.vlm_max_concurrency // 2)

    @property
    def backtest_concurrency(self) -> int:
        """Model calls in flight for backtests, per worker process."""
        return max(1, int(self.vlm_max_concurrency * self.backtest_share))

    @property
    def patch_unit(self) -> int:
        if self.vlm_patch_unit is not None:
            return self.vlm_patch_unit
        return 32 if "qwen3" in self.vlm_model.lower() else 28


@functools.cache
def get_settings() -> Settings:
    return Settings()
