"""Post-processing: the masked ("skull-stripped") volume's background, per modality; the
largest component; detaching blobs joined by thin bridges."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from pocketseg_core.postprocessing import (
    apply_postprocessing,
    cut_below_waist,
    cut_thin_bridges,
    fill_holes,
    fill_holes_in_slices,
    keep_largest_component,
    mask_array,
    masked_volume,
    nonzero_extent,
    superior_axis,
)


def test_masked_volume_background_is_zero_for_mr_and_air_for_ct():
    values = np.array([[[-1000, -50, 40], [300, 20, -1024]]], dtype=np.int16)
    inside = np.array([[[False, True, True], [True, False, False]]])
    np.testing.assert_array_equal(mask_array(values, inside, "MR"), [[[0, -50, 40], [300, 0, 0]]])
    ct = mask_array(values, inside, "CT")
    np.testing.assert_array_equal(ct, [[[-1024, -50, 40], [300, -1024, -1024]]])
    assert ct.dtype == np.int16


@pytest.mark.parametrize("shape", [(9,), (6, 9), (5, 6, 9), (4, 5, 6, 3)])
def test_nonzero_extent_is_the_box_of_the_non_zero_entries_in_any_dimension(shape):
    rng = np.random.default_rng(len(shape))
    for _ in range(50):
        array = (rng.random(shape) > 0.9).astype(np.uint8)
        expected = None
        if array.any():
            where = np.argwhere(array)
            expected = [
                (int(low), int(high)) for low, high in zip(where.min(axis=0), where.max(axis=0), strict=True)
            ]
        assert nonzero_extent(array) == expected
    assert nonzero_extent(np.zeros(shape)) is None


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


def _ball(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float) -> np.ndarray:
    z, y, x = np.indices(shape)
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2


def _brain_with_leak(spacing: tuple[float, float, float]) -> tuple[sitk.Image, np.ndarray, np.ndarray]:
    """A big ball (the brain) and a smaller one (the tongue) joined by a 2-voxel-wide bar."""
    shape = (40, 40, 70)
    brain = _ball(shape, (20, 20, 20), 14)
    tongue = _ball(shape, (20, 20, 55), 8)
    bridge = np.zeros(shape, dtype=bool)
    bridge[19:21, 19:21, 30:50] = True
    image = sitk.GetImageFromArray((brain | tongue | bridge).astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin((3.0, -7.0, 11.0))
    image.SetDirection((0, 0, 1, 1, 0, 0, 0, 1, 0))
    return image, brain, tongue


@pytest.mark.parametrize(
    ("spacing", "radius"),
    [((1.0, 1.0, 1.0), 3.0), ((1.0, 1.5, 2.0), 3.0), ((0.5, 0.5, 0.5), 1.5), ((1.0, 1.0, 1.0), 4.0)],
)
def test_cut_thin_bridges_drops_the_attached_blob_and_keeps_the_body(spacing, radius):
    """Also where the cores are found on a coarser grid (radius >= 4 voxels: 2x coarser)."""
    image, brain, tongue = _brain_with_leak(spacing)
    # the largest-component step alone keeps the blob: it is connected
    assert sitk.GetArrayFromImage(keep_largest_component(image))[tongue].all()
    cut = cut_thin_bridges(image, radius_mm=radius)
    array = sitk.GetArrayFromImage(cut)
    assert array[brain].all(), "nothing of the main body may be removed"
    assert not array[tongue].any()
    assert array.sum() < brain.sum() + 40  # at most a stub of the bridge stays
    assert cut.GetSpacing() == image.GetSpacing() and cut.GetOrigin() == image.GetOrigin()
    assert cut.GetDirection() == image.GetDirection()


def test_cut_thin_bridges_leaves_a_single_thick_body_alone():
    image, brain, _ = _brain_with_leak((1.0, 1.0, 1.0))
    # a radius larger than the tongue's: it has no core of its own, nothing is detached
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(cut_thin_bridges(image, radius_mm=9.0)), sitk.GetArrayFromImage(image)
    )
    with pytest.raises(ValueError, match="radius_mm must be positive"):
        cut_thin_bridges(image, radius_mm=0)


def test_cut_thin_bridges_on_a_volume_thinner_than_the_coarse_grid():
    """A 3-slice CT (the dcmqi sample) with a radius whose coarse grid is thicker than the label's
    box along z: BinShrink raised "InputImage is too small" before the factors were capped."""
    array = np.zeros((3, 60, 90), dtype=np.uint8)
    array[:, 10:50, 5:40] = 1  # body
    array[:, 10:50, 60:85] = 1  # blob
    array[:, 28:31, 40:60] = 1  # 3-voxel bridge
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 0.5))
    cut = sitk.GetArrayFromImage(cut_thin_bridges(image, radius_mm=4.0))
    assert cut[:, 10:50, 5:40].all()
    assert not cut[:, 10:50, 62:85].any()


def test_cut_thin_bridges_works_per_label():
    image, brain, tongue = _brain_with_leak((1.0, 1.0, 1.0))
    array = sitk.GetArrayFromImage(image)
    array[:, :, :8] = np.where(array[:, :, :8] > 0, 2, 0)  # part of the body is another label
    labelled = sitk.GetImageFromArray(array)
    result = sitk.GetArrayFromImage(cut_thin_bridges(labelled, radius_mm=3.0))
    assert (result == 2).sum() == (array == 2).sum()
    assert not result[tongue].any() and (result[brain & (array == 1)] == 1).all()


@pytest.mark.parametrize("superior", [0, 2])
def test_fill_holes_in_slices_closes_a_vessel_tunnel_that_3d_filling_cannot(superior):
    """An organ pierced by a vessel from top to bottom: a hole in every axial slice."""
    organ = np.zeros((12, 20, 20), dtype=np.uint8)  # numpy (k, j, i)
    organ[1:11, 3:17, 3:17] = 1
    organ[:, 9:11, 9:11] = 0  # the vessel runs through all of it along numpy axis 0
    organ[5, 4:6, 4:6] = 0  # a cavity inside: 3D filling closes it too
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(organ, 0, superior)))
    image.SetSpacing((0.8, 0.8, 2.5))
    # the array axis that runs head-foot is the one the tunnel runs along
    direction = {0: (1, 0, 0, 0, 1, 0, 0, 0, 1), 2: (0, 0, 1, 0, 1, 0, 1, 0, 0)}[superior]
    image.SetDirection(direction)
    assert superior_axis(image) == superior
    three_d = np.moveaxis(sitk.GetArrayFromImage(fill_holes(image)), superior, 0)
    assert three_d[5, 4:6, 4:6].all() and not three_d[:, 9:11, 9:11].any()
    sliced = fill_holes_in_slices(image)
    assert sliced.GetDirection() == image.GetDirection()
    filled = np.moveaxis(sitk.GetArrayFromImage(sliced), superior, 0)
    assert filled[1:11, 9:11, 9:11].all() and filled[5, 4:6, 4:6].all()
    assert filled.sum() == 10 * 14 * 14  # nothing outside the organ's outline


def test_clean_up_of_an_empty_mask_is_empty_on_the_same_grid():
    # a model that finds nothing must give an empty mask, not an error
    empty = sitk.GetImageFromArray(np.zeros((10, 20, 20), dtype=np.uint8))
    empty.SetSpacing((0.8, 0.8, 2.0))
    for clean_up in (
        keep_largest_component,
        fill_holes_in_slices,
        lambda m: cut_thin_bridges(m, 3.0),
        cut_below_waist,
    ):
        result = clean_up(empty)
        assert result.GetSize() == empty.GetSize() and result.GetSpacing() == empty.GetSpacing()
        assert not sitk.GetArrayFromImage(result).any()


def head_with_neck_leak(neck: bool) -> np.ndarray:
    """A brain-like mask (z = head-foot, index 0 at the feet, 2 mm voxels): an ellipsoid 'brain'
    with a 'ventricle' cavity, a thin 'medulla' going down from it, and (``neck``) a wide 'neck'
    blob hanging below the medulla."""
    z, y, x = np.ogrid[:60, :40, :40]
    mask = ((z - 40) / 16.0) ** 2 + ((y - 20) / 16.0) ** 2 + ((x - 20) / 14.0) ** 2 <= 1.0
    mask &= ~(((z - 42) / 4.0) ** 2 + ((y - 20) / 3.0) ** 2 + ((x - 20) / 3.0) ** 2 <= 1.0)  # ventricle
    mask |= (z >= 14) & (z < 26) & ((y - 20) ** 2 + (x - 20) ** 2 <= 4)  # medulla, ~0.5 cm2
    if neck:
        mask |= (z >= 2) & (z < 16) & ((y - 20) ** 2 + (x - 20) ** 2 <= 64)  # neck, ~8 cm2
    return mask.astype(np.uint8)


@pytest.mark.parametrize("flipped", [False, True])
def test_cut_below_waist_drops_a_leak_into_the_neck_and_keeps_the_brain(flipped):
    leaking, clean = head_with_neck_leak(True), head_with_neck_leak(False)
    if flipped:  # index 0 at the head: the direction matrix says which end is up
        leaking, clean = leaking[::-1].copy(), clean[::-1].copy()
    image = sitk.GetImageFromArray(leaking)
    image.SetSpacing((2.0, 2.0, 2.0))
    if flipped:
        image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))
    cut = sitk.GetArrayFromImage(cut_below_waist(image))
    cut_at = 16 if not flipped else 60 - 1 - 16  # the waist: the medulla's lowest slice above the neck
    expected = leaking.copy()
    if flipped:
        expected[cut_at + 1 :] = 0
    else:
        expected[:cut_at] = 0
    assert np.array_equal(cut, expected)
    # the whole brain and the medulla down to the waist are kept; the neck is gone
    kept_brain = clean.copy()
    if flipped:
        kept_brain[cut_at + 1 :] = 0
    else:
        kept_brain[:cut_at] = 0
    assert np.array_equal(cut & ~kept_brain.astype(bool), np.zeros_like(cut))
    assert cut.sum() >= clean.sum() - 5 * 13  # at most the medulla's slices below the waist lost


def test_cut_below_waist_leaves_a_mask_without_a_waist_alone():
    image = sitk.GetImageFromArray(head_with_neck_leak(False))
    image.SetSpacing((2.0, 2.0, 2.0))
    assert np.array_equal(sitk.GetArrayFromImage(cut_below_waist(image)), head_with_neck_leak(False))


def test_apply_postprocessing_runs_the_bundle_steps_in_order():
    image = sitk.GetImageFromArray(head_with_neck_leak(True))
    image.SetSpacing((2.0, 2.0, 2.0))
    plain = sitk.GetArrayFromImage(apply_postprocessing(image, {}))
    assert np.array_equal(plain, head_with_neck_leak(True))  # one component, holes kept
    full = sitk.GetArrayFromImage(apply_postprocessing(image, {"cut_below_waist": True, "fill_holes": "3d"}))
    assert not full[:16].any() and full[16:26].any()  # the neck is cut, the medulla kept
    assert full[42, 20, 20] == 1  # the ventricle is filled
    assert full[30:58].sum() > plain[30:58].sum()


@pytest.mark.parametrize("fill", ["3d", "slices"])
@pytest.mark.parametrize("placement", ["inside", "touching_the_border"])
def test_clean_up_on_the_mask_box_equals_the_whole_grid(fill, placement):
    """clean_up works on the mask's bounding box (+ margin): every step, alone or together, gives
    the voxels it gives on the whole grid, also where the mask touches the image border (a hole
    open to the border is no hole) and with anisotropic spacing and a flipped direction."""
    from pocketseg_core.inference.options import InferenceOptions
    from pocketseg_core.inference.postprocess import _clean_up_steps, clean_up

    head = head_with_neck_leak(True)  # brain with a cavity, medulla, neck: every step acts
    blob = np.zeros((60, 40, 40), np.uint8)
    blob[44:50, 2:6, 30:34] = 1  # a stray blob
    array = np.zeros((80, 64, 70), np.uint8)
    offset = (10, 12, 9) if placement == "inside" else (0, 0, 30)
    region = tuple(slice(o, o + n) for o, n in zip(offset, head.shape, strict=True))
    array[region] = head | blob
    if placement == "touching_the_border":
        array[30:34, 0:3, 40:44] = 0  # a notch open to the border y = 0: not a hole
        array[40, 20, 50] = 0  # an enclosed one-voxel hole near the border
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 1.5, 2.5))
    image.SetOrigin((-20.0, 7.5, 3.0))
    image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))
    bundle_steps = {"cut_bridges_mm": 4.0, "cut_below_waist": True, "fill_holes": fill}
    for steps in (
        InferenceOptions(),
        InferenceOptions(fill_holes=True),
        InferenceOptions(keep_largest_component=False),
        InferenceOptions(cut_thin_bridges=False),
        InferenceOptions.without_clean_up(),
    ):
        on_box = clean_up(image, bundle_steps, steps)
        whole = _clean_up_steps(image, bundle_steps, steps)
        assert on_box.GetSize() == image.GetSize() and on_box.GetOrigin() == image.GetOrigin()
        assert on_box.GetPixelID() == sitk.sitkUInt8
        assert np.array_equal(sitk.GetArrayViewFromImage(on_box), sitk.GetArrayViewFromImage(whole))
    cleaned = sitk.GetArrayViewFromImage(clean_up(image, bundle_steps, InferenceOptions()))
    assert cleaned.sum() != array.sum()  # the steps did change the mask (the test is not vacuous)
