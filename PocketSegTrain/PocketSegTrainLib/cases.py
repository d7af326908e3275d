"""Training cases: a volume node + a segmentation node + the segment to learn.

:func:`collect_case` copies a case out of the scene on the main thread (the volume's voxels
with its exact geometry, and the segment exported onto the volume's grid: a segmentation drawn
on another grid is resampled to the volume with nearest neighbour); :func:`export_cases` writes
the copies to a run folder (any thread, no MRML) as ``<case>.nrrd`` + ``<case>_label.nrrd`` and a
``cases.csv`` (``image,label,subject``) that ``pocketseg_core.training.datasets`` reads. NRRD
keeps the geometry in double precision (NIfTI stores it as float32).
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from PocketSegLib import segmentation, volume_io

from pocketseg_core.errors import DatasetError, PocketSegError

CASES_CSV = "cases.csv"


@dataclass
class TrainingCase:
    """One case in the scene. ``segment`` is a segment ID or name.

    ``name`` defaults to the volume's name; ``subject`` (default: the name) groups cases that must
    stay in one fold (e.g. a mirrored copy with its original).
    """

    volume_node: Any
    segmentation_node: Any
    segment: str
    name: str | None = None
    subject: str | None = None

    @property
    def case_name(self) -> str:
        if self.name:
            return self.name
        return self.volume_node.GetName() if self.volume_node is not None else "(no volume)"


@dataclass
class CaseData:
    """A case copied out of the scene: image and binary label (uint8) on the volume's grid (LPS)."""

    case: TrainingCase
    case_id: str  # file-name-safe, unique within the run
    subject: str
    image: sitk.Image
    label: sitk.Image
    segment_id: str

    @property
    def label_array(self) -> np.ndarray:
        return sitk.GetArrayViewFromImage(self.label)


def safe_name(name: str) -> str:
    """A file-name-safe version of a node name (what ``datasets.Case.case_id`` keeps)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name.strip()) or "case"


def unique_case_ids(names: list[str]) -> list[str]:
    """File-name-safe ids, made unique with a ``_2``, ``_3``... suffix where names repeat."""
    ids, seen = [], set()
    for name in names:
        base = candidate = safe_name(name)
        number = 2
        while candidate.lower() in seen:
            candidate, number = f"{base}_{number}", number + 1
        seen.add(candidate.lower())
        ids.append(candidate)
    return ids


def collect_case(case: TrainingCase, case_id: str) -> CaseData:
    """Copy ``case`` out of the scene (main thread). Errors name the case and what to do."""
    name = case.case_name
    if case.volume_node is None:
        raise DatasetError(f"case {name}: no volume selected; pick the image of this case")
    if case.segmentation_node is None:
        raise DatasetError(
            f"case {name}: no segmentation selected; pick the manual segmentation of this case"
        )
    if not case.segment:
        raise DatasetError(f"case {name}: no segment selected; pick the segment to learn")
    try:
        segment_id = segmentation.segment_id_by_name_or_id(case.segmentation_node, case.segment)
    except PocketSegError as error:
        raise DatasetError(f"case {name}: {error}; pick a segment this case has") from error
    try:
        image = volume_io.image_from_volume_node(case.volume_node)
    except PocketSegError as error:
        raise DatasetError(f"case {name}: {error}") from error
    if (case.volume_node.GetTransformNodeID() or None) != (
        case.segmentation_node.GetTransformNodeID() or None
    ):
        raise DatasetError(
            f"case {name}: the volume and the segmentation are under different transforms; "
            f"harden or remove the transforms first"
        )
    # the segment on exactly the volume's grid (nearest-neighbour resampling when drawn elsewhere)
    label = segmentation.segment_image_on_volume(case.segmentation_node, segment_id, case.volume_node)
    label = sitk.Cast(label, sitk.sitkUInt8)
    label.CopyInformation(image)
    return CaseData(case, case_id, case.subject or case.case_name, image, label, segment_id)


def collect_cases(cases: list[TrainingCase]) -> list[CaseData]:
    """:func:`collect_case` for every case, with unique file ids."""
    ids = unique_case_ids([case.case_name for case in cases])
    return [collect_case(case, case_id) for case, case_id in zip(cases, ids, strict=True)]


def _write_image(image: sitk.Image, path: Path) -> None:
    from pocketseg_core.io import write_image

    write_image(image, path)


def export_cases(data: list[CaseData], folder: str | os.PathLike) -> Path:
    """Write every case as ``<id>.nrrd`` + ``<id>_label.nrrd`` and the ``cases.csv``; returns the CSV.

    Any thread (no MRML). Files are written atomically (``pocketseg_core.io.write_image``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "label", "subject"])
    for item in data:
        image_name, label_name = f"{item.case_id}.nrrd", f"{item.case_id}_label.nrrd"
        _write_image(item.image, folder / image_name)
        _write_image(item.label, folder / label_name)
        writer.writerow([image_name, label_name, item.subject])
    csv_path = folder / CASES_CSV
    from pocketseg_core.io import write_text_atomic

    write_text_atomic(csv_path, buffer.getvalue())
    return csv_path
