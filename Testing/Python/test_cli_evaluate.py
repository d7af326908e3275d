"""``pocketseg evaluate`` through the real entry point (``pocketseg_core.cli.main``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_file

from pocketseg_core.cli import main
from pocketseg_core.io import read_image, write_image
from pocketseg_core.metrics import METRIC_NAMES

SPACING = (0.8, 1.2, 2.5)


def write_mask(path: Path, array: np.ndarray, origin=(0.0, 0.0, 0.0)) -> Path:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(SPACING)
    image.SetOrigin(origin)
    return write_image(image, path)


def cube_array(shift: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    array = np.zeros((12, 14, 16), np.uint8)
    array[3:9, 4:10, 5:11] = 1
    for axis, amount in enumerate(shift):
        array = np.roll(array, amount, axis=axis)
    return array


def run_json(capsys, *arguments: str) -> dict:
    assert main(["evaluate", *arguments, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_against_itself_is_dice_one_and_zero_distances(tmp_path: Path, capsys) -> None:
    mask = write_mask(tmp_path / "mask.nii.gz", cube_array())
    result = run_json(capsys, "--reference", str(mask), "--prediction", str(mask))
    assert list(result) == list(METRIC_NAMES)
    assert result == {
        "dice": 1.0,
        "hd_max": 0.0,
        "hd_mean": 0.0,
        "hd95": 0.0,
        "voe": 0.0,
        "rvd": 0.0,
        "assd": 0.0,
        "mssd": 0.0,
    }


@pytest.mark.parametrize(("shift", "spacing_mm"), [((0, 0, 1), 0.8), ((0, 1, 0), 1.2), ((1, 0, 0), 2.5)])
def test_json_one_voxel_shift_gives_the_spacing_along_that_axis(
    tmp_path: Path, capsys, shift, spacing_mm
) -> None:
    reference = write_mask(tmp_path / "reference.nrrd", cube_array())
    prediction = write_mask(tmp_path / "prediction.mha", cube_array(shift))
    result = run_json(capsys, "--reference", str(reference), "--prediction", str(prediction))
    for name in ("hd_max", "hd95", "mssd"):
        assert result[name] == pytest.approx(spacing_mm, abs=1e-5), name
    assert result["dice"] == pytest.approx(5 / 6)


def test_table_without_json_names_every_metric(tmp_path: Path, capsys) -> None:
    reference = write_mask(tmp_path / "ref.nii.gz", cube_array())
    prediction = write_mask(tmp_path / "pred.nii.gz", cube_array((0, 0, 1)))
    assert main(["evaluate", "--reference", str(reference), "--prediction", str(prediction)]) == 0
    out = capsys.readouterr().out
    for header in (
        "dice",
        "hd_max (mm)",
        "hd_mean (mm)",
        "hd95 (mm)",
        "voe",
        "rvd",
        "assd (mm)",
        "mssd (mm)",
    ):
        assert header in out
    row = out.strip().splitlines()[-1].split()
    assert row[0] == "pred"
    assert float(row[1]) == pytest.approx(5 / 6, abs=1e-4)
    assert float(row[2]) == pytest.approx(0.8, abs=1e-4)


def test_label_option_selects_the_label(tmp_path: Path, capsys) -> None:
    labels = cube_array() * 5
    reference = write_mask(tmp_path / "ref.nii.gz", labels)
    prediction = write_mask(tmp_path / "pred.nii.gz", np.roll(labels, 1, axis=1))
    # label 1 is in neither file: one sentence, no perfect score
    assert main(["evaluate", "--reference", str(reference), "--prediction", str(prediction), "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "label 1 is in neither the reference nor the prediction (labels present: 5)" in captured.err
    assert "Traceback" not in captured.err
    result = run_json(capsys, "--reference", str(reference), "--prediction", str(prediction), "--label", "5")
    assert result["hd_max"] == pytest.approx(1.2)


def test_different_grids_fail_clearly_and_resample_on_request(tmp_path: Path, capsys) -> None:
    reference = write_mask(tmp_path / "ref.nii.gz", cube_array())
    moved = write_mask(tmp_path / "moved.nii.gz", cube_array(), origin=(0.0, 0.0, 2.5))
    assert main(["evaluate", "--reference", str(reference), "--prediction", str(moved), "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "voxel grids differ (origin" in captured.err and "--resample" in captured.err
    result = run_json(capsys, "--reference", str(reference), "--prediction", str(moved), "--resample")
    assert result["hd_max"] == pytest.approx(2.5)


def test_one_empty_mask_prints_a_warning_and_the_documented_values(tmp_path: Path, capsys) -> None:
    reference = write_mask(tmp_path / "ref.nii.gz", cube_array())
    empty = write_mask(tmp_path / "empty.nii.gz", np.zeros((12, 14, 16), np.uint8))
    result = run_json(capsys, "--reference", str(reference), "--prediction", str(empty))
    diagonal = float(np.linalg.norm(np.array([16, 14, 12]) * np.array(SPACING)))
    assert result["dice"] == 0.0 and result["rvd"] == -1.0
    assert result["hd95"] == pytest.approx(diagonal)
    assert main(["evaluate", "--reference", str(reference), "--prediction", str(empty)]) == 0
    assert "warning: label 1 is absent from the prediction" in capsys.readouterr().err


def test_csv_output_on_an_input_is_refused_and_the_input_kept(tmp_path: Path, capsys) -> None:
    reference = write_mask(tmp_path / "ref.nii.gz", cube_array())
    before = reference.read_bytes()
    code = main(
        [
            "evaluate",
            "--reference",
            str(reference),
            "--prediction",
            str(reference),
            "--output",
            str(reference),
        ]
    )
    assert code == 1
    assert "would overwrite the input" in capsys.readouterr().err
    assert reference.read_bytes() == before


def test_missing_file_is_an_error_not_a_traceback(tmp_path: Path, capsys) -> None:
    reference = write_mask(tmp_path / "ref.nii.gz", cube_array())
    code = main(["evaluate", "--reference", str(reference), "--prediction", str(tmp_path / "nope.nii.gz")])
    assert code == 1
    assert "nope.nii.gz: no such file" in capsys.readouterr().err


def test_folders_are_matched_by_name_with_a_mean_row_and_csv(tmp_path: Path, capsys) -> None:
    references, predictions = tmp_path / "ref", tmp_path / "pred"
    references.mkdir()
    predictions.mkdir()
    write_mask(references / "case1.nii.gz", cube_array())
    write_mask(references / "case2.nii.gz", cube_array())
    write_mask(predictions / "case1.nrrd", cube_array())  # perfect, another format
    write_mask(predictions / "case2.nii.gz", cube_array((0, 0, 1)))  # 0.8 mm off
    table = tmp_path / "metrics.csv"
    result = run_json(
        capsys, "--reference", str(references), "--prediction", str(predictions), "--output", str(table)
    )
    assert sorted(result["cases"]) == ["case1", "case2"]
    assert result["cases"]["case1"]["dice"] == 1.0
    assert result["mean"]["dice"] == pytest.approx((1 + 5 / 6) / 2)
    assert result["mean"]["hd_max"] == pytest.approx(0.4)
    with table.open(encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert [row["case"] for row in rows] == ["case1", "case2", "mean"]
    assert list(rows[0]) == ["case", *METRIC_NAMES]
    assert float(rows[2]["mssd"]) == pytest.approx(0.4, abs=1e-5)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left


def test_folder_with_a_missing_prediction_names_the_case(tmp_path: Path, capsys) -> None:
    references, predictions = tmp_path / "ref", tmp_path / "pred"
    references.mkdir()
    predictions.mkdir()
    write_mask(references / "case1.nii.gz", cube_array())
    write_mask(references / "case2.nii.gz", cube_array())
    write_mask(predictions / "case1.nii.gz", cube_array())
    assert main(["evaluate", "--reference", str(references), "--prediction", str(predictions)]) == 1
    assert "no prediction for 1 reference case(s): case2" in capsys.readouterr().err


def test_real_label_against_itself_and_shifted(shared_data: Path, tmp_path: Path, capsys) -> None:
    path = shared_file(shared_data, "liver/dcmqi_ct_3slice_liver.nrrd")
    result = run_json(capsys, "--reference", str(path), "--prediction", str(path))
    assert result["dice"] == 1.0 and result["hd95"] == 0.0 and result["mssd"] == 0.0
    label = read_image(path)
    shifted = sitk.GetImageFromArray(np.roll(sitk.GetArrayFromImage(label), 1, axis=2))
    shifted.CopyInformation(label)
    shifted_path = write_image(shifted, tmp_path / "shifted.nrrd")
    result = run_json(capsys, "--reference", str(path), "--prediction", str(shifted_path))
    assert result["hd_max"] == pytest.approx(label.GetSpacing()[0], abs=1e-5)
    assert result["mssd"] == pytest.approx(label.GetSpacing()[0], rel=1e-4)  # float32 distance map
