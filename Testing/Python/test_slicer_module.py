"""The PocketSeg Slicer module's MRML logic, for real, on ``slicer-core`` (no GUI, no mocks).

Volumes are read by Slicer's own storage node; the segmentation the logic makes is checked for
its name, segment, colour, terminology, reference geometry and subject-hierarchy place; its
voxels, exported on the volume's grid, must equal the mask ``pocketseg predict`` writes for the
same file and model (also for a rotated, axis-flipped, anisotropic copy); the comparison table
must hold the numbers of ``pocketseg evaluate --json``; a cancelled run must add no node.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("slicer", reason="slicer-core is not installed")

import slicer  # noqa: E402
import vtk  # noqa: E402
from conftest import REPO_ROOT, shared_file  # noqa: E402
from tiny_bundles import make_phantom, make_tiny_bundle  # noqa: E402

sys.path.insert(0, str(REPO_ROOT / "PocketSeg"))

from PocketSegLib import create_headless_context  # noqa: E402
from PocketSegLib.comparison import metrics_from_table  # noqa: E402
from PocketSegLib.logic import PocketSegLogic, SegmentOptions  # noqa: E402
from PocketSegLib.runner import CANCELLED, FAILED, WorkerFailed, WorkerRun  # noqa: E402
from PocketSegLib.segmentation import BRAIN, LIVER, segment_array_on_volume  # noqa: E402
from PocketSegLib.selftest import rotated_flipped_direction, run_scenario  # noqa: E402
from PocketSegLib.volume_io import (  # noqa: E402
    RAS_TO_LPS,
    ijk_to_ras_matrix,
    image_from_volume_node,
    image_ijk_to_ras,
    volume_node_from_image,
)

from pocketseg_core import cli  # noqa: E402
from pocketseg_core.errors import BundleError, Cancelled, InputImageError, PocketSegError  # noqa: E402
from pocketseg_core.metrics import METRIC_NAMES  # noqa: E402

CPU = SegmentOptions(device="cpu")


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def skullstrip_bundle(tmp_path_factory) -> Path:
    """A tiny skull-strip bundle fitted on phantoms (a few seconds; once per module)."""
    return make_tiny_bundle(
        tmp_path_factory.mktemp("bundles") / "tiny-skullstrip", task="skullstrip", modality="MR"
    )


@pytest.fixture
def context():
    return create_headless_context()


@pytest.fixture
def logic(context) -> PocketSegLogic:
    return PocketSegLogic(context)


def read_volume(context, path: Path, name: str):
    """A volume node read by Slicer's own storage node, under a patient/study as Slicer's DICOM import puts it."""
    scene = context.scene
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node), f"Slicer could not read {path}"
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    put_in_study(context, node)
    return node


def put_in_study(context, node) -> int:
    hierarchy = context.subject_hierarchy
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient")
    study = hierarchy.CreateStudyItem(patient, "Study")
    item = hierarchy.GetItemByDataNode(node) or hierarchy.CreateItem(study, node)
    hierarchy.SetItemParent(item, study)
    return study


def write_volume(context, node, path: Path) -> Path:
    """Write a volume node with Slicer's own storage node."""
    storage = context.scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.WriteData(node), f"Slicer could not write {path}"
    context.scene.RemoveNode(storage)
    return path


def pocketseg_predict(input_path: Path, bundle: Path, output: Path) -> sitk.Image:
    """The mask ``pocketseg predict`` writes (the core function when the sub-command is absent)."""
    if importlib.util.find_spec("pocketseg_core.cli.predict") is not None:
        code = cli.main(
            [
                "predict",
                "--input",
                str(input_path),
                "--output",
                str(output),
                "--model",
                str(bundle),
                "--device",
                "cpu",
            ]
        )
        assert code == 0
    else:  # pragma: no cover - until the predict sub-command lands
        from pocketseg_core.bundles import load_bundle
        from pocketseg_core.inference import InferenceOptions, segment_image
        from pocketseg_core.io import read_image, write_image

        result = segment_image(read_image(input_path), load_bundle(bundle), InferenceOptions(device="cpu"))
        write_image(result.mask, output)
    return sitk.ReadImage(str(output))


def assert_segmentation_node(context, node, volume, description, study) -> None:
    """Name, one segment, colour, terminology, reference geometry, subject hierarchy, display."""
    assert node.GetName() == f"{volume.GetName()} {description.name.lower()}"
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    segment = segmentation.GetNthSegment(0)
    assert segment.GetName() == description.name
    assert segment.GetColor() == pytest.approx(description.color)
    terminology = segment.GetTerminology()
    assert terminology == description.terminology_entry
    assert (
        f"~SCT^123037004^Anatomical Structure~SCT^{description.type_code[1]}^{description.name}~"
        in terminology
    )
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    assert node.GetNodeReference(role) is volume
    geometry = segmentation.GetConversionParameter(
        slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    )
    volume_geometry = slicer.vtkSegmentationConverter.SerializeImageGeometry(
        slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(volume)
    )
    assert geometry == volume_geometry
    hierarchy = context.subject_hierarchy
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study
    display = node.GetDisplayNode()
    assert display is not None and display.GetVisibility() and display.GetVisibility2DFill()


def mask_on_volume_grid(mask: sitk.Image, volume) -> np.ndarray:
    """A file's mask as an array ``(k, j, i)`` on the volume node's grid, by exact index permutation.

    Slicer may index the voxels of a file differently from SimpleITK: it reads a left-handed
    file (swiss_atlas_t1.mha) with its k axis reversed. Both grids must hold the same voxel
    centres (checked to 1e-4 mm); the mask is then carried over voxel for voxel, in physical space.
    """
    dims = volume.GetImageData().GetDimensions()
    assert sorted(mask.GetSize()) == sorted(dims)
    ijk_to_ras = ijk_to_ras_matrix(volume)
    corners = np.array(
        [[i, j, k] for i in (0, dims[0] - 1) for j in (0, dims[1] - 1) for k in (0, dims[2] - 1)]
    )
    lps = (RAS_TO_LPS @ (ijk_to_ras[:3, :3] @ corners.T + ijk_to_ras[:3, 3:4])).T
    index = np.array(
        [mask.TransformPhysicalPointToContinuousIndex([float(v) for v in point]) for point in lps]
    )
    np.testing.assert_allclose(index, np.round(index), atol=1e-4)  # same voxel centres
    reference = sitk.Image([int(d) for d in dims], sitk.sitkUInt8)
    reference.SetSpacing(volume.GetSpacing())
    reference.SetOrigin([float(v) for v in RAS_TO_LPS @ np.array(volume.GetOrigin())])
    reference.SetDirection(image_from_volume_node(volume).GetDirection())
    resampled = sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return (sitk.GetArrayFromImage(resampled) > 0).astype(np.uint8)


# --- geometry -------------------------------------------------------------------------------


def test_volume_node_image_round_trip_rotated_flipped_anisotropic(context, tmp_path):
    scene = context.scene
    array = np.random.default_rng(1).integers(-1000, 3000, size=(7, 9, 11)).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 1.3, 2.9))
    image.SetOrigin((-12.5, 40.25, 7.0))
    image.SetDirection([float(v) for v in rotated_flipped_direction().ravel()])
    node = volume_node_from_image(scene, image, "oblique")
    # The node's IJK-to-RAS is the image's LPS geometry flipped to RAS, voxel for voxel.
    for index in [(0, 0, 0), (10, 0, 0), (3, 8, 6), (10, 8, 6)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(index))
        ras = ijk_to_ras_matrix(node) @ np.array([*index, 1.0])
        np.testing.assert_allclose(ras[:3], RAS_TO_LPS @ lps, atol=1e-9)
    back = image_from_volume_node(node)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), array)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-12)
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-12)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-12)
    # Slicer's writer and SimpleITK's reader agree with the conversion.
    from_file = sitk.ReadImage(str(write_volume(context, node, tmp_path / "oblique.nrrd")))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(from_file), array)
    np.testing.assert_allclose(from_file.GetDirection(), image.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(from_file.GetOrigin(), image.GetOrigin(), atol=1e-6)


# --- the shared scenario (also PocketSegTest inside Slicer) ---------------------------------


def test_self_test_scenario(logic, skullstrip_bundle):
    measured = run_scenario(logic, skullstrip_bundle, log=lambda message: None)
    assert measured["voxels"] > 1000  # the fitted tiny model finds the synthetic brain
    assert measured["metrics"]["dice"] > 0.85


# --- real data, read by Slicer ----------------------------------------------------------------


def test_skull_strip_matches_pocketseg_predict(context, logic, skullstrip_bundle, shared_data, tmp_path):
    path = shared_file(shared_data, "brain/swiss_atlas_t1.mha")
    volume = read_volume(context, path, "swiss_atlas_t1")
    study = context.subject_hierarchy.GetItemParent(context.subject_hierarchy.GetItemByDataNode(volume))

    node = logic.segment(volume, skullstrip_bundle, CPU)

    assert_segmentation_node(context, node, volume, BRAIN, study)
    exported = segment_array_on_volume(node, "Brain", volume)
    assert exported.sum() > 10_000  # a real mask, not an empty one
    # The volume as Slicer saves it: same voxel order as the node -> equal voxel for voxel.
    saved = write_volume(context, volume, tmp_path / "swiss_as_saved_by_slicer.nrrd")
    predicted = pocketseg_predict(saved, skullstrip_bundle, tmp_path / "brain_saved.nii.gz")
    assert_same_grid(predicted, volume)
    np.testing.assert_array_equal(exported, sitk.GetArrayFromImage(predicted))
    # The original file: Slicer reads this left-handed file with its k axis reversed, so the
    # core sees the same physical image with another voxel order; inference works on the
    # canonical (LPS) copy of the grid, so the masks are still equal voxel for voxel.
    original = mask_on_volume_grid(
        pocketseg_predict(path, skullstrip_bundle, tmp_path / "brain.nii.gz"), volume
    )
    np.testing.assert_array_equal(exported, original)


def assert_same_grid(mask: sitk.Image, volume) -> None:
    """The mask file lies on exactly the volume node's grid (same size, same IJK-to-RAS)."""
    assert tuple(mask.GetSize()) == tuple(volume.GetImageData().GetDimensions())
    np.testing.assert_allclose(image_ijk_to_ras(mask), ijk_to_ras_matrix(volume), atol=1e-5)


def test_rotated_flipped_anisotropic_copy_matches_pocketseg_predict(
    context, logic, skullstrip_bundle, shared_data, tmp_path
):
    path = shared_file(shared_data, "brain/swiss_atlas_t1.mha")
    original = read_volume(context, path, "swiss_atlas_t1")
    image = image_from_volume_node(original)
    image.SetSpacing((1.2, 0.9, 1.5))
    image.SetDirection([float(v) for v in rotated_flipped_direction().ravel()])
    copy = volume_node_from_image(context.scene, image, "swiss_oblique")
    study = put_in_study(context, copy)
    ijk_to_ras = ijk_to_ras_matrix(copy)
    assert np.linalg.det(ijk_to_ras[:3, :3]) < 0  # axis-flipped
    assert not np.allclose(
        np.abs(ijk_to_ras[:3, :3]), np.diag(np.abs(np.diag(ijk_to_ras[:3, :3])))
    )  # oblique

    node = logic.segment(copy, skullstrip_bundle, CPU)

    assert_segmentation_node(context, node, copy, BRAIN, study)
    copy_file = write_volume(context, copy, tmp_path / "swiss_oblique.nrrd")
    predicted = pocketseg_predict(copy_file, skullstrip_bundle, tmp_path / "oblique_brain.nii.gz")
    assert_same_grid(predicted, copy)
    exported = segment_array_on_volume(node, "Brain", copy)
    assert exported.sum() > 10_000
    np.testing.assert_array_equal(exported, sitk.GetArrayFromImage(predicted))


def test_comparison_table_equals_pocketseg_evaluate(
    context, logic, skullstrip_bundle, shared_data, tmp_path, capsys
):
    t1 = shared_file(shared_data, "brain/swiss_atlas_t1.mha")
    reference_file = shared_file(shared_data, "brain/swiss_atlas_brainmask.mha")
    volume = read_volume(context, t1, "swiss_atlas_t1")
    computed = logic.segment(volume, skullstrip_bundle, CPU)
    # The manual mask, read by Slicer as a labelmap and imported as a segment.
    labelmap = context.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "manual")
    storage = context.scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(reference_file))
    assert storage.ReadData(labelmap)
    reference = context.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "manual brain")
    reference.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    assert context.segmentations_logic.ImportLabelmapToSegmentationNode(labelmap, reference)
    reference_id = reference.GetSegmentation().GetNthSegmentID(0)

    table = logic.compare(reference, reference_id, computed, "Brain")

    # The same two masks as files, on the volume's grid as Slicer saves them (the previous test
    # shows the predicted one equals the computed segment voxel for voxel).
    saved_volume = write_volume(context, volume, tmp_path / "t1.nrrd")
    predicted = pocketseg_predict(saved_volume, skullstrip_bundle, tmp_path / "brain.nii.gz")
    saved_reference = write_volume(context, labelmap, tmp_path / "manual.nrrd")
    capsys.readouterr()
    arguments = [
        "--reference",
        str(saved_reference),
        "--prediction",
        str(tmp_path / "brain.nii.gz"),
        "--json",
    ]
    assert cli.main(["evaluate", *arguments]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    values = metrics_from_table(table)
    assert list(values) == list(METRIC_NAMES)
    for key in METRIC_NAMES:
        assert values[key] == pytest.approx(evaluated[key], rel=1e-6, abs=1e-6), key
    assert 0.0 < values["dice"] < 1.0
    assert sorted(predicted.GetSize()) == sorted(volume.GetImageData().GetDimensions())
    assert table.GetTable().GetNumberOfRows() == len(METRIC_NAMES)
    hierarchy = context.subject_hierarchy
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(table)) == hierarchy.GetItemParent(
        hierarchy.GetItemByDataNode(computed)
    )


# --- no shared data needed -----------------------------------------------------------------


def phantom_volume(context, modality: str = "MR", name: str = "phantom"):
    image, label = make_phantom(modality, size=(40, 44, 36), spacing=(4.0, 4.0, 4.0))
    node = volume_node_from_image(context.scene, image, name)
    put_in_study(context, node)
    return node, label


def test_cancelled_or_failed_run_leaves_the_scene_as_it_was(context, logic, skullstrip_bundle):
    volume, _ = phantom_volume(context)
    scene = context.scene
    before = scene.GetNumberOfNodes()
    names_before = [scene.GetNthNode(i).GetID() for i in range(before)]

    with pytest.raises(Cancelled):  # cancelled from the progress callback
        logic.segment(volume, skullstrip_bundle, CPU, progress=lambda fraction, message: False)
    assert scene.GetNumberOfNodes() == before

    running = logic.start_segment(volume, skullstrip_bundle, CPU)  # cancelled from the GUI's button
    work_dir = running.run.work_dir
    assert (work_dir / "input.mha").is_file()  # the volume went out as a file
    running.cancel()
    assert running.status().state == CANCELLED  # at once: the process group was killed
    assert running.run.process.poll() is not None
    assert not work_dir.exists()  # temporary files removed
    with pytest.raises(Cancelled):
        running.finish()
    assert scene.GetNumberOfNodes() == before

    with pytest.raises(InputImageError):  # a failed run: no volume
        logic.segment(None, skullstrip_bundle, CPU)
    assert [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())] == names_before


def test_background_run_reports_progress_and_applies_on_finish(context, logic, skullstrip_bundle):
    volume, label = phantom_volume(context)
    segmentations_before = scene_count(context, "vtkMRMLSegmentationNode")
    options = SegmentOptions(device="cpu", create_masked_volume=True, show_3d=True)
    running = logic.start_segment(volume, skullstrip_bundle, options)
    fractions, messages = [], []
    status = running.wait(
        lambda fraction, message: fractions.append(fraction) or messages.append(message), 300
    )
    assert status.state == "succeeded" and status.fraction == 1.0 and status.elapsed_s > 0
    assert fractions == sorted(fractions) and any(0.0 < f < 1.0 for f in fractions), fractions
    print("progress messages seen:", list(dict.fromkeys(messages)))
    assert len(set(messages) - {"starting"}) >= 2  # the child's progress lines, parsed
    assert not running.run.work_dir.exists()  # temporary files removed after success
    assert scene_count(context, "vtkMRMLSegmentationNode") == segmentations_before  # nothing until finish()
    outcome = running.finish()
    assert outcome.segmentation_node.GetName() == "phantom brain"
    exported = segment_array_on_volume(outcome.segmentation_node, "Brain", volume)
    truth = sitk.GetArrayFromImage(label)
    dice = 2 * (exported & truth).sum() / (exported.sum() + truth.sum())
    assert dice > 0.9
    # Shown in 3D on request: a closed surface exists and the 3D display is on.
    closed_surface = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    assert outcome.segmentation_node.GetSegmentation().ContainsRepresentation(closed_surface)
    assert outcome.segmentation_node.GetDisplayNode().GetVisibility3D()
    # The skull-stripped volume: input inside the brain, 0 outside, same grid.
    masked = outcome.masked_volume_node
    assert masked.GetName() == "phantom skull-stripped"
    np.testing.assert_allclose(ijk_to_ras_matrix(masked), ijk_to_ras_matrix(volume))
    original = slicer.util.arrayFromVolume(volume)
    stripped = slicer.util.arrayFromVolume(masked)
    np.testing.assert_array_equal(stripped[exported > 0], original[exported > 0])
    assert not stripped[exported == 0].any()


def test_existing_segmentation_keeps_other_segments_and_replaces_only_when_asked(
    context, logic, skullstrip_bundle
):
    volume, _ = phantom_volume(context)
    first = logic.segment(volume, skullstrip_bundle, CPU)
    second = logic.segment(volume, skullstrip_bundle, CPU)  # new by default
    assert second is not first and scene_count(context, "vtkMRMLSegmentationNode") == 2
    # the user's own work in the first segmentation: a drawn "Tumor" before and "Edema" after Brain
    segmentation = first.GetSegmentation()
    tumor = np.zeros(slicer.util.arrayFromVolume(volume).shape, dtype=np.uint8)
    tumor[10:14, 10:14, 10:14] = 1
    tumor_image = sitk.GetImageFromArray(tumor)
    tumor_image.CopyInformation(image_from_volume_node(volume))
    from PocketSegLib.segmentation import SegmentDescription, build_segment

    drawn = build_segment(
        tumor_image, volume, SegmentDescription("Tumor", (1.0, 0.0, 0.0), ("", "", "Tumor"))
    )
    segmentation.AddSegment(drawn, "my_tumor", segmentation.GetNthSegmentID(0))
    segmentation.AddEmptySegment("my_edema", "Edema")
    brain_id = segmentation.GetSegmentIdBySegmentName("Brain")
    order = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    assert order == ["my_tumor", brain_id, "my_edema"]
    nodes_before = scene_count(context, "vtkMRMLSegmentationNode")

    prepared = logic.prepare(volume, skullstrip_bundle)
    assert logic.segments_to_replace(prepared, first) == ["Brain"]
    with pytest.raises(PocketSegError, match=r"already has segment\(s\) Brain"):  # not asked: refused
        logic.segment(volume, skullstrip_bundle, CPU, output_node=first)
    assert [segmentation.GetNthSegmentID(i) for i in range(3)] == order

    replaced = logic.segment(volume, skullstrip_bundle, CPU, output_node=first, replace_segments=True)
    assert replaced is first and scene_count(context, "vtkMRMLSegmentationNode") == nodes_before
    assert [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())] == order
    np.testing.assert_array_equal(
        segment_array_on_volume(first, "Tumor", volume), tumor
    )  # kept, voxel for voxel
    assert segmentation.GetSegment("my_edema").GetName() == "Edema"
    np.testing.assert_array_equal(
        segment_array_on_volume(first, "Brain", volume), segment_array_on_volume(second, "Brain", volume)
    )
    # into a segmentation without a Brain segment nothing is asked: Brain is added beside the others
    other = context.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    other.GetSegmentation().AddEmptySegment("liver_seed", "Liver seed")
    assert logic.segments_to_replace(prepared, other) == []
    logic.segment(volume, skullstrip_bundle, CPU, output_node=other)
    names = [other.GetSegmentation().GetNthSegment(i).GetName() for i in range(2)]
    assert names == ["Liver seed", "Brain"]


def test_removed_input_or_output_node_during_a_run_ends_with_a_clear_message(
    context, logic, skullstrip_bundle
):
    volume, _ = phantom_volume(context)
    output = context.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "target")
    running = logic.start_segment(volume, skullstrip_bundle, CPU, output_node=output)
    context.scene.RemoveNode(output)
    status = running.status()
    assert status.state == FAILED and running.run.process.poll() is not None
    assert "segmentation 'target' was removed from the scene during the run" in str(status.error)
    with pytest.raises(PocketSegError, match="was removed from the scene"):
        running.finish()

    before = scene_count(context, "vtkMRMLSegmentationNode")
    running = logic.start_segment(volume, skullstrip_bundle, CPU)
    context.scene.RemoveNode(volume)
    status = running.status()
    assert status.state == FAILED and "volume 'phantom' was removed from the scene" in str(status.error)
    assert scene_count(context, "vtkMRMLSegmentationNode") == before


def test_scene_close_cancels_the_run(context, logic, skullstrip_bundle):
    volume, _ = phantom_volume(context)
    running = logic.start_segment(volume, skullstrip_bundle, CPU)
    assert logic.running() == [running]
    context.scene.Clear(0)  # File > Close scene
    assert running.status().state == CANCELLED
    assert running.run.process.poll() is not None and not running.run.work_dir.exists()
    assert logic.running() == []


def test_liver_segment_name_colour_and_terminology(context, logic, tmp_path):
    bundle = make_tiny_bundle(tmp_path / "tiny-liver", task="liver", modality="CT", fit=False)
    volume, _ = phantom_volume(context, "CT", name="abdomen")
    study = context.subject_hierarchy.GetItemParent(context.subject_hierarchy.GetItemByDataNode(volume))
    node = logic.segment(volume, bundle, CPU)
    assert_segmentation_node(context, node, volume, LIVER, study)
    assert LIVER.type_code == ("SCT", "10200004", "Liver")


def test_modality_warning_for_ct_sent_to_the_brain_model(context, logic, skullstrip_bundle):
    volume, _ = phantom_volume(context, "CT", name="abdomen")
    prepared = logic.prepare(volume, skullstrip_bundle)
    assert prepared.warnings and "CT" in prepared.warnings[0]


def test_single_slice_volume_is_refused_in_plain_words(context, logic, skullstrip_bundle):
    node = volume_node_from_image(context.scene, sitk.Image([64, 64, 1], sitk.sitkFloat32), "slice")
    with pytest.raises(InputImageError, match="single slice"):
        logic.prepare(node, skullstrip_bundle)


def scene_count(context, class_name: str) -> int:
    collection = context.scene.GetNodesByClass(class_name)
    return collection.GetNumberOfItems() if isinstance(collection, vtk.vtkCollection) else len(collection)


def test_worker_reports_a_user_error_in_one_sentence(tmp_path):
    run = WorkerRun(
        {
            "kind": "segment",
            "model": "skullstrip",
            "input": str(tmp_path / "absent.nii.gz"),
            "output": "@m.mha",
        }
    ).start()
    status = run.wait(timeout=120)
    assert status.state == FAILED and status.done
    assert isinstance(status.error, InputImageError) and "absent.nii.gz" in str(status.error)
    assert not run.work_dir.exists()
    with pytest.raises(InputImageError):
        run.result()


def test_worker_bug_or_crash_is_reported_with_details(tmp_path):
    image = tmp_path / "small.mha"
    sitk.WriteImage(make_phantom("MR", size=(8, 8, 8), spacing=(4.0, 4.0, 4.0))[0], str(image))
    run = WorkerRun({"kind": "segment", "input": str(image), "output": "@m.mha"}).start()  # no model: a bug
    status = run.wait(timeout=120)
    assert status.state == FAILED and isinstance(status.error, WorkerFailed)
    assert "KeyError" in str(status.error) and "Traceback" in status.error_details
    bundle = tmp_path / "broken"
    bundle.mkdir()
    (bundle / "bundle.json").write_text("{", encoding="utf-8")
    run = WorkerRun(
        {"kind": "segment", "model": str(bundle), "input": str(image), "output": "@m.mha"}
    ).start()
    status = run.wait(timeout=120)
    assert isinstance(status.error, BundleError) and "not valid JSON" in str(status.error)
    # a child that dies without a word (killed from outside): said plainly, the log kept as details
    run = WorkerRun(
        {"kind": "segment", "model": str(bundle), "input": str(image), "output": "@m.mha"}
    ).start()
    run.process.kill()
    status = run.wait(timeout=60)
    assert isinstance(status.error, WorkerFailed) and "ended unexpectedly (exit status -9)" in str(
        status.error
    )


def test_worker_stdout_carries_only_events(tmp_path):
    """Whatever a library prints goes to the log (stderr): every stdout line is a JSON event."""
    import subprocess

    job = tmp_path / "job.json"
    job.write_text(json.dumps({"kind": "nothing"}), encoding="utf-8")
    completed = subprocess.run(
        [sys.executable, "-m", "pocketseg_core.worker", str(job)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=False,
    )
    events = [json.loads(line) for line in completed.stdout.splitlines()]
    assert completed.returncode == 2
    assert [event["event"] for event in events] == ["started", "error"]
    assert "unknown job kind 'nothing'" in events[1]["message"]


def test_worker_whose_events_pipe_broke_stops_and_removes_its_folder(tmp_path, skullstrip_bundle):
    """A worker whose reader is gone (its end of the events pipe closed: a killed server or Slicer)
    stops at its next progress report as cancelled, without a BrokenPipeError traceback, and removes
    the folder of its own job (``"own_folder": true``): nobody else will."""
    import subprocess

    from PocketSegLib.runner import child_environment

    folder = tmp_path / "job"
    folder.mkdir()
    image, _ = make_phantom("MR", size=(48, 56, 44), spacing=(4.0, 4.2, 3.8), seed=6)
    sitk.WriteImage(image, str(folder / "input.mha"))
    job = {
        "kind": "segment",
        "model": str(skullstrip_bundle),
        "input": str(folder / "input.mha"),
        "output": str(folder / "mask.mha"),
        "options": {"device": "cpu", "tta": True, "overlap": 0.9},  # many windows: a slow job
        "own_folder": True,
    }
    (folder / "job.json").write_text(json.dumps(job), encoding="utf-8")
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pocketseg_core.worker", str(folder / "job.json")],
            stdout=subprocess.PIPE,
            stderr=log,
            env=child_environment(),
        )
    try:
        for line in process.stdout:  # up to the first report from the windows
            event = json.loads(line)
            if event["event"] == "progress" and event["fraction"] > 0:
                break
        process.stdout.close()  # the parent's end of the pipe goes; the parent itself lives on
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    log = log_path.read_text(encoding="utf-8", errors="replace")
    assert "BrokenPipeError" not in log and "Traceback" not in log, log[-2000:]
    assert code == 1  # cancelled (EXIT_USER_ERROR), not finished and not an unexpected error
    assert not folder.exists()
