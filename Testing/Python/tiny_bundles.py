"""Tiny model bundles and phantoms for tests (no shipped weights needed).

Reused by every test that needs a model: the inference and CLI tests, the Slicer module tests.

- :func:`make_phantom` draws a synthetic head (T1-like MR: dark background, bright scalp
  shell, a brain ellipsoid) or abdomen (CT in HU: air, body, a brighter liver blob), with its
  0/1 label, on any grid.
- :func:`make_tiny_bundle` writes a bundle folder holding a ``pocket_unet3d`` with 4 filters
  and 2 poolings, fitted in a few seconds on such a phantom so its masks are meaningful
  (Dice > 0.9 on a phantom), deterministic for a given seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from pocketseg_core.bundles import BundleConfig, save_bundle, standard_label
from pocketseg_core.networks import create_network
from pocketseg_core.preprocessing import normalize_intensity

#: the tiny network: 4 feature maps, 2 isotropic poolings (spatial_divisor 4x4x4)
TINY_NETWORK = "pocket_unet3d"
TINY_NETWORK_ARGS = {"init_filters": 4, "depth": 2, "pool_size": 2}
TINY_SPACING = (4.0, 4.0, 4.0)
TINY_FAST_SPACING = (6.0, 6.0, 6.0)


def make_phantom(
    modality: str = "MR",
    size: tuple[int, int, int] = (48, 56, 44),
    spacing: tuple[float, float, float] = (4.0, 4.0, 4.0),
    seed: int = 0,
    origin: tuple[float, float, float] | None = None,
    direction: tuple[float, ...] | None = None,
    centre_shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> tuple[sitk.Image, sitk.Image]:
    """A synthetic volume and its 0/1 label ``(image, label)``, both on the same grid.

    ``size``/``spacing`` are SimpleITK ``(x, y, z)``. Shapes are defined in physical mm
    around the field-of-view centre, so the same phantom can be drawn on different grids.
    MR: background ~0, scalp shell ~80, brain ~50 with texture; label = brain. CT (HU): air
    -1000, body ~30, liver ~110; label = liver.
    """
    rng = np.random.default_rng(seed)
    image = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    image.SetSpacing([float(s) for s in spacing])
    if direction is not None:
        image.SetDirection(direction)
    if origin is None:
        # centre the field of view on (0, 0, 0)
        centre_index = [(s - 1) / 2 for s in size]
        offset = np.asarray(image.TransformContinuousIndexToPhysicalPoint(centre_index))
        origin = tuple(-offset)
    image.SetOrigin(origin)
    z, y, x = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    index = np.stack([x, y, z], axis=-1).reshape(-1, 3).astype(np.float64)
    matrix = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(spacing)
    # shapes are placed around the centre of the field of view (plus centre_shift_mm)
    fov_centre = np.asarray(origin) + matrix @ ((np.asarray(size) - 1) / 2)
    points = (
        (index @ matrix.T + np.asarray(origin)).reshape(*size[::-1], 3)
        - fov_centre
        - np.asarray(centre_shift_mm)
    )
    px, py, pz = points[..., 0], points[..., 1], points[..., 2]
    extent = np.asarray(size) * np.asarray(spacing)
    if modality == "MR":
        radii = extent * np.array([0.36, 0.36, 0.36])
        head = (px / radii[0]) ** 2 + (py / radii[1]) ** 2 + (pz / radii[2]) ** 2
        brain_radii = radii * 0.72
        brain = (px / brain_radii[0]) ** 2 + (py / brain_radii[1]) ** 2 + (pz / brain_radii[2]) ** 2 <= 1.0
        volume = np.where(head <= 1.0, 80.0, 2.0)
        volume[brain] = 50.0 + 8.0 * np.sin(px[brain] / 7.0) * np.cos(py[brain] / 9.0)
        volume += rng.normal(0.0, 2.0, volume.shape)
        label = brain
    elif modality == "CT":
        body = (px / (extent[0] * 0.42)) ** 2 + (py / (extent[1] * 0.36)) ** 2 <= 1.0
        liver_radii = extent * np.array([0.2, 0.16, 0.3])
        liver = ((px + extent[0] * 0.12) / liver_radii[0]) ** 2 + (py / liver_radii[1]) ** 2 + (
            pz / liver_radii[2]
        ) ** 2 <= 1.0
        volume = np.where(body, 30.0, -1000.0)
        volume[liver & body] = 110.0
        volume += rng.normal(0.0, 8.0, volume.shape)
        label = liver & body
    else:
        raise ValueError(f"modality must be MR or CT, got {modality!r}")
    image = sitk.GetImageFromArray(volume.astype(np.float32))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    label_image = sitk.GetImageFromArray(label.astype(np.uint8))
    label_image.CopyInformation(image)
    return image, label_image


def tiny_config(task: str = "skullstrip", modality: str = "MR", window_mode: str = "patch3d") -> BundleConfig:
    """The config of a tiny test bundle (not yet fitted)."""
    preprocessing = (
        {"kind": "mr_zscore"} if modality == "MR" else {"kind": "ct_window", "window": [-100, 200]}
    )
    window = {"patch3d": (32, 32, 32), "slab": (5, 0, 0), "slice2d": (1, 0, 0)}[window_mode]
    network = TINY_NETWORK if window_mode != "slice2d" else "pocket_unet2d"
    network_args = {
        "patch3d": dict(TINY_NETWORK_ARGS),
        "slab": {"init_filters": 4, "depth": 2, "pool_size": (1, 2, 2)},  # PocketNet's in-plane pooling
        "slice2d": {"init_filters": 4, "depth": 2},
    }[window_mode]
    return BundleConfig(
        name=f"tiny-{task}",
        title=f"Tiny test model ({task})",
        version="0.0.1",
        description="A 4-filter pocket U-Net fitted for seconds on a synthetic phantom. For tests only.",
        task=task,
        network=network,
        network_args=network_args,
        modality=modality,
        preprocessing=preprocessing,
        spacing=TINY_SPACING,
        fast_spacing=TINY_FAST_SPACING,
        window_mode=window_mode,
        window_size_zyx=window,
        labels=[standard_label(task)],
        training={"data": f"synthetic {modality} phantom (tiny_bundles.make_phantom)", "purpose": "tests"},
    )


def fit_tiny_network(config: BundleConfig, steps: int = 100, seed: int = 0) -> dict[str, torch.Tensor]:
    """Fit the config's network on phantoms at its working spacing; returns the state dict.

    Random 16-voxel crops (whole slices for 2D) of two phantoms, cross-entropy plus soft
    Dice, Adam: a few seconds on one CPU thread.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = create_network(config.network, **config.network_args)
    network.train()
    samples = []
    for index in range(2):
        image, label = make_phantom(
            config.modality, size=(28, 32, 26), spacing=config.spacing, seed=seed + index
        )
        volume = normalize_intensity(sitk.GetArrayFromImage(image), config.preprocessing)
        samples.append(
            (torch.from_numpy(volume), torch.from_numpy(sitk.GetArrayFromImage(label).astype(np.int64)))
        )
    two_d = config.window_mode == "slice2d"
    # 3D nets without normalisation die (all-background) at higher rates on these phantoms
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01 if two_d else 0.005)
    crop = (8, 16, 16) if config.window_mode == "slab" else (16, 16, 16)
    for step in range(steps):
        volume, label = samples[step % len(samples)]
        if two_d:  # a batch of 8 axial slices, cropped in-plane
            z = int(rng.integers(0, volume.shape[0] - 8))
            y = int(rng.integers(0, volume.shape[1] - 24))
            x = int(rng.integers(0, volume.shape[2] - 24))
            inputs = volume[z : z + 8, None, y : y + 24, x : x + 24]
            targets = label[z : z + 8, y : y + 24, x : x + 24]
        else:
            start = [int(rng.integers(0, n - c + 1)) for n, c in zip(volume.shape, crop, strict=True)]
            index = tuple(slice(s, s + c) for s, c in zip(start, crop, strict=True))
            inputs, targets = volume[index][None, None], label[index][None]
        logits = network(inputs)
        foreground = torch.softmax(logits, dim=1)[:, 1]
        target = (targets == 1).float()
        dice = 1 - (2 * (foreground * target).sum() + 1) / (foreground.sum() + target.sum() + 1)
        loss = torch.nn.functional.cross_entropy(logits, targets) + dice
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def make_tiny_bundle(
    folder: str | Path,
    task: str = "skullstrip",
    modality: str = "MR",
    window_mode: str = "patch3d",
    fit: bool = True,
    seed: int = 0,
) -> Path:
    """Write a tiny bundle folder for ``task`` (``skullstrip``/``liver``) and return its path.

    ``fit=False`` keeps random weights (fast; masks are noise); ``fit=True`` (default) fits the
    network for a few seconds on phantoms so it segments :func:`make_phantom` images well.
    """
    config = tiny_config(task, modality, window_mode)
    if fit:
        state = fit_tiny_network(config, seed=seed)
    else:
        torch.manual_seed(seed)
        state = create_network(config.network, **config.network_args).state_dict()
    return save_bundle(Path(folder), config, state)
