"""The server's compute scheduler: the pure core.

A server runs torch work (one step of an inference session is one *task*) in
a few worker threads. `Policy` decides which queued task may start; it reads
no clock (`now` is passed in) and does no I/O, so it can be tested on a
virtual clock of plain floats. `potluck.scheduler.adapter` is the thin trio
wrapper around it.

Classes and slots
-----------------
Every task has a class from `CLASSES`: `paid` (a valid ticket), `private`,
`normal`; its *rank* is its index (0, 1, 2). There are `slots` general slots,
which any class may use, and `reserved_slots` that only `paid` and `private`
tasks (the *ticketed* classes) may use. A running task is not pinned to a
slot: ticketed tasks count against the reserved slots first and only their
excess counts against the general ones, so at any time

    general used  = running normal + max(0, running ticketed - reserved_slots)
    reserved used = min(running ticketed, reserved_slots)

and at most `slots` normal tasks run at once. `dispatch(now)` fills the free
general slots first, each with the best queued task by (effective rank,
arrival order); then the free reserved slots, each with the best queued
ticketed task by (class, arrival order).

A queued task *ages*: its effective rank is its rank minus one for every
`aging` seconds it has waited, down to 0. Waiting normal tasks thus catch up
with paid ones and are served in arrival order with them, so normal traffic
never starves.

Lifecycle
---------
A task goes through the states of `TaskState` by the events of `TaskEvent`, as
`TRANSITIONS` lists them:

    (unknown) --submit--> queued --start--> running --finish--> done
                            └------cancel--> cancelled

`start` is `dispatch`'s doing. Any other transition (submitting a task that is
queued or running, finishing or cancelling one that is unknown, finishing a
queued task) raises `SchedulerError` and leaves every state and counter as it
was. Cancelling a *running* task is illegal too: its work may still be on a
thread, and only `finish` gives its slot back (the adapter finishes a task
that was dispatched just before its waiter was cancelled). Done and cancelled
tasks are forgotten at once, so their states read as unknown afterwards: a
second `finish` raises, and a task object may be submitted again as a new task.

Guarantees
----------
`dispatch` is to be called after every `submit` and `finish` (the adapter
does). After it returns, either no task is queued or every general slot is
busy and no ticketed task can take a free reserved slot; that condition does
not depend on effective ranks, so aging needs no timer: a task can only start
when a task was submitted or finished.

1. *Paid latency.* A paid or private task submitted while fewer than
   `reserved_slots` ticketed tasks run and no other ticketed task is queued
   starts in the `dispatch` that follows its submission, however many normal
   tasks run or wait.

2. *Bounded wait.* Let every task hold its slot for at most D seconds, let S
   be `slots`, and let K be the number of tasks queued (of any class) just
   before a task of rank r was submitted at time a. Then it starts by

       a + r * aging + D * (floor(K / S) + 1)

   whatever arrives after it. A normal task (r = 2) waits at most
   2 * aging + D * (floor(K / S) + 1), a paid one D * (floor(K / S) + 1).

   Proof. From T0 = a + r * aging on, the task's effective rank is 0, so a
   general-slot choice prefers it to every task submitted after it; the only
   tasks it can lose to are the M <= K tasks that were queued before it and
   still are. Call a start *general* if it raises `general used` (a normal
   start, or a ticketed start while `reserved used` is full). Suppose the task
   still waits after the dispatches at time t + D, for some t >= T0. Then
   every general slot is busy then (`general used` = S). Everything running
   at t + D started after t (nothing holds a slot for more than D), so the n
   normal tasks running then are n general starts within (t, t + D], and of
   the p ticketed ones, the j-th to start found at least j - 1 ticketed tasks
   running, so at least p - reserved_slots of them were general starts too:
   S = n + max(0, p - reserved_slots) general starts within (t, t + D]. All of
   them chose one of the M earlier tasks, each of which starts once. Waiting
   through j such windows after T0 thus needs S * j <= M, so the task starts
   by T0 + D * (floor(M / S) + 1). (In exact arithmetic; with float times an
   effective rank may reach 0 a rounding error later.)

   The bound is tight: with one slot, no reserved slot and one paid task
   arriving every D seconds, a normal task submitted (K = 0) just after a paid
   task started and just before the next paid one arrived waits
   2 * aging + D - epsilon.

3. *Share.* Closed-loop sessions (each submits its next step the moment the
   last one finished) have at most one task queued each, so with m sessions
   K <= m - 1 in (2), and a normal session completes a step at least every
   2 * aging + D * (floor((m - 1) / S) + 2) seconds, whatever the paid
   sessions do. With one slot, no reserved slot, D = 1 and 4 normal sessions
   beside 2 paid ones that keep a paid step always queued, that is one step per
   2 * aging + 7 for each normal session: at least 20% of the slot while
   aging <= 6.5 * D (the tests run aging = 4 * D and measure about 44%; without
   aging the normal sessions get nothing). With the default reserved slot a
   single paid session never waits at all and the normal ones share the whole
   general slot. `aging` is in seconds, so the share depends on the step time:
   the default 2 s keeps that 20% for steps of 0.31 s or more, while the wait
   bound in seconds holds for any step time.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from potluck.errors import ConfigError, SchedulerError

CLASSES = ("paid", "private", "normal")
"""Scheduling classes, best first; a class's rank is its index."""

RANKS: Mapping[str, int] = {cls: rank for rank, cls in enumerate(CLASSES)}
"""The rank of each class: paid 0, private 1, normal 2."""

TICKETED = frozenset({"paid", "private"})
"""The classes that may use the reserved slots."""


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class SchedulerConfig:
    """How many tasks run at once, and how fast a waiting task catches up."""

    slots: int = _opt(1, "Compute slots any class (paid, private, normal) may use.")
    reserved_slots: int = _opt(
        1, "Extra compute slots only paid and private steps may use (keeps their latency low)."
    )
    aging: float = _opt(
        2.0, "Seconds of waiting that raise a queued step one class, so normal steps never starve."
    )

    def __post_init__(self) -> None:
        for name in ("slots", "reserved_slots"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be a whole number, not {value!r}")
        if self.slots < 1:
            raise ConfigError(f"slots must be at least 1, not {self.slots}")
        if self.reserved_slots < 0:
            raise ConfigError(f"reserved_slots must be 0 or more, not {self.reserved_slots}")
        if (
            isinstance(self.aging, bool)
            or not isinstance(self.aging, int | float)
            or not math.isfinite(self.aging)
            or self.aging <= 0
        ):
            raise ConfigError(f"aging must be a finite number of seconds > 0, not {self.aging!r}")

    @property
    def capacity(self) -> int:
        """How many tasks may run at once: general plus reserved slots."""
        return self.slots + self.reserved_slots


class TaskState(Enum):
    """Where a task is in its lifecycle."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"


class TaskEvent(Enum):
    """What can happen to a task."""

    SUBMIT = "submit"
    START = "start"
    FINISH = "finish"
    CANCEL = "cancel"


TRANSITIONS: Mapping[tuple[TaskState | None, TaskEvent], TaskState] = {
    (None, TaskEvent.SUBMIT): TaskState.QUEUED,
    (TaskState.QUEUED, TaskEvent.START): TaskState.RUNNING,
    (TaskState.QUEUED, TaskEvent.CANCEL): TaskState.CANCELLED,
    (TaskState.RUNNING, TaskEvent.FINISH): TaskState.DONE,
}
"""Every legal (state, event) -> next state; `None` is a task the policy does not know."""


@dataclass(frozen=True)
class ClassStats:
    """Counters of one class since the policy was created."""

    submitted: int = 0
    started: int = 0
    finished: int = 0
    cancelled: int = 0
    wait_total: float = 0.0
    """Seconds from submission to start, summed over started tasks."""
    wait_max: float = 0.0
    """The longest wait of a started task, in seconds."""
    busy_total: float = 0.0
    """Seconds from start to finish, summed over finished tasks."""

    @property
    def queued(self) -> int:
        return self.submitted - self.started - self.cancelled

    @property
    def running(self) -> int:
        return self.started - self.finished

    @property
    def wait_mean(self) -> float:
        return self.wait_total / self.started if self.started else 0.0


@dataclass(eq=False, slots=True)
class _Task:
    key: Hashable
    cls: str
    rank: int
    seq: int
    arrival: float
    state: TaskState = TaskState.QUEUED
    started: float = 0.0


class Policy:
    """Which queued tasks may start now: classes, reserved slots and aging.

    Tasks are any hashable keys chosen by the caller. Every method runs in time
    O(number of classes) per task it starts or touches.
    """

    def __init__(self, config: SchedulerConfig | None = None) -> None:
        self.config = config if config is not None else SchedulerConfig()
        self._tasks: dict[Hashable, _Task] = {}
        # one FIFO per class: within a class the oldest task has the best effective rank
        self._queues: dict[str, OrderedDict[Hashable, _Task]] = {
            cls: OrderedDict() for cls in CLASSES
        }
        self._running_normal = 0
        self._running_ticketed = 0
        self._seq = 0
        self._stats = dict.fromkeys(CLASSES, ClassStats())

    # -- queries -------------------------------------------------------------

    @property
    def queued(self) -> int:
        """How many tasks wait."""
        return sum(len(queue) for queue in self._queues.values())

    @property
    def running(self) -> int:
        """How many tasks hold a slot."""
        return self._running_normal + self._running_ticketed

    @property
    def stats(self) -> Mapping[str, ClassStats]:
        """A snapshot of the counters of each class."""
        return dict(self._stats)

    def state(self, task: Hashable) -> TaskState | None:
        """The task's state, or `None` if it is unknown (never submitted, done or cancelled)."""
        entry = self._tasks.get(task)
        return entry.state if entry is not None else None

    def effective_rank(self, task: Hashable, now: float) -> int:
        """A queued task's rank after aging: its class rank less one per `aging` seconds waited."""
        entry = self._tasks.get(task)
        if entry is None or entry.state is not TaskState.QUEUED:
            raise SchedulerError(f"task {task!r} is not queued")
        return self._effective_rank(entry, now)

    # -- transitions ---------------------------------------------------------

    def submit(self, task: Hashable, cls: str, now: float) -> None:
        """Queue `task` of class `cls`, arrived at `now`."""
        if cls not in RANKS:
            raise SchedulerError(f"class must be one of {CLASSES}, not {cls!r}")
        _check_time(now)
        state = self._next(task, TaskEvent.SUBMIT)
        entry = _Task(task, cls, RANKS[cls], self._seq, now, state)
        self._seq += 1
        self._tasks[task] = entry
        self._queues[cls][task] = entry
        self._count(cls, submitted=1)

    def dispatch(self, now: float) -> list[Hashable]:
        """Start the tasks that may run now, best first, and return them."""
        _check_time(now)
        started: list[Hashable] = []
        while True:
            if self._general_used() < self.config.slots:
                entry = self._best_general(now)
            elif self._reserved_used() < self.config.reserved_slots:
                entry = self._best_ticketed()
            else:
                entry = None
            if entry is None:
                return started
            self._start(entry, now)
            started.append(entry.key)

    def finish(self, task: Hashable, now: float) -> None:
        """A running task is done and gives its slot back."""
        _check_time(now)
        self._next(task, TaskEvent.FINISH)
        entry = self._tasks.pop(task)
        entry.state = TaskState.DONE
        if entry.cls in TICKETED:
            self._running_ticketed -= 1
        else:
            self._running_normal -= 1
        self._count(entry.cls, finished=1, busy_total=max(0.0, now - entry.started))

    def cancel(self, task: Hashable) -> None:
        """A queued task leaves the queue without running."""
        self._next(task, TaskEvent.CANCEL)
        entry = self._tasks.pop(task)
        entry.state = TaskState.CANCELLED
        del self._queues[entry.cls][task]
        self._count(entry.cls, cancelled=1)

    # -- internals -----------------------------------------------------------

    def _next(self, task: Hashable, event: TaskEvent) -> TaskState:
        state = self.state(task)
        try:
            return TRANSITIONS[state, event]
        except KeyError:
            known = state.value if state is not None else "unknown"
            raise SchedulerError(f"cannot {event.value} task {task!r}: it is {known}") from None

    def _general_used(self) -> int:
        excess = max(0, self._running_ticketed - self.config.reserved_slots)
        return self._running_normal + excess

    def _reserved_used(self) -> int:
        return min(self._running_ticketed, self.config.reserved_slots)

    def _effective_rank(self, entry: _Task, now: float) -> int:
        waited = max(0.0, now - entry.arrival)
        return max(0, entry.rank - int(waited // self.config.aging))

    def _best_general(self, now: float) -> _Task | None:
        best: _Task | None = None
        best_key = (0, 0)
        for queue in self._queues.values():
            if not queue:
                continue
            head = next(iter(queue.values()))
            key = (self._effective_rank(head, now), head.seq)
            if best is None or key < best_key:
                best, best_key = head, key
        return best

    def _best_ticketed(self) -> _Task | None:
        for cls in CLASSES:
            if cls in TICKETED and self._queues[cls]:
                return next(iter(self._queues[cls].values()))
        return None

    def _start(self, entry: _Task, now: float) -> None:
        entry.state = self._next(entry.key, TaskEvent.START)
        entry.started = now
        del self._queues[entry.cls][entry.key]
        if entry.cls in TICKETED:
            self._running_ticketed += 1
        else:
            self._running_normal += 1
        wait = max(0.0, now - entry.arrival)
        self._count(entry.cls, started=1, wait_total=wait)
        stats = self._stats[entry.cls]
        self._stats[entry.cls] = dataclasses.replace(stats, wait_max=max(stats.wait_max, wait))

    def _count(self, cls: str, **add: float) -> None:
        """Add to counters of `cls` (`ClassStats` is frozen: replace it)."""
        stats = self._stats[cls]
        changes = {name: getattr(stats, name) + amount for name, amount in add.items()}
        self._stats[cls] = dataclasses.replace(stats, **changes)


def _check_time(now: float) -> None:
    if not math.isfinite(now):
        raise SchedulerError(f"now must be a finite time, not {now!r}")
