"""Evaluate the shipped models' recipes by leave-one-out on the real labelled volumes.

    .venv/bin/python scripts/evaluate_shipped_models.py            # both tasks, CPU
    .venv/bin/python scripts/evaluate_shipped_models.py --task skullstrip --device cuda
    .venv/bin/python scripts/evaluate_shipped_models.py --task lvnet-liver   # a second liver model
    .venv/bin/python scripts/evaluate_shipped_models.py --task skullstrip-ensemble --data DATA  # DATA: brain/ + consensus/

``--task`` names a shipped model's recipe (``pocketseg_core/training/recipes/<name>.json``): the
task aliases ``skullstrip`` and ``liver`` are their default models' recipes.

Every real labelled volume is segmented ONLY by the fold model that was trained without it
(``out/shipped_models/<recipe>/<run>/model/``, written by ``scripts/train_shipped_models.py``); no
image, nor a transformed copy of it, is ever scored by a model that saw it. For each one:

* all eight metrics (:func:`pocketseg_core.metrics.compute_metrics`, physical space);
* CPU time of :func:`pocketseg_core.inference.segment_image` (whole pipeline, seconds);
* an axial/coronal/sagittal overlay PNG in ``Resources/Models/images/`` (quantised to ~100 kB);
* brain only: robustness - Dice against the ground truth and against the unperturbed prediction
  (both carried through the same perturbation) under rotations of +-15 degrees, a left-right
  mirror, a storage flip of an axis (same physical image), a strong bias field, and 2 mm
  resampling.

Results go to ``Resources/Models/evaluation_<recipe>.json`` (written after every volume, so an
interrupted run keeps what it measured) and are printed as Markdown tables for the model cards.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_shipped_models as shipping  # noqa: E402  (where the runs and the shipped models live)

from pocketseg_core.bundles import ModelBundle, load_bundle, sha256_of  # noqa: E402
from pocketseg_core.geometry import resample_to_spacing  # noqa: E402
from pocketseg_core.inference import InferenceOptions, segment_image  # noqa: E402
from pocketseg_core.io import write_bytes_atomic, write_text_atomic  # noqa: E402
from pocketseg_core.metrics import METRIC_NAMES, compute_metrics, dice  # noqa: E402
from pocketseg_core.overlay import save_overlay_png  # noqa: E402
from pocketseg_core.training.recipes import (  # noqa: E402
    every_source,
    load_labelled_case,
    load_recipe,
    trained_files,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "Resources" / "Models"
IMAGES_DIR = RESULTS_DIR / "images"
CT_DISPLAY_WINDOW = (-150.0, 250.0)


def write_json(path: Path, data: Any) -> None:
    """Atomic JSON write (temp file in the same folder + os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def small_png(path: Path, colors: int = 128) -> int:
    """Re-save a PNG with a palette (keeps the pictures ~100 kB); returns the size in bytes."""
    from PIL import Image

    small = io.BytesIO()
    with Image.open(path) as picture:
        picture.convert("RGB").quantize(colors=colors).save(small, format="png", optimize=True)
    write_bytes_atomic(path, small.getvalue())
    return path.stat().st_size


def same_weights(bundle, shipped_dir: Path) -> bool:
    """Whether a fold bundle holds exactly the shipped weights (tensor by tensor)."""
    if not (shipped_dir / "bundle.json").is_file():
        return False
    shipped = load_bundle(shipped_dir).state_dict
    return shipped.keys() == bundle.state_dict.keys() and all(
        torch.equal(shipped[k], bundle.state_dict[k]) for k in shipped
    )


# ----------------------------------------------------------------------------- perturbations


def rotate(image: sitk.Image, axis: int, degrees: float, interpolator: int, default: float) -> sitk.Image:
    """``image`` rotated by ``degrees`` about physical axis ``axis`` (0 = x L-R, 1 = y A-P) through
    its centre, resampled on its own grid."""
    transform = sitk.Euler3DTransform()
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    transform.SetCenter(centre)
    angles = [0.0, 0.0, 0.0]
    angles[axis] = np.deg2rad(degrees)
    transform.SetRotation(*angles)
    return sitk.Resample(image, image, transform, interpolator, default, image.GetPixelID())


def lr_axis(image: sitk.Image) -> int:
    """The array axis (x=0, y=1, z=2 in SimpleITK order) most aligned with physical left-right."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return int(np.argmax(np.abs(direction[0, :])))


def mirror(image: sitk.Image, axis: int) -> sitk.Image:
    """The content reflected along array ``axis`` with the header kept: a mirrored head."""
    flipped = sitk.GetImageFromArray(np.flip(sitk.GetArrayFromImage(image), axis=2 - axis).copy())
    flipped.CopyInformation(image)
    return flipped


def storage_flip(image: sitk.Image, axis: int) -> sitk.Image:
    """The same physical image stored with array ``axis`` reversed (header updated)."""
    flipped = sitk.GetImageFromArray(np.flip(sitk.GetArrayFromImage(image), axis=2 - axis).copy())
    direction = np.asarray(image.GetDirection()).reshape(3, 3).copy()
    last = [0, 0, 0]
    last[axis] = image.GetSize()[axis] - 1
    origin = image.TransformIndexToPhysicalPoint(last)
    direction[:, axis] *= -1
    flipped.SetSpacing(image.GetSpacing())
    flipped.SetOrigin(origin)
    flipped.SetDirection(direction.ravel().tolist())
    return flipped


def bias_field(image: sitk.Image, strength: float = 0.6) -> sitk.Image:
    """``image`` times ``exp(strength * g)``, g a linear ramp in [-1, 1] along S-I and L-R
    (x0.55 to x1.8 across the head: far stronger than a modern scanner's)."""
    array = sitk.GetArrayFromImage(sitk.Cast(image, sitk.sitkFloat32))
    size = image.GetSize()
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in (size[2], size[1], size[0])), indexing="ij")
    physical = np.asarray(image.GetDirection()).reshape(3, 3)
    # the physical S-I and L-R coordinates of each voxel, from the index ramps
    ramps = np.stack([x, y, z])
    superior = np.tensordot(physical[2], ramps, axes=1)
    left = np.tensordot(physical[0], ramps, axes=1)
    field = np.exp(strength * (0.7 * superior + 0.3 * left))
    result = sitk.GetImageFromArray((array * field).astype(np.float32))
    result.CopyInformation(image)
    return result


def robustness(
    image: sitk.Image, truth: sitk.Image, baseline: sitk.Image, bundle, network
) -> dict[str, dict]:
    """Dice vs truth and vs the unperturbed prediction under each perturbation."""
    low = float(np.min(sitk.GetArrayViewFromImage(image)))
    cases: dict[str, tuple[sitk.Image, sitk.Image, sitk.Image]] = {}
    for axis, axis_name in ((0, "L-R axis (pitch)"), (1, "A-P axis (roll)")):
        for degrees in (15.0, -15.0):
            cases[f"rotation {degrees:+.0f} deg about {axis_name}"] = (
                rotate(image, axis, degrees, sitk.sitkLinear, low),
                rotate(truth, axis, degrees, sitk.sitkNearestNeighbor, 0),
                rotate(baseline, axis, degrees, sitk.sitkNearestNeighbor, 0),
            )
    axis = lr_axis(image)
    cases["left-right mirror"] = (mirror(image, axis), mirror(truth, axis), mirror(baseline, axis))
    for flip_axis in (0, 1, 2):
        if flip_axis != axis:
            break
    cases[f"storage flip of array axis {flip_axis} (same physical image)"] = (
        storage_flip(image, flip_axis),
        storage_flip(truth, flip_axis),
        storage_flip(baseline, flip_axis),
    )
    cases["strong bias field (x0.55 to x1.8)"] = (bias_field(image), truth, baseline)

    def to_2mm(mask: sitk.Image) -> sitk.Image:
        soft = resample_to_spacing(sitk.Cast(mask, sitk.sitkFloat32), 2.0, sitk.sitkLinear)
        return sitk.Cast(soft >= 0.5, sitk.sitkUInt8)

    cases["resampled to 2 mm"] = (
        resample_to_spacing(sitk.Cast(image, sitk.sitkFloat32), 2.0, sitk.sitkLinear),
        to_2mm(truth),
        to_2mm(baseline),
    )
    results = {}
    for name, (perturbed, perturbed_truth, perturbed_baseline) in cases.items():
        result = segment_image(perturbed, bundle, InferenceOptions(device="cpu"), network=network)
        results[name] = {
            "dice_vs_truth": round(dice(perturbed_truth, result.mask), 4),
            "dice_vs_unperturbed_prediction": round(dice(perturbed_baseline, result.mask), 4),
        }
        print(f"    {name}: {results[name]}", flush=True)
    return results


# ----------------------------------------------------------------------------- evaluation


def evaluate_task(
    name: str,
    data: Path,
    device: str,
    with_robustness: bool,
    runs_dir: Path | None = None,
    results_dir: Path | None = None,
) -> dict[str, Any]:
    """LOO evaluation of the fold bundles of recipe ``name`` in ``runs_dir/<name>/<run>/`` (default
    ``out/shipped_models``); JSON and PNGs go to ``results_dir`` (default ``Resources/Models``)."""
    runs_dir = runs_dir or shipping.RUNS_DIR
    results_dir = results_dir or RESULTS_DIR
    images_dir = results_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    recipe = load_recipe(name)
    task = str(recipe.task)
    sources = {source["case"]: source for source in every_source(recipe)}  # a stage may add cases
    shipped_dir = shipping.MODELS_DIR / name
    summary: dict[str, Any] = {
        "task": task,
        "recipe": name,
        "shipped_run": recipe.shipped_run,
        "shipped_weights_sha256": sha256_of(shipped_dir / "weights.pt") if shipped_dir.is_dir() else None,
        "volumes": {},
    }
    output = results_dir / f"evaluation_{name}.json"
    for run, held_out in recipe.runs.items():
        if not held_out:
            continue  # the all-data model has no held-out volume
        run_dir = shipping.run_model_dir(runs_dir, name, run)
        if not (run_dir / "bundle.json").is_file():
            print(
                f"[{name}] {run}: no fold model at {run_dir}; run train_shipped_models.py first", flush=True
            )
            continue
        trained = load_bundle(run_dir)
        # the recipe's clean-up, as the shipped bundle gets it (fold runs may predate it)
        config = recipe.bundle_config(recipe.name, trained.config.training)
        bundle = ModelBundle(config, trained.state_dict, run_dir)
        network = bundle.build_network(device)
        training_files = trained_files(bundle.config.training)  # every stage of every member
        for case in held_out:
            # a case held out by several runs (an ensemble's folds) is scored by the first of them
            if case in summary["volumes"]:
                continue
            image, truth = load_labelled_case(data, sources[case])
            source = sources[case]["image"]
            if source in training_files:  # never score a training image
                raise RuntimeError(f"{source} was in the training files of {run_dir}; refusing to evaluate")
            options = InferenceOptions(device=device)
            segment_image(image, bundle, options, network=network)  # warm-up, not timed
            result = segment_image(image, bundle, options, network=network)
            metrics = {k: round(float(v), 4) for k, v in compute_metrics(truth, result.mask).items()}
            voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
            entry: dict[str, Any] = {
                "file": source,
                "model_run": run,
                "model_weights_sha256": bundle.config.weights_sha256,
                "postprocessing": dict(bundle.config.postprocessing),
                "is_shipped_weights": same_weights(bundle, shipped_dir),
                "metrics": metrics,
                "volume_ml": {
                    "prediction": round(float(sitk.GetArrayViewFromImage(result.mask).sum()) * voxel_ml, 1),
                    "truth": round(float(sitk.GetArrayViewFromImage(truth).sum()) * voxel_ml, 1),
                },
                "seconds_cpu": round(result.seconds, 2),
                "timings": {k: round(v, 2) for k, v in result.timings.items()},
                "threads": torch.get_num_threads(),
            }
            picture = images_dir / f"{name}_{case}.png"
            save_overlay_png(
                image,
                result.mask,
                picture,
                f"{name} on {Path(source).name} (held out; Dice {metrics['dice']:.3f})",
                window=CT_DISPLAY_WINDOW if task == "liver" else None,
            )
            entry["picture"] = str(picture.relative_to(results_dir))
            entry["picture_bytes"] = small_png(picture)
            print(f"[{name}] {case} (model {run}): {metrics} in {result.seconds:.1f} s", flush=True)
            if task == "skullstrip" and with_robustness:
                entry["robustness"] = robustness(image, truth, result.mask, bundle, network)
            summary["volumes"][case] = entry
            write_json(output, summary)
    return summary


def markdown_tables(summary: dict[str, Any]) -> str:
    lines = [
        "| volume | model | " + " | ".join(METRIC_NAMES) + " | CPU s |",
        "|---" * (len(METRIC_NAMES) + 3) + "|",
    ]
    for case, entry in summary["volumes"].items():
        values = " | ".join(f"{entry['metrics'][m]:.3f}" for m in METRIC_NAMES)
        lines.append(f"| {case} | {entry['model_run']} | {values} | {entry['seconds_cpu']:.1f} |")
    for case, entry in summary["volumes"].items():
        if "robustness" in entry:
            lines += [
                "",
                f"Robustness on {case} (model {entry['model_run']}):",
                "",
                "| perturbation | Dice vs truth | Dice vs unperturbed prediction |",
                "|---|---|---|",
            ]
            for name, values in entry["robustness"].items():
                lines.append(
                    f"| {name} | {values['dice_vs_truth']:.4f} | {values['dice_vs_unperturbed_prediction']:.4f} |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=shipping.DEFAULT_DATA)
    parser.add_argument(
        "--task",
        choices=[*shipping.SHIPPED_RECIPES, "all"],
        default="all",
        help="a shipped model's recipe (skullstrip, liver, lvnet-liver), or all of them",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-robustness", action="store_true")
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=shipping.RUNS_DIR,
        help="fold bundles: <runs-dir>/<recipe>/<run>/model/",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help="where the JSON and the PNGs go (Resources/Models)",
    )
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: sample data folder {args.data} not found; pass --data", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    for name in list(shipping.SHIPPED_RECIPES) if args.task == "all" else [args.task]:
        summary = evaluate_task(
            name,
            args.data,
            args.device,
            not args.no_robustness,
            args.runs_dir.resolve(),
            args.results_dir.resolve(),
        )
        print(markdown_tables(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
