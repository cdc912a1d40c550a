"""Signed server announcements.

A `ServerInfo` travels far from the server that made it: peers pass whole
views to each other. So each announcement is signed by the server's own
Ed25519 key, the one its libp2p peer ID is derived from, and every node
verifies it before believing it. Nobody can announce on another server's
behalf, alter a relayed announcement or extend its expiry.

The signature covers `DOMAIN` followed by the canonical encoding of the
announcement with an empty `signature` field.
"""

from __future__ import annotations

import dataclasses

from cryptography.exceptions import InvalidSignature as _BadSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from libp2p.crypto.ed25519 import Ed25519PublicKey as _P2PPublicKey
from libp2p.peer.id import ID

from potluck.errors import InvalidSignature
from potluck.p2p.identity import Identity
from potluck.wire import ServerInfo, encode_message

DOMAIN = b"potluck/announce/v1\x00"


def announcement_payload(info: ServerInfo) -> bytes:
    """The bytes a server signs for `info`."""
    return DOMAIN + encode_message(dataclasses.replace(info, signature=""))


def sign_announcement(info: ServerInfo, identity: Identity) -> ServerInfo:
    """`info` with its signature, which must be by the peer it describes."""
    if info.peer_id != identity.peer_id:
        raise InvalidSignature("a server can only sign its own announcement")
    return dataclasses.replace(info, signature=identity.sign(announcement_payload(info)).hex())


def public_key_of(peer_id: str) -> ed25519.Ed25519PublicKey:
    """The Ed25519 public key a peer ID embeds (`12D3KooW...` IDs inline their key)."""
    try:
        key = ID.from_base58(peer_id).extract_public_key()
        raw = key.to_bytes()
        return ed25519.Ed25519PublicKey.from_public_bytes(raw)
    except Exception as exc:  # base58, protobuf and key errors of many kinds
        raise InvalidSignature(f"{peer_id!r} does not embed an Ed25519 public key") from exc


def peer_id_of_account(account: str) -> str:
    """The peer ID of the node whose Ed25519 public key (a ledger account) is `account`."""
    return str(ID.from_pubkey(_P2PPublicKey.from_bytes(bytes.fromhex(account))).to_base58())


def account_of_peer(peer_id: str) -> str:
    """The ledger account (hex public key) of a peer ID; `InvalidSignature` if it has none."""
    raw = public_key_of(peer_id).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return raw.hex()


def verify_announcement(info: ServerInfo) -> None:
    """Raise `InvalidSignature` unless `info` is signed by the key of `info.peer_id`."""
    if not info.signature:
        raise InvalidSignature(f"announcement of {info.peer_id} is not signed")
    key = public_key_of(info.peer_id)
    try:
        key.verify(bytes.fromhex(info.signature), announcement_payload(info))
    except _BadSignature:
        raise InvalidSignature(f"announcement of {info.peer_id} has a bad signature") from None
