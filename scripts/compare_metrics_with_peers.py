"""PocketSeg's metrics beside MedPy, MONAI and SimpleITK on the same real pairs (docs/metrics.md).

    pip install --target /tmp/peers medpy==0.5.2 scipy monai==1.6.1 --no-deps   # not project deps
    PYTHONPATH=.:/tmp/peers .venv/bin/python scripts/compare_metrics_with_peers.py

Each pair is a reference mask of a real image from ``../shared/data`` and the shipped model's
mask of that image (computed here on the CPU). Printed as a Markdown table: for every metric,
PocketSeg's value and each peer's value for the metric of the same name, with the seconds each
took for the whole pair.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pocketseg_core.bundles import load_bundle  # noqa: E402
from pocketseg_core.inference import InferenceOptions, clean_up, segment_image  # noqa: E402
from pocketseg_core.io import read_image  # noqa: E402
from pocketseg_core.metrics import compute_metrics  # noqa: E402

DATA = Path(os.environ.get("POCKETSEG_SHARED_DATA", REPO.parent / "shared" / "data"))

#: (name, image, reference mask, shipped task)
PAIRS = [
    ("liver: TotalSegmentator small CT, 3 mm", "liver/ts_abdomen_ct_small.nii.gz", "liver/ts_abdomen_ct_small_liver.nii.gz", "liver"),
    ("liver: 3D-IRCADb 01, 0.57x0.57x1.6 mm", "liver/ircadb_001_ct.nii.gz", "liver/ircadb_001_liver.nii.gz", "liver"),
    ("brain: Swiss atlas head, 1 mm", "brain/swiss_atlas_t1.mha", "brain/swiss_atlas_brainmask.mha", "skullstrip"),
    ("brain: MNI152 template, 2 mm", "brain/mni152_t1_2mm.nii.gz", "brain/mni152_t1_2mm_brainmask.nii.gz", "skullstrip"),
]  # fmt: skip


def simpleitk_values(reference: sitk.Image, prediction: sitk.Image) -> dict[str, float]:
    """SimpleITK's own tools: the Hausdorff filter (all voxels), and surface distances to the
    zero set of the signed Maurer map of the mask (the ITK recipe PocketSeg used before)."""
    hausdorff = sitk.HausdorffDistanceImageFilter()
    hausdorff.Execute(reference, prediction)

    def directed(source: sitk.Image, target: sitk.Image) -> np.ndarray:
        contour = sitk.GetArrayFromImage(sitk.LabelContour(source, fullyConnected=False)) > 0
        distance = sitk.SignedMaurerDistanceMap(
            target, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
        )
        return np.abs(sitk.GetArrayFromImage(distance)[contour]).astype(np.float64)

    pooled = np.concatenate([directed(reference, prediction), directed(prediction, reference)])
    return {
        "hd_max": hausdorff.GetHausdorffDistance(),
        "hd_mean": hausdorff.GetAverageHausdorffDistance(),
        "hd95": float(np.percentile(pooled, 95)),
        "assd": float(pooled.mean()),
        "mssd": float(pooled.max()),
    }


def medpy_values(a: np.ndarray, b: np.ndarray, spacing_zyx) -> dict[str, float] | None:
    try:
        from medpy.metric import binary
    except ImportError:
        return None
    return {
        "dice": binary.dc(b, a),
        "hd95": binary.hd95(b, a, spacing_zyx),
        "assd": binary.assd(b, a, spacing_zyx),
        "mssd": binary.hd(b, a, spacing_zyx),
    }


def monai_values(a: np.ndarray, b: np.ndarray, spacing_zyx) -> dict[str, float] | None:
    try:
        import torch
        from monai import metrics
    except ImportError:
        return None
    ta, tb = torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]
    return {
        "dice": metrics.compute_dice(tb, ta).item(),
        "hd95": metrics.compute_hausdorff_distance(tb, ta, percentile=95, spacing=spacing_zyx).item(),
        "assd": metrics.compute_average_surface_distance(tb, ta, symmetric=True, spacing=spacing_zyx).item(),
        "mssd": metrics.compute_hausdorff_distance(tb, ta, spacing=spacing_zyx).item(),
    }


def timed(function, *args):
    started = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - started


#: task -> the bundle clean-up the table's mask was made with, where the shipped bundle's has
#: changed since (liver 1.2.0 changed only the clean-up; the numbers of docs/metrics.md are 1.1.0's)
PINNED_CLEAN_UP = {"liver": {"fill_holes": "slices"}}


def main() -> int:
    import warnings

    warnings.simplefilter("ignore", FutureWarning)
    names = ("dice", "hd_max", "hd_mean", "hd95", "assd", "mssd")
    print("| pair | tool | " + " | ".join(names) + " | seconds |")
    print("|---|---|" + "---|" * (len(names) + 1))
    for title, image_name, reference_name, task in PAIRS:
        if not (DATA / image_name).exists():
            print(f"| {title} | (sample missing) |" + " |" * (len(names) + 1))
            continue
        image = read_image(DATA / image_name)
        reference = sitk.Cast(read_image(DATA / reference_name) > 0.5, sitk.sitkUInt8)
        if task in PINNED_CLEAN_UP:  # the mask the table was first measured on
            raw = segment_image(
                image, load_bundle(task), InferenceOptions.without_clean_up(device="cpu")
            ).mask
            prediction = clean_up(raw, PINNED_CLEAN_UP[task], InferenceOptions(device="cpu"))
        else:
            prediction = segment_image(image, load_bundle(task), InferenceOptions(device="cpu")).mask
        a = sitk.GetArrayFromImage(reference) > 0
        b = sitk.GetArrayFromImage(prediction) > 0
        spacing_zyx = tuple(reference.GetSpacing()[::-1])
        rows = [("PocketSeg", *timed(compute_metrics, reference, prediction))]
        rows.append(("SimpleITK", *timed(simpleitk_values, reference, prediction)))
        for tool, function in (("MedPy 0.5.2", medpy_values), ("MONAI 1.6.1", monai_values)):
            values, seconds = timed(function, a, b, spacing_zyx)
            if values is not None:
                rows.append((tool, values, seconds))
        for tool, values, seconds in rows:
            cells = [f"{values[name]:.4f}" if name in values else "" for name in names]
            print(f"| {title} | {tool} | " + " | ".join(cells) + f" | {seconds:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
