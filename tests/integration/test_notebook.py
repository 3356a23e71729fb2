"""The walkthrough notebook runs end to end (quick settings, synthetic data) and is committed without outputs."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tests.conftest import REPO_ROOT

NOTEBOOK = REPO_ROOT / "training" / "notebooks" / "walkthrough.ipynb"


def test_notebook_is_committed_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code_cells)


def test_notebook_runs_end_to_end(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VISINSPECT_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("VISINSPECT_NOTEBOOK_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.delenv("VISINSPECT_SERVER", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = "\n".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "image AUROC" in outputs and "version 1 in" in outputs
    assert "threshold: false_reject_rate, target 1.0%" in outputs
    assert "expected: false-reject rate" in outputs and "good parts rejected" in outputs
    reports = [
        output["data"]["text/html"]
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "text/html" in output.get("data", {})
    ]
    assert len(reports) == 1 and reports[0].startswith("<iframe srcdoc=") and "data:image/png;base64," in reports[0]
    assert "'is_anomalous'" in outputs and "'model': 'brick'" in outputs
    images = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    assert len(images) == 3  # score histogram, anomaly maps, overlay
    assert (tmp_path / "work" / "model_repository" / "brick" / "1" / "model.xml").is_file()
