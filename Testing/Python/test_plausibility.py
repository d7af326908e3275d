"""Out-of-distribution warnings of the liver model (pocketseg_core.inference.plausibility): a CT
with no abdomen or no liver-like tissue is warned about; the real abdominal CTs are not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pocketseg_core.bundles import load_bundle
from pocketseg_core.inference import InferenceOptions, segment_image
from pocketseg_core.inference.plausibility import MIN_ABDOMEN_FAT_SHARE, anatomy_warnings, fat_share
from pocketseg_core.io import read_image

#: real abdominal CTs and their reference livers (value), relative to the sample data
REAL_CTS = [
    ("liver/ts_abdomen_ct_small.nii.gz", "liver/ts_abdomen_ct_small_liver.nii.gz", 1),
    ("liver/ts_abdomen_ct_dicom", "liver/ts_abdomen_ct_dicom_labels.nii.gz", 5),
    ("liver/dcmqi_ct_3slice", "liver/dcmqi_ct_3slice_liver.nrrd", 1),
    ("liver/ircadb_001_ct.nii.gz", "liver/ircadb_001_liver.nii.gz", 1),
    ("liver/ircadb_017_ct.nii.gz", "liver/ircadb_017_liver.nii.gz", 1),
]


@pytest.fixture(scope="module")
def liver_model():
    return load_bundle("liver")


def _smooth_noise_ct(level: float = -900.0) -> sitk.Image:
    """Smooth noise around ``level`` HU (no anatomy; the -900 HU case of issue 17), 2.5 x 2.5 x 3 mm."""
    noise = np.random.default_rng(0).normal(level, 300.0, (30, 64, 64)).astype(np.float32)
    image = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(noise), 2.0)
    image.SetSpacing((2.5, 2.5, 3.0))
    return image


@pytest.mark.parametrize(("ct", "label", "value"), REAL_CTS)
def test_no_warning_on_the_real_abdominal_cts_with_their_reference_livers(
    shared_data: Path, ct, label, value
):
    image = read_image(shared_data / ct)
    reference = read_image(shared_data / label)
    liver = sitk.Resample(reference, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0) == value
    volume = sitk.GetArrayFromImage(image)
    assert fat_share(volume) > 4 * MIN_ABDOMEN_FAT_SHARE
    assert anatomy_warnings(volume, sitk.GetArrayFromImage(liver), "liver", "Liver") == []


def test_a_mask_on_air_water_or_bone_and_a_body_without_fat_are_warned_about():
    body = np.full((10, 40, 40), -1000.0, dtype=np.float32)
    body[:, 5:35, 5:35] = -100.0  # fat
    body[:, 10:30, 10:30] = 60.0  # liver-like
    mask = np.zeros(body.shape, dtype=np.uint8)
    mask[:, 12:28, 12:28] = 1
    assert anatomy_warnings(body, mask, "liver", "Liver") == []
    air_mask = np.zeros_like(mask)
    air_mask[:, 0:4, :] = 1
    (warning,) = anatomy_warnings(body, air_mask, "liver", "Liver")
    assert "median -1000 HU" in warning and "no liver" in warning
    bone = np.where(mask > 0, 900.0, body).astype(np.float32)
    assert "median 900 HU" in anatomy_warnings(bone, mask, "liver", "Liver")[0]
    no_fat = np.where(body == -100.0, 40.0, body).astype(np.float32)
    (warning,) = anatomy_warnings(no_fat, mask, "liver", "Liver")
    assert "does not look like an abdomen" in warning and "0%" in warning
    empty = anatomy_warnings(body, np.zeros_like(mask), "liver", "Liver")
    assert empty == ["no liver was found in the image: check that the CT shows the upper abdomen"]
    # tasks without a table (skull strip on MR) are never warned about here
    assert anatomy_warnings(body, air_mask, "skullstrip", "Brain") == []


@pytest.mark.parametrize("model_name", ["liver", "lvnet-liver"])
def test_noise_at_minus_900_hu_gets_a_warning_not_a_silent_mask(model_name):
    """Issue 17: smooth noise at -900 HU got litres of "liver" and no warning at all. Each shipped
    liver model either finds nothing (and says so) or is warned about the tissue under its mask."""
    result = segment_image(_smooth_noise_ct(), load_bundle(model_name), InferenceOptions(device="cpu"))
    assert any("does not look like an abdomen" in m for m in result.messages), result.messages
    if sitk.GetArrayViewFromImage(result.mask).any():
        assert any("the liver mask covers tissue of median" in m for m in result.messages), result.messages
    else:
        assert any("no liver was found in the image" in m for m in result.messages), result.messages


def test_head_ct_gets_a_warning(shared_data: Path, liver_model):
    head = read_image(shared_data / "misc" / "ts_head_ct_atlas.nii.gz")
    head = sitk.Resample(
        head,
        [67, 67, 60],
        sitk.Transform(),
        sitk.sitkLinear,
        head.GetOrigin(),
        (3.0, 3.0, 3.0),
        head.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )  # 3 mm: quick; the warning does not depend on the resolution
    result = segment_image(head, liver_model, InferenceOptions(device="cpu"))
    assert any("does not look like an abdomen" in m for m in result.messages), result.messages
    # the same head with air around it (HU as a scanner writes them): still no abdomen
    array = sitk.GetArrayFromImage(head)
    with_air = sitk.GetImageFromArray(np.where(array <= 0.5, -1000.0, array).astype(np.float32))
    with_air.CopyInformation(head)
    result = segment_image(with_air, liver_model, InferenceOptions(device="cpu"))
    assert any("does not look like an abdomen" in m for m in result.messages), result.messages


def test_real_abdominal_ct_through_the_model_gets_no_warning(shared_data: Path, liver_model):
    image = read_image(shared_data / "liver" / "ts_abdomen_ct_small.nii.gz")
    result = segment_image(image, liver_model, InferenceOptions(device="cpu"))
    assert sitk.GetArrayViewFromImage(result.mask).sum() > 10_000
    assert result.messages == []
