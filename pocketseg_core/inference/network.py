"""The predict stage: a segmentation network as a window predictor, and flip averaging.

:class:`NetworkPredictor` turns a network into the predictor that
:func:`~pocketseg_core.inference.windows.sliding_window_inference` calls: 2D networks get the
window's single slice, the call runs under autocast (CUDA) and optionally compiled or in
channels-last layout, and its logits become float32 softmax probabilities.
:func:`sliding_window_probabilities` is that loop for one network (the function training's
validation and the benchmark call); :func:`predict_probabilities` adds flip test-time
augmentation over it, as :func:`~pocketseg_core.inference.segment_image` runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from pocketseg_core.devices import (
    OutOfMemoryFallback,
    compiled_network,
    memory_format,
    precision_context,
    prepare_network,
)
from pocketseg_core.errors import PocketSegError
from pocketseg_core.inference.windows import (
    check_window_is_large_enough,
    resolve_window,
    sliding_window_inference,
    stack_context_slices,
)

WINDOW_MODES = ("patch3d", "slab", "slice2d")


def window_divisor(network: torch.nn.Module, window_mode: str) -> tuple[int, int, int]:
    """What each window size ``(z, y, x)`` must be a multiple of for ``network`` (its
    ``spatial_divisor``; a 2D network sees one slice, so z is free)."""
    divisor = tuple(int(d) for d in getattr(network, "spatial_divisor", (1, 1, 1)))
    if window_mode == "slice2d":
        divisor = (1,) + divisor[-2:]
    if len(divisor) != 3:
        raise PocketSegError(f"network spatial_divisor {divisor} does not fit window mode {window_mode}")
    return divisor


class NetworkPredictor:
    """``windows (B, C, wz, wy, wx) -> softmax probabilities (B, K, wz, wy, wx)`` of a network
    (``C``: the slice and its context slices for a 2.5D network, else 1).

    Follows the run's device: :meth:`move_to` (an ``on_move`` callback of the run's
    :class:`~pocketseg_core.devices.OutOfMemoryFallback`) moves the network and drops the
    compiled copy (it was compiled for the GPU; the CPU runs the eager network).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        num_classes: int,
        window_mode: str,
        fallback: OutOfMemoryFallback,
        precision: str = "float32",
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        self.network = network
        self.num_classes = num_classes
        self.flat_2d = window_mode == "slice2d"
        self.fallback = fallback
        self.precision = precision
        self.channels_last = channels_last
        self.compiled = compiled_network(network) if compile else None

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        inputs = windows[:, :, 0] if self.flat_2d else windows  # (B, 1, wy, wx) for 2D networks
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=memory_format(inputs.dim()))
        with precision_context(self.fallback.device, self.precision):
            logits = self._call(inputs)
        if isinstance(logits, tuple | list):  # deep-supervision networks left in training mode
            logits = logits[0]
        probabilities = torch.softmax(logits.float(), dim=1)
        if probabilities.shape[1] != self.num_classes:
            raise PocketSegError(
                f"the network returns {probabilities.shape[1]} classes but the bundle describes "
                f"{self.num_classes} (background + labels); fix the bundle's labels or network_args"
            )
        return probabilities.unsqueeze(2) if self.flat_2d else probabilities

    def _call(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.compiled is None:
            return self.network(inputs)
        try:
            return self.compiled(inputs)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:  # no compiler toolchain, an unsupported op: eager is the same maths
            self.fallback.messages.append(
                f"torch.compile failed ({type(error).__name__}); running uncompiled"
            )
            self.compiled = None
            return self.network(inputs)

    def move_to(self, device: torch.device) -> None:
        self.network.to(device)
        self.compiled = None


def sliding_window_probabilities(
    volume: np.ndarray | torch.Tensor,
    network: torch.nn.Module,
    window_size_zyx: Sequence[int],
    window_mode: str,
    num_classes: int,
    overlap: float = 0.5,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    context_slices: int = 0,
    precision: str = "float32",
    fallback_device: torch.device | str | None = "auto",
    messages: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    channels_last: bool = False,
    compile: bool = False,
) -> tuple[torch.Tensor, torch.device]:
    """Gaussian-blended softmax probabilities of a whole volume through ``network``.

    Args:
        volume: normalised intensities ``(z, y, x)``.
        network: maps ``(B, 1, wz, wy, wx)`` (``(B, 2c+1, wy, wx)`` for ``slice2d``) to logits
            with ``num_classes`` channels and the same spatial size.
        window_size_zyx: window in voxels, 0 = whole axis (rounded up to the network's
            ``spatial_divisor``; the volume is padded with its minimum where smaller).
        window_mode: ``patch3d``, ``slab`` or ``slice2d``.
        context_slices: ``slice2d`` only: the network also sees this many neighbouring slices
            each side, as channels (:func:`~pocketseg_core.inference.windows.stack_context_slices`).
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
    device = torch.device(device)
    if fallback_device == "auto":
        fallback_device = torch.device("cpu") if device.type == "cuda" else None
    elif fallback_device is not None:
        fallback_device = torch.device(fallback_device)
    divisor = window_divisor(network, window_mode)
    check_window_is_large_enough(
        volume.shape, resolve_window(tuple(volume.shape), window_size_zyx, divisor), divisor
    )
    fallback = OutOfMemoryFallback(
        device, batch_size, fallback_device, messages if messages is not None else []
    )
    network.to(device)
    prepare_network(network, channels_last, 2 if window_mode == "slice2d" else 3)
    predictor = NetworkPredictor(
        network, num_classes, window_mode, fallback, precision, channels_last, compile
    )
    fallback.on_move.append(predictor.move_to)
    if context_slices:
        if window_mode != "slice2d":
            raise PocketSegError(f"context_slices is for slice2d networks, not {window_mode}")
        volume = stack_context_slices(np.asarray(volume, dtype=np.float32), context_slices)
    return sliding_window_inference(
        volume, window_size_zyx, predictor, overlap, divisor_zyx=divisor, fallback=fallback, progress=progress
    )


def flips_for(window_mode: str) -> list[tuple[int, ...]]:
    """Flip TTA: the identity plus a mirror along each spatial axis of the window (array axes
    of ``(K, z, y, x)`` tensors). 2D models are not flipped across slices (it changes nothing)."""
    axes = [(2,), (3,)] if window_mode == "slice2d" else [(1,), (2,), (3,)]
    return [(), *axes]


def predict_probabilities(
    volume: np.ndarray,
    network: torch.nn.Module,
    window_size_zyx: Sequence[int],
    window_mode: str,
    num_classes: int,
    device: torch.device,
    tta: bool = False,
    overlap: float = 0.5,
    batch_size: int = 4,
    precision: str = "float32",
    channels_last: bool = False,
    compile: bool = False,
    messages: list[str] | None = None,
    progress: Callable[[float, str], None] | None = None,
    context_slices: int = 0,
) -> tuple[np.ndarray, torch.device]:
    """Probabilities ``(K, z, y, x)`` float32 of ``volume`` ``(z, y, x)``, averaged over the
    flipped copies when ``tta``; returns them with the device the run ended on (the CPU after
    a GPU out-of-memory fallback). ``progress(fraction of all windows, message)``;
    ``context_slices``: see :func:`sliding_window_probabilities`."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    flips = flips_for(window_mode) if tta else [()]
    summed: torch.Tensor | None = None
    used_device = device
    for pass_index, flip in enumerate(flips):

        def window_progress(done: int, total: int, pass_index: int = pass_index) -> None:
            if progress is not None:
                progress((pass_index + done / total) / len(flips), f"window {done}/{total}")

        flip_axes = tuple(a - 1 for a in flip)  # the volume has no class axis
        flipped = np.flip(volume, axis=flip_axes) if flip_axes else volume
        probabilities, used_device = sliding_window_probabilities(
            np.ascontiguousarray(flipped),
            network,
            window_size_zyx,
            window_mode,
            num_classes,
            overlap=overlap,
            batch_size=batch_size,
            device=used_device,
            precision=precision,
            fallback_device=torch.device("cpu") if used_device.type == "cuda" else None,
            messages=messages,
            progress=window_progress,
            channels_last=channels_last,
            compile=compile,
            context_slices=context_slices,
        )
        if flip:
            probabilities = torch.flip(probabilities, dims=flip)
        summed = probabilities if summed is None else summed + probabilities
    return (summed / len(flips)).numpy(), used_device
