"""Admission of calls, and the graceful drain on shutdown that ends no call CANCELLED.

While open, :class:`CallGate` admits every call and counts it. :meth:`CallGate.close` starts the drain:
from then on the server itself refuses new calls with UNAVAILABLE (which clients retry on another
replica) while the gRPC server stays up, and :meth:`CallGate.drained` waits for the admitted calls to
finish and for callers to stop arriving. Only then is the gRPC server stopped: gRPC core fails calls
that reach it after its shutdown began, but before a handler took them, with CANCELLED
(grpc/grpc#41785), a status no client retries. Clients that watch the server's health (the SDK does)
stop sending as soon as it turns NOT_SERVING (measured: SIGTERM to exit 0.7-0.8 s under 8 SDK clients,
the quiet period included).

At the grace deadline, calls still running are ended with UNAVAILABLE, not cut off. Callers that ignore
health and keep sending until the deadline would meet that CANCELLED when the gRPC server stops; so the
server process then exits without stopping it, and the closed connections fail their calls UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from visinspect_server.errors import UnavailableError

SHUTTING_DOWN = "the server is shutting down: retry on another replica"
GRACE_OVER = "the server shut down before this call finished (its grace period ran out): retry on another replica"
QUIET_S = 0.5  # no call for this long after the last one finished: the clients have moved on


@dataclass(frozen=True)
class DrainOutcome:
    """How a drain ended: ``cut_short`` calls were still running at the deadline (they ended UNAVAILABLE);
    ``quiet`` is False when callers kept arriving until the deadline (clients that ignore health)."""

    cut_short: int
    quiet: bool


class CallGate:
    """Counts the calls in flight; after :meth:`close`, refuses new ones with :class:`UnavailableError`."""

    def __init__(self, on_count: Callable[[int], None] | None = None) -> None:
        self._open = True
        self._expired = False
        self._calls: set[asyncio.Task[object]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = asyncio.Event()
        self._last_arrival = time.monotonic()
        self._on_count = on_count

    @property
    def is_open(self) -> bool:
        """False once the drain has begun."""
        return self._open

    @property
    def in_flight(self) -> int:
        """Calls admitted and not yet finished."""
        return len(self._calls)

    @property
    def expired(self) -> bool:
        """True once the grace period is over and the remaining calls are being ended."""
        return self._expired

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Count the current task's call for the ``with`` block; UnavailableError once draining."""
        self._last_arrival = time.monotonic()
        if not self._open:
            raise UnavailableError(SHUTTING_DOWN)
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("CallGate.admit() runs inside a task (a gRPC handler)")
        self._calls.add(task)
        self._changed()
        try:
            yield
        finally:
            self._calls.discard(task)
            self._last_arrival = time.monotonic()
            self._changed()

    async def wait_closed(self) -> None:
        """Until the drain begins (streams stop reading new items then)."""
        await self._closed.wait()

    def close(self) -> None:
        """Begin the drain: refuse new calls from now on."""
        self._open = False
        self._closed.set()

    async def drained(self, deadline: float, quiet_s: float = QUIET_S) -> DrainOutcome:
        """Wait until no call is in flight and none arrived for ``quiet_s``, or until ``deadline``
        (``time.monotonic()``). At the deadline, the calls still running are cancelled, and end UNAVAILABLE."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if self._calls:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._idle.wait(), remaining)
                continue
            quiet_left = self._last_arrival + quiet_s - time.monotonic()
            if quiet_left <= 0:
                return DrainOutcome(cut_short=0, quiet=True)
            await asyncio.sleep(min(quiet_left, remaining))
        cut_short = len(self._calls)
        if cut_short:
            self._expired = True
            for task in list(self._calls):
                task.cancel()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 5.0)  # each answers UNAVAILABLE at once
        return DrainOutcome(cut_short=cut_short, quiet=False)

    def _changed(self) -> None:
        if self._calls:
            self._idle.clear()
        else:
            self._idle.set()
        if self._on_count is not None:
            self._on_count(len(self._calls))
