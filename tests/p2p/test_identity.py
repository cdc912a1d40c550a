"""A node's Ed25519 identity: a 0600 key file, a stable peer ID, signatures that verify."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from potluck.errors import ConfigError
from potluck.p2p.identity import KEY_FILE, Identity, load_or_create_identity

# RFC 8032, section 7.1, TEST 1
RFC_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)

IDENTITY = Identity.generate()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _base58(data: bytes) -> str:
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    number = int.from_bytes(data, "big")
    out = ""
    while number:
        number, digit = divmod(number, 58)
        out = alphabet[digit] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


# --- the key file -----------------------------------------------------------------


def test_first_use_creates_a_0600_raw_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "deep" / "data"
    identity = load_or_create_identity(data_dir)
    path = data_dir / KEY_FILE
    assert path.read_bytes() == identity.private_bytes
    assert len(identity.private_bytes) == 32
    assert _mode(path) == 0o600
    assert sorted(p.name for p in data_dir.iterdir()) == [KEY_FILE]  # no temp file left


def test_reloading_gives_the_same_identity(tmp_path: Path) -> None:
    first = load_or_create_identity(tmp_path)
    second = load_or_create_identity(tmp_path)
    assert second == first
    assert second.peer_id == first.peer_id


def test_fresh_data_dirs_get_different_identities(tmp_path: Path) -> None:
    a = load_or_create_identity(tmp_path / "a")
    b = load_or_create_identity(tmp_path / "b")
    assert a.peer_id != b.peer_id


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o606, 0o620, 0o602])
def test_a_key_file_others_can_access_is_refused(tmp_path: Path, mode: int) -> None:
    load_or_create_identity(tmp_path)
    path = tmp_path / KEY_FILE
    path.chmod(mode)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_identity(tmp_path)
    path.chmod(0o600)
    load_or_create_identity(tmp_path)


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_a_key_file_of_the_wrong_length_is_refused(tmp_path: Path, size: int) -> None:
    path = tmp_path / KEY_FILE
    path.write_bytes(b"\x01" * size)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="32-byte"):
        load_or_create_identity(tmp_path)
    assert path.read_bytes() == b"\x01" * size  # never overwritten


def test_an_existing_key_is_loaded_as_is(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE
    path.write_bytes(RFC_SECRET)
    path.chmod(0o600)
    assert load_or_create_identity(tmp_path).public_bytes == RFC_PUBLIC


def test_a_stale_temp_file_does_not_loosen_the_new_key(tmp_path: Path) -> None:
    stale = tmp_path / "identity.tmp"
    stale.write_bytes(b"")
    stale.chmod(0o644)
    load_or_create_identity(tmp_path)
    assert _mode(tmp_path / KEY_FILE) == 0o600


# --- the key ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 31, 33])
def test_an_identity_needs_32_bytes(size: int) -> None:
    with pytest.raises(ConfigError):
        Identity(b"\x00" * size)


def test_public_key_and_signature_match_rfc_8032() -> None:
    identity = Identity(RFC_SECRET)
    assert identity.public_bytes == RFC_PUBLIC
    assert identity.sign(b"") == RFC_SIGNATURE


@given(st.binary(max_size=512))
def test_signatures_verify_with_the_public_key(data: bytes) -> None:
    public = Ed25519PublicKey.from_public_bytes(IDENTITY.public_bytes)
    signature = IDENTITY.sign(data)
    assert len(signature) == 64
    public.verify(signature, data)
    with pytest.raises(InvalidSignature):
        public.verify(signature, data + b"\x00")
    tampered = bytes([signature[0] ^ 1]) + signature[1:]
    with pytest.raises(InvalidSignature):
        public.verify(tampered, data)


def test_a_signature_does_not_verify_under_another_key() -> None:
    other = Ed25519PublicKey.from_public_bytes(Identity.generate().public_bytes)
    with pytest.raises(InvalidSignature):
        other.verify(IDENTITY.sign(b"hello"), b"hello")


def test_peer_id_is_the_libp2p_identity_multihash_of_the_public_key() -> None:
    identity = Identity(RFC_SECRET)
    # protobuf PublicKey{Type: Ed25519 (1), Data: 32 bytes}, in an identity multihash
    protobuf = b"\x08\x01\x12\x20" + RFC_PUBLIC
    expected = _base58(b"\x00" + bytes([len(protobuf)]) + protobuf)
    assert identity.peer_id == expected
    assert identity.peer_id.startswith("12D3KooW")


def test_keypair_matches_the_identity() -> None:
    pair = IDENTITY.keypair()
    assert pair.public_key.to_bytes() == IDENTITY.public_bytes
    assert IDENTITY.peer_id.startswith("12D3KooW")
