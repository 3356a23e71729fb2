"""Run the server as a child process on this machine: for notebooks, the demo, benchmarks and tests.

>>> with LocalServer(Path("model_repository")) as server:
...     print(server.address)  # 127.0.0.1:<free port>, serving

The child says it is up in a machine-readable way: started with ``--ready-file PATH``, it writes a small JSON
document there (atomically) once it listens; for the server ``{"pid": ..., "port": ..., "metrics_port": ...,
"host": ...}``. :class:`ChildProcess` passes a file in a fresh temporary folder, waits for it and fails fast, with
the child's last output lines, when the child exits first. Other children that follow the same convention (the
KServe stand-in of the tests) reuse it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Generic, Self, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
READY_FILE_FLAG = "--ready-file"
READY_POLL_S = 0.05
TAIL_LINES = 10

LineT = TypeVar("LineT")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (for a child that must keep its port across a restart)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def read_ready_file(path: Path) -> dict[str, Any]:
    """The JSON object a child wrote to its ready file."""
    document = json.loads(path.read_text())
    if not isinstance(document, dict):
        raise ValueError(f"{path} does not hold a JSON object: {document!r}")
    return document


class ChildProcess(Generic[LineT]):
    """A child process that writes a ready file (``--ready-file``) once it is up; its output lines are collected.

    ``lines`` holds every line the child prints (stderr, or stdout and stderr merged) as :meth:`parse_line` makes
    it: all of them, or about the newest ``max_lines`` when that is set (then indexes from :meth:`mark` do not
    hold). Subclasses build the command and call :meth:`launch`.
    """

    label = "process"

    def __init__(self, startup_timeout_s: float, *, max_lines: int | None = None) -> None:
        self.startup_timeout_s = startup_timeout_s
        self.max_lines = max_lines
        self.process: subprocess.Popen[bytes] | None = None
        self.lines: list[LineT] = []
        self.ready: dict[str, Any] = {}
        self._grew = threading.Condition()
        self._output_closed = False
        self._partial = b""

    def parse_line(self, line: str) -> LineT:
        """One output line as kept in ``lines`` (without its line break)."""
        raise NotImplementedError

    def launch(
        self, command: Sequence[str], env: Mapping[str, str] | None = None, *, merge_output: bool = False
    ) -> dict[str, Any]:
        """Start ``command`` with ``--ready-file``; return the ready file's JSON object once the child wrote it.

        ``env`` adds environment variables. The child's stderr is collected; with ``merge_output`` its stdout too
        (else stdout is discarded). Every line the child printed before it wrote the file is in ``lines`` on
        return. RuntimeError when the child exits first or is not ready within ``startup_timeout_s`` (then it is
        killed).
        """
        environment = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        stdout = subprocess.PIPE if merge_output else subprocess.DEVNULL
        stderr = subprocess.STDOUT if merge_output else subprocess.PIPE
        with tempfile.TemporaryDirectory(prefix="visinspect-ready-") as folder:
            ready_file = Path(folder) / "ready.json"
            self._output_closed, self._partial = False, b""
            self.process = process = subprocess.Popen(
                [*command, READY_FILE_FLAG, str(ready_file)], stdout=stdout, stderr=stderr, env=environment
            )
            stream = process.stdout if merge_output else process.stderr
            assert stream is not None
            deadline = time.monotonic() + self.startup_timeout_s
            while not ready_file.exists():
                if process.poll() is not None:
                    while self._read(stream, 1.0):  # the last lines explain why
                        pass
                    raise RuntimeError(
                        f"the {self.label} exited with status {process.returncode} before it was ready; "
                        f"last lines: {self.tail()}"
                    )
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"the {self.label} was not ready within {self.startup_timeout_s:.0f} s; "
                        f"last lines: {self.tail()}"
                    )
                if self._read(stream, READY_POLL_S) is None:
                    time.sleep(READY_POLL_S)  # its output is closed; it is exiting
            # The child flushed these lines before it wrote the file: read until the pipe is empty.
            while self._read(stream, 0):
                pass
            self.ready = read_ready_file(ready_file)
        threading.Thread(target=self._read_to_end, args=(stream,), daemon=True).start()
        return self.ready

    @property
    def pid(self) -> int:
        """The child's process id."""
        assert self.process is not None, "not started"
        return self.process.pid

    def running(self) -> bool:
        """Whether the child was started and has not exited."""
        return self.process is not None and self.process.poll() is None

    def tail(self, count: int = TAIL_LINES) -> list[LineT]:
        """The last ``count`` lines."""
        with self._grew:
            return self.lines[-count:]

    def mark(self) -> int:
        """The number of lines so far: a ``since`` for :meth:`wait_for_line`."""
        with self._grew:
            return len(self.lines)

    def wait_for_line(
        self, matches: Callable[[LineT], bool], since: int = 0, timeout_s: float = 60.0, what: str = "matching line"
    ) -> int:
        """The index of the first line from ``since`` on that ``matches``: TimeoutError when none comes within
        ``timeout_s``, RuntimeError when the child exits without printing one (``what`` names it in the errors)."""

        def found() -> int | None:
            return next((i for i in range(since, len(self.lines)) if matches(self.lines[i])), None)

        def over() -> bool:
            return found() is not None or self._output_closed or not self.running()

        with self._grew:
            if not self._grew.wait_for(over, timeout_s):
                raise TimeoutError(f"no {what} within {timeout_s} s; last lines: {self.lines[-TAIL_LINES:]}")
            index = found()
        if index is None:
            code = None if self.process is None else self.process.poll()
            raise RuntimeError(f"the {self.label} exited ({code}) without a {what}; last lines: {self.tail()}")
        return index

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the child."""
        assert self.process is not None, "not started"
        self.process.send_signal(signum)

    def kill(self, timeout_s: float = 30.0) -> None:
        """SIGKILL (when it still runs) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout_s)

    def stop(self, timeout_s: float = 30.0, *, kill_on_timeout: bool = False) -> int:
        """SIGTERM (graceful) and wait; return the exit status (0 when never started).

        A child still there after ``timeout_s`` raises ``subprocess.TimeoutExpired``, or with ``kill_on_timeout``
        gets SIGKILL.
        """
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            if not kill_on_timeout:
                raise
        self.process.kill()
        return self.process.wait(timeout_s)

    def _read(self, stream: IO[bytes], timeout_s: float | None) -> int | None:
        """Read what the child printed, waiting up to ``timeout_s`` (None: no limit) for it; the number of bytes
        (0: nothing yet), None at the end of its output."""
        if self._output_closed:
            return None
        readable, _, _ = select.select([stream], [], [], timeout_s)
        if not readable:
            return 0
        chunk = os.read(stream.fileno(), 1 << 16)
        *complete, self._partial = (self._partial + chunk).split(b"\n")
        if not chunk and self._partial:
            complete, self._partial = [self._partial], b""
        lines = [self.parse_line(raw.decode(errors="replace").rstrip("\r")) for raw in complete]
        with self._grew:
            self.lines.extend(lines)
            if self.max_lines is not None and len(self.lines) > 2 * self.max_lines:
                del self.lines[: -self.max_lines]
            self._output_closed = not chunk  # the child is gone (or closed its output)
            self._grew.notify_all()
        if not chunk:
            stream.close()
            return None
        return len(chunk)

    def _read_to_end(self, stream: IO[bytes]) -> None:
        while self._read(stream, None) is not None:
            pass


class LocalServer(ChildProcess[dict[str, Any]]):
    """``visinspect-server serve`` on free loopback ports, with its JSON log lines collected (``logs``).

    Give ``credentials`` (``grpc.ssl_channel_credentials``, with a client certificate for mutual TLS) when
    ``extra_args`` turn TLS on: the health checks use them. ``env`` adds environment variables for the child.
    ``host`` is the loopback address it listens on (e.g. 127.0.0.2 for a second server on the same port).
    ``extra_args`` come last, so they override the defaults (e.g. ``--metrics-port -1``). ``max_log_lines``
    bounds ``logs`` for long runs.
    """

    label = "server"

    def __init__(
        self,
        repository: Path,
        extra_args: Sequence[str] = (),
        startup_timeout_s: float = 120.0,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        env: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        max_log_lines: int | None = None,
    ) -> None:
        super().__init__(startup_timeout_s, max_lines=max_log_lines)
        self.repository = repository
        self.host = host
        self.extra_args = tuple(extra_args)
        self.credentials = credentials
        self.env = dict(env or {})
        self.port = 0
        self.metrics_port = 0

    @property
    def logs(self) -> list[dict[str, Any]]:
        """The JSON log lines so far (a line that is not JSON as ``{"message": line}``)."""
        return self.lines

    @property
    def address(self) -> str:
        """``host:port`` for clients."""
        return f"{self.host}:{self.port}"

    def parse_line(self, line: str) -> dict[str, Any]:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry = None
        return entry if isinstance(entry, dict) else {"message": line}

    def start(self, wait_serving: bool = True) -> Self:
        """Start the process; return once it listens (and, by default, serves a model)."""
        command = [
            sys.executable, "-m", "visinspect_server.main", "serve", "--model-repository", str(self.repository),
            "--host", self.host, "--port", "0", "--metrics-port", "0", "--log-json", "true", *self.extra_args,
        ]  # fmt: skip
        ready = self.launch(command, self.env)
        self.port = int(ready["port"])
        self.metrics_port = int(ready.get("metrics_port") or 0)
        if wait_serving:
            try:
                self.wait_for_health(SERVING)
            except BaseException:
                self.kill()
                raise
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
            return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status)

    def wait_for_health(self, status: int, service: str = "", timeout_s: float | None = None) -> None:
        """Poll until ``service`` reports ``status``; RuntimeError at once when the process has exited."""
        deadline = time.monotonic() + (timeout_s or self.startup_timeout_s)
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}); last log lines: {self.tail(5)}")
            try:
                if self.health(service) == status:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"health of {service!r} never became {status}; last log lines: {self.tail(5)}")

    def __enter__(self) -> Self:
        return self.start() if self.process is None else self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
