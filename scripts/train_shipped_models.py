"""Train the models shipped inside PocketSeg from their recipes and put them into the package.

    .venv/bin/python scripts/train_shipped_models.py --task liver        # its runs, then ships "all"
    .venv/bin/python scripts/train_shipped_models.py --task skullstrip   # loo_robex (shipped), loo_swiss
    .venv/bin/python scripts/train_shipped_models.py --task skullstrip-ensemble  # 1.4.0 + a wider network (data root: brain/ + consensus/)
    .venv/bin/python scripts/train_shipped_models.py --task lvnet-liver  # the second liver model

``--task`` names a shipped model's recipe (:data:`SHIPPED_RECIPES`); its bundle goes to
``pocketseg_core/models/<recipe>/``. Several models may serve one task (``liver``: the Pocket
U-Net of recipe ``liver`` and the LV-Net of ``lvnet-liver``): the task alias (the "Segment
liver" button, ``--task liver``) is the first catalog entry of the task, :data:`TASK_DEFAULTS`;
the others are chosen by name (``--model lvnet-liver``, the module's model selector).

The training itself is the library's: every run is what ``pocketseg train --recipe <task>
--data-root ../shared/data --output out/shipped_models/<task> --runs <run> --threads N`` does
(recipes in ``pocketseg_core/training/recipes/``, :func:`pocketseg_core.training.recipes.train_recipe`).
This script only adds what a user never needs: the data folder beside the checkout by default, the
torch thread count each shipped model was trained with (bit-exact results need the same count),
and shipping: the shipped run's model bundle is re-saved into ``pocketseg_core/models/<task>/``
and its entry, with the sha256 of ``weights.pt``, written to ``pocketseg_core/models/catalog.json``.

Fold models (the leave-one-out runs that ``scripts/evaluate_shipped_models.py`` scores) stay in
``out/shipped_models/<task>/<run>/model/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pocketseg_core import io  # noqa: E402
from pocketseg_core.bundles import (  # noqa: E402
    SHIPPED_CATALOG,
    add_onnx_model,
    load_bundle,
    read_config,
    read_onnx_model,
    save_bundle,
    sha256_of,
)
from pocketseg_core.errors import PocketSegError  # noqa: E402
from pocketseg_core.training.presets import TrainingConfig  # noqa: E402
from pocketseg_core.training.recipes import load_recipe, train_recipe  # noqa: E402

DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
RUNS_DIR = REPO_ROOT / "out" / "shipped_models"
MODELS_DIR = REPO_ROOT / "pocketseg_core" / "models"
#: torch CPU threads each shipped model was trained with (recorded in its bundle's machine field)
SHIPPED_THREADS = {"skullstrip": 1, "skullstrip-ensemble": 1, "liver": 1, "lvnet-liver": 1}
#: the recipes of the shipped models (their bundle folders in pocketseg_core/models have these names)
SHIPPED_RECIPES = tuple(SHIPPED_THREADS)
#: task alias -> the catalog name of the model the alias (the one-click button) runs
TASK_DEFAULTS = {"skullstrip": "pocketnet-skullstrip", "liver": "pocketnet-liver"}


def run_model_dir(runs_dir: Path, recipe: str, run: str) -> Path:
    """The model bundle of a run: ``<runs_dir>/<recipe>/<run>/model`` (older layouts: the run folder)."""
    folder = runs_dir / recipe / run
    return folder / "model" if (folder / "model" / "bundle.json").is_file() else folder


def update_catalog(recipe: TrainingConfig, bundle_dir: Path) -> None:
    """Add or replace the model's entry in the shipped catalog (atomic write); a task's default
    model (:data:`TASK_DEFAULTS`) comes first among the task's entries, as the alias takes the first."""
    catalog = json.loads(SHIPPED_CATALOG.read_text(encoding="utf-8"))
    entries = [e for e in catalog.get("bundles", []) if e.get("name") != recipe.name]
    entries.append(
        {
            "name": recipe.name,
            "task": recipe.task,
            "title": recipe.title,
            "modality": recipe.modality,
            "version": recipe.version,
            "path": bundle_dir.name,
            "weights_sha256": sha256_of(bundle_dir / "weights.pt"),
        }
    )
    onnx_sha256 = read_config(bundle_dir).onnx_sha256
    if onnx_sha256:  # the catalog's own record of the ONNX network too
        entries[-1]["onnx_sha256"] = onnx_sha256
    catalog["bundles"] = sorted(
        entries, key=lambda e: (e["task"], e["name"] != TASK_DEFAULTS.get(e["task"]), e["name"])
    )
    io.write_text_atomic(SHIPPED_CATALOG, json.dumps(catalog, indent=2) + "\n")


def ship(recipe: TrainingConfig, model_dir: Path, folder: str) -> Path:
    """Re-save a run's model bundle into the package (atomically) and register it in the catalog.

    The bundle gets the recipe's current settings (name, version, texts, clean-up) with the run's
    training record: a run trained before a clean-up was chosen ships with it, weights untouched,
    and with the run's ONNX network when it has one (checked by its sha256)."""
    bundle = load_bundle(model_dir)
    config = recipe.bundle_config(recipe.name, bundle.config.training)
    target = save_bundle(MODELS_DIR / folder, config, bundle.state_dict)
    if bundle.config.onnx_sha256:
        add_onnx_model(target, read_onnx_model(bundle))
    update_catalog(recipe, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the sample data folder")
    parser.add_argument("--task", choices=SHIPPED_RECIPES, required=True, help="the shipped model's recipe")
    parser.add_argument("--runs", nargs="*", default=None, help="only these runs (default: every run)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: the shipped run's)"
    )
    parser.add_argument("--resume", action="store_true", help="continue the runs stored in --out-dir")
    parser.add_argument("--no-ship", action="store_true", help="train the runs but leave the package alone")
    parser.add_argument(
        "--ship-only", action="store_true", help="train nothing: ship the task's shipped run from --out-dir"
    )
    parser.add_argument("--out-dir", type=Path, default=RUNS_DIR, help="runs go to <out-dir>/<task>/<run>/")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    recipe = load_recipe(args.task)
    if not args.ship_only:
        if not args.data.is_dir():
            print(f"error: sample data folder {args.data} not found; pass --data", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads or SHIPPED_THREADS[args.task])
        try:
            train_recipe(
                recipe,
                args.data,
                args.out_dir / args.task,
                runs=args.runs or list(recipe.runs),
                device=args.device,
                resume=args.resume,
            )
        except PocketSegError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    if args.no_ship or (args.runs and recipe.shipped_run not in args.runs and not args.ship_only):
        return 0
    model_dir = run_model_dir(args.out_dir, args.task, recipe.shipped_run)
    if not (model_dir / "bundle.json").is_file():
        print(f"error: no trained run at {model_dir}; train it first", file=sys.stderr)
        return 2
    target = ship(recipe, model_dir, args.task)
    print(f"[{args.task}] shipped {model_dir} -> {target}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
