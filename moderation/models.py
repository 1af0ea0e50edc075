"""Every table, imported in one place so Alembic sees the whole schema."""

from moderation.audit.models import AuditEvent
from moderation.backtests.models import Backtest, BacktestItem
from moderation.core.models import Base
from moderation.decisions.models import Decision, ShadowOutcome
from moderation.jobs.models import Job
from moderation.policies.models import Policy, PolicyVersion, ShadowUsage
from moderation.review.models import ReviewTask
from moderation.submissions.models import (
    Submission,
    SubmissionImage,
    SubmissionImageFrame,
    Verdict,
)
from moderation.tenants.models import ApiKey, Tenant, TenantTokenUsage
from moderation.vlm.models import ModelCircuit
from moderation.webhooks.models import (
    InboundWebhook,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)

__all__ = [
    "ApiKey",
    "AuditEvent",
    "Backtest",
    "BacktestItem",
    "Base",
    "Decision",
    "InboundWebhook",
    "Job",
    "ModelCircuit",
    "Policy",
    "PolicyVersion",
    "ReviewTask",
    "ShadowOutcome",
    "ShadowUsage",
    "Submission",
    "SubmissionImage",
    "SubmissionImageFrame",
    "Tenant",
    "TenantTokenUsage",
    "Verdict",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
]
