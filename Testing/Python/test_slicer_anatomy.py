"""The anatomy table inside Slicer, on real ``slicer-core``: a segment PocketSeg creates carries
the table's name, colour and SNOMED-CT codes through Slicer's terminology classes, survives a
.seg.nrrd round trip, and PocketSegTrain reads the same codes (and task) back from it."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("slicer", reason="slicer-core is not installed")

import slicer  # noqa: E402
from conftest import REPO_ROOT  # noqa: E402

sys.path[:0] = [str(REPO_ROOT / "PocketSeg"), str(REPO_ROOT / "PocketSegTrain")]

from PocketSegLib import create_headless_context  # noqa: E402
from PocketSegLib.segmentation import (  # noqa: E402
    describe_label,
    segment_array_on_volume,
    write_mask_to_segmentation,
)
from PocketSegLib.volume_io import volume_node_from_image  # noqa: E402
from PocketSegTrainLib.terminology import label_from_segment, task_of_label, terminology_codes  # noqa: E402

from pocketseg_core.anatomy import anatomy_table, structure_for_task  # noqa: E402
from pocketseg_core.bundles import LabelInfo, standard_label  # noqa: E402


def oblique_volume_and_mask(context):
    """A small anisotropic, rotated volume and a box mask on its grid."""
    image = sitk.GetImageFromArray(np.arange(6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8))
    image.SetSpacing((0.9, 1.1, 2.5))
    image.SetOrigin((-12.0, 30.5, 4.0))
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    image.SetDirection(tuple(rotation.ravel()))
    mask_array = np.zeros((6, 7, 8), dtype=np.uint8)
    mask_array[1:4, 2:6, 3:7] = 1
    mask = sitk.GetImageFromArray(mask_array)
    mask.CopyInformation(image)
    volume = volume_node_from_image(context.scene, image, "head")
    return volume, mask, mask_array


@pytest.mark.parametrize("task", ["skullstrip", "liver"])
def test_created_segment_carries_the_tables_codes_and_colour(task, tmp_path):
    context = create_headless_context()
    volume, mask, mask_array = oblique_volume_and_mask(context)
    structure = structure_for_task(task)
    description = describe_label(standard_label(task), task)
    node = write_mask_to_segmentation(context, volume, mask, description)

    segment = node.GetSegmentation().GetNthSegment(0)
    assert node.GetName() == f"head {structure.segment_name.lower()}"
    assert segment.GetName() == structure.segment_name
    assert segment.GetColor() == pytest.approx(structure.color)
    # Slicer's own parser reads the codes the table holds
    entry = slicer.vtkSlicerTerminologyEntry()
    assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(
        segment.GetTerminology(), entry
    )
    assert entry.GetTerminologyContextName() == anatomy_table().terminology_context
    assert entry.GetRegionContextName() == anatomy_table().region_context
    for code_object, code in (
        (entry.GetCategoryObject(), structure.category),
        (entry.GetTypeObject(), structure.type),
    ):
        assert (
            code_object.GetCodingSchemeDesignator(),
            code_object.GetCodeValue(),
            code_object.GetCodeMeaning(),
        ) == code
    assert np.array_equal(segment_array_on_volume(node, structure.segment_name, volume), mask_array)

    # Slicer's storage keeps it all: save the segmentation, load it into a fresh scene
    path = tmp_path / f"{task}.seg.nrrd"
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(path))
    assert storage.WriteData(node)
    loaded = create_headless_context().segmentations_logic.LoadSegmentationFromFile(str(path), False)
    loaded_segment = loaded.GetSegmentation().GetNthSegment(0)
    assert loaded_segment.GetName() == structure.segment_name
    assert loaded_segment.GetColor() == pytest.approx(structure.color, abs=1e-6)
    assert terminology_codes(loaded_segment.GetTerminology()) == structure.terminology

    # PocketSegTrain reads the segment back into the bundle label the table describes
    label = label_from_segment(loaded_segment)
    assert label["name"] == structure.segment_name
    assert label["terminology"] == structure.terminology
    assert label["color"] == pytest.approx(list(structure.color), abs=1e-6)
    assert task_of_label(label) == task


def test_a_label_outside_the_table_keeps_its_own_codes_and_colour():
    context = create_headless_context()
    volume, mask, _ = oblique_volume_and_mask(context)
    spleen = LabelInfo(
        1,
        "spleen",
        (0.5, 0.25, 0.75),
        {
            "category": {
                "CodingSchemeDesignator": "SCT",
                "CodeValue": "91723000",
                "CodeMeaning": "Anatomical Structure",
            },
            "type": {"CodingSchemeDesignator": "SCT", "CodeValue": "78961009", "CodeMeaning": "Spleen"},
        },
    )
    node = write_mask_to_segmentation(context, volume, mask, describe_label(spleen))
    segment = node.GetSegmentation().GetNthSegment(0)
    assert segment.GetName() == "Spleen"
    assert segment.GetColor() == pytest.approx((0.5, 0.25, 0.75))
    assert terminology_codes(segment.GetTerminology()) == spleen.terminology
    assert task_of_label(label_from_segment(segment)) is None


def test_an_uncoded_segment_reads_as_no_codes():
    assert terminology_codes("") == {}
    assert terminology_codes("not a terminology") == {}
    segment = slicer.vtkSegment()
    segment.SetName("Tumour")
    label = label_from_segment(segment)
    # a bare vtkSegment carries Slicer's default "Tissue" terminology
    assert label["terminology"]["type"]["CodeMeaning"] == "Tissue"
    assert task_of_label(label) is None
