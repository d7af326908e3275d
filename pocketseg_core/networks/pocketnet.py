"""PocketNet (Celaya et al., section 2.1): U-Net, ResNet and DenseNet encoder-decoders, 2D or 3D,
with constant ("pocket") or doubling ("full") feature maps per level.

Follows the authors' Keras ``PocketNet(inputShape, numClasses, mode, net, pocket, initFilters,
depth)``: every level has one block; max pooling down; a transposed convolution (kernel = stride =
pool size, no activation, as in their code) up to the skip's width, channel concatenation with the
skip, one block; a pointwise convolution to the classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pocketseg_core.errors import NetworkConfigError
from pocketseg_core.networks.blocks import (
    POCKETNET_BLOCKS,
    as_tuple,
    check_input_size,
    check_spatial_dims,
    conv_class,
    conv_transpose_class,
    make_activation,
    make_norm,
    max_pool_class,
)


class PocketNet(nn.Module):
    """One class for all six PocketNet networks of the paper, in 2D and 3D.

    Args:
        spatial_dims: 2 (LiTS slices, paper Table 2) or 3 (NFBS 5-slice slabs, Table 1).
        in_channels: image channels (paper: 1).
        num_classes: output channels, background included (paper: 2).
        block: ``"unet"``, ``"resnet"`` or ``"densenet"`` (section 2.1, Fig. 2).
        pocket: True keeps ``init_filters`` at every level; False doubles them per level.
        init_filters: feature maps of the first level (paper: 16).
        depth: number of max poolings = transposed convolutions (paper: 4).
        pool_size: pooling factor per spatial axis, torch order (D, H, W). Default: 2 in-plane and
            1 through-plane in 3D (``(1, 2, 2)``, the authors' code for 5-slice slabs), 2 in 2D.
        norm: ``"none"`` (paper), ``"batch"`` or ``"instance"`` after every convolution.
        activation: after every convolution (paper: ``"relu"``).

    ``forward``: ``(B, in_channels, *S) -> (B, num_classes, *S)`` logits, ``S`` a multiple of
    :attr:`spatial_divisor`.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        num_classes: int = 2,
        block: str = "unet",
        pocket: bool = True,
        init_filters: int = 16,
        depth: int = 4,
        pool_size: int | Sequence[int] | None = None,
        norm: str = "none",
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        for name, value in (
            ("in_channels", in_channels),
            ("num_classes", num_classes),
            ("init_filters", init_filters),
        ):
            if not isinstance(value, int) or value < 1:
                raise NetworkConfigError(f"{name} must be a positive int; got {value!r}")
        if not isinstance(depth, int) or not 1 <= depth <= 8:
            raise NetworkConfigError(f"depth must be an int from 1 to 8 (paper: 4); got {depth!r}")
        if block not in POCKETNET_BLOCKS:
            raise NetworkConfigError(f"block must be one of {', '.join(POCKETNET_BLOCKS)}; got {block!r}")
        # Fail at construction, not at the first forward, for bad norm/activation names.
        make_norm(norm, spatial_dims, 1)
        make_activation(activation)
        if pool_size is None:
            pool_size = (1, 2, 2) if spatial_dims == 3 else 2
        pool = as_tuple(pool_size, spatial_dims, "pool_size")

        self.in_channels = in_channels
        self.num_classes = num_classes
        self.block_type = block
        self.pocket = bool(pocket)
        self.depth = depth
        self.pool_size = pool
        #: each input spatial size must be a multiple of this (torch axis order)
        self.spatial_divisor: tuple[int, ...] = tuple(p**depth for p in pool)
        self.widths: list[int] = [
            init_filters if pocket else init_filters * 2**level for level in range(depth + 1)
        ]

        block_class = POCKETNET_BLOCKS[block]
        self.encoder = nn.ModuleList()
        channels = in_channels
        for level in range(depth):
            self.encoder.append(block_class(spatial_dims, channels, self.widths[level], norm, activation))
            channels = self.widths[level]
        self.pool = max_pool_class(spatial_dims)(pool, pool)
        self.bottleneck = block_class(spatial_dims, channels, self.widths[depth], norm, activation)
        channels = self.widths[depth]

        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level in reversed(range(depth)):
            width = self.widths[level]
            self.upsample.append(conv_transpose_class(spatial_dims)(channels, width, pool, stride=pool))
            self.decoder.append(block_class(spatial_dims, 2 * width, width, norm, activation))
            channels = width
        self.head = conv_class(spatial_dims)(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, *S) -> (B, num_classes, *S)`` logits."""
        check_input_size(x, self.spatial_dims, self.in_channels, self.spatial_divisor)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for upsample, block, skip in zip(self.upsample, self.decoder, reversed(skips), strict=True):
            x = block(torch.cat([upsample(x), skip], dim=1))
        return self.head(x)
