"""Admission and bookkeeping of inference sessions: the pure core.

A session reserves `max_length x batch` cache tokens when it opens (batch is
known at the first step, and the reservation grows then). The server refuses
a session, with `SessionLimitExceeded`, when the reservation would exceed the
total cache budget, when one peer already holds its quota of sessions, or
when `max_length` is over the per-session limit. The last `reserve_tokens`
of the budget are kept for sessions with a ticket (`priority` paid or
private): a normal session cannot take them. Each step must carry the
next step number and the position where the cache ends, so a lost or
duplicated step is an error, never silent corruption. Sessions idle for
longer than the timeout are dropped by `expire`.

No I/O and no clock: `now` is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from potluck.errors import MessageError, SessionLimitExceeded, UnknownSession


@dataclass
class Session:
    """One open inference session on this server."""

    session_id: str
    peer: str
    start: int
    end: int
    max_length: int
    reserved: int
    last_used: float
    batch: int | None = None
    position: int = 0
    step: int = 0
    cache: Any = field(default=None, repr=False)
    span: Any = field(default=None, repr=False)  # the BlockSpan it opened on
    busy: bool = False
    priority: str = "normal"  # the scheduling class: paid, private or normal
    ticket: Any = field(default=None, repr=False)  # the redeemed Ticket, if any
    inputs: str = "0" * 64  # the input chain of the steps so far (potluck.verify.commitment)
    codec: Any = field(default=None, repr=False)  # the WireCodec its hidden states travel in


class SessionTable:
    """Open sessions, the cache budget and the per-peer quota."""

    def __init__(
        self,
        *,
        cache_tokens: int,
        max_session_length: int,
        sessions_per_peer: int,
        reserve_tokens: int = 0,
    ):
        self.cache_tokens = cache_tokens
        self.reserve_tokens = reserve_tokens
        self.max_session_length = max_session_length
        self.sessions_per_peer = sessions_per_peer
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def reserved_tokens(self) -> int:
        return sum(s.reserved for s in self._sessions.values())

    @property
    def free_tokens(self) -> int:
        return self.cache_tokens - self.reserved_tokens

    def free_for(self, priority: str) -> int:
        """Cache tokens a new session of `priority` may still reserve."""
        reserve = 0 if priority in ("paid", "private") else self.reserve_tokens
        return self.free_tokens - reserve

    def open(
        self,
        session_id: str,
        peer: str,
        start: int,
        end: int,
        max_length: int,
        now: float,
        *,
        priority: str = "normal",
    ) -> Session:
        if session_id in self._sessions:
            raise MessageError(f"session {session_id} is already open")
        if max_length > self.max_session_length:
            raise SessionLimitExceeded(
                f"max_length {max_length} is over this server's limit of {self.max_session_length}"
            )
        held = sum(1 for s in self._sessions.values() if s.peer == peer)
        if held >= self.sessions_per_peer:
            raise SessionLimitExceeded(
                f"peer already holds {held} sessions, the limit per peer on this server"
            )
        free = self.free_for(priority)
        if max_length > free:
            kept = "" if free == self.free_tokens else " (the rest is kept for paid sessions)"
            raise SessionLimitExceeded(
                f"cache full: {max_length} tokens asked, {max(0, free)} free{kept}"
            )
        session = Session(session_id, peer, start, end, max_length, max_length, now)
        session.priority = priority
        self._sessions[session_id] = session
        return session

    def get(self, session_id: str, peer: str) -> Session:
        """The session, if it exists and belongs to `peer`."""
        session = self._sessions.get(session_id)
        if session is None or session.peer != peer:
            raise UnknownSession(f"no open session {session_id}")
        return session

    def begin_step(
        self, session: Session, step: int, position: int, batch: int, seq: int, now: float
    ) -> None:
        """Check a step against the session and reserve what it needs."""
        if session.busy:
            raise MessageError(f"session {session.session_id} already has a step in flight")
        if step != session.step:
            raise MessageError(f"expected step {session.step}, got step {step}")
        if position != session.position:
            raise MessageError(f"expected position {session.position}, got {position}")
        if position + seq > session.max_length:
            raise SessionLimitExceeded(
                f"step would reach {position + seq} tokens, over max_length {session.max_length}"
            )
        if session.batch is None:
            need = session.max_length * batch
            extra = need - session.reserved
            free = self.free_for(session.priority)
            if extra > free:
                raise SessionLimitExceeded(
                    f"cache full: batch {batch} needs {extra} more tokens, {max(0, free)} free"
                )
            session.reserved = need
            session.batch = batch
        elif batch != session.batch:
            raise MessageError(f"session batch is {session.batch}, step has batch {batch}")
        session.busy = True
        session.last_used = now

    def end_step(self, session: Session, seq: int, now: float, *, ok: bool) -> None:
        session.busy = False
        session.last_used = now
        if ok:
            session.position += seq
            session.step += 1

    def close(self, session_id: str) -> Session | None:
        return self._sessions.pop(session_id, None)

    def close_peer_sessions(self, session_ids: list[str]) -> None:
        for session_id in session_ids:
            self.close(session_id)

    def expire(self, now: float, idle_timeout: float) -> list[str]:
        """Drop sessions idle for longer than `idle_timeout`; returns their ids."""
        return [s.session_id for s in self.expire_sessions(now, idle_timeout)]

    def expire_sessions(self, now: float, idle_timeout: float) -> list[Session]:
        """Drop sessions idle for longer than `idle_timeout`; returns them."""
        dead = [
            s for s in self._sessions.values() if not s.busy and now - s.last_used > idle_timeout
        ]
        for s in dead:
            del self._sessions[s.session_id]
        return dead
