"""The page's work on its scene, without any trame import (tested on slicer-core).

A :class:`Workspace` holds the page's scene (trame-slicer's ``SlicerApp`` gives it, with the module
logics registered) and the PocketSeg module's logic on it (:class:`PocketSegLib.logic.PocketSegLogic`):

- :meth:`Workspace.open_image` reads a file or DICOM folder with ``pocketseg_core.io.read_image``
  (the same checks and the same voxels as ``pocketseg predict``) and puts it in the scene with its
  geometry as read (``PocketSegLib.volume_io``): the volume node's grid *is* the file's grid, a
  left-handed one included, so the mask goes back onto exactly that grid, unflipped;
- :meth:`Workspace.start` starts a run in the module's child process (``WorkerRun``) and
  returns at once; :meth:`Workspace.poll` never blocks; :meth:`Workspace.finish` puts the
  segment into the scene;
- :meth:`Workspace.mask_file` / :meth:`Workspace.segmentation_file` write what the user
  downloads (the segment as edited), :meth:`Workspace.compare` fills the eight-metric table.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import SimpleITK as sitk

from pocketseg_core.errors import InputImageError, PocketSegError
from pocketseg_core.io import (
    IMAGE_EXTENSIONS,
    image_extension,
    read_image,
    strip_image_extension,
    write_image,
)
from pocketseg_web import add_module_logic_to_path

add_module_logic_to_path()

import slicer  # noqa: E402
from PocketSegLib import comparison, segmentation, volume_io  # noqa: E402
from PocketSegLib.logic import TASKS, BackgroundSegmentation, PocketSegLogic, SegmentOptions  # noqa: E402
from PocketSegLib.runner import RunStatus  # noqa: E402
from PocketSegLib.scene_context import SlicerContext  # noqa: E402

#: largest upload accepted by default (MB); ``pocketseg web --max-upload-mb`` changes it
DEFAULT_MAX_UPLOAD_MB = 1024.0
#: the reference segment's name and colour in the scene
REFERENCE = segmentation.SegmentDescription("Reference", (0.2, 0.6, 1.0), ("SCT", "", "Reference"))


@dataclass(frozen=True)
class OpenedImage:
    """The volume the page works on and where it came from."""

    node: Any  # vtkMRMLScalarVolumeNode, on exactly the file's grid
    name: str  # the file's name without its image ending ("swiss_atlas_t1")
    extension: str  # the ending the mask is written with (".nii.gz", ".nrrd", ".mha")


def mask_extension(input_name: str) -> str:
    """The ending of the downloaded mask: the input's format (compressed NIfTI for .nii), NRRD for DICOM."""
    ending = image_extension(input_name)
    if ending in (".nii", ".nii.gz"):
        return ".nii.gz"
    if ending in (".nrrd", ".nhdr"):
        return ".nrrd"
    if ending in (".mha", ".mhd"):
        return ".mha"
    return ".nrrd"


def extract_zip(archive: Path, folder: Path, max_bytes: int) -> Path:
    """Unpack a zip (a DICOM folder) into ``folder``; refuses paths leaving it and oversize content.

    Returns the folder holding the files (the single top folder of the archive, if it has one).
    """
    try:
        with zipfile.ZipFile(archive) as handle:
            members = [m for m in handle.infolist() if not m.is_dir()]
            total = sum(m.file_size for m in members)
            if total > max_bytes:
                raise InputImageError(
                    f"{archive.name} unpacks to {total / 1e6:.0f} MB, over the {max_bytes / 1e6:.0f} MB limit: "
                    "upload a smaller series"
                )
            for member in members:
                parts = PurePosixPath(member.filename).parts
                if member.filename.startswith("/") or ".." in parts:
                    raise InputImageError(
                        f"{archive.name} holds a file outside its folder ({member.filename})"
                    )
            handle.extractall(folder, members)
    except zipfile.BadZipFile as error:
        raise InputImageError(f"{archive.name} is not a readable zip file ({error})") from None
    entries = [p for p in folder.iterdir() if not p.name.startswith("__MACOSX")]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else folder


class Workspace:
    """The page's scene and what the page does with it (see the module's doc)."""

    def __init__(self, scene: Any, segmentations_logic: Any, volumes_logic: Any = None) -> None:
        self.context = SlicerContext(scene, segmentations_logic, volumes_logic)
        self.logic = PocketSegLogic(self.context)
        self.image: OpenedImage | None = None
        self.segmentation_node: Any | None = None  # the computed (then edited) segmentation
        self.segment_name = ""  # its segment: "Brain", "Liver"
        self.running: BackgroundSegmentation | None = None
        self.reference_node: Any | None = None
        self.metrics: dict[str, float] = {}

    # --- input --------------------------------------------------------------------------------

    def open_image(self, path: str | Path, display_name: str | None = None) -> OpenedImage:
        """Read an image file or a DICOM folder and make it the page's volume.

        The previous volume and everything computed on it leave the scene (one volume at a time),
        but only once the new image has been read: a bad file leaves the page as it was.
        """
        path = Path(path)
        image = read_image(path)
        name = display_name or path.name
        stem = Path(strip_image_extension(name)).name or "volume"
        self.close()
        node = volume_io.volume_node_from_image(self.context.scene, image, stem)
        # its subject-hierarchy item, as Slicer's loaders make one: the results are placed beside it
        segmentation.place_next_to(self.context, node, node)
        self.image = OpenedImage(node, stem, mask_extension(name))
        return self.image

    def open_upload(self, files: list[tuple[str, bytes]], max_bytes: int) -> OpenedImage:
        """Open what the browser sent: one image file (.nii/.nii.gz/.nrrd/.mha/...), one zip of a
        DICOM folder, or the files of a DICOM folder."""
        if not files:
            raise InputImageError("no file was received: pick an image file or a zipped DICOM folder")
        total = sum(len(content) for _, content in files)
        if total > max_bytes:
            raise InputImageError(
                f"the upload has {total / 1e6:.0f} MB, over the {max_bytes / 1e6:.0f} MB limit "
                "(pocketseg web --max-upload-mb)"
            )
        work = Path(tempfile.mkdtemp(prefix="pocketseg-web-"))
        try:
            for name, content in files:
                (work / Path(name).name).write_bytes(content)
            names = [Path(name).name for name, _ in files]
            if len(files) == 1 and names[0].lower().endswith(".zip"):
                folder = extract_zip(work / names[0], work / "unzipped", max_bytes)
                return self.open_image(folder, Path(names[0]).stem)
            if len(files) == 1:
                return self.open_image(work / names[0])
            images = [n for n in names if image_extension(n) in IMAGE_EXTENSIONS]
            if images:
                raise InputImageError(
                    f"{len(files)} files were sent ({', '.join(names[:3])}...): open one image at a time, "
                    "or a DICOM folder as one zip file"
                )
            return self.open_image(work, "dicom")  # the files of one DICOM series
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def close(self) -> None:
        """Cancel a run and remove the page's nodes from the scene."""
        self.cancel()
        scene = self.context.scene
        for node in (self.reference_node, self.segmentation_node, self.image.node if self.image else None):
            if node is not None and scene.IsNodePresent(node):
                scene.RemoveNode(node)
        for table in list(scene.GetNodesByClass("vtkMRMLTableNode")):
            scene.RemoveNode(table)
        self.image, self.segmentation_node, self.reference_node = None, None, None
        self.segment_name, self.metrics = "", {}

    @property
    def volume_node(self) -> Any:
        if self.image is None:
            raise InputImageError("no volume is open: open an image first")
        return self.image.node

    # --- a run ----------------------------------------------------------------------------------

    def start(self, task: str, fast: bool = False, show_3d: bool = True) -> BackgroundSegmentation:
        """Start segmenting the volume in the module's child process; returns at once.

        A rerun replaces the segment it made before (in the same segmentation, edits included).
        """
        if task not in TASKS:
            raise PocketSegError(f"unknown task '{task}': pick one of {', '.join(TASKS)}")
        if self.running is not None and not self.running.status().done:
            raise PocketSegError("a run is in progress: wait for it or cancel it first")
        output = self.segmentation_node
        if output is not None and not self.context.scene.IsNodePresent(output):
            output = None
        options = SegmentOptions(fast=fast, show_3d=show_3d)
        self.running = self.logic.start_segment(
            self.volume_node, task, options, output_node=output, replace_segments=output is not None
        )
        return self.running

    def poll(self) -> RunStatus | None:
        """The run's status (never blocks), or None when no run was started."""
        return None if self.running is None else self.running.status()

    def cancel(self) -> None:
        if self.running is not None and not self.running.status().done:
            self.running.cancel()

    def finish(self) -> Any:
        """Put the finished run's segment into the scene (or raise its error); returns the outcome."""
        if self.running is None:
            raise PocketSegError("no run to finish")
        running, self.running = self.running, None
        outcome = running.finish()
        self.segmentation_node = outcome.segmentation_node
        self.segment_name = running.prepared.labels[0][1].name
        return outcome

    # --- results ----------------------------------------------------------------------------------

    def require_segment(self) -> str:
        if self.segmentation_node is None or not self.segment_name:
            raise PocketSegError("nothing segmented yet: run Skull strip or Segment liver first")
        return self.segment_name

    def mask_image(self) -> sitk.Image:
        """The segment as it is now (edits included): uint8 0/1 on exactly the input's grid."""
        segment = self.require_segment()
        mask = segmentation.segment_image_on_volume(self.segmentation_node, segment, self.volume_node)
        return sitk.Cast(mask, sitk.sitkUInt8)

    def mask_file(self, folder: Path) -> Path:
        """Write the mask as "<input> <segment>" in the input's format into ``folder``."""
        name = f"{self.volume_node.GetName()}_{self.require_segment().lower()}{self.image.extension}"
        return write_image(self.mask_image(), Path(folder) / name)

    def segmentation_file(self, folder: Path) -> Path:
        """Write the segmentation node (every segment, names, colours, terminology) as .seg.nrrd."""
        self.require_segment()
        path = Path(folder) / f"{self.volume_node.GetName()}_{self.segment_name.lower()}.seg.nrrd"
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(path))
        if not storage.WriteData(self.segmentation_node):
            raise PocketSegError(f"the segmentation could not be written ({storage.GetWriteStateAsString()})")
        return path

    def compare(self, reference_path: str | Path) -> dict[str, float]:
        """Compare the segment (as edited) with a reference mask file on the input's grid:
        the eight metrics, as the module's table shows them."""
        segment = self.require_segment()
        reference = read_image(reference_path)
        scene = self.context.scene
        if self.reference_node is not None and scene.IsNodePresent(self.reference_node):
            scene.RemoveNode(self.reference_node)
            self.reference_node = None
        node = segmentation.write_mask_to_segmentation(self.context, self.volume_node, reference, REFERENCE)
        node.SetName(f"{self.volume_node.GetName()} reference")
        node.GetDisplayNode().SetVisibility2DFill(False)  # the outline only, beside the computed fill
        self.reference_node = node
        table = self.logic.compare(node, REFERENCE.name, self.segmentation_node, segment, self.volume_node)
        self.metrics = comparison.metrics_from_table(table)
        return self.metrics


def metric_rows(metrics: dict[str, float]) -> list[dict[str, str]]:
    """The table the page shows: the module's metric names and units, values rounded for reading."""
    rows = []
    for key, (title, unit) in comparison.METRIC_DISPLAY.items():
        if key in metrics:
            rows.append({"key": key, "metric": title, "value": f"{metrics[key]:.4g}", "unit": unit})
    return rows
