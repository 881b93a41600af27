"""service/slots.py: never more holders than slots, first come first served, and no slot
lost to a cancelled waiter (before or after a slot was handed to it)."""

from __future__ import annotations

import asyncio

import pytest

from badge_worker.service.slots import Slots

pytestmark = pytest.mark.asyncio


async def test_never_more_holders_than_slots_and_every_slot_comes_back() -> None:
    slots, holding, most = Slots(3), 0, 0

    async def hold(i: int) -> None:
        nonlocal holding, most
        async with slots:
            holding += 1
            most = max(most, holding)
            await asyncio.sleep(0.001 * (i % 3))
            holding -= 1

    await asyncio.gather(*(hold(i) for i in range(300)))
    assert most == 3 and holding == 0 and slots.free == 3


async def test_waiters_get_their_slot_in_arrival_order() -> None:
    slots, order = Slots(1), []
    gate = asyncio.Event()

    async def first() -> None:
        async with slots:
            await gate.wait()

    async def then(i: int) -> None:
        async with slots:
            order.append(i)

    holder = asyncio.create_task(first())
    await asyncio.sleep(0)
    waiting = [asyncio.create_task(then(i)) for i in range(10)]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(holder, *waiting)
    assert order == list(range(10)) and slots.free == 1


async def test_a_cancelled_waiter_loses_no_slot() -> None:
    slots = Slots(1)
    gate = asyncio.Event()

    async def first() -> None:
        async with slots:
            await gate.wait()

    async def then() -> str:
        async with slots:
            return "ran"

    holder = asyncio.create_task(first())
    await asyncio.sleep(0)
    cancelled, after = asyncio.create_task(then()), asyncio.create_task(then())
    await asyncio.sleep(0)
    cancelled.cancel()  # while still waiting
    gate.set()
    assert await asyncio.wait_for(after, 2) == "ran"
    await holder
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert slots.free == 1


async def test_a_waiter_cancelled_after_its_slot_was_handed_over_passes_it_on() -> None:
    slots = Slots(1)
    await slots.__aenter__()  # held

    async def then() -> str:
        async with slots:
            return "ran"

    handed, next_one = asyncio.create_task(then()), asyncio.create_task(then())
    await asyncio.sleep(0)
    await slots.__aexit__(None, None, None)  # the slot goes to `handed`, which has not run yet
    handed.cancel()  # cancelled before it could use it
    assert await asyncio.wait_for(next_one, 2) == "ran"  # so it was passed on, not lost
    with pytest.raises(asyncio.CancelledError):
        await handed
    assert slots.free == 1


async def test_at_least_one_slot() -> None:
    with pytest.raises(ValueError):
        Slots(0)
