"""The anatomy table: what each PocketSeg task segments and how that structure is shown and coded.

One data file, ``anatomy.json`` next to this module, holds per task the segment's name, its
colour, the image modality and its DICOM category/type codes (SNOMED CT). Bundles, training
presets and both Slicer modules read it from here, so a structure looks and is coded the same
everywhere. This module needs only the standard library (the Slicer modules import it without
torch).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pocketseg_core.errors import PocketSegError

ANATOMY_FILE = Path(__file__).resolve().parent / "anatomy.json"

#: A DICOM coded concept: (coding scheme designator, code value, code meaning), e.g.
#: the type of the brain row: ``("SCT", <its SNOMED CT concept id>, "Brain")``.
CodeTriplet = tuple[str, str, str]


def code_dict(code: CodeTriplet) -> dict[str, str]:
    """A code triplet -> the DICOM-style dict a bundle label stores (``CodingSchemeDesignator, CodeValue, CodeMeaning``)."""
    scheme, value, meaning = code
    return {"CodingSchemeDesignator": scheme, "CodeValue": value, "CodeMeaning": meaning}


def code_triplet(entry: Any, default: CodeTriplet = ("", "", "")) -> CodeTriplet:
    """A bundle label's code dict (or None / empty) -> ``(scheme, value, meaning)``."""
    if not entry:
        return default
    return (
        str(entry.get("CodingSchemeDesignator", "")),
        str(entry.get("CodeValue", "")),
        str(entry.get("CodeMeaning", "")),
    )


@dataclass(frozen=True)
class Structure:
    """One row of the anatomy table: the structure a task's model segments."""

    task: str
    segment_name: str
    modality: str
    color_rgb255: tuple[int, int, int]
    category: CodeTriplet
    type: CodeTriplet

    @property
    def color(self) -> tuple[float, float, float]:
        """The colour as r, g, b in [0, 1] (bundle labels, ``vtkSegment.SetColor``)."""
        return tuple(c / 255 for c in self.color_rgb255)  # type: ignore[return-value]

    @property
    def terminology(self) -> dict[str, dict[str, str]]:
        """A bundle label's ``terminology``: ``{"category": {...}, "type": {...}}``."""
        return {"category": code_dict(self.category), "type": code_dict(self.type)}

    def label(self, value: int = 1) -> dict[str, Any]:
        """A bundle label dict (``value, name, color, terminology``) for this structure."""
        return {
            "value": int(value),
            "name": self.segment_name,
            "color": list(self.color),
            "terminology": self.terminology,
        }


@dataclass(frozen=True)
class AnatomyTable:
    """The parsed ``anatomy.json``: Slicer's terminology and region context names, the
    categories, and one structure per task."""

    terminology_context: str
    region_context: str
    #: category key (e.g. ``"anatomical structure"``) -> its code
    categories: dict[str, CodeTriplet]
    structures: dict[str, Structure]

    def for_task(self, task: str) -> Structure:
        """The structure of ``task``; :class:`PocketSegError` naming the known tasks otherwise."""
        if task not in self.structures:
            raise PocketSegError(f"unknown task {task!r}; known tasks: {', '.join(self.structures)}")
        return self.structures[task]

    def for_type_code(self, code_value: str, scheme: str = "SCT") -> Structure | None:
        """The structure whose type code is ``code_value`` (in ``scheme``), or None."""
        for structure in self.structures.values():
            if structure.type[0] == scheme and structure.type[1] == str(code_value):
                return structure
        return None

    def for_name(self, name: str) -> Structure | None:
        """The structure whose segment is called ``name`` (any case), or None."""
        for structure in self.structures.values():
            if structure.segment_name.lower() == name.strip().lower():
                return structure
        return None


def _triplet(value: Any, where: str) -> CodeTriplet:
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) and v for v in value)):
        raise PocketSegError(f"{where} must be [scheme, value, meaning] (three non-empty strings)")
    return (value[0], value[1], value[2])


def parse_table(data: Any, source: str = "anatomy.json") -> AnatomyTable:
    """Check and parse the table's JSON; :class:`PocketSegError` naming the first bad field."""
    try:
        categories = {
            key: _triplet(v, f"{source}: categories.{key}") for key, v in data["categories"].items()
        }
        structures = {}
        for task, row in data["tasks"].items():
            where = f"{source}: tasks.{task}"
            color = tuple(int(c) for c in row["color_rgb255"])
            if len(color) != 3 or not all(0 <= c <= 255 for c in color):
                raise PocketSegError(f"{where}.color_rgb255 must be three integers in 0-255")
            if row["category"] not in categories:
                raise PocketSegError(
                    f"{where}.category {row['category']!r} is not one of {sorted(categories)}"
                )
            structures[task] = Structure(
                task=task,
                segment_name=str(row["segment_name"]),
                modality=str(row["modality"]),
                color_rgb255=color,  # type: ignore[arg-type]
                category=categories[row["category"]],
                type=_triplet(row["type"], f"{where}.type"),
            )
        return AnatomyTable(
            str(data["terminology_context"]), str(data["region_context"]), categories, structures
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise PocketSegError(
            f"{source} is malformed ({type(error).__name__}: {error}); reinstall PocketSeg"
        ) from None


@functools.cache
def anatomy_table() -> AnatomyTable:
    """The shipped anatomy table (read once)."""
    try:
        data = json.loads(ANATOMY_FILE.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PocketSegError(f"cannot read {ANATOMY_FILE} ({error}); reinstall PocketSeg") from None
    return parse_table(data, str(ANATOMY_FILE))


def structure_for_task(task: str) -> Structure:
    """The structure a task's model segments (``"skullstrip"`` -> Brain, ``"liver"`` -> Liver)."""
    return anatomy_table().for_task(task)
