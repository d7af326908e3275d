"""Does ``pocketseg train --recipe`` follow the old shipped-model script step for step?

Before issue 13 the shipped models were trained by ``scripts/train_shipped_models.py`` with a
loop of its own (``train_run``). This script runs that old code from a checkout of an older
commit (``--old-checkout``, e.g. made by ``git worktree add /tmp/old <commit>``) and the
library's recipe trainer from this checkout on the same data, for the first ``--steps`` steps of
every stage of a recipe, and compares the weights tensor by tensor (``torch.equal``). Each stage
starts both sides from the same weights: stage 1 from the seeded initialisation, stage k from the
new side's weights after stage k - 1's first steps (the old side gets them as a warm-start bundle
whose training record has k - 1 stages, which sets its patch seed as the old script did).

    .venv/bin/python scripts/compare_trainer_with_main.py --old-checkout /tmp/old --task skullstrip --steps 3

Prints one line per stage and exits 1 when any stage differs. The old side runs in a
subprocess with the old checkout first on ``sys.path`` (its own ``pocketseg_core``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pocketseg_core.training.recipes import load_recipe, train_stage  # noqa: E402

#: runs in the old checkout: train_run until ``steps`` steps are done, then save the weights
OLD_DRIVER = r"""
import json, sys
from pathlib import Path
import torch
arguments = json.loads(sys.argv[1])
sys.path.insert(0, str(Path(arguments["old"]) / "scripts"))
import train_shipped_models as old
from pocketseg_core.bundles import save_bundle

torch.set_num_threads(arguments["threads"])
recipe = old.RECIPES[arguments["task"]]
held_out = recipe.runs[arguments["run"]]
created = {}
make_network, draw_batch = old.create_network, old.sample_batch


class Stop(Exception):
    pass


def create_network(*args, **kwargs):
    created["network"] = make_network(*args, **kwargs)
    return created["network"]


def sample_batch(*args, **kwargs):  # called at the start of every step
    created["steps"] = created.get("steps", 0) + 1
    if created["steps"] > arguments["steps"]:
        raise Stop
    return draw_batch(*args, **kwargs)


old.create_network, old.sample_batch = create_network, sample_batch
init_from = None
if arguments["init_state"]:
    record = None
    for _ in range(arguments["earlier_stages"]):
        record = {"held_out": held_out, "continued_from": record}
    init_from = Path(arguments["work"]) / "init"
    state = torch.load(arguments["init_state"], map_location="cpu", weights_only=True)
    save_bundle(init_from, old.bundle_config(recipe, record), state)
try:
    old.train_run(
        recipe, arguments["run"], Path(arguments["data"]), torch.device("cpu"), 0, arguments["epochs"],
        arguments["steps_per_epoch"], arguments["synthetic_per_brain"], Path(arguments["work"]) / "out",
        init_from=init_from, face_and_neck=arguments["face_and_neck"], lr=arguments["lr"],
    )
    raise SystemExit("the old run finished before the step limit")
except Stop:
    pass
torch.save(created["network"].state_dict(), arguments["result"])
"""


def compare(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> tuple[bool, float]:
    """(every tensor equal, largest absolute difference)."""
    if old.keys() != new.keys():
        return False, float("inf")
    largest = max(float((old[k].double() - new[k].double()).abs().max()) for k in old)
    return all(torch.equal(old[k], new[k]) for k in old), largest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old-checkout", type=Path, required=True, help="checkout with the old train_run")
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    parser.add_argument("--task", default="skullstrip", help="recipe name (skullstrip, liver)")
    parser.add_argument("--run", default=None, help="run of the recipe (default: the shipped run)")
    parser.add_argument("--steps", type=int, default=3, help="steps compared at the start of every stage")
    parser.add_argument("--stages", type=int, nargs="*", help="stage numbers (1-based; default all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = load_recipe(args.task)
    run = args.run or config.shipped_run
    names = config.stage_names()
    wanted = args.stages or list(range(1, len(names) + 1))
    work = args.work or Path(tempfile.mkdtemp(prefix="compare_trainer_"))
    start_state: dict[str, torch.Tensor] | None = None
    all_equal = True
    for number, name in enumerate(names, start=1):
        stage = config.stage(number - 1)
        stage_work = work / name
        stage_work.mkdir(parents=True, exist_ok=True)
        init_path = stage_work / "start.pt"
        if start_state is not None:
            torch.save(start_state, init_path)
        train_stage(
            config, stage, name, run, args.data, stage_work / "new", torch.device("cpu"), start_state, None,
            lambda done, message: None, args.steps,
        )  # fmt: skip
        new_state = torch.load(stage_work / "new" / "stopped.pt", map_location="cpu", weights_only=True)
        if number in wanted:
            old_arguments = {
                "old": str(args.old_checkout.resolve()),
                "task": args.task,
                "run": run,
                "data": str(args.data.resolve()),
                "threads": args.threads,
                "steps": args.steps,
                "epochs": stage.epochs,
                "steps_per_epoch": stage.steps_per_epoch,
                "lr": stage.optimizer["lr"],
                "synthetic_per_brain": int(stage.synthesis.get("per_source", 4)),
                "face_and_neck": int(stage.synthesis.get("face_and_neck", 0)),
                "init_state": str(init_path) if start_state is not None else "",
                "earlier_stages": number - 1,
                "work": str(stage_work / "old"),
                "result": str(stage_work / "old.pt"),
            }
            environment = {"PYTHONPATH": str(args.old_checkout.resolve()), "PATH": "/usr/bin:/bin"}
            subprocess.run(
                [sys.executable, "-c", OLD_DRIVER, json.dumps(old_arguments)],
                check=True,
                env=environment,
                cwd=args.old_checkout,
            )
            old_state = torch.load(stage_work / "old.pt", map_location="cpu", weights_only=True)
            equal, largest = compare(old_state, new_state)
            start = start_state or {}
            moved = (
                max(float((new_state[k] - start[k]).abs().max()) for k in start) if start else float("nan")
            )
            print(
                f"stage {number} {name} (seed {stage.seed}, lr {stage.optimizer['lr']}, "
                f"{stage.epochs}x{stage.steps_per_epoch} steps, face_and_neck "
                f"{stage.synthesis.get('face_and_neck', 0)}): after {args.steps} steps "
                f"{'IDENTICAL (torch.equal on every tensor)' if equal else 'DIFFERENT'}, "
                f"max |old - new| {largest:.3g}, weights moved by up to {moved:.3g} in the stage",
                flush=True,
            )
            all_equal = all_equal and equal
        start_state = new_state
    return 0 if all_equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
