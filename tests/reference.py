"""What a model version's own weights say about a request, computed here without the server's registry,
batching or post-processing: the check that a response labelled version N was computed with N's weights."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import openvino as ov

from visinspect_api.model_repository import IR_XML_FILENAME, read_metadata
from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_server import imaging
from visinspect_server.grpc.converters import detect_request
from visinspect_server.pipeline import EncodedImage, RawPixels

MAX_PIXELS = 40_000_000


def reference_raw_scores(version_dir: Path, requests: Iterable[tuple[str, pb.DetectRequest]]) -> dict[str, float]:
    """Raw image score per named request, from ``version_dir``'s IR at its recorded precision, one image at a time."""
    metadata = read_metadata(version_dir)
    config = {"INFERENCE_PRECISION_HINT": metadata.inference_precision}
    compiled = ov.Core().compile_model(version_dir / IR_XML_FILENAME, "CPU", config)
    scores: dict[str, float] = {}
    for name, request in requests:
        source, _ = detect_request(request)
        if isinstance(source, RawPixels):
            image = imaging.raw_image(source.data, source.height, source.width, source.channels, source.bgr, MAX_PIXELS)
        else:
            assert isinstance(source, EncodedImage), "encoded or raw inputs only"
            image = imaging.decode_image(source.data, MAX_PIXELS)
        batch = imaging.resize_to_model(image, metadata.input.height, metadata.input.width)[None]
        outputs = compiled(batch)
        scores[name] = float(outputs[compiled.output(metadata.outputs.pred_score)].reshape(-1)[0])
    return scores
