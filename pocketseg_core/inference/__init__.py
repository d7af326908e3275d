"""Inference in stages: image in, mask on exactly the input grid out.

=====================  ==================================================================
module                 what it holds
=====================  ==================================================================
``windows``            the generic window loop (:func:`sliding_window_inference`: any
                       predictor, Gaussian blending, batches, out-of-memory fallback)
``network``            a network as a window predictor (softmax, autocast, 2D slices,
                       compile/channels-last), :func:`sliding_window_probabilities`,
                       flip test-time augmentation (:func:`predict_probabilities`)
``postprocess``        probabilities back to the input grid, then the clean-up steps
``plausibility``       warnings when a CT mask cannot be its structure (no abdomen, no
                       liver-like tissue under it): :func:`anatomy_warnings`
``onnx_backend``       the network stage on ONNX Runtime, without torch (whole-grid 3D
                       models on the CPU): :class:`OnnxNetwork`, :func:`choose_backend`
``options``            :class:`InferenceOptions`, :class:`SegmentationResult`
``pipeline``           :func:`segment_image` = read -> preprocess -> predict -> postprocess,
                       and :class:`Predictor` (keeps the network between calls)
=====================  ==================================================================

Devices (choice, mixed precision, out-of-memory fallback) live in :mod:`pocketseg_core.devices`.
"""

import importlib

# Only what needs no torch is imported here: a process that runs a model on ONNX Runtime
# (onnx_backend) never pays torch's ~1 s import. The torch-side names load on first use.
from pocketseg_core.inference.options import InferenceOptions, ProgressCallback, SegmentationResult
from pocketseg_core.inference.pipeline import Predictor, postprocess, preprocess, read_input, segment_image
from pocketseg_core.inference.postprocess import clean_up, to_input_grid

_LAZY = {
    "CUDA_PRECISIONS": "pocketseg_core.devices",
    "memory_format": "pocketseg_core.devices",
    "precision_context": "pocketseg_core.devices",
    "resolve_device": "pocketseg_core.devices",
    "NetworkPredictor": "pocketseg_core.inference.network",
    "flips_for": "pocketseg_core.inference.network",
    "predict_probabilities": "pocketseg_core.inference.network",
    "sliding_window_probabilities": "pocketseg_core.inference.network",
    "window_divisor": "pocketseg_core.inference.network",
    "GAUSSIAN_FLOOR": "pocketseg_core.inference.windows",
    "GAUSSIAN_SIGMA_FRACTION": "pocketseg_core.inference.windows",
    "gaussian_importance": "pocketseg_core.inference.windows",
    "resolve_window": "pocketseg_core.inference.windows",
    "sliding_window_inference": "pocketseg_core.inference.windows",
    "window_grid": "pocketseg_core.inference.windows",
    "stack_context_slices": "pocketseg_core.inference.windows",
    "window_starts": "pocketseg_core.inference.windows",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "GAUSSIAN_FLOOR",
    "GAUSSIAN_SIGMA_FRACTION",
    "InferenceOptions",
    "NetworkPredictor",
    "Predictor",
    "ProgressCallback",
    "SegmentationResult",
    "CUDA_PRECISIONS",
    "clean_up",
    "flips_for",
    "gaussian_importance",
    "memory_format",
    "postprocess",
    "precision_context",
    "predict_probabilities",
    "preprocess",
    "read_input",
    "resolve_device",
    "resolve_window",
    "segment_image",
    "sliding_window_inference",
    "sliding_window_probabilities",
    "to_input_grid",
    "window_divisor",
    "window_grid",
    "stack_context_slices",
    "window_starts",
]
