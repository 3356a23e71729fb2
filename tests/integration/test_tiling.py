"""Tiling: the backbone embeds every tile of a grid over the input on its own and the embeddings are stitched
back (anomalib's ``Tiler``), in fitting, out-of-fold calibration, the exported IR and the server."""

from __future__ import annotations

import copy
import dataclasses

import cv2
import numpy as np
import pytest
import torch
from anomalib.data.utils.tiler import Tiler

from tests.conftest import TINY_IMAGE_SIZE
from visinspect_api.model_repository import IR_XML_FILENAME
from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_training import ir
from visinspect_training.api import export_run, load_run, train
from visinspect_training.data import build_datamodule
from visinspect_training.evaluate import anomalib_reference, to_uint8_nhwc
from visinspect_training.families.patchcore import PatchcoreModel
from visinspect_training.ir import AnomalibReference, ContractInput, compile_ir, infer

TILES = 2
TILE = TINY_IMAGE_SIZE // TILES
SIZE = (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)


@pytest.fixture(scope="module")
def tiled_run(patchcore_config, trained_run, tmp_path_factory: pytest.TempPathFactory):
    """PatchCore (the default family) fitted on 2 x 2 tiles of the tiny set's images (``trained_run`` made them)."""
    config = dataclasses.replace(patchcore_config, model_name="brick-tiled", tiles=TILES)
    return train(config, tmp_path_factory.mktemp("runs-tiled"))


@pytest.fixture(scope="module")
def tiled_exported(tiled_run, tmp_path_factory: pytest.TempPathFactory):
    return export_run(tiled_run, tmp_path_factory.mktemp("repository-tiled"))


def untiled_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same fitted model scoring a whole input as one tile."""
    copied = copy.deepcopy(model)
    copied.tiler = None
    return copied


def test_tiles_are_anomalibs_and_stitch_back() -> None:
    images = torch.rand(3, 5, 4 * TILE, 2 * TILE)
    tiles = ir.split_tiles(images, TILE)
    assert torch.equal(tiles, Tiler(tile_size=TILE, stride=TILE).tile(images))  # anomalib's order
    assert tiles.shape == (3 * 8, 5, TILE, TILE)
    assert torch.equal(ir.stitch_tiles(tiles, 4, 2), images)
    assert torch.equal(tiles[8 + 3], images[1, :, TILE : 2 * TILE, TILE:])  # image 1, row 1, column 1


def test_the_memory_bank_holds_patches_of_the_tiles(tiled_run) -> None:
    """Fitting embeds every tile on its own: each bank entry is a patch of one tile of a training image."""
    model, config = tiled_run.model, tiled_run.config
    assert config.tiles == TILES and model.tiler.tile_size_h == TILE
    data = build_datamodule(config.dataset, SIZE)
    untiled = untiled_copy(model)
    tiles, wholes = [], []
    with torch.no_grad():
        for batch in data.loader(data.datamodule.train_data):
            images = ContractInput()(torch.from_numpy(to_uint8_nhwc(batch.image)))
            tiles.append(PatchcoreModel.reshape_embedding(config.family.embed(untiled, ir.split_tiles(images, TILE))))
            wholes.append(PatchcoreModel.reshape_embedding(config.family.embed(untiled, images)))

    def farthest(patches: list[torch.Tensor]) -> float:
        """The largest distance from a bank entry to its nearest patch."""
        exact = "donot_use_mm_for_euclid_dist"
        return float(torch.cdist(model.memory_bank, torch.vstack(patches), compute_mode=exact).min(dim=1).values.max())

    assert farthest(tiles) < 1e-4
    # Patches next to a tile's edge differ from the whole image's: the bank was not fitted on whole images.
    assert farthest(wholes) > 1e-2


def test_exported_ir_matches_anomalibs_tiled_model(tiled_run, tiled_exported) -> None:
    metadata = tiled_exported.metadata
    assert metadata.parameters["tiles"] == TILES
    assert (metadata.input.height, metadata.input.width) == SIZE  # the contract is the whole input
    evaluation = metadata.evaluation
    assert evaluation is not None and evaluation.max_rel_score_diff_vs_torch is not None
    assert evaluation.max_rel_score_diff_vs_torch <= 1e-3
    images = np.random.default_rng(2).integers(0, 256, (3, *SIZE, 3), dtype=np.uint8)
    maps, scores = infer(compile_ir(tiled_exported.version_dir / IR_XML_FILENAME, "f32"), images)
    with torch.no_grad():
        reference = anomalib_reference(tiled_run.model, tiled_run.config)  # anomalib's Tiler
        torch_maps, torch_scores = reference(torch.from_numpy(images))
    np.testing.assert_allclose(scores, torch_scores.numpy(), rtol=1e-3)
    np.testing.assert_allclose(maps, torch_maps.numpy()[:, 0], rtol=1e-3, atol=1e-3 * float(torch_maps.max()))


def test_the_stitched_map_equals_the_per_tile_maps(tiled_run, synthetic_category) -> None:
    """A good tile next to a noise tile: each tile's map is what the model gives that tile alone, and the image
    score is the noise tile's. Only the blur reaches across a seam, so the maps are compared away from seams."""
    family = tiled_run.config.family
    # The worst patch's (re-weighted) distance is the score: the blur of the map's maximum crosses seams.
    config = dataclasses.replace(tiled_run.config, image_score="reweighted")
    tiled = family.serving_graph(tiled_run.model, config).eval()
    per_tile = family.serving_graph(untiled_copy(tiled_run.model), config).eval()
    paths = sorted((synthetic_category / "test" / "good").glob("*.png"))[:3]
    good = [cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB) for path in paths]
    noise = np.random.default_rng(3).integers(0, 256, (TILE, TILE, 3), dtype=np.uint8)
    quadrants = [cv2.resize(image, (TILE, TILE), interpolation=cv2.INTER_AREA) for image in good] + [noise]
    image = np.vstack([np.hstack(quadrants[:2]), np.hstack(quadrants[2:])])
    with torch.no_grad():
        stitched, score = tiled(torch.from_numpy(image[None]))
        alone, tile_scores = per_tile(torch.from_numpy(np.stack(quadrants)))
    stitched, alone = stitched[0, 0].numpy(), alone[:, 0].numpy()
    margin = max(tiled.blur.padding)  # the blur's reach
    inner = slice(margin, TILE - margin)
    for index in range(TILES * TILES):
        row, column = divmod(index, TILES)
        seen = stitched[row * TILE : (row + 1) * TILE, column * TILE : (column + 1) * TILE]
        np.testing.assert_allclose(seen[inner, inner], alone[index][inner, inner], rtol=1e-5, atol=1e-6)
    assert int(np.argmax(tile_scores.numpy())) == 3
    assert float(score[0]) == pytest.approx(float(tile_scores[3]), rel=1e-5)


def test_the_server_serves_the_tiled_model_like_its_ir(tiled_exported, synthetic_category) -> None:
    from tests.server_harness import start_server

    metadata = tiled_exported.metadata
    compiled = compile_ir(tiled_exported.version_dir / IR_XML_FILENAME, "f32")
    server = start_server(tiled_exported.version_dir.parents[1], ["--image-root", str(synthetic_category)])
    try:
        with server.channel() as channel:
            stub = server.stub(channel)
            description = stub.DescribeModel(pb.DescribeModelRequest(), timeout=10)
            assert description.parameters["tiles"] == TILES
            for path in sorted((synthetic_category / "test").glob("*/*.png"))[::6]:
                response = stub.Detect(pb.DetectRequest(image=pb.ImageInput(encoded=path.read_bytes())), timeout=30)
                rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
                _, (raw,) = infer(compiled, cv2.resize(rgb, SIZE, interpolation=cv2.INTER_AREA)[None])
                assert response.raw_score == pytest.approx(float(raw), rel=1e-5)
                assert response.is_anomalous == (raw > metadata.calibration.image_threshold)
    finally:
        server.stop()


def test_a_tiled_run_reloads_tiled(tiled_run) -> None:
    reloaded = load_run(tiled_run.run_dir)
    assert reloaded.config.tiles == TILES and reloaded.model.tiler.tile_size_h == TILE
    images = torch.from_numpy(np.random.default_rng(4).integers(0, 256, (2, *SIZE, 3), dtype=np.uint8))
    family = tiled_run.config.family
    with torch.no_grad():
        _, expected = family.serving_graph(tiled_run.model, tiled_run.config)(images)
        _, got = family.serving_graph(reloaded.model, reloaded.config)(images)
    torch.testing.assert_close(got, expected)


def test_padim_tiles_like_anomalibs_tiled_padim(tiny_config, trained_run, tmp_path_factory) -> None:
    """PaDiM's Gaussians sit on the stitched grid: the IR matches anomalib's tiled ``PadimModel``."""
    config = dataclasses.replace(tiny_config, model_name="brick-padim-tiled", tiles=TILES)
    run = train(config, tmp_path_factory.mktemp("runs-padim-tiled"))
    untiled_positions = trained_run.model.gaussian.mean.shape
    assert run.model.gaussian.mean.shape == untiled_positions  # the same grid, from tiles
    model, _, _ = ir.convert(config.family.serving_graph(run.model, config), TINY_IMAGE_SIZE)
    folder = tmp_path_factory.mktemp("padim-tiled-ir")
    ir.save(model, folder / IR_XML_FILENAME, "FP32")
    images = np.random.default_rng(5).integers(0, 256, (2, *SIZE, 3), dtype=np.uint8)
    maps, scores = infer(compile_ir(folder / IR_XML_FILENAME, "f32"), images)
    with torch.no_grad():
        torch_maps, torch_scores = AnomalibReference(run.model)(torch.from_numpy(images))
    np.testing.assert_allclose(scores, torch_scores.numpy(), rtol=1e-3)
    np.testing.assert_allclose(maps, torch_maps.numpy()[:, 0], rtol=1e-3, atol=1e-3 * float(torch_maps.max()))
