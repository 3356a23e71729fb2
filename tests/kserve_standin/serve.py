"""Serve an OVMS-layout model repository over KServe v2 gRPC with kserve's ModelServer, like OVMS does.

Run with the kserve virtualenv (kserve and tritonclient cannot share a process)::

    .venv-kserve/bin/python tests/kserve_standin/serve.py --repository model_repository --grpc-port 8001

Every ``<model>/<N>/model.xml`` is compiled with OpenVINO on CPU at the ``inference_precision`` of
its ``visinspect-metadata.json`` (f32 when the file is missing or unreadable). kserve 0.21 has no
model versions (its data plane looks models up by name only), so each version is registered as its
own entry ``<model>/<N>`` and the gRPC servicer is replaced by one that resolves the request's
``(name, version)`` pair to that entry: version ``""`` means the newest, an unknown model or
version answers NOT_FOUND, like OVMS. ModelMetadata reports the model's name, its versions and the
IR's real input/output names, shapes (-1 for dynamic dimensions) and datatypes.
Both of kserve's ports (gRPC, and the REST one it always opens) are bound to 127.0.0.1 only.
Prints ``kserve stand-in ready on port N`` to stdout once the gRPC server has started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from concurrent import futures
from pathlib import Path

import numpy as np
import openvino as ov

_OV_TO_KSERVE = {
    ov.Type.u8: "UINT8",
    ov.Type.i8: "INT8",
    ov.Type.i32: "INT32",
    ov.Type.i64: "INT64",
    ov.Type.f16: "FP16",
    ov.Type.f32: "FP32",
    ov.Type.boolean: "BOOL",
}
_PRECISIONS = {"f32": "f32", "bf16": "bf16", "f16": "f16"}


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True, help="kserve always starts its REST server too")
    return parser.parse_known_args(argv)[0]


def _dims(shape: ov.PartialShape) -> list[int]:
    return [dim.get_length() if dim.is_static else -1 for dim in shape]


def _inference_precision(version_dir: Path) -> str:
    try:
        metadata = json.loads((version_dir / "visinspect-metadata.json").read_text())
        return _PRECISIONS.get(str(metadata.get("inference_precision")), "f32")
    except (OSError, ValueError, AttributeError):
        return "f32"


def main() -> None:
    options = _parse()
    # kserve parses sys.argv when imported: hand it only its own flags.
    sys.argv = [sys.argv[0], "--grpc_port", str(options.grpc_port), "--http_port", str(options.http_port)]
    import kserve
    from grpc import aio
    from kserve.errors import ModelNotFound
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc import server as grpc_server
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
    from kserve.protocol.grpc.servicer import InferenceServicer
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
    from kserve.protocol.rest import server as rest_server

    class OpenVINOModel(kserve.Model):
        """One model version: an IR compiled for CPU."""

        def __init__(self, key: str, name: str, version: str, version_dir: Path, core: ov.Core) -> None:
            super().__init__(key)
            self.model_name, self.version, self.version_dir, self._core = name, version, version_dir, core
            self._model: ov.Model | None = None
            self._compiled: ov.CompiledModel | None = None

        def load(self) -> bool:
            model = self._core.read_model(self.version_dir / "model.xml")
            self._model = model  # names come from the IR as read (the compiled ports may list another alias first)
            precision = _inference_precision(self.version_dir)
            self._compiled = self._core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision})
            self.ready = True
            return True

        def _ports(self, ports: list) -> list[dict]:
            return [
                {
                    "name": p.get_any_name(),
                    "datatype": _OV_TO_KSERVE[p.get_element_type()],
                    "shape": _dims(p.get_partial_shape()),
                }
                for p in ports
            ]

        def get_input_types(self) -> list[dict]:
            return self._ports(self._model.inputs)

        def get_output_types(self) -> list[dict]:
            return self._ports(self._model.outputs)

        async def predict(
            self, payload: InferRequest, headers: dict | None = None, response_headers: dict | None = None
        ) -> InferResponse:
            feed = {tensor.name: tensor.as_numpy() for tensor in payload.inputs}
            results = await asyncio.to_thread(self._infer, feed)
            outputs = []
            for port, declared in zip(self._compiled.outputs, self._model.outputs, strict=True):
                array = np.ascontiguousarray(results[port])
                output = InferOutput(declared.get_any_name(), list(array.shape), _OV_TO_KSERVE[port.get_element_type()])
                output.set_data_from_numpy(array, binary_data=True)
                outputs.append(output)
            return InferResponse(
                payload.id, self.model_name, outputs, model_version=self.version, use_binary_outputs=True
            )

        def _infer(self, feed: dict) -> dict:
            request = self._compiled.create_infer_request()
            request.infer(feed)
            return {port: request.get_tensor(port).data.copy() for port in self._compiled.outputs}

    core = ov.Core()
    models: list[OpenVINOModel] = []
    versions: dict[str, list[str]] = {}
    for model_dir in sorted(p for p in options.repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
        numbers = sorted(
            int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0
        )
        for number in numbers:
            version_dir = model_dir / str(number)
            if not (version_dir / "model.xml").is_file():
                continue
            model = OpenVINOModel(f"{model_dir.name}/{number}", model_dir.name, str(number), version_dir, core)
            model.load()
            models.append(model)
            versions.setdefault(model_dir.name, []).append(str(number))
            logging.getLogger("kserve-standin").info("loaded %s version %d", model_dir.name, number)

    def resolve(name: str, version: str) -> str:
        known = versions.get(name)
        if not known:
            raise ModelNotFound(name)
        if not version:
            return f"{name}/{known[-1]}"
        if version not in known:
            raise ModelNotFound(f"{name} version {version}")
        return f"{name}/{version}"

    class VersionedServicer(InferenceServicer):
        """KServe's servicer with versions: (name, version) -> the registered entry ``name/version``."""

        async def ModelReady(self, request: pb.ModelReadyRequest, context: object) -> pb.ModelReadyResponse:  # noqa: N802
            key = resolve(request.name, request.version)
            return await super().ModelReady(pb.ModelReadyRequest(name=key), context)

        async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: object) -> pb.ModelMetadataResponse:  # noqa: N802
            key = resolve(request.name, request.version)
            response = await super().ModelMetadata(pb.ModelMetadataRequest(name=key), context)
            response.name = request.name
            response.versions.extend(versions[request.name])
            return response

        async def ModelInfer(self, request: pb.ModelInferRequest, context: object) -> pb.ModelInferResponse:  # noqa: N802
            key = resolve(request.model_name, request.model_version)
            request.model_name = key
            response = await super().ModelInfer(request, context)
            response.model_name, response.model_version = key.split("/")
            return response

    async def start_on_loopback(self: grpc_server.GRPCServer, max_workers: int) -> None:
        """kserve's GRPCServer.start, but bound to loopback, with versions, announcing readiness."""
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
        self._server.add_insecure_port(f"127.0.0.1:{options.grpc_port}")
        await self._server.start()
        print(f"kserve stand-in ready on port {options.grpc_port}", flush=True)
        await self._server.wait_for_termination()

    original_rest_init = rest_server.RESTServer.__init__

    def rest_on_loopback(self: rest_server.RESTServer, *args: object, **kwargs: object) -> None:
        original_rest_init(self, *args, **kwargs)
        self.config.host = "127.0.0.1"  # kserve hard-codes 0.0.0.0

    grpc_server.GRPCServer.start = start_on_loopback
    rest_server.RESTServer.__init__ = rest_on_loopback
    kserve.ModelServer(grpc_port=options.grpc_port, http_port=options.http_port, enable_latency_logging=False).start(
        models
    )


if __name__ == "__main__":
    main()
