"""Ways a model call can fail, named after the review reasons a submission can carry.

`VLMClient.judge` never lets these escape: it turns them into `Judgement.failure_reason`, so a
submission the model could not judge goes to review instead of failing its task.
"""

from __future__ import annotations


class InvalidVerdict(Exception):
    """The reply held no verdict that satisfies the verdict schema.

    `truncated` tells a reply that was cut off (worth asking again for a shorter answer) from one
    that was complete but wrong; the message is written so it can be shown to the model.
    """

    def __init__(self, message: str, *, truncated: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.truncated = truncated


class ModelUnavailable(Exception):
    """No usable answer: transport failures, 429 and 5xx after retries, or another API error."""


class ProviderRefused(Exception):
    """The provider's own safety filter refused the input (DashScope `data_inspection_failed`).

    Kept apart from `ModelUnavailable` because retrying is pointless and because the refusal is
    itself a hint that the content is unsafe, which a reviewer should know.
    """
