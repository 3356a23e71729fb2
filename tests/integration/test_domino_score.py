"""score.py called exactly as Domino does: JSON payload -> predict(**payload["data"]) -> JSON result."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO_ROOT
from visinspect_client import InspectionClient


@pytest.fixture
def score(served, synthetic_category: Path, monkeypatch) -> ModuleType:
    monkeypatch.setenv("VISINSPECT_SERVER", served.address)
    monkeypatch.setenv("VISINSPECT_IMAGE_ROOT", str(synthetic_category))
    spec = importlib.util.spec_from_file_location("score", REPO_ROOT / "score.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def call_like_domino(score: ModuleType, request_body: str) -> str:
    payload = json.loads(request_body)
    return json.dumps({"result": score.predict(**payload["data"])})


def test_relative_and_absolute_paths(score, synthetic_category: Path) -> None:
    relative = json.loads(call_like_domino(score, '{"data": {"image": "test/hole/000.png"}}'))["result"]
    absolute_path = str(synthetic_category / "test" / "hole" / "000.png")
    absolute = json.loads(call_like_domino(score, json.dumps({"data": {"image": absolute_path}})))["result"]
    assert relative == absolute
    assert set(relative) == {"is_anomalous", "confidence", "score", "model", "model_version"}
    assert relative["model"] == "brick" and relative["model_version"] == 1
    assert isinstance(relative["is_anomalous"], bool)
    assert 0.5 <= relative["confidence"] <= 1.0 and 0.0 <= relative["score"] <= 1.0


def test_values_equal_a_direct_detect(score, served, synthetic_category: Path) -> None:
    """Every field of the result is the server's own Detect answer for the same image and threshold."""
    images = sorted(p.relative_to(synthetic_category).as_posix() for p in synthetic_category.glob("test/*/00[01].png"))
    folders = {Path(image).parent.name for image in images}
    assert "good" in folders and len(folders) >= 3  # good images and at least two kinds of defect
    compared = []
    with InspectionClient(served.address) as client:
        for image in images:
            for threshold in (None, 0.2, 0.9):
                data = {"image": image} if threshold is None else {"image": image, "threshold": threshold}
                result = json.loads(call_like_domino(score, json.dumps({"data": data})))["result"]
                direct = client.detect(synthetic_category / image, threshold=threshold)
                assert result["is_anomalous"] is (direct.verdict == "anomalous"), (image, threshold)
                # The server may batch concurrent calls, which changes the last bits of a score.
                assert result["score"] == pytest.approx(direct.score, rel=1e-6), (image, threshold)
                assert result["confidence"] == pytest.approx(direct.confidence, rel=1e-6), (image, threshold)
                assert (result["model"], result["model_version"]) == (direct.model, direct.version)
                compared.append((threshold, direct))
    # The comparison can tell the fields apart: score and confidence differ widely on some image, and the
    # threshold key changes some verdict.
    assert any(abs(d.score - 0.5) > 0.2 and abs(d.confidence - d.score) > 0.2 for _, d in compared)
    verdicts = {t: [d.is_anomalous for u, d in compared if u == t] for t in (None, 0.2, 0.9)}
    assert verdicts[None] != verdicts[0.2] or verdicts[None] != verdicts[0.9]


def test_threshold_and_model_keys(score) -> None:
    strict = json.loads(
        call_like_domino(score, '{"data": {"image": "test/good/000.png", "threshold": 1.0, "model": "brick"}}')
    )
    assert strict["result"]["is_anomalous"] is False


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("../../../etc/passwd", "outside the allowed image folder"),
        ("/etc/hostname", "outside the allowed image folder"),
        ("test/good/999.png", "does not exist"),
        ("test", "does not exist under"),
        ("", "non-empty path string"),
    ],
)
def test_refused_paths(score, image: str, message: str) -> None:
    with pytest.raises(score.ScoringError, match=message) as caught:
        call_like_domino(score, json.dumps({"data": {"image": image}}))
    assert caught.value.__cause__ is None and (caught.value.__context__ is None or caught.value.__suppress_context__)


def test_symlink_escape(score, synthetic_category: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes((synthetic_category / "test" / "good" / "000.png").read_bytes())
    link = synthetic_category / "link-out.png"
    link.symlink_to(secret)
    try:
        with pytest.raises(score.ScoringError, match="outside the allowed image folder"):
            call_like_domino(score, '{"data": {"image": "link-out.png"}}')
    finally:
        link.unlink()


def test_unreadable_image(score, synthetic_category: Path) -> None:
    fake = synthetic_category / "not-an-image.png"
    fake.write_text("hello")
    try:
        with pytest.raises(score.ScoringError, match="not-an-image.png: .*decode"):
            call_like_domino(score, '{"data": {"image": "not-an-image.png"}}')
    finally:
        fake.unlink()


def test_unknown_key_is_a_clear_type_error(score) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        call_like_domino(score, '{"data": {"image": "test/good/000.png", "colour": "red"}}')


@pytest.mark.package_index  # the fresh environment's dependencies come from the index
def test_the_model_image_requirements_are_enough_to_score(served, synthetic_category: Path, tmp_path: Path) -> None:
    """A fresh virtualenv with only requirements.txt installed, as Domino builds the model image, imports score.py
    and scores an image through the served facade."""
    venv = tmp_path / "model-image"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", "requirements.txt"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    installed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True, check=True
    ).stdout
    names = {item["name"].lower() for item in json.loads(installed)}
    assert {"visinspect-client", "visinspect-api", "grpcio"} <= names
    assert not names & {"torch", "openvino", "anomalib", "visinspect-server", "visinspect-training"}
    call = "import json, score; print(json.dumps(score.predict(image='test/good/000.png')))"
    env = {
        "VISINSPECT_SERVER": served.address,
        "VISINSPECT_IMAGE_ROOT": str(synthetic_category),
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(
        [str(python), "-c", call], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["model"] == "brick" and isinstance(result["is_anomalous"], bool)
