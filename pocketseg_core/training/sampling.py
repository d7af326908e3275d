"""Training volumes preprocessed once per case (cached in memory) and random patch sampling.

Preprocessing is :func:`pocketseg_core.preprocessing.to_working_grid`, the very function
inference uses, so the network sees at training exactly what it will see at inference; the
label follows with :func:`~pocketseg_core.preprocessing.label_to_working_grid`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch

from pocketseg_core.errors import PocketSegError
from pocketseg_core.preprocessing import label_to_working_grid, to_working_grid


@dataclass
class TrainingVolume:
    """One case on the working grid: ``image`` float32 ``(z, y, x)``, ``label`` uint8 ``(z, y, x)``,
    a sample of foreground coordinates ``(N, 3)`` for foreground-centred patches, and the first
    and last slice (z index) holding foreground, for patches just past the structure's ends
    (None: no foreground)."""

    case_id: str
    image: np.ndarray
    label: np.ndarray
    foreground: np.ndarray
    foreground_slices: tuple[int, int] | None = field(init=False)

    def __post_init__(self) -> None:
        slices = np.flatnonzero(self.label.any(axis=(1, 2)))
        self.foreground_slices = (int(slices[0]), int(slices[-1])) if len(slices) else None


def prepare_volume(
    case_id: str,
    image: sitk.Image,
    label: sitk.Image,
    spacing: tuple[float, float, float],
    orientation: str,
    preprocessing: dict,
    max_foreground_points: int = 20000,
) -> TrainingVolume:
    """Image and label (same grid) -> :class:`TrainingVolume` on the working grid (see module doc)."""
    grid = to_working_grid(image, orientation, spacing, preprocessing)
    volume = grid.volume.astype(np.float32)
    label_array = label_to_working_grid(label, grid)
    foreground = np.argwhere(label_array > 0)
    if len(foreground) > max_foreground_points:
        keep = np.random.default_rng(0).choice(len(foreground), max_foreground_points, replace=False)
        foreground = foreground[np.sort(keep)]
    return TrainingVolume(case_id, volume, label_array, foreground.astype(np.int64))


def check_patch_shares(foreground_fraction: float, past_ends_fraction: float, where: str) -> None:
    """Refuse shares of the patches (:func:`sample_batch`) that are not probabilities summing to
    at most 1."""
    if not (0.0 <= foreground_fraction <= 1.0 and 0.0 <= past_ends_fraction <= 1.0 - foreground_fraction):
        raise PocketSegError(
            f"{where}: foreground_fraction {foreground_fraction} and past_ends_fraction {past_ends_fraction} "
            "are shares of the patches: each from 0 to 1, together at most 1"
        )


def round_up_to_divisor(size_zyx: tuple[int, ...], divisor_zyx: tuple[int, ...]) -> tuple[int, ...]:
    """Each patch size rounded up to a multiple of the network's divisor."""
    return tuple(int(-(-size // d) * d) for size, d in zip(size_zyx, divisor_zyx, strict=True))


def extract_patch(
    volume: TrainingVolume, start_zyx: np.ndarray, patch_zyx: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The patch at ``start_zyx`` (may reach outside: padded with the image minimum and label 0)."""
    shape = np.array(volume.image.shape)
    start = np.asarray(start_zyx)
    stop = start + np.array(patch_zyx)
    image_patch = np.full(patch_zyx, volume.image.min(), dtype=np.float32)
    label_patch = np.zeros(patch_zyx, dtype=np.uint8)
    source_start = np.maximum(start, 0)
    source_stop = np.minimum(stop, shape)
    if np.any(source_stop <= source_start):
        return image_patch, label_patch
    target_start = source_start - start
    target_stop = target_start + (source_stop - source_start)
    source = tuple(slice(a, b) for a, b in zip(source_start, source_stop, strict=True))
    target = tuple(slice(a, b) for a, b in zip(target_start, target_stop, strict=True))
    image_patch[target] = volume.image[source]
    label_patch[target] = volume.label[source]
    return image_patch, label_patch


def sample_batch(
    volumes: list[TrainingVolume],
    batch_size: int,
    patch_zyx: tuple[int, int, int],
    foreground_fraction: float,
    rng: np.random.Generator,
    past_ends_fraction: float = 0.0,
    past_ends_slices: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch: ``image (B, 1, *patch)`` float32, ``label (B, *patch)`` long.

    Each patch comes from a random case; with probability ``foreground_fraction`` it is centred
    on a random foreground voxel (the paper is silent; sampling foreground keeps a small structure
    from being swamped by background); with probability ``past_ends_fraction`` its middle slice
    is one of the ``past_ends_slices`` slices just above or below the foreground's last or
    first slice (in-plane centred on a random foreground voxel: where an organ ends and its
    neighbours begin, the heart over the liver's dome, the kidney under its tip, which uniform
    patches reach only now and then); else its start is uniform over the volume (patches
    larger than the volume along an axis are centred with random jitter and padded). With
    ``past_ends_fraction`` 0 the draws are exactly those of the sampling without it.
    """
    images, labels = [], []
    patch = np.array(patch_zyx)
    for _ in range(batch_size):
        volume = volumes[int(rng.integers(len(volumes)))]
        shape = np.array(volume.image.shape)
        draw = rng.random() if len(volume.foreground) else 1.0
        if draw < foreground_fraction:
            centre = volume.foreground[int(rng.integers(len(volume.foreground)))]
            start = centre - patch // 2 + rng.integers(-(patch // 4), patch // 4 + 1)
        elif draw < foreground_fraction + past_ends_fraction and past_ends_slices > 0:
            centre = volume.foreground[int(rng.integers(len(volume.foreground)))].copy()
            centre[0] = slice_past_ends(volume, past_ends_slices, rng)
            start = centre - patch // 2
            start[1:] += rng.integers(-(patch[1:] // 4), patch[1:] // 4 + 1)
        else:
            span = shape - patch
            start = np.where(
                span >= 0,
                rng.integers(0, np.maximum(span, 0) + 1),
                span // 2 + rng.integers(-(np.abs(span) // 4), np.abs(span) // 4 + 1),
            )
        image_patch, label_patch = extract_patch(volume, start, tuple(int(p) for p in patch))
        images.append(image_patch)
        labels.append(label_patch)
    image_tensor = torch.from_numpy(np.stack(images))[:, None]
    label_tensor = torch.from_numpy(np.stack(labels)).long()
    return image_tensor, label_tensor


def slice_past_ends(volume: TrainingVolume, count: int, rng: np.random.Generator) -> int:
    """A random slice among the ``count`` just below the foreground's first slice or just above
    its last (each side equally likely, a side the image does not reach is skipped; a
    structure filling every slice gives its first or last slice)."""
    first, last = volume.foreground_slices
    offset = int(rng.integers(1, count + 1))
    below, above = first - offset, last + offset
    size = volume.image.shape[0]
    candidates = [z for z in (below, above) if 0 <= z < size]
    if not candidates:  # the image ends within ``offset`` slices of both ends
        return int(np.clip(below if rng.random() < 0.5 else above, 0, size - 1))
    return candidates[int(rng.integers(len(candidates)))]
