"""Segmentation nodes holding PocketSeg's results, and segments exported back to voxel arrays.

A result becomes a segmentation node "<volume> brain" (or "liver", ...) with one segment named
"Brain" / "Liver", the colour and SNOMED-CT codes of that structure in PocketSeg's anatomy table
(``pocketseg_core/anatomy.json``) set through Slicer's terminology classes,
its reference geometry set to the input volume, placed next to the input in the subject
hierarchy (same patient/study) and shown in the slice views. The segment is a plain binary
labelmap segment, editable in Segment Editor like any other.

The segment is built completely (``vtkSegment`` + ``vtkOrientedImageData``) before the scene is
touched, so a failure while building it leaves the scene as it was.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtkmodules.util import numpy_support

from pocketseg_core.anatomy import CodeTriplet, Structure, anatomy_table, code_triplet
from pocketseg_core.errors import GridMismatchError, PocketSegError
from pocketseg_core.geometry import grid_tolerance_mm
from PocketSegLib.scene_context import SlicerContext
from PocketSegLib.volume_io import ijk_to_ras_matrix, image_from_array_on_volume, image_ijk_to_ras

ANATOMY = anatomy_table()
#: The category of the anatomy table's structures, also the default of a label without one.
ANATOMICAL_STRUCTURE: CodeTriplet = ANATOMY.categories["anatomical structure"]


def set_code(code_object: Any, code: CodeTriplet) -> None:
    """Fill a ``vtkSlicerTerminologyCategory`` / ``vtkSlicerTerminologyType`` with a code triplet."""
    scheme, value, meaning = code
    code_object.SetCodingSchemeDesignator(scheme)
    code_object.SetCodeValue(value)
    code_object.SetCodeMeaning(meaning)


def terminology_entry_string(
    category: CodeTriplet, type_code: CodeTriplet, color: tuple[float, float, float]
) -> str:
    """A segment's terminology as Slicer serialises it (for ``vtkSegment.SetTerminology``).

    Built as a ``vtkSlicerTerminologyEntry`` in the anatomy table's terminology context and
    serialised by the Terminologies module logic, so the string is in the form the running
    Slicer expects.
    """
    entry = slicer.vtkSlicerTerminologyEntry()
    entry.SetTerminologyContextName(ANATOMY.terminology_context)
    entry.SetRegionContextName(ANATOMY.region_context)
    set_code(entry.GetCategoryObject(), category)
    set_code(entry.GetTypeObject(), type_code)
    entry.GetTypeObject().SetRecommendedDisplayRGBValue(*(round(255 * c) for c in color))
    return slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(entry)


@dataclass(frozen=True)
class SegmentDescription:
    """How one structure is shown: segment name, colour (r, g, b in [0, 1]) and SNOMED-CT codes."""

    name: str
    color: tuple[float, float, float]
    type_code: CodeTriplet  # (scheme, value, meaning) of the structure
    category_code: CodeTriplet = ANATOMICAL_STRUCTURE

    @property
    def terminology_entry(self) -> str:
        """The segment's terminology in Slicer's serialised form (``vtkSegment.SetTerminology``)."""
        return terminology_entry_string(self.category_code, self.type_code, self.color)

    @property
    def node_suffix(self) -> str:
        """What follows the volume's name in the segmentation node's name ("brain", "liver")."""
        return self.name.lower()

    @classmethod
    def of_structure(cls, structure: Structure) -> SegmentDescription:
        """The description of a row of the anatomy table."""
        return cls(structure.segment_name, structure.color, structure.type, structure.category)


#: The structures of the shipped tasks, as the anatomy table describes them.
BRAIN = SegmentDescription.of_structure(ANATOMY.for_task("skullstrip"))
LIVER = SegmentDescription.of_structure(ANATOMY.for_task("liver"))


def describe_label(label: Any | None, task: str | None = None) -> SegmentDescription:
    """The segment description of a bundle label (``pocketseg_core.bundles.LabelInfo``).

    A label coded as a structure of the anatomy table (brain, liver) gets the table's name and
    colour whatever the bundle calls it, so every PocketSeg brain looks like every other Slicer
    brain; any other label keeps the bundle's name, colour and codes. Without a label, the task
    decides.
    """
    terminology: Mapping[str, Any] = getattr(label, "terminology", None) or {}
    type_entry = terminology.get("type") or {}
    scheme, code, _ = code_triplet(type_entry)
    structure = ANATOMY.for_type_code(code, scheme) if code else None
    if structure is not None:
        return SegmentDescription.of_structure(structure)
    if label is None or not getattr(label, "name", ""):
        if task in ANATOMY.structures:
            return SegmentDescription.of_structure(ANATOMY.structures[task])
        return SegmentDescription("Segment", (1.0, 1.0, 0.0), ("SCT", "", ""))
    name = str(label.name)
    structure = ANATOMY.for_name(name) if not type_entry else None
    if structure is not None:
        return SegmentDescription.of_structure(structure)
    return SegmentDescription(
        name=name[:1].upper() + name[1:],
        color=tuple(float(c) for c in label.color),
        type_code=code_triplet(type_entry, ("", "", name)),
        category_code=code_triplet(terminology.get("category"), ANATOMICAL_STRUCTURE),
    )


# --- mask -> segment ---------------------------------------------------------------------------


def require_mask_on_volume_grid(mask: sitk.Image, volume_node: Any) -> None:
    """Raise :class:`GridMismatchError` unless ``mask`` lies on exactly the volume's voxel grid."""
    dims = volume_node.GetImageData().GetDimensions() if volume_node.GetImageData() else None
    if dims is None or tuple(mask.GetSize()) != tuple(dims):
        raise GridMismatchError(
            f"the mask ({mask.GetSize()}) does not have the size of volume '{volume_node.GetName()}' ({dims})"
        )
    difference = np.abs(image_ijk_to_ras(mask) - ijk_to_ras_matrix(volume_node)).max()
    if difference > grid_tolerance_mm(mask.GetSpacing()):
        raise GridMismatchError(
            f"the mask is not on the grid of volume '{volume_node.GetName()}' "
            f"(IJK-to-RAS differs by {difference:.3g}); masks must be computed on the input's grid"
        )


def oriented_image_from_mask(mask: sitk.Image, volume_node: Any) -> Any:
    """A binary ``vtkOrientedImageData`` (uint8, 0/1) with the volume's IJK-to-RAS geometry."""
    require_mask_on_volume_grid(mask, volume_node)
    array = (sitk.GetArrayViewFromImage(mask) > 0).astype(np.uint8)
    oriented = slicer.vtkOrientedImageData()
    oriented.SetDimensions(*mask.GetSize())
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    oriented.SetImageToWorldMatrix(matrix)
    oriented.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(oriented.GetPointData().GetScalars())[:] = array.ravel()
    oriented.Modified()
    return oriented


def build_segment(mask: sitk.Image, volume_node: Any, description: SegmentDescription) -> Any:
    """A ``vtkSegment`` (binary labelmap) named, coloured and coded per ``description``."""
    segment = slicer.vtkSegment()
    segment.SetName(description.name)
    segment.SetColor(*description.color)
    segment.SetTerminology(description.terminology_entry)
    segment.SetLabelValue(1)
    segment.AddRepresentation(
        slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(),
        oriented_image_from_mask(mask, volume_node),
    )
    return segment


def segmentation_node_name(volume_node: Any, description: SegmentDescription) -> str:
    """ "<volume> brain", "<volume> liver"."""
    return f"{volume_node.GetName()} {description.node_suffix}"


def write_mask_to_segmentation(
    context: SlicerContext,
    volume_node: Any,
    mask: sitk.Image,
    description: SegmentDescription,
    output_node: Any | None = None,
    show_3d: bool = False,
) -> Any:
    """Put a binary ``mask`` (non-zero = inside, on the volume's grid) into a segmentation node."""
    binary = sitk.Cast(mask > 0, sitk.sitkUInt8)
    return write_labels_to_segmentation(
        context, volume_node, binary, [(1, description)], None, output_node, show_3d
    )


def existing_segment_names(segmentation_node: Any, names: Sequence[str]) -> list[str]:
    """Those of ``names`` that ``segmentation_node`` already has as segment names."""
    segmentation = segmentation_node.GetSegmentation()
    return [name for name in names if segmentation.GetSegmentIdBySegmentName(name)]


def write_labels_to_segmentation(
    context: SlicerContext,
    volume_node: Any,
    label_image: sitk.Image,
    labels: Sequence[tuple[int, SegmentDescription]],
    name: str | None = None,
    output_node: Any | None = None,
    show_3d: bool = False,
    replace_segments: bool = False,
) -> Any:
    """Put a label image (on the volume's grid) into a segmentation node, one segment per label.

    With ``output_node`` None a new node is added, named ``name`` or "<volume> <structure>".
    Into an existing ``output_node`` the new segments are added beside the user's: a segment of
    the same name is replaced (in its place, keeping its ID) only with ``replace_segments``,
    otherwise that is a :class:`PocketSegError` and nothing changes. Returns the segmentation node.
    """
    if not labels:
        raise PocketSegError("no labels to put into the segmentation")
    if output_node is not None:
        if not output_node.IsA("vtkMRMLSegmentationNode"):
            raise PocketSegError(f"'{output_node.GetName()}' is not a segmentation node: pick a segmentation")
        clashes = existing_segment_names(output_node, [description.name for _, description in labels])
        if clashes and not replace_segments:
            raise PocketSegError(
                f"segmentation '{output_node.GetName()}' already has segment(s) {', '.join(clashes)}; "
                "allow replacing them or choose a new segmentation"
            )
    # Build every segment first (may raise): the scene is untouched until all are ready.
    segments = [
        (description, build_segment(label_image == value, volume_node, description))
        for value, description in labels
    ]
    scene = context.scene
    if output_node is None:
        node = slicer.vtkMRMLSegmentationNode()
        node.SetName(name or segmentation_node_name(volume_node, labels[0][1]))
        scene.AddNode(node)
    else:
        node = output_node
    segmentation = node.GetSegmentation()
    if segmentation.GetNumberOfSegments() == 0:
        # a new (or empty) segmentation takes the volume's grid; the user's segments keep theirs
        node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        segmentation.SetSourceRepresentationName(
            slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
        )
    for description, segment in segments:
        old_id = segmentation.GetSegmentIdBySegmentName(description.name)
        if old_id:
            index = segmentation.GetSegmentIndex(old_id)
            following = (
                segmentation.GetNthSegmentID(index + 1)
                if index + 1 < segmentation.GetNumberOfSegments()
                else ""
            )
            segmentation.RemoveSegment(old_id)
            segmentation.AddSegment(segment, old_id, following)
        else:
            segmentation.AddSegment(segment, description.name)
    # The result lives in the volume's coordinates: follow the volume's transform, if any.
    node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())
    show_segmentation(node, show_3d)
    place_next_to(context, node, volume_node)
    return node


def show_segmentation(node: Any, show_3d: bool = False) -> None:
    """Show the segmentation in the slice views (filled + outline), and in 3D when asked."""
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetVisibility(True)
    display.SetVisibility2DFill(True)
    display.SetVisibility2DOutline(True)
    display.SetVisibility3D(bool(show_3d))
    if show_3d:
        node.CreateClosedSurfaceRepresentation()


def place_next_to(context: SlicerContext, node: Any, reference_node: Any) -> None:
    """Put ``node`` under the same subject-hierarchy parent (patient/study) as ``reference_node``.

    Inside Slicer every data node has an item already; a headless scene creates items on demand.
    """
    hierarchy = context.subject_hierarchy
    reference_item = hierarchy.GetItemByDataNode(reference_node)
    parent = hierarchy.GetItemParent(reference_item) if reference_item else hierarchy.GetSceneItemID()
    item = hierarchy.GetItemByDataNode(node)
    if item:
        hierarchy.SetItemParent(item, parent)
    else:
        hierarchy.CreateItem(parent, node)


# --- segment -> array / image ------------------------------------------------------------------


def segment_id_by_name_or_id(segmentation_node: Any, segment: str) -> str:
    """The ID of a segment given its ID or its name; :class:`PocketSegError` when absent."""
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetSegment(segment) is not None:
        return segment
    found = segmentation.GetSegmentIdBySegmentName(segment)
    if found:
        return found
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    raise PocketSegError(
        f"segmentation '{segmentation_node.GetName()}' has no segment '{segment}'; it has: {', '.join(names) or 'none'}"
    )


def segment_array_on_volume(segmentation_node: Any, segment: str, volume_node: Any) -> np.ndarray:
    """The segment's voxels resampled onto the volume's grid: uint8 0/1, shape ``(k, j, i)``.

    Nearest-neighbour resampling of the binary labelmap (exact when the segmentation was made on
    that grid). Transforms between the two nodes are not applied: both must share one.
    """
    segment_id = segment_id_by_name_or_id(segmentation_node, segment)
    labelmap = slicer.vtkOrientedImageData()
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.GetSegmentBinaryLabelmapRepresentation(segmentation_node, segment_id, labelmap):
        raise PocketSegError(
            f"segment '{segment}' of '{segmentation_node.GetName()}' has no binary labelmap to export"
        )
    dims = volume_node.GetImageData().GetDimensions()
    shape = (dims[2], dims[1], dims[0])
    extent = labelmap.GetExtent()
    if extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
        return np.zeros(shape, dtype=np.uint8)  # an empty segment
    reference = volume_geometry(volume_node)
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        labelmap, reference, resampled, False, True
    ):
        raise PocketSegError(
            f"segment '{segment}' could not be resampled onto volume '{volume_node.GetName()}'"
        )
    values = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars()).reshape(shape)
    return (values > 0).astype(np.uint8)


def volume_geometry(volume_node: Any) -> Any:
    """An empty ``vtkOrientedImageData`` with the volume's extent and IJK-to-RAS matrix.

    Instead of ``CreateOrientedImageDataFromVolumeNode``, which copies the voxels and returns a
    reference the Python wrapping never releases (about 50 MB leaked per call on a 50 MB volume).
    """
    geometry = slicer.vtkOrientedImageData()
    geometry.SetExtent(volume_node.GetImageData().GetExtent())
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    geometry.SetImageToWorldMatrix(matrix)
    return geometry


def segment_image_on_volume(segmentation_node: Any, segment: str, volume_node: Any) -> sitk.Image:
    """:func:`segment_array_on_volume` as a SimpleITK image with the volume's geometry (LPS)."""
    return image_from_array_on_volume(
        segment_array_on_volume(segmentation_node, segment, volume_node), volume_node
    )
