"""The trio side of the compute scheduler: wait for a slot, run, give it back.

```python
scheduler = Scheduler(SchedulerConfig(slots=1, reserved_slots=1))
outputs = await scheduler.run_sync("paid", span.forward, hidden, cache)
async with scheduler.slot("normal"):  # or hold a slot around any work
    ...
```

Each waiting task parks on its own `trio.Event`; the `Policy` is asked whom
to start after every submission and every finish, and sets their events. A
waiter cancelled before it starts leaves the queue; one that was already
dispatched, and a task that is cancelled or raises while it runs, finish and
give their slot back, so no slot leaks. Torch runs in worker threads, at most
`slots + reserved_slots` of them at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from typing import TypeVar, TypeVarTuple

import trio

from potluck.scheduler.policy import Policy, SchedulerConfig, TaskState

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class Scheduler:
    """Compute slots shared by a server's inference steps, by class and arrival."""

    def __init__(
        self,
        config: SchedulerConfig | None = None,
        *,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        #: The pure core: queue, counters and per-class stats.
        self.policy = Policy(config)
        self._clock = clock
        self._ready: dict[Hashable, trio.Event] = {}
        self._threads = trio.CapacityLimiter(self.policy.config.capacity)

    @property
    def config(self) -> SchedulerConfig:
        return self.policy.config

    @asynccontextmanager
    async def slot(self, cls: str) -> AsyncIterator[None]:
        """Wait until the policy starts a task of class `cls`, hold its slot while
        the body runs, then give it back (also on cancellation or an error)."""
        task = object()
        ready = trio.Event()
        self.policy.submit(task, cls, self._clock())  # SchedulerError for an unknown class
        self._ready[task] = ready
        self._dispatch()
        started = False
        try:
            await ready.wait()
            started = True
        finally:
            if not started:
                self._abandon(task)
        try:
            yield
        finally:
            self._finish(task)

    async def run_sync(self, cls: str, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """`fn(*args)` in a worker thread once a slot of class `cls` is ours.

        Cancellation waits for the thread to return: the slot is held until then."""
        async with self.slot(cls):
            return await trio.to_thread.run_sync(fn, *args, limiter=self._threads)

    def _dispatch(self) -> None:
        for task in self.policy.dispatch(self._clock()):
            self._ready.pop(task).set()

    def _finish(self, task: Hashable) -> None:
        self.policy.finish(task, self._clock())
        self._dispatch()

    def _abandon(self, task: Hashable) -> None:
        """A waiter that will not run: cancelled while queued, or just after it was started."""
        if self.policy.state(task) is TaskState.QUEUED:
            self.policy.cancel(task)
            del self._ready[task]
        else:
            self._finish(task)
