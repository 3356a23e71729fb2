"""Server settings: flags over environment over defaults, typed, validated, and documented."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from visinspect_server.settings import ServerSettings, add_arguments, settings_from


def parse(argv: list[str], environ: dict[str, str]) -> ServerSettings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return settings_from(parser.parse_args(argv), environ)


def test_defaults() -> None:
    settings = parse(["--model-repository", "repo"], {})
    assert settings.model_repository == Path("repo")
    assert (settings.port, settings.performance_hint, settings.image_root) == (50051, "LATENCY", None)


def test_flag_beats_environment_beats_default() -> None:
    environ = {"VISINSPECT_MODEL_REPOSITORY": "/env/repo", "VISINSPECT_PORT": "7000", "VISINSPECT_MAX_PIXELS": "1000"}
    settings = parse(["--port", "8000"], environ)
    assert settings.model_repository == Path("/env/repo")
    assert settings.port == 8000
    assert settings.max_pixels == 1000


def test_types_are_converted() -> None:
    settings = parse(
        ["--model-repository", "r", "--models", "a, b", "--log-json", "false", "--poll-interval-s", "0.5",
         "--performance-hint", "throughput", "--image-root", "/data"],
        {},
    )  # fmt: skip
    assert settings.models == ("a", "b")
    assert settings.log_json is False
    assert settings.poll_interval_s == 0.5
    assert settings.performance_hint == "THROUGHPUT"
    assert settings.image_root == Path("/data")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--model-repository"),
        (["--model-repository", "r", "--port", "http"], "port must be a number"),
        (["--model-repository", "r", "--port", "70000"], "invalid setting port"),
        (["--model-repository", "r", "--log-json", "maybe"], "log_json must be true or false"),
        (["--model-repository", "r", "--performance-hint", "fast"], "invalid setting performance_hint"),
        (["--model-repository", "r", "--max-pixels", "0"], "invalid setting max_pixels"),
    ],
)
def test_invalid_settings(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(argv, {})


def test_every_setting_is_in_the_readme() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    for spec in fields(ServerSettings):
        assert f"`--{spec.name.replace('_', '-')}` | `VISINSPECT_{spec.name.upper()}`" in readme, spec.name
