"""Run the real server in a subprocess on free ports and talk to it over gRPC."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from visinspect_api.v1 import inspection_pb2_grpc

STARTUP_TIMEOUT_S = 120.0


@dataclass
class ServerProcess:
    """A server subprocess, its ports and its log lines (parsed JSON)."""

    process: subprocess.Popen[str]
    port: int
    metrics_port: int
    logs: list[dict] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def stub(self, channel: grpc.Channel) -> inspection_pb2_grpc.InspectionServiceStub:
        return inspection_pb2_grpc.InspectionServiceStub(channel)

    def health(self, service: str = "") -> int:
        with self.channel() as channel:
            request = health_pb2.HealthCheckRequest(service=service)
            return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status

    def wait_for_health(self, status: int, service: str = "", timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.health(service) == status:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"health of {service!r} never became {status}; logs: {self.logs[-5:]}")

    def wait_for_log(self, text: str, timeout_s: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for entry in list(self.logs):
                if text in entry.get("message", ""):
                    return entry
            time.sleep(0.05)
        raise TimeoutError(f"no log line containing {text!r}; last lines: {self.logs[-5:]}")

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)


def start_server(repository: Path, extra_args: Sequence[str] = (), wait_serving: bool = True) -> ServerProcess:
    """Start ``visinspect-server serve`` on free ports; return once it listens (and serves, if asked)."""
    command = [
        sys.executable, "-m", "visinspect_server.main", "serve", "--model-repository", str(repository),
        "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--poll-interval-s", "0.3",
        "--log-json", "true", *extra_args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    logs: list[dict] = []
    ready = threading.Event()
    ports: dict[str, int] = {}

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                entry = {"message": line.rstrip()}
            logs.append(entry)
            message = entry.get("message", "")
            if message.startswith("listening on port"):
                words = message.replace(";", "").split()
                ports["grpc"], ports["metrics"] = int(words[3]), int(words[-1])
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(STARTUP_TIMEOUT_S):
        process.kill()
        raise RuntimeError(f"server did not start: {logs[-10:]}")
    server = ServerProcess(process=process, port=ports["grpc"], metrics_port=ports["metrics"], logs=logs)
    if wait_serving:
        server.wait_for_health(health_pb2.HealthCheckResponse.SERVING)
    return server
