"""Segmentation metrics on the physical grid: Dice, Hausdorff (max, mean, 95th), VOE, RVD, ASSD, MSSD.

Definitions (``A`` = reference voxels of the label, ``B`` = prediction voxels, distances in mm
between voxel centres with the images' spacing; direction and origin do not change distances).
The conventions, and PocketSeg's values beside MedPy, MONAI and SimpleITK on real pairs, are in
``docs/metrics.md``.

- ``dice`` = 2|A∩B| / (|A|+|B|).
- ``hd_max``, ``hd_mean``: SimpleITK's ``HausdorffDistanceImageFilter`` on the two masks
  (all voxels, not only surfaces), as in the PocketNet paper (section 3):
  ``GetHausdorffDistance()`` = max of the two directed maximum distances,
  ``GetAverageHausdorffDistance()`` = mean of the two directed mean distances.
- Surface distances (``hd95``, ``assd``, ``mssd``), exactly MedPy's convention
  (``medpy.metric.binary.hd95`` / ``assd`` / ``hd``): the surface of a mask is the set of its
  voxels with a face neighbour outside it (``mask`` minus its erosion by the 6-neighbour cross;
  the image border counts as outside). Each surface voxel of one mask gets the Euclidean
  distance from its centre to the nearest surface-voxel centre of the other mask, giving
  ``d(A→B)`` and ``d(B→A)``.
  ``hd95`` = 95th percentile (linear interpolation) of both sets pooled (MedPy's ``hd95``);
  ``assd`` = mean of both sets pooled, (Σ d(A→B) + Σ d(B→A)) / (|∂A| + |∂B|) (MedPy's
  ``assd``, MONAI's symmetric average surface distance);
  ``mssd`` = max of both sets (MedPy's ``hd``, the LiTS "maximum symmetric surface distance").
- ``voe`` = 1 - |A∩B| / |A∪B|.
- ``rvd`` = (|B| - |A|) / |A|, signed: positive when the prediction is larger than the
  reference (over-segmentation), negative when smaller; -1 when the prediction is empty.

Empty masks (MedPy raises an exception for them; PocketSeg does not, except as said):

- the label is absent from both images: :func:`compute_metrics` refuses it
  (:class:`InputImageError`: almost always a wrong ``--label``) unless ``allow_absent`` is set;
  then, as :func:`metrics_from_masks` always does, the result is perfect: dice 1, voe 0,
  rvd 0, every distance 0;
- one empty: an :class:`EmptyMaskWarning` and the worst values: dice 0, voe 1, every distance =
  the diagonal of the reference image's field of view
  (:func:`pocketseg_core.geometry.physical_diagonal`), rvd = -1 when the prediction is empty
  and, by convention, rvd = +1 when the reference is empty (|B|/|A| is undefined there; +1
  keeps the sign "prediction too large" and stays finite).
"""

from __future__ import annotations

import warnings

import numpy as np
import SimpleITK as sitk

from pocketseg_core.errors import GridMismatchError, InputImageError
from pocketseg_core.geometry import describe_grid_difference, physical_diagonal, resample_to_reference
from pocketseg_core.postprocessing import nonzero_extent

#: the metrics, in the order tables and JSON use
METRIC_NAMES: tuple[str, ...] = ("dice", "hd_max", "hd_mean", "hd95", "voe", "rvd", "assd", "mssd")

#: which metrics are distances in mm (the rest are ratios)
DISTANCE_METRICS: tuple[str, ...] = ("hd_max", "hd_mean", "hd95", "assd", "mssd")

#: rvd when the reference is empty and the prediction is not (see the module docstring)
RVD_EMPTY_REFERENCE = 1.0


class EmptyMaskWarning(UserWarning):
    """Exactly one of the two masks is empty: the distances are the field-of-view diagonal."""


def dice(reference: np.ndarray | sitk.Image, prediction: np.ndarray | sitk.Image) -> float:
    """Dice 2|A∩B| / (|A|+|B|) of two masks on one grid (non-zero = inside); 1.0 when both are empty.

    The one Dice of the package (metric tables, validation during training, scripts).

    Args:
        reference, prediction: arrays of one shape, or SimpleITK images of one size.
    """
    a = (
        sitk.GetArrayViewFromImage(reference) if isinstance(reference, sitk.Image) else np.asarray(reference)
    ) != 0
    b = (
        sitk.GetArrayViewFromImage(prediction)
        if isinstance(prediction, sitk.Image)
        else np.asarray(prediction)
    ) != 0
    if a.shape != b.shape:
        raise GridMismatchError(f"Dice needs two masks of one shape, got {a.shape} and {b.shape}")
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def compute_metrics(
    reference: sitk.Image,
    prediction: sitk.Image,
    label: int = 1,
    resample: bool = False,
    allow_absent: bool = False,
) -> dict[str, float]:
    """All eight metrics of ``prediction`` against ``reference`` for one label value.

    Args:
        reference: the ground-truth label map (any integer or float type; multi-label allowed;
            float values are rounded to the nearest integer first, e.g. a soft 0..1 mask is
            thresholded at 0.5).
        prediction: the predicted label map, same rules.
        label: the label value compared (voxels equal to it form each mask).
        resample: when the grids differ, resample the prediction onto the reference grid with
            nearest neighbour instead of refusing.
        allow_absent: a label absent from both images gives the perfect score instead of an
            error (for batches where a case may legitimately have neither, e.g. training).

    Returns:
        ``{name: value}`` for every name in :data:`METRIC_NAMES`, in that order; all finite.

    Raises:
        GridMismatchError: the grids differ and ``resample`` is false (the message says how).
        InputImageError: an image has no voxels, or (unless ``allow_absent``) the label is
            in neither image.

    Warns:
        EmptyMaskWarning: the label is in one image only (the values are the worst ones).
    """
    if reference.GetNumberOfComponentsPerPixel() != 1 or prediction.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError("metrics need scalar label maps, not vector images.")
    if reference.GetNumberOfPixels() == 0 or prediction.GetNumberOfPixels() == 0:
        raise InputImageError("metrics need non-empty images (one of them has no voxels).")
    difference = describe_grid_difference(reference, prediction)
    if difference:
        if not resample or reference.GetDimension() != prediction.GetDimension():
            raise GridMismatchError(
                f"reference and prediction: the voxel grids differ ({difference}). "
                f"Pass --resample (resample=True) to resample the prediction onto the reference grid "
                f"with nearest neighbour."
            )
        prediction = resample_to_reference(prediction, reference, sitk.sitkNearestNeighbor, 0)

    reference_mask = _label_mask(reference, label)
    prediction_mask = _label_mask(prediction, label)
    reference_empty, prediction_empty = not reference_mask.any(), not prediction_mask.any()
    if reference_empty and prediction_empty and not allow_absent:
        present = sorted(set(_labels_present(reference)) | set(_labels_present(prediction)))
        raise InputImageError(
            f"label {label} is in neither the reference nor the prediction (labels present: "
            f"{', '.join(str(v) for v in present) or 'none, both are empty'}); choose the label to "
            f"compare with --label."
        )
    if reference_empty != prediction_empty:
        which = "reference" if reference_empty else "prediction"
        warnings.warn(
            f"label {label} is absent from the {which}: the distances are the reference image's "
            f"field-of-view diagonal ({physical_diagonal(reference):.1f} mm), dice 0, voe 1, "
            f"rvd {'+1' if reference_empty else '-1'} (see docs/metrics.md).",
            EmptyMaskWarning,
            stacklevel=2,
        )
    spacing = tuple(float(s) for s in reference.GetSpacing())
    return metrics_from_masks(reference_mask, prediction_mask, spacing, physical_diagonal(reference))


def metrics_from_masks(
    reference_mask: np.ndarray, prediction_mask: np.ndarray, spacing: tuple[float, ...], diagonal: float
) -> dict[str, float]:
    """The eight metrics from two boolean arrays on one grid.

    Args:
        reference_mask, prediction_mask: boolean arrays of shape ``(z, y, x)`` (or any N-D,
            SimpleITK axis order reversed).
        spacing: voxel size in mm in image order ``(x, y, z)``.
        diagonal: the distance (mm) reported when exactly one mask is empty.
    """
    reference_count = int(np.count_nonzero(reference_mask))
    prediction_count = int(np.count_nonzero(prediction_mask))
    if reference_count == 0 and prediction_count == 0:
        return dict.fromkeys(METRIC_NAMES, 0.0) | {"dice": 1.0}
    if reference_count == 0 or prediction_count == 0:
        worst = dict.fromkeys(DISTANCE_METRICS, float(diagonal))
        worst |= {"dice": 0.0, "voe": 1.0, "rvd": -1.0 if prediction_count == 0 else RVD_EMPTY_REFERENCE}
        return {name: worst[name] for name in METRIC_NAMES}

    overlap = int(np.count_nonzero(reference_mask & prediction_mask))
    union = reference_count + prediction_count - overlap
    values = {
        "dice": dice(reference_mask, prediction_mask),
        "voe": 1.0 - overlap / union,
        "rvd": (prediction_count - reference_count) / reference_count,
    }
    reference_image, prediction_image = _cropped_images(reference_mask, prediction_mask, spacing)
    values.update(_hausdorff(reference_image, prediction_image))
    values.update(_surface_distances(reference_image, prediction_image))
    return {name: float(values[name]) for name in METRIC_NAMES}


def _label_mask(image: sitk.Image, label: int) -> np.ndarray:
    """Boolean ``(z, y, x)`` array of the voxels equal to ``label`` (floats rounded first)."""
    values = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(values.dtype, np.floating):
        values = np.rint(values)
    return values == label


def _labels_present(image: sitk.Image, limit: int = 10) -> list[int]:
    """Up to ``limit`` non-zero label values of ``image`` (floats rounded), for messages."""
    values = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(values.dtype, np.floating):
        values = np.rint(values)
    present = np.unique(values)
    return [int(v) for v in present[present != 0][:limit]]


def _cropped_images(
    reference_mask: np.ndarray, prediction_mask: np.ndarray, spacing: tuple[float, ...]
) -> tuple[sitk.Image, sitk.Image]:
    """Both masks cut to the bounding box of their union plus one voxel of background all round.

    Cropping makes distance maps cheap on large images without changing any distance (every
    voxel involved lies in the box); the background frame makes voxels on the image border
    count as surface. Direction and origin do not change distances, so they are left out.
    """
    extent = nonzero_extent(reference_mask | prediction_mask)  # not None: callers pass a non-empty mask
    box = tuple(slice(low, high + 1) for low, high in extent)
    images = []
    for mask in (reference_mask, prediction_mask):
        framed = np.pad(mask[box].astype(np.uint8), 1, mode="constant", constant_values=0)
        image = sitk.GetImageFromArray(framed)
        image.SetSpacing(spacing)
        images.append(image)
    return images[0], images[1]


def _hausdorff(reference_image: sitk.Image, prediction_image: sitk.Image) -> dict[str, float]:
    hausdorff = sitk.HausdorffDistanceImageFilter()
    hausdorff.Execute(reference_image, prediction_image)
    return {
        "hd_max": hausdorff.GetHausdorffDistance(),
        "hd_mean": hausdorff.GetAverageHausdorffDistance(),
    }


def _surface_distances(reference_image: sitk.Image, prediction_image: sitk.Image) -> dict[str, float]:
    reference_surface = surface_voxels(sitk.GetArrayViewFromImage(reference_image) > 0)
    prediction_surface = surface_voxels(sitk.GetArrayViewFromImage(prediction_image) > 0)
    spacing = reference_image.GetSpacing()
    reference_to_prediction = _directed_surface_distances(reference_surface, prediction_surface, spacing)
    prediction_to_reference = _directed_surface_distances(prediction_surface, reference_surface, spacing)
    pooled = np.concatenate([reference_to_prediction, prediction_to_reference])
    return {
        "hd95": float(np.percentile(pooled, 95)),
        "assd": float(pooled.mean()),
        "mssd": float(pooled.max()),
    }


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """The voxels of ``mask`` with a face neighbour outside it (MedPy's surface).

    Args:
        mask: boolean array of any dimension.

    Returns:
        Boolean array of the same shape: ``mask`` minus its erosion by the cross of face
        neighbours, the image border counting as outside (scipy's ``binary_erosion`` with
        ``border_value=0``, as MedPy calls it).
    """
    padded = np.pad(mask, 1, mode="constant", constant_values=False)
    interior = padded.copy()
    for axis in range(mask.ndim):
        for shift in (1, -1):
            interior &= np.roll(padded, shift, axis=axis)  # the pad frame stops wrap-around
    core = tuple(slice(1, -1) for _ in range(mask.ndim))
    return mask & ~interior[core]


def _directed_surface_distances(
    source_surface: np.ndarray, target_surface: np.ndarray, spacing: tuple[float, ...]
) -> np.ndarray:
    """Distance (mm) from every ``source_surface`` voxel centre to the nearest ``target_surface`` one.

    Args:
        source_surface, target_surface: boolean arrays ``(z, y, x)`` on one grid; the target
            has at least one voxel.
        spacing: voxel size ``(x, y, z)`` in mm.
    """
    target = sitk.GetImageFromArray(target_surface.astype(np.uint8))
    target.SetSpacing(spacing)
    # Maurer's map is exact (Euclidean, not chamfer). Measured on the surface *set* itself, every
    # voxel off the set is outside it, where the map is the distance to the nearest voxel of the
    # set (the nearest voxel of a set seen from outside is always on the set's own boundary).
    distance_map = sitk.SignedMaurerDistanceMap(
        target, insideIsPositive=False, squaredDistance=True, useImageSpacing=True, backgroundValue=0.0
    )
    squared = np.abs(sitk.GetArrayViewFromImage(distance_map)[source_surface]).astype(np.float64)
    squared[target_surface[source_surface]] = 0.0  # on both surfaces: exactly 0
    # Squared distances are sums of squared spacings, exact in float32 for ordinary spacings.
    return np.sqrt(squared)
