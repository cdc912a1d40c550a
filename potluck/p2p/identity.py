"""A node's Ed25519 identity, persisted in its data directory.

One raw 32-byte Ed25519 private key is both the libp2p identity (the peer ID
derives from its public key) and, later, the ledger account. The key file is
created with mode 0600 and refused if anyone but the owner can read it.
"""

from __future__ import annotations

import functools
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from libp2p.crypto.ed25519 import Ed25519PrivateKey as _P2PPrivateKey
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID

from potluck.errors import ConfigError

KEY_FILE = "identity.key"
_RAW_LEN = 32


@dataclass(frozen=True)
class Identity:
    """A raw Ed25519 private key and what derives from it."""

    private_bytes: bytes

    def __post_init__(self) -> None:
        if len(self.private_bytes) != _RAW_LEN:
            raise ConfigError(f"an Ed25519 private key has {_RAW_LEN} bytes")

    @classmethod
    def generate(cls) -> Identity:
        key = ed25519.Ed25519PrivateKey.generate()
        raw = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return cls(raw)

    @functools.cached_property
    def _key(self) -> ed25519.Ed25519PrivateKey:
        return ed25519.Ed25519PrivateKey.from_private_bytes(self.private_bytes)

    @functools.cached_property
    def public_bytes(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def keypair(self) -> KeyPair:
        """The libp2p key pair for this identity."""
        private = _P2PPrivateKey.new(self.private_bytes)
        return KeyPair(private, private.get_public_key())

    @property
    def peer_id(self) -> str:
        """The base58 libp2p peer ID (`12D3KooW...`)."""
        return str(ID.from_pubkey(self.keypair().public_key).to_base58())

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


def load_or_create_identity(data_dir: Path) -> Identity:
    """Load `data_dir/identity.key`, creating it (mode 0600) on first use."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / KEY_FILE
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{path} is readable by others (mode {mode:o}); run `chmod 600 {path}`"
            )
        raw = path.read_bytes()
        if len(raw) != _RAW_LEN:
            raise ConfigError(f"{path} is not a raw {_RAW_LEN}-byte Ed25519 key")
        return Identity(raw)
    identity = Identity.generate()
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)  # never reuse a leftover file's mode, nor follow a link
    write_key(tmp, identity)
    os.replace(tmp, path)
    return identity


def write_key(path: Path, identity: Identity) -> None:
    """Write a raw Ed25519 key with mode 0600, refusing to overwrite a file or follow a link."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, identity.private_bytes)
        os.fsync(fd)
    finally:
        os.close(fd)
