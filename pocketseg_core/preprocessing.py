"""Intensity normalisation per modality, as the papers describe, on ``(z, y, x)`` arrays.

- MR (PocketNet section 3, NFBS): z-score. The paper does not say over which voxels; a head
  scan is half air, so the mean/std are taken over the foreground (voxels above an Otsu
  threshold of the 0.5-99.5 percentile-clipped image) to be robust to the field of view.
- CT (PocketNet section 3: window [-100, 200] HU; LV-Net section 4.1: [-200, 200] HU then
  mean/variance normalisation): clip to the bundle's window, then either map the window to
  [0, 1] (``"normalize": "unit"``, the default: the PocketNet paper does no further scaling
  and a fixed map keeps the HU meaning) or z-score the clipped values (``"zscore"``, LV-Net).

Resampling to the working spacing (the papers' in-plane resize, e.g. 512 -> 256, is expressed
as a working spacing in the bundle) lives in :mod:`pocketseg_core.geometry`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

#: percentiles clipped away before MR statistics (scanner spikes, dark noise)
MR_CLIP_PERCENTILES = (0.5, 99.5)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1D array of intensities (between-class variance maximum)."""
    histogram, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    weight_low = np.cumsum(histogram).astype(np.float64)
    weight_high = weight_low[-1] - weight_low
    cumulative_mean = np.cumsum(histogram * centres)
    mean_low = cumulative_mean / np.maximum(weight_low, 1)
    mean_high = (cumulative_mean[-1] - cumulative_mean) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centres[int(np.argmax(between))])


def mr_zscore(volume: np.ndarray) -> np.ndarray:
    """Foreground z-score of an MR volume ``(z, y, x)`` -> float32 ``(z, y, x)``.

    Clips at the 0.5/99.5 percentiles, takes mean and std over the voxels above the Otsu
    threshold (the head), and applies them to the whole volume.
    """
    volume = np.asarray(volume, dtype=np.float32)
    low, high = np.percentile(volume, MR_CLIP_PERCENTILES)
    clipped = np.clip(volume, low, high)
    sample = clipped.ravel()
    if sample.size > 2_000_000:  # statistics of a strided sample are as good and much cheaper
        sample = sample[:: sample.size // 1_000_000]
    foreground = sample[sample > otsu_threshold(sample)] if high > low else sample
    if foreground.size < max(0.01 * sample.size, 10):
        foreground = sample  # no clear foreground (e.g. a brain-only crop): use every voxel
    mean = float(foreground.mean())
    std = float(foreground.std())
    return ((clipped - mean) / max(std, 1e-6)).astype(np.float32)


def ct_window(volume: np.ndarray, window: tuple[float, float], normalize: str = "unit") -> np.ndarray:
    """Clip a CT volume ``(z, y, x)`` in HU to ``window`` and normalise -> float32.

    ``normalize="unit"`` maps ``window`` linearly to [0, 1]; ``"zscore"`` subtracts the mean
    and divides by the std of the clipped volume (LV-Net section 4.1).
    """
    low, high = float(window[0]), float(window[1])
    clipped = np.clip(np.asarray(volume, dtype=np.float32), low, high)
    if normalize == "unit":
        return ((clipped - low) / (high - low)).astype(np.float32)
    if normalize == "zscore":
        return ((clipped - clipped.mean()) / max(float(clipped.std()), 1e-6)).astype(np.float32)
    raise ValueError(f"unknown CT normalisation {normalize!r}; use 'unit' or 'zscore'")


def normalize_intensity(volume: np.ndarray, preprocessing: Mapping[str, Any]) -> np.ndarray:
    """Apply a bundle's ``preprocessing`` dict (``{"kind": "mr_zscore"}`` or ``ct_window``)."""
    kind = preprocessing.get("kind")
    if kind == "mr_zscore":
        return mr_zscore(volume)
    if kind == "ct_window":
        return ct_window(volume, tuple(preprocessing["window"]), preprocessing.get("normalize", "unit"))
    raise ValueError(f"unknown preprocessing kind {kind!r}")


def looks_like_ct(volume: np.ndarray) -> bool:
    """Whether intensities look like CT in HU: a real share of air at about -1000 HU.

    MR intensities are arbitrary but practically never below -500; a CT with its table and
    surrounding air has many voxels there.
    """
    sample = np.asarray(volume).ravel()
    if sample.size > 1_000_000:
        sample = sample[:: sample.size // 500_000]
    return bool(np.mean(sample < -500) > 0.01)


def modality_warning(volume: np.ndarray, modality: str) -> str | None:
    """A plain-words warning when the image's intensities do not fit the model's modality."""
    is_ct = looks_like_ct(volume)
    if modality == "CT" and not is_ct:
        return (
            "this model expects CT in Hounsfield units, but the image has no air values below "
            "-500 HU: it looks like MR or a rescaled image; the result is likely wrong"
        )
    if modality == "MR" and is_ct:
        return (
            "this model expects MR, but the image has many values below -500: it looks like a CT "
            "in Hounsfield units; the result is likely wrong"
        )
    return None
