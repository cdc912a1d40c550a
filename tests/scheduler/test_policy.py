"""The scheduler's pure core on a virtual clock: order, reserved slots, aging, the
transition table, and the wait bound and shares its docstring proves."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from potluck.errors import ConfigError, SchedulerError
from potluck.scheduler import (
    CLASSES,
    RANKS,
    TICKETED,
    TRANSITIONS,
    ClassStats,
    Policy,
    SchedulerConfig,
    TaskEvent,
    TaskState,
)
from potluck.wire import PRIORITIES

from .simulation import Simulation

FOREVER = 1e9
"""An aging so slow that nothing ages within a test."""


def drain(policy: Policy, first: Hashable, now: float, *, step: float = 1.0) -> list[Hashable]:
    """Finish `first`, then each task as it starts (one slot): the order they ran in."""
    order: list[Hashable] = []
    running = first
    while True:
        policy.finish(running, now)
        started = policy.dispatch(now)
        if not started:
            return order
        assert len(started) == 1
        running = started[0]
        order.append(running)
        now += step


def snapshot(policy: Policy, tasks: list[Hashable]) -> tuple[Any, ...]:
    return (
        policy.queued,
        policy.running,
        policy.stats,
        [policy.state(task) for task in tasks],
    )


# -- config -----------------------------------------------------------------


def test_classes_are_the_wire_priorities_best_first() -> None:
    assert CLASSES == PRIORITIES == ("paid", "private", "normal")
    assert [RANKS[cls] for cls in CLASSES] == [0, 1, 2]
    assert sorted(TICKETED) == ["paid", "private"]


def test_config_defaults_and_help() -> None:
    config = SchedulerConfig()
    assert (config.slots, config.reserved_slots, config.aging) == (1, 1, 2.0)
    assert config.capacity == 2
    for f in dataclasses.fields(SchedulerConfig):
        assert f.metadata["help"], f.name


@pytest.mark.parametrize(
    "kwargs",
    [
        {"slots": 0},
        {"slots": -1},
        {"slots": 1.5},
        {"slots": True},
        {"reserved_slots": -1},
        {"reserved_slots": 0.5},
        {"aging": 0.0},
        {"aging": -2.0},
        {"aging": math.inf},
        {"aging": math.nan},
        {"aging": "2"},
    ],
)
def test_bad_configs_are_config_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        SchedulerConfig(**kwargs)


def test_zero_reserved_slots_and_integer_aging_are_fine() -> None:
    assert SchedulerConfig(slots=3, reserved_slots=0, aging=1).capacity == 3


# -- order --------------------------------------------------------------------


def test_tasks_start_by_class_then_arrival() -> None:
    policy = Policy(SchedulerConfig(slots=1, reserved_slots=0, aging=FOREVER))
    policy.submit("blocker", "normal", 0.0)
    assert policy.dispatch(0.0) == ["blocker"]
    arrivals = [("n1", "normal"), ("v1", "private"), ("p1", "paid"), ("n2", "normal")]
    arrivals += [("p2", "paid"), ("v2", "private")]
    for t, (task, cls) in enumerate(arrivals, start=1):
        policy.submit(task, cls, float(t))
        assert policy.dispatch(float(t)) == []
    assert policy.queued == 6 and policy.running == 1
    assert drain(policy, "blocker", 10.0) == ["p1", "p2", "v1", "v2", "n1", "n2"]
    assert policy.queued == policy.running == 0


def test_an_idle_policy_starts_a_task_at_once_whatever_its_class() -> None:
    for cls in CLASSES:
        policy = Policy(SchedulerConfig(slots=1, reserved_slots=0))
        policy.submit("t", cls, 5.0)
        assert policy.dispatch(5.0) == ["t"]
        assert policy.stats[cls].wait_max == 0.0


def test_several_general_slots_fill_in_order_in_one_dispatch() -> None:
    policy = Policy(SchedulerConfig(slots=3, reserved_slots=0, aging=FOREVER))
    for t, (task, cls) in enumerate([("a", "normal"), ("b", "private"), ("c", "paid")]):
        policy.submit(task, cls, float(t))
    policy.submit("d", "normal", 3.0)
    assert policy.dispatch(3.0) == ["c", "b", "a"]
    assert policy.queued == 1 and policy.running == 3


# -- reserved slots -------------------------------------------------------------


def test_reserved_slots_take_only_paid_and_private_tasks() -> None:
    policy = Policy(SchedulerConfig(slots=1, reserved_slots=1, aging=FOREVER))
    policy.submit("a", "normal", 0.0)
    policy.submit("b", "normal", 0.0)
    assert policy.dispatch(0.0) == ["a"]  # the reserved slot stays free for tickets
    policy.submit("c", "private", 1.0)
    assert policy.dispatch(1.0) == ["c"]  # at once, in the reserved slot
    policy.submit("d", "paid", 2.0)
    assert policy.dispatch(2.0) == []  # both slots busy
    policy.finish("a", 3.0)
    assert policy.dispatch(3.0) == ["d"]  # the general slot: paid before normal
    # c and d now hold both slots; when c finishes, d counts as the reserved one
    # and the normal task may have the general slot
    policy.finish("c", 4.0)
    assert policy.dispatch(4.0) == ["b"]
    assert policy.running == 2 and policy.queued == 0


def test_reserved_slots_prefer_paid_to_private_whatever_the_age() -> None:
    policy = Policy(SchedulerConfig(slots=1, reserved_slots=1, aging=1.0))
    policy.submit("n", "normal", 0.0)
    assert policy.dispatch(0.0) == ["n"]
    policy.submit("r", "private", 0.0)
    assert policy.dispatch(0.0) == ["r"]  # the reserved slot
    policy.submit("v", "private", 1.0)
    policy.submit("p", "paid", 9.0)
    policy.finish("r", 10.0)
    assert policy.effective_rank("v", 10.0) == 0
    assert policy.dispatch(10.0) == ["p"]  # reserved: paid first, though v came first
    policy.finish("p", 11.0)
    assert policy.dispatch(11.0) == ["v"]


# -- aging ----------------------------------------------------------------------


def test_aging_lowers_the_effective_rank_one_class_per_period() -> None:
    policy = Policy(SchedulerConfig(slots=1, reserved_slots=0, aging=2.0))
    policy.submit("busy", "paid", 0.0)
    policy.dispatch(0.0)
    policy.submit("n", "normal", 0.0)
    policy.submit("v", "private", 0.0)
    ranks = {t: policy.effective_rank("n", t) for t in (0.0, 1.99, 2.0, 3.99, 4.0, 100.0)}
    assert ranks == {0.0: 2, 1.99: 2, 2.0: 1, 3.99: 1, 4.0: 0, 100.0: 0}
    assert [policy.effective_rank("v", t) for t in (0.0, 1.99, 2.0, 100.0)] == [1, 1, 0, 0]
    with pytest.raises(SchedulerError):
        policy.effective_rank("busy", 1.0)


def test_aging_promotes_a_waiting_normal_task_past_newer_paid_ones() -> None:
    policy = Policy(SchedulerConfig(slots=1, reserved_slots=0, aging=2.0))
    policy.submit("p0", "paid", 0.0)
    policy.dispatch(0.0)
    policy.submit("n", "normal", 0.5)
    policy.submit("p1", "paid", 1.0)
    policy.finish("p0", 3.0)
    assert policy.dispatch(3.0) == ["p1"]  # n has rank 1 by now: still behind paid
    policy.submit("p2", "paid", 3.0)
    policy.finish("p1", 4.5)
    assert policy.dispatch(4.5) == ["n"]  # rank 0 since 4.5 and it came before p2
    assert policy.stats["normal"].wait_max == 4.0


# -- transitions ------------------------------------------------------------------


def test_the_transition_table() -> None:
    assert TRANSITIONS == {
        (None, TaskEvent.SUBMIT): TaskState.QUEUED,
        (TaskState.QUEUED, TaskEvent.START): TaskState.RUNNING,
        (TaskState.QUEUED, TaskEvent.CANCEL): TaskState.CANCELLED,
        (TaskState.RUNNING, TaskEvent.FINISH): TaskState.DONE,
    }


def test_a_task_goes_through_its_states_and_is_forgotten_at_the_end() -> None:
    policy = Policy(SchedulerConfig(slots=1, reserved_slots=0))
    assert policy.state("t") is None
    policy.submit("t", "normal", 0.0)
    assert policy.state("t") is TaskState.QUEUED
    policy.dispatch(0.0)
    assert policy.state("t") is TaskState.RUNNING
    policy.finish("t", 1.0)
    assert policy.state("t") is None
    policy.submit("t", "paid", 2.0)  # a task key may be used again once it is done
    policy.cancel("t")
    assert policy.state("t") is None
    assert policy.stats["normal"].finished == policy.stats["paid"].cancelled == 1


ILLEGAL = [
    ("submit a queued task again", lambda p: p.submit("queued", "normal", 1.0)),
    ("submit a running task again", lambda p: p.submit("running", "paid", 1.0)),
    ("finish a queued task", lambda p: p.finish("queued", 1.0)),
    ("finish an unknown task", lambda p: p.finish("nobody", 1.0)),
    ("finish a finished task", lambda p: p.finish("done", 1.0)),
    ("cancel a running task", lambda p: p.cancel("running")),
    ("cancel an unknown task", lambda p: p.cancel("nobody")),
    ("cancel a cancelled task", lambda p: p.cancel("cancelled")),
    ("submit an unknown class", lambda p: p.submit("new", "vip", 1.0)),
    ("submit at a time that is not finite", lambda p: p.submit("new", "paid", math.nan)),
    ("dispatch at a time that is not finite", lambda p: p.dispatch(math.inf)),
]


@pytest.mark.parametrize(("what", "act"), ILLEGAL, ids=[what for what, _ in ILLEGAL])
def test_an_illegal_transition_raises_and_changes_nothing(what: str, act: Any) -> None:
    policy = Policy(SchedulerConfig(slots=1, reserved_slots=0))
    for task in ("running", "done", "queued", "cancelled"):
        policy.submit(task, "normal", 0.0)
    assert policy.dispatch(0.0) == ["running"]
    policy.finish("running", 0.5)
    assert policy.dispatch(0.5) == ["done"]
    policy.finish("done", 0.75)
    assert policy.dispatch(0.75) == ["queued"]
    policy.submit("running", "paid", 0.75)
    policy.cancel("cancelled")
    policy.finish("queued", 0.875)
    policy.submit("queued", "normal", 0.875)
    assert policy.dispatch(0.875) == ["running"]
    tasks: list[Hashable] = ["running", "done", "queued", "cancelled", "nobody", "new"]
    states = [TaskState.RUNNING, None, TaskState.QUEUED, None, None, None]
    assert [policy.state(task) for task in tasks] == states
    before = snapshot(policy, tasks)
    with pytest.raises(SchedulerError):
        act(policy)
    assert snapshot(policy, tasks) == before
    # and the policy still works
    policy.finish("running", 2.0)
    assert policy.dispatch(2.0) == ["queued"]


def test_stats_count_each_class() -> None:
    policy = Policy(SchedulerConfig(slots=1, reserved_slots=1, aging=FOREVER))
    policy.submit("n1", "normal", 0.0)
    policy.submit("n2", "normal", 1.0)
    policy.submit("n3", "normal", 1.0)
    policy.submit("p", "paid", 2.0)
    assert policy.dispatch(2.0) == ["p", "n1"]
    policy.cancel("n3")
    policy.finish("n1", 4.0)
    assert policy.dispatch(4.0) == ["n2"]
    policy.finish("p", 5.0)
    normal, paid = policy.stats["normal"], policy.stats["paid"]
    assert normal == ClassStats(
        submitted=3,
        started=2,
        finished=1,
        cancelled=1,
        wait_total=5.0,
        wait_max=3.0,
        busy_total=2.0,
    )
    assert (normal.queued, normal.running, normal.wait_mean) == (0, 1, 2.5)
    assert paid == ClassStats(submitted=1, started=1, finished=1, busy_total=3.0)
    assert policy.stats["private"] == ClassStats()
    assert ClassStats().wait_mean == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.stats["paid"].finished = 0  # type: ignore[misc]


# -- against a slow, obviously right reference ---------------------------------------


class Reference:
    """The dispatch rule as the docstring states it, by scanning every queued task."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.queued: list[tuple[int, str, float, str]] = []  # (seq, task, arrival, cls)
        self.running: dict[str, str] = {}

    def dispatch(self, now: float) -> list[str]:
        started: list[str] = []
        while True:
            ticketed = sum(1 for cls in self.running.values() if cls in TICKETED)
            normal = len(self.running) - ticketed
            reserved = self.config.reserved_slots
            candidates: list[tuple[int, int, str, str]] = []
            if normal + max(0, ticketed - reserved) < self.config.slots:
                for seq, task, arrival, cls in self.queued:
                    aged = int((now - arrival) // self.config.aging)
                    candidates.append((max(0, RANKS[cls] - aged), seq, task, cls))
            elif min(ticketed, reserved) < reserved:
                candidates = [
                    (RANKS[cls], seq, task, cls)
                    for seq, task, _, cls in self.queued
                    if cls in TICKETED
                ]
            if not candidates:
                return started
            _, seq, task, cls = min(candidates)
            self.queued = [q for q in self.queued if q[1] != task]
            self.running[task] = cls
            started.append(task)


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.sampled_from(CLASSES), st.integers(0, 16)),
        st.tuples(st.just("finish"), st.integers(0, 1000), st.integers(0, 16)),
        st.tuples(st.just("cancel"), st.integers(0, 1000), st.integers(0, 0)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    ops=OPS,
    slots=st.integers(1, 3),
    reserved=st.integers(0, 2),
    aging=st.sampled_from([0.5, 1.0, 2.0, 3.25]),
)
def test_dispatch_agrees_with_a_full_scan(
    ops: list[tuple[str, Any, int]], slots: int, reserved: int, aging: float
) -> None:
    config = SchedulerConfig(slots=slots, reserved_slots=reserved, aging=aging)
    policy, reference = Policy(config), Reference(config)
    now, seq = 0.0, 0
    for op, arg, dt in ops:
        now += dt / 8  # eighths: exact float arithmetic
        if op == "submit":
            task = f"t{seq}"
            policy.submit(task, arg, now)
            reference.queued.append((seq, task, now, arg))
            seq += 1
        elif op == "finish" and reference.running:
            task = sorted(reference.running)[arg % len(reference.running)]
            policy.finish(task, now)
            del reference.running[task]
        elif op == "cancel" and reference.queued:
            task = reference.queued[arg % len(reference.queued)][1]
            policy.cancel(task)
            reference.queued = [q for q in reference.queued if q[1] != task]
        assert policy.dispatch(now) == reference.dispatch(now)
        assert policy.queued == len(reference.queued)
        assert policy.running == len(reference.running)


# -- the guarantees ---------------------------------------------------------------


def bound(config: SchedulerConfig, cls: str, ahead: int, longest: float) -> float:
    """The docstring's bound on a task's wait: r * aging + D * (floor(K / S) + 1)."""
    return RANKS[cls] * config.aging + longest * (ahead // config.slots + 1)


@settings(max_examples=200, deadline=None)
@given(
    arrivals=st.lists(
        st.tuples(st.integers(0, 240), st.sampled_from(CLASSES), st.sampled_from([1, 2, 4, 8])),
        min_size=1,
        max_size=120,
    ),
    slots=st.integers(1, 3),
    reserved=st.integers(0, 2),
    aging=st.sampled_from([0.25, 1.0, 2.0, 3.5, 10.0]),
    finishes_first=st.booleans(),
    unit=st.booleans(),
)
def test_every_task_starts_within_the_bound(
    arrivals: list[tuple[int, str, int]],
    slots: int,
    reserved: int,
    aging: float,
    finishes_first: bool,
    unit: bool,
) -> None:
    """Any arrivals (times in eighths, so the arithmetic is exact), unit service time
    or any up to D = 1: every task runs, none waits longer than the bound."""
    config = SchedulerConfig(slots=slots, reserved_slots=reserved, aging=aging)
    sim = Simulation(config, finishes_first=finishes_first)
    for eighths, cls, length in arrivals:
        sim.arrive(eighths / 8, cls, duration=1.0 if unit else length / 8)
    sim.run()
    assert all(job.end is not None for job in sim.jobs)
    assert sim.policy.queued == sim.policy.running == 0
    assert sim.max_running <= config.capacity
    assert sim.max_running_normal <= config.slots
    for job in sim.jobs:
        assert job.wait <= bound(config, job.cls, job.ahead, 1.0), job
    stats = sim.policy.stats
    assert sum(s.finished for s in stats.values()) == len(arrivals)
    for cls in CLASSES:
        waits = [job.wait for job in sim.jobs if job.cls == cls]
        assert stats[cls].wait_max == max(waits, default=0.0)
        assert stats[cls].wait_total == pytest.approx(sum(waits))


def test_the_bound_is_tight() -> None:
    """One slot, no reserve, a paid task every unit: a normal task that arrives just
    after a paid one started waits 2 * aging + D - epsilon."""
    config = SchedulerConfig(slots=1, reserved_slots=0, aging=2.0)
    sim = Simulation(config)
    sim.arrive(0.0, "paid")
    normal = sim.arrive(0.125, "normal")
    for k in range(12):
        sim.arrive(k + 0.25, "paid")
    sim.run()
    assert normal.ahead == 0
    assert normal.wait == 2 * 2.0 + 1.0 - 0.125 == bound(config, "normal", 0, 1.0) - 0.125


@settings(max_examples=200, deadline=None)
@given(
    normals=st.integers(1, 30),
    slots=st.integers(1, 3),
    reserved=st.integers(1, 2),
    eighths=st.integers(0, 400),
    aging=st.sampled_from([0.5, 2.0, 10.0]),
)
def test_a_paid_task_starts_at_once_beside_saturating_normal_traffic(
    normals: int, slots: int, reserved: int, eighths: int, aging: float
) -> None:
    config = SchedulerConfig(slots=slots, reserved_slots=reserved, aging=aging)
    sim = Simulation(config)
    for _ in range(normals):
        sim.session("normal")  # the general slots stay busy, normal tasks always wait
    paid = sim.arrive(eighths / 8, "paid")
    sim.run(sessions_until=60.0)
    assert paid.wait == 0.0


def run_sessions(config: SchedulerConfig, paid: int, normal: int) -> Simulation:
    sim = Simulation(config)
    for _ in range(paid):
        sim.session("paid")
    for _ in range(normal):
        sim.session("normal")
    sim.run(sessions_until=1000.0)
    return sim


def normal_share(sim: Simulation) -> float:
    paid, normal = sim.steps("paid", 1000.0), sim.steps("normal", 1000.0)
    return len(normal) / (len(paid) + len(normal))


def test_a_paid_session_runs_at_idle_latency_beside_four_normal_ones() -> None:
    """The default reserved slot: the paid session never waits, and the four normal
    sessions share the general slot (half of all steps)."""
    sim = run_sessions(SchedulerConfig(slots=1, reserved_slots=1, aging=2.0), 1, 4)
    paid = sim.steps("paid", 1000.0)
    assert len(paid) == 1000
    assert all(job.wait == 0.0 for job in paid)
    assert normal_share(sim) == 0.5


@pytest.mark.parametrize("paid_sessions", [1, 2])
def test_without_a_reserved_slot_aging_keeps_a_fifth_for_normal_sessions(
    paid_sessions: int,
) -> None:
    """aging = 4 step times: the docstring's share bound gives each of the 4 normal
    sessions a step per 2 * 4 + 7 = 15 units at worst, 4/15 of the slot together."""
    sim = run_sessions(SchedulerConfig(slots=1, reserved_slots=0, aging=4.0), paid_sessions, 4)
    assert normal_share(sim) >= 0.2
    # and the paid steps still come first most of the time
    assert len(sim.steps("paid", 1000.0)) >= 500
    assert max(job.wait for job in sim.jobs if job.cls == "normal") <= 2 * 4.0 + paid_sessions + 4


def test_without_aging_saturating_paid_sessions_starve_normal_ones() -> None:
    """The control: two paid sessions keep a paid step always queued, so only aging
    lets normal steps through."""
    sim = run_sessions(SchedulerConfig(slots=1, reserved_slots=0, aging=FOREVER), 2, 4)
    assert sim.steps("normal", 1000.0) == []
