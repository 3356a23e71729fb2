"""Micro-batching policy: what goes into which batch, who gets which output, errors and cancellations."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from visinspect_server.backends.base import RawOutput
from visinspect_server.batching import BatchingOptions, MicroBatcher, Upstream
from visinspect_server.errors import InspectionError


class GatedBackend:
    """A backend whose outputs are a function of each image; batches wait at a gate the test opens."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.in_flight = 0
        self.most_in_flight = 0
        self.fail_with = fail_with
        self.closed = False
        self.warmed_up_to: int | None = None

    async def infer(self, images: np.ndarray) -> RawOutput:
        self.batches.append([int(image[0, 0, 0]) for image in images])
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.gate.wait()
            if self.fail_with is not None:
                raise self.fail_with
            return RawOutput(
                anomaly_maps=images[..., 0].astype(np.float32) * 2, scores=images[:, 0, 0, 0].astype(np.float32)
            )
        finally:
            self.in_flight -= 1

    def warm_up(self, max_batch: int = 1) -> None:
        self.warmed_up_to = max_batch

    def close(self) -> None:
        self.closed = True


def _image(value: int, count: int = 1) -> np.ndarray:
    return np.full((count, 4, 4, 3), value, np.uint8)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_one_caller_at_a_time_goes_unbatched() -> None:
    async def scenario() -> None:
        backend = GatedBackend()
        batcher = MicroBatcher(backend, BatchingOptions(max_batch=8, max_wait_ms=0), slots=1)
        for value in (3, 4, 5):
            output = await batcher.infer(_image(value))
            assert output.scores.tolist() == [value]
            assert output.anomaly_maps.shape == (1, 4, 4)
            assert float(output.anomaly_maps[0, 0, 0]) == 2 * value
        assert backend.batches == [[3], [4], [5]]

    asyncio.run(scenario())


def test_requests_arriving_while_the_backend_is_busy_leave_together_in_order() -> None:
    async def scenario() -> None:
        backend = GatedBackend()
        backend.gate.clear()
        sizes: list[int] = []
        batcher = MicroBatcher(backend, BatchingOptions(max_batch=8, max_wait_ms=0), slots=1, on_batch=sizes.append)
        first = asyncio.create_task(batcher.infer(_image(1)))
        await _settle()
        rest = [asyncio.create_task(batcher.infer(_image(value))) for value in range(10, 15)]
        await _settle()
        assert backend.batches == [[1]]  # the others wait for the busy slot
        backend.gate.set()
        outputs = await asyncio.gather(first, *rest)
        assert backend.batches == [[1], [10, 11, 12, 13, 14]]
        assert sizes == [1, 5]
        assert [output.scores.tolist() for output in outputs] == [[1], [10], [11], [12], [13], [14]]
        assert all(float(o.anomaly_maps.max()) == 2 * o.scores[0] for o in outputs)

    asyncio.run(scenario())


def test_batches_never_exceed_max_batch() -> None:
    async def scenario() -> None:
        backend = GatedBackend()
        backend.gate.clear()
        batcher = MicroBatcher(backend, BatchingOptions(max_batch=4, max_wait_ms=0), slots=1)
        tasks = [asyncio.create_task(batcher.infer(_image(value))) for value in range(11)]
        await _settle()
        backend.gate.set()
        outputs = await asyncio.gather(*tasks)
        assert backend.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
        assert [int(o.scores[0]) for o in outputs] == list(range(11))

    asyncio.run(scenario())


def test_a_multi_image_call_keeps_its_images_together() -> None:
    async def scenario() -> None:
        backend = GatedBackend()
        backend.gate.clear()
        batcher = MicroBatcher(backend, BatchingOptions(max_batch=4, max_wait_ms=0), slots=1)
        first = asyncio.create_task(batcher.infer(_image(1)))
        await _settle()
        pair = asyncio.create_task(batcher.infer(_image(7, count=3)))
        single = asyncio.create_task(batcher.infer(_image(8)))
        whole = asyncio.create_task(batcher.infer(_image(9, count=4)))  # a full batch on its own goes straight
        await _settle()
        backend.gate.set()
        outputs = await asyncio.gather(first, pair, single, whole)
        assert [o.scores.tolist() for o in outputs] == [[1], [7, 7, 7], [8], [9, 9, 9, 9]]
        assert sorted(map(tuple, backend.batches)) == sorted([(1,), (9, 9, 9, 9), (7, 7, 7, 8)])

    asyncio.run(scenario())


def test_every_slot_runs_a_batch() -> None:
    async def scenario() -> None:
        backend = GatedBackend()
        backend.gate.clear()
        batcher = MicroBatcher(backend, BatchingOptions(max_batch=8, max_wait_ms=0), slots=2)
        tasks = [asyncio.create_task(batcher.infer(_image(value))) for value in range(6)]
        await _settle()
        assert backend.batches == [[0], [1]]  # two slots busy, the rest queued
        backend.gate.set()
        await asyncio.gather(*tasks)
        assert backend.batches[2:] == [[2, 3, 4, 5]]
        assert backend.most_in_flight == 2

    asyncio.run(scenario())


def test_a_backend_error_reaches_every_caller_of_the_batch_and_serving_goes_on() -> None:
    async def scenario() -> None:
        backend = GatedBackend(fail_with=InspectionError("inference failed"))
        backend.gate.clear()
        batcher = MicroBatcher(backend, BatchingOptions(max_batch=8, max_wait_ms=0), slots=1)
        tasks = [asyncio.create_task(batcher.infer(_image(value))) for value in range(4)]
        await _settle()
        backend.gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(result, InspectionError) for result in results)
        backend.fail_with = None
        assert (await batcher.infer(_image(42))).scores.tolist() == [42]

    asyncio.run(scenario())


def test_a_caller_that_gives_up_while_queued_is_not_sent() -> None:
    async def scenario() -> None:
        backend = GatedBackend()
        backend.gate.clear()
        batcher = MicroBatcher(backend, BatchingOptions(max_batch=8, max_wait_ms=0), slots=1)
        first = asyncio.create_task(batcher.infer(_image(1)))
        await _settle()
        leaving = asyncio.create_task(batcher.infer(_image(2)))
        staying = asyncio.create_task(batcher.infer(_image(3)))
        await _settle()
        leaving.cancel()
        await _settle()
        backend.gate.set()
        assert (await staying).scores.tolist() == [3]
        await first
        with pytest.raises(asyncio.CancelledError):
            await leaving
        assert backend.batches == [[1], [3]]

    asyncio.run(scenario())


def test_max_wait_gathers_requests_that_are_still_on_their_way() -> None:
    async def scenario() -> None:
        backend = GatedBackend()
        upstream = Upstream()
        batcher = MicroBatcher(backend, BatchingOptions(max_batch=8, max_wait_ms=200), slots=1, upstream=upstream)
        with upstream.coming():  # a second request is still being decoded
            first = asyncio.create_task(batcher.infer(_image(1)))
            await asyncio.sleep(0.01)
            assert backend.batches == []  # the slot is free, but the batch waits for it
        second = asyncio.create_task(batcher.infer(_image(2)))
        outputs = await asyncio.gather(first, second)
        assert backend.batches == [[1, 2]]  # it left when the awaited request arrived, not after 200 ms
        assert [o.scores.tolist() for o in outputs] == [[1], [2]]

    asyncio.run(scenario())


def test_max_wait_never_delays_a_caller_when_nothing_else_is_coming() -> None:
    async def scenario() -> None:
        backend = GatedBackend()
        batcher = MicroBatcher(backend, BatchingOptions(max_batch=8, max_wait_ms=60_000), slots=1, upstream=Upstream())
        output = await asyncio.wait_for(batcher.infer(_image(5)), timeout=5)
        assert output.scores.tolist() == [5]
        assert backend.batches == [[5]]

    asyncio.run(scenario())


def test_max_wait_ends_when_the_awaited_request_does_not_come() -> None:
    async def scenario() -> None:
        backend = GatedBackend()
        upstream = Upstream()
        batcher = MicroBatcher(backend, BatchingOptions(max_batch=8, max_wait_ms=50), slots=1, upstream=upstream)
        with upstream.coming():  # e.g. a request whose image turns out to be undecodable
            output = await asyncio.wait_for(batcher.infer(_image(6)), timeout=5)
        assert output.scores.tolist() == [6]
        assert backend.batches == [[6]]

    asyncio.run(scenario())


def test_max_wait_is_cut_short_by_a_full_batch() -> None:
    async def scenario() -> None:
        backend = GatedBackend()
        upstream = Upstream()
        batcher = MicroBatcher(backend, BatchingOptions(max_batch=3, max_wait_ms=60_000), slots=1, upstream=upstream)
        with upstream.coming():
            outputs = await asyncio.wait_for(asyncio.gather(*(batcher.infer(_image(v)) for v in range(3))), timeout=5)
        assert backend.batches == [[0, 1, 2]]
        assert [int(o.scores[0]) for o in outputs] == [0, 1, 2]

    asyncio.run(scenario())


def test_warm_up_and_close_reach_the_backend() -> None:
    backend = GatedBackend()
    batcher = MicroBatcher(backend, BatchingOptions(max_batch=6), slots=1)
    batcher.warm_up()
    batcher.close()
    assert backend.warmed_up_to == 6
    assert backend.closed
    assert batcher.backend is backend


@pytest.mark.parametrize(("kwargs", "message"), [({"max_batch": 0}, "max_batch"), ({"max_wait_ms": -1}, "max_wait_ms")])
def test_options_are_checked(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchingOptions(**kwargs)
