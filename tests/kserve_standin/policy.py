"""Which versions of which models OVMS serves: ``config.json``, ``model_version_policy`` and the per-poll plan.

Pure logic (standard library only), so it imports from either virtualenv. Each rule follows OpenVINO Model Server
(openvinotoolkit/model_server), cited by path:

- docs/model_version_policy.md, src/model_version_policy.cpp: ``all``, ``latest`` (the newest ``num_versions``) and
  ``specific`` (``versions``); with no policy OVMS serves the latest 1 (``getDefaultVersionPolicy``).
- src/modelconfig.cpp ``parsePluginConfig``: plugin_config values are strings, integers or doubles, all passed to
  OpenVINO as strings; ``parseModelVersionPolicy``: exactly one key, ``specific`` keeps versions > 0.
- docs/parameters.md: ``base_path`` may be relative to the config.json location.
- src/modelmanager.cpp ``readAvailableVersions``: version folders are numeric names > 0; a missing base path changes
  nothing. Here a folder counts once it holds ``model.xml`` (OVMS would try, and fail, to load a half-copied one;
  the training exporter publishes a version folder with one rename, so both see the same thing).
- src/modelmanager.cpp ``getVersionsToChange`` and src/modelconfig.cpp ``isReloadRequired``: start what is wanted and
  not registered, reload what is wanted and retired or whose config changed (base path, device, plugin config; not the
  policy), retire what is registered and no longer wanted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path


class State(IntEnum):
    """A version's state, with OVMS's values (src/modelversionstatus.hpp ``ModelVersionState``)."""

    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


class ConfigError(ValueError):
    """config.json does not have the shape OVMS accepts; OVMS then applies none of it (docs/online_config_changes.md)."""


@dataclass(frozen=True)
class Policy:
    kind: str  # "all", "latest" or "specific"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def filter(self, available: Iterable[int]) -> list[int]:
        """The versions to serve out of those on disk, ascending."""
        ordered = sorted(set(available))
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.versions]
        return ordered[max(len(ordered) - self.num_versions, 0) :] if self.num_versions > 0 else []


DEFAULT_POLICY = Policy("latest", 1)


@dataclass(frozen=True)
class ModelSpec:
    """One model_config_list entry. ``plugin_config`` None: compile each version at its metadata's precision."""

    name: str
    base_path: Path
    target_device: str = "CPU"
    policy: Policy = DEFAULT_POLICY
    plugin_config: tuple[tuple[str, str], ...] | None = ()

    def reload_required(self, other: ModelSpec) -> bool:
        return (self.base_path, self.target_device, self.plugin_config) != (
            other.base_path,
            other.target_device,
            other.plugin_config,
        )


@dataclass(frozen=True)
class Plan:
    start: list[int]
    reload: list[int]
    retire: list[int]


def parse_policy(node: object) -> Policy:
    if node is None:
        return DEFAULT_POLICY
    if not isinstance(node, dict) or len(node) != 1:
        raise ConfigError(f"model_version_policy must be an object with one key, got {node!r}")
    ((kind, body),) = node.items()
    if kind == "all" and body == {}:
        return Policy("all")
    value = next(iter(body.values())) if isinstance(body, dict) and len(body) == 1 else None
    if kind == "latest" and isinstance(value, int) and not isinstance(value, bool) and "num_versions" in body:
        return Policy("latest", num_versions=value)
    if kind == "specific" and isinstance(value, list) and "versions" in body:
        wanted = (v for v in value if isinstance(v, int) and not isinstance(v, bool) and v > 0)
        return Policy("specific", versions=tuple(sorted(set(wanted))))
    raise ConfigError(f"unsupported model_version_policy {node!r}")


def _plugin_value(key: str, value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:f}"  # C++ std::to_string(double)
    raise ConfigError(f"plugin_config {key} must be a string or a number, got {value!r}")


def parse_config(text: str, folder: Path) -> dict[str, ModelSpec]:
    """The models of a config.json whose folder is ``folder``. Raises ConfigError (or ValueError for bad JSON)."""
    document = json.loads(text)
    entries = document.get("model_config_list") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ConfigError("config.json has no model_config_list array")
    specs: dict[str, ModelSpec] = {}
    for entry in entries:
        config = entry.get("config") if isinstance(entry, dict) else None
        if not isinstance(config, dict) or not all(isinstance(config.get(k), str) for k in ("name", "base_path")):
            raise ConfigError(f"a model_config_list entry needs config.name and config.base_path: {entry!r}")
        plugin = config.get("plugin_config", {})
        if not isinstance(plugin, dict):
            raise ConfigError(f"plugin_config of {config['name']} must be an object")
        specs[config["name"]] = ModelSpec(
            name=config["name"],
            base_path=folder / config["base_path"],  # an absolute base_path stays as it is
            target_device=str(config.get("target_device", "CPU")),
            policy=parse_policy(config.get("model_version_policy")),
            plugin_config=tuple(sorted((k, _plugin_value(k, v)) for k, v in plugin.items())),
        )
    return specs


def fallback_specs(repository: Path) -> dict[str, ModelSpec]:
    """Without config.json: every model folder, all versions, each at its metadata's precision."""
    folders = sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {p.name: ModelSpec(p.name, p, policy=Policy("all"), plugin_config=None) for p in folders}


def versions_on_disk(base_path: Path) -> list[int] | None:
    """Numeric version folders > 0 holding model.xml; None when ``base_path`` is not a folder."""
    if not base_path.is_dir():
        return None
    return sorted(
        int(p.name) for p in base_path.iterdir() if p.name.isdigit() and int(p.name) > 0 and (p / "model.xml").is_file()
    )


def plan(requested: Iterable[int], registered: Mapping[int, tuple[State, ModelSpec]], spec: ModelSpec) -> Plan:
    """What one poll does to a model whose registered versions are ``{version: (state, spec loaded with)}``."""
    wanted = set(requested)
    return Plan(
        start=sorted(wanted - registered.keys()),
        reload=sorted(
            v
            for v in wanted & registered.keys()
            if registered[v][0] >= State.UNLOADING or registered[v][1].reload_required(spec)
        ),
        retire=sorted(v for v in registered.keys() - wanted if registered[v][0] < State.UNLOADING),
    )
