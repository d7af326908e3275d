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
subprocess with the old checkout first on ``sys.path`` (its own ``pocketseg_core``). Stages
with the same synthesis settings share their synthetic heads on each side (they are drawn from
the same seed, so they would be the same); results in ``--work`` are reused by a rerun.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pocketseg_core.training import recipes  # noqa: E402
from pocketseg_core.training.recipes import load_recipe, train_stage  # noqa: E402

#: runs in the old checkout: for every job, train_run until ``steps`` steps are done, then save the weights
OLD_DRIVER = r"""
import json, sys
from pathlib import Path
import torch
settings = json.loads(sys.argv[1])
sys.path.insert(0, str(Path(settings["old"]) / "scripts"))
import train_shipped_models as old
from pocketseg_core.bundles import save_bundle

torch.set_num_threads(settings["threads"])
recipe = old.RECIPES[settings["task"]]
held_out = recipe.runs[settings["run"]]
created, volumes_made = {}, {}
make_network, draw_batch, make_volumes = old.create_network, old.sample_batch, old.build_volumes


class Stop(Exception):
    pass


def create_network(*args, **kwargs):
    created["network"] = make_network(*args, **kwargs)
    return created["network"]


def sample_batch(*args, **kwargs):  # called at the start of every step
    created["steps"] = created.get("steps", 0) + 1
    if created["steps"] > settings["steps"]:
        raise Stop
    return draw_batch(*args, **kwargs)


def build_volumes(*args, **kwargs):  # the same synthetic heads for stages with the same settings
    key = repr((args[1:], sorted(kwargs.items())))
    if key not in volumes_made:
        volumes_made[key] = make_volumes(*args, **kwargs)
    return volumes_made[key]


old.create_network, old.sample_batch, old.build_volumes = create_network, sample_batch, build_volumes
for job in settings["jobs"]:
    created.clear()
    init_from = None
    if job["init_state"]:
        record = None
        for _ in range(job["earlier_stages"]):
            record = {"held_out": held_out, "continued_from": record}
        init_from = Path(job["work"]) / "init"
        state = torch.load(job["init_state"], map_location="cpu", weights_only=True)
        save_bundle(init_from, old.bundle_config(recipe, record), state)
    try:
        old.train_run(
            recipe, settings["run"], Path(settings["data"]), torch.device("cpu"), 0, job["epochs"],
            job["steps_per_epoch"], job["synthetic_per_brain"], Path(job["work"]) / "out",
            init_from=init_from, face_and_neck=job["face_and_neck"], lr=job["lr"],
        )
        raise SystemExit("the old run finished before the step limit")
    except Stop:
        pass
    torch.save(created["network"].state_dict(), job["result"])
    print("old side:", job["result"], flush=True)
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
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="scratch folder (default: a temporary one); results there are reused",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = load_recipe(args.task)
    run = args.run or config.shipped_run
    names = config.stage_names()
    wanted = args.stages or list(range(1, len(names) + 1))
    work = args.work or Path(tempfile.mkdtemp(prefix="compare_trainer_"))

    # the new side, stage after stage (stages with the same synthesis share their volumes)
    made: dict[str, list] = {}

    def build_volumes(stage_config, data_root, held_out):
        key = json.dumps([stage_config.synthesis, held_out], sort_keys=True)
        if key not in made:
            made[key] = make_volumes(stage_config, data_root, held_out)
        return made[key]

    make_volumes = recipes.build_training_volumes
    recipes.build_training_volumes = build_volumes
    start_state: dict[str, torch.Tensor] | None = None
    jobs, starts = [], {}
    for number, name in enumerate(names, start=1):
        stage = config.stage(number - 1)
        stage_work = work / name
        result = stage_work / "new" / "stopped.pt"
        if not result.is_file():
            shutil.rmtree(stage_work / "new", ignore_errors=True)
            train_stage(
                config, stage, name, run, args.data, stage_work / "new", torch.device("cpu"), start_state,
                None, lambda done, message: None, args.steps,
            )  # fmt: skip
        init_path = stage_work / "start.pt"
        if start_state is not None:
            torch.save(start_state, init_path)
        starts[number] = start_state
        if number in wanted and not (stage_work / "old.pt").is_file():
            jobs.append(
                {
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
            )
        start_state = torch.load(result, map_location="cpu", weights_only=True)

    # the old side: one process for every stage still to compare
    if jobs:
        settings = {
            "old": str(args.old_checkout.resolve()),
            "task": args.task,
            "run": run,
            "data": str(args.data.resolve()),
            "threads": args.threads,
            "steps": args.steps,
            "jobs": jobs,
        }
        environment = {"PYTHONPATH": str(args.old_checkout.resolve()), "PATH": "/usr/bin:/bin"}
        subprocess.run(
            [sys.executable, "-c", OLD_DRIVER, json.dumps(settings)],
            check=True,
            env=environment,
            cwd=args.old_checkout,
        )

    all_equal = True
    for number, name in enumerate(names, start=1):
        if number not in wanted:
            continue
        stage = config.stage(number - 1)
        new_state = torch.load(work / name / "new" / "stopped.pt", map_location="cpu", weights_only=True)
        old_state = torch.load(work / name / "old.pt", map_location="cpu", weights_only=True)
        equal, largest = compare(old_state, new_state)
        start = starts[number] or {}
        moved = max(float((new_state[k] - start[k]).abs().max()) for k in start) if start else float("nan")
        print(
            f"stage {number} {name} (seed {stage.seed}, lr {stage.optimizer['lr']}, "
            f"{stage.epochs}x{stage.steps_per_epoch} steps, face_and_neck {stage.synthesis.get('face_and_neck', 0)}): "
            f"after {args.steps} steps {'IDENTICAL (torch.equal on every tensor)' if equal else 'DIFFERENT'}, "
            f"max |old - new| {largest:.3g}, weights moved by up to {moved:.3g} in these steps",
            flush=True,
        )
        all_equal = all_equal and equal
    return 0 if all_equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
