"""`pocketseg demo` (the main job of `make demo`): the zoo table, then each installed model on a sample."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk
from tiny_bundles import make_phantom, make_tiny_bundle

from pocketseg_core import bundles
from pocketseg_core.bundles import register_bundle
from pocketseg_core.cli import main


def test_demo_prints_the_zoo_and_segments_the_installed_tasks(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("POCKETSEG_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # never the user's cache
    empty = tmp_path / "catalog.json"
    empty.write_text(json.dumps({"bundles": []}), encoding="utf-8")
    monkeypatch.setattr(bundles, "SHIPPED_CATALOG", empty)
    register_bundle(make_tiny_bundle(tmp_path / "tiny", task="skullstrip", modality="MR"))
    data = tmp_path / "data"
    (data / "brain").mkdir(parents=True)
    image, label = make_phantom("MR", size=(40, 44, 36), spacing=(3.0, 3.0, 3.0))
    sitk.WriteImage(sitk.Cast(image, sitk.sitkInt16), str(data / "brain" / "swiss_atlas_t1.mha"))
    output = tmp_path / "out"

    assert main(["demo", "--data", str(data), "--output", str(output), "--device", "cpu"]) == 0

    printed = capsys.readouterr().out
    assert "pocket_unet3d" in printed and "lvnet" in printed  # the zoo table
    assert "[liver] no model installed for this task yet: skipped" in printed
    mask = sitk.ReadImage(str(output / "skullstrip_mask.nii.gz"))
    assert mask.GetSize() == image.GetSize() and mask.GetSpacing() == image.GetSpacing()
    predicted = sitk.GetArrayFromImage(mask) > 0
    truth = sitk.GetArrayFromImage(label) > 0
    assert 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum()) > 0.8
    assert (output / "skullstrip_overlay.png").stat().st_size > 5000
    assert not np.any([p.name.startswith(".") for p in output.iterdir()])  # no temporary files left
