"""The backend plug-ins: the factory table, each backend's settings group, and optional dependencies."""

from __future__ import annotations

import asyncio
import importlib
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest

from visinspect_server import settings as settings_module
from visinspect_server.backends import BACKENDS, create_backend
from visinspect_server.backends.base import Readiness, ServedVersions
from visinspect_server.backends.openvino import EmbeddedBackend
from visinspect_server.settings import ServerSettings


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter (its own ``sys.modules``)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=False)


def test_every_backend_name_a_setting_accepts_has_a_module_with_create() -> None:
    assert set(BACKENDS) == set(typing.get_args(settings_module.BackendName))
    for module_name, _extra in BACKENDS.values():
        assert callable(importlib.import_module(module_name).create)


def test_the_embedded_backend_gets_its_settings_group(tmp_path: Path) -> None:
    settings = ServerSettings(model_repository=tmp_path, performance_hint="THROUGHPUT", cache_dir=tmp_path / "c")
    backend = create_backend(settings)
    assert isinstance(backend, EmbeddedBackend)
    assert (backend.options.performance_hint, backend.options.cache_dir) == ("THROUGHPUT", tmp_path / "c")
    assert not backend.probes_readiness
    assert asyncio.run(backend.readiness({"m": [1]})) == Readiness(server=True, models={})
    assert backend.served_versions(tmp_path, {"m": [3, 1]}) == {"m": ServedVersions([3, 1])}


def test_the_kserve_backend_gets_its_settings_group(tmp_path: Path) -> None:
    settings = ServerSettings(
        model_repository=tmp_path,
        backend="kserve",
        ovms_address="ovms:9000",
        ovms_timeout_s=2.5,
        max_message_bytes=4096,
    )
    backend = create_backend(settings)
    assert backend.location == "inference backend at ovms:9000"
    assert backend.probes_readiness
    options = backend.options  # type: ignore[attr-defined]
    assert (options.address, options.timeout_s, options.max_message_bytes) == ("ovms:9000", 2.5, 4096)


def test_the_embedded_server_never_imports_the_model_server_client(tmp_path: Path) -> None:
    done = run_python(f"""
        import sys
        from pathlib import Path
        from visinspect_server import app, main, pipeline, registry
        from visinspect_server.settings import ServerSettings
        server = app.InspectionServer(ServerSettings(model_repository=Path({str(tmp_path)!r})))
        loaded = sorted(name for name in list(sys.modules) if name.split(".")[0] == "tritonclient")
        print(type(server.runtime.backend).__name__, loaded)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["EmbeddedBackend", "[]"]


def test_a_backend_whose_extra_is_missing_says_how_to_install_it(tmp_path: Path) -> None:
    done = run_python(f"""
        import sys
        sys.modules["tritonclient"] = None  # as if the [kserve] extra were not installed
        from pathlib import Path
        from visinspect_server.backends import BackendUnavailableError, create_backend
        from visinspect_server.settings import ServerSettings
        try:
            create_backend(ServerSettings(model_repository=Path({str(tmp_path)!r}), backend="kserve"))
        except BackendUnavailableError as exc:
            print(exc)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "--backend kserve needs tritonclient: pip install 'visinspect-server[kserve]'"


def test_serve_without_the_extra_exits_2_with_the_install_command(tmp_path: Path) -> None:
    done = run_python(f"""
        import sys
        sys.modules["tritonclient"] = None  # as if the [kserve] extra were not installed
        from visinspect_server.main import main
        sys.exit(main(["serve", "--model-repository", {str(tmp_path)!r}, "--backend", "kserve", "--port", "0"]))
    """)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "visinspect-server serve: error: --backend kserve needs tritonclient: pip install 'visinspect-server[kserve]'"
    )


def test_a_missing_dependency_of_the_base_install_is_not_blamed_on_an_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(BACKENDS, "embedded", ("visinspect_server.backends.no_such_module", ""))
    with pytest.raises(ModuleNotFoundError):
        create_backend(ServerSettings(model_repository=tmp_path))


def test_the_embedded_backend_neither_forks_nor_loads_openvino_telemetry(tmp_path: Path) -> None:
    """openvino's import would fork a telemetry sender off a thread: a server must not (see backends/openvino.py)."""
    done = run_python(f"""
        import os, sys, threading
        forks = []
        os.register_at_fork(before=lambda: forks.append(1))
        from pathlib import Path
        from visinspect_server.backends import create_backend
        from visinspect_server.settings import ServerSettings
        create_backend(ServerSettings(model_repository=Path({str(tmp_path)!r})))
        for thread in threading.enumerate():  # the telemetry sender runs in a pool thread: let them finish
            if thread is not threading.current_thread() and not thread.daemon:
                thread.join(5)
        print(len(forks), sys.modules.get("openvino_telemetry"))
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "None"]
