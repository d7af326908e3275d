"""Measure the liver clean-up options of bundle.json on every labelled CT of ../shared/data/liver.

    .venv/bin/python scripts/evaluate_liver_cleanup.py --work /tmp/liver_cleanup [--json out.json]

The shipped liver model runs once per CT with every clean-up step off (the raw thresholded
mask, cached in ``--work``); each clean-up variant is then applied to that raw mask with
:func:`pocketseg_core.inference.postprocess.clean_up` and scored against the reference with
:func:`pocketseg_core.metrics.compute_metrics` (in physical space: the reference's grid, the
prediction mapped onto it with nearest neighbour, so the y-flipped TotalSegmentator DICOM
labels compare correctly). Prints one table per metric (Dice, HD95) and, per variant, how many
cases it helps and the largest Dice loss against the shipped clean-up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import SimpleITK as sitk

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pocketseg_core.bundles import load_bundle  # noqa: E402
from pocketseg_core.inference import InferenceOptions, clean_up, segment_image  # noqa: E402
from pocketseg_core.inference.plausibility import anatomy_warnings  # noqa: E402
from pocketseg_core.io import read_image  # noqa: E402
from pocketseg_core.metrics import compute_metrics  # noqa: E402

SHARED_DATA = Path(os.environ.get("POCKETSEG_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

#: case -> (image, reference label, liver value in the reference); the first three trained the
#: shipped model (1.1.0), the two 3D-IRCADb CTs with manual masks are unseen by it
CASES: dict[str, tuple[str, str, int]] = {
    "ts_small": ("liver/ts_abdomen_ct_small.nii.gz", "liver/ts_abdomen_ct_small_liver.nii.gz", 1),
    "ts_dicom": ("liver/ts_abdomen_ct_dicom", "liver/ts_abdomen_ct_dicom_labels.nii.gz", 5),
    "dcmqi": ("liver/dcmqi_ct_3slice", "liver/dcmqi_ct_3slice_liver.nrrd", 1),
    "ircadb_001": ("liver/ircadb_001_ct.nii.gz", "liver/ircadb_001_liver.nii.gz", 1),
    "ircadb_017": ("liver/ircadb_017_ct.nii.gz", "liver/ircadb_017_liver.nii.gz", 1),
}

#: variant -> (bundle postprocessing, clean-up steps); "shipped" is liver 1.1.0's
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, bool]]] = {
    "raw": ({}, {"keep_largest_component": False}),
    "largest": ({}, {}),
    "shipped": ({"fill_holes": "slices"}, {}),
    "fill_3d": ({"fill_holes": "3d"}, {}),
    "fill_both": ({"fill_holes": "slices"}, {"fill_holes": True}),
    **{
        f"bridges_{radius:g}": ({"fill_holes": "slices", "cut_bridges_mm": radius}, {})
        for radius in (3.0, 4.0, 5.0, 6.0, 8.0, 10.0)
    },
    **{
        f"3d_bridges_{radius:g}": ({"fill_holes": "3d", "cut_bridges_mm": radius}, {})
        for radius in (4.0, 5.0, 6.0, 8.0)
    },
}


def raw_mask(case: str, work: Path) -> sitk.Image:
    """The shipped model's mask of ``case`` with every clean-up step off (cached in ``work``)."""
    path = work / f"{case}_raw.nii.gz"
    if not path.exists():
        bundle = load_bundle("liver")
        image = read_image(SHARED_DATA / CASES[case][0])
        tick = time.perf_counter()
        result = segment_image(image, bundle, InferenceOptions.without_clean_up(device="cpu"))
        print(
            f"{case}: raw mask in {time.perf_counter() - tick:.1f} s; messages {result.messages}", flush=True
        )
        sitk.WriteImage(result.mask, str(path), True)
    return sitk.ReadImage(str(path))


def reference_mask(case: str) -> sitk.Image:
    """The reference liver (0/1 uint8) on its own grid."""
    label = read_image(SHARED_DATA / CASES[case][1])
    return sitk.Cast(sitk.Equal(label, CASES[case][2]), sitk.sitkUInt8)


def evaluate(work: Path) -> dict[str, dict[str, dict[str, float]]]:
    """``{case: {variant: {"dice": .., "hd95": .., "seconds": ..}}}``."""
    results: dict[str, dict[str, dict[str, float]]] = {}
    for case in CASES:
        raw = raw_mask(case, work)
        reference = reference_mask(case)
        results[case] = {}
        for variant, (postprocessing, steps) in VARIANTS.items():
            options = InferenceOptions(device="cpu", **steps)
            tick = time.perf_counter()
            cleaned = clean_up(raw, postprocessing, options)
            seconds = time.perf_counter() - tick
            metrics = compute_metrics(reference, cleaned, label=1, resample=True)
            results[case][variant] = {
                "dice": metrics["dice"],
                "hd95": metrics["hd95"],
                "seconds": seconds,
            }
        # the out-of-distribution warnings on the mask the default clean-up gives: none expected
        image = read_image(SHARED_DATA / CASES[case][0])
        cleaned = clean_up(raw, load_bundle("liver").config.postprocessing, InferenceOptions(device="cpu"))
        warnings = anatomy_warnings(
            sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(cleaned), "liver", "Liver"
        )
        print(f"{case}: anatomy warnings on the bundle's clean-up: {warnings}", flush=True)
    return results


def print_tables(results: dict[str, dict[str, dict[str, float]]]) -> None:
    """Dice and HD95 per case and variant; per variant the cases helped and the worst Dice loss
    against the shipped clean-up."""
    cases = list(results)
    for metric in ("dice", "hd95"):
        print(f"\n{metric}")
        print(f"{'variant':<12}" + "".join(f"{c:>12}" for c in cases) + f"{'helped':>8}{'worst':>9}")
        for variant in VARIANTS:
            values = [results[c][variant][metric] for c in cases]
            shipped = [results[c]["shipped"][metric] for c in cases]
            if metric == "dice":
                deltas = [v - s for v, s in zip(values, shipped, strict=True)]
            else:
                deltas = [s - v for v, s in zip(values, shipped, strict=True)]  # lower is better
            helped = sum(d > 1e-4 for d in deltas)
            print(
                f"{variant:<12}" + "".join(f"{v:>12.4f}" for v in values) + f"{helped:>8d}{min(deltas):>9.4f}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder caching the raw masks")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    results = evaluate(args.work)
    print_tables(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
