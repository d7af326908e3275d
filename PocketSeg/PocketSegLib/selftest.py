"""The module's self-test scenario, shared by pytest (``slicer-core``) and Slicer's ctest.

``PocketSegTest`` in ``PocketSeg.py`` and ``Testing/Python/test_slicer_module.py`` both call
:func:`run_scenario`, so what Slicer's ctest checks inside the real application is exactly what
the pytest suite checks headless. The scenario uses a small synthetic head on a rotated,
axis-flipped, anisotropic grid (no download), runs on the CPU and takes seconds:

1. a volume node is segmented by the logic: the segmentation node, its segment, colour,
   terminology, reference geometry and subject-hierarchy place are as the module promises;
2. the segment exported on the volume's grid equals, voxel for voxel, the mask
   ``pocketseg_core.inference.segment_image`` gives for the same image and model;
3. the comparison table holds the values of ``pocketseg_core.metrics.compute_metrics``;
4. a cancelled run adds no node to the scene.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import SimpleITK as sitk
import slicer

from pocketseg_core.errors import Cancelled
from PocketSegLib import segmentation, volume_io
from PocketSegLib.comparison import metrics_from_table
from PocketSegLib.logic import PocketSegLogic, SegmentOptions

#: a rotation of 20 degrees about an oblique axis, with the first axis flipped (LPS directions)
_ANGLE = np.deg2rad(20.0)
_AXIS = np.array([1.0, 2.0, 2.0]) / 3.0


def rotated_flipped_direction() -> np.ndarray:
    """A 3x3 direction matrix: rotation (Rodrigues) about an oblique axis, first axis flipped."""
    k = np.array([[0, -_AXIS[2], _AXIS[1]], [_AXIS[2], 0, -_AXIS[0]], [-_AXIS[1], _AXIS[0], 0]])
    rotation = np.eye(3) + np.sin(_ANGLE) * k + (1 - np.cos(_ANGLE)) * (k @ k)
    return rotation @ np.diag([-1.0, 1.0, 1.0])


def synthetic_head(
    size: tuple[int, int, int] = (56, 60, 40), spacing: tuple[float, float, float] = (3.5, 3.0, 4.5)
) -> tuple[sitk.Image, sitk.Image]:
    """A T1-like head (dark background, bright scalp, textured brain) and its brain mask.

    ``size``/``spacing`` are SimpleITK ``(x, y, z)``; the grid is rotated and axis-flipped.
    """
    direction = rotated_flipped_direction()
    image = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetDirection([float(v) for v in direction.ravel()])
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in size]))
    image.SetOrigin([float(v) for v in np.asarray(image.GetOrigin()) - centre + np.array([3.0, -5.0, 12.0])])
    z, y, x = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    index = np.stack([x, y, z], axis=-1).reshape(-1, 3).astype(float)
    points = index @ (direction * np.asarray(spacing)).T + np.asarray(image.GetOrigin())
    points = points - np.array([3.0, -5.0, 12.0])
    radii = np.array([70.0, 85.0, 70.0])
    head = ((points / radii) ** 2).sum(axis=1).reshape(size[::-1])
    brain = ((points / (radii * 0.75)) ** 2).sum(axis=1).reshape(size[::-1]) <= 1.0
    rng = np.random.default_rng(0)
    volume = np.where(head <= 1.0, 80.0, 2.0) + rng.normal(0.0, 2.0, head.shape)
    volume[brain] = 50.0 + rng.normal(0.0, 3.0, int(brain.sum()))
    result = sitk.GetImageFromArray(volume.astype(np.float32))
    result.CopyInformation(image)
    label = sitk.GetImageFromArray(brain.astype(np.uint8))
    label.CopyInformation(image)
    return result, label


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def run_scenario(logic: PocketSegLogic, model: Any, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the scenario above on ``logic``'s scene with ``model``; raises AssertionError on a failure.

    Returns what it measured (node, metrics) for the caller to report.
    """
    from pocketseg_core.inference import InferenceOptions, segment_image
    from pocketseg_core.metrics import compute_metrics

    context = logic.context
    scene = context.scene
    image, label = synthetic_head()
    volume = volume_io.volume_node_from_image(scene, image, "PocketSegTestHead")
    hierarchy = context.subject_hierarchy
    study = hierarchy.CreateStudyItem(
        hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Test patient"), "Study"
    )
    volume_item = hierarchy.GetItemByDataNode(volume) or hierarchy.CreateItem(study, volume)
    hierarchy.SetItemParent(volume_item, study)

    log("segmenting the synthetic head")
    options = SegmentOptions(device="cpu")
    node = logic.segment(volume, model, options)
    bundle = logic.load_model(model)
    description = segmentation.describe_label(bundle.config.labels[0], bundle.config.task)
    _check(node.GetName() == f"PocketSegTestHead {description.node_suffix}", f"node name {node.GetName()!r}")
    seg = node.GetSegmentation()
    _check(seg.GetNumberOfSegments() == 1, f"{seg.GetNumberOfSegments()} segments instead of 1")
    segment = seg.GetNthSegment(0)
    _check(segment.GetName() == description.name, f"segment name {segment.GetName()!r}")
    _check(np.allclose(segment.GetColor(), description.color), f"segment colour {segment.GetColor()}")
    _check(
        segment.GetTerminology() == description.terminology_entry, f"terminology {segment.GetTerminology()!r}"
    )
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    _check(node.GetNodeReference(role) is volume, "reference geometry is not the input volume")
    _check(
        hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node)) == study,
        "the segmentation is not next to its volume in the subject hierarchy",
    )

    log("comparing with pocketseg_core on the same image")
    inference = InferenceOptions(**options.worker_options())
    expected = sitk.GetArrayFromImage(segment_image(image, bundle, inference).mask)
    exported = segmentation.segment_array_on_volume(node, segment.GetName(), volume)
    _check(exported.shape == expected.shape, f"exported shape {exported.shape} != {expected.shape}")
    _check(
        np.array_equal(exported, (expected > 0).astype(np.uint8)),
        "exported segment differs from the core's mask",
    )

    log("comparison table")
    reference = segmentation.write_mask_to_segmentation(context, volume, label, description)
    table = logic.compare(reference, description.name, node, segment.GetName())
    values = metrics_from_table(table)
    truth = compute_metrics(label, segmentation.segment_image_on_volume(node, segment.GetName(), volume))
    for key, value in truth.items():
        _check(
            abs(values[key] - value) <= 1e-9 * max(1.0, abs(value)), f"{key}: table {values[key]} != {value}"
        )

    log("a cancelled run adds nothing")
    count = scene.GetNumberOfNodes()
    try:
        logic.segment(volume, model, options, progress=lambda fraction, message: False)
        _check(False, "the cancelled run did not raise Cancelled")
    except Cancelled:
        pass
    _check(scene.GetNumberOfNodes() == count, "a cancelled run changed the scene")
    return {"segmentation": node, "table": table, "metrics": values, "voxels": int(exported.sum())}
