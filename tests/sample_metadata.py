"""A complete, valid ModelMetadata for tests (``make_metadata(**changes)``), and its JSON as a dict."""

from __future__ import annotations

import dataclasses
import json

from visinspect_api.calibration import ScoreSample
from visinspect_api.model_repository import (
    Backbone,
    Calibration,
    DatasetInfo,
    DefectTypeRecall,
    Evaluation,
    InputContract,
    ModelMetadata,
    OutputContract,
)


def make_metadata(**changes) -> ModelMetadata:
    metadata = ModelMetadata(
        model_name="bottle",
        created_at="2026-11-29T12:00:00+00:00",
        input=InputContract(name="image", height=256, width=256),
        outputs=OutputContract(),
        calibration=Calibration(
            image_threshold=51.9, pixel_threshold=50.0, image_min=19.5, image_max=492.0,
            pixel_min=2.8, pixel_max=492.0, source="from_test validation split", overlaps_test=False,
            method="false_reject_rate", target_false_reject_rate=0.01,
            good_scores=ScoreSample.of([20.0, 30.0, 40.0, 51.9]), defect_scores=ScoreSample.of([45.0, 60.0, 492.0]),
            warnings=("the target false-reject rate 1.00% is below what 4 good calibration images can resolve",),
        ),
        backbone=Backbone(name="tf_efficientnet_lite0", layers=("blocks.1", "blocks.2"), n_features=100, weights="builtin",
                          weights_sha256="a" * 64),
        dataset=DatasetInfo(kind="mvtec", name="bottle", location="/data/bottle", category="bottle",
                            val_split="from_test", seed=0, counts={"train": 209}),
        inference_precision="f32",
        ir_precision="FP32",
        ir_bin_sha256="b" * 64,
        software={"openvino": "2026.4.1"},
        evaluation=Evaluation(split="test", num_images=42, num_anomalous=32, image_auroc=0.99, image_f1=0.98,
                              pixel_auroc=None, max_abs_score_diff_vs_torch=0.002, max_rel_score_diff_vs_torch=4e-6,
                              inference_precision="f32", notes=("a note",), false_reject_rate=0.1, defect_recall=0.9,
                              good_rejected=1, defects_caught=29,
                              recall_by_defect_type={"crack": DefectTypeRecall(9, 10), "hole": DefectTypeRecall(20, 22)},
                              pixel_aupro=None),
    )  # fmt: skip
    return dataclasses.replace(metadata, **changes)


def as_dict(metadata: ModelMetadata) -> dict:
    return json.loads(metadata.to_json())
