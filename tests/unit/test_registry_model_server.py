"""The registry with a model server: it offers what the model server serves, waits (with back-off) for versions
it has not loaded yet instead of rejecting them, and stops offering versions its version policy retires.

The backend factory here stands for the model server: a version is ready once the test says so."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from tests.sample_metadata import make_metadata
from visinspect_api.model_repository import ModelMetadata, write_metadata
from visinspect_api.ovms_config import ModelServingConfig, read_ovms_config
from visinspect_server import registry as registry_module
from visinspect_server.backends.base import ModelLoadError, ModelNotReadyError, RawOutput, ServedVersions
from visinspect_server.errors import NotFoundError
from visinspect_server.registry import ModelRegistry


class Backend:
    jobs = 1

    def __init__(self, version: int) -> None:
        self.version = version

    async def infer(self, images: np.ndarray) -> RawOutput:
        raise AssertionError("not called")

    def warm_up(self, max_batch: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class ModelServer:
    """Which versions are ready; a factory that refuses the others as not ready yet."""

    def __init__(self) -> None:
        self.ready: set[int] = set()
        self.attempts: dict[int, int] = {}
        self.incompatible: set[int] = set()

    def factory(self, folder: Path, metadata: ModelMetadata) -> Backend:
        version = int(folder.name)
        self.attempts[version] = self.attempts.get(version, 0) + 1
        if version in self.incompatible:
            raise ModelLoadError("remote metadata does not match our metadata")
        if version not in self.ready:
            raise ModelNotReadyError(f"version {version} is not ready")
        return Backend(version)


def write_config(repository: Path, num_versions: int = 2, precision: str = "f32") -> None:
    config = ModelServingConfig("brick", "brick", "latest", num_versions, (), {"INFERENCE_PRECISION_HINT": precision})
    (repository / "config.json").write_text(json.dumps({"model_config_list": [config.to_json()]}))


def publish(repository: Path, version: int, num_versions: int = 2) -> None:
    folder = repository / "brick" / str(version)
    folder.mkdir(parents=True)
    (folder / "model.xml").write_text("<net/>")
    (folder / "model.bin").write_bytes(b"weights %d" % version)
    digest = hashlib.sha256((folder / "model.bin").read_bytes()).hexdigest()
    write_metadata(folder, make_metadata(model_name="brick", ir_bin_sha256=digest))
    write_config(repository, num_versions)


def served_by_policy(repository: Path, on_disk: Mapping[str, list[int]]) -> dict[str, ServedVersions]:
    config = read_ovms_config(repository) or {}
    return {
        name: ServedVersions(config[name].served_versions(v), config[name])
        for name, v in on_disk.items()
        if name in config
    }


async def serving_1_and_2(registry: ModelRegistry, server: ModelServer, repository: Path) -> None:
    """Versions 1 and 2 published, loaded by the model server and offered by the registry."""
    publish(repository, 1)
    publish(repository, 2)
    server.ready |= {1, 2}
    await registry.refresh()
    assert sorted(registry.loaded["brick"]) == [1, 2]


@pytest.fixture
def no_backoff(monkeypatch) -> None:
    monkeypatch.setattr(registry_module, "RETRY_FIRST_S", 0.0)


def test_serves_n_until_the_model_server_has_n_plus_1_then_retires_n_minus_1(tmp_path: Path, no_backoff) -> None:
    server = ModelServer()
    registry = ModelRegistry(tmp_path, server.factory, served_versions=served_by_policy)

    async def scenario() -> None:
        await serving_1_and_2(registry, server, tmp_path)
        publish(tmp_path, 3)  # on disk before the model server has loaded it
        for _ in range(3):
            await registry.refresh()
            assert registry.resolve("brick").version == 2  # N keeps serving, N+1 is not rejected
        assert server.attempts[3] == 3
        # latest 2: version 1 leaves the policy as soon as 3 is on disk; the facade stops offering it
        assert sorted(registry.loaded["brick"]) == [2]
        with pytest.raises(NotFoundError, match="version 1 was retired by the model server's version policy"):
            registry.resolve("brick", 1)
        server.ready.add(3)
        await registry.refresh()
        assert sorted(registry.loaded["brick"]) == [2, 3]
        assert registry.resolve("brick").version == 3

    asyncio.run(scenario())


def test_waiting_versions_back_off_and_incompatible_ones_are_rejected_once(tmp_path: Path, monkeypatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(registry_module.time, "monotonic", lambda: clock[0])
    server = ModelServer()
    rejected: list[str] = []
    registry = ModelRegistry(tmp_path, server.factory, served_versions=served_by_policy, on_rejected=rejected.append)

    async def scenario() -> None:
        publish(tmp_path, 1, num_versions=3)
        publish(tmp_path, 2, num_versions=3)
        server.incompatible.add(2)
        attempts = []
        for _ in range(40):  # 40 scans, one simulated second apart
            await registry.refresh()
            attempts.append(server.attempts.get(1, 0))
            clock[0] += 1.0
        # retried at 0, 1, 3, 7, 15, 31 s: doubling back-off from RETRY_FIRST_S
        assert attempts[-1] == 6, attempts
        assert server.attempts[2] == 1 and rejected == ["brick"]  # a mismatch is rejected, not retried
        assert registry.loaded == {}
        server.ready.add(1)
        clock[0] += registry_module.RETRY_MAX_S
        await registry.refresh()
        assert sorted(registry.loaded["brick"]) == [1]

    asyncio.run(scenario())


def test_without_a_model_server_policy_every_version_is_loaded_newest_first(tmp_path: Path) -> None:
    server = ModelServer()
    server.ready |= {1, 2, 3}
    registry = ModelRegistry(tmp_path, server.factory, versions_per_model=2)

    async def scenario() -> None:
        for version in (1, 2, 3):
            publish(tmp_path, version, num_versions=1)
        await registry.refresh()
        await registry.refresh()
        assert sorted(registry.loaded["brick"]) == [2, 3]
        assert 1 not in server.attempts  # older than the newest two: never loaded, on no scan

    asyncio.run(scenario())


def test_a_changed_model_server_configuration_checks_the_loaded_versions_again(tmp_path: Path, no_backoff) -> None:
    """config.json changes a model's plugin_config: the model server reloads its versions (not serving them
    meanwhile), and the facade checks them again before offering them."""
    server = ModelServer()
    registry = ModelRegistry(tmp_path, server.factory, served_versions=served_by_policy)

    async def scenario() -> None:
        await serving_1_and_2(registry, server, tmp_path)
        await registry.refresh()
        assert server.attempts == {1: 1, 2: 1}  # loaded once, not re-checked while nothing changes
        write_config(tmp_path, precision="bf16")
        server.ready.clear()  # reloading
        await registry.refresh()
        assert server.attempts == {1: 2, 2: 2}
        assert registry.loaded == {}
        server.ready |= {1, 2}
        await registry.refresh()
        assert sorted(registry.loaded["brick"]) == [1, 2]

    asyncio.run(scenario())
