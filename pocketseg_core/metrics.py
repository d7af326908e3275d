"""Segmentation metrics on the physical grid: Dice, Hausdorff (max, mean, 95th), VOE, RVD, ASSD, MSSD.

Definitions (``A`` = reference voxels of the label, ``B`` = prediction voxels, distances in mm
with the images' spacing; directions do not change distances):

- ``dice`` = 2|A∩B| / (|A|+|B|).
- ``hd_max``, ``hd_mean``: SimpleITK's ``HausdorffDistanceImageFilter`` on the two masks
  (all voxels, not only surfaces), as in the PocketNet paper (section 3):
  ``GetHausdorffDistance()`` = max of the two directed maximum distances,
  ``GetAverageHausdorffDistance()`` = mean of the two directed mean distances.
- Surface distances (``hd95``, ``assd``, ``mssd``): the surface of a mask is its label-contour
  voxels (``sitk.LabelContour``, face connectivity: a voxel of the mask with a face neighbour
  outside it; the image border counts as outside). Each surface voxel of one mask gets its
  distance to the nearest surface voxel of the other (``sitk.SignedMaurerDistanceMap``, whose
  zero set is exactly those contour voxels), giving two sets of distances ``d(A→B)``, ``d(B→A)``.
  ``hd95`` = 95th percentile of both sets pooled (as MedPy's ``hd95``, used for LiTS);
  ``assd`` = mean of both sets pooled; ``mssd`` = max of both (the LiTS challenge definitions
  the LV-Net paper reports).
- ``voe`` = 1 - |A∩B| / |A∪B|.
- ``rvd`` = (|B| - |A|) / |A|, signed: positive when the prediction is larger than the
  reference (over-segmentation), negative when smaller; -1 when the prediction is empty.

Empty masks (no NaN, no exception):

- both empty: perfect — dice 1, voe 0, rvd 0, every distance 0;
- one empty: worst — dice 0, voe 1, every distance = the diagonal of the reference image's
  field of view (:func:`pocketseg_core.geometry.physical_diagonal`), rvd = -1 when the
  prediction is empty and, by convention, rvd = +1 when the reference is empty (|B|/|A| is
  undefined there; +1 keeps the sign "prediction too large" and stays finite).
"""

from __future__ import annotations

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
    reference: sitk.Image, prediction: sitk.Image, label: int = 1, resample: bool = False
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

    Returns:
        ``{name: value}`` for every name in :data:`METRIC_NAMES`, in that order; all finite.

    Raises:
        GridMismatchError: the grids differ and ``resample`` is false (the message says how).
        InputImageError: an image has no voxels.
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
    reference_to_prediction = _directed_surface_distances(reference_image, prediction_image)
    prediction_to_reference = _directed_surface_distances(prediction_image, reference_image)
    pooled = np.concatenate([reference_to_prediction, prediction_to_reference])
    return {
        "hd95": float(np.percentile(pooled, 95)),
        "assd": float(pooled.mean()),
        "mssd": float(pooled.max()),
    }


def _directed_surface_distances(source: sitk.Image, target: sitk.Image) -> np.ndarray:
    """Distance (mm) from every surface voxel of ``source`` to the nearest surface voxel of ``target``."""
    # Keep the contour image alive while its array view is read (a view does not own the buffer).
    source_contour = sitk.LabelContour(source, fullyConnected=False)
    source_surface = sitk.GetArrayViewFromImage(source_contour) > 0
    # |signed Maurer map| is the distance to the target's contour voxels, inside and outside.
    # ITK computes it in float32: distances carry a relative error of about 2e-5.
    target_distance = sitk.SignedMaurerDistanceMap(
        target, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    distances = np.abs(sitk.GetArrayViewFromImage(target_distance)[source_surface]).astype(np.float64)
    # The map is float32: make voxels on both surfaces exactly 0 instead of ~1e-7 mm.
    target_contour = sitk.LabelContour(target, fullyConnected=False)
    distances[sitk.GetArrayViewFromImage(target_contour)[source_surface] > 0] = 0.0
    return distances
