"""The whole job: image in, mask on exactly the input grid out, in four stages.

1. read (:func:`read_input`): a path is read, an image taken as it is; either must be a 3D
   scalar volume with finite, non-constant voxels;
2. preprocess (:func:`preprocess`): warn when intensities do not fit the model's modality (a CT
   model given an MR and vice versa); reorient to the bundle's orientation (permute/flip only)
   and resample linearly to the working spacing (the bundle's ``fast_spacing`` in fast mode);
   normalise intensities (:mod:`pocketseg_core.preprocessing`);
3. predict: on torch (:func:`~pocketseg_core.inference.network.predict_probabilities`), slide
   the bundle's window (3D patches, 5-slice slabs or 2D slices) over the volume in batches,
   blending softmax probabilities with Gaussian weights, optionally averaged over flips; on
   CUDA under autocast, with the out-of-memory fallback of :mod:`pocketseg_core.devices`. A
   whole-grid model with an ONNX network runs on ONNX Runtime instead where it can (the CPU;
   :mod:`pocketseg_core.inference.onnx_backend`): one pass, and no torch import at all;
4. postprocess (:func:`postprocess`): probabilities back to the input grid linearly, then
   threshold/argmax, then the clean-up steps the options switch on
   (:mod:`pocketseg_core.inference.postprocess`); a CT model's mask that cannot be its
   structure (no abdomen, no liver-like tissue under it) is warned about
   (:mod:`pocketseg_core.inference.plausibility`).

:func:`segment_image` runs them once; a :class:`Predictor` keeps the bundle's network built
between calls (each click of a Slicer button, each file of a batch).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from pocketseg_core import io
from pocketseg_core.bundles import BundleConfig, ModelBundle, read_onnx_model
from pocketseg_core.devices import check_precision, cpu_precision, resolve_device, use_channels_last
from pocketseg_core.errors import Cancelled, InputImageError
from pocketseg_core.inference.onnx_backend import OnnxNetwork, choose_backend
from pocketseg_core.inference.options import InferenceOptions, ProgressCallback, SegmentationResult
from pocketseg_core.inference.plausibility import anatomy_warnings
from pocketseg_core.inference.postprocess import clean_up, to_input_grid
from pocketseg_core.preprocessing import (
    IntensityAnchor,
    WorkingGrid,
    anchor_renormalised,
    masked_intensity_statistics,
    modality_warning,
    to_working_grid,
)

if TYPE_CHECKING:
    import torch

# progress fractions of the stages
_PREPROCESS_END = 0.1
_WINDOWS_END = 0.9


def read_input(source: sitk.Image | str | os.PathLike) -> sitk.Image:
    """The read stage: ``source`` (an image, or a file or DICOM folder to read) as a checked
    3D scalar image. Raises :class:`InputImageError` naming what is wrong."""
    image = source if isinstance(source, sitk.Image) else io.read_image(source)
    if image.GetDimension() != 3:
        raise InputImageError(
            f"the image is {image.GetDimension()}D ({io.describe_image(image)}); PocketSeg needs a 3D volume"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError("the image has several components per voxel; PocketSeg needs a scalar volume")
    io.check_image_content(image, "input image")
    return image


def preprocess(image: sitk.Image, config: BundleConfig, fast: bool, messages: list[str]) -> WorkingGrid:
    """The preprocess stage: ``image`` on the model's working grid, normalised (``grid.volume``
    is ``(z, y, x)`` float32); warnings go to ``messages``."""
    warning = modality_warning(sitk.GetArrayViewFromImage(image), config.modality)
    if warning:
        messages.append(warning)
    spacing = config.fast_spacing if fast and config.fast_spacing else config.spacing
    if fast and not config.fast_spacing:
        messages.append("this model has no fast mode; running at its normal working spacing")
    return to_working_grid(image, config.orientation, spacing, config.preprocessing)


def load_network(bundle: ModelBundle, options: InferenceOptions, messages: list[str] | None = None) -> Any:
    """The bundle's network ready for ``options``: an :class:`OnnxNetwork` where ONNX Runtime
    runs it (:func:`~pocketseg_core.inference.onnx_backend.choose_backend`), else the torch
    network on the device the options resolve to (torch is imported only then)."""
    backend, _reason = choose_backend(bundle.config, options)
    if backend == "onnxruntime":
        return OnnxNetwork(read_onnx_model(bundle))
    return bundle.build_network(resolve_device(options.device, messages))


def postprocess(
    probabilities: np.ndarray,
    grid: WorkingGrid,
    image: sitk.Image,
    config: BundleConfig,
    options: InferenceOptions,
) -> tuple[sitk.Image, sitk.Image | None]:
    """The postprocess stage: probabilities ``(K, z, y, x)`` on the working grid -> (cleaned
    ``uint8`` mask, optional ``float32`` probabilities), both with exactly ``image``'s grid."""
    label_value = config.labels[0].value if len(config.labels) == 1 else 1  # of a two-class model
    mask, probability_image = to_input_grid(
        probabilities, grid, image, label_value, options.return_probabilities
    )
    mask = clean_up(mask, config.postprocessing, options)
    mask.CopyInformation(image)
    return mask, probability_image


def segment_image(
    image: sitk.Image,
    bundle: ModelBundle,
    options: InferenceOptions | None = None,
    progress: ProgressCallback | None = None,
    network: torch.nn.Module | OnnxNetwork | None = None,
) -> SegmentationResult:
    """Segment ``image`` with ``bundle``; the mask lies on exactly the input's grid.

    Args:
        image: a 3D scalar image (any orientation, spacing, origin, pixel type).
        bundle: a loaded model bundle.
        options: see :class:`InferenceOptions`.
        progress: ``progress(fraction, message)``; returning ``False`` cancels (raises
            :class:`Cancelled` within one batch of windows; nothing is written anywhere).
        network: an already built network of the bundle, torch's or ONNX Runtime's (saves
            rebuilding it for many images; :func:`load_network` makes one, :class:`Predictor`
            keeps one for you); None: :func:`load_network`.

    Raises:
        InputImageError: not 3D, NaN/inf voxels, a constant image.
        Cancelled: the callback returned ``False``.
    """
    options = options or InferenceOptions()
    check_precision(options.precision)  # before any compute
    if network is None:
        network = load_network(bundle, options)
    on_onnx = isinstance(network, OnnxNetwork)
    config = bundle.config
    started = time.perf_counter()
    messages: list[str] = []
    timings: dict[str, float] = {}

    def report(fraction: float, message: str) -> None:
        if progress is not None and progress(min(max(fraction, 0.0), 1.0), message) is False:
            raise Cancelled("segmentation cancelled by the user; nothing was written")

    report(0.0, "checking the image")
    image = read_input(image)
    device = None if on_onnx else resolve_device(options.device, messages)

    tick = time.perf_counter()
    grid = preprocess(image, config, options.fast, messages)
    timings["preprocess"] = time.perf_counter() - tick
    report(_PREPROCESS_END, "preprocessed")

    def network_progress(fraction: float, message: str) -> None:
        report(_PREPROCESS_END + (_WINDOWS_END - _PREPROCESS_END) * fraction, message)

    anchor_config = config.preprocessing.get("anchor")
    first_pass_end = 0.5 if anchor_config else 1.0  # of the network's share: room for a second pass

    def run_network(volume: np.ndarray, start: float, end: float) -> tuple[np.ndarray, Any]:
        def pass_progress(fraction: float, message: str) -> None:
            network_progress(start + (end - start) * fraction, message)

        if on_onnx:
            return network.probabilities(volume, config.num_classes, options.tta, pass_progress), "cpu"
        return _torch_probabilities(volume, network, config, options, device, messages, pass_progress)

    tick = time.perf_counter()
    probabilities, used_device = run_network(grid.volume, 0.0, first_pass_end)
    if anchor_config:
        anchor = IntensityAnchor.from_config(anchor_config)
        structure = next((label.name for label in config.labels if label.value == anchor.label), "structure")
        probabilities = _anchored_second_pass(
            probabilities, grid.volume, anchor, structure.lower(), messages, run_network, first_pass_end
        )
    timings["network"] = time.perf_counter() - tick
    report(_WINDOWS_END, "mapping back to the input grid")

    tick = time.perf_counter()
    mask, probability_image = postprocess(probabilities, grid, image, config, options)
    if config.modality == "CT" and config.labels:
        messages += anatomy_warnings(
            sitk.GetArrayViewFromImage(image),
            sitk.GetArrayViewFromImage(mask),
            config.task,
            config.labels[0].name,
        )
    timings["postprocess"] = time.perf_counter() - tick
    report(1.0, "done")
    return SegmentationResult(
        mask=mask,
        probabilities=probability_image,
        device=str(used_device),
        seconds=time.perf_counter() - started,
        messages=messages,
        timings=timings,
        backend="onnxruntime" if on_onnx else "torch",
    )


def _label_mask(probabilities: np.ndarray, label: int) -> np.ndarray:
    """Where ``label`` wins the argmax of ``probabilities`` ``(K, z, y, x)`` (for two classes a
    comparison: three times faster than the argmax on a whole head)."""
    if probabilities.shape[0] == 2:
        return probabilities[label] > probabilities[1 - label]
    return probabilities.argmax(axis=0) == label


def _anchored_second_pass(
    probabilities: np.ndarray,
    volume: np.ndarray,
    anchor: IntensityAnchor,
    structure: str,
    messages: list[str],
    run_network: Callable[[np.ndarray, float, float], tuple[np.ndarray, Any]],
    start: float,
) -> np.ndarray:
    """The first pass's ``probabilities`` ``(K, z, y, x)``, or a second pass's when the first
    pass's mask shows intensities outside what the network was trained on (the bundle's
    ``preprocessing.anchor``): the normalised ``volume`` is then mapped linearly so that they
    sit where the training heads' did, and the network runs again on it. The second pass is kept only when
    its own mask sits closer to the anchor than the first one did (a first mask that was right
    for an unusual image stays)."""
    renormalised = anchor_renormalised(volume, _label_mask(probabilities, anchor.label), anchor)
    if renormalised is None:
        return probabilities
    second_volume, median, iqr = renormalised
    second, _device = run_network(second_volume, start, 1.0)
    statistics = masked_intensity_statistics(second_volume, _label_mask(second, anchor.label))
    found = (
        f"the {structure}'s intensities after normalisation (median {median:.2f}, IQR {iqr:.2f}) lie outside "
        f"those of the training images (median {anchor.median:.2f}, IQR {anchor.iqr:.2f})"
    )
    if statistics is None or anchor.deviation(*statistics) >= anchor.deviation(median, iqr):
        messages.append(
            f"{found}; a second pass normalised on the first pass's {structure} did not fit better, so the "
            "first pass is kept: check the mask"
        )
        return probabilities
    messages.append(
        f"{found} (e.g. a scalp much brighter than the brain): normalised again on the first pass's "
        f"{structure} and segmented a second time"
    )
    return second


def _torch_probabilities(
    volume: np.ndarray,
    network: torch.nn.Module,
    config: BundleConfig,
    options: InferenceOptions,
    device: torch.device,
    messages: list[str],
    progress: ProgressCallback,
) -> tuple[np.ndarray, torch.device]:
    """The predict stage on torch: the bundle's windows, blended, on ``device``."""
    from pocketseg_core.inference.network import predict_probabilities

    precision = options.precision if options.amp else "float32"
    if device.type == "cpu":
        cpu_precision(precision, messages)  # says so when bfloat16 was asked for but is not native
    return predict_probabilities(
        volume,
        network,
        tuple(options.window_size_zyx) if options.window_size_zyx else config.window_size_zyx,
        config.window_mode,
        config.num_classes,
        device,
        tta=options.tta,
        overlap=options.overlap,
        batch_size=options.batch_size,
        precision=precision,
        channels_last=use_channels_last(options.channels_last, device, config.window_mode),
        compile=options.compile,
        context_slices=config.context_slices,
        messages=messages,
        progress=progress,
    )


class Predictor:
    """A model ready to segment many images: the bundle's network is built once and kept.

    ``Predictor(bundle).segment(image)`` gives exactly what ``segment_image(image, bundle)``
    gives; the network is built on the first call (on the device the options resolve to) and
    reused by every later call, whatever device those ask for (it is moved as needed). One
    call at a time: the network is not shared between threads.
    """

    def __init__(self, bundle: ModelBundle, options: InferenceOptions | None = None) -> None:
        self.bundle = bundle
        self.options = options or InferenceOptions()
        self._network: torch.nn.Module | OnnxNetwork | None = None

    @property
    def network(self) -> torch.nn.Module | OnnxNetwork | None:
        """The kept network, torch's or ONNX Runtime's (None until the first call)."""
        return self._network

    def segment(
        self,
        source: sitk.Image | str | os.PathLike,
        options: InferenceOptions | None = None,
        progress: ProgressCallback | None = None,
    ) -> SegmentationResult:
        """Segment ``source`` (an image, or a file/DICOM folder to read) with ``options``
        (default: the predictor's)."""
        options = options or self.options
        image = source if isinstance(source, sitk.Image) else io.read_image(source)
        if self._network is None:
            self._network = load_network(self.bundle, options)
        return segment_image(image, self.bundle, options, progress, network=self._network)

    __call__ = segment
