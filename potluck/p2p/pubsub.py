"""GossipSub topics on the node's libp2p host.

`open_pubsub(host)` runs py-libp2p's Pubsub with a GossipSub router next to
the host and yields `Topics`, with `publish(topic, data)` and
`subscribe(topic)` (an async iterator of `(sender peer ID, data)`).

py-libp2p 0.8.1's defaults lose messages (measured, see shared/STACK.md and
docs/protocol.md): GossipSub allows 10 messages per second per peer and
topic, counting a node's own publishes and what it relays, and drops the
rest; each peer's outgoing queue holds 32 RPCs and each subscription 32
messages, dropping silently on overflow. Here spam protection is off (the
ledger verifies every entry and pays for nothing per message), and the two
queues hold `QUEUE_SIZE`. The queue sizes are module globals of
`libp2p.pubsub.pubsub` without a constructor option, so `_raise_queue_limits`
sets them once, before any subscription or peer queue exists. Nothing that
must arrive relies on pubsub alone: the ledger backs it with pull-based sync.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.pubsub import pubsub as _pubsub_module
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import RpcQueue
from libp2p.tools.anyio_service import background_trio_service

from potluck.p2p.host import PotluckHost

GOSSIPSUB = TProtocol("/meshsub/1.1.0")
QUEUE_SIZE = 4096
MAX_PUBLISH_BYTES = 900 * 1024
"""Largest message to publish: py-libp2p refuses inbound pubsub RPCs over 1 MiB."""


class _LargeRpcQueue(RpcQueue):  # type: ignore[misc]
    def __init__(self, max_size: int = QUEUE_SIZE, **kwargs: Any) -> None:
        super().__init__(max_size=max_size, **kwargs)


def _raise_queue_limits() -> None:
    _pubsub_module.RpcQueue = _LargeRpcQueue
    _pubsub_module.SUBSCRIPTION_CHANNEL_SIZE = QUEUE_SIZE


class Topics:
    """Publish to and subscribe to GossipSub topics."""

    def __init__(self, pubsub: Pubsub, router: GossipSub) -> None:
        self._pubsub = pubsub
        self._router = router

    async def publish(self, topic: str, data: bytes) -> None:
        if len(data) > MAX_PUBLISH_BYTES:
            raise ValueError(f"a pubsub message holds at most {MAX_PUBLISH_BYTES} bytes")
        await self._pubsub.publish(topic, data)

    async def subscribe(self, topic: str) -> AsyncIterator[tuple[str, bytes]]:
        """Messages on `topic` from other peers, as `(sender peer ID, data)`."""
        own = self._pubsub.my_id
        subscription = await self._pubsub.subscribe(topic)
        async for message in subscription:
            sender = ID(message.from_id)
            if sender == own:
                continue
            yield str(sender.to_base58()), bytes(message.data)

    def peers(self, topic: str) -> int:
        """How many peers we exchange messages on `topic` with (its mesh)."""
        return len(self._router.mesh.get(topic, ()))


@asynccontextmanager
async def open_pubsub(host: PotluckHost) -> AsyncIterator[Topics]:
    """Run GossipSub on `host` until the block ends."""
    _raise_queue_limits()
    router = GossipSub(
        [GOSSIPSUB],
        6,  # degree: peers in the mesh of a topic
        4,  # degree_low
        12,  # degree_high
        heartbeat_interval=1,
        spam_protection_enabled=False,
    )
    pubsub = Pubsub(host.raw, router)
    async with background_trio_service(pubsub), background_trio_service(router):
        await pubsub.wait_until_ready()
        yield Topics(pubsub, router)
