"""Run the server as a child process on this machine: for notebooks, the demo, benchmarks and tests.

>>> with LocalServer(Path("model_repository")) as server:
...     print(server.address)  # 127.0.0.1:<free port>, serving
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


class LocalServer:
    """``visinspect-server serve`` on free loopback ports, with its JSON log lines collected.

    Give ``credentials`` (``grpc.ssl_channel_credentials``, with a client certificate for mutual TLS) when
    ``extra_args`` turn TLS on: the health checks use them. ``env`` adds environment variables for the child.
    ``host`` is the loopback address it listens on (e.g. 127.0.0.2 for a second server on the same port).
    """

    def __init__(
        self,
        repository: Path,
        extra_args: Sequence[str] = (),
        startup_timeout_s: float = 120.0,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.repository = repository
        self.host = host
        self.extra_args = tuple(extra_args)
        self.startup_timeout_s = startup_timeout_s
        self.credentials = credentials
        self.env = dict(env or {})
        self.logs: list[dict] = []
        self.port = 0
        self.metrics_port = 0
        self.process: subprocess.Popen[str] | None = None
        self._listening = threading.Event()

    @property
    def address(self) -> str:
        """``host:port`` for clients."""
        return f"{self.host}:{self.port}"

    def start(self, wait_serving: bool = True) -> LocalServer:
        """Start the process; return once it listens (and, by default, serves a model)."""
        command = [
            sys.executable, "-m", "visinspect_server.main", "serve", "--model-repository", str(self.repository),
            "--host", self.host, "--port", "0", "--metrics-port", "0", "--log-json", "true", *self.extra_args,
        ]  # fmt: skip
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        threading.Thread(target=self._collect_logs, daemon=True).start()
        if not self._listening.wait(self.startup_timeout_s):
            self.process.kill()
            raise RuntimeError(f"the server did not start; last log lines: {self.logs[-10:]}")
        if wait_serving:
            self.wait_for_health(SERVING)
        return self

    def channel(self) -> grpc.Channel:
        """A new channel to the server: TLS with ``credentials`` when given, else plaintext."""
        if self.credentials is None:
            return grpc.insecure_channel(self.address)
        return grpc.secure_channel(self.address, self.credentials)

    def health(self, service: str = "") -> int:
        """The health status of ``service`` ("" is the whole server)."""
        with self.channel() as channel:
            request = health_pb2.HealthCheckRequest(service=service)
            return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status

    def wait_for_health(self, status: int, service: str = "", timeout_s: float | None = None) -> None:
        """Poll until ``service`` reports ``status``."""
        deadline = time.monotonic() + (timeout_s or self.startup_timeout_s)
        while time.monotonic() < deadline:
            try:
                if self.health(service) == status:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"health of {service!r} never became {status}; last log lines: {self.logs[-5:]}")

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (graceful drain) and wait; return the exit status."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def __enter__(self) -> LocalServer:
        return self.start() if self.process is None else self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _collect_logs(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                entry = {"message": line.rstrip()}
            self.logs.append(entry)
            message = str(entry.get("message", ""))
            if message.startswith("listening on port"):
                words = message.replace(";", "").split()
                self.port, self.metrics_port = int(words[3]), int(words[-1])
                self._listening.set()
