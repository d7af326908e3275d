"""Metrics checked against cases computed by hand, with anisotropic spacing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_file

from pocketseg_core.errors import GridMismatchError, InputImageError
from pocketseg_core.io import read_image
from pocketseg_core.metrics import METRIC_NAMES, RVD_EMPTY_REFERENCE, EmptyMaskWarning, compute_metrics, dice

SPACING = (0.8, 1.2, 2.5)  # (x, y, z) mm
SHAPE = (14, 16, 18)  # (z, y, x)


def label_image(array: np.ndarray, spacing=SPACING, direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin((-4.0, 17.0, 2.5))
    if direction is not None:
        image.SetDirection(direction)
    return image


def cube(start: tuple[int, int, int], edge: int, value: int = 1) -> np.ndarray:
    """A cube of ``edge`` voxels with its first voxel at ``start`` = (z, y, x)."""
    array = np.zeros(SHAPE, np.uint8)
    z, y, x = start
    array[z : z + edge, y : y + edge, x : x + edge] = value
    return array


def test_keys_are_the_eight_metrics_in_order() -> None:
    metrics = compute_metrics(label_image(cube((2, 2, 2), 6)), label_image(cube((2, 2, 3), 6)))
    assert (
        tuple(metrics) == METRIC_NAMES == ("dice", "hd_max", "hd_mean", "hd95", "voe", "rvd", "assd", "mssd")
    )
    assert all(isinstance(value, float) and np.isfinite(value) for value in metrics.values())


def test_mask_against_itself_is_perfect() -> None:
    mask = label_image(cube((2, 3, 4), 7))
    metrics = compute_metrics(mask, mask)
    assert metrics == {
        "dice": 1.0,
        "hd_max": 0.0,
        "hd_mean": 0.0,
        "hd95": 0.0,
        "voe": 0.0,
        "rvd": 0.0,
        "assd": 0.0,
        "mssd": 0.0,
    }


@pytest.mark.parametrize(("array_axis", "spacing_mm"), [(2, 0.8), (1, 1.2), (0, 2.5)])
def test_one_voxel_shift_gives_distances_equal_to_the_spacing_along_that_axis(
    array_axis: int, spacing_mm: float
) -> None:
    reference = cube((3, 4, 5), 6)
    shifted = np.roll(reference, 1, axis=array_axis)
    metrics = compute_metrics(label_image(reference), label_image(shifted))
    assert metrics["hd_max"] == pytest.approx(spacing_mm, abs=1e-5)
    assert metrics["hd95"] == pytest.approx(spacing_mm, abs=1e-5)
    assert metrics["mssd"] == pytest.approx(spacing_mm, abs=1e-5)
    # Counting: 6x6x6 cubes overlapping on 5 of 6 layers.
    assert metrics["dice"] == pytest.approx(2 * 180 / 432)
    assert metrics["voe"] == pytest.approx(1 - 180 / 252)
    assert metrics["rvd"] == 0.0
    # Hausdorff mean (all voxels): one layer of 36 of the 216 voxels of each cube is 1 voxel off.
    assert metrics["hd_mean"] == pytest.approx(36 / 216 * spacing_mm)
    assert 0 < metrics["assd"] < spacing_mm


def test_two_cubes_with_a_known_offset_counted_by_hand() -> None:
    # Reference 8x8x8 voxels; prediction 6x6x6 voxels shifted by 3 voxels along x (0.8 mm each).
    reference = cube((2, 2, 2), 8)
    prediction = np.zeros(SHAPE, np.uint8)
    prediction[3:9, 3:9, 5:11] = 1  # x 5..10 vs reference x 2..9: overlap x 5..9 (5 voxels)
    metrics = compute_metrics(label_image(reference), label_image(prediction))
    overlap = 6 * 6 * 5
    a, b = 8**3, 6**3
    assert metrics["dice"] == pytest.approx(2 * overlap / (a + b))
    assert metrics["voe"] == pytest.approx(1 - overlap / (a + b - overlap))
    assert metrics["rvd"] == pytest.approx((b - a) / a)  # signed: prediction smaller -> negative
    assert metrics["rvd"] < 0
    # Farthest reference voxel from the prediction: the corner (z 2, y 2, x 2) against the
    # prediction corner (3, 3, 5): 1 voxel in z (2.5 mm), 1 in y (1.2 mm), 3 in x (2.4 mm).
    assert metrics["hd_max"] == pytest.approx(np.sqrt(2.5**2 + 1.2**2 + 2.4**2))


def test_dice_alone_on_arrays_and_images_counted_by_hand() -> None:
    reference = cube((2, 2, 2), 8)
    prediction = np.zeros(SHAPE, np.uint8)
    prediction[3:9, 3:9, 5:11] = 7  # any non-zero value is inside
    expected = 2 * (6 * 6 * 5) / (8**3 + 6**3)
    assert dice(reference, prediction) == pytest.approx(expected)
    assert dice(label_image(reference), label_image(prediction)) == pytest.approx(expected)
    assert dice(reference.astype(bool), prediction > 0) == pytest.approx(expected)
    assert dice(np.zeros(SHAPE), np.zeros(SHAPE)) == 1.0  # both empty: perfect, as compute_metrics
    assert dice(reference, np.zeros(SHAPE)) == 0.0
    with pytest.raises(GridMismatchError, match="two masks of one shape"):
        dice(reference, reference[1:])


def test_anisotropic_offset_along_one_axis_equals_offset_in_mm() -> None:
    reference = cube((2, 2, 2), 8)
    for offset in (1, 2, 3):
        prediction = np.roll(reference, offset, axis=0)  # along z, 2.5 mm per voxel
        metrics = compute_metrics(label_image(reference), label_image(prediction))
        assert metrics["hd_max"] == pytest.approx(offset * 2.5, abs=1e-5)
        assert metrics["mssd"] == pytest.approx(offset * 2.5, abs=1e-5)
        assert metrics["dice"] == pytest.approx((8 - offset) / 8)


def test_surface_distances_of_a_thin_plate_computed_by_hand() -> None:
    # Two one-voxel-thick plates 2 voxels apart in x: every surface voxel is 1.6 mm away.
    reference = np.zeros(SHAPE, np.uint8)
    reference[2:10, 2:10, 4] = 1
    prediction = np.zeros(SHAPE, np.uint8)
    prediction[2:10, 2:10, 6] = 1
    metrics = compute_metrics(label_image(reference), label_image(prediction))
    assert metrics["assd"] == pytest.approx(1.6, abs=1e-5)
    assert metrics["hd95"] == pytest.approx(1.6, abs=1e-5)
    assert metrics["hd_mean"] == pytest.approx(1.6)
    assert metrics["dice"] == 0.0 and metrics["voe"] == 1.0


def test_masks_touching_the_image_border_have_a_surface_there() -> None:
    reference = np.zeros(SHAPE, np.uint8)
    reference[:, :, :6] = 1  # touches five borders
    prediction = np.zeros(SHAPE, np.uint8)
    prediction[:, :, :7] = 1
    metrics = compute_metrics(label_image(reference), label_image(prediction))
    # Surfaces include the border faces: reference 14*16*6 - 12*14*4 = 672 voxels, prediction
    # 14*16*7 - 12*14*5 = 728. 0.8 mm away: the 12*14 inner voxels of the reference's x=5 face
    # and the whole 14*16 x=6 face of the prediction; every other surface voxel is shared
    # (distance 0). Without the border counted, all distances would be 0.8 mm.
    assert metrics["assd"] == pytest.approx((168 + 224) * 0.8 / (672 + 728), abs=1e-6)
    assert metrics["mssd"] == pytest.approx(0.8, abs=1e-5)
    assert metrics["hd95"] == pytest.approx(0.8, abs=1e-5)  # 392 of 1400 distances are 0.8 (> 5 %)


def test_direction_and_origin_do_not_change_the_values() -> None:
    reference = cube((3, 4, 5), 6)
    prediction = np.roll(cube((3, 4, 5), 5), 2, axis=1)
    plain = compute_metrics(label_image(reference), label_image(prediction))
    oblique = (0.0, 0.0, -1.0, 0.8, 0.6, 0.0, 0.6, -0.8, 0.0)
    rotated = compute_metrics(
        label_image(reference, direction=oblique), label_image(prediction, direction=oblique)
    )
    for name in METRIC_NAMES:
        assert rotated[name] == pytest.approx(plain[name], abs=1e-6)


def test_label_selection_in_multi_label_maps() -> None:
    reference = cube((2, 2, 2), 6, value=1) + cube((2, 2, 10), 4, value=2)
    prediction = cube((2, 2, 2), 6, value=1) + np.roll(cube((2, 2, 10), 4, value=2), 1, axis=1)
    assert compute_metrics(label_image(reference), label_image(prediction), label=1)["dice"] == 1.0
    liver = compute_metrics(label_image(reference), label_image(prediction), label=2)
    assert liver["dice"] == pytest.approx(0.75)
    assert liver["hd_max"] == pytest.approx(1.2)


def test_float_masks_are_rounded_so_soft_masks_threshold_at_one_half() -> None:
    reference = cube((2, 2, 2), 6).astype(np.float32)
    soft = reference * 0.6  # every voxel 0.6 -> label 1
    soft[0, 0, 0] = 0.4  # background stays 0
    image = sitk.GetImageFromArray(soft)
    image.SetSpacing(SPACING)
    image.SetOrigin((-4.0, 17.0, 2.5))
    assert compute_metrics(label_image(reference.astype(np.uint8)), image)["dice"] == 1.0


# --------------------------------------------------------------------------- empty masks


def test_both_empty_is_perfect_when_allowed() -> None:
    empty = label_image(np.zeros(SHAPE, np.uint8))
    assert compute_metrics(empty, empty, allow_absent=True) == {
        name: (1.0 if name == "dice" else 0.0) for name in METRIC_NAMES
    }


def test_empty_prediction_is_worst_with_the_image_diagonal() -> None:
    diagonal = float(np.linalg.norm(np.array([18, 16, 14]) * np.array(SPACING)))
    with pytest.warns(EmptyMaskWarning):
        metrics = compute_metrics(label_image(cube((2, 2, 2), 5)), label_image(np.zeros(SHAPE, np.uint8)))
    assert metrics["dice"] == 0.0 and metrics["voe"] == 1.0 and metrics["rvd"] == -1.0
    for name in ("hd_max", "hd_mean", "hd95", "assd", "mssd"):
        assert metrics[name] == pytest.approx(diagonal)


def test_empty_reference_is_worst_with_a_finite_rvd() -> None:
    with pytest.warns(EmptyMaskWarning):
        metrics = compute_metrics(label_image(np.zeros(SHAPE, np.uint8)), label_image(cube((2, 2, 2), 5)))
    assert metrics["dice"] == 0.0 and metrics["voe"] == 1.0
    assert metrics["rvd"] == RVD_EMPTY_REFERENCE == 1.0
    assert all(np.isfinite(value) for value in metrics.values())
    assert metrics["hd95"] > 30.0


def test_missing_label_value_is_refused_unless_allowed() -> None:
    mask = label_image(cube((2, 2, 2), 5))
    with pytest.raises(InputImageError, match="label 3 is in neither"):
        compute_metrics(mask, mask, label=3)
    assert compute_metrics(mask, mask, label=3, allow_absent=True)["dice"] == 1.0


# --------------------------------------------------------------------------- grids


def test_different_grids_are_refused_unless_resampling_is_asked_for() -> None:
    reference = label_image(cube((2, 2, 2), 6))
    moved = label_image(cube((2, 2, 2), 6))
    moved.SetOrigin((-4.0, 17.0, 2.5 + 2.5))  # one slice further in z
    with pytest.raises(GridMismatchError, match=r"grids differ \(origin .*--resample"):
        compute_metrics(reference, moved)
    metrics = compute_metrics(reference, moved, resample=True)
    assert metrics["hd_max"] == pytest.approx(2.5)
    assert metrics["dice"] == pytest.approx(5 / 6)


def test_resampling_a_finer_prediction_onto_the_reference() -> None:
    reference = label_image(cube((2, 2, 2), 6), spacing=(1.0, 1.0, 1.0))
    fine = sitk.Resample(reference, [36, 32, 28], sitk.Transform(), sitk.sitkNearestNeighbor,
                         np.subtract(reference.GetOrigin(), 0.25).tolist(), (0.5, 0.5, 0.5),
                         reference.GetDirection(), 0, sitk.sitkUInt8)  # fmt: skip
    with pytest.raises(GridMismatchError, match="size .* spacing"):
        compute_metrics(reference, fine)
    assert compute_metrics(reference, fine, resample=True)["dice"] == 1.0


def test_real_brain_mask_against_a_dilated_copy(shared_data: Path) -> None:
    mask = read_image(shared_file(shared_data, "brain/robex_atlas_brainmask.nii.gz"))
    mask = sitk.Cast(mask > 0.5, sitk.sitkUInt8)
    dilated = sitk.BinaryDilate(mask, [1, 1, 1], sitk.sitkCross)  # face neighbours only
    metrics = compute_metrics(mask, dilated)
    assert compute_metrics(mask, mask)["hd95"] == 0.0
    assert 0.9 < metrics["dice"] < 1.0
    assert metrics["rvd"] > 0  # dilation makes it larger
    assert metrics["hd_max"] == pytest.approx(1.5)  # one voxel of 1.5 mm
    # surface to surface (MedPy): a voxel on the old surface whose face neighbour was added lies
    # one diagonal step from the nearest new surface voxel; MedPy's hd95 gives 2.1213203 too
    assert metrics["hd95"] == pytest.approx(1.5 * np.sqrt(2), abs=1e-6)
