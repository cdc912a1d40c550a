"""The server process: serving a span of blocks and the swarm view.

Two protocols, both framed (`potluck.wire`):

- `/potluck/rpc/1.0.0`: one request, one reply, one stream.
  `InfoRequest` -> `ServerInfo`; `SwarmRequest` -> `SwarmView`;
  a `ServerInfo` (an announcement, accepted only from the peer it describes)
  -> `SwarmView` (push-pull in one round trip); `Forward` -> `ForwardResult`
  (stateless: the whole sequence from position 0, no cache kept); `Echo` ->
  the same `Echo` (how nodes measure network throughput); on a validator,
  `Dispute` -> `Verdict` (see `potluck.node.validator`).
- `/potluck/inference/1.0.0`: a long-lived stream per client hop.
  `OpenSession` -> `SessionOpened`; `InferenceStep` -> `StepResult`;
  `CloseSession` -> `SessionClosed`. Closing the stream closes its sessions.

Every `StepResult` and `ForwardResult` carries the server's signature over
its `potluck.verify.Commitment`. A `CloseSession` may carry the client's
signed usage receipt, which a node with a ledger records (`NodeLedger`).

Any request that fails gets an `ErrorReply` with a typed code, and the
stream goes on (a frame whose header is bad cannot be resynchronised, so that
one error closes the stream). Torch runs in a worker thread behind a
capacity limiter of one, so handlers keep reading while a step computes and
concurrent sessions queue instead of oversubscribing the cores.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import platform
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import trio

from potluck import __version__
from potluck.errors import (
    ConfigError,
    FrameError,
    InvalidSignature,
    LedgerError,
    MessageError,
    NetworkError,
    PotluckError,
    QuantMismatch,
    RemoteError,
    SpanError,
    TensorError,
    TicketError,
    TicketForged,
    VerificationError,
    WireError,
)
from potluck.model import (
    QUANT_BITS,
    BlockSpan,
    block_weight_bytes,
    load_config,
    model_identity,
    num_blocks,
    resolve_model,
)
from potluck.node.balance import block_throughputs, choose_span, plan_move, span_for_memory
from potluck.node.config import NodeConfig, parse_cheat

if TYPE_CHECKING:
    from potluck.ledger.replica import Replica
    from potluck.ledger.tickets import Ticket
    from potluck.node.ledger import NodeLedger
    from potluck.node.validator import Validator
from potluck.node.sessions import Session, SessionTable
from potluck.p2p.announce import account_of_peer, sign_announcement, verify_announcement
from potluck.p2p.discovery import PeerTable
from potluck.p2p.framed import FramedStream
from potluck.p2p.gossip import exchange_views
from potluck.p2p.host import PotluckHost, open_host, parse_multiaddr
from potluck.p2p.identity import Identity, load_or_create_identity
from potluck.p2p.protocols import PROTOCOL_INFERENCE, PROTOCOL_RPC
from potluck.scheduler import Scheduler, SchedulerConfig
from potluck.verify.commitment import (
    ZERO_CHAIN,
    Commitment,
    chain_inputs,
    output_root,
    replay_chain,
    row_digests,
)
from potluck.wire import (
    FLOAT32_CODEC,
    MAX_ATTESTATIONS,
    MAX_ECHO_ELEMENTS,
    MAX_SERVERS,
    CloseSession,
    Dispute,
    Echo,
    EncodedHidden,
    ErrorReply,
    Forward,
    ForwardResult,
    InferenceStep,
    InfoRequest,
    Message,
    OpenSession,
    ServerInfo,
    SessionClosed,
    SessionOpened,
    StepResult,
    SwarmRequest,
    SwarmView,
    WireCodec,
    decode_message,
)

log = logging.getLogger(__name__)

WIRE_DTYPE = torch.float32
THROUGHPUT_FILE = "throughput.json"
#: Closed sessions whose ticket refunds may wait to be written.
MAX_QUEUED_SETTLEMENTS = 1000
_T = TypeVar("_T")

Clock = Callable[[], float]


class NotAServer(RemoteError):
    """This node serves no blocks (a bootstrap node)."""

    code = "not_a_server"


class NotAValidator(RemoteError):
    """This node does not referee disputes (it is no validator, or holds no model)."""

    code = "not_a_validator"


@functools.cache
def _peer_of(addr: str) -> str:
    maddr = parse_multiaddr(addr)
    return str(maddr.get_peer_id())


class Server:
    """Handlers and background loops of one node."""

    def __init__(
        self,
        host: PotluckHost,
        config: NodeConfig,
        *,
        span: BlockSpan | None,
        model_id: str,
        model: ServedModel | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.host = host
        self.config = config
        self.span = span
        self.model_id = model_id
        self.model = model
        self.moves = 0
        #: Called after the node starts serving other blocks (run.py rewrites node.json).
        self.on_change: Callable[[Server], None] | None = None
        self.clock = clock
        self.peers = PeerTable(verify=verify_announcement, max_ttl=4 * config.announce_ttl)
        self.sessions = SessionTable(
            cache_tokens=config.cache_tokens,
            max_session_length=config.max_session_length,
            sessions_per_peer=config.sessions_per_peer,
            reserve_tokens=config.paid_reserve_tokens,
        )
        #: Runs torch work in worker threads, paid and private sessions first.
        self.scheduler = Scheduler(
            SchedulerConfig(
                slots=config.compute_slots,
                reserved_slots=config.paid_slots,
                aging=config.priority_aging,
            )
        )
        self.throughput = 0.0
        self.bandwidth = 0.0
        self.errors_sent = 0
        self.steps_served = 0
        #: The node's ledger replica, when it runs with --genesis.
        self.replica: Replica | None = None
        #: The node's own account on that ledger (receipts, receives, exclusions).
        self.ledger: NodeLedger | None = None
        #: A validator's duties (referee, probes, mints), with --validator and --model.
        self.validator: Validator | None = None
        #: The swarm id commitments are signed for (zeros without a genesis).
        self.swarm_id = ZERO_CHAIN
        self.account = host.identity.public_bytes.hex()
        self.cheat = parse_cheat(config.cheat) if config.cheat else None
        self._cheat_rng = random.Random()
        #: Outputs this server deliberately corrupted (with --cheat).
        self.corrupted = 0
        #: Validators' attestations of this server (wire form), announced for private routes.
        self.attestations: tuple[tuple[str, str], ...] = ()
        #: Where the node serves its dashboard (with --dashboard), once it listens.
        self.dashboard_url: str | None = None
        self._request_log = (
            open(config.request_log, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
            if config.request_log is not None
            else None
        )
        #: Redeemed tickets of closed sessions, waiting for their refunds.
        self._settle_in, self._settle_out = trio.open_memory_channel[tuple[Any, int]](
            MAX_QUEUED_SETTLEMENTS
        )

    # -- what we announce ---------------------------------------------------

    def server_info(self) -> ServerInfo | None:
        if self.span is None:
            return None
        info = ServerInfo(
            peer_id=self.host.peer_id,
            addrs=tuple(self.host.addrs),
            model=self.model_id,
            start=self.span.start,
            end=self.span.end,
            throughput=self.throughput,
            free_cache_tokens=max(0, self.sessions.free_tokens),
            load=len(self.sessions),
            bandwidth=self.bandwidth,
            version=__version__,
            expires_at=self.clock() + self.config.announce_ttl,
            validator=self.config.validator,
            dtype=self.config.dtype,
            quant=self.span.quant,
            attestations=self.attestations,
        )
        return sign_announcement(info, self.host.identity)

    def excluded(self) -> frozenset[str]:
        """Peers this node's ledger shows convicted of a wrong output: left out of the
        views it gives."""
        return self.ledger.convicted_peers if self.ledger is not None else frozenset()

    def swarm_view(self) -> SwarmView:
        now = self.clock()
        excluded = self.excluded()
        servers = [
            s
            for s in self.peers.live(now)
            if s.peer_id != self.host.peer_id and s.peer_id not in excluded
        ]
        own = self.server_info()
        if own is not None:
            servers = [*servers[: MAX_SERVERS - 1], own]
        servers = servers[:MAX_SERVERS]
        return SwarmView(servers=tuple(servers), excluded=tuple(sorted(excluded))[:MAX_SERVERS])

    def _throughput_key(self) -> str:
        span = self.span
        assert span is not None
        machine = f"{platform.node()}/{platform.machine()}/{os.cpu_count()}cpu"
        return (
            f"{self.model_id}/{span.dtype}/{span.quant}/{machine}/{torch.get_num_threads()}threads"
            f"/delay{self.config.compute_delay}"
        )

    async def measure_throughput(self, tokens: int = 3) -> None:
        """Tokens per second this span computes at batch 1.

        Measured once per model, dtype and machine, as seconds per block, and
        cached in `data_dir/throughput.json`; a span of another length reuses it.
        """
        span = self.span
        if span is None:
            return
        cache_file = self.config.data_dir / THROUGHPUT_FILE
        key = self._throughput_key()
        cached = _read_json(cache_file).get(key)
        delay = self.config.compute_delay
        if isinstance(cached, float) and cached > 0 and not delay:
            self.throughput = 1.0 / (cached * (span.end - span.start))
            return

        def run() -> float:
            hidden = torch.zeros(1, 1, span.config.hidden_size, dtype=span.dtype)
            cache = span.new_cache()
            span.forward(hidden, cache)  # warm-up
            t0 = time.perf_counter()
            for _ in range(tokens):
                time.sleep(delay)
                span.forward(hidden, cache)
            return (time.perf_counter() - t0) / tokens

        seconds = await self.compute(run)
        self.throughput = 1.0 / max(seconds, 1e-9)
        if delay:  # a testing aid's delay is per step, not per block: never cache it
            return
        table = _read_json(cache_file)
        table[key] = max(seconds, 1e-9) / (span.end - span.start)
        _write_json(cache_file, table)

    async def measure_bandwidth(self, nbytes: int = 4 * 2**20) -> None:
        """Bytes/s of a round trip of `nbytes` (best of two) to the first of the
        announce targets (initial peers, then known servers) that answers: a floor
        on this node's network throughput."""
        nbytes = min(nbytes, self.config.max_frame // 2)  # room under both peers' limits
        payload = torch.zeros(min(nbytes // 4, MAX_ECHO_ELEMENTS), dtype=torch.float32)
        for peer_id, addrs in self.announce_targets():
            try:
                best = float("inf")
                with trio.fail_after(self.config.request_timeout):
                    for _ in range(2):
                        t0 = trio.current_time()
                        reply = await self.host.request(
                            peer_id, PROTOCOL_RPC, Echo(payload), addrs=addrs
                        )
                        best = min(best, trio.current_time() - t0)
            except (PotluckError, trio.TooSlowError) as exc:
                log.debug("bandwidth probe to %s failed: %s", peer_id, exc)
                continue
            if isinstance(reply, Echo):
                self.bandwidth = 2 * payload.numel() * 4 / max(best, 1e-9)
                log.info("network throughput to %s: %.1f MiB/s", peer_id, self.bandwidth / 2**20)
                return

    # -- choosing and moving blocks ------------------------------------------

    def block_count(self) -> int:
        """How many blocks to serve: `--num-blocks`, or what the memory budget holds."""
        assert self.model is not None
        if self.config.num_blocks:
            return min(self.config.num_blocks, self.model.num_blocks)
        budget = int(self.config.memory_budget * 2**30) or _available_memory() // 2
        return span_for_memory(budget, self.model.bytes_per_block, self.model.num_blocks)

    def _route_servers(self, me: str) -> list[ServerInfo]:
        """Live servers that clients route through: not this one, not validators
        (they only check), not convicted ones."""
        excluded = self.excluded()
        return [
            s
            for s in self.peers.live(self.clock())
            if s.peer_id != me and not s.validator and s.peer_id not in excluded
        ]

    def choose_blocks(self) -> tuple[int, int]:
        """The contiguous blocks where the swarm (as this node sees it) is weakest."""
        assert self.model is not None
        view = self._route_servers(self.host.peer_id)
        throughputs = block_throughputs(view, self.model.num_blocks, model=self.model_id)
        return choose_span(throughputs, self.block_count())

    async def load_span(self, start: int, end: int) -> None:
        """Load blocks `[start, end)` and serve them from now on (open sessions keep theirs)."""
        assert self.model is not None
        path, dtype = self.model.path, getattr(torch, self.config.dtype)
        span = await trio.to_thread.run_sync(
            functools.partial(
                BlockSpan.load, path, start, end, dtype=dtype, quant=self.config.quant
            )
        )
        old, self.span = self.span, span
        try:
            await self.measure_throughput()
        except BaseException:
            self.span = old
            raise
        quant = "" if span.quant == "none" else f" ({span.quant})"
        log.info("serving blocks %d:%d%s at %.1f tokens/s", start, end, quant, self.throughput)
        if self.on_change is not None:
            self.on_change(self)

    async def rebalance_once(self) -> tuple[int, int] | None:
        """Move to other blocks if that clearly strengthens the swarm's weakest block."""
        own = self.server_info()
        if own is None or self.model is None:
            return None
        view = self._route_servers(own.peer_id)
        target = plan_move(
            [*view, own], self.model.num_blocks, own, margin=self.config.rebalance_margin
        )
        if target is None:
            return None
        log.info("moving from blocks %d:%d to %d:%d", own.start, own.end, *target)
        await self.load_span(*target)
        self.moves += 1
        await self.announce_once()
        return target

    async def rebalance_loop(self) -> None:
        while True:  # jitter keeps servers that start together from moving together
            await trio.sleep(self.config.rebalance_interval * random.uniform(0.5, 1.5))
            await self.rebalance_once()

    # -- compute ------------------------------------------------------------

    def _check_hidden(self, hidden: torch.Tensor) -> None:
        """Decoded (float32) hidden states of this model's size."""
        if self.span is None:
            raise NotAServer("this node serves no blocks")
        if hidden.dtype != WIRE_DTYPE:
            raise TensorError(f"hidden states must be {WIRE_DTYPE}, got {hidden.dtype}")
        if hidden.shape[-1] != self.span.config.hidden_size:
            size = self.span.config.hidden_size
            raise TensorError(f"hidden size must be {size}, got shape {tuple(hidden.shape)}")

    def _check_range(self, start: int, end: int) -> BlockSpan:
        if self.span is None:
            raise NotAServer("this node serves no blocks")
        if not (self.span.start <= start < end <= self.span.end):
            raise SpanError(
                f"blocks {start}:{end} are not within this server's "
                f"{self.span.start}:{self.span.end}"
            )
        return self.span

    async def _compute(
        self,
        span: BlockSpan,
        hidden: torch.Tensor,
        cache: object | None,
        start: int,
        end: int,
        *,
        session: str = "",
        step: int = 0,
        inputs: str = ZERO_CHAIN,
        priority: str = "normal",
        codec: WireCodec = FLOAT32_CODEC,
        steps: tuple[int, ...] = (),
    ) -> tuple[EncodedHidden, str]:
        """The output of blocks [start, end), encoded with `codec`, and the signature
        of its commitment (over the decoded output), computed when the scheduler gives
        `priority` its turn. With `steps` (and no `cache`), the history is replayed:
        one call per step into a fresh cache (`Forward.steps`)."""
        delay = self.config.compute_delay

        def run() -> tuple[EncodedHidden, str]:
            if delay:  # testing aid: a deliberately slow server
                time.sleep(delay)
            x = hidden.to(span.dtype)
            if steps:
                out = span.replay(x, steps, start=start, end=end)
            else:
                out = span.forward(x, cache, start=start, end=end)  # type: ignore[arg-type]
            out = self._corrupt(out.to(WIRE_DTYPE).contiguous())
            encoded = codec.encode(out)
            commitment = Commitment(
                swarm=self.swarm_id,
                session=session,
                step=step,
                start=start,
                end=end,
                inputs=inputs,
                outputs=output_root(row_digests(encoded.decode())),
                dtype=span.compute_dtype,
                server=self.account,
                quant=span.quant,
                codec=codec.label,
            )
            return encoded, commitment.signed(self.host.identity).signature

        return await self.compute(run, priority=priority)

    async def compute(self, fn: Callable[[], _T], *, priority: str = "normal") -> _T:
        """Run torch work `fn` in a worker thread when the scheduler says so."""
        return await self.scheduler.run_sync(priority, fn)

    def _log(self, kind: str, peer: str, **fields: object) -> None:
        """One line of the request log (--request-log): who sent what, in which class."""
        if self._request_log is None:
            return
        record = {"time": self.clock(), "kind": kind, "peer": peer, **fields}
        self._request_log.write(json.dumps(record, sort_keys=True) + "\n")

    def close_log(self) -> None:
        if self._request_log is not None:
            self._request_log.close()
            self._request_log = None

    def _corrupt(self, out: torch.Tensor) -> torch.Tensor:
        """With --cheat (a testing aid): add noise of the set relative size to each row
        of a FRACTION of outputs."""
        if self.cheat is None:
            return out
        fraction, magnitude = self.cheat
        if self._cheat_rng.random() >= fraction:
            return out
        self.corrupted += 1
        rows = out.reshape(-1, out.shape[-1])  # (batch * seq, hidden)
        noise = torch.randn_like(rows)
        noise *= magnitude * rows.norm(dim=-1, keepdim=True) / noise.norm(dim=-1, keepdim=True)
        return (rows + noise).reshape(out.shape).contiguous()

    # -- rpc protocol -------------------------------------------------------

    async def handle_rpc(self, stream: FramedStream) -> None:
        payload = await stream.receive_bytes()
        if payload is None:
            return
        try:
            reply = await self._rpc(decode_message(payload), stream.remote_peer)
        except (
            WireError,
            RemoteError,
            SpanError,
            InvalidSignature,
            VerificationError,
            LedgerError,
        ) as exc:
            reply = self._error(exc)
        await stream.send(reply)

    async def _rpc(self, msg: Message, peer: str) -> Message:
        now = self.clock()
        if isinstance(msg, SwarmRequest):
            return self.swarm_view()
        if isinstance(msg, ServerInfo):
            if msg.peer_id != peer:
                raise MessageError("an announcement must come from the peer it describes")
            verify_announcement(msg)
            self.peers.upsert(msg, now)
            return self.swarm_view()
        if isinstance(msg, Echo):
            return Echo(msg.payload)
        if isinstance(msg, InfoRequest):
            info = self.server_info()
            if info is None:
                raise NotAServer("this node serves no blocks")
            return info
        if isinstance(msg, Forward):
            span = await self._forward_span(msg)
            self._check_hidden(msg.hidden)
            inputs = replay_chain(msg.hidden, msg.steps)
            self._log("forward", peer, start=msg.start, end=msg.end, tokens=msg.hidden.shape[1])
            out, signature = await self._compute(
                span, msg.hidden, None, msg.start, msg.end, inputs=inputs, steps=msg.steps
            )
            return ForwardResult(
                out.hidden, self.swarm_id, span.compute_dtype, signature, span.quant
            )
        if isinstance(msg, Dispute):
            if self.validator is None:
                raise NotAValidator("this node does not referee disputes")
            return await self.validator.referee(msg, peer)
        raise MessageError(f"{type(msg).__name__} is not a request on {PROTOCOL_RPC}")

    async def _forward_span(self, msg: Forward) -> BlockSpan:
        """The span a `Forward` runs on: this server's, or, on a validator asked for
        another quantisation, that quantisation of its blocks."""
        span = self._check_range(msg.start, msg.end)
        if msg.quant in ("", span.quant):
            return span
        if self.validator is None:
            raise QuantMismatch(f"this server computes its blocks in {span.quant}, not {msg.quant}")
        return await self.validator.quantised_span(msg.quant)

    def _error(self, exc: PotluckError) -> ErrorReply:
        self.errors_sent += 1
        log.info("error reply: %s", exc)
        return ErrorReply.from_exception(exc)

    # -- inference protocol -------------------------------------------------

    async def handle_inference(self, stream: FramedStream) -> None:
        stream.timeout = self.config.session_idle_timeout
        peer = stream.remote_peer
        opened: list[str] = []
        try:
            while True:
                try:
                    payload = await stream.receive_bytes()
                except FrameError as exc:
                    await stream.send(self._error(exc))
                    return
                if payload is None:
                    return
                try:
                    reply = await self._inference(decode_message(payload), peer, opened)
                except (WireError, RemoteError, SpanError) as exc:
                    reply = self._error(exc)
                await stream.send(reply)
        finally:
            for session_id in opened:
                self._close_session(session_id)

    async def _inference(self, msg: Message, peer: str, opened: list[str]) -> Message:
        now = self.clock()
        if isinstance(msg, OpenSession):
            span = self._check_range(msg.start, msg.end)
            priority, note, ticket = await self._redeem(msg, peer)
            try:
                session = self.sessions.open(
                    msg.session_id, peer, msg.start, msg.end, msg.max_length, now, priority=priority
                )
            except PotluckError:
                if ticket is not None:  # paid for nothing: all of it goes back
                    self._settle(ticket, 0)
                raise
            session.ticket = ticket
            session.span = span  # kept even if this server moves to other blocks
            session.cache = span.new_cache()
            session.codec = WireCodec.from_label(msg.codec)
            opened.append(msg.session_id)
            self._log(
                "open",
                peer,
                session=msg.session_id,
                priority=priority,
                start=msg.start,
                end=msg.end,
                max_length=msg.max_length,
                codec=msg.codec,
            )
            return SessionOpened(
                msg.session_id, msg.start, msg.end, msg.max_length, priority, note, msg.codec
            )
        if isinstance(msg, InferenceStep):
            session = self.sessions.get(msg.session_id, peer)
            assert msg.scales is not None  # set by InferenceStep itself
            hidden = session.codec.decode(msg.hidden, msg.scales)  # (batch, seq, hidden) float32
            self._check_hidden(hidden)
            batch, seq = hidden.shape[0], hidden.shape[1]
            self.sessions.begin_step(session, msg.step, msg.position, batch, seq, now)
            inputs = chain_inputs(session.inputs, hidden)
            ok = False
            try:
                out, signature = await self._compute(
                    session.span,
                    hidden,
                    session.cache,
                    session.start,
                    session.end,
                    session=session.session_id,
                    step=msg.step,
                    inputs=inputs,
                    priority=session.priority,
                    codec=session.codec,
                )
                session.inputs = inputs
                ok = True
            finally:
                self.sessions.end_step(session, seq, self.clock(), ok=ok)
                if not ok:  # a half-applied step leaves the cache unusable
                    self._close_session(session.session_id)
            self.steps_served += 1
            self._log(
                "step",
                peer,
                session=session.session_id,
                priority=session.priority,
                step=msg.step,
                tokens=batch * seq,
            )
            return StepResult(
                msg.session_id,
                msg.step,
                out.hidden,
                self.swarm_id,
                session.span.compute_dtype,
                signature,
                quant=session.span.quant,
                codec=session.codec.label,
                scales=out.scales,
            )
        if isinstance(msg, CloseSession):
            session = self.sessions.get(msg.session_id, peer)
            recorded = False
            if msg.receipt and self.ledger is not None:
                served = session.position * (session.batch or 1)
                recorded = self.ledger.take_receipt(
                    session=session.session_id,
                    client=account_of_peer(peer),
                    tokens=min(msg.tokens, served),
                    start=session.start,
                    end=session.end,
                    signature=msg.receipt,
                    claimed=msg.tokens,
                )
            self._close_session(msg.session_id)
            return SessionClosed(msg.session_id, recorded)
        raise MessageError(f"{type(msg).__name__} is not a request on {PROTOCOL_INFERENCE}")

    async def _redeem(self, msg: OpenSession, peer: str) -> tuple[str, str, Ticket | None]:
        """The class a new session runs in, why its ticket was not honoured, and the
        redeemed ticket. A bad ticket is refused with its typed error under
        `--bad-ticket refuse`; otherwise the session runs at normal priority."""
        if not msg.ticket:
            return "normal", "", None
        try:
            if self.ledger is None:
                raise TicketError("this server keeps no ledger (it runs without --genesis)")
            try:
                client = account_of_peer(peer)
            except InvalidSignature:
                raise TicketForged(f"{peer} has no Ed25519 key: it cannot sign tickets") from None
            ticket = await self.ledger.redeem_ticket(
                (msg.ticket[0], msg.ticket[1]),
                client=client,
                session=msg.session_id,
                start=msg.start,
                end=msg.end,
                max_length=msg.max_length,
            )
        except TicketError as exc:
            if self.config.bad_ticket == "refuse":
                raise
            log.info("ticket of %s not honoured: %s", peer, exc)
            return "normal", f"ticket not honoured ({exc.code}): {exc}", None
        return ticket.cls, "", ticket

    def _close_session(self, session_id: str) -> None:
        """Drop a session; a ticket it redeemed gets what the session left unused back."""
        session = self.sessions.close(session_id)
        if session is not None:
            self._settle_session(session)

    def _settle_session(self, session: Session) -> None:
        if session.ticket is not None:
            self._settle(session.ticket, session.position * (session.batch or 1))
            session.ticket = None

    def _settle(self, ticket: Ticket, served: int) -> None:
        try:
            self._settle_in.send_nowait((ticket, served))
        except trio.WouldBlock:
            log.warning("refund of ticket %s dropped: too many waiting", ticket.hash[:12])

    async def settle_loop(self) -> None:
        """Refund the unused part of each closed session's ticket."""
        assert self.ledger is not None
        async for ticket, served in self._settle_out:
            try:
                await self.ledger.settle_ticket(ticket, served)
            except (LedgerError, NetworkError, TicketError) as exc:
                log.warning("could not refund ticket %s: %s", ticket.hash[:12], exc)

    async def attestation_loop(self, interval: float = 2.0) -> None:
        """Keep the validators' unexpired attestations of this node for its announcements."""
        assert self.replica is not None
        ledger = self.replica.ledger

        def read() -> tuple[tuple[str, str], ...]:
            now_ms = int(self.clock() * 1000)
            found = [
                e
                for e in ledger.backend.by_kind("attest")
                if e.author in ledger.validators
                and e.body.get("server") == self.account
                and int(e.body.get("until") or now_ms + 1) > now_ms
            ]
            found.sort(key=lambda e: e.time, reverse=True)
            return tuple((w[0], w[1]) for w in (e.wire() for e in found[:MAX_ATTESTATIONS]))

        while True:
            self.attestations = await self.replica.db(read)
            await trio.sleep(interval)

    # -- background loops ---------------------------------------------------

    def announce_targets(self) -> list[tuple[str, tuple[str, ...]]]:
        """Peers to push our view to: the initial peers and every live server."""
        targets: dict[str, tuple[str, ...]] = {}
        for addr in self.config.initial_peers:
            targets[_peer_of(addr)] = (addr,)
        for info in self.peers.live(self.clock()):
            targets.setdefault(info.peer_id, info.addrs)
        targets.pop(self.host.peer_id, None)
        return sorted(targets.items())

    async def announce_once(self) -> None:
        own = self.server_info()
        message: Message = own if own is not None else SwarmRequest()

        await exchange_views(
            self.host,
            self.peers,
            self.announce_targets(),
            message,
            clock=self.clock,
            timeout=min(5.0, self.config.request_timeout),
        )

    async def learn_swarm(self, attempts: int = 5, pause: float = 1.0) -> None:
        """Pull the swarm view from the initial peers, trying again (up to `attempts`
        times) while none of them answers: choosing blocks from an empty view because
        the bootstrap was slow would pile servers onto the same blocks."""
        targets = self.announce_targets()
        for attempt in range(attempts):
            failures: dict[str, str] = {}
            await exchange_views(
                self.host,
                self.peers,
                targets,
                SwarmRequest(),
                clock=self.clock,
                timeout=min(5.0, self.config.request_timeout),
                failures=failures,
            )
            if not targets or len(failures) < len(targets):
                return
            log.info("no initial peer answered (attempt %d): %s", attempt + 1, failures)
            await trio.sleep(pause)

    async def announce_loop(self) -> None:
        while True:
            await self.announce_once()
            await trio.sleep(self.config.announce_interval)

    async def expire_loop(self, interval: float = 1.0) -> None:
        while True:
            now = self.clock()
            self.peers.prune(now)
            for session in self.sessions.expire_sessions(now, self.config.session_idle_timeout):
                log.info("session %s expired after idling", session.session_id)
                self._settle_session(session)
            await trio.sleep(interval)


@asynccontextmanager
async def open_node(config: NodeConfig, *, clock: Clock = time.time) -> AsyncIterator[Server]:
    """Start the host, choose and load blocks, announce, serve; leaving the block
    shuts down cleanly.

    With `--blocks` the node serves exactly those. Without, it first pulls the
    swarm view from its initial peers, takes the contiguous blocks (as many as
    `--num-blocks`, or as its memory budget holds) where the served throughput
    is weakest, and every `--rebalance-interval` seconds reconsiders.
    """
    if config.compute_threads:
        torch.set_num_threads(config.compute_threads)
    for addr in config.initial_peers:
        parse_multiaddr(addr)  # a bad --initial-peers is a ConfigError now, not later
    swarm_id = ZERO_CHAIN
    if config.genesis is not None:
        from potluck.ledger.genesis import Genesis, load_key

        swarm_id = Genesis.load(config.genesis).swarm_id
    if config.validator:  # a validator's peer ID is its genesis key: anyone can check it
        assert config.validator_key is not None
        identity = load_key(config.validator_key)
    else:
        identity = load_or_create_identity(config.data_dir)
    model: ServedModel | None = None
    if config.model is not None:
        model = await trio.to_thread.run_sync(
            ServedModel.open, config.model, config.dtype, config.quant
        )
    async with (
        open_host(
            identity,
            host=config.host,
            port=config.port,
            max_frame=config.max_frame,
            timeout=config.request_timeout,
        ) as host,
        contextlib.AsyncExitStack() as early,
    ):
        # pubsub must run before the first connection: it only learns of new ones
        topics = None
        if config.genesis is not None:
            from potluck.p2p.pubsub import open_pubsub

            topics = await early.enter_async_context(open_pubsub(host))
        server = Server(
            host,
            config,
            span=None,
            model_id=model.identity if model else "",
            model=model,
            clock=clock,
        )
        server.swarm_id = swarm_id
        host.set_handler(PROTOCOL_RPC, server.handle_rpc)
        host.set_handler(PROTOCOL_INFERENCE, server.handle_inference)
        if model is not None:
            bounds = config.span
            if bounds is None:
                await server.learn_swarm()  # learn the swarm before choosing
                bounds = server.choose_blocks()
            await server.load_span(*bounds)
        if model is not None:
            await server.measure_bandwidth()
        await server.announce_once()  # known to the swarm before we say ready
        async with trio.open_nursery() as nursery, contextlib.AsyncExitStack() as stack:
            if config.genesis is not None:
                from potluck.node.ledger import open_replica

                server.replica = await stack.enter_async_context(
                    open_replica(
                        config,
                        host,
                        server.announce_targets,
                        topics=topics,
                        model_identity=model.identity if model else None,
                    )
                )
                await _start_ledger_duties(server, identity, nursery)
            nursery.start_soon(server.announce_loop)
            nursery.start_soon(server.expire_loop)
            if model is not None and config.span is None:
                nursery.start_soon(server.rebalance_loop)
            if config.dashboard is not None:
                server.dashboard_url = await stack.enter_async_context(_dashboard(server, model))
            try:
                yield server
            finally:
                nursery.cancel_scope.cancel()
                server.close_log()


async def _start_ledger_duties(server: Server, identity: Identity, nursery: trio.Nursery) -> None:
    """The node's own account (receipts, receives) and, on a validator, its duties."""
    from potluck.node.ledger import NodeLedger
    from potluck.node.validator import Validator

    config = server.config
    assert server.replica is not None
    server.ledger = NodeLedger(server.replica, identity, config.data_dir)
    await server.ledger.refresh_slashed()
    nursery.start_soon(server.ledger.run)
    nursery.start_soon(server.settle_loop)
    nursery.start_soon(server.attestation_loop)
    if not config.validator:
        return
    duties = Validator(server, server.ledger, clock=server.clock)
    economy = server.ledger.genesis.economy
    nursery.start_soon(
        duties.checkpoint_loop, config.checkpoint_interval or economy.checkpoint_seconds
    )
    if server.model is not None:
        server.validator = duties
        nursery.start_soon(duties.probe_loop, config.probe_interval or economy.probe_seconds)
        nursery.start_soon(duties.mint_loop)


@asynccontextmanager
async def _dashboard(server: Server, model: ServedModel | None) -> AsyncIterator[str]:
    """The node's dashboard (--dashboard): its swarm view and a read-only connection to
    its ledger replica, served by hypercorn in this trio loop; yields the URL. With
    --openai-model, the OpenAI-compatible routes too, generating through a client of
    the swarm that joins through this node."""
    from potluck.dashboard.serve import run_dashboard
    from potluck.ledger.genesis import Genesis
    from potluck.ledger.store import LEDGER_FILE
    from potluck.node.config import parse_listen

    config = server.config
    assert config.dashboard is not None
    host, port = parse_listen(config.dashboard)
    genesis = Genesis.load(config.genesis) if config.genesis is not None else None
    async with contextlib.AsyncExitStack() as stack:
        routers = []
        if config.openai_model is not None:
            routers.append(await _openai_router(server, stack))
        url = await stack.enter_async_context(
            run_dashboard(
                host,
                port,
                view=server.swarm_view,
                ledger_path=config.data_dir / LEDGER_FILE if genesis is not None else None,
                genesis=genesis,
                model=genesis.model_name if genesis is not None else config.model or "",
                model_identity=genesis.model_identity if genesis is not None else server.model_id,
                num_blocks=model.num_blocks if model is not None else None,
                node_id=server.host.peer_id,
                clock=server.clock,
                routers=routers,
            )
        )
        yield url


async def _openai_router(server: Server, stack: contextlib.AsyncExitStack) -> Any:
    """`/v1/...` over a client of the swarm whose initial peer is this node (closed
    with `stack`)."""
    from potluck.dashboard.openai import SwarmBackend, openai_router

    config = server.config
    assert config.openai_model is not None
    keys: dict[str, str] | None = None
    if config.api_keys is not None:
        data = _read_json(config.api_keys)
        if not data or not all(isinstance(v, str) for v in data.values()):
            raise ConfigError(
                f"{config.api_keys} must be a JSON object {{api key: account key file}}"
            )
        keys = {k: str((config.api_keys.parent / v).resolve()) for k, v in data.items()}
    own = [a for a in server.host.addrs if "/p2p/" in a] or [
        f"{a}/p2p/{server.host.peer_id}" for a in server.host.addrs
    ]
    backend = await trio.to_thread.run_sync(
        functools.partial(
            SwarmBackend.from_pretrained,
            config.openai_model,
            initial_peers=own[:1],
            genesis=config.genesis,
        )
    )
    stack.callback(backend.close)
    return openai_router(backend, max_tokens_limit=config.openai_max_tokens, api_keys=keys)


@dataclass(frozen=True)
class ServedModel:
    """What a server needs to know of its model before loading any block."""

    path: Path
    identity: str
    num_blocks: int
    bytes_per_block: int

    @classmethod
    def open(cls, name_or_path: str, dtype: str, quant: str = "none") -> ServedModel:
        """`bytes_per_block` is estimated for `quant` from its bits per weight."""
        path = resolve_model(name_or_path)
        config = load_config(path)
        float_bytes = block_weight_bytes(config, getattr(torch, dtype))
        return cls(
            path=path,
            identity=model_identity(path),
            num_blocks=num_blocks(config),
            bytes_per_block=float_bytes * QUANT_BITS[quant] // 32,
        )


def _available_memory() -> int:
    """MemAvailable from /proc/meminfo, in bytes (4 GiB if it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 4 * 2**30


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


__all__ = [
    "PROTOCOL_INFERENCE",
    "PROTOCOL_RPC",
    "NotAServer",
    "Server",
    "open_node",
]
