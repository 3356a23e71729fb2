"""Micro-batching in front of any inference backend.

PaDiM's scoring step reads every position's inverse covariance on each inference, so one inference
of N images costs far less than N inferences of one. :class:`MicroBatcher` is itself an
:class:`~visinspect_server.backends.base.InferenceBackend`: callers send their images as before, and the
batcher merges what arrives concurrently into one backend call.

Policy: a batch leaves as soon as the backend has a free slot (``slots`` batches run at once).
Requests that arrive while every slot is busy queue up and leave together, up to ``max_batch`` images,
when a slot frees. A batch that is not full waits up to ``max_wait_ms`` for more images, but only
while other requests are still on their way (:class:`Upstream`: being decoded and resized); so one
client alone never waits, and under load batches fill up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from visinspect_server.backends.base import InferenceBackend, RawOutput


class Upstream:
    """Requests on their way to a batcher (decoding, resizing); counted on the event loop."""

    def __init__(self) -> None:
        self.count = 0

    @contextlib.contextmanager
    def coming(self) -> Iterator[None]:
        """Count one request for the ``with`` block."""
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1


@dataclass(frozen=True)
class BatchingOptions:
    """How requests are merged: at most ``max_batch`` images, waiting at most ``max_wait_ms`` to fill."""

    max_batch: int = 4
    max_wait_ms: float = 2.0

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, got {self.max_wait_ms}")


@dataclass(eq=False)
class _Waiting:
    images: np.ndarray
    future: asyncio.Future[RawOutput]


class MicroBatcher:
    """Merges concurrent ``infer`` calls into batches for ``backend``; use it from one event loop."""

    def __init__(
        self,
        backend: InferenceBackend,
        options: BatchingOptions,
        slots: int,
        upstream: Upstream | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._backend = backend
        self._upstream = upstream or Upstream()
        self._options = options
        self._slots = self._free_slots = max(1, slots)
        self._waiting: deque[_Waiting] = deque()
        self._queued_images = 0
        self._timer: asyncio.TimerHandle | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._on_batch = on_batch

    @property
    def backend(self) -> InferenceBackend:
        """The wrapped backend."""
        return self._backend

    async def infer(self, images: np.ndarray) -> RawOutput:
        """Run ``images`` (uint8 NHWC) in some batch; return the outputs of these images only."""
        if len(images) >= self._options.max_batch:
            if self._on_batch is not None:
                self._on_batch(len(images))
            return await self._backend.infer(images)
        future: asyncio.Future[RawOutput] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(images, future))
        self._queued_images += len(images)
        self._dispatch()
        return await future

    @property
    def jobs(self) -> int:
        """Batches sent to the wrapped backend at once."""
        return self._slots

    def warm_up(self, max_batch: int = 1) -> None:
        """Warm the wrapped backend up for every batch size this batcher can send."""
        self._backend.warm_up(max(max_batch, self._options.max_batch))

    def close(self) -> None:
        """Close the wrapped backend."""
        self._backend.close()

    def _dispatch(self) -> None:
        while self._free_slots and self._waiting:
            self._drop_cancelled()
            if not self._waiting:
                return
            filling = self._queued_images < self._options.max_batch
            if filling and self._options.max_wait_ms > 0 and self._upstream.count > 0:
                if self._timer is None:
                    loop = asyncio.get_running_loop()
                    self._timer = loop.call_later(self._options.max_wait_ms / 1000, self._on_wait_over)
                return
            self._send(self._take_batch())

    def _on_wait_over(self) -> None:
        self._timer = None
        self._drop_cancelled()
        if self._free_slots and self._waiting:
            self._send(self._take_batch())
        self._dispatch()

    def _drop_cancelled(self) -> None:
        while self._waiting and self._waiting[0].future.done():
            self._queued_images -= len(self._waiting.popleft().images)

    def _take_batch(self) -> list[_Waiting]:
        batch: list[_Waiting] = []
        size = 0
        while self._waiting and size + len(self._waiting[0].images) <= self._options.max_batch:
            item = self._waiting.popleft()
            self._queued_images -= len(item.images)
            if not item.future.done():  # the caller went away while it waited
                batch.append(item)
                size += len(item.images)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return batch

    def _send(self, batch: list[_Waiting]) -> None:
        if not batch:
            return
        self._free_slots -= 1
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Waiting]) -> None:
        try:
            images = batch[0].images if len(batch) == 1 else np.concatenate([item.images for item in batch])
            if self._on_batch is not None:
                self._on_batch(len(images))
            try:
                output = await self._backend.infer(images)
            except BaseException as exc:  # every caller of the batch gets the backend's error
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                return
            start = 0
            for item in batch:
                stop = start + len(item.images)
                if not item.future.done():
                    item.future.set_result(
                        RawOutput(anomaly_maps=output.anomaly_maps[start:stop], scores=output.scores[start:stop])
                    )
                start = stop
        finally:
            self._free_slots += 1
            self._dispatch()
