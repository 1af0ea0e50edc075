"""Files shipped beside the code: policy rubrics and migrations.

From a source checkout they sit at the repository root; an installed wheel carries copies
under moderation/_shipped (see pyproject's force-include).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def shipped_path(name: str) -> Path:
    for candidate in (_PACKAGE.parent / name, _PACKAGE / "_shipped" / name):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"shipped file {name!r} is missing from this installation")
