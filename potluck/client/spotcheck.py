"""Client-side verification: commitments on every step, spot-checks, disputes.

Every step's reply is checked against its commitment as it arrives
(`verify_step`): the client rebuilds the `Commitment` from what it sent and
received, and the server's signature must verify over it. A hop whose
commitment fails is treated like a failed hop and replaced.

A `SpotChecker` draws a fraction `rate` of each hop's steps with a secret
(`potluck.verify.sampling.Sampler`); the checked server sees nothing
different. When the session closes, the client refreshes its swarm view and,
for every hop that drew a step (all hops at once), sends the hop's input
history up to its last drawn step as one stateless `Forward` to a second
server over the same blocks (a validator where one serves them, else another
server; the next one if it fails). That one recomputation yields every step
up to the drawn one, so the client compares them all with what the hop
returned (`potluck.verify.fingerprint.compare`): a step is checked whenever
a later step of its hop is drawn. A mismatch becomes a `Dispute` sent
to a validator, whose `Verdict` names who was wrong; those servers are
excluded from this client's routes for good.

Quantised servers are checked differently (`potluck.verify.fingerprint`): only
a checker that computes in the same quantisation and **replays** the hop's
steps (`Forward.steps`, `Forward.quant`) reproduces their outputs, so such a
hop's checkers are validators (which load any quantisation) and servers of
its quantisation, asked to replay, and the comparison is exact up to the
session codec's proven error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import trio

from potluck.errors import BadCommitment, PotluckError
from potluck.p2p.announce import account_of_peer, peer_id_of_account
from potluck.p2p.host import PotluckHost
from potluck.p2p.protocols import PROTOCOL_RPC
from potluck.verify.commitment import (
    ZERO_CHAIN,
    Commitment,
    chain_inputs,
    output_root,
    replay_chain,
    row_digests,
    step_commitment,
)
from potluck.verify.fingerprint import compare, relative_errors
from potluck.verify.referee import Evidence
from potluck.verify.sampling import Sampler
from potluck.wire import (
    Dispute,
    ErrorReply,
    Forward,
    ForwardResult,
    ServerInfo,
    StepResult,
    Verdict,
)

if TYPE_CHECKING:
    from potluck.client.session import HopSession
    from potluck.client.swarm import SwarmClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """A sampled step's reply, kept until the session's spot-check."""

    step: int
    outputs: torch.Tensor  # (batch, seq, hidden) as the server returned it, decoded
    signature: str
    dtype: str
    swarm: str
    quant: str = "none"
    codec: str = "float32"


def verify_step(
    reply: StepResult,
    *,
    peer_id: str,
    start: int,
    end: int,
    inputs: str,
    swarm: str | None,
    dtype: str,
    quant: str = "none",
    outputs: torch.Tensor | None = None,
) -> Commitment:
    """The commitment of a step's reply, checked; `BadCommitment` when the signature,
    the swarm, or the compute dtype or quantisation the server announced do not
    match. `outputs`: the reply's decoded hidden states, if already at hand."""
    if swarm is not None and reply.swarm != swarm:
        raise BadCommitment(f"server {peer_id} signed for swarm {reply.swarm[:12] or 'none'}")
    if reply.dtype != dtype:
        raise BadCommitment(f"server {peer_id} announced {dtype} but computed in {reply.dtype}")
    if reply.quant != quant:
        raise BadCommitment(f"server {peer_id} announced {quant} weights but used {reply.quant}")
    commitment = step_commitment(
        reply,
        server=account_of_peer(peer_id),
        start=start,
        end=end,
        inputs=inputs,
        outputs=outputs,
    )
    commitment.verify()
    return commitment


@dataclass
class SpotCheckStats:
    """What a client's spot-checks did."""

    sampled: int = 0  # steps drawn (each makes its hop's steps up to it checked)
    checked: int = 0  # steps compared with a checker's recomputation
    unchecked: int = 0  # steps that should have been compared, but no checker answered
    mismatches: int = 0  # compared steps that did not match
    verdicts: list[Verdict] = field(default_factory=list)


class SpotChecker:
    """Samples steps, checks them at the session's end, disputes mismatches."""

    def __init__(
        self,
        rate: float,
        *,
        swarm: SwarmClient,
        validators: Collection[str] | None = None,
        swarm_id: str | None = None,
        timeout: float = 120.0,
    ) -> None:
        self.sampler = Sampler(rate)
        self.swarm = swarm
        #: Validator accounts from the genesis; None trusts the `validator` flag.
        self.validators = None if validators is None else frozenset(validators)
        self.swarm_id = swarm_id
        self.timeout = timeout
        self.stats = SpotCheckStats()

    def is_validator(self, server: ServerInfo) -> bool:
        if not server.validator:
            return False
        return self.validators is None or account_of_peer(server.peer_id) in self.validators

    def _allowed(self, hop: HopSession, server: ServerInfo) -> bool:
        """Whether `hop`'s inputs may go to `server` (a private session's go only to
        servers its trust policy trusts)."""
        trust = hop.trust
        return trust is None or trust.trusts(server, int(self.swarm.clock() * 1000))

    def sample(self, hop: HopSession, reply: StepResult, outputs: torch.Tensor) -> None:
        """Keep `hop`'s reply (`outputs`: decoded), and draw whether to check up to
        this step."""
        hop.replies.append(
            Sample(
                reply.step,
                outputs,
                reply.signature,
                reply.dtype,
                reply.swarm,
                reply.quant,
                reply.codec,
            )
        )
        if self.sampler.should_check(hop.session_id, 0, reply.step):
            self.stats.sampled += 1
            hop.check_upto = reply.step

    def checkers(self, hop: HopSession) -> list[ServerInfo]:
        """Servers that can re-run `hop`'s blocks: validators first, then servers whose
        weights are quantised like the hop's; never the hop itself."""
        start, end = hop.hop.start, hop.hop.end
        found = [
            s
            for s in self.swarm.servers(include_validators=True)
            if s.covers(start, end) and s.peer_id != hop.hop.peer_id and self._allowed(hop, s)
        ]
        validators = [s for s in found if self.is_validator(s)]
        others = [s for s in found if not s.validator and s.quant == hop.hop.server.quant]
        return validators + others

    async def check(self, host: PotluckHost, hops: list[HopSession]) -> set[str]:
        """Spot-check every hop that drew a step, all at once; the peer IDs found wrong."""
        drawn = [hop for hop in hops if hop.check_upto >= 0]
        guilty: set[str] = set()
        if not drawn:
            return guilty
        try:  # announcements expire: a long session's view may have lost its checkers
            with trio.fail_after(self.timeout):
                await self.swarm.refresh(host)
        except (PotluckError, trio.TooSlowError) as exc:
            log.warning("could not refresh the swarm view before spot-checks: %s", exc)

        async def one(hop: HopSession) -> None:
            steps = hop.check_upto + 1
            try:
                guilty.update(await self._check_hop(host, hop))
            except (PotluckError, trio.TooSlowError) as exc:
                log.warning("spot-check of %s failed to run: %s", hop.hop.peer_id, exc)
                self.stats.unchecked += steps
            hop.replies.clear()
            hop.check_upto = -1

        async with trio.open_nursery() as nursery:
            for hop in drawn:
                nursery.start_soon(one, hop)
        for peer in guilty:
            self.swarm.exclude(peer)
        return guilty

    async def _forward(
        self,
        host: PotluckHost,
        checker: ServerInfo,
        hop: HopSession,
        history: torch.Tensor,
        steps: tuple[int, ...],
    ) -> tuple[ForwardResult, Commitment]:
        """`checker`'s recomputation of `history` through `hop`'s blocks, in the hop's
        quantisation; replayed step by step (`steps`) for a quantised hop."""
        quant = hop.hop.server.quant
        replay = steps if quant != "none" else ()
        with trio.fail_after(self.timeout):
            reply = await host.request(
                checker.peer_id,
                PROTOCOL_RPC,
                Forward(hop.hop.start, hop.hop.end, history, replay, quant),
                addrs=checker.addrs,
            )
        if isinstance(reply, ErrorReply):
            raise reply.to_exception()
        if not isinstance(reply, ForwardResult) or reply.hidden.shape != history.shape:
            raise BadCommitment(f"checker {checker.peer_id} gave no usable forward result")
        if reply.quant != quant:
            raise BadCommitment(f"checker {checker.peer_id} computed in {reply.quant}, not {quant}")
        commitment = Commitment(
            swarm=reply.swarm or ZERO_CHAIN,
            session="",
            step=0,
            start=hop.hop.start,
            end=hop.hop.end,
            inputs=replay_chain(history, replay),
            outputs=output_root(row_digests(reply.hidden)),
            dtype=reply.dtype,
            server=account_of_peer(checker.peer_id),
            signature=reply.signature,
            quant=reply.quant,
        )
        commitment.verify()
        return reply, commitment

    async def _check_hop(self, host: PotluckHost, hop: HopSession) -> set[str]:
        """Recompute `hop`'s history up to its last drawn step on a checker and compare
        every step up to there (the recomputation covers them all)."""
        steps = hop.steps[: hop.check_upto + 1]
        history = torch.cat(hop.history, dim=1)[:, : sum(steps)].contiguous()
        reply: ForwardResult | None = None
        checker: ServerInfo | None = None
        for checker in self.checkers(hop):
            try:
                reply, _ = await self._forward(host, checker, hop, history, tuple(steps))
                break
            except (PotluckError, trio.TooSlowError) as exc:
                log.warning("checker %s failed: %s", checker.peer_id, exc)
        if reply is None or checker is None:
            log.warning(
                "no second server re-ran blocks %d:%d of %s: %d steps unchecked",
                hop.hop.start,
                hop.hop.end,
                hop.hop.peer_id,
                len(steps),
            )
            self.stats.unchecked += len(steps)
            return set()
        wrong: list[tuple[Sample, int]] = []
        end = 0
        for kept, n in zip(hop.replies, steps, strict=False):
            end += n
            verdict = compare(
                kept.outputs,
                reply.hidden[:, end - n : end],
                kept.dtype,
                reply.dtype,
                quant=kept.quant,
                codec=kept.codec,
            )
            self.stats.checked += 1
            if not verdict.matches:
                wrong.append((kept, end))
                log.warning(
                    "spot-check: %s step %d off by %.2e (tolerance %.1e) against %s",
                    hop.hop.peer_id,
                    kept.step,
                    verdict.max_error,
                    verdict.threshold,
                    checker.peer_id,
                )
        if not wrong:
            return set()
        self.stats.mismatches += len(wrong)
        kept, end = wrong[0]  # one proven case per hop is enough
        return await self._dispute(host, hop, kept, checker, history[:, :end])

    async def _dispute(
        self,
        host: PotluckHost,
        hop: HopSession,
        sample: Sample,
        checker: ServerInfo,
        history: torch.Tensor,
    ) -> set[str]:
        """Send the case to a validator; the peers its verdict finds guilty (the
        accused alone, excluded locally, when no validator referees it)."""
        validators = [
            s
            for s in self.swarm.servers(include_validators=True)
            if self.is_validator(s)
            and s.covers(hop.hop.start, hop.hop.end)
            and self._allowed(hop, s)
        ]
        if not validators:
            log.warning("no validator to referee %s: excluded locally only", hop.hop.peer_id)
            return {hop.hop.peer_id}
        steps = tuple(hop.steps[: sample.step + 1])
        reply, checker_commitment = await self._forward(host, checker, hop, history, steps)
        n = steps[-1]
        checked_all = reply.hidden[:, -n:]
        row = int(relative_errors(sample.outputs, checked_all).argmax())
        hidden = sample.outputs.shape[-1]
        chain = ZERO_CHAIN
        at = 0
        for k in steps:
            chain = chain_inputs(chain, history[:, at : at + k])
            at += k
        accused = Commitment(
            swarm=sample.swarm or ZERO_CHAIN,
            session=hop.session_id,
            step=sample.step,
            start=hop.hop.start,
            end=hop.hop.end,
            inputs=chain,
            outputs=output_root(row_digests(sample.outputs)),
            dtype=sample.dtype,
            server=account_of_peer(hop.hop.peer_id),
            signature=sample.signature,
            quant=sample.quant,
            codec=sample.codec,
        )
        evidence = Evidence(
            accused=accused,
            checker=checker_commitment,
            steps=steps,
            rows=tuple(row_digests(reply.hidden)),
            accused_rows=tuple(row_digests(sample.outputs)),
            row=row,
        )
        dispute = Dispute(
            json.dumps(evidence.to_json()),
            history,
            sample.outputs.reshape(-1, 1, hidden)[row : row + 1].contiguous(),
            checked_all.reshape(-1, 1, hidden)[row : row + 1].contiguous(),
        )
        for validator in validators:
            try:
                with trio.fail_after(self.timeout):
                    verdict = await host.request(
                        validator.peer_id, PROTOCOL_RPC, dispute, addrs=validator.addrs
                    )
            except (PotluckError, trio.TooSlowError) as exc:
                log.warning("validator %s did not referee: %s", validator.peer_id, exc)
                continue
            if isinstance(verdict, ErrorReply):
                log.warning("validator %s refused the dispute: %s", validator.peer_id, verdict)
                continue
            if isinstance(verdict, Verdict):
                self.stats.verdicts.append(verdict)
                log.warning("verdict on case %s: %s", verdict.case[:12], verdict.message)
                return {peer_id_of_account(a) for a in verdict.guilty}
        log.warning("no validator refereed %s: excluded locally only", hop.hop.peer_id)
        return {hop.hop.peer_id}
