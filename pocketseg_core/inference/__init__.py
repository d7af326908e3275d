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
``options``            :class:`InferenceOptions`, :class:`SegmentationResult`
``pipeline``           :func:`segment_image` = read -> preprocess -> predict -> postprocess,
                       and :class:`Predictor` (keeps the network between calls)
=====================  ==================================================================

Devices (choice, mixed precision, out-of-memory fallback) live in :mod:`pocketseg_core.devices`.
"""

from pocketseg_core.devices import CUDA_PRECISIONS, memory_format, precision_context, resolve_device
from pocketseg_core.inference.network import (
    NetworkPredictor,
    flips_for,
    predict_probabilities,
    sliding_window_probabilities,
    window_divisor,
)
from pocketseg_core.inference.options import InferenceOptions, ProgressCallback, SegmentationResult
from pocketseg_core.inference.pipeline import Predictor, postprocess, preprocess, read_input, segment_image
from pocketseg_core.inference.postprocess import clean_up, to_input_grid
from pocketseg_core.inference.windows import (
    GAUSSIAN_FLOOR,
    GAUSSIAN_SIGMA_FRACTION,
    gaussian_importance,
    resolve_window,
    sliding_window_inference,
    window_grid,
    window_starts,
)

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
    "window_starts",
]
