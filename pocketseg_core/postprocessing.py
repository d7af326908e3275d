"""Mask clean-up on the physical grid with SimpleITK (largest component, hole filling), and the
masked ("skull-stripped") volume.

PocketNet section 3: "As a post-processing step, we select the largest connected component in
each predicted segmentation mask." Done per label, so a multi-label mask keeps one component
of each structure.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def _labels_of(mask: sitk.Image) -> list[int]:
    values = np.unique(sitk.GetArrayViewFromImage(mask))
    return [int(v) for v in values if v != 0]


def keep_largest_component(mask: sitk.Image, fully_connected: bool = True) -> sitk.Image:
    """For each non-zero label of a uint8 ``mask``, keep only its largest connected component.

    Returns a uint8 image with the mask's geometry. ``fully_connected`` counts diagonal
    neighbours (26-connectivity in 3D), so thin diagonal bridges do not split an organ.
    """
    mask = sitk.Cast(mask, sitk.sitkUInt8)
    output = np.zeros(mask.GetSize()[::-1], dtype=np.uint8)
    for value in _labels_of(mask):
        binary = sitk.Equal(mask, value)
        components = sitk.ConnectedComponent(binary, fully_connected)
        largest = sitk.RelabelComponent(components, sortByObjectSize=True) == 1
        output[sitk.GetArrayViewFromImage(largest).astype(bool)] = value
    result = sitk.GetImageFromArray(output)
    result.CopyInformation(mask)
    return result


def fill_holes(mask: sitk.Image) -> sitk.Image:
    """Fill the enclosed holes (cavities not connected to the border) of each label, in 3D."""
    mask = sitk.Cast(mask, sitk.sitkUInt8)
    output = sitk.GetArrayFromImage(mask)
    for value in _labels_of(mask):
        filled = sitk.BinaryFillhole(sitk.Equal(mask, value), fullyConnected=False, foregroundValue=1)
        filled_array = sitk.GetArrayViewFromImage(filled).astype(bool)
        output[filled_array & (output == 0)] = value
    result = sitk.GetImageFromArray(output)
    result.CopyInformation(mask)
    return result


def mask_array(values: np.ndarray, inside: np.ndarray, modality: str) -> np.ndarray:
    """``values`` where ``inside`` is set, background elsewhere (same dtype).

    The background is 0 for MR (a skull-stripped brain on black, as FSL's BET writes it) and the
    image's minimum for CT (air, so that CT windowing still shows the kept region naturally).
    """
    background = values.min() if modality == "CT" else 0
    return np.where(inside, values, np.asarray(background, dtype=values.dtype)).astype(values.dtype)


def masked_volume(image: sitk.Image, mask: sitk.Image, modality: str) -> sitk.Image:
    """The input image with everything outside ``mask`` set to the background (see :func:`mask_array`)."""
    values = sitk.GetArrayFromImage(image)
    masked = sitk.GetImageFromArray(mask_array(values, sitk.GetArrayViewFromImage(mask) > 0, modality))
    masked.CopyInformation(image)
    return masked
