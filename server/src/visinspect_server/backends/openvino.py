"""The embedded backend (``--backend embedded``, the default): OpenVINO in this process."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

# Importing openvino sends a usage event through openvino_telemetry (on unless opted out), from a process it forks
# off a thread. A server must neither phone home from a factory network nor fork while gRPC and the event loop run:
# measured, the forked copy made about one server start in four begin its drain by itself (a two-server test of
# tests/integration/test_rolling_restart.py). Without the module, OpenVINO falls back to its no-op stub.
if "openvino" not in sys.modules:
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]  # None: "not installed"

import openvino as ov  # after the telemetry switch above

from visinspect_api.model_repository import IR_XML_FILENAME, ModelMetadata
from visinspect_server.backends.base import ModelLoadError, RawOutput, Readiness, ServedVersions, all_versions
from visinspect_server.errors import InspectionError

if TYPE_CHECKING:
    from visinspect_server.settings import ServerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenVINOOptions:
    """How the embedded backend compiles a model."""

    performance_hint: str = "LATENCY"
    cache_dir: Path | None = None
    device: str = "CPU"

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> OpenVINOOptions:
        """This backend's group of the server's settings."""
        return cls(performance_hint=settings.performance_hint, cache_dir=settings.cache_dir)


class EmbeddedBackend:
    """One OpenVINO core for the process; every version compiles on it. Always ready: nothing to probe."""

    location = "OpenVINO in this process"
    probes_readiness = False

    def __init__(self, options: OpenVINOOptions, core: ov.Core | None = None) -> None:
        self.options = options
        self._core = ov.Core() if core is None else core

    def load(self, version_dir: Path, metadata: ModelMetadata) -> OpenVINOBackend:
        return OpenVINOBackend(version_dir, metadata, self.options, self._core)

    def served_versions(self, repository: Path, on_disk: Mapping[str, list[int]]) -> dict[str, ServedVersions]:
        return all_versions(repository, on_disk)

    async def readiness(self, loaded: Mapping[str, Collection[int]]) -> Readiness:  # noqa: ARG002 - the Protocol's
        return Readiness()

    async def close(self) -> None:
        """Nothing process-wide to release: each version closes its own infer queue."""


def create(settings: ServerSettings) -> EmbeddedBackend:
    """The factory entry of ``--backend embedded``."""
    return EmbeddedBackend(OpenVINOOptions.from_settings(settings))


class OpenVINOBackend:
    """In-process OpenVINO with an async infer queue, so concurrent requests keep every core busy."""

    def __init__(self, version_dir: Path, metadata: ModelMetadata, options: OpenVINOOptions, core: ov.Core) -> None:
        self._metadata = metadata
        model = _read_and_check(core, version_dir / IR_XML_FILENAME, metadata)
        config: dict[str, object] = {
            "PERFORMANCE_HINT": options.performance_hint,
            "INFERENCE_PRECISION_HINT": metadata.inference_precision,
        }
        if options.cache_dir is not None:
            options.cache_dir.mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(options.cache_dir)
        try:
            self._compiled = core.compile_model(model, options.device, config)
        except RuntimeError as exc:
            raise ModelLoadError(f"OpenVINO cannot compile {version_dir}: {exc}") from exc
        jobs = max(1, int(self._compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self._queue = ov.AsyncInferQueue(self._compiled, jobs)
        self._queue.set_callback(_on_done)
        self._slots = asyncio.Semaphore(jobs)
        self.jobs = jobs

    async def infer(self, images: np.ndarray) -> RawOutput:
        loop = asyncio.get_running_loop()
        async with self._slots:  # start_async blocks when every request is busy: wait here instead
            done: asyncio.Future[RawOutput | BaseException] = loop.create_future()
            self._queue.start_async({0: images}, (loop, done, images), share_inputs=True)
            outcome = await done
        if isinstance(outcome, BaseException):
            raise InspectionError("inference failed") from outcome
        return outcome

    def warm_up(self, max_batch: int = 1) -> None:
        """Run every batch size up to ``max_batch`` once on each infer request.

        The CPU plugin prepares each new input shape on first use (about 100 ms here), so without
        this the first batch of each size would pay it on a live request.
        """
        contract = self._metadata.input
        images = np.zeros((max_batch, contract.height, contract.width, 3), np.uint8)
        for index in range(len(self._queue)):
            request = self._queue[index]
            for size in range(1, max_batch + 1):
                request.infer({0: images[:size]})

    def close(self) -> None:
        self._queue.wait_all()


_Pending = tuple[asyncio.AbstractEventLoop, "asyncio.Future[RawOutput | BaseException]", np.ndarray]


def _on_done(request: ov.InferRequest, userdata: _Pending) -> None:
    loop, future, _images = userdata  # the images ride along so their buffer outlives the request
    try:
        maps = request.get_output_tensor(0).data
        outcome: RawOutput | BaseException = RawOutput(
            anomaly_maps=maps.reshape(maps.shape[0], maps.shape[-2], maps.shape[-1]).copy(),
            scores=request.get_output_tensor(1).data.reshape(-1).copy(),
        )
    except Exception as exc:  # noqa: BLE001 - handed to the awaiting coroutine, which raises it
        outcome = exc
    loop.call_soon_threadsafe(_resolve, future, outcome)


def _resolve(future: asyncio.Future[RawOutput | BaseException], outcome: RawOutput | BaseException) -> None:
    if not future.done():
        future.set_result(outcome)


def _read_and_check(core: ov.Core, xml_path: Path, metadata: ModelMetadata) -> ov.Model:
    """Read the IR and refuse it unless its input and outputs are the ones the metadata promises."""
    try:
        model = core.read_model(xml_path)
    except RuntimeError as exc:
        raise ModelLoadError(f"OpenVINO cannot read {xml_path}: {exc}") from exc
    contract = metadata.input
    if len(model.inputs) != 1 or len(model.outputs) != 2:
        raise ModelLoadError(
            f"{xml_path}: expected 1 input and 2 outputs, found {len(model.inputs)}/{len(model.outputs)}"
        )
    port = model.inputs[0]
    expected_shape = f"[?,{contract.height},{contract.width},3]"
    if port.get_element_type() != ov.Type.u8 or str(port.get_partial_shape()) != expected_shape:
        raise ModelLoadError(
            f"{xml_path}: input is {port.get_element_type()} {port.get_partial_shape()}, "
            f"metadata promises u8 {expected_shape}"
        )
    names = [output.get_any_name() for output in model.outputs]
    if names != [metadata.outputs.anomaly_map, metadata.outputs.pred_score]:
        raise ModelLoadError(f"{xml_path}: outputs are {names}, metadata promises anomaly_map and pred_score")
    return model
