"""A swarm's genesis: its name, model, validators and economy.

The genesis file is canonical JSON (sorted keys, no whitespace)::

    {"created": 1795830000000, "economy": {...}, "model": {"identity": "<sha256>",
     "name": "smollm2"}, "name": "demo", "validators": ["<hex key>", ...],
     "version": 1}

`swarm_id` is the SHA-256 of exactly those bytes. Every ledger entry carries
it and so every signature is domain-separated by it: an entry signed for one
swarm is rejected by every other (`WrongSwarm`).

`init_swarm` writes ``genesis.json`` and one raw Ed25519 key per validator
(``validator-1.key``..., mode 0600) into a folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from potluck.errors import GenesisError
from potluck.p2p.identity import Identity, write_key

GENESIS_FILE = "genesis.json"
VERSION = 1
MAX_VALIDATORS = 64
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Economy:
    """Economy parameters, fixed for the swarm's life by its genesis."""

    grant_amount: int = field(default=1000, metadata={"help": "Points a validator grants."})
    mint_rate: int = field(
        default=100,
        metadata={"help": "Points minted per 1,000 token x blocks served (verified, weighted)."},
    )
    priority_price: int = field(
        default=1, metadata={"help": "Points per 1,000 token x blocks of high priority."}
    )
    private_price: int = field(
        default=1,
        metadata={"help": "Points per 1,000 token x blocks of a private route (trusted only)."},
    )
    spot_check_rate: float = field(
        default=0.05, metadata={"help": "Fraction of steps a client re-runs elsewhere."}
    )
    slash_fraction: float = field(
        default=0.5, metadata={"help": "Fraction of a cheater's balance that a slash removes."}
    )
    epoch_seconds: int = field(default=600, metadata={"help": "Length of a minting epoch."})
    checkpoint_seconds: int = field(
        default=30, metadata={"help": "Seconds between a validator's checkpoints."}
    )
    probe_seconds: int = field(
        default=30, metadata={"help": "Seconds between a validator's probes of each server."}
    )
    slash_minimum: int = field(
        default=100,
        metadata={"help": "Points a slash takes at least, as a debt if the account holds fewer."},
    )
    dispute_fee: int = field(
        default=10, metadata={"help": "Points a client pays for an accusation found false."}
    )
    scarcity_weight_max: float = field(
        default=2.0, metadata={"help": "Largest mint weight for serving a scarce block."}
    )
    ticket_seconds: int = field(
        default=600, metadata={"help": "Seconds a ticket stays valid after it is bought."}
    )

    def __post_init__(self) -> None:
        for name in (
            "grant_amount",
            "mint_rate",
            "priority_price",
            "private_price",
            "dispute_fee",
            "slash_minimum",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise GenesisError(f"economy.{name} must be a whole number >= 0")
        for name in ("spot_check_rate", "slash_fraction"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise GenesisError(f"economy.{name} must be between 0 and 1")
        weight = self.scarcity_weight_max
        if (
            not isinstance(weight, (int, float))
            or isinstance(weight, bool)
            or not 1 <= weight <= 100
        ):
            raise GenesisError("economy.scarcity_weight_max must be between 1 and 100")
        for name in ("epoch_seconds", "checkpoint_seconds", "probe_seconds", "ticket_seconds"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise GenesisError(f"economy.{name} must be a whole number of seconds >= 1")


@dataclass(frozen=True)
class Genesis:
    """The founding document of a swarm; `swarm_id` is its hash."""

    name: str
    model_name: str
    model_identity: str
    validators: tuple[str, ...]
    economy: Economy = Economy()
    created: int = 0
    version: int = VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= 64:
            raise GenesisError("the swarm name must be 1 to 64 characters")
        if not isinstance(self.model_name, str) or not self.model_name:
            raise GenesisError("the genesis must name a model")
        if not isinstance(self.model_identity, str) or not _HEX64.fullmatch(self.model_identity):
            raise GenesisError("model identity must be a sha256 hex digest")
        if not 1 <= len(self.validators) <= MAX_VALIDATORS:
            raise GenesisError(f"a swarm needs 1 to {MAX_VALIDATORS} validators")
        for key in self.validators:
            if not isinstance(key, str) or not _HEX64.fullmatch(key):
                raise GenesisError(f"validator {key!r} is not a hex Ed25519 public key")
        if len(set(self.validators)) != len(self.validators):
            raise GenesisError("a validator is listed twice")
        if self.version != VERSION:
            raise GenesisError(f"genesis version {self.version} is not supported")
        if not isinstance(self.created, int) or self.created < 0:
            raise GenesisError("genesis 'created' must be a time in milliseconds")

    def to_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "economy": dataclasses.asdict(self.economy),
            "model": {"identity": self.model_identity, "name": self.model_name},
            "name": self.name,
            "validators": list(self.validators),
            "version": self.version,
        }

    def to_bytes(self) -> bytes:
        """The canonical encoding that `swarm_id` hashes."""
        return json.dumps(
            self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True
        ).encode()

    @property
    def swarm_id(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @property
    def majority(self) -> int:
        """How many validators make a majority (more than half)."""
        return len(self.validators) // 2 + 1

    def is_validator(self, account: str) -> bool:
        return account in self.validators

    @classmethod
    def from_dict(cls, data: Any) -> Genesis:
        try:
            model = data["model"]
            economy = Economy(**data["economy"])
            return cls(
                name=data["name"],
                model_name=model["name"],
                model_identity=model["identity"],
                validators=tuple(data["validators"]),
                economy=economy,
                created=data["created"],
                version=data["version"],
            )
        except (KeyError, TypeError) as exc:
            raise GenesisError(f"not a genesis document: {exc}") from None

    @classmethod
    def load(cls, path: Path) -> Genesis:
        try:
            text = path.read_text()
        except OSError as exc:
            raise GenesisError(f"cannot read genesis file {path}: {exc.strerror}") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise GenesisError(f"{path} is not JSON: {exc}") from None
        return cls.from_dict(data)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(self.to_bytes() + b"\n")
        os.replace(tmp, path)


def load_key(path: Path) -> Identity:
    """Read a raw Ed25519 key file (such as a validator key) written by `write_key`."""
    try:
        mode = path.stat().st_mode & 0o777
        raw = path.read_bytes()
    except OSError as exc:
        raise GenesisError(f"cannot read key file {path}: {exc.strerror}") from None
    if mode & 0o077:
        raise GenesisError(f"{path} is readable by others (mode {mode:o}); chmod 600 it")
    if len(raw) != 32:
        raise GenesisError(f"{path} is not a raw 32-byte Ed25519 key")
    return Identity(raw)


def init_swarm(
    folder: Path,
    *,
    name: str,
    model_name: str,
    model_identity: str,
    validators: int,
    economy: Economy | None = None,
    created: int | None = None,
) -> tuple[Genesis, list[Path]]:
    """Create validator keys and a genesis in `folder`; refuses to overwrite a swarm."""
    if not 1 <= validators <= MAX_VALIDATORS:
        raise GenesisError(f"--validators must be between 1 and {MAX_VALIDATORS}")
    folder.mkdir(parents=True, exist_ok=True)
    genesis_path = folder / GENESIS_FILE
    key_paths = [folder / f"validator-{i}.key" for i in range(1, validators + 1)]
    for path in (genesis_path, *key_paths):
        if path.exists():
            raise GenesisError(f"{path} already exists; choose an empty folder")
    identities = [Identity.generate() for _ in key_paths]
    genesis = Genesis(
        name=name,
        model_name=model_name,
        model_identity=model_identity,
        validators=tuple(i.public_bytes.hex() for i in identities),
        economy=economy if economy is not None else Economy(),
        created=created if created is not None else int(time.time() * 1000),
    )
    for path, identity in zip(key_paths, identities, strict=True):
        write_key(path, identity)
    genesis.save(genesis_path)
    return genesis, key_paths
