"""Search the configurations the papers' text allows for the ones nearest their published sizes.

Prints (1) the PocketNet 2D configurations nearest Table 2 (all four U-Net/DenseNet counts) and
(2) the LV-Net stage layouts within 5 % of Table 3's parameters and 15 % of its GFLOPs
(multiply-accumulates). Real networks are built on the meta device, so nothing is allocated.
docs/networks.md reports the outcome. Run: ``python benchmarks/paper_config_search.py``.
"""

from __future__ import annotations

import itertools

import torch

from pocketseg_core.networks import count_flops, count_parameters, create_network

TABLE_2 = {("unet", False): 544e3, ("unet", True): 36e3, ("densenet", False): 626e3, ("densenet", True): 42e3}
LVNET_PARAMS, LVNET_GMACS = 1_659_282, 58.07
VNET_ENCODER, VNET_DECODER = (1, 2, 3, 3, 3), (3, 3, 2, 1)


def params(name: str, **arguments) -> int:
    with torch.device("meta"):
        return count_parameters(create_network(name, **arguments))


def search_pocketnet_2d() -> None:
    rows = []
    for init_filters, depth, in_channels in itertools.product(range(4, 33), range(1, 6), (1, 3)):
        errors = {}
        for (block, pocket), reference in TABLE_2.items():
            name = f"{'pocket_' if pocket else ''}{block}2d"
            errors[name] = (
                params(name, init_filters=init_filters, depth=depth, in_channels=in_channels) / reference - 1
            )
        rows.append((max(abs(e) for e in errors.values()), init_filters, depth, in_channels, errors))
    rows.sort(key=lambda row: row[0])
    print("PocketNet 2D vs Table 2: worst relative error over the four counts (best 8)")
    for worst, init_filters, depth, in_channels, errors in rows[:8]:
        detail = ", ".join(f"{name} {100 * e:+.0f}%" for name, e in errors.items())
        print(
            f"  init_filters={init_filters:2d} depth={depth} in_channels={in_channels}: worst {100 * worst:.0f}%  ({detail})"
        )


def search_lvnet() -> None:
    print("LV-Net layouts within 5% params and 15% GMACs of Table 3 (nearest V-Net's stage depths first)")
    hits = []
    for base in (8, 16):
        widths = tuple(base * 2**level for level in range(5))
        # V-Net's encoder with its bottom level 1-3 blocks deep; every decoder of 1-3 blocks a stage
        for encoder in ((1, 2, 3, 3, bottom) for bottom in (1, 2, 3)):
            for decoder in itertools.product((1, 2, 3), repeat=4):
                arguments = {"widths": widths, "encoder_blocks": encoder, "decoder_blocks": decoder}
                count = params("lvnet", **arguments)
                if abs(count / LVNET_PARAMS - 1) >= 0.05:
                    continue
                gmacs = count_flops("lvnet", **arguments) / 2e9
                if abs(gmacs / LVNET_GMACS - 1) >= 0.15:
                    continue
                distance = sum(
                    abs(a - b) for a, b in zip(encoder + decoder, VNET_ENCODER + VNET_DECODER, strict=True)
                )
                hits.append(
                    (
                        distance,
                        abs(count / LVNET_PARAMS - 1) + abs(gmacs / LVNET_GMACS - 1),
                        widths,
                        encoder,
                        decoder,
                        count,
                        gmacs,
                    )
                )
    hits.sort(key=lambda hit: hit[:2])
    for distance, _, widths, encoder, decoder, count, gmacs in hits[:10]:
        print(
            f"  widths={widths} encoder={encoder} decoder={decoder}: {count:,} params "
            f"({100 * (count / LVNET_PARAMS - 1):+.2f}%), {gmacs:.2f} GMACs ({100 * (gmacs / LVNET_GMACS - 1):+.2f}%), "
            f"{distance} blocks from V-Net"
        )
    print(f"  ({len(hits)} layouts in all)")


if __name__ == "__main__":
    search_pocketnet_2d()
    search_lvnet()
