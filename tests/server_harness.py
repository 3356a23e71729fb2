"""The real server in a subprocess (visinspect_server.local.LocalServer) plus test conveniences."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc

from visinspect_api.v1 import inspection_pb2_grpc
from visinspect_server.local import LocalServer


class ServerProcess(LocalServer):
    """A LocalServer with the helpers tests use."""

    def stub(self, channel: grpc.Channel) -> inspection_pb2_grpc.InspectionServiceStub:
        return inspection_pb2_grpc.InspectionServiceStub(channel)

    def wait_for_log(self, text: str, timeout_s: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for entry in list(self.logs):
                if text in entry.get("message", ""):
                    return entry
            time.sleep(0.05)
        raise TimeoutError(f"no log line containing {text!r}; last lines: {self.logs[-5:]}")


def start_server(
    repository: Path,
    extra_args: Sequence[str] = (),
    wait_serving: bool = True,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    env: Mapping[str, str] | None = None,
) -> ServerProcess:
    """Start the server on free ports polling the repository every 0.3 s; return once it listens/serves.

    ``credentials`` (TLS) are used by the health checks and ``channel()``; ``env`` adds environment variables.
    """
    server = ServerProcess(repository, ["--poll-interval-s", "0.3", *extra_args], credentials=credentials, env=env)
    server.start(wait_serving=wait_serving)
    return server
