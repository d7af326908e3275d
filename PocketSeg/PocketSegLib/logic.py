"""PocketSegLogic: one call segments a volume node, one call compares two segments.

Used by the module's widget and from Slicer's Python console::

    from PocketSegLib.logic import PocketSegLogic, SegmentOptions
    logic = PocketSegLogic()                        # Slicer's scene and logics
    seg = logic.segment(volumeNode, "skullstrip")   # -> "<volume> brain", segment "Brain"
    server = ServerSettings("http://gpu-box:8765", token)  # from PocketSegLib.remote_runner
    seg = logic.segment(volumeNode, "skullstrip", SegmentOptions(server=server))  # on a server
    table = logic.compare(referenceSeg, "Brain", seg, "Brain")

A run has three steps, and only the middle one computes, in a child process
(:mod:`PocketSegLib.runner`): :meth:`PocketSegLogic.prepare` checks the input and copies its
voxels out of the scene (main thread, no torch); :meth:`PocketSegLogic.start` writes them to a
temporary file with their geometry and starts ``python -m pocketseg_core.worker``, which writes
the mask back as a file; :meth:`BackgroundSegmentation.finish` puts the mask into the scene (main
thread). Nothing is added to the scene before ``finish``: a cancelled or failed run leaves it
exactly as it was. This process never imports torch: the module works, lists its models and
offers to install torch where ``import torch`` fails.

With ``SegmentOptions.server`` set, the middle step runs on a PocketSeg server instead
(:class:`PocketSegLib.remote_runner.RemoteRun`): ``prepare`` asks the server for the model's
config, ``start`` uploads the same input file and the server's mask comes back in the same
format; ``BackgroundSegmentation`` and ``finish`` are the same for both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pocketseg_core.errors import GridMismatchError, InputImageError, PocketSegError
from pocketseg_core.postprocessing import mask_array
from PocketSegLib import comparison, segmentation, volume_io
from PocketSegLib.remote_runner import RemoteRun, ServerSettings
from PocketSegLib.runner import ProgressCallback, WorkerRun
from PocketSegLib.scene_context import SceneBoundRun, SlicerContext, default_context

#: the two buttons: task alias of the catalog -> what it is for (shown in the GUI)
TASKS: dict[str, str] = {"skullstrip": "Skull strip (T1 MRI)", "liver": "Segment liver (CT)"}
#: Slicer's sample volumes (SampleData module) offered for a first try of each button
SAMPLE_VOLUMES: dict[str, str] = {"skullstrip": "MRHead", "liver": "CTLiver"}
#: largest difference (mm, direction cosine) accepted between the mask file's grid and the input's
MASK_GRID_TOLERANCE = 1e-6
INPUT_FILE, MASK_FILE = "input.mha", "mask.mha"  # MetaImage keeps the geometry's doubles exactly


@dataclass
class SegmentOptions:
    """What the Options section of the GUI sets."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N, or the GUI's Auto / CPU / GPU
    fast: bool = False  # coarser working spacing, for CPU users
    tta: bool = False  # flip test-time augmentation
    create_masked_volume: bool = False  # also create "<volume> skull-stripped" / "<volume> masked"
    show_3d: bool = False  # also build the 3D surface and show it
    server: ServerSettings | None = None  # run on this PocketSeg server instead of this computer

    def worker_options(self) -> dict[str, Any]:
        """The ``InferenceOptions`` fields the worker receives (plain data; device checked here)."""
        from pocketseg_core.devices import device_name

        return {"device": device_name(self.device), "fast": bool(self.fast), "tta": bool(self.tta)}

    def server_options(self) -> dict[str, Any]:
        """The options a server receives (its device is its own choice: ``device`` is not sent)."""
        return {"fast": bool(self.fast), "tta": bool(self.tta)}


@dataclass(frozen=True)
class LocalModel:
    """A model on this computer: its config and bundle folder (the worker loads and verifies the
    weights; this process never does)."""

    config: Any  # pocketseg_core.bundles.BundleConfig
    path: Path

    @property
    def name(self) -> str:
        return str(self.config.name)


@dataclass(frozen=True)
class ServerModel:
    """A model of a PocketSeg server: its config, as the server describes it (no folder and no
    weights on this computer)."""

    config: Any  # pocketseg_core.bundles.BundleConfig
    name: str  # the server's name for it
    server: ServerSettings


@dataclass
class PreparedRun:
    """Everything a run needs, copied out of the scene; no torch object."""

    volume_node: Any
    image: sitk.Image
    bundle: LocalModel | ServerModel  # has .config and .name
    task: str | None
    labels: list[tuple[int, segmentation.SegmentDescription]]
    warnings: list[str] = field(default_factory=list)

    @property
    def config(self) -> Any:
        """The model's ``BundleConfig``."""
        return self.bundle.config


@dataclass
class ComputedMask:
    """What :meth:`PocketSegLogic.apply` reads from a finished computation."""

    mask: sitk.Image  # uint8, on exactly the input's grid
    device: str = ""
    seconds: float = 0.0
    messages: list[str] = field(default_factory=list)


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
        self._runs: list[BackgroundSegmentation] = []

    @property
    def context(self) -> SlicerContext:
        if self._context is None:
            self._context = default_context()
        return self._context

    # --- models (plain data: no torch) ----------------------------------------------------------

    @staticmethod
    def available_models() -> list[dict[str, Any]]:
        """Every model on offer (shipped catalog, then the user's trained ones), as plain dicts."""
        from pocketseg_core.bundles import list_bundles

        return [entry.to_dict() for entry in list_bundles()]

    @staticmethod
    def model_folder(model: Any) -> Path:
        """The bundle folder of a task alias, catalog name, folder path or loaded ``ModelBundle``."""
        from pocketseg_core.bundles import resolve_bundle

        if hasattr(model, "config") and hasattr(model, "state_dict"):
            if getattr(model, "path", None) is None:
                raise PocketSegError(
                    f"model '{model.config.name}' has no folder; save it with pocketseg_core.bundles.save_bundle "
                    "and pass the folder"
                )
            return Path(model.path).resolve()
        return resolve_bundle(os.fspath(model) if isinstance(model, Path) else model).resolve()

    def model_config(self, model: Any) -> Any:
        """The ``BundleConfig`` of a model (its weights are not read; no torch)."""
        from pocketseg_core.bundles import read_config

        return read_config(self.model_folder(model))

    def load_model(self, model: Any) -> Any:
        """A loaded bundle (weights verified; needs torch). The self-test compares with it."""
        if hasattr(model, "config") and hasattr(model, "state_dict"):
            return model
        from pocketseg_core.bundles import load_bundle

        folder = str(self.model_folder(model))
        if folder not in self._bundles:
            self._bundles[folder] = load_bundle(folder)
        return self._bundles[folder]

    # --- the three steps ------------------------------------------------------------------

    @staticmethod
    def server_model(server: ServerSettings, model: Any) -> ServerModel:
        """A server's model by name or task alias, with its config asked from the server."""
        from pocketseg_core.bundles import BundleConfig

        if not isinstance(model, str):
            raise PocketSegError(
                f"a PocketSeg server runs its own models, not {model!r}: pass the name of one it offers"
            )
        info = server.client().model_info(model)
        config = BundleConfig.from_dict(info["config"], source=f"the server's model {info['name']}")
        return ServerModel(config, str(info["name"]), server)

    def prepare(
        self, volume_node: Any, model: Any = "skullstrip", server: ServerSettings | None = None
    ) -> PreparedRun:
        """Check the input and copy its voxels out of the scene (main thread; no torch).

        With ``server``, ``model`` is a name or task alias the server offers and its config comes
        from the server (one short request); start the run with ``SegmentOptions(server=server)``.
        """
        if volume_node is None:
            raise InputImageError("no volume selected: pick the image to segment first")
        image = volume_io.image_from_volume_node(volume_node)
        size = image.GetSize()
        if min(size) < 2:
            raise InputImageError(
                f"volume '{volume_node.GetName()}' is a single slice ({size[0]} x {size[1]} x {size[2]} voxels): "
                "PocketSeg needs a 3D volume; load the whole series"
            )
        if server is None:
            folder = self.model_folder(model)
            bundle: LocalModel | ServerModel = LocalModel(self.model_config(folder), folder)
        else:
            bundle = self.server_model(server, model)
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
    def segments_to_replace(prepared: PreparedRun, output_node: Any | None) -> list[str]:
        """Names of the output segmentation's segments this run would replace (same names)."""
        if output_node is None:
            return []
        return segmentation.existing_segment_names(output_node, [d.name for _, d in prepared.labels])

    def start(
        self,
        prepared: PreparedRun,
        options: SegmentOptions | None = None,
        output_node: Any | None = None,
        replace_segments: bool = False,
    ) -> BackgroundSegmentation:
        """Start the computation of a prepared run in a child process, or on the server of
        ``options.server`` (the upload happens here); poll ``status()``, then call ``finish()``
        on the main thread. The GUI asks about warnings in between.

        Into an existing ``output_node``, only segments named like the model's labels are
        replaced, and only with ``replace_segments=True``: otherwise a same-name segment is a
        :class:`PocketSegError` before anything starts.
        """
        options = options or SegmentOptions()
        if output_node is not None:
            if not output_node.IsA("vtkMRMLSegmentationNode"):
                raise PocketSegError(
                    f"'{output_node.GetName()}' is not a segmentation node: pick a segmentation"
                )
            clashes = self.segments_to_replace(prepared, output_node)
            if clashes and not replace_segments:
                raise PocketSegError(
                    f"segmentation '{output_node.GetName()}' already has segment(s) {', '.join(clashes)}: "
                    "allow replacing them (replace_segments=True) or choose a new segmentation"
                )
        image = prepared.image
        bundle, server = prepared.bundle, options.server
        if server is None and isinstance(bundle, ServerModel):
            raise PocketSegError(
                f"the run was prepared with the models of the server {bundle.server.url}: "
                "start it with SegmentOptions(server=...) naming that server"
            )
        if server is not None and not (isinstance(bundle, ServerModel) and bundle.server.url == server.url):
            raise PocketSegError(
                f"the run was not prepared for the server {server.url}: prepare it with server=options.server"
            )
        run: WorkerRun | RemoteRun
        if server is None:
            run = WorkerRun(
                {
                    "kind": "segment",
                    "model": str(bundle.path),
                    "input": f"@{INPUT_FILE}",
                    "output": f"@{MASK_FILE}",
                    "options": options.worker_options(),
                },
                files={INPUT_FILE: lambda path: sitk.WriteImage(image, str(path))},
                name="PocketSeg",
            )
        else:
            run = RemoteRun(
                server.client(),
                bundle.name,
                options.server_options(),
                # compressed: the file travels over the network (MetaImage keeps the doubles still)
                files={INPUT_FILE: lambda path: sitk.WriteImage(image, str(path), True)},
                upload=INPUT_FILE,
                mask=MASK_FILE,
            )
        running = BackgroundSegmentation(self, prepared, options, output_node, run, bool(replace_segments))
        run.on_finish(running.read_mask)
        run.start()
        running.watch_scene()
        self._runs.append(running)
        return running

    def apply(
        self,
        prepared: PreparedRun,
        result: Any,
        options: SegmentOptions | None = None,
        output_node: Any | None = None,
        replace_segments: bool = False,
    ) -> SegmentOutcome:
        """Put a finished result (``.mask`` on the input's grid, ``.device``, ``.seconds``,
        ``.messages``: a :class:`ComputedMask`) into the scene (main thread)."""
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
            replace_segments=replace_segments,
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
        replace_segments: bool = False,
    ) -> Any:
        """Segment ``volume_node`` and return the segmentation node (blocking; console use).

        The work runs in a child process all the same; ``progress(fraction, message)``
        returning False cancels it (``Cancelled`` is raised, the scene is unchanged). With
        ``options.server`` the work runs on that PocketSeg server.
        """
        running = self.start_segment(volume_node, model, options, output_node, replace_segments)
        running.wait(progress)
        return running.finish().segmentation_node

    def start_segment(
        self,
        volume_node: Any,
        model: Any = "skullstrip",
        options: SegmentOptions | None = None,
        output_node: Any | None = None,
        replace_segments: bool = False,
    ) -> BackgroundSegmentation:
        """Prepare and start a run; poll ``status()``, then call ``finish()`` on the main thread."""
        server = options.server if options is not None else None
        return self.start(self.prepare(volume_node, model, server), options, output_node, replace_segments)

    def running(self) -> list[BackgroundSegmentation]:
        """The runs started by this logic that have not ended yet."""
        self._runs = [run for run in self._runs if not run.run.status().done]
        return list(self._runs)

    def cancel_all(self) -> None:
        """Cancel every run of this logic (the module calls it when the scene closes)."""
        for running in list(self._runs):
            running.cancel()
        self._runs = []

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
        return f"{volume_name} {prepared.config.name}"

    def create_masked_volume(
        self, volume_node: Any, mask: sitk.Image, prepared: PreparedRun | None = None
    ) -> Any:
        """A new volume: the input where the mask is set, background elsewhere ("<volume> skull-stripped")."""
        array = volume_io.volume_array(volume_node)
        inside = sitk.GetArrayViewFromImage(mask) > 0
        if inside.shape != array.shape:
            raise PocketSegError("the mask does not have the volume's size; cannot mask the volume")
        is_brain = prepared is not None and prepared.task == "skullstrip"
        modality = prepared.config.modality if prepared is not None else "MR"
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


class BackgroundSegmentation(SceneBoundRun):
    """A segmentation running in a child process or on a server (see :meth:`PocketSegLogic.start`).

    ``status()`` never blocks; it also ends the run, with a clear message, when the input
    volume or the output segmentation was removed from the scene meanwhile, and the run is
    cancelled when the scene closes. ``finish()`` applies the result on the main thread.
    """

    def __init__(
        self,
        logic: PocketSegLogic,
        prepared: PreparedRun,
        options: SegmentOptions,
        output_node: Any | None,
        run: WorkerRun | RemoteRun,
        replace_segments: bool = False,
    ) -> None:
        self.logic, self.prepared, self.options, self.output_node = logic, prepared, options, output_node
        self.run, self.replace_segments = run, replace_segments
        self.mask: sitk.Image | None = None

    # --- the scene while the run is on (watch_scene, status, cancel, wait: SceneBoundRun) --------

    def missing_node_error(self) -> PocketSegError | None:
        """A clear error when the input or output node has left the scene, else None."""
        scene = self.logic.context.scene
        volume = self.prepared.volume_node
        if not scene.IsNodePresent(volume):
            return PocketSegError(
                f"volume '{volume.GetName()}' was removed from the scene during the run; nothing was added. "
                "Load the volume again and rerun"
            )
        if self.output_node is not None and not scene.IsNodePresent(self.output_node):
            return PocketSegError(
                f"segmentation '{self.output_node.GetName()}' was removed from the scene during the run; "
                "nothing was added. Choose another output segmentation and rerun"
            )
        return None

    # --- the run ------------------------------------------------------------------------------

    def read_mask(self, run: WorkerRun | RemoteRun) -> None:
        """Called when the run has ended (before its temporary folder goes): read the mask."""
        self._unwatch_scene()
        if run.status().state != "succeeded":
            return
        mask = sitk.ReadImage(str(run.path(MASK_FILE)))
        self.mask = mask_on_input_grid(mask, self.prepared.image)

    def finish(self) -> SegmentOutcome:
        """Main thread, once ``status().done``: apply the result, or raise the run's error/``Cancelled``."""
        result = self.run.result()
        error = self.missing_node_error()
        if error is not None:
            raise error
        if self.mask is None:
            raise PocketSegError("the run ended without a mask; the details are in the log")
        computed = ComputedMask(
            self.mask,
            str(result.get("device", "")),
            float(result.get("seconds", 0.0)),
            list(result.get("messages", [])),
        )
        return self.logic.apply(
            self.prepared, computed, self.options, self.output_node, self.replace_segments
        )


def mask_on_input_grid(mask: sitk.Image, image: sitk.Image) -> sitk.Image:
    """The worker's (or server's) mask, checked to lie on exactly the input's grid, with the
    input's header.

    The files are MetaImage, which keeps the geometry's doubles; the check guards against a
    worker or server that resampled or reoriented anything.
    """
    same = (
        mask.GetSize() == image.GetSize()
        and np.allclose(mask.GetSpacing(), image.GetSpacing(), rtol=0, atol=MASK_GRID_TOLERANCE)
        and np.allclose(mask.GetOrigin(), image.GetOrigin(), rtol=0, atol=MASK_GRID_TOLERANCE)
        and np.allclose(mask.GetDirection(), image.GetDirection(), rtol=0, atol=MASK_GRID_TOLERANCE)
    )
    if not same:
        raise GridMismatchError(
            f"the computed mask ({mask.GetSize()}) is not on the input's grid ({image.GetSize()}); "
            "nothing was added"
        )
    mask = sitk.Cast(mask, sitk.sitkUInt8)
    mask.CopyInformation(image)
    return mask
