"""Overlay pictures: written as PNG, radiological orientation whatever the direction matrix."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("matplotlib")

from pocketseg_core.overlay import save_overlay_png  # noqa: E402


def _phantom(direction: tuple[float, ...]) -> tuple[sitk.Image, sitk.Image]:
    values = np.zeros((20, 24, 28), dtype=np.float32)
    values[5:15, 6:18, 4:12] = 100.0  # a block on the array's low-x side
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((1.0, 1.5, 2.0))
    image.SetDirection(direction)
    mask = sitk.Cast(image > 50, sitk.sitkUInt8)
    return image, mask


def test_overlay_png_is_written_with_the_mask_drawn(tmp_path):
    image, mask = _phantom((1, 0, 0, 0, 1, 0, 0, 0, 1))
    path = save_overlay_png(image, mask, tmp_path / "overlay.png", title="phantom")
    assert path.exists() and path.stat().st_size > 5000
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file may be left behind"
    from matplotlib.image import imread

    picture = imread(path)
    red_dominant = (picture[..., 0] > 0.6) & (picture[..., 1] < 0.5)
    assert red_dominant.sum() > 100, "the mask's tint must be visible"


def test_overlay_is_the_same_picture_for_a_flipped_direction(tmp_path):
    """The same physical object stored with a flipped x axis gives the same picture."""
    image, mask = _phantom((1, 0, 0, 0, 1, 0, 0, 0, 1))
    flipped = sitk.Flip(image, [True, False, False])  # flips the array and the direction
    flipped_mask = sitk.Flip(mask, [True, False, False])
    assert flipped.GetDirection()[0] == pytest.approx(-1.0)
    first = save_overlay_png(image, mask, tmp_path / "a.png")
    second = save_overlay_png(flipped, flipped_mask, tmp_path / "b.png")
    from matplotlib.image import imread

    assert np.array_equal(imread(first), imread(second))
