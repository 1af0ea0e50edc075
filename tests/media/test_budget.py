"""DecodeBudget: large decodes share a byte budget, first come first served; small ones never
wait."""

from __future__ import annotations

import threading
import time

import pytest

from moderation.media.budget import DecodeBudget
from moderation.media.errors import DecodeBudgetExhausted

MB = 1024 * 1024


def test_small_decodes_never_wait_but_are_counted() -> None:
    budget = DecodeBudget(10 * MB, small_bytes=1 * MB)

    with budget.reserve(10 * MB), budget.reserve(1 * MB), budget.reserve(1 * MB):
        assert budget.usage().in_use == 12 * MB
        assert budget.usage().waits == 0
    assert budget.usage().in_use == 0


def test_large_decodes_make_room_for_small_ones_running() -> None:
    budget = DecodeBudget(10 * MB, small_bytes=1 * MB)

    with (
        budget.reserve(1 * MB),
        pytest.raises(DecodeBudgetExhausted),
        budget.reserve(10 * MB, deadline=time.monotonic() + 0.1),
    ):
        pass


def test_large_decodes_wait_until_they_fit() -> None:
    budget = DecodeBudget(100 * MB, small_bytes=1 * MB)
    holding = threading.Event()
    release = threading.Event()
    entered: list[str] = []

    def hold() -> None:
        with budget.reserve(70 * MB):
            holding.set()
            release.wait(5)

    def waiter() -> None:
        with budget.reserve(40 * MB):
            entered.append("second")

    first = threading.Thread(target=hold)
    first.start()
    holding.wait(5)
    second = threading.Thread(target=waiter)
    second.start()
    time.sleep(0.2)
    assert entered == []  # 70 + 40 > 100

    release.set()
    first.join(5)
    second.join(5)
    assert entered == ["second"]
    assert budget.usage().waits == 1
    assert budget.usage().in_use == 0


def test_many_threads_never_hold_more_than_the_budget_together() -> None:
    budget = DecodeBudget(100 * MB, small_bytes=1 * MB)
    lock = threading.Lock()
    held = 0
    highest = 0

    def decode(cost: int) -> None:
        nonlocal held, highest
        with budget.reserve(cost):
            with lock:
                held += cost
                highest = max(highest, held)
            time.sleep(0.01)
            with lock:
                held -= cost

    threads = [threading.Thread(target=decode, args=((20 + 13 * n % 70) * MB,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert 0 < highest <= 100 * MB
    assert budget.usage().peak_in_use <= 100 * MB
    assert budget.usage().in_use == 0


def test_first_come_first_served_so_a_big_decode_is_not_starved() -> None:
    budget = DecodeBudget(100 * MB, small_bytes=1 * MB)
    order: list[int] = []
    gate = threading.Event()

    def hold() -> None:
        with budget.reserve(60 * MB):
            gate.wait(5)

    def decode(cost: int) -> None:
        with budget.reserve(cost):
            order.append(cost // MB)
            time.sleep(0.02)

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.05)
    big = threading.Thread(target=decode, args=(90 * MB,))
    big.start()
    time.sleep(0.05)
    # 30 MB would fit next to the 60 MB held, but the 90 MB decode came first.
    small = threading.Thread(target=decode, args=(30 * MB,))
    small.start()
    time.sleep(0.1)
    assert order == []
    gate.set()
    for thread in (holder, big, small):
        thread.join(5)

    assert order == [90, 30]


def test_a_decode_that_waits_past_its_deadline_goes_to_review() -> None:
    budget = DecodeBudget(10 * MB, small_bytes=1 * MB)

    with (
        budget.reserve(8 * MB),
        pytest.raises(DecodeBudgetExhausted) as caught,
        budget.reserve(5 * MB, deadline=time.monotonic() + 0.1),
    ):
        pass

    assert caught.value.reason == "processing_failed"
    with budget.reserve(10 * MB):  # the timed-out waiter left the queue
        assert budget.usage().in_use == 10 * MB
