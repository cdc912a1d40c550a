"""A wallet: one account's balance, history, sends and receives.

The wallet holds the account's key and signs its entries itself; a replica
(in the same process, or any node over libp2p) only stores and relays them.

```python
async with open_host(identity) as host:
    wallet = Wallet(identity, genesis.swarm_id, RemoteReplica(host, node_addr))
    await wallet.receive()                 # take every transfer sent to us
    await wallet.send(other_account, 25)   # a signed send, acknowledged when stored
    print(await wallet.balance())
```

An entry is acknowledged once the replica stored it durably (its ingest
transaction committed). Signing two different entries at one seq is a fork
and freezes the account, so the wallet is careful about it:

- it remembers its own latest entries (`remember`), so it can write through
  a replica that has not seen them yet: it writes after its own head and
  sends the replica the entries it lacks together with the new one;
- an entry whose acknowledgement was lost (the replica died mid-request) is
  submitted again, unchanged, before anything new is signed;
- with a `state_file` it records the last seq it wrote, so that a new
  wallet process refuses a replica that is behind that seq.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio

from potluck.errors import (
    AccountFrozen,
    InsufficientBalance,
    LedgerError,
    MissingDependency,
    NetworkError,
    NotValidator,
    PeerTimeout,
    ledger_error,
)
from potluck.ledger.core import AccountState
from potluck.ledger.entry import DEBIT_KINDS, ZERO_HASH, Entry, decode_wire, make_entry
from potluck.ledger.rules import next_balance
from potluck.p2p.identity import Identity
from potluck.wire import AccountReply, AccountRequest, ErrorReply, LedgerAck, LedgerPush


@dataclass(frozen=True)
class AccountView:
    """An account's state with the transfers it may receive and some history."""

    state: AccountState
    receivable: list[Entry]
    history: list[Entry]


@dataclass(frozen=True)
class _WriteView:
    state: AccountState  # what to write after
    receivable: list[Entry]
    replica_seq: int  # how far the replica has our chain


class ReplicaAccess(Protocol):
    """How a wallet reads and writes the ledger: a local replica or a remote node."""

    async def account(self, account: str, history: int = 0, before_seq: int = 0) -> AccountView: ...

    async def submit(self, entries: Sequence[Entry]) -> list[tuple[str, str, str]]:
        """Store entries; returns the rejections as `(hash, code, message)`."""
        ...


def author_entry(
    identity: Identity,
    swarm: str,
    state: AccountState,
    kind: str,
    body: Mapping[str, Any],
    *,
    now_ms: int,
    source: Entry | None = None,
) -> Entry:
    """The next entry of `identity`'s chain after `state`, with its balance worked out.

    Refuses (`InsufficientBalance`) a `send` or `ticket` for more than the
    balance, or for more than `state.available` when the account was slashed,
    as the replica would on submission."""
    if state.frozen:
        raise AccountFrozen(f"account {state.account[:12]} forked its chain and is frozen")
    amount = body.get("amount", 0) if kind in DEBIT_KINDS else 0
    balance = next_balance(kind, amount if isinstance(amount, int) else 0, state.balance, source)
    if balance < 0:
        raise InsufficientBalance(f"cannot {kind} {amount} points: the balance is {state.balance}")
    if kind in DEBIT_KINDS and state.slashed and balance < state.slashed:
        raise InsufficientBalance(
            f"cannot {kind} {amount} points: account {state.account[:12]} was slashed"
            f" {state.slashed} points: {state.available} of its balance of {state.balance}"
            " are available"
        )
    return make_entry(
        identity,
        swarm=swarm,
        seq=state.seq + 1,
        prev=state.head if state.seq else ZERO_HASH,
        time=now_ms,
        kind=kind,
        body=body,
        balance=balance,
    )


class Wallet:
    """One account's view of the ledger and the entries it signs."""

    def __init__(
        self,
        identity: Identity,
        swarm_id: str,
        access: ReplicaAccess,
        *,
        validators: Sequence[str] = (),
        state_file: Path | None = None,
        clock: Callable[[], float] = time.time,
        remember: int = 1000,
    ) -> None:
        self.identity = identity
        self.account = identity.public_bytes.hex()
        self.swarm_id = swarm_id
        self.access = access
        self.validators = frozenset(validators)
        self.state_file = state_file
        self.clock = clock
        self.remember = remember
        self._lock = trio.Lock()
        self._written = self._load_written()
        self._state: AccountState | None = None
        self._slashed = 0  # as the replica last reported it
        self._chain: list[Entry] = []
        self._unacked: Entry | None = None

    # ---- reading ----------------------------------------------------------

    async def state(self) -> AccountState:
        return (await self.access.account(self.account)).state

    async def balance(self) -> int:
        return (await self.state()).balance

    async def history(self, limit: int = 50, before_seq: int = 0) -> list[Entry]:
        """The account's own entries, newest first."""
        view = await self.access.account(self.account, history=limit, before_seq=before_seq)
        return view.history

    async def receivable(self) -> list[Entry]:
        """Transfers to this account that it has not received yet."""
        return (await self.access.account(self.account)).receivable

    async def watch(self, interval: float = 1.0) -> AsyncIterator[AccountState]:
        """Yield the account's state now and each time it changes (polled): its seq,
        balance, slashed points or number of receivable transfers."""
        last: tuple[int, int, int, int] | None = None
        while True:
            view = await self.access.account(self.account)
            key = (view.state.seq, view.state.balance, view.state.slashed, len(view.receivable))
            if key != last:
                last = key
                yield view.state
            await trio.sleep(interval)

    # ---- writing ----------------------------------------------------------

    async def send(self, to: str, amount: int, memo: str = "") -> Entry:
        """Send `amount` points to account `to`; returns the acknowledged entry."""
        body: dict[str, Any] = {"to": to, "amount": amount}
        if memo:
            body["memo"] = memo
        return await self._write("send", body)

    async def ticket(
        self,
        to: str,
        amount: int,
        *,
        session: str,
        expires_ms: int,
        details: Mapping[str, Any] | None = None,
    ) -> Entry:
        """Pay server `to` a ticket of `amount` points for `session`, valid until
        `expires_ms` (`potluck.ledger.tickets.ticket_body` builds the details). A debit
        like `send`: refused with `InsufficientBalance` before signing if it overdraws."""
        body: dict[str, Any] = {
            "to": to,
            "amount": amount,
            "session": session,
            "expires": expires_ms,
        }
        if details is not None:
            body["details"] = dict(details)
        return await self._write("ticket", body)

    async def grant(self, to: str, amount: int, memo: str = "") -> Entry:
        """As a validator: grant `amount` new points to `to`."""
        if self.validators and self.account not in self.validators:
            raise NotValidator("only a validator listed in genesis can grant points")
        body: dict[str, Any] = {"to": to, "amount": amount}
        if memo:
            body["memo"] = memo
        return await self._write("grant", body)

    async def write(self, kind: str, body: Mapping[str, Any]) -> Entry:
        """Sign and store any other kind of entry (attest, checkpoint, receipt...)."""
        if kind in DEBIT_KINDS or kind == "receive":
            raise LedgerError(f"use send(), ticket() or receive() for a {kind}")
        return await self._write(kind, body)

    async def receive(
        self,
        limit: int = 100,
        *,
        kinds: Collection[str] | None = None,
        sources: Collection[str] | None = None,
    ) -> list[Entry]:
        """Receive up to `limit` pending transfers, oldest first; returns the receive entries.

        `kinds` takes only transfers of those kinds (e.g. not tickets) and
        `sources` only the transfers with those hashes; None takes any."""
        done: list[Entry] = []
        async with self._lock:
            view = await self._fresh_view()
            state = view.state
            taken = {e.source for e in self._chain if e.seq > view.replica_seq}
            for source in view.receivable:
                if len(done) >= limit:
                    break
                if source.hash in taken:
                    continue  # received in an entry this replica has not seen yet
                if kinds is not None and source.kind not in kinds:
                    continue
                if sources is not None and source.hash not in sources:
                    continue
                entry = author_entry(
                    self.identity,
                    self.swarm_id,
                    state,
                    "receive",
                    {"source": source.hash},
                    now_ms=self._now(),
                    source=source,
                )
                await self._store(entry, view.replica_seq)
                done.append(entry)
                state = self._state_after(entry, slashed=state.slashed)
        return done

    async def _write(self, kind: str, body: Mapping[str, Any]) -> Entry:
        async with self._lock:
            view = await self._fresh_view()
            entry = author_entry(
                self.identity, self.swarm_id, view.state, kind, body, now_ms=self._now()
            )
            await self._store(entry, view.replica_seq)
            return entry

    async def _fresh_view(self) -> _WriteView:
        """The state to write after, first finishing an entry whose acknowledgement was lost."""
        if self._unacked is not None:
            entry = self._unacked
            view = await self.access.account(self.account)
            await self._store(entry, view.state.seq)
        view = await self.access.account(self.account)
        self._slashed = view.state.slashed
        own = self._state
        if own is not None and view.state.seq < own.seq:
            # the replica has not seen our latest entries: write after ours, and send it
            # the missing ones along with the new one (they are in `_chain`)
            if not self._chain or self._chain[0].seq > view.state.seq + 1:
                raise NetworkError(
                    f"the replica is behind this account: it has seq {view.state.seq}, "
                    f"but this wallet already wrote seq {own.seq}; wait for it to sync "
                    "or use another peer"
                )
            return _WriteView(
                dataclasses.replace(own, slashed=view.state.slashed),
                view.receivable,
                view.state.seq,
            )
        written = self._written
        if own is None and written is not None and view.state.seq < written[0]:
            raise NetworkError(
                f"the replica is behind this account: it has seq {view.state.seq}, "
                f"but this wallet already wrote seq {written[0]}; wait for it to sync "
                "or use another peer"
            )
        return _WriteView(view.state, view.receivable, view.state.seq)

    async def _store(self, entry: Entry, replica_seq: int) -> None:
        """Submit `entry` with any of our entries the replica lacks; return once stored."""
        missing = [e for e in self._chain if replica_seq < e.seq < entry.seq]
        self._unacked = entry
        rejected = await self.access.submit([*missing, entry])
        for entry_hash, code, message in rejected:
            if code != "replayed" and entry_hash in (entry.hash, ""):
                error = ledger_error(code, message)
                if not isinstance(error, MissingDependency):
                    self._unacked = None  # refused for good: never resubmit it
                # else the replica holds it back until what it needs arrives, and may
                # store it then: it stays unacknowledged and is submitted again, unchanged
                raise error
        self._unacked = None
        self._written = (entry.seq, entry.hash)
        self._state = self._state_after(entry, slashed=self._slashed)
        self._chain.append(entry)
        del self._chain[: -self.remember]
        self._save_written()

    def _state_after(self, entry: Entry, *, slashed: int) -> AccountState:
        return AccountState(self.account, entry.balance, entry.seq, entry.hash, False, slashed)

    def _now(self) -> int:
        return int(self.clock() * 1000)

    def _load_written(self) -> tuple[int, str] | None:
        if self.state_file is None or not self.state_file.exists():
            return None
        try:
            data = json.loads(self.state_file.read_text())
            if data.get("account") != self.account:
                return None
            return int(data["seq"]), str(data["hash"])
        except (ValueError, KeyError, TypeError):
            return None

    def _save_written(self) -> None:
        if self.state_file is None or self._written is None:
            return
        seq, entry_hash = self._written
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"account": self.account, "seq": seq, "hash": entry_hash}))
        os.replace(tmp, self.state_file)


class LocalReplica:
    """`ReplicaAccess` to a `Replica` in this process (a node's own wallet)."""

    def __init__(self, replica: Any) -> None:
        self.replica = replica

    async def account(self, account: str, history: int = 0, before_seq: int = 0) -> AccountView:
        reply = await self.replica.db(
            self.replica.account_reply, AccountRequest(account, history, before_seq)
        )
        return _view(reply)

    async def submit(self, entries: Sequence[Entry]) -> list[tuple[str, str, str]]:
        report = await self.replica.submit(entries)
        return [("" if e is None else e.hash, exc.code, str(exc)) for e, exc in report.rejected]


class RemoteReplica:
    """`ReplicaAccess` to a node's replica over libp2p (`/potluck/ledger/1.0.0`)."""

    def __init__(self, host: Any, peer_id: str, addrs: Sequence[str], timeout: float = 30.0):
        self.host = host
        self.peer_id = peer_id
        self.addrs = tuple(addrs)
        self.timeout = timeout

    async def _request(self, msg: Any) -> Any:
        from potluck.ledger.replica import PROTOCOL_LEDGER

        with trio.move_on_after(self.timeout) as scope:
            reply = await self.host.request(self.peer_id, PROTOCOL_LEDGER, msg, addrs=self.addrs)
        if scope.cancelled_caught:
            raise PeerTimeout(f"{self.peer_id} did not answer in {self.timeout:.0f} s")
        if isinstance(reply, ErrorReply):
            raise reply.to_exception()
        return reply

    async def account(self, account: str, history: int = 0, before_seq: int = 0) -> AccountView:
        reply = await self._request(AccountRequest(account, history, before_seq))
        if not isinstance(reply, AccountReply):
            raise NetworkError(f"{self.peer_id} answered with {type(reply).__name__}")
        return _view(reply)

    async def submit(self, entries: Sequence[Entry]) -> list[tuple[str, str, str]]:
        reply = await self._request(LedgerPush(tuple(tuple(e.wire()) for e in entries)))  # type: ignore[misc]
        if not isinstance(reply, LedgerAck):
            raise NetworkError(f"{self.peer_id} answered with {type(reply).__name__}")
        return list(reply.rejected)


def _view(reply: AccountReply) -> AccountView:
    state = AccountState(
        reply.account, reply.balance, reply.seq, reply.head, reply.frozen, reply.slashed
    )
    return AccountView(
        state=state,
        receivable=[decode_wire(item) for item in reply.receivable],
        history=[decode_wire(item) for item in reply.history],
    )
