"""A segment's look (name, colour, SNOMED-CT codes) <-> a model bundle's label.

The learned segment's look travels into the trained bundle (``labels[0]``), so PocketSeg shows
the trained model's results like the manual segment, and into the out-of-fold prediction nodes.
"""

from __future__ import annotations

from typing import Any


def _code(field: str) -> dict[str, str] | None:
    """``"SCT^12738006^Brain"`` -> a DICOM code triplet dict (``None`` when empty)."""
    parts = (field.split("^") + ["", "", ""])[:3]
    if not any(parts):
        return None
    return {"CodingSchemeDesignator": parts[0], "CodeValue": parts[1], "CodeMeaning": parts[2]}


def terminology_codes(terminology_entry: str) -> dict[str, dict[str, str]]:
    """Slicer's serialised terminology (``context~category~type~...``) -> ``{"category", "type"}``."""
    fields = (terminology_entry or "").split("~")
    codes: dict[str, dict[str, str]] = {}
    for key, index in (("category", 1), ("type", 2)):
        code = _code(fields[index]) if len(fields) > index else None
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
