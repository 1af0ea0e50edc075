"""What a worker process holds for its whole life: settings, a connection pool, a model client,
and the slots that share the model between live traffic and backtests."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from moderation.config import Settings, get_settings
from moderation.database import get_sessionmaker, resolve_database_url
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

    def __post_init__(self) -> None:
        self.model_slots = ModelSlots(
            self.settings.vlm_max_concurrency, self.settings.backtest_concurrency
        )

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> PipelineRuntime:
        settings = settings or get_settings()
        # Half the threads hold a connection at once at most (claim and store are short);
        # the overflow covers bursts, so threads + relay never wait for a connection.
        pool = max(5, settings.vlm_max_concurrency // 2 + 1)
        return cls(
            settings=settings,
            sessions=get_sessionmaker(resolve_database_url(settings), pool),
            vlm=VLMClient(settings),
        )
