"""The issue's real-data scenario: 2-fold cross-validation of pocket_unet3d on two real heads.

Cases: the Swiss and ROBEX atlas heads (../shared/data/brain) with their brain masks, plus for
each a left-right mirrored copy and an intensity-changed copy (gamma 0.7, rescaled): six cases,
two subjects, so each fold trains on the three versions of one head and predicts the other head's
three. CPU, 4 mm working spacing, a few epochs: about a minute.
"""

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_file

from pocketseg_core.bundles import load_bundle
from pocketseg_core.training import config_from_preset, run_cross_validation

HEADS = {
    "swiss": ("brain/swiss_atlas_t1.mha", "brain/swiss_atlas_brainmask.mha"),
    "robex": ("brain/robex_atlas_t1.nii.gz", "brain/robex_atlas_brainmask.nii.gz"),
}


def _same_geometry(array, reference):
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.CopyInformation(reference)
    return image


def _make_dataset(shared_data, folder):
    folder.mkdir()
    rows = ["image,label,subject"]
    for subject, (image_file, mask_file) in HEADS.items():
        image = sitk.ReadImage(str(shared_file(shared_data, image_file)))
        mask = sitk.ReadImage(str(shared_file(shared_data, mask_file)))
        voxels = sitk.GetArrayFromImage(image).astype(np.float32)
        mask_voxels = sitk.GetArrayFromImage(mask)
        versions = {
            subject: (image, mask),
            # mirrored anatomy (array flipped along x, header kept): a new left-right layout
            f"{subject}_mirrored": (
                _same_geometry(voxels[:, :, ::-1], image),
                _same_geometry(mask_voxels[:, :, ::-1], mask),
            ),
            # another "scanner": gamma 0.7 and a different intensity range
            f"{subject}_gamma": (_same_geometry((voxels / voxels.max()) ** 0.7 * 1000 + 50, image), mask),
        }
        for name, (version_image, version_mask) in versions.items():
            sitk.WriteImage(version_image, str(folder / f"{name}.nii.gz"))
            sitk.WriteImage(version_mask, str(folder / f"{name}_mask.nii.gz"))
            rows.append(f"{name}.nii.gz,{name}_mask.nii.gz,{subject}")
    (folder / "cases.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder / "cases.csv"


def test_two_fold_run_on_real_heads(shared_data, tmp_path, capsys):
    dataset = _make_dataset(shared_data, tmp_path / "heads")
    config = config_from_preset(
        "pocketnet-nfbs",
        dataset=str(dataset),
        folds=2,
        epochs=6,
        steps_per_epoch=10,
        batch_size=4,
        spacing=(4.0, 4.0, 4.0),  # coarse working grid: a CPU run of about a minute
        window_mode="patch3d",
        window_size_zyx=(32, 32, 32),
        patch_size_zyx=(32, 32, 32),
        network_args={"init_filters": 8, "depth": 3, "pool_size": 2},
        augmentation=[
            {"name": "flip", "p": 0.5},
            {"name": "scale_shift", "p": 0.5},
            {"name": "gamma", "p": 0.3},
        ],
        show_progress=False,
        device="cpu",
    )
    run_dir = tmp_path / "run"
    result = run_cross_validation(config, run_dir)

    # every artefact
    for name in (
        "folds.json",
        "run.json",
        "training_log.csv",
        "metrics_per_case.csv",
        "summary.json",
        "metrics_boxplot.png",
    ):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "INCOMPLETE").exists()
    assert load_bundle(run_dir / "model").config.network == "pocket_unet3d"
    with open(run_dir / "metrics_per_case.csv", encoding="utf-8") as handle:
        rows = {row["case"]: row for row in csv.DictReader(handle)}
    assert len(rows) == 6
    # every case predicted once, by the fold that did not train on its subject, on its own grid
    folds = json.loads((run_dir / "folds.json").read_text(encoding="utf-8"))["folds"]
    fold_of = {subject: entry["fold"] for entry in folds for subject in entry["subjects"]}
    dices, chance = [], []
    for case, row in rows.items():
        assert int(row["fold"]) == fold_of[row["subject"]]
        image = sitk.ReadImage(str(dataset.parent / f"{case}.nii.gz"))
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset.parent / f"{case}_mask.nii.gz"))) > 0
        prediction = sitk.ReadImage(str(run_dir / "predictions" / f"{case}.nii.gz"))
        assert prediction.GetSize() == image.GetSize()
        assert np.allclose(prediction.GetOrigin(), image.GetOrigin(), atol=1e-4)
        assert np.allclose(prediction.GetDirection(), image.GetDirection(), atol=1e-6)
        dices.append(float(row["dice"]))
        chance.append(2 * mask.sum() / (mask.sum() + mask.size))  # Dice of calling every voxel brain
    print(f"out-of-fold Dice per case: { {c: round(float(r['dice']), 3) for c, r in rows.items()} }")
    print(f"mean {np.mean(dices):.3f}; chance (all voxels brain) {np.mean(chance):.3f}")
    assert result.summary["dice"]["mean"] == pytest.approx(np.mean(dices), abs=1e-5)
    assert np.mean(dices) > 0.6 and np.mean(dices) > np.mean(chance) + 0.3
