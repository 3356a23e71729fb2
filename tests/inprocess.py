"""The real server (InspectionServer, real OpenVINO, real gRPC on a free port) in this process, on an event loop
of its own, with a gate in front of the backend: tests hold inference calls and release them when they choose,
so drains, swaps and deadlines are tested by events, never by timing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from visinspect_api.model_repository import ModelMetadata
from visinspect_server.app import InspectionServer
from visinspect_server.backends.base import Backend, InferenceBackend, RawOutput
from visinspect_server.backends.openvino import create
from visinspect_server.settings import ServerSettings

T = TypeVar("T")


class Gate:
    """Holds every inference until :meth:`open`; counts what reached the backend (thread-safe to read)."""

    def __init__(self, is_open: bool = True) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._initially_open = is_open
        self.held_images = 0  # images waiting at the gate now
        self.images_by_version: dict[int, int] = {}  # images that went through to the backend, per version

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._event = asyncio.Event()
        if self._initially_open:
            self._event.set()

    def open(self) -> None:
        assert self.loop is not None and self._event is not None
        self.loop.call_soon_threadsafe(self._event.set)

    async def wait(self, images: int) -> None:
        assert self._event is not None
        self.held_images += images
        try:
            await self._event.wait()
        finally:
            self.held_images -= images


class GatedBackend:
    """A real backend behind a :class:`Gate`."""

    def __init__(self, backend: Any, version: int, gate: Gate) -> None:
        self.backend = backend
        self.version = version
        self.gate = gate
        self.jobs = backend.jobs

    async def infer(self, images: np.ndarray) -> RawOutput:
        await self.gate.wait(len(images))
        self.gate.images_by_version[self.version] = self.gate.images_by_version.get(self.version, 0) + len(images)
        return await self.backend.infer(images)

    def warm_up(self, max_batch: int = 1) -> None:
        self.backend.warm_up(max_batch)

    def close(self) -> None:
        self.backend.close()


class InProcessServer:
    """An :class:`InspectionServer` on a background event loop, its backends behind ``gate`` (and in ``wrap``, to
    inject faults). ``backend`` is the real embedded OpenVINO backend unless given (the fast tier's fake)."""

    def __init__(
        self,
        repository: Path,
        gate: Gate | None = None,
        wrap: Callable[[GatedBackend], Any] | None = None,
        backend: Backend | None = None,
        **settings: Any,
    ) -> None:
        values = {"host": "127.0.0.1", "port": 0, "metrics_port": -1, "poll_interval_s": 0.2, **settings}
        self.settings = ServerSettings(model_repository=repository, **values)
        self.gate = gate or Gate()
        self.loop = asyncio.new_event_loop()
        self.gate.bind(self.loop)
        backend = create(self.settings) if backend is None else backend

        def factory(folder: Path, metadata: ModelMetadata) -> InferenceBackend:
            gated = GatedBackend(backend.load(folder, metadata), int(folder.name), self.gate)
            return gated if wrap is None else wrap(gated)

        self.server = InspectionServer(self.settings, factory, backend=backend)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._stopped = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def start(self) -> InProcessServer:
        self._thread.start()
        self.run(self.server.start(), 120)
        return self

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        """Run ``coroutine`` on the server's loop; its future."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
        return self.submit(coroutine).result(timeout_s)

    def call(self, function: Callable[[], T], timeout_s: float = 30.0) -> T:
        """Run ``function`` on the server's loop (to read its state without races)."""

        async def wrapped() -> T:
            return function()

        return self.run(wrapped(), timeout_s)

    def begin_stop(self) -> Future[bool]:
        """Start the drain (what SIGTERM does); the future resolves once the server has stopped."""
        self._stopped = True
        return self.submit(self.server.stop())

    def close(self) -> None:
        """Open the gate, stop the server if it still runs, end the loop."""
        self.gate.open()
        if not self._stopped:
            self.begin_stop().result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def __enter__(self) -> InProcessServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
