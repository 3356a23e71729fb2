"""Train once on the synthetic dataset, export, and check the version OpenVINO loads and what it holds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch

from tests.conftest import TINY_IMAGE_SIZE
from visinspect_api.model_repository import (
    IR_BIN_FILENAME,
    IR_XML_FILENAME,
    OVMS_CONFIG_FILENAME,
    file_sha256,
    list_versions,
    read_metadata,
)
from visinspect_training.api import ExportOptions, evaluate_ir, export_run, load_run
from visinspect_training.errors import ConfigError
from visinspect_training.ir import AnomalibReference, compile_ir, infer


def test_version_folder_holds_ir_and_valid_metadata(exported) -> None:
    folder = exported.version_dir
    assert exported.version == 1
    assert folder.name == "1"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [IR_XML_FILENAME, IR_BIN_FILENAME, "visinspect-metadata.json"]
    )
    metadata = read_metadata(folder)
    assert metadata == exported.metadata
    assert metadata.ir_bin_sha256 == file_sha256(folder / IR_BIN_FILENAME)
    assert metadata.backbone.weights == "builtin"
    assert metadata.dataset.counts["train"] + metadata.dataset.counts["calibration"] == 24
    assert metadata.calibration.image_min <= metadata.calibration.image_threshold <= metadata.calibration.image_max


def test_ir_contract_matches_metadata(exported) -> None:
    model = ov.Core().read_model(exported.version_dir / IR_XML_FILENAME)
    contract = exported.metadata.input
    (image,) = model.inputs
    assert image.get_any_name() == contract.name == "image"
    assert image.get_element_type() == ov.Type.u8
    assert str(image.get_partial_shape()) == f"[?,{TINY_IMAGE_SIZE},{TINY_IMAGE_SIZE},3]"
    names = [output.get_any_name() for output in model.outputs]
    assert names == [exported.metadata.outputs.anomaly_map, exported.metadata.outputs.pred_score]


def test_f32_scores_match_torch(exported, trained_run) -> None:
    evaluation = exported.metadata.evaluation
    assert evaluation is not None
    assert evaluation.inference_precision == "f32"
    assert evaluation.max_rel_score_diff_vs_torch is not None
    assert evaluation.max_rel_score_diff_vs_torch <= 1e-3
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3), dtype=np.uint8)
    maps, scores = infer(compile_ir(exported.version_dir / IR_XML_FILENAME, "f32"), images)
    with torch.no_grad():
        torch_maps, torch_scores = AnomalibReference(trained_run.model)(torch.from_numpy(images))
    np.testing.assert_allclose(scores, torch_scores.numpy(), rtol=1e-3)
    np.testing.assert_allclose(maps, torch_maps.numpy()[:, 0], rtol=1e-3, atol=1e-3 * float(torch_maps.max()))
    assert np.allclose(scores, maps.reshape(3, -1).max(axis=1))


def test_evaluation_is_sensible_on_synthetic_defects(exported) -> None:
    evaluation = exported.metadata.evaluation
    assert evaluation.num_images == exported.metadata.dataset.counts["test"]
    assert evaluation.image_auroc is not None and evaluation.image_auroc >= 0.8
    assert evaluation.pixel_auroc is not None and evaluation.pixel_auroc >= 0.9
    assert exported.metadata.calibration.overlaps_test is False
    assert evaluation.notes == ()


def test_bf16_difference_is_reported(exported, trained_run) -> None:
    metadata = exported.metadata
    evaluation = evaluate_ir(
        exported.version_dir / IR_XML_FILENAME, trained_run.config, metadata.calibration, "bf16", trained_run.model
    )
    assert evaluation.inference_precision == "bf16"
    assert evaluation.max_abs_score_diff_vs_torch is not None
    assert evaluation.max_abs_score_diff_vs_torch >= metadata.evaluation.max_abs_score_diff_vs_torch


def test_ovms_config_lists_the_model(exported) -> None:
    config = json.loads((exported.version_dir.parents[1] / OVMS_CONFIG_FILENAME).read_text())
    (entry,) = config["model_config_list"]
    assert entry["config"]["name"] == "brick"
    assert entry["config"]["base_path"] == "brick"
    assert (exported.version_dir.parents[1] / entry["config"]["base_path"] / "1" / IR_XML_FILENAME).is_file()


def test_saved_run_reloads_to_the_same_model(trained_run) -> None:
    reloaded = load_run(trained_run.run_dir)
    assert reloaded.config == trained_run.config
    assert reloaded.f1_calibration == trained_run.f1_calibration
    for name, tensor in trained_run.model.state_dict().items():
        assert torch.equal(tensor, reloaded.model.state_dict()[name]), name


def test_a_run_saved_before_model_families_reloads_as_padim(trained_run, tmp_path: Path) -> None:
    old_run = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, old_run)
    info_file = old_run / "run.json"
    info = json.loads(info_file.read_text())
    for key in ("model", "coreset_ratio", "num_neighbors"):
        del info["config"][key]
    info_file.write_text(json.dumps(info))
    reloaded = load_run(old_run)
    assert reloaded.config.model == "padim"
    assert reloaded.config == trained_run.config
    for name, tensor in trained_run.model.state_dict().items():
        assert torch.equal(tensor, reloaded.model.state_dict()[name]), name


def test_fp16_export_is_a_new_version(trained_run, tmp_path: Path) -> None:
    first = export_run(trained_run, tmp_path, ExportOptions(evaluate=False))
    second = export_run(trained_run, tmp_path, ExportOptions(ir_precision="FP16", evaluate=False))
    assert (first.version, second.version) == (1, 2)
    assert second.metadata.ir_precision == "FP16"
    assert second.metadata.evaluation is None
    size_fp32 = (first.version_dir / IR_BIN_FILENAME).stat().st_size
    size_fp16 = (second.version_dir / IR_BIN_FILENAME).stat().st_size
    assert size_fp16 < 0.6 * size_fp32


@pytest.mark.parametrize("precision", ["INT8", "int8"])
def test_int8_is_refused_with_a_reason(precision: str) -> None:
    with pytest.raises(ConfigError, match="INT8 export is not supported: for PaDiM"):
        ExportOptions(ir_precision=precision)


def test_crash_mid_export_leaves_no_visible_version(trained_run, tmp_path: Path) -> None:
    crash = textwrap.dedent(
        """
        import os, signal, sys
        from pathlib import Path
        from visinspect_training import export
        from visinspect_training.api import ExportOptions, export_run, load_run

        def write_then_die(folder, metadata):
            (folder / "visinspect-metadata.json").write_text(metadata.to_json())
            os.kill(os.getpid(), signal.SIGKILL)

        export.write_metadata = write_then_die
        export_run(load_run(Path(sys.argv[1])), Path(sys.argv[2]), ExportOptions(evaluate=False))
        """
    )
    repository = tmp_path / "repository"
    done = subprocess.run([sys.executable, "-c", crash, str(trained_run.run_dir), str(repository)], check=False)
    assert done.returncode == -signal.SIGKILL
    assert list_versions(repository / "brick") == []
    leftovers = list((repository / ".staging").iterdir())
    assert len(leftovers) == 1 and (leftovers[0] / IR_BIN_FILENAME).is_file()

    result = export_run(trained_run, repository, ExportOptions(evaluate=False))
    assert result.version == 1
    assert list((repository / ".staging").iterdir()) == []
    assert not os.path.exists(leftovers[0])
