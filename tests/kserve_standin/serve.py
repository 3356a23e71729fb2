"""Serve an OVMS-layout model repository over KServe v2 gRPC with kserve's ModelServer, behaving like OVMS.

Run with the kserve virtualenv (kserve and tritonclient cannot share a process)::

    .venv-kserve/bin/python tests/kserve_standin/serve.py --repository model_repository --grpc-port 8001

Models and versions follow ``<repository>/config.json`` (``--config-path``) the way OpenVINO Model Server does
(registry.py and policy.py say which OVMS file each rule comes from): a watcher re-reads the config and rescans the
version folders every ``--poll-seconds``, loads new versions (LOADING for ``--load-delay-seconds`` more, then
AVAILABLE), reloads versions whose config changed and retires those the ``model_version_policy`` drops. Each version
is compiled with OpenVINO for the config's ``target_device`` and ``plugin_config``. Without a config.json every model
folder is served with all its versions, each at its ``visinspect-metadata.json`` ``inference_precision``.

kserve 0.21 has no model versions, so the servicer answers ModelReady, ModelMetadata and ModelInfer from the
registry, with OVMS's status codes and messages; ServerLive is kserve's, ServerReady is false until the first load
of the repository is over (src/server.cpp starts the gRPC server before the servable manager). Metadata reports the
IR's input/output names as read, shapes (-1 for dynamic dimensions), datatypes and the AVAILABLE versions; outputs
go back as raw binary contents. Both of kserve's ports (gRPC, and the REST one it always opens) are bound to
127.0.0.1 only. Prints ``kserve stand-in ready on port N`` once the gRPC server has started and the first load is
done (and, with ``--ready-file PATH``, writes ``{"pid": ..., "port": N, "host": "127.0.0.1"}`` there, atomically:
what tests/kserve_standin/launch.py waits for), then one line per state change: ``version <model>/<N> LOADING``, ``... AVAILABLE``, ``... UNLOADED (<why>)``,
``loaded <model> version <N> with INFERENCE_PRECISION_HINT=<x> PERFORMANCE_HINT=<y>`` (read back from the compiled
model) and ``config reloaded: <models>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import numpy as np

# As the facade does (visinspect_server/backends/openvino.py): importing openvino would fork a telemetry sender off a
# thread of this gRPC server; without the module OpenVINO uses its no-op stub.
sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]

import openvino as ov  # noqa: E402 - after the telemetry switch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: make `tests.kserve_standin` importable

_OV_TO_KSERVE = {
    ov.Type.u8: "UINT8",
    ov.Type.i8: "INT8",
    ov.Type.i32: "INT32",
    ov.Type.i64: "INT64",
    ov.Type.f16: "FP16",
    ov.Type.f32: "FP32",
    ov.Type.boolean: "BOOL",
}


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True, help="kserve always starts its REST server too")
    parser.add_argument("--config-path", type=Path, help="default: <repository>/config.json")
    parser.add_argument(
        "--poll-seconds", type=float, default=1.0, help="OVMS --file_system_poll_wait_seconds (default 1; 0: never)"
    )
    parser.add_argument("--load-delay-seconds", type=float, default=0.0, help="extra time each (re)load takes")
    parser.add_argument(
        "--load-wait-seconds",
        type=float,
        default=10.0,
        help="how long ModelInfer waits for a loading version (OVMS: 10 s, src/modelmanager.hpp)",
    )
    parser.add_argument(
        "--ready-file", type=Path, help='once ready, write {"pid", "port", "host"} as JSON here (atomically)'
    )
    return parser.parse_known_args(argv)[0]


def _dims(shape: ov.PartialShape) -> list[int]:
    return [dim.get_length() if dim.is_static else -1 for dim in shape]


def _emit(line: str) -> None:
    print(line, flush=True)


def _write_ready_file(path: Path, port: int) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"pid": os.getpid(), "port": port, "host": "127.0.0.1"}))
    os.replace(temporary, path)


def main() -> None:
    options = _parse()
    # kserve parses sys.argv when imported: hand it only its own flags.
    sys.argv = [sys.argv[0], "--grpc_port", str(options.grpc_port), "--http_port", str(options.http_port)]
    import grpc
    import kserve
    from grpc import aio
    from grpc_interceptor.exceptions import GrpcException
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc import server as grpc_server
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
    from kserve.protocol.grpc.servicer import InferenceServicer
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
    from kserve.protocol.rest import server as rest_server

    from tests.kserve_standin.registry import OvmsError, Registry

    config_path = options.config_path or options.repository / "config.json"
    registry = Registry(options.repository, config_path, options.load_delay_seconds, _emit)

    @contextlib.contextmanager
    def ovms_status() -> Iterator[None]:
        try:
            yield
        except OvmsError as exc:
            raise GrpcException(exc.message, grpc.StatusCode[exc.code]) from exc

    def tensors(ports: list[ov.Output]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [
            pb.ModelMetadataResponse.TensorMetadata(
                name=p.get_any_name(), datatype=_OV_TO_KSERVE[p.get_element_type()], shape=_dims(p.get_partial_shape())
            )
            for p in ports
        ]

    def infer(compiled: ov.CompiledModel, feed: dict) -> list[np.ndarray]:
        request = compiled.create_infer_request()
        request.infer(feed)
        return [np.array(request.get_tensor(port).data, copy=True, order="C") for port in compiled.outputs]

    class VersionedServicer(InferenceServicer):
        """KServe's servicer, with OVMS's versions from the registry."""

        async def ServerReady(self, request: pb.ServerReadyRequest, context: object) -> pb.ServerReadyResponse:  # noqa: N802
            response = await super().ServerReady(request, context)
            return pb.ServerReadyResponse(ready=response.ready and registry.started)

        async def ModelReady(self, request: pb.ModelReadyRequest, context: object) -> pb.ModelReadyResponse:  # noqa: N802
            with ovms_status():
                return pb.ModelReadyResponse(ready=registry.ready(request.name, request.version))

        async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: object) -> pb.ModelMetadataResponse:  # noqa: N802
            with ovms_status():
                ir, versions = registry.metadata(request.name, request.version)
            return pb.ModelMetadataResponse(
                name=request.name,
                versions=[str(v) for v in versions],
                platform="OpenVINO",  # src/kfs_frontend/kfs_grpc_inference_service.cpp
                inputs=tensors(ir.inputs),  # names come from the IR as read (compiled ports may differ)
                outputs=tensors(ir.outputs),
            )

        async def ModelInfer(self, request: pb.ModelInferRequest, context: object) -> pb.ModelInferResponse:  # noqa: N802
            self.validate_grpc_request(request)
            infer_request = InferRequest.from_grpc(request)
            with ovms_status():
                version = await asyncio.to_thread(
                    registry.acquire, request.model_name, request.model_version, options.load_wait_seconds
                )
            try:  # an in-flight inference holds its version: a reload or retirement waits for it
                assert version.compiled is not None and version.ir is not None
                feed = {tensor.name: tensor.as_numpy() for tensor in infer_request.inputs}
                results = await asyncio.to_thread(infer, version.compiled, feed)
                outputs = []
                for array, port, declared in zip(results, version.compiled.outputs, version.ir.outputs, strict=True):
                    output = InferOutput(
                        declared.get_any_name(), list(array.shape), _OV_TO_KSERVE[port.get_element_type()]
                    )
                    output.set_data_from_numpy(array, binary_data=True)
                    outputs.append(output)
            finally:
                registry.release(version)
            response = InferResponse(
                infer_request.id,
                request.model_name,
                outputs,
                model_version=str(version.number),
                use_binary_outputs=True,
            )
            return response.to_grpc()

    async def start_on_loopback(self: grpc_server.GRPCServer, max_workers: int) -> None:
        """kserve's GRPCServer.start, but bound to loopback, with versions, loading the repository, announcing it."""
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(LoggingInterceptor(), ExceptionToStatusInterceptor()),
            options=[
                ("grpc.max_send_message_length", self._kwargs.get("grpc_max_send_message_length")),
                ("grpc.max_receive_message_length", self._kwargs.get("grpc_max_receive_message_length")),
            ],
        )
        servicer = VersionedServicer(self._data_plane, self._model_repository_extension)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        port = self._server.add_insecure_port(f"127.0.0.1:{options.grpc_port}")
        await self._server.start()
        await asyncio.to_thread(registry.poll)
        registry.started = True
        print(f"kserve stand-in ready on port {port}", flush=True)
        if options.ready_file is not None:
            _write_ready_file(options.ready_file, port)
        if options.poll_seconds > 0:
            threading.Thread(target=registry.watch, args=(options.poll_seconds,), daemon=True).start()
        await self._server.wait_for_termination()

    original_rest_init = rest_server.RESTServer.__init__

    def rest_on_loopback(self: rest_server.RESTServer, *args: object, **kwargs: object) -> None:
        original_rest_init(self, *args, **kwargs)
        self.config.host = "127.0.0.1"  # kserve hard-codes 0.0.0.0

    grpc_server.GRPCServer.start = start_on_loopback
    rest_server.RESTServer.__init__ = rest_on_loopback
    kserve.ModelServer(grpc_port=options.grpc_port, http_port=options.http_port, enable_latency_logging=False).start([])


if __name__ == "__main__":
    main()
