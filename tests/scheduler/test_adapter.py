"""The trio scheduler on trio's mock clock (exact virtual times, no real sleeps):
order, reserved slots, cancellation, errors, and no leaked or extra slots."""

from __future__ import annotations

import random
import threading
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio
import trio.testing

from potluck.errors import SchedulerError
from potluck.scheduler import CLASSES, RANKS, TICKETED, Scheduler, SchedulerConfig
from potluck.testing.aio import run_bounded


def run_virtual(test: Callable[[], Awaitable[None]], timeout: float = 10_000.0) -> None:
    """Run `test` on a mock clock that jumps whenever every task waits; a deadlock
    shows up as `TooSlowError` after `timeout` virtual seconds."""

    async def bounded() -> None:
        with trio.fail_after(timeout):
            await test()

    try:
        trio.run(bounded, clock=trio.testing.MockClock(autojump_threshold=0))
    except BaseExceptionGroup as group:
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        raise error from None


async def hold(
    scheduler: Scheduler,
    cls: str,
    *,
    at: float = 0.0,
    seconds: float = 1.0,
    log: list[tuple[str, float]] | None = None,
    name: str = "",
) -> None:
    """Arrive at virtual time `at`, hold a slot of class `cls` for `seconds`."""
    await trio.sleep(at - trio.current_time())
    async with scheduler.slot(cls):
        if log is not None:
            log.append((name, trio.current_time()))
        await trio.sleep(seconds)


def test_tasks_start_by_class_then_arrival() -> None:
    scheduler = Scheduler(SchedulerConfig(slots=1, reserved_slots=0, aging=100.0))
    log: list[tuple[str, float]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hold, scheduler, "normal")  # busy until 1.0
            arrivals = ["n1", "v1", "p1", "n2", "p2"]
            for i, name in enumerate(arrivals):
                cls = {"n": "normal", "v": "private", "p": "paid"}[name[0]]
                at = 0.1 * (i + 1)
                nursery.start_soon(partial(hold, scheduler, cls, at=at, log=log, name=name))

    run_virtual(main)
    assert log == [("p1", 1.0), ("p2", 2.0), ("v1", 3.0), ("n1", 4.0), ("n2", 5.0)]
    assert scheduler.policy.queued == scheduler.policy.running == 0


def test_a_paid_task_starts_at_once_beside_saturating_normal_traffic() -> None:
    scheduler = Scheduler(SchedulerConfig(slots=1, reserved_slots=1, aging=2.0))
    log: list[tuple[str, float]] = []

    async def normal_session() -> None:
        while trio.current_time() < 10.0:
            await hold(scheduler, "normal", at=trio.current_time())

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(normal_session)
            for at in (2.5, 4.0, 7.125):
                nursery.start_soon(partial(hold, scheduler, "paid", at=at, log=log, name="paid"))

    run_virtual(main)
    assert log == [("paid", 2.5), ("paid", 4.0), ("paid", 7.125)]
    stats = scheduler.policy.stats
    assert stats["paid"].wait_max == 0.0
    assert stats["normal"].started >= 10  # the general slot never stood idle


def test_a_cancelled_waiter_gives_up_its_place() -> None:
    scheduler = Scheduler(SchedulerConfig(slots=1, reserved_slots=0))
    log: list[tuple[str, float]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hold, scheduler, "normal")
            scope = trio.CancelScope()

            async def first() -> None:
                with scope:
                    await hold(scheduler, "paid", at=0.1, log=log, name="cancelled")

            nursery.start_soon(first)
            nursery.start_soon(partial(hold, scheduler, "normal", at=0.2, log=log, name="next"))
            await trio.sleep(0.5)
            assert scheduler.policy.queued == 2
            scope.cancel()
            await trio.sleep(0.1)
            assert scheduler.policy.queued == 1

    run_virtual(main)
    assert log == [("next", 1.0)]
    assert scheduler.policy.stats["paid"].cancelled == 1
    assert scheduler.policy.queued == scheduler.policy.running == 0


def test_an_error_inside_a_slot_gives_the_slot_back() -> None:
    scheduler = Scheduler(SchedulerConfig(slots=1, reserved_slots=0))
    log: list[tuple[str, float]] = []

    async def failing() -> None:
        with pytest.raises(ZeroDivisionError):
            async with scheduler.slot("paid"):
                await trio.sleep(1.0)
                _ = 1 / 0

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(failing)
            nursery.start_soon(partial(hold, scheduler, "normal", at=0.1, log=log, name="next"))

    run_virtual(main)
    assert log == [("next", 1.0)]
    assert scheduler.policy.stats["paid"].finished == 1
    assert scheduler.policy.running == 0


def test_a_task_cancelled_while_it_runs_gives_the_slot_back() -> None:
    scheduler = Scheduler(SchedulerConfig(slots=1, reserved_slots=0))
    log: list[tuple[str, float]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(1.5):
                await hold(scheduler, "paid", seconds=100.0)
            nursery.start_soon(partial(hold, scheduler, "normal", at=1.5, log=log, name="next"))

    run_virtual(main)
    assert log == [("next", 1.5)]
    assert scheduler.policy.stats["paid"].busy_total == 1.5


def test_a_waiter_cancelled_as_it_is_dispatched_gives_the_slot_back() -> None:
    """The slot is free, so the task is dispatched at once, but its scope is already
    cancelled: the waiter never runs, and its task is finished, not leaked."""
    scheduler = Scheduler(SchedulerConfig(slots=1, reserved_slots=0))
    entered = []

    async def main() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            async with scheduler.slot("paid"):
                entered.append(True)
        assert scheduler.policy.running == 0
        await hold(scheduler, "normal")
        assert trio.current_time() == 1.0

    run_virtual(main)
    assert entered == []
    paid = scheduler.policy.stats["paid"]
    assert (paid.started, paid.finished, paid.cancelled) == (1, 1, 0)


def test_a_waiter_cancelled_in_the_same_tick_it_was_woken_finishes_its_task() -> None:
    """The holder gives the slot to `woken` and cancels it before it runs."""
    scheduler = Scheduler(SchedulerConfig(slots=1, reserved_slots=0))
    log: list[tuple[str, float]] = []
    scope = trio.CancelScope()

    async def woken() -> None:
        with scope:
            await hold(scheduler, "normal", at=0.1, log=log, name="woken")

    async def holder() -> None:
        async with scheduler.slot("paid"):
            await trio.sleep(1.0)
        assert scheduler.policy.running == 1  # dispatched to `woken`...
        scope.cancel()  # ...and cancelled before it ran

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(holder)
            nursery.start_soon(woken)
            nursery.start_soon(partial(hold, scheduler, "normal", at=0.2, log=log, name="next"))

    run_virtual(main)
    assert [name for name, _ in log] in (["next"], ["woken", "next"])
    assert log[-1] == ("next", 1.0)
    assert scheduler.policy.queued == scheduler.policy.running == 0


def test_an_unknown_class_is_refused_and_leaves_nothing_behind() -> None:
    scheduler = Scheduler(SchedulerConfig())

    async def main() -> None:
        with pytest.raises(SchedulerError):
            async with scheduler.slot("vip"):
                pass  # pragma: no cover

    run_virtual(main)
    assert scheduler.policy.queued == scheduler.policy.running == 0
    assert all(s.submitted == 0 for s in scheduler.policy.stats.values())


@pytest.mark.parametrize("seed", range(5))
def test_random_load_never_exceeds_the_slots_and_every_wait_is_bounded(seed: int) -> None:
    rng = random.Random(seed)
    config = SchedulerConfig(
        slots=rng.randint(1, 3), reserved_slots=rng.randint(0, 2), aging=rng.choice([0.5, 2.0])
    )
    scheduler = Scheduler(config)
    active: dict[str, int] = dict.fromkeys(CLASSES, 0)
    peak = {"all": 0, "normal": 0}
    waits: list[tuple[str, int, float]] = []  # class, tasks queued ahead, wait
    longest = 1.0

    async def task(cls: str, at: float, seconds: float) -> None:
        await trio.sleep(at)
        ahead = scheduler.policy.queued  # no checkpoint until the slot submits it
        async with scheduler.slot(cls):
            waits.append((cls, ahead, trio.current_time() - at))
            active[cls] += 1
            peak["all"] = max(peak["all"], sum(active.values()))
            peak["normal"] = max(peak["normal"], active["normal"])
            await trio.sleep(seconds)
            active[cls] -= 1

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(60):
                cls = rng.choice(CLASSES)
                at, seconds = rng.randint(0, 80) / 8, rng.randint(1, 8) / 8 * longest
                nursery.start_soon(task, cls, at, seconds)

    run_virtual(main)
    assert len(waits) == 60
    assert peak["all"] <= config.capacity
    assert peak["normal"] <= config.slots
    for cls, ahead, wait in waits:
        assert wait <= RANKS[cls] * config.aging + longest * (ahead // config.slots + 1)
    assert scheduler.policy.queued == scheduler.policy.running == 0
    ticketed = sum(scheduler.policy.stats[cls].finished for cls in TICKETED)
    assert ticketed + scheduler.policy.stats["normal"].finished == 60


def test_run_sync_runs_fn_in_worker_threads_no_more_than_the_slots_at_once() -> None:
    """Real threads on the real clock: two slots, so threads meet in pairs at a barrier
    (which would time out with one) and never three at once."""
    scheduler = Scheduler(SchedulerConfig(slots=1, reserved_slots=1))
    lock = threading.Lock()
    barrier = threading.Barrier(2, timeout=10)
    counts = {"active": 0, "peak": 0}
    results: list[tuple[int, int]] = []

    def work(n: int) -> tuple[int, int]:
        with lock:
            counts["active"] += 1
            counts["peak"] = max(counts["peak"], counts["active"])
        barrier.wait()
        with lock:
            counts["active"] -= 1
        return n, threading.get_ident()

    async def one(n: int) -> None:
        results.append(await scheduler.run_sync("paid", work, n))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for n in range(6):
                nursery.start_soon(one, n)

    run_bounded(main, 30.0)
    assert sorted(n for n, _ in results) == list(range(6))
    assert threading.get_ident() not in {ident for _, ident in results}
    assert counts["peak"] == 2
    assert scheduler.policy.stats["paid"].finished == 6
