"""Size and cost of the networks: trainable parameters and FLOPs for the paper's input, next to
the published values.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts 2 FLOPs per
multiply-accumulate (MAC) of convolutions and matrix products (norms, activations, pooling and
interpolation are not counted). The counting runs on the ``meta`` device: shapes only, no memory
and no arithmetic, so even the full 3D networks take well under a second.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pocketseg_core.networks.registry import create_network, get_spec, network_names


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (``requires_grad``), the papers' "# parameters"."""
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def count_flops(name: str, spatial_size: tuple[int, ...] | None = None, **overrides: Any) -> int:
    """FLOPs (2 per MAC) of one eval-mode forward pass of network ``name`` on a batch of one
    ``(1, in_channels, *spatial_size)`` input (default: the paper's input size)."""
    spec = get_spec(name)
    size = tuple(spatial_size or spec.paper_input)
    with torch.device("meta"):
        model = create_network(name, **overrides).eval()
        x = torch.empty(1, model.in_channels, *size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class NetworkSummary:
    """One row of ``pocketseg models``."""

    name: str
    description: str
    paper_input: list[int]
    params: int
    paper_params: int | None
    params_ratio: float | None  # measured / published
    gflops: float  # torch convention: 2 FLOPs per multiply-accumulate
    gmacs: float
    paper_gflops: float | None
    paper_flop_convention: str
    gflops_ratio: float | None  # measured / published, in the paper's convention
    pocket_to_full: float | None  # pocket networks: params / params of the full counterpart
    paper_source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def network_summary(name: str) -> NetworkSummary:
    """Parameters and FLOPs of ``name`` with its paper defaults, against the published values."""
    spec = get_spec(name)
    with torch.device("meta"):  # parameters are counted without allocating them
        params = count_parameters(create_network(name))
    flops = count_flops(name)
    gflops = flops / 1e9
    gmacs = gflops / 2
    gflops_ratio = None
    if spec.paper_gflops is not None:
        comparable = gmacs if spec.paper_flop_convention == "mac" else gflops
        gflops_ratio = comparable / spec.paper_gflops
    pocket_to_full = None
    if name.startswith("pocket_"):
        with torch.device("meta"):
            pocket_to_full = params / count_parameters(create_network(name.removeprefix("pocket_")))
    return NetworkSummary(
        name=name,
        description=spec.description,
        paper_input=list(spec.paper_input),
        params=params,
        paper_params=spec.paper_params,
        params_ratio=params / spec.paper_params if spec.paper_params else None,
        gflops=round(gflops, 3),
        gmacs=round(gmacs, 3),
        paper_gflops=spec.paper_gflops,
        paper_flop_convention=spec.paper_flop_convention,
        gflops_ratio=gflops_ratio,
        pocket_to_full=pocket_to_full,
        paper_source=spec.paper_source,
    )


def all_summaries() -> list[NetworkSummary]:
    """:func:`network_summary` of every registry network, in display order."""
    return [network_summary(name) for name in network_names()]
