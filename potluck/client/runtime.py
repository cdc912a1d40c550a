"""The client's libp2p host, running trio in one background thread.

Hugging Face generation is synchronous, libp2p is trio. The client therefore
runs one `trio.run` in a dedicated daemon thread that owns the host and every
stream, and the synchronous API calls into it with `trio.from_thread.run`.
This is the one thread Potluck starts outside `trio.to_thread`; it lives as
long as the model object and is joined by `close()`.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from potluck.errors import NetworkError
from potluck.p2p.host import PotluckHost, open_host
from potluck.p2p.identity import Identity

T = TypeVar("T")


class ClientRuntime:
    """A running client host and a way to call async code on it."""

    def __init__(
        self,
        identity: Identity | None = None,
        *,
        max_frame: int | None = None,
        timeout: float = 60.0,
        start_timeout: float = 30.0,
    ) -> None:
        self.identity = identity or Identity.generate()
        self._max_frame = max_frame
        self._timeout = timeout
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._host: PotluckHost | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="potluck-client", daemon=True)
        self._thread.start()
        if not self._ready.wait(start_timeout):
            raise NetworkError("the client's libp2p host did not start")
        if self._error is not None:
            raise NetworkError(f"the client's libp2p host failed: {self._error}") from self._error

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller in __init__
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        kwargs: dict[str, Any] = {"timeout": self._timeout}
        if self._max_frame is not None:
            kwargs["max_frame"] = self._max_frame
        async with open_host(self.identity, **kwargs) as host:
            self._host = host
            self._token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self._ready.set()
            await self._stop.wait()

    @property
    def host(self) -> PotluckHost:
        if self._host is None:
            raise NetworkError("the client runtime is closed")
        return self._host

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `await fn(*args)` on the client's trio thread and return its result."""
        if self._token is None or not self._thread.is_alive():
            raise NetworkError("the client runtime is closed")
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def close(self) -> None:
        if self._token is not None and self._stop is not None and self._thread.is_alive():
            stop = self._stop
            trio.from_thread.run_sync(stop.set, trio_token=self._token)
            self._thread.join(timeout=10)
        self._token = None
        self._host = None
