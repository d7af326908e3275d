"""Intensity normalisation per modality, as the papers describe, on ``(z, y, x)`` arrays.

- MR (PocketNet section 3, NFBS): z-score. The paper does not say over which voxels; a head
  scan is half air, so the mean/std are taken over the foreground (voxels above an Otsu
  threshold of the 0.5-99.5 percentile-clipped image) to be robust to the field of view.
- CT (PocketNet section 3: window [-100, 200] HU; LV-Net section 4.1: [-200, 200] HU then
  mean/variance normalisation): clip to the bundle's window, then either map the window to
  [0, 1] (``"normalize": "unit"``, the default: the PocketNet paper does no further scaling
  and a fixed map keeps the HU meaning) or z-score the clipped values (``"zscore"``, LV-Net).

:func:`to_working_grid` is the one path from an input image to what the network sees, shared
by inference and training: reorient to the bundle's orientation, resample to the working
spacing (the papers' in-plane resize, e.g. 512 -> 256, is expressed as a working spacing in
the bundle), normalise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from pocketseg_core import geometry

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


@dataclass(frozen=True)
class IntensityAnchor:
    """Where a structure's normalised intensities sat in the training heads, and how far a new
    image's may stray before it is normalised again on that structure (a bundle's
    ``preprocessing.anchor``).

    ``median``/``iqr``: median and interquartile range of the normalised intensities inside the
    label ``label`` on the training heads' working grids. An image whose first-pass mask has a
    median more than ``median_tolerance`` away, or an IQR more than ``iqr_ratio_tolerance``
    times larger or smaller, lies outside what the network learned.
    """

    label: int
    median: float
    iqr: float
    median_tolerance: float
    iqr_ratio_tolerance: float

    @classmethod
    def from_config(cls, anchor: Mapping[str, Any]) -> IntensityAnchor:
        return cls(
            int(anchor["label"]),
            float(anchor["median"]),
            float(anchor["iqr"]),
            float(anchor["median_tolerance"]),
            float(anchor["iqr_ratio_tolerance"]),
        )

    def deviation(self, median: float, iqr: float) -> float:
        """How far (``median``, ``iqr``) lie from the anchor, in units of the tolerances: <= 1
        is inside both."""
        ratio = max(iqr, 1e-6) / self.iqr
        return max(
            abs(median - self.median) / self.median_tolerance,
            abs(float(np.log(ratio))) / float(np.log(self.iqr_ratio_tolerance)),
        )


#: fewest voxels of a first-pass mask whose intensity statistics are trusted
ANCHOR_MIN_VOXELS = 1000


def masked_intensity_statistics(volume: np.ndarray, mask: np.ndarray) -> tuple[float, float] | None:
    """Median and interquartile range of ``volume`` inside the boolean ``mask`` (same shape);
    None when the mask has fewer than :data:`ANCHOR_MIN_VOXELS` voxels."""
    inside = volume[mask]
    if inside.size < ANCHOR_MIN_VOXELS:
        return None
    q1, median, q3 = np.percentile(inside, [25, 50, 75])
    return float(median), float(q3 - q1)


def anchor_renormalised(
    volume: np.ndarray, mask: np.ndarray, anchor: IntensityAnchor
) -> tuple[np.ndarray, float, float] | None:
    """``volume`` (normalised, ``(z, y, x)``) mapped linearly so that its intensities inside the
    first-pass ``mask`` get the anchor's median and IQR, with the median and IQR they had; None
    when they are already within the anchor's tolerances (or the mask is too small to say).

    Why: a head whose scalp is far brighter than its brain (a surface coil's sensitivity, a
    natively 2 mm scan) puts the brain below the Otsu threshold of :func:`mr_zscore`, so its
    mean and std come from the scalp and the brain lands at intensities no training head had.
    """
    statistics = masked_intensity_statistics(volume, mask)
    if statistics is None:
        return None
    median, iqr = statistics
    if anchor.deviation(median, iqr) <= 1.0:
        return None
    scale = anchor.iqr / max(iqr, 1e-6)
    renormalised = ((volume - median) * scale + anchor.median).astype(np.float32)
    return renormalised, median, iqr


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


#: at most this many distinct integer values: a label map, not a CT or MR (real ones have hundreds)
LABEL_MAP_MAX_VALUES = 64

#: mean absolute difference of neighbouring voxels over the standard deviation, along the
#: smoothest axis, above which an image is noise: real CT and MR (the sample heads and CTs,
#: even a 2 mm low-resolution T1) stay below 0.4; independent noise gives 2/sqrt(pi) = 1.13
NOISE_ROUGHNESS = 0.7


def _sample(volume: np.ndarray, target: int = 2_000_000) -> np.ndarray:
    """A regular sub-grid of ``volume`` with about ``target`` voxels (neighbours stay neighbours
    along the last axis, which :func:`looks_like_noise` compares)."""
    step = max(1, int(round((volume.size / target) ** (1 / 3))))
    return volume[::step, ::step, :] if volume.ndim == 3 else volume


def looks_like_label_map(volume: np.ndarray) -> int | None:
    """The number of distinct values when ``volume`` holds only a few integers (a label map given
    as an image), else None."""
    sample = _sample(volume)
    if np.issubdtype(sample.dtype, np.floating) and not np.array_equal(sample, np.rint(sample)):
        return None
    distinct = np.unique(sample)
    return int(distinct.size) if distinct.size <= LABEL_MAP_MAX_VALUES else None


def looks_like_noise(volume: np.ndarray) -> bool:
    """True when neighbouring voxels are as different as any two voxels: no anatomy, only noise."""
    if volume.ndim != 3 or min(volume.shape) < 2:
        return False
    sample = _sample(volume).astype(np.float32)
    spread = float(sample.std())
    if spread == 0.0:
        return False
    roughness = min(
        float(np.abs(np.diff(sample, axis=axis)).mean()) for axis in range(3) if sample.shape[axis] > 1
    )
    return roughness / spread > NOISE_ROUGHNESS


def modality_warning(volume: np.ndarray, modality: str) -> str | None:
    """A plain-words warning when the image does not look like what the model was trained on:
    a label map given as the image, pure noise, or intensities of the other modality."""
    distinct = looks_like_label_map(volume)
    if distinct is not None:
        return (
            f"the image holds only {distinct} distinct integer values: it looks like a label map or "
            f"a mask, not {'an MR' if modality == 'MR' else 'a CT'} image; the result is likely meaningless"
        )
    if looks_like_noise(volume):
        return (
            "neighbouring voxels are as different as any two voxels: the image looks like pure "
            "noise, not anatomy; the result is likely meaningless"
        )
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


@dataclass
class WorkingGrid:
    """An input image on the network's working grid, with what is needed to map back.

    ``canonical`` is the input reoriented (real geometry); ``oriented`` the same voxels in the
    index frame (origin 0, identity direction); ``working`` the grid the network sees (index
    frame, working spacing; ``oriented`` itself when no resampling was needed); ``volume`` the
    normalised intensities ``(z, y, x)`` on ``working``; ``orientation`` the code used (e.g. LPS).
    """

    orientation: str
    canonical: sitk.Image
    oriented: sitk.Image
    working: sitk.Image
    volume: np.ndarray

    @property
    def resampled(self) -> bool:
        return self.working is not self.oriented


def index_frame(image: sitk.Image) -> sitk.Image:
    """``image`` with origin 0, identity direction and its spacing rounded to 1e-5 mm.

    Working in this frame makes everything the network sees depend only on the canonical
    voxels and spacing, so two storages of one physical grid (another axis order, rounding in
    origin or direction) give bit-identical results. The rounding removes storage noise
    (Slicer re-normalises a file's direction columns and moves their norm, e.g. 1.0000002,
    into the spacing), far below any physical meaning.
    """
    framed = sitk.Image(image)
    framed.SetSpacing([round(value, 5) for value in image.GetSpacing()])
    framed.SetOrigin((0.0,) * image.GetDimension())
    framed.SetDirection(np.eye(image.GetDimension()).ravel().tolist())
    return framed


#: voxel types whose every value a float32 holds exactly
_EXACT_IN_FLOAT32 = (sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkFloat32)


def to_working_grid(
    image: sitk.Image,
    orientation: str,
    spacing: Sequence[float],
    preprocessing: Mapping[str, Any],
) -> WorkingGrid:
    """Reorient ``image`` to ``orientation``, resample it linearly to ``spacing`` (x, y, z mm;
    skipped when already within 0.1%) and normalise its intensities."""
    # Voxel types that float32 holds exactly stay as they are until the resampling writes float32
    # (ITK interpolates in double either way: the same working grid, without two float copies of
    # a 512x512x200 CT); other types are cast first, as the interpolation always saw them.
    if image.GetPixelID() not in _EXACT_IN_FLOAT32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    canonical = sitk.DICOMOrient(image, orientation)
    oriented = index_frame(canonical)
    if np.allclose(oriented.GetSpacing(), spacing, rtol=1e-3, atol=0):
        working = oriented  # no interpolation: the way back is an exact permutation/flip
    else:
        size, new_spacing, origin = geometry.resampled_grid(oriented, spacing)
        working = sitk.Resample(
            oriented,
            size,
            sitk.Transform(),
            sitk.sitkLinear,
            origin,
            new_spacing,
            oriented.GetDirection(),
            0.0,
            sitk.sitkFloat32,
        )
    volume = normalize_intensity(
        sitk.GetArrayFromImage(working).astype(np.float32, copy=False), preprocessing
    )
    return WorkingGrid(orientation, canonical, oriented, working, volume)


def label_to_working_grid(label: sitk.Image, grid: WorkingGrid) -> np.ndarray:
    """A label map on the input grid of ``grid`` -> uint8 ``(z, y, x)`` on its working grid.

    A binary label is resampled linearly as a float mask and thresholded at 0.5 (as inference
    maps probabilities), a multi-class one with nearest neighbour.
    """
    oriented = index_frame(sitk.DICOMOrient(label, grid.orientation))
    if not grid.resampled:
        return sitk.GetArrayFromImage(oriented).astype(np.uint8)
    if int(np.max(sitk.GetArrayViewFromImage(oriented), initial=0)) <= 1:
        soft = sitk.Resample(
            sitk.Cast(oriented, sitk.sitkFloat32), grid.working, sitk.Transform(), sitk.sitkLinear, 0.0
        )
        return (sitk.GetArrayFromImage(soft) >= 0.5).astype(np.uint8)
    nearest = sitk.Resample(
        oriented, grid.working, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8
    )
    return sitk.GetArrayFromImage(nearest).astype(np.uint8)
