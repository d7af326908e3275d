"""Building blocks shared by the networks: layer factories by ``spatial_dims`` and the blocks
of both papers (PocketNet U-Net/ResNet/DenseNet blocks; LV-Net IRB, down, up and
deep-supervision modules).

Every block takes and returns ``(B, C, *spatial)`` tensors with ``len(spatial) == spatial_dims``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional

from pocketseg_core.errors import NetworkConfigError

#: normalisations the networks accept ("none" is the PocketNet paper's choice)
NORMS = ("none", "batch", "instance")
#: activations the networks accept
ACTIVATIONS = ("relu", "elu", "leaky_relu", "gelu")


def check_spatial_dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise NetworkConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return spatial_dims


def conv_class(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return {2: nn.Conv2d, 3: nn.Conv3d}[check_spatial_dims(spatial_dims)]


def conv_transpose_class(spatial_dims: int) -> type[nn.Module]:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    return {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[check_spatial_dims(spatial_dims)]


def max_pool_class(spatial_dims: int) -> type[nn.Module]:
    return {2: nn.MaxPool2d, 3: nn.MaxPool3d}[check_spatial_dims(spatial_dims)]


def avg_pool_class(spatial_dims: int) -> type[nn.Module]:
    return {2: nn.AvgPool2d, 3: nn.AvgPool3d}[check_spatial_dims(spatial_dims)]


def _channels_last_instance_norm(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """Instance norm of a channels-last ``(B, C, *spatial)`` tensor, returned channels-last.

    Viewed as ``(B, N, C)`` (no copy), the mean and the (biased) variance of each channel are
    two plain reductions, then one ``addcmul`` applies ``(x - mean) / sqrt(var + eps) * weight +
    bias``. torch's own instance norm copies a channels-last input into the plain layout and
    returns it plain, so every following convolution converted it back (2x the CPU time of the
    norm, ~1/3 of the skull strip's network pass). Same maths (two-pass variance), rounding
    differences only (~1e-6 relative).
    """
    batch, channels = x.shape[:2]
    spatial = x.shape[2:]
    flat = x.movedim(1, -1).reshape(batch, -1, channels)  # a view of channels-last storage
    mean = flat.mean(dim=1, keepdim=True)
    var = (flat - mean).square_().mean(dim=1, keepdim=True)
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return torch.addcmul(shift, flat, scale).reshape(batch, *spatial, channels).movedim(-1, 1)


class _FastInstanceNorm:
    """Instance norm that keeps a channels-last input channels-last in CPU inference (see
    :func:`_channels_last_instance_norm`); anything else (training, CUDA, the plain layout,
    reduced precision) runs torch's own. Same parameters and state dict as torch's class."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            not self.training
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and not self.track_running_stats
            and x.dim() == self._get_no_batch_dim() + 1  # batched
            and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last_3d if x.dim() == 5 else torch.channels_last)
        ):
            return _channels_last_instance_norm(x, self.weight, self.bias, self.eps)
        return super().forward(x)


class InstanceNorm2d(_FastInstanceNorm, nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` with the channels-last CPU inference path."""


class InstanceNorm3d(_FastInstanceNorm, nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` with the channels-last CPU inference path."""


def make_norm(norm: str, spatial_dims: int, channels: int) -> nn.Module:
    """A normalisation layer by name: ``none`` (identity), ``batch`` or ``instance`` (affine)."""
    check_spatial_dims(spatial_dims)
    if norm == "none":
        return nn.Identity()
    if norm == "batch":
        return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims](channels)
    if norm == "instance":
        return {2: InstanceNorm2d, 3: InstanceNorm3d}[spatial_dims](channels, affine=True)
    raise NetworkConfigError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")


def make_activation(activation: str) -> nn.Module:
    """An activation layer by name (one of :data:`ACTIVATIONS`)."""
    if activation == "relu":
        return nn.ReLU(inplace=True)
    if activation == "elu":
        return nn.ELU(inplace=True)
    if activation == "leaky_relu":
        return nn.LeakyReLU(0.01, inplace=True)
    if activation == "gelu":
        return nn.GELU()
    raise NetworkConfigError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {activation!r}")


def as_tuple(value: int | Sequence[int], spatial_dims: int, name: str) -> tuple[int, ...]:
    """An int broadcast to ``spatial_dims`` entries, or a sequence of exactly that length."""
    if isinstance(value, int):
        values = (value,) * spatial_dims
    else:
        values = tuple(value)
    if len(values) != spatial_dims or not all(isinstance(v, int) and v >= 1 for v in values):
        raise NetworkConfigError(
            f"{name} must be a positive int or {spatial_dims} positive ints (one per spatial axis, "
            f"torch order D, H, W); got {value!r}"
        )
    return values


def check_input_size(x: torch.Tensor, spatial_dims: int, in_channels: int, divisor: Sequence[int]) -> None:
    """Raise :class:`NetworkConfigError` unless ``x`` is ``(B, in_channels, *S)`` with every
    ``S[i]`` a positive multiple of ``divisor[i]``."""
    if x.dim() != spatial_dims + 2 or x.shape[1] != in_channels:
        raise NetworkConfigError(
            f"expected input of shape (batch, {in_channels}, {', '.join('D H W'.split()[-spatial_dims:])}) "
            f"for this {spatial_dims}D network with in_channels={in_channels}; got {tuple(x.shape)}"
        )
    size = tuple(int(s) for s in x.shape[2:])
    if any(s % d != 0 for s, d in zip(size, divisor, strict=True)):
        too_small = any(s < d for s, d in zip(size, divisor, strict=True))
        hint = (
            "the input is smaller than one cell of the coarsest level: lower `depth` or enlarge the input"
            if too_small
            else "pad or crop the input to a multiple of it, or change `depth`/`pool_size`"
        )
        raise NetworkConfigError(
            f"input spatial size {size} is not a multiple of the network's spatial_divisor "
            f"{tuple(divisor)} (pool_size ** depth per axis): {hint}"
        )


class ConvNormAct(nn.Sequential):
    """Convolution ('same' padding) -> normalisation -> activation.

    ``(B, in_channels, *S) -> (B, out_channels, *S)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        norm: str = "none",
        activation: str | None = "relu",
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        kernel = as_tuple(kernel_size, spatial_dims, "kernel_size")
        if any(k % 2 == 0 for k in kernel):
            raise NetworkConfigError(f"kernel_size must be odd for 'same' padding; got {kernel_size!r}")
        layers: list[nn.Module] = [
            conv_class(spatial_dims)(
                in_channels,
                out_channels,
                kernel,
                padding=tuple(k // 2 for k in kernel),
                groups=groups,
                bias=bias,
            ),
            make_norm(norm, spatial_dims, out_channels),
        ]
        if activation is not None:
            layers.append(make_activation(activation))
        super().__init__(*layers)


# --- PocketNet blocks (Celaya et al., section 2.1, Fig. 2) -------------------------------------


class UNetBlock(nn.Module):
    """Two 3x3(x3) convolutions, each followed by the activation.

    ``(B, in_channels, *S) -> (B, out_channels, *S)``.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, norm: str, activation: str
    ) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(spatial_dims, in_channels, out_channels, 3, norm, activation)
        self.conv2 = ConvNormAct(spatial_dims, out_channels, out_channels, 3, norm, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class ResNetBlock(nn.Module):
    """Two convolutions followed by an addition: ``y = conv1(x); out = y + conv2(y)``.

    The paper (section 2.1, Table 1/2) gives ResNet and U-Net identical parameter counts, so the
    addition carries no projection: the identity path starts after the first convolution, which
    already has the block's width. ``(B, in_channels, *S) -> (B, out_channels, *S)``.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, norm: str, activation: str
    ) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(spatial_dims, in_channels, out_channels, 3, norm, activation)
        self.conv2 = ConvNormAct(spatial_dims, out_channels, out_channels, 3, norm, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        return y + self.conv2(y)


class DenseNetBlock(nn.Module):
    """Two densely connected convolutions, then a pointwise convolution back to the block width.

    ``x1 = [x, conv1(x)]; x2 = [x1, conv2(x1)]; out = pointwise(x2)``
    ``(B, in_channels, *S) -> (B, out_channels, *S)``.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, norm: str, activation: str
    ) -> None:
        super().__init__()
        growth = out_channels  # the authors' code grows by the block width per convolution
        self.conv1 = ConvNormAct(spatial_dims, in_channels, growth, 3, norm, activation)
        self.conv2 = ConvNormAct(spatial_dims, in_channels + growth, growth, 3, norm, activation)
        self.pointwise = ConvNormAct(
            spatial_dims, in_channels + 2 * growth, out_channels, 1, norm, activation
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, self.conv1(x)], dim=1)
        x = torch.cat([x, self.conv2(x)], dim=1)
        return self.pointwise(x)


POCKETNET_BLOCKS: dict[str, type[nn.Module]] = {
    "unet": UNetBlock,
    "resnet": ResNetBlock,
    "densenet": DenseNetBlock,
}


# --- LV-Net modules (Lei et al., section 2.1-2.2, Fig. 2) --------------------------------------


class InvertedResidualBlock(nn.Module):
    """IRB: 1x1x1 expansion by ``expansion`` -> kxkxk depthwise -> 1x1x1 projection, + input.

    Batch norm after every convolution and the activation after the first two (the projection is
    linear, as in MobileNetV2 [15], so the residual sum is not clipped). Convolutions carry no bias
    because a norm follows each one. ``(B, C, *S) -> (B, C, *S)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        expansion: int = 4,
        kernel_size: int = 5,
        norm: str = "batch",
        activation: str = "elu",
    ) -> None:
        super().__init__()
        hidden = channels * expansion
        self.expand = ConvNormAct(spatial_dims, channels, hidden, 1, norm, activation, bias=False)
        self.depthwise = ConvNormAct(
            spatial_dims, hidden, hidden, kernel_size, norm, activation, groups=hidden, bias=False
        )
        self.project = ConvNormAct(spatial_dims, hidden, channels, 1, norm, None, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.depthwise(self.expand(x)))


class PointwiseDown(nn.Module):
    """LV-Net down-sampling: pointwise conv ``C -> out_channels`` (2C^2 weights for 2C), then
    average pooling by ``pool_size``. ``(B, C, *S) -> (B, out_channels, *S / pool_size)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        pool_size: Sequence[int],
        norm: str = "batch",
        activation: str = "elu",
    ) -> None:
        super().__init__()
        self.pointwise = ConvNormAct(spatial_dims, in_channels, out_channels, 1, norm, activation, bias=False)
        self.pool = avg_pool_class(spatial_dims)(tuple(pool_size), tuple(pool_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.pointwise(x))


class PointwiseUp(nn.Module):
    """LV-Net up-sampling: pointwise conv ``C -> out_channels`` (C^2/2 weights for C/2) at the
    coarse resolution, then (tri)linear interpolation to ``size`` (the paper's order, section 2.1;
    it is also 8x cheaper than convolving after the interpolation).
    ``(B, C, *s) -> (B, out_channels, *size)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        norm: str = "batch",
        activation: str = "elu",
    ) -> None:
        super().__init__()
        self.pointwise = ConvNormAct(spatial_dims, in_channels, out_channels, 1, norm, activation, bias=False)
        self.mode = "trilinear" if spatial_dims == 3 else "bilinear"

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return functional.interpolate(
            self.pointwise(x), size=tuple(size), mode=self.mode, align_corners=False
        )


class DeepSupervisionHead(nn.Module):
    """LV-Net 3D deep supervision branch: pointwise conv to classes, then (tri)linear
    interpolation to the main output's size. Returns logits: the softmax of Fig. 2c is applied
    inside the loss. ``(B, C, *s) -> (B, num_classes, *size)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.pointwise = conv_class(spatial_dims)(in_channels, num_classes, 1)
        self.mode = "trilinear" if spatial_dims == 3 else "bilinear"

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        logits = self.pointwise(x)
        if tuple(logits.shape[2:]) == tuple(size):
            return logits
        return functional.interpolate(logits, size=tuple(size), mode=self.mode, align_corners=False)
