"""``visinspect-server serve --model-repository PATH``: the gRPC facade's entry point."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from visinspect_server.settings import ServerSettings, add_arguments, settings_from


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
    args = parser.parse_args(argv)
    if args.command == "health":
        return check_health(args.address, args.service, args.timeout_s)
    try:
        settings = settings_from(args)
    except ValueError as exc:
        parser.error(str(exc))
    asyncio.run(serve(settings))
    return 0


def check_health(address: str, service: str, timeout_s: float) -> int:
    """Print the health status of ``service`` at ``address``; 0 when SERVING, 1 otherwise."""
    import grpc  # noqa: PLC0415
    from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: PLC0415

    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
    except grpc.RpcError as exc:
        print(f"{address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


async def serve(settings: ServerSettings) -> None:
    """Run the server until a termination signal, then drain it."""
    from visinspect_server.app import InspectionServer  # noqa: PLC0415 - keep --help free of OpenVINO
    from visinspect_server.observability import configure_logging, quiet_native_decoders  # noqa: PLC0415

    configure_logging(settings.log_level, settings.log_json)
    quiet_native_decoders()
    server = InspectionServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    await stop.wait()
    await server.stop()


if __name__ == "__main__":
    sys.exit(main())
