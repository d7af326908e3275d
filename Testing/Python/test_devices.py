"""The device layer: device names of the menus and command lines, CUDA fallback, mixed
precision, and the out-of-memory policy (halve the batch, then move on)."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import pytest
import torch
from conftest import REPO_ROOT

from pocketseg_core.devices import (
    DEVICE_LABELS,
    OutOfMemoryFallback,
    amp_context,
    amp_dtype,
    cpu_has_bfloat16,
    cpu_precision,
    device_name,
    resolve_device,
    use_channels_last,
)
from pocketseg_core.errors import PocketSegError


@pytest.mark.parametrize(
    ("choice", "name"),
    [
        ("Auto", "auto"),
        ("CPU", "cpu"),
        ("GPU", "cuda"),
        ("gpu", "cuda"),
        (" CUDA ", "cuda"),
        ("cuda:1", "cuda:1"),
        ("", "auto"),
        (None, "auto"),
    ],
)
def test_device_choices_map_to_device_strings(choice, name):
    assert device_name(choice) == name


@pytest.mark.parametrize("choice", ["tpu", "cuda:x", "cuda1", "mps:0"])
def test_unknown_device_is_refused_with_the_choices(choice):
    with pytest.raises(PocketSegError, match=r"unknown device .*; use auto, cpu, cuda or cuda:N"):
        device_name(choice)
    with pytest.raises(PocketSegError, match="unknown device"):
        resolve_device(choice)


def test_device_menus_offer_the_labels_of_the_table():
    # PocketSegTrain fills its menu from DEVICE_LABELS; PocketSeg's menu is in its .ui file
    tree = ElementTree.parse(REPO_ROOT / "Resources" / "UI" / "PocketSeg.ui")
    combo = next(w for w in tree.iter("widget") if w.get("name") == "deviceComboBox")
    items = [item.find("property/string").text for item in combo.findall("item")]
    assert items == list(DEVICE_LABELS)
    assert [device_name(label) for label in items] == ["auto", "cpu", "cuda"]


def test_device_names_load_without_torch():
    # the Slicer modules read the device table in a Slicer that may not have torch yet
    code = "import sys; import pocketseg_core.devices; print('torch' in sys.modules)"
    output = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "False"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback of a machine without CUDA")
def test_cuda_without_cuda_falls_back_to_the_cpu_with_a_message():
    messages: list[str] = []
    assert resolve_device("GPU", messages) == torch.device("cpu")
    assert messages == [
        "CUDA was asked for but is not available here (no GPU or a CPU-only torch); using the CPU"
    ]
    assert resolve_device("auto") == torch.device("cpu")
    assert amp_dtype(torch.device("cpu")) is None
    with amp_context(torch.device("cpu"), enabled=True):
        assert not torch.is_autocast_enabled("cpu")


def test_out_of_memory_fallback_halves_then_moves_then_gives_up():
    moved_to: list[torch.device] = []
    fallback = OutOfMemoryFallback(
        torch.device("cpu"), batch_size=5, fallback_device=torch.device("meta"), on_move=[moved_to.append]
    )
    assert fallback.after_out_of_memory() and fallback.batch_size == 2
    assert fallback.after_out_of_memory() and fallback.batch_size == 1
    assert moved_to == []
    assert fallback.after_out_of_memory()
    assert fallback.device == torch.device("meta") and moved_to == [torch.device("meta")]
    assert not fallback.after_out_of_memory()  # nothing left to try
    assert fallback.messages == [
        "GPU out of memory: retrying with 2 window(s) per batch",
        "GPU out of memory: retrying with 1 window(s) per batch",
        "GPU out of memory even with one window per batch: continuing on the META (slower, same result)",
    ]


@pytest.mark.parametrize(
    ("choice", "device", "window_mode", "expected"),
    [
        (None, "cpu", "patch3d", True),  # automatic: on the CPU (oneDNN, channels-last instance norm)
        (None, "cpu", "slab", True),
        (None, "cpu", "slice2d", True),  # 2D networks too
        (None, "cuda", "patch3d", False),  # no gain on the GPU
        (False, "cpu", "patch3d", False),  # an explicit choice always wins
        (True, "cuda", "slice2d", True),
    ],
)
def test_channels_last_automatic_on_the_cpu_only(choice, device, window_mode, expected):
    assert use_channels_last(choice, torch.device(device), window_mode) is expected


def test_cpu_precision_is_bfloat16_only_where_native(monkeypatch):
    native = cpu_has_bfloat16()
    assert cpu_precision("bfloat16") == ("bfloat16" if native else "float32")
    for precision in ("float32", "float16", "tfloat32"):  # CUDA's options mean float32 on a CPU
        assert cpu_precision(precision) == "float32"
    with pytest.raises(PocketSegError, match="unknown precision 'half'"):
        cpu_precision("half")
    # a CPU without it: float32, and the run says why
    monkeypatch.setattr("pocketseg_core.devices.cpu_has_bfloat16", lambda: False)
    messages: list[str] = []
    assert cpu_precision("bfloat16", messages) == "float32"
    assert messages == ["this CPU has no native bfloat16 (AVX512-BF16 or AMX); running in float32"]
