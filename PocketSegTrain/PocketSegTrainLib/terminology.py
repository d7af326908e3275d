"""A segment's look (name, colour, SNOMED-CT codes) <-> a model bundle's label.

The learned segment's look travels into the trained bundle (``labels[0]``), so PocketSeg shows
the trained model's results like the manual segment, and into the out-of-fold prediction nodes.
"""

from __future__ import annotations

from typing import Any

import slicer

from pocketseg_core.anatomy import anatomy_table, code_dict, code_triplet


def _code(code_object: Any) -> dict[str, str] | None:
    """A ``vtkSlicerTerminologyCategory`` / ``Type`` -> a DICOM code dict (``None`` when empty)."""
    code = (
        code_object.GetCodingSchemeDesignator() or "",
        code_object.GetCodeValue() or "",
        code_object.GetCodeMeaning() or "",
    )
    return code_dict(code) if any(code) else None


def terminology_codes(terminology_entry: str) -> dict[str, dict[str, str]]:
    """Slicer's serialised terminology -> ``{"category": {...}, "type": {...}}`` (empty parts left out).

    Parsed by the Terminologies module logic (``DeserializeTerminologyEntry``), not by hand.
    """
    entry = slicer.vtkSlicerTerminologyEntry()
    if not terminology_entry or not slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(
        terminology_entry, entry
    ):
        return {}
    codes: dict[str, dict[str, str]] = {}
    for key, code_object in (("category", entry.GetCategoryObject()), ("type", entry.GetTypeObject())):
        code = _code(code_object)
        if code is not None:
            codes[key] = code
    return codes


def label_from_segment(segment: Any, value: int = 1) -> dict[str, Any]:
    """A bundle label dict (``value, name, color, terminology``) describing a ``vtkSegment``."""
    label: dict[str, Any] = {
        "value": int(value),
        "name": segment.GetName(),
        "color": [float(c) for c in segment.GetColor()],
    }
    codes = terminology_codes(segment.GetTerminology())
    if "type" in codes:
        label["terminology"] = codes
    return label


def copy_segment_look(source: Any, target: Any) -> None:
    """Give ``target`` (a ``vtkSegment``) the name, colour and terminology of ``source``."""
    target.SetName(source.GetName())
    target.SetColor(*source.GetColor())
    if source.GetTerminology():
        target.SetTerminology(source.GetTerminology())


def task_of_label(label: dict[str, Any]) -> str | None:
    """The PocketSeg task whose structure (anatomy table) has the label's type code, or None."""
    scheme, code, _ = code_triplet(label.get("terminology", {}).get("type"))
    structure = anatomy_table().for_type_code(code, scheme) if code else None
    return structure.task if structure is not None else None
