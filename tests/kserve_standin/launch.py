"""Start the KServe v2 stand-in (serve.py) in its own virtualenv: the one launcher of the tests and the benchmarks.

It is a :class:`visinspect_server.local.ChildProcess`: started with ``--ready-file``, waited for until serve.py
writes it, its stdout and stderr kept as ``lines`` (the state changes tests wait on).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Self

from visinspect_server.local import ChildProcess, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
KSERVE_PYTHON = REPO_ROOT / ".venv-kserve" / "bin" / "python"  # kserve cannot share a process with tritonclient
SERVE = Path(__file__).resolve().with_name("serve.py")
KSERVE_VENV_MISSING = (
    f"the kserve virtualenv is absent ({KSERVE_PYTHON}); create it with: python3.11 -m venv .venv-kserve && "
    ".venv-kserve/bin/pip install 'kserve==0.21.0' 'openvino==2026.4.1' numpy"
)


class StandIn(ChildProcess[str]):
    """The stand-in serving ``repository`` on a loopback gRPC port (``port``, else a free one), with serve.py's
    ``flags`` (``--poll-seconds``, ``--load-delay-seconds``, ...). ``max_lines`` bounds ``lines`` for long runs."""

    label = "kserve stand-in"

    def __init__(
        self,
        repository: Path,
        port: int | None = None,
        flags: Sequence[str] = (),
        *,
        startup_timeout_s: float = 120.0,
        max_lines: int | None = None,
    ) -> None:
        super().__init__(startup_timeout_s, max_lines=max_lines)
        self.repository = repository
        self.port = port or free_port()
        self.flags = tuple(flags)

    @property
    def address(self) -> str:
        """host:port of its KServe v2 gRPC endpoint."""
        return f"127.0.0.1:{self.port}"

    def parse_line(self, line: str) -> str:
        return line.rstrip()

    def start(self) -> Self:
        """Start it; return once it serves (the gRPC server is up and the repository's first load is done)."""
        command = [
            str(KSERVE_PYTHON), str(SERVE), "--repository", str(self.repository),
            "--grpc-port", str(self.port), "--http-port", str(free_port()), *self.flags,
        ]  # fmt: skip
        self.port = int(self.launch(command, merge_output=True)["port"])
        return self

    def wait_line(self, text: str, since: int = 0, timeout_s: float = 20.0) -> int:
        """The index of the first line from ``since`` on that contains ``text``."""
        return self.wait_for_line(lambda line: text in line, since, timeout_s, what=f"line {text!r}")

    def events(self, since: int, prefix: str) -> list[str]:
        """The lines from ``since`` on that start with ``prefix``."""
        with self._grew:
            return [line for line in self.lines[since:] if line.startswith(prefix)]
