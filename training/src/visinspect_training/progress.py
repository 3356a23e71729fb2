"""Progress bars for the long steps (feature extraction, calibration, evaluation), drawn with rich."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


def new_progress() -> Progress:
    """A progress display for the CLI (transient lines are kept so the log reads top to bottom)."""
    return Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


class LightningProgress(Callback):
    """Advances one bar per batch while anomalib's Engine extracts features and calibrates."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: TaskID | None = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._task = self._progress.add_task("extracting features", total=int(trainer.num_training_batches))

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._advance()

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._task = self._progress.add_task("calibrating", total=int(sum(trainer.num_val_batches)))

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._advance()

    def _advance(self) -> None:
        if self._task is not None:
            self._progress.advance(self._task)
