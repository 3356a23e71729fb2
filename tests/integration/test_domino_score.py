"""score.py called exactly as Domino does: JSON payload -> predict(**payload["data"]) -> JSON result."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO_ROOT


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
