"""Synthetic training images: SynthStrip-style heads around skull-stripped brains.

Hoopes et al., "SynthStrip: skull-stripping for any brain image", NeuroImage 2022: a brain
without its head is wrapped in a random shell of CSF, skull, marrow, fat and skin drawn from the
brain mask's distance map, so that a network sees many heads for every labelled brain. Issue 7
added a neck, face, tongue and spinal cord below and in front of the brain (all background),
the structures the first shipped skull strip mistook for brain.

Everything is drawn from the ``numpy.random.Generator`` passed in: the same generator state
gives the same head, voxel for voxel (the shipped recipes rely on it).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

#: grid of the synthetic heads (mm, isotropic)
SYNTHETIC_SPACING = 1.5


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field ``shape`` (Gaussian-filtered white noise)."""
    noise = sitk.GetImageFromArray(rng.standard_normal(shape).astype(np.float32))
    smooth = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(noise, sigma))
    return (smooth - smooth.mean()) / max(float(smooth.std()), 1e-6)


def shell_radii(rng: np.random.Generator, thin_skull: float = 0.0) -> tuple[float, float, float, float]:
    """Outer radii (mm from the brain surface) of a synthetic head's CSF, skull, fat and skin layers.

    CSF 1-5 mm, skull 3-9 mm, fat 2-8 mm, skin 1.5-5 mm thick; with probability ``thin_skull``
    CSF 2-8 mm and skull 1-3 mm (see :func:`synthesize_head`). ``thin_skull`` 0 draws no extra
    random number.
    """
    csf = rng.uniform(1.0, 5.0)
    skull = csf + rng.uniform(3.0, 9.0)
    if thin_skull > 0 and rng.random() < thin_skull:
        csf = rng.uniform(2.0, 8.0)
        skull = csf + rng.uniform(1.0, 3.0)
    fat = skull + rng.uniform(2.0, 8.0)
    skin = fat + rng.uniform(1.5, 5.0)
    return float(csf), float(skull), float(fat), float(skin)


def synthesize_head(
    brain: sitk.Image,
    mask: sitk.Image,
    rng: np.random.Generator,
    face_and_neck: int = 0,
    brain_contrast: float = 0.0,
    csf_in_mask: float = 0.0,
    thin_skull: float = 0.0,
    scalp_contrast: float = 0.0,
) -> tuple[sitk.Image, sitk.Image]:
    """A skull-stripped brain pasted into a random synthetic head shell (SynthStrip-style).

    ``brain``/``mask``: the stripped T1 and its 0/1 mask (same grid). Works at 1.5 mm: the
    brain is resampled there, padded with 30 mm around (90 mm below, for a neck-like block),
    and the shell is drawn from the signed distance to the brain (mm), warped by a smooth
    random field so layer thicknesses vary: CSF, skull (dark, with optional bright marrow),
    fat (bright), skin/muscle (grey), air. Intensities are relative to the brain's median and
    random per head; tissue texture, noise and a random gamma follow. Returns (image, mask),
    image float32, mask uint8, on the synthetic 1.5 mm grid.

    ``brain_contrast``: the probability that the brain's own contrast is randomised too (as
    SynthStrip's random intensity per tissue): its intensities go through a random piecewise
    linear curve (5 knots, not necessarily increasing: grey and white matter may swap or merge)
    and a smooth multiplicative field inside the brain (a dark or bright centre). 0 (default)
    draws no extra random numbers, so heads made without it are unchanged.

    ``csf_in_mask``: the probability that the CSF layer between the brain and the skull is part
    of the returned mask (the mask then ends at the inner table of the skull, where deepbet's
    and HD-BET's masks end on real heads; without it the mask hugs the source's brain surface,
    and a network trained on it leaves out a wide CSF space over the convexity). 0 (default) draws
    no extra random numbers.

    ``thin_skull``: the probability that the skull is 1-3 mm thick instead of 3-9 mm (and the CSF
    layer 2-8 mm), as a natively 2 mm scan of an older head shows it: at the vertex a dark CSF
    space runs straight into the bright scalp, with no dark bone voxel between them. 0 (default)
    draws no extra random numbers.

    ``scalp_contrast``: the probability that the scalp's fat is 0.2-2.8 times the brain's upper
    intensities and its skin 0.1-1.5 times (instead of 0.7-1.6 and 0.25-0.8): a fat-suppressed
    scalp as dark as muscle, or one 2-3 times as bright as the brain under a surface coil (which
    also moves the brain in the foreground z-score). 0 (default) draws no extra random numbers.
    """
    spacing = SYNTHETIC_SPACING
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
    if brain_contrast > 0 and rng.random() < brain_contrast:
        brain_norm = _randomise_brain_contrast(brain_norm, mask_array > 0, rng)
    mask_image = sitk.GetImageFromArray(mask_array)
    mask_image.SetSpacing((spacing,) * 3)
    distance = sitk.GetArrayFromImage(
        sitk.SignedMaurerDistanceMap(
            mask_image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
        )
    )
    distance = distance + 2.0 * _smooth_noise(rng, distance.shape, 6.0)  # irregular layer thickness (mm)
    csf, skull, fat, skin = shell_radii(rng, thin_skull)
    levels = {
        "csf": rng.uniform(0.02, 0.45),
        "skull": rng.uniform(0.0, 0.25),
        "marrow": rng.uniform(0.3, 1.0),
        "fat": rng.uniform(0.7, 1.6),
        "skin": rng.uniform(0.25, 0.8),
        "air": rng.uniform(0.0, 0.04),
    }
    if scalp_contrast > 0 and rng.random() < scalp_contrast:
        levels["fat"], levels["skin"] = rng.uniform(0.2, 2.8), rng.uniform(0.1, 1.5)
    outside = mask_array == 0
    csf_layer = outside & (distance < csf)
    head = np.full(distance.shape, levels["air"], dtype=np.float32)
    head[outside & (distance < skin)] = levels["skin"]
    head[outside & (distance < fat)] = levels["fat"]
    head[outside & (distance < skull)] = levels["skull"]
    if rng.random() < 0.5:  # diploe: bright marrow between the inner and outer tables
        middle = outside & (distance > csf + 0.3 * (skull - csf)) & (distance < skull - 0.3 * (skull - csf))
        head[middle] = levels["marrow"]
    head[csf_layer] = levels["csf"]
    texture = 1.0 + 0.08 * _smooth_noise(rng, head.shape, 1.5)
    head = head * texture
    brain_gain = rng.uniform(0.8, 1.2)
    head[~outside] = brain_norm[~outside] * brain_gain
    if face_and_neck:
        shell = head  # add_face_neck_and_cord paints a copy
        head = add_face_neck_and_cord(
            shell,
            mask_array,
            brain_norm * brain_gain,
            distance,
            skin,
            levels,
            rng,
            spacing,
            face_and_neck >= 2,
        )
        csf_layer &= head == shell  # where the neck, face or cord painted over it, it is not CSF
    head = head + rng.uniform(0.0, 0.04) * rng.standard_normal(head.shape).astype(np.float32)
    head = np.clip(head, 0, None) ** rng.uniform(0.7, 1.4)
    if csf_in_mask > 0 and rng.random() < csf_in_mask:
        mask_array = (mask_array | csf_layer).astype(np.uint8)
    image = sitk.GetImageFromArray(head.astype(np.float32))
    image.SetSpacing((spacing,) * 3)
    label = sitk.GetImageFromArray(mask_array)
    label.CopyInformation(image)
    return image, label


def _randomise_brain_contrast(
    brain_norm: np.ndarray, inside: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """The brain's normalised intensities (0.15-1.35) through a random 5-knot curve, times a smooth
    random field inside the brain; outside the brain unchanged."""
    knots = np.linspace(0.15, 1.35, 5)
    curve = rng.uniform(0.2, 1.3, size=5)
    field = np.exp(rng.uniform(0.1, 0.4) * _smooth_noise(rng, brain_norm.shape, 12.0))
    remapped = np.interp(brain_norm, knots, curve).astype(np.float32) * field
    return np.where(inside, remapped, brain_norm).astype(np.float32)


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
