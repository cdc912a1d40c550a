"""Genesis: the swarm id is the hash of canonical bytes; keys and files are guarded."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from potluck.errors import ConfigError, GenesisError
from potluck.ledger.genesis import (
    GENESIS_FILE,
    MAX_VALIDATORS,
    Economy,
    Genesis,
    init_swarm,
    load_key,
    write_key,
)
from potluck.testing.ledger import seeded_identity

KEYS = tuple(seeded_identity("genesis", f"v{i}").account for i in range(3))
MODEL = hashlib.sha256(b"model").hexdigest()


def genesis(**changes: Any) -> Genesis:
    fields: dict[str, Any] = {
        "name": "demo",
        "model_name": "smollm2",
        "model_identity": MODEL,
        "validators": KEYS,
        "created": 1_795_830_000_000,
    }
    fields.update(changes)
    return Genesis(**fields)


def test_swarm_id_is_the_sha256_of_the_canonical_bytes() -> None:
    g = genesis()
    canonical = json.dumps(g.to_dict(), sort_keys=True, separators=(",", ":")).encode()
    assert g.to_bytes() == canonical
    assert g.swarm_id == hashlib.sha256(canonical).hexdigest()
    assert g.to_dict()["validators"] == list(KEYS)
    assert g.majority == 2
    assert g.is_validator(KEYS[1]) and not g.is_validator(MODEL)


def test_swarm_id_is_stable_across_save_and_load(tmp_path: Path) -> None:
    g = genesis()
    path = tmp_path / GENESIS_FILE
    g.save(path)
    assert path.read_bytes() == g.to_bytes() + b"\n"
    loaded = Genesis.load(path)
    assert loaded == g and loaded.swarm_id == g.swarm_id
    loaded.save(path)
    assert Genesis.load(path).swarm_id == g.swarm_id
    # a reformatted file is the same document, so the same swarm
    path.write_text(json.dumps(g.to_dict(), indent=4))
    assert Genesis.load(path).swarm_id == g.swarm_id
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    "changes",
    [
        {"name": "demo2"},
        {"model_name": "llama"},
        {"model_identity": hashlib.sha256(b"other").hexdigest()},
        {"validators": KEYS[:2]},
        {"validators": (KEYS[1], KEYS[0], KEYS[2])},
        {"validators": (*KEYS, MODEL)},
        {"created": 1_795_830_000_001},
        {"economy": Economy(grant_amount=999)},
        {"economy": Economy(mint_rate=101)},
        {"economy": Economy(priority_price=2)},
        {"economy": Economy(spot_check_rate=0.06)},
        {"economy": Economy(slash_fraction=0.25)},
        {"economy": Economy(epoch_seconds=601)},
        {"economy": Economy(checkpoint_seconds=31)},
    ],
    ids=lambda c: next(iter(c)) + "=" + repr(next(iter(c.values())))[:20],
)
def test_swarm_id_changes_with_any_field(changes: dict[str, Any]) -> None:
    assert genesis(**changes).swarm_id != genesis().swarm_id


def test_every_economy_field_is_hashed() -> None:
    base = genesis()
    for f in dataclasses.fields(Economy):
        value = getattr(base.economy, f.name)
        other = value + 1 if isinstance(value, int) else value / 2
        changed = genesis(economy=dataclasses.replace(base.economy, **{f.name: other}))
        assert changed.swarm_id != base.swarm_id, f.name


def test_init_swarm_writes_genesis_and_private_keys(tmp_path: Path) -> None:
    folder = tmp_path / "swarm"
    g, key_paths = init_swarm(
        folder, name="demo", model_name="smollm2", model_identity=MODEL, validators=3, created=5
    )
    assert [p.name for p in key_paths] == [f"validator-{i}.key" for i in (1, 2, 3)]
    assert Genesis.load(folder / GENESIS_FILE) == g
    assert g.created == 5 and len(g.validators) == 3
    for path, validator in zip(key_paths, g.validators, strict=True):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(path.read_bytes()) == 32
        assert load_key(path).public_bytes.hex() == validator
    assert len(set(g.validators)) == 3


def test_init_swarm_refuses_to_overwrite(tmp_path: Path) -> None:
    init_swarm(tmp_path, name="demo", model_name="smollm2", model_identity=MODEL, validators=2)
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(GenesisError, match="already exists"):
        init_swarm(tmp_path, name="demo", model_name="smollm2", model_identity=MODEL, validators=2)
    # a leftover key alone is enough to refuse, and nothing is written
    (tmp_path / GENESIS_FILE).unlink()
    with pytest.raises(GenesisError, match="already exists"):
        init_swarm(tmp_path, name="x", model_name="smollm2", model_identity=MODEL, validators=1)
    assert not (tmp_path / GENESIS_FILE).exists()
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == {
        p: v for p, v in before.items() if p.name != GENESIS_FILE
    }


@pytest.mark.parametrize("count", [0, -1, MAX_VALIDATORS + 1])
def test_init_swarm_refuses_a_bad_validator_count(tmp_path: Path, count: int) -> None:
    with pytest.raises(GenesisError):
        init_swarm(
            tmp_path, name="demo", model_name="smollm2", model_identity=MODEL, validators=count
        )
    assert not list(tmp_path.iterdir())


def test_write_key_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "v.key"
    write_key(path, seeded_identity("genesis", "a"))
    with pytest.raises(FileExistsError):
        write_key(path, seeded_identity("genesis", "b"))
    assert load_key(path) == seeded_identity("genesis", "a")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o700 | 0o044])
def test_load_key_refuses_a_file_others_can_read(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "v.key"
    write_key(path, seeded_identity("genesis", "a"))
    os.chmod(path, mode)
    with pytest.raises(GenesisError, match="chmod 600"):
        load_key(path)


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_load_key_refuses_a_file_of_the_wrong_size(tmp_path: Path, size: int) -> None:
    path = tmp_path / "v.key"
    path.write_bytes(b"k" * size)
    path.chmod(0o600)
    with pytest.raises(GenesisError, match="32-byte"):
        load_key(path)


def test_load_key_of_a_missing_file_is_a_genesis_error(tmp_path: Path) -> None:
    with pytest.raises(GenesisError, match="cannot read"):
        load_key(tmp_path / "missing.key")


def document(**changes: Any) -> dict[str, Any]:
    data = genesis().to_dict()
    for name, value in changes.items():
        if value is _DROP:
            del data[name]
        else:
            data[name] = value
    return data


_DROP = object()
GOOD = genesis().to_dict()

MALFORMED_DOCUMENTS: dict[str, Any] = {
    "array": [GOOD],
    "string": "genesis",
    "null": None,
    "empty object": {},
    **{f"missing {name}": document(**{name: _DROP}) for name in GOOD},
    "model not an object": document(model="smollm2"),
    "model without identity": document(model={"name": "smollm2"}),
    "model identity not hex": document(model={"name": "x", "identity": "MODEL"}),
    "model identity uppercase": document(model={"name": "x", "identity": MODEL.upper()}),
    "model name empty": document(model={"name": "", "identity": MODEL}),
    "name empty": document(name=""),
    "name too long": document(name="x" * 65),
    "name not a string": document(name=5),
    "no validators": document(validators=[]),
    "validators not a list": document(validators=5),
    "validator not hex": document(validators=["v1"]),
    "validator uppercase": document(validators=[KEYS[0].upper()]),
    "validator not a string": document(validators=[5]),
    "validator listed twice": document(validators=[KEYS[0], KEYS[0]]),
    "too many validators": document(validators=[f"{i:064x}" for i in range(MAX_VALIDATORS + 1)]),
    "version 2": document(version=2),
    "created negative": document(created=-1),
    "created float": document(created=1.5),
    "economy not an object": document(economy=[1, 2]),
    "economy unknown field": document(economy={**GOOD["economy"], "bonus": 1}),
    "economy negative grant": document(economy={**GOOD["economy"], "grant_amount": -1}),
    "economy float grant": document(economy={**GOOD["economy"], "grant_amount": 1.5}),
    "economy bool rate": document(economy={**GOOD["economy"], "mint_rate": True}),
    "economy spot check over 1": document(economy={**GOOD["economy"], "spot_check_rate": 2}),
    "economy slash string": document(economy={**GOOD["economy"], "slash_fraction": "0.5"}),
    "economy zero epoch": document(economy={**GOOD["economy"], "epoch_seconds": 0}),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_DOCUMENTS))
def test_malformed_genesis_fields_raise_genesis_error(case: str, tmp_path: Path) -> None:
    with pytest.raises(GenesisError) as info:
        Genesis.from_dict(MALFORMED_DOCUMENTS[case])
    assert isinstance(info.value, ConfigError)
    path = tmp_path / GENESIS_FILE
    path.write_text(json.dumps(MALFORMED_DOCUMENTS[case]))
    with pytest.raises(GenesisError):
        Genesis.load(path)


@pytest.mark.parametrize("text", ["", "{", "not json", '{"name": }', "\x00"])
def test_a_genesis_file_that_is_not_json_raises_genesis_error(text: str, tmp_path: Path) -> None:
    path = tmp_path / GENESIS_FILE
    path.write_text(text)
    with pytest.raises(GenesisError, match="not JSON"):
        Genesis.load(path)


def test_a_missing_genesis_file_raises_genesis_error(tmp_path: Path) -> None:
    with pytest.raises(GenesisError, match="cannot read"):
        Genesis.load(tmp_path / GENESIS_FILE)
