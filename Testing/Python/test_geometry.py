"""Grids: comparison, canonical orientation round trips, resampling in physical space."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_file

from pocketseg_core.errors import GridMismatchError
from pocketseg_core.geometry import (
    CANONICAL_ORIENTATION,
    describe_grid_difference,
    from_canonical,
    orientation_code,
    physical_diagonal,
    require_same_grid,
    resample_probabilities_to_mask,
    resample_to_reference,
    resample_to_spacing,
    resampled_grid,
    same_grid,
    to_canonical,
)
from pocketseg_core.io import read_image


def rotated_flipped_phantom() -> sitk.Image:
    """Random voxels (5x6x7 in x, y, z) on an oblique grid: 30 degrees about z, axes permuted and flipped."""
    array = np.random.default_rng(0).random((7, 6, 5)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 1.2, 2.5))
    image.SetOrigin((10.0, -20.0, 30.0))
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    permute_flip = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], dtype=float)
    image.SetDirection((rotation @ permute_flip).ravel().tolist())
    return image


def test_canonical_orientation_is_lps_and_keeps_every_voxel_at_its_physical_point() -> None:
    image = rotated_flipped_phantom()
    assert orientation_code(image) != CANONICAL_ORIENTATION
    canonical = to_canonical(image)
    assert orientation_code(canonical) == "LPS"
    # Axes only permuted: the sizes and spacings are those of the input, reordered.
    assert sorted(canonical.GetSpacing()) == sorted(image.GetSpacing())
    assert sorted(canonical.GetSize()) == sorted(image.GetSize())
    # Each voxel keeps its value at its physical position.
    for index in [(0, 0, 0), (4, 5, 6), (2, 3, 1), (1, 0, 5)]:
        point = image.TransformIndexToPhysicalPoint(index)
        assert canonical[canonical.TransformPhysicalPointToIndex(point)] == image[index]


def test_from_canonical_round_trip_is_exact_on_an_oblique_flipped_grid() -> None:
    image = rotated_flipped_phantom()
    back = from_canonical(to_canonical(image), image)
    assert back.GetSize() == image.GetSize()
    assert back.GetSpacing() == image.GetSpacing()  # bit for bit, not approximately
    assert back.GetOrigin() == image.GetOrigin()
    assert back.GetDirection() == image.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))


def test_from_canonical_maps_a_mask_computed_in_canonical_space_back_to_the_same_voxels() -> None:
    image = rotated_flipped_phantom()
    canonical = to_canonical(image)
    mask_canonical = sitk.Cast(canonical > 0.5, sitk.sitkUInt8)
    mask = from_canonical(mask_canonical, image)
    expected = (sitk.GetArrayFromImage(image) > 0.5).astype(np.uint8)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), expected)
    assert mask.GetPixelID() == sitk.sitkUInt8


def test_from_canonical_refuses_a_grid_that_is_not_a_permutation() -> None:
    image = rotated_flipped_phantom()
    other = resample_to_spacing(to_canonical(image), 1.0)
    with pytest.raises(GridMismatchError, match="not a permuted/flipped copy"):
        from_canonical(other, image)


def test_real_oblique_head_round_trips_exactly(shared_data: Path) -> None:
    image = read_image(shared_file(shared_data, "brain/swiss_atlas_t1.mha"))
    canonical = to_canonical(image)
    assert orientation_code(canonical) == "LPS"
    assert canonical.GetSize() == (180, 240, 193)
    back = from_canonical(canonical, image)
    assert same_grid(back, image, tol=0.0)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))


# --------------------------------------------------------------------------- grid comparison


def test_same_grid_and_the_description_of_differences() -> None:
    a = rotated_flipped_phantom()
    b = sitk.Image(a)
    assert same_grid(a, b)
    assert describe_grid_difference(a, b) == ""
    b.SetOrigin(np.add(a.GetOrigin(), (0.0, 0.0, 1e-5)).tolist())  # far below a voxel: same grid
    assert same_grid(a, b)
    b.SetOrigin(np.add(a.GetOrigin(), (0.0, 0.0, 0.4)).tolist())
    b.SetSpacing((0.8, 1.2, 3.0))
    difference = describe_grid_difference(a, b)
    assert "origin" in difference and "spacing (0.8, 1.2, 2.5) vs (0.8, 1.2, 3) mm" in difference
    assert "size" not in difference and "direction" not in difference
    c = sitk.Image([5, 6, 8], sitk.sitkFloat32)
    assert describe_grid_difference(a, c).startswith("size (5, 6, 7) vs (5, 6, 8)")
    with pytest.raises(GridMismatchError, match=r"label\.nii\.gz: the voxel grids differ \(size"):
        require_same_grid(a, c, "label.nii.gz")


def test_physical_diagonal_is_the_field_of_view_diagonal() -> None:
    image = sitk.Image([10, 20, 5], sitk.sitkUInt8)
    image.SetSpacing((0.5, 1.0, 4.0))
    assert physical_diagonal(image) == pytest.approx(np.sqrt(5.0**2 + 20.0**2 + 20.0**2))


# --------------------------------------------------------------------------- resampling


def test_resampled_grid_keeps_the_centre_and_the_field_of_view() -> None:
    image = rotated_flipped_phantom()  # 5x6x7 at (0.8, 1.2, 2.5)
    size, spacing, origin = resampled_grid(image, (1.6, None, 5.0))
    assert size == [3, 6, 4]  # 5 * 0.8 / 1.6 = 2.5 -> 3 and 7 * 2.5 / 5 = 3.5 -> 4 (half up)
    assert spacing == [1.6, 1.2, 5.0]
    new = sitk.Image(size, sitk.sitkFloat32)
    new.SetSpacing(spacing)
    new.SetOrigin(origin)
    new.SetDirection(image.GetDirection())
    centre_old = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    centre_new = new.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in size])
    np.testing.assert_allclose(centre_new, centre_old, atol=1e-9)
    with pytest.raises(ValueError, match="positive"):
        resampled_grid(image, 0.0)


def test_resampling_to_a_coarser_spacing_and_back_reproduces_a_smooth_image() -> None:
    # A linear ramp in physical x is reproduced exactly by linear interpolation away from the border.
    image = sitk.Image([40, 30, 12], sitk.sitkFloat32)
    image.SetSpacing((0.8, 1.2, 2.5))
    image.SetOrigin((3.0, -7.0, 11.0))
    z, y, x = np.meshgrid(np.arange(12), np.arange(30), np.arange(40), indexing="ij")
    ramp = (2.0 * x * 0.8 + 0.5 * y * 1.2 - z * 2.5).astype(np.float32)
    smooth = sitk.GetImageFromArray(ramp)
    smooth.CopyInformation(image)
    coarse = resample_to_spacing(smooth, 2.0)
    assert coarse.GetSize() == (16, 18, 15)
    assert coarse.GetSpacing() == (2.0, 2.0, 2.0)
    back = resample_to_reference(coarse, smooth)
    assert same_grid(back, smooth, tol=0.0)
    inner = (slice(3, -3), slice(3, -3), slice(4, -4))
    np.testing.assert_allclose(sitk.GetArrayFromImage(back)[inner], ramp[inner], atol=1e-3)


def test_nearest_neighbour_resampling_of_a_label_map_to_a_finer_grid_and_back_is_exact() -> None:
    labels = np.zeros((6, 8, 10), np.uint8)
    labels[1:5, 2:6, 3:8] = 1
    labels[2:4, 3:5, 4:6] = 2
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing((1.0, 2.0, 3.0))
    image.SetDirection(rotated_flipped_phantom().GetDirection())
    fine = resample_to_spacing(image, (0.5, 1.0, 1.0), sitk.sitkNearestNeighbor)
    assert fine.GetSize() == (20, 16, 18)
    back = resample_to_reference(fine, image, sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), labels)


def test_probabilities_are_interpolated_then_thresholded_on_the_reference_grid() -> None:
    reference = sitk.Image([8, 8, 8], sitk.sitkInt16)
    reference.SetSpacing((1.0, 1.0, 1.0))
    # Probabilities on a grid of 2 mm voxels centred on the same field of view.
    probabilities = np.zeros((4, 4, 4), np.float32)
    probabilities[:, :, 2:] = 1.0
    coarse = sitk.GetImageFromArray(probabilities)
    coarse.SetSpacing((2.0, 2.0, 2.0))
    coarse.SetOrigin((0.5, 0.5, 0.5))
    mask = resample_probabilities_to_mask(coarse, reference)
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert same_grid(mask, reference, tol=0.0)
    # x (mm) of fine voxel i is i; coarse centres at 0.5, 2.5, 4.5, 6.5: the 0->1 step lies
    # between 2.5 and 4.5, the 0.5 level at x = 3.5, so fine voxels x >= 4 are inside.
    row = sitk.GetArrayFromImage(mask)[4, 4, :]
    np.testing.assert_array_equal(row, [0, 0, 0, 0, 1, 1, 1, 1])


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.4, 0.4, 3.0), (2.5, 2.5, 2.5)])
def test_one_grid_tolerance_scaled_by_the_smallest_voxel(spacing):
    from pocketseg_core.geometry import GRID_TOLERANCE, grid_tolerance_mm, same_grid

    tolerance = grid_tolerance_mm(spacing)
    assert tolerance == pytest.approx(GRID_TOLERANCE * min(spacing))
    image = sitk.Image([8, 9, 10], sitk.sitkUInt8)
    image.SetSpacing(spacing)
    near, far = sitk.Image(image), sitk.Image(image)
    near.SetOrigin((0.5 * tolerance, 0.0, 0.0))  # a float32 header round trip moves this little
    far.SetOrigin((2.0 * tolerance, 0.0, 0.0))
    assert same_grid(image, near) and not same_grid(image, far)
