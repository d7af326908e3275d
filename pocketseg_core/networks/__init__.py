"""The network zoo: PocketNet (U-Net, ResNet, DenseNet; pocket and full; 2D and 3D) and LV-Net.

``create_network(name, **overrides)`` builds any of them by registry name; see
docs/networks.md for how each architecture was derived from its paper.
"""

from pocketseg_core.networks.lvnet import LVNet
from pocketseg_core.networks.pocketnet import PocketNet
from pocketseg_core.networks.registry import (
    NETWORK_REGISTRY,
    NetworkSpec,
    create_network,
    get_spec,
    network_arguments,
    network_names,
)
from pocketseg_core.networks.summary import (
    NetworkSummary,
    all_summaries,
    count_flops,
    count_parameters,
    network_summary,
)

__all__ = [
    "LVNet",
    "NETWORK_REGISTRY",
    "NetworkSpec",
    "NetworkSummary",
    "PocketNet",
    "all_summaries",
    "count_flops",
    "count_parameters",
    "create_network",
    "get_spec",
    "network_arguments",
    "network_names",
    "network_summary",
]
