"""One exception tree for all of Potluck.

    PotluckError
    ├── ConfigError                  a user mistake in flags, files or arguments
    │   └── GenesisError             a genesis file that is missing or malformed
    ├── ModelError                   a checkpoint that cannot be found or loaded
    │   └── SpanError                a block range outside the model or the server's span
    │       └── QuantMismatch        a request for blocks in a quantisation the server lacks
    ├── WireError                    bytes that do not decode to a valid message
    │   ├── FrameError               bad magic, version or length prefix
    │   │   └── FrameTooLarge        a frame over the configured maximum size
    │   ├── MessageError             a frame whose payload is not a valid message
    │   └── TensorError              a tensor with a bad dtype, shape or byte count
    │       └── CodecRangeError      hidden states too large for the session's float16/bfloat16
    ├── InvalidSignature             a signature that does not verify (ForgedEntry too)
    ├── NetworkError                 a peer that cannot be reached or went away
    │   └── PeerTimeout              a peer that did not answer in time
    ├── RemoteError                  an error reported by the peer (carries its code)
    │   ├── RemoteProtocolError      the peer rejected our message as malformed
    │   ├── UnknownSession           the peer has no such inference session
    │   ├── SessionLimitExceeded     the peer refused a session (cache budget, per-peer cap)
    │   ├── RemoteSpanError          the peer does not serve the requested blocks
    │   ├── RemoteCodecRange         the peer's output is too large for the session's codec
    │   └── TicketError              a ticket the server refuses (nothing is written)
    │       ├── TicketUsed           a ticket already redeemed (or being redeemed)
    │       ├── TicketExpired        a ticket past its expiry
    │       ├── TicketUnfunded       a ticket the ledger refuses or cannot place yet
    │       ├── TicketForged         a bad signature, or signed by another than the client
    │       ├── TicketWrongServer    a ticket that pays another server
    │       └── TicketMismatch       a ticket for another session, blocks or length, or underpaid
    ├── NoRouteError                 the swarm view does not cover every block
    │   └── NoTrustedRouteError      no route through trusted servers covers the model
    ├── SchedulerError               an illegal task transition in the compute scheduler
    ├── LedgerError                  the ledger refuses an entry or an operation
    │   ├── MalformedEntry           bytes that are not a canonical, well-formed entry
    │   ├── WrongSwarm               an entry of another swarm (replayed across swarms)
    │   ├── ForgedEntry              an entry whose signature is not its author's
    │   ├── ReplayedEntry            an entry this replica already holds
    │   ├── NotValidator             a validator-only kind by an account not in genesis
    │   ├── WrongPrevHash            prev_hash that is not the author's entry at seq - 1
    │   ├── WrongBalance             a balance-after that the entry's effect does not give
    │   ├── InsufficientBalance      a send or ticket that would overdraw its account
    │   ├── AlreadyReceived          a second receive of the same send on one chain
    │   ├── NotReceivable            a receive of an entry that is not a transfer to its author
    │   ├── MissingDependency        a predecessor or source this replica does not have (yet)
    │   │   ├── SeqGap               the author's entry at seq - 1 is missing
    │   │   └── UnknownSource        the send a receive refers to is missing
    │   ├── SeqTaken                 a submitted entry at a seq its account already used
    │   ├── AccountFrozen            an account that equivocated (its chain forked)
    │   └── InvalidFraudProof        two entries that do not prove an equivocation
    └── VerificationError            a server's work that does not check out
        ├── BadCommitment            a commitment whose signature or digests do not match
        └── InvalidEvidence          a dispute whose evidence does not hold up

Errors raised locally while decoding untrusted bytes are `WireError`s; the
server turns them into an `ErrorReply` with the matching code, and the client
turns that reply back into the `RemoteError` subclass for the code.
"""

from __future__ import annotations


class PotluckError(Exception):
    """Base of every error Potluck raises on purpose."""


class ConfigError(PotluckError):
    """A user mistake in flags, config files or arguments."""


class ModelError(PotluckError):
    """A checkpoint that cannot be found, converted or loaded."""


class SpanError(ModelError):
    """A block range that is empty or outside the model or the loaded span."""

    code = "bad_span"


class QuantMismatch(SpanError):
    """A request for blocks computed in a quantisation this server does not run."""

    code = "wrong_quant"


class WireError(PotluckError):
    """Bytes that do not decode to a valid frame, message or tensor."""

    code = "bad_message"


class FrameError(WireError):
    """A frame with a bad magic, version or length prefix."""

    code = "bad_frame"


class FrameTooLarge(FrameError):
    """A frame whose declared length is over the configured maximum."""

    code = "frame_too_large"


class MessageError(WireError):
    """A frame whose payload is not a valid message."""

    code = "bad_message"


class TensorError(WireError):
    """A tensor whose dtype, shape or byte count is wrong."""

    code = "bad_tensor"


class CodecRangeError(TensorError):
    """Finite hidden states beyond what the session's codec can carry (float16 or
    bfloat16 overflow): the codec's fault, not the sender's."""

    code = "codec_range"


class InvalidSignature(PotluckError):
    """A signature that does not verify against the key it claims."""

    code = "bad_signature"


class NetworkError(PotluckError):
    """A peer that cannot be reached, or whose stream broke."""


class PeerTimeout(NetworkError):
    """A peer that did not answer within the configured time."""


class RemoteError(PotluckError):
    """An error the remote peer reported back, identified by its code."""

    code = "remote_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class RemoteProtocolError(RemoteError):
    """The peer rejected our message as malformed (frame, message or tensor)."""

    code = "bad_message"


class UnknownSession(RemoteError):
    """The peer has no inference session with that id."""

    code = "unknown_session"


class SessionLimitExceeded(RemoteError):
    """The peer refused to open a session: cache budget or per-peer limit."""

    code = "session_limit"


class RemoteSpanError(RemoteError):
    """The peer does not serve the requested blocks."""

    code = "bad_span"


class RemoteCodecRange(RemoteError):
    """The peer computed an output too large for the session's codec: any honest
    server would, so the client does not replace it (choose another codec)."""

    code = "codec_range"


class TicketError(RemoteError):
    """A ticket (a `ticket` entry buying priority or a private route) the server refuses.

    Raised by the server's checks (`potluck.ledger.tickets`, `NodeLedger.redeem_ticket`)
    and sent back in an `ErrorReply`; nothing is written for a refused ticket."""

    code = "bad_ticket"


class TicketUsed(TicketError):
    """A ticket that was already redeemed, or is being redeemed right now."""

    code = "ticket_used"


class TicketExpired(TicketError):
    """A ticket whose `expires` time has passed."""

    code = "ticket_expired"


class TicketUnfunded(TicketError):
    """A ticket the ledger refuses (overdraft, a taken seq) or cannot place yet."""

    code = "ticket_unfunded"


class TicketForged(TicketError):
    """A ticket whose signature does not verify, or that another account signed."""

    code = "ticket_forged"


class TicketWrongServer(TicketError):
    """A ticket that pays another server."""

    code = "ticket_wrong_server"


class TicketMismatch(TicketError):
    """A ticket that is malformed, for another session, blocks or length, or underpaid."""

    code = "ticket_mismatch"


class NoRouteError(PotluckError):
    """The known servers do not cover every block of the model."""


class NoTrustedRouteError(NoRouteError):
    """No route through trusted servers covers the model (a private route was asked for)."""

    def __init__(self, message: str = "no trusted route covers the model") -> None:
        super().__init__(message)


class LedgerError(PotluckError):
    """The ledger refuses an entry or an operation; `code` names the rule."""

    code = "ledger_error"


class MalformedEntry(LedgerError):
    """Bytes that are not a canonical, well-formed ledger entry."""

    code = "malformed_entry"


class WrongSwarm(LedgerError):
    """An entry whose swarm_id is not this swarm's (a replay across swarms)."""

    code = "wrong_swarm"


class ForgedEntry(LedgerError, InvalidSignature):
    """An entry whose signature does not verify against its author's key."""

    code = "bad_signature"


class ReplayedEntry(LedgerError):
    """An entry this replica already holds, delivered again."""

    code = "replayed"


class NotValidator(LedgerError):
    """A validator-only kind (grant, mint, attest, audit, slash, checkpoint) by another account."""

    code = "not_validator"


class WrongPrevHash(LedgerError):
    """A prev_hash that is not the hash of the author's entry at seq - 1."""

    code = "wrong_prev_hash"


class WrongBalance(LedgerError):
    """A balance-after that does not follow from the previous balance and the entry."""

    code = "wrong_balance"


class InsufficientBalance(LedgerError):
    """A send or ticket for more points than its account holds."""

    code = "overdraft"


class AlreadyReceived(LedgerError):
    """A receive of a transfer that the same account chain already received."""

    code = "already_received"


class NotReceivable(LedgerError):
    """A receive whose source is not a grant, mint, send or ticket to its author."""

    code = "not_receivable"


class MissingDependency(LedgerError):
    """An entry that needs another entry this replica does not hold yet."""

    code = "missing_dependency"


class SeqGap(MissingDependency):
    """The author's previous entry (prev_hash at seq - 1) is missing."""

    code = "seq_gap"


class UnknownSource(MissingDependency):
    """The transfer that a receive refers to is missing."""

    code = "unknown_source"


class SeqTaken(LedgerError):
    """A submitted entry at a seq that its account already used: it would fork the chain."""

    code = "seq_taken"


class AccountFrozen(LedgerError):
    """An account whose chain forked: it equivocated and may not spend."""

    code = "account_frozen"


class InvalidFraudProof(LedgerError):
    """Two entries that do not prove that their author equivocated."""

    code = "invalid_fraud_proof"


class GenesisError(ConfigError):
    """A genesis file that is missing, malformed or for another swarm."""


class VerificationError(PotluckError):
    """A server's work that does not check out."""

    code = "verification_failed"


class BadCommitment(VerificationError):
    """A commitment whose signature, input digest or output digest does not match."""

    code = "bad_commitment"


class InvalidEvidence(VerificationError):
    """A dispute whose evidence does not hold up (bad signatures, digests or shapes)."""

    code = "invalid_evidence"


class SchedulerError(PotluckError):
    """An illegal scheduler transition (a task submitted twice, finished twice or unknown)."""


_REMOTE_BY_CODE: dict[str, type[RemoteError]] = {
    "bad_message": RemoteProtocolError,
    "bad_frame": RemoteProtocolError,
    "frame_too_large": RemoteProtocolError,
    "bad_tensor": RemoteProtocolError,
    "unknown_session": UnknownSession,
    "session_limit": SessionLimitExceeded,
    "bad_span": RemoteSpanError,
    "wrong_quant": RemoteSpanError,
    "codec_range": RemoteCodecRange,
    **{
        cls.code: cls
        for cls in (
            TicketError,
            TicketUsed,
            TicketExpired,
            TicketUnfunded,
            TicketForged,
            TicketWrongServer,
            TicketMismatch,
        )
    },
}


def remote_error(code: str, message: str) -> RemoteError:
    """The `RemoteError` subclass for an error code received from a peer."""
    cls = _REMOTE_BY_CODE.get(code, RemoteError)
    return cls(message, code=code)


_LEDGER_BY_CODE: dict[str, type[LedgerError]] = {
    cls.code: cls
    for cls in (
        MalformedEntry,
        WrongSwarm,
        ForgedEntry,
        ReplayedEntry,
        NotValidator,
        WrongPrevHash,
        WrongBalance,
        InsufficientBalance,
        AlreadyReceived,
        NotReceivable,
        SeqGap,
        UnknownSource,
        SeqTaken,
        AccountFrozen,
        InvalidFraudProof,
    )
}


def ledger_error(code: str, message: str) -> LedgerError:
    """The `LedgerError` subclass for a rejection code a replica sent back."""
    cls = _LEDGER_BY_CODE.get(code, LedgerError)
    return cls(message)
