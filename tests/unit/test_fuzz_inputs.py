"""Property-based fuzzing (hypothesis) of the image decoder and of request validation.

Each property has a fixed budget (``max_examples``), no deadline and a derandomized search, so CI runs
the same cases every time in a few seconds. The property everywhere: hostile input either gives a
well-formed result or one of the domain errors that map to a clear gRPC status, never anything else.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.corpus import make_corpus
from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_server import imaging
from visinspect_server.backends.base import InferenceBackend
from visinspect_server.errors import (
    InspectionError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
)
from visinspect_server.grpc import converters
from visinspect_server.pipeline import (
    EncodedImage,
    ImagePath,
    ImageSource,
    InspectionPipeline,
    PipelineLimits,
    RawPixels,
    _check_threshold,
)
from visinspect_server.registry import ModelRegistry

CORPUS_FILES = make_corpus.build_files()
SEEDS = [
    CORPUS_FILES[name]
    for name in (
        "ref_rgb.png",
        "grey16.png",
        "palette.png",
        "rgb.jpg",
        "cmyk.jpg",
        "animated.gif",
        "rgb.tiff",
        "rgb_lzw.tiff",
        "rgb.bmp",
    )
]
SIGNATURES = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"GIF87a", b"II*\x00", b"MM\x00*", b"II+\x00", b"BM"]
# A small budget keeps mutated headers that declare big (but allowed) sizes cheap to decode.
MAX_PIXELS = 250_000
DECODE_ERRORS = (InvalidInputError, ResourceExhaustedError)
BUDGET = settings(
    max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def assert_rgb8_within_budget(image: np.ndarray) -> None:
    assert isinstance(image, np.ndarray)
    assert image.dtype == np.uint8
    assert image.ndim == 3 and image.shape[2] == 3
    assert 1 <= image.shape[0] * image.shape[1] <= MAX_PIXELS


def decode_or_domain_error(data: bytes) -> None:
    try:
        image = imaging.decode_image(data, MAX_PIXELS)
    except DECODE_ERRORS as error:
        assert str(error) and "Traceback" not in str(error)
        return
    assert_rgb8_within_budget(image)


# --------------------------------------------------------------------------- the decoder


@BUDGET
@given(st.binary(max_size=4096))
def test_decode_arbitrary_bytes(data: bytes) -> None:
    decode_or_domain_error(data)


@BUDGET
@given(st.sampled_from(SIGNATURES), st.binary(max_size=2048))
def test_decode_bytes_behind_a_real_signature(signature: bytes, body: bytes) -> None:
    decode_or_domain_error(signature + body)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A real image file with a few bytes flipped, inserted or removed, and perhaps cut short."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data) - 1))
        # Headers hold the interesting fields: aim half the edits at the first 64 bytes.
        if draw(st.booleans()):
            position %= 64
        operation = draw(st.sampled_from(["set", "xor", "insert", "delete"]))
        value = draw(st.integers(0, 255))
        if operation == "set":
            data[position] = value
        elif operation == "xor":
            data[position] ^= value or 1
        elif operation == "insert":
            data.insert(position, value)
        elif len(data) > 1:
            del data[position]
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@BUDGET
@given(mutated())
def test_decode_mutated_real_images(data: bytes) -> None:
    decode_or_domain_error(data)


def test_unmutated_seeds_decode() -> None:
    for data in SEEDS:
        assert_rgb8_within_budget(imaging.decode_image(data, MAX_PIXELS))


# --------------------------------------------------------------------------- raw pixels


@st.composite
def raw_inputs(draw: st.DrawFn) -> tuple[bytes, int, int, int]:
    """Shapes from plausible to absurd, with a buffer of the right size or slightly off."""
    sizes = st.one_of(st.integers(1, 12), st.integers(-3, 0), st.integers(2**16, 2**40))
    height, width = draw(sizes), draw(sizes)
    channels = draw(st.one_of(st.sampled_from([1, 3, 4]), st.integers(-2, 6), st.integers(7, 2**32)))
    expected = height * width * channels
    if 0 < expected <= 2000 and draw(st.integers(0, 3)):
        length = expected + draw(st.sampled_from([0, 0, 0, -1, 1]))
    else:
        length = draw(st.integers(0, 600))
    return bytes(draw(st.binary(min_size=max(length, 0), max_size=max(length, 0)))), height, width, channels


@BUDGET
@given(raw_inputs(), st.booleans())
def test_raw_image_any_shape_and_length(raw: tuple[bytes, int, int, int], bgr: bool) -> None:
    data, height, width, channels = raw
    try:
        image = imaging.raw_image(data, height, width, channels, bgr, MAX_PIXELS)
    except DECODE_ERRORS as error:
        assert str(error)
        return
    assert channels in (1, 3, 4) and len(data) == height * width * channels
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    if channels == 1:
        assert (image == np.frombuffer(data, np.uint8).reshape(height, width, 1)).all()


# --------------------------------------------------------------------------- request validation

PATH_PIECES = st.sampled_from(["..", ".", "/", "a", "good.png", "sub", "\x00", "\n", " ", "%2e", "\\", "ü", "画"])
PATHS = st.one_of(st.lists(PATH_PIECES, max_size=8).map("".join), st.text(max_size=40))
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 1.0, -0.0, 0.5, 1e-300, 1 + 1e-15])


@st.composite
def detect_requests(draw: st.DrawFn) -> pb.DetectRequest:
    """DetectRequests with any field values the proto can carry."""
    request = pb.DetectRequest(
        request_id=draw(st.text(max_size=10)),
        model=draw(st.text(max_size=10)),
        model_version=draw(st.integers(0, 2**64 - 1)),
    )
    if draw(st.booleans()):
        request.threshold = draw(FLOATS)
    source = draw(st.sampled_from(["none", "encoded", "raw", "path"]))
    if source == "encoded":
        request.image.encoded = draw(st.one_of(st.binary(max_size=256), mutated()))
    elif source == "raw":
        data, height, width, channels = draw(raw_inputs())
        request.image.raw.CopyFrom(
            pb.RawImage(
                data=data,
                height=height % 2**32,
                width=width % 2**32,
                channels=channels % 2**32,
                channel_order=draw(st.integers(0, 5)),  # unknown enum values survive in proto3
            )
        )
    elif source == "path":
        request.image.path = draw(PATHS)
    request.extras.anomaly_map = draw(st.booleans())
    request.extras.mask = draw(st.booleans())
    request.extras.regions = draw(st.booleans())
    request.extras.map_size = draw(st.integers(0, 5))
    return request


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz_root")
    (root / "good.png").write_bytes(CORPUS_FILES["ref_rgb.png"])
    (root / "sub").mkdir()
    (root / "sub" / "a").write_bytes(b"not an image")
    os.mkfifo(root / "fifo")
    (root / "out").symlink_to("/etc")
    return root


def no_backend(folder: Path, metadata: object) -> InferenceBackend:
    raise AssertionError("validation must not load models")


@pytest.fixture(scope="module")
def pipeline(image_root: Path) -> Iterator[InspectionPipeline]:
    """A real pipeline with no model loaded: only its input validation and decoding are exercised."""
    registry = ModelRegistry(image_root / "no_repository", no_backend)
    limits = PipelineLimits(max_pixels=MAX_PIXELS, max_file_bytes=100_000, image_root=image_root)
    with ThreadPoolExecutor(1) as executor:
        yield InspectionPipeline(registry, executor, limits)


@BUDGET
@given(detect_requests())
def test_request_validation_only_raises_domain_errors(pipeline: InspectionPipeline, request: pb.DetectRequest) -> None:
    try:
        source, options = converters.detect_request(request)
    except InvalidInputError as error:
        assert request.image.WhichOneof("source") is None
        assert "no image" in str(error)
        return
    assert isinstance(source, ImageSource)
    kinds = {"encoded": EncodedImage, "raw": RawPixels, "path": ImagePath}
    assert type(source) is kinds[request.image.WhichOneof("source")]  # exactly the one kind the request set
    assert options.version == request.model_version
    try:
        threshold = _check_threshold(options.threshold)
    except InvalidInputError as error:
        assert options.threshold is not None and not 0.0 <= options.threshold <= 1.0
        assert "threshold must be a number in [0, 1]" in str(error)
    else:
        assert math.isfinite(threshold) and 0.0 <= threshold <= 1.0
    try:
        image = pipeline._decode(source)
    except (InvalidInputError, ResourceExhaustedError, NotFoundError, PermissionDeniedError) as error:
        assert isinstance(error, InspectionError) and str(error)
        return
    assert_rgb8_within_budget(image)
