"""``visinspect-server serve --model-repository PATH``: the gRPC facade's entry point."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from visinspect_server.backends import BackendUnavailableError
from visinspect_server.settings import ServerSettings, add_arguments, settings_from

if TYPE_CHECKING:
    from visinspect_server.grpc.security import ServerSecurity


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags and environment into settings, then serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="visinspect-server", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve the models of a repository over gRPC")
    add_arguments(serve_parser)
    health_parser = commands.add_parser("health", help="exit 0 when a server reports SERVING (container checks)")
    health_parser.add_argument("--address", default="127.0.0.1:50051", help="host:port of the server")
    health_parser.add_argument("--service", default="", help="'' for the whole server, model/<name> for one model")
    health_parser.add_argument("--timeout-s", type=float, default=3.0)
    health_parser.add_argument("--tls-ca", type=Path, help="PEM CA certificate: connect with TLS, verifying the server")
    health_parser.add_argument("--tls-cert", type=Path, help="PEM client certificate (mutual TLS, with --tls-key)")
    health_parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    health_parser.add_argument("--tls-server-name", help="name to check in the server's certificate")
    args = parser.parse_args(argv)
    if args.command == "health":
        try:
            tls = HealthTls.from_args(args)
        except ValueError as exc:
            return _usage_error(health_parser, exc)
        return check_health(args.address, args.service, args.timeout_s, tls)
    from visinspect_server.grpc.security import ServerSecurity  # noqa: PLC0415 - keep --help light

    try:
        settings = settings_from(args)
        security = ServerSecurity.from_settings(settings)
    except ValueError as exc:
        return _usage_error(serve_parser, exc)
    try:
        asyncio.run(serve(settings, security))
    except BackendUnavailableError as exc:  # e.g. --backend kserve without the [kserve] extra
        return _usage_error(serve_parser, exc)
    return 0


def _usage_error(parser: argparse.ArgumentParser, error: Exception) -> int:
    """One line on stderr and exit status 2, as argparse does for bad flags (without the long usage text)."""
    print(f"{parser.prog}: error: {error}", file=sys.stderr)
    return 2


@dataclass(frozen=True)
class HealthTls:
    """The TLS options of ``health``: the CA that verifies the server, an optional client certificate."""

    ca: bytes
    cert: bytes | None
    key: bytes | None
    server_name: str | None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> HealthTls | None:
        """None without ``--tls-ca``; ValueError for an unreadable file or a certificate without its key."""
        if (args.tls_cert is None) != (args.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if args.tls_ca is None:
            if args.tls_cert is not None or args.tls_server_name is not None:
                raise ValueError("--tls-cert, --tls-key and --tls-server-name need --tls-ca")
            return None
        files = {"--tls-ca": args.tls_ca, "--tls-cert": args.tls_cert, "--tls-key": args.tls_key}
        data: dict[str, bytes | None] = {}
        for flag, path in files.items():
            try:
                data[flag] = None if path is None else path.read_bytes()
            except OSError as exc:
                raise ValueError(f"cannot read {flag} {str(path)!r}: {exc.strerror}") from None
        ca = data["--tls-ca"]
        assert ca is not None
        return cls(ca, data["--tls-cert"], data["--tls-key"], args.tls_server_name)


def check_health(address: str, service: str, timeout_s: float, tls: HealthTls | None = None) -> int:
    """Print the health status of ``service`` at ``address``; 0 when SERVING, 1 otherwise."""
    import grpc  # noqa: PLC0415
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    try:
        if tls is None:
            channel = grpc.insecure_channel(address)
        else:
            credentials = grpc.ssl_channel_credentials(tls.ca, tls.key, tls.cert)
            options = [] if tls.server_name is None else [("grpc.ssl_target_name_override", tls.server_name)]
            channel = grpc.secure_channel(address, credentials, options=options)
        with channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
    except grpc.RpcError as exc:
        print(f"{address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


async def serve(settings: ServerSettings, security: ServerSecurity | None = None) -> None:
    """Run the server until a termination signal, then drain it."""
    from visinspect_server.app import InspectionServer  # noqa: PLC0415 - keep --help free of OpenVINO
    from visinspect_server.observability import configure_logging, quiet_native_decoders  # noqa: PLC0415

    configure_logging(settings.log_level, settings.log_json)
    quiet_native_decoders()
    server = InspectionServer(settings, security=security)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if settings.ready_file is not None:
        settings.ready_file.unlink(missing_ok=True)  # one left by an earlier run must not announce this one
    await server.start()
    if settings.ready_file is not None:
        metrics_port = server.metrics_port if settings.metrics_port >= 0 else None
        ready = {"pid": os.getpid(), "port": server.port, "metrics_port": metrics_port, "host": settings.host}
        write_ready_file(settings.ready_file, ready)
    await stop.wait()
    if not await server.stop(abandon_busy_transport=True):
        logging.shutdown()  # flush the log, then leave without stopping gRPC: see InspectionServer.stop
        os._exit(0)


def write_ready_file(path: Path, document: Mapping[str, object]) -> None:
    """Write ``document`` as JSON to ``path`` atomically: a reader sees no file or the whole of it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(document))
    os.replace(temporary, path)


if __name__ == "__main__":
    sys.exit(main())
