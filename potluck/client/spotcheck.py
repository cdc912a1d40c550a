"""Client-side verification: commitments on every step, spot-checks, disputes.

Every step's reply is checked against its commitment as it arrives
(`verify_step`): the client rebuilds the `Commitment` from what it sent and
received, and the server's signature must verify over it. A hop whose
commitment fails is treated like a failed hop and replaced.

A `SpotChecker` samples a fraction `rate` of each hop's steps with a secret
(`potluck.verify.sampling.Sampler`); the checked server sees nothing
different. When the session closes, the client sends each sampled hop's
input history, up to its last sampled step, as one stateless `Forward` to a
second server over the same blocks (a validator where one serves them) and
compares the sampled steps' outputs with the checker's rows
(`potluck.verify.fingerprint.compare`). A mismatch becomes a `Dispute` sent
to a validator, whose `Verdict` names who was wrong; those servers are
excluded from this client's routes for good.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import trio

from potluck.errors import BadCommitment, PotluckError, VerificationError
from potluck.p2p.announce import account_of_peer, peer_id_of_account
from potluck.p2p.host import PotluckHost
from potluck.p2p.protocols import PROTOCOL_RPC
from potluck.verify.commitment import (
    ZERO_CHAIN,
    Commitment,
    chain_inputs,
    output_root,
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
    outputs: torch.Tensor  # (batch, seq, hidden) as the server returned it
    signature: str
    dtype: str
    swarm: str


def verify_step(
    reply: StepResult,
    *,
    peer_id: str,
    start: int,
    end: int,
    inputs: str,
    swarm: str | None,
    dtype: str,
) -> Commitment:
    """The commitment of a step's reply, checked; `BadCommitment` when the signature,
    the swarm or the compute dtype the server announced do not match."""
    if swarm is not None and reply.swarm != swarm:
        raise BadCommitment(f"server {peer_id} signed for swarm {reply.swarm[:12] or 'none'}")
    if reply.dtype != dtype:
        raise BadCommitment(f"server {peer_id} announced {dtype} but computed in {reply.dtype}")
    commitment = step_commitment(
        reply, server=account_of_peer(peer_id), start=start, end=end, inputs=inputs
    )
    commitment.verify()
    return commitment


@dataclass
class SpotCheckStats:
    """What a client's spot-checks did."""

    sampled: int = 0  # steps drawn for checking
    checked: int = 0  # sampled steps actually compared with a checker
    unchecked: int = 0  # sampled steps with no checker available
    mismatches: int = 0
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

    def sample(self, hop: HopSession, reply: StepResult) -> None:
        """Keep the reply of `hop`'s current step if it is drawn."""
        if self.sampler.should_check(hop.session_id, 0, reply.step):
            self.stats.sampled += 1
            hop.samples.append(
                Sample(reply.step, reply.hidden, reply.signature, reply.dtype, reply.swarm)
            )

    def checkers(self, hop: HopSession) -> list[ServerInfo]:
        """Servers that can re-run `hop`'s blocks: validators first, never the hop itself."""
        start, end = hop.hop.start, hop.hop.end
        found = [
            s
            for s in self.swarm.servers(include_validators=True)
            if s.covers(start, end) and s.peer_id != hop.hop.peer_id
        ]
        validators = [s for s in found if self.is_validator(s)]
        others = [s for s in found if not s.validator]
        return validators + others

    async def check(self, host: PotluckHost, hops: list[HopSession]) -> set[str]:
        """Spot-check every hop's samples; the peer IDs found wrong."""
        guilty: set[str] = set()
        for hop in hops:
            if not hop.samples:
                continue
            try:
                guilty |= await self._check_hop(host, hop)
            except (PotluckError, trio.TooSlowError) as exc:
                log.warning("spot-check of %s failed to run: %s", hop.hop.peer_id, exc)
                self.stats.unchecked += len(hop.samples)
            hop.samples.clear()
        for peer in guilty:
            self.swarm.exclude(peer)
        return guilty

    async def _forward(
        self, host: PotluckHost, checker: ServerInfo, hop: HopSession, history: torch.Tensor
    ) -> tuple[ForwardResult, Commitment]:
        with trio.fail_after(self.timeout):
            reply = await host.request(
                checker.peer_id,
                PROTOCOL_RPC,
                Forward(hop.hop.start, hop.hop.end, history),
                addrs=checker.addrs,
            )
        if isinstance(reply, ErrorReply):
            raise reply.to_exception()
        if not isinstance(reply, ForwardResult) or reply.hidden.shape != history.shape:
            raise BadCommitment(f"checker {checker.peer_id} gave no usable forward result")
        commitment = Commitment(
            swarm=reply.swarm or ZERO_CHAIN,
            session="",
            step=0,
            start=hop.hop.start,
            end=hop.hop.end,
            inputs=chain_inputs(ZERO_CHAIN, history),
            outputs=output_root(row_digests(reply.hidden)),
            dtype=reply.dtype,
            server=account_of_peer(checker.peer_id),
            signature=reply.signature,
        )
        commitment.verify()
        return reply, commitment

    async def _check_hop(self, host: PotluckHost, hop: HopSession) -> set[str]:
        checkers = self.checkers(hop)
        if not checkers:
            log.info("no second server covers %d:%d: steps unchecked", hop.hop.start, hop.hop.end)
            self.stats.unchecked += len(hop.samples)
            return set()
        checker = checkers[0]
        steps = hop.steps
        upto = max(s.step for s in hop.samples)
        history = torch.cat(hop.history, dim=1)[:, : sum(steps[: upto + 1])].contiguous()
        reply, _ = await self._forward(host, checker, hop, history)
        guilty: set[str] = set()
        for sample in hop.samples:
            end = sum(steps[: sample.step + 1])
            n = steps[sample.step]
            reference = reply.hidden[:, end - n : end]
            self.stats.checked += 1
            verdict = compare(sample.outputs, reference, sample.dtype, reply.dtype)
            if verdict.matches:
                continue
            self.stats.mismatches += 1
            log.warning(
                "spot-check: %s step %d off by %.2e (tolerance %.1e) against %s",
                hop.hop.peer_id,
                sample.step,
                verdict.max_error,
                verdict.threshold,
                checker.peer_id,
            )
            guilty |= await self._dispute(host, hop, sample, checker, history[:, :end])
            break  # one proven case per hop is enough
        return guilty

    async def _dispute(
        self,
        host: PotluckHost,
        hop: HopSession,
        sample: Sample,
        checker: ServerInfo,
        history: torch.Tensor,
    ) -> set[str]:
        """Send the case to a validator; the peers its verdict finds guilty (the
        accused alone, banned locally, when no validator is known)."""
        validators = [
            s
            for s in self.swarm.servers(include_validators=True)
            if self.is_validator(s) and s.covers(hop.hop.start, hop.hop.end)
        ]
        if not validators:
            log.warning("no validator to referee %s: excluded locally only", hop.hop.peer_id)
            return {hop.hop.peer_id}
        reply, checker_commitment = await self._forward(host, checker, hop, history)
        steps = tuple(hop.steps[: sample.step + 1])
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
        raise VerificationError(f"no validator refereed the case against {hop.hop.peer_id}")
