"""Inference backends as plug-ins: one module each, chosen by ``--backend`` through :data:`BACKENDS`.

A backend module defines a ``create(settings) -> Backend`` function (:class:`~.base.Backend`: the process-wide
part, which loads each version as an :class:`~.base.InferenceBackend`). Adding one is a module here plus an
entry in :data:`BACKENDS` (and its name in ``settings.BackendName``). A module is imported only when chosen,
so a backend's dependencies (``tritonclient`` for ``kserve``: the ``visinspect-server[kserve]`` extra) are
needed only where it runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from visinspect_server.backends.base import Backend
    from visinspect_server.settings import ServerSettings

# --backend name -> (module, the extra that installs its dependencies, or "" when the base install has them)
BACKENDS: dict[str, tuple[str, str]] = {
    "embedded": ("visinspect_server.backends.openvino", ""),
    "kserve": ("visinspect_server.backends.kserve", "kserve"),
}


class BackendUnavailableError(RuntimeError):
    """The chosen backend's dependencies are not installed."""


def create_backend(settings: ServerSettings) -> Backend:
    """The process-wide backend ``settings.backend`` names, built from its group of the settings."""
    module_name, extra = BACKENDS[settings.backend]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if not extra:
            raise
        missing = (exc.name or "").partition(".")[0] or "its dependencies"
        raise BackendUnavailableError(
            f"--backend {settings.backend} needs {missing}: pip install 'visinspect-server[{extra}]'"
        ) from exc
    backend: Backend = module.create(settings)
    return backend
