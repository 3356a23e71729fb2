"""The SDK's image inputs → ImageInput messages, and local input errors raised before any call."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_client import InvalidImageError, ServerPath
from visinspect_client._protocol import DetectOptions, detect_request, split_options
from visinspect_client.inputs import describe, image_input


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)


def test_local_file_is_sent_encoded(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "part.png"
    path.write_bytes(png_bytes(rgb))
    for source in (path, str(path)):
        message = image_input(source)
        assert message.WhichOneof("source") == "encoded"
        assert message.encoded == path.read_bytes()
    assert describe(path) == str(path)


def test_bytes_are_sent_encoded(rgb: np.ndarray) -> None:
    data = png_bytes(rgb)
    for source in (data, bytearray(data), memoryview(data)):
        assert image_input(source).encoded == data
    assert describe(data) == f"<{len(data)} bytes>"


@pytest.mark.parametrize(
    ("shape", "channels"),
    [((5, 7, 3), 3), ((5, 7, 4), 4), ((5, 7), 1), ((5, 7, 1), 1)],
    ids=["rgb", "rgba", "grey", "grey3d"],
)
def test_arrays_are_sent_raw_in_rgb_order(shape: tuple[int, ...], channels: int) -> None:
    array = np.arange(np.prod(shape), dtype=np.uint32).astype(np.uint8).reshape(shape)
    raw = image_input(array).raw
    assert (raw.height, raw.width, raw.channels) == (5, 7, channels)
    assert raw.channel_order == pb.CHANNEL_ORDER_RGB
    assert raw.data == array.tobytes()


def test_non_contiguous_array_is_sent_in_row_order(rgb: np.ndarray) -> None:
    view = rgb[:, ::-1, ::-1]  # a mirrored, channel-swapped view: not contiguous
    assert not view.flags.c_contiguous
    assert image_input(view).raw.data == np.ascontiguousarray(view).tobytes()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_pil_images_are_sent_as_rgb_raw(rgb: np.ndarray, mode: str) -> None:
    image = Image.fromarray(rgb).convert(mode)
    raw = image_input(image).raw
    assert (raw.height, raw.width, raw.channels) == (5, 7, 3)
    assert raw.data == np.asarray(image.convert("RGB")).tobytes()
    assert describe(image) == f"<PIL {mode} 7x5>"


def test_server_path_is_sent_as_a_path() -> None:
    assert image_input(ServerPath("line3/cam1/0001.png")).path == "line3/cam1/0001.png"
    assert image_input(ServerPath(Path("a/b.png"))).path == "a/b.png"
    assert describe(ServerPath("a.png")) == "server:a.png"
    with pytest.raises(InvalidImageError):
        ServerPath("")


@pytest.mark.parametrize(
    ("source", "words"),
    [
        (np.zeros((4, 4, 3), np.float32), "must be uint8"),
        (np.zeros((4, 4, 3), np.uint16), "must be uint8"),
        (np.zeros((4, 4, 2), np.uint8), "shape (4, 4, 2)"),
        (np.zeros((2, 4, 4, 3), np.uint8), "shape (2, 4, 4, 3)"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        (b"", "empty"),
        (42, "unsupported image type int"),
        ([[0, 1]], "unsupported image type list"),
    ],
)
def test_local_problems_raise_invalid_image(source: object, words: str) -> None:
    with pytest.raises(InvalidImageError) as caught:
        image_input(source)  # type: ignore[arg-type]
    assert words in str(caught.value)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert not isinstance(caught.value.__cause__, grpc.RpcError)  # raised before any call


def test_unreadable_local_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError, match="does not exist.*ServerPath"):
        image_input(tmp_path / "missing.png")
    with pytest.raises(InvalidImageError, match="is a directory"):
        image_input(tmp_path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InvalidImageError, match="is empty"):
        image_input(tmp_path / "empty.png")


def test_detect_request_carries_every_option(rgb: np.ndarray) -> None:
    options = DetectOptions(
        model="brick", version=3, threshold=0.25, anomaly_map=True, mask=True, regions=True, map_size="original"
    )
    request = detect_request(rgb, options, "r-1")
    assert (request.request_id, request.model, request.model_version) == ("r-1", "brick", 3)
    assert request.HasField("threshold") and request.threshold == 0.25
    assert request.extras == pb.Extras(anomaly_map=True, mask=True, regions=True, map_size=pb.MAP_SIZE_ORIGINAL)
    plain = detect_request(rgb, DetectOptions())
    assert not plain.HasField("threshold")
    assert plain.extras.map_size == pb.MAP_SIZE_MODEL


def test_bad_options_are_refused_locally() -> None:
    with pytest.raises(ValueError, match="map_size"):
        DetectOptions(map_size="huge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="version"):
        DetectOptions(version=-1)
    with pytest.raises(TypeError, match="colour"):
        split_options({"colour": "red"})  # type: ignore[typeddict-unknown-key]
    options, prefix, timeout = split_options({"model": "m", "request_id": "batch", "timeout": 2.0})
    assert (options.model, prefix, timeout) == ("m", "batch", 2.0)


def test_base_import_needs_no_image_or_cli_libraries() -> None:
    code = (
        "import sys, visinspect_client, visinspect_client.cli;"
        "heavy = {'PIL', 'rich', 'cv2', 'torch', 'openvino'} & set(sys.modules);"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_maps_without_pillow_fail_before_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)  # as if the images extra were not installed
    DetectOptions(regions=True)  # regions need no image library
    with pytest.raises(ImportError, match=r"visinspect-client\[images\]"):
        DetectOptions(anomaly_map=True)
    with pytest.raises(ImportError, match=r"visinspect-client\[images\]"):
        DetectOptions(mask=True)
