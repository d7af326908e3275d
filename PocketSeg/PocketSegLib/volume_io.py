"""Volume node <-> SimpleITK image, with the geometry carried over exactly.

Slicer works in RAS, ITK/SimpleITK in LPS: a point ``(x, y, z)`` in RAS is ``(-x, -y, z)`` in
LPS. A volume node's IJK-to-RAS matrix is ``[D_ras * diag(spacing) | origin_ras]`` where the
columns of ``D_ras`` are the directions of the i, j, k axes; the SimpleITK image of the same
voxels has ``direction = diag(-1, -1, 1) @ D_ras``, ``origin = diag(-1, -1, 1) @ origin_ras``
and the same spacing. Voxel arrays are indexed ``[k, j, i]`` in both (SimpleITK ``(z, y, x)``),
so the array is copied as is, never transposed or flipped: geometry travels with the header.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from pocketseg_core.errors import InputImageError

#: RAS <-> LPS: flip the first two physical axes (its own inverse).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def ras_directions(volume_node: Any) -> np.ndarray:
    """The 3x3 IJK-to-RAS direction matrix of a volume node (columns = i, j, k axes)."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASDirectionMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)])


def volume_array(volume_node: Any) -> np.ndarray:
    """A copy of the node's voxels, shape ``(k, j, i)`` = SimpleITK's ``(z, y, x)``.

    Raises :class:`InputImageError` for a node without voxels or with vector voxels.
    """
    if volume_node is None:
        raise InputImageError("no volume selected: pick the image to segment first")
    image_data = volume_node.GetImageData()
    if image_data is None or image_data.GetNumberOfPoints() == 0:
        raise InputImageError(f"volume '{volume_node.GetName()}' has no voxels: load an image into it first")
    if image_data.GetNumberOfScalarComponents() != 1:
        raise InputImageError(
            f"volume '{volume_node.GetName()}' has {image_data.GetNumberOfScalarComponents()} components per "
            "voxel (colour or vector image); PocketSeg needs a scalar (grey-level) 3D image"
        )
    return np.array(slicer.util.arrayFromVolume(volume_node), copy=True)


def image_from_volume_node(volume_node: Any) -> sitk.Image:
    """The node's voxels as a SimpleITK image on exactly the node's grid (in LPS).

    The node's own parent transform is not applied: the image lives in the node's local
    coordinates, and results are placed under the same transform (see ``segmentation``).
    """
    return image_from_array_on_volume(volume_array(volume_node), volume_node)


def image_from_array_on_volume(array: np.ndarray, volume_node: Any) -> sitk.Image:
    """A SimpleITK image of ``array`` (shape ``(k, j, i)``) with the volume node's geometry in LPS."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(s) for s in volume_node.GetSpacing()])
    image.SetOrigin([float(v) for v in RAS_TO_LPS @ np.array(volume_node.GetOrigin(), dtype=float)])
    image.SetDirection([float(v) for v in (RAS_TO_LPS @ ras_directions(volume_node)).ravel()])
    return image


def set_volume_node_geometry(volume_node: Any, image: sitk.Image) -> None:
    """Give ``volume_node`` the spacing, origin and axis directions of ``image`` (LPS -> RAS)."""
    directions_ras = RAS_TO_LPS @ np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, float(directions_ras[r, c]))
    volume_node.SetIJKToRASDirectionMatrix(matrix)
    volume_node.SetSpacing(*[float(s) for s in image.GetSpacing()])
    volume_node.SetOrigin(*[float(v) for v in RAS_TO_LPS @ np.array(image.GetOrigin(), dtype=float)])


def update_volume_node_from_image(volume_node: Any, image: sitk.Image) -> Any:
    """Replace the node's voxels and geometry by those of a 3D scalar SimpleITK image."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(
            f"a volume node needs a 3D scalar image, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} components per voxel"
        )
    set_volume_node_geometry(volume_node, image)
    slicer.util.updateVolumeFromArray(volume_node, sitk.GetArrayFromImage(image))
    return volume_node


def volume_node_from_image(
    scene: Any, image: sitk.Image, name: str, node_class: str = "vtkMRMLScalarVolumeNode"
) -> Any:
    """A new volume node in ``scene`` holding ``image`` (with display nodes, as Slicer's loaders do)."""
    node = scene.AddNewNodeByClass(node_class, name)
    update_volume_node_from_image(node, image)
    node.CreateDefaultDisplayNodes()
    return node


def ijk_to_ras_matrix(volume_node: Any) -> np.ndarray:
    """The node's full 4x4 IJK-to-RAS matrix as an array (for geometry comparisons)."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def image_ijk_to_ras(image: sitk.Image) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix a SimpleITK image would have as a Slicer volume."""
    directions = RAS_TO_LPS @ np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    result = np.eye(4)
    result[:3, :3] = directions @ np.diag(image.GetSpacing())
    result[:3, 3] = RAS_TO_LPS @ np.array(image.GetOrigin(), dtype=float)
    return result
