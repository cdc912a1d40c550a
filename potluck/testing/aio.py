"""Running trio code from plain pytest functions."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio


def run_bounded(test: Callable[[], Awaitable[None]], timeout: float) -> None:
    """Run `test` in trio within `timeout` seconds; a failure is raised as itself,
    not inside the exception groups of the nurseries it crossed."""

    async def bounded() -> None:
        with trio.fail_after(timeout):
            await test()

    try:
        trio.run(bounded)
    except BaseExceptionGroup as group:
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        raise error from None
