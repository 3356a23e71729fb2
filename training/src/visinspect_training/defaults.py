"""Training defaults, importable without torch (the CLI builds its help from them).

The family is chosen by the comparison over MVTec screw, transistor, bottle and the synthetic textures
(docs/model-comparison.md); the backbone by docs/backbone-comparison.md.
"""

from typing import Literal, get_args

from visinspect_api.model_repository import (
    ArchitectureName,
    InferencePrecision,
    IrPrecision,
    ThresholdMethod,
    WeightsSource,
)

DEFAULT_MODEL: ArchitectureName = "patchcore"
MODEL_FAMILIES: tuple[ArchitectureName, ...] = get_args(ArchitectureName)
DEFAULT_BACKBONE = "mobilenetv2_100"
WEIGHTS_SOURCES: tuple[WeightsSource, ...] = get_args(WeightsSource)
DEFAULT_LAYERS = ("blocks.1", "blocks.2", "blocks.4")  # PaDiM's
# Per family, used when no layers are given: PatchCore takes mid-level features (strides 8 and 16, as
# the paper's layer2 + layer3 of a ResNet).
DEFAULT_LAYERS_BY_MODEL = {"padim": DEFAULT_LAYERS, "patchcore": ("blocks.2", "blocks.4")}
DEFAULT_N_FEATURES = 100  # PaDiM: feature dimensions kept per position
DEFAULT_IMAGE_SIZE = 256
DEFAULT_TILES = 1  # per side; tiling measured in docs/model-comparison.md

# PatchCore: the memory bank keeps this share of the training patches (greedy k-center coreset), and
# the image score is re-weighted by this many of the nearest patch's neighbours in the bank.
DEFAULT_CORESET_RATIO = 0.01
DEFAULT_NUM_NEIGHBORS = 9

# PatchCore's image score: the anomaly map's maximum (as PaDiM's), or anomalib's nearest-neighbour
# distance re-weighted by num_neighbors. The map's maximum caught as many or more defects on every dataset
# of docs/model-comparison.md, and makes the verdict and the mask agree.
ImageScoreName = Literal["map_max", "reweighted"]
IMAGE_SCORES: tuple[ImageScoreName, ...] = get_args(ImageScoreName)
DEFAULT_IMAGE_SCORE: ImageScoreName = "map_max"

# Thresholds: the score at this false-reject rate on good images scored by a model that did not fit
# them: every training image, out of fold (the served model fits them all). See docs/calibration.md.
DEFAULT_CALIBRATION_FOLDS = 10
DEFAULT_CALIBRATION_FRACTION = 0.0
DEFAULT_TARGET_FALSE_REJECT_RATE = 0.01
THRESHOLD_METHODS: tuple[ThresholdMethod, ...] = get_args(ThresholdMethod)
DEFAULT_THRESHOLD_METHOD: ThresholdMethod = "false_reject_rate"

# Export: the IR's weight precision, and the precision servers must run it at.
IR_PRECISIONS: tuple[IrPrecision, ...] = get_args(IrPrecision)
INFERENCE_PRECISIONS: tuple[InferencePrecision, ...] = get_args(InferencePrecision)
