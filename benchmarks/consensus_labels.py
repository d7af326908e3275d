"""Training labels from the peers' consensus: ``python -m benchmarks consensus-labels``.

For the real heads that have no brain mask of their own (``seg3d``, whose reference is an
intracranial mask, and the ``unlabelled_*`` heads), the label is the voxel-wise majority of
deepbet, HD-BET and ROBEX (:func:`benchmarks.accuracy.consensus`), on the head's own grid: the
peers' masks come from the accuracy harness's cache (or are made by running the peers, as the
harness does; :func:`benchmarks.accuracy.run_peer`). The labels are written OUTSIDE the
repository and the shared data, into ``--output``::

    <output>/consensus/<head>_consensus.nii.gz   uint8 0/1 on the head's grid
    <output>/consensus/manifest.json             tools, sha256 of each label and peer mask, volumes
    <output>/brain -> <data>                     (with --link-data) so that <output> is a data root

With ``--link-data``, ``<output>`` is the ``--data-root`` of the skull strip recipe
(``pocketseg train --recipe skullstrip --data-root <output>``): its sources name
``brain/<image>`` and ``consensus/<head>_consensus.nii.gz``. The peers are benchmark-only extras;
nothing at run time depends on them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from benchmarks.accuracy import CONSENSUS_TOOLS, HEADS, REPOSITORY, Head, consensus, run_peer, volume_ml
from pocketseg_core.errors import PocketSegError
from pocketseg_core.io import read_image, write_image, write_text_atomic

#: heads labelled by the consensus by default: no brain mask of their own
DEFAULT_HEADS: tuple[str, ...] = tuple(
    head.name for head in HEADS if head.reference is None or head.name == "seg3d"
)


def label_path(output: Path, head: str) -> Path:
    """Where the consensus label of ``head`` is written under ``output``."""
    return output / "consensus" / f"{head}_consensus.nii.gz"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_consensus_labels(
    data: Path,
    cache: Path,
    output: Path,
    heads: Sequence[str] = DEFAULT_HEADS,
    peers_python: str | None = None,
    threads: int = 2,
    link_data: bool = False,
    log: Any = sys.stderr,
) -> dict[str, Any]:
    """Write the consensus label of every head in ``heads`` under ``output``; return the manifest.

    Raises:
        PocketSegError: an unknown head, a missing image, or a peer mask that is neither cached
            nor made (no ``peers_python``).
    """
    by_name: dict[str, Head] = {head.name: head for head in HEADS}
    unknown = sorted(set(heads) - set(by_name))
    if unknown:
        raise PocketSegError(f"unknown heads {unknown}; known: {sorted(by_name)}")
    if output.resolve().is_relative_to(REPOSITORY) or output.resolve().is_relative_to(data.resolve()):
        raise PocketSegError(
            f"{output} is inside the repository or the data folder; write the labels to a folder outside both"
        )
    manifest: dict[str, Any] = {"tools": list(CONSENSUS_TOOLS), "rule": "voxel-wise majority", "heads": {}}
    for name in heads:
        head = by_name[name]
        image_path = data / head.image
        if not image_path.exists():
            raise PocketSegError(f"{image_path} is missing: pass --data with the shared data's brain folder")
        image = read_image(image_path)
        masks: list[sitk.Image] = []
        for tool in CONSENSUS_TOOLS:
            mask_path = cache / head.name / f"{tool}_mask.nii.gz"
            if peers_python is None and not mask_path.exists():
                raise PocketSegError(
                    f"no cached {tool} mask of {head.name} in {cache}: pass --peers-python to run the peers"
                )
            peer = run_peer(tool, head, image, peers_python or "", cache, threads, log)
            if peer is None:
                raise PocketSegError(f"{tool} failed on {head.name}; see its log in {cache / head.name}")
            masks.append(peer.mask)
        agreed = consensus(masks)
        target = label_path(output, head.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_image(agreed, target)
        manifest["heads"][head.name] = {
            "image": head.image,
            "label": str(target.relative_to(output)),
            "label_sha256": _sha256(target),
            "volume_ml": round(volume_ml(agreed), 2),
            "peer_masks_sha256": {
                tool: _sha256(cache / head.name / f"{tool}_mask.nii.gz") for tool in CONSENSUS_TOOLS
            },
        }
        print(
            f"{head.name}: consensus {manifest['heads'][head.name]['volume_ml']:.0f} ml -> {target}", file=log
        )
    write_text_atomic(output / "consensus" / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    if link_data:
        link = output / "brain"
        if link.is_symlink() and link.resolve() != data.resolve():
            raise PocketSegError(f"{link} already points to {link.resolve()}, not {data}; remove it first")
        if not link.exists():
            link.symlink_to(data.resolve(), target_is_directory=True)
    return manifest


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "consensus-labels",
        help="training labels of the unlabelled real heads: the majority of deepbet, HD-BET and ROBEX",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--data", default=str(REPOSITORY.parent / "shared" / "data" / "brain"))
    parser.add_argument("--output", "-o", required=True, help="folder outside the repository and the data")
    parser.add_argument(
        "--cache", default=str(Path.home() / ".cache" / "pocketseg-accuracy"), help="the harness's peer masks"
    )
    parser.add_argument("--peers-python", help="python of the peers' venv (only for masks not cached)")
    parser.add_argument("--heads", nargs="+", default=list(DEFAULT_HEADS), help="heads to label")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--link-data", action="store_true", help="make <output>/brain a link to --data (a recipe data root)"
    )
    parser.set_defaults(command="consensus-labels")
    return parser


def run(args: argparse.Namespace) -> int:
    write_consensus_labels(
        Path(args.data),
        Path(args.cache),
        Path(args.output),
        heads=tuple(args.heads),
        peers_python=args.peers_python,
        threads=args.threads,
        link_data=args.link_data,
    )
    return 0
