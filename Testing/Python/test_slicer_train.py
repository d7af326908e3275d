"""The PocketSegTrain module's MRML logic, for real, on ``slicer-core`` (no GUI, no mocks).

Cases: the Swiss and ROBEX atlas heads (../shared/data/brain) read by Slicer's storage node, and
a transformed copy of each (Swiss: the voxels stored flipped along i, same physical image, with
the manual mask imported on the original grid so the segmentation's geometry differs from its
volume; ROBEX: the head rotated by changing its IJK-to-RAS directions). Two subjects, two folds,
two epochs of a few batches at 4 mm on CPU. The run is first cancelled in fold 2 (nothing added to
the scene, the run folder marked INCOMPLETE), then resumed to the end; the nodes it brings back
are checked in physical space against the run's files and ``pocketseg_core.metrics``, and the
registered model segments a new head through PocketSeg's logic.
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("slicer", reason="slicer-core is not installed")

from conftest import REPO_ROOT, SHARED_DATA  # noqa: E402

sys.path[:0] = [str(REPO_ROOT / "PocketSeg"), str(REPO_ROOT / "PocketSegTrain")]

from PocketSegLib import create_headless_context  # noqa: E402
from PocketSegLib.logic import PocketSegLogic, SegmentOptions  # noqa: E402
from PocketSegLib.segmentation import (  # noqa: E402
    BRAIN,
    segment_array_on_volume,
    segment_image_on_volume,
    write_mask_to_segmentation,
)
from PocketSegLib.volume_io import image_from_volume_node, volume_node_from_image  # noqa: E402
from PocketSegTrainLib.cases import TrainingCase  # noqa: E402
from PocketSegTrainLib.curves import QUANTITIES, series_column  # noqa: E402
from PocketSegTrainLib.logic import PocketSegTrainLogic  # noqa: E402
from PocketSegTrainLib.results import table_rows  # noqa: E402

from pocketseg_core.errors import BundleError, Cancelled, DatasetError  # noqa: E402
from pocketseg_core.metrics import METRIC_NAMES, compute_metrics  # noqa: E402

HEADS = {
    "swiss": ("brain/swiss_atlas_t1.mha", "brain/swiss_atlas_brainmask.mha"),
    "robex": ("brain/robex_atlas_t1.nii.gz", "brain/robex_atlas_brainmask.nii.gz"),
}
NETWORK = "pocket_unet3d"
#: a CPU run of seconds: 4 mm working grid, a tiny network, two epochs of eight batches
SMALL = dict(
    spacing=(4.0, 4.0, 4.0),
    window_mode="patch3d",
    window_size_zyx=(32, 32, 32),
    patch_size_zyx=(32, 32, 32),
    network_args={"init_filters": 8, "depth": 3, "pool_size": 2},
    steps_per_epoch=8,
    batch_size=4,
    augmentation=[],
    amp=False,
    show_progress=False,
)


# --- scene building with Slicer's own readers -----------------------------------------------


def read_node(context, path: Path, name: str, node_class: str = "vtkMRMLScalarVolumeNode"):
    scene = context.scene
    node = scene.AddNewNodeByClass(node_class, name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node), f"Slicer could not read {path}"
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    return node


def put_in_study(context, node, study_name: str) -> int:
    hierarchy = context.subject_hierarchy
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), f"Patient {study_name}")
    study = hierarchy.CreateStudyItem(patient, study_name)
    item = hierarchy.GetItemByDataNode(node) or hierarchy.CreateItem(study, node)
    hierarchy.SetItemParent(item, study)
    return study


def import_mask(context, mask_path: Path, name: str, volume, study: int, reference_volume=None):
    """A manual segmentation "Brain" from a mask file (read by Slicer as a labelmap)."""
    labelmap = read_node(context, mask_path, f"{name} labelmap", "vtkMRMLLabelMapVolumeNode")
    segmentation = context.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} manual")
    # the reference geometry is the mask's own grid unless a volume is given
    if reference_volume is not None:
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    assert context.segmentations_logic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    context.scene.RemoveNode(labelmap)
    segment = segmentation.GetSegmentation().GetNthSegment(0)
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1
    segment.SetName("Brain")
    segment.SetColor(*BRAIN.color)
    segment.SetTerminology(BRAIN.terminology_entry)
    hierarchy = context.subject_hierarchy
    item = hierarchy.GetItemByDataNode(segmentation) or hierarchy.CreateItem(study, segmentation)
    hierarchy.SetItemParent(item, study)
    return segmentation


def flipped_storage(image: sitk.Image) -> sitk.Image:
    """The same physical image with its voxels stored in reverse i order (direction column negated)."""
    flipped = sitk.GetImageFromArray(sitk.GetArrayFromImage(image)[:, :, ::-1].copy())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    direction[:, 0] *= -1
    flipped.SetSpacing(image.GetSpacing())
    flipped.SetDirection(direction.ravel().tolist())
    flipped.SetOrigin(image.TransformIndexToPhysicalPoint((image.GetSize()[0] - 1, 0, 0)))
    return flipped


def rotated(image: sitk.Image, degrees: float = 20.0) -> sitk.Image:
    """The image turned about the physical z axis (same voxels, rotated IJK-to-RAS)."""
    angle = np.deg2rad(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    result = sitk.Image(image)
    result.SetDirection((rotation @ np.array(image.GetDirection()).reshape(3, 3)).ravel().tolist())
    result.SetOrigin((rotation @ np.array(image.GetOrigin())).tolist())
    return result


def build_cases(context, folder: Path) -> list[TrainingCase]:
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for subject, (image_file, mask_file) in HEADS.items():
        image_path, mask_path = SHARED_DATA / image_file, SHARED_DATA / mask_file
        if not (image_path.is_file() and mask_path.is_file()):
            pytest.skip(f"sample heads not found in {SHARED_DATA}")
        image = sitk.ReadImage(str(image_path))
        mask = sitk.Cast(sitk.ReadImage(str(mask_path)) > 0.5, sitk.sitkUInt8)
        mask_copy = folder / f"{subject}_mask.nrrd"
        sitk.WriteImage(mask, str(mask_copy))
        volume = read_node(context, image_path, subject)
        study = put_in_study(context, volume, subject)
        cases.append(
            TrainingCase(
                volume, import_mask(context, mask_copy, subject, volume, study), "Brain", subject=subject
            )
        )
        if subject == "swiss":  # same physical head stored flipped; mask imported on the original grid
            copy_name = f"{subject}_flipped"
            sitk.WriteImage(flipped_storage(image), str(folder / f"{copy_name}.nrrd"))
            segmentation_source = mask_copy
        else:  # a rotated head
            copy_name = f"{subject}_rotated"
            sitk.WriteImage(rotated(image), str(folder / f"{copy_name}.nrrd"))
            segmentation_source = folder / f"{copy_name}_mask.nrrd"
            sitk.WriteImage(rotated(mask), str(segmentation_source))
        copy_volume = read_node(context, folder / f"{copy_name}.nrrd", copy_name)
        copy_study = put_in_study(context, copy_volume, copy_name)
        segmentation = import_mask(context, segmentation_source, copy_name, copy_volume, copy_study)
        cases.append(TrainingCase(copy_volume, segmentation, "Brain", subject=subject))
    return cases


def node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


# --- the trained run (once per module) -------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("POCKETSEG_MODELS_DIR", str(folder / "catalog"))
        context = create_headless_context()
        cases = build_cases(context, folder / "inputs")
        logic = PocketSegTrainLogic(context)
        output = folder / "out"
        before = node_ids(context.scene)
        messages: list[str] = []

        def cancel_in_fold_2(fraction: float, message: str) -> bool:
            messages.append(message)
            return not message.startswith("fold 2/")

        settings = dict(folds=2, epochs=2, device="cpu", model_name="slicer-test-brain", log=None, **SMALL)
        with pytest.raises(Cancelled):
            logic.run(cases, "pocketnet-nfbs", output, progress=cancel_in_fold_2, **settings)
        cancelled = {
            "nodes_unchanged": node_ids(context.scene) == before,
            "incomplete": (output / "run" / "INCOMPLETE").is_file(),
            "fold1_done": (output / "run" / "fold_1" / "state.json").is_file(),
            "fold2_done": (output / "run" / "fold_2" / "state.json").is_file(),
            "catalog_empty": not (folder / "catalog").exists() or not any((folder / "catalog").iterdir()),
        }
        result = logic.run(cases, "pocketnet-nfbs", output, resume=True, **settings)
        yield {"context": context, "cases": cases, "result": result, "cancelled": cancelled, "folder": folder}


def test_cancel_keeps_the_scene_and_resume_finishes(trained):
    assert trained["cancelled"] == {
        "nodes_unchanged": True,
        "incomplete": True,
        "fold1_done": True,
        "fold2_done": False,
        "catalog_empty": True,
    }
    run_dir = trained["result"].run_dir
    assert not (run_dir / "INCOMPLETE").exists()
    assert (run_dir / "fold_2" / "state.json").is_file()


def test_predictions_overlay_their_volumes(trained):
    context, result = trained["context"], trained["result"]
    hierarchy = context.subject_hierarchy
    assert len(result.prediction_nodes) == 4
    exported = {}
    for case in trained["cases"]:
        node = result.prediction_nodes[case.case_name]
        assert node.GetName() == f"{case.case_name} {NETWORK} CV"
        segment = node.GetSegmentation().GetNthSegment(0)
        manual = case.segmentation_node.GetSegmentation().GetSegment(
            case.segmentation_node.GetSegmentation().GetSegmentIdBySegmentName("Brain")
        )
        assert (segment.GetName(), segment.GetTerminology()) == (manual.GetName(), manual.GetTerminology())
        assert segment.GetColor() == pytest.approx(manual.GetColor())
        assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == hierarchy.GetItemParent(
            hierarchy.GetItemByDataNode(case.segmentation_node)
        )
        # the exported prediction lies on the volume's grid and equals the run's file in physical space
        volume_image = image_from_volume_node(case.volume_node)
        array = segment_array_on_volume(node, segment.GetName(), case.volume_node)
        assert array.shape == sitk.GetArrayViewFromImage(volume_image).shape
        run_file = sitk.ReadImage(str(result.run_dir / "predictions" / f"{case.case_name}.nii.gz"))
        resampled = sitk.Resample(run_file, volume_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        assert np.array_equal(array, sitk.GetArrayViewFromImage(resampled) > 0)
        assert array.any()
        exported[case.case_name] = segment_image_on_volume(node, segment.GetName(), case.volume_node)
    # one physical head stored two ways, one fold model: the two predictions coincide in space
    flipped_on_original = sitk.Resample(
        exported["swiss_flipped"], exported["swiss"], sitk.Transform(), sitk.sitkNearestNeighbor, 0
    )
    agreement = compute_metrics(exported["swiss"], flipped_on_original)["dice"]
    assert agreement > 0.99, agreement


def test_table_holds_the_metrics_of_the_exported_arrays(trained):
    result = trained["result"]
    rows = table_rows(result.table_node)
    assert list(rows) == [case.case_name for case in trained["cases"]] + ["mean", "std"]
    values = []
    for case in trained["cases"]:
        manual = segment_image_on_volume(case.segmentation_node, "Brain", case.volume_node)
        predicted = segment_image_on_volume(
            result.prediction_nodes[case.case_name], "Brain", case.volume_node
        )
        expected = compute_metrics(manual, predicted)
        assert rows[case.case_name] == pytest.approx(expected, rel=1e-9, abs=1e-9)
        values.append([expected[key] for key in METRIC_NAMES])
    values = np.array(values)
    assert [rows["mean"][key] for key in METRIC_NAMES] == pytest.approx(values.mean(axis=0))
    assert [rows["std"][key] for key in METRIC_NAMES] == pytest.approx(values.std(axis=0))
    print("out-of-fold Dice per case:", {c: round(r["dice"], 3) for c, r in rows.items()})


def test_plot_has_one_series_per_fold_and_quantity(trained):
    result = trained["result"]
    chart, table = result.chart_node, result.curves_table_node
    series = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
    found = sorted(
        (s.GetAttribute("PocketSegTrain.Fold"), s.GetAttribute("PocketSegTrain.Quantity")) for s in series
    )
    assert found == sorted((str(f), q) for f in (1, 2) for q in QUANTITIES)
    assert all(s.GetTableNodeID() == table.GetID() for s in series)
    with open(result.run_dir / "training_log.csv", newline="", encoding="utf-8") as handle:
        log = list(csv.DictReader(handle))
    assert len(log) == 4  # 2 folds x 2 epochs
    for row in log:
        for quantity in QUANTITIES:
            column = table.GetTable().GetColumnByName(series_column(int(row["fold"]), quantity))
            assert column.GetValue(int(row["epoch"]) - 1) == pytest.approx(float(row[quantity]))


def test_registered_model_segments_a_new_volume(trained, monkeypatch):
    monkeypatch.setenv("POCKETSEG_MODELS_DIR", str(trained["folder"] / "catalog"))
    result = trained["result"]
    context = trained["context"]
    names = [model["name"] for model in PocketSegLogic.available_models()]
    assert result.model_name in names
    new_head = SHARED_DATA / "brain" / "mni152_t1_2mm.nii.gz"
    if not new_head.is_file():
        pytest.skip("brain/mni152_t1_2mm.nii.gz not found")
    volume = read_node(context, new_head, "mni152")
    node = PocketSegLogic(context).segment(volume, result.model_name, SegmentOptions(device="cpu"))
    assert node.GetSegmentation().GetNthSegment(0).GetName() == "Brain"
    array = segment_array_on_volume(node, "Brain", volume)
    assert array.shape == slicer_shape(volume) and array.any()


def slicer_shape(volume) -> tuple[int, int, int]:
    dims = volume.GetImageData().GetDimensions()
    return (dims[2], dims[1], dims[0])


# --- bad input (small phantoms: the checks run before any training) ---------------------------


def phantom_case(context, name: str, empty: bool = False) -> TrainingCase:
    array = np.zeros((12, 14, 16), dtype=np.float32)
    array[3:9, 4:10, 5:11] = 100.0
    inside = array > 0
    array += (
        np.random.default_rng(len(name)).normal(0.0, 5.0, array.shape).astype(np.float32)
    )  # not a label map
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 2.0, 2.0))
    volume = volume_node_from_image(context.scene, image, name)
    mask = sitk.GetImageFromArray((inside & (not empty)).astype(np.uint8))
    mask.CopyInformation(image)
    segmentation = write_mask_to_segmentation(context, volume, mask, BRAIN)
    return TrainingCase(volume, segmentation, "Brain")


def test_bad_input_gives_clear_errors(tmp_path):
    context = create_headless_context()
    logic = PocketSegTrainLogic(context)
    cases = [phantom_case(context, f"head{i}") for i in range(3)]
    with pytest.raises(DatasetError, match=r"3 case\(s\) from 3 subject\(s\) cannot fill 5 folds"):
        logic.prepare(cases, "pocketnet-nfbs", tmp_path / "a", folds=5)
    missing = TrainingCase(cases[1].volume_node, cases[1].segmentation_node, "Tumor")
    with pytest.raises(DatasetError, match=r"case head1: .*no segment 'Tumor'"):
        logic.prepare([cases[0], missing, cases[2]], "pocketnet-nfbs", tmp_path / "b", folds=2)
    empty = phantom_case(context, "blank", empty=True)
    with pytest.raises(DatasetError, match=r"case blank: segment 'Brain' is empty"):
        logic.prepare([cases[0], empty, cases[2]], "pocketnet-nfbs", tmp_path / "c", folds=2)
    prepared = logic.prepare(cases, "pocketnet-lits", tmp_path / "d", folds=2)
    assert any("expects CT" in warning for warning in prepared.warnings)
    assert not (tmp_path / "d").exists()  # nothing written before the run starts
    for bad_name in ("../outside", str(tmp_path / "abs"), "a/b"):  # a model name names a catalog folder
        with pytest.raises(BundleError, match="a model name is one folder name"):
            logic.prepare(cases, "pocketnet-nfbs", tmp_path / "e", folds=2, model_name=bad_name)
    assert not (tmp_path / "e").exists() and not (tmp_path / "abs").exists()


# --- the module's files -----------------------------------------------------------------------


def test_module_ui_and_files():
    ui = REPO_ROOT / "Resources" / "UI" / "PocketSegTrain.ui"
    root = ElementTree.parse(ui).getroot()
    classes = {w.get("class") for w in root.iter("widget")} | {w.get("class") for w in root.iter("layout")}
    allowed = re.compile(r"^(Q[A-Z]\w*|ctk[A-Z]\w*|qMRML\w+|qSlicer\w+)$")
    assert all(allowed.match(c or "") for c in classes), classes
    names = {w.get("name") for w in root.iter("widget")}
    source = (REPO_ROOT / "PocketSegTrain" / "PocketSegTrain.py").read_text(encoding="utf-8")
    for used in set(re.findall(r"self\.ui\.(\w+)", source)):
        assert used in names, f"PocketSegTrain.py uses ui.{used}, which the .ui file lacks"
    icon = REPO_ROOT / "Resources" / "Icons" / "PocketSegTrain.png"
    assert icon.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for path in (REPO_ROOT / "PocketSegTrain").rglob("*.py"):
        compile(path.read_text(encoding="utf-8"), str(path), "exec")
    assert "slicerMacroBuildScriptedModule" in (REPO_ROOT / "PocketSegTrain" / "CMakeLists.txt").read_text(
        encoding="utf-8"
    )
