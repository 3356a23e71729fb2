"""`make demo`'s script end to end: trains once, serves, scores with the CLI; a re-run reuses the model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT


def run_demo(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "demo.py"), "--data-root", str(tmp_path / "data"),
         "--repository", str(tmp_path / "repository"), "--output", str(tmp_path / "out")],
        capture_output=True, text=True, check=False, cwd=tmp_path, timeout=900,
    )  # fmt: skip


def test_demo_trains_serves_scores_and_reuses_the_model(tmp_path: Path) -> None:
    first = run_demo(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "==> training patchcore on synthetic/brick" in first.stdout
    assert "AUROC" in first.stdout
    overlays = list((tmp_path / "out" / "overlays").rglob("*.png"))
    assert len(overlays) == len(list((tmp_path / "data" / "brick" / "test").rglob("*.png")))

    second = run_demo(tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "==> reusing" in second.stdout and "==> training " not in second.stdout
    assert (tmp_path / "repository" / "brick" / "1").is_dir() and not (tmp_path / "repository" / "brick" / "2").exists()
