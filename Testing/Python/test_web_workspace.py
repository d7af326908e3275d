"""PocketSeg Web's workspace (``pocketseg_web.workspace``) on real slicer-core, without a browser:
what the page does with an upload before anything is shown (zip of a DICOM folder, size limit,
unsafe archives, a bad file after a good one)."""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import REPO_ROOT, shared_file

from pocketseg_core.errors import InputImageError
from pocketseg_core.io import read_image

pytest.importorskip("slicer", reason="the web workspace runs on slicer-core")

sys.path.insert(0, str(REPO_ROOT / "PocketSeg"))

from PocketSegLib import create_headless_context  # noqa: E402

from pocketseg_web.workspace import Workspace, mask_extension  # noqa: E402

BIG = 10**9


@pytest.fixture
def workspace() -> Workspace:
    context = create_headless_context()
    web = Workspace(context.scene, context.segmentations_logic, context.volumes_logic)
    web.keep_alive = context  # the application logic must outlive the scene's use
    return web


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def test_web_workspace_opens_a_zipped_dicom_folder_with_the_voxels_predict_reads(
    workspace: Workspace, shared_data: Path
):
    folder = shared_file(shared_data, "liver/ts_abdomen_ct_dicom")
    archive = zipped({f"ct/{path.name}": path.read_bytes() for path in sorted(folder.iterdir())})
    opened = workspace.open_upload([("abdomen.zip", archive)], BIG)
    assert opened.name == "abdomen" and opened.extension == ".nrrd"
    expected = read_image(folder)
    image = workspace.logic.prepare(opened.node, "liver").image  # what a run sends to the worker
    assert image.GetSize() == expected.GetSize()
    np.testing.assert_allclose(image.GetOrigin(), expected.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(image.GetDirection(), expected.GetDirection(), atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(expected))


def test_web_workspace_refuses_an_upload_over_the_limit(workspace: Workspace):
    with pytest.raises(InputImageError, match="over the 0 MB limit"):
        workspace.open_upload([("head.nii.gz", b"\0" * 2000)], 1000)
    bomb = zipped({"dicom/a.dcm": b"\0" * 5000})
    with pytest.raises(InputImageError, match="unpacks to"):
        workspace.open_upload([("series.zip", bomb)], 4000)
    assert workspace.image is None


def test_web_workspace_refuses_a_zip_whose_files_leave_its_folder(workspace: Workspace, tmp_path: Path):
    evil = zipped({"../outside.dcm": b"x"})
    with pytest.raises(InputImageError, match="outside its folder"):
        workspace.open_upload([("series.zip", evil)], BIG)
    with pytest.raises(InputImageError, match="not a readable zip"):
        workspace.open_upload([("series.zip", b"not a zip")], BIG)


def test_web_workspace_keeps_the_open_volume_when_a_bad_file_comes(workspace: Workspace, shared_data: Path):
    head = shared_file(shared_data, "brain/mni152_t1_2mm.nii.gz")
    opened = workspace.open_upload([(head.name, head.read_bytes())], BIG)
    with pytest.raises(InputImageError):
        workspace.open_upload([("broken.nii.gz", b"\x1f\x8b not really gzip")], BIG)
    assert workspace.image is opened and workspace.context.scene.IsNodePresent(opened.node)
    with pytest.raises(InputImageError, match="one image at a time"):
        workspace.open_upload([(head.name, b"1"), ("other.nii.gz", b"2")], BIG)
    assert workspace.image is opened


def test_web_mask_keeps_the_input_format():
    assert mask_extension("head.nii") == ".nii.gz"
    assert mask_extension("head.nii.gz") == ".nii.gz"
    assert mask_extension("head.nrrd") == ".nrrd"
    assert mask_extension("head.mha") == ".mha"
    assert mask_extension("dicom") == ".nrrd"
