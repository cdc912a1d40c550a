"""Signed commitments: signatures bind every field, encodings round-trip, digests bind tensors."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from potluck.errors import BadCommitment
from potluck.p2p.identity import Identity
from potluck.verify.commitment import (
    ZERO_CHAIN,
    Commitment,
    chain_inputs,
    output_root,
    row_digests,
    tensor_digest,
)
from potluck.wire import QUANT_MODES

SERVER = Identity.generate()
OTHER = Identity.generate()
FIELDS = [f.name for f in dataclasses.fields(Commitment)]

hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
whole = st.integers(0, 2**40)
dtypes = st.sampled_from(["float32", "bfloat16"])


@st.composite
def commitments(draw: st.DrawFn, server: Identity = SERVER) -> Commitment:
    start = draw(st.integers(0, 1000))
    return Commitment(
        swarm=draw(hex64),
        session=draw(st.text(max_size=64)),
        step=draw(whole),
        start=start,
        end=draw(st.integers(start + 1, start + 1000)),
        inputs=draw(hex64),
        outputs=draw(hex64),
        dtype=draw(dtypes),
        server=server.public_bytes.hex(),
    )


def plain(**fields: Any) -> Commitment:
    """An unsigned commitment by SERVER, with `fields` changed."""
    base: dict[str, Any] = {
        "swarm": "ab" * 32,
        "session": "5e55",
        "step": 1,
        "start": 0,
        "end": 10,
        "inputs": ZERO_CHAIN,
        "outputs": "cd" * 32,
        "dtype": "float32",
        "server": SERVER.public_bytes.hex(),
    }
    return Commitment(**{**base, **fields})


def changed(commitment: Commitment, name: str, data: st.DataObject) -> Commitment:
    """`commitment` with field `name` set to another valid value, signature kept."""
    old = getattr(commitment, name)
    if name == "server":
        return dataclasses.replace(commitment, server=OTHER.public_bytes.hex())
    if name == "session":
        new: Any = data.draw(st.text(max_size=64).filter(lambda s: s != old))
    elif name == "dtype":
        new = data.draw(dtypes.filter(lambda d: d != old))
    elif name == "start":
        new = data.draw(st.integers(0, commitment.end - 1).filter(lambda v: v != old))
    elif name == "end":
        new = data.draw(st.integers(commitment.start + 1, 2**40).filter(lambda v: v != old))
    elif name == "step":
        new = data.draw(whole.filter(lambda v: v != old))
    elif name == "quant":
        new = data.draw(st.sampled_from(QUANT_MODES).filter(lambda q: q != old))
    elif name == "codec":
        new = data.draw(
            st.sampled_from(
                ["float32", "float16", "bfloat16", "int8-block/64", "int8-block/16"]
            ).filter(lambda c: c != old)
        )
    else:
        new = data.draw(hex64.filter(lambda h: h != old))
    return dataclasses.replace(commitment, **{name: new})


def test_a_signed_commitment_verifies() -> None:
    commitment = plain(step=3)
    signed = commitment.signed(SERVER)
    assert len(signed.signature) == 128
    assert dataclasses.replace(signed, signature="") == commitment
    signed.verify()


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(commitment=commitments())
def test_the_sign_verify_round_trip_holds_for_any_commitment(commitment: Commitment) -> None:
    commitment.signed(SERVER).verify()


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    commitment=commitments(),
    name=st.sampled_from([n for n in FIELDS if n != "signature"]),
    data=st.data(),
)
def test_changing_any_field_breaks_the_signature(
    commitment: Commitment, name: str, data: st.DataObject
) -> None:
    signed = commitment.signed(SERVER)
    forged = changed(signed, name, data)
    assert forged.payload() != signed.payload()
    with pytest.raises(BadCommitment):
        forged.verify()


@settings(max_examples=100)
@given(
    commitment=commitments(), index=st.integers(0, 127), digit=st.sampled_from("0123456789abcdef")
)
def test_changing_any_digit_of_the_signature_breaks_it(
    commitment: Commitment, index: int, digit: str
) -> None:
    signed = commitment.signed(SERVER)
    signature = signed.signature[:index] + digit + signed.signature[index + 1 :]
    forged = dataclasses.replace(signed, signature=signature)
    if signature == signed.signature:
        forged.verify()
    else:
        with pytest.raises(BadCommitment):
            forged.verify()


def test_a_commitment_signed_by_another_key_fails() -> None:
    """A signature by OTHER over a commitment naming SERVER does not verify."""
    commitment = plain(session="", step=0, start=2, end=4, dtype="bfloat16")
    stolen = OTHER.sign(commitment.payload()).hex()
    with pytest.raises(BadCommitment, match="bad signature"):
        dataclasses.replace(commitment, signature=stolen).verify()


def test_signed_refuses_a_foreign_identity() -> None:
    commitment = plain()
    with pytest.raises(BadCommitment, match="its own"):
        commitment.signed(OTHER)


def test_an_unsigned_commitment_does_not_verify() -> None:
    commitment = plain()
    with pytest.raises(BadCommitment, match="not signed"):
        commitment.verify()


@settings(max_examples=100)
@given(commitment=commitments(), sign=st.booleans())
def test_json_round_trip(commitment: Commitment, sign: bool) -> None:
    if sign:
        commitment = commitment.signed(SERVER)
    data = commitment.to_json()
    assert set(data) == set(FIELDS)
    again = Commitment.from_json(data)
    assert again == commitment
    if sign:
        again.verify()


def _valid_json() -> dict[str, Any]:
    return plain().signed(SERVER).to_json()


MALFORMED: list[tuple[str, Any]] = [
    ("not an object", ["a", "list"]),
    ("none", None),
    ("a missing field", {k: v for k, v in _valid_json().items() if k != "dtype"}),
    ("an extra field", {**_valid_json(), "extra": 1}),
    ("short swarm", {**_valid_json(), "swarm": "ab"}),
    ("upper-case hex", {**_valid_json(), "inputs": "AB" * 32}),
    ("non-hex outputs", {**_valid_json(), "outputs": "zz" * 32}),
    ("numeric server", {**_valid_json(), "server": 12}),
    ("long session", {**_valid_json(), "session": "x" * 65}),
    ("session not a string", {**_valid_json(), "session": 5}),
    ("negative step", {**_valid_json(), "step": -1}),
    ("string step", {**_valid_json(), "step": "1"}),
    ("boolean start", {**_valid_json(), "start": True}),
    ("float end", {**_valid_json(), "end": 3.0}),
    ("empty span", {**_valid_json(), "start": 3, "end": 3}),
    ("reversed span", {**_valid_json(), "start": 4, "end": 3}),
    ("unknown dtype", {**_valid_json(), "dtype": "int8"}),
    ("short signature", {**_valid_json(), "signature": "ab" * 10}),
    ("non-hex signature", {**_valid_json(), "signature": "g" * 128}),
]


@pytest.mark.parametrize(("case", "data"), MALFORMED, ids=[c for c, _ in MALFORMED])
def test_malformed_json_raises_bad_commitment(case: str, data: Any) -> None:
    with pytest.raises(BadCommitment):
        Commitment.from_json(data)


# -- digests -------------------------------------------------------------------------


def test_chain_inputs_binds_the_history_and_its_order() -> None:
    torch.manual_seed(0)
    a, b, c = (torch.randn(1, n, 8) for n in (4, 1, 1))

    def chain(*steps: torch.Tensor) -> str:
        digest = ZERO_CHAIN
        for x in steps:
            digest = chain_inputs(digest, x)
        return digest

    assert chain(a, b, c) == chain(a, b, c)
    histories = {
        "abc": chain(a, b, c),
        "acb": chain(a, c, b),
        "ab": chain(a, b),
        "a": chain(a),
        "ab+c as one": chain(a, torch.cat([b, c], dim=1)),
        "abc as one": chain(torch.cat([a, b, c], dim=1)),
        "abc, b changed": chain(a, b + 1e-7 * b.sign(), c),
    }
    assert len(set(histories.values())) == len(histories), histories
    assert ZERO_CHAIN not in histories.values()


@settings(max_examples=50)
@given(
    batch=st.integers(1, 3),
    seq=st.integers(1, 5),
    data=st.data(),
)
def test_one_changed_value_changes_exactly_one_row_digest(
    batch: int, seq: int, data: st.DataObject
) -> None:
    hidden = torch.randn(batch, seq, 16, generator=torch.Generator().manual_seed(batch * seq))
    b = data.draw(st.integers(0, batch - 1))
    s = data.draw(st.integers(0, seq - 1))
    h = data.draw(st.integers(0, 15))
    changed = hidden.clone()
    changed[b, s, h] = torch.nextafter(changed[b, s, h], torch.tensor(float("inf")))
    before, after = row_digests(hidden), row_digests(changed)
    assert len(before) == len(after) == batch * seq
    differ = [i for i, (x, y) in enumerate(zip(before, after, strict=True)) if x != y]
    assert differ == [b * seq + s]
    assert output_root(before) != output_root(after)


def test_row_digests_are_the_digests_of_the_rows() -> None:
    hidden = torch.randn(2, 3, 8)
    rows = row_digests(hidden)
    assert rows[4] == tensor_digest(hidden[1, 1])
    assert row_digests(hidden[1:2, 1:2]) == [rows[4]]
    # a non-contiguous view hashes like its contiguous copy
    assert row_digests(hidden.transpose(0, 1).transpose(0, 1)) == rows
    assert row_digests(hidden[:, ::2]) == row_digests(hidden[:, ::2].contiguous())


def test_output_root_depends_on_row_order() -> None:
    rows = row_digests(torch.randn(1, 3, 8))
    assert output_root(rows) != output_root(rows[::-1])
    assert output_root(rows) != output_root(rows[:2])


def test_tensor_digest_distinguishes_dtype_and_shape_with_identical_bytes() -> None:
    x = torch.arange(12, dtype=torch.float32)
    raw = x.view(torch.uint8)
    same_bytes = [
        x,
        x.reshape(3, 4),
        x.reshape(4, 3),
        x.reshape(1, 12),
        x.view(torch.int32),
        x.view(torch.bfloat16),  # (24,)
        x.view(torch.float16).reshape(2, 12),
        raw,
    ]
    for t in same_bytes:
        assert bytes(t.contiguous().view(torch.uint8).numpy()) == bytes(raw.numpy())
    digests = [tensor_digest(t) for t in same_bytes]
    assert len(set(digests)) == len(digests)


def test_tensor_digest_is_the_bytes() -> None:
    x = torch.randn(2, 5)
    assert tensor_digest(x) == tensor_digest(x.clone())
    assert tensor_digest(x) == tensor_digest(x.t().contiguous().t())
    y = x.clone()
    y[1, 4] = -y[1, 4]
    assert tensor_digest(x) != tensor_digest(y)
    # -0.0 == 0.0 as numbers, but not as bytes
    assert tensor_digest(torch.zeros(3)) != tensor_digest(-torch.zeros(3))


@pytest.mark.parametrize("signature", [None, 0, False, []])
def test_a_signature_that_is_not_a_string_is_refused(signature: object) -> None:
    data = {**plain().to_json(), "signature": signature}
    with pytest.raises(BadCommitment):
        Commitment.from_json(data)


def test_float16_is_not_a_compute_dtype() -> None:
    with pytest.raises(BadCommitment, match="dtype"):
        plain(dtype="float16")
