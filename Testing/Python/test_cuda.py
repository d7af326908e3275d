"""The CUDA path against the plain CPU path (fp32, no speed options): the shipped bundles on
phantoms of the benchmark's full sizes and on real images, with the speed options a GPU user can
turn on. Skipped without a CUDA device; ``benchmarks/gpu_check.sh`` runs them on a GPU machine.

The CPU reference is what every other test checks, so agreement here (Dice >= 0.999: float16
autocast moves a few boundary voxels; the default float32 gave identical masks on an H200)
carries those checks over to the GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import shared_file

from benchmarks.precision import REAL_IMAGES
from benchmarks.speed import FULL_INPUTS, make_phantom
from pocketseg_core.bundles import load_bundle
from pocketseg_core.inference import InferenceOptions, segment_image
from pocketseg_core.io import read_image
from pocketseg_core.metrics import dice

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

#: what a GPU user may turn on; {} is the CUDA path as it runs by default (autocast,
#: GPU-resident volume and accumulators)
SPEED_OPTIONS = [
    pytest.param({}, id="default"),
    pytest.param({"channels_last": True, "batch_size": 16}, id="channels_last"),
    pytest.param({"precision": "float16"}, id="float16"),
    pytest.param({"compile": True}, id="compile"),
]


#: CPU reference masks by image key, computed once for all speed options
_CPU_REFERENCE: dict[str, sitk.Image] = {}


def assert_cuda_agrees(key: str, image: sitk.Image, task: str, speed_options: dict) -> None:
    bundle = load_bundle(task)
    if key not in _CPU_REFERENCE:
        _CPU_REFERENCE[key] = segment_image(image, bundle, InferenceOptions(device="cpu")).mask
    on_gpu = segment_image(image, bundle, InferenceOptions(device="cuda", **speed_options))
    assert on_gpu.device.startswith("cuda"), on_gpu.messages
    # no silent fallback: a failed compile or a CPU fallback would make this a CPU-vs-CPU check
    assert not any("compile failed" in m or "CPU" in m for m in on_gpu.messages), on_gpu.messages
    reference_mask = sitk.GetArrayFromImage(_CPU_REFERENCE[key])
    assert np.count_nonzero(reference_mask) > 1000
    gpu_mask = sitk.GetArrayFromImage(on_gpu.mask)
    score = dice(gpu_mask, reference_mask)
    differing = np.count_nonzero(gpu_mask != reference_mask)
    print(
        f"\n{key} {speed_options or 'default'}: Dice {score:.5f} against the CPU, {differing} voxels differ"
    )
    assert score >= 0.999
    # the mask is on the input's grid, exactly
    assert on_gpu.mask.GetSize() == image.GetSize()
    assert on_gpu.mask.GetOrigin() == image.GetOrigin()
    assert on_gpu.mask.GetDirection() == image.GetDirection()


@pytest.mark.parametrize("speed_options", SPEED_OPTIONS)
@pytest.mark.parametrize("task", ["skullstrip", "liver"])
def test_cuda_path_agrees_with_the_cpu_reference_on_phantoms(task, speed_options):
    size, spacing = FULL_INPUTS[task]["size"], FULL_INPUTS[task]["spacing"]
    assert_cuda_agrees(f"phantom-{task}", make_phantom(task, size, spacing), task, speed_options)


@pytest.mark.parametrize("speed_options", SPEED_OPTIONS[:3])
@pytest.mark.parametrize(("relative", "task"), REAL_IMAGES)
def test_cuda_path_agrees_with_the_cpu_reference_on_real_images(shared_data, relative, task, speed_options):
    assert_cuda_agrees(relative, read_image(shared_file(shared_data, relative)), task, speed_options)
