"""The models shipped in the package: catalog entries, checksums, size, and sane masks on real data.

The bundles are trained from their recipes (``pocketseg train --recipe``, ``scripts/train_shipped_models.py``); the real-data checks use
../shared/data and skip without it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_file

from pocketseg_core.bundles import SHIPPED_CATALOG, load_bundle, sha256_of
from pocketseg_core.cli import main
from pocketseg_core.errors import BundleError

TWO_MB = 2 * 1024 * 1024


@pytest.fixture(autouse=True)
def no_user_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty user catalog, so the shipped bundles are the ones resolved by task."""
    monkeypatch.setenv("POCKETSEG_MODELS_DIR", str(tmp_path / "user-models"))


#: catalog name -> task of every shipped model; the first of a task is its alias's (the button's)
SHIPPED_MODELS = {
    "pocketnet-liver": "liver",
    "lvnet-liver": "liver",
    "pocketnet-skullstrip": "skullstrip",
    "pocketnet-skullstrip-ensemble": "skullstrip",
}


def _catalog_entry(name: str) -> dict:
    catalog = json.loads(SHIPPED_CATALOG.read_text(encoding="utf-8"))
    entries = [entry for entry in catalog["bundles"] if entry.get("name") == name]
    assert len(entries) == 1, f"the shipped catalog must hold exactly one model named {name}"
    return entries[0]


def test_catalog_holds_the_shipped_models_defaults_first() -> None:
    catalog = json.loads(SHIPPED_CATALOG.read_text(encoding="utf-8"))
    assert {e["name"]: e["task"] for e in catalog["bundles"]} == SHIPPED_MODELS
    # the task alias (the one-click button) resolves to the first entry of its task
    assert load_bundle("liver").config.name == "pocketnet-liver"
    assert load_bundle("skullstrip").config.name == "pocketnet-skullstrip"
    assert load_bundle("lvnet-liver").config.network == "lvnet"  # the other liver model, by name


@pytest.mark.parametrize("name", list(SHIPPED_MODELS))
def test_shipped_bundle_is_catalogued_verified_and_small(name: str) -> None:
    task = SHIPPED_MODELS[name]
    entry = _catalog_entry(name)
    folder = SHIPPED_CATALOG.parent / entry["path"]
    weights = folder / "weights.pt"
    assert entry["weights_sha256"] == sha256_of(weights), "catalog sha256 does not match weights.pt"
    bundle = load_bundle(name)  # verifies bundle.json's sha256 before torch reads the file
    assert bundle.path.resolve() == folder.resolve()
    assert bundle.config.weights_sha256 == entry["weights_sha256"]
    assert bundle.config.task == task and bundle.config.name == entry["name"]
    assert bundle.config.version == entry["version"]
    assert bundle.config.modality == ("MR" if task == "skullstrip" else "CT")
    folder_bytes = sum(path.stat().st_size for path in folder.iterdir())
    assert folder_bytes < TWO_MB, f"{folder} is {folder_bytes} bytes; a pocket model is well under 2 MB"
    network = bundle.build_network("cpu")
    parameters = sum(p.numel() for p in network.parameters())
    assert 10_000 < parameters < 200_000
    training = bundle.config.training
    assert training["files"] and training["machine"]["torch"] and training["seconds"] > 0
    while training.get("continued_from"):  # a resumed run: its first stage holds the base seed
        training = training["continued_from"]
    assert training["seed"] == 0


def test_tampered_shipped_weights_are_refused(tmp_path: Path) -> None:
    folder = SHIPPED_CATALOG.parent / _catalog_entry("pocketnet-skullstrip")["path"]
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    data = bytearray((copy / "weights.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "weights.pt").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        load_bundle(copy)


def _mask_ml(path: Path) -> tuple[sitk.Image, float]:
    mask = sitk.ReadImage(str(path))
    voxels = int((sitk.GetArrayViewFromImage(mask) > 0).sum())
    return mask, voxels * float(np.prod(mask.GetSpacing())) / 1000.0


def test_predict_skullstrip_on_real_head(shared_data: Path, tmp_path: Path) -> None:
    head = shared_file(shared_data, "brain/swiss_atlas_t1.mha")
    output = tmp_path / "brain.nii.gz"
    assert (
        main(["predict", "--task", "skullstrip", "-i", str(head), "-o", str(output), "--device", "cpu", "-q"])
        == 0
    )
    mask, millilitres = _mask_ml(output)
    image = sitk.ReadImage(str(head))
    assert mask.GetSize() == image.GetSize()
    assert np.allclose(mask.GetDirection(), image.GetDirection(), atol=1e-6)
    assert 1000.0 <= millilitres <= 1800.0, f"brain volume {millilitres:.0f} ml is not 1-1.8 l"


def test_predict_liver_on_real_ct(shared_data: Path, tmp_path: Path) -> None:
    series = shared_file(shared_data, "liver/ts_abdomen_ct_dicom")
    labels = shared_file(shared_data, "liver/ts_abdomen_ct_dicom_labels.nii.gz")
    output = tmp_path / "liver.nii.gz"
    assert (
        main(["predict", "--task", "liver", "-i", str(series), "-o", str(output), "--device", "cpu", "-q"])
        == 0
    )
    mask, millilitres = _mask_ml(output)
    # the label map is stored with a flipped y axis: compare in physical space (liver = 5)
    reference = sitk.ReadImage(str(labels))
    reference = sitk.Resample(reference, mask, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    voxels = int((sitk.GetArrayViewFromImage(reference) == 5).sum())
    reference_ml = voxels * float(np.prod(mask.GetSpacing())) / 1000.0
    assert 0.6 * reference_ml <= millilitres <= 1.4 * reference_ml, (millilitres, reference_ml)
    # the liver lies on the patient's right: LPS x below the body's centre
    points = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[:, ::-1].mean(axis=0)
    centre_x = mask.TransformContinuousIndexToPhysicalPoint(points.tolist())[0]
    body_x = mask.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in mask.GetSize()])[0]
    assert centre_x < body_x


def test_shipped_onnx_networks_are_catalogued_and_match_torch(shared_data: Path) -> None:
    """Every shipped ONNX network is the catalog's file, and ONNX Runtime gives torch's mask on a
    real head (a whole-grid model: one pass either way)."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (requirements.txt has it)")
    from pocketseg_core.bundles import ONNX_FILE
    from pocketseg_core.inference import InferenceOptions, segment_image
    from pocketseg_core.metrics import dice

    with_onnx = [name for name in SHIPPED_MODELS if _catalog_entry(name).get("onnx_sha256")]
    assert "pocketnet-skullstrip" in with_onnx  # the default skull strip runs without torch
    for name in with_onnx:
        entry = _catalog_entry(name)
        folder = SHIPPED_CATALOG.parent / entry["path"]
        assert sha256_of(folder / ONNX_FILE) == entry["onnx_sha256"] == load_bundle(name).config.onnx_sha256
    image = sitk.ReadImage(str(shared_file(shared_data, "brain/robex_atlas_t1.nii.gz")))
    bundle = load_bundle("skullstrip")
    masks = {
        backend: sitk.GetArrayFromImage(
            segment_image(image, bundle, InferenceOptions(device="cpu", backend=backend)).mask
        )
        for backend in ("torch", "onnxruntime")
    }
    assert dice(masks["torch"], masks["onnxruntime"]) > 0.9999
