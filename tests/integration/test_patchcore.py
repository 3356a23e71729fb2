"""PatchCore end to end: fit with the fast coreset, export the shared IR contract, calibrate out of fold, serve
(embedded OpenVINO; the KServe stand-in and anomalib's exported inferencer are compared in
test_kserve_backend.py and test_equivalence.py), and match anomalib's own torch model."""

from __future__ import annotations

import dataclasses
import json
import logging

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import PATCHCORE_CORESET_RATIO, TINY_IMAGE_SIZE
from visinspect_api.model_repository import IR_XML_FILENAME
from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_training import evaluate, ir
from visinspect_training.api import export_run, load_run
from visinspect_training.coreset import greedy_coreset
from visinspect_training.crossfit import out_of_fold_scores
from visinspect_training.data import build_datamodule, fold_assignment
from visinspect_training.evaluate import score_images, to_uint8_nhwc
from visinspect_training.families import patchcore, scoring_batch_size
from visinspect_training.families.patchcore import PATCHCORE, coreset_size
from visinspect_training.ir import AnomalibReference, ContractInput, compile_ir, infer, torch_outputs

SIZE = (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
FOLDS = 10
TRAIN_IMAGES = 24
PATCHES_PER_IMAGE = (TINY_IMAGE_SIZE // 8) ** 2  # blocks.2 has stride 8
EMBEDDING_DIM = 32 + 96  # mobilenetv2_100 blocks.2 and blocks.4 channels


def test_memory_bank_is_the_coreset_of_every_training_patch(patchcore_run) -> None:
    bank = patchcore_run.model.memory_bank
    patches = TRAIN_IMAGES * PATCHES_PER_IMAGE
    assert bank.shape == (coreset_size(patches, PATCHCORE_CORESET_RATIO), EMBEDDING_DIM) == (614, 128)
    assert bank.dtype == torch.float32
    assert patchcore_run.config.layers == ("blocks.2", "blocks.4")


def test_exported_ir_matches_anomalibs_patchcore(patchcore_run, patchcore_exported) -> None:
    evaluation = patchcore_exported.metadata.evaluation
    assert evaluation is not None and evaluation.max_rel_score_diff_vs_torch is not None
    assert evaluation.max_rel_score_diff_vs_torch <= 1e-3
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, *SIZE, 3), dtype=np.uint8)
    maps, scores = infer(compile_ir(patchcore_exported.version_dir / IR_XML_FILENAME, "f32"), images)
    with torch.no_grad():
        torch_maps, anomalib_scores = AnomalibReference(patchcore_run.model)(torch.from_numpy(images))
    np.testing.assert_allclose(maps, torch_maps.numpy()[:, 0], rtol=1e-3, atol=1e-3 * float(torch_maps.max()))
    # The default image score is the map's maximum, not anomalib's re-weighted nearest-neighbour distance.
    assert patchcore_run.config.image_score == "map_max"
    np.testing.assert_allclose(scores, torch_maps.numpy().reshape(3, -1).max(axis=1), rtol=1e-3)
    assert not np.allclose(scores, anomalib_scores.numpy(), rtol=1e-2)


def test_the_reweighted_score_is_anomalibs(patchcore_run, patchcore_reweighted_exported) -> None:
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (3, *SIZE, 3), dtype=np.uint8)
    version_dir = patchcore_reweighted_exported.version_dir
    maps, scores = infer(compile_ir(version_dir / IR_XML_FILENAME, "f32"), images)
    with torch.no_grad():
        torch_maps, anomalib_scores = AnomalibReference(patchcore_run.model)(torch.from_numpy(images))
    np.testing.assert_allclose(scores, anomalib_scores.numpy(), rtol=1e-3)
    np.testing.assert_allclose(maps, torch_maps.numpy()[:, 0], rtol=1e-3, atol=1e-3 * float(torch_maps.max()))
    assert not np.allclose(scores, maps.reshape(3, -1).max(axis=1), rtol=1e-2)
    metadata = patchcore_reweighted_exported.metadata
    assert metadata.parameters["reweighted_score"] == 1.0
    assert metadata.evaluation is not None and metadata.evaluation.max_rel_score_diff_vs_torch is not None
    assert metadata.evaluation.max_rel_score_diff_vs_torch <= 1e-3


def test_evaluation_and_metadata_describe_a_patchcore(patchcore_exported) -> None:
    metadata = patchcore_exported.metadata
    assert metadata.architecture == "patchcore"
    assert metadata.parameters == {
        "coreset_ratio": PATCHCORE_CORESET_RATIO,
        "num_neighbors": 9.0,
        "reweighted_score": 0.0,
        "memory_bank_size": 614.0,
        "embedding_dim": float(EMBEDDING_DIM),
        "tiles": 1.0,
    }
    assert metadata.backbone.layers == ("blocks.2", "blocks.4")
    assert metadata.backbone.n_features == EMBEDDING_DIM
    evaluation = metadata.evaluation
    assert evaluation is not None
    assert evaluation.image_auroc is not None and evaluation.image_auroc >= 0.8
    assert evaluation.pixel_auroc is not None and evaluation.pixel_auroc >= 0.9


def test_thresholds_hold_the_rate_on_scores_and_on_map_maxima(patchcore_run, patchcore_exported) -> None:
    calibration = patchcore_exported.metadata.calibration
    good = calibration.good_scores
    assert good is not None and good.count == TRAIN_IMAGES + 4  # every training image out of fold + validation
    # 28 images cannot resolve 1 %: each threshold is its pool's highest value.
    assert calibration.image_threshold == good.values[-1]
    data = build_datamodule(patchcore_run.config.dataset, SIZE)
    oof = out_of_fold_scores(patchcore_run.model, data, patchcore_run.config, folds=FOLDS)
    validation = score_images(
        compile_ir(patchcore_exported.version_dir / IR_XML_FILENAME, "f32"), data.datamodule.val_dataloader()
    )
    maxima = np.concatenate([oof.raw_map_maxima, validation.raw_map_maxima[~validation.is_anomalous]])
    assert calibration.pixel_threshold == pytest.approx(float(maxima.max()), rel=1e-5)
    # The image score is the map's maximum: one threshold, so a part is rejected exactly when its mask is not empty.
    assert calibration.pixel_threshold == calibration.image_threshold


def test_reweighted_scores_have_their_own_image_threshold(patchcore_reweighted_exported) -> None:
    calibration = patchcore_reweighted_exported.metadata.calibration
    assert calibration.good_scores is not None
    assert calibration.image_threshold == calibration.good_scores.values[-1]
    assert calibration.pixel_threshold != pytest.approx(calibration.image_threshold, rel=1e-3)


def test_out_of_fold_banks_never_hold_the_fold(patchcore_run) -> None:
    """Fold 0's scores equal those of a bank built, by anomalib's own training forward, from the other folds."""
    config = patchcore_run.config
    data = build_datamodule(config.dataset, SIZE)
    train_data = data.datamodule.train_data
    fold_of = fold_assignment(train_data, FOLDS, config.dataset.seed)
    fold_model = PATCHCORE.build(config, pre_trained=False).model
    fold_model.load_state_dict(patchcore_run.model.state_dict())
    fold_model.train()
    normalise = ContractInput()
    with torch.no_grad():
        for batch in data.loader(train_data.subsample(np.flatnonzero(fold_of != 0).tolist())):
            fold_model(normalise(torch.from_numpy(to_uint8_nhwc(batch.image))))  # training mode: collects patches
    patches = torch.vstack(fold_model.embedding_store)
    fold_model.memory_bank = patches[greedy_coreset(patches, coreset_size(len(patches), PATCHCORE_CORESET_RATIO))]
    graph = PATCHCORE.serving_graph(fold_model.eval(), config)
    held = train_data.subsample(np.flatnonzero(fold_of == 0).tolist())
    expected = score_images(lambda images: torch_outputs(graph, images), data.loader(held))
    oof = out_of_fold_scores(patchcore_run.model, data, config, folds=FOLDS)
    by_path = dict(zip(oof.paths, oof.raw_scores.tolist(), strict=True))
    assert len(by_path) == TRAIN_IMAGES
    np.testing.assert_allclose([by_path[p] for p in expected.paths], expected.raw_scores, rtol=1e-5)
    # The served model's bank holds these images' patches: it scores them lower than any fold model does.
    served = score_images(lambda images: torch_outputs(PATCHCORE.serving_graph(patchcore_run.model, config), images),
                          data.loader(held))  # fmt: skip
    assert (served.raw_scores < expected.raw_scores).all()


def test_fp16_fold_models_are_scored_as_irs(patchcore_run) -> None:
    data = build_datamodule(patchcore_run.config.dataset, SIZE)
    exact = out_of_fold_scores(patchcore_run.model, data, patchcore_run.config, folds=FOLDS)
    rounded = out_of_fold_scores(patchcore_run.model, data, patchcore_run.config, folds=FOLDS, ir_precision="FP16")
    assert rounded.paths == exact.paths
    differences = np.abs(rounded.raw_scores / exact.raw_scores - 1.0)
    assert 0.0 < differences.max() < 1e-2


def test_saved_run_reloads_with_its_memory_bank(patchcore_run) -> None:
    reloaded = load_run(patchcore_run.run_dir)
    assert reloaded.config == patchcore_run.config
    assert (patchcore_run.run_dir / "patchcore.pt").is_file()
    assert torch.equal(reloaded.model.memory_bank, patchcore_run.model.memory_bank)
    for name, tensor in patchcore_run.model.state_dict().items():
        assert torch.equal(tensor, reloaded.model.state_dict()[name]), name


def test_runs_saved_before_the_image_score_choice_reload_reweighted(patchcore_run, tmp_path) -> None:
    """They were exported with anomalib's score: re-exporting one must not change what it scores."""
    old = tmp_path / "old-run"
    old.mkdir()
    (old / "patchcore.pt").write_bytes((patchcore_run.run_dir / "patchcore.pt").read_bytes())
    info = json.loads((patchcore_run.run_dir / "run.json").read_text(encoding="utf-8"))
    del info["config"]["image_score"]
    (old / "run.json").write_text(json.dumps(info), encoding="utf-8")
    reloaded = load_run(old)
    assert reloaded.config == dataclasses.replace(patchcore_run.config, image_score="reweighted")


def test_the_server_serves_patchcore_like_its_ir(patchcore_served, patchcore_exported, synthetic_category) -> None:
    metadata = patchcore_exported.metadata
    compiled = compile_ir(patchcore_exported.version_dir / IR_XML_FILENAME, "f32")
    images = sorted((synthetic_category / "test").glob("*/*.png"))[::3]
    verdicts = set()
    with patchcore_served.channel() as channel:
        stub = patchcore_served.stub(channel)
        description = stub.DescribeModel(pb.DescribeModelRequest(), timeout=10)
        assert (description.name, description.architecture) == ("brick-patchcore", "patchcore")
        assert dict(description.parameters) == dict(metadata.parameters)
        for image in images:
            response = stub.Detect(pb.DetectRequest(image=pb.ImageInput(encoded=image.read_bytes())), timeout=30)
            rgb = cv2.cvtColor(cv2.imread(str(image)), cv2.COLOR_BGR2RGB)
            resized = cv2.resize(rgb, SIZE, interpolation=cv2.INTER_AREA)
            _, (raw,) = infer(compiled, resized[None])
            assert response.raw_score == pytest.approx(float(raw), rel=1e-5)
            assert response.is_anomalous == (raw > metadata.calibration.image_threshold)
            verdicts.add(response.is_anomalous)
    assert verdicts == {True, False}


def test_images_per_call_bounds_the_distance_matrix(patchcore_run, monkeypatch: pytest.MonkeyPatch) -> None:
    model, config = patchcore_run.model, patchcore_run.config
    graph = PATCHCORE.serving_graph(model, config)
    one_image = graph._squared_distances(torch.zeros(1, PATCHES_PER_IMAGE, EMBEDDING_DIM))
    per_image = 4 * one_image.numel()
    assert per_image == 4 * PATCHES_PER_IMAGE * 614
    assert PATCHCORE.images_per_call(model, config) == patchcore.SCORING_BYTES_PER_CALL // per_image
    assert scoring_batch_size(model, config) == config.batch_size  # the tiny bank is far below the bound
    monkeypatch.setattr(patchcore, "SCORING_BYTES_PER_CALL", 3 * per_image + 1)
    assert PATCHCORE.images_per_call(model, config) == scoring_batch_size(model, config) == 3
    monkeypatch.setattr(patchcore, "SCORING_BYTES_PER_CALL", 1)
    assert scoring_batch_size(model, config) == 1


def test_export_scores_within_the_bound_and_the_same(
    patchcore_run, patchcore_exported, tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A large bank or input makes export score fewer images per call (512x512 at 1 % ran out of 24 GiB)."""
    per_image = 4 * PATCHES_PER_IMAGE * 614
    monkeypatch.setattr(patchcore, "SCORING_BYTES_PER_CALL", 2 * per_image)
    seen: list[int] = []

    def recording(function):
        def call(scorer, images):
            seen.append(len(images))
            return function(scorer, images)

        return call

    monkeypatch.setattr(evaluate, "infer", recording(infer))
    monkeypatch.setattr(evaluate, "torch_infer", recording(evaluate.torch_infer))
    monkeypatch.setattr(ir, "torch_outputs", recording(torch_outputs))
    with caplog.at_level(logging.INFO, logger="visinspect_training"):
        bounded = export_run(patchcore_run, tmp_path)
    assert seen and max(seen) == 2
    assert sum(seen) > TRAIN_IMAGES  # every training image out of fold, then the validation and test splits
    expected, got = patchcore_exported.metadata, bounded.metadata
    assert got.calibration.image_threshold == pytest.approx(expected.calibration.image_threshold, rel=1e-5)
    assert got.calibration.pixel_threshold == pytest.approx(expected.calibration.pixel_threshold, rel=1e-5)
    assert got.evaluation is not None and expected.evaluation is not None
    assert got.evaluation.image_auroc == expected.evaluation.image_auroc
    # 28 good calibration images cannot resolve 1 %: the highest-scoring one sets the threshold, and is named.
    (line,) = [r.getMessage() for r in caplog.records if "is set by the good calibration images" in r.getMessage()]
    named = line.split(": ", 1)[1].split(", ")
    assert len(named) == 1 and "/good/" in named[0]
    assert named[0].endswith(f"({got.calibration.image_threshold:.4g})")
