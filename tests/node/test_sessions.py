"""SessionTable: admission (budget, quota, length), step ordering, reservations, expiry."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from potluck.errors import MessageError, SessionLimitExceeded, UnknownSession
from potluck.node.sessions import Session, SessionTable

ALICE = "12D3KooWalice"
BOB = "12D3KooWbob"


def table(
    cache_tokens: int = 1000, max_session_length: int = 400, sessions_per_peer: int = 3
) -> SessionTable:
    return SessionTable(
        cache_tokens=cache_tokens,
        max_session_length=max_session_length,
        sessions_per_peer=sessions_per_peer,
    )


def open_session(
    t: SessionTable, sid: str = "a1", peer: str = ALICE, max_length: int = 100, now: float = 0.0
) -> Session:
    return t.open(sid, peer, 0, 4, max_length, now)


# --- admission --------------------------------------------------------------------


def test_open_reserves_max_length() -> None:
    t = table()
    s = open_session(t, max_length=100, now=5.0)
    assert (s.session_id, s.peer, s.start, s.end) == ("a1", ALICE, 0, 4)
    assert (s.max_length, s.reserved, s.batch, s.step, s.position) == (100, 100, None, 0, 0)
    assert s.last_used == 5.0 and not s.busy
    assert len(t) == 1
    assert (t.reserved_tokens, t.free_tokens) == (100, 900)


def test_open_refuses_a_duplicate_session_id() -> None:
    t = table()
    open_session(t)
    with pytest.raises(MessageError, match="already open"):
        open_session(t, peer=BOB)
    assert len(t) == 1


def test_max_length_over_the_server_limit_is_refused() -> None:
    t = table(max_session_length=400)
    open_session(t, "a1", max_length=400)  # at the limit: fine
    with pytest.raises(SessionLimitExceeded, match="limit of 400"):
        open_session(t, "a2", max_length=401)
    assert len(t) == 1


def test_the_cache_budget_is_never_overcommitted() -> None:
    t = table(cache_tokens=1000, sessions_per_peer=10)
    for i in range(2):
        open_session(t, f"a{i}", max_length=400)
    open_session(t, "a2", max_length=200)  # exactly fills the budget
    assert t.free_tokens == 0
    with pytest.raises(SessionLimitExceeded, match="cache full"):
        open_session(t, "a3", max_length=1)
    t.close("a2")
    open_session(t, "a3", max_length=200)


def test_the_paid_reserve_is_kept_for_sessions_with_a_ticket() -> None:
    t = SessionTable(
        cache_tokens=1000, max_session_length=1000, sessions_per_peer=10, reserve_tokens=300
    )
    t.open("a0", ALICE, 0, 4, 700, 0.0)  # normal sessions may fill up to the reserve
    assert (t.free_for("normal"), t.free_for("paid"), t.free_for("private")) == (0, 300, 300)
    with pytest.raises(SessionLimitExceeded, match="kept for paid sessions"):
        t.open("a1", ALICE, 0, 4, 1, 0.0)
    paid = t.open("a1", ALICE, 0, 4, 200, 0.0, priority="paid")
    assert paid.priority == "paid"
    private = t.open("a2", BOB, 0, 4, 100, 0.0, priority="private")
    assert private.priority == "private" and t.free_tokens == 0
    with pytest.raises(SessionLimitExceeded, match="cache full"):
        t.open("a3", BOB, 0, 4, 1, 0.0, priority="paid")


def test_each_peer_has_a_session_quota() -> None:
    t = table(sessions_per_peer=2)
    open_session(t, "a1", ALICE, max_length=10)
    open_session(t, "a2", ALICE, max_length=10)
    with pytest.raises(SessionLimitExceeded, match="per peer"):
        open_session(t, "a3", ALICE, max_length=10)
    open_session(t, "b1", BOB, max_length=10)  # another peer's quota is separate
    t.close("a1")
    open_session(t, "a3", ALICE, max_length=10)


def test_get_returns_only_the_owners_session() -> None:
    t = table()
    s = open_session(t, peer=ALICE)
    assert t.get("a1", ALICE) is s
    with pytest.raises(UnknownSession):
        t.get("a1", BOB)
    with pytest.raises(UnknownSession):
        t.get("ff", ALICE)


def test_close_frees_the_reservation() -> None:
    t = table()
    s = open_session(t)
    assert t.close("a1") is s
    assert t.close("a1") is None
    assert (len(t), t.reserved_tokens) == (0, 0)


def test_close_peer_sessions_closes_those_listed() -> None:
    t = table()
    for sid in ("a1", "a2", "a3"):
        open_session(t, sid, max_length=10)
    t.close_peer_sessions(["a1", "a3", "ff"])
    assert t.get("a2", ALICE).session_id == "a2"
    assert len(t) == 1


# --- steps ------------------------------------------------------------------------


def test_steps_advance_step_and_position() -> None:
    t = table()
    s = open_session(t, max_length=100)
    t.begin_step(s, 0, 0, 1, 7, now=1.0)
    assert s.busy and s.last_used == 1.0
    t.end_step(s, 7, now=2.0, ok=True)
    assert (s.step, s.position, s.busy, s.last_used) == (1, 7, False, 2.0)
    t.begin_step(s, 1, 7, 1, 1, now=3.0)
    t.end_step(s, 1, now=4.0, ok=True)
    assert (s.step, s.position) == (2, 8)


@pytest.mark.parametrize(
    ("step", "position", "match"),
    [
        (0, 3, "expected step 1"),  # a replayed step
        (2, 3, "expected step 1"),  # a lost step
        (1, 0, "expected position 3"),
        (1, 4, "expected position 3"),
    ],
)
def test_a_lost_or_duplicated_step_is_an_error(step: int, position: int, match: str) -> None:
    t = table()
    s = open_session(t)
    t.begin_step(s, 0, 0, 1, 3, now=0.0)
    t.end_step(s, 3, now=0.0, ok=True)
    before = dataclasses.replace(s)
    with pytest.raises(MessageError, match=match):
        t.begin_step(s, step, position, 1, 1, now=9.0)
    assert s == before


def test_a_step_past_max_length_is_refused() -> None:
    t = table()
    s = open_session(t, max_length=10)
    t.begin_step(s, 0, 0, 1, 8, now=0.0)
    t.end_step(s, 8, now=0.0, ok=True)
    with pytest.raises(SessionLimitExceeded, match="over max_length 10"):
        t.begin_step(s, 1, 8, 1, 3, now=0.0)
    t.begin_step(s, 1, 8, 1, 2, now=0.0)  # exactly fills it
    t.end_step(s, 2, now=0.0, ok=True)
    assert s.position == 10


def test_a_step_in_flight_makes_the_session_busy() -> None:
    t = table()
    s = open_session(t)
    t.begin_step(s, 0, 0, 1, 1, now=0.0)
    with pytest.raises(MessageError, match="in flight"):
        t.begin_step(s, 0, 0, 1, 1, now=0.0)
    t.end_step(s, 1, now=0.0, ok=True)
    t.begin_step(s, 1, 1, 1, 1, now=0.0)


def test_a_failed_step_does_not_advance() -> None:
    t = table()
    s = open_session(t)
    t.begin_step(s, 0, 0, 1, 5, now=1.0)
    t.end_step(s, 5, now=2.0, ok=False)
    assert (s.step, s.position, s.busy, s.last_used) == (0, 0, False, 2.0)
    t.begin_step(s, 0, 0, 1, 5, now=3.0)  # the same step may be retried


def test_the_first_step_reserves_max_length_times_batch() -> None:
    t = table(cache_tokens=1000)
    s = open_session(t, max_length=100)
    t.begin_step(s, 0, 0, 4, 1, now=0.0)
    assert (s.batch, s.reserved, t.reserved_tokens) == (4, 400, 400)
    t.end_step(s, 1, now=0.0, ok=True)
    t.begin_step(s, 1, 1, 4, 1, now=0.0)  # later steps reserve nothing more
    assert t.reserved_tokens == 400


def test_the_batch_is_fixed_by_the_first_step() -> None:
    t = table()
    s = open_session(t)
    t.begin_step(s, 0, 0, 2, 1, now=0.0)
    t.end_step(s, 1, now=0.0, ok=True)
    with pytest.raises(MessageError, match="batch is 2"):
        t.begin_step(s, 1, 1, 3, 1, now=0.0)


def test_a_batch_the_budget_cannot_hold_is_refused_without_change() -> None:
    t = table(cache_tokens=1000)
    other = open_session(t, "a1", max_length=300)
    s = open_session(t, "a2", max_length=300)
    assert t.free_tokens == 400
    before = dataclasses.replace(s)
    with pytest.raises(SessionLimitExceeded, match="cache full"):
        t.begin_step(s, 0, 0, 3, 1, now=0.0)  # needs 600 more, 400 free
    assert s == before
    assert t.reserved_tokens == 600
    t.begin_step(s, 0, 0, 2, 1, now=0.0)  # needs 300 more: fits
    assert t.free_tokens == 100
    assert other.reserved == 300


# --- expiry -----------------------------------------------------------------------


def test_expire_drops_sessions_idle_longer_than_the_timeout() -> None:
    t = table()
    open_session(t, "a1", max_length=10, now=0.0)
    s = open_session(t, "a2", max_length=10, now=0.0)
    t.begin_step(s, 0, 0, 1, 1, now=50.0)
    t.end_step(s, 1, now=60.0, ok=True)
    assert t.expire(30.0, idle_timeout=30.0) == []  # idle exactly the timeout: kept
    assert t.expire(30.5, idle_timeout=30.0) == ["a1"]
    assert t.expire(90.0, idle_timeout=30.0) == []
    assert t.expire(91.0, idle_timeout=30.0) == ["a2"]
    assert (len(t), t.reserved_tokens) == (0, 0)


def test_expire_keeps_a_session_with_a_step_in_flight() -> None:
    t = table()
    s = open_session(t, now=0.0)
    t.begin_step(s, 0, 0, 1, 1, now=0.0)
    assert t.expire(1000.0, idle_timeout=1.0) == []
    t.end_step(s, 1, now=1000.0, ok=True)
    assert t.expire(1002.0, idle_timeout=1.0) == ["a1"]


# --- random sequences -------------------------------------------------------------

SIDS = ["a", "b", "c", "d", "e", "f"]
PEERS = [ALICE, BOB]


def _snapshot(t: SessionTable) -> list[tuple[object, ...]]:
    return sorted(
        (s.session_id, s.peer, s.reserved, s.batch, s.step, s.position, s.busy, s.last_used)
        for s in t._sessions.values()
    )


class SessionTableMachine(RuleBasedStateMachine):
    """Random open/step/close/expire sequences; a refused request changes nothing."""

    @initialize(
        cache_tokens=st.integers(1, 200),
        max_session_length=st.integers(1, 80),
        sessions_per_peer=st.integers(1, 3),
    )
    def setup(self, cache_tokens: int, max_session_length: int, sessions_per_peer: int) -> None:
        self.t = table(cache_tokens, max_session_length, sessions_per_peer)
        self.now = 0.0
        self.seqs: dict[str, int] = {}  # the seq of each step in flight

    def _refused(self, call: Callable[[], object], *errors: type[Exception]) -> None:
        before = _snapshot(self.t)
        try:
            call()
        except errors:
            assert _snapshot(self.t) == before

    @rule(sid=st.sampled_from(SIDS), peer=st.sampled_from(PEERS), max_length=st.integers(0, 100))
    def open(self, sid: str, peer: str, max_length: int) -> None:
        self._refused(
            lambda: self.t.open(sid, peer, 0, 1, max_length, self.now),
            MessageError,
            SessionLimitExceeded,
        )

    @rule(
        sid=st.sampled_from(SIDS),
        peer=st.sampled_from(PEERS),
        batch=st.integers(1, 4),
        seq=st.integers(1, 30),
        honest=st.booleans(),
    )
    def begin(self, sid: str, peer: str, batch: int, seq: int, honest: bool) -> None:
        def call() -> None:
            s = self.t.get(sid, peer)
            step, position = (s.step, s.position) if honest else (s.step + 1, s.position)
            self.t.begin_step(s, step, position, batch, seq, self.now)
            self.seqs[sid] = seq

        self._refused(call, UnknownSession, MessageError, SessionLimitExceeded)

    @rule(sid=st.sampled_from(SIDS), ok=st.booleans())
    def end(self, sid: str, ok: bool) -> None:
        s = self.t._sessions.get(sid)
        if s is not None and s.busy:
            self.t.end_step(s, self.seqs.pop(sid), self.now, ok=ok)

    @rule(sid=st.sampled_from(SIDS))
    def close(self, sid: str) -> None:
        self.t.close(sid)
        self.seqs.pop(sid, None)

    @rule(dt=st.floats(0, 20), timeout=st.floats(1, 10))
    def tick(self, dt: float, timeout: float) -> None:
        self.now += dt
        for sid in self.t.expire(self.now, timeout):
            assert sid not in self.t._sessions
            assert sid not in self.seqs  # a busy session is never expired

    @invariant()
    def budget_holds(self) -> None:
        t = self.t
        assert 0 <= t.reserved_tokens <= t.cache_tokens
        assert t.free_tokens == t.cache_tokens - t.reserved_tokens
        for s in t._sessions.values():
            assert s.max_length <= t.max_session_length
            assert s.reserved == s.max_length * (s.batch or 1)
            assert 0 <= s.position <= s.max_length
            assert s.busy == (s.session_id in self.seqs)
        for peer in PEERS:
            assert sum(s.peer == peer for s in t._sessions.values()) <= t.sessions_per_peer


SessionTableMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=30)
TestSessionTable = SessionTableMachine.TestCase
