"""Ledger fixtures: the engine over each backend, and a small seeded workload."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from potluck.ledger.core import Backend, MemoryBackend
from potluck.testing.ledger import LedgerWorkload

BACKENDS = ("memory", "sqlite")

MakeBackend = Callable[[], Backend]


def open_backend(kind: str, path: Path) -> Backend:
    """A fresh backend of `kind`; SQLite skips the test while its module is missing."""
    if kind == "memory":
        return MemoryBackend()
    store = pytest.importorskip("potluck.ledger.store")
    backend: Backend = store.SqliteBackend(path)
    return backend


def close_backend(backend: Backend) -> None:
    close = getattr(backend, "close", None)
    if callable(close):
        close()


@pytest.fixture(params=BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    if kind == "sqlite":
        pytest.importorskip("potluck.ledger.store")
    return kind


@pytest.fixture
def make_backend(backend_kind: str, tmp_path: Path) -> Iterator[MakeBackend]:
    """Fresh backends of the parametrized kind (`ledger.db`, `ledger-2.db`, ...)."""
    opened: list[Backend] = []

    def make() -> Backend:
        name = "ledger.db" if not opened else f"ledger-{len(opened) + 1}.db"
        backend = open_backend(backend_kind, tmp_path / name)
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        close_backend(backend)


@pytest.fixture
def backend(make_backend: MakeBackend) -> Backend:
    return make_backend()


@pytest.fixture
def workload() -> LedgerWorkload:
    """3 validators and 4 accounts that each received a grant of 1000."""
    work = LedgerWorkload(validators=3, accounts=4, seed="tests")
    work.grant_all(1000)
    return work
