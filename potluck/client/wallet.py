"""The client's wallet: its points, and the tickets that buy priority.

```python
model = AutoDistributedModelForCausalLM.from_pretrained(
    "smollm2", initial_peers=[addr], genesis="genesis.json", identity=load_identity("me.key")
)
print(model.wallet.balance())
model.generate(ids, max_new_tokens=32, priority="high")   # pays the route's servers
```

The wallet signs with the client's key and reads and writes the ledger
through a node's replica (the first initial peer). A ticket pays one server
for one session: `priority_price` (class `paid`) or `private_price` (class
`private`) points per 1,000 token x blocks, for the session's `max_length`
tokens through the hop's blocks, valid for the genesis's `ticket_seconds`.
The server refunds what the session did not use when it closes
(`potluck.ledger.tickets`); refunds arrive as sends, which `receive()` takes.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from potluck.client.routing import Hop
from potluck.client.runtime import ClientRuntime
from potluck.errors import InsufficientBalance
from potluck.ledger.core import AccountState
from potluck.ledger.entry import Entry
from potluck.ledger.genesis import Genesis
from potluck.ledger.tickets import ticket_body, ticket_price
from potluck.ledger.wallet import RemoteReplica, Wallet
from potluck.p2p.host import parse_multiaddr

__all__ = ["ClientWallet"]


class ClientWallet:
    """The client's account, usable from ordinary (synchronous) code."""

    def __init__(
        self,
        runtime: ClientRuntime,
        genesis: Genesis,
        replica_addr: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.runtime = runtime
        self.genesis = genesis
        self.clock = clock
        peer_id = str(parse_multiaddr(replica_addr).get_peer_id())
        access = RemoteReplica(runtime.host, peer_id, [replica_addr])
        self.wallet = Wallet(
            runtime.identity, genesis.swarm_id, access, validators=genesis.validators
        )
        #: Points spent on tickets by this wallet object.
        self.spent_on_tickets = 0

    @property
    def account(self) -> str:
        return self.wallet.account

    def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.runtime.run(functools.partial(fn, *args, **kwargs))

    def state(self) -> AccountState:
        """Balance, points slashed and available, as the replica has them now."""
        state: AccountState = self._run(self.wallet.state)
        return state

    def balance(self) -> int:
        """The account's balance (what it can spend, once transfers are received)."""
        return self.state().balance

    def receive(self) -> list[Entry]:
        """Take the points sent to this account (grants, refunds, sends)."""
        taken: list[Entry] = self._run(self.wallet.receive)
        return taken

    def history(self, limit: int = 50) -> list[Entry]:
        entries: list[Entry] = self._run(self.wallet.history, limit)
        return entries

    def send(self, to: str, amount: int, memo: str = "") -> Entry:
        entry: Entry = self._run(self.wallet.send, to, amount, memo)
        return entry

    def price(self, hop: Hop, max_length: int, cls: str) -> int:
        """Points a ticket of class `cls` costs for `max_length` tokens through `hop`."""
        economy = self.genesis.economy
        per_1000 = economy.priority_price if cls == "paid" else economy.private_price
        return ticket_price(per_1000, max_length, hop.end - hop.start)

    async def buy_ticket(self, hop: Hop, session: str, max_length: int, cls: str) -> Entry | None:
        """Sign and store a ticket paying `hop`'s server for `session` (None when the
        class costs nothing); `InsufficientBalance` when the account cannot pay."""
        amount = self.price(hop, max_length, cls)
        if amount == 0:
            return None
        state = await self.wallet.state()
        if state.available < amount:
            await self.wallet.receive()  # grants and refunds may be waiting
            state = await self.wallet.state()
            if state.available < amount:
                raise InsufficientBalance(
                    f"a {cls} ticket for blocks {hop.start}:{hop.end} costs {amount} points; "
                    f"account {self.account[:12]} has {state.available} available"
                )
        expires = int(self.clock() * 1000) + self.genesis.economy.ticket_seconds * 1000
        body = ticket_body(
            server=hop.server_account,
            session=session,
            start=hop.start,
            end=hop.end,
            tokens=max_length,
            cls=cls,
            amount=amount,
            expires_ms=expires,
        )
        entry = await self.wallet.ticket(
            body["to"],
            amount,
            session=session,
            expires_ms=expires,
            details=body["details"],
        )
        self.spent_on_tickets += amount
        return entry
