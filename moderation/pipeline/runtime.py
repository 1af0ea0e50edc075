"""What a worker process holds for its whole life: settings, a connection pool, a model client
(with its circuit breaker), the heartbeat that renews its leases, the slots that share the
model between live traffic and backtests, and the decoding memory its threads share."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from moderation.config import Settings, get_settings
from moderation.database import get_sessionmaker, resolve_database_url
from moderation.media.budget import DecodeBudget
from moderation.pipeline.heartbeat import WorkerHeartbeat
from moderation.vlm.client import VLMClient
from moderation.vlm.slots import ModelSlots

# Which process did the work, for the audit trail.
WORKER_ACTOR = f"worker:{socket.gethostname()}:{os.getpid()}"


@dataclass
class PipelineRuntime:
    settings: Settings
    sessions: sessionmaker[Session]
    vlm: VLMClient
    # Every judgement of this process takes one: live first, backtests within their share.
    model_slots: ModelSlots = field(init=False)
    # Shared by the process's threads; sized from the settings unless given.
    decode_budget: DecodeBudget | None = None
    heartbeat: WorkerHeartbeat = field(init=False)

    def __post_init__(self) -> None:
        self.model_slots = ModelSlots(
            self.settings.vlm_max_concurrency, self.settings.backtest_concurrency
        )
        if self.decode_budget is None:
            self.decode_budget = DecodeBudget(self.settings.image_decode_budget_bytes)
        self.heartbeat = WorkerHeartbeat(self.settings, self.sessions, self.vlm, WORKER_ACTOR)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> PipelineRuntime:
        settings = settings or get_settings()
        # Half the threads hold a connection at once at most (claim and store are short);
        # the overflow covers bursts, so threads + relay + heartbeat never wait for a connection.
        pool = max(5, settings.worker_thread_count // 2 + 1)
        return cls(
            settings=settings,
            sessions=get_sessionmaker(resolve_database_url(settings), pool),
            vlm=VLMClient(settings),
        )
