"""Train the models shipped inside PocketSeg (``skullstrip`` and ``liver``) from ../shared/data.

Two commands reproduce them (seed, files and step counts are fixed; the time and machine are
recorded in each bundle's ``training`` field)::

    .venv/bin/python scripts/train_shipped_models.py            # both tasks, CPU defaults
    .venv/bin/python scripts/train_shipped_models.py --task skullstrip --resume --epochs 3
    .venv/bin/python scripts/train_shipped_models.py --task liver --epochs 40 --device cuda

The shipped 1.0.0 weights are the first two lines (skull strip: 400 steps, then 300 more from
those weights with ``--resume``; liver: 150 steps); a GPU session should rather run one longer
stage (``--epochs 40 --device cuda``). ``--runs NAME`` trains single runs (side by side, one
thread each, on a 2-core CPU).

For every task it trains the leave-one-out (LOO) fold models first (each holds one real
labelled volume out; ``scripts/evaluate_shipped_models.py`` measures them on that volume), then
the shipped model, and writes:

* fold bundles to ``out/shipped_models/<task>/<run>/`` (git-ignored; needed by the evaluation);
* the shipped bundle to ``pocketseg_core/models/<name>/`` and its entry, with the sha256 of
  ``weights.pt``, to ``pocketseg_core/models/catalog.json``.

Which run is shipped (see ``RUNS``): ``skullstrip`` ships the fold trained WITHOUT the Swiss
head, so the Swiss head (the demo image) is a true held-out volume for the shipped weights;
``liver`` ships a model trained on all three labelled CTs (each LOO fold measures the recipe).

Method (documented in Resources/Models/*.md):

* skull strip: Pocket U-Net 3D (isotropic 2x2x2 pooling, 8 filters, instance norm) at 2 mm,
  MR z-score, 48^3 patches; training = the real full heads not held out + SynthStrip-style
  synthetic heads (Hoopes et al. 2022): skull-stripped brains pasted into random shells of
  CSF, skull, marrow, fat and skin made from the brain mask's distance map; heavy spatial and
  intensity augmentation.
* liver: Pocket U-Net 2D (PocketNet section 3, LiTS setup: axial slices, CT window
  [-100, 200] HU) at 2.5 x 2.5 mm in-plane, 3 mm between slices, 160 x 160 patches.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from pocketseg_core import io
from pocketseg_core.bundles import SHIPPED_CATALOG, BundleConfig, save_bundle, sha256_of, standard_label
from pocketseg_core.networks import create_network
from pocketseg_core.training.augment import build_augmentation
from pocketseg_core.training.losses import create_loss
from pocketseg_core.training.sampling import TrainingVolume, prepare_volume, sample_batch

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
RUNS_DIR = REPO_ROOT / "out" / "shipped_models"
MODELS_DIR = REPO_ROOT / "pocketseg_core" / "models"

# ----------------------------------------------------------------------------- the data

#: real full heads with brain masks: case id -> (image, mask) relative to the data folder
BRAIN_HEADS: dict[str, tuple[str, str]] = {
    "swiss": ("brain/swiss_atlas_t1.mha", "brain/swiss_atlas_brainmask.mha"),
    "robex": ("brain/robex_atlas_t1.nii.gz", "brain/robex_atlas_brainmask.nii.gz"),
    "mni152": ("brain/mni152_t1_2mm.nii.gz", "brain/mni152_t1_2mm_brainmask.nii.gz"),
}
#: skull-stripped brains used to synthesise heads: case id -> (image, mask or None = non-zero)
BRAIN_STRIPPED: dict[str, tuple[str, str | None]] = {
    "nfbs": ("brain/nfbs_A00028185_t1_brain.nii.gz", "brain/nfbs_A00028185_brainmask.nii.gz"),
    "brats": ("brain/brats2013_pat0005_t1c_brain.nii.gz", "brain/brats2013_pat0005_brainmask.nii.gz"),
    "mni2009a": ("brain/mni2009a_t1_brain.nii.gz", None),
}
#: labelled CTs: case id -> (image file or DICOM folder, label map, liver label value)
LIVER_CTS: dict[str, tuple[str, str, int]] = {
    "ts_small": ("liver/ts_abdomen_ct_small.nii.gz", "liver/ts_abdomen_ct_small_liver.nii.gz", 1),
    "ts_dicom": ("liver/ts_abdomen_ct_dicom", "liver/ts_abdomen_ct_dicom_labels.nii.gz", 5),
    "dcmqi": ("liver/dcmqi_ct_3slice", "liver/dcmqi_ct_3slice_liver.nrrd", 1),
}


@dataclass
class TaskRecipe:
    """Everything that defines one shipped model's training besides the runs."""

    task: str
    name: str
    title: str
    modality: str
    network: str
    network_args: dict[str, Any]
    spacing: tuple[float, float, float]
    window_mode: str
    window_size_zyx: tuple[int, int, int]
    patch_zyx: tuple[int, int, int]
    preprocessing: dict[str, Any]
    augmentation: list[dict[str, Any]]
    batch_size: int
    epochs: int
    steps_per_epoch: int
    lr: float
    foreground_fraction: float
    description: str
    #: run name -> held-out case ids (empty: trained on every case)
    runs: dict[str, list[str]] = field(default_factory=dict)
    shipped_run: str = ""
    version: str = "1.0.0"
    #: the bundle's mask clean-up (BundleConfig.postprocessing), chosen without the test images
    postprocessing: dict[str, Any] = field(default_factory=dict)


SKULLSTRIP = TaskRecipe(
    task="skullstrip",
    name="pocketnet-skullstrip",
    title="Brain extraction (skull strip), T1 MRI - Pocket U-Net 3D",
    modality="MR",
    network="pocket_unet3d",
    # isotropic pooling: at 2 mm a head is ~100 voxels along every axis (paper: (1,2,2) for slabs)
    network_args={"pool_size": [2, 2, 2], "init_filters": 8, "norm": "instance", "num_classes": 2},
    spacing=(2.0, 2.0, 2.0),
    window_mode="patch3d",
    window_size_zyx=(48, 48, 48),
    patch_zyx=(48, 48, 48),
    preprocessing={"kind": "mr_zscore"},
    augmentation=[
        {
            "name": "affine",
            "p": 0.8,
            "rotation_degrees": 20.0,
            "scale": [0.85, 1.2],
            "elastic_magnitude": 1.5,
        },
        {"name": "flip", "p": 0.5},
        {"name": "bias_field", "p": 0.5, "strength": 0.5},
        {"name": "gamma", "p": 0.3, "gamma": [0.7, 1.5]},
        {"name": "contrast", "p": 0.3, "factor": [0.7, 1.3]},
        {"name": "resolution", "p": 0.25, "factor": [1.0, 2.0]},
        {"name": "blur", "p": 0.2, "sigma": [0.3, 0.8]},
        {"name": "noise", "p": 0.3, "std": [0.0, 0.1]},
    ],
    batch_size=2,
    epochs=4,
    steps_per_epoch=100,
    lr=2e-3,
    foreground_fraction=0.6,
    description=(
        "Brain mask from a T1-weighted head MRI (whole head in). Trained on 2 real heads + "
        "SynthStrip-style synthetic heads with face, tongue, neck and spinal cord; research use "
        "only, not a clinical device."
    ),
    runs={"loo_swiss": ["swiss"], "loo_robex": ["robex"]},
    shipped_run="loo_swiss",
    version="1.2.0",
    # chosen on synthetic validation heads (scripts/validate_skullstrip.py), not on the real heads
    postprocessing={"cut_bridges_mm": 4.0},
)

LIVER = TaskRecipe(
    task="liver",
    name="pocketnet-liver",
    title="Liver, contrast CT - Pocket U-Net 2D",
    modality="CT",
    network="pocket_unet2d",
    network_args={"init_filters": 16, "norm": "instance", "num_classes": 2},
    spacing=(2.5, 2.5, 3.0),
    window_mode="slice2d",
    window_size_zyx=(1, 0, 0),
    patch_zyx=(1, 160, 160),
    preprocessing={"kind": "ct_window", "window": [-100, 200], "normalize": "unit"},
    # version 1.1: wider scaling and contrast, gamma and simulated coarser in-plane resolution,
    # for CTs unlike the two a fold trains on (the 3 mm CT, another contrast phase)
    augmentation=[
        {
            "name": "affine",
            "p": 0.7,
            "rotation_degrees": 15.0,
            "scale": [0.8, 1.25],
            "elastic_magnitude": 2.0,
        },
        {"name": "contrast", "p": 0.4, "factor": [0.75, 1.3]},
        {"name": "scale_shift", "p": 0.4},
        {"name": "gamma", "p": 0.3, "gamma": [0.75, 1.35]},
        {"name": "resolution", "p": 0.3, "factor": [1.0, 2.0]},
        {"name": "noise", "p": 0.3, "std": [0.0, 0.05]},
        {"name": "blur", "p": 0.3, "sigma": [0.3, 1.0]},
    ],
    batch_size=8,
    epochs=6,
    steps_per_epoch=50,
    lr=2e-3,
    foreground_fraction=0.7,
    description=(
        "Liver mask from an abdominal CT in HU. Trained on 3 small CTs (2 with labels predicted "
        "by TotalSegmentator); research use only, not a clinical device."
    ),
    runs={"loo_ts_small": ["ts_small"], "loo_ts_dicom": ["ts_dicom"], "loo_dcmqi": ["dcmqi"], "all": []},
    shipped_run="all",
    version="1.1.0",
    # liver references (LiTS, the manual dcmqi label) include the intrahepatic vessels
    postprocessing={"fill_holes": "slices"},
)

RECIPES = {"skullstrip": SKULLSTRIP, "liver": LIVER}


def load_liver_case(data: Path, case: str) -> tuple[sitk.Image, sitk.Image]:
    """CT and its 0/1 liver mask ON THE CT'S GRID (the TotalSegmentator DICOM labels are stored
    with a flipped y axis, so they are mapped through physical space, never array to array)."""
    image_path, label_path, value = LIVER_CTS[case]
    image = io.read_image(data / image_path)
    label = io.read_image(data / label_path)
    label = sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())
    mask = sitk.Cast(label == value, sitk.sitkUInt8)
    mask.CopyInformation(image)
    return image, mask


def load_brain_head(data: Path, case: str) -> tuple[sitk.Image, sitk.Image]:
    """A real head and its 0/1 brain mask on the head's grid."""
    image_path, mask_path = BRAIN_HEADS[case]
    image = io.read_image(data / image_path)
    mask = io.read_image(data / mask_path)
    mask = sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())
    mask = sitk.Cast(sitk.Cast(mask, sitk.sitkFloat32) >= 0.5, sitk.sitkUInt8)
    mask.CopyInformation(image)
    return image, mask


# ----------------------------------------------------------------------------- synthetic heads


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field ``shape`` (Gaussian-filtered white noise)."""
    noise = sitk.GetImageFromArray(rng.standard_normal(shape).astype(np.float32))
    smooth = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(noise, sigma))
    return (smooth - smooth.mean()) / max(float(smooth.std()), 1e-6)


def synthesize_head(
    brain: sitk.Image, mask: sitk.Image, rng: np.random.Generator, face_and_neck: int = 0
) -> tuple[sitk.Image, sitk.Image]:
    """A skull-stripped brain pasted into a random synthetic head shell (SynthStrip-style).

    ``brain``/``mask``: the stripped T1 and its 0/1 mask (same grid). Works at 1.5 mm: the
    brain is resampled there, padded with 30 mm around (60 mm below, for a neck-like block),
    and the shell is drawn from the signed distance to the brain (mm), warped by a smooth
    random field so layer thicknesses vary: CSF, skull (dark, with optional bright marrow),
    fat (bright), skin/muscle (grey), air. Intensities are relative to the brain's median and
    random per head; tissue texture, noise and a random gamma follow. Returns (image, mask),
    image float32, mask uint8, on the synthetic 1.5 mm grid.
    """
    spacing = 1.5
    brain = _resample(brain, spacing, sitk.sitkLinear)
    mask = _resample(sitk.Cast(mask, sitk.sitkFloat32), spacing, sitk.sitkLinear, reference=brain)
    brain_array = sitk.GetArrayFromImage(brain).astype(np.float32)
    mask_array = (sitk.GetArrayFromImage(mask) >= 0.5).astype(np.uint8)
    pad = 20  # voxels = 30 mm around; 40 more below (z index 0 is inferior in the LPS/RAS index frame)
    pad_width = ((pad + 40, pad), (pad, pad), (pad, pad))
    if face_and_neck:  # room for the neck below (120 mm) and the face in front (60 mm; y index 0 = anterior)
        pad_width = ((pad + 60, pad), (pad + 20, pad), (pad, pad))
    brain_array = np.pad(brain_array, pad_width)
    mask_array = np.pad(mask_array, pad_width)
    inside = brain_array[mask_array > 0]
    low, high = np.percentile(inside, [1, 99])
    brain_norm = np.clip((brain_array - low) / max(high - low, 1e-6), 0, 1.2) * 1.0 + 0.15
    mask_image = sitk.GetImageFromArray(mask_array)
    mask_image.SetSpacing((spacing,) * 3)
    distance = sitk.GetArrayFromImage(
        sitk.SignedMaurerDistanceMap(
            mask_image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
        )
    )
    distance = distance + 2.0 * _smooth_noise(rng, distance.shape, 6.0)  # irregular layer thickness (mm)
    csf = rng.uniform(1.0, 5.0)
    skull = csf + rng.uniform(3.0, 9.0)
    fat = skull + rng.uniform(2.0, 8.0)
    skin = fat + rng.uniform(1.5, 5.0)
    levels = {
        "csf": rng.uniform(0.02, 0.45),
        "skull": rng.uniform(0.0, 0.25),
        "marrow": rng.uniform(0.3, 1.0),
        "fat": rng.uniform(0.7, 1.6),
        "skin": rng.uniform(0.25, 0.8),
        "air": rng.uniform(0.0, 0.04),
    }
    outside = mask_array == 0
    head = np.full(distance.shape, levels["air"], dtype=np.float32)
    head[outside & (distance < skin)] = levels["skin"]
    head[outside & (distance < fat)] = levels["fat"]
    head[outside & (distance < skull)] = levels["skull"]
    if rng.random() < 0.5:  # diploe: bright marrow between the inner and outer tables
        middle = outside & (distance > csf + 0.3 * (skull - csf)) & (distance < skull - 0.3 * (skull - csf))
        head[middle] = levels["marrow"]
    head[outside & (distance < csf)] = levels["csf"]
    texture = 1.0 + 0.08 * _smooth_noise(rng, head.shape, 1.5)
    head = head * texture
    brain_gain = rng.uniform(0.8, 1.2)
    head[~outside] = brain_norm[~outside] * brain_gain
    if face_and_neck:
        head = add_face_neck_and_cord(
            head,
            mask_array,
            brain_norm * brain_gain,
            distance,
            skin,
            levels,
            rng,
            spacing,
            face_and_neck >= 2,
        )
    head = head + rng.uniform(0.0, 0.04) * rng.standard_normal(head.shape).astype(np.float32)
    head = np.clip(head, 0, None) ** rng.uniform(0.7, 1.4)
    image = sitk.GetImageFromArray(head.astype(np.float32))
    image.SetSpacing((spacing,) * 3)
    label = sitk.GetImageFromArray(mask_array)
    label.CopyInformation(image)
    return image, label


def add_face_neck_and_cord(
    head: np.ndarray,
    mask: np.ndarray,
    brain_scaled: np.ndarray,
    distance: np.ndarray,
    skin: float,
    levels: dict[str, float],
    rng: np.random.Generator,
    spacing: float,
    tongue: bool = False,
) -> np.ndarray:
    """Neck, face/tongue and a spinal cord around a synthetic head shell (all label 0).

    Why: the shells alone have nothing below or in front of the brain, so the network never
    learnt where the brain ends inferiorly and the masks of real heads ran on from the brainstem
    into the cord, tongue, pharynx and neck muscles (issue 7; RVD +0.25). Here a random elliptic
    neck below the skull base and a face/tongue block in front of and below the brain are
    filled with a smooth random mix of muscle, fat, glandular tissue and dark air/bone (random
    intensities), wrapped in fat and skin, and a spinal cord of brain-like intensity (with a CSF
    sleeve) continues the lowest brain slice downwards to the bottom of the volume.
    ``head``/``mask``/``brain_scaled``/``distance``: (Z, Y, X) arrays on the padded 1.5 mm grid
    (z index 0 inferior, y index 0 anterior); ``distance`` in mm from the brain surface (warped);
    ``skin``: outer shell radius (mm). ``tongue``: also a large homogeneous ellipsoid of
    brain-like intensity below the front of the brain (the real tongue is what the first
    fine-tune still labelled as brain). Returns the new ``head`` (Z, Y, X) float32.
    """
    depth, rows, cols = head.shape
    zz, yy, xx = np.nonzero(mask)
    z_low, z_high = int(zz.min()), int(zz.max())
    y_front, y_back, x_mid = int(yy.min()), int(yy.max()), float(xx.mean())
    half_width = (xx.max() - xx.min()) / 2.0
    brain_depth = y_back - y_front
    z_idx, y_idx, x_idx = np.meshgrid(np.arange(depth), np.arange(rows), np.arange(cols), indexing="ij")
    outside_shell = (mask == 0) & (distance >= skin)

    # tissue mix: smooth random field cut into 4 classes with random intensities
    classes = np.digitize(
        _smooth_noise(rng, head.shape, rng.uniform(2.0, 5.0)), np.sort(rng.normal([-0.8, 0.0, 0.8], 0.25))
    )
    tissue = np.array(
        [
            rng.uniform(0.0, 0.2),  # air/bone (pharynx, sinuses, vertebrae)
            rng.uniform(0.25, 0.7),  # muscle (tongue, neck muscles)
            rng.uniform(0.4, 0.95),  # glandular / mixed
            rng.uniform(0.7, 1.6),  # fat
        ],
        dtype=np.float32,
    )[classes]
    tissue = tissue * (1.0 + 0.08 * _smooth_noise(rng, head.shape, 1.5))

    # neck: elliptic cylinder below the skull base, centred a little in front of the brainstem
    z_base = z_low + rng.uniform(0.1, 0.35) * (z_high - z_low)
    neck_y = y_front + rng.uniform(0.4, 0.6) * brain_depth
    neck_ry = rng.uniform(0.3, 0.5) * brain_depth
    neck_rx = rng.uniform(0.5, 0.8) * half_width
    wobble = 1.0 + 0.1 * _smooth_noise(rng, head.shape, 8.0)
    neck = ((((y_idx - neck_y) / neck_ry) ** 2 + ((x_idx - x_mid) / neck_rx) ** 2) * wobble < 1.0) & (
        z_idx < z_base
    )
    # face/tongue: box in front of the lower brain and below it, rounded by the same wobble
    face_top = z_low + rng.uniform(0.3, 0.6) * (z_high - z_low)
    face_bottom = z_low - rng.uniform(40.0, 90.0) / spacing
    face_front = y_front - rng.uniform(15.0, 45.0) / spacing
    face_back = y_front + rng.uniform(0.3, 0.55) * brain_depth
    face_rx = rng.uniform(0.5, 0.85) * half_width
    face = (
        (z_idx < face_top)
        & (z_idx > face_bottom)
        & (y_idx > face_front)
        & (y_idx < face_back)
        & ((np.abs(x_idx - x_mid) / face_rx) * wobble < 1.0)
    )
    body = (neck | face) & outside_shell
    # fat + skin wrapping: the outer few mm of the body
    body_image = sitk.GetImageFromArray(body.astype(np.uint8))
    body_image.SetSpacing((spacing,) * 3)
    depth_in = sitk.GetArrayFromImage(
        sitk.SignedMaurerDistanceMap(
            body_image, insideIsPositive=True, squaredDistance=False, useImageSpacing=True
        )
    )
    result = head.copy()
    result[body] = tissue[body]
    skin_mm, fat_mm = rng.uniform(1.5, 4.0), rng.uniform(2.0, 8.0)
    result[body & (depth_in < skin_mm + fat_mm)] = levels["fat"]
    result[body & (depth_in < skin_mm)] = levels["skin"]
    if tongue:  # homogeneous muscle mass, grey-matter-like T1, 25-60 mm below/behind the face
        brain_median = float(np.median(brain_scaled[mask > 0]))
        centre = (
            z_low - rng.uniform(0.0, 30.0) / spacing,
            y_front + rng.uniform(0.05, 0.4) * brain_depth,
            x_mid,
        )
        radii = [
            rng.uniform(12.0, 25.0) / spacing,
            rng.uniform(20.0, 35.0) / spacing,
            rng.uniform(15.0, 28.0) / spacing,
        ]
        ellipsoid = ((z_idx - centre[0]) / radii[0]) ** 2 + ((y_idx - centre[1]) / radii[1]) ** 2
        ellipsoid = (ellipsoid + ((x_idx - centre[2]) / radii[2]) ** 2) * wobble < 1.0
        mass = ellipsoid & body & (depth_in >= skin_mm + fat_mm)
        level = brain_median * rng.uniform(0.6, 1.1)
        result[mass] = level * (1.0 + 0.05 * _smooth_noise(rng, head.shape, 2.0))[mass]

    # spinal cord: continues the lowest brain slice downwards, slight random A-P / L-R drift
    low_slice = mask[z_low : z_low + 3].max(axis=0)
    ly, lx = np.nonzero(low_slice)
    cy, cx = float(ly.mean()), float(lx.mean())
    radius = np.clip(np.sqrt(low_slice.sum() / np.pi) * spacing, 4.0, 7.0) * rng.uniform(0.8, 1.1)
    sleeve = radius + rng.uniform(1.0, 3.0)
    cord_level = float(np.median(brain_scaled[z_low : z_low + 3][mask[z_low : z_low + 3] > 0])) * rng.uniform(
        0.85, 1.15
    )
    drift_y, drift_x = rng.uniform(-0.25, 0.25), rng.uniform(-0.08, 0.08)
    z_top = z_low + 2  # starts inside the lowest brain slices so it touches the brainstem
    along = (z_top - z_idx) * spacing  # mm below the cord's top
    radial = np.hypot(
        (y_idx - cy - drift_y * along / spacing) * spacing, (x_idx - cx - drift_x * along / spacing) * spacing
    )
    below = (z_idx <= z_top) & (mask == 0)
    result[below & (radial < sleeve)] = levels["csf"]
    cord = below & (radial < radius)
    result[cord] = cord_level * (1.0 + 0.05 * _smooth_noise(rng, head.shape, 1.5))[cord]
    # vertebral ring (dark bone, optional bright marrow) around the sleeve in the neck
    ring = below & (radial >= sleeve) & (radial < sleeve + rng.uniform(3.0, 8.0)) & (z_idx < z_base)
    result[ring] = levels["marrow"] if rng.random() < 0.5 else levels["skull"]
    return result.astype(np.float32)


def _resample(
    image: sitk.Image, spacing: float, interpolator: int, reference: sitk.Image | None = None
) -> sitk.Image:
    """``image`` in the LPS index frame on an isotropic ``spacing`` grid (or on ``reference``)."""
    image = sitk.DICOMOrient(image, "LPS")
    framed = sitk.Image(image)
    framed.SetOrigin((0.0, 0.0, 0.0))
    framed.SetDirection(np.eye(3).ravel().tolist())
    if reference is None:
        size = [
            max(1, round(n * s / spacing)) for n, s in zip(framed.GetSize(), framed.GetSpacing(), strict=True)
        ]
        reference = sitk.Image(size, sitk.sitkFloat32)
        reference.SetSpacing((spacing,) * 3)
    return sitk.Resample(sitk.Cast(framed, sitk.sitkFloat32), reference, sitk.Transform(), interpolator, 0.0)


def load_stripped(data: Path, case: str) -> tuple[sitk.Image, sitk.Image]:
    image_path, mask_path = BRAIN_STRIPPED[case]
    image = sitk.Cast(io.read_image(data / image_path), sitk.sitkFloat32)
    if mask_path is None:
        mask = sitk.Cast(image > 0, sitk.sitkUInt8)  # mni2009a: brain = non-zero
    else:
        mask = io.read_image(data / mask_path)
        mask = sitk.Resample(mask, image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        mask = sitk.Cast(mask >= 0.5, sitk.sitkUInt8)  # NFBS mask has fractional voxels
    mask.CopyInformation(image)
    return image, mask


# ----------------------------------------------------------------------------- training


def machine_description(device: torch.device) -> dict[str, Any]:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def build_volumes(
    recipe: TaskRecipe,
    data: Path,
    held_out: list[str],
    seed: int,
    synthetic_per_brain: int,
    face_and_neck: int = 0,
):
    """Training volumes on the working grid (held-out cases and their copies never enter)."""
    volumes: list[TrainingVolume] = []
    files: list[str] = []
    if recipe.task == "skullstrip":
        for case, (image_path, mask_path) in BRAIN_HEADS.items():
            if case in held_out:
                continue
            image, mask = load_brain_head(data, case)
            volumes.append(prepare_volume(case, image, mask, recipe.spacing, "LPS", recipe.preprocessing))
            files += [image_path, mask_path]
        real_count = len(volumes)
        rng = np.random.default_rng(seed)
        synthetic: list[TrainingVolume] = []
        for case, (image_path, mask_path) in BRAIN_STRIPPED.items():
            brain, mask = load_stripped(data, case)
            files += [image_path] + ([mask_path] if mask_path else [])
            for copy in range(synthetic_per_brain):
                head, label = synthesize_head(brain, mask, rng, face_and_neck=face_and_neck)
                synthetic.append(
                    prepare_volume(
                        f"synth_{case}_{copy}", head, label, recipe.spacing, "LPS", recipe.preprocessing
                    )
                )
        # half the patches from real heads, half from synthetic ones
        repeat = max(1, round(len(synthetic) / max(real_count, 1)))
        volumes = volumes * repeat + synthetic
    else:
        for case, (image_path, label_path, _value) in LIVER_CTS.items():
            if case in held_out:
                continue
            image, mask = load_liver_case(data, case)
            volumes.append(prepare_volume(case, image, mask, recipe.spacing, "LPS", recipe.preprocessing))
            files += [image_path, label_path]
    return volumes, files


def train_run(
    recipe: TaskRecipe,
    run: str,
    data: Path,
    device: torch.device,
    seed: int,
    epochs: int,
    steps_per_epoch: int,
    synthetic_per_brain: int,
    out_dir: Path,
    resume: bool = False,
    init_from: Path | None = None,
    face_and_neck: int = 0,
    lr: float | None = None,
) -> Path:
    """Train one run and save its bundle to ``out_dir`` after every epoch; returns the folder.

    ``init_from``: a bundle folder to warm-start from (its weights; new lr cycle, new patch seed;
    its training record is kept under ``continued_from``). ``face_and_neck``: synthetic heads with
    a neck, face and spinal cord (:func:`add_face_neck_and_cord`; 2: and a tongue). ``lr``: overrides the recipe's.
    """
    held_out = recipe.runs[run]
    started = time.perf_counter()
    torch.manual_seed(seed)
    volumes, files = build_volumes(recipe, data, held_out, seed, synthetic_per_brain, face_and_neck)
    print(f"[{recipe.task}/{run}] {len(volumes)} training volumes, held out {held_out or 'none'}", flush=True)
    network = create_network(recipe.network, **recipe.network_args).to(device)
    previous = None
    if resume:  # continue from the run's saved weights with a new warm-up + cosine cycle
        from pocketseg_core.bundles import load_bundle

        saved = load_bundle(out_dir)
        network.load_state_dict(saved.state_dict)
        previous = saved.config.training
        seed = seed + 1000 * (1 + len(_stages(previous)))  # new patches, still reproducible
    elif init_from is not None:  # warm start from another run's bundle (same held-out case!)
        from pocketseg_core.bundles import load_bundle

        saved = load_bundle(init_from)
        if saved.config.training and saved.config.training.get("held_out") != held_out:
            raise ValueError(
                f"{init_from} held out {saved.config.training.get('held_out')}, run {run} holds out {held_out}"
            )
        network.load_state_dict(saved.state_dict)
        previous = dict(saved.config.training or {}, init_from=str(init_from))
        seed = seed + 1000 * (1 + len(_stages(previous)))
    lr = lr or recipe.lr
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    total = epochs * steps_per_epoch
    warmup = max(1, total // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total)),
    )
    loss_function = create_loss("dice_l2_ce")
    augment = build_augmentation(recipe.augmentation)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    two_d = recipe.window_mode == "slice2d"
    history = []
    for epoch in range(epochs):
        network.train()
        losses = []
        tick = time.perf_counter()
        for _ in range(steps_per_epoch):
            image, label = sample_batch(
                volumes, recipe.batch_size, recipe.patch_zyx, recipe.foreground_fraction, rng
            )
            if two_d:  # (B, 1, 1, H, W) -> (B, 1, H, W)
                image, label = image[:, :, 0], label[:, 0]
            image, label = augment(image, label, generator)
            image, label = image.to(device), label.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_function(network(image), label)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        seconds = time.perf_counter() - tick
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": round(seconds, 1)})
        print(
            f"[{recipe.task}/{run}] epoch {epoch + 1}/{epochs} loss {np.mean(losses):.4f} ({seconds:.0f} s)",
            flush=True,
        )
        training = {
            "script": "scripts/train_shipped_models.py",
            "run": run,
            "held_out": held_out,
            "files": files,
            "synthetic_heads_per_brain": synthetic_per_brain if recipe.task == "skullstrip" else 0,
            "synthetic_face_neck_cord": int(face_and_neck) if recipe.task == "skullstrip" else 0,
            "seed": seed,
            "epochs_done": epoch + 1,
            "epochs": epochs,
            "steps_per_epoch": steps_per_epoch,
            "batch_size": recipe.batch_size,
            "patch_zyx": list(recipe.patch_zyx),
            "optimizer": {"name": "adam", "lr": lr, "schedule": "warmup + cosine"},
            "loss": "dice_l2_ce",
            "augmentation": recipe.augmentation,
            "history": history,
            "continued_from": previous,
            "seconds": round(time.perf_counter() - started, 1),
            "machine": machine_description(device),
        }
        save_bundle(out_dir, bundle_config(recipe, training), network.state_dict())
    return out_dir


def _stages(training: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The earlier training stages of a resumed run (oldest first)."""
    stages = []
    while training:
        stages.insert(0, training)
        training = training.get("continued_from")
    return stages


def bundle_config(recipe: TaskRecipe, training: dict[str, Any]) -> BundleConfig:
    return BundleConfig(
        name=recipe.name,
        network=recipe.network,
        modality=recipe.modality,
        labels=[standard_label(recipe.task)],
        spacing=recipe.spacing,
        window_mode=recipe.window_mode,
        window_size_zyx=recipe.window_size_zyx,
        network_args=dict(recipe.network_args),
        preprocessing=dict(recipe.preprocessing),
        orientation="LPS",
        postprocessing=dict(recipe.postprocessing),
        title=recipe.title,
        version=recipe.version,
        description=recipe.description,
        task=recipe.task,
        training=training,
    )


def recipe_config(recipe: TaskRecipe, config: BundleConfig) -> BundleConfig:
    """``config`` of a trained run with the recipe's current name, version, description and
    clean-up (a run trained before the clean-up was chosen gets it; its weights are untouched)."""
    return dataclasses.replace(
        config,
        postprocessing=dict(recipe.postprocessing),
        version=recipe.version,
        description=recipe.description,
        title=recipe.title,
    )


def update_catalog(recipe: TaskRecipe, bundle_dir: Path) -> None:
    """Add or replace the task's entry in the shipped catalog (atomic write)."""
    catalog = json.loads(SHIPPED_CATALOG.read_text(encoding="utf-8"))
    entries = [
        e for e in catalog.get("bundles", []) if e.get("name") != recipe.name and e.get("task") != recipe.task
    ]
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
    catalog["bundles"] = sorted(entries, key=lambda e: e["task"])
    io.write_text_atomic(SHIPPED_CATALOG, json.dumps(catalog, indent=2) + "\n")


def ship(recipe: TaskRecipe, run_dir: Path) -> Path:
    """Copy a run's bundle into the package (re-saved atomically) and register it in the catalog."""
    from pocketseg_core.bundles import load_bundle

    bundle = load_bundle(run_dir)
    target = save_bundle(MODELS_DIR / recipe.task, recipe_config(recipe, bundle.config), bundle.state_dict)
    update_catalog(recipe, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="the sample data folder (../shared/data)"
    )
    parser.add_argument("--task", choices=["skullstrip", "liver", "all"], default="all")
    parser.add_argument("--order", default="skullstrip,liver", help=argparse.SUPPRESS)
    parser.add_argument(
        "--runs", nargs="*", default=None, help="only these runs (default: every run of the task)"
    )
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the recipe's)")
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument(
        "--synthetic-per-brain", type=int, default=4, help="synthetic heads per stripped brain"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: run folds side by side with --runs)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--resume", action="store_true", help="continue each run from its saved weights (new lr cycle)"
    )
    parser.add_argument("--no-ship", action="store_true", help="train the runs but leave the package alone")
    parser.add_argument(
        "--out-dir", type=Path, default=RUNS_DIR, help="folder of the run bundles (<out-dir>/<task>/<run>/)"
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="warm-start each run from <init-from>/<task>/<run>/ (e.g. out/shipped_models)",
    )
    parser.add_argument(
        "--face-neck",
        dest="face_neck",
        action="store_const",
        const=1,
        default=0,
        help="synthetic heads with a neck, face and spinal cord",
    )
    parser.add_argument(
        "--face-neck-tongue",
        dest="face_neck",
        action="store_const",
        const=2,
        help="as --face-neck, plus a homogeneous tongue-like mass",
    )
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the recipe's)")
    parser.add_argument(
        "--ship-only",
        action="store_true",
        help="train nothing: ship the task's shipped run from --out-dir (after evaluating it)",
    )
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: sample data folder {args.data} not found; pass --data", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tasks = args.order.split(",") if args.task == "all" else [args.task]
    for task in tasks:
        recipe = RECIPES[task]
        if args.ship_only:
            run_dir = args.out_dir / task / recipe.shipped_run
            if not (run_dir / "bundle.json").is_file():
                print(f"error: no trained run at {run_dir}; train it first", file=sys.stderr)
                return 2
            target = ship(recipe, run_dir)
            print(f"[{task}] shipped {run_dir} -> {target}", flush=True)
            continue
        runs = args.runs or list(recipe.runs)
        for run in runs:
            if run not in recipe.runs:
                print(f"error: {task} has no run {run!r}; runs: {', '.join(recipe.runs)}", file=sys.stderr)
                return 2
            run_dir = train_run(
                recipe,
                run,
                args.data,
                device,
                args.seed,
                args.epochs or recipe.epochs,
                args.steps_per_epoch or recipe.steps_per_epoch,
                args.synthetic_per_brain,
                args.out_dir / task / run,
                resume=args.resume,
                init_from=args.init_from / task / run if args.init_from else None,
                face_and_neck=args.face_neck,
                lr=args.lr,
            )
            if run == recipe.shipped_run and not args.no_ship:
                target = ship(recipe, run_dir)
                print(
                    f"[{task}] shipped {run} -> {target} ({(target / 'weights.pt').stat().st_size / 1e3:.0f} kB)",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
