"""The SDK against the real server (the tiny model trained once per session)."""

from __future__ import annotations

import asyncio
import struct
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY_IMAGE_SIZE
from tests.load_harness import wait_until_steady
from tests.server_harness import free_port, start_server
from visinspect_api.calibration import expected_false_reject_rate, threshold_for_false_reject_rate
from visinspect_client import (
    AsyncInspectionClient,
    DeadlineExceededError,
    DetectionFailure,
    DetectionResult,
    ImageTooLargeError,
    InspectionClient,
    InvalidImageError,
    ModelInfo,
    NotFoundError,
    PermissionDeniedError,
    RetryPolicy,
    ServerPath,
    ServerUnavailableError,
)
from visinspect_client.overlay import BOX_COLOR

RATE = 0.5  # with the tiny model's 8 good calibration scores: g_(5), below the calibrated g_(8) (0.5)


def first(folder: Path) -> Path:
    return sorted(folder.glob("*.png"))[0]


def rgb_of(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header declaring a huge image over a tiny body."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def client(served) -> Iterator[InspectionClient]:
    with InspectionClient(served.address, timeout=30) as inspection:
        yield inspection


# --- discovery -----------------------------------------------------------------------------------


def test_models_model_and_health(client: InspectionClient, exported) -> None:
    assert client.models() == [ModelInfo(name="brick", versions=(1,), default_version=1)]
    details = client.model()
    assert details == client.model("brick", 1)
    metadata = exported.metadata
    assert (details.name, details.version, details.architecture) == ("brick", 1, "padim")
    assert (details.input_height, details.input_width) == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    assert details.calibration.image_threshold == pytest.approx(metadata.calibration.image_threshold)
    assert details.calibration.pixel_max == pytest.approx(metadata.calibration.pixel_max)
    assert details.default_threshold == 0.5
    assert details.backbone == metadata.backbone.name and details.layers == tuple(metadata.backbone.layers)
    assert details.n_features == 50 and details.inference_precision == "f32"
    assert details.image_auroc == pytest.approx(metadata.evaluation.image_auroc)
    assert details.pixel_auroc == pytest.approx(metadata.evaluation.pixel_auroc)
    assert details.created_at == metadata.created_at
    assert client.health() == "SERVING"
    assert client.health("visinspect.v1.InspectionService") == "SERVING"
    assert client.health("model/brick") == "SERVING"
    assert client.health("model/nope") == "SERVICE_UNKNOWN"
    with pytest.raises(NotFoundError, match="nope"):
        client.model("nope")
    with pytest.raises(NotFoundError):
        client.model("brick", 7)


def test_details_carry_the_calibration_and_evaluation(client: InspectionClient, exported) -> None:
    details = client.model()
    metadata = exported.metadata
    assert details.calibration == metadata.calibration  # the contract's type, every field through the proto
    assert details.calibration.method == "false_reject_rate" and details.calibration.good_scores is not None
    evaluation = metadata.evaluation
    assert details.false_reject_rate == pytest.approx(evaluation.false_reject_rate)
    assert details.defect_recall == pytest.approx(evaluation.defect_recall)
    assert details.recall_by_defect_type == evaluation.recall_by_defect_type
    assert details.pixel_aupro == pytest.approx(evaluation.pixel_aupro)


def test_threshold_for_a_false_reject_rate_decides_as_the_calibration_says(
    client: InspectionClient, synthetic_category: Path
) -> None:
    calibration = client.model().calibration
    assert calibration.good_scores is not None
    threshold = client.threshold_for_false_reject_rate(RATE, "brick", 1)
    assert threshold == calibration.threshold_for_false_reject_rate(RATE) and 0.0 <= threshold < 0.5
    raw_threshold = threshold_for_false_reject_rate(calibration.good_scores, RATE)

    paths = sorted((synthetic_category / "test").rglob("*.png"))
    results = [r for r in client.detect_many(paths, threshold=threshold) if isinstance(r, DetectionResult)]
    assert len(results) == len(paths)
    assert [r.threshold for r in results] == pytest.approx([threshold] * len(paths))  # a float in the response
    rejected = {path for path, r in zip(paths, results, strict=True) if r.is_anomalous}
    by_raw = {path for path, r in zip(paths, results, strict=True) if r.raw_score > raw_threshold}
    assert rejected == by_raw

    rates = client.expected_rates(threshold)
    assert rates.threshold == threshold
    assert rates.false_reject_rate == expected_false_reject_rate(calibration.good_scores, raw_threshold)
    assert RATE - 1 / (calibration.good_scores.count + 1) < rates.false_reject_rate <= RATE
    assert client.expected_rates() == client.model().expected_rates(0.5)
    with pytest.raises(ValueError, match="model brick version 1: .*between 0 and 1"):
        client.threshold_for_false_reject_rate(1.5)


# --- detect: inputs and options --------------------------------------------------------------------


def test_every_input_type_gives_the_same_score(client: InspectionClient, synthetic_category: Path) -> None:
    path = first(synthetic_category / "test" / "scratch")
    rgb = rgb_of(path)
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 17, np.uint8)])
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    inputs = {
        "Path": path,
        "str": str(path),
        "bytes": path.read_bytes(),
        "RGB array": rgb,
        "RGBA array": rgba,
        "non-contiguous RGB view": bgr[..., ::-1],
        "PIL": Image.open(path),
        "PIL RGBA": Image.fromarray(rgba),
        "ServerPath": ServerPath(str(path.relative_to(synthetic_category))),
    }
    results = {name: client.detect(image) for name, image in inputs.items()}
    raw_scores = {name: result.raw_score for name, result in results.items()}
    assert len(set(raw_scores.values())) == 1, raw_scores
    assert {(r.image_width, r.image_height) for r in results.values()} == {(TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)}


def test_grey_inputs_give_the_same_score(client: InspectionClient, synthetic_category: Path, tmp_path: Path) -> None:
    grey_image = Image.open(first(synthetic_category / "test" / "hole")).convert("L")
    grey = np.asarray(grey_image)
    grey_file = tmp_path / "grey.png"
    grey_image.save(grey_file)
    inputs = {
        "HxW array": grey,
        "HxWx1 array": grey[..., np.newaxis],
        "RGB replicated": np.repeat(grey[..., np.newaxis], 3, axis=2),
        "PIL L": grey_image,
        "grey PNG file": grey_file,
    }
    raw_scores = {name: client.detect(image).raw_score for name, image in inputs.items()}
    assert len(set(raw_scores.values())) == 1, raw_scores
    assert raw_scores["HxW array"] != client.detect(first(synthetic_category / "test" / "hole")).raw_score


def test_detect_result_fields(client: InspectionClient, synthetic_category: Path) -> None:
    result = client.detect(first(synthetic_category / "test" / "hole"), request_id="cam-7")
    assert result.request_id == "cam-7"
    assert (result.model, result.version, result.threshold) == ("brick", 1, 0.5)
    assert result.is_anomalous == (result.score > 0.5)
    assert result.confidence == pytest.approx(result.score if result.is_anomalous else 1 - result.score, abs=1e-6)
    assert result.timing.total_ms >= result.timing.inference_ms > 0
    assert result.latency_ms >= result.timing.total_ms
    assert result.anomaly_map is None and result.mask is None and result.regions == ()
    with pytest.raises(AttributeError):
        result.score = 0.0  # type: ignore[misc]


def test_threshold_override_and_pinned_version(client: InspectionClient, synthetic_category: Path) -> None:
    image = first(synthetic_category / "test" / "good")
    low = client.detect(image, threshold=0.0, model="brick", version=1)
    high = client.detect(image, threshold=1.0)
    assert (low.threshold, high.threshold) == (0.0, 1.0)
    assert low.is_anomalous is (low.score > 0.0) and high.is_anomalous is False


def test_extras_at_model_and_original_size(client: InspectionClient, synthetic_category: Path) -> None:
    small = rgb_of(first(synthetic_category / "test" / "hole"))
    large = np.asarray(Image.fromarray(small).resize((256, 192)))
    model_size = client.detect(large, anomaly_map=True, mask=True, regions=True)
    original = client.detect(large, anomaly_map=True, mask=True, regions=True, map_size="original")
    assert model_size.anomaly_map is not None and model_size.anomaly_map.shape == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3)
    assert model_size.mask is not None and model_size.mask.shape == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    assert original.anomaly_map is not None and original.anomaly_map.shape == (192, 256, 3)
    assert original.mask is not None and original.mask.shape == (192, 256) and original.mask.dtype == bool
    assert original.regions and original.regions == model_size.regions  # regions are always in image pixels
    box = original.regions[0]
    assert box.x + box.width <= 256 and box.y + box.height <= 192
    assert original.mask[box.y : box.y + box.height, box.x : box.x + box.width].any()
    assert model_size.overlay(large).shape == large.shape  # the model-size map is resized to the image


# --- overlays --------------------------------------------------------------------------------------


def outline(regions, shape: tuple[int, int]) -> np.ndarray:
    drawn = np.zeros(shape, bool)
    for r in regions:
        drawn[r.y, r.x : r.x + r.width] = drawn[r.y + r.height - 1, r.x : r.x + r.width] = True
        drawn[r.y : r.y + r.height, r.x] = drawn[r.y : r.y + r.height, r.x + r.width - 1] = True
    return drawn


def test_overlay_pixels(client: InspectionClient, synthetic_category: Path, tmp_path: Path) -> None:
    path = first(synthetic_category / "test" / "hole")
    truth = np.asarray(Image.open(synthetic_category / "ground_truth" / "hole" / f"{path.stem}_mask.png")) > 0
    result = client.detect(path, anomaly_map=True, mask=True, regions=True, map_size="original")
    assert result.anomaly_map is not None and result.mask is not None and result.regions
    overlay = result.overlay(path)
    image = rgb_of(path)
    assert overlay.shape == image.shape and overlay.dtype == np.uint8

    # Box outlines (one pixel wide at this size) are drawn in the outline colour, all the way round.
    drawn = outline(result.regions, image.shape[:2])
    assert (overlay[drawn] == BOX_COLOR).all()

    # Everywhere else the overlay is the 0.55 / 0.45 blend of the image and the heat map.
    expected = np.rint(image * 0.55 + result.anomaly_map.astype(np.float64) * 0.45)
    difference = np.abs(overlay.astype(np.float64) - expected)
    assert difference[~drawn].max() <= 1

    # Where the mask is empty the heat map is blue (jet's low end) and the overlay is that blue blend.
    quiet = ~result.mask & ~drawn
    heat = result.anomaly_map.astype(int)
    assert np.mean(heat[quiet][:, 2] > heat[quiet][:, 0]) > 0.9
    # The defect is redder in the overlay than the normal area (the image itself is a red brick texture).
    redness = overlay[..., 0].astype(float) - overlay[..., 2]
    assert redness[truth & ~drawn].mean() > redness[quiet].mean() + 30

    target = tmp_path / "overlays" / "hole.png"
    result.save_overlay(path, target)
    assert np.array_equal(np.asarray(Image.open(target)), overlay)


def test_overlay_of_a_good_image_is_the_plain_blend(client: InspectionClient, synthetic_category: Path) -> None:
    path = first(synthetic_category / "test" / "good")
    result = client.detect(path, anomaly_map=True, mask=True, regions=True, map_size="original")
    assert result.regions == () and result.mask is not None and not result.mask.any()
    image = rgb_of(path)
    expected = np.rint(image * 0.55 + result.anomaly_map.astype(np.float64) * 0.45)
    assert np.abs(result.overlay(image).astype(float) - expected).max() <= 1
    assert (
        np.abs(result.overlay(image, alpha=0.2).astype(float) - np.rint(image * 0.8 + result.anomaly_map * 0.2)).max()
        <= 1
    )


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        (b"not an image at all", {}, InvalidImageError, grpc.StatusCode.INVALID_ARGUMENT, "cannot decode"),
        (None, {"threshold": 1.5}, InvalidImageError, grpc.StatusCode.INVALID_ARGUMENT, "threshold"),
        (None, {"model": "nope"}, NotFoundError, grpc.StatusCode.NOT_FOUND, "nope"),
        (None, {"version": 9}, NotFoundError, grpc.StatusCode.NOT_FOUND, "9"),
        (ServerPath("test/good/999.png"), {}, NotFoundError, grpc.StatusCode.NOT_FOUND, "999.png"),
        (ServerPath("../../etc/passwd"), {}, PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED, "outside"),
        (png_declaring(50000, 50000), {}, ImageTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED, "50000x50000"),
    ],
    ids=["undecodable", "threshold", "model", "version", "missing-file", "outside-root", "pixel-budget"],
)
def test_server_errors_map_to_exceptions(client: InspectionClient, served, synthetic_category: Path, case) -> None:
    image, options, exception, code, words = case
    image = first(synthetic_category / "test" / "good") if image is None else image
    with pytest.raises(exception) as caught:
        client.detect(image, **options)
    error = caught.value
    assert error.code == code
    assert isinstance(error.__cause__, grpc.RpcError) and error.__cause__.code() == code
    assert words in str(error) and served.address in str(error)
    assert error.details and error.details in str(error)


def test_deadline_exceeded(client: InspectionClient, synthetic_category: Path) -> None:
    with pytest.raises(DeadlineExceededError) as caught:
        client.detect(first(synthetic_category / "test" / "good"), timeout=0.0005)
    assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "0.0005 s" in str(caught.value)
    assert client.detect(first(synthetic_category / "test" / "good")).model == "brick"  # the client still works


def test_unavailable_without_retries_fails_fast(synthetic_category: Path) -> None:
    target = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with InspectionClient(target, retry=None) as offline, pytest.raises(ServerUnavailableError) as caught:
        offline.detect(first(synthetic_category / "test" / "good"))
    assert time.monotonic() - started < 10.0  # one attempt, no back-off (attempts are counted in the unit tests)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert target in str(caught.value) and "running" in str(caught.value)
    assert isinstance(caught.value.__cause__, grpc.RpcError)


def test_local_input_errors_need_no_server(synthetic_category: Path, tmp_path: Path) -> None:
    with InspectionClient(f"127.0.0.1:{free_port()}", retry=None) as offline:  # nothing listens: no call is made
        for image, words in (
            (tmp_path / "missing.png", "does not exist"),
            (np.zeros((8, 8, 3), np.float64), "uint8"),
            (np.zeros((8, 8, 5), np.uint8), "shape"),
            (3.14, "unsupported image type float"),
        ):
            with pytest.raises(InvalidImageError, match=words) as caught:
                offline.detect(image)
            assert not isinstance(caught.value.__cause__, grpc.RpcError)


def test_retry_reaches_a_server_that_starts_late(exported, synthetic_category: Path) -> None:
    """gRPC's own retries (service config) carry the call over the seconds nothing listens, then over the
    server's UNAVAILABLE while it loads the model: no loop in the client."""
    port = free_port()
    image = first(synthetic_category / "test" / "hole")
    # Long back-offs: gRPC draws each wait uniformly in [0, backoff] (waits of at most 6, 15, 30, 30 s), so a
    # short policy could spend its 5 attempts before the server is up; these make that chance < 0.3 % even if
    # the server needs 8 s. The deadline bounds the whole call, retries included.
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=6.0, max_backoff_s=30.0, backoff_multiplier=2.5)
    outcome: dict[str, object] = {}

    def call() -> None:
        with InspectionClient(f"127.0.0.1:{port}", retry=policy, timeout=120) as late:
            try:
                outcome["result"] = late.detect(image)
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                outcome["error"] = exc
            outcome["elapsed"] = time.monotonic() - started

    started = time.monotonic()
    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(1.0)  # the client is already calling, and nothing listens
    assert caller.is_alive(), outcome
    server = start_server(exported.version_dir.parents[1], ["--port", str(port)], wait_serving=False)
    try:
        caller.join(150)
    finally:
        server.stop()
    assert "error" not in outcome, outcome
    result = outcome["result"]
    assert isinstance(result, DetectionResult) and result.model == "brick"
    assert outcome["elapsed"] >= 1.0  # type: ignore[operator]


# --- many and streams ------------------------------------------------------------------------------


def test_detect_many_keeps_order_and_reports_failures(
    client: InspectionClient, synthetic_category: Path, tmp_path: Path
) -> None:
    test = synthetic_category / "test"
    good, hole, scratch = first(test / "good"), first(test / "hole"), first(test / "scratch")
    images = [
        good,
        hole,
        b"junk",
        tmp_path / "missing.png",
        ServerPath("../outside.png"),
        3.14,
        scratch,
        ServerPath("test/good/001.png"),
    ]
    outcomes = client.detect_many(images, concurrency=3, request_id="batch")  # type: ignore[arg-type]
    assert len(outcomes) == len(images)
    expected = {0: good, 1: hole, 6: scratch, 7: test / "good" / "001.png"}
    for index, path in expected.items():
        result = outcomes[index]
        assert isinstance(result, DetectionResult), result
        assert result.raw_score == pytest.approx(client.detect(path).raw_score, rel=1e-5)  # batched: last bits
        assert result.request_id == f"batch-{index}"
        assert result.latency_ms > 0
    failures = {index: outcome for index, outcome in enumerate(outcomes) if isinstance(outcome, DetectionFailure)}
    assert sorted(failures) == [2, 3, 4, 5]
    assert all(failure.index == index for index, failure in failures.items())
    assert isinstance(failures[2].error, InvalidImageError) and "decode" in str(failures[2].error)
    assert isinstance(failures[3].error, InvalidImageError) and failures[3].image_label == str(tmp_path / "missing.png")
    assert isinstance(failures[4].error, PermissionDeniedError) and failures[4].image_label == "server:../outside.png"
    assert isinstance(failures[5].error, InvalidImageError) and "unsupported" in str(failures[5].error)
    assert failures[2].to_dict()["code"] == "INVALID_ARGUMENT"


def test_detect_iter_reads_inputs_lazily_with_bounded_calls(client: InspectionClient, synthetic_category: Path) -> None:
    paths = sorted((synthetic_category / "test").glob("*/*.png"))
    pulled = 0

    def images() -> Iterator[Path]:
        nonlocal pulled
        for path in paths:
            pulled += 1
            yield path

    outcomes = client.detect_iter(images(), concurrency=2, regions=True)
    head = next(outcomes)
    assert pulled <= 3  # at most `concurrency` calls in flight, plus the input being looked at
    rest = list(outcomes)
    assert [r.raw_score for r in [head, *rest]] == pytest.approx(
        [r.raw_score for r in client.detect_many(paths, concurrency=8)], rel=1e-5
    )


def test_stream_in_order_with_failures(client: InspectionClient, synthetic_category: Path) -> None:
    paths = sorted((synthetic_category / "test").glob("*/*.png"))[:6]
    images = [*paths[:3], b"junk", 7, *paths[3:], 8]
    outcomes = list(client.stream(images, regions=True, request_id="cam"))
    assert [type(o).__name__ for o in outcomes] == ["DetectionResult"] * 3 + ["DetectionFailure"] * 2 + [
        "DetectionResult"
    ] * 3 + ["DetectionFailure"]
    results = [o for o in outcomes if isinstance(o, DetectionResult)]
    assert [r.request_id for r in results] == ["cam-0", "cam-1", "cam-2", "cam-5", "cam-6", "cam-7"]
    assert [r.raw_score for r in results] == pytest.approx([client.detect(p).raw_score for p in paths], rel=1e-5)
    failures = [o for o in outcomes if isinstance(o, DetectionFailure)]
    assert [f.index for f in failures] == [3, 4, 8]
    assert isinstance(failures[0].error, InvalidImageError) and failures[0].error.details.startswith("cannot decode")
    assert "unsupported image type int" in str(failures[1].error)


def test_stream_is_lazy_and_re_raises_the_sources_error(client: InspectionClient) -> None:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    total = 40
    pulled = 0

    def camera() -> Iterator[np.ndarray]:
        nonlocal pulled
        for _ in range(total):
            pulled += 1
            yield frame
        raise RuntimeError("camera unplugged")

    # Full-size heat maps and masks make the responses large: unread, they fill the flow-control window.
    outcomes = client.stream(camera(), anomaly_map=True, mask=True, map_size="original")
    first_outcome = next(outcomes)
    # We read nothing more: the server stops taking frames, so the client stops pulling them.
    wait_until_steady(lambda: pulled, total)
    assert pulled < total, "the stream consumed the whole source although nobody read its results"
    assert isinstance(first_outcome, DetectionResult)
    rest = []
    with pytest.raises(RuntimeError, match="camera unplugged"):
        for outcome in outcomes:
            rest.append(outcome)
    assert len(rest) == total - 1 and all(isinstance(o, DetectionResult) for o in rest)
    assert [o.raw_score for o in rest] == pytest.approx([first_outcome.raw_score] * len(rest), rel=1e-5)  # batched


def test_stream_to_an_unreachable_server_raises() -> None:
    offline = InspectionClient(f"127.0.0.1:{free_port()}", retry=None)
    with offline, pytest.raises(ServerUnavailableError):
        list(offline.stream([b"x"]))


# --- asyncio ---------------------------------------------------------------------------------------


def test_async_client(served, synthetic_category: Path) -> None:
    test = synthetic_category / "test"
    paths = sorted(test.glob("*/*.png"))[:5]

    async def frames() -> AsyncIterator[object]:
        for path in paths:
            yield path
        yield b"junk"

    async def main() -> None:
        async with AsyncInspectionClient(served.address, timeout=30) as client:
            assert await client.health() == "SERVING"
            assert await client.health("model/nope") == "SERVICE_UNKNOWN"
            assert [m.name for m in await client.models()] == ["brick"]
            assert (await client.model()).version == 1
            assert await client.threshold_for_false_reject_rate(RATE) == sync_threshold
            assert await client.expected_rates(sync_threshold, "brick", 1) == sync_rates
            with pytest.raises(ValueError, match="between 0 and 1"):
                await client.threshold_for_false_reject_rate(0.0)
            single = await client.detect(paths[0], anomaly_map=True, regions=True, request_id="a-1")
            assert single.request_id == "a-1" and single.anomaly_map is not None
            assert (await client.detect(rgb_of(paths[0]))).raw_score == single.raw_score
            many = await client.detect_many([*paths, b"junk", ServerPath("nope.png")], concurrency=2)
            assert [r.raw_score for r in many[:5]] == pytest.approx([r.raw_score for r in sync_results], rel=1e-5)
            assert isinstance(many[5], DetectionFailure) and isinstance(many[5].error, InvalidImageError)
            assert isinstance(many[6], DetectionFailure) and isinstance(many[6].error, NotFoundError)
            streamed = [outcome async for outcome in client.stream(frames())]
            assert [r.raw_score for r in streamed[:5]] == pytest.approx([r.raw_score for r in sync_results], rel=1e-5)
            assert isinstance(streamed[5], DetectionFailure) and streamed[5].index == 5
            with pytest.raises(NotFoundError):
                await client.detect(paths[0], model="nope")
            with pytest.raises(DeadlineExceededError):
                await client.detect(paths[0], timeout=0.0005)

    with InspectionClient(served.address) as sync_client:
        sync_results = [sync_client.detect(path) for path in paths]
        sync_threshold = sync_client.threshold_for_false_reject_rate(RATE)
        sync_rates = sync_client.expected_rates(sync_threshold)
    asyncio.run(main())
