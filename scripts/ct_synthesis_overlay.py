"""Picture of synthetic CTs (pocketseg_core.training.ct_synthesis) with their liver labels.

    .venv/bin/python scripts/ct_synthesis_overlay.py [--output docs/ct_synthesis_samples.png]

Top row: the real CTs whose label maps are used; below, two samples of each (plain and portal
venous phase), the axial slice with the most liver, the liver label's outline in red; the last
column: samples with a synthetic chest above the liver and a synthetic right kidney under its tip
(``chest_fraction`` and ``kidney_fraction`` 1), as a coronal slice through the back of the liver.
Needs matplotlib and ../shared/data.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from pocketseg_core.io import read_image, write_bytes_atomic  # noqa: E402
from pocketseg_core.training.ct_synthesis import synthesize_ct_image  # noqa: E402

SHARED_DATA = Path(os.environ.get("POCKETSEG_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

#: (title, CT, label map, scheme, liver value in the label map, chest_fraction and kidney_fraction)
SOURCES = [
    (
        "TotalSegmentator map (ts_small)",
        "liver/ts_abdomen_ct_small.nii.gz",
        "liver/ts_abdomen_ct_small_labels.nii.gz",
        "totalsegmentator_v2",
        5,
        0.0,
    ),
    (
        "TotalSegmentator map (ts_dicom)",
        "liver/ts_abdomen_ct_dicom",
        "liver/ts_abdomen_ct_dicom_labels.nii.gz",
        "totalsegmentator_v2",
        5,
        0.0,
    ),
    (
        "manual liver + CT classes (ircadb_017)",
        "liver/ircadb_017_ct.nii.gz",
        "liver/ircadb_017_liver.nii.gz",
        "liver",
        1,
        0.0,
    ),
    (
        "manual liver + synthetic chest, kidney (ircadb_001)",
        "liver/ircadb_001_ct.nii.gz",
        "liver/ircadb_001_liver.nii.gz",
        "liver",
        1,
        1.0,
    ),
]


def axial(image: sitk.Image, liver: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """The axial slice with the most liver, image and mask, in LPS display order."""
    image = sitk.DICOMOrient(image, "LPS")
    liver = sitk.DICOMOrient(liver, "LPS")
    mask = sitk.GetArrayFromImage(liver) > 0
    z = int(np.argmax(mask.sum(axis=(1, 2))))
    # LPS array: rows run anterior -> posterior, columns right -> left: radiological view
    return sitk.GetArrayFromImage(image)[z], mask[z]


def coronal(image: sitk.Image, liver: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """The coronal slice through the back of the liver (70 % of the way from its front to its
    back, where the right kidney lies under it), head up, on a 2.5 mm square grid."""
    image = sitk.DICOMOrient(image, "LPS")
    liver = sitk.DICOMOrient(liver, "LPS")
    square = [2.5, 2.5, 2.5]
    size = [int(round(n * s / 2.5)) for n, s in zip(image.GetSize(), image.GetSpacing(), strict=True)]
    image = sitk.Resample(
        image,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        square,
        image.GetDirection(),
        -1000.0,
    )
    liver = sitk.Resample(liver, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    mask = sitk.GetArrayFromImage(liver) > 0
    y = int(np.round(np.percentile(np.argwhere(mask)[:, 1], 70)))
    return sitk.GetArrayFromImage(image)[::-1, y, :], mask[::-1, y, :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "docs" / "ct_synthesis_samples.png")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(3, len(SOURCES), figsize=(3.0 * len(SOURCES), 9.0))
    for column, (title, ct_path, label_path, scheme, liver_value, chest) in enumerate(SOURCES):
        view = coronal if chest else axial
        ct = read_image(SHARED_DATA / ct_path)
        label = read_image(SHARED_DATA / label_path)
        real_liver = sitk.Resample(label, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0) == liver_value
        panels = [(f"real: {title}", *view(ct, real_liver))]
        for seed, phase in ((column, "plain"), (10 + column, "portal")):
            tick = time.perf_counter()
            image, liver = synthesize_ct_image(
                ct,
                label,
                np.random.default_rng(seed),
                scheme=scheme,
                phase=phase,
                chest_fraction=chest,
                kidney_fraction=chest,
            )
            print(f"{title} {phase}: {time.perf_counter() - tick:.2f} s, grid {image.GetSize()}")
            panels.append((f"synthetic, {phase} (seed {seed})", *view(image, liver)))
        for row, (text, slice_hu, mask) in enumerate(panels):
            axis = axes[row, column]
            axis.imshow(np.clip(slice_hu, -200, 300), cmap="gray", vmin=-200, vmax=300)
            axis.contour(mask, levels=[0.5], colors="red", linewidths=0.6)
            axis.set_title(text, fontsize=7)
            axis.axis("off")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=55)
    write_bytes_atomic(args.output, buffer.getvalue())
    print(f"wrote {args.output} ({len(buffer.getvalue()) // 1024} kB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
