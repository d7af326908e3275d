"""The Slicer modules in a Slicer without torch, their torch install, self-tests, memory, run folders.

- Both modules' logics work where ``import torch`` and ``import tqdm`` fail (an import hook blocks
  them in a fresh process): models, presets and network names are plain data, a run is prepared.
- Torch is installed only after asking, through PyTorchUtils, with pyproject's floor; a failed
  install is caught and said in words; a restart is asked for when an old torch is loaded.
- The self-tests install nothing and change no setting.
- Exporting a segment onto a 50 MB volume 20 times grows RSS by less than 50 MB.
- Every training run gets a folder of its own.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("slicer", reason="slicer-core is not installed")

from conftest import REPO_ROOT  # noqa: E402

sys.path[:0] = [str(REPO_ROOT / "PocketSeg"), str(REPO_ROOT / "PocketSegTrain")]

from PocketSegLib import create_headless_context, dependencies  # noqa: E402
from PocketSegLib.logic import SAMPLE_VOLUMES  # noqa: E402
from PocketSegLib.segmentation import BRAIN, segment_array_on_volume, write_mask_to_segmentation  # noqa: E402
from PocketSegLib.volume_io import volume_node_from_image  # noqa: E402
from PocketSegTrainLib.logic import NETWORK_NAMES, new_run_folder  # noqa: E402

# --- torch and tqdm blocked --------------------------------------------------------------------

BLOCKED_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "tqdm"):
                raise ImportError(f"{name} is blocked (a Slicer without it)")
            return None

    sys.meta_path.insert(0, Block())
    sys.path[:0] = [sys.argv[1] + "/PocketSeg", sys.argv[1] + "/PocketSegTrain"]
    import numpy as np, SimpleITK as sitk
    from PocketSegLib import create_headless_context
    from PocketSegLib.dependencies import ensure_torch
    from PocketSegLib.logic import PocketSegLogic
    from PocketSegLib.segmentation import BRAIN, write_mask_to_segmentation
    from PocketSegLib.volume_io import volume_node_from_image
    from PocketSegTrainLib.cases import TrainingCase
    from PocketSegTrainLib.logic import PocketSegTrainLogic

    context = create_headless_context()
    seg_logic, train_logic = PocketSegLogic(context), PocketSegTrainLogic(context)
    array = np.full((20, 24, 28), 10.0, dtype=np.float32)
    array[5:15, 6:18, 7:21] = 100.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((3.0, 3.0, 3.0))
    cases = []
    for index in range(2):
        volume = volume_node_from_image(context.scene, image, f"head{index}")
        mask = sitk.Cast(image > 50, sitk.sitkUInt8)
        cases.append(TrainingCase(volume, write_mask_to_segmentation(context, volume, mask, BRAIN), "Brain"))
    prepared = seg_logic.prepare(cases[0].volume_node, "skullstrip")
    training = train_logic.prepare(cases, "pocketnet-nfbs", sys.argv[2], folds=2, epochs=1)
    table = seg_logic.compare(cases[0].segmentation_node, "Brain", cases[1].segmentation_node, "Brain")
    check = ensure_torch(ask=lambda question: False, version=lambda: None)
    print(json.dumps({
        "models": [m["name"] for m in seg_logic.available_models()],
        "presets": train_logic.preset_names(),
        "networks": train_logic.network_names(),
        "prepared_labels": [d.name for _, d in prepared.labels],
        "prepared_model": prepared.config.name,
        "training_network": training.config.network,
        "table_rows": table.GetTable().GetNumberOfRows(),
        "torch_check": [check.ok, check.message],
        "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "tqdm")),
    }))
    """
)


def test_both_logics_work_with_torch_and_tqdm_blocked(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-c", BLOCKED_SCRIPT, str(REPO_ROOT), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        check=False,
        cwd=REPO_ROOT,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    found = json.loads(completed.stdout.strip().splitlines()[-1])
    assert {"pocketnet-skullstrip", "pocketnet-liver"} <= set(found["models"])  # the catalog, as plain data
    assert found["presets"] == ["pocketnet-nfbs", "pocketnet-lits", "lvnet-lits"]
    assert found["networks"] == list(NETWORK_NAMES)
    assert found["prepared_labels"] == ["Brain"]
    assert found["training_network"] == "pocket_unet3d"
    assert found["table_rows"] == 8
    assert found["torch_check"][0] is False and "not installed" in found["torch_check"][1]
    assert found["loaded"] == []


def test_network_names_as_plain_data_are_the_registry():
    pytest.importorskip("torch")
    from pocketseg_core.networks import network_names

    assert sorted(NETWORK_NAMES) == sorted(network_names())


def test_module_files_import_neither_torch_nor_tqdm_nor_the_networks():
    forbidden = ("torch", "tqdm", "pocketseg_core.networks", "pocketseg_core.inference")
    folders = [REPO_ROOT / "PocketSeg", REPO_ROOT / "PocketSegTrain"]
    for path in (p for folder in folders for p in folder.rglob("*.py")):
        if path.name == "selftest.py":  # the self-test compares with the core in-process (torch present)
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name in TORCH_FREE_INFERENCE_MODULES:
                    continue
                assert not name.startswith(forbidden), f"{path.relative_to(REPO_ROOT)} imports {name}"


#: the inference modules that never import torch (the package loads its torch side lazily): the
#: runtime choice reads a model's config with them (test_onnx_backend runs predict without torch)
TORCH_FREE_INFERENCE_MODULES = ("pocketseg_core.inference.onnx_backend", "pocketseg_core.inference.options")


# --- installing torch -------------------------------------------------------------------------


def test_torch_floor_is_pyprojects():
    text = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    floor = re.search(r'"torch>=([0-9.]+)"', text).group(1)
    assert dependencies.TORCH_FLOOR == floor
    assert dependencies.torch_meets_floor("2.13.0+cpu") and dependencies.torch_meets_floor(floor)
    assert not dependencies.torch_meets_floor("2.1.2") and not dependencies.torch_meets_floor(None)
    assert not dependencies.torch_meets_floor("1.13.1")


def test_present_torch_means_no_question_and_no_install():
    asked, installed = [], []
    check = dependencies.ensure_torch(
        ask=lambda q: asked.append(q) or True, installer=installed.append, version=lambda: "2.13.0"
    )
    assert check.ok and not check.restart_needed and check.message == ""
    assert asked == [] and installed == []


def test_torch_is_installed_only_after_asking_with_the_floor(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    versions = iter([None, "2.13.0"])
    asked, installed = [], []
    check = dependencies.ensure_torch(
        ask=lambda q: asked.append(q) or True, installer=installed.append, version=lambda: next(versions)
    )
    assert len(asked) == 1 and "PyTorch >=2.2" in asked[0] and "not installed" in asked[0]
    assert installed == [">=2.2"]
    assert check.ok and not check.restart_needed and "installed" in check.message

    asked, installed = [], []
    check = dependencies.ensure_torch(
        ask=lambda q: False, installer=installed.append, version=lambda: "2.0.1"
    )
    assert not check.ok and installed == [] and "not installed" in check.message


def test_failed_install_is_caught_and_said(monkeypatch):
    def failing(requirement):
        raise OSError("No space left on device")

    check = dependencies.ensure_torch(ask=lambda q: True, installer=failing, version=lambda: None)
    assert not check.ok
    assert "could not be installed (OSError: No space left on device)" in check.message


def test_restart_is_asked_for_when_an_old_torch_is_loaded(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", object())  # an old torch imported by someone else
    versions = iter(["2.0.1", "2.13.0"])
    check = dependencies.ensure_torch(
        ask=lambda q: True, installer=lambda r: None, version=lambda: next(versions)
    )
    assert check.ok and check.restart_needed and "restart Slicer" in check.message


def test_without_the_pytorch_extension_nothing_is_pip_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # import PyTorchUtils -> ImportError
    check = dependencies.ensure_torch(ask=lambda q: True, version=lambda: None)
    assert not check.ok and "install 'PyTorch' from the Extensions Manager" in check.message


def _whole_grid_model(folder):
    """A bundle folder whose config says ONNX Runtime can run it (whole-grid window, an ONNX
    network recorded); ensure_runtime reads the config only."""
    import json

    from Testing.Python.tiny_bundles import make_tiny_bundle

    make_tiny_bundle(folder, fit=False)
    data = json.loads((folder / "bundle.json").read_text())
    data["window_size_zyx"], data["onnx_sha256"] = [0, 0, 0], "0" * 64
    (folder / "bundle.json").write_text(json.dumps(data))
    return str(folder)


def test_a_model_onnx_runtime_runs_asks_for_onnx_runtime_not_pytorch(tmp_path, monkeypatch):
    from pocketseg_core.inference import onnx_backend

    monkeypatch.setattr(onnx_backend, "uses_gpu_by_default", lambda: False)
    model = _whole_grid_model(tmp_path / "whole")
    torch_checks, asked, installed = [], [], []

    def torch_check():
        torch_checks.append(1)
        return dependencies.TorchCheck(True, "2.13.0")

    # installed: nothing asked, torch never checked
    check = dependencies.ensure_runtime(
        model, "auto", asked.append, installed.append, torch_check, onnx_installed=lambda: True
    )
    assert check.ok and asked == [] and installed == [] and torch_checks == []
    # missing: asked once, pip-installed with the floor, then usable
    present = iter([False, True])
    check = dependencies.ensure_runtime(
        model, "cpu", lambda q: asked.append(q) or True, installed.append, torch_check, lambda: next(present)
    )
    assert check.ok and "ONNX Runtime was installed" in check.message
    assert installed == ["onnxruntime>=1.18"] and "about 30 MB" in asked[0] and torch_checks == []
    # declined, or a GPU asked for, or a windowed model: PyTorch's check decides
    check = dependencies.ensure_runtime(
        model, "cpu", lambda q: False, installed.append, torch_check, lambda: False
    )
    assert check.ok and torch_checks == [1]
    dependencies.ensure_runtime(model, "cuda", lambda q: True, installed.append, torch_check, lambda: True)
    assert torch_checks == [1, 1]
    windowed = str(make_windowed(tmp_path / "windowed"))
    dependencies.ensure_runtime(windowed, "cpu", lambda q: True, installed.append, torch_check, lambda: True)
    assert torch_checks == [1, 1, 1] and installed == ["onnxruntime>=1.18"]


def test_a_failed_onnx_runtime_install_falls_back_to_pytorch_and_says_so(tmp_path, monkeypatch):
    from pocketseg_core.inference import onnx_backend

    monkeypatch.setattr(onnx_backend, "uses_gpu_by_default", lambda: False)
    model = _whole_grid_model(tmp_path / "whole")

    def failing(requirement):
        raise OSError("No space left on device")

    check = dependencies.ensure_runtime(
        model, "auto", lambda q: True, failing, lambda: dependencies.TorchCheck(True, "2.13.0"), lambda: False
    )
    assert (
        check.ok and "ONNX Runtime could not be installed (OSError: No space left on device)" in check.message
    )


def make_windowed(folder):
    from Testing.Python.tiny_bundles import make_tiny_bundle

    return make_tiny_bundle(folder, fit=False)


# --- self-tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["PocketSeg", "PocketSegTrain"])
def test_self_tests_install_nothing_change_no_setting_and_skip_without_torch(module):
    source = (REPO_ROOT / module / f"{module}.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    test_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{module}Test")
    text = ast.unparse(test_class)
    for forbidden in (
        "pip_install",
        "installTorch",
        "ensure_torch",
        "os.environ",
        "POCKETSEG_MODELS_DIR",
        "setdefault",
    ):
        assert forbidden not in text, f"{module}Test uses {forbidden}"
    assert "torch_meets_floor(version)" in text and "Skipped: PyTorch" in text
    if module == "PocketSegTrain":
        assert "register=False" in text  # the user's model catalog stays as it was


def test_the_widget_offers_slicers_sample_volumes():
    assert SAMPLE_VOLUMES == {"skullstrip": "MRHead", "liver": "CTLiver"}
    source = (REPO_ROOT / "PocketSeg" / "PocketSeg.py").read_text(encoding="utf-8")
    assert "SampleData.downloadSample(sample)" in source and "SAMPLE_VOLUMES.items()" in source


# --- memory ---------------------------------------------------------------------------------------


def rss_mb() -> float:
    status = Path("/proc/self/status")
    if not status.is_file():
        pytest.skip("RSS is read from /proc (Linux)")
    for line in status.read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS line")


def test_twenty_exports_of_a_50_mb_volume_grow_rss_by_less_than_50_mb():
    context = create_headless_context()
    array = np.zeros((200, 256, 256), dtype=np.float32)  # 52 MB
    array[50:150, 60:200, 60:200] = 100.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 1.2))
    volume = volume_node_from_image(context.scene, image, "big")
    del array
    mask = sitk.Cast(image > 50, sitk.sitkUInt8)
    segmentation = write_mask_to_segmentation(context, volume, mask, BRAIN)
    expected = sitk.GetArrayFromImage(mask)
    del image
    # warm-up as the loop below runs (one result held while the next is made): the allocator keeps
    # those pages for the next calls; a leak grows on every call after that (50 MB each before)
    for _ in range(3):
        exported = segment_array_on_volume(segmentation, "Brain", volume)
        np.testing.assert_array_equal(exported, expected)
    before = rss_mb()
    for _ in range(20):
        exported = segment_array_on_volume(segmentation, "Brain", volume)
    grown = rss_mb() - before
    print(f"\nRSS growth over 20 exports of a 52 MB volume: {grown:.1f} MB")
    np.testing.assert_array_equal(exported, expected)
    assert grown < 50.0


# --- run folders -----------------------------------------------------------------------------------


def test_each_training_run_gets_a_folder_of_its_own(tmp_path):
    first, second = new_run_folder(tmp_path, "my brain"), new_run_folder(tmp_path, "my brain")
    assert first != second and first.parent == second.parent == tmp_path
    assert first.name.startswith("my_brain-") and not first.exists()  # nothing written before the run
    first.mkdir()
    assert new_run_folder(tmp_path, "my brain") not in (first, second)
    source = (REPO_ROOT / "PocketSegTrain" / "PocketSegTrain.py").read_text(encoding="utf-8")
    assert "new_run_folder(folder" in source  # the GUI's Start uses it unless resuming


# --- a training run and the scene ----------------------------------------------------------------


def small_cases(context, count: int = 2):
    from PocketSegTrainLib.cases import TrainingCase

    array = np.full((16, 18, 20), 10.0, dtype=np.float32)
    array[4:12, 5:13, 6:14] = 100.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((3.0, 3.0, 3.0))
    cases = []
    for index in range(count):
        volume = volume_node_from_image(context.scene, image, f"case{index}")
        mask = sitk.Cast(image > 50, sitk.sitkUInt8)
        cases.append(TrainingCase(volume, write_mask_to_segmentation(context, volume, mask, BRAIN), "Brain"))
    return cases


def test_training_is_cancelled_by_scene_close_and_ended_by_a_removed_case(tmp_path):
    from PocketSegLib.runner import CANCELLED, FAILED
    from PocketSegTrainLib.logic import PocketSegTrainLogic

    from pocketseg_core.errors import PocketSegError

    context = create_headless_context()
    logic = PocketSegTrainLogic(context)
    cases = small_cases(context)
    training = logic.start(
        logic.prepare(cases, "pocketnet-nfbs", tmp_path / "a", folds=2, epochs=1, device="cpu")
    )
    context.scene.RemoveNode(cases[1].segmentation_node)
    status = training.status()
    assert status.state == FAILED and training.run.process.poll() is not None
    assert "case case1: 'case1 brain' was removed from the scene during the training" in str(status.error)
    with pytest.raises(PocketSegError, match="was removed from the scene"):
        training.finish()

    cases = small_cases(context)
    training = logic.start(
        logic.prepare(cases, "pocketnet-nfbs", tmp_path / "b", folds=2, epochs=1, device="cpu")
    )
    context.scene.Clear(0)
    assert training.status().state == CANCELLED and training.run.process.poll() is not None
    assert not training.run.work_dir.exists()
