"""Sliding-window inference: exact blending, batching, padding, TTA, cancel, OOM fallback,
and masks on exactly the input grid (phantoms, oblique/flipped copies, real images)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import shared_file
from tiny_bundles import make_phantom, make_tiny_bundle

from pocketseg_core.bundles import ModelBundle, load_bundle
from pocketseg_core.errors import Cancelled, InputImageError, PocketSegError
from pocketseg_core.inference import (
    InferenceOptions,
    Predictor,
    clean_up,
    gaussian_importance,
    segment_image,
    sliding_window_inference,
    sliding_window_probabilities,
    stack_context_slices,
    window_grid,
    window_starts,
)
from pocketseg_core.io import read_image
from pocketseg_core.metrics import dice

torch.set_num_threads(1)


class PointwiseNetwork(torch.nn.Module):
    """Logits a fixed function of each voxel's intensity: 1x1 convolution, any spatial dims.

    Its output does not depend on where a window starts, so sliding-window inference must
    reproduce a single pass over the whole volume exactly. It checks the divisor contract.
    """

    def __init__(self, spatial_dims: int = 3, divisor: tuple[int, ...] = (1, 4, 4)) -> None:
        super().__init__()
        conv = torch.nn.Conv3d if spatial_dims == 3 else torch.nn.Conv2d
        self.conv = conv(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([-1.5, 2.0]).reshape(self.conv.weight.shape))
            self.conv.bias.copy_(torch.tensor([0.3, -0.2]))
        self.spatial_divisor = divisor
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert all(s % d == 0 for s, d in zip(x.shape[2:], self.spatial_divisor, strict=True)), x.shape
        self.batch_sizes.append(x.shape[0])
        return self.conv(x)


def whole_volume_probabilities(network: PointwiseNetwork, volume: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        if isinstance(network.conv, torch.nn.Conv2d):  # every slice on its own
            return torch.softmax(network.conv(torch.from_numpy(volume)[:, None]), dim=1).transpose(0, 1)
        return torch.softmax(network.conv(torch.from_numpy(volume)[None, None]), dim=1)[0]


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    # Odd sizes on purpose: padding and uneven window positions are exercised.
    return np.random.default_rng(3).normal(size=(13, 27, 22)).astype(np.float32)


def test_gaussian_importance_profile():
    weights = gaussian_importance((1, 16, 9))
    assert weights.shape == (1, 16, 9)
    assert torch.allclose(weights, torch.flip(weights, dims=(1, 2)))  # symmetric
    assert weights.max().item() == 1.0
    assert weights[0, 7, 4].item() == weights[0, 8, 4].item() == 1.0  # the two centre voxels of an even axis
    # y offset 1.5 from the centre (sigma 16/8 = 2) relative to 0.5, x offset 2 (sigma 9/8)
    expected = (
        math.exp(-0.5 * (1.5 / 2.0) ** 2)
        / math.exp(-0.5 * (0.5 / 2.0) ** 2)
        * math.exp(-0.5 * (2 / 1.125) ** 2)
    )
    assert weights[0, 9, 6].item() == pytest.approx(expected, rel=1e-5)
    assert weights.min().item() >= 1e-3  # floor keeps border voxels counted


def test_window_starts_cover_the_axis_with_overlap():
    assert window_starts(10, 4, 0.5) == [0, 2, 4, 6]
    assert window_starts(4, 4, 0.5) == [0]
    assert window_starts(11, 5, 0.0) == [0, 3, 6]  # even spread, last window at the end
    starts = window_starts(100, 32, 0.5)
    assert starts[0] == 0 and starts[-1] == 68
    assert max(b - a for a, b in zip(starts, starts[1:], strict=False)) <= 16


@pytest.mark.parametrize(
    ("mode", "window", "spatial_dims", "divisor"),
    [
        ("patch3d", (8, 12, 8), 3, (2, 4, 4)),
        ("slab", (5, 0, 0), 3, (1, 4, 4)),
        ("slice2d", (1, 0, 0), 2, (4, 4)),
    ],
)
def test_sliding_window_reproduces_the_whole_volume_pass(volume, mode, window, spatial_dims, divisor):
    network = PointwiseNetwork(spatial_dims, divisor)
    expected = whole_volume_probabilities(network, volume)
    for batch_size in (1, 3):
        network.batch_sizes.clear()
        result, device = sliding_window_probabilities(
            volume, network, window, mode, num_classes=2, overlap=0.5, batch_size=batch_size
        )
        assert device.type == "cpu"
        assert result.shape == (2, *volume.shape)
        torch.testing.assert_close(result, expected, atol=1e-5, rtol=1e-5)
        assert max(network.batch_sizes) == batch_size
    assert sum(network.batch_sizes) > 1  # really several windows


def test_context_slices_give_a_2d_network_its_neighbours_as_channels(volume):
    """2.5D: each slice is seen with its neighbours as channels, slices beyond the ends padded with
    the volume's minimum (as training pads its patches); windows and batching change nothing."""
    assert stack_context_slices(volume, 0).shape == (1, *volume.shape)
    stacked = stack_context_slices(volume, 2)
    assert stacked.shape == (5, *volume.shape)
    np.testing.assert_array_equal(stacked[2], volume)
    np.testing.assert_array_equal(stacked[0, 2:], volume[:-2])  # channel 0 = two slices below
    np.testing.assert_array_equal(stacked[4, :-2], volume[2:])  # channel 4 = two slices above
    assert (stacked[0, :2] == volume.min()).all() and (stacked[4, -2:] == volume.min()).all()

    network = PointwiseNetwork(2, (4, 4))
    network.conv = torch.nn.Conv2d(3, 2, 1)  # logits from (slice below, slice, slice above)
    with torch.no_grad():
        network.conv.weight.copy_(torch.tensor([[0.0, 0.0, 0.0], [-1.0, 0.5, 2.0]]).reshape(2, 3, 1, 1))
        network.conv.bias.zero_()
    below = np.concatenate([np.full_like(volume[:1], volume.min()), volume[:-1]])
    above = np.concatenate([volume[1:], np.full_like(volume[:1], volume.min())])
    expected = 1.0 / (1.0 + np.exp(-(-1.0 * below + 0.5 * volume + 2.0 * above)))
    for batch_size in (1, 4):
        result, _ = sliding_window_probabilities(
            volume, network, (1, 16, 0), "slice2d", 2, overlap=0.5, batch_size=batch_size, context_slices=1
        )
        np.testing.assert_allclose(result[1].numpy(), expected, atol=1e-5)
    with pytest.raises(PocketSegError, match="context_slices is for slice2d"):
        sliding_window_probabilities(volume, PointwiseNetwork(), (8, 12, 8), "patch3d", 2, context_slices=1)


def test_out_of_memory_halves_the_batch_and_keeps_the_result(volume):
    class RunsOutOfMemoryOnBigBatches(PointwiseNetwork):
        def forward(self, x):
            if x.shape[0] > 2:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return super().forward(x)

    network = RunsOutOfMemoryOnBigBatches()
    messages: list[str] = []
    result, _ = sliding_window_probabilities(
        volume, network, (8, 12, 8), "patch3d", 2, batch_size=8, messages=messages
    )
    torch.testing.assert_close(result, whole_volume_probabilities(network, volume), atol=1e-5, rtol=1e-5)
    assert messages == [
        "GPU out of memory: retrying with 4 window(s) per batch",
        "GPU out of memory: retrying with 2 window(s) per batch",
    ]
    assert set(network.batch_sizes) == {2}


def test_out_of_memory_at_batch_one_moves_on_to_the_fallback_device(volume):
    class OutOfMemoryUntilMoved(PointwiseNetwork):
        moves = 0

        def to(self, *args, **kwargs):  # the 1st move is the run's start, the 2nd the fallback
            self.moves += 1
            return super().to(*args, **kwargs)

        def forward(self, x):
            if self.moves < 2:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return super().forward(x)

    network = OutOfMemoryUntilMoved()
    messages: list[str] = []
    result, device = sliding_window_probabilities(
        volume, network, (8, 12, 8), "patch3d", 2, batch_size=2, fallback_device="cpu", messages=messages
    )
    torch.testing.assert_close(result, whole_volume_probabilities(network, volume), atol=1e-5, rtol=1e-5)
    assert device.type == "cpu"
    assert messages[-1].startswith("GPU out of memory even with one window per batch: continuing on the CPU")
    # Without a fallback device the run stops with a plain message instead.
    with pytest.raises(PocketSegError, match="out of memory with one window per batch"):
        sliding_window_probabilities(
            volume, OutOfMemoryUntilMoved(), (8, 12, 8), "patch3d", 2, batch_size=1, fallback_device=None
        )


def test_window_loop_blends_any_predictor(volume):
    # The generic loop knows no network: a predictor returning two channels of the window
    # itself must give back the volume (blending weights sum out), padding included.
    def predictor(windows: torch.Tensor) -> torch.Tensor:
        return torch.cat([windows, 2.0 * windows], dim=1)

    outputs, device = sliding_window_inference(volume, (8, 32, 8), predictor, overlap=0.25, batch_size=3)
    assert device.type == "cpu" and outputs.shape == (2, *volume.shape)
    torch.testing.assert_close(outputs[0], torch.from_numpy(volume), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outputs[1], 2.0 * torch.from_numpy(volume), atol=1e-5, rtol=1e-5)
    assert (
        len(window_grid(volume.shape, (8, 32, 8), 0.25)) == 2 * 1 * 4
    )  # z: 13 -> 2 windows, y: one, x: 22 -> 4


@pytest.fixture(scope="module")
def brain_bundle(tmp_path_factory) -> ModelBundle:
    return load_bundle(make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "brain", "skullstrip", "MR"))


@pytest.fixture(scope="module")
def liver_bundle(tmp_path_factory) -> ModelBundle:
    return load_bundle(make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "liver", "liver", "CT"))


def assert_same_grid(mask: sitk.Image, image: sitk.Image) -> None:
    assert mask.GetSize() == image.GetSize()
    assert mask.GetSpacing() == image.GetSpacing()
    assert mask.GetOrigin() == image.GetOrigin()
    assert mask.GetDirection() == image.GetDirection()
    assert mask.GetPixelID() == sitk.sitkUInt8


def test_phantom_mask_on_the_input_grid_and_accurate(brain_bundle):
    image, label = make_phantom("MR", size=(50, 61, 37), spacing=(3.0, 2.5, 3.5), origin=(-71.0, 13.5, 250.0))
    result = segment_image(image, brain_bundle, InferenceOptions(return_probabilities=True))
    assert_same_grid(result.mask, image)
    assert result.device == "cpu"
    assert result.messages == []
    assert dice(sitk.GetArrayFromImage(result.mask), sitk.GetArrayFromImage(label)) > 0.9
    probabilities = sitk.GetArrayFromImage(result.probabilities)
    assert result.probabilities.GetPixelID() == sitk.sitkFloat32
    assert 0.0 <= probabilities.min() and probabilities.max() <= 1.0
    # The mask is the thresholded, linearly resampled probability (then the largest component).
    without_lcc = segment_image(image, brain_bundle, InferenceOptions.without_clean_up())
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(without_lcc.mask), (probabilities > 0.5).astype(np.uint8)
    )


def _oblique(
    image: sitk.Image, size: list[int], spacing: tuple[float, float, float], shift_mm: float
) -> sitk.Image:
    """``image`` resampled onto a grid rotated 20 degrees about z with its x axis flipped."""
    angle = math.radians(20)
    rotation = np.array(
        [[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0], [0, 0, 1]]
    ) @ np.diag([-1.0, 1.0, 1.0])
    reference = sitk.Image(size, sitk.sitkFloat32)
    reference.SetSpacing(spacing)
    reference.SetDirection(rotation.ravel().tolist())
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()]))
    half = rotation @ ((np.asarray(size) - 1) * np.asarray(spacing) / 2)
    reference.SetOrigin((centre - half + shift_mm).tolist())
    return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, 2.0, sitk.sitkFloat32)


@pytest.mark.parametrize("where", ["oblique", "cut by the field of view", "finer than the working grid"])
def test_mask_resampled_only_near_the_foreground_equals_the_full_resampling(brain_bundle, where):
    # Without probabilities asked for, only the part of the input grid where the interpolated
    # probability can exceed 0.5 is resampled; it must give the full resampling's mask exactly.
    image, _ = make_phantom("MR", size=(50, 61, 37), spacing=(3.0, 2.5, 3.5), seed=3)
    if where == "oblique":
        image = _oblique(image, [70, 56, 40], (2.5, 3.2, 4.0), 0.0)
    elif where == "cut by the field of view":  # the head runs out of the grid on two sides
        image = _oblique(image, [40, 36, 30], (3.0, 3.0, 3.0), 40.0)
    else:
        image = _oblique(image, [150, 130, 60], (1.1, 1.3, 2.3), 0.0)
    options = InferenceOptions.without_clean_up()
    full = segment_image(image, brain_bundle, dataclasses.replace(options, return_probabilities=True))
    bounded = segment_image(image, brain_bundle, options)
    assert_same_grid(bounded.mask, image)
    expected = (sitk.GetArrayFromImage(full.probabilities) > 0.5).astype(np.uint8)
    assert 1000 < np.count_nonzero(expected) < expected.size
    np.testing.assert_array_equal(sitk.GetArrayFromImage(bounded.mask), expected)
    if where == "cut by the field of view":
        assert expected[:, :, 0].any() or expected[:, :, -1].any() or expected[0].any() or expected[-1].any()


def test_bundle_bridge_cutting_runs_before_the_largest_component(brain_bundle):
    image, label = make_phantom("MR", size=(84, 60, 40), spacing=(3.0, 3.0, 3.0))
    # a brain-like blob outside the brain, joined to it by a one-voxel bar of brain intensity:
    # the model's leak into the tongue, in small
    array = sitk.GetArrayFromImage(image)
    brain = sitk.GetArrayViewFromImage(label) > 0
    z, y, x = (int(c.mean()) for c in np.nonzero(brain))
    right = int(np.nonzero(brain[z, y])[0].max())
    brain_value = float(np.median(array[brain]))
    array[z - 8 : z + 9, y - 8 : y + 9, right + 1 : right + 27] = array[z, y, right + 3]  # scalp-like
    array[z - 5 : z + 6, y - 5 : y + 6, right + 13 : right + 24] = brain_value
    array[z - 2 : z + 3, y - 2 : y + 3, right - 2 : right + 14] = brain_value
    leaky = sitk.GetImageFromArray(array)
    leaky.CopyInformation(image)
    blob = np.zeros_like(brain)
    blob[z - 3 : z + 4, y - 3 : y + 4, right + 15 : right + 22] = True

    plain = sitk.GetArrayFromImage(segment_image(leaky, brain_bundle, InferenceOptions()).mask)
    assert plain[blob].all(), "the largest component alone keeps the attached blob"
    config = dataclasses.replace(brain_bundle.config, postprocessing={"cut_bridges_mm": 9.0})
    cutting = ModelBundle(config, brain_bundle.state_dict, brain_bundle.path)
    cut = sitk.GetArrayFromImage(segment_image(leaky, cutting, InferenceOptions()).mask)
    assert not cut[blob].any()
    assert dice(cut, brain) > dice(plain, brain)
    # each option switches its own step: without the bridge cut the blob stays (attached, so in
    # the largest component); without the largest component the bridge cut still drops it
    uncut = segment_image(leaky, cutting, InferenceOptions(cut_thin_bridges=False)).mask
    np.testing.assert_array_equal(sitk.GetArrayFromImage(uncut), plain)
    all_components = segment_image(leaky, cutting, InferenceOptions(keep_largest_component=False)).mask
    assert not sitk.GetArrayFromImage(all_components)[blob].any()
    raw = sitk.GetArrayFromImage(segment_image(leaky, cutting, InferenceOptions.without_clean_up()).mask)
    assert raw[blob].all()


def test_each_clean_up_option_switches_exactly_its_own_step():
    # a body with an axial hole (a vessel tunnel open at top and bottom: only slice filling
    # closes it) and a separate small blob
    array = np.zeros((12, 20, 20), dtype=np.uint8)
    array[1:11, 3:13, 3:13] = 1
    array[:, 7:9, 7:9] = 0  # tunnel through the body, top to bottom
    array[4:7, 15:18, 15:18] = 1  # small separate blob
    mask = sitk.GetImageFromArray(array)
    tunnel = np.zeros_like(array, dtype=bool)
    tunnel[1:11, 7:9, 7:9] = True
    blob = np.zeros_like(array, dtype=bool)
    blob[4:7, 15:18, 15:18] = True

    def cleaned(**switches) -> np.ndarray:
        return sitk.GetArrayFromImage(clean_up(mask, {"fill_holes": "slices"}, InferenceOptions(**switches)))

    default = cleaned()
    assert default[tunnel].all() and not default[blob].any()
    all_components = cleaned(keep_largest_component=False)  # hole filling stays on
    assert all_components[tunnel].all() and all_components[blob].all()
    unfilled = cleaned(bundle_fill_holes=False)  # the largest component stays on
    assert not unfilled[tunnel].any() and not unfilled[blob].any()
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(clean_up(mask, {"fill_holes": "slices"}, InferenceOptions.without_clean_up())),
        array,
    )
    # 3D filling cannot close a tunnel open at both ends: the caller's option alone leaves it
    assert not cleaned(bundle_fill_holes=False, fill_holes=True)[tunnel].any()


def test_the_bundle_clean_up_of_the_raw_mask_is_the_segmented_mask(brain_bundle):
    # what benchmarks/accuracy.py --pocketseg-from-raw relies on: inference = raw mask, then
    # apply_postprocessing with the bundle's object (every step switched on here)
    from pocketseg_core.postprocessing import apply_postprocessing

    image, _ = make_phantom("MR", size=(40, 44, 36), spacing=(4.0, 4.0, 4.0), seed=3)
    steps = {"cut_bridges_mm": 6.0, "cut_below_waist": True, "fill_holes": "3d"}
    bundle = ModelBundle(
        dataclasses.replace(brain_bundle.config, postprocessing=steps),
        brain_bundle.state_dict,
        brain_bundle.path,
    )
    segmented = segment_image(image, bundle).mask
    raw = segment_image(image, bundle, InferenceOptions.without_clean_up()).mask
    cleaned = apply_postprocessing(raw, steps)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(cleaned), sitk.GetArrayFromImage(segmented))
    assert np.count_nonzero(sitk.GetArrayFromImage(segmented)) > 1000


def test_flipped_and_permuted_copy_gives_the_same_mask_exactly(brain_bundle):
    # On the working spacing, a permuted/flipped copy reaches the network as the same array.
    image, _ = make_phantom(
        "MR", size=(40, 44, 36), spacing=(4.0, 4.0, 4.0), seed=7, centre_shift_mm=(6, -4, 3)
    )
    copy = sitk.DICOMOrient(image, "SAR")  # same voxels in physical space, other axis order/signs
    assert copy.GetDirection() != image.GetDirection() and copy.GetSize() != image.GetSize()
    mask = segment_image(image, brain_bundle).mask
    copy_mask = segment_image(copy, brain_bundle).mask
    assert_same_grid(copy_mask, copy)
    back = sitk.Resample(copy_mask, mask, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(mask))
    assert np.count_nonzero(sitk.GetArrayFromImage(mask)) > 1000


def test_rotated_flipped_anisotropic_copy_gives_the_same_mask_in_physical_space(brain_bundle):
    image, label = make_phantom("MR", size=(64, 64, 56), spacing=(3.0, 3.0, 3.0), seed=2)
    copy = _oblique(image, [84, 66, 42], (2.5, 3.2, 4.0), 0.0)
    mask = segment_image(image, brain_bundle).mask
    copy_mask = segment_image(copy, brain_bundle).mask
    assert_same_grid(copy_mask, copy)
    back = sitk.Resample(copy_mask, mask, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    # Measured 0.970. The ceiling is the copy's coarser grid (4 mm slices) and the 4 mm working
    # grid of the tiny model: each mask alone agrees with the truth only to about 0.97-0.98.
    assert dice(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(mask)) >= 0.96
    assert dice(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(label)) >= 0.96


def test_tta_of_a_flip_equivariant_network_changes_nothing(brain_bundle):
    image, _ = make_phantom("MR", size=(30, 34, 28), spacing=(4.0, 4.0, 4.0))
    network = PointwiseNetwork(3, (1, 1, 1))
    plain = segment_image(image, brain_bundle, InferenceOptions(return_probabilities=True), network=network)
    calls = len(network.batch_sizes)
    flipped = segment_image(
        image, brain_bundle, InferenceOptions(tta=True, return_probabilities=True), network=network
    )
    assert len(network.batch_sizes) - calls == 4 * calls  # identity + 3 flips
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(flipped.probabilities), sitk.GetArrayFromImage(plain.probabilities), atol=1e-5
    )


def test_fast_mode_runs_at_the_fast_spacing(brain_bundle):
    image, _ = make_phantom("MR", size=(60, 60, 60), spacing=(2.0, 2.0, 2.0))
    network = brain_bundle.build_network()
    shapes: list[tuple[int, ...]] = []
    network.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape[2:])))
    fast = segment_image(image, brain_bundle, InferenceOptions(fast=True), network=network)
    assert_same_grid(fast.mask, image)
    # 120 mm at 6 mm = 20 voxels: a single 20-voxel window (rounded up to the divisor 4)
    assert set(shapes) == {(20, 20, 20)}


def test_cancel_stops_within_a_window_and_raises(brain_bundle):
    image, _ = make_phantom("MR", size=(80, 80, 80), spacing=(2.0, 2.0, 2.0))
    network = PointwiseNetwork(3, (1, 1, 1))
    seen: list[float] = []

    def progress(fraction: float, message: str) -> bool:
        seen.append(fraction)
        return not message.startswith("window 2/")

    with pytest.raises(Cancelled, match="cancelled"):
        segment_image(image, brain_bundle, InferenceOptions(batch_size=1), progress=progress, network=network)
    assert len(network.batch_sizes) == 2  # stopped right after the second window
    assert seen == sorted(seen) and seen[0] == 0.0


def test_modality_mismatch_is_a_warning(brain_bundle, liver_bundle):
    ct, _ = make_phantom("CT", size=(40, 40, 30), spacing=(4.0, 4.0, 4.0))
    mr, _ = make_phantom("MR", size=(40, 40, 30), spacing=(4.0, 4.0, 4.0))
    assert any("looks like a CT" in m for m in segment_image(ct, brain_bundle).messages)
    assert any("looks like MR" in m for m in segment_image(mr, liver_bundle).messages)
    # no modality warning; the phantom is a body of water with no fat, so the abdomen warning of
    # inference/plausibility.py is right to appear
    messages = segment_image(ct, liver_bundle).messages
    assert not any("looks like" in m for m in messages), messages
    assert any("does not look like an abdomen" in m for m in messages), messages


def test_bad_images_are_refused(brain_bundle):
    with pytest.raises(InputImageError, match="3D volume"):
        segment_image(sitk.Image([20, 20], sitk.sitkFloat32), brain_bundle)
    image, _ = make_phantom("MR", size=(20, 20, 20), spacing=(4.0, 4.0, 4.0))
    array = sitk.GetArrayFromImage(image)
    array[3, 4, 5] = np.nan
    with pytest.raises(InputImageError, match="NaN"):
        segment_image(sitk.GetImageFromArray(array), brain_bundle)
    with pytest.raises(InputImageError, match="nothing to segment"):
        segment_image(sitk.Image([20, 20, 20], sitk.sitkFloat32), brain_bundle)


def test_real_t1_mask_has_the_input_geometry(shared_data, brain_bundle):
    path = shared_file(shared_data, "brain/swiss_atlas_t1.mha")
    image = read_image(path)
    result = segment_image(image, brain_bundle, InferenceOptions(fast=True))
    assert_same_grid(result.mask, image)
    assert np.count_nonzero(sitk.GetArrayViewFromImage(result.mask)) > 0


def test_real_ct_dicom_mask_has_the_input_geometry(shared_data, liver_bundle):
    folder = shared_file(shared_data, "liver/ts_abdomen_ct_dicom")
    image = read_image(folder)
    result = segment_image(image, liver_bundle)
    assert_same_grid(result.mask, image)
    assert result.messages == []  # a CT given to a CT model: no modality warning


def test_predictor_keeps_its_network_and_gives_segment_image_masks(brain_bundle, tmp_path):
    image, _ = make_phantom("MR", size=(40, 44, 36), spacing=(4.0, 4.0, 4.0), seed=5)
    predictor = Predictor(brain_bundle, InferenceOptions(device="cpu"))
    assert predictor.network is None
    first = predictor.segment(image)
    network = predictor.network
    assert network is not None
    path = tmp_path / "head.nii.gz"
    sitk.WriteImage(image, str(path))
    second = predictor(path)  # a file is read first
    assert predictor.network is network  # built once, kept
    expected = sitk.GetArrayFromImage(segment_image(image, brain_bundle, InferenceOptions(device="cpu")).mask)
    assert np.count_nonzero(expected) > 1000
    np.testing.assert_array_equal(sitk.GetArrayFromImage(first.mask), expected)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(second.mask), expected)
    raw = predictor.segment(image, InferenceOptions.without_clean_up(device="cpu"))
    assert predictor.network is network and np.count_nonzero(sitk.GetArrayFromImage(raw.mask)) > 1000
