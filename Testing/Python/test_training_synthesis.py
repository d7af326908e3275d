"""Synthetic heads (training/synthesis.py): label alignment, intensity ranges, determinism by seed."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from pocketseg_core.training.synthesis import SYNTHETIC_SPACING, shell_radii, synthesize_head


def _stripped_brain() -> tuple[sitk.Image, sitk.Image]:
    """A skull-stripped 'brain' phantom: an off-centre ellipsoid with an intensity gradient,
    zero outside, on a 1 mm grid with a non-zero origin (RAS-stored, so LPS framing must flip it)."""
    shape = (56, 64, 60)  # z, y, x
    z, y, x = np.mgrid[: shape[0], : shape[1], : shape[2]].astype(np.float32)
    inside = ((z - 30) / 20) ** 2 + ((y - 28) / 24) ** 2 + ((x - 32) / 22) ** 2 <= 1.0
    image = np.where(inside, 400.0 + 6.0 * x + 3.0 * z, 0.0).astype(np.float32)
    brain = sitk.GetImageFromArray(image)
    brain.SetSpacing((1.0, 1.0, 1.0))
    brain.SetOrigin((12.0, -40.0, 7.0))
    brain.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))  # RAS storage
    mask = sitk.GetImageFromArray(inside.astype(np.uint8))
    mask.CopyInformation(brain)
    return brain, mask


@pytest.fixture(scope="module")
def brain() -> tuple[sitk.Image, sitk.Image]:
    return _stripped_brain()


def _centroid_mm(mask: np.ndarray, spacing: float) -> np.ndarray:
    return np.argwhere(mask > 0).mean(axis=0) * spacing


def test_label_is_the_brain_mask_on_the_synthetic_grid(brain):
    image, mask = brain
    head, label = synthesize_head(image, mask, np.random.default_rng(3))
    assert head.GetSize() == label.GetSize()
    assert head.GetSpacing() == label.GetSpacing() == (SYNTHETIC_SPACING,) * 3
    label_array = sitk.GetArrayFromImage(label)
    assert set(np.unique(label_array)) == {0, 1}
    # same brain volume (resampling 1 mm -> 1.5 mm changes it by a few voxels only)
    brain_ml = sitk.GetArrayFromImage(mask).sum() * 1.0 / 1000
    assert label_array.sum() * SYNTHETIC_SPACING**3 / 1000 == pytest.approx(brain_ml, rel=0.03)
    # the label sits where the brain is: padding is 90 mm below (z), 30 mm elsewhere; the
    # LPS framing flips x and y of this RAS-stored phantom
    lps = sitk.GetArrayFromImage(sitk.DICOMOrient(mask, "LPS"))
    expected = _centroid_mm(lps, 1.0) + np.array([90.0, 30.0, 30.0])
    np.testing.assert_allclose(_centroid_mm(label_array, SYNTHETIC_SPACING), expected, atol=SYNTHETIC_SPACING)
    # the brain's intensity gradient (along x, flipped by the framing) survives inside the label
    head_array = sitk.GetArrayFromImage(head)
    inside = label_array > 0
    columns = np.nonzero(inside.any(axis=(0, 1)))[0]
    left = head_array[:, :, columns[: len(columns) // 3]][inside[:, :, columns[: len(columns) // 3]]]
    right = head_array[:, :, columns[-len(columns) // 3 :]][inside[:, :, columns[-len(columns) // 3 :]]]
    assert np.median(left) > np.median(right)  # x index reversed: high x (bright) is now on the left


def test_intensities_stay_in_the_documented_ranges(brain):
    image, mask = brain
    for seed in range(4):
        head, label = synthesize_head(image, mask, np.random.default_rng(seed))
        values = sitk.GetArrayFromImage(head)
        inside = sitk.GetArrayFromImage(label) > 0
        assert np.isfinite(values).all() and values.min() >= 0.0
        assert values.max() < 4.0  # brain <= 1.35 x 1.2, fat <= 1.6, texture and noise, gamma <= 1.4
        assert 0.05 < np.median(values[inside]) < 2.0
        corner = values[-5:, -5:, -5:]  # air, far from the brain and the shell
        assert np.median(corner) < 0.25
        # the shell is not air: a band of 5-20 mm outside the brain holds tissue
        distance = sitk.GetArrayFromImage(
            sitk.SignedMaurerDistanceMap(
                label, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
            )
        )
        shell = (distance > 2.0) & (distance < 12.0)
        assert values[shell].mean() > np.median(corner) + 0.05


def test_same_seed_same_head_other_seed_other_head(brain):
    image, mask = brain
    first = synthesize_head(image, mask, np.random.default_rng(7), face_and_neck=2)
    again = synthesize_head(image, mask, np.random.default_rng(7), face_and_neck=2)
    other = synthesize_head(image, mask, np.random.default_rng(8), face_and_neck=2)
    a, b, c = (sitk.GetArrayFromImage(pair[0]) for pair in (first, again, other))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(first[1]), sitk.GetArrayFromImage(again[1]))
    assert a.shape == c.shape and np.abs(a - c).mean() > 0.05


def test_face_and_neck_add_background_below_the_brain_not_label(brain):
    image, mask = brain
    plain_head, plain_label = synthesize_head(image, mask, np.random.default_rng(1))
    head, label = synthesize_head(image, mask, np.random.default_rng(1), face_and_neck=2)
    plain_array, array = sitk.GetArrayFromImage(plain_label), sitk.GetArrayFromImage(label)
    assert array.sum() == plain_array.sum()  # same brain label, only more room around it
    assert array.shape[0] == plain_array.shape[0] + 20 and array.shape[1] == plain_array.shape[1] + 20
    values = sitk.GetArrayFromImage(head)
    z_low = int(np.nonzero(array.any(axis=(1, 2)))[0].min())
    below = values[: z_low - 5]  # the neck and cord region: all label 0
    assert array[: z_low - 5].sum() == 0
    plain_values = sitk.GetArrayFromImage(plain_head)
    plain_low = int(np.nonzero(plain_array.any(axis=(1, 2)))[0].min())
    # tissue below the brain with a neck; mostly air there without one
    assert (below > 0.3).mean() > (plain_values[: plain_low - 5] > 0.3).mean() + 0.05


def test_brain_contrast_randomises_the_brain_and_nothing_else(brain):
    image, mask = brain
    plain = synthesize_head(image, mask, np.random.default_rng(5))
    off = synthesize_head(image, mask, np.random.default_rng(5), brain_contrast=0.0)
    # off draws no random numbers: the same head as before the option existed
    assert np.array_equal(sitk.GetArrayFromImage(plain[0]), sitk.GetArrayFromImage(off[0]))
    changed = 0
    for seed in range(4):
        head, label = synthesize_head(image, mask, np.random.default_rng(seed), brain_contrast=1.0)
        before, same_label = synthesize_head(image, mask, np.random.default_rng(seed))
        inside = sitk.GetArrayFromImage(label) > 0
        assert np.array_equal(inside, sitk.GetArrayFromImage(same_label) > 0)  # the label never moves
        new, old = sitk.GetArrayFromImage(head)[inside], sitk.GetArrayFromImage(before)[inside]
        assert np.isfinite(new).all() and new.min() >= 0.0
        # the phantom's brain is a linear ramp: a random curve and field break the straight line
        changed += np.corrcoef(new, old)[0, 1] < 0.98
    assert changed >= 3


@pytest.mark.parametrize("face_and_neck", [0, 2])
def test_csf_in_mask_adds_the_csf_layer_up_to_the_skull_and_nothing_else(brain, face_and_neck):
    image, mask = brain
    plain_head, plain_label = synthesize_head(
        image, mask, np.random.default_rng(11), face_and_neck=face_and_neck
    )
    off_head, off_label = synthesize_head(
        image, mask, np.random.default_rng(11), face_and_neck=face_and_neck, csf_in_mask=0.0
    )
    # off draws no random numbers: the same head and label as before the option existed
    assert np.array_equal(sitk.GetArrayFromImage(plain_head), sitk.GetArrayFromImage(off_head))
    assert np.array_equal(sitk.GetArrayFromImage(plain_label), sitk.GetArrayFromImage(off_label))
    head, label = synthesize_head(
        image, mask, np.random.default_rng(11), face_and_neck=face_and_neck, csf_in_mask=1.0
    )
    # the image is the same voxel for voxel (the draw comes after it): only the label grows
    assert np.array_equal(sitk.GetArrayFromImage(head), sitk.GetArrayFromImage(plain_head))
    brain_voxels = sitk.GetArrayFromImage(plain_label) > 0
    grown = sitk.GetArrayFromImage(label) > 0
    assert (grown | ~brain_voxels).all()  # the brain stays in
    added = grown & ~brain_voxels
    # a shell 1-5 mm thick (warped) around a ~56 ml ellipsoid: tens of ml, not the head
    added_ml = added.sum() * SYNTHETIC_SPACING**3 / 1000
    assert 3.0 < added_ml < 0.8 * brain_voxels.sum() * SYNTHETIC_SPACING**3 / 1000
    # what joins is the dark CSF, not skull, fat or skin: darker than the brain, touching it
    values = sitk.GetArrayFromImage(head)
    assert np.median(values[added]) < 0.6 * np.median(values[brain_voxels])
    dilated = sitk.GetArrayFromImage(
        sitk.BinaryDilate(sitk.GetImageFromArray(brain_voxels.astype(np.uint8)), [4, 4, 4])
    ).astype(bool)
    assert (added & ~dilated).sum() < 0.02 * added.sum()  # within ~6 mm of the brain
    # the grown mask is one piece without enclosed cavities or a spur down the neck
    components = sitk.ConnectedComponent(sitk.GetImageFromArray(grown.astype(np.uint8)))
    assert sitk.GetArrayFromImage(components).max() == 1
    lowest_brain = int(np.nonzero(brain_voxels.any(axis=(1, 2)))[0].min())
    assert not grown[: max(lowest_brain - 5, 0)].any()


def test_thin_skull_draws_a_thin_skull_under_a_wide_csf_layer_and_off_changes_nothing(brain):
    thick = [shell_radii(np.random.default_rng(seed)) for seed in range(200)]
    thin = [shell_radii(np.random.default_rng(seed), thin_skull=1.0) for seed in range(200)]
    for csf, skull, fat, skin in thick:
        assert 1.0 <= csf <= 5.0 and 3.0 <= skull - csf <= 9.0 and csf < skull < fat < skin
    for csf, skull, fat, skin in thin:
        assert 2.0 <= csf <= 8.0 and 1.0 <= skull - csf <= 3.0 and 2.0 <= fat - skull <= 8.0 and fat < skin
    # a share in between: about that share of heads get the thin skull
    half = [shell_radii(np.random.default_rng(seed), thin_skull=0.5) for seed in range(200)]
    thin_share = np.mean([skull - csf < 3.0 for csf, skull, _, _ in half])
    assert 0.35 < thin_share < 0.65
    # off draws no random number: the same head and label as before the option existed
    image, mask = brain
    plain_head, plain_label = synthesize_head(image, mask, np.random.default_rng(5), csf_in_mask=1.0)
    off_head, off_label = synthesize_head(
        image, mask, np.random.default_rng(5), csf_in_mask=1.0, thin_skull=0.0
    )
    assert np.array_equal(sitk.GetArrayFromImage(plain_head), sitk.GetArrayFromImage(off_head))
    assert np.array_equal(sitk.GetArrayFromImage(plain_label), sitk.GetArrayFromImage(off_label))
    # on: the option reaches the head (another shell), the brain stays in the label
    on_head, on_label = synthesize_head(
        image, mask, np.random.default_rng(5), csf_in_mask=1.0, thin_skull=1.0
    )
    assert not np.array_equal(sitk.GetArrayFromImage(on_head), sitk.GetArrayFromImage(plain_head))
    brain_only = sitk.GetArrayFromImage(synthesize_head(image, mask, np.random.default_rng(5))[1]) > 0
    assert (sitk.GetArrayFromImage(on_label)[brain_only] > 0).all()


def test_scalp_contrast_draws_scalps_from_dark_to_far_brighter_than_the_brain_and_off_changes_nothing(brain):
    """The brightest outside voxels (99.5th percentile) over the brain's median: at most 1.9
    with the usual fat (0.7-1.6 of the brain), beyond 2.2 in most heads with ``scalp_contrast``
    1 (fat 0.2-2.8), as a surface coil shows it (siemens_xa30_2mm: 2.5)."""
    image, mask = brain

    def brightest_outside(scalp_contrast: float) -> list[float]:
        ratios = []
        for seed in range(12):
            head, label = synthesize_head(
                image, mask, np.random.default_rng(seed), scalp_contrast=scalp_contrast
            )
            values, inside = sitk.GetArrayFromImage(head), sitk.GetArrayFromImage(label) > 0
            ratios.append(float(np.percentile(values[~inside], 99.5) / np.median(values[inside])))
        return ratios

    assert max(brightest_outside(0.0)) < 2.0
    assert sum(ratio > 2.2 for ratio in brightest_outside(1.0)) >= 8
    # off draws no random number: the same head and label as before the option existed
    plain_head, plain_label = synthesize_head(image, mask, np.random.default_rng(5))
    off_head, off_label = synthesize_head(image, mask, np.random.default_rng(5), scalp_contrast=0.0)
    assert np.array_equal(sitk.GetArrayFromImage(plain_head), sitk.GetArrayFromImage(off_head))
    assert np.array_equal(sitk.GetArrayFromImage(plain_label), sitk.GetArrayFromImage(off_label))
