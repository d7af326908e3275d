"""``pocketseg train``: k-fold cross-validation of a PocketNet or LV-Net on a dataset folder, or a recipe.

Examples: ``pocketseg train --dataset NFBS/ --preset pocketnet-nfbs --output runs/nfbs``;
``pocketseg train --recipe liver --data-root DATA --output runs/liver`` (a shipped model's recipe).
Several GPUs: ``torchrun --nproc_per_node=4 -m pocketseg_core train ...`` (folds spread over
the GPUs, or ``--distributed-mode ddp`` for DistributedDataParallel inside each fold).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from pocketseg_core.errors import PocketSegError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from pocketseg_core.training.presets import PRESETS

    parser = subparsers.add_parser(
        "train",
        help="train a network with k-fold cross-validation (resumable), report out-of-fold accuracy",
        description=(
            "Train with k-fold cross-validation split by subject. Writes per-fold checkpoints, a "
            "per-epoch log, out-of-fold predictions on every case's grid, the eight metrics per case, "
            "their mean ± std, a box-plot figure and a model bundle for pocketseg predict. "
            "Dataset layouts: NFBS, LiTS, Medical Segmentation Decathlon, or a CSV/JSON list. "
            "With --recipe instead: train a model from a recipe file (a shipped model's whole training: "
            "files, synthesis, augmentation, stages, seed, clean-up) into a bundle."
        ),
    )
    parser.add_argument("--dataset", type=Path, help="dataset folder, dataset.json, or .csv/.json list")
    parser.add_argument("--preset", choices=list(PRESETS), help="the paper setup to follow")
    parser.add_argument(
        "--recipe",
        help="recipe .json, or the name of a packaged one (skullstrip, liver): trains its runs, not k folds",
    )
    parser.add_argument(
        "--data-root", type=Path, help="with --recipe: the folder the recipe's file paths are relative to"
    )
    parser.add_argument(
        "--runs", nargs="+", help="with --recipe: the runs to train (default: the recipe's shipped run)"
    )
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (results are bit-exact only for the same count)"
    )
    parser.add_argument(
        "--output", required=True, type=Path, help="run folder (new or empty, or the run to resume)"
    )
    parser.add_argument("--network", help="network name overriding the preset's (e.g. pocket_resnet3d)")
    parser.add_argument("--folds", type=int, help="number of folds (preset: 5)")
    parser.add_argument("--epochs", type=int, help="epochs per fold (default 100)")
    parser.add_argument("--steps-per-epoch", type=int, help="training batches per epoch (default 100)")
    parser.add_argument("--batch-size", type=int, help="patches per batch (preset value)")
    parser.add_argument(
        "--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"), help="working spacing in mm"
    )
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda or cuda:N")
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the folds and the sampling (default 0; a recipe's own)",
    )
    parser.add_argument("--resume", action="store_true", help="continue the run stored in --output")
    parser.add_argument("--config", type=Path, help="JSON file of training config keys overriding the preset")
    parser.add_argument(
        "--distributed-mode", choices=("folds", "ddp"), help="with torchrun: how ranks share work"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.set_defaults(handler=run)
    return parser


def config_from_args(args: argparse.Namespace):
    """The :class:`TrainingConfig` the command line describes (preset, then --config, then flags)."""
    from pocketseg_core.training.presets import config_from_preset

    overrides: dict = {}
    if args.config:
        try:
            overrides.update(json.loads(Path(args.config).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as error:
            raise PocketSegError(f"cannot read --config {args.config}: {error}") from error
    flags = {
        "network": args.network,
        "folds": args.folds,
        "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch,
        "batch_size": args.batch_size,
        "spacing": tuple(args.spacing) if args.spacing else None,
        "distributed_mode": args.distributed_mode,
    }
    overrides.update({key: value for key, value in flags.items() if value is not None})
    overrides.update(dataset=str(args.dataset), device=args.device, seed=args.seed or 0)
    if args.no_progress:
        overrides["show_progress"] = False
    if args.network and "network_args" not in overrides:
        overrides["network_args"] = {}  # the preset's arguments belong to its own network
    return config_from_preset(args.preset, **overrides)


def run(args: argparse.Namespace) -> int:
    from pocketseg_core.training.crossval import run_cross_validation

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.recipe:
        return run_recipe(args)
    if args.dataset is None or args.preset is None:
        raise PocketSegError(
            "pocketseg train needs --dataset and --preset, or --recipe; see pocketseg train --help"
        )
    config = config_from_args(args)
    result = run_cross_validation(config, args.output, resume=args.resume)
    if result.bundle_path is not None:
        print(f"model bundle: {result.bundle_path}  (pocketseg predict --model {result.bundle_path} ...)")
        print(f"per-case metrics: {result.per_case_csv}")
    return 0


def run_recipe(args: argparse.Namespace) -> int:
    """``pocketseg train --recipe``: the recipe's runs into ``--output/<run>/model``."""
    from pocketseg_core.devices import resolve_device
    from pocketseg_core.training.recipes import load_recipe, train_recipe

    refused = [
        flag for flag in ("dataset", "preset", "folds", "network", "config", "spacing") if getattr(args, flag)
    ]
    if refused:
        raise PocketSegError(
            f"--recipe trains the recipe as written; drop {', '.join('--' + f.replace('_', '-') for f in refused)}"
            " or copy the recipe file and edit it"
        )
    if args.data_root is None:
        raise PocketSegError("--recipe needs --data-root, the folder its file paths are relative to")
    config = load_recipe(args.recipe)
    changes = {
        key: value
        for key, value in {
            "epochs": args.epochs,
            "steps_per_epoch": args.steps_per_epoch,
            "batch_size": args.batch_size,
            "seed": args.seed,
        }.items()
        if value is not None
    }
    if changes:  # a flag applies to every stage (e.g. --epochs 40 on a GPU: 40 epochs per stage)
        stages = [{k: v for k, v in stage.items() if k not in changes} for stage in config.stages]
        config = config.replace(stages=stages, **changes)
    messages: list[str] = []
    device = resolve_device(args.device, messages)
    for message in messages:
        logging.warning(message)
    models = train_recipe(
        config, args.data_root, args.output, runs=args.runs, device=device, resume=args.resume
    )
    for run_name, bundle in models.items():
        print(f"{run_name}: model bundle {bundle}  (pocketseg predict --model {bundle} ...)")
    return 0
