"""Which frames of an animation or a multi-page file the model is shown.

Judging only the first frame lets anyone hide a violation behind a harmless opening frame, and
judging every frame of a 500-frame GIF costs 500 images of tokens. The choice here takes both
kinds of hiding place into account:

- half of them spread evenly over the running time (by index for pages, which have no time),
  the first and the last included, so what a viewer watches for a while is seen;
- then, one at a time, the frame that differs most from every frame already chosen, measured on
  tiny thumbnails: a single violent frame flashed between harmless ones differs from them all,
  so it is picked first, while a frame that merely returns to the opening picture is not.

Frames identical (at thumbnail scale) to one already chosen are never added.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence


def choose_frames(
    start_ms: Sequence[int], distance: Callable[[int, int], float], count: int
) -> list[int]:
    """Up to `count` frame indexes, ascending: always frame 0, and the last with four or more.

    `start_ms[i]` is when frame i appears (non-decreasing; pass the indexes for pages), and
    `distance(i, j)` how different frames i and j look (0 for the same picture).
    """
    total = len(start_ms)
    if total == 0 or count < 1:
        return []
    if total <= count:
        return list(range(total))
    chosen: list[int] = []
    # Half the frames go to the time spread, half to the differences; with only two to show,
    # the second goes to the most different frame rather than to the last.
    spread = max(1, count // 2)
    last_start = start_ms[-1]
    for step in range(spread):
        moment = last_start * step / (spread - 1) if spread > 1 else 0
        frame = bisect.bisect_right(start_ms, moment) - 1
        if frame not in chosen:
            chosen.append(frame)
    # Farthest-point sampling: each frame's distance to the nearest frame already chosen.
    nearest = {
        frame: min(distance(frame, picked) for picked in chosen)
        for frame in range(total)
        if frame not in chosen
    }
    while len(chosen) < count and nearest:
        frame = max(nearest, key=lambda candidate: (nearest[candidate], -candidate))
        if nearest[frame] <= 0:
            break
        chosen.append(frame)
        del nearest[frame]
        for other in nearest:
            nearest[other] = min(nearest[other], distance(other, frame))
    return sorted(chosen)
