"""The window loop: any predictor slid over a volume, outputs blended with Gaussian weights.

:func:`sliding_window_inference` is the generic part of inference, in the manner of MONAI's
``sliding_window_inference``: it knows nothing of networks, bundles or images. It cuts a
``(z, y, x)`` volume into overlapping windows (padding with the volume's minimum where a window is
longer than an axis), calls a predictor on batches of them, and blends the predictor's outputs
with separable Gaussian importance weights (nnU-Net's sigma = window / 8). A GPU out-of-memory
error halves the batch and then moves the run to the fallback device
(:class:`~pocketseg_core.devices.OutOfMemoryFallback`); the windows done so far are kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from pocketseg_core.devices import OutOfMemoryFallback
from pocketseg_core.errors import InputImageError, PocketSegError

if TYPE_CHECKING:  # torch is imported where windows are run: planning them needs none
    import torch

#: Gaussian importance sigma as a fraction of the window size (nnU-Net's choice; the papers
#: are silent: PocketNet's code averaged stride-1 slabs uniformly).
GAUSSIAN_SIGMA_FRACTION = 1.0 / 8.0
#: floor of the Gaussian weights, so window borders still count where only one window covers
GAUSSIAN_FLOOR = 1e-3

#: ``predictor(windows (B, C, wz, wy, wx)) -> outputs (B, K, wz, wy, wx)`` float32, same device
#: (``C`` = 1, or the channels of a ``(C, z, y, x)`` volume)
WindowPredictor = Callable[["torch.Tensor"], "torch.Tensor"]


def gaussian_importance(
    window_size: Sequence[int], sigma_fraction: float = GAUSSIAN_SIGMA_FRACTION
) -> torch.Tensor:
    """Separable Gaussian weights of a window ``(wz, wy, wx)``, peak 1 at the centre, floor
    :data:`GAUSSIAN_FLOOR`. An axis of size 1 has weight 1."""
    import torch

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


def check_window_is_large_enough(shape: Sequence[int], window: Sequence[int], divisor: Sequence[int]) -> None:
    """Refuse a volume so small that the network's coarsest level would hold a single voxel
    (instance normalisation has no statistics there: torch raises deep inside the network).

    Raises:
        InputImageError: names the working-grid size; the field of view must be larger.
    """
    coarsest = [w // d for w, d in zip(window, divisor, strict=True)]
    if math.prod(coarsest) < 2:
        size = "x".join(str(s) for s in reversed(tuple(shape)))
        raise InputImageError(
            f"the image is too small for this model: {size} voxels (x, y, z) at the model's working "
            f"spacing, which its {max(divisor)}-fold downsampling reduces to a single voxel; give an "
            f"image with a larger field of view (a whole head or abdomen)."
        )


def stack_context_slices(volume: np.ndarray, context_slices: int) -> np.ndarray:
    """``(z, y, x)`` -> ``(2 c + 1, z, y, x)``: channel ``k`` of slice ``z`` is slice ``z + k - c``,
    the slices beyond either end filled with the volume's minimum (as training pads its patches),
    so that a window of one slice carries its ``c`` neighbours each side (2.5D networks)."""
    if context_slices <= 0:
        return volume[None]
    padded = np.pad(
        volume, ((context_slices, context_slices), (0, 0), (0, 0)), constant_values=float(volume.min())
    )
    depth = volume.shape[0]
    return np.stack([padded[k : k + depth] for k in range(2 * context_slices + 1)])


def window_grid(
    volume_shape: Sequence[int], window_zyx: Sequence[int], overlap: float
) -> list[tuple[int, int, int]]:
    """Start ``(z, y, x)`` of every window over ``volume_shape`` (padded to at least one window
    per axis), in the order the loop runs them."""
    padded = [max(w, s) for w, s in zip(window_zyx, volume_shape, strict=True)]
    return [
        (z, y, x)
        for z in window_starts(padded[0], window_zyx[0], overlap)
        for y in window_starts(padded[1], window_zyx[1], overlap)
        for x in window_starts(padded[2], window_zyx[2], overlap)
    ]


def sliding_window_inference(
    volume: np.ndarray | torch.Tensor,
    window_size_zyx: Sequence[int],
    predictor: WindowPredictor,
    overlap: float = 0.5,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    divisor_zyx: Sequence[int] = (1, 1, 1),
    fallback: OutOfMemoryFallback | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, torch.device]:
    """Gaussian-blended outputs of ``predictor`` over a whole volume.

    Args:
        volume: ``(z, y, x)`` values (normalised intensities), or ``(C, z, y, x)`` channels that
            every window carries (:func:`stack_context_slices`).
        window_size_zyx: window in voxels, 0 = whole axis; rounded up to ``divisor_zyx``
            (:func:`resolve_window`).
        predictor: ``(B, C, wz, wy, wx)`` windows on the run's device (``C`` = 1 for a
            ``(z, y, x)`` volume) -> ``(B, K, wz, wy, wx)`` float32 outputs (probabilities) on
            the same device.
        overlap: fraction of a window shared with its neighbours, in ``[0, 1)``.
        batch_size, device: used when no ``fallback`` is given; otherwise the fallback's own
            device and batch size rule (and change on out-of-memory errors).
        fallback: what to do on ``torch.OutOfMemoryError``; without one, the batch is halved
            and at one window per batch the error becomes a :class:`PocketSegError`.
        progress: ``progress(windows_done, windows_total)``; may raise to cancel.

    Returns:
        ``(outputs (K, z, y, x) float32 on the CPU, device the run ended on)``.
    """
    import torch

    if not 0.0 <= overlap < 1.0:
        raise PocketSegError(f"overlap must be in [0, 1), got {overlap}")
    state = fallback or OutOfMemoryFallback(torch.device(device), batch_size)
    volume = torch.as_tensor(np.ascontiguousarray(volume) if isinstance(volume, np.ndarray) else volume)
    volume = volume.to(torch.float32)
    if volume.dim() == 3:
        volume = volume[None]
    if volume.dim() != 4:
        raise PocketSegError(f"expected a (z, y, x) or (C, z, y, x) volume, got shape {tuple(volume.shape)}")
    shape = tuple(volume.shape[1:])
    window = resolve_window(shape, window_size_zyx, divisor_zyx)
    # Pad (at the far end) to at least one window per axis, with the background-like minimum.
    padding = [max(0, w - s) for w, s in zip(window, shape, strict=True)]
    if any(padding):
        volume = torch.nn.functional.pad(
            volume[None], (0, padding[2], 0, padding[1], 0, padding[0]), value=float(volume.min())
        )[0]
    padded_shape = tuple(volume.shape[1:])
    starts = window_grid(padded_shape, window, overlap)

    def place(target: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pinned = target.type == "cuda"
        source = volume.pin_memory() if pinned else volume
        return (
            source.to(target, non_blocking=pinned),
            gaussian_importance(window).to(target),
            torch.zeros(padded_shape, dtype=torch.float32, device=target),
        )

    try:
        volume_on, gaussian, weights = place(state.device)
    except torch.OutOfMemoryError:  # not even the volume fits: no batch size can help
        if not state.move_to_fallback("for the volume itself"):
            raise PocketSegError("out of GPU memory for the volume itself; use the CPU, or --fast") from None
        volume_on, gaussian, weights = place(state.device)
    summed: torch.Tensor | None = None  # (K, *padded_shape), allocated when K is known
    done = 0
    with torch.inference_mode():
        while done < len(starts):
            batch = starts[done : done + state.batch_size]
            slices = [tuple(slice(s, s + w) for s, w in zip(start, window, strict=True)) for start in batch]
            try:
                windows = torch.stack([volume_on[(slice(None), *index)] for index in slices])
                outputs = predictor(windows)
                if summed is None:
                    summed = torch.zeros(
                        (outputs.shape[1], *padded_shape), dtype=torch.float32, device=state.device
                    )
            except torch.OutOfMemoryError:
                windows = outputs = None
                previous = state.device
                if not state.after_out_of_memory():
                    raise PocketSegError(
                        "out of memory with one window per batch; close other programs, or use --fast"
                    ) from None
                if state.device != previous:  # move the accumulated state too: nothing is lost
                    volume_on, gaussian = volume_on.to(state.device), gaussian.to(state.device)
                    weights = weights.to(state.device)
                    summed = summed.to(state.device) if summed is not None else None
                continue
            for index, window_outputs in zip(slices, outputs, strict=True):
                summed[(slice(None), *index)] += window_outputs * gaussian
                weights[index] += gaussian
            done += len(batch)
            if progress is not None:
                progress(done, len(starts))
    result = summed / weights
    result = result[:, : shape[0], : shape[1], : shape[2]]
    return result.cpu().contiguous(), state.device
