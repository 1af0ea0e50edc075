"""Examples for the submissions API's documents: one realistic upload, followed end to end."""

from __future__ import annotations

from typing import Any

SUBMISSION_ID = "7d0c6f4e-2b1a-4c3d-9e8f-0a1b2c3d4e5f"

# A 1x1 PNG as a data: URL; plain base64 without the prefix works too.
INLINE_IMAGE = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4//8/"
    "AAX+Av4N70a4AAAAAElFTkSuQmCC"
)

SUBMISSION_CREATE: dict[str, Any] = {
    "external_id": "upload-8f14e45f",
    "text": "selling these, DM me",
    "images": [{"url": "https://media.example.com/u/8f14e45f.jpg"}],
    "metadata": {"user_id": "u-123", "surface": "marketplace"},
}

SUBMISSION_ACCEPTED: dict[str, Any] = {
    "id": SUBMISSION_ID,
    "external_id": "upload-8f14e45f",
    "status": "queued",
}

CATEGORY: dict[str, Any] = {"category": "weapons_drugs", "severity": 3, "confidence": 0.93}

DECISION: dict[str, Any] = {
    "action": "block",
    "source": "model",
    "reason": None,
    "detail": None,
    "categories": [CATEGORY],
    "actor": None,
    "decided_at": "2026-11-24T10:15:03.912Z",
}

VIOLATION: dict[str, Any] = {
    "category": "weapons_drugs",
    "severity": 3,
    "confidence": 0.93,
    "source": "both",
    "image": 0,
    "rationale": "A handgun offered for private sale.",
}

VERDICT: dict[str, Any] = {
    "rating": "unsafe",
    "confidence": 0.93,
    "violations": [VIOLATION],
    "rationale": "The image shows a handgun and the caption offers it for sale.",
    "rating_probability": 0.991,
    "model": "Qwen/Qwen2.5-VL-7B-Instruct",
    "policy": "default",
    "policy_version": 1,
    "prompt_sha256": "9b1f3c0d6e2a4b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e",
    "attempt": 1,
    "sequence": 0,
    "latency_ms": 812,
    "input_tokens": 4410,
    "output_tokens": 96,
    "finish_reason": "stop",
    "error": None,
    "raw_output": '{"rating": "unsafe", "confidence": 0.93, "violations": [...]}',
    "reused_from": None,
    "created_at": "2026-11-24T10:15:03.905Z",
}

IMAGE: dict[str, Any] = {
    "position": 0,
    "source_url": "https://media.example.com/u/8f14e45f.jpg",
    "sha256": "e3a1b2c3d4e5f60718293a4b5c6d7e8f9012a3b4c5d6e7f8091a2b3c4d5e6f70",
    "width": 1092,
    "height": 812,
    "mime": "image/jpeg",
    "source_mime": "image/jpeg",
    "tokens": 1131,
    "error": None,
}

POLICY_REF: dict[str, Any] = {"slug": "default", "version": 1}

SUBMISSION: dict[str, Any] = {
    "id": SUBMISSION_ID,
    "external_id": "upload-8f14e45f",
    "status": "decided",
    "text": "selling these, DM me",
    "metadata": {"user_id": "u-123", "surface": "marketplace"},
    "callback_url": None,
    "policy": POLICY_REF,
    "decision": DECISION,
    "decisions": [DECISION],
    "verdicts": [VERDICT],
    "images": [IMAGE],
    "attempts": 1,
    "created_at": "2026-11-24T10:15:02.480Z",
    "updated_at": "2026-11-24T10:15:03.912Z",
}

SUBMISSION_SUMMARY: dict[str, Any] = {
    "id": SUBMISSION_ID,
    "external_id": "upload-8f14e45f",
    "status": "decided",
    "action": "block",
    "created_at": "2026-11-24T10:15:02.480Z",
    "updated_at": "2026-11-24T10:15:03.912Z",
}

AUDIT_EVENT: dict[str, Any] = {
    "id": 4211,
    "seq": 2,
    "event": "queued",
    "actor": "system",
    "data": {},
    "created_at": "2026-11-24T10:15:02.481Z",
    "prev_sha256": "5f2b0c9e1d7a4b3c8e6f0a1b2c3d4e5f60718293a4b5c6d7e8f9012345678901",
    "sha256": "9a8b7c6d5e4f30211f2e3d4c5b6a79880f1e2d3c4b5a69788796a5b4c3d2e1f0",
}

# The multipart form of POST /v1/submissions, for clients that upload files.
MULTIPART_FORM: dict[str, Any] = {
    "type": "object",
    "required": ["external_id"],
    "properties": {
        "external_id": {"type": "string", "examples": ["upload-8f14e45f"]},
        "text": {"type": "string", "examples": ["selling these, DM me"]},
        "policy": {"type": "string", "examples": ["default"]},
        "callback_url": {"type": "string", "examples": ["https://uploads.example.com/hooks"]},
        "metadata": {
            "type": "string",
            "description": "a JSON object, as a string",
            "examples": ['{"user_id": "u-123"}'],
        },
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
    },
}
