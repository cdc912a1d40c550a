"""A discrete-event simulation of a `Policy` on a virtual clock of plain floats.

Tasks arrive (once, or as closed-loop sessions that submit their next step the
moment the last one finishes), hold their slot for a fixed duration and
finish; `dispatch` runs after every submission and every finish, as the trio
adapter does.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

from potluck.scheduler import TICKETED, Policy, SchedulerConfig

FINISH, ARRIVE = 0, 1


@dataclass(eq=False)
class Job:
    """One task of the simulation (hashable by identity: it is the policy's task key)."""

    cls: str
    arrival: float
    duration: float
    session: int | None = None
    ahead: int = -1
    """Tasks queued (of any class) just before this one was submitted."""
    start: float | None = None
    end: float | None = None

    @property
    def wait(self) -> float:
        assert self.start is not None
        return self.start - self.arrival


@dataclass
class Simulation:
    config: SchedulerConfig
    finishes_first: bool = True
    """At equal times, process finishes before arrivals (or the other way round)."""
    policy: Policy = field(init=False)
    jobs: list[Job] = field(default_factory=list)
    max_running: int = 0
    max_running_normal: int = 0
    _events: list[tuple[float, int, int, Job]] = field(default_factory=list)
    _seq: int = 0
    _running: set[Job] = field(default_factory=set)
    _sessions: dict[int, tuple[str, float]] = field(default_factory=dict)
    _until: float = math.inf

    def __post_init__(self) -> None:
        self.policy = Policy(self.config)

    def arrive(self, at: float, cls: str, duration: float = 1.0) -> Job:
        return self._arrive(Job(cls, at, duration))

    def session(self, cls: str, *, at: float = 0.0, duration: float = 1.0) -> int:
        """A session that submits its next step as soon as the previous one finished."""
        sid = len(self._sessions)
        self._sessions[sid] = (cls, duration)
        self._arrive(Job(cls, at, duration, session=sid))
        return sid

    def run(self, sessions_until: float = math.inf) -> None:
        """Process every event; sessions stop submitting steps at `sessions_until`."""
        self._until = sessions_until
        while self._events:
            now, _, _, job = heapq.heappop(self._events)
            if job.start is None:  # an arrival
                job.ahead = self.policy.queued
                self.policy.submit(job, job.cls, now)
            else:
                self.policy.finish(job, now)
                job.end = now
                self._running.remove(job)
                if job.session is not None and now < self._until:
                    cls, duration = self._sessions[job.session]
                    self._arrive(Job(cls, now, duration, session=job.session))
            self._dispatch(now)

    def _arrive(self, job: Job) -> Job:
        self.jobs.append(job)
        self._push(job.arrival, ARRIVE, job)
        return job

    def _push(self, at: float, kind: int, job: Job) -> None:
        order = kind if self.finishes_first else 1 - kind
        heapq.heappush(self._events, (at, order, self._seq, job))
        self._seq += 1

    def _dispatch(self, now: float) -> None:
        for task in self.policy.dispatch(now):
            assert isinstance(task, Job)
            task.start = now
            self._running.add(task)
            self._push(now + task.duration, FINISH, task)
        running_normal = sum(1 for job in self._running if job.cls not in TICKETED)
        self.max_running = max(self.max_running, len(self._running))
        self.max_running_normal = max(self.max_running_normal, running_normal)
        assert self.policy.running == len(self._running)
        # work conserving: whatever waits, waits because no slot it may use is free
        if self.policy.queued:
            ticketed = len(self._running) - running_normal
            reserved = self.config.reserved_slots
            assert running_normal + max(0, ticketed - reserved) == self.config.slots
            ticketed_waiting = any(self.policy.stats[cls].queued for cls in TICKETED)
            assert not ticketed_waiting or ticketed >= reserved

    def steps(self, cls: str, before: float) -> list[Job]:
        """The jobs of class `cls` that started before time `before`."""
        return [j for j in self.jobs if j.cls == cls and j.start is not None and j.start < before]
