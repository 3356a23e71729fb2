"""The hostile-input corpus (tests/corpus/cases.json) through the public gRPC API of one real server.

One server serves the session's model plus a copy under a second name (so an empty model name is
ambiguous), with a temporary image root holding what the path cases need. Every case must get its
expected status and a message with the expected words; accepted images must decode to the pixels the
manifest names (same raw score). Afterwards the server must still be healthy, still score a good
image, and its resident memory must not grow by more than ``MEMORY_BOUND_MB`` over a further run of the
whole corpus (the first runs warm caches and allocator pools up).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from tests.corpus import make_corpus
from tests.server_harness import ServerProcess, start_server
from visinspect_api.model_repository import METADATA_FILENAME
from visinspect_api.v1 import inspection_pb2 as pb

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
CASES: list[dict[str, Any]] = json.loads((CORPUS / "cases.json").read_text(encoding="utf-8"))["cases"]
SECOND_MODEL = "brick-second"
MAX_MESSAGE_BYTES = 2_000_000
MAX_FILE_BYTES = 1_000_000
MEMORY_BOUND_MB = 50
CORPUS_BYTES_BOUND = 300_000
TIMEOUT_S = 120  # a loaded 2-core machine: generous


# --------------------------------------------------------------------------- the manifest itself


FILES: dict[str, bytes] = make_corpus.build_files()


def test_committed_manifest_is_what_make_corpus_writes() -> None:
    assert make_corpus.manifest_text() == (CORPUS / "cases.json").read_text(encoding="utf-8"), (
        "re-run python tests/corpus/make_corpus.py"
    )


def test_the_corpus_files_are_built_the_same_every_time() -> None:
    assert make_corpus.build_files() == FILES


def test_manifest_is_complete_and_small() -> None:
    assert len(CASES) >= 40
    ids = [case["id"] for case in CASES]
    assert len(ids) == len(set(ids))
    assert sum(len(data) for data in FILES.values()) < CORPUS_BYTES_BOUND
    codes = {case["expect"]["code"] for case in CASES}
    assert codes <= {code.name for code in grpc.StatusCode}
    assert {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "NOT_FOUND", "PERMISSION_DENIED"} <= codes
    for case in CASES:
        expect = case["expect"]
        files = [case["input"].get("file"), expect.get("same_score_as")]
        files += [step.get("from") for step in case.get("setup", [])]
        for name in filter(None, files):
            assert name in FILES, f"{case['id']}: {name} is not in the corpus"
        assert expect["code"] == "OK" or expect["words"], f"{case['id']}: a refusal must name its words"


# --------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The image root with every path case's files, and a folder next to it with a file to escape to."""
    base = tmp_path_factory.mktemp("corpus_images")
    root, outside = base / "root", base / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.png").write_bytes(FILES["ref_rgb.png"])
    for case in CASES:
        for step in case.get("setup", []):
            make(root, outside, step)
    return {"root": root, "outside": outside}


def make(root: Path, outside: Path, step: dict[str, Any]) -> None:
    target = root / step["name"]
    if target.exists() or target.is_symlink():
        return  # shared by several cases
    kind = step["create"]
    if kind in ("file", "unreadable"):
        target.write_bytes(FILES[step["from"]])
        if kind == "unreadable":
            target.chmod(0)
    elif kind == "symlink":
        target.symlink_to(step["target"].replace("{outside}", str(outside)))
    elif kind == "dir":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "big":
        target.write_bytes(bytes(step["bytes"]))
    else:
        raise AssertionError(f"unknown setup step {kind!r}")


@pytest.fixture(scope="module")
def model_name(exported) -> str:
    return exported.version_dir.parent.name


@pytest.fixture(scope="module")
def server(exported, model_name: str, places: dict[str, Path], tmp_path_factory) -> Iterator[ServerProcess]:
    """One real server: the session's model and a renamed copy, limits small enough to test."""
    repository = tmp_path_factory.mktemp("corpus_repository")
    shutil.copytree(exported.version_dir.parent, repository / model_name)
    second = repository / SECOND_MODEL / exported.version_dir.name
    shutil.copytree(exported.version_dir, second)
    metadata = json.loads((second / METADATA_FILENAME).read_text())
    metadata["model_name"] = SECOND_MODEL  # the registry requires it to match the folder; model.bin is unchanged
    (second / METADATA_FILENAME).write_text(json.dumps(metadata))
    args = ["--image-root", str(places["root"]), "--max-message-bytes", str(MAX_MESSAGE_BYTES)]
    process = start_server(repository, [*args, "--max-file-bytes", str(MAX_FILE_BYTES)])
    try:
        with process.channel() as channel:
            listing = process.stub(channel).ListModels(pb.ListModelsRequest(), timeout=TIMEOUT_S)
        assert sorted(m.name for m in listing.models) == sorted([model_name, SECOND_MODEL])
        yield process
    finally:
        process.stop()


# --------------------------------------------------------------------------- running cases


def request_for(case: dict[str, Any], model: str, places: dict[str, Path]) -> pb.DetectRequest:
    """The DetectRequest a case describes."""
    fields = case.get("request", {})
    request = pb.DetectRequest(request_id=case["id"], model=fields.get("model", model))
    if "version" in fields:
        request.model_version = fields["version"]
    if "threshold" in fields:
        request.threshold = float(fields["threshold"])  # also "nan" / "inf"
    source = case["input"]
    kind = source["kind"]
    if kind == "encoded":
        request.image.encoded = FILES[source["file"]]
    elif kind == "oversize":
        request.image.encoded = bytes(source["bytes"])
    elif kind == "raw":
        if "file" in source:
            data = FILES[source["file"]]
            data = data[: len(data) - source.get("trim", 0)]
        else:
            data = bytes([7]) * source["fill"]
        order = pb.CHANNEL_ORDER_BGR if source["order"] == "BGR" else pb.CHANNEL_ORDER_RGB
        request.image.raw.CopyFrom(
            pb.RawImage(
                data=data,
                height=source["height"],
                width=source["width"],
                channels=source["channels"],
                channel_order=order,
            )
        )
    elif kind == "path":
        requested = source["path"].replace("{root}", str(places["root"])).replace("{outside}", str(places["outside"]))
        request.image.path = requested
    else:
        assert kind == "none"
    return request


def expectation(case: dict[str, Any]) -> dict[str, Any]:
    """What the server must answer; root ignores permission bits, hence ``expect_as_root``."""
    if os.geteuid() == 0 and "expect_as_root" in case:
        return case["expect_as_root"]
    return case["expect"]


class Runner:
    """Sends cases to the server and checks the answers; reference raw scores are fetched once."""

    def __init__(self, server: ServerProcess, model: str, places: dict[str, Path]) -> None:
        self.server, self.model, self.places = server, model, places
        self.channel = server.channel()
        self.stub = server.stub(self.channel)
        self.references: dict[str, pb.DetectResponse] = {}

    def reference(self, name: str) -> pb.DetectResponse:
        if name not in self.references:
            request = pb.DetectRequest(model=self.model, image=pb.ImageInput(encoded=FILES[name]))
            self.references[name] = self.stub.Detect(request, timeout=TIMEOUT_S)
        return self.references[name]

    def check(self, case: dict[str, Any]) -> None:
        expect = expectation(case)
        request = request_for(case, self.model, self.places)
        try:
            response = self.stub.Detect(request, timeout=TIMEOUT_S)
        except grpc.RpcError as error:
            code, details = error.code(), error.details() or ""
            assert code.name == expect["code"], f"{case['id']}: {code.name}: {details}"
            check_message(case, expect, details)
            return
        assert expect["code"] == "OK", f"{case['id']}: accepted, expected {expect['code']}"
        check_accepted(case, expect, response, self)

    def close(self) -> None:
        self.channel.close()


def check_message(case: dict[str, Any], expect: dict[str, Any], details: str) -> None:
    """The message names the problem in words a person understands, and nothing internal."""
    for words in expect["words"]:
        assert words in details, f"{case['id']}: {words!r} not in {details!r}"
    for leak in ("Traceback", "Exception", "Error:", *expect.get("absent", [])):
        assert leak not in details, f"{case['id']}: {leak!r} in {details!r}"
    assert 20 <= len(details) <= 400, f"{case['id']}: {details!r}"


def check_accepted(case: dict[str, Any], expect: dict[str, Any], response: pb.DetectResponse, runner: Runner) -> None:
    assert response.request_id == case["id"]
    assert [response.image_height, response.image_width] == expect["size"], case["id"]
    assert 0.0 <= response.score <= 1.0
    assert math.isfinite(response.raw_score)
    if "is_anomalous" in expect:
        assert response.is_anomalous is expect["is_anomalous"], case["id"]
    if "same_score_as" in expect:
        reference = runner.reference(expect["same_score_as"])
        tolerance = expect["tolerance"] * max(1.0, abs(reference.raw_score))
        assert abs(response.raw_score - reference.raw_score) <= tolerance, (
            f"{case['id']}: raw score {response.raw_score} vs {reference.raw_score} for {expect['same_score_as']}"
        )
        assert response.score == pytest.approx(reference.score, abs=expect["tolerance"])


@pytest.fixture(scope="module")
def runner(server: ServerProcess, model_name: str, places: dict[str, Path]) -> Iterator[Runner]:
    runner = Runner(server, model_name, places)
    yield runner
    runner.close()


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_case(runner: Runner, case: dict[str, Any]) -> None:
    runner.check(case)


def test_symlink_out_of_the_root_does_not_name_its_target(runner: Runner) -> None:
    request = pb.DetectRequest(model=runner.model, image=pb.ImageInput(path="escape.png"))
    with pytest.raises(grpc.RpcError) as caught:
        runner.stub.Detect(request, timeout=TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "secret" not in caught.value.details()
    assert str(runner.places["outside"]) not in caught.value.details()


def test_unreadable_file_behaves_as_the_server_user_allows(runner: Runner) -> None:
    """Tests run as root, which ignores mode 000: the server then reads the file, as any root process would.

    Under an ordinary user the same request is PERMISSION_DENIED (the manifest's ``expect``); both are real
    OS behaviour, so the check follows who the server runs as rather than being skipped.
    """
    locked = runner.places["root"] / "locked.png"
    assert locked.stat().st_mode & 0o777 == 0
    readable = os.access(locked, os.R_OK)
    assert readable is (os.geteuid() == 0)
    request = pb.DetectRequest(model=runner.model, image=pb.ImageInput(path="locked.png"))
    if readable:
        assert runner.stub.Detect(request, timeout=TIMEOUT_S).image_width == 64
    else:
        with pytest.raises(grpc.RpcError) as caught:
            runner.stub.Detect(request, timeout=TIMEOUT_S)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_stream_turns_bad_items_into_error_items_and_goes_on(runner: Runner) -> None:
    by_id = {case["id"]: case for case in CASES}
    chosen = [
        "rgb-png",
        "random-bytes",
        "png-bomb-50000x50000",
        "grey16-png",
        "path-symlink-out",
        "raw-one-byte-short",
        "threshold-nan",
        "unknown-model",
        "path-fifo",
        "animated-gif",
        "raw-bgr",
    ]
    requests = [request_for(by_id[name], runner.model, runner.places) for name in chosen]
    responses = list(runner.stub.DetectStream(iter(requests), timeout=TIMEOUT_S))
    assert [r.request_id for r in responses] == chosen
    for name, response in zip(chosen, responses, strict=True):
        expect = expectation(by_id[name])
        if expect["code"] == "OK":
            assert response.WhichOneof("outcome") == "result", f"{name}: {response.error.message}"
            assert [response.result.image_height, response.result.image_width] == expect["size"]
            reference = runner.reference(expect["same_score_as"])
            # Items of a stream may be batched together: batched inference agrees within float tolerance.
            assert response.result.raw_score == pytest.approx(reference.raw_score, rel=1e-4, abs=1e-4)
        else:
            assert response.WhichOneof("outcome") == "error", name
            assert grpc.StatusCode[expect["code"]].value[0] == response.error.code, name
            check_message(by_id[name], expect, response.error.message)


def rss_mb(server: ServerProcess) -> float:
    assert server.process is not None
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


def test_after_the_corpus_the_server_is_healthy_and_memory_is_bounded(runner: Runner, server: ServerProcess) -> None:
    for _ in range(2):  # warm-up (also done by the cases above when the whole file runs)
        for case in CASES:
            runner.check(case)
    before = rss_mb(server)
    for case in CASES:
        runner.check(case)
    after = rss_mb(server)
    print(f"server RSS {before:.1f} MB -> {after:.1f} MB over one more run of {len(CASES)} cases")
    assert after - before < MEMORY_BOUND_MB, f"RSS grew {after - before:.1f} MB (bound {MEMORY_BOUND_MB} MB)"
    assert server.process is not None and server.process.poll() is None
    assert server.health() == health_pb2.HealthCheckResponse.SERVING
    good = runner.stub.Detect(
        pb.DetectRequest(model=SECOND_MODEL, image=pb.ImageInput(encoded=FILES["ref_rgb.png"])),
        timeout=TIMEOUT_S,
    )
    reference = runner.reference("ref_rgb.png")
    assert good.model == SECOND_MODEL
    assert good.raw_score == pytest.approx(reference.raw_score, rel=1e-5, abs=1e-5)  # same weights, other name
    errors = [entry for entry in server.logs if entry.get("level") in ("ERROR", "CRITICAL")]
    assert not [e for e in errors if "unexpected error" in e.get("message", "")], errors[-3:]
