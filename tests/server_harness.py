"""The real server in a subprocess (visinspect_server.local.LocalServer) plus test conveniences."""

from __future__ import annotations

import json
import re
import shutil
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc

from tests.kserve_standin.launch import StandIn
from visinspect_api.model_repository import METADATA_FILENAME
from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_api.v1 import inspection_pb2_grpc
from visinspect_server.local import LocalServer, free_port

__all__ = ["ServerProcess", "copy_version", "free_port", "start_server"]


class ServerProcess(LocalServer):
    """A LocalServer with the helpers tests use."""

    def stub(self, channel: grpc.Channel) -> inspection_pb2_grpc.InspectionServiceStub:
        return inspection_pb2_grpc.InspectionServiceStub(channel)

    def metric(self, name: str, labels: str = "", missing: float | None = None) -> float:
        """One sample's value from /metrics (``labels`` as rendered, e.g. ``model="brick"``); ``missing`` when
        the sample is absent (None: an AssertionError)."""
        text = urllib.request.urlopen(f"http://{self.host}:{self.metrics_port}/metrics", timeout=10).read().decode()
        pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" (\S+)"
        found = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
        if found is not None:
            return float(found.group(1))
        if missing is None:
            raise AssertionError(f"no sample {name}{{{labels}}} in /metrics")
        return missing

    def requests(self, method: str, code: str = "OK") -> float:
        """``visinspect_requests_total`` of one method and status code (0 before the first)."""
        return self.metric("visinspect_requests_total", f'code="{code}",method="{method}"', missing=0.0)

    def wait_for_log(self, text: str, timeout_s: float = 60.0) -> dict:
        """The first log line whose message contains ``text``."""
        what = f"log line containing {text!r}"
        index = self.wait_for_line(lambda entry: text in str(entry.get("message", "")), timeout_s=timeout_s, what=what)
        return self.logs[index]


def start_server(
    repository: Path,
    extra_args: Sequence[str] = (),
    wait_serving: bool = True,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    env: Mapping[str, str] | None = None,
    host: str = "127.0.0.1",
) -> ServerProcess:
    """Start the server on free ports polling the repository every 0.3 s; return once it listens/serves.

    ``credentials`` (TLS) are used by the health checks and ``channel()``; ``env`` adds environment variables.
    """
    server = ServerProcess(
        repository, ["--poll-interval-s", "0.3", *extra_args], credentials=credentials, env=env, host=host
    )
    server.start(wait_serving=wait_serving)
    return server


def copy_version(source: Path, target: Path, shift_threshold: float = 0.0, **metadata_changes: object) -> Path:
    """Publish a copy of a version folder at ``target`` atomically (a hidden staging folder, one rename).

    ``shift_threshold`` moves the calibrated raw image threshold, so the copy scores differently;
    ``metadata_changes`` replace top-level fields of its metadata JSON.
    """
    staging = target.parent / f".staging-{target.name}"
    shutil.copytree(source, staging)
    if shift_threshold or metadata_changes:
        metadata_path = staging / METADATA_FILENAME
        metadata = json.loads(metadata_path.read_text())
        metadata["calibration"]["image_threshold"] += shift_threshold
        metadata.update(metadata_changes)
        metadata_path.write_text(json.dumps(metadata))
    staging.rename(target)
    return target


OVMS_TIMEOUT_S = 3.0  # the facade's deadline on calls to the stand-in (--ovms-timeout-s)


def kserve_facade(
    repository: Path, standin: StandIn, *args: str, timeout_s: float | None = OVMS_TIMEOUT_S
) -> ServerProcess:
    """A facade (``--backend kserve``) in front of ``standin``; ``timeout_s`` None keeps the default deadline."""
    deadline = [] if timeout_s is None else ["--ovms-timeout-s", str(timeout_s)]
    return start_server(repository, ["--backend", "kserve", "--ovms-address", standin.address, *deadline, *args])


def stand_in_and_facade(exported) -> tuple[Path, StandIn, ServerProcess]:
    """The session's repository, a stand-in serving it and a facade in front of the stand-in."""
    repository = exported.version_dir.parents[1]
    standin = StandIn(repository).start()
    return repository, standin, kserve_facade(repository, standin)


def first_image_request(synthetic_category: Path) -> pb.DetectRequest:
    return pb.DetectRequest(image=pb.ImageInput(encoded=sample_images(synthetic_category)[0].read_bytes()))


def detect(server: ServerProcess, request: pb.DetectRequest, timeout: float = 30) -> pb.DetectResponse:
    with server.channel() as channel:
        return server.stub(channel).Detect(request, timeout=timeout)


def sample_images(synthetic_category: Path, per_folder: int = 2) -> list[Path]:
    folders = sorted(p for p in (synthetic_category / "test").iterdir() if p.is_dir())
    return [image for folder in folders for image in sorted(folder.glob("*.png"))[:per_folder]]
