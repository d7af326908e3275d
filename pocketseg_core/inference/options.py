"""What a caller chooses about a run (:class:`InferenceOptions`) and what it gets back
(:class:`SegmentationResult`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import SimpleITK as sitk

#: ``progress(fraction_done, message) -> bool | None``; returning ``False`` cancels the run.
ProgressCallback = Callable[[float, str], "bool | None"]


@dataclass
class InferenceOptions:
    """How to run a model. Defaults suit a clinician's click on any machine."""

    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N" (pocketseg_core.devices.device_name)
    fast: bool = False  # run at the bundle's coarser fast_spacing (CPU users)
    tta: bool = False  # average over input flips along each axis
    overlap: float = 0.5  # fraction of a window shared with its neighbour, in [0, 1)
    batch_size: int = 4  # windows per network call (halved automatically on CUDA OOM)
    #: arithmetic of the network: "float32" (default: the same masks on every machine), on CUDA
    #: also "tfloat32", "float16" or "bfloat16" (pocketseg_core.devices.CUDA_PRECISIONS); on the
    #: CPU only "bfloat16" changes anything, and only where the CPU has it natively (AVX512-BF16,
    #: AMX): ~40 % less CPU time for the skull strip, Dice 0.9998 against float32 (docs/speed.md)
    precision: str = "float32"
    amp: bool = True  # False forces "float32" whatever ``precision`` says
    #: the clean-up, in this order, one step per option (pocketseg_core.inference.postprocess):
    #: detach blobs hanging by strands thinner than the bundle's cut_bridges_mm (where it sets one)
    cut_thin_bridges: bool = True
    #: keep only the largest connected component of each label (PocketNet section 3)
    keep_largest_component: bool = True
    #: the bundle's own hole filling ("3d", or "slices": each axial slice), where it sets one
    bundle_fill_holes: bool = True
    #: also fill every enclosed hole in 3D
    fill_holes: bool = False
    return_probabilities: bool = False
    #: speed options, off by default: the plain path is the reference that the optimised ones
    #: are checked against (Dice >= 0.999, Testing/Python/test_benchmark.py); see docs/speed.md
    #: channels-last(-3D) memory format for network and windows; None = automatic: on for the
    #: CPU (with the networks' channels-last instance norm: ~25 % less CPU time per pass for the
    #: shipped skull strip, ~30 % for the liver; float rounding apart, the plain layout's maths),
    #: off on CUDA (no gain, docs/speed.md)
    channels_last: bool | None = None
    compile: bool = False  # torch.compile the network (first call compiles: pays on many windows)
    #: window (z, y, x) instead of the bundle's (0 = whole axis); larger windows mean far fewer
    #: overlapping voxels to compute, but a network with instance norm sees other statistics
    window_size_zyx: tuple[int, int, int] | None = None
    #: what runs the network: "auto" (ONNX Runtime for a whole-grid model with an ONNX network on
    #: the CPU, torch otherwise: pocketseg_core.inference.onnx_backend.choose_backend), "torch",
    #: or "onnxruntime" (an error where it cannot run)
    backend: str = "auto"

    @classmethod
    def without_clean_up(cls, **changes: Any) -> InferenceOptions:
        """Options giving the raw thresholded network output: every clean-up step off."""
        raw = {"cut_thin_bridges": False, "keep_largest_component": False, "bundle_fill_holes": False}
        return dataclasses.replace(cls(), **{**raw, **changes})


@dataclass
class SegmentationResult:
    """What :func:`~pocketseg_core.inference.segment_image` returns.

    ``mask``: ``uint8`` image on exactly the input grid (0 = background, label values of the
    bundle). ``probabilities``: ``float32`` on the input grid (foreground probability for a
    one-label model, a vector image of all class probabilities otherwise), when asked for.
    ``timings``: seconds of the stages ``preprocess``, ``network``, ``postprocess``.
    """

    mask: sitk.Image
    probabilities: sitk.Image | None
    device: str
    seconds: float
    messages: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    backend: str = "torch"  # what ran the network: "torch" or "onnxruntime"
