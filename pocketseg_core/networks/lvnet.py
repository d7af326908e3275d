"""LV-Net (Lei et al., "Lightweight V-Net for liver segmentation"): a V-Net whose convolutions
are inverted residual bottleneck (IRB) blocks, with pointwise+average-pool down-sampling,
pointwise+trilinear up-sampling and 3D deep supervision after each decoder stage.

The paper's Fig. 1 (widths, blocks per stage) is not in its text. The defaults are V-Net's
layout at half its width (8, 16, 32, 64, 128 instead of 16 ... 256), V-Net's encoder stage
depths (1, 2, 3, 3, 3) and a lighter decoder (2, 2, 1, 1): the configuration nearest V-Net that
reproduces Table 3 (1,659,282 parameters, 58.07 GFLOPs counted as multiply-accumulates for a
16x256x256 input). docs/networks.md gives the derivation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pocketseg_core.errors import NetworkConfigError
from pocketseg_core.networks.blocks import (
    ConvNormAct,
    DeepSupervisionHead,
    InvertedResidualBlock,
    PointwiseDown,
    PointwiseUp,
    as_tuple,
    check_input_size,
    check_spatial_dims,
    conv_class,
    make_activation,
    make_norm,
)


class LVNet(nn.Module):
    """Lightweight V-Net.

    Args:
        spatial_dims: 3 (paper) or 2.
        in_channels: image channels (paper: 1, CT).
        num_classes: output channels, background included (paper: 2).
        widths: channels per resolution level, finest first; each level doubles (V-Net pattern,
            so a down-sampling pointwise conv C -> 2C has the paper's 2C^2 weights).
        encoder_blocks: IRB blocks per encoder level (the last entry is the bottom level).
        decoder_blocks: IRB blocks per decoder stage, coarsest first (one per up-sampling).
        expansion: IRB expansion rate epsilon (paper: 4).
        kernel_size: IRB depthwise kernel (paper: 5).
        pool_size: average-pooling factor per spatial axis (paper: 2 in all three axes).
        norm: after every convolution (paper: ``"batch"``).
        activation: paper: ``"elu"``.
        deep_supervision: return the auxiliary heads in training mode (paper: yes).

    ``forward``: ``(B, in_channels, *S) -> (B, num_classes, *S)`` logits; in training mode with
    deep supervision ``(logits, [aux_1, ..., aux_n])``, each aux ``(B, num_classes, *S)``,
    ordered from the coarsest decoder stage to the finest (the paper's L_1 ... L_4, weighted
    0.2, 0.4, 0.6, 0.8).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        num_classes: int = 2,
        widths: Sequence[int] = (8, 16, 32, 64, 128),
        encoder_blocks: Sequence[int] = (1, 2, 3, 3, 3),
        decoder_blocks: Sequence[int] = (2, 2, 1, 1),
        expansion: int = 4,
        kernel_size: int = 5,
        pool_size: int | Sequence[int] = 2,
        norm: str = "batch",
        activation: str = "elu",
        deep_supervision: bool = True,
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        widths = tuple(widths)
        encoder_blocks = tuple(encoder_blocks)
        decoder_blocks = tuple(decoder_blocks)
        for name, value in (
            ("in_channels", in_channels),
            ("num_classes", num_classes),
            ("expansion", expansion),
            ("kernel_size", kernel_size),
        ):
            if not isinstance(value, int) or value < 1:
                raise NetworkConfigError(f"{name} must be a positive int; got {value!r}")
        if kernel_size % 2 == 0:
            raise NetworkConfigError(f"kernel_size must be odd (paper: 5); got {kernel_size}")
        if len(widths) < 2 or any(not isinstance(w, int) or w < 2 or w % 2 for w in widths):
            raise NetworkConfigError(
                f"widths must be at least two even positive ints, finest first; got {widths!r}"
            )
        if len(encoder_blocks) != len(widths) or any(not isinstance(n, int) or n < 0 for n in encoder_blocks):
            raise NetworkConfigError(
                f"encoder_blocks must give one non-negative count per level ({len(widths)}); got {encoder_blocks!r}"
            )
        if len(decoder_blocks) != len(widths) - 1 or any(
            not isinstance(n, int) or n < 0 for n in decoder_blocks
        ):
            raise NetworkConfigError(
                f"decoder_blocks must give one non-negative count per up-sampling ({len(widths) - 1}); "
                f"got {decoder_blocks!r}"
            )
        make_norm(norm, spatial_dims, 1)
        make_activation(activation)
        pool = as_tuple(pool_size, spatial_dims, "pool_size")

        self.in_channels = in_channels
        self.num_classes = num_classes
        self.widths = widths
        self.depth = len(widths) - 1
        self.deep_supervision = bool(deep_supervision)
        #: each input spatial size must be a multiple of this (torch axis order)
        self.spatial_divisor: tuple[int, ...] = tuple(p**self.depth for p in pool)

        def irb_stage(channels: int, count: int) -> nn.Sequential:
            return nn.Sequential(
                *(
                    InvertedResidualBlock(spatial_dims, channels, expansion, kernel_size, norm, activation)
                    for _ in range(count)
                )
            )

        # Input stage lifts the image to widths[0] with a pointwise conv: every spatial filter in
        # LV-Net is an IRB depthwise conv (section 2.1), so the stem adds none of its own.
        self.stem = ConvNormAct(spatial_dims, in_channels, widths[0], 1, norm, activation, bias=False)
        self.encoder = nn.ModuleList([irb_stage(widths[0], encoder_blocks[0])])
        self.down = nn.ModuleList()
        for level in range(1, len(widths)):
            self.down.append(
                PointwiseDown(spatial_dims, widths[level - 1], widths[level], pool, norm, activation)
            )
            self.encoder.append(irb_stage(widths[level], encoder_blocks[level]))

        # Decoder as V-Net: up-sample C -> C/2 (the paper's C^2/2 weights), concatenate the skip
        # (width C/2 as well), so the stage works at C channels of the finer level.
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        self.aux_heads = nn.ModuleList()
        channels = widths[-1]
        for stage, level in enumerate(reversed(range(self.depth))):
            up_channels = channels // 2
            self.up.append(PointwiseUp(spatial_dims, channels, up_channels, norm, activation))
            channels = up_channels + widths[level]
            self.decoder.append(irb_stage(channels, decoder_blocks[stage]))
            self.aux_heads.append(DeepSupervisionHead(spatial_dims, channels, num_classes))
        self.head = conv_class(spatial_dims)(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """``(B, in_channels, *S)`` -> logits ``(B, num_classes, *S)``; in training mode with
        deep supervision ``(logits, [aux_1 ... aux_depth])``, every aux ``(B, num_classes, *S)``."""
        check_input_size(x, self.spatial_dims, self.in_channels, self.spatial_divisor)
        size = tuple(x.shape[2:])
        x = self.encoder[0](self.stem(x))
        skips = [x]
        for down, stage in zip(self.down, self.encoder[1:], strict=True):
            x = stage(down(x))
            skips.append(x)
        skips.pop()  # the bottom level is the decoder's input, not a skip
        with_aux = self.training and self.deep_supervision
        aux: list[torch.Tensor] = []
        for up, stage, head, skip in zip(self.up, self.decoder, self.aux_heads, reversed(skips), strict=True):
            x = stage(torch.cat([up(x, skip.shape[2:]), skip], dim=1))
            if with_aux:
                aux.append(head(x, size))
        logits = self.head(x)
        return (logits, aux) if with_aux else logits
