"""Post-processing: the masked ("skull-stripped") volume's background, per modality."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from pocketseg_core.postprocessing import keep_largest_component, mask_array, masked_volume


def test_masked_volume_background_is_zero_for_mr_and_air_for_ct():
    values = np.array([[[-1000, -50, 40], [300, 20, -1024]]], dtype=np.int16)
    inside = np.array([[[False, True, True], [True, False, False]]])
    np.testing.assert_array_equal(mask_array(values, inside, "MR"), [[[0, -50, 40], [300, 0, 0]]])
    ct = mask_array(values, inside, "CT")
    np.testing.assert_array_equal(ct, [[[-1024, -50, 40], [300, -1024, -1024]]])
    assert ct.dtype == np.int16


def test_masked_volume_keeps_the_grid():
    image = sitk.GetImageFromArray(np.arange(24, dtype=np.float32).reshape(2, 3, 4) + 1)
    image.SetSpacing((0.5, 1.5, 3.0))
    image.SetOrigin((1.0, -2.0, 7.5))
    image.SetDirection((0, 1, 0, -1, 0, 0, 0, 0, 1))
    mask = sitk.Cast(image > 12, sitk.sitkUInt8)
    masked = masked_volume(image, mask, "MR")
    assert masked.GetSpacing() == image.GetSpacing() and masked.GetDirection() == image.GetDirection()
    assert masked.GetOrigin() == image.GetOrigin()
    array = sitk.GetArrayFromImage(masked)
    assert (array[array > 0] > 12).all() and (array == 0).sum() == 12


def test_largest_component_keeps_only_the_biggest_blob():
    array = np.zeros((10, 10, 10), dtype=np.uint8)
    array[1:4, 1:4, 1:4] = 1  # 27 voxels
    array[6:9, 6:9, 6:8] = 1  # 18 voxels, separate
    cleaned = sitk.GetArrayFromImage(keep_largest_component(sitk.GetImageFromArray(array)))
    assert cleaned.sum() == 27 and cleaned[1:4, 1:4, 1:4].all()
