"""The learning curves of a run as a plot chart node: training loss and validation Dice per epoch.

A table node holds the run's ``training_log.csv`` reshaped to one row per epoch and, per fold,
the columns ``fold K train_loss`` and ``fold K val_dice`` (NaN after a fold's early stop); one
``vtkMRMLPlotSeriesNode`` per fold per quantity draws them in one ``vtkMRMLPlotChartNode``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import vtk
from PocketSegLib.scene_context import SlicerContext

from pocketseg_core.errors import PocketSegError

#: log column -> what the series is called in the chart
QUANTITIES: dict[str, str] = {"train_loss": "loss", "val_dice": "validation Dice"}
EPOCH_COLUMN = "epoch"


def read_training_log(path: str | Path) -> dict[int, dict[int, dict[str, float]]]:
    """``training_log.csv`` -> ``{fold: {epoch: {column: value}}}``."""
    path = Path(path)
    if not path.is_file():
        raise PocketSegError(f"the run has no training log ({path})")
    curves: dict[int, dict[int, dict[str, float]]] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            fold, epoch = int(row["fold"]), int(row["epoch"])
            curves.setdefault(fold, {})[epoch] = {key: float(row[key]) for key in QUANTITIES}
    return curves


def series_column(fold: int, quantity: str) -> str:
    return f"fold {fold} {quantity}"


def learning_curves_chart(context: SlicerContext, log_path: str | Path, name: str) -> tuple[Any, Any]:
    """Add the table node and the plot chart node of the curves; returns ``(chart, table)``."""
    curves = read_training_log(log_path)
    if not curves:
        raise PocketSegError(f"the training log {log_path} is empty")
    epochs = sorted({epoch for fold in curves.values() for epoch in fold})
    epoch_column = vtk.vtkDoubleArray()
    epoch_column.SetName(EPOCH_COLUMN)
    for epoch in epochs:
        epoch_column.InsertNextValue(float(epoch))
    columns = []
    for fold in sorted(curves):
        for quantity in QUANTITIES:
            column = vtk.vtkDoubleArray()
            column.SetName(series_column(fold, quantity))
            for epoch in epochs:
                column.InsertNextValue(curves[fold].get(epoch, {}).get(quantity, math.nan))
            columns.append((fold, quantity, column))
    scene = context.scene
    table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} table")
    table_node.AddColumn(epoch_column)
    for _, _, column in columns:
        table_node.AddColumn(column)
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart.SetTitle(name)
    chart.SetXAxisTitle("epoch")
    chart.SetYAxisTitle("loss / validation Dice")
    for fold, quantity, column in columns:
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name} {column.GetName()}")
        series.SetAndObserveTableNodeID(table_node.GetID())
        series.SetXColumnName(EPOCH_COLUMN)
        series.SetYColumnName(column.GetName())
        series.SetPlotType(slicer_plot_type_scatter())
        series.SetMarkerStyle(series.MarkerStyleCircle)
        series.SetLineStyle(series.LineStyleSolid if quantity == "train_loss" else series.LineStyleDash)
        series.SetAttribute("PocketSegTrain.Fold", str(fold))
        series.SetAttribute("PocketSegTrain.Quantity", quantity)
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart, table_node


def slicer_plot_type_scatter() -> int:
    """Lines through the points (Slicer's "scatter" plot type draws line + markers)."""
    import slicer

    return slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter
