"""Architecture-neutral metadata and DescribeModel: PatchCore's parameters in the contract, on the wire (also to a
client built on the previous proto), in the SDK and in ``visinspect models``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from tests.sample_metadata import as_dict, make_metadata
from visinspect_api.model_repository import (
    METADATA_FILENAME,
    SCHEMA_VERSION,
    Backbone,
    MetadataError,
    ModelMetadata,
    read_metadata,
    write_metadata,
)
from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_client import ModelInfo
from visinspect_client._protocol import model_details
from visinspect_client.cli import run_models
from visinspect_server.grpc.converters import model_description

PATCHCORE = {"coreset_ratio": 0.01, "num_neighbors": 9.0, "memory_bank_size": 3277.0, "embedding_dim": 128.0}

# ModelDescription as the previous proto declared it: name -> (number, type). The wire contract old clients rely on.
V1_FIELDS = {
    "name": (1, "string"),
    "version": (2, "uint64"),
    "architecture": (3, "string"),
    "input": (4, ".visinspect.v1.InputSpec"),
    "calibration": (5, ".visinspect.v1.CalibrationSpec"),
    "default_threshold": (6, "double"),
    "backbone": (7, "string"),
    "layers": (8, "repeated string"),
    "n_features": (9, "uint32"),
    "weights": (10, "string"),
    "inference_precision": (11, "string"),
    "ir_precision": (12, "string"),
    "dataset": (13, "string"),
    "evaluation": (14, ".visinspect.v1.EvaluationMetrics"),
    "created_at": (15, "string"),
}


def patchcore_metadata() -> ModelMetadata:
    backbone = Backbone(name="wide_resnet50_2", layers=("layer2", "layer3"), n_features=128, weights="builtin")
    return make_metadata(architecture="patchcore", parameters=dict(PATCHCORE), backbone=backbone)


# --- the metadata contract -----------------------------------------------------------------------


def test_patchcore_metadata_round_trips_with_its_parameters(tmp_path: Path) -> None:
    metadata = patchcore_metadata()
    write_metadata(tmp_path, metadata)
    stored = json.loads((tmp_path / METADATA_FILENAME).read_text())
    assert (stored["schema_version"], stored["architecture"]) == (SCHEMA_VERSION, "patchcore") == (3, "patchcore")
    assert stored["parameters"] == PATCHCORE
    reread = read_metadata(tmp_path)
    assert reread == metadata
    assert reread.parameters == PATCHCORE and all(isinstance(v, float) for v in reread.parameters.values())


def test_integer_parameters_read_as_floats() -> None:
    data = as_dict(patchcore_metadata())
    data["parameters"] = {"num_neighbors": 9}
    assert ModelMetadata.from_json(json.dumps(data)).parameters == {"num_neighbors": 9.0}


def test_a_schema_2_file_without_parameters_reads_as_padim() -> None:
    data = as_dict(make_metadata())
    data["schema_version"] = 2
    del data["parameters"]
    metadata = ModelMetadata.from_json(json.dumps(data))
    assert (metadata.schema_version, metadata.architecture, metadata.parameters) == (2, "padim", {})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"architecture": "fastflow"}, "architecture must be one of ['padim', 'patchcore'], got 'fastflow'"),
        ({"parameters": {**PATCHCORE, "coreset_ratio": math.nan}}, "parameters.coreset_ratio must be a finite number"),
        ({"parameters": {"embedding_dim": math.inf}}, "parameters.embedding_dim must be a finite number"),
        ({"parameters": {"num_neighbors": -math.inf}}, "parameters.num_neighbors must be a finite number"),
        ({"parameters": {"": 1.0}}, "parameters must not have an empty name"),
        ({"parameters": {"num_neighbors": "nine"}}, "parameters.num_neighbors must be a number"),
        ({"parameters": {"num_neighbors": True}}, "parameters.num_neighbors must be a number"),
        ({"parameters": [9]}, "parameters must be an object"),
    ],
)
def test_invalid_architecture_or_parameters_are_refused(change: dict, message: str) -> None:
    data = {**as_dict(patchcore_metadata()), **change}
    with pytest.raises(MetadataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ModelMetadata.from_json(json.dumps(data))  # json writes NaN and Infinity, and reads them back


def test_write_refuses_non_finite_parameters(tmp_path: Path) -> None:
    metadata = dataclasses.replace(patchcore_metadata(), parameters={"coreset_ratio": math.inf})
    with pytest.raises(MetadataError, match="parameters.coreset_ratio must be a finite number"):
        write_metadata(tmp_path, metadata)
    assert not (tmp_path / METADATA_FILENAME).exists()


# --- server and client conversions ---------------------------------------------------------------


def test_the_server_describes_the_parameters_and_the_sdk_reads_them() -> None:
    description = model_description(patchcore_metadata(), 7)
    assert description.architecture == "patchcore" and dict(description.parameters) == PATCHCORE
    details = model_details(pb.ModelDescription.FromString(description.SerializeToString()))
    assert (details.architecture, details.parameters) == ("patchcore", PATCHCORE)
    assert list(details.parameters) == sorted(PATCHCORE)  # a stable order, whatever the map's
    assert (details.n_features, details.layers) == (128, ("layer2", "layer3"))
    assert json.loads(json.dumps(details.to_dict()))["parameters"] == PATCHCORE


def test_a_model_without_parameters_describes_none() -> None:
    description = model_description(make_metadata(), 1)
    assert (description.architecture, len(description.parameters)) == ("padim", 0)
    assert model_details(description).parameters == {}


# --- a client built on the previous proto --------------------------------------------------------


def previous_model_description() -> type[Message]:
    """ModelDescription without field 16 (``parameters``) and its map entry, built in a pool of its own."""
    file = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(file)
    (message,) = [m for m in file.message_type if m.name == "ModelDescription"]
    (added,) = [f for f in message.field if f.number == 16]
    assert added.name == "parameters"
    message.field.remove(added)
    (entry,) = [n for n in message.nested_type if f".{message.name}.{n.name}" in added.type_name]
    message.nested_type.remove(entry)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("visinspect.v1.ModelDescription"))


def shape(field: descriptor_pb2.FieldDescriptorProto) -> tuple[int, str]:
    kind = field.type_name or descriptor_pb2.FieldDescriptorProto.Type.Name(field.type).removeprefix("TYPE_").lower()
    repeated = field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    return field.number, f"repeated {kind}" if repeated else kind


def same_fields(old: Message, new: Message) -> None:
    """Every field the old message knows reads the same in both."""
    declared = descriptor_pb2.DescriptorProto()
    old.DESCRIPTOR.CopyToProto(declared)
    assert {field.name: shape(field) for field in declared.field} == V1_FIELDS
    for field in declared.field:
        theirs, mine = getattr(old, field.name), getattr(new, field.name)
        if field.type == descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE:
            assert old.HasField(field.name) == new.HasField(field.name), field.name
            assert theirs.SerializeToString(deterministic=True) == mine.SerializeToString(deterministic=True), (
                field.name
            )
        elif field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED:
            assert list(theirs) == list(mine), field.name
        else:
            assert theirs == mine, field.name


def test_an_older_client_reads_a_patchcore_description() -> None:
    new = model_description(patchcore_metadata(), 7)
    old = previous_model_description().FromString(new.SerializeToString())
    same_fields(old, new)
    assert (old.name, old.version, old.architecture) == ("bottle", 7, "patchcore")
    assert (old.backbone, list(old.layers), old.n_features) == ("wide_resnet50_2", ["layer2", "layer3"], 128)
    assert (old.calibration.image_threshold, old.calibration.image_max) == (51.9, 492.0)
    assert list(old.calibration.good_scores.values) == [20.0, 30.0, 40.0, 51.9]
    assert (old.evaluation.image_auroc, old.created_at) == (0.99, "2026-11-29T12:00:00+00:00")
    # The old client keeps the parameters as unknown fields: a proxy on the old proto passes them on.
    assert dict(pb.ModelDescription.FromString(old.SerializeToString()).parameters) == PATCHCORE


def test_a_description_from_an_older_server_has_no_parameters() -> None:
    old = previous_model_description().FromString(model_description(make_metadata(), 2).SerializeToString())
    new = pb.ModelDescription.FromString(old.SerializeToString())
    assert len(new.parameters) == 0
    same_fields(old, new)
    details = model_details(new)
    assert (details.architecture, details.parameters, details.n_features) == ("padim", {}, 100)


# --- visinspect models ---------------------------------------------------------------------------


class DescribingClient:
    """Answers ``models()`` and ``model()`` as a server with one PatchCore model would."""

    def __init__(self) -> None:
        self.details = model_details(
            model_description(dataclasses.replace(patchcore_metadata(), model_name="screw"), 2)
        )

    def models(self) -> list[ModelInfo]:
        return [ModelInfo(name="screw", versions=(1, 2), default_version=2)]

    def model(self, name: str = "", version: int = 0):
        assert (name, version) == ("screw", 2)
        return self.details


def test_models_prints_the_architecture_and_its_parameters(capsys) -> None:
    assert run_models(argparse.Namespace(format="json"), DescribingClient()) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    details = entry["details"]
    assert (details["architecture"], details["parameters"]) == ("patchcore", PATCHCORE)
    assert (details["backbone"], details["n_features"], details["calibration"]["method"]) == (
        "wide_resnet50_2", 128, "false_reject_rate",
    )  # fmt: skip
    assert run_models(argparse.Namespace(format="table"), DescribingClient()) == 0
    out = capsys.readouterr().out
    assert "architecture" in out and "patchcore" in out and "wide_resnet50_2" in out
    expected = (
        "screw version 2 (patchcore): coreset_ratio=0.01, embedding_dim=128, memory_bank_size=3277, num_neighbors=9"
    )
    assert f"{expected}\n" in out  # one line, unwrapped
