"""Choose the skull-strip model's inference window and mask clean-up on a validation split.

    .venv/bin/python scripts/validate_skullstrip.py --runs-dir out/shipped_models_v4

Why a separate split: the two real full heads are the test set (leave-one-out, scored by
``evaluate_shipped_models.py``), so nothing may be tuned on them. The validation heads here are
SynthStrip-style synthetic heads with face, tongue, neck and cord, made by the training's own
generator (``pocketseg_core.training.synthesis``) from the recipe's skull-stripped brains, but with a seed no training run used: the shells,
faces, tongues, intensities and noise are new; the brains inside are the training brains, so
these numbers flatter the model and only *compare* settings.

For each fold model (``<runs-dir>/skullstrip/<run>/model/``) and each validation head, the raw mask
(no component step) is computed once per inference window, then every clean-up is applied to
it: the largest component alone, or :func:`~pocketseg_core.postprocessing.cut_thin_bridges` with
a radius, then the largest component. Dice against the synthetic label, mean per setting, go to
``Resources/Models/validation_skullstrip.json`` and are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_shipped_models as shipping  # noqa: E402  (where the runs live)

from pocketseg_core.bundles import load_bundle  # noqa: E402
from pocketseg_core.inference import InferenceOptions, segment_image  # noqa: E402
from pocketseg_core.io import write_text_atomic  # noqa: E402
from pocketseg_core.metrics import dice  # noqa: E402
from pocketseg_core.postprocessing import cut_thin_bridges, keep_largest_component  # noqa: E402
from pocketseg_core.training.recipes import load_recipe, load_stripped_brain  # noqa: E402
from pocketseg_core.training.synthesis import synthesize_head  # noqa: E402

#: far from every seed the training runs used (0, 1000, 2000, 4000 and the per-run offsets)
VALIDATION_SEED = 777_777
RADII_MM = (3.0, 4.0, 5.0, 6.0)
WINDOWS = (48, 64)


def validation_heads(data: Path, per_brain: int) -> list[tuple[str, sitk.Image, sitk.Image]]:
    """Synthetic heads (face, tongue, neck, cord) around each stripped brain, unseen seed."""
    rng = np.random.default_rng(VALIDATION_SEED)
    heads = []
    for source in load_recipe("skullstrip").sources:
        if source["use"] != "synthesis":
            continue
        brain, mask = load_stripped_brain(data, source)
        for copy in range(per_brain):
            head, label = synthesize_head(brain, mask, rng, face_and_neck=2)
            heads.append((f"val_{source['case']}_{copy}", head, label))
    return heads


def cleanups(raw: sitk.Image) -> dict[str, sitk.Image]:
    """Every clean-up under comparison, applied to one raw mask."""
    results = {"largest component": keep_largest_component(raw)}
    for radius in RADII_MM:
        results[f"cut {radius:g} mm + largest"] = keep_largest_component(cut_thin_bridges(raw, radius))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=shipping.DEFAULT_DATA)
    parser.add_argument("--runs-dir", type=Path, default=shipping.RUNS_DIR)
    parser.add_argument("--per-brain", type=int, default=2, help="validation heads per stripped brain")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--windows", type=int, nargs="+", default=list(WINDOWS), help="cubic inference windows to compare"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=shipping.REPO_ROOT / "Resources" / "Models" / "validation_skullstrip.json",
    )
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: sample data folder {args.data} not found; pass --data", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    heads = validation_heads(args.data, args.per_brain)
    scores: dict[str, dict[str, list[float]]] = {}
    per_head: list[dict[str, Any]] = []
    for run in load_recipe("skullstrip").runs:
        run_dir = shipping.run_model_dir(args.runs_dir, "skullstrip", run)
        if not (run_dir / "bundle.json").is_file():
            continue
        bundle = load_bundle(run_dir)
        network = bundle.build_network("cpu")
        for window in args.windows:
            options = InferenceOptions.without_clean_up(
                device="cpu", window_size_zyx=(window, window, window)
            )
            for name, head, label in heads:
                raw = segment_image(head, bundle, options, network=network).mask
                for cleanup, mask in cleanups(raw).items():
                    score = dice(label, mask)
                    scores.setdefault(f"{window}^3", {}).setdefault(cleanup, []).append(score)
                    per_head.append(
                        {
                            "run": run,
                            "head": name,
                            "window": window,
                            "cleanup": cleanup,
                            "dice": round(score, 4),
                        }
                    )
                print(
                    f"{run} {window}^3 {name}: "
                    + ", ".join(f"{e['cleanup']} {e['dice']:.4f}" for e in per_head[-len(RADII_MM) - 1 :]),
                    flush=True,
                )
    summary = {
        "seed": VALIDATION_SEED,
        "heads": [name for name, _, _ in heads],
        "runs_dir": str(args.runs_dir),
        "mean_dice": {w: {c: round(float(np.mean(v)), 4) for c, v in by.items()} for w, by in scores.items()},
        "min_dice": {w: {c: round(float(np.min(v)), 4) for c, v in by.items()} for w, by in scores.items()},
        "per_head": per_head,
    }
    write_text_atomic(args.output, json.dumps(summary, indent=2) + "\n")
    cleanup_names = list(next(iter(scores.values())))
    print("| window | " + " | ".join(cleanup_names) + " |")
    print("|---" * (len(cleanup_names) + 1) + "|")
    for window, by in summary["mean_dice"].items():
        cells = [f"{by[c]:.4f} (min {summary['min_dice'][window][c]:.4f})" for c in cleanup_names]
        print(f"| {window} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
