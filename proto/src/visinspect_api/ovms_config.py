"""The model server's ``config.json``: which versions OVMS serves, and how it compiles them.

OVMS applies one entry per model to every version of that model: the version policy picks the versions
it loads (``docs/model_version_policy.md`` in openvinotoolkit/model_server; without a policy, the newest
one), and ``plugin_config`` goes to the compilation of each of them, so a change to it recompiles them all
(``docs/online_config_changes.md``). Training writes the file; the facade reads it to offer exactly what
the model server serves, at the precision each version was evaluated at.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from visinspect_api.model_repository import OVMS_CONFIG_FILENAME, MetadataError

PolicyKind = Literal["latest", "specific", "all"]
PRECISION_HINT = "INFERENCE_PRECISION_HINT"
PERFORMANCE_HINT = "PERFORMANCE_HINT"
PerformanceHint = Literal["LATENCY", "THROUGHPUT"]  # OpenVINO's, as the facade and OVMS compile with it
PERFORMANCE_HINTS: tuple[PerformanceHint, ...] = get_args(PerformanceHint)


@dataclass(frozen=True)
class ModelServingConfig:
    """One model's entry: where its versions are, which the model server loads, and its compile properties."""

    name: str
    base_path: str
    policy: PolicyKind = "latest"
    num_versions: int = 1  # with "latest"
    versions: tuple[int, ...] = ()  # with "specific"
    plugin_config: Mapping[str, str] = field(default_factory=dict)

    @property
    def inference_precision(self) -> str | None:
        """The precision the model server compiles every version at (None: OpenVINO's default)."""
        return self.plugin_config.get(PRECISION_HINT)

    def served_versions(self, on_disk: Iterable[int]) -> list[int]:
        """The versions (of those on disk) the model server loads under this policy, ascending."""
        present = sorted(set(on_disk))
        if self.policy == "all":
            return present
        if self.policy == "specific":
            return [v for v in present if v in self.versions]
        return present[-self.num_versions :]

    def to_json(self) -> dict[str, Any]:
        """The entry as OVMS reads it."""
        policies: dict[PolicyKind, dict[str, Any]] = {
            "latest": {"num_versions": self.num_versions},
            "specific": {"versions": list(self.versions)},
            "all": {},
        }
        policy = policies[self.policy]
        return {
            "config": {
                "name": self.name,
                "base_path": self.base_path,
                "target_device": "CPU",
                "model_version_policy": {self.policy: policy},
                "plugin_config": dict(self.plugin_config),
            }
        }


def read_ovms_config(repository: Path) -> dict[str, ModelServingConfig] | None:
    """The models of ``<repository>/config.json`` by name; None when there is no such file."""
    path = repository / OVMS_CONFIG_FILENAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MetadataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        entries = json.loads(text)["model_config_list"]
        models = [_entry(item["config"]) for item in entries]
    except (ValueError, KeyError, TypeError) as exc:
        raise MetadataError(f"{path} is not an OVMS model_config_list: {exc!r}") from exc
    return {model.name: model for model in models}


def _entry(config: Mapping[str, Any]) -> ModelServingConfig:
    policy = config.get("model_version_policy") or {"latest": {"num_versions": 1}}
    if len(policy) != 1:
        raise ValueError(f"one model_version_policy expected, got {sorted(policy)}")
    ((kind, options),) = policy.items()
    if kind not in ("latest", "specific", "all"):
        raise ValueError(f"unknown model_version_policy {kind!r}")
    plugin_config = {str(k): str(v) for k, v in (config.get("plugin_config") or {}).items()}
    return ModelServingConfig(
        name=str(config["name"]),
        base_path=str(config["base_path"]),
        policy=kind,
        num_versions=int(options.get("num_versions", 1)) if kind == "latest" else 1,
        versions=tuple(int(v) for v in options.get("versions", ())) if kind == "specific" else (),
        plugin_config=plugin_config,
    )
