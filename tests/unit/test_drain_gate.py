"""The drain's pieces without a model: the call gate and the health service every SDK client watches."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from visinspect_server.drain import CallGate
from visinspect_server.errors import UnavailableError
from visinspect_server.grpc.health import NOT_SERVING, SERVICE_UNKNOWN, SERVING, HealthService


def test_the_gate_counts_calls_and_refuses_new_ones_once_closed() -> None:
    counts: list[int] = []

    async def scenario() -> None:
        gate = CallGate(on_count=counts.append)
        release = asyncio.Event()

        async def call() -> str:
            with gate.admit():
                await release.wait()
                return "done"

        running = [asyncio.create_task(call()) for _ in range(3)]
        await asyncio.sleep(0)
        assert gate.in_flight == 3
        gate.close()
        with pytest.raises(UnavailableError, match="shutting down: retry on another replica"), gate.admit():
            pass
        assert gate.in_flight == 3 and not gate.is_open
        release.set()
        assert await asyncio.gather(*running) == ["done"] * 3
        assert gate.in_flight == 0

    asyncio.run(scenario())
    assert counts == [1, 2, 3, 2, 1, 0]


def test_drained_waits_for_the_calls_then_for_callers_to_go_quiet() -> None:
    async def scenario() -> tuple[float, float, bool, int]:
        gate = CallGate()
        release = asyncio.Event()

        async def call() -> None:
            with gate.admit():
                await release.wait()

        task = asyncio.create_task(call())
        await asyncio.sleep(0)
        gate.close()
        draining = asyncio.create_task(gate.drained(time.monotonic() + 60, quiet_s=0.2))
        await asyncio.sleep(0.05)
        assert not draining.done(), "a call is in flight"
        release.set()
        await task
        finished = time.monotonic()
        outcome = await draining
        return finished, time.monotonic(), outcome.quiet, outcome.cut_short

    finished, drained_at, quiet, cut_short = asyncio.run(scenario())
    assert quiet and cut_short == 0
    assert drained_at - finished >= 0.2, "it waited for the quiet period after the last call"


def test_at_the_deadline_the_calls_still_running_are_cancelled_and_marked_expired() -> None:
    async def scenario() -> tuple[bool, int, bool, list[str]]:
        gate = CallGate()
        ended: list[str] = []

        async def stuck() -> None:
            try:
                with gate.admit():
                    await asyncio.Event().wait()
            except asyncio.CancelledError:
                ended.append("expired" if gate.expired else "cancelled")
                raise

        tasks = [asyncio.create_task(stuck()) for _ in range(2)]
        await asyncio.sleep(0)
        gate.close()
        outcome = await gate.drained(time.monotonic() + 0.1)
        await asyncio.gather(*tasks, return_exceptions=True)
        return outcome.quiet, outcome.cut_short, gate.expired, ended

    quiet, cut_short, expired, ended = asyncio.run(scenario())
    assert (quiet, cut_short, expired) == (False, 2, True)
    assert ended == ["expired", "expired"]


def test_callers_that_keep_arriving_keep_the_drain_from_going_quiet() -> None:
    async def scenario() -> bool:
        gate = CallGate()
        gate.close()

        async def knock() -> None:
            while True:
                with pytest.raises(UnavailableError), gate.admit():
                    pass
                await asyncio.sleep(0.01)

        knocking = asyncio.create_task(knock())
        outcome = await gate.drained(time.monotonic() + 0.5, quiet_s=0.2)
        knocking.cancel()
        return outcome.quiet

    assert asyncio.run(scenario()) is False


def test_every_health_watcher_hears_every_change_even_after_another_watcher_left() -> None:
    """grpcio-health-checking's asyncio servicer forgets the other watchers of a service when one leaves."""

    async def scenario() -> tuple[list[int], list[int]]:
        health = HealthService()
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await health.set("svc", SERVING)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            staying = stub.Watch(health_pb2.HealthCheckRequest(service="svc"))
            leaving = stub.Watch(health_pb2.HealthCheckRequest(service="svc"))
            heard = [(await staying.read()).status]
            assert (await leaving.read()).status == SERVING
            leaving.cancel()
            await asyncio.sleep(0.1)  # let the server see the watcher leave
            await health.set("svc", NOT_SERVING)
            heard.append((await asyncio.wait_for(staying.read(), 10)).status)
            await health.enter_graceful_shutdown()
            unknown = stub.Watch(health_pb2.HealthCheckRequest(service="never-set"))
            other = [(await unknown.read()).status]
            checked = await stub.Check(health_pb2.HealthCheckRequest(service="svc"))
            other.append(checked.status)
            staying.cancel()
            unknown.cancel()
        await server.stop(0)
        return heard, other

    heard, other = asyncio.run(scenario())
    assert heard == [SERVING, NOT_SERVING]
    assert other == [SERVICE_UNKNOWN, NOT_SERVING]


def test_health_after_graceful_shutdown_stays_not_serving() -> None:
    async def scenario() -> list[int | None]:
        health = HealthService()
        await health.set("model/brick", SERVING)
        await health.enter_graceful_shutdown()
        await health.set("model/brick", SERVING)  # ignored
        return [health.status(""), health.status("model/brick"), health.status("nope")]

    assert asyncio.run(scenario()) == [NOT_SERVING, NOT_SERVING, None]
