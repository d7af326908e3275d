"""Same masks, voxel for voxel: the shipped models on the real heads and CTs of ../shared/data.

``Testing/Python/data/reference_masks.json`` holds, per real image and inference variant, the
sha256 of the mask that ``scripts/record_reference_masks.py`` recorded (CPU, one thread) before
the inference code was restructured; each test recomputes it with this checkout's code. A change
to inference, preprocessing or clean-up that moves a single voxel fails here.

By default a representative subset runs (one full head at 1 mm and one at 2 mm, a NIfTI CT and a
DICOM CT, default and raw masks: about 10 s on one core); ``POCKETSEG_REFERENCE_MASKS=all``
runs every recorded case (all real heads and CTs, TTA, other windows: about 80 s). A case whose
shipped model has another version or weights than the recorded one is skipped with a message
(record it again, on purpose, with the script). Without ../shared/data every case is skipped.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, shared_file

from pocketseg_core.bundles import load_bundle

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from record_reference_masks import REFERENCE_FILE, model_identity, segment_case  # noqa: E402

RUN_ALL = os.environ.get("POCKETSEG_REFERENCE_MASKS", "").strip().lower() == "all"
RECORDED = json.loads(REFERENCE_FILE.read_text(encoding="utf-8"))["cases"]
SELECTED = [entry for entry in RECORDED if RUN_ALL or entry["quick"]]


@pytest.fixture(autouse=True)
def shipped_models_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty user catalog, so each task resolves to the model shipped in the package."""
    monkeypatch.setenv("POCKETSEG_MODELS_DIR", str(tmp_path / "user-models"))


def test_reference_file_covers_every_real_image_of_both_tasks() -> None:
    images = {(entry["task"], entry["image"]) for entry in RECORDED if entry["variant"] == "default"}
    assert sum(task == "skullstrip" for task, _ in images) == 8  # every full head, unlabelled ones too
    assert sum(task == "liver" for task, _ in images) == 6  # every CT, the two DICOM series too
    assert {entry["variant"] for entry in RECORDED} == {
        "default",
        "raw",
        "window",
        "tta",
        "fill_holes",
        "probabilities",
    }
    assert all(len(entry["sha256"]) == 64 and entry["foreground_voxels"] > 0 for entry in RECORDED)


@pytest.mark.parametrize(
    "entry",
    SELECTED,
    ids=[f"{e['task']}-{Path(e['image']).name.split('.')[0]}-{e['variant']}" for e in SELECTED],
)
def test_mask_is_the_recorded_one(entry: dict, shared_data: Path) -> None:
    shared_file(shared_data, entry["image"])
    bundle = load_bundle(entry["task"])
    recorded_model = {key: entry[key] for key in ("model", "version", "weights_sha256")}
    if model_identity(bundle) != recorded_model:
        pytest.skip(
            f"the shipped {entry['task']} model is now {model_identity(bundle)['version']}, the reference was "
            f"recorded with {entry['version']}: run scripts/record_reference_masks.py to record it again"
        )
    now = segment_case(entry["task"], entry["image"], entry["variant"], shared_data)
    assert now.size_xyz == entry["size_xyz"]
    assert now.foreground_voxels == entry["foreground_voxels"], "a different number of mask voxels"
    assert now.sha256 == entry["sha256"], "same voxel count, but other voxels"
    assert now.probabilities_sha256 == entry["probabilities_sha256"]
