"""The Python API: the same steps the CLI runs.

>>> from visinspect_training.api import DatasetSpec, TrainConfig, train, export_run
>>> run = train(TrainConfig(model_name="brick", dataset=DatasetSpec(kind="synthetic")), Path("runs"))
>>> export_run(run, Path("model_repository")).version
1
"""

from visinspect_training.calibrate import ThresholdOptions
from visinspect_training.data import DatasetSpec
from visinspect_training.errors import ConfigError, DatasetError, RepositoryError, TrainingError, WeightsError
from visinspect_training.evaluate import TestPredictions, evaluate_ir, predict_test_split
from visinspect_training.export import ExportOptions, ExportResult, export_run
from visinspect_training.report import write_report
from visinspect_training.synthetic import SyntheticSpec, generate_synthetic_dataset
from visinspect_training.train import TrainConfig, TrainedRun, load_run, train
from visinspect_training.weights import WeightsSpec

__all__ = [
    "ConfigError",
    "DatasetError",
    "DatasetSpec",
    "ExportOptions",
    "ExportResult",
    "RepositoryError",
    "SyntheticSpec",
    "TestPredictions",
    "ThresholdOptions",
    "TrainConfig",
    "TrainedRun",
    "TrainingError",
    "WeightsError",
    "WeightsSpec",
    "evaluate_ir",
    "export_run",
    "generate_synthetic_dataset",
    "load_run",
    "predict_test_split",
    "train",
    "write_report",
]
