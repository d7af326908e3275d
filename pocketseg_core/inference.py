"""Sliding-window inference: image in, mask on exactly the input grid out.

Pipeline of :func:`segment_image`:

1. check the content (finite, not constant) and warn when intensities do not fit the model's
   modality (a CT model given an MR and vice versa);
2. reorient to the bundle's orientation (permute/flip only, no interpolation) and resample
   linearly to the working spacing (the bundle's ``fast_spacing`` in fast mode);
3. normalise intensities (:mod:`pocketseg_core.preprocessing`);
4. slide a window over the volume (3D patches, 5-slice slabs or 2D slices, as the bundle
   says), in batches, padding to the network's ``spatial_divisor``, blending the softmax
   probabilities of overlapping windows with Gaussian importance weights; optional flip
   test-time augmentation averages the probabilities of mirrored inputs;
5. bring the probabilities back to the input grid *linearly* (exact permutation when no
   resampling was needed) and only then take the argmax/threshold;
6. keep the largest connected component per label (PocketNet section 3), after detaching
   blobs joined by thin bridges where the bundle asks for it, and fill holes (in 3D, or in
   each axial slice) where the bundle or the caller asks for it; return a ``uint8`` mask with exactly the input's geometry.

The CUDA path keeps the volume, the Gaussian and the accumulators on the GPU, runs under
``torch.autocast`` (bf16 where supported, else fp16) and ``torch.inference_mode``; on
``torch.cuda.OutOfMemoryError`` it halves the batch, and at batch 1 moves to the CPU and goes
on with the windows still to do, saying so in ``messages``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch

from pocketseg_core import geometry, io
from pocketseg_core.bundles import ModelBundle
from pocketseg_core.errors import Cancelled, InputImageError, PocketSegError
from pocketseg_core.postprocessing import (
    apply_postprocessing,
    array_box,
    fill_holes,
    nonzero_extent,
)
from pocketseg_core.preprocessing import WorkingGrid, modality_warning, to_working_grid

#: ``progress(fraction_done, message) -> bool | None``; returning ``False`` cancels the run.
ProgressCallback = Callable[[float, str], "bool | None"]

#: Gaussian importance sigma as a fraction of the window size (nnU-Net's choice; the papers
#: are silent: PocketNet's code averaged stride-1 slabs uniformly).
GAUSSIAN_SIGMA_FRACTION = 1.0 / 8.0
#: floor of the Gaussian weights, so window borders still count where only one window covers
GAUSSIAN_FLOOR = 1e-3

# progress fractions of the stages
_PREPROCESS_END = 0.1
_WINDOWS_END = 0.9


@dataclass
class InferenceOptions:
    """How to run a model. Defaults suit a clinician's click on any machine."""

    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    fast: bool = False  # run at the bundle's coarser fast_spacing (CPU users)
    tta: bool = False  # average over input flips along each axis
    overlap: float = 0.5  # fraction of a window shared with its neighbour, in [0, 1)
    batch_size: int = 4  # windows per network call (halved automatically on CUDA OOM)
    #: CUDA arithmetic of the network (ignored on the CPU): "float32" (TF32 off), "tfloat32"
    #: (TF32 convolutions), "float16" or "bfloat16" (autocast). float32 is the default: measured
    #: on an H200 it gives the CPU's masks voxel for voxel and is no slower, since these small
    #: networks are a few % of a job (docs/speed.md); bfloat16 moves boundary voxels (Dice 0.998)
    precision: str = "float32"
    amp: bool = True  # False forces "float32" whatever ``precision`` says
    #: the clean-up: largest component per label (PocketNet section 3) and the bundle's own steps
    #: (bridge cutting, hole filling); False gives the raw thresholded mask
    keep_largest_component: bool = True
    fill_holes: bool = False
    return_probabilities: bool = False
    #: speed options, off by default: the plain path is the reference that the optimised ones
    #: are checked against (Dice >= 0.999, Testing/Python/test_benchmark.py); see docs/speed.md
    channels_last: bool = False  # channels-last(-3D) memory format for network and windows
    compile: bool = False  # torch.compile the network (first call compiles: pays on many windows)
    #: window (z, y, x) instead of the bundle's (0 = whole axis); larger windows mean far fewer
    #: overlapping voxels to compute, but a network with instance norm sees other statistics
    window_size_zyx: tuple[int, int, int] | None = None


@dataclass
class SegmentationResult:
    """What :func:`segment_image` returns.

    ``mask``: ``uint8`` image on exactly the input grid (0 = background, label values of the
    bundle). ``probabilities``: ``float32`` on the input grid (foreground probability for a
    one-label model, a vector image of all class probabilities otherwise), when asked for.
    """

    mask: sitk.Image
    probabilities: sitk.Image | None
    device: str
    seconds: float
    messages: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- devices


def resolve_device(requested: str, messages: list[str] | None = None) -> torch.device:
    """``"auto"`` -> CUDA when present else CPU; a CUDA request without CUDA falls back to CPU
    with a message (never a crash on a machine whose torch build or driver lacks CUDA)."""
    requested = (requested or "auto").strip().lower()
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cpu":
        return torch.device("cpu")
    if requested.startswith("cuda") or requested == "gpu":
        name = "cuda" if requested == "gpu" else requested
        try:
            device = torch.device(name)
        except RuntimeError:
            raise PocketSegError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N") from None
        if not torch.cuda.is_available():
            if messages is not None:
                messages.append(
                    "CUDA was asked for but is not available here (no GPU or a CPU-only torch); using the CPU"
                )
            return torch.device("cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PocketSegError(
                f"device {requested} does not exist: this machine has {torch.cuda.device_count()} GPU(s) "
                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
            )
        return device
    raise PocketSegError(f"unknown device {requested!r}; use auto, cpu, cuda or cuda:N")


CUDA_PRECISIONS = ("float16", "bfloat16", "tfloat32", "float32")


def _amp_context(device: torch.device, precision: str | bool):
    """The arithmetic of a network call on ``device``: autocast for "float16"/"bfloat16", TF32
    convolutions off for "float32" (True means the default, "float16"; False, "float32")."""
    if precision is True:
        precision = "float16"
    elif precision is False:
        precision = "float32"
    if precision not in CUDA_PRECISIONS:
        raise PocketSegError(f"unknown precision {precision!r}; use one of {', '.join(CUDA_PRECISIONS)}")
    if device.type != "cuda" or precision == "tfloat32":
        return contextlib.nullcontext()
    if precision == "float32":
        cudnn = torch.backends.cudnn
        return cudnn.flags(
            enabled=cudnn.enabled,
            benchmark=cudnn.benchmark,
            deterministic=cudnn.deterministic,
            allow_tf32=False,
        )
    dtype = torch.float16 if precision == "float16" or not torch.cuda.is_bf16_supported() else torch.bfloat16
    return torch.autocast(device_type="cuda", dtype=dtype)


def _memory_format(dimensions: int) -> torch.memory_format:
    """Channels-last for a 4D (2D network) or 5D (3D network) tensor."""
    return torch.channels_last_3d if dimensions == 5 else torch.channels_last


def _prepare_network(network: torch.nn.Module, channels_last: bool, spatial_dims: int) -> torch.nn.Module:
    """Put ``network``'s weights in the memory format the windows will have (in place). The
    reference path leaves the network untouched (the layout never changes the maths)."""
    if channels_last:
        network.to(memory_format=_memory_format(spatial_dims + 2))
    return network


#: network -> its torch.compile'd wrapper, so repeated calls (many images, TTA passes) compile once
_COMPILED: dict[int, tuple[torch.nn.Module, torch.nn.Module]] = {}


def _compiled(network: torch.nn.Module) -> torch.nn.Module:
    cached = _COMPILED.get(id(network))
    if cached is None or cached[0] is not network:
        cached = (network, torch.compile(network, dynamic=False))
        _COMPILED.clear()  # one network at a time: do not keep old networks alive
        _COMPILED[id(network)] = cached
    return cached[1]


# --------------------------------------------------------------------------- windows


def gaussian_importance(
    window_size: Sequence[int], sigma_fraction: float = GAUSSIAN_SIGMA_FRACTION
) -> torch.Tensor:
    """Separable Gaussian weights of a window ``(wz, wy, wx)``, peak 1 at the centre, floor
    :data:`GAUSSIAN_FLOOR`. An axis of size 1 has weight 1."""
    weights = torch.ones(tuple(int(w) for w in window_size), dtype=torch.float32)
    for axis, size in enumerate(window_size):
        if size <= 1:
            continue
        coordinates = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
        sigma = max(size * sigma_fraction, 1e-6)
        profile = torch.exp(-0.5 * (coordinates / sigma) ** 2)
        shape = [1] * len(window_size)
        shape[axis] = size
        weights = weights * (profile / profile.max()).to(torch.float32).reshape(shape)
    return weights.clamp_min(GAUSSIAN_FLOOR)


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start indices of windows of length ``window`` covering ``[0, size)`` with at least the
    requested ``overlap`` (``size >= window``), spread evenly, first at 0 and last at the end."""
    if size <= window:
        return [0]
    stride = max(1, int(window * (1.0 - overlap)))
    count = math.ceil((size - window) / stride) + 1
    return sorted({round(i * (size - window) / (count - 1)) for i in range(count)})


def resolve_window(
    volume_shape: Sequence[int], window_size_zyx: Sequence[int], divisor_zyx: Sequence[int]
) -> tuple[int, int, int]:
    """The window actually used: 0 -> whole axis, never longer than the axis; each size
    rounded up to the divisor (the volume is padded where the window is longer)."""
    window = []
    for size, wanted, divisor in zip(volume_shape, window_size_zyx, divisor_zyx, strict=True):
        length = size if wanted == 0 else min(wanted, size)
        window.append(int(math.ceil(length / divisor) * divisor))
    return tuple(window)


def _divisor_zyx(network: torch.nn.Module, window_mode: str) -> tuple[int, int, int]:
    divisor = tuple(int(d) for d in getattr(network, "spatial_divisor", (1, 1, 1)))
    if window_mode == "slice2d":
        divisor = (1,) + divisor[-2:]
    if len(divisor) != 3:
        raise PocketSegError(f"network spatial_divisor {divisor} does not fit window mode {window_mode}")
    return divisor


class _WindowRunner:
    """Runs batches of windows through the network, handling CUDA out-of-memory.

    State that changes during a run (device, batch size) lives here so that a fallback keeps
    the windows already accumulated.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        device: torch.device,
        batch_size: int,
        amp: bool | str,
        fallback_device: torch.device | None,
        messages: list[str],
        channels_last: bool = False,
        compiled: torch.nn.Module | None = None,
    ) -> None:
        self.network = network
        self.device = device
        self.batch_size = max(1, int(batch_size))
        self.amp = amp
        self.fallback_device = fallback_device
        self.messages = messages
        self.channels_last = channels_last
        self.compiled = compiled

    def forward(self, windows: torch.Tensor, flat_2d: bool) -> torch.Tensor:
        """Softmax probabilities of ``windows`` ``(B, 1, wz, wy, wx)`` -> ``(B, K, wz, wy, wx)`` float32."""
        inputs = windows[:, :, 0] if flat_2d else windows  # (B, 1, wy, wx) for 2D networks
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=_memory_format(inputs.dim()))
        with _amp_context(self.device, self.amp):
            logits = self._call(inputs)
        if isinstance(logits, tuple | list):  # deep-supervision networks left in training mode
            logits = logits[0]
        probabilities = torch.softmax(logits.float(), dim=1)
        return probabilities.unsqueeze(2) if flat_2d else probabilities

    def _call(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.compiled is None:
            return self.network(inputs)
        try:
            return self.compiled(inputs)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:  # no compiler toolchain, an unsupported op: eager is the same maths
            self.messages.append(f"torch.compile failed ({type(error).__name__}); running uncompiled")
            self.compiled = None
            return self.network(inputs)

    def out_of_memory(self) -> bool:
        """React to an OOM: halve the batch, else move to the fallback device. False = give up."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.batch_size > 1:
            self.batch_size //= 2
            self.messages.append(f"GPU out of memory: retrying with {self.batch_size} window(s) per batch")
            return True
        if self.fallback_device is not None:
            self.messages.append(
                f"GPU out of memory even with one window per batch: continuing on the {self.fallback_device.type.upper()}"
                " (slower, same result)"
            )
            self.network.to(self.fallback_device)
            self.device = self.fallback_device
            self.fallback_device = None
            self.compiled = None  # compiled for the GPU; the CPU runs the eager network
            return True
        return False


def sliding_window_probabilities(
    volume: np.ndarray | torch.Tensor,
    network: torch.nn.Module,
    window_size_zyx: Sequence[int],
    window_mode: str,
    num_classes: int,
    overlap: float = 0.5,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    amp: bool | str = True,
    fallback_device: torch.device | str | None = "auto",
    messages: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    channels_last: bool = False,
    compile: bool = False,
) -> tuple[torch.Tensor, torch.device]:
    """Gaussian-blended softmax probabilities of a whole volume.

    Args:
        volume: normalised intensities ``(z, y, x)``.
        network: maps ``(B, 1, wz, wy, wx)`` (``(B, 1, wy, wx)`` for ``slice2d``) to logits
            with ``num_classes`` channels and the same spatial size.
        window_size_zyx: window in voxels, 0 = whole axis (rounded up to the network's
            ``spatial_divisor``; the volume is padded with its minimum where smaller).
        window_mode: ``patch3d``, ``slab`` or ``slice2d``.
        overlap: fraction of a window shared with its neighbours, in ``[0, 1)``.
        fallback_device: where to continue after an OOM at batch size 1; ``"auto"`` = CPU
            when running on CUDA, else none.
        progress: ``progress(windows_done, windows_total)``; may raise to cancel.
        channels_last, compile: speed options (see :class:`InferenceOptions`); the default
            (both off) is the reference path.

    Returns:
        ``(probabilities (K, z, y, x) float32 on the CPU, device the run ended on)``.
    """
    if not 0.0 <= overlap < 1.0:
        raise PocketSegError(f"overlap must be in [0, 1), got {overlap}")
    messages = messages if messages is not None else []
    device = torch.device(device)
    if fallback_device == "auto":
        fallback_device = torch.device("cpu") if device.type == "cuda" else None
    elif fallback_device is not None:
        fallback_device = torch.device(fallback_device)
    volume = torch.as_tensor(np.ascontiguousarray(volume) if isinstance(volume, np.ndarray) else volume)
    volume = volume.to(torch.float32)
    shape = tuple(volume.shape)
    window = resolve_window(shape, window_size_zyx, _divisor_zyx(network, window_mode))
    # Pad (at the far end) to at least one window per axis, with the background-like minimum.
    padding = [max(0, w - s) for w, s in zip(window, shape, strict=True)]
    if any(padding):
        volume = torch.nn.functional.pad(
            volume[None, None], (0, padding[2], 0, padding[1], 0, padding[0]), value=float(volume.min())
        )[0, 0]
    padded_shape = tuple(volume.shape)
    starts = [
        (z, y, x)
        for z in window_starts(padded_shape[0], window[0], overlap)
        for y in window_starts(padded_shape[1], window[1], overlap)
        for x in window_starts(padded_shape[2], window[2], overlap)
    ]

    network.to(device)
    _prepare_network(network, channels_last, 2 if window_mode == "slice2d" else 3)
    runner = _WindowRunner(
        network,
        device,
        batch_size,
        amp,
        fallback_device,
        messages,
        channels_last,
        _compiled(network) if compile else None,
    )

    def place(target: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        pinned = target.type == "cuda"
        source = volume.pin_memory() if pinned else volume
        return (
            source.to(target, non_blocking=pinned),
            gaussian_importance(window).to(target),
            torch.zeros((num_classes, *padded_shape), dtype=torch.float32, device=target),
            torch.zeros(padded_shape, dtype=torch.float32, device=target),
        )

    volume_on, gaussian, summed, weights = place(device)
    flat_2d = window_mode == "slice2d"
    done = 0
    with torch.inference_mode():
        while done < len(starts):
            batch = starts[done : done + runner.batch_size]
            slices = [tuple(slice(s, s + w) for s, w in zip(start, window, strict=True)) for start in batch]
            try:
                windows = torch.stack([volume_on[index] for index in slices])[:, None]
                probabilities = runner.forward(windows, flat_2d)
            except torch.OutOfMemoryError:
                windows = probabilities = None
                previous = runner.device
                if not runner.out_of_memory():
                    raise PocketSegError(
                        "out of memory with one window per batch; close other programs, or use --fast"
                    ) from None
                if runner.device != previous:  # move the accumulated state too: nothing is lost
                    volume_on, gaussian = volume_on.to(runner.device), gaussian.to(runner.device)
                    summed, weights = summed.to(runner.device), weights.to(runner.device)
                continue
            if probabilities.shape[1] != num_classes:
                raise PocketSegError(
                    f"the network returns {probabilities.shape[1]} classes but the bundle describes "
                    f"{num_classes} (background + labels); fix the bundle's labels or network_args"
                )
            for index, window_probabilities in zip(slices, probabilities, strict=True):
                summed[(slice(None), *index)] += window_probabilities * gaussian
                weights[index] += gaussian
            done += len(batch)
            if progress is not None:
                progress(done, len(starts))
    result = summed / weights
    result = result[:, : shape[0], : shape[1], : shape[2]]
    return result.cpu().contiguous(), runner.device


def _flips_for(window_mode: str) -> list[tuple[int, ...]]:
    """Flip TTA: the identity plus a mirror along each spatial axis of the window (array axes
    of ``(K, z, y, x)`` tensors). 2D models are not flipped across slices (it changes nothing)."""
    axes = [(2,), (3,)] if window_mode == "slice2d" else [(1,), (2,), (3,)]
    return [(), *axes]


# --------------------------------------------------------------------------- whole pipeline


def segment_image(
    image: sitk.Image,
    bundle: ModelBundle,
    options: InferenceOptions | None = None,
    progress: ProgressCallback | None = None,
    network: torch.nn.Module | None = None,
) -> SegmentationResult:
    """Segment ``image`` with ``bundle``; the mask lies on exactly the input's grid.

    Args:
        image: a 3D scalar image (any orientation, spacing, origin, pixel type).
        bundle: a loaded model bundle.
        options: see :class:`InferenceOptions`.
        progress: ``progress(fraction, message)``; returning ``False`` cancels (raises
            :class:`Cancelled` within one batch of windows; nothing is written anywhere).
        network: an already built network of the bundle (saves rebuilding it for many images).

    Raises:
        InputImageError: not 3D, NaN/inf voxels, a constant image.
        Cancelled: the callback returned ``False``.
    """
    options = options or InferenceOptions()
    if options.precision not in CUDA_PRECISIONS:
        raise PocketSegError(
            f"unknown precision {options.precision!r}; use one of {', '.join(CUDA_PRECISIONS)}"
        )
    config = bundle.config
    started = time.perf_counter()
    messages: list[str] = []
    timings: dict[str, float] = {}

    def report(fraction: float, message: str) -> None:
        if progress is not None and progress(min(max(fraction, 0.0), 1.0), message) is False:
            raise Cancelled("segmentation cancelled by the user; nothing was written")

    report(0.0, "checking the image")
    if image.GetDimension() != 3:
        raise InputImageError(
            f"the image is {image.GetDimension()}D ({io.describe_image(image)}); PocketSeg needs a 3D volume"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError("the image has several components per voxel; PocketSeg needs a scalar volume")
    io.check_image_content(image, "input image")
    device = resolve_device(options.device, messages)

    tick = time.perf_counter()
    warning = modality_warning(sitk.GetArrayViewFromImage(image), config.modality)
    if warning:
        messages.append(warning)
    spacing = config.fast_spacing if options.fast and config.fast_spacing else config.spacing
    if options.fast and not config.fast_spacing:
        messages.append("this model has no fast mode; running at its normal working spacing")
    grid = to_working_grid(image, config.orientation, spacing, config.preprocessing)
    volume = grid.volume
    timings["preprocess"] = time.perf_counter() - tick
    report(_PREPROCESS_END, "preprocessed")

    tick = time.perf_counter()
    if network is None:
        network = bundle.build_network(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    flips = _flips_for(config.window_mode) if options.tta else [()]
    total_passes = len(flips)
    summed: torch.Tensor | None = None
    used_device = device
    for pass_index, flip in enumerate(flips):

        def window_progress(done: int, total: int, pass_index: int = pass_index) -> None:
            fraction = (pass_index + done / total) / total_passes
            report(_PREPROCESS_END + (_WINDOWS_END - _PREPROCESS_END) * fraction, f"window {done}/{total}")

        flip_axes = tuple(a - 1 for a in flip)  # the volume has no class axis
        flipped = np.flip(volume, axis=flip_axes) if flip_axes else volume
        probabilities, used_device = sliding_window_probabilities(
            np.ascontiguousarray(flipped),
            network,
            tuple(options.window_size_zyx) if options.window_size_zyx else config.window_size_zyx,
            config.window_mode,
            config.num_classes,
            overlap=options.overlap,
            batch_size=options.batch_size,
            device=used_device,
            amp=options.precision if options.amp else "float32",
            fallback_device=torch.device("cpu") if used_device.type == "cuda" else None,
            messages=messages,
            progress=window_progress,
            channels_last=options.channels_last,
            compile=options.compile,
        )
        if flip:
            probabilities = torch.flip(probabilities, dims=flip)
        summed = probabilities if summed is None else summed + probabilities
    probabilities = (summed / total_passes).numpy()
    timings["network"] = time.perf_counter() - tick
    report(_WINDOWS_END, "mapping back to the input grid")

    tick = time.perf_counter()
    mask, probability_image = _to_input_grid(probabilities, grid, image, config, options)
    if options.keep_largest_component:  # the bundle's clean-up (bridges, largest component, holes...)
        mask = apply_postprocessing(mask, config.postprocessing)
    if options.fill_holes:
        mask = fill_holes(mask)
    mask.CopyInformation(image)
    timings["postprocess"] = time.perf_counter() - tick
    report(1.0, "done")
    return SegmentationResult(
        mask=mask,
        probabilities=probability_image,
        device=str(used_device),
        seconds=time.perf_counter() - started,
        messages=messages,
        timings=timings,
    )


def _channel_to_input(
    channel: np.ndarray, grid: WorkingGrid, image: sitk.Image, outside: float
) -> np.ndarray:
    """One probability channel ``(z, y, x)`` on the working grid -> array on the input grid.

    Linear interpolation in physical space onto the canonical (oriented) input grid, the border
    half-voxel extrapolated from the nearest working voxel (``outside`` only for input voxels
    beyond the working grid); then an exact permutation/flip back to the input's storage order.
    """
    channel_image = sitk.GetImageFromArray(np.ascontiguousarray(channel, dtype=np.float32))
    channel_image.CopyInformation(grid.working)
    if grid.resampled:
        # Resample onto the canonical copy of the input grid, not onto the input grid itself: two
        # storages of the same physical grid (e.g. a k axis reversed by Slicer's reader) then give
        # bit-identical probabilities, and the last step below is an exact permutation/flip.
        channel_image = sitk.Resample(
            channel_image, grid.oriented, sitk.Transform(), sitk.sitkLinear, outside, sitk.sitkFloat32, True
        )
    channel_image.CopyInformation(grid.canonical)
    back = geometry.from_canonical(channel_image, image)
    return sitk.GetArrayFromImage(back)


def _input_region_above(
    channel: np.ndarray, grid: WorkingGrid, level: float
) -> tuple[list[int], list[int]] | None:
    """Index start and size (x, y, z) of the part of ``grid.oriented`` where the linear
    interpolation of ``channel`` (on ``grid.working``) can exceed ``level``; None: nowhere.

    Why it is exact: an interpolated value is a convex combination of the working voxels whose
    centres lie less than one working voxel away along each axis (the border half-voxel takes
    the nearest one), so it exceeds ``level`` only within one voxel of a working voxel that
    does. That box, mapped into the input grid (an affine map: its corners bound it), is grown
    to whole voxels.
    """
    above = nonzero_extent(channel > level)
    if above is None:
        return None
    extents = [(low - 1.0, high + 1.0) for low, high in above]  # (z, y, x)
    corners_xyz = [
        grid.oriented.TransformPhysicalPointToContinuousIndex(
            grid.working.TransformContinuousIndexToPhysicalPoint((x, y, z))
        )
        for z in extents[0]
        for y in extents[1]
        for x in extents[2]
    ]
    lowest, highest = np.min(corners_xyz, axis=0), np.max(corners_xyz, axis=0)
    size_xyz = grid.oriented.GetSize()
    start = [max(0, math.floor(lowest[i])) for i in range(3)]
    stop = [min(size_xyz[i], math.ceil(highest[i]) + 1) for i in range(3)]
    if any(b <= a for a, b in zip(start, stop, strict=True)):
        return None
    return start, [b - a for a, b in zip(start, stop, strict=True)]


def _threshold_on_input(
    foreground: np.ndarray, grid: WorkingGrid, image: sitk.Image, label_value: int
) -> sitk.Image:
    """``label_value`` where the linear resampling of ``foreground`` onto the input grid exceeds
    0.5, as :func:`_channel_to_input` + threshold gives, but interpolated only inside
    :func:`_input_region_above`: a liver is a few % of a 512x512x200 CT, and resampling all of
    it was the largest post-processing cost."""
    canonical = np.zeros(grid.oriented.GetSize()[::-1], dtype=np.uint8)
    region = _input_region_above(foreground, grid, 0.5)
    if region is not None:
        start, size = region
        channel_image = sitk.GetImageFromArray(np.ascontiguousarray(foreground, dtype=np.float32))
        channel_image.CopyInformation(grid.working)
        part = sitk.Resample(
            channel_image,
            size,
            sitk.Transform(),
            sitk.sitkLinear,
            grid.oriented.TransformIndexToPhysicalPoint(start),
            grid.oriented.GetSpacing(),
            grid.oriented.GetDirection(),
            0.0,
            sitk.sitkFloat32,
            True,
        )
        canonical[array_box(start, size)] = np.where(sitk.GetArrayViewFromImage(part) > 0.5, label_value, 0)
    mask = sitk.GetImageFromArray(canonical)
    mask.CopyInformation(grid.canonical)
    return geometry.from_canonical(mask, image)


def _to_input_grid(
    probabilities: np.ndarray,
    grid: WorkingGrid,
    image: sitk.Image,
    config,
    options: InferenceOptions,
) -> tuple[sitk.Image, sitk.Image | None]:
    """Probabilities ``(K, z, y, x)`` on the working grid -> (uint8 mask, optional float32
    probabilities) on the input grid: resample linearly first, threshold/argmax after."""
    num_classes = probabilities.shape[0]
    probability_image = None
    label_value = config.labels[0].value if len(config.labels) == 1 else 1  # of a two-class model
    if num_classes == 2 and grid.resampled and not options.return_probabilities:
        return _threshold_on_input(probabilities[1], grid, image, label_value), None
    if num_classes == 2:
        foreground = _channel_to_input(probabilities[1], grid, image, 0.0)
        mask_array = np.where(foreground > 0.5, label_value, 0).astype(np.uint8)
        if options.return_probabilities:
            probability_image = sitk.GetImageFromArray(foreground.astype(np.float32))
    else:
        channels = np.stack(
            [
                _channel_to_input(probabilities[k], grid, image, 1.0 if k == 0 else 0.0)
                for k in range(num_classes)
            ]
        )
        mask_array = np.argmax(channels, axis=0).astype(np.uint8)
        if options.return_probabilities:
            probability_image = sitk.GetImageFromArray(
                np.moveaxis(channels, 0, -1).astype(np.float32), isVector=True
            )
    mask = sitk.GetImageFromArray(mask_array)
    mask.CopyInformation(image)
    if probability_image is not None:
        probability_image.CopyInformation(image)
    return mask, probability_image
