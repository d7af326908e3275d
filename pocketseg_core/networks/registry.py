"""Network registry: a name -> constructor with the paper's defaults, plus the paper's reference
values (input size, parameter count, FLOPs) for the size table of ``pocketseg models``.

A preset is data: ``create_network("pocket_unet3d", norm="batch")`` overrides a default by
keyword; an unknown name or argument raises :class:`NetworkConfigError`.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from pocketseg_core.errors import NetworkConfigError
from pocketseg_core.networks.lvnet import LVNet
from pocketseg_core.networks.pocketnet import PocketNet


@dataclass(frozen=True)
class NetworkSpec:
    """One registry entry.

    ``paper_input`` is the spatial size (torch order D, H, W) the paper ran the network on;
    ``paper_params`` / ``paper_gflops`` the published values (None where the paper gives none),
    ``paper_source`` where they are printed.
    """

    name: str
    constructor: Callable[..., nn.Module]
    defaults: dict[str, Any]
    description: str
    paper_input: tuple[int, ...]
    paper_params: int | None
    paper_source: str
    paper_gflops: float | None = None
    #: how the paper counts FLOPs: "mac" (one per multiply-accumulate) or "2mac"
    paper_flop_convention: str = "mac"
    aliases: tuple[str, ...] = field(default_factory=tuple)


_POCKETNET_PAPER = {
    # (block, pocket, spatial_dims) -> (published parameter count, table)
    ("unet", False, 3): (5_500_000, "PocketNet Table 1"),
    ("unet", True, 3): (150_000, "PocketNet Table 1"),
    ("resnet", False, 3): (5_500_000, "PocketNet Table 1"),
    ("resnet", True, 3): (150_000, "PocketNet Table 1"),
    ("densenet", False, 3): (8_100_000, "PocketNet Table 1"),
    ("densenet", True, 3): (241_000, "PocketNet Table 1"),
    ("unet", False, 2): (544_000, "PocketNet Table 2"),
    ("unet", True, 2): (36_000, "PocketNet Table 2"),
    ("resnet", False, 2): (544_000, "PocketNet Table 2"),
    ("resnet", True, 2): (36_000, "PocketNet Table 2"),
    ("densenet", False, 2): (626_000, "PocketNet Table 2"),
    ("densenet", True, 2): (42_000, "PocketNet Table 2"),
}

_BLOCK_TITLES = {"unet": "U-Net", "resnet": "ResNet", "densenet": "DenseNet"}


def _build_registry() -> dict[str, NetworkSpec]:
    registry: dict[str, NetworkSpec] = {}
    for spatial_dims in (3, 2):
        for block in ("unet", "resnet", "densenet"):
            for pocket in (True, False):
                name = f"{'pocket_' if pocket else ''}{block}{spatial_dims}d"
                params, source = _POCKETNET_PAPER[(block, pocket, spatial_dims)]
                title = f"{'Pocket ' if pocket else ''}{_BLOCK_TITLES[block]} {spatial_dims}D"
                where = "NFBS brain, 5-slice slabs" if spatial_dims == 3 else "LiTS liver, axial slices"
                registry[name] = NetworkSpec(
                    name=name,
                    constructor=PocketNet,
                    defaults={"spatial_dims": spatial_dims, "block": block, "pocket": pocket},
                    description=f"{title} (PocketNet paper, {where})",
                    # section 2.2: NFBS patches 256x256x5; LiTS slices down-sampled to 256x256
                    paper_input=(5, 256, 256) if spatial_dims == 3 else (256, 256),
                    paper_params=params,
                    paper_source=source,
                )
    registry["lvnet"] = NetworkSpec(
        name="lvnet",
        constructor=LVNet,
        defaults={},
        description="LV-Net 3D (Lei et al., LiTS liver, 16-slice 256x256 blocks, deep supervision)",
        paper_input=(16, 256, 256),  # section 3.1: 16 sequential slices resized to 256x256
        paper_params=1_659_282,
        paper_source="LV-Net Table 3",
        paper_gflops=58.07,
        paper_flop_convention="mac",
    )
    return registry


#: name -> :class:`NetworkSpec`, in display order
NETWORK_REGISTRY: dict[str, NetworkSpec] = _build_registry()


def network_names() -> list[str]:
    """All registry names, in display order."""
    return list(NETWORK_REGISTRY)


def get_spec(name: str) -> NetworkSpec:
    """The registry entry for ``name``; :class:`NetworkConfigError` (with suggestions) if unknown."""
    if not isinstance(name, str) or name not in NETWORK_REGISTRY:
        close = difflib.get_close_matches(str(name), NETWORK_REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise NetworkConfigError(
            f"unknown network name {name!r}.{hint} Known networks: {', '.join(NETWORK_REGISTRY)}"
        )
    return NETWORK_REGISTRY[name]


def network_arguments(name: str) -> dict[str, Any]:
    """The full constructor arguments ``name`` is built with (its class defaults + preset)."""
    spec = get_spec(name)
    signature = inspect.signature(spec.constructor)
    arguments = {
        key: parameter.default
        for key, parameter in signature.parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    arguments.update(spec.defaults)
    return arguments


def create_network(name: str, **overrides: Any) -> nn.Module:
    """Build the network ``name`` with the paper's defaults, overridden by keyword.

    Raises :class:`NetworkConfigError` for an unknown name, an argument the network does not
    take, or a value it cannot honour.
    """
    spec = get_spec(name)
    accepted = set(inspect.signature(spec.constructor).parameters)
    unknown = sorted(set(overrides) - accepted)
    if unknown:
        raise NetworkConfigError(
            f"network {name!r} takes no argument(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(sorted(accepted))}"
        )
    arguments = {**spec.defaults, **overrides}
    try:
        return spec.constructor(**arguments)
    except NetworkConfigError as error:
        raise NetworkConfigError(f"network {name!r}: {error}") from None
    except (TypeError, ValueError) as error:
        # torch's own checks (e.g. a float channel count) become a message naming the network.
        raise NetworkConfigError(f"network {name!r}: invalid arguments {overrides!r}: {error}") from None
