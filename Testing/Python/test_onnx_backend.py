"""The network stage on ONNX Runtime: export, checks, the backend choice, and the same masks as torch.

A tiny fitted bundle is given a whole-grid window (one pass) and its ONNX network; ONNX
Runtime must give the probabilities torch gives (float rounding apart) and the same mask, on
any grid, and a process that runs it must never import torch.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (requirements.txt has it)")
pytest.importorskip("onnx", reason="onnx (the exporter's) is not installed (requirements.txt has it)")

from pocketseg_core.bundles import (  # noqa: E402
    ONNX_FILE,
    BundleError,
    list_bundles,
    load_bundle,
    read_onnx_model,
    register_bundle,
)
from pocketseg_core.errors import PocketSegError  # noqa: E402
from pocketseg_core.inference import InferenceOptions, segment_image  # noqa: E402
from pocketseg_core.inference.onnx_backend import OnnxNetwork, choose_backend  # noqa: E402
from pocketseg_core.inference.pipeline import load_network  # noqa: E402
from pocketseg_core.metrics import dice  # noqa: E402
from pocketseg_core.onnx_export import export_bundle  # noqa: E402
from Testing.Python.tiny_bundles import make_phantom, make_tiny_bundle  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def whole_grid_bundle(folder: Path) -> Path:
    """A tiny fitted skull strip bundle with a whole-grid window and its ONNX network."""
    make_tiny_bundle(folder)
    config_path = folder / "bundle.json"
    data = json.loads(config_path.read_text())
    data["window_size_zyx"] = [0, 0, 0]
    config_path.write_text(json.dumps(data, indent=2))
    return export_bundle(folder)


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory) -> Path:
    return whole_grid_bundle(tmp_path_factory.mktemp("onnx") / "tiny-whole")


def test_export_records_the_file_and_is_reproducible(onnx_bundle, tmp_path):
    config = json.loads((onnx_bundle / "bundle.json").read_text())
    model = (onnx_bundle / ONNX_FILE).read_bytes()
    import hashlib

    assert config["onnx_sha256"] == hashlib.sha256(model).hexdigest()
    # the weights are copied unchanged, and a second export of the same weights is the same file
    again = whole_grid_bundle(tmp_path / "again")
    assert (again / ONNX_FILE).read_bytes() == model
    assert (again / "weights.pt").read_bytes() == (onnx_bundle / "weights.pt").read_bytes()
    # divisor metadata: the tiny network pools twice by 2
    assert OnnxNetwork(model, threads=1).divisor == (4, 4, 4)


@pytest.mark.parametrize(
    "size, direction",
    [((48, 56, 44), None), ((37, 51, 29), (0, 0, 1, 1, 0, 0, 0, -1, 0))],
    ids=["axial", "odd-size-oblique-axes"],
)
def test_onnx_runtime_gives_torchs_mask(onnx_bundle, size, direction):
    image, label = make_phantom("MR", size=size, direction=direction, seed=3)
    bundle = load_bundle(onnx_bundle)
    options = InferenceOptions(device="cpu", return_probabilities=True)
    on_torch = segment_image(image, bundle, dataclasses.replace(options, backend="torch"))
    on_onnx = segment_image(image, bundle, dataclasses.replace(options, backend="onnxruntime"))
    assert (on_torch.backend, on_onnx.backend) == ("torch", "onnxruntime")
    torch_probability = sitk.GetArrayFromImage(on_torch.probabilities)
    onnx_probability = sitk.GetArrayFromImage(on_onnx.probabilities)
    assert np.abs(torch_probability - onnx_probability).max() < 1e-3
    torch_mask = sitk.GetArrayFromImage(on_torch.mask)
    onnx_mask = sitk.GetArrayFromImage(on_onnx.mask)
    assert np.count_nonzero(torch_mask != onnx_mask) <= 2  # a voxel at exactly 0.5 may flip
    assert dice(onnx_mask, sitk.GetArrayFromImage(label)) > 0.9  # it segments, not just agrees
    for key in ("GetOrigin", "GetSpacing", "GetDirection", "GetSize"):
        assert getattr(on_onnx.mask, key)() == getattr(image, key)()


def test_flip_averaging_on_onnx_runtime(onnx_bundle):
    image, _ = make_phantom("MR", seed=4)
    bundle = load_bundle(onnx_bundle)
    options = InferenceOptions(device="cpu", tta=True, return_probabilities=True)
    on_torch = segment_image(image, bundle, dataclasses.replace(options, backend="torch"))
    on_onnx = segment_image(image, bundle, dataclasses.replace(options, backend="onnxruntime"))
    difference = sitk.GetArrayFromImage(on_torch.probabilities) - sitk.GetArrayFromImage(
        on_onnx.probabilities
    )
    assert np.abs(difference).max() < 1e-3


def test_auto_chooses_onnx_runtime_only_where_it_can(onnx_bundle, tmp_path):
    config = load_bundle(onnx_bundle, read_weights=False).config
    cpu = InferenceOptions(device="cpu")
    assert choose_backend(config, cpu)[0] == "onnxruntime"
    for changes, reason in [
        ({"compile": True}, "torch.compile"),
        ({"precision": "bfloat16"}, "bfloat16"),
        ({"window_size_zyx": (32, 32, 32)}, "window size"),
        ({"device": "cuda"}, "GPU"),
        ({"channels_last": False}, "plain memory layout"),
        ({"backend": "torch"}, "asked for"),
    ]:
        backend, why = choose_backend(config, dataclasses.replace(cpu, **changes))
        assert backend == "torch" and reason in why, (changes, why)
    windowed = make_tiny_bundle(tmp_path / "windowed", fit=False)
    windowed_config = load_bundle(windowed, read_weights=False).config
    backend, why = choose_backend(windowed_config, cpu)
    assert backend == "torch" and "no ONNX network" in why
    with pytest.raises(PocketSegError, match="cannot run on ONNX Runtime: the model has no ONNX network"):
        choose_backend(windowed_config, InferenceOptions(backend="onnxruntime"))
    with pytest.raises(PocketSegError, match="backend must be one of"):
        choose_backend(config, InferenceOptions(backend="tensorrt"))


def test_a_changed_onnx_file_is_refused(onnx_bundle, tmp_path):
    import shutil

    copy = tmp_path / "tampered"
    shutil.copytree(onnx_bundle, copy)
    model = bytearray((copy / ONNX_FILE).read_bytes())
    model[-10] ^= 0xFF
    (copy / ONNX_FILE).write_bytes(bytes(model))
    bundle = load_bundle(copy, read_weights=False)
    with pytest.raises(BundleError, match="fails its checksum"):
        read_onnx_model(bundle)
    with pytest.raises(BundleError, match="fails its checksum"):
        load_network(bundle, InferenceOptions(device="cpu"))
    (copy / ONNX_FILE).unlink()
    with pytest.raises(BundleError, match="network.onnx is missing"):
        read_onnx_model(bundle)


def test_registering_keeps_the_onnx_network(onnx_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("POCKETSEG_MODELS_DIR", str(tmp_path / "models"))
    folder = register_bundle(onnx_bundle, name="tiny-whole")
    assert (folder / ONNX_FILE).read_bytes() == (onnx_bundle / ONNX_FILE).read_bytes()
    assert isinstance(load_network(load_bundle(folder), InferenceOptions(device="cpu")), OnnxNetwork)


def test_predict_on_onnx_runtime_never_imports_torch(onnx_bundle, tmp_path):
    image, label = make_phantom("MR", seed=5)
    source = tmp_path / "head.nii.gz"
    sitk.WriteImage(image, str(source))
    script = (
        "import sys\n"
        "from pocketseg_core.cli import main\n"
        f"code = main(['predict', '--model', {str(onnx_bundle)!r}, '-i', {str(source)!r}, "
        f"'-o', {str(tmp_path / 'mask.nii.gz')!r}, '--device', 'cpu', '-q'])\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "torch imported: False" in done.stdout
    assert "(onnxruntime)" in done.stdout
    mask = sitk.ReadImage(str(tmp_path / "mask.nii.gz"))
    assert dice(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(label)) > 0.9


def test_export_refuses_what_it_cannot_export(tmp_path):
    from pocketseg_core.cli import main

    slab = make_tiny_bundle(tmp_path / "slab", window_mode="slab", fit=False)
    with pytest.raises(PocketSegError, match="only 3D networks"):
        export_bundle(slab)
    shipped = next(entry.path for entry in list_bundles() if entry.source == "shipped")
    assert main(["export-onnx", str(shipped)]) == 1
    assert main(["export-onnx", str(tmp_path / "nothing")]) == 1


def test_the_shipped_skull_strip_ensemble_runs_the_same_on_onnx_runtime_and_torch():
    """The shipped two-network ensemble (8 and 12 feature maps in one ONNX graph): ONNX Runtime
    gives torch's probabilities, and those are the mean of its two members' softmax."""
    import torch

    bundle = load_bundle("pocketnet-skullstrip-ensemble")
    assert [args["init_filters"] for args in bundle.config.member_network_args] == [8, 12]
    image, _ = make_phantom("MR", size=(60, 64, 56), seed=5)
    image.SetSpacing((2.0, 2.0, 2.0))
    options = InferenceOptions(device="cpu", return_probabilities=True)
    on_torch = segment_image(image, bundle, dataclasses.replace(options, backend="torch"))
    on_onnx = segment_image(image, bundle, dataclasses.replace(options, backend="onnxruntime"))
    assert on_onnx.backend == "onnxruntime"
    torch_probability = sitk.GetArrayFromImage(on_torch.probabilities)
    assert np.abs(torch_probability - sitk.GetArrayFromImage(on_onnx.probabilities)).max() < 1e-3
    # member 0 is the default skull strip's network, weight for weight
    default = load_bundle("pocketnet-skullstrip")
    default.build_network()
    for key, value in default.state_dict.items():
        assert torch.equal(bundle.state_dict[f"members.0.{key}"], value), key
    # the two members, one by one, average to the ensemble (on the network's own input)
    network = bundle.build_network()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        mean = torch.stack([torch.softmax(member(x), 1) for member in network.members]).mean(0)
        assert torch.allclose(torch.softmax(network(x), 1), mean, atol=1e-6)
