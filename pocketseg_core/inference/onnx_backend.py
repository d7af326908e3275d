"""The network stage without torch: a bundle's ONNX network in ONNX Runtime on the CPU.

A bundle may carry ``network.onnx``, exported from its ``weights.pt`` by
:func:`pocketseg_core.onnx_export.export_bundle` (same maths, checked against torch by the tests)
and recorded by sha256 in ``bundle.json`` and the shipped catalog. Where the bundle's window is
the whole working grid (``window_size_zyx`` all 0: one pass, nothing to blend), ONNX Runtime
runs it on the CPU with no torch import at all: a ~30 MB install instead of torch's ~700 MB,
~1 s less start-up per process, and a faster CPU pass for the small 3D networks
(docs/speed.md). Anything it cannot do (CUDA, windows, compile, reduced precision) is the
torch path's (:func:`choose_backend` says which runs and why).

Nothing here imports torch; ``onnxruntime`` is imported on first use.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from pocketseg_core.errors import PocketSegError
from pocketseg_core.inference.windows import check_window_is_large_enough, resolve_window

BACKENDS = ("auto", "torch", "onnxruntime")
ONNX_INPUT = "image"
ONNX_OUTPUT = "logits"
#: metadata key of the ONNX model: the network's spatial divisor "z,y,x"
DIVISOR_KEY = "pocketseg.spatial_divisor"


def onnxruntime_installed() -> bool:
    """Whether ``onnxruntime`` can be imported (found, not imported)."""
    return importlib.util.find_spec("onnxruntime") is not None


def uses_gpu_by_default() -> bool:
    """Whether device "auto" means torch on a GPU here: this machine has an NVIDIA driver that
    torch could use, told without importing torch (Linux: the driver's /proc entry; Windows: its
    DLL). A driver without a CUDA torch costs one torch import, then the CPU."""
    if os.path.exists("/proc/driver/nvidia/version"):
        return True
    if os.name == "nt":
        system_root = os.environ.get("SystemRoot", r"C:\Windows")
        return os.path.exists(os.path.join(system_root, "System32", "nvcuda.dll"))
    return False


def onnx_unsupported(config: Any, options: Any) -> str:
    """Why ONNX Runtime cannot run ``options`` with the bundle ``config`` ('' when it can)."""
    if not getattr(config, "onnx_sha256", ""):
        return "the model has no ONNX network"
    if config.window_mode != "patch3d" or any(int(w) != 0 for w in config.window_size_zyx):
        return "the model runs in windows (ONNX Runtime runs whole-grid 3D models only)"
    if options.window_size_zyx and any(int(w) != 0 for w in options.window_size_zyx):
        return "a window size was asked for"
    if options.compile:
        return "torch.compile was asked for"
    if options.amp and options.precision != "float32":
        return f"precision {options.precision} was asked for"
    if options.channels_last is False:
        return "the plain memory layout (channels_last off) was asked for"
    if str(options.device).startswith("cuda"):
        return "a GPU was asked for"
    return ""


def choose_backend(config: Any, options: Any) -> tuple[str, str]:
    """``(backend, reason)``: ``"onnxruntime"`` or ``"torch"``, and why (for the log).

    ``options.backend``: ``"torch"`` always runs torch; ``"onnxruntime"`` runs ONNX Runtime or
    raises :class:`PocketSegError` saying why it cannot; ``"auto"`` runs ONNX Runtime where the
    bundle has an ONNX network, onnxruntime is installed, the options need nothing of torch's,
    and no GPU is in play (``device`` "cpu", or "auto" on a machine without an NVIDIA driver).
    """
    wanted = getattr(options, "backend", "auto")
    if wanted not in BACKENDS:
        raise PocketSegError(f"backend must be one of {', '.join(BACKENDS)}; got {wanted!r}")
    if wanted == "torch":
        return "torch", "asked for"
    problem = onnx_unsupported(config, options)
    if not problem and not onnxruntime_installed():
        problem = "onnxruntime is not installed (pip install onnxruntime)"
    if wanted == "onnxruntime":
        if problem:
            raise PocketSegError(f"cannot run on ONNX Runtime: {problem}; use --backend torch or auto")
        return "onnxruntime", "asked for"
    if problem:
        return "torch", problem
    if str(options.device) == "auto" and uses_gpu_by_default() and importlib.util.find_spec("torch"):
        return "torch", "an NVIDIA driver is present: torch may use the GPU"
    return "onnxruntime", "whole-grid model on the CPU"


def cpu_threads() -> int:
    """Threads for ONNX Runtime: ``$OMP_NUM_THREADS`` when set (as torch reads it), else the
    CPUs this process may use."""
    configured = os.environ.get("OMP_NUM_THREADS", "").strip()
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class OnnxNetwork:
    """A bundle's ONNX network in an ONNX Runtime ``InferenceSession`` on the CPU: ``(z, y, x)`` volume -> softmax
    probabilities ``(K, z, y, x)``, in one pass over the whole (padded) volume.

    Args:
        model: the ONNX file's bytes, already checked against the bundle's sha256
            (:func:`pocketseg_core.bundles.read_onnx_model`). Its metadata holds the network's
            ``spatial_divisor`` (what each padded size ``(z, y, x)`` must be a multiple of),
            written by the export.
        threads: intra-op threads (default :func:`cpu_threads`).
    """

    def __init__(self, model: bytes, threads: int | None = None) -> None:
        import onnxruntime

        runtime_options = onnxruntime.SessionOptions()
        runtime_options.intra_op_num_threads = threads or cpu_threads()
        runtime_options.inter_op_num_threads = 1
        runtime_options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        runtime_options.log_severity_level = 3  # errors only: its warnings are not the user's business
        # no memory pattern: it plans one block for a whole pass from the first pass's sizes and
        # allocates it beside the arena's chunks, which doubled the memory of the second and later
        # passes (287 -> 535 MB for the skull strip) for no speed (docs/speed.md)
        runtime_options.enable_mem_pattern = False
        try:
            self.runtime = onnxruntime.InferenceSession(
                model, runtime_options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own exception types
            raise PocketSegError(
                f"ONNX Runtime cannot load the model's ONNX network ({error}); re-export it with "
                "pocketseg export-onnx, or run with --backend torch"
            ) from None
        self.divisor = divisor_of(self.runtime)
        self.threads = runtime_options.intra_op_num_threads

    def logits(self, volume: np.ndarray) -> np.ndarray:
        """Raw network output ``(K, z, y, x)`` float32 of a padded ``(z, y, x)`` volume."""
        inputs = np.ascontiguousarray(volume, dtype=np.float32)[None, None]
        return self.runtime.run([ONNX_OUTPUT], {ONNX_INPUT: inputs})[0][0]

    def probabilities(
        self,
        volume: np.ndarray,
        num_classes: int,
        tta: bool = False,
        progress: Callable[[float, str], None] | None = None,
    ) -> np.ndarray:
        """Softmax probabilities ``(K, z, y, x)`` float32 of ``volume`` ``(z, y, x)``, averaged
        over its mirror images along each axis when ``tta``; ``progress(fraction, message)``
        after each pass (may raise to cancel).

        The volume is padded at the far end with its minimum to a multiple of the divisor, as
        the torch path pads a window (:mod:`pocketseg_core.inference.windows`).
        """
        shape = tuple(int(s) for s in volume.shape)
        padded_shape = resolve_window(shape, (0, 0, 0), self.divisor)  # one window: the whole grid
        check_window_is_large_enough(shape, padded_shape, self.divisor)
        padded = np.full(padded_shape, volume.min(), dtype=np.float32)
        padded[: shape[0], : shape[1], : shape[2]] = volume
        flips: list[tuple[int, ...]] = [()] + ([(0,), (1,), (2,)] if tta else [])
        summed: np.ndarray | None = None
        for index, flip in enumerate(flips):
            source = np.flip(padded, axis=flip) if flip else padded
            logits = self.logits(source)
            if logits.shape[0] != num_classes:
                raise PocketSegError(
                    f"the ONNX network returns {logits.shape[0]} classes but the bundle describes "
                    f"{num_classes} (background + labels); re-export the ONNX network from the weights"
                )
            probabilities = softmax(logits)
            if flip:
                probabilities = np.flip(probabilities, axis=tuple(a + 1 for a in flip))
            summed = probabilities if summed is None else summed + probabilities
            if progress is not None:
                progress((index + 1) / len(flips), f"pass {index + 1}/{len(flips)}")
        result = summed / len(flips) if len(flips) > 1 else summed
        return np.ascontiguousarray(result[:, : shape[0], : shape[1], : shape[2]], dtype=np.float32)


def divisor_of(runtime: Any) -> tuple[int, int, int]:
    """The ``spatial_divisor`` the export wrote into the ONNX model's metadata."""
    text = runtime.get_modelmeta().custom_metadata_map.get(DIVISOR_KEY, "")
    try:
        divisor = tuple(int(v) for v in text.split(","))
    except ValueError:
        divisor = ()
    if len(divisor) != 3 or min(divisor) < 1:
        raise PocketSegError(
            f"the model's ONNX network does not record its {DIVISOR_KEY} (got {text!r}); re-export it "
            "with pocketseg export-onnx"
        )
    return divisor


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 0, float32, computed in place on a shifted copy."""
    shifted = logits - logits.max(axis=0, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=0, keepdims=True)
    return shifted
