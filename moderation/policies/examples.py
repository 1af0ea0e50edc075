"""Examples for the policies API's documents: a one-category excerpt of the shipped rubric."""

from __future__ import annotations

from typing import Any

CATEGORY_EXAMPLE: dict[str, Any] = {
    "content": "Image: a handgun on a table with a price tag. Caption: 'DM me, no questions.'",
    "severity": 3,
}

CATEGORY: dict[str, Any] = {
    "id": "weapons_drugs",
    "name": "Weapons and drugs",
    "definition": "Selling, buying or trading firearms, ammunition, explosives or illegal drugs.",
    "allowed": ["Hunting, sport shooting and museum displays without a sale."],
    "examples": [CATEGORY_EXAMPLE],
    "block_at": 3,
    "restrict_at": 2,
}

SEVERITY_SCALE: dict[str, str] = {
    "1": "Mild: a reviewer should look at it.",
    "2": "Moderate: acceptable only with a restriction.",
    "3": "Severe: the platform does not host it.",
    "4": "Extreme: likely illegal, or someone is in immediate danger.",
}

DRAFT: dict[str, Any] = {
    "title": "Marketplace listings",
    "instructions": "You are a content moderator. Judge one listing against the categories below.",
    "min_confidence": 0.85,
    "severity_scale": SEVERITY_SCALE,
    "categories": [CATEGORY],
}

DOCUMENT: dict[str, Any] = {"slug": "marketplace", "version": 2, **DRAFT}

VERSION_SUMMARY: dict[str, Any] = {
    "version": 2,
    "status": "shadow",
    "active": False,
    "content_sha256": "4c1d2e3f405162738495a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091",
    "created_at": "2026-11-24T09:30:00Z",
    "status_changed_at": "2026-11-24T10:00:00Z",
    "activated_at": None,
}

VERSION: dict[str, Any] = {
    "id": "0b9f7a52-61c4-4d1e-8f3a-5c2d9e7b1a04",
    "slug": "marketplace",
    **VERSION_SUMMARY,
    "document": DOCUMENT,
}

POLICY: dict[str, Any] = {
    "slug": "marketplace",
    "title": "Marketplace listings",
    "active_version": 1,
    "shadow_version": 2,
    "activated_at": "2026-11-20T08:00:00Z",
    "created_at": "2026-11-20T08:00:00Z",
}

POLICY_WITH_VERSIONS: dict[str, Any] = {
    **POLICY,
    "versions": [
        {
            **VERSION_SUMMARY,
            "version": 1,
            "status": "active",
            "active": True,
            "created_at": "2026-11-20T08:00:00Z",
            "status_changed_at": "2026-11-20T08:00:00Z",
            "activated_at": "2026-11-20T08:00:00Z",
        },
        VERSION_SUMMARY,
    ],
}
