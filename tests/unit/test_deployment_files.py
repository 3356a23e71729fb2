"""What can be checked of the deployment files without a Docker daemon (none runs on these machines)."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib

import yaml

from tests.conftest import REPO_ROOT
from visinspect_api.model_repository import OPENVINO_RELEASE, OVMS_IMAGE
from visinspect_server.settings import parse

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def test_ovms_service_is_pinned_mounted_read_only_and_checked() -> None:
    ovms = COMPOSE["services"]["ovms"]
    assert ovms["image"] == OVMS_IMAGE
    assert "./model_repository:/models:ro" in ovms["volumes"]
    assert "--config_path=/models/config.json" in ovms["command"]
    assert "http://localhost:8000/v2/health/ready" in ovms["healthcheck"]["test"]
    assert "--rest_port=8000" in ovms["command"] and "ports" not in ovms  # OVMS stays internal
    assert ovms["restart"] == "unless-stopped"


def test_facade_command_is_accepted_by_the_server_settings() -> None:
    facade = COMPOSE["services"]["facade"]
    command = facade["command"]
    assert command[0] == "serve"
    settings = parse(command[1:])
    assert settings.backend == "kserve"
    assert settings.ovms_address == "ovms:9000"
    published = {int(mapping.split(":")[0]) for mapping in facade["ports"]}
    assert published == {settings.port, settings.metrics_port}
    assert facade["depends_on"]["ovms"]["condition"] == "service_healthy"
    assert facade["healthcheck"]["test"][1:3] == ["visinspect-server", "health"]
    assert "./model_repository:/models:ro" in facade["volumes"]


def test_build_files_exist_and_install_only_what_each_image_needs() -> None:
    for service, packages, forbidden in (
        # the compose facade talks to OVMS (--backend kserve): its image needs the server's [kserve] extra
        ("facade", {"./proto", "'./server[kserve]'"}, {"torch", "./training", "anomalib"}),
        ("training", {"./proto", "./training", "torch==2.14.1"}, set()),
    ):
        build = COMPOSE["services"][service]["build"]
        dockerfile = (REPO_ROOT / build["context"] / build["dockerfile"]).read_text()
        install = " ".join(line for line in dockerfile.splitlines() if "pip install" in line or line.startswith("    "))
        assert packages <= set(install.replace("\\", " ").split())
        assert not forbidden & set(install.split())
        assert re.search(r"^USER visinspect$", dockerfile, re.MULTILINE)
    assert "HEALTHCHECK" in (REPO_ROOT / "server" / "Dockerfile").read_text()


def test_compose_paths_exist() -> None:
    assert (REPO_ROOT / "model_repository" / "README.md").is_file()
    for service in COMPOSE["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source == "." or source.startswith("./"), volume


def dependencies(distribution: str) -> list[str]:
    return tomllib.loads((REPO_ROOT / distribution / "pyproject.toml").read_text())["project"]["dependencies"]


def test_one_openvino_release_exports_and_serves() -> None:
    """OVMS's image, training's OpenVINO and the stand-in's are the one pair the contracts package states."""
    assert OVMS_IMAGE.endswith(":" + OPENVINO_RELEASE)
    assert f"openvino=={OPENVINO_RELEASE}" in dependencies("training")
    assert f"openvino>={OPENVINO_RELEASE}" in dependencies("server")  # reads IR of that release or older
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.findall(r'"openvino[=<>~!]=?([^"]*)"', makefile) == [OPENVINO_RELEASE]  # the stand-in's environment
    assert importlib.metadata.version("openvino") == OPENVINO_RELEASE  # what the tests export with
    mentioned = set(re.findall(r"openvino/model_server:([\w.-]+)", (REPO_ROOT / "README.md").read_text()))
    assert mentioned == {OPENVINO_RELEASE}


def dockerfile_copies() -> set[str]:
    sources = set()
    for dockerfile in ("server/Dockerfile", "training/Dockerfile"):
        for line in (REPO_ROOT / dockerfile).read_text().splitlines():
            if line.startswith("COPY "):
                sources.add(line.split()[1].rstrip("/"))
    return sources


def test_the_build_context_holds_only_what_the_dockerfiles_copy() -> None:
    """Everything is ignored except the folders the Dockerfiles copy (no virtualenvs, data, runs or models)."""
    patterns = [line for line in (REPO_ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert patterns[0] == "*"
    kept = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    assert kept == dockerfile_copies() == {"proto", "server", "training", "client"}
    for build in (service["build"] for service in COMPOSE["services"].values() if "build" in service):
        assert build["context"] == "."  # the .dockerignore at the root applies


def test_training_image_installs_cpu_torch() -> None:
    """torch comes from PyTorch's CPU index at the trainer's pin; PyPI's Linux wheel would pull CUDA."""
    dockerfile = (REPO_ROOT / "training" / "Dockerfile").read_text()
    torch_pin = next(d for d in dependencies("training") if d.startswith("torch=="))
    commands = [c.strip(" \\\n") for c in re.split(r"&&|RUN ", dockerfile) if "pip install" in c]
    with_torch = [c for c in commands if torch_pin in c.split()]
    assert len(with_torch) == 1
    assert "--index-url https://download.pytorch.org/whl/cpu" in with_torch[0]


def test_training_runs_as_the_invoking_user_in_the_checkout() -> None:
    """Files it writes belong to the user; it creates data/, runs/ and the repository itself (a bind mount of
    a missing folder would be created by the daemon as root); caches go to a git-ignored folder."""
    training = COMPOSE["services"]["training"]
    assert training["user"] == "${UID:-1000}:${GID:-1000}"
    assert training["volumes"] == [".:/work"] and training["working_dir"] == "/work"
    environment = training["environment"]
    assert environment["HOME"].startswith("/work/.cache/")
    assert environment["VISINSPECT_CACHE_DIR"].startswith("/work/.cache/")
    assert ".cache/" in (REPO_ROOT / ".gitignore").read_text().splitlines()


def test_export_warns_when_its_openvino_is_not_the_ovms_release(monkeypatch, caplog) -> None:
    from visinspect_training import export

    export._warn_unless_ovms_release()
    assert not caplog.records  # the pinned release: silent
    monkeypatch.setattr(export.importlib.metadata, "version", lambda _name: "2099.1.0")
    with caplog.at_level("WARNING", logger=export.__name__):
        export._warn_unless_ovms_release()
    assert f"exporting with OpenVINO 2099.1.0, but {OVMS_IMAGE} is built on {OPENVINO_RELEASE}" in caplog.text
