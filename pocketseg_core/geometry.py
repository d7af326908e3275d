"""Voxel grids: comparison, canonical orientation, and resampling in physical space.

A grid is (size, spacing, origin, direction) in SimpleITK's axis order ``(x, y, z)``; physical
coordinates are LPS millimetres (ITK's convention, also used by DICOM). A segmentation must
overlay its image voxel-exactly, so everything that leaves the input grid must map back to
it exactly: :func:`from_canonical` restores the input grid bit for bit, and
:func:`resample_to_reference` lands on the reference grid itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from pocketseg_core.errors import GridMismatchError, InputImageError

#: the orientation networks see (DICOM/ITK code: axis x runs towards patient Left, y towards
#: Posterior, z towards Superior); for an axis-aligned image this is the identity direction,
#: so arrays are (z, y, x) = (inferior->superior, anterior->posterior, right->left).
CANONICAL_ORIENTATION = "LPS"

#: THE tolerance of "same grid" (here, in the Slicer modules, everywhere): in voxels for origin
#: and spacing, absolute for direction cosines; loose enough for float32 header round trips
#: (NIfTI), far below anything visible.
GRID_TOLERANCE = 1e-3

#: voxel sizes (mm) PocketSeg accepts: far beyond any CT or MR (micro-CT ~0.01 mm, thick
#: slices ~10 mm), but a header written in metres or with a lost scale factor is refused
MIN_SPACING_MM, MAX_SPACING_MM = 1e-3, 1e3

#: most voxels a resampled grid may have (2 GiB of float32): a head at 0.5 mm is ~0.1 of it;
#: more means a header with a wrong spacing, which would otherwise exhaust the memory
MAX_RESAMPLED_VOXELS = 2**29


def geometry_problem(spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float]) -> str:
    """What makes a grid unusable, as a phrase (``""`` when it is fine): spacing not finite or
    outside [:data:`MIN_SPACING_MM`, :data:`MAX_SPACING_MM`], origin not finite, or a direction
    matrix that is not orthonormal (sheared or scaled axes: no NIfTI, no mask overlay can
    reproduce such a grid voxel-exactly, and resampling through it would move the mask).
    """
    spacing_values = np.asarray(spacing, dtype=float)
    dim = len(spacing_values)
    if not np.all(np.isfinite(spacing_values)) or np.any(spacing_values <= 0):
        return f"its voxel spacing {_fmt(spacing_values)} mm is not a set of positive numbers"
    if np.any(spacing_values < MIN_SPACING_MM) or np.any(spacing_values > MAX_SPACING_MM):
        return (
            f"its voxel spacing {_fmt(spacing_values)} mm is outside {MIN_SPACING_MM:g}..{MAX_SPACING_MM:g} mm "
            f"(a header in metres, or a lost scale factor?)"
        )
    if not np.all(np.isfinite(np.asarray(origin, dtype=float))):
        return f"its origin {_fmt(origin)} is not finite"
    matrix = np.asarray(direction, dtype=float).reshape(dim, dim)
    if not np.all(np.isfinite(matrix)) or not np.allclose(
        matrix.T @ matrix, np.eye(dim), rtol=0, atol=GRID_TOLERANCE
    ):
        return (
            f"its direction matrix {_fmt(matrix.ravel())} is not orthonormal (sheared or scaled axes), "
            f"which no mask can overlay voxel-exactly"
        )
    return ""


def check_geometry(image: sitk.Image, name: str = "image") -> None:
    """Refuse an image whose grid cannot be used (see :func:`geometry_problem`).

    Raises:
        InputImageError: one sentence naming the problem and what to do.
    """
    problem = geometry_problem(image.GetSpacing(), image.GetOrigin(), image.GetDirection())
    if problem:
        raise InputImageError(
            f"{name}: {problem}. Fix the header (spacing, origin, direction) or re-export the image."
        )


def grid_tolerance_mm(spacing: Sequence[float], tol: float = GRID_TOLERANCE) -> float:
    """:data:`GRID_TOLERANCE` in millimetres for a grid of ``spacing``: ``tol`` of its smallest voxel."""
    return tol * min(float(s) for s in spacing)


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = GRID_TOLERANCE) -> bool:
    """True when ``a`` and ``b`` share size, spacing, origin and direction (within ``tol``)."""
    return not grid_differences(a, b, tol)


def grid_differences(a: sitk.Image, b: sitk.Image, tol: float = GRID_TOLERANCE) -> list[str]:
    """The grid properties that differ, each as ``"name a vs b"``; empty when the grids match.

    Spacing and origin are compared in units of the smaller voxel of ``a`` (``tol`` voxels),
    direction cosines absolutely.
    """
    differences = []
    if a.GetDimension() != b.GetDimension():
        return [f"dimension {a.GetDimension()}D vs {b.GetDimension()}D"]
    if a.GetSize() != b.GetSize():
        differences.append(f"size {_fmt(a.GetSize())} vs {_fmt(b.GetSize())}")
    tolerance_mm = grid_tolerance_mm(a.GetSpacing(), tol)
    if not np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=0, atol=tolerance_mm):
        differences.append(f"spacing {_fmt(a.GetSpacing())} vs {_fmt(b.GetSpacing())} mm")
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=tolerance_mm):
        differences.append(f"origin {_fmt(a.GetOrigin())} vs {_fmt(b.GetOrigin())} mm")
    if not np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=tol):
        differences.append(f"direction {_fmt(a.GetDirection())} vs {_fmt(b.GetDirection())}")
    return differences


def describe_grid_difference(a: sitk.Image, b: sitk.Image, tol: float = GRID_TOLERANCE) -> str:
    """A sentence naming how the grids of ``a`` and ``b`` differ, or ``""`` when they match."""
    return "; ".join(grid_differences(a, b, tol))


def require_same_grid(a: sitk.Image, b: sitk.Image, what: str, hint: str = "") -> None:
    """Raise :class:`GridMismatchError` (``"<what>: the grids differ: ..."``) unless grids match."""
    difference = describe_grid_difference(a, b)
    if difference:
        raise GridMismatchError(f"{what}: the voxel grids differ ({difference}).{' ' + hint if hint else ''}")


def physical_diagonal(image: sitk.Image) -> float:
    """Length in mm of the diagonal of the image's field of view (voxel edge to voxel edge)."""
    extent = np.asarray(image.GetSize(), dtype=float) * np.asarray(image.GetSpacing(), dtype=float)
    return float(np.linalg.norm(extent))


# --------------------------------------------------------------------------- orientation


def orientation_code(image: sitk.Image) -> str:
    """The closest DICOM orientation code of the image's axes, e.g. ``"LPS"`` or ``"RAS"``."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def to_canonical(image: sitk.Image) -> sitk.Image:
    """The same voxels with axes permuted/flipped so they run as :data:`CANONICAL_ORIENTATION`.

    Only permutes and flips (no interpolation). An oblique image stays oblique (its direction
    is the closest to identity a permutation/flip reaches); :func:`from_canonical` undoes it
    exactly.
    """
    return sitk.DICOMOrient(image, CANONICAL_ORIENTATION)


def from_canonical(image: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Map ``image`` (on the grid ``to_canonical(reference)`` gave) back onto ``reference``'s grid.

    The voxels are permuted/flipped back and the reference's geometry is copied, so the
    result is on exactly the reference grid (no floating-point drift in origin or direction).

    Raises:
        GridMismatchError: ``image`` is not a permuted/flipped copy of the reference grid.
    """
    permutation, flips = _axis_permutation(image, reference)
    # Work on arrays (z, y, x): image axis i is array axis (dim-1-i).
    array = sitk.GetArrayFromImage(image)
    dim = image.GetDimension()
    flip_axes = tuple(dim - 1 - j for j in range(dim) if flips[j])
    if flip_axes:
        array = np.flip(array, axis=flip_axes)
    # Reference axis i comes from image axis permutation[i]; in array order, reversed.
    array_order = [dim - 1 - permutation[dim - 1 - k] for k in range(dim)]
    array = np.ascontiguousarray(np.transpose(array, array_order))
    result = sitk.GetImageFromArray(array, isVector=image.GetNumberOfComponentsPerPixel() > 1)
    result.CopyInformation(reference)
    return result


def _axis_permutation(image: sitk.Image, reference: sitk.Image) -> tuple[list[int], list[bool]]:
    """For each reference axis i: the image axis it runs along and whether it runs backwards.

    Checks that the flipped/permuted grid of ``image`` covers exactly the reference voxels.
    """
    dim = reference.GetDimension()
    if image.GetDimension() != dim:
        raise GridMismatchError(f"cannot map a {image.GetDimension()}D image onto a {dim}D grid.")
    image_dirs = np.asarray(image.GetDirection(), dtype=float).reshape(dim, dim)
    reference_dirs = np.asarray(reference.GetDirection(), dtype=float).reshape(dim, dim)
    dots = reference_dirs.T @ image_dirs  # [i, j]: cosine between reference axis i and image axis j
    permutation = [int(np.argmax(np.abs(dots[i]))) for i in range(dim)]
    flips = [False] * dim
    problem = sorted(permutation) != list(range(dim))
    for i, j in enumerate(permutation):
        if abs(abs(dots[i, j]) - 1.0) > GRID_TOLERANCE:
            problem = True
        flips[j] = dots[i, j] < 0
        if image.GetSize()[j] != reference.GetSize()[i]:
            problem = True
        if abs(image.GetSpacing()[j] - reference.GetSpacing()[i]) > grid_tolerance_mm(reference.GetSpacing()):
            problem = True
    if not problem:
        # The first reference voxel must be the (possibly flipped) corner of the image grid.
        corner = [image.GetSize()[j] - 1 if flips[j] else 0 for j in range(dim)]
        point = np.asarray(image.TransformIndexToPhysicalPoint(corner))
        problem = not np.allclose(
            point, reference.GetOrigin(), rtol=0, atol=grid_tolerance_mm(reference.GetSpacing())
        )
    if problem:
        raise GridMismatchError(
            "the image is not a permuted/flipped copy of the reference grid "
            f"({describe_grid_difference(image, reference)}); it cannot be mapped back without resampling."
        )
    return permutation, flips


# --------------------------------------------------------------------------- resampling


def resampled_grid(
    image: sitk.Image, spacing: float | Sequence[float | None]
) -> tuple[list[int], list[float], list[float]]:
    """Size, spacing and origin of the grid with ``spacing`` covering the same field of view.

    ``spacing`` is one number or one per axis ``(x, y, z)``; ``None`` keeps that axis as is.
    The new grid is centred on the old one (same centre, same direction), so a flipped copy
    of an image resamples to the flipped copy of the result; each size is
    ``old_size * old_spacing / new_spacing`` rounded half up, at least 1.
    """
    dim = image.GetDimension()
    old_spacing = np.asarray(image.GetSpacing(), dtype=float)
    if isinstance(spacing, (int, float)):
        wanted = [float(spacing)] * dim
    else:
        if len(spacing) != dim:
            raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} values; the image is {dim}D.")
        wanted = [old_spacing[i] if s is None else float(s) for i, s in enumerate(spacing)]
    new_spacing = np.asarray(wanted, dtype=float)
    if np.any(new_spacing <= 0):
        raise ValueError(f"spacing must be positive, got {tuple(wanted)}.")
    old_size = np.asarray(image.GetSize(), dtype=float)
    # Round half up (not numpy's half-to-even) so sizes are predictable.
    new_size = np.maximum(1, np.floor(old_size * old_spacing / new_spacing + 0.5))
    if not np.all(np.isfinite(new_size)) or float(np.prod(new_size)) > MAX_RESAMPLED_VOXELS:
        extent = "x".join(f"{v:.4g}" for v in old_size * old_spacing)
        raise InputImageError(
            f"the image covers {extent} mm: at {_fmt(new_spacing)} mm that is "
            f"{float(np.prod(new_size)):.3g} voxels, more than PocketSeg handles ({MAX_RESAMPLED_VOXELS:.3g}); "
            f"check the voxel spacing in the image header."
        )
    new_size = new_size.astype(int)
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(dim, dim)
    centre = np.asarray(image.GetOrigin()) + direction @ ((old_size - 1) * old_spacing / 2)
    new_origin = centre - direction @ ((new_size - 1) * new_spacing / 2)
    return [int(s) for s in new_size], [float(s) for s in new_spacing], [float(o) for o in new_origin]


def resample_to_spacing(
    image: sitk.Image,
    spacing: float | Sequence[float | None],
    interpolator: int = sitk.sitkLinear,
    default_value: float = 0.0,
) -> sitk.Image:
    """Resample ``image`` to ``spacing`` mm over the same field of view (see :func:`resampled_grid`).

    Args:
        image: any scalar image.
        spacing: one value or one per axis ``(x, y, z)``; ``None`` keeps that axis.
        interpolator: ``sitk.sitkLinear`` for intensities/probabilities, ``sitk.sitkNearestNeighbor``
            for labels (``sitk.sitkBSpline`` etc. also accepted).
        default_value: value of voxels falling outside the input.

    Returns:
        The resampled image, same pixel type and direction.
    """
    size, new_spacing, origin = resampled_grid(image, spacing)
    return sitk.Resample(
        image,
        size,
        sitk.Transform(),
        interpolator,
        origin,
        new_spacing,
        image.GetDirection(),
        default_value,
        image.GetPixelID(),
    )


def resample_to_reference(
    image: sitk.Image,
    reference: sitk.Image,
    interpolator: int = sitk.sitkLinear,
    default_value: float = 0.0,
    pixel_type: int | None = None,
) -> sitk.Image:
    """Resample ``image`` onto exactly the grid of ``reference`` (physical space, identity transform).

    Use linear interpolation for probabilities (then threshold, see
    :func:`resample_probabilities_to_mask`) and nearest neighbour only for label maps that
    have no probabilities behind them.

    Returns:
        An image on the reference grid, of ``pixel_type`` (default: ``image``'s pixel type).
    """
    output_type = image.GetPixelID() if pixel_type is None else pixel_type
    result = sitk.Resample(image, reference, sitk.Transform(), interpolator, default_value, output_type)
    result.CopyInformation(reference)  # exactly the reference's numbers, not a recomputed copy
    return result


def resample_probabilities_to_mask(
    probabilities: sitk.Image, reference: sitk.Image, threshold: float = 0.5
) -> sitk.Image:
    """Foreground probabilities on any grid -> ``uint8`` 0/1 mask on exactly ``reference``'s grid.

    Probabilities are interpolated linearly in physical space and then thresholded (``>=``),
    which gives smoother, less biased boundaries than nearest-neighbour on a label map.
    """
    if probabilities.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        probabilities = sitk.Cast(probabilities, sitk.sitkFloat32)
    on_reference = resample_to_reference(probabilities, reference, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    mask = sitk.BinaryThreshold(on_reference, lowerThreshold=threshold, upperThreshold=1e30, insideValue=1)
    mask = sitk.Cast(mask, sitk.sitkUInt8)
    mask.CopyInformation(reference)
    return mask


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"
