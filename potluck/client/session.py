"""Inference sessions: one stream per hop, hidden states through the pipeline.

`InferenceSession` opens a session on every server of a route, then each
`step(hidden)` sends the hidden states of the new tokens through the hops in
order and returns the last hop's output. The client keeps every input it
sent to each hop (`HopSession.history`), so that a replacement server can be
given the whole history as one prefill.

Between hops the client relays each output exactly as it travelled (the
codes and scales it received, not a re-encoding of their decoded values:
re-encoding blockwise 8-bit values can change them), so every hand-off is
rounded once, by its sender.

When a hop fails, the session replaces it (see `InferenceSession`). The
async classes run on the client's trio thread; `InferenceSession` is the
synchronous face used by generation code.

Every step's reply must carry the server's signed commitment, which the
client checks (`potluck.client.spotcheck.verify_step`); a bad one counts as
a failed hop. With a `SpotChecker`, sampled steps are re-run elsewhere when
the session closes, and, with a ledger swarm, each server that was not found
wrong gets the client's signed usage receipt in its `CloseSession`.

Hidden states travel encoded with the session's codec (`potluck.wire.WireCodec`,
fp32 by default, or fp16, bf16 or blockwise 8-bit), negotiated with each server
when its hop opens. The client keeps and chains the *decoded* inputs, exactly
what the server computed on, so replays and spot-checks see the same values.

`SessionOptions` says what the session buys: `priority="high"` pays each
server a `ticket` (class `paid`), `route="trusted"` sends hidden states only
to servers the `TrustPolicy` trusts (class `private`, paid when the genesis
prices it), for every hop, every replacement and every spot-check. A server
that does not honour a ticket says why in its `SessionOpened.note`; the
session then runs at the class the server granted (`HopSession.priority`).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

import torch
import trio

from potluck.client.routing import Hop
from potluck.client.runtime import ClientRuntime
from potluck.client.spotcheck import Sample, SpotChecker, verify_step
from potluck.client.swarm import SwarmClient
from potluck.client.trust import TrustPolicy
from potluck.errors import (
    BadCommitment,
    ConfigError,
    MessageError,
    NetworkError,
    NoRouteError,
    NoTrustedRouteError,
    PeerTimeout,
    PotluckError,
    RemoteCodecRange,
    RemoteError,
    TensorError,
    remote_error,
)
from potluck.ledger.economy import receipt_payload
from potluck.ledger.entry import Entry
from potluck.p2p.framed import FramedStream
from potluck.p2p.host import PotluckHost
from potluck.p2p.identity import Identity
from potluck.p2p.protocols import PROTOCOL_INFERENCE
from potluck.verify.commitment import ZERO_CHAIN, chain_inputs, decoded_output
from potluck.wire import (
    FLOAT32_CODEC,
    CloseSession,
    EncodedHidden,
    ErrorReply,
    InferenceStep,
    Message,
    OpenSession,
    SessionOpened,
    StepResult,
    WireCodec,
)

log = logging.getLogger(__name__)

WIRE_DTYPE = torch.float32
T = TypeVar("T")

PRIORITY_CHOICES = ("normal", "high")
ROUTE_CHOICES = ("any", "trusted")


@dataclass(frozen=True)
class SessionOptions:
    """What an inference session asks for beyond the free default."""

    #: "high" buys class `paid` on every server of the route with a ticket.
    priority: str = "normal"
    #: "trusted" uses trusted servers only (`potluck.client.trust`), class `private`.
    route: str = "any"

    def __post_init__(self) -> None:
        if self.priority not in PRIORITY_CHOICES:
            raise ConfigError(f"priority must be one of {PRIORITY_CHOICES}, not {self.priority!r}")
        if self.route not in ROUTE_CHOICES:
            raise ConfigError(f"route must be one of {ROUTE_CHOICES}, not {self.route!r}")

    @property
    def ticket_class(self) -> str | None:
        """The class a ticket buys for these options (None: the free `normal`)."""
        if self.priority == "high":
            return "paid"
        return "private" if self.route == "trusted" else None


#: Buys a ticket for (hop, session id, max_length, class); None when it costs nothing.
TicketBuyer = Callable[[Hop, str, int, str], Awaitable[Entry | None]]


def _concat(parts: Sequence[EncodedHidden]) -> EncodedHidden:
    """Encoded steps of one session as one encoded sequence (codes and scales are
    per token, so they concatenate along the sequence)."""
    hidden = torch.cat([p.hidden for p in parts], dim=1)
    scales = torch.cat([p.scales for p in parts], dim=1)
    return EncodedHidden(parts[0].codec, hidden, scales)


def _check_reply(reply: Message | None, expected: type[Message], peer: str) -> Message:
    if reply is None:
        raise NetworkError(f"server {peer} closed the session stream")
    if isinstance(reply, ErrorReply):
        raise remote_error(reply.code, f"server {peer}: {reply.message}")
    if not isinstance(reply, expected):
        raise MessageError(
            f"server {peer} answered {type(reply).__name__}, not {expected.__name__}"
        )
    return reply


class HopSession:
    """One server's part of an inference session (async, on the trio thread)."""

    def __init__(
        self,
        hop: Hop,
        max_length: int,
        *,
        checker: SpotChecker | None = None,
        swarm_id: str | None = None,
        trust: TrustPolicy | None = None,
        buyer: TicketBuyer | None = None,
        ticket_class: str | None = None,
        codec: WireCodec = FLOAT32_CODEC,
    ) -> None:
        self.hop = hop
        self.codec = codec
        self.max_length = max_length
        self.session_id = secrets.token_hex(16)
        self.trust = trust  # a private session's: its inputs go to trusted servers only
        self.buyer = buyer
        self.ticket_class = ticket_class
        self.ticket: Entry | None = None
        self.priority = "normal"  # the class the server granted
        self.note = ""  # why the server did not honour the ticket
        self.stream: FramedStream | None = None
        self.step = 0
        self.position = 0
        self.history: list[torch.Tensor] = []  # inputs sent (decoded), for replay
        self.sent: list[EncodedHidden] = []  # the same inputs as they travelled
        #: The last output as it travelled: relayed as is to the next hop.
        self.received: EncodedHidden | None = None
        self.steps: list[int] = []  # tokens in each step
        self.chain = ZERO_CHAIN  # input chain of the steps so far (the server signs it)
        self.replies: list[Sample] = []  # replies kept for the spot-check (with a checker)
        self.check_upto = -1  # the last step drawn for a spot-check (-1: none)
        self.checker = checker
        self.swarm_id = swarm_id
        self.swarm: str = ZERO_CHAIN  # the swarm the server signs for
        self.failed = False  # set when a call to this server raised

    async def _guard(self, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except BaseException:
            self.failed = True
            raise

    async def open(self, host: PotluckHost) -> None:
        await self._guard(lambda: self._open(host))

    async def _open(self, host: PotluckHost) -> None:
        server = self.hop.server
        if self.trust is not None and not self.trust.trusts(server, int(time.time() * 1000)):
            raise NoTrustedRouteError(f"a private session cannot use {server.peer_id}")
        ticket: tuple[str, ...] = ()
        if self.buyer is not None and self.ticket_class is not None and self.ticket is None:
            self.ticket = await self.buyer(
                self.hop, self.session_id, self.max_length, self.ticket_class
            )
        if self.ticket is not None:
            ticket = tuple(self.ticket.wire())
        self.stream = await host.open_stream(server.peer_id, PROTOCOL_INFERENCE, addrs=server.addrs)
        await self.stream.send(
            OpenSession(
                self.session_id,
                self.hop.start,
                self.hop.end,
                self.max_length,
                ticket,
                self.codec.label,
            )
        )
        reply = _check_reply(await self.stream.receive(), SessionOpened, server.peer_id)
        assert isinstance(reply, SessionOpened)
        if reply.codec != self.codec.label:
            raise MessageError(f"server {server.peer_id} opened the session in {reply.codec}")
        self.priority, self.note = reply.priority, reply.note
        if self.ticket is not None and reply.priority == "normal":
            log.warning("%s did not honour the ticket: %s", server.peer_id, reply.note)

    async def forward(
        self, hidden: torch.Tensor, encoded: EncodedHidden | None = None
    ) -> torch.Tensor:
        """hidden: (batch, seq, hidden) -> the hop's output, same shape. `encoded`:
        the input already in the session's codec (a replay sends what travelled
        before, as re-encoding blockwise 8-bit values may change them)."""
        if encoded is None:
            try:
                encoded = self.codec.encode(hidden.to(WIRE_DTYPE))
            except TensorError as exc:  # our own input: not the server's fault
                raise ConfigError(
                    f"hidden states cannot travel as {self.codec.label}: {exc}"
                ) from None
        assert encoded.codec == self.codec
        return await self._guard(lambda: self._forward(encoded))

    async def _forward(self, encoded: EncodedHidden) -> torch.Tensor:
        if self.stream is None:
            raise NetworkError("session is not open")
        hidden = encoded.decode()  # (batch, seq, hidden): what the server computes on
        await self.stream.send(
            InferenceStep(self.session_id, self.step, self.position, encoded.hidden, encoded.scales)
        )
        reply = _check_reply(await self.stream.receive(), StepResult, self.hop.peer_id)
        assert isinstance(reply, StepResult)
        if reply.step != self.step or reply.hidden.shape != hidden.shape:
            raise MessageError(
                f"server {self.hop.peer_id} answered step {reply.step} with shape "
                f"{tuple(reply.hidden.shape)} for step {self.step} of shape {tuple(hidden.shape)}"
            )
        if reply.codec != self.codec.label:
            raise MessageError(f"server {self.hop.peer_id} answered in {reply.codec}")
        output = decoded_output(reply)  # (batch, seq, hidden) float32
        assert reply.scales is not None  # a valid encoding: it just decoded
        received = EncodedHidden(self.codec, reply.hidden, reply.scales)
        chain = chain_inputs(self.chain, hidden)
        verify_step(
            reply,
            peer_id=self.hop.peer_id,
            start=self.hop.start,
            end=self.hop.end,
            inputs=chain,
            swarm=self.swarm_id,
            dtype=self.hop.server.dtype,
            quant=self.hop.server.quant,
            outputs=output,
        )
        if self.checker is not None:
            self.checker.sample(self, reply, output)
        self.swarm = reply.swarm or ZERO_CHAIN
        self.chain = chain
        self.received = received
        self.history.append(hidden)
        self.sent.append(encoded)
        self.steps.append(hidden.shape[1])
        self.step += 1
        self.position += hidden.shape[1]
        return output

    def receipt(self, identity: Identity) -> tuple[int, str]:
        """`(tokens, signature)` of this client's usage receipt for the server."""
        tokens = self.position * (self.history[0].shape[0] if self.history else 1)
        payload = receipt_payload(
            swarm=self.swarm,
            session=self.session_id,
            server=self.hop.server_account,
            client=identity.public_bytes.hex(),
            tokens=tokens,
            start=self.hop.start,
            end=self.hop.end,
        )
        return tokens, identity.sign(payload).hex()

    async def close(self, receipt: tuple[int, str] | None = None) -> None:
        """Close the session, handing over a signed usage receipt if given."""
        stream, self.stream = self.stream, None
        if stream is None:
            return
        tokens, signature = receipt or (0, "")
        with contextlib.suppress(PotluckError), trio.move_on_after(5):
            await stream.send(CloseSession(self.session_id, tokens, signature))
            await stream.receive()
        await stream.close()

    async def abandon(self) -> None:
        """Drop the stream without a goodbye (the server is dead or misbehaving)."""
        stream, self.stream = self.stream, None
        if stream is not None:
            await stream.reset()


@dataclass(frozen=True)
class FailoverPolicy:
    """How a session survives servers that die, stall or fail mid-generation."""

    #: Seconds one hop may take for one step before it counts as stalled.
    step_timeout: float = 30.0
    #: Seconds to wait for the swarm to offer replacement servers.
    route_timeout: float = 30.0
    #: Failed servers (originals and replacements) tolerated within one step.
    max_failovers: int = 8


#: Errors after which a hop is replaced: the peer, not our input, is at fault.
_HOP_FAILURES = (NetworkError, RemoteError, MessageError, TensorError, BadCommitment)


class InferenceSession:
    """A session through every hop of a route; synchronous, for generation code.

    When a hop fails (its process died, it stalled past `step_timeout`, or it
    answered with an error), the session bans that server, routes its blocks
    through other servers (possibly several), replays every input the failed
    hop had received as one prefill into the replacements' fresh caches, and
    carries on with the current step. Hops before and after keep their caches.
    """

    def __init__(
        self,
        runtime: ClientRuntime,
        swarm: SwarmClient,
        route: Sequence[Hop],
        max_length: int,
        *,
        policy: FailoverPolicy | None = None,
        checker: SpotChecker | None = None,
        swarm_id: str | None = None,
        options: SessionOptions | None = None,
        trust: TrustPolicy | None = None,
        buyer: TicketBuyer | None = None,
        codec: WireCodec = FLOAT32_CODEC,
    ) -> None:
        self.runtime = runtime
        #: How hidden states travel to and from every hop (`potluck.wire.compress`).
        self.codec = codec
        self.swarm = swarm
        self.max_length = max_length
        self.policy = policy or FailoverPolicy()
        self.checker = checker
        self.swarm_id = swarm_id
        self.options = options or SessionOptions()
        if self.options.route == "trusted" and trust is None:
            raise ConfigError("a trusted route needs a trust policy")
        #: Only servers this trusts get the session's hidden states (route="trusted").
        self.trust = trust if self.options.route == "trusted" else None
        self.buyer = buyer
        if self.options.priority == "high" and buyer is None:
            raise ConfigError("priority='high' needs a wallet: pass genesis= and identity=")
        self.hops = [self._hop_session(hop) for hop in route]
        #: Servers the session's spot-checks found wrong (peer IDs).
        self.guilty: set[str] = set()
        self.position = 0
        self.failovers = 0
        self._budget = self.policy.max_failovers  # failed servers still allowed this step
        self._closed = False
        try:
            runtime.run(self._open)
        except BaseException:
            self.close()
            raise

    def _hop_session(self, hop: Hop) -> HopSession:
        return HopSession(
            hop,
            self.max_length,
            checker=self.checker,
            swarm_id=self.swarm_id,
            trust=self.trust,
            buyer=self.buyer,
            ticket_class=self.options.ticket_class,
            codec=self.codec,
        )

    @property
    def priorities(self) -> list[str]:
        """The class each hop's server granted (paid, private or normal)."""
        return [hop.priority for hop in self.hops]

    @property
    def route(self) -> list[Hop]:
        return [hop.hop for hop in self.hops]

    async def _open(self) -> None:
        self._budget = self.policy.max_failovers
        i = 0
        while i < len(self.hops):
            try:
                await self.hops[i].open(self.runtime.host)
                i += 1
            except _HOP_FAILURES as exc:  # e.g. a server refusing for lack of cache
                i += await self._replace(i, exc)

    async def _forward(
        self, hop: HopSession, hidden: torch.Tensor, encoded: EncodedHidden | None = None
    ) -> torch.Tensor:
        try:
            with trio.fail_after(self.policy.step_timeout):
                return await hop.forward(hidden, encoded)
        except trio.TooSlowError:
            raise PeerTimeout(
                f"server {hop.hop.peer_id} took over {self.policy.step_timeout:.0f} s for a step"
            ) from None

    async def _step(self, hidden: torch.Tensor) -> torch.Tensor:
        self._budget = self.policy.max_failovers
        encoded: EncodedHidden | None = None  # a hop's output goes on as it travelled
        i = 0
        while i < len(self.hops):
            try:
                out = await self._forward(self.hops[i], hidden, encoded)
            except RemoteCodecRange:
                raise  # any server's output would be too large for the codec: not its fault
            except _HOP_FAILURES as exc:
                await self._replace(i, exc)
                continue  # the same input, now to the first replacement
            hidden, encoded = out, self.hops[i].received
            i += 1
        return hidden

    def _give_up_on(self, peer_id: str, exc: BaseException) -> None:
        """Ban a failed server, spending one of this step's failovers."""
        self.swarm.ban(peer_id)
        self._budget -= 1
        if self._budget < 0:
            raise NoRouteError(
                f"gave up after {self.policy.max_failovers} failed servers in one step; "
                f"the last: {exc}"
            ) from exc

    async def _replace(self, i: int, exc: BaseException) -> int:
        """Swap hop `i` for fresh, open hops over its blocks, rebuilt from its
        history; returns how many hops took its place.

        Every server that fails, the original and any replacement, is banned
        and spends one of the step's `max_failovers`.
        """
        failed = self.hops[i]
        where = f"{failed.hop.start}:{failed.hop.end} on {failed.hop.peer_id}"
        log.warning("hop %s failed: %s", where, exc)
        await failed.abandon()
        self._give_up_on(failed.hop.peer_id, exc)
        history = torch.cat(failed.history, dim=1) if failed.history else None
        sent = _concat(failed.sent) if failed.sent else None  # history, as it travelled
        last: BaseException = exc
        while True:
            try:  # the known, unbanned servers first; ask the swarm only if they don't cover
                route = self.swarm.route(
                    failed.hop.start,
                    failed.hop.end,
                    min_free_cache=self.max_length,
                    trust=self.trust,
                )
            except NoRouteError:
                route = []
            try:
                route = route or await self.swarm.wait_for_route(
                    self.runtime.host,
                    self.policy.route_timeout,
                    start=failed.hop.start,
                    end=failed.hop.end,
                    min_free_cache=self.max_length,
                    trust=self.trust,
                )
            except NoRouteError as none:  # say why the servers we had are gone
                raise type(none)(f"{none}; the last server failure: {last}") from last
            fresh = [self._hop_session(hop) for hop in route]
            try:
                replay, encoded = history, sent
                for hop in fresh:
                    await hop.open(self.runtime.host)
                    if replay is not None:
                        replay = await self._forward(hop, replay, encoded)
                        encoded = hop.received  # relayed to the next new hop as it came
            except RemoteCodecRange:
                raise
            except _HOP_FAILURES as again:
                last = again
                bad = next((h for h in fresh if h.failed), fresh[-1])
                log.warning("replacement %s failed too: %s", bad.hop.peer_id, again)
                for hop in fresh:
                    await hop.abandon()
                self._give_up_on(bad.hop.peer_id, again)
                continue
            break
        self.hops[i : i + 1] = fresh
        self.failovers += 1
        return len(fresh)

    def step(self, hidden: torch.Tensor) -> torch.Tensor:
        """Send (batch, seq, hidden) states of new tokens through all hops."""
        if self._closed:
            raise NetworkError("the inference session is closed")
        if hidden.ndim != 3:
            raise MessageError(f"hidden states must be (batch, seq, hidden), got {hidden.shape}")
        if self.position + hidden.shape[1] > self.max_length:
            raise MessageError(
                f"session max_length is {self.max_length}; "
                f"{self.position + hidden.shape[1]} tokens asked"
            )
        out = self.runtime.run(self._step, hidden)
        self.position += hidden.shape[1]
        return out

    async def _close(self) -> None:
        if self.checker is not None:
            live = [hop for hop in self.hops if not hop.failed and hop.stream is not None]
            self.guilty = await self.checker.check(self.runtime.host, live)
        identity = self.runtime.identity
        for hop in self.hops:
            if hop.step and not hop.failed:  # served us well: its past failures are forgiven
                self.swarm.banlist.forgive(hop.hop.peer_id)
            paid = hop.step and hop.swarm != ZERO_CHAIN and hop.hop.peer_id not in self.guilty
            await hop.close(hop.receipt(identity) if paid else None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(PotluckError):
            self.runtime.run(self._close)

    def __enter__(self) -> InferenceSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
