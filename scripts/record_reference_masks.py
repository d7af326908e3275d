"""Record the masks the shipped models give on the real images, to prove a refactor changes none.

    .venv/bin/python scripts/record_reference_masks.py                 # all cases, CPU
    .venv/bin/python scripts/record_reference_masks.py --check         # recompute and compare
    .venv/bin/python scripts/record_reference_masks.py --task liver    # re-record one task only

For every full head of ``../shared/data/brain`` (skull strip) and every CT of
``../shared/data/liver`` (liver, the DICOM series included) the shipped model of the task runs
through :func:`pocketseg_core.inference.segment_image` on the CPU with the default options (what
``pocketseg predict`` and the Slicer button do), and, for four cases, with other options
(:data:`EXTRA_VARIANTS`: no clean-up, another window, flip averaging, hole filling, probabilities). Per case and variant the JSON records the sha256 of the mask's voxel array
(uint8, (z, y, x) C order), the mask's size, its foreground voxel count, and the model (name,
version, weights sha256) that made it.

Results go to ``Testing/Python/data/reference_masks.json``, which
``Testing/Python/test_reference_masks.py`` recomputes and compares voxel for voxel (a case whose
model has changed since is skipped there: re-record it with this script, on purpose).
The images stay in ``../shared/data``; only hashes are stored in the project.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pocketseg_core.bundles import load_bundle  # noqa: E402
from pocketseg_core.inference import InferenceOptions, segment_image  # noqa: E402
from pocketseg_core.io import read_image, write_text_atomic  # noqa: E402

REFERENCE_FILE = REPO_ROOT / "Testing" / "Python" / "data" / "reference_masks.json"
SHARED_DATA = Path(os.environ.get("POCKETSEG_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

#: (task, image relative to the shared data folder, in the default (quick) test subset)
CASES: list[tuple[str, str, bool]] = [
    ("skullstrip", "brain/swiss_atlas_t1.mha", True),
    ("skullstrip", "brain/robex_atlas_t1.nii.gz", False),
    ("skullstrip", "brain/mni152_t1_2mm.nii.gz", True),
    ("skullstrip", "brain/seg3d_t1.nii.gz", False),
    ("skullstrip", "brain/unlabelled_chris_t1.nii.gz", False),
    ("skullstrip", "brain/unlabelled_philips_mprage_t1.nii.gz", False),
    ("skullstrip", "brain/unlabelled_siemens_xa30_t1_2mm.nii.gz", False),
    ("skullstrip", "brain/unlabelled_vsseg001_t1c.nii.gz", False),
    ("liver", "liver/ts_abdomen_ct_small.nii.gz", True),
    ("liver", "liver/ts_abdomen_ct_unlabeled.nii.gz", False),
    ("liver", "liver/ts_abdomen_ct_dicom", True),
    ("liver", "liver/dcmqi_ct_3slice", False),
    ("liver", "liver/ircadb_001_ct.nii.gz", False),
    ("liver", "liver/ircadb_017_ct.nii.gz", False),
]

#: variant name -> options. "raw": no clean-up at all (the thresholded network output); the
#: others exercise another window/overlap/batch, flip averaging, the caller's hole filling and the path that also
#: returns probabilities (whose hash is recorded too)
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    # recorded as {"keep_largest_component": False}, which switched every clean-up step off before
    # each step got its own option
    "raw": {"cut_thin_bridges": False, "keep_largest_component": False, "bundle_fill_holes": False},
    "window": {"window_size_zyx": (64, 64, 64), "overlap": 0.25, "batch_size": 3},
    "tta": {"tta": True},
    "fill_holes": {"fill_holes": True},
    "probabilities": {"return_probabilities": True},
}
#: the variants recorded beyond "default", per image; (variant, in the default test subset)
EXTRA_VARIANTS: dict[str, list[tuple[str, bool]]] = {
    "brain/swiss_atlas_t1.mha": [("raw", True), ("window", False), ("fill_holes", False)],
    "brain/mni152_t1_2mm.nii.gz": [("raw", True), ("tta", False), ("probabilities", False)],
    "liver/ts_abdomen_ct_small.nii.gz": [("raw", True), ("tta", False), ("probabilities", True)],
    "liver/ts_abdomen_ct_dicom": [("raw", True), ("fill_holes", False)],
}

#: one thread: the masks are thresholded floats, so the reduction order must not depend on the
#: machine's core count
THREADS = 1


@dataclass(frozen=True)
class MaskRecord:
    """What identifies one result: its mask voxels (hash), size and foreground count, and the
    hash of its probabilities when they were asked for."""

    sha256: str
    size_xyz: list[int]
    foreground_voxels: int
    probabilities_sha256: str | None = None

    @staticmethod
    def of(mask: sitk.Image, probabilities: sitk.Image | None = None) -> MaskRecord:
        array = np.ascontiguousarray(sitk.GetArrayViewFromImage(mask), dtype=np.uint8)
        probability_hash = None
        if probabilities is not None:
            values = np.ascontiguousarray(sitk.GetArrayViewFromImage(probabilities), dtype=np.float32)
            probability_hash = hashlib.sha256(values.tobytes()).hexdigest()
        return MaskRecord(
            sha256=hashlib.sha256(array.tobytes()).hexdigest(),
            size_xyz=[int(s) for s in mask.GetSize()],
            foreground_voxels=int(np.count_nonzero(array)),
            probabilities_sha256=probability_hash,
        )


def options_for(variant: str) -> InferenceOptions:
    """The inference options of a recorded variant (on the CPU)."""
    return InferenceOptions(device="cpu", **VARIANTS[variant])


def model_identity(bundle) -> dict[str, str]:
    return {
        "model": bundle.config.name,
        "version": bundle.config.version,
        "weights_sha256": bundle.config.weights_sha256,
    }


def segment_case(task: str, relative: str, variant: str, shared: Path = SHARED_DATA) -> MaskRecord:
    """The record of one case, computed now with this checkout's code (one CPU thread)."""
    bundle = load_bundle(task)
    image = read_image(shared / relative)
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        result = segment_image(image, bundle, options_for(variant))
    finally:
        torch.set_num_threads(previous)
    return MaskRecord.of(result.mask, result.probabilities)


def record_all(cases: list[tuple[str, str, bool]]) -> list[dict[str, Any]]:
    records = []
    for task, relative, quick in cases:
        bundle = load_bundle(task)
        variants = [("default", quick), *EXTRA_VARIANTS.get(relative, [])]
        for variant, in_quick_subset in variants:
            started = time.perf_counter()
            record = segment_case(task, relative, variant)
            seconds = time.perf_counter() - started
            print(
                f"{task:10s} {variant:13s} {relative:46s} {record.foreground_voxels:9d} voxels {seconds:6.1f} s"
            )
            records.append(
                {
                    "task": task,
                    "image": relative,
                    "variant": variant,
                    "quick": in_quick_subset,
                    **model_identity(bundle),
                    **asdict(record),
                    "seconds_1_thread": round(seconds, 1),
                }
            )
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REFERENCE_FILE)
    parser.add_argument("--check", action="store_true", help="recompute and compare with --output")
    parser.add_argument(
        "--task",
        help="re-record only this task's cases (e.g. liver after its bundle changed), keeping the others from --output",
    )
    args = parser.parse_args(argv)
    if not SHARED_DATA.is_dir():
        print(f"real sample data not found at {SHARED_DATA} (set POCKETSEG_SHARED_DATA)")
        return 2
    if args.check:
        recorded = json.loads(args.output.read_text(encoding="utf-8"))["cases"]
        failures = 0
        for entry in recorded:
            now = segment_case(entry["task"], entry["image"], entry["variant"])
            same = now.sha256 == entry["sha256"] and now.probabilities_sha256 == entry["probabilities_sha256"]
            failures += not same
            print(f"{'same' if same else 'DIFFERENT':9s} {entry['variant']:8s} {entry['image']}")
        return 1 if failures else 0
    records = record_all([case for case in CASES if args.task in (None, case[0])])
    if args.task:  # the other tasks' records stay as they were, in the file's order
        fresh = {(entry["image"], entry["variant"]): entry for entry in records}
        merged = []
        for entry in json.loads(args.output.read_text(encoding="utf-8"))["cases"]:
            if entry["task"] != args.task:
                merged.append(entry)
            elif (entry["image"], entry["variant"]) in fresh:
                merged.append(fresh.pop((entry["image"], entry["variant"])))
        records = merged + list(fresh.values())
    document = {
        "about": "sha256 of the shipped models' masks on ../shared/data; scripts/record_reference_masks.py",
        "torch": torch.__version__,
        "threads": THREADS,
        "cases": records,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.output, json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
