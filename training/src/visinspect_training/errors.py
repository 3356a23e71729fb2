"""Errors a user can act on. The CLI prints their message on one line and exits non-zero."""


class TrainingError(Exception):
    """Base class: the message says what went wrong and what to do about it."""


class DatasetError(TrainingError):
    """The dataset is missing, empty, unreadable or inconsistent."""


class WeightsError(TrainingError):
    """Backbone weights cannot be obtained, verified or loaded."""


class ConfigError(TrainingError):
    """An option value is invalid (unknown backbone, unsupported precision, ...)."""


class RepositoryError(TrainingError):
    """The model repository cannot be written or read."""
