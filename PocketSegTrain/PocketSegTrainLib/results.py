"""A finished run brought back into the scene: out-of-fold predictions and the metrics table.

Each case's out-of-fold mask (``predictions/<case>.nii.gz`` of the run, on the exported image's
grid) becomes a segmentation node "<case> <network> CV" next to the manual one, with the learned
segment's name, colour and terminology. The metrics table holds ``pocketseg_core.metrics`` of the
prediction node exported onto the volume's grid against the exported manual label, so its numbers
are those of ``pocketseg evaluate`` on the same two masks.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import vtk
from PocketSegLib import segmentation
from PocketSegLib.scene_context import SlicerContext

from pocketseg_core.errors import PocketSegError
from pocketseg_core.geometry import grid_tolerance_mm
from pocketseg_core.metrics import METRIC_NAMES, compute_metrics
from pocketseg_core.training.report import summarize
from PocketSegTrainLib.cases import CaseData
from PocketSegTrainLib.terminology import copy_segment_look

CASE_COLUMN = "Case"
MEAN_ROW, STD_ROW = "mean", "std"


def prediction_on_case_grid(prediction: sitk.Image, item: CaseData) -> sitk.Image:
    """The run's prediction as a uint8 mask on exactly the case image's grid.

    The run writes it on that grid already (float32 header precision): the header is then copied
    exactly; a prediction on another grid is resampled with nearest neighbour.
    """
    reference = item.image
    same_size = prediction.GetSize() == reference.GetSize()
    corner = np.array(prediction.GetOrigin()) - np.array(reference.GetOrigin())
    far = [s - 1 for s in reference.GetSize()]
    far_distance = np.array(prediction.TransformContinuousIndexToPhysicalPoint(far)) - np.array(
        reference.TransformContinuousIndexToPhysicalPoint(far)
    )
    if same_size and max(np.abs(corner).max(), np.abs(far_distance).max()) < grid_tolerance_mm(
        reference.GetSpacing()
    ):
        mask = sitk.Cast(prediction > 0, sitk.sitkUInt8)
        mask.CopyInformation(reference)
        return mask
    resampled = sitk.Resample(prediction, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.Cast(resampled > 0, sitk.sitkUInt8)


def prediction_node_name(item: CaseData, network: str) -> str:
    return f"{item.case.case_name} {network} CV"


def add_prediction_node(context: SlicerContext, item: CaseData, mask: sitk.Image, network: str) -> Any:
    """A segmentation node with the case's out-of-fold mask, looking like the manual segment."""
    case = item.case
    manual_segment = case.segmentation_node.GetSegmentation().GetSegment(item.segment_id)
    description = segmentation.SegmentDescription(
        manual_segment.GetName(), tuple(manual_segment.GetColor()), ("", "", manual_segment.GetName())
    )
    node = segmentation.write_labels_to_segmentation(
        context, case.volume_node, mask, [(1, description)], name=prediction_node_name(item, network)
    )
    copy_segment_look(manual_segment, node.GetSegmentation().GetNthSegment(0))
    # next to the manual segmentation (same patient/study), where the user compares the two
    segmentation.place_next_to(context, node, case.segmentation_node)
    node.SetAttribute("PocketSegTrain.Case", item.case_id)
    return node


def case_metrics(item: CaseData, prediction_node: Any) -> dict[str, float]:
    """The eight metrics of the prediction node (exported on the volume's grid) vs the manual label."""
    exported = segmentation.segment_image_on_volume(
        prediction_node, prediction_node.GetSegmentation().GetNthSegmentID(0), item.case.volume_node
    )
    return compute_metrics(item.label, exported, label=1, allow_absent=True)


def metrics_table(context: SlicerContext, rows: list[tuple[str, dict[str, float]]], name: str) -> Any:
    """A table node: one row per case (column "Case" + the eight metrics), then mean and std rows.

    The std is the population standard deviation, as in the run's ``summary.json``.
    """
    if not rows:
        raise PocketSegError("no case metrics to put into a table")
    summary = summarize([metrics for _, metrics in rows])
    all_rows = list(rows) + [
        (MEAN_ROW, {key: summary[key]["mean"] for key in METRIC_NAMES}),
        (STD_ROW, {key: summary[key]["std"] for key in METRIC_NAMES}),
    ]
    case_column = vtk.vtkStringArray()
    case_column.SetName(CASE_COLUMN)
    columns = {key: vtk.vtkDoubleArray() for key in METRIC_NAMES}
    for key, column in columns.items():
        column.SetName(key)
    for case_name, metrics in all_rows:
        case_column.InsertNextValue(case_name)
        for key in METRIC_NAMES:
            value = metrics.get(key)
            columns[key].InsertNextValue(math.nan if value is None else float(value))
    table_node = context.scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table_node.AddColumn(case_column)
    for column in columns.values():
        table_node.AddColumn(column)
    table_node.SetUseColumnTitleAsColumnHeader(True)
    return table_node


def table_rows(table_node: Any) -> dict[str, dict[str, float]]:
    """Read a metrics table back: ``{case or "mean"/"std": {metric: value}}``."""
    table = table_node.GetTable()
    cases = table.GetColumnByName(CASE_COLUMN)
    if cases is None:
        raise PocketSegError(f"table '{table_node.GetName()}' is not a PocketSegTrain metrics table")
    result = {}
    for row in range(table.GetNumberOfRows()):
        result[cases.GetValue(row)] = {
            key: float(table.GetColumnByName(key).GetValue(row)) for key in METRIC_NAMES
        }
    return result


def read_prediction(run_dir: Path, item: CaseData) -> sitk.Image:
    path = Path(run_dir) / "predictions" / f"{item.case_id}.nii.gz"
    if not path.is_file():
        raise PocketSegError(f"the run has no out-of-fold prediction for case {item.case.case_name} ({path})")
    return sitk.ReadImage(str(path))
