"""The exception tree: one root, the shape the docstring draws, codes that round-trip."""

from __future__ import annotations

import re

import pytest

from potluck import errors
from potluck.errors import (
    FrameError,
    FrameTooLarge,
    MessageError,
    PotluckError,
    RemoteError,
    RemoteProtocolError,
    RemoteSpanError,
    SessionLimitExceeded,
    TensorError,
    UnknownSession,
    WireError,
    remote_error,
)

CLASSES = {
    name: value
    for name, value in vars(errors).items()
    if isinstance(value, type) and issubclass(value, BaseException)
}


def drawn_tree() -> dict[str, str | None]:
    """Each class the module docstring draws, mapped to its drawn parent."""
    parents: dict[str, str | None] = {}
    stack: list[str] = []
    for line in (errors.__doc__ or "").splitlines():
        # "    │   └── SpanError   ..." : every 4 columns of drawing is one level
        match = re.match(r"^ {4}[│├└─ ]*([A-Z]\w+)(\s{2,}|$)", line)
        if match is None or match.group(1) not in CLASSES:
            continue
        depth = (match.start(1) - 4) // 4
        del stack[depth:]
        parents[match.group(1)] = stack[-1] if stack else None
        stack.append(match.group(1))
    return parents


def test_every_class_derives_from_potluck_error() -> None:
    assert set(CLASSES) > {"PotluckError", "ConfigError", "NoRouteError"}
    for cls in CLASSES.values():
        assert issubclass(cls, PotluckError), cls


def test_the_docstring_draws_every_class_with_its_real_parent() -> None:
    tree = drawn_tree()
    assert set(tree) == set(CLASSES)
    for name, parent in tree.items():
        cls = CLASSES[name]
        if parent is None:
            assert cls is PotluckError
        else:
            # the drawn parent is the first base; a second base (ForgedEntry is also
            # an InvalidSignature) is named on that base's line of the drawing
            assert cls.__bases__[0] is CLASSES[parent], name
            for extra in cls.__bases__[1:]:
                line = next(
                    text
                    for text in (errors.__doc__ or "").splitlines()
                    if re.search(rf"\b{extra.__name__}\b", text)
                )
                assert name in line, (name, extra)


REMOTE_CLASSES = [
    RemoteProtocolError,
    UnknownSession,
    SessionLimitExceeded,
    RemoteSpanError,
]


@pytest.mark.parametrize("cls", REMOTE_CLASSES)
def test_remote_error_maps_a_remote_class_code_back_to_the_class(cls: type[RemoteError]) -> None:
    exc = remote_error(cls.code, "no luck")
    assert type(exc) is cls
    assert exc.code == cls.code
    assert str(exc) == "no luck"


@pytest.mark.parametrize("cls", [WireError, FrameError, FrameTooLarge, MessageError, TensorError])
def test_a_local_wire_error_comes_back_as_remote_protocol_error(cls: type[WireError]) -> None:
    exc = remote_error(cls.code, "bad bytes")
    assert type(exc) is RemoteProtocolError
    assert exc.code == cls.code  # the precise code survives


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("bad_message", RemoteProtocolError),
        ("bad_frame", RemoteProtocolError),
        ("frame_too_large", RemoteProtocolError),
        ("bad_tensor", RemoteProtocolError),
        ("unknown_session", UnknownSession),
        ("session_limit", SessionLimitExceeded),
        ("bad_span", RemoteSpanError),
    ],
)
def test_remote_error_maps_each_code(code: str, cls: type[RemoteError]) -> None:
    exc = remote_error(code, "message")
    assert type(exc) is cls
    assert isinstance(exc, RemoteError)
    assert exc.code == code


@pytest.mark.parametrize("code", ["internal", "remote_error", "not_a_known_code"])
def test_an_unknown_code_is_a_plain_remote_error_keeping_the_code(code: str) -> None:
    exc = remote_error(code, "something broke")
    assert type(exc) is RemoteError
    assert exc.code == code
    assert str(exc) == "something broke"


def test_a_code_given_to_one_error_does_not_change_its_class() -> None:
    exc = UnknownSession("gone", code="something_else")
    assert exc.code == "something_else"
    assert UnknownSession.code == "unknown_session"
    assert UnknownSession("gone").code == "unknown_session"


def test_local_and_remote_errors_are_separate_branches() -> None:
    for cls in CLASSES.values():
        assert not (issubclass(cls, WireError) and issubclass(cls, RemoteError)), cls
