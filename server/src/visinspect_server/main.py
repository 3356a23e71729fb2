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
    args = parser.parse_args(argv)
    try:
        settings = settings_from(args)
    except ValueError as exc:
        parser.error(str(exc))
    asyncio.run(serve(settings))
    return 0


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
