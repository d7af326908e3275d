"""Training: one loop (:class:`Trainer`), datasets, losses, augmentation, synthetic heads, presets,
resumable k-fold cross-validation, torchrun, and the recipes of the shipped models.

Entry points: :func:`run_cross_validation` with a :class:`TrainingConfig` (usually from
:func:`config_from_preset`), and :func:`train_recipe` with a recipe (:func:`load_recipe`); the
command line is ``pocketseg train`` (docs/training.md).
"""

import importlib
from typing import Any

# Names are imported on first use (PEP 562): the Slicer modules import light sub-modules such as
# ``report`` and must load without torch, so that they can offer to install it.
_EXPORTS = {
    "CrossValidationResult": "crossval",
    "TrainingCallbacks": "crossval",
    "run_cross_validation": "crossval",
    "Case": "datasets",
    "discover_cases": "datasets",
    "make_folds": "datasets",
    "PRESETS": "presets",
    "TrainingConfig": "presets",
    "config_from_preset": "presets",
    "preset_names": "presets",
    "load_recipe": "recipes",
    "train_recipe": "recipes",
    "Trainer": "trainer",
    "TrainerHooks": "trainer",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


__all__ = [
    "PRESETS",
    "Case",
    "CrossValidationResult",
    "TrainingCallbacks",
    "Trainer",
    "TrainerHooks",
    "TrainingConfig",
    "config_from_preset",
    "discover_cases",
    "load_recipe",
    "make_folds",
    "preset_names",
    "run_cross_validation",
    "train_recipe",
]
