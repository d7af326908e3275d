"""Small phantom datasets for the training tests: a bright ellipsoid (label 1) in a noisy volume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk


def phantom_pair(
    seed: int, shape_zyx=(20, 32, 32), spacing=(2.0, 2.0, 2.0), radius: float = 7.0
) -> tuple[sitk.Image, sitk.Image]:
    """(image float32, label uint8) on one grid: an ellipsoid of intensity ~180 over ~100, noise 10."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape_zyx[0], : shape_zyx[1], : shape_zyx[2]]
    centre = np.array(shape_zyx) / 2 + rng.uniform(-2, 2, 3)
    inside = (
        ((z - centre[0]) / (radius * 0.8)) ** 2
        + ((y - centre[1]) / radius) ** 2
        + ((x - centre[2]) / radius) ** 2
    )
    label = (inside <= 1).astype(np.uint8)
    image = (100 + 80 * label + rng.normal(0, 10, label.shape)).astype(np.float32)
    image_sitk = sitk.GetImageFromArray(image)
    image_sitk.SetSpacing(spacing)
    image_sitk.SetOrigin((-10.0 * seed, 5.0, 3.0))
    label_sitk = sitk.GetImageFromArray(label)
    label_sitk.CopyInformation(image_sitk)
    return image_sitk, label_sitk


def write_csv_dataset(folder: Path, subjects: int = 4, cases_per_subject: int = 1) -> Path:
    """A ``cases.csv`` dataset of phantoms (image,label,subject) in ``folder``; returns the CSV path."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["image,label,subject"]
    for subject in range(subjects):
        for copy in range(cases_per_subject):
            image, label = phantom_pair(subject * 10 + copy)
            name = f"s{subject}c{copy}"
            sitk.WriteImage(image, str(folder / f"{name}.nii.gz"))
            sitk.WriteImage(label, str(folder / f"{name}_label.nii.gz"))
            rows.append(f"{name}.nii.gz,{name}_label.nii.gz,subject{subject}")
    path = folder / "cases.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


#: training config keys for a tiny, fast 3D run on the phantoms (CPU, seconds)
TINY_RUN = {
    "folds": 2,
    "epochs": 2,
    "steps_per_epoch": 3,
    "batch_size": 2,
    "spacing": (2.0, 2.0, 2.0),
    "window_mode": "patch3d",
    "window_size_zyx": (16, 32, 32),
    "patch_size_zyx": (16, 32, 32),
    "network": "pocket_unet3d",
    "network_args": {"init_filters": 4, "depth": 2, "pool_size": 2},
    "show_progress": False,
    "device": "cpu",
}
