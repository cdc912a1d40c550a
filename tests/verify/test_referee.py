"""The referee: evidence that proves what it claims, rulings, and ledger-packed fraud proofs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from potluck.errors import InvalidEvidence
from potluck.model import BlockSpan
from potluck.p2p.identity import Identity
from potluck.verify.commitment import ZERO_CHAIN, Commitment, chain_inputs, output_root, row_digests
from potluck.verify.referee import (
    Evidence,
    check_evidence,
    history_chunks,
    history_from_chunks,
    pack_tensor,
    reference_row,
    reverify,
    rule,
    slash_evidence,
    unpack_tensor,
)

SWARM = "ab" * 32


@dataclasses.dataclass
class Case:
    evidence: Evidence
    history: torch.Tensor
    outputs: torch.Tensor  # the disputed row, (1, 1, hidden)
    checked: torch.Tensor
    accused: Identity
    checker: Identity


def _commit(
    identity: Identity, session: str, step: int, inputs: str, out: torch.Tensor
) -> Commitment:
    return Commitment(
        swarm=SWARM,
        session=session,
        step=step,
        start=1,
        end=4,
        inputs=inputs,
        outputs=output_root(row_digests(out)),
        dtype="float32",
        server=identity.public_bytes.hex(),
    ).signed(identity)


@pytest.fixture(scope="module")
def span(tiny_model: Path) -> BlockSpan:
    return BlockSpan.load(tiny_model, 0, 6)


def make_case(span: BlockSpan, *, corrupt: float = 0.0, checker_corrupt: float = 0.0) -> Case:
    """A session of a prefill and three decode steps on blocks 1:4, the accused
    (maybe) corrupting its last step, and a checker's forward over the history."""
    torch.manual_seed(0)
    hidden = span.config.hidden_size
    accused, checker = Identity.generate(), Identity.generate()
    steps = [5, 1, 1, 1]
    inputs = [torch.randn(1, n, hidden) for n in steps]
    cache = span.new_cache()
    chain = ZERO_CHAIN
    out = torch.empty(0)
    for x in inputs:
        out = span.forward(x, cache, start=1, end=4).contiguous()
        chain = chain_inputs(chain, x)
    if corrupt:
        out = out + corrupt * out.norm() * torch.nn.functional.normalize(
            torch.randn_like(out), dim=-1
        )
    commitment = _commit(accused, "5e55", len(steps) - 1, chain, out)
    history = torch.cat(inputs, dim=1)
    forward = span.forward(history, None, start=1, end=4).contiguous()
    if checker_corrupt:
        forward = forward * (1 + checker_corrupt)
    checker_commitment = _commit(checker, "", 0, chain_inputs(ZERO_CHAIN, history), forward)
    evidence = Evidence(
        accused=commitment,
        checker=checker_commitment,
        steps=tuple(steps),
        rows=tuple(row_digests(forward)),
        accused_rows=tuple(row_digests(out)),
        row=0,
    )
    checked = reference_row(evidence, forward)
    return Case(evidence, history, out[:, :1], checked, accused, checker)


def recompute(span: BlockSpan):  # type: ignore[no-untyped-def]
    """A `Recompute` over an unquantised span (these cases are all float32)."""

    def run(history, start, end, quant, steps):  # type: ignore[no-untyped-def]
        assert quant == "none" and steps == ()
        return span.forward(history, None, start=start, end=end)

    return run


def test_an_honest_step_is_upheld_and_the_accuser_pays(span: BlockSpan) -> None:
    case = make_case(span)
    check_evidence(case.evidence, case.history, case.outputs, case.checked)
    reference = reference_row(case.evidence, recompute(span)(case.history, 1, 4, "none", ()))
    ruling = rule(case.evidence, case.outputs, case.checked, reference, referee_dtype="float32")
    assert ruling.accused.matches and ruling.checker.matches
    assert ruling.guilty(case.evidence, "cd" * 32) == [("cd" * 32, "false_accusation")]


@pytest.mark.parametrize("magnitude", [1e-2, 1e-1])
def test_a_corrupted_step_is_convicted(span: BlockSpan, magnitude: float) -> None:
    case = make_case(span, corrupt=magnitude)
    check_evidence(case.evidence, case.history, case.outputs, case.checked)
    reference = reference_row(case.evidence, recompute(span)(case.history, 1, 4, "none", ()))
    ruling = rule(case.evidence, case.outputs, case.checked, reference, referee_dtype="float32")
    accused = case.accused.public_bytes.hex()
    assert ruling.guilty(case.evidence, "cd" * 32) == [(accused, "wrong_output")]


def test_a_lying_checker_is_convicted_instead(span: BlockSpan) -> None:
    case = make_case(span, checker_corrupt=0.05)
    reference = reference_row(case.evidence, recompute(span)(case.history, 1, 4, "none", ()))
    ruling = rule(case.evidence, case.outputs, case.checked, reference, referee_dtype="float32")
    assert ruling.guilty(case.evidence, "cd" * 32) == [
        (case.checker.public_bytes.hex(), "wrong_output")
    ]


def test_evidence_that_does_not_hold_up_is_refused(span: BlockSpan) -> None:
    case = make_case(span, corrupt=1e-2)
    ev = case.evidence
    bad_history = case.history.clone()
    bad_history[0, 0, 0] += 1
    with pytest.raises(InvalidEvidence, match="chain"):
        check_evidence(ev, bad_history, case.outputs, case.checked)
    with pytest.raises(InvalidEvidence, match="row the accused signed"):
        check_evidence(ev, case.history, case.outputs + 1, case.checked)
    with pytest.raises(InvalidEvidence, match="checker returned"):
        check_evidence(ev, case.history, case.outputs, case.checked + 1)
    forged = dataclasses.replace(ev.accused, step=2)
    with pytest.raises(InvalidEvidence, match="signature"):
        check_evidence(
            dataclasses.replace(ev, accused=forged), case.history, case.outputs, case.checked
        )
    with pytest.raises(InvalidEvidence, match="steps"):
        check_evidence(
            dataclasses.replace(ev, steps=(5, 2, 1)), case.history, case.outputs, case.checked
        )
    with pytest.raises(InvalidEvidence, match="row"):
        check_evidence(dataclasses.replace(ev, row=99), case.history, case.outputs, case.checked)


def test_evidence_round_trips_through_json(span: BlockSpan) -> None:
    case = make_case(span)
    assert Evidence.from_json(case.evidence.to_json()) == case.evidence
    assert case.evidence.case == Evidence.from_json(case.evidence.to_json()).case
    for bad in (
        None,
        {},
        {**case.evidence.to_json(), "steps": [0]},
        {**case.evidence.to_json(), "row": -1},
    ):
        with pytest.raises(InvalidEvidence):
            Evidence.from_json(bad)


def test_tensors_pack_losslessly_and_garbage_is_refused() -> None:
    t = torch.randn(2, 3, 7)
    assert torch.equal(unpack_tensor(pack_tensor(t)), t)
    for bad in (
        None,
        {"dtype": "float32"},
        {**pack_tensor(t), "shape": [2, 3, 8]},
        {**pack_tensor(t), "data": "!!"},
    ):
        with pytest.raises(InvalidEvidence):
            unpack_tensor(bad)


def test_history_chunks_rebuild_the_history_and_detect_tampering() -> None:
    history = torch.randn(1, 300, 256)  # ~300 KB: several chunks
    header, pieces = history_chunks(history)
    assert len(pieces) > 1 and all(len(p) < 200_000 for p in pieces)
    assert torch.equal(history_from_chunks(header, pieces), history)
    with pytest.raises(InvalidEvidence, match="digest"):
        history_from_chunks(header, pieces[::-1])


def test_history_chunks_refuse_a_history_past_the_chunk_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("potluck.verify.referee.MAX_CHUNKS", 2)
    history = torch.randn(1, 300, 256)  # random floats barely compress: more than 2 chunks
    with pytest.raises(InvalidEvidence, match="too long"):
        history_chunks(history)


def test_a_ledger_packed_slash_reverifies_from_its_chunks_alone(span: BlockSpan) -> None:
    case = make_case(span, corrupt=1e-2)
    header, pieces = history_chunks(case.history)
    chunks = {f"{i:064x}": data for i, data in enumerate(pieces)}
    accuser = "cd" * 32
    body = {
        "account": case.accused.public_bytes.hex(),
        "reason": "wrong_output",
        "amount": 100,
        "evidence": slash_evidence(
            case.evidence,
            case.outputs,
            case.checked,
            accuser=accuser,
            history=header,
            chunks=list(chunks),
        ),
    }
    _, guilty = reverify(body, chunks.__getitem__, recompute(span))
    assert guilty == [(case.accused.public_bytes.hex(), "wrong_output")]
    tampered = {**body, "evidence": {**body["evidence"], "case": "00" * 32}}
    with pytest.raises(InvalidEvidence, match="case"):
        reverify(tampered, chunks.__getitem__, recompute(span))
