"""The server's one typed settings object, built in ``main()`` from flags and environment variables.

Every flag ``--some-option`` can also be set with ``VISINSPECT_SOME_OPTION``; a flag wins.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal

from visinspect_api.ovms_config import PERFORMANCE_HINTS, PerformanceHint

BackendName = Literal["embedded", "kserve"]  # the keys of visinspect_server.backends.BACKENDS
ENV_PREFIX = "VISINSPECT_"


@dataclass(frozen=True)
class ServerSettings:
    """Everything the server is configured with. Defaults suit one edge box."""

    model_repository: Path
    host: str = "0.0.0.0"  # noqa: S104 - a server for a factory network listens on all interfaces
    port: int = 50051
    metrics_port: int = 9090
    models: tuple[str, ...] = ()
    poll_interval_s: float = 5.0
    versions_per_model: int = 2
    performance_hint: PerformanceHint = "LATENCY"
    backend: BackendName = "embedded"
    ovms_address: str = "localhost:9000"
    ovms_timeout_s: float = 10.0
    cache_dir: Path = Path.home() / ".cache" / "visinspect" / "openvino"
    image_root: Path | None = None
    max_pixels: int = 40_000_000
    max_message_bytes: int = 64 * 1024 * 1024
    max_file_bytes: int = 64 * 1024 * 1024
    stream_max_in_flight: int = 4
    max_batch_size: int = 4
    batch_wait_ms: float = 2.0
    workers: int = max(2, os.cpu_count() or 2)
    shutdown_grace_s: float = 10.0
    log_level: str = "INFO"
    log_json: bool = True
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    auth_tokens_file: Path | None = None
    auth_tokens: tuple[str, ...] = field(default=(), repr=False)
    max_concurrent_streams: int = 100
    ready_file: Path | None = None

    def __post_init__(self) -> None:
        checks = {
            "port": 0 <= self.port <= 65535,
            "metrics_port": 0 <= self.metrics_port <= 65535 or self.metrics_port == -1,
            "poll_interval_s": self.poll_interval_s > 0,
            "versions_per_model": self.versions_per_model >= 1,
            "max_pixels": self.max_pixels >= 1,
            "max_message_bytes": self.max_message_bytes >= 1024,
            "max_file_bytes": self.max_file_bytes >= 1,
            "stream_max_in_flight": self.stream_max_in_flight >= 1,
            "max_batch_size": self.max_batch_size >= 1,
            "batch_wait_ms": 0 <= self.batch_wait_ms <= 1000,
            "workers": self.workers >= 1,
            "shutdown_grace_s": self.shutdown_grace_s >= 0,
            "performance_hint": self.performance_hint in PERFORMANCE_HINTS,
            "backend": self.backend in ("embedded", "kserve"),
            "ovms_address": _is_host_port(self.ovms_address),
            "ovms_timeout_s": self.ovms_timeout_s > 0,
            "max_concurrent_streams": self.max_concurrent_streams >= 1,
        }
        wrong = [name for name, ok in checks.items() if not ok]
        if wrong:
            raise ValueError(f"invalid setting {wrong[0]}={getattr(self, wrong[0])!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both (TLS) or neither (plaintext)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        if any(not token or any(c.isspace() for c in token) for token in self.auth_tokens):
            raise ValueError("auth_tokens must be non-empty and free of white space")


def _is_host_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit()


_HELP = {
    "model_repository": "OVMS-layout model repository to serve",
    "host": "address to listen on",
    "port": "gRPC port (0 picks a free one)",
    "metrics_port": "Prometheus /metrics HTTP port (0 picks a free one, -1 disables)",
    "models": "comma-separated model names to serve (default: every model in the repository)",
    "poll_interval_s": "seconds between repository scans for new versions",
    "versions_per_model": "newest versions kept loaded per model",
    "performance_hint": "OpenVINO performance hint: LATENCY or THROUGHPUT",
    "backend": "embedded (OpenVINO in this process) or kserve (a KServe v2 gRPC model server: OVMS, Triton, KServe)",
    "ovms_address": "host:port of the KServe v2 gRPC model server (with --backend kserve)",
    "ovms_timeout_s": "deadline in seconds of each call to the model server (with --backend kserve)",
    "cache_dir": "OpenVINO compiled-model cache folder",
    "image_root": "folder that path inputs are resolved under (path inputs are off without it)",
    "max_pixels": "largest image accepted, in pixels (checked from the header, before decoding)",
    "max_message_bytes": "largest gRPC message accepted",
    "max_file_bytes": "largest file read for a path input",
    "stream_max_in_flight": "requests processed at once per stream",
    "max_batch_size": "most images merged into one inference when requests arrive together (1: no batching)",
    "batch_wait_ms": "longest wait for more images while other requests are still being decoded",
    "workers": "threads for decoding and post-processing",
    "shutdown_grace_s": "seconds in-flight requests get to finish on SIGTERM",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "log_json": "JSON log lines (true) or plain text (false)",
    "tls_cert": "PEM certificate chain of the gRPC port; with --tls-key, the port speaks TLS",
    "tls_key": "PEM private key of --tls-cert",
    "tls_client_ca": "PEM CA certificate(s): clients must present a certificate signed by one (mutual TLS)",
    "auth_tokens_file": "file of accepted bearer tokens, one per line ('#' comments and blank lines skipped)",
    "auth_tokens": "comma-separated accepted bearer tokens (prefer the environment variable or the file: "
    "command lines are visible to other local users)",
    "max_concurrent_streams": "most concurrent calls (HTTP/2 streams) one client connection may open",
    "ready_file": "once listening and the first repository scan is done, write a JSON object {pid, port, "
    "metrics_port, host} to this file (atomically)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting; defaults are resolved later, in :func:`settings_from`."""
    for spec in fields(ServerSettings):
        flag = "--" + spec.name.replace("_", "-")
        parser.add_argument(flag, dest=spec.name, default=None, help=_HELP[spec.name])


def settings_from(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> ServerSettings:
    """Merge flags over ``VISINSPECT_*`` environment variables over defaults, converting types."""
    values: dict[str, object] = {}
    for spec in fields(ServerSettings):
        raw = getattr(args, spec.name, None)
        if raw is None:
            raw = environ.get(ENV_PREFIX + spec.name.upper())
        if raw is None:
            continue
        values[spec.name] = _convert(spec.name, str(raw))
    if "model_repository" not in values:
        raise ValueError("--model-repository (or VISINSPECT_MODEL_REPOSITORY) is required")
    return ServerSettings(**values)  # type: ignore[arg-type]


_PATHS = (
    "model_repository",
    "cache_dir",
    "image_root",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "auth_tokens_file",
    "ready_file",
)


def _convert(name: str, raw: str) -> object:  # noqa: PLR0911 - one return per setting type
    default = ServerSettings.__dataclass_fields__[name].default
    if name in _PATHS:
        return Path(raw).expanduser()
    if name in ("models", "auth_tokens"):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if name == "performance_hint":
        return raw.upper()
    if name == "backend":
        return raw.lower()
    if isinstance(default, bool):
        if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(f"{name} must be true or false, got {raw!r}")
        return raw.lower() in ("1", "true", "yes")
    try:
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    return raw


def parse(argv: Sequence[str] | None = None) -> ServerSettings:
    """Parse ``serve`` flags (used by tests and the entry point)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return settings_from(parser.parse_args(argv))
