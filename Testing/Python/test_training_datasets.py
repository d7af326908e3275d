"""Dataset discovery in every supported layout, subject-wise seeded folds, label and grid checks."""

import json
import logging

import numpy as np
import pytest
import SimpleITK as sitk
from training_phantoms import phantom_pair, write_csv_dataset

from pocketseg_core.errors import DatasetError
from pocketseg_core.training.datasets import (
    discover_cases,
    load_case,
    load_folds,
    make_folds,
    save_folds,
)


def _write(image, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def test_nfbs_layout(tmp_path):
    for index, subject in enumerate(["A00028185", "A00032875"]):
        image, label = phantom_pair(index)
        folder = tmp_path / subject
        _write(image, folder / f"sub-{subject}_ses-NFB3_T1w.nii.gz")
        # the NFBS download names masks *_T1w_brainmask; also accept *_brainmask
        mask_name = (
            f"sub-{subject}_ses-NFB3_T1w_brainmask.nii.gz"
            if index == 0
            else f"sub-{subject}_brainmask.nii.gz"
        )
        _write(label, folder / mask_name)
    cases = discover_cases(tmp_path)
    assert [c.subject for c in cases] == ["A00028185", "A00032875"]
    assert cases[1].label_path.name == "sub-A00032875_brainmask.nii.gz"
    image, label = load_case(cases[0])
    assert np.array_equal(sitk.GetArrayFromImage(label), sitk.GetArrayFromImage(phantom_pair(0)[1]))


def test_lits_layout_maps_liver_and_tumour_to_one(tmp_path):
    for number in (0, 10, 2):
        image, label = phantom_pair(number)
        array = sitk.GetArrayFromImage(label)
        array[array.shape[0] // 2 :] *= 2  # half of the "liver" is tumour (label 2)
        lits_label = sitk.GetImageFromArray(array)
        lits_label.CopyInformation(image)
        _write(image, tmp_path / f"volume-{number}.nii")
        _write(lits_label, tmp_path / f"segmentation-{number}.nii")
    cases = discover_cases(tmp_path)
    assert [c.subject for c in cases] == ["volume-0", "volume-2", "volume-10"]
    _, label = load_case(cases[2])
    expected = sitk.GetArrayFromImage(phantom_pair(10)[1])
    assert np.array_equal(sitk.GetArrayFromImage(label), expected)
    assert label.GetPixelID() == sitk.sitkUInt8


def test_msd_layout(tmp_path):
    entries = []
    for index in range(3):
        image, label = phantom_pair(index)
        _write(image, tmp_path / "imagesTr" / f"liver_{index}.nii.gz")
        _write(label, tmp_path / "labelsTr" / f"liver_{index}.nii.gz")
        entries.append(
            {"image": f"./imagesTr/liver_{index}.nii.gz", "label": f"./labelsTr/liver_{index}.nii.gz"}
        )
    description = {
        "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "training": entries,
        "test": [],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(description), encoding="utf-8")
    cases = discover_cases(tmp_path)
    assert [c.case_id for c in cases] == ["liver_0", "liver_1", "liver_2"]
    assert cases[0].label_map == {1: 1, 2: 1}
    assert discover_cases(tmp_path / "dataset.json") == cases


def test_csv_and_json_lists_group_by_subject(tmp_path):
    csv_path = write_csv_dataset(tmp_path / "csv", subjects=2, cases_per_subject=2)
    cases = discover_cases(csv_path)
    assert [(c.case_id, c.subject) for c in cases] == [
        ("s0c0", "subject0"), ("s0c1", "subject0"), ("s1c0", "subject1"), ("s1c1", "subject1"),
    ]  # fmt: skip
    assert discover_cases(tmp_path / "csv") == cases  # a folder holding a single list file
    listing = [{"image": str(c.image_path), "label": str(c.label_path), "subject": c.subject} for c in cases]
    json_path = tmp_path / "cases.json"
    json_path.write_text(json.dumps(listing), encoding="utf-8")
    assert [c.subject for c in discover_cases(json_path)] == [c.subject for c in cases]


def test_empty_missing_and_incomplete_datasets(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        discover_cases(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no training cases found"):
        discover_cases(tmp_path / "empty")
    image, _ = phantom_pair(0)
    _write(image, tmp_path / "lits" / "volume-3.nii")
    with pytest.raises(DatasetError, match=r"segmentation-3\.nii.*does not exist"):
        discover_cases(tmp_path / "lits")


def _cases(count, per_subject=1):
    from pathlib import Path

    from pocketseg_core.training.datasets import Case

    return [
        Case(f"sub{index // per_subject}", Path(f"/x/img{index}.nii.gz"), Path(f"/x/lab{index}.nii.gz"))
        for index in range(count)
    ]


def test_folds_by_subject_seeded_and_reproducible(tmp_path):
    cases = _cases(20, per_subject=2)  # 10 subjects, 2 cases each
    folds = make_folds(cases, 5, seed=3)
    assert folds == make_folds(cases, 5, seed=3)
    assert folds != make_folds(cases, 5, seed=4)
    assert sorted(s for fold in folds for s in fold) == sorted({c.subject for c in cases})
    assert [len(fold) for fold in folds] == [2] * 5
    save_folds(tmp_path / "folds.json", folds, cases, seed=3)
    assert load_folds(tmp_path / "folds.json") == folds
    written = json.loads((tmp_path / "folds.json").read_text(encoding="utf-8"))
    assert written["seed"] == 3 and len(written["folds"][0]["cases"]) == 4  # both cases of both subjects
    with pytest.raises(
        DatasetError,
        match=r"6 case\(s\) from 3 subject\(s\) cannot fill 5 folds: add cases or use 3 folds or fewer",
    ):
        make_folds(_cases(6, per_subject=2), 5, seed=0)
    with pytest.raises(DatasetError, match="cross-validation needs at least 2 folds, got 1"):
        make_folds(cases, 1, seed=0)


def test_unexpected_label_values_and_fractional_masks(tmp_path):
    image, label = phantom_pair(1)
    array = sitk.GetArrayFromImage(label)
    array[0, 0, 0] = 7
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(image)
    _write(image, tmp_path / "a" / "img.nii.gz")
    _write(bad, tmp_path / "a" / "lab.nii.gz")
    (tmp_path / "a" / "cases.csv").write_text("image,label\nimg.nii.gz,lab.nii.gz\n", encoding="utf-8")
    (case,) = discover_cases(tmp_path / "a" / "cases.csv")
    with pytest.raises(DatasetError, match=r"case img: unexpected label values \[7\]"):
        load_case(case)
    # a float mask with fractional voxels (an interpolated mask): thresholded at 0.5
    soft = sitk.GetArrayFromImage(label).astype(np.float32) * 0.9
    soft[0, 0, 1] = 0.3
    soft_image = sitk.GetImageFromArray(soft)
    soft_image.CopyInformation(image)
    _write(soft_image, tmp_path / "a" / "lab.nii.gz")
    _, loaded = load_case(case)
    assert np.array_equal(sitk.GetArrayFromImage(loaded), sitk.GetArrayFromImage(label))


def test_empty_label_warns(tmp_path, caplog):
    image, label = phantom_pair(2)
    _write(image, tmp_path / "img.nii.gz")
    _write(label * 0, tmp_path / "lab.nii.gz")
    (tmp_path / "cases.csv").write_text("image,label\nimg.nii.gz,lab.nii.gz\n", encoding="utf-8")
    (case,) = discover_cases(tmp_path / "cases.csv")
    with caplog.at_level(logging.WARNING):
        _, loaded = load_case(case)
    assert "label is empty" in caplog.text
    assert not sitk.GetArrayFromImage(loaded).any()


def test_label_on_another_grid_same_extent_is_resampled_else_refused(tmp_path):
    image, label = phantom_pair(3, shape_zyx=(20, 32, 32), spacing=(2.0, 2.0, 2.0))
    # the same physical box at half the resolution: voxel centres move by half a fine voxel
    coarse = sitk.Resample(
        label, [16, 16, 10], sitk.Transform(), sitk.sitkNearestNeighbor,
        [o + 1.0 for o in image.GetOrigin()], (4.0, 4.0, 4.0), image.GetDirection(), 0, sitk.sitkUInt8,
    )  # fmt: skip
    _write(image, tmp_path / "img.nii.gz")
    _write(coarse, tmp_path / "lab.nii.gz")
    (tmp_path / "cases.csv").write_text("image,label\nimg.nii.gz,lab.nii.gz\n", encoding="utf-8")
    (case,) = discover_cases(tmp_path / "cases.csv")
    loaded_image, loaded = load_case(case)
    assert loaded.GetSize() == image.GetSize() and loaded.GetSpacing() == image.GetSpacing()
    reference = sitk.GetArrayFromImage(label).astype(bool)
    resampled = sitk.GetArrayFromImage(loaded).astype(bool)
    dice = 2 * (reference & resampled).sum() / (reference.sum() + resampled.sum())
    assert dice > 0.85  # nearest-neighbour from a 2x coarser grid
    shifted = sitk.Image(coarse)
    shifted.SetOrigin([o + 30.0 for o in coarse.GetOrigin()])
    _write(shifted, tmp_path / "lab.nii.gz")
    with pytest.raises(DatasetError, match="case img: the label's grid does not cover the image"):
        load_case(case)
