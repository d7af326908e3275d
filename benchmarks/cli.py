"""``python -m benchmarks speed``: time PocketSeg's networks side by side with their full-size
counterparts and the peers (MONAI UNet, nnU-Net-style DynUNet), whole job and network alone.

Writes ``benchmark_<date>_<device>.json`` and ``.md`` into ``--output`` (see
:mod:`benchmarks.speed` and benchmarks/README.md). The harness lives beside the library, not in
it: it is never installed into Slicer, and MONAI and the peer tools are its extras only.
"""

from __future__ import annotations

import argparse
import sys

from pocketseg_core.errors import PocketSegError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "speed",
        help="time the networks (whole job and network alone) against full-size and peer networks",
        description=(
            "Times read -> segment -> mask written and the network alone, for every shipped pocket network, "
            "its full-size counterpart and the peers' architectures (MONAI UNet, nnU-Net-style DynUNet; "
            "needs 'pip install monai==1.6.1'), on phantoms of a 256x256x192 T1 and a 512x512x200 CT; each case runs in its own "
            "process (peak memory). Writes a JSON file and a markdown table."
        ),
    )
    parser.add_argument("--task", choices=("skullstrip", "liver", "all"), default="all")
    parser.add_argument(
        "--device", choices=("cpu", "cuda", "auto", "both"), default="auto", help="both = CUDA and CPU"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (median; default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument(
        "--networks",
        nargs="+",
        help="only these networks (registry names, bundle names, monai_unet, nnunet_dynunet, or a role: "
        "pocket, full, peer)",
    )
    parser.add_argument("--no-peers", action="store_true", help="skip the MONAI peers")
    parser.add_argument("--presets", action="store_true", help="also time the papers' preset networks")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 run, no warm-up, small inputs")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per network call (default 4)")
    parser.add_argument("--overlap", type=float, default=0.5, help="window overlap (default 0.5)")
    parser.add_argument("--fast", action="store_true", help="run at the bundles' fast spacing")
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels-last memory format (default: as inference, on for every network on the CPU)",
    )
    parser.add_argument(
        "--precision",
        choices=("float16", "bfloat16", "tfloat32", "float32"),
        default="float32",
        help="CUDA arithmetic of the networks (default float32, as inference; ignored on the CPU)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks")
    parser.add_argument(
        "--window",
        type=int,
        nargs=3,
        metavar=("Z", "Y", "X"),
        help="window of the pocket and full-size networks instead of their bundle's (0 = whole axis)",
    )
    parser.add_argument(
        "--max-case-seconds",
        type=float,
        default=600.0,
        help="fewer repeats for a case that would take longer (slow peers on a CPU; default 600)",
    )
    parser.add_argument("--output", "-o", required=True, help="folder for the JSON and markdown results")
    parser.set_defaults(command="speed")
    return parser


def run(args: argparse.Namespace) -> int:
    from benchmarks.speed import TASKS, BenchmarkSettings, run_benchmark

    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        raise PocketSegError("--repeats and --threads must be >= 1 and --warmup >= 0")
    if args.device == "both":
        devices = ["cuda", "cpu"]
    elif args.device == "auto":
        import torch

        devices = ["cuda"] if torch.cuda.is_available() else ["cpu"]
    else:
        devices = [args.device]
    settings = BenchmarkSettings(
        tasks=list(TASKS) if args.task == "all" else [args.task],
        devices=devices,
        repeats=1 if args.quick else args.repeats,
        warmup=0 if args.quick else args.warmup,
        threads=args.threads,
        networks=args.networks,
        peers=not args.no_peers,
        quick=args.quick,
        batch_size=args.batch_size,
        overlap=args.overlap,
        fast=args.fast,
        channels_last=args.channels_last,
        precision=args.precision,
        compile=args.compile,
        max_case_seconds=args.max_case_seconds,
        include_presets=True if args.presets else None,
        window_size_zyx=args.window,
    )
    paths = run_benchmark(settings, args.output, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(paths["markdown"].read_text(encoding="utf-8"))
    print(f"written: {paths['json']} and {paths['markdown']}")
    return 0
