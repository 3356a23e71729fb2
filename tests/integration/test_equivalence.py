"""The facade's normalised scores equal anomalib's own exported model run by OpenVINOInferencer."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from tests.conftest import TINY_IMAGE_SIZE
from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_training.anomalib_export import export_with_anomalib


@pytest.mark.parametrize("family", ["padim", "patchcore"])
def test_scores_match_anomalib_openvino_inferencer(
    family: str, synthetic_category, tmp_path: Path, monkeypatch, request: pytest.FixtureRequest
) -> None:
    from anomalib.deploy import OpenVINOInferencer

    # anomalib's PatchCore scores with its re-weighted distance: compare the model exported with that score.
    prefix = "" if family == "padim" else "patchcore_reweighted_"
    served = request.getfixturevalue(f"{prefix}served")
    exported = request.getfixturevalue(f"{prefix}exported")
    trained_run = request.getfixturevalue("trained_run" if family == "padim" else "patchcore_run")

    monkeypatch.chdir(tmp_path)  # OpenVINOInferencer writes an openvino_cache folder into the working directory
    xml = export_with_anomalib(trained_run, tmp_path / "anomalib", exported.metadata.calibration)
    inferencer = OpenVINOInferencer(path=xml, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
    images = sorted((synthetic_category / "test").glob("*/*.png"))
    compared = []
    with served.channel() as channel:
        stub = served.stub(channel)
        for image in images:
            facade = stub.Detect(pb.DetectRequest(image=pb.ImageInput(encoded=image.read_bytes())), timeout=30)
            # OpenVINOInferencer does not resize: feed it exactly what the contract's resize gives.
            rgb = cv2.cvtColor(cv2.imread(str(image)), cv2.COLOR_BGR2RGB)
            resized = cv2.resize(rgb, (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE), interpolation=cv2.INTER_AREA)
            prediction = inferencer.predict(resized)
            compared.append(
                (
                    facade.score,
                    float(prediction.pred_score.reshape(-1)[0]),
                    facade.is_anomalous,
                    bool(prediction.pred_label.reshape(-1)[0]),
                )
            )
    assert len(compared) == len(images) >= 20
    for facade_score, anomalib_score, facade_label, anomalib_label in compared:
        assert facade_score == pytest.approx(anomalib_score, abs=1e-3)
        if abs(anomalib_score - 0.5) > 1e-3:
            assert facade_label == anomalib_label
    assert len({round(a, 3) for _, a, _, _ in compared}) > 5  # real, varied scores, not all clamped
