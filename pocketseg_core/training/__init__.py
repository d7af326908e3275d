"""Training: datasets, losses, augmentation, presets, resumable k-fold cross-validation, torchrun.

Entry point: :func:`run_cross_validation` with a :class:`TrainingConfig` (usually from
:func:`config_from_preset`); the command line is ``pocketseg train`` (docs/training.md).
"""

from pocketseg_core.training.crossval import CrossValidationResult, TrainingCallbacks, run_cross_validation
from pocketseg_core.training.datasets import Case, discover_cases, make_folds
from pocketseg_core.training.presets import PRESETS, TrainingConfig, config_from_preset, preset_names

__all__ = [
    "PRESETS",
    "Case",
    "CrossValidationResult",
    "TrainingCallbacks",
    "TrainingConfig",
    "config_from_preset",
    "discover_cases",
    "make_folds",
    "preset_names",
    "run_cross_validation",
]
