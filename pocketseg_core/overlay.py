"""Axial / coronal / sagittal overlay pictures of a mask on its image (PNG), for reports.

matplotlib is an optional dependency (``pip install pocketseg-core[figures]``): it is imported
only here, when a picture is asked for.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pocketseg_core.errors import PocketSegError
from pocketseg_core.io import write_bytes_atomic


def _import_pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed, also inside Slicer's embedded Python
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the installation
        raise PocketSegError(
            "overlay pictures need matplotlib: install it with `pip install matplotlib`"
        ) from error
    return plt


def _display_window(values: np.ndarray) -> tuple[float, float]:
    """Robust grey-level window: 1st-99th percentile of the non-background voxels."""
    foreground = values[values > values.min()]
    if foreground.size == 0:
        return float(values.min()), float(values.min()) + 1.0
    low, high = np.percentile(foreground, [1.0, 99.0])
    return float(low), float(max(high, low + 1e-6))


def save_overlay_png(
    image: sitk.Image,
    mask: sitk.Image,
    path: str | Path,
    title: str = "",
    color: tuple[float, float, float] = (1.0, 0.2, 0.2),
    window: tuple[float, float] | None = None,
) -> Path:
    """Save three orthogonal slices through the mask's centre with the mask outlined and filled.

    Both images are reoriented to LPS so that every picture is in radiological convention
    (patient's right on the picture's left, anterior / superior up), whatever the input's
    direction matrix; the mask must be on the image's grid. ``window`` is the grey-level
    range shown (e.g. ``(-150, 250)`` HU for abdominal CT); by default a robust percentile window.
    """
    plt = _import_pyplot()
    image_lps = sitk.DICOMOrient(image, "LPS")
    mask_lps = sitk.DICOMOrient(mask, "LPS")
    volume = sitk.GetArrayFromImage(image_lps).astype(np.float32)  # (z, y, x) = (S, P, L)
    labels = sitk.GetArrayFromImage(mask_lps) > 0
    spacing_x, spacing_y, spacing_z = image_lps.GetSpacing()

    if labels.any():
        centre = [int(round(c)) for c in np.argwhere(labels).mean(axis=0)]
    else:
        centre = [s // 2 for s in labels.shape]
    k, j, i = centre
    low, high = window if window is not None else _display_window(volume)

    # (slice of the volume, slice of the mask, aspect = row spacing / column spacing, name)
    views = [
        (volume[k], labels[k], spacing_y / spacing_x, "axial"),
        (volume[::-1, j, :], labels[::-1, j, :], spacing_z / spacing_x, "coronal"),
        (volume[::-1, :, i], labels[::-1, :, i], spacing_z / spacing_y, "sagittal"),
    ]
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for axis, (grey, overlay, aspect, name) in zip(axes, views, strict=True):
        axis.imshow(grey, cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="nearest")
        tint = np.zeros((*overlay.shape, 4), dtype=np.float32)
        tint[overlay] = (*color, 0.35)
        axis.imshow(tint, aspect=aspect, interpolation="nearest")
        if overlay.any() and not overlay.all():
            axis.contour(overlay.astype(np.uint8), levels=[0.5], colors=[color], linewidths=0.8)
        axis.set_title(name)
        axis.axis("off")
    if title:
        figure.suptitle(title)
    figure.tight_layout()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = io.BytesIO()
    figure.savefig(picture, format="png", dpi=90)
    plt.close(figure)
    return write_bytes_atomic(path, picture.getvalue())
