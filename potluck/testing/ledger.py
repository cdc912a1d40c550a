"""Deterministic ledger workloads for tests and benchmarks.

`LedgerWorkload` owns a genesis with `k` validators and `n` accounts, all
with keys derived from a seed, and writes valid entries for them with
`potluck.ledger.entry.make_entry`. It tracks each author's head (seq, hash,
balance) and each account's transfers not yet received, so every entry it
produces is valid when delivered after the entries it names. `entries` holds
everything produced, in such a causal order. Timestamps come from a counter,
never from the clock: the same seed and calls give the same bytes.

Example::

    import random

    from potluck.testing.ledger import LedgerWorkload, make_ledger

    work = LedgerWorkload(validators=3, accounts=4, seed=7)
    work.grant_all(1000)  # a grant per account and its receive
    work.random_activity(50, random.Random(7))  # sends and receives
    spend, double = work.fork(work.accounts[0])  # an equivocation
    work.checkpoint(work.validators[0])  # a validator signs the frontier

    ledger = make_ledger(work.genesis)
    ledger.ingest(work.entries)
    assert ledger.state().entries == {e.hash for e in work.entries}
    assert ledger.account(work.key(0)).frozen
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from potluck.ledger.core import (
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_PENDING_BYTES,
    Backend,
    Ledger,
    MemoryBackend,
)
from potluck.ledger.entry import DEBIT_KINDS, ZERO_HASH, Entry, make_entry
from potluck.ledger.genesis import Genesis
from potluck.p2p.identity import Identity

START_TIME = 1_795_830_000_000
"""The first timestamp a workload writes (ms); each entry adds one."""


class CachedIdentity(Identity):
    """An `Identity` that derives its Ed25519 key once, so signing costs only the signature.

    `Identity` rebuilds the key from its bytes on every `sign` and
    `public_bytes`; a workload signs thousands of entries per key. It equals
    the plain `Identity` of the same key.
    """

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Identity) and other.private_bytes == self.private_bytes

    __hash__ = Identity.__hash__

    @cached_property
    def _key(self) -> ed25519.Ed25519PrivateKey:
        return ed25519.Ed25519PrivateKey.from_private_bytes(self.private_bytes)

    @cached_property
    def public_bytes(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @cached_property
    def account(self) -> str:
        """The ledger account: the public key in hex."""
        return self.public_bytes.hex()

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


def seeded_identity(seed: object, name: str) -> CachedIdentity:
    """The same key for the same `(seed, name)`, every run."""
    return CachedIdentity(hashlib.sha256(f"potluck-workload/{seed}/{name}".encode()).digest())


def make_genesis(validators: Sequence[Identity], *, name: str = "workload") -> Genesis:
    """A genesis listing `validators`, with a fixed model identity and creation time."""
    return Genesis(
        name=name,
        model_name="tiny",
        model_identity=hashlib.sha256(b"potluck-workload/model").hexdigest(),
        validators=tuple(v.public_bytes.hex() for v in validators),
        created=START_TIME,
    )


def make_ledger(
    genesis: Genesis,
    backend: Backend | None = None,
    *,
    max_pending: int = DEFAULT_MAX_PENDING,
    max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
    executor: Executor | None = None,
) -> Ledger:
    """A `Ledger` for `genesis` over `backend` (a fresh `MemoryBackend` by default)."""
    return Ledger(
        genesis,
        backend if backend is not None else MemoryBackend(),
        max_pending=max_pending,
        max_pending_bytes=max_pending_bytes,
        executor=executor,
    )


@dataclass
class Head:
    """An author's latest entry on the branch the workload extends."""

    seq: int = 0
    hash: str = ZERO_HASH
    balance: int = 0


class LedgerWorkload:
    """Valid entries for a swarm of seeded keys; see the module docstring.

    `validators` and `accounts` are `Identity` objects; `key(i)` is account
    `i`'s hex key. `chains[author]` is the author's branch that the workload
    extends (forks made by `fork` are not on it), `pending[account]` the
    transfers to `account` that it has not received yet, in arrival order.
    """

    def __init__(
        self,
        *,
        validators: int = 3,
        accounts: int = 4,
        seed: object = 0,
        name: str = "workload",
    ) -> None:
        if validators < 1 or accounts < 0:
            raise ValueError("a workload needs at least one validator")
        self.validators: list[CachedIdentity] = [
            seeded_identity(seed, f"validator-{i}") for i in range(validators)
        ]
        self.accounts: list[CachedIdentity] = [
            seeded_identity(seed, f"account-{i}") for i in range(accounts)
        ]
        self.genesis = make_genesis(self.validators, name=name)
        self.swarm = self.genesis.swarm_id
        self.entries: list[Entry] = []
        self.heads: dict[str, Head] = {}
        self.chains: dict[str, list[Entry]] = {}
        self.pending: dict[str, list[Entry]] = {a.account: [] for a in self.accounts}
        self.forks: list[tuple[Entry, Entry]] = []
        self._by_hash: dict[str, Entry] = {}
        self._time = START_TIME
        self._identities: dict[str, CachedIdentity] = {
            i.account: i for i in (*self.validators, *self.accounts)
        }

    # ---- lookups ------------------------------------------------------------

    def key(self, index: int) -> str:
        """Account `index`'s hex key."""
        return self.accounts[index].account

    def identity(self, account: str) -> CachedIdentity:
        return self._identities[account]

    def get(self, entry_hash: str) -> Entry:
        """An entry the workload wrote (`KeyError` if none)."""
        return self._by_hash[entry_hash]

    def head(self, author: Identity | str) -> Head:
        return self.heads.get(_hex(author), Head())

    def frontier(self) -> dict[str, list[Any]]:
        """Every author's head on the workload's branches, as a checkpoint body holds it."""
        return {author: [h.seq, h.hash] for author, h in sorted(self.heads.items())}

    def tick(self) -> int:
        """The next timestamp."""
        self._time += 1
        return self._time

    # ---- writing entries ----------------------------------------------------

    def sign(
        self,
        author: Identity,
        kind: str,
        body: Mapping[str, Any],
        *,
        seq: int | None = None,
        prev: str | None = None,
        balance: int | None = None,
        swarm: str | None = None,
    ) -> Entry:
        """An entry by `author` after its head, without recording it anywhere.

        Each field defaults to what makes the entry valid; pass one to make
        an invalid entry for a test.
        """
        head = self.head(author)
        if balance is None:
            balance = head.balance
            if kind in DEBIT_KINDS:
                balance -= int(body["amount"])
            elif kind == "receive":
                balance += self._source_amount(str(body["source"]))
        return make_entry(
            author,
            swarm=self.swarm if swarm is None else swarm,
            seq=head.seq + 1 if seq is None else seq,
            prev=head.hash if prev is None else prev,
            time=self.tick(),
            kind=kind,
            body=body,
            balance=balance,
        )

    def append(self, author: Identity, kind: str, body: Mapping[str, Any]) -> Entry:
        """Sign the next valid entry of `author`'s chain and record it."""
        entry = self.sign(author, kind, body)
        self._record(entry)
        return entry

    def grant(self, validator: Identity, to: Identity | str, amount: int) -> Entry:
        return self.append(validator, "grant", {"to": _hex(to), "amount": amount})

    def mint(self, validator: Identity, to: Identity | str, amount: int, epoch: int = 0) -> Entry:
        return self.append(validator, "mint", {"to": _hex(to), "amount": amount, "epoch": epoch})

    def send(self, account: Identity, to: Identity | str, amount: int) -> Entry:
        return self.append(account, "send", {"to": _hex(to), "amount": amount})

    def receive(self, account: Identity, source: Entry | None = None) -> Entry:
        """Receive `source` (by default the oldest transfer not received yet)."""
        waiting = self.pending[_hex(account)]
        if source is None:
            if not waiting:
                raise ValueError("nothing to receive")
            source = waiting[0]
        return self.append(account, "receive", {"source": source.hash})

    def checkpoint(
        self, validator: Identity, frontier: Mapping[str, Sequence[Any]] | None = None
    ) -> Entry:
        """A checkpoint of `frontier` (by default the workload's current heads)."""
        body = self.frontier() if frontier is None else {a: list(h) for a, h in frontier.items()}
        return self.append(validator, "checkpoint", {"frontier": body})

    def grant_all(self, amount: int) -> list[Entry]:
        """Validators grant `amount` to every account in turn; each account receives it."""
        made = []
        for i, account in enumerate(self.accounts):
            made.append(self.grant(self.validators[i % len(self.validators)], account, amount))
        for account in self.accounts:
            made.append(self.receive(account))
        return made

    def random_activity(self, n_entries: int, rng: random.Random) -> list[Entry]:
        """`n_entries` sends and receives among the accounts, chosen by `rng`.

        An account with transfers waiting receives one (at random) half the
        time, or always when it has nothing to spend; otherwise it sends
        between 1 and all of its balance to another account.
        """
        accounts = self.accounts
        if n_entries > 0 and len(accounts) < 2:
            raise ValueError("random activity needs two accounts")
        made: list[Entry] = []
        idle = 0
        while len(made) < n_entries:
            index = rng.randrange(len(accounts))
            account = accounts[index]
            waiting = self.pending[account.account]
            balance = self.head(account).balance
            if waiting and (balance == 0 or rng.random() < 0.5):
                source = waiting[rng.randrange(len(waiting))]
                made.append(self.receive(account, source))
            elif balance > 0:
                other = rng.randrange(len(accounts) - 1)
                to = accounts[other + (other >= index)]
                made.append(self.send(account, to, rng.randint(1, balance)))
            else:
                idle += 1
                if idle > 64 * len(accounts) and not self._anyone_can_act():
                    raise ValueError("no account has points to send or receive")
                continue
            idle = 0
        return made

    def fork(
        self,
        account: Identity,
        *,
        seq: int | None = None,
        to: Identity | str | None = None,
        amount: int | None = None,
    ) -> tuple[Entry, Entry]:
        """A double spend: a second, different send at an already used seq of `account`.

        The new send has the same seq and prev as the workload's entry at
        `seq` (default: the head), spends `amount` (default: the whole
        balance before that seq) and goes to `to` (default: an account that
        the original did not pay). Returns `(original, double)`; the double
        is recorded in `entries` and `forks` but not on the chain, and its
        recipient only takes it if asked to (`receive(recipient, double)`).
        """
        author = account.public_bytes.hex()
        chain = self.chains.get(author, [])
        seq = len(chain) if seq is None else seq
        if not 1 <= seq <= len(chain):
            raise ValueError(f"{author[:12]} has no entry at seq {seq} to fork")
        original = chain[seq - 1]
        before = chain[seq - 2].balance if seq > 1 else 0
        amount = before if amount is None else amount
        if amount < 1:
            raise ValueError(f"{author[:12]} has no points before seq {seq} to spend twice")
        if to is None:
            others = [a for a in self.accounts if a.account not in (author, original.to)]
            if not others:
                raise ValueError("a double spend needs an account the original did not pay")
            to = others[0]
        double = make_entry(
            account,
            swarm=self.swarm,
            seq=seq,
            prev=original.prev,
            time=self.tick(),
            kind="send",
            body={"to": _hex(to), "amount": amount},
            balance=before - amount,
        )
        self.entries.append(double)
        self._by_hash[double.hash] = double
        self.forks.append((original, double))
        return original, double

    # ---- bookkeeping --------------------------------------------------------

    def _record(self, entry: Entry) -> None:
        self.entries.append(entry)
        self._by_hash[entry.hash] = entry
        self.heads[entry.author] = Head(entry.seq, entry.hash, entry.balance)
        self.chains.setdefault(entry.author, []).append(entry)
        to = entry.to
        if to is not None and to in self.pending:
            self.pending[to].append(entry)
        source = entry.source
        if source is not None:
            waiting = self.pending.get(entry.author)
            if waiting is not None:
                for i, candidate in enumerate(waiting):
                    if candidate.hash == source:
                        del waiting[i]
                        break

    def _source_amount(self, source: str) -> int:
        entry = self._by_hash.get(source)
        if entry is None:
            raise ValueError(f"the workload wrote no entry {source[:12]}; pass a balance")
        return entry.amount

    def _anyone_can_act(self) -> bool:
        return any(self.pending[a.account] or self.head(a).balance for a in self.accounts)


def _hex(who: Identity | str) -> str:
    if isinstance(who, str):
        return who
    if isinstance(who, CachedIdentity):
        return who.account
    return who.public_bytes.hex()
