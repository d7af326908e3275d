"""Reading and writing images: every format, real sample files, geometry kept, bad inputs refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_file

from pocketseg_core.errors import GridMismatchError, InputImageError, PocketSegError
from pocketseg_core.io import (
    ImageWriteError,
    check_image_content,
    image_extension,
    image_from_array,
    image_to_array,
    read_image,
    strip_image_extension,
    write_image,
)

OBLIQUE_DIRECTION = (0.0, 0.0, -1.0, 0.8, 0.6, 0.0, 0.6, -0.8, 0.0)  # rotated and axis-permuted


def phantom(dtype=np.int16) -> sitk.Image:
    """A 6x5x4 (x, y, z) ramp with anisotropic spacing, odd origin and an oblique direction."""
    array = np.arange(4 * 5 * 6).reshape(4, 5, 6).astype(dtype)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 1.2, 2.5))
    image.SetOrigin((-12.5, 30.25, 7.0))
    image.SetDirection(OBLIQUE_DIRECTION)
    return image


def assert_same_geometry(a: sitk.Image, b: sitk.Image, atol: float = 1e-5) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=atol)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=atol)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=atol)


@pytest.mark.parametrize("extension", [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"])
def test_write_then_read_every_format_keeps_voxels_and_geometry(tmp_path: Path, extension: str) -> None:
    image = phantom()
    path = write_image(image, tmp_path / f"phantom{extension}")
    back = read_image(path)
    assert_same_geometry(back, image)
    np.testing.assert_array_equal(image_to_array(back), image_to_array(image))
    # Only the target (and the data file of a detached header) is left: no temporary files.
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    expected_extra = {".nhdr": 1, ".mhd": 1}.get(extension, 0)
    assert len(leftovers) == 1 + expected_extra, leftovers
    assert not any(name.startswith(".") for name in leftovers)


def write_dicom_series(folder: Path, array: np.ndarray, series_uid: str, prefix: str) -> None:
    """Write ``array`` (z, y, x) as CT slices of one series, 0.7 x 0.9 mm pixels, 2 mm apart."""
    for z in range(array.shape[0]):
        slice_image = sitk.GetImageFromArray(array[z : z + 1])
        slice_image.SetSpacing((0.7, 0.9, 2.0))
        writer = sitk.ImageFileWriter()
        writer.SetFileName(str(folder / f"{prefix}{z}.dcm"))
        writer.KeepOriginalImageUIDOn()
        for tag, value in {
            "0020|000e": series_uid,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1.998",
            "0020|0032": f"5\\-3\\{2.0 * z}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0013": str(z + 1),
            "0008|0060": "CT",
        }.items():
            slice_image.SetMetaData(tag, value)
        writer.Execute(slice_image)


def test_dicom_series_folder_is_read_as_one_volume(tmp_path: Path) -> None:
    array = (np.arange(3 * 4 * 5).reshape(3, 4, 5) * 10).astype(np.int16)
    write_dicom_series(tmp_path, array, "1.2.826.0.1.3680043.2.1125.1.999", "slice")
    volume = read_image(tmp_path)
    assert volume.GetSize() == (5, 4, 3)
    np.testing.assert_allclose(volume.GetSpacing(), (0.7, 0.9, 2.0), atol=1e-4)
    np.testing.assert_allclose(volume.GetOrigin(), (5.0, -3.0, 0.0), atol=1e-4)
    np.testing.assert_array_equal(image_to_array(volume), array)


def test_dicom_folder_with_two_series_reads_the_largest_and_says_so(tmp_path: Path, caplog) -> None:
    small = np.full((2, 4, 5), 1, np.int16)
    large = np.full((4, 4, 5), 2, np.int16)
    write_dicom_series(tmp_path, small, "1.2.826.0.1.3680043.2.1125.1.501", "small")
    write_dicom_series(tmp_path, large, "1.2.826.0.1.3680043.2.1125.1.502", "large")
    with caplog.at_level("WARNING", logger="pocketseg_core.io"):
        volume = read_image(tmp_path)
    assert volume.GetSize() == (5, 4, 4)
    assert int(image_to_array(volume).max()) == 2
    assert "holds 2 DICOM series" in caplog.text
    assert "reading the largest, 1.2.826.0.1.3680043.2.1125.1.502" in caplog.text


# --------------------------------------------------------------------------- real sample files


@pytest.mark.parametrize(
    ("relative", "size", "spacing", "origin", "direction_row0"),
    [
        (
            "brain/swiss_atlas_t1.mha",
            (240, 193, 180),
            (1, 1, 1),
            (88.6399, -119.421, -88.8547),
            (0, -0.0, -1),
        ),
        ("brain/robex_atlas_t1.nii.gz", (116, 150, 155), (1.5, 1.5, 1.5), (-84.0, 102.5, -138.25), (1, 0, 0)),
        (
            "liver/ts_abdomen_ct_dicom",
            (512, 512, 20),
            (0.976562, 0.976562, 2),
            (-249.5117, -437.5117, -804.5),
            (1, 0, 0),
        ),
        (
            "liver/dcmqi_ct_3slice_liver.nrrd",
            (512, 512, 3),
            (0.810547, 0.810547, 1),
            (-235.2, -226.8, -128.69),
            (1, 0, 0),
        ),
    ],
)
def test_real_sample_files_read_with_their_geometry(
    shared_data: Path, relative: str, size, spacing, origin, direction_row0
) -> None:
    image = read_image(shared_file(shared_data, relative))
    assert image.GetDimension() == 3
    assert image.GetNumberOfComponentsPerPixel() == 1
    assert image.GetSize() == size
    np.testing.assert_allclose(image.GetSpacing(), spacing, atol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), origin, atol=1e-3)
    np.testing.assert_allclose(image.GetDirection()[:3], direction_row0, atol=1e-6)


def test_swiss_atlas_is_oblique(shared_data: Path) -> None:
    image = read_image(shared_file(shared_data, "brain/swiss_atlas_t1.mha"))
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction @ direction.T, np.eye(3), atol=1e-6)
    # Axes permuted (x runs inferior) and tilted by ~7 degrees: no axis-aligned direction.
    assert direction[1, 0] == pytest.approx(0.992376, abs=1e-6)
    assert direction[2, 0] == pytest.approx(0.123249, abs=1e-6)


def test_real_mask_written_and_read_back_on_the_input_grid(shared_data: Path, tmp_path: Path) -> None:
    image = read_image(shared_file(shared_data, "liver/ts_abdomen_ct_dicom"))
    mask = image_from_array((image_to_array(image) > 0).astype(np.uint8), image)
    back = read_image(write_image(mask, tmp_path / "mask.nii.gz"))
    assert_same_geometry(back, image, atol=1e-4)
    assert int(image_to_array(back).sum()) == int((image_to_array(image) > 0).sum())


# --------------------------------------------------------------------------- bad input


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputImageError, match="no such file"):
        read_image(tmp_path / "absent.nii.gz")


def test_unreadable_file_says_so(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.nii.gz"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(InputImageError, match="cannot be read as an image"):
        read_image(bad)


def test_folder_without_dicom_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(InputImageError, match="without a DICOM series"):
        read_image(tmp_path)


def test_2d_image_is_refused_saying_3d_is_needed(tmp_path: Path) -> None:
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((8, 9), np.int16)), str(path))
    with pytest.raises(InputImageError, match=r"2D image \(9x8\).*3D volume"):
        read_image(path)


def test_single_slice_volume_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "one_slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((1, 8, 9), np.int16)), str(path))
    with pytest.raises(InputImageError, match="single slice"):
        read_image(path)


def test_4d_with_several_volumes_is_refused_and_one_volume_is_squeezed(tmp_path: Path) -> None:
    several = tmp_path / "series.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 4, 5, 6), np.float32), isVector=False), str(several))
    with pytest.raises(InputImageError, match=r"4D image \(6x5x4x3\) with 3 volumes"):
        read_image(several)

    single_array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(1, 4, 5, 6)
    single = sitk.GetImageFromArray(single_array, isVector=False)
    single.SetSpacing((0.5, 0.75, 2.0, 1.0))
    single.SetOrigin((1.0, 2.0, 3.0, 0.0))
    path = tmp_path / "single.nrrd"
    sitk.WriteImage(single, str(path))
    image = read_image(path)
    assert image.GetDimension() == 3
    assert image.GetSize() == (6, 5, 4)
    assert image.GetSpacing() == (0.5, 0.75, 2.0)
    assert image.GetOrigin() == (1.0, 2.0, 3.0)
    np.testing.assert_array_equal(image_to_array(image), single_array[0])


def test_vector_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((4, 5, 6, 3), np.uint8), isVector=True), str(path))
    with pytest.raises(InputImageError, match="3 components per voxel"):
        read_image(path)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_voxels_are_refused(tmp_path: Path, bad_value: float) -> None:
    array = np.ones((4, 5, 6), np.float32)
    array[2, 3, 1] = bad_value
    array[0, 0, 0] = bad_value
    path = tmp_path / "bad.mha"  # (ITK's NIfTI reader turns NaN into 0; MHA keeps them)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(InputImageError, match=r"2 NaN or infinite voxel"):
        read_image(path)


def test_constant_image_is_refused_for_segmentation_but_fine_as_a_label() -> None:
    constant = sitk.GetImageFromArray(np.full((4, 5, 6), 7, np.int16))
    with pytest.raises(InputImageError, match="every voxel has the value 7"):
        check_image_content(constant, "input.nii.gz")
    check_image_content(constant, "empty_label.nii.gz", allow_constant=True)  # no error
    check_image_content(phantom())  # a real ramp passes


def test_zero_size_image_is_refused() -> None:
    empty = sitk.Image(0, 0, 0, sitk.sitkFloat32)
    with pytest.raises(InputImageError, match="has no voxels"):
        check_image_content(empty, allow_constant=True)


# --------------------------------------------------------------------------- atomic writes


def test_unwritable_path_raises_and_leaves_nothing(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder", encoding="utf-8")
    with pytest.raises(ImageWriteError, match="does not exist"):
        write_image(phantom(), blocker / "mask.nii.gz")
    with pytest.raises(ImageWriteError, match="does not exist"):
        write_image(phantom(), tmp_path / "missing_folder" / "mask.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]
    assert issubclass(ImageWriteError, PocketSegError)


def test_unknown_extension_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageWriteError, match="unknown image ending"):
        write_image(phantom(), tmp_path / "mask.png")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "mask.nii.gz"
    write_image(phantom(), target)
    before = target.read_bytes()

    def disk_full_halfway(image, file_name, *args) -> None:
        Path(file_name).write_bytes(b"half an image")  # a partial file, then the writer fails
        raise RuntimeError("ITK ERROR: ImageFileWriter: No space left on device")

    monkeypatch.setattr(sitk, "WriteImage", disk_full_halfway)
    with pytest.raises(ImageWriteError, match="writing failed.*No space left"):
        write_image(phantom(), target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]


def test_overwrite_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "m.mha"
    write_image(phantom(), target)
    write_image(sitk.Cast(phantom() * 2, sitk.sitkInt16), target)
    assert int(image_to_array(read_image(target)).max()) == 2 * (4 * 5 * 6 - 1)


# --------------------------------------------------------------------------- arrays and names


def test_image_from_array_copies_geometry_and_checks_shape() -> None:
    reference = phantom()
    mask = image_from_array(np.ones((4, 5, 6), bool), reference)
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert_same_geometry(mask, reference, atol=0)
    with pytest.raises(GridMismatchError, match=r"expected array shape \(4, 5, 6\)"):
        image_from_array(np.ones((6, 5, 4), np.uint8), reference)


def test_extension_helpers() -> None:
    assert image_extension("a/b/Case.NII.GZ") == ".nii.gz"
    assert image_extension("x.mha") == ".mha"
    assert image_extension("x.png") == ""
    assert strip_image_extension("dir/case_01.nii.gz") == "case_01"
    assert strip_image_extension("case.v2.nrrd") == "case.v2"


def test_write_text_atomic_keeps_the_previous_file_on_failure(tmp_path, monkeypatch):
    import os

    from pocketseg_core.errors import PocketSegError
    from pocketseg_core.io import write_text_atomic

    target = tmp_path / "table.csv"
    write_text_atomic(target, "a,b\r\n±1,2\r\n")
    assert target.read_bytes() == "a,b\r\n±1,2\r\n".encode()  # UTF-8, line endings kept

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(
        PocketSegError, match="table.csv: cannot write .No space left on device.; the previous"
    ):
        write_text_atomic(target, "new")
    assert target.read_bytes() == "a,b\r\n±1,2\r\n".encode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_a_compressed_nifti_is_decompressed_once_and_read_exactly(tmp_path: Path, monkeypatch, dtype) -> None:
    """The input check streams a .nii.gz into an uncompressed copy that ITK then reads: the
    image is ITK's own read of the original (voxels, geometry, header fields), and the copy's
    folder is gone afterwards."""
    source = tmp_path / "head.nii.gz"
    sitk.WriteImage(phantom(dtype), str(source))
    expected = sitk.ReadImage(str(source))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    itk_read = sitk.ReadImage
    read_paths: list[str] = []

    def recording_read(path, *args, **kwargs):
        read_paths.append(str(path))
        return itk_read(path, *args, **kwargs)

    monkeypatch.setattr(sitk, "ReadImage", recording_read)
    image = read_image(source)
    assert len(read_paths) == 1 and read_paths[0].endswith("image.nii")  # the uncompressed copy
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(expected))
    assert image.GetPixelID() == expected.GetPixelID()
    assert (image.GetSpacing(), image.GetOrigin(), image.GetDirection()) == (
        expected.GetSpacing(),
        expected.GetOrigin(),
        expected.GetDirection(),
    )
    assert {k: image.GetMetaData(k) for k in image.GetMetaDataKeys()} == {
        k: expected.GetMetaData(k) for k in expected.GetMetaDataKeys()
    }
    assert list(scratch.iterdir()) == []
