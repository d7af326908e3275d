"""``pocketseg predict`` end to end on phantoms with a tiny bundle; bad inputs leave nothing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from tiny_bundles import make_phantom, make_tiny_bundle

from pocketseg_core.cli import main


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "brain", "skullstrip", "MR")


@pytest.fixture
def phantom_file(tmp_path) -> tuple[Path, sitk.Image]:
    image, label = make_phantom("MR", size=(44, 50, 40), spacing=(3.0, 3.5, 3.0), origin=(12.0, -40.0, 7.5))
    path = tmp_path / "head.nrrd"
    sitk.WriteImage(sitk.Cast(image, sitk.sitkInt16), str(path))
    return path, label


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_predict_writes_mask_probabilities_masked_volume_and_summary(bundle, phantom_file, tmp_path, capsys):
    path, label = phantom_file
    out = tmp_path / "out"
    out.mkdir()
    code = main(
        [
            "predict", "--input", str(path), "--output", str(out / "brain.nii.gz"), "--model", str(bundle),
            "--device", "cpu", "--probabilities", str(out / "prob.nii.gz"),
            "--masked-volume", str(out / "stripped.nrrd"),
        ]
    )  # fmt: skip
    assert code == 0
    assert files_in(out) == ["brain.nii.gz", "prob.nii.gz", "stripped.nrrd"]
    image = sitk.ReadImage(str(path))
    mask = sitk.ReadImage(str(out / "brain.nii.gz"))
    assert mask.GetSize() == image.GetSize()
    assert np.allclose(mask.GetSpacing(), image.GetSpacing()) and np.allclose(
        mask.GetOrigin(), image.GetOrigin()
    )
    mask_array = sitk.GetArrayFromImage(mask)
    label_array = sitk.GetArrayFromImage(label)
    dice = (
        2
        * np.count_nonzero(mask_array & label_array)
        / (np.count_nonzero(mask_array) + np.count_nonzero(label_array))
    )
    assert dice > 0.9
    stripped = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "stripped.nrrd")))
    original = sitk.GetArrayFromImage(image)
    np.testing.assert_array_equal(stripped, np.where(mask_array > 0, original, 0))
    probabilities = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "prob.nii.gz")))
    assert probabilities.dtype == np.float32 and probabilities.max() <= 1.0
    printed = capsys.readouterr().out
    count = int(np.count_nonzero(mask_array))
    assert f"Brain: {count} voxels, {count * 3.0 * 3.5 * 3.0 / 1000:.1f} ml" in printed
    assert "on cpu" in printed and " s " in printed


def test_predict_folder_in_folder_out(bundle, phantom_file, tmp_path, capsys):
    path, _ = phantom_file
    inputs = tmp_path / "cases"
    inputs.mkdir()
    for name in ("a.nii.gz", "b.mha"):
        sitk.WriteImage(sitk.ReadImage(str(path)), str(inputs / name))
    (inputs / "notes.txt").write_text("not an image", encoding="utf-8")
    code = main(["predict", "-i", str(inputs), "-o", str(tmp_path / "masks"), "--model", str(bundle), "-q"])
    assert code == 0
    assert files_in(tmp_path / "masks") == ["a.nii.gz", "b.mha"]
    assert "2 of 2 images segmented" in capsys.readouterr().out


def run_failing(argv: list[str], capsys) -> str:
    assert main(argv) == 1
    return capsys.readouterr().err


def test_missing_input_file(bundle, tmp_path, capsys):
    err = run_failing(
        [
            "predict",
            "-i",
            str(tmp_path / "none.nii.gz"),
            "-o",
            str(tmp_path / "m.nii.gz"),
            "--model",
            str(bundle),
        ],
        capsys,
    )
    assert "none.nii.gz: no such file or folder" in err
    assert files_in(tmp_path) == []


def test_two_dimensional_image(bundle, tmp_path, capsys):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(
        sitk.GetImageFromArray(np.random.default_rng(0).random((30, 30)).astype(np.float32)), str(path)
    )
    err = run_failing(
        ["predict", "-i", str(path), "-o", str(tmp_path / "m.nii.gz"), "--model", str(bundle)], capsys
    )
    assert "is a 2D image" in err and "3D volume" in err
    assert files_in(tmp_path) == ["slice.nrrd"]


def test_nan_image(bundle, phantom_file, tmp_path, capsys):
    image, _ = make_phantom("MR", size=(20, 20, 20))
    array = sitk.GetArrayFromImage(image)
    array[5, 5, 5] = np.nan
    path = tmp_path / "nan.mha"  # (SimpleITK writes NaN to NIfTI as 0)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    err = run_failing(
        ["predict", "-i", str(path), "-o", str(tmp_path / "m.nii.gz"), "--model", str(bundle)], capsys
    )
    assert "NaN or infinite" in err
    assert not (tmp_path / "m.nii.gz").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_output_folder(bundle, phantom_file, tmp_path, capsys):
    path, _ = phantom_file
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        err = run_failing(
            ["predict", "-i", str(path), "-o", str(locked / "m.nii.gz"), "--model", str(bundle)], capsys
        )
    finally:
        locked.chmod(0o700)
    assert "cannot write into" in err
    assert files_in(locked) == []


def test_unwritable_output_path(bundle, phantom_file, tmp_path, capsys):
    path, _ = phantom_file
    err = run_failing(
        [
            "predict",
            "-i",
            str(path),
            "-o",
            str(tmp_path / "no" / "such" / "m.nii.gz"),
            "--model",
            str(bundle),
        ],
        capsys,
    )
    assert "does not exist" in err
    err = run_failing(
        ["predict", "-i", str(path), "-o", str(tmp_path / "mask.png"), "--model", str(bundle)], capsys
    )
    assert "unknown image ending" in err
    # A later output that cannot be written stops the run before any output exists.
    err = run_failing(
        [
            "predict",
            "-i",
            str(path),
            "-o",
            str(tmp_path / "m.nii.gz"),
            "--masked-volume",
            str(tmp_path / "x" / "v.nrrd"),
            "--model",
            str(bundle),
        ],
        capsys,
    )
    assert "does not exist" in err
    assert files_in(tmp_path) == ["head.nrrd"]


def test_no_model_installed_for_task(phantom_file, tmp_path, monkeypatch, capsys):
    from pocketseg_core import bundles

    monkeypatch.setenv("POCKETSEG_MODELS_DIR", str(tmp_path / "empty_catalog"))
    monkeypatch.setattr(bundles, "SHIPPED_CATALOG", tmp_path / "no_shipped_catalog.json")
    path, _ = phantom_file
    err = run_failing(
        ["predict", "-i", str(path), "-o", str(tmp_path / "m.nii.gz"), "--task", "liver"], capsys
    )
    assert "no model for task liver is installed" in err and "--model PATH" in err
    assert not (tmp_path / "m.nii.gz").exists()


def test_cancel_leaves_no_output(bundle, phantom_file, tmp_path, monkeypatch):
    """A cancel from the progress callback (e.g. the GUI's Cancel) writes nothing."""
    from pocketseg_core import inference
    from pocketseg_core.bundles import load_bundle
    from pocketseg_core.cli.predict import PredictJob, predict_one
    from pocketseg_core.errors import Cancelled

    real = inference.segment_image

    def cancelling(image, bundle, options, progress, network=None):
        return real(image, bundle, options, lambda fraction, message: fraction < 0.5, network=network)

    monkeypatch.setattr(inference, "segment_image", cancelling)
    path, _ = phantom_file
    job = PredictJob(path, tmp_path / "m.nii.gz", masked_volume=tmp_path / "v.nii.gz")
    with pytest.raises(Cancelled):
        predict_one(job, load_bundle(bundle), inference.InferenceOptions(), show_progress=False)
    assert files_in(tmp_path) == ["head.nrrd"]
