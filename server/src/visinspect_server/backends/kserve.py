"""A remote model server speaking KServe v2 gRPC (``inference.GRPCInferenceService``) as a backend.

Works with OpenVINO Model Server, Triton and KServe model servers: the facade keeps decoding,
pre- and post-processing, and only the IR runs remotely. The model server serves the same
OVMS-layout repository as the facade reads: the facade reads a version's metadata from disk and
asks the model server for exactly that model name and version.

- Which versions: those the model server's ``config.json`` version policy serves
  (:meth:`KServeConnection.served_versions`, read from the shared repository, as OVMS reads it); without
  a ``config.json`` (Triton, KServe), every version on disk is asked for.
- Loading a version (:class:`KServeBackend`, in the registry's worker thread) checks the remote
  model: ``config.json`` must compile it at the precision it was evaluated at (OVMS applies one
  ``plugin_config`` to all of a model's versions and KServe v2 cannot report what was compiled, so the
  file OVMS compiles from is checked); the version must be ready, and its metadata (input/output names,
  shapes with -1 for the dynamic batch, datatypes) must match ``visinspect-metadata.json``; one warm-up
  inference checks the output shapes. A version the model server has not loaded yet, or an unreachable
  server, raises :class:`~visinspect_server.backends.base.ModelNotReadyError` (the registry tries again with
  back-off); a mismatch raises :class:`~visinspect_server.backends.base.ModelLoadError` (rejected).
- Requests share one channel (:class:`KServeConnection`, created on the event loop at first use)
  with keep-alive and short reconnect back-off, so it recovers by itself after the model server
  restarts. Tensors travel as raw binary contents; every call has a deadline.
- Errors: unreachable, UNAVAILABLE, a missed deadline, or a version the server stopped serving
  → :class:`~visinspect_server.errors.UnavailableError` ("inference backend at HOST:PORT is
  unavailable: ..."), except a version its version policy has retired since (NOT_FOUND, naming it);
  anything else → :class:`~visinspect_server.errors.InspectionError` (INTERNAL).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from visinspect_api.model_repository import MetadataError, ModelMetadata, list_versions
from visinspect_api.ovms_config import read_ovms_config
from visinspect_server.backends.base import ModelLoadError, ModelNotReadyError, RawOutput, Readiness, ServedVersions
from visinspect_server.errors import InspectionError, NotFoundError, ResourceExhaustedError, UnavailableError

if TYPE_CHECKING:
    from visinspect_server.settings import ServerSettings

log = logging.getLogger(__name__)

_UNAVAILABLE_CODES = {"StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED", "StatusCode.CANCELLED"}


@dataclass(frozen=True)
class KServeOptions:
    """Where the model server is and how long a call may take."""

    address: str
    timeout_s: float = 10.0
    max_message_bytes: int = 64 * 1024 * 1024
    keepalive_time_ms: int = 30_000
    keepalive_timeout_ms: int = 10_000
    max_reconnect_backoff_ms: int = 2_000

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> KServeOptions:
        """This backend's group of the server's settings."""
        return cls(settings.ovms_address, settings.ovms_timeout_s, settings.max_message_bytes)

    def channel_args(self) -> list[tuple[str, int]]:
        """gRPC channel options: message sizes, keep-alive, and quick reconnects after a restart."""
        return [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.min_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", self.max_reconnect_backoff_ms),
        ]


class KServeConnection:
    """``--backend kserve``: the one channel every version's backend shares, plus readiness probes for health."""

    probes_readiness = True

    def __init__(self, options: KServeOptions) -> None:
        self.options = options
        self._client: aioclient.InferenceServerClient | None = None

    @property
    def address(self) -> str:
        """``host:port`` of the model server."""
        return self.options.address

    @property
    def location(self) -> str:
        """How log lines name the model server."""
        return f"inference backend at {self.options.address}"

    def client(self) -> aioclient.InferenceServerClient:
        """The shared asyncio client; created on first use, on the running event loop."""
        if self._client is None:
            self._client = aioclient.InferenceServerClient(
                self.options.address, channel_args=self.options.channel_args()
            )
        return self._client

    def served_versions(self, repository: Path, on_disk: Mapping[str, list[int]]) -> dict[str, ServedVersions]:
        """Of the versions on disk, those the model server serves by ``config.json``'s version policies, with
        each model's entry (a model config.json leaves out is not served; without the file, all are asked for)."""
        try:
            config = read_ovms_config(repository)
        except MetadataError as exc:  # OVMS keeps its last valid configuration; readiness tells what it serves
            log.warning("%s; asking the model server for every version", exc)
            config = None
        if config is None:
            return {name: ServedVersions(versions) for name, versions in on_disk.items()}
        return {
            name: ServedVersions(config[name].served_versions(versions), config[name])
            for name, versions in on_disk.items()
            if name in config
        }

    def load(self, version_dir: Path, metadata: ModelMetadata) -> KServeBackend:
        """Check one version the model server serves against its metadata (blocking: the registry's worker thread)."""
        return KServeBackend(self, version_dir, metadata)

    async def readiness(self, loaded: Mapping[str, Collection[int]]) -> Readiness:
        """ServerReady, then ModelReady of each loaded model's newest version (only while the server is ready)."""
        if not await self.server_ready():
            return Readiness(server=False)
        return Readiness(True, {name: await self.model_ready(name, max(versions)) for name, versions in loaded.items()})

    async def server_ready(self) -> bool:
        """Whether the model server answers ServerReady with ready=true within the deadline."""
        try:
            return bool(await self.client().is_server_ready(client_timeout=self.options.timeout_s))
        except InferenceServerException:
            return False

    async def model_ready(self, name: str, version: int) -> bool:
        """Whether the model server reports ``name`` version ``version`` ready."""
        try:
            return bool(await self.client().is_model_ready(name, str(version), client_timeout=self.options.timeout_s))
        except InferenceServerException:
            return False

    def error(self, exc: InferenceServerException, repository: Path, name: str, version: int) -> InspectionError:
        """Our domain error for a failed call to the model server."""
        status = exc.status() or ""
        if status in _UNAVAILABLE_CODES:
            detail = (
                f"no answer within {self.options.timeout_s:g} s"
                if status == "StatusCode.DEADLINE_EXCEEDED"
                else exc.message()
            )
            return UnavailableError(f"inference backend at {self.address} is unavailable: {detail}")
        if status == "StatusCode.NOT_FOUND":
            if _retired(repository, name, version):
                return NotFoundError(
                    f"model {name!r} version {version} was retired by the model server's version policy "
                    f"(config.json); ask for a served version or none (the newest)"
                )
            return UnavailableError(
                f"inference backend at {self.address} is unavailable: it no longer serves model {name!r} "
                f"version {version}"
            )
        if status == "StatusCode.RESOURCE_EXHAUSTED":
            return ResourceExhaustedError(f"inference backend at {self.address} refused the batch: {exc.message()}")
        return InspectionError(f"inference backend at {self.address} failed ({status}): {exc.message()}")

    async def close(self) -> None:
        """Close the channel."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


class KServeBackend:
    """One model version served by the model server; checked against its metadata when created."""

    jobs = 2  # batches in flight to the model server at once (OVMS on an edge box: one per CPU stream)

    def __init__(self, connection: KServeConnection, version_dir: Path, metadata: ModelMetadata) -> None:
        self._connection = connection
        self._repository = version_dir.parent.parent
        self._name = metadata.model_name
        self._version = int(version_dir.name)
        self._input = metadata.input
        self._map_name = metadata.outputs.anomaly_map
        self._score_name = metadata.outputs.pred_score
        self._check_compiled_precision(metadata.inference_precision)
        self._check_remote()

    @property
    def _where(self) -> str:
        return f"model server at {self._connection.address}, model {self._name!r} version {self._version}"

    def _check_compiled_precision(self, evaluated_at: str) -> None:
        """The model server must compile the version at the precision its calibration was measured at."""
        try:
            config = read_ovms_config(self._repository)
        except MetadataError as exc:
            raise ModelLoadError(f"{self._where}: {exc}") from exc
        entry = None if config is None else config.get(self._name)
        if entry is None:
            return  # no OVMS config (another KServe server), or a model it does not serve: readiness says so
        compiled_at = entry.inference_precision
        if compiled_at != evaluated_at:
            stated = f"at {compiled_at}" if compiled_at else "at the device's default precision"
            raise ModelLoadError(
                f"{self._where}: the model server compiles it {stated} (config.json plugin_config "
                f"INFERENCE_PRECISION_HINT) but it was evaluated and calibrated at {evaluated_at}: its scores would "
                f"not match its thresholds; re-export it at {compiled_at or 'the precision config.json states'}, "
                f"or as a new model"
            )

    def _check_remote(self) -> None:
        """Readiness, metadata against our contract, one warm-up inference (blocking: worker thread)."""
        options = self._connection.options
        client = grpcclient.InferenceServerClient(options.address, channel_args=options.channel_args())
        version = str(self._version)
        try:
            try:
                ready = client.is_model_ready(self._name, version, client_timeout=options.timeout_s)
                remote = client.get_model_metadata(self._name, version, as_json=True, client_timeout=options.timeout_s)
            except InferenceServerException as exc:
                status = exc.status() or ""
                if status == "StatusCode.NOT_FOUND" or status in _UNAVAILABLE_CODES:
                    raise ModelNotReadyError(f"{self._where}: {self._describe(exc)}") from exc
                raise ModelLoadError(f"{self._where}: {self._describe(exc)}") from exc
            if not ready:
                raise ModelNotReadyError(f"{self._where}: the version is not ready")
            problems = self._contract_problems(remote)
            if problems:
                mismatch = "; ".join(problems)
                raise ModelLoadError(f"{self._where}: remote metadata does not match our metadata: {mismatch}")
            self._warm_up(client)
        finally:
            client.close()

    def _describe(self, exc: InferenceServerException) -> str:
        status = exc.status() or ""
        if status == "StatusCode.NOT_FOUND":
            return f"the model server does not serve this version (yet) ({exc.message()})"
        if status in _UNAVAILABLE_CODES:
            return f"inference backend at {self._connection.address} is unavailable ({exc.message()})"
        return f"{status}: {exc.message()}"

    def _contract_problems(self, remote: dict[str, Any]) -> list[str]:
        height, width = self._input.height, self._input.width
        expected_inputs = {self._input.name: ("UINT8", [-1, height, width, 3])}
        expected_outputs = {
            self._map_name: ("FP32", [-1, 1, height, width]),
            self._score_name: ("FP32", [-1]),
        }
        problems = []
        for kind, expected in (("inputs", expected_inputs), ("outputs", expected_outputs)):
            found = {
                t.get("name"): (t.get("datatype"), [int(d) for d in t.get("shape", [])]) for t in remote.get(kind, [])
            }
            if found != expected:
                problems.append(f"{kind} are {_format(found)}, expected {_format(expected)} (-1 = dynamic batch)")
        return problems

    def _warm_up(self, client: grpcclient.InferenceServerClient) -> None:
        images = np.zeros((1, self._input.height, self._input.width, 3), np.uint8)
        tensor = grpcclient.InferInput(self._input.name, list(images.shape), "UINT8")
        tensor.set_data_from_numpy(images)
        outputs = [grpcclient.InferRequestedOutput(self._map_name), grpcclient.InferRequestedOutput(self._score_name)]
        try:
            result = client.infer(
                self._name,
                [tensor],
                model_version=str(self._version),
                outputs=outputs,
                client_timeout=self._connection.options.timeout_s,
            )
            self._unpack(result, 1)
        except (InferenceServerException, InspectionError) as exc:
            raise ModelLoadError(f"{self._where}: warm-up inference failed: {exc}") from exc

    async def infer(self, images: np.ndarray) -> RawOutput:
        tensor = aioclient.InferInput(self._input.name, list(images.shape), "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(images, np.uint8))
        outputs = [aioclient.InferRequestedOutput(self._map_name), aioclient.InferRequestedOutput(self._score_name)]
        try:
            result = await self._connection.client().infer(
                self._name,
                [tensor],
                model_version=str(self._version),
                outputs=outputs,
                client_timeout=self._connection.options.timeout_s,
            )
        except InferenceServerException as exc:
            raise self._connection.error(exc, self._repository, self._name, self._version) from exc
        return self._unpack(result, images.shape[0])

    def _unpack(self, result: grpcclient.InferResult, batch: int) -> RawOutput:
        response = result.get_response()
        if response.model_version and response.model_version != str(self._version):
            raise InspectionError(f"{self._where}: the answer came from version {response.model_version}")
        maps = result.as_numpy(self._map_name)
        scores = result.as_numpy(self._score_name)
        height, width = self._input.height, self._input.width
        if maps is None or scores is None or maps.shape != (batch, 1, height, width) or scores.shape != (batch,):
            shapes = (None if maps is None else maps.shape, None if scores is None else scores.shape)
            raise InspectionError(f"{self._where}: unexpected output shapes {shapes}")
        return RawOutput(
            anomaly_maps=maps.reshape(batch, height, width).astype(np.float32, copy=False),
            scores=scores.astype(np.float32, copy=False),
        )

    def warm_up(self, max_batch: int = 1) -> None:
        """Nothing more: loading ran one inference already; the model server compiles each batch size itself."""

    def close(self) -> None:
        """Nothing per version: the channel is shared and closed by its :class:`KServeConnection`."""


def _retired(repository: Path, name: str, version: int) -> bool:
    """Whether the version is on disk but outside the version policy of the model server's config.json."""
    try:
        config = read_ovms_config(repository)
        entry = None if config is None else config.get(name)
        on_disk = list_versions(repository / name)
    except (MetadataError, OSError):
        return False
    return entry is not None and version in on_disk and version not in entry.served_versions(on_disk)


def _format(tensors: dict[str, tuple[str, list[int]]]) -> str:
    return ", ".join(f"{name} {dtype} {shape}" for name, (dtype, shape) in sorted(tensors.items(), key=str)) or "none"


def create(settings: ServerSettings) -> KServeConnection:
    """The factory entry of ``--backend kserve``."""
    return KServeConnection(KServeOptions.from_settings(settings))
