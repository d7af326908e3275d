"""Compare two segments: a table node with the eight metrics of ``pocketseg_core.metrics``.

Both segments are resampled onto one voxel grid (a volume's: the one given, else the
reference segmentation's reference volume) and handed to
:func:`pocketseg_core.metrics.compute_metrics`, so the numbers are exactly those of
``pocketseg evaluate`` on the same two masks.
"""

from __future__ import annotations

from typing import Any

import slicer
import vtk

from pocketseg_core.errors import PocketSegError
from pocketseg_core.metrics import METRIC_NAMES, compute_metrics
from PocketSegLib.scene_context import SlicerContext
from PocketSegLib.segmentation import place_next_to, segment_id_by_name_or_id, segment_image_on_volume

#: metric key -> (name shown in the table, unit)
METRIC_DISPLAY: dict[str, tuple[str, str]] = {
    "dice": ("Dice", ""),
    "hd_max": ("Hausdorff distance (max)", "mm"),
    "hd_mean": ("Hausdorff distance (mean)", "mm"),
    "hd95": ("Hausdorff distance (95th percentile)", "mm"),
    "voe": ("Volume overlap error", ""),
    "rvd": ("Relative volume difference", ""),
    "assd": ("Average symmetric surface distance", "mm"),
    "mssd": ("Maximum symmetric surface distance", "mm"),
}
COLUMN_METRIC, COLUMN_VALUE, COLUMN_UNIT, COLUMN_KEY = "Metric", "Value", "Unit", "Key"


def comparison_grid_volume(reference_node: Any, computed_node: Any, volume_node: Any | None) -> Any:
    """The volume whose grid the comparison uses: the given one, else a segmentation's reference."""
    if volume_node is not None:
        return volume_node
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    for node in (reference_node, computed_node):
        reference_volume = node.GetNodeReference(role)
        if reference_volume is not None:
            return reference_volume
    raise PocketSegError(
        "neither segmentation knows the volume it was drawn on: pick the volume to compare on"
    )


def compute_segment_metrics(
    reference_node: Any,
    reference_segment: str,
    computed_node: Any,
    computed_segment: str,
    volume_node: Any | None = None,
) -> dict[str, float]:
    """The eight metrics (keys of ``METRIC_NAMES``) of the computed segment against the reference."""
    grid = comparison_grid_volume(reference_node, computed_node, volume_node)
    reference = segment_image_on_volume(reference_node, reference_segment, grid)
    computed = segment_image_on_volume(computed_node, computed_segment, grid)
    return compute_metrics(reference, computed, label=1)


def metrics_table(
    context: SlicerContext,
    metrics: dict[str, float],
    name: str,
    table_node: Any | None = None,
) -> Any:
    """Write ``metrics`` into a table node (one row per metric); a new node unless one is given."""
    metric_column, value_column = vtk.vtkStringArray(), vtk.vtkDoubleArray()
    unit_column, key_column = vtk.vtkStringArray(), vtk.vtkStringArray()
    for column, title in (
        (metric_column, COLUMN_METRIC),
        (value_column, COLUMN_VALUE),
        (unit_column, COLUMN_UNIT),
        (key_column, COLUMN_KEY),
    ):
        column.SetName(title)
    for key in METRIC_NAMES:
        display, unit = METRIC_DISPLAY.get(key, (key, ""))
        metric_column.InsertNextValue(display)
        value_column.InsertNextValue(float(metrics[key]))
        unit_column.InsertNextValue(unit)
        key_column.InsertNextValue(key)
    if table_node is None:
        table_node = context.scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    else:
        table_node.RemoveAllColumns()
    for column in (metric_column, value_column, unit_column, key_column):
        table_node.AddColumn(column)
    table_node.SetUseColumnTitleAsColumnHeader(True)
    table_node.SetColumnUnitLabel(COLUMN_VALUE, "")
    return table_node


def metrics_from_table(table_node: Any) -> dict[str, float]:
    """Read a comparison table back into ``{metric key: value}``."""
    table = table_node.GetTable()
    keys = table.GetColumnByName(COLUMN_KEY)
    values = table.GetColumnByName(COLUMN_VALUE)
    if keys is None or values is None:
        raise PocketSegError(f"table '{table_node.GetName()}' is not a PocketSeg comparison table")
    return {keys.GetValue(row): float(values.GetValue(row)) for row in range(table.GetNumberOfRows())}


def compare_segments(
    context: SlicerContext,
    reference_node: Any,
    reference_segment: str,
    computed_node: Any,
    computed_segment: str,
    volume_node: Any | None = None,
    table_node: Any | None = None,
) -> Any:
    """Compare two segments and return the table node (added to the scene next to the computed one).

    ``reference_segment`` / ``computed_segment`` are segment IDs or names. The table is added
    only once every metric is computed, so a failure leaves the scene as it was.
    """
    if reference_node is None or computed_node is None:
        raise PocketSegError("pick both a reference segmentation and a computed segmentation to compare")
    reference_id = segment_id_by_name_or_id(reference_node, reference_segment)
    computed_id = segment_id_by_name_or_id(computed_node, computed_segment)
    metrics = compute_segment_metrics(reference_node, reference_id, computed_node, computed_id, volume_node)
    reference_name = reference_node.GetSegmentation().GetSegment(reference_id).GetName()
    computed_name = computed_node.GetSegmentation().GetSegment(computed_id).GetName()
    name = f"{computed_node.GetName()} {computed_name} vs {reference_node.GetName()} {reference_name}"
    table_node = metrics_table(context, metrics, name, table_node)
    table_node.SetAttribute("PocketSeg.Reference", f"{reference_node.GetID()}/{reference_id}")
    table_node.SetAttribute("PocketSeg.Computed", f"{computed_node.GetID()}/{computed_id}")
    place_next_to(context, table_node, computed_node)
    return table_node
