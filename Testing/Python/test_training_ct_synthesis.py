"""Synthetic CTs from label maps (pocketseg_core.training.ct_synthesis): HU ranges per structure,
the liver label aligned with the synthesised liver, lesions inside the liver, determinism, phases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pocketseg_core.metrics import dice
from pocketseg_core.training.ct_synthesis import (
    CT_SYNTHESIS_KINDS,
    HU_RANGES,
    LESION_CONTRAST_HU,
    TISSUE,
    AxialFrame,
    ChestPadding,
    SynthesisRanges,
    add_kidney,
    axial_frame,
    synthesize_ct,
    synthesize_ct_details,
    synthesize_ct_image,
)

SPACING = (2.5, 2.5, 2.5)  # z, y, x


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + (
        (x - centre[2]) / radii[2]
    ) ** 2 <= 1.0


def abdomen_phantom() -> tuple[np.ndarray, np.ndarray]:
    """A TotalSegmentator-v2-style label map (z, y, x) of an abdomen and its CT (HU) for the
    unlabelled voxels: body of fat with a muscle wall, liver (5), spleen (1), kidneys (2, 3),
    aorta (52), a vertebra (30), a lung lobe (14) on top."""
    shape = (40, 64, 72)
    labels = np.zeros(shape, dtype=np.uint8)
    body = _ellipsoid(shape, (20, 32, 36), (40, 28, 34))
    ct = np.where(body, -90.0, -1000.0).astype(np.float32)
    ct[body & ~_ellipsoid(shape, (20, 32, 36), (40, 24, 30))] = 50.0  # muscle wall
    labels[_ellipsoid(shape, (20, 28, 20), (14, 14, 13))] = 5
    labels[_ellipsoid(shape, (22, 30, 54), (7, 7, 6))] = 1
    labels[_ellipsoid(shape, (16, 42, 24), (6, 5, 4))] = 2
    labels[_ellipsoid(shape, (16, 42, 48), (6, 5, 4))] = 3
    labels[_ellipsoid(shape, (20, 38, 36), (40, 2.5, 2.5))] = 52
    labels[_ellipsoid(shape, (20, 48, 36), (40, 4, 4))] = 30
    labels[34:, 15:40, 10:34] = 14
    return labels, ct


@pytest.fixture(scope="module")
def phantom():
    return abdomen_phantom()


def _with(**changes) -> SynthesisRanges:
    return SynthesisRanges(**changes)


@pytest.mark.parametrize("phase", ["plain", "portal"])
def test_each_structure_gets_a_mean_from_its_phase_range(phantom, phase):
    """Without texture/noise every tissue is exactly the mean drawn for it, inside its range."""
    labels, ct = phantom
    for seed in range(4):
        sample = synthesize_ct_details(
            labels, SPACING, np.random.default_rng(seed), ct_hu=ct, phase=phase, degradation=False
        )
        assert sample.phase == phase
        for name in ("liver", "spleen", "kidney", "blood", "bone", "lung", "fat", "air", "soft"):
            low, high = HU_RANGES[phase][name]
            assert low <= sample.means_hu[name] <= high, (name, sample.means_hu[name])
            voxels = sample.image[sample.tissues == TISSUE[name]]
            assert voxels.size > 0, name
            np.testing.assert_allclose(voxels, sample.means_hu[name], atol=1e-3)


@pytest.mark.parametrize("phase", ["plain", "portal"])
def test_structure_medians_stay_in_range_with_noise_blur_and_texture(phantom, phase):
    labels, ct = phantom
    sample = synthesize_ct_details(labels, SPACING, np.random.default_rng(7), ct_hu=ct, phase=phase)
    for name in ("liver", "spleen", "kidney", "fat", "bone"):
        inside = sample.tissues == TISSUE[name]
        # the core of the structure, away from partial volume with its neighbours
        core = sitk.GetArrayFromImage(
            sitk.BinaryErode(sitk.GetImageFromArray(inside.astype(np.uint8)), [1, 1, 1])
        )
        low, high = HU_RANGES[phase][name]
        median = (
            float(np.median(sample.image[core > 0])) if core.any() else float(np.median(sample.image[inside]))
        )
        assert low - 25 <= median <= high + 25, (name, median)


def test_liver_label_matches_the_synthesised_liver_after_deformation(phantom):
    labels, ct = phantom
    liver_before = labels == 5
    for seed in range(3):
        sample = synthesize_ct_details(
            labels, SPACING, np.random.default_rng(seed), ct_hu=ct, degradation=False
        )
        mask = sample.liver_mask.astype(bool)
        liver_values = [
            sample.means_hu[t]
            for t in ("liver", "liver_vessel", "lesion_hypo", "lesion_hyper")
            if t in sample.means_hu
        ]
        # every voxel of the mask carries a liver intensity, no voxel outside does
        assert np.isin(sample.image[mask], np.float32(liver_values)).all()
        assert not np.isin(sample.image[~mask], np.float32([sample.means_hu["liver"]])).any()
        # the deformation moved the liver, but it is still the liver
        assert not np.array_equal(mask, liver_before)
        assert 0.5 < dice(liver_before.astype(np.uint8), mask.astype(np.uint8)) < 0.99
    # without the deformation the label is the input liver exactly
    still = synthesize_ct_details(labels, SPACING, np.random.default_rng(0), ct_hu=ct, deformation=False)
    np.testing.assert_array_equal(still.liver_mask.astype(bool), liver_before)


def test_lesions_and_vessels_lie_inside_the_liver_and_have_their_contrast(phantom):
    labels, ct = phantom
    ranges = _with(lesions=(2, 4), hyperdense_fraction=0.5)
    kinds_seen = set()
    for seed in range(6):
        sample = synthesize_ct_details(
            labels, SPACING, np.random.default_rng(seed), ct_hu=ct, ranges=ranges, degradation=False
        )
        mask = sample.liver_mask.astype(bool)
        for kind in ("lesion_hypo", "lesion_hyper", "liver_vessel"):
            voxels = sample.tissues == TISSUE[kind]
            assert mask[voxels].all(), kind  # tumours and vessels belong to the liver
            if voxels.any():
                kinds_seen.add(kind)
        contrast = LESION_CONTRAST_HU[sample.phase]
        if "lesion_hypo" in sample.means_hu:
            difference = sample.means_hu["lesion_hypo"] - sample.means_hu["liver"]
            assert contrast["hypo"][0] <= difference <= contrast["hypo"][1]
        if "lesion_hyper" in sample.means_hu:
            difference = sample.means_hu["lesion_hyper"] - sample.means_hu["liver"]
            assert contrast["hyper"][0] <= difference <= contrast["hyper"][1]
    assert kinds_seen == {"lesion_hypo", "lesion_hyper", "liver_vessel"}


def test_same_seed_same_sample_other_seed_other_sample(phantom):
    labels, ct = phantom
    first = synthesize_ct(labels, SPACING, np.random.default_rng(3), ct_hu=ct)
    again = synthesize_ct(labels, SPACING, np.random.default_rng(3), ct_hu=ct)
    other = synthesize_ct(labels, SPACING, np.random.default_rng(4), ct_hu=ct)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])
    assert first[0].dtype == np.float32 and first[1].dtype == np.uint8


def test_plain_and_portal_phases_differ(phantom):
    """Same seed, same geometry: the contrast phase brightens liver, spleen, kidney and vessels."""
    labels, ct = phantom
    plain = synthesize_ct_details(labels, SPACING, np.random.default_rng(5), ct_hu=ct, phase="plain")
    portal = synthesize_ct_details(labels, SPACING, np.random.default_rng(5), ct_hu=ct, phase="portal")
    np.testing.assert_array_equal(plain.liver_mask, portal.liver_mask)
    for name in ("liver", "spleen", "kidney", "blood"):
        assert portal.means_hu[name] - plain.means_hu[name] > 25, name
    liver = plain.tissues == TISSUE["liver"]
    assert np.median(portal.image[liver]) - np.median(plain.image[liver]) > 25
    with pytest.raises(ValueError, match="unknown CT phase"):
        synthesize_ct(labels, SPACING, np.random.default_rng(0), phase="arterial")


def test_float_label_maps_are_read_as_integers_and_negative_values_refused(phantom):
    labels, ct = phantom
    as_int = synthesize_ct(labels, SPACING, np.random.default_rng(2), ct_hu=ct)
    as_float = synthesize_ct(labels.astype(np.float32), SPACING, np.random.default_rng(2), ct_hu=ct)
    np.testing.assert_array_equal(as_int[1], as_float[1])
    with pytest.raises(ValueError, match="negative values"):
        synthesize_ct(labels.astype(np.int16) - 1, SPACING, np.random.default_rng(0))


def test_liver_only_mask_without_ct_gets_a_generic_body():
    labels = np.zeros((30, 60, 60), dtype=np.uint8)
    labels[_ellipsoid(labels.shape, (15, 30, 25), (10, 14, 14))] = 1
    sample = synthesize_ct_details(
        labels, SPACING, np.random.default_rng(0), scheme="liver", degradation=False
    )
    tissues = set(np.unique(sample.tissues).tolist())
    assert {TISSUE["air"], TISSUE["fat"], TISSUE["muscle"], TISSUE["liver"]} <= tissues
    assert sample.liver_mask.sum() > 0.5 * (labels == 1).sum()


def test_synthesize_ct_image_reads_labels_through_physical_space(phantom):
    """A label map stored with its y axis flipped (as the TotalSegmentator DICOM labels are) gives
    the same sample as one stored like its CT."""
    labels, ct = phantom
    ct_image = sitk.GetImageFromArray(ct)
    ct_image.SetSpacing((2.5, 2.5, 2.5))
    ct_image.SetOrigin((10.0, -20.0, 5.0))
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(ct_image)
    flipped = sitk.Flip(label_image, [False, True, False])  # same physical map, other storage
    assert flipped.GetDirection() != label_image.GetDirection()
    kind = CT_SYNTHESIS_KINDS["ct_from_label_maps"]
    image_a, liver_a = kind(ct_image, label_image, np.random.default_rng(1))
    image_b, liver_b = synthesize_ct_image(ct_image, flipped, np.random.default_rng(1))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(liver_a), sitk.GetArrayFromImage(liver_b))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image_a), sitk.GetArrayFromImage(image_b))
    assert image_a.GetOrigin() == ct_image.GetOrigin() and image_a.GetSize() == ct_image.GetSize()
    assert liver_a.GetSpacing() == ct_image.GetSpacing()


def test_real_totalsegmentator_map_gives_an_aligned_liver(shared_data: Path):
    ct = sitk.ReadImage(str(shared_data / "liver" / "ts_abdomen_ct_small.nii.gz"))
    labels = sitk.ReadImage(str(shared_data / "liver" / "ts_abdomen_ct_small_labels.nii.gz"))
    image, liver = synthesize_ct_image(
        ct, labels, np.random.default_rng(0), phase="portal", ranges=_with(lesions=(0, 0))
    )
    values = sitk.GetArrayFromImage(image)[sitk.GetArrayFromImage(liver) > 0]
    low, high = HU_RANGES["portal"]["liver"]
    assert low - 25 <= np.median(values) <= high + 25
    original_ml = float(np.sum(sitk.GetArrayFromImage(labels) == 5)) * 27.0 / 1000
    synthetic_ml = float(sitk.GetArrayFromImage(liver).sum()) * 2.5**3 / 1000
    assert 0.5 * original_ml < synthetic_ml < 1.7 * original_ml


def test_bright_unlabelled_tissue_of_the_real_ct_is_liver_bright_in_a_portal_sample():
    """A liver-only label map leaves the heart, kidneys and spleen unlabelled: where the real CT
    shows them enhancing (>= bright_soft_tissue_hu) they become a tissue of their own, so a portal sample has an organ as bright
    as the liver that is not liver (the heart above the dome of a 2D model's leak)."""
    shape = (24, 40, 40)
    liver = _ellipsoid(shape, (8, 20, 14), (6, 10, 9))
    heart = _ellipsoid(shape, (18, 18, 26), (5, 8, 8))
    ct = np.full(shape, -90.0, dtype=np.float32)
    ct[liver] = 110.0
    ct[heart] = 140.0
    labels = liver.astype(np.uint8)
    heart_minus_liver = []
    for seed in range(6):
        for phase in ("plain", "portal"):
            sample = synthesize_ct_details(
                labels, SPACING, np.random.default_rng(seed), scheme="liver", ct_hu=ct, phase=phase,
                deformation=False, degradation=False, bright_soft_tissue_hu=90,
            )  # fmt: skip
            assert (sample.tissues[heart] == TISSUE["soft_bright"]).all()
            assert not sample.liver_mask[heart].any()
            low, high = HU_RANGES[phase]["soft_bright"]
            assert low <= sample.means_hu["soft_bright"] <= high
            if phase == "portal":
                heart_minus_liver.append(sample.means_hu["soft_bright"] - sample.means_hu["liver"])
    assert min(abs(d) for d in heart_minus_liver) < 10  # as bright as the liver in some samples
    assert max(heart_minus_liver) > 30  # clearly brighter in others
    # without the option the heart is plain soft tissue and the sample is what it always was
    before = synthesize_ct_details(
        labels, SPACING, np.random.default_rng(0), scheme="liver", ct_hu=ct, deformation=False
    )
    assert (before.tissues[heart] == TISSUE["soft"]).all() and "soft_bright" not in before.means_hu


def _abdomen_ct_image(direction=None) -> tuple[sitk.Image, sitk.Image]:
    """A liver-only CT of 36 axial slices, 2.5 mm: body of fat, a muscle wall, a liver ending
    10 slices (25 mm) below the top; LPS, or ``direction``."""
    shape = (36, 64, 72)
    body = _ellipsoid(shape, (18, 32, 36), (60, 28, 34))
    ct = np.where(body, -90.0, -1000.0).astype(np.float32)
    ct[body & ~_ellipsoid(shape, (18, 32, 36), (60, 24, 30))] = 50.0
    liver = _ellipsoid(shape, (14, 30, 24), (11, 14, 13))
    ct[liver] = 60.0
    ct_image = sitk.GetImageFromArray(ct)
    ct_image.SetSpacing((2.5, 2.5, 2.5))
    ct_image.SetOrigin((-90.0, -80.0, 40.0))
    if direction is not None:
        ct_image.SetDirection(direction)
    label_image = sitk.GetImageFromArray(liver.astype(np.uint8))
    label_image.CopyInformation(ct_image)
    return ct_image, label_image


def _physical_top_mm(image: sitk.Image, mask: np.ndarray) -> float:
    """The highest (LPS z, mm) centre of a voxel of ``mask`` (z, y, x) on ``image``'s grid."""
    return max(image.TransformIndexToPhysicalPoint([int(i) for i in p[::-1]])[2] for p in np.argwhere(mask))


@pytest.mark.parametrize("superior_first", [False, True])
def test_chest_above_the_liver_adds_a_heart_labelled_background(superior_first):
    """chest_fraction 1: the grid grows at its superior end (whichever end of the array that is),
    the liver label stays where it was in physical space, and above and beside its dome lie
    lungs and a heart (blood pool in a myocardium wall) that carries no liver label."""
    direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0) if superior_first else None
    ct_image, label_image = _abdomen_ct_image(direction)
    for seed in range(3):
        image, liver = synthesize_ct_image(
            ct_image, label_image, np.random.default_rng(seed), scheme="liver", spacing=(2.5, 2.5, 2.5),
            chest_fraction=1.0, deformation=False, degradation=False, phase="portal",
        )  # fmt: skip
        added = image.GetSize()[2] - ct_image.GetSize()[2]
        assert 40 / 2.5 - 1 <= added <= 100 / 2.5 + 1
        # the liver label is the original one, in the same physical place
        back = sitk.Resample(liver, ct_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(label_image))
        assert int(sitk.GetArrayFromImage(liver).sum()) == int(sitk.GetArrayFromImage(label_image).sum())
        top_of_ct = max(
            ct_image.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in (0, ct_image.GetSize()[2] - 1)
        )
        top_of_sample = max(
            image.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in (0, image.GetSize()[2] - 1)
        )
        assert top_of_sample == pytest.approx(top_of_ct + added * 2.5)
        hu = sitk.GetArrayFromImage(image)
        liver_mask = sitk.GetArrayFromImage(liver) > 0
        # the heart: the portal blood pool's HU, no liver label, reaching below the liver's top
        blood_low, blood_high = HU_RANGES["portal"]["blood"]
        heart = (hu >= blood_low) & (hu <= blood_high) & ~liver_mask
        assert heart.sum() * 2.5**3 / 1000 > 40  # ml
        assert _physical_top_mm(image, heart) > _physical_top_mm(image, liver_mask) + 20
        lung_low, lung_high = HU_RANGES["portal"]["lung"]
        assert ((hu >= lung_low) & (hu <= lung_high)).sum() * 2.5**3 / 1000 > 100


def test_no_chest_where_the_liver_reaches_the_top_or_without_the_option():
    ct_image, label_image = _abdomen_ct_image()
    cut = label_image[:, :, :14]  # the liver runs out of the field of view
    cut_ct = ct_image[:, :, :14]
    image, _ = synthesize_ct_image(
        cut_ct, cut, np.random.default_rng(0), scheme="liver", spacing=(2.5, 2.5, 2.5), chest_fraction=1.0
    )
    assert image.GetSize() == cut_ct.GetSize()
    # chest_fraction 0 (the default) draws exactly what a sample drew before the option existed
    options = {"scheme": "liver", "spacing": (2.5, 2.5, 2.5)}
    plain = synthesize_ct_image(ct_image, label_image, np.random.default_rng(4), **options)
    zero = synthesize_ct_image(ct_image, label_image, np.random.default_rng(4), chest_fraction=0.0, **options)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(plain[0]), sitk.GetArrayFromImage(zero[0]))
    assert plain[0].GetSize() == ct_image.GetSize()
    details = synthesize_ct_details(
        sitk.GetArrayFromImage(label_image), (2.5, 2.5, 2.5), np.random.default_rng(4), scheme="liver",
        ct_hu=sitk.GetArrayFromImage(ct_image),
    )  # fmt: skip
    assert "myocardium" not in details.means_hu


def test_the_heart_sits_on_the_dome_beside_the_liver_with_a_diaphragm_between():
    """On the tissue map: the heart (blood pool and myocardium) reaches down beside the dome into
    slices that hold liver, as in a real CT, never takes a liver voxel and keeps >= 3 mm (the
    diaphragm) from it; the added slices are lungs inside a body wall."""
    ct_image, label_image = _abdomen_ct_image()
    labels = sitk.GetArrayFromImage(label_image)
    ct = sitk.GetArrayFromImage(ct_image)
    added = 24
    labels = np.concatenate([labels, np.zeros((added, *labels.shape[1:]), labels.dtype)])
    ct = np.concatenate([ct, np.full((added, *ct.shape[1:]), -1000.0, ct.dtype)])
    chest = ChestPadding(
        slices=added, frame=AxialFrame(superior_at_end=True, anterior_yx=(-1.0, 0.0), left_yx=(0.0, 1.0))
    )
    liver_top = int(np.flatnonzero(labels.any(axis=(1, 2)))[-1])
    reached_below = 0
    for seed in range(4):
        sample = synthesize_ct_details(
            labels, SPACING, np.random.default_rng(seed), scheme="liver", ct_hu=ct, chest=chest,
            deformation=False, degradation=False,
        )  # fmt: skip
        tissues = sample.tissues
        heart = np.isin(tissues, [TISSUE["blood"], TISSUE["myocardium"]])
        np.testing.assert_array_equal(sample.liver_mask, labels)
        assert not sample.liver_mask[heart].any()
        assert heart[-added:].sum() * 2.5**3 / 1000 > 40
        assert (tissues[-added:] == TISSUE["lung"]).sum() > (tissues[-added:] == TISSUE["soft"]).sum()
        assert "myocardium" in sample.means_hu
        distance = (
            sitk.GetArrayFromImage(
                sitk.SignedMaurerDistanceMap(
                    sitk.GetImageFromArray(labels),
                    insideIsPositive=False,
                    squaredDistance=False,
                    useImageSpacing=False,
                )
            )
            * 2.5
        )
        assert distance[heart].min() >= 3.0
        reached_below += bool(heart[: liver_top + 1].any())
    assert reached_below >= 3


def _liver_and_spine_phantom() -> tuple[np.ndarray, np.ndarray]:
    """A liver-only label map (z, y, x; LPS, superior = increasing z) and its CT: a body of fat
    with a muscle wall, a spine (bone, posterior midline) and a liver on the patient's right
    whose lowest slice is z = 20 (50 mm above the grid's bottom)."""
    shape = (48, 64, 72)
    body = _ellipsoid(shape, (24, 32, 36), (80, 28, 34))
    ct = np.where(body, -90.0, -1000.0).astype(np.float32)
    ct[body & ~_ellipsoid(shape, (24, 32, 36), (80, 24, 30))] = 50.0
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    spine = ((y - 48) ** 2 + (x - 36) ** 2 <= 16) & (z >= 0)
    ct[spine] = 400.0
    liver = _ellipsoid(shape, (32, 28, 22), (12, 13, 12))
    ct[liver] = 110.0
    return liver.astype(np.uint8), ct


def test_axial_frame_reads_the_patient_directions_from_the_direction_matrix():
    lps = axial_frame((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert lps == AxialFrame(superior_at_end=True, anterior_yx=(-1.0, -0.0), left_yx=(0.0, 1.0))
    ras_like = axial_frame((-1, 0, 0, 0, -1, 0, 0, 0, -1))
    assert ras_like.superior_at_end is False and ras_like.anterior_yx == (1.0, -0.0)
    assert ras_like.left_yx == (0.0, -1.0)
    assert axial_frame((1, 0, 0, 0, 0, 1, 0, 1, 0)) is None  # coronal slices: no axial frame


@pytest.mark.parametrize("superior_first", [False, True])
def test_synthetic_kidney_lies_right_of_the_spine_behind_the_liver_tip_labelled_background(superior_first):
    """add_kidney: a kidney of ~30-200 ml on the patient's right of the spine, posterior, beside
    and below the liver's lowest slice; it never takes a liver voxel, the liver label is
    untouched; cortex in the phase's kidney range, a darker medulla in some samples. The same
    anatomy whichever end of the array is superior."""
    labels, ct = _liver_and_spine_phantom()
    frame = AxialFrame(superior_at_end=not superior_first, anterior_yx=(-1.0, 0.0), left_yx=(0.0, 1.0))
    if superior_first:
        labels, ct = labels[::-1].copy(), ct[::-1].copy()
    medulla_seen = 0
    for seed in range(8):
        sample = synthesize_ct_details(
            labels, SPACING, np.random.default_rng(seed), scheme="liver", ct_hu=ct, kidney=frame,
            deformation=False, degradation=False, phase="portal",
        )  # fmt: skip
        tissues = sample.tissues[::-1] if superior_first else sample.tissues  # superior = high z
        liver = (labels[::-1] if superior_first else labels).astype(bool)
        kidney = np.isin(tissues, [TISSUE["kidney"], TISSUE["renal_medulla"]])
        np.testing.assert_array_equal(sample.liver_mask, labels)
        assert not liver[kidney].any()
        assert 30 < kidney.sum() * 2.5**3 / 1000 < 200  # ml
        points = np.argwhere(kidney)
        assert points[:, 2].max() < 36  # right of the spine (x = 36; LPS: right is low x)
        assert points[:, 1].mean() > 28  # behind the liver's centre (LPS: posterior is high y)
        liver_bottom = int(np.flatnonzero(liver.any(axis=(1, 2)))[0])
        assert points[:, 0].min() < liver_bottom < points[:, 0].max()  # beside the tip, reaching below
        low, high = HU_RANGES["portal"]["kidney"]
        assert low <= sample.means_hu["kidney"] <= high
        medulla_seen += "renal_medulla" in sample.means_hu
    assert 1 <= medulla_seen <= 7


def test_no_synthetic_kidney_where_the_map_has_kidneys_or_without_the_option(phantom):
    """A multi-organ map with its own kidneys gets no second one (and draws nothing more);
    kidney_fraction 0 (the default) draws exactly what a sample drew before the option existed."""
    labels, ct = phantom
    frame = AxialFrame(superior_at_end=True, anterior_yx=(-1.0, 0.0), left_yx=(0.0, 1.0))
    tissues = np.asarray(labels == 2, dtype=np.uint8) * TISSUE["kidney"]
    assert add_kidney(tissues.copy(), SPACING, np.random.default_rng(0), frame) is False
    with_frame = synthesize_ct_details(labels, SPACING, np.random.default_rng(3), ct_hu=ct, kidney=frame)
    without = synthesize_ct_details(labels, SPACING, np.random.default_rng(3), ct_hu=ct)
    np.testing.assert_array_equal(with_frame.image, without.image)
    liver_only = np.asarray(labels == 5, dtype=np.uint8)
    assert (
        add_kidney(liver_only * TISSUE["liver"], SPACING, np.random.default_rng(0), frame) is False
    )  # no spine
    ct_image, label_image = _abdomen_ct_image()
    options = {"scheme": "liver", "spacing": (2.5, 2.5, 2.5)}
    plain = synthesize_ct_image(ct_image, label_image, np.random.default_rng(4), **options)
    zero = synthesize_ct_image(
        ct_image, label_image, np.random.default_rng(4), kidney_fraction=0.0, **options
    )
    np.testing.assert_array_equal(sitk.GetArrayFromImage(plain[0]), sitk.GetArrayFromImage(zero[0]))


def test_kidney_fraction_reaches_the_sample_through_synthesize_ct_image():
    """kidney_fraction 1 on an axial liver-only CT with a spine: kidney-bright voxels appear on
    the patient's right of the spine that the sample without it does not have."""
    labels, ct = _liver_and_spine_phantom()
    ct_image = sitk.GetImageFromArray(ct)
    ct_image.SetSpacing((2.5, 2.5, 2.5))
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(ct_image)
    options = {"scheme": "liver", "spacing": (2.5, 2.5, 2.5), "phase": "portal", "deformation": False,
               "degradation": False}  # fmt: skip
    with_kidney, liver = synthesize_ct_image(
        ct_image, label_image, np.random.default_rng(1), kidney_fraction=1.0, **options
    )
    without, _ = synthesize_ct_image(ct_image, label_image, np.random.default_rng(1), **options)
    low, high = HU_RANGES["portal"]["kidney"]
    changed = sitk.GetArrayFromImage(with_kidney) != sitk.GetArrayFromImage(without)
    hu = sitk.GetArrayFromImage(with_kidney)
    bright = changed & (hu >= low) & (hu <= high) & (ct < 200)  # not the spine (400 HU on the CT)
    assert bright.sum() * 2.5**3 / 1000 > 20
    assert np.argwhere(bright)[:, 2].max() < 36
    np.testing.assert_array_equal(sitk.GetArrayFromImage(liver), labels)


def test_hu_ranges_override_moves_only_those_tissues_means(phantom):
    """hu_ranges replaces a tissue's range; the mean is the same draw, scaled into the new range,
    and every other tissue's mean is unchanged; unknown phases, tissues and bad pairs are refused."""
    labels, ct = phantom
    options = {"ct_hu": ct, "phase": "portal", "deformation": False, "degradation": False}
    plain = synthesize_ct_details(labels, SPACING, np.random.default_rng(5), **options)
    wider = synthesize_ct_details(
        labels, SPACING, np.random.default_rng(5), hu_ranges={"portal": {"kidney": [140, 280]}}, **options
    )
    fraction = (plain.means_hu["kidney"] - 140.0) / 60.0
    assert wider.means_hu["kidney"] == pytest.approx(140.0 + 140.0 * fraction)
    assert {k: v for k, v in wider.means_hu.items() if k != "kidney"} == {
        k: v for k, v in plain.means_hu.items() if k != "kidney"
    }
    np.testing.assert_array_equal(wider.liver_mask, plain.liver_mask)
    for bad, message in (
        ({"arterial": {"kidney": [1, 2]}}, "unknown phase 'arterial'"),
        ({"portal": {"kidneys": [1, 2]}}, "unknown tissue 'kidneys'"),
        ({"portal": {"kidney": [280, 140]}}, "low <= high"),
        ({"portal": {"kidney": ["a", 2]}}, "give \\[low, high\\]"),
        ([140, 280], "hu_ranges is \\[140, 280\\]"),
        ({"portal": [140, 280]}, "hu_ranges: portal is"),
    ):
        with pytest.raises(ValueError, match=message):
            synthesize_ct_details(labels, SPACING, np.random.default_rng(5), hu_ranges=bad, **options)
