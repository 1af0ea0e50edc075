"""Model slots: backtests stay within their share and never take a slot live work waits for."""

from __future__ import annotations

import threading
import time

import pytest

from moderation.vlm.slots import CallPriority, ModelSlots

LIVE, BACKGROUND = CallPriority.live, CallPriority.background


def eventually(condition, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def take_in_thread(slots: ModelSlots, priority: CallPriority, got: list[str], name: str):
    def run() -> None:
        slots.acquire(priority)
        got.append(name)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_background_work_holds_at_most_its_share():
    slots = ModelSlots(total=4, background_cap=1)
    assert slots.acquire(BACKGROUND, deadline=time.monotonic() + 0.1)
    assert not slots.acquire(BACKGROUND, deadline=time.monotonic() + 0.05)
    # The other three are live traffic's, at once.
    for _ in range(3):
        assert slots.acquire(LIVE, deadline=time.monotonic())
    assert slots.use().live == 3 and slots.use().background == 1


def test_a_freed_slot_goes_to_waiting_live_work_before_background_work():
    slots = ModelSlots(total=2, background_cap=2)
    slots.acquire(BACKGROUND)
    slots.acquire(BACKGROUND)
    got: list[str] = []
    # Background asks first, live second; both wait for the full model.
    take_in_thread(slots, BACKGROUND, got, "background")
    eventually(lambda: slots.use().background_waiting == 1)
    take_in_thread(slots, LIVE, got, "live")
    eventually(lambda: slots.use().live_waiting == 1)

    slots.release(BACKGROUND)
    eventually(lambda: got == ["live"])
    time.sleep(0.05)
    assert got == ["live"], "background work took a slot while live work waited"

    slots.release(BACKGROUND)
    eventually(lambda: got == ["live", "background"])


def test_background_work_waits_while_live_work_waits_even_with_its_share_unused():
    slots = ModelSlots(total=2, background_cap=1)
    slots.acquire(LIVE)
    slots.acquire(LIVE)
    got: list[str] = []
    take_in_thread(slots, LIVE, got, "live")
    eventually(lambda: slots.use().live_waiting == 1)
    take_in_thread(slots, BACKGROUND, got, "background")
    eventually(lambda: slots.use().background_waiting == 1)

    slots.release(LIVE)
    eventually(lambda: got == ["live"])
    slots.release(LIVE)
    eventually(lambda: got == ["live", "background"])


def test_a_live_caller_that_gives_up_lets_background_work_through():
    slots = ModelSlots(total=1, background_cap=1)
    slots.acquire(LIVE)
    got: list[str] = []
    take_in_thread(slots, BACKGROUND, got, "background")
    assert not slots.acquire(LIVE, deadline=time.monotonic() + 0.05)
    slots.release(LIVE)
    eventually(lambda: got == ["background"])


def test_hold_releases_and_reports_whether_it_got_a_slot():
    slots = ModelSlots(total=1, background_cap=1)
    with slots.hold(LIVE) as held:
        assert held
        with slots.hold(BACKGROUND, deadline=time.monotonic() + 0.02) as second:
            assert not second
    assert slots.use().live == 0 and slots.use().background == 0
    with pytest.raises(RuntimeError):
        slots.release(LIVE)
