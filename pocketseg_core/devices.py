"""Where networks run: device choice, mixed precision, and the GPU out-of-memory fallback.

One place for what used to be written in each caller:

- :data:`DEVICE_LABELS` and :func:`device_name`: the choices a user sees ("Auto", "CPU", "GPU")
  and the device strings they mean (``auto``, ``cpu``, ``cuda``, ``cuda:N``); torch-free, so the
  Slicer modules (which load without torch) use them for their device menus;
- :func:`resolve_device`: a device string -> ``torch.device``; CUDA asked for where there is
  none falls back to the CPU with a message, never a crash;
- :func:`precision_context`: the arithmetic of an inference network call on CUDA
  (:data:`CUDA_PRECISIONS`; float32 by default), and on the CPU bfloat16 autocast where asked for
  and native (:func:`cpu_precision`), else float32;
- :func:`amp_context`, :func:`amp_dtype`: mixed precision for training on CUDA (bf16 where
  supported, else fp16), nothing on the CPU;
- :func:`memory_format`, :func:`use_channels_last`, :func:`prepare_network`,
  :func:`compiled_network`: the speed options (channels-last layout, ``torch.compile``);
- :class:`OutOfMemoryFallback`: on ``torch.OutOfMemoryError`` halve the batch, and at one item
  per batch move to the fallback device (the CPU), saying so in ``messages``.

torch is imported inside the functions that need it, so that importing this module (for the
names above) does not need torch.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pocketseg_core.errors import PocketSegError

if TYPE_CHECKING:
    import torch

#: what a device menu shows -> the device string it means
DEVICE_LABELS: dict[str, str] = {"Auto": "auto", "CPU": "cpu", "GPU": "cuda"}

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def device_name(choice: str | None) -> str:
    """A user's device choice -> ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Accepts the menu labels (``Auto``/``CPU``/``GPU``, any case), ``gpu`` for ``cuda``, and empty
    or ``None`` for ``auto``. Raises :class:`PocketSegError` for anything else.
    """
    name = (choice or "auto").strip().lower()
    name = "cuda" if name == "gpu" else name
    if not _DEVICE_PATTERN.match(name):
        raise PocketSegError(f"unknown device {choice!r}; use auto, cpu, cuda or cuda:N")
    return name


def resolve_device(requested: str | None, messages: list[str] | None = None) -> torch.device:
    """``"auto"`` -> CUDA when present else CPU; a CUDA request without CUDA falls back to CPU
    with a message (never a crash on a machine whose torch build or driver lacks CUDA)."""
    import torch

    name = device_name(requested)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    device = torch.device(name)
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


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype on ``device``: bf16 on CUDA where supported, else fp16; None on a CPU."""
    import torch

    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def amp_context(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on CUDA when ``enabled``, else a context that does nothing."""
    import torch

    dtype = amp_dtype(device) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


#: CUDA arithmetic of an inference network call. "float32" (TF32 off) is the default: on an H200
#: it gave the CPU's masks voxel for voxel and was no slower, since these small networks are a
#: few % of a job; "tfloat32" (TF32 convolutions), "float16" and "bfloat16" (autocast) are
#: options; bfloat16 moved enough boundary voxels to fall below Dice 0.999 (docs/speed.md).
CUDA_PRECISIONS = ("float32", "tfloat32", "float16", "bfloat16")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`CUDA_PRECISIONS`, else a clear error."""
    if precision not in CUDA_PRECISIONS:
        raise PocketSegError(f"unknown precision {precision!r}; use one of {', '.join(CUDA_PRECISIONS)}")
    return precision


def cpu_has_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX, as oneDNN reports it):
    only there is bfloat16 autocast faster than float32 on the CPU."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def cpu_precision(precision: str, messages: list[str] | None = None) -> str:
    """The arithmetic a CPU run uses for ``precision``: "bfloat16" where the CPU computes it
    natively (:func:`cpu_has_bfloat16`; an option, ~40 % less CPU time for the skull strip, Dice
    0.9998 against float32 on the real heads, docs/speed.md), else "float32" (CUDA's float16 and
    TF32 mean nothing on a CPU); a bfloat16 request that falls back says so in ``messages``."""
    check_precision(precision)
    if precision != "bfloat16":
        return "float32"
    if cpu_has_bfloat16():
        return "bfloat16"
    if messages is not None:
        messages.append("this CPU has no native bfloat16 (AVX512-BF16 or AMX); running in float32")
    return "float32"


def precision_context(device: torch.device, precision: str = "float32") -> contextlib.AbstractContextManager:
    """The arithmetic of an inference network call on ``device`` (see :data:`CUDA_PRECISIONS`);
    on a CPU, bfloat16 autocast for "bfloat16" where the CPU has it natively
    (:func:`cpu_precision`), else a context that does nothing (float32)."""
    import torch

    check_precision(precision)
    if device.type != "cuda":
        if cpu_precision(precision) == "bfloat16":
            return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()
    if precision == "tfloat32":  # torch's cuDNN default allows TF32
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


def memory_format(dimensions: int) -> torch.memory_format:
    """Channels-last for a 4D (2D network) or 5D (3D network) tensor."""
    import torch

    return torch.channels_last_3d if dimensions == 5 else torch.channels_last


def use_channels_last(choice: bool | None, device: torch.device, window_mode: str) -> bool:
    """Whether a run uses the channels-last layout: ``choice`` when given; automatically (None)
    on the CPU, for 3D and 2D networks alike: with the networks' channels-last instance norm
    (:class:`pocketseg_core.networks.blocks.InstanceNorm3d`) the layout stays channels-last from
    layer to layer, and a pass takes ~25 % (skull strip, 3D) and ~30 % (liver, 2D) less CPU time;
    outputs differ from the plain layout's by float rounding only. Off on CUDA (no gain there)."""
    if choice is not None:
        return bool(choice)
    return device.type == "cpu"


def prepare_network(network: torch.nn.Module, channels_last: bool, spatial_dims: int) -> torch.nn.Module:
    """Put ``network``'s weights in the memory format the windows will have (in place). The
    reference path leaves the network untouched (the layout never changes the maths)."""
    if channels_last:
        network.to(memory_format=memory_format(spatial_dims + 2))
    return network


#: network -> its torch.compile'd wrapper, so repeated calls (many images, TTA passes) compile once
_COMPILED: dict[int, tuple[torch.nn.Module, torch.nn.Module]] = {}


def compiled_network(network: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(network)``, compiled once per network (one network cached at a time)."""
    import torch

    cached = _COMPILED.get(id(network))
    if cached is None or cached[0] is not network:
        cached = (network, torch.compile(network, dynamic=False))
        _COMPILED.clear()  # one network at a time: do not keep old networks alive
        _COMPILED[id(network)] = cached
    return cached[1]


@dataclass
class OutOfMemoryFallback:
    """The device and batch size of a run that may exhaust GPU memory, and what it does then.

    A loop reads :attr:`device` and :attr:`batch_size` before each batch; when a batch raises
    ``torch.OutOfMemoryError`` it calls :meth:`after_out_of_memory` and retries. ``on_move``
    callbacks are told the new device when the run moves (to move a network, say); the loop
    moves its own tensors, so nothing computed so far is lost.
    """

    device: torch.device
    batch_size: int
    fallback_device: torch.device | None = None
    messages: list[str] = field(default_factory=list)
    on_move: list[Callable[[torch.device], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.batch_size = max(1, int(self.batch_size))

    def after_out_of_memory(self) -> bool:
        """Halve the batch, else move to the fallback device; False when neither is left."""
        import torch

        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.batch_size > 1:
            self.batch_size //= 2
            self.messages.append(f"GPU out of memory: retrying with {self.batch_size} window(s) per batch")
            return True
        return self.move_to_fallback("even with one window per batch")

    def move_to_fallback(self, why: str = "") -> bool:
        """Move to the fallback device (telling ``on_move``); False when there is none."""
        import torch

        if self.fallback_device is None:
            return False
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.messages.append(
            f"GPU out of memory{' ' + why if why else ''}: continuing on the "
            f"{self.fallback_device.type.upper()} (slower, same result)"
        )
        self.device, self.fallback_device = self.fallback_device, None
        for callback in self.on_move:
            callback(self.device)
        return True
