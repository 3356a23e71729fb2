"""Training defaults, importable without torch (the CLI builds its help from them).

Chosen by measured accuracy on MVTec bottle and the three synthetic textures (image AUROC and pixel
AUROC from the exported IR): see docs/backbone-comparison.md.
"""

DEFAULT_BACKBONE = "mobilenetv2_100"
DEFAULT_LAYERS = ("blocks.1", "blocks.2", "blocks.4")
DEFAULT_N_FEATURES = 100
DEFAULT_IMAGE_SIZE = 256

# Thresholds: the score at this false-reject rate on good images scored by a model that did not fit
# them: every training image, out of fold (the served model fits them all). See docs/calibration.md.
DEFAULT_CALIBRATION_FOLDS = 10
DEFAULT_CALIBRATION_FRACTION = 0.0
DEFAULT_TARGET_FALSE_REJECT_RATE = 0.01
DEFAULT_THRESHOLD_METHOD = "false_reject_rate"
