"""What can be checked of the deployment files without a Docker daemon (none runs on these machines)."""

from __future__ import annotations

import re

import yaml

from tests.conftest import REPO_ROOT
from visinspect_server.settings import parse

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def test_ovms_service_is_pinned_mounted_read_only_and_checked() -> None:
    ovms = COMPOSE["services"]["ovms"]
    image, tag = ovms["image"].split(":")
    assert image == "openvino/model_server"
    assert tuple(int(part) for part in tag.split(".")[:2]) >= (2026, 3)
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
        ("facade", {"./proto", "./server"}, {"torch", "./training", "anomalib"}),
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
            assert source.startswith("./"), volume
