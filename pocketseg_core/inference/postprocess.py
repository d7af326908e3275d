"""The postprocess stage: probabilities on the working grid -> a clean mask on the input grid.

:func:`to_input_grid` brings the probabilities back to exactly the input's grid *linearly* (an
exact permutation/flip where no resampling was needed) and only then thresholds (one label) or
takes the argmax; :func:`clean_up` then applies the clean-up steps, each switched by its own
option of :class:`~pocketseg_core.inference.options.InferenceOptions`:

1. ``cut_thin_bridges``: detach blobs joined to a label's main body by strands thinner than the
   bundle's ``cut_bridges_mm`` (only where the bundle sets it);
2. ``keep_largest_component``: keep the largest connected component of each label (PocketNet
   section 3);
3. ``bundle_fill_holes``: the bundle's own hole filling (``"3d"``, or ``"slices"``: in each
   axial slice), where the bundle sets one;
4. ``fill_holes``: fill every enclosed hole in 3D as well (the caller's choice).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import SimpleITK as sitk

from pocketseg_core import geometry
from pocketseg_core.inference.options import InferenceOptions
from pocketseg_core.postprocessing import (
    array_box,
    cut_below_waist,
    cut_thin_bridges,
    fill_holes,
    fill_holes_in_slices,
    keep_largest_component,
    nonzero_extent,
)
from pocketseg_core.preprocessing import WorkingGrid

#: background voxels kept around the mask's bounding box for the clean-up: every step gives the
#: same voxels on the box as on the whole grid (each works on a label's box with at most this
#: margin; hole filling needs one background voxel around to tell the outside from a hole)
CLEAN_UP_MARGIN = 2


def clean_up(mask: sitk.Image, postprocessing: Mapping[str, Any], steps: InferenceOptions) -> sitk.Image:
    """``mask`` after the clean-up steps switched on in ``steps`` (see the module docstring),
    with the bundle's settings ``postprocessing`` (``cut_bridges_mm``, ``cut_below_waist``,
    ``fill_holes``); a ``uint8`` image on ``mask``'s grid. With every step on it is
    :func:`pocketseg_core.postprocessing.apply_postprocessing`.

    The steps run on the mask's bounding box grown by :data:`CLEAN_UP_MARGIN` (a liver is a few %
    of a CT's grid, a brain a third of a head's), with the same result voxel for voxel."""
    mask = sitk.Cast(mask, sitk.sitkUInt8) if mask.GetPixelID() != sitk.sitkUInt8 else mask
    values = sitk.GetArrayViewFromImage(mask)
    extent = nonzero_extent(values)
    if extent is None:
        return sitk.Image(mask)
    size_xyz = mask.GetSize()
    start = [max(0, low - CLEAN_UP_MARGIN) for low, _ in reversed(extent)]
    size = [
        min(size_xyz[i], high + 1 + CLEAN_UP_MARGIN) - start[i]
        for i, (_, high) in enumerate(reversed(extent))
    ]
    if list(size) == list(size_xyz):
        return _clean_up_steps(mask, postprocessing, steps)
    cleaned = _clean_up_steps(sitk.RegionOfInterest(mask, size, start), postprocessing, steps)
    output = np.zeros(values.shape, dtype=np.uint8)
    output[array_box(start, size)] = sitk.GetArrayViewFromImage(cleaned)
    result = sitk.GetImageFromArray(output)
    result.CopyInformation(mask)
    return result


def _clean_up_steps(
    mask: sitk.Image, postprocessing: Mapping[str, Any], steps: InferenceOptions
) -> sitk.Image:
    """The steps of :func:`clean_up`, on whatever grid ``mask`` has."""
    bridge_radius = postprocessing.get("cut_bridges_mm")
    if steps.cut_thin_bridges and bridge_radius:
        mask = cut_thin_bridges(mask, float(bridge_radius))
    if steps.keep_largest_component:
        mask = keep_largest_component(mask)
    if steps.cut_thin_bridges and postprocessing.get("cut_below_waist"):
        kept = np.count_nonzero(sitk.GetArrayViewFromImage(mask))
        mask = cut_below_waist(mask)  # on the kept body: a stray blob has no waist
        # only a cut (it only removes voxels) can leave pieces behind
        if steps.keep_largest_component and np.count_nonzero(sitk.GetArrayViewFromImage(mask)) != kept:
            mask = keep_largest_component(mask)
    bundle_fill = postprocessing.get("fill_holes") if steps.bundle_fill_holes else None
    if bundle_fill == "slices":
        mask = fill_holes_in_slices(mask)
    if steps.fill_holes or bundle_fill == "3d":
        mask = fill_holes(mask)
    return mask


def channel_to_input(channel: np.ndarray, grid: WorkingGrid, image: sitk.Image, outside: float) -> np.ndarray:
    """One probability channel ``(z, y, x)`` on the working grid -> array on the input grid.

    Linear interpolation in physical space onto the canonical (oriented) input grid, the border
    half-voxel extrapolated from the nearest working voxel (``outside`` only for input voxels
    beyond the working grid); then an exact permutation/flip back to the input's storage order.
    """
    channel_image = sitk.GetImageFromArray(np.ascontiguousarray(channel, dtype=np.float32))
    channel_image.CopyInformation(grid.working)
    if grid.resampled:
        # Resample onto the canonical copy of the input grid, not onto the input grid itself: two
        # storages of the same physical grid (e.g. a k axis reversed by Slicer's reader) then give
        # bit-identical probabilities, and the last step below is an exact permutation/flip.
        channel_image = sitk.Resample(
            channel_image, grid.oriented, sitk.Transform(), sitk.sitkLinear, outside, sitk.sitkFloat32, True
        )
    channel_image.CopyInformation(grid.canonical)
    back = geometry.from_canonical(channel_image, image)
    return sitk.GetArrayFromImage(back)


def input_region_above(
    channel: np.ndarray, grid: WorkingGrid, level: float
) -> tuple[list[int], list[int]] | None:
    """Index start and size (x, y, z) of the part of ``grid.oriented`` where the linear
    interpolation of ``channel`` (on ``grid.working``) can exceed ``level``; None: nowhere.

    Why it is exact: an interpolated value is a convex combination of the working voxels whose
    centres lie less than one working voxel away along each axis (the border half-voxel takes
    the nearest one), so it exceeds ``level`` only within one voxel of a working voxel that
    does. That box, mapped into the input grid (an affine map: its corners bound it), is grown
    to whole voxels.
    """
    above = nonzero_extent(channel > level)
    if above is None:
        return None
    extents = [(low - 1.0, high + 1.0) for low, high in above]  # (z, y, x)
    corners_xyz = [
        grid.oriented.TransformPhysicalPointToContinuousIndex(
            grid.working.TransformContinuousIndexToPhysicalPoint((x, y, z))
        )
        for z in extents[0]
        for y in extents[1]
        for x in extents[2]
    ]
    lowest, highest = np.min(corners_xyz, axis=0), np.max(corners_xyz, axis=0)
    size_xyz = grid.oriented.GetSize()
    start = [max(0, math.floor(lowest[i])) for i in range(3)]
    stop = [min(size_xyz[i], math.ceil(highest[i]) + 1) for i in range(3)]
    if any(b <= a for a, b in zip(start, stop, strict=True)):
        return None
    return start, [b - a for a, b in zip(start, stop, strict=True)]


def threshold_on_input(
    foreground: np.ndarray, grid: WorkingGrid, image: sitk.Image, label_value: int
) -> sitk.Image:
    """``label_value`` where the linear resampling of ``foreground`` onto the input grid exceeds
    0.5, as :func:`_channel_to_input` + threshold gives, but interpolated only inside
    :func:`input_region_above`: a liver is a few % of a 512x512x200 CT, and resampling all of
    it was the largest post-processing cost."""
    canonical = np.zeros(grid.oriented.GetSize()[::-1], dtype=np.uint8)
    region = input_region_above(foreground, grid, 0.5)
    if region is not None:
        start, size = region
        channel_image = sitk.GetImageFromArray(np.ascontiguousarray(foreground, dtype=np.float32))
        channel_image.CopyInformation(grid.working)
        part = sitk.Resample(
            channel_image,
            size,
            sitk.Transform(),
            sitk.sitkLinear,
            grid.oriented.TransformIndexToPhysicalPoint(start),
            grid.oriented.GetSpacing(),
            grid.oriented.GetDirection(),
            0.0,
            sitk.sitkFloat32,
            True,
        )
        canonical[array_box(start, size)] = np.where(sitk.GetArrayViewFromImage(part) > 0.5, label_value, 0)
    mask = sitk.GetImageFromArray(canonical)
    mask.CopyInformation(grid.canonical)
    return geometry.from_canonical(mask, image)


def to_input_grid(
    probabilities: np.ndarray,
    grid: WorkingGrid,
    image: sitk.Image,
    label_value: int,
    return_probabilities: bool = False,
) -> tuple[sitk.Image, sitk.Image | None]:
    """Probabilities ``(K, z, y, x)`` on the working grid -> (uint8 mask, optional float32
    probabilities) on the input grid: resample linearly first, threshold/argmax after.

    ``label_value``: the mask value of the foreground of a two-class model (the bundle's one
    label); a model with more classes writes its class indices."""
    num_classes = probabilities.shape[0]
    probability_image = None
    if num_classes == 2 and grid.resampled and not return_probabilities:
        return threshold_on_input(probabilities[1], grid, image, label_value), None
    if num_classes == 2:
        foreground = channel_to_input(probabilities[1], grid, image, 0.0)
        mask_array = np.where(foreground > 0.5, label_value, 0).astype(np.uint8)
        if return_probabilities:
            probability_image = sitk.GetImageFromArray(foreground.astype(np.float32))
    else:
        channels = np.stack(
            [
                channel_to_input(probabilities[k], grid, image, 1.0 if k == 0 else 0.0)
                for k in range(num_classes)
            ]
        )
        mask_array = np.argmax(channels, axis=0).astype(np.uint8)
        if return_probabilities:
            probability_image = sitk.GetImageFromArray(
                np.moveaxis(channels, 0, -1).astype(np.float32), isVector=True
            )
    mask = sitk.GetImageFromArray(mask_array)
    mask.CopyInformation(image)
    if probability_image is not None:
        probability_image.CopyInformation(image)
    return mask, probability_image
