"""A validator's duties: checkpoints, refereeing disputes, probing servers, minting.

A validator node (`potluck node start --validator --validator-key K`) uses
its genesis key as its node identity, so its peer ID proves to anyone with
the genesis that it is a validator, and one `Wallet` writes everything it
signs:

- **checkpoints** of the frontier whenever it moved (`checkpoint_loop`);

and, when it also holds the model's blocks (`--model`, normally all of them):

- **referee**: a `Dispute` from a client whose spot-check failed is checked
  (`potluck.verify.referee.check_evidence`), the span is recomputed on the
  stored inputs, and whoever disagrees with the recomputation gets a `slash`
  of `slash_fraction` of its available points, at least `slash_minimum` (as
  a debt if it holds fewer), carrying the evidence; the history goes into `audit` entries of result
  `evidence`. If both answers were right, the accuser pays
  `economy.dispute_fee` instead (reason `false_accusation`).
- **probes**: every `probe_seconds` (jittered), each server is sent a short
  session of its own (a prompt of random tokens and a few decode steps, of
  random lengths, through the same inference protocol as any client) from a
  libp2p host with a fresh key for each round, so that a server cannot tell
  probes from clients by the peer. Each is timed for capacity and uptime, and
  every output is compared with the validator's own computation. A wrong one
  is refereed like a dispute, with the validator as checker and accuser.
- **mints**: when an epoch ends, the validator records each probed server's
  measured capacity (`audit` with result `capacity`) and mints to every
  server in good standing what `potluck.ledger.economy.plan_mints` gives:
  usage from receipts, capped by that capacity, weighted towards scarce
  blocks.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import random
import secrets
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import trio

from potluck.errors import (
    BadCommitment,
    InvalidEvidence,
    LedgerError,
    ModelError,
    NetworkError,
    PotluckError,
    QuantMismatch,
    VerificationError,
    remote_error,
)
from potluck.ledger.economy import Capacity, capacity_audit_body, epoch_of, mint_body, plan_mints
from potluck.model import BlockSpan, ClientHead, load_config, num_blocks
from potluck.p2p.announce import account_of_peer
from potluck.p2p.host import PotluckHost, open_host
from potluck.p2p.identity import Identity
from potluck.p2p.protocols import PROTOCOL_INFERENCE
from potluck.verify.commitment import (
    ZERO_CHAIN,
    Commitment,
    chain_inputs,
    decoded_output,
    output_root,
    replay_chain,
    row_digests,
    step_commitment,
)
from potluck.verify.fingerprint import compare
from potluck.verify.referee import (
    Evidence,
    check_evidence,
    history_chunks,
    reference_row,
    replay_steps,
    rule,
    slash_evidence,
)
from potluck.wire import (
    CloseSession,
    Dispute,
    ErrorReply,
    InferenceStep,
    OpenSession,
    ServerInfo,
    SessionOpened,
    StepResult,
    Verdict,
)

if TYPE_CHECKING:
    from potluck.node.ledger import NodeLedger
    from potluck.node.server import Server

log = logging.getLogger(__name__)

PROBE_PROMPT = (4, 32)
"""Prompt tokens of a probe session, drawn uniformly from this range."""
PROBE_DECODE = (2, 8)
"""Decode steps of a probe session, drawn uniformly from this range."""


@dataclass
class ProbeStats:
    """One server's probes in one epoch."""

    start: int
    end: int
    probes: int = 0
    answered: int = 0
    mismatches: int = 0
    tokens_per_s: list[float] = field(default_factory=list)


class Validator:
    """The duties of a validator node (see the module docstring)."""

    def __init__(
        self,
        server: Server,
        ledger: NodeLedger,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.server = server
        self.ledger = ledger
        self.replica = ledger.replica
        self.genesis = ledger.genesis
        self.economy = ledger.genesis.economy
        self.wallet = ledger.wallet
        self.clock = clock
        self.account = ledger.account
        self.verdicts: dict[str, Verdict] = {}
        self.stats: dict[int, dict[str, ProbeStats]] = {}
        self._head: ClientHead | None = None
        #: The blocks in other quantisations than the node's own, to check their servers.
        self._quantised: dict[str, BlockSpan] = {}
        self._quant_lock = trio.Lock()
        self._referee_lock = trio.Lock()
        self.disputes = 0
        self.slashes = 0
        self.mints = 0

    @property
    def dtype(self) -> str:
        return self.server.config.dtype

    # -- checkpoints -------------------------------------------------------------

    async def checkpoint_loop(self, interval: float) -> None:
        """Sign a checkpoint of the frontier whenever it moved (less our own entries)."""
        last: dict[str, object] | None = None
        while True:
            await trio.sleep(interval)
            basis = await self.replica.db(self.replica.checkpoint_basis)
            if not basis or basis == last:
                continue
            frontier = await self.replica.db(self.replica.ledger.frontier)
            frontier.pop(self.account, None)
            body = {"frontier": {a: [seq, h] for a, (seq, h) in sorted(frontier.items())}}
            try:
                await self.wallet.write("checkpoint", body)
                last = basis
            except (LedgerError, NetworkError) as exc:
                log.warning("checkpoint of %d accounts failed: %s", len(frontier), exc)

    # -- referee ---------------------------------------------------------------

    async def quantised_span(self, quant: str) -> BlockSpan:
        """The validator's blocks with weights quantised as `quant` (its own span for
        its own mode), loaded and quantised on first use and kept: a validator checks
        servers of every quantisation (`potluck.verify.fingerprint`)."""
        span = self.server.span
        model = self.server.model
        if span is None or model is None:
            raise InvalidEvidence("this validator holds no blocks")
        if quant == span.quant:
            return span
        async with self._quant_lock:
            known = self._quantised.get(quant)
            if known is None or (known.start, known.end) != (span.start, span.end):
                load = functools.partial(
                    BlockSpan.load, model.path, span.start, span.end, quant=quant
                )
                try:
                    known = self._quantised[quant] = await trio.to_thread.run_sync(load)
                except ModelError as exc:  # e.g. bitsandbytes cannot run here: say so
                    raise QuantMismatch(f"this validator cannot compute in {quant}: {exc}") from exc
                log.info("loaded blocks %d:%d in %s to check servers", span.start, span.end, quant)
            return known

    async def _recompute(
        self,
        history: torch.Tensor,
        start: int,
        end: int,
        quant: str = "none",
        steps: tuple[int, ...] = (),
    ) -> torch.Tensor:
        """Blocks [start, end) over the whole history, as float32: in one forward, or
        replaying `steps` (`BlockSpan.replay`), with weights quantised as `quant`."""
        span = await self.quantised_span(quant)
        if not span.start <= start < end <= span.end:
            raise InvalidEvidence(f"this validator holds blocks {span.start}:{span.end} only")

        def run() -> torch.Tensor:
            x = history.to(span.dtype)
            if steps:
                return span.replay(x, steps, start=start, end=end).float()
            return span.forward(x, None, start=start, end=end).float()

        return await self.server.compute(run)

    async def referee(self, msg: Dispute, peer: str) -> Verdict:
        """Rule on a client's dispute (see the module docstring)."""
        try:
            evidence = Evidence.from_json(json.loads(msg.evidence))
        except ValueError as exc:
            raise InvalidEvidence(f"evidence is not JSON: {exc}") from None
        if evidence.accused.swarm != self.ledger.swarm_id:
            raise InvalidEvidence("the evidence is for another swarm")
        check_evidence(evidence, msg.history, msg.outputs, msg.checked)
        self.disputes += 1
        return await self.judge(
            evidence, msg.history, msg.outputs, msg.checked, accuser=account_of_peer(peer)
        )

    async def judge(
        self,
        evidence: Evidence,
        history: torch.Tensor,
        outputs: torch.Tensor,
        checked: torch.Tensor,
        *,
        accuser: str,
    ) -> Verdict:
        """Recompute, rule, and record the slashes of checked evidence."""
        async with self._referee_lock:  # one ruling per case, even for concurrent disputes
            known = self.verdicts.get(evidence.case)
            if known is not None:
                return known
            accused = evidence.accused
            recomputed = await self._recompute(
                history, accused.start, accused.end, accused.quant, replay_steps(evidence)
            )
            ruling = rule(
                evidence,
                outputs,
                checked,
                reference_row(evidence, recomputed),
                referee_dtype=(await self.quantised_span(accused.quant)).compute_dtype,
            )
            guilty = ruling.guilty(evidence, accuser)
            entries = await self._record(evidence, history, outputs, checked, guilty, accuser)
            message = (
                f"accused error {ruling.accused.max_error:.2e}, checker error "
                f"{ruling.checker.max_error:.2e}, tolerance {ruling.accused.threshold:.1e}; "
                + ", ".join(f"{account[:12]} {reason}" for account, reason in guilty)
            )
            log.warning("case %s: %s", evidence.case[:12], message)
            verdict = Verdict(
                evidence.case,
                tuple(account for account, _ in guilty),
                tuple(entries),
                message,
            )
            self.verdicts[evidence.case] = verdict
            return verdict

    async def _record(
        self,
        evidence: Evidence,
        history: torch.Tensor,
        outputs: torch.Tensor,
        checked: torch.Tensor,
        guilty: list[tuple[str, str]],
        accuser: str,
    ) -> list[str]:
        """Write the history as evidence audits, then a slash per guilty account."""
        header, pieces = history_chunks(history)
        hashes = []
        for part, data in enumerate(pieces):
            details = {"case": evidence.case, "part": part, "parts": len(pieces), "data": data}
            body = {"server": evidence.accused.server, "result": "evidence", "details": details}
            hashes.append((await self.wallet.write("audit", body)).hash)
        record = slash_evidence(
            evidence, outputs, checked, accuser=accuser, history=header, chunks=hashes
        )
        slashes = []
        for account, reason in guilty:
            state = await self.replica.db(self.replica.ledger.account, account)
            if reason == "false_accusation":
                amount = self.economy.dispute_fee
            else:
                share = math.floor(self.economy.slash_fraction * max(0, state.available))
                amount = max(share, self.economy.slash_minimum)
            slash: dict[str, Any] = {
                "account": account,
                "reason": reason,
                "amount": amount,
                "evidence": record,
            }
            slashes.append((await self.wallet.write("slash", slash)).hash)
            self.slashes += 1
        await self.ledger.refresh_slashed()
        return [*hashes, *slashes]

    # -- probes ----------------------------------------------------------------

    def _probe_targets(self) -> list[ServerInfo]:
        excluded = self.server.excluded()
        return [
            s
            for s in self.server.peers.live(self.server.clock())
            if not s.validator
            and s.model == self.server.model_id
            and s.peer_id not in excluded
            and s.peer_id != self.server.host.peer_id
        ]

    async def probe_loop(self, interval: float) -> None:
        while True:  # jittered, so that servers cannot time their honesty around probes
            await trio.sleep(interval * random.uniform(0.5, 1.5))
            targets = self._probe_targets()
            if not targets:
                continue
            config = self.server.config
            async with open_host(
                Identity.generate(),
                host=config.host,
                max_frame=config.max_frame,
                timeout=config.request_timeout,
            ) as host:
                for target in targets:
                    await self.probe(target, host)

    def _stats_for(self, target: ServerInfo) -> ProbeStats:
        epoch = epoch_of(int(self.clock() * 1000), self.economy)
        per_server = self.stats.setdefault(epoch, {})
        stats = per_server.get(target.peer_id)
        if stats is None or (stats.start, stats.end) != (target.start, target.end):
            stats = per_server[target.peer_id] = ProbeStats(target.start, target.end)
        return stats

    def _client_head(self) -> ClientHead:
        if self._head is None:
            assert self.server.model is not None
            self._head = ClientHead.load(self.server.model.path)
        return self._head

    async def probe(self, target: ServerInfo, host: PotluckHost | None = None) -> bool:
        """One probe session of `target` (from `host`, by default the node's own);
        whether it answered correctly."""
        span = self.server.span
        if span is None or not span.start <= 0 < target.end <= span.end:
            return False
        stats = self._stats_for(target)
        stats.probes += 1
        head = await trio.to_thread.run_sync(self._client_head)
        vocab = head.embed_weight.shape[0]
        before = span.new_cache() if target.start > 0 else None
        try:  # the target's own quantisation: only a replay of its calls is exact
            own_mode = await self.quantised_span(target.quant)
        except (PotluckError, ValueError) as exc:
            log.warning("cannot probe %s in %s: %s", target.peer_id, target.quant, exc)
            return False
        mine = own_mode.new_cache()
        session = secrets.token_hex(16)
        chain = ZERO_CHAIN
        steps: list[int] = []
        history: list[torch.Tensor] = []
        prompt, decode = random.randint(*PROBE_PROMPT), random.randint(*PROBE_DECODE)
        total = prompt + decode
        host = host or self.server.host
        try:
            with trio.fail_after(self.server.config.request_timeout):
                stream = await host.open_stream(
                    target.peer_id, PROTOCOL_INFERENCE, addrs=target.addrs
                )
            try:
                with trio.fail_after(self.server.config.request_timeout):
                    await stream.send(OpenSession(session, target.start, target.end, total))
                    _expect(await stream.receive(), SessionOpened, target.peer_id)
                decode_seconds = 0.0
                for step in range(1 + decode):
                    n = prompt if step == 0 else 1
                    ids = torch.randint(0, vocab, (1, n))

                    def inputs(ids: torch.Tensor = ids) -> torch.Tensor:
                        hidden = head.embed(ids).float()
                        if before is not None:
                            hidden = span.forward(hidden, before, start=0, end=target.start)
                        return hidden.float().contiguous()

                    hidden = await self.server.compute(inputs)
                    t0 = trio.current_time()
                    with trio.fail_after(self.server.config.request_timeout):
                        await stream.send(InferenceStep(session, step, sum(steps), hidden))
                        reply = _expect(await stream.receive(), StepResult, target.peer_id)
                    if step:
                        decode_seconds += trio.current_time() - t0
                    chain = chain_inputs(chain, hidden)
                    steps.append(n)
                    history.append(hidden)
                    if reply.quant != target.quant:  # the comparison is for its announced mode
                        raise BadCommitment(
                            f"{target.peer_id} announced {target.quant} weights, used {reply.quant}"
                        )
                    output = decoded_output(reply)
                    accused = step_commitment(
                        reply,
                        server=account_of_peer(target.peer_id),
                        start=target.start,
                        end=target.end,
                        inputs=chain,
                        outputs=output,
                    )
                    accused.verify()

                    def reference(hidden: torch.Tensor = hidden) -> torch.Tensor:
                        x = hidden.to(own_mode.dtype)
                        out = own_mode.forward(x, mine, start=target.start, end=target.end)
                        return out.float()

                    ref = await self.server.compute(reference)
                    verdict = compare(
                        output,
                        ref,
                        reply.dtype,
                        own_mode.compute_dtype,
                        quant=reply.quant,
                        codec=reply.codec,
                    )
                    if not verdict.matches:
                        stats.mismatches += 1
                        await self._convict_probed(
                            target, torch.cat(history, dim=1), steps, output, accused, ref
                        )
                        return False
                with trio.move_on_after(5):
                    await stream.send(CloseSession(session))
                    await stream.receive()
            finally:
                await stream.close()
        except (PotluckError, trio.TooSlowError) as exc:
            log.info("probe of %s failed: %s", target.peer_id, exc)
            return False
        stats.answered += 1
        stats.tokens_per_s.append(decode / max(decode_seconds, 1e-6))
        return True

    async def _convict_probed(
        self,
        target: ServerInfo,
        history: torch.Tensor,
        steps: list[int],
        output: torch.Tensor,
        accused: Commitment,
        reference: torch.Tensor,
    ) -> None:
        """Referee a probe's wrong answer (`output`, decoded), with this validator as
        checker and accuser."""
        rows = row_digests(output)
        errors = [
            float((a - b).norm() / b.norm().clamp_min(1e-12))
            for a, b in zip(
                output.reshape(-1, output.shape[-1]),
                reference.reshape(-1, reference.shape[-1]),
                strict=True,
            )
        ]
        row = max(range(len(errors)), key=errors.__getitem__)
        replay = tuple(steps) if accused.quant != "none" else ()
        forward = await self._recompute(history, target.start, target.end, accused.quant, replay)
        forward = forward.contiguous()
        own = Commitment(
            swarm=self.ledger.swarm_id,
            session="",
            step=0,
            start=target.start,
            end=target.end,
            inputs=replay_chain(history, replay),
            outputs=output_root(row_digests(forward)),
            dtype=(await self.quantised_span(accused.quant)).compute_dtype,
            server=self.account,
            quant=accused.quant,
        ).signed(self.server.host.identity)
        evidence = Evidence(
            accused=accused,
            checker=own,
            steps=tuple(steps),
            rows=tuple(row_digests(forward)),
            accused_rows=tuple(rows),
            row=row,
        )
        outputs = output.reshape(-1, 1, output.shape[-1])[row : row + 1]
        checked = reference_row(evidence, forward)
        try:
            check_evidence(evidence, history, outputs, checked)
            await self.judge(evidence, history, outputs, checked, accuser=self.account)
        except (VerificationError, LedgerError) as exc:
            log.warning("could not referee the probe of %s: %s", target.peer_id, exc)

    # -- epochs and mints ----------------------------------------------------------

    async def mint_loop(self) -> None:
        """At each epoch's end (plus a grace second for late receipts), close it."""
        seconds = self.economy.epoch_seconds
        while True:
            now = self.clock()
            epoch = epoch_of(int(now * 1000), self.economy)
            await trio.sleep(max(0.0, (epoch + 1) * seconds - now) + 1.0)
            try:
                await self.close_epoch(epoch)
            except (LedgerError, NetworkError) as exc:
                log.warning("closing epoch %d failed: %s", epoch, exc)

    async def close_epoch(self, epoch: int) -> list[str]:
        """Record the epoch's measured capacities and mint; returns the mint hashes."""
        stats = self.stats.pop(epoch, {})
        capacities: dict[str, Capacity] = {}
        for peer_id, s in sorted(stats.items()):
            if not s.probes:
                continue
            speed = statistics.median(s.tokens_per_s) if s.tokens_per_s else 0.0
            account = account_of_peer(peer_id)
            body = capacity_audit_body(
                server=account,
                epoch=epoch,
                start=s.start,
                end=s.end,
                probes=s.probes,
                answered=s.answered,
                milli_tokens_per_s=int(speed * 1000),
                mismatches=s.mismatches,
            )
            await self.wallet.write("audit", body)
            if s.answered and not s.mismatches:
                capacities[account] = Capacity(
                    server=account,
                    start=s.start,
                    end=s.end,
                    tokens_per_s=int(speed * 1000) / 1000,
                    uptime=s.answered / s.probes,
                )
        await self.ledger.refresh_slashed()
        since = epoch * self.economy.epoch_seconds * 1000
        receipts = await self.replica.db(self.replica.ledger.backend.by_kind, "receipt", since)
        assert self.server.model is not None
        blocks = num_blocks(load_config(self.server.model.path))
        plans = plan_mints(
            epoch=epoch,
            receipts=receipts,
            capacities=capacities,
            excluded=self.ledger.convicted,
            num_blocks=blocks,
            economy=self.economy,
            validators=len(self.genesis.validators),
            swarm=self.ledger.swarm_id,
        )
        minted = []
        for plan in plans:
            entry = await self.wallet.write("mint", mint_body(plan, epoch))
            minted.append(entry.hash)
            self.mints += 1
            log.info("epoch %d: minted %d to %s", epoch, plan.amount, plan.server[:12])
        return minted


def _expect(reply: Any, cls: type[Any], peer: str) -> Any:
    if reply is None:
        raise NetworkError(f"{peer} closed the probe session")
    if isinstance(reply, ErrorReply):
        raise remote_error(reply.code, f"{peer}: {reply.message}")
    if not isinstance(reply, cls):
        raise NetworkError(f"{peer} answered {type(reply).__name__}, not {cls.__name__}")
    return reply
