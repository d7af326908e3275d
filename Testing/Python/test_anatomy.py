"""The anatomy table (``pocketseg_core/anatomy.json``): one source for each task's segment name,
colour, modality and SNOMED-CT codes, read by bundles and training presets (the Slicer side is
checked in ``test_slicer_anatomy.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from pocketseg_core.anatomy import ANATOMY_FILE, anatomy_table, parse_table, structure_for_task
from pocketseg_core.bundles import SHIPPED_CATALOG, read_config, standard_label
from pocketseg_core.errors import BundleError, PocketSegError
from pocketseg_core.training.presets import PRESETS, config_from_preset


def test_table_holds_the_two_tasks_with_their_snomed_codes_and_slicer_colours():
    brain = structure_for_task("skullstrip")
    assert (brain.segment_name, brain.modality) == ("Brain", "MR")
    assert brain.type == ("SCT", "12738006", "Brain")
    assert brain.category == ("SCT", "123037004", "Anatomical Structure")
    # Slicer's GenericAnatomyColors / General Anatomy terminology: brain 250 250 225
    assert brain.color_rgb255 == (250, 250, 225)
    assert brain.color == pytest.approx((250 / 255, 250 / 255, 225 / 255))
    liver = structure_for_task("liver")
    assert (liver.segment_name, liver.modality) == ("Liver", "CT")
    assert liver.type == ("SCT", "10200004", "Liver")
    assert liver.category == brain.category
    assert liver.color_rgb255 == (221, 130, 101)
    table = anatomy_table()
    assert table.terminology_context == "Segmentation category and type - 3D Slicer General Anatomy list"
    assert table.categories == {"anatomical structure": ("SCT", "123037004", "Anatomical Structure")}
    assert table.for_type_code("10200004") is liver
    assert table.for_type_code("10200004", scheme="99XYZ") is None
    assert table.for_name(" brain ") is brain
    assert table.for_name("spleen") is None


def test_unknown_task_is_a_clear_error():
    with pytest.raises(PocketSegError, match="unknown task 'spleen'; known tasks: skullstrip, liver"):
        structure_for_task("spleen")
    with pytest.raises(BundleError, match="unknown task 'spleen'"):
        standard_label("spleen")


def test_bundle_labels_and_presets_read_the_table():
    for task in ("skullstrip", "liver"):
        structure = structure_for_task(task)
        label = standard_label(task)
        assert label.to_dict() == structure.label(1)
        assert label.terminology["type"] == {
            "CodingSchemeDesignator": "SCT",
            "CodeValue": structure.type[1],
            "CodeMeaning": structure.segment_name,
        }
    # every preset of a task carries that task's label: the brain colour of the presets is the bundles' one
    for name, preset in PRESETS.items():
        config = config_from_preset(name)
        assert config.labels == [standard_label(preset["task"]).to_dict()], name
        assert config.modality == structure_for_task(preset["task"]).modality, name


def test_shipped_bundles_label_their_structure_as_the_table_does():
    folders = sorted(path.parent for path in SHIPPED_CATALOG.parent.glob("*/bundle.json"))
    assert [folder.name for folder in folders] == [
        "liver",
        "lvnet-liver",
        "skullstrip",
        "skullstrip-ensemble",
    ]
    for folder in folders:
        config = read_config(folder)
        structure = structure_for_task(config.task)
        assert config.modality == structure.modality
        assert [label.to_dict() for label in config.labels] == [structure.label(1)]


def test_snomed_codes_of_the_tasks_are_written_once_outside_tests():
    """Outside Testing/ and the bundles (which carry their labels as data), only anatomy.json
    holds the type codes of brain and liver and the category code."""
    holders: dict[str, list[str]] = {}
    skipped = {"Testing", "out", "build", "node_modules", "__pycache__"}
    for folder, subfolders, files in os.walk(REPO_ROOT):
        subfolders[:] = [d for d in subfolders if d not in skipped and not d.startswith(".")]
        for name in files:
            path = Path(folder) / name
            relative = path.relative_to(REPO_ROOT)
            if path.suffix not in {".py", ".json", ".md", ".toml", ".txt", ".cfg", ".yaml", ".yml"} or (
                relative.parts[:2] == ("pocketseg_core", "models") and name == "bundle.json"
            ):
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            for code in ("12738006", "10200004", "123037004"):
                if code in text:
                    holders.setdefault(code, []).append(relative.as_posix())
    assert holders == {
        code: ["pocketseg_core/anatomy.json"] for code in ("12738006", "10200004", "123037004")
    }


def test_table_reads_without_torch():
    """The Slicer modules read the table before torch is installed."""
    code = (
        "import sys; from pocketseg_core.anatomy import structure_for_task; "
        "print(structure_for_task('liver').segment_name, 'torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True, timeout=60
    )
    assert result.stdout.split() == ["Liver", "False"]


def test_malformed_table_is_a_clear_error():
    data = json.loads(ANATOMY_FILE.read_text(encoding="utf-8"))
    parse_table(data)  # the shipped table parses
    bad_code = json.loads(json.dumps(data))
    bad_code["tasks"]["liver"]["type"] = ["SCT", "10200004"]
    with pytest.raises(PocketSegError, match=r"tasks\.liver\.type must be \[scheme, value, meaning\]"):
        parse_table(bad_code, "anatomy.json")
    bad_category = json.loads(json.dumps(data))
    bad_category["tasks"]["skullstrip"]["category"] = "tissue"
    with pytest.raises(PocketSegError, match="category 'tissue' is not one of"):
        parse_table(bad_category, "anatomy.json")
    bad_colour = json.loads(json.dumps(data))
    bad_colour["tasks"]["skullstrip"]["color_rgb255"] = [250, 250, 300]
    with pytest.raises(PocketSegError, match="color_rgb255 must be three integers in 0-255"):
        parse_table(bad_colour, "anatomy.json")
    missing = json.loads(json.dumps(data))
    del missing["tasks"]["skullstrip"]["segment_name"]
    with pytest.raises(PocketSegError, match="anatomy.json is malformed .KeyError: 'segment_name'"):
        parse_table(missing, "anatomy.json")
