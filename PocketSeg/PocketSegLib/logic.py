"""PocketSegLogic: one call segments a volume node, one call compares two segments.

Used by the module's widget and from Slicer's Python console::

    from PocketSegLib.logic import PocketSegLogic, SegmentOptions
    logic = PocketSegLogic()                        # Slicer's scene and logics
    seg = logic.segment(volumeNode, "skullstrip")   # -> "<volume> brain", segment "Brain"
    table = logic.compare(referenceSeg, "Brain", seg, "Brain")

A run has three steps so that the GUI can run the middle one in a background thread:
:meth:`PocketSegLogic.prepare` copies the voxels out of the scene (main thread),
:meth:`PocketSegLogic.compute` runs ``pocketseg_core`` inference (any thread, no MRML), and
:meth:`PocketSegLogic.apply` puts the result into the scene (main thread). Nothing is added to
the scene before ``apply``: a cancelled or failed run leaves it exactly as it was.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from pocketseg_core.errors import InputImageError, PocketSegError
from pocketseg_core.postprocessing import mask_array
from PocketSegLib import comparison, segmentation, volume_io
from PocketSegLib.runner import BackgroundRun, ProgressCallback
from PocketSegLib.scene_context import SlicerContext, default_context

#: the two buttons: task alias of the catalog -> what it is for (shown in the GUI)
TASKS: dict[str, str] = {"skullstrip": "Skull strip (T1 MRI)", "liver": "Segment liver (CT)"}


@dataclass
class SegmentOptions:
    """What the Options section of the GUI sets."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N, or the GUI's Auto / CPU / GPU
    fast: bool = False  # coarser working spacing, for CPU users
    tta: bool = False  # flip test-time augmentation
    create_masked_volume: bool = False  # also create "<volume> skull-stripped" / "<volume> masked"
    show_3d: bool = False  # also build the 3D surface and show it

    def inference_options(self) -> Any:
        from pocketseg_core.devices import device_name
        from pocketseg_core.inference import InferenceOptions

        return InferenceOptions(device=device_name(self.device), fast=self.fast, tta=self.tta)


@dataclass
class PreparedRun:
    """Everything a background computation needs, copied out of the scene."""

    volume_node: Any
    image: sitk.Image
    bundle: Any  # pocketseg_core.bundles.ModelBundle
    task: str | None
    labels: list[tuple[int, segmentation.SegmentDescription]]
    warnings: list[str] = field(default_factory=list)


@dataclass
class SegmentOutcome:
    """What a finished run added to the scene, and what inference said."""

    segmentation_node: Any
    masked_volume_node: Any | None
    device: str
    seconds: float
    messages: list[str]


class PocketSegLogic:
    """The MRML logic of the PocketSeg module; ``context`` defaults to the running Slicer's."""

    def __init__(self, context: SlicerContext | None = None) -> None:
        self._context = context
        self._bundles: dict[str, Any] = {}

    @property
    def context(self) -> SlicerContext:
        if self._context is None:
            self._context = default_context()
        return self._context

    # --- models ---------------------------------------------------------------------------

    @staticmethod
    def available_models() -> list[dict[str, Any]]:
        """Every model on offer (shipped catalog, then the user's trained ones), as plain dicts."""
        from pocketseg_core.bundles import list_bundles

        return [entry.to_dict() for entry in list_bundles()]

    def load_model(self, model: Any) -> Any:
        """A loaded bundle from a task alias, catalog name, folder path or a ``ModelBundle`` (cached)."""
        if hasattr(model, "config") and hasattr(model, "state_dict"):
            return model
        from pocketseg_core.bundles import load_bundle, resolve_bundle

        folder = str(resolve_bundle(os.fspath(model) if isinstance(model, Path) else model).resolve())
        if folder not in self._bundles:
            self._bundles[folder] = load_bundle(folder)
        return self._bundles[folder]

    # --- the three steps ------------------------------------------------------------------

    def prepare(self, volume_node: Any, model: Any = "skullstrip") -> PreparedRun:
        """Check the input and copy its voxels out of the scene (main thread)."""
        if volume_node is None:
            raise InputImageError("no volume selected: pick the image to segment first")
        image = volume_io.image_from_volume_node(volume_node)
        size = image.GetSize()
        if min(size) < 2:
            raise InputImageError(
                f"volume '{volume_node.GetName()}' is a single slice ({size[0]} x {size[1]} x {size[2]} voxels): "
                "PocketSeg needs a 3D volume; load the whole series"
            )
        bundle = self.load_model(model)
        config = bundle.config
        task = config.task or (model if isinstance(model, str) and model in TASKS else None)
        labels = [(label.value, segmentation.describe_label(label, task)) for label in config.labels]
        from pocketseg_core.preprocessing import modality_warning

        warnings = []
        warning = modality_warning(sitk.GetArrayViewFromImage(image), config.modality)
        if warning:
            warnings.append(f"'{volume_node.GetName()}': {warning}")
        return PreparedRun(volume_node, image, bundle, task, labels, warnings)

    @staticmethod
    def compute(
        prepared: PreparedRun, options: SegmentOptions, progress: ProgressCallback | None = None
    ) -> Any:
        """Run inference (any thread; never touches MRML). Returns ``SegmentationResult``."""
        from pocketseg_core.inference import segment_image

        return segment_image(prepared.image, prepared.bundle, options.inference_options(), progress)

    def apply(
        self,
        prepared: PreparedRun,
        result: Any,
        options: SegmentOptions | None = None,
        output_node: Any | None = None,
    ) -> SegmentOutcome:
        """Put a finished result into the scene (main thread)."""
        options = options or SegmentOptions()
        mask = result.mask
        node = segmentation.write_labels_to_segmentation(
            self.context,
            prepared.volume_node,
            mask,
            prepared.labels,
            name=self._node_name(prepared),
            output_node=output_node,
            show_3d=options.show_3d,
        )
        masked = None
        if options.create_masked_volume:
            masked = self.create_masked_volume(prepared.volume_node, mask, prepared)
        return SegmentOutcome(node, masked, str(result.device), float(result.seconds), list(result.messages))

    # --- one-call use -----------------------------------------------------------------------

    def segment(
        self,
        volume_node: Any,
        model: Any = "skullstrip",
        options: SegmentOptions | None = None,
        progress: ProgressCallback | None = None,
        output_node: Any | None = None,
    ) -> Any:
        """Segment ``volume_node`` and return the segmentation node (blocking; console use)."""
        options = options or SegmentOptions()
        prepared = self.prepare(volume_node, model)
        result = self.compute(prepared, options, progress)
        return self.apply(prepared, result, options, output_node).segmentation_node

    def start_segment(
        self,
        volume_node: Any,
        model: Any = "skullstrip",
        options: SegmentOptions | None = None,
        output_node: Any | None = None,
    ) -> BackgroundSegmentation:
        """Start a run in a background thread; poll it, then call ``finish()`` on the main thread."""
        return self.start(self.prepare(volume_node, model), options, output_node)

    def start(
        self, prepared: PreparedRun, options: SegmentOptions | None = None, output_node: Any | None = None
    ) -> BackgroundSegmentation:
        """Start computing an already prepared run in a background thread (the GUI warns in between)."""
        options = options or SegmentOptions()
        run = BackgroundRun(lambda progress: self.compute(prepared, options, progress)).start()
        return BackgroundSegmentation(self, prepared, options, output_node, run)

    def compare(
        self,
        reference_node: Any,
        reference_segment: str,
        computed_node: Any,
        computed_segment: str,
        volume_node: Any | None = None,
        table_node: Any | None = None,
    ) -> Any:
        """The eight metrics of the computed segment against the reference, as a table node."""
        return comparison.compare_segments(
            self.context,
            reference_node,
            reference_segment,
            computed_node,
            computed_segment,
            volume_node,
            table_node,
        )

    # --- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _node_name(prepared: PreparedRun) -> str:
        volume_name = prepared.volume_node.GetName()
        if len(prepared.labels) == 1:
            return f"{volume_name} {prepared.labels[0][1].node_suffix}"
        return f"{volume_name} {prepared.bundle.config.name}"

    def create_masked_volume(
        self, volume_node: Any, mask: sitk.Image, prepared: PreparedRun | None = None
    ) -> Any:
        """A new volume: the input where the mask is set, background elsewhere ("<volume> skull-stripped")."""
        array = volume_io.volume_array(volume_node)
        inside = sitk.GetArrayViewFromImage(mask) > 0
        if inside.shape != array.shape:
            raise PocketSegError("the mask does not have the volume's size; cannot mask the volume")
        is_brain = prepared is not None and prepared.task == "skullstrip"
        modality = prepared.bundle.config.modality if prepared is not None else "MR"
        masked = mask_array(array, inside, modality)
        image = volume_io.image_from_array_on_volume(masked, volume_node)
        name = f"{volume_node.GetName()} {'skull-stripped' if is_brain else 'masked'}"
        node = volume_io.volume_node_from_image(self.context.scene, image, name)
        node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
        source_display, display = volume_node.GetDisplayNode(), node.GetDisplayNode()
        if source_display is not None and display is not None:
            display.SetAndObserveColorNodeID(source_display.GetColorNodeID())
            display.SetAutoWindowLevel(False)
            display.SetWindowLevel(source_display.GetWindow(), source_display.GetLevel())
        segmentation.place_next_to(self.context, node, volume_node)
        return node


class BackgroundSegmentation:
    """A segmentation running in a background thread (see :class:`PocketSegLogic.start_segment`)."""

    def __init__(
        self,
        logic: PocketSegLogic,
        prepared: PreparedRun,
        options: SegmentOptions,
        output_node: Any | None,
        run: BackgroundRun,
    ) -> None:
        self.logic, self.prepared, self.options, self.output_node, self.run = (
            logic,
            prepared,
            options,
            output_node,
            run,
        )

    def status(self):
        return self.run.status()

    def cancel(self) -> None:
        self.run.cancel()

    def finish(self) -> SegmentOutcome:
        """Main thread, once ``status().done``: apply the result, or raise the run's error/``Cancelled``."""
        result = self.run.result()
        return self.logic.apply(self.prepared, result, self.options, self.output_node)
