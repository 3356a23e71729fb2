"""Writing the OVMS model repository: atomic version folders and the generated ``config.json``.

A version is built in ``<repository>/.staging/<name>`` and renamed into ``<model>/<N>`` in one step,
so a server polling the repository never sees half a version. Staging folders left by a crashed
export are removed by the next export (their owner process is gone).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

from visinspect_api.model_repository import (
    OVMS_CONFIG_FILENAME,
    STAGING_DIRNAME,
    MetadataError,
    list_models,
    list_versions,
    read_metadata,
)
from visinspect_api.ovms_config import (
    PERFORMANCE_HINT,
    PERFORMANCE_HINTS,
    PRECISION_HINT,
    ModelServingConfig,
    read_ovms_config,
)
from visinspect_training.errors import RepositoryError

log = logging.getLogger(__name__)

SERVED_VERSIONS = 2  # the previous version stays loaded while servers switch to the new one


def ensure_writable(repository: Path) -> None:
    """Create the repository if needed and check that we can write into it."""
    try:
        repository.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RepositoryError(f"cannot create model repository {repository}: {exc.strerror or exc}") from exc
    if not os.access(repository, os.W_OK | os.X_OK):
        raise RepositoryError(f"model repository {repository} is not writable: fix its permissions or choose another")


@contextlib.contextmanager
def staging_folder(repository: Path, model_name: str) -> Iterator[Path]:
    """A fresh folder on the repository's filesystem, removed unless it was published."""
    ensure_writable(repository)
    root = repository / STAGING_DIRNAME
    root.mkdir(exist_ok=True)
    _remove_abandoned(root)
    folder = root / f"{model_name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    try:
        yield folder
    finally:
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)


def _remove_abandoned(staging_root: Path) -> None:
    for folder in staging_root.iterdir():
        pid = folder.name.split(".")[-2] if folder.name.count(".") >= 2 else ""
        if pid.isdecimal() and not _process_alive(int(pid)):
            log.info("removing abandoned staging folder %s", folder)
            shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def publish(staged: Path, model_dir: Path) -> int:
    """Rename a complete staged folder to the model's next version number and return it."""
    model_dir.mkdir(exist_ok=True)
    version = (list_versions(model_dir) or [0])[-1] + 1
    while True:
        target = model_dir / str(version)
        if not target.exists():
            try:
                staged.rename(target)
                return version
            except OSError as exc:  # another exporter took this number between our check and rename
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise RepositoryError(f"cannot publish {target}: {exc.strerror or exc}") from exc
        version += 1


def check_model_precision(repository: Path, model_name: str, inference_precision: str) -> None:
    """Refuse a new version whose inference precision differs from the model's published versions.

    OVMS compiles every version of a model with the one ``plugin_config`` of its ``config.json`` entry
    (docs/model_version_policy.md, docs/online_config_changes.md in openvinotoolkit/model_server): a version
    at another precision would recompile the published ones at a precision they were not evaluated and
    calibrated at. The newest readable version speaks for the model.
    """
    for version in reversed(list_versions(repository / model_name)):
        try:
            existing = read_metadata(repository / model_name / str(version)).inference_precision
        except MetadataError:
            continue
        if existing != inference_precision:
            raise RepositoryError(
                f"model {model_name!r} is served at inference precision {existing} (version {version} and its "
                f"predecessors were evaluated at it), and OVMS compiles every version of a model with one "
                f"plugin_config: a {inference_precision} version would recompile them at {inference_precision}. "
                f"Export with --inference-precision {existing}, or as a new model with --model-name"
            )
        return


def write_ovms_config(repository: Path, hints: Mapping[str, str] | None = None) -> Path:
    """Regenerate ``config.json`` listing every model that has a valid version, for OVMS >= 2026.3.

    ``base_path`` is relative to the config file (OVMS resolves it so), so the repository can be
    mounted anywhere. Each model's inference precision comes from its newest version's metadata; its
    performance hint from ``hints`` (model name -> hint), else the one the current file gives it, else
    LATENCY: a hint belongs to the model, as OVMS applies it to all of its versions.
    """
    hints = dict(hints or {})
    for hint in hints.values():
        if hint not in PERFORMANCE_HINTS:
            raise RepositoryError(f"performance hint must be one of {PERFORMANCE_HINTS}, got {hint!r}")
    try:
        current = read_ovms_config(repository) or {}
    except MetadataError as exc:
        log.warning("regenerating %s from the versions alone: %s", OVMS_CONFIG_FILENAME, exc)
        current = {}
    entries = []
    for name in list_models(repository):
        versions = list_versions(repository / name)
        if not versions:
            continue
        try:
            metadata = read_metadata(repository / name / str(versions[-1]))
        except MetadataError as exc:
            log.warning("leaving %s out of %s: %s", name, OVMS_CONFIG_FILENAME, exc)
            continue
        previous = current.get(name)
        hint = hints.get(name) or (previous.plugin_config.get(PERFORMANCE_HINT) if previous else None) or "LATENCY"
        if previous is not None and previous.plugin_config.get(PERFORMANCE_HINT) not in (None, hint):
            log.info("%s: OVMS will reload every version of it with PERFORMANCE_HINT %s", name, hint)
        served = ModelServingConfig(
            name=name,
            base_path=name,
            num_versions=SERVED_VERSIONS,
            plugin_config={PERFORMANCE_HINT: hint, PRECISION_HINT: metadata.inference_precision},
        )
        entries.append(served.to_json())
    path = repository / OVMS_CONFIG_FILENAME
    temporary = path.with_name(f".{OVMS_CONFIG_FILENAME}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps({"model_config_list": entries}, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path
