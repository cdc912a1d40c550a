"""One exception tree for all of Potluck.

    PotluckError
    ├── ConfigError                  a user mistake in flags, files or arguments
    ├── ModelError                   a checkpoint that cannot be found or loaded
    │   └── SpanError                a block range outside the model or the server's span
    ├── WireError                    bytes that do not decode to a valid message
    │   ├── FrameError               bad magic, version or length prefix
    │   │   └── FrameTooLarge        a frame over the configured maximum size
    │   ├── MessageError             a frame whose payload is not a valid message
    │   └── TensorError              a tensor with a bad dtype, shape or byte count
    ├── InvalidSignature             a signature that does not verify
    ├── NetworkError                 a peer that cannot be reached or went away
    │   └── PeerTimeout              a peer that did not answer in time
    ├── RemoteError                  an error reported by the peer (carries its code)
    │   ├── RemoteProtocolError      the peer rejected our message as malformed
    │   ├── UnknownSession           the peer has no such inference session
    │   ├── SessionLimitExceeded     the peer refused a session (cache budget, per-peer cap)
    │   └── RemoteSpanError          the peer does not serve the requested blocks
    └── NoRouteError                 the swarm view does not cover every block

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


class NoRouteError(PotluckError):
    """The known servers do not cover every block of the model."""


_REMOTE_BY_CODE: dict[str, type[RemoteError]] = {
    "bad_message": RemoteProtocolError,
    "bad_frame": RemoteProtocolError,
    "frame_too_large": RemoteProtocolError,
    "bad_tensor": RemoteProtocolError,
    "unknown_session": UnknownSession,
    "session_limit": SessionLimitExceeded,
    "bad_span": RemoteSpanError,
}


def remote_error(code: str, message: str) -> RemoteError:
    """The `RemoteError` subclass for an error code received from a peer."""
    cls = _REMOTE_BY_CODE.get(code, RemoteError)
    return cls(message, code=code)
