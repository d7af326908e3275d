"""``pocketseg export-onnx``: give a model bundle of a 3D network its ONNX network, so that
``pocketseg predict`` can run it on ONNX Runtime (no torch) where the model's window is the
whole working grid."""

from __future__ import annotations

import argparse
from pathlib import Path

from pocketseg_core.errors import PocketSegError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export-onnx",
        help="export a model bundle's 3D network to ONNX (network.onnx, inside the bundle)",
        description=(
            "Export the network of a model bundle folder to ONNX (network.onnx inside the bundle, its "
            "sha256 in bundle.json; the weights are unchanged). predict then runs it on ONNX Runtime on "
            "the CPU where the model's window is the whole working grid. Needs torch and the onnx package."
        ),
    )
    parser.add_argument("bundle", help="model bundle folder (one you trained: the shipped ones have theirs)")
    return parser


def run(args: argparse.Namespace) -> int:
    from pocketseg_core.bundles import ONNX_FILE, SHIPPED_CATALOG, read_config
    from pocketseg_core.onnx_export import export_bundle

    folder = Path(args.bundle)
    if not folder.is_dir():
        raise PocketSegError(f"{folder} is not a folder; give the bundle folder (it holds bundle.json)")
    if folder.resolve().is_relative_to(SHIPPED_CATALOG.parent.resolve()):
        raise PocketSegError(
            f"{folder} is a shipped model: its files are checked against the catalog; "
            "export a copy of it instead"
        )
    export_bundle(folder)  # loading the bundle first says what is wrong with a folder that is not one
    config = read_config(folder)
    print(f"{folder / ONNX_FILE}: sha256 {config.onnx_sha256}")
    return 0
