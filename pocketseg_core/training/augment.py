"""On-the-fly augmentation of training batches, on CPU or GPU tensors, chosen by name.

Every transform is called as ``image, label = transform(image, label, generator)`` with

* ``image``: ``(B, C, *spatial)`` float (already normalised: z-score for MR, windowed for CT),
* ``label``: ``(B, *spatial)`` long,
* ``generator``: a ``torch.Generator`` on the CPU, so a seeded run draws the same parameters.

Spatial size never changes. ``spatial`` is ``(D, H, W)`` (3D) or ``(H, W)`` (2D slices); the
last axis W is the image x axis, which is left-right for the usual axial acquisitions (RAS/LPS
direction close to identity), so the sagittal reflection flips W.

Configs name transforms as ``{"name": "flip", "p": 0.5, ...}`` (see ``AUGMENTATIONS`` and
``docs/training.md``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from pocketseg_core.errors import PocketSegError


def _uniform(generator: torch.Generator, low: float, high: float, count: int) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, generator=generator)


def _chosen(generator: torch.Generator, p: float, count: int) -> torch.Tensor:
    """Boolean ``(count,)``: which samples of the batch get the transform."""
    return torch.rand(count, generator=generator) < p


def _per_sample(values: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """``(B,)`` -> ``(B, 1, 1, ...)`` broadcastable to ``image``, on its device and dtype."""
    return values.to(image.device, image.dtype).view(-1, *([1] * (image.dim() - 1)))


class RandomFlip:
    """Random reflection across the sagittal plane (PocketNet: "randomly reflecting ... sagittal")."""

    def __init__(self, p: float = 0.5, axis: int = -1) -> None:
        self.p, self.axis = p, axis

    def __call__(self, image, label, generator):
        chosen = _chosen(generator, self.p, image.shape[0]).to(image.device)
        if not chosen.any():
            return image, label
        flipped_image = torch.flip(image, dims=[self.axis])
        flipped_label = torch.flip(label, dims=[self.axis])
        image = torch.where(_per_sample(chosen, image).bool(), flipped_image, image)
        label = torch.where(chosen.view(-1, *([1] * (label.dim() - 1))), flipped_label, label)
        return image, label


class RandomScaleShift:
    """Intensity ``x * a + b`` with ``a`` in ``scale`` and ``b`` in ``shift`` (in normalised units)."""

    def __init__(
        self, p: float = 0.5, scale: Sequence[float] = (0.9, 1.1), shift: Sequence[float] = (-0.1, 0.1)
    ):
        self.p, self.scale, self.shift = p, scale, shift

    def __call__(self, image, label, generator):
        count = image.shape[0]
        chosen = _chosen(generator, self.p, count)
        a = torch.where(chosen, _uniform(generator, *self.scale, count), torch.ones(count))
        b = torch.where(chosen, _uniform(generator, *self.shift, count), torch.zeros(count))
        return image * _per_sample(a, image) + _per_sample(b, image), label


class RandomContrast:
    """Contrast around each sample's mean: ``(x - m) * f + m``."""

    def __init__(self, p: float = 0.5, factor: Sequence[float] = (0.75, 1.25)):
        self.p, self.factor = p, factor

    def __call__(self, image, label, generator):
        count = image.shape[0]
        chosen = _chosen(generator, self.p, count)
        f = torch.where(chosen, _uniform(generator, *self.factor, count), torch.ones(count))
        mean = image.mean(dim=tuple(range(1, image.dim())), keepdim=True)
        return (image - mean) * _per_sample(f, image) + mean, label


class RandomGamma:
    """Gamma on each sample rescaled to [0, 1], then mapped back to its original range."""

    def __init__(self, p: float = 0.5, gamma: Sequence[float] = (0.7, 1.5)):
        self.p, self.gamma = p, gamma

    def __call__(self, image, label, generator):
        count = image.shape[0]
        chosen = _chosen(generator, self.p, count)
        # log-uniform so that gamma and 1/gamma are equally likely
        log_gamma = _uniform(generator, math.log(self.gamma[0]), math.log(self.gamma[1]), count)
        g = torch.where(chosen, log_gamma.exp(), torch.ones(count))
        axes = tuple(range(1, image.dim()))
        low = image.amin(dim=axes, keepdim=True)
        span = (image.amax(dim=axes, keepdim=True) - low).clamp_min(1e-6)
        unit = ((image - low) / span).clamp(0, 1)
        return unit ** _per_sample(g, image) * span + low, label


class RandomNoise:
    """Additive Gaussian noise with standard deviation drawn in ``std``."""

    def __init__(self, p: float = 0.5, std: Sequence[float] = (0.0, 0.1)):
        self.p, self.std = p, std

    def __call__(self, image, label, generator):
        count = image.shape[0]
        chosen = _chosen(generator, self.p, count)
        sigma = torch.where(chosen, _uniform(generator, *self.std, count), torch.zeros(count))
        noise = torch.randn(image.shape, generator=generator).to(image.device, image.dtype)
        return image + noise * _per_sample(sigma, image), label


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(1, C, *spatial)`` with ``sigma`` voxels (skips size-1 axes)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    spatial_dims = image.dim() - 2
    channels = image.shape[1]
    conv = F.conv3d if spatial_dims == 3 else F.conv2d
    for axis in range(spatial_dims):
        if image.shape[2 + axis] < 2 * radius + 1:
            continue  # e.g. the 5-slice axis of a slab: too thin to blur
        shape = [1] * spatial_dims
        shape[axis] = kernel.numel()
        weight = kernel.view(1, 1, *shape).repeat(channels, 1, *([1] * spatial_dims))
        padding = [0] * spatial_dims
        padding[axis] = radius
        image = conv(image, weight, padding=padding, groups=channels)
    return image


class RandomBlur:
    """Gaussian blur with sigma (voxels) drawn in ``sigma``."""

    def __init__(self, p: float = 0.3, sigma: Sequence[float] = (0.5, 1.0)):
        self.p, self.sigma = p, sigma

    def __call__(self, image, label, generator):
        count = image.shape[0]
        chosen = _chosen(generator, self.p, count)
        sigmas = _uniform(generator, *self.sigma, count)
        out = image.clone()
        for index in torch.nonzero(chosen).flatten().tolist():
            out[index : index + 1] = _gaussian_blur(image[index : index + 1], float(sigmas[index]))
        return out, label


def _smooth_random_field(
    generator: torch.Generator, count: int, spatial: Sequence[int], control_points: int, channels: int
) -> torch.Tensor:
    """Random field ``(count, channels, *spatial)`` in [-1, 1], smooth: a coarse grid interpolated."""
    coarse_shape = [min(control_points, max(size, 1)) for size in spatial]
    coarse = torch.rand((count, channels, *coarse_shape), generator=generator) * 2 - 1
    mode = "trilinear" if len(spatial) == 3 else "bilinear"
    return F.interpolate(coarse, size=tuple(spatial), mode=mode, align_corners=True)


class RandomBiasField:
    """Multiplicative smooth bias field ``exp(strength * field)`` applied above each sample's minimum."""

    def __init__(self, p: float = 0.3, strength: float = 0.3, control_points: int = 4):
        self.p, self.strength, self.control_points = p, strength, control_points

    def __call__(self, image, label, generator):
        count = image.shape[0]
        chosen = _chosen(generator, self.p, count)
        field = _smooth_random_field(generator, count, image.shape[2:], self.control_points, 1)
        field = torch.exp(self.strength * field) * chosen.view(-1, *([1] * (field.dim() - 1)))
        field = field + (~chosen).float().view(-1, *([1] * (field.dim() - 1)))
        field = field.to(image.device, image.dtype)
        low = image.amin(dim=tuple(range(1, image.dim())), keepdim=True)
        return (image - low) * field + low, label


class RandomResolution:
    """Simulated lower resolution: downsample by a factor in ``factor`` then upsample back (image only)."""

    def __init__(self, p: float = 0.25, factor: Sequence[float] = (1.0, 2.5)):
        self.p, self.factor = p, factor

    def __call__(self, image, label, generator):
        count = image.shape[0]
        chosen = _chosen(generator, self.p, count)
        factors = _uniform(generator, *self.factor, count)
        spatial = image.shape[2:]
        mode = "trilinear" if len(spatial) == 3 else "bilinear"
        out = image.clone()
        for index in torch.nonzero(chosen).flatten().tolist():
            # the thin axis of a slab keeps its resolution
            small = [max(1, round(size / float(factors[index]))) if size > 8 else size for size in spatial]
            low = F.interpolate(image[index : index + 1], size=small, mode=mode, align_corners=False)
            out[index : index + 1] = F.interpolate(low, size=tuple(spatial), mode=mode, align_corners=False)
        return out, label


def _rotation_matrix(angles: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """Rotation matrix in (x, y, z) order for grid_sample; angles ``(3,)`` rad about z, y, x."""
    if spatial_dims == 2:
        c, s = math.cos(float(angles[0])), math.sin(float(angles[0]))
        return torch.tensor([[c, -s], [s, c]])
    az, ay, ax = (float(a) for a in angles)
    rz = torch.tensor([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    ry = torch.tensor([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rx = torch.tensor([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    return rz @ ry @ rx


class RandomAffineElastic:
    """Rotation, isotropic scaling and optional elastic displacement, resampled with ``grid_sample``.

    The image is resampled linearly, the label with nearest neighbour; outside the patch the
    image takes its minimum value (background) and the label 0. Rotations are about the in-plane
    axis (z) and, when ``in_plane_only`` is False and the patch is thick enough, about x and y.
    Rotation is done in voxel units (not in grid_sample's normalised units) so a non-cubic patch
    is not sheared.
    """

    def __init__(
        self,
        p: float = 0.5,
        rotation_degrees: float = 15.0,
        scale: Sequence[float] = (0.85, 1.15),
        elastic_magnitude: float = 0.0,
        elastic_control_points: int = 5,
        in_plane_only: bool = False,
    ):
        self.p, self.rotation_degrees, self.scale = p, rotation_degrees, scale
        self.elastic_magnitude, self.elastic_control_points = elastic_magnitude, elastic_control_points
        self.in_plane_only = in_plane_only

    def __call__(self, image, label, generator):
        count = image.shape[0]
        spatial = list(image.shape[2:])
        spatial_dims = len(spatial)
        chosen = _chosen(generator, self.p, count)
        if not chosen.any():
            return image, label
        half_sizes_xyz = torch.tensor([max(size - 1, 1) / 2.0 for size in reversed(spatial)])
        thetas = []
        limit = math.radians(self.rotation_degrees)
        for index in range(count):
            angles = _uniform(generator, -limit, limit, 3)
            factor = float(_uniform(generator, self.scale[0], self.scale[1], 1))
            if self.in_plane_only or spatial_dims == 2 or min(spatial) < 16:
                angles[1:] = 0
            if not chosen[index]:
                angles[:] = 0
                factor = 1.0
            rotation = _rotation_matrix(angles, spatial_dims) / factor
            # normalised -> voxel units, rotate/scale, back to normalised
            matrix = torch.diag(1 / half_sizes_xyz) @ rotation @ torch.diag(half_sizes_xyz)
            thetas.append(torch.cat([matrix, torch.zeros(spatial_dims, 1)], dim=1))
        theta = torch.stack(thetas).to(image.device, image.dtype)
        grid = F.affine_grid(theta, [count, 1, *spatial], align_corners=True)
        if self.elastic_magnitude > 0:
            field = _smooth_random_field(
                generator, count, spatial, self.elastic_control_points, spatial_dims
            )  # (B, dims, *spatial), displacement in voxels once scaled
            field = field * self.elastic_magnitude / half_sizes_xyz.view(1, -1, *([1] * spatial_dims))
            field = field * chosen.view(-1, *([1] * (field.dim() - 1)))
            grid = grid + field.movedim(1, -1).to(grid.device, grid.dtype)
        low = image.amin(dim=tuple(range(1, image.dim())), keepdim=True)
        warped = (
            F.grid_sample(image - low, grid, mode="bilinear", padding_mode="zeros", align_corners=True) + low
        )
        warped_label = (
            F.grid_sample(
                label.unsqueeze(1).to(image.dtype),
                grid,
                mode="nearest",
                padding_mode="zeros",
                align_corners=True,
            )[:, 0]
            .round()
            .long()
        )
        return warped, warped_label


#: augmentation name -> class; the config's other keys are its keyword parameters
AUGMENTATIONS: dict[str, Callable[..., Callable]] = {
    "flip": RandomFlip,
    "scale_shift": RandomScaleShift,
    "contrast": RandomContrast,
    "gamma": RandomGamma,
    "noise": RandomNoise,
    "blur": RandomBlur,
    "bias_field": RandomBiasField,
    "resolution": RandomResolution,
    "affine": RandomAffineElastic,
}


class Compose:
    """Applies a list of transforms in order."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator):
        for transform in self.transforms:
            image, label = transform(image, label, generator)
        return image, label


def build_augmentation(specs: Sequence[dict] | None) -> Compose:
    """``[{"name": "flip", "p": 0.5}, ...]`` -> a :class:`Compose`. Unknown names raise a clear error."""
    transforms = []
    for spec in specs or []:
        params = dict(spec)
        name = params.pop("name", None)
        if name not in AUGMENTATIONS:
            raise PocketSegError(
                f"unknown augmentation {name!r}; choose from {', '.join(sorted(AUGMENTATIONS))}"
            )
        try:
            transforms.append(AUGMENTATIONS[name](**params))
        except TypeError as error:
            raise PocketSegError(f"augmentation {name!r} does not accept {params}: {error}") from error
    return Compose(transforms)
