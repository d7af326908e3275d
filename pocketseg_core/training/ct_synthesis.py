"""Synthetic abdominal CTs from label maps (SynthSeg-style), for training liver models.

Billot et al., "SynthSeg: segmentation of brain MRI scans of any contrast and resolution without
retraining", Medical Image Analysis 2023: a label map is deformed at random and every structure
gets its own random intensity, so a network sees many images for every labelled one. Here the
intensities are not arbitrary but drawn from realistic Hounsfield ranges of a CT phase (plain or
portal venous), because a CT model reads HU through a fixed window.

One sample (:func:`synthesize_ct`), all from the ``numpy.random.Generator`` passed in (the same
state gives the same sample, voxel for voxel):

1. tissue classes: every structure of the label map (TotalSegmentator v2 values:
   :data:`TOTALSEGMENTATOR_V2_TISSUES`; or a liver-only mask) -> a tissue of :data:`HU_RANGES`;
   unlabelled voxels get a class from the real CT's HU (air, fat, soft tissue, bright soft tissue, bone:
   :data:`CT_CLASS_EDGES_HU`) or, without a CT, a generic body (fat with a muscle wall, air out);
   optionally (``chest``, :func:`add_chest`) a chest above the liver: lungs inside the body wall
   and a heart (blood pool in a ``myocardium`` wall) on the dome, labelled background; and
   (``kidney``, :func:`add_kidney`) a right kidney against the liver's lower tip, background;
2. a random affine (rotation, scaling, shift) and elastic deformation of the class map (nearest
   neighbour): the liver label and the liver voxels come from the same deformed map, so they
   are aligned exactly;
3. inside the liver: a random vessel network (hepatic/portal veins: tubes where two smooth
   random fields are both near zero) and 0-4 lesions (hypodense or hyperdense, irregular
   ellipsoids, cut to the liver); both keep the liver label, as in LiTS (tumours belong to the
   liver);
4. intensities: one mean per tissue drawn from its phase's range, a smooth texture, partial
   volume of a slice thickness drawn in 0.7-5 mm (a Gaussian along z), in-plane blur, noise.

Hounsfield ranges of the structure means (:data:`HU_RANGES`), plain / portal venous (~70 s):

===============  ==============  ===============  ==============================================
tissue           plain (HU)      portal (HU)      source / note
===============  ==============  ===============  ==============================================
liver            45 .. 70        95 .. 140        55-65 unenhanced, 100-130 portal venous [1,2];
                                                  widened for mild steatosis and calibration
spleen           40 .. 55        105 .. 140       spleen ~45 unenhanced, ~120 portal [1,2]
kidney           25 .. 40        140 .. 200       cortex 30-35 unenhanced; nephrographic [2]
                                                  (a recipe may widen it: ``hu_ranges``)
blood (vessels)  35 .. 55        130 .. 200       unenhanced blood 40-50; portal vein/IVC [2,3]
pancreas         35 .. 50        80 .. 120        [2]
adrenal          15 .. 40        50 .. 90         [2]
bowel            10 .. 45        40 .. 100        wall + fluid content; gas mixed in separately
bile / fluid     0 .. 20         0 .. 25          gallbladder, cysts: water density [1]
urine            0 .. 20         0 .. 30          bladder
muscle           40 .. 55        50 .. 70         skeletal muscle ~45-50 [1]
soft tissue      25 .. 50        40 .. 80         other organs, unlabelled soft tissue
soft, bright     30 .. 60        90 .. 200        unlabelled voxels >= 90 HU on the real CT
                                                  (heart, blood pool, kidney, spleen: enhancing)
spinal cord      20 .. 40        20 .. 45
cartilage        70 .. 150       70 .. 150        costal cartilage, partly calcified
bone             200 .. 500      200 .. 500       vertebra/rib mean at 2-3 mm (cancellous 150-400,
                                                  cortical 500-1200) [1]
myocardium       35 .. 55        70 .. 120        heart wall of the synthetic chest (enhancing
                                                  muscle); its blood pool is ``blood``
renal medulla    25 .. 40        70 .. 130        inner part of a synthetic kidney: darker
                                                  than the cortex until the contrast reaches it [2]
fat              -110 .. -60     -110 .. -60      -100 .. -50 [1]
lung             -900 .. -750    -900 .. -750     aerated lung [1]
air              -1010 .. -970   -1010 .. -970    outside the body, bowel gas, trachea [1]
===============  ==============  ===============  ==============================================

Lesions (inside the liver): hypodense = liver - 15..50 HU plain, - 30..90 HU portal (metastases,
cysts, hypovascular tumours); hyperdense = liver + 20..60 HU (hypervascular tumours,
haemangioma fill-in) [2]. Liver vessels: liver - 10..25 HU plain (unenhanced blood is darker than
liver), the phase's blood value portal.

[1] Hounsfield-unit tables in Radiopaedia, "Hounsfield unit" (radiopaedia.org/articles/hounsfield-unit);
[2] Bae KT, "Intravenous contrast medium administration and scan timing at CT", Radiology 2010;
    256(1):32-61 (enhancement of liver, spleen, kidney, vessels by phase);
[3] Lamba R et al., "CT Hounsfield numbers of soft tissues on unenhanced abdominal CT scans",
    Abdominal Imaging 2014; 39:763-769.

The trainer names this synthesis in a recipe through :data:`CT_SYNTHESIS_KINDS` (``"ct_from_label_maps"``:
:func:`synthesize_ct_image`, which works on SimpleITK images with their geometry).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from pocketseg_core.postprocessing import nonzero_extent

#: tissue classes (uint8 values of the class map)
TISSUES = (
    "air",
    "lung",
    "fat",
    "muscle",
    "soft",
    "soft_bright",
    "liver",
    "spleen",
    "kidney",
    "blood",
    "pancreas",
    "adrenal",
    "bowel",
    "fluid",
    "urine",
    "spinal_cord",
    "cartilage",
    "bone",
    # inside the liver only (added after the deformation)
    "liver_vessel",
    "lesion_hypo",
    "lesion_hyper",
    # the synthetic chest's heart wall (add_chest)
    "myocardium",
    # the synthetic kidney's inner part (add_kidney)
    "renal_medulla",
)
TISSUE = {name: index for index, name in enumerate(TISSUES)}
#: tissues that carry the liver label
LIVER_TISSUES = ("liver", "liver_vessel", "lesion_hypo", "lesion_hyper")
_LIVER_TISSUE_VALUES = tuple(TISSUE[t] for t in LIVER_TISSUES)
PHASES = ("plain", "portal")

#: (low, high) of a structure's mean HU per phase (see the module docstring's table)
HU_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "plain": {
        "air": (-1010, -970),
        "lung": (-900, -750),
        "fat": (-110, -60),
        "muscle": (40, 55),
        "soft": (25, 50),
        "soft_bright": (30, 60),
        "liver": (45, 70),
        "spleen": (40, 55),
        "kidney": (25, 40),
        "blood": (35, 55),
        "pancreas": (35, 50),
        "adrenal": (15, 40),
        "bowel": (10, 45),
        "fluid": (0, 20),
        "urine": (0, 20),
        "spinal_cord": (20, 40),
        "cartilage": (70, 150),
        "bone": (200, 500),
        "myocardium": (35, 55),
        "renal_medulla": (25, 40),
    },
    "portal": {
        "air": (-1010, -970),
        "lung": (-900, -750),
        "fat": (-110, -60),
        "muscle": (50, 70),
        "soft": (40, 80),
        "soft_bright": (90, 200),
        "liver": (95, 140),
        "spleen": (105, 140),
        "kidney": (140, 200),
        "blood": (130, 200),
        "pancreas": (80, 120),
        "adrenal": (50, 90),
        "bowel": (40, 100),
        "fluid": (0, 25),
        "urine": (0, 30),
        "spinal_cord": (20, 45),
        "cartilage": (70, 150),
        "bone": (200, 500),
        "myocardium": (70, 120),
        "renal_medulla": (70, 130),
    },
}
#: lesion contrast to the liver (HU), per phase and kind
LESION_CONTRAST_HU = {
    "plain": {"hypo": (-50, -15), "hyper": (20, 60)},
    "portal": {"hypo": (-90, -30), "hyper": (20, 60)},
}
#: unenhanced liver vessels: this much darker than the liver (HU)
PLAIN_VESSEL_CONTRAST_HU = (-25, -10)

#: TotalSegmentator v2 ("total" task, 117 classes) label value -> tissue; values not listed
#: (e.g. brain, thyroid, prostate) are soft tissue
TOTALSEGMENTATOR_V2_TISSUES: dict[int, str] = {
    1: "spleen",
    2: "kidney",
    3: "kidney",
    4: "fluid",  # gallbladder
    5: "liver",
    6: "bowel",  # stomach
    7: "pancreas",
    8: "adrenal",
    9: "adrenal",
    **{value: "lung" for value in range(10, 15)},  # lung lobes
    15: "bowel",  # oesophagus
    16: "air",  # trachea
    18: "bowel",  # small bowel
    19: "bowel",  # duodenum
    20: "bowel",  # colon
    21: "urine",  # urinary bladder
    23: "fluid",  # kidney cysts
    24: "fluid",
    **{value: "bone" for value in range(25, 51)},  # sacrum, vertebrae S1 .. C1
    51: "blood",  # heart
    **{value: "blood" for value in range(52, 69)},  # aorta, veins, arteries, portal/splenic vein
    **{value: "bone" for value in range(69, 79)},  # humerus, scapula, clavicle, femur, hip
    79: "spinal_cord",
    **{value: "muscle" for value in range(80, 90)},  # gluteus, autochthon, iliopsoas
    91: "bone",  # skull
    **{value: "bone" for value in range(92, 117)},  # ribs, sternum
    117: "cartilage",  # costal cartilages
}
#: a liver-only mask: 1 = liver, everything else from the CT (or the generic body)
LIVER_ONLY_TISSUES: dict[int, str] = {1: "liver"}
LABEL_SCHEMES: dict[str, dict[int, str]] = {
    "totalsegmentator_v2": TOTALSEGMENTATOR_V2_TISSUES,
    "liver": LIVER_ONLY_TISSUES,
}

#: HU edges of the classes of unlabelled voxels of a real CT: air < -300 <= fat < -20 <= soft
#: < 180 <= bone
CT_CLASS_EDGES_HU = (-300.0, -20.0, 180.0)


@dataclass(frozen=True)
class SynthesisRanges:
    """The random ranges of one sample (defaults: the ranges of the module docstring; a recipe may narrow them)."""

    rotation_degrees: tuple[float, float, float] = (5.0, 5.0, 15.0)  # about x, y, z (axial plane)
    scale: tuple[float, float] = (0.85, 1.15)
    shift_mm: float = 10.0
    elastic_mm: tuple[float, float] = (0.0, 5.0)  # std of the displacement at the control points
    elastic_spacing_mm: float = 40.0
    slice_thickness_mm: tuple[float, float] = (0.7, 5.0)
    blur_voxels: tuple[float, float] = (0.0, 0.8)  # in-plane Gaussian sigma
    noise_hu: tuple[float, float] = (3.0, 25.0)
    texture_hu: tuple[float, float] = (2.0, 10.0)
    lesions: tuple[int, int] = (0, 4)  # inclusive
    lesion_radius_mm: tuple[float, float] = (4.0, 25.0)
    hyperdense_fraction: float = 0.3
    vessel_width: tuple[float, float] = (0.06, 0.12)  # of the smooth fields' std: thicker with more
    bowel_gas: tuple[float, float] = (0.0, 0.5)  # fraction of bowel voxels that are gas


@dataclass
class SyntheticCT:
    """One synthetic CT and what made it (arrays ``(z, y, x)`` on the label map's grid)."""

    image: np.ndarray  # float32 HU
    liver_mask: np.ndarray  # uint8 0/1: liver incl. its vessels and lesions
    tissues: np.ndarray  # uint8 tissue class (TISSUES) after deformation, before intensities
    phase: str
    means_hu: dict[str, float]  # the mean drawn for each tissue present
    slice_thickness_mm: float


def check_hu_ranges(
    hu_ranges: Mapping[str, Mapping[str, Sequence[float]]] | None,
) -> dict[str, dict[str, tuple[float, float]]]:
    """``hu_ranges`` (``{phase: {tissue: (low, high)}}``, overrides of :data:`HU_RANGES`) as
    float pairs; ValueError naming the entry when it is not such a mapping, a phase or tissue is
    unknown or a range is not two numbers, low <= high."""
    checked: dict[str, dict[str, tuple[float, float]]] = {}
    if not isinstance(hu_ranges or {}, Mapping):
        raise ValueError(f"hu_ranges is {hu_ranges!r}; give {{phase: {{tissue: [low, high]}}}}")
    for phase, tissues in (hu_ranges or {}).items():
        if phase not in HU_RANGES:
            raise ValueError(f"hu_ranges: unknown phase {phase!r}; use one of {PHASES}")
        if not isinstance(tissues, Mapping):
            raise ValueError(f"hu_ranges: {phase} is {tissues!r}; give {{tissue: [low, high]}}")
        checked[phase] = {}
        for tissue, pair in tissues.items():
            if tissue not in HU_RANGES[phase]:
                raise ValueError(f"hu_ranges: unknown tissue {tissue!r}; known: {sorted(HU_RANGES[phase])}")
            values = list(pair) if isinstance(pair, list | tuple) else []
            if (
                len(values) != 2
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
                or values[0] > values[1]
            ):
                raise ValueError(
                    f"hu_ranges: {phase} {tissue} is {pair!r}; give [low, high] in HU, low <= high"
                )
            checked[phase][tissue] = (float(values[0]), float(values[1]))
    return checked


def _image(array: np.ndarray, spacing_zyx: Sequence[float]) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    return image


def _distance_mm(mask: np.ndarray, spacing_zyx: Sequence[float]) -> np.ndarray:
    """Signed distance (mm) of every voxel of the 2D or 3D ``mask`` to its edge: positive outside,
    negative inside."""
    return sitk.GetArrayFromImage(
        sitk.SignedMaurerDistanceMap(
            _image(mask.astype(np.uint8), spacing_zyx),
            insideIsPositive=False,
            squaredDistance=False,
            useImageSpacing=True,
        )
    )


def _scheme_mapping(scheme: str | Mapping[int, str]) -> Mapping[int, str]:
    """``{label value: tissue}`` of a scheme given by name (:data:`LABEL_SCHEMES`) or as a mapping."""
    return LABEL_SCHEMES[scheme] if isinstance(scheme, str) else scheme


def smooth_noise(
    rng: np.random.Generator, shape: Sequence[int], spacing_zyx: Sequence[float], scale_mm: float
) -> np.ndarray:
    """A smooth random field ``shape`` (float32, about unit std): normal values on a grid
    ``scale_mm`` apart, interpolated linearly (much cheaper than filtering full-size noise)."""
    extent = [n * s for n, s in zip(shape, spacing_zyx, strict=True)]
    coarse_shape = [max(2, math.ceil(e / scale_mm) + 2) for e in extent]
    coarse = _image(rng.standard_normal(coarse_shape).astype(np.float32), [scale_mm] * 3)
    coarse.SetOrigin((-scale_mm,) * 3)
    reference = _image(np.zeros(shape, dtype=np.uint8), spacing_zyx)
    field = sitk.Resample(coarse, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(field) * np.float32(1.6)  # linear interpolation loses ~40 % of std


def tissue_map(
    label_map: np.ndarray,
    scheme: Mapping[int, str],
    ct_hu: np.ndarray | None,
    spacing_zyx: Sequence[float],
    rng: np.random.Generator,
    bright_soft_tissue_hu: float | None = None,
) -> np.ndarray:
    """The tissue class (uint8, :data:`TISSUES`) of every voxel of ``label_map``.

    Labelled voxels take their structure's tissue (``scheme``; unlisted non-zero values: soft
    tissue). Unlabelled ones take the class of the real CT's HU (``ct_hu``, same grid:
    :data:`CT_CLASS_EDGES_HU`) or, without a CT, a generic body: fat within a random 15-45 mm
    of the labelled structures, a 5-15 mm muscle wall at its edge, air outside.

    ``bright_soft_tissue_hu`` (e.g. 90): unlabelled soft tissue at least this bright on the real
    CT becomes ``soft_bright``, what enhances on a contrast CT (heart, blood pool, kidney,
    spleen, bowel wall). A portal sample gives it liver-like values (:data:`HU_RANGES`), so the
    network learns that a bright organ outside the label is not liver; a liver-only label map
    otherwise leaves every other organ darker than the liver. None: plain soft tissue.
    """
    label_map = np.asarray(label_map)
    lookup = np.full(int(label_map.max()) + 1, TISSUE["soft"], dtype=np.uint8)
    for value, tissue in scheme.items():
        if value < lookup.size:
            lookup[value] = TISSUE[tissue]
    tissues = lookup[label_map]
    unlabelled = label_map == 0
    if ct_hu is not None:
        classes = np.digitize(ct_hu, CT_CLASS_EDGES_HU).astype(np.uint8)
        ct_tissues = np.array([TISSUE["air"], TISSUE["fat"], TISSUE["soft"], TISSUE["bone"]], dtype=np.uint8)
        tissues[unlabelled] = ct_tissues[classes[unlabelled]]
        if bright_soft_tissue_hu is not None:
            bright = unlabelled & (tissues == TISSUE["soft"]) & (ct_hu >= bright_soft_tissue_hu)
            tissues[bright] = TISSUE["soft_bright"]
        return tissues
    distance = _distance_mm(~unlabelled, spacing_zyx)
    margin = rng.uniform(15.0, 45.0) + 5.0 * smooth_noise(rng, label_map.shape, spacing_zyx, 40.0)
    wall = rng.uniform(5.0, 15.0)
    body = distance < margin
    tissues[unlabelled & body] = TISSUE["fat"]
    tissues[unlabelled & body & (distance > margin - wall)] = TISSUE["muscle"]
    tissues[unlabelled & ~body] = TISSUE["air"]
    return tissues


def deform(
    tissues: np.ndarray, spacing_zyx: Sequence[float], rng: np.random.Generator, ranges: SynthesisRanges
) -> np.ndarray:
    """``tissues`` after a random affine + elastic deformation (nearest neighbour; air outside).

    The affine turns about the volume's centre (most about the axial axis), scales by one
    factor per axis around a common one, shifts; the elastic part is a displacement field drawn
    on a grid ``ranges.elastic_spacing_mm`` apart, interpolated linearly by SimpleITK.
    """
    image = _image(tissues, spacing_zyx)
    size_xyz = np.array(image.GetSize(), dtype=float)
    spacing_xyz = np.array(image.GetSpacing(), dtype=float)
    centre = (size_xyz - 1) * spacing_xyz / 2
    angles = np.deg2rad([rng.uniform(-r, r) for r in ranges.rotation_degrees])
    common = rng.uniform(*ranges.scale)
    scales = common * rng.uniform(0.95, 1.05, 3)
    affine = sitk.Euler3DTransform(centre.tolist(), *angles.tolist())
    matrix = np.asarray(affine.GetMatrix()).reshape(3, 3) @ np.diag(1.0 / scales)  # output -> input
    transform = sitk.AffineTransform(3)
    transform.SetCenter(centre.tolist())
    transform.SetMatrix(matrix.ravel().tolist())
    transform.SetTranslation(rng.uniform(-ranges.shift_mm, ranges.shift_mm, 3).tolist())
    magnitude = rng.uniform(*ranges.elastic_mm)
    step = ranges.elastic_spacing_mm
    extent = (size_xyz - 1) * spacing_xyz
    grid_xyz = [max(2, math.ceil(e / step) + 3) for e in extent]
    field = sitk.GetImageFromArray(
        (magnitude * rng.standard_normal((*grid_xyz[::-1], 3))).astype(np.float64), isVector=True
    )
    field.SetSpacing((step,) * 3)
    field.SetOrigin((-step,) * 3)
    composite = sitk.CompositeTransform([transform, sitk.DisplacementFieldTransform(field)])
    warped = sitk.Resample(image, image, composite, sitk.sitkNearestNeighbor, TISSUE["air"], sitk.sitkUInt8)
    return sitk.GetArrayFromImage(warped)


def add_liver_vessels(
    tissues: np.ndarray, spacing_zyx: Sequence[float], rng: np.random.Generator, ranges: SynthesisRanges
) -> None:
    """Mark a random network of tubes inside the liver as ``liver_vessel`` (in place): where two
    independent smooth fields are both near zero (their zero sets are surfaces; two of them
    cross along curves)."""
    liver = tissues == TISSUE["liver"]
    box = _box(liver)
    if box is None:
        return
    shape = liver[box].shape
    scale = rng.uniform(20.0, 35.0)
    first = smooth_noise(rng, shape, spacing_zyx, scale)
    second = smooth_noise(rng, shape, spacing_zyx, scale)
    width = rng.uniform(*ranges.vessel_width) * 4.0
    tubes = (np.abs(first) < width) & (np.abs(second) < width)
    region = tissues[box]  # a view
    region[tubes & liver[box]] = TISSUE["liver_vessel"]


def add_lesions(
    tissues: np.ndarray, spacing_zyx: Sequence[float], rng: np.random.Generator, ranges: SynthesisRanges
) -> None:
    """Put 0-4 irregular ellipsoidal lesions inside the liver (in place), each cut to the liver:
    ``lesion_hyper`` with probability ``ranges.hyperdense_fraction``, else ``lesion_hypo``."""
    liver = np.isin(tissues, (TISSUE["liver"], TISSUE["liver_vessel"]))
    count = int(rng.integers(ranges.lesions[0], ranges.lesions[1] + 1))
    points = np.argwhere(liver)
    if count == 0 or points.size == 0:
        return
    spacing = np.asarray(spacing_zyx, dtype=float)
    for _ in range(count):
        centre = points[rng.integers(len(points))]
        radii = rng.uniform(*ranges.lesion_radius_mm) * rng.uniform(0.7, 1.3, 3)
        reach = np.ceil(radii * 1.3 / spacing).astype(int)
        low = np.maximum(centre - reach, 0)
        high = np.minimum(centre + reach + 1, tissues.shape)
        box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
        axes = np.ogrid[box]
        distance = sum(
            ((axis - c) * s / r) ** 2 for axis, c, s, r in zip(axes, centre, spacing, radii, strict=True)
        )
        bumps = 0.25 * smooth_noise(rng, distance.shape, spacing_zyx, max(4.0, radii.min()))
        kind = "lesion_hyper" if rng.random() < ranges.hyperdense_fraction else "lesion_hypo"
        region = tissues[box]
        inside = (distance + bumps < 1.0) & np.isin(region, (TISSUE["liver"], TISSUE["liver_vessel"]))
        region[inside] = TISSUE[kind]


@dataclass(frozen=True)
class AxialFrame:
    """Where the patient's directions lie in the array of an axial grid: ``superior_at_end``:
    superior is increasing z index; ``anterior_yx`` and ``left_yx``: the in-plane unit
    directions (array y, x) to the patient's front and left."""

    superior_at_end: bool
    anterior_yx: tuple[float, float]
    left_yx: tuple[float, float]


def axial_frame(direction: Sequence[float]) -> AxialFrame | None:
    """The :class:`AxialFrame` of a grid with this (LPS, row-major 3x3) direction matrix; None
    when its slice axis is not the one closest to head-feet (a sagittal or coronal grid)."""
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)  # columns: index axes in LPS
    if int(np.argmax(np.abs(matrix[2]))) != 2:
        return None
    # LPS: anterior is -y, left is +x; array (y, x) = index axes (1, 0)
    return AxialFrame(
        superior_at_end=bool(matrix[2, 2] > 0),
        anterior_yx=(-float(matrix[1, 1]), -float(matrix[1, 0])),
        left_yx=(float(matrix[0, 1]), float(matrix[0, 0])),
    )


@dataclass(frozen=True)
class ChestPadding:
    """Slices added above the label map's top for a synthetic chest (:func:`add_chest`).

    ``slices``: how many of the array's axial slices (axis 0) are added, at its superior end;
    ``frame``: where superior, anterior and left lie in the array (:class:`AxialFrame`).
    """

    slices: int
    frame: AxialFrame


#: the liver must end this far (mm) below the label map's top for a chest to go above it: a liver
#: cut by the field of view goes on above it, so lungs right above it would be a lie
CHEST_MIN_MARGIN_MM = 5.0


def _ellipsoid_distance(
    shape: Sequence[int],
    spacing_zyx: Sequence[float],
    centre_zyx_mm: Sequence[float],
    radii_si_lr_ap_mm: Sequence[float],
    frame: AxialFrame,
) -> tuple[np.ndarray, np.ndarray]:
    """For every voxel of a ``(z, y, x)`` grid: its normalised squared distance from an
    ellipsoid's centre (< 1 inside), the ellipsoid's axes along the patient's head-feet,
    left-right and front-back (``frame``); and its in-plane left-right offset from the centre
    (mm, ``(y, x)``, positive towards the patient's left)."""
    z, y, x = (np.arange(n) * s for n, s in zip(shape, spacing_zyx, strict=True))
    offset_y = y[:, None] - centre_zyx_mm[1]
    offset_x = x[None, :] - centre_zyx_mm[2]
    along_lr = offset_y * frame.left_yx[0] + offset_x * frame.left_yx[1]
    along_ap = offset_y * frame.anterior_yx[0] + offset_x * frame.anterior_yx[1]
    in_plane = (along_lr / radii_si_lr_ap_mm[1]) ** 2 + (along_ap / radii_si_lr_ap_mm[2]) ** 2
    distance = ((z - centre_zyx_mm[0]) / radii_si_lr_ap_mm[0])[:, None, None] ** 2 + in_plane[None]
    return distance, along_lr


def add_chest(
    tissues: np.ndarray, spacing_zyx: Sequence[float], rng: np.random.Generator, chest: ChestPadding
) -> bool:
    """Paint a chest into the ``chest.slices`` added slices of ``tissues`` and a heart on the
    liver's dome (in place); False (nothing painted) when the liver ends less than
    :data:`CHEST_MIN_MARGIN_MM` below the original top or there is no body or liver.

    Why: a CT that reaches into the chest shows the heart above the liver, as bright as the
    liver or brighter and as smooth, and a network that never saw one labels it liver. The heart
    is background here, so the network learns where the liver ends.

    - body wall: the original top slice (the highest with liver's neighbours), copied upwards;
      inside a wall 12-25 mm thick everything becomes lung, apart from bone, spinal cord and
      vessels (spine, aorta); liver voxels of the copied slice become muscle (diaphragm);
    - heart: an irregular ellipsoid (radii 45-65 mm left-right, 35-50 mm front-back, 40-55 mm
      up-down), 15-40 mm anterior and -15..40 mm left of the cavity's centre, its lower pole 0-30
      mm below the liver's top, so that the dome and the heart share slices as they do in a real
      CT; a wall of ``myocardium`` (6-12 mm) round a blood pool (``blood``); in the original
      slices it takes only voxels that are not liver, bone or outside the body, and the voxels
      3-7 mm from the liver are ``muscle``: the diaphragm between them.
    """
    view = tissues if chest.frame.superior_at_end else tissues[::-1]  # superior = increasing index (a view)
    added = int(chest.slices)
    top = view.shape[0] - added - 1  # the original top slice
    if added <= 0 or top < 0:
        return False
    liver = np.isin(view, _LIVER_TISSUE_VALUES)
    liver_slices = np.flatnonzero(liver[: top + 1].any(axis=(1, 2)))
    if liver_slices.size == 0 or (top - liver_slices[-1]) * spacing_zyx[0] < CHEST_MIN_MARGIN_MM:
        return False
    template = view[top].copy()
    body = sitk.GetArrayFromImage(
        sitk.BinaryFillhole(sitk.GetImageFromArray((template != TISSUE["air"]).astype(np.uint8)))
    ).astype(bool)
    if not body.any():
        return False
    depth = -_distance_mm(body, spacing_zyx[1:])
    cavity = body & (depth > rng.uniform(12.0, 25.0))
    kept = np.isin(template, [TISSUE["bone"], TISSUE["spinal_cord"], TISSUE["blood"]])
    chest_slice = template.copy()
    chest_slice[cavity & ~kept] = TISSUE["lung"]
    chest_slice[np.isin(chest_slice, _LIVER_TISSUE_VALUES)] = TISSUE["muscle"]
    view[top + 1 :] = chest_slice

    # the heart: an ellipsoid in mm about a centre placed from the cavity and the liver's top
    spacing = np.asarray(spacing_zyx, dtype=float)
    centre_yx = np.argwhere(cavity).mean(axis=0) * spacing[1:]
    centre_yx = (
        centre_yx
        + rng.uniform(15.0, 40.0) * np.asarray(chest.frame.anterior_yx)
        + rng.uniform(-15.0, 40.0) * np.asarray(chest.frame.left_yx)
    )
    radii_lr_ap_si = (rng.uniform(45.0, 65.0), rng.uniform(35.0, 50.0), rng.uniform(40.0, 55.0))
    lower_pole = liver_slices[-1] * spacing[0] - rng.uniform(0.0, 30.0)
    centre = np.array([lower_pole + radii_lr_ap_si[2], *centre_yx])
    radii_si_lr_ap = (radii_lr_ap_si[2], radii_lr_ap_si[0], radii_lr_ap_si[1])
    distance, _ = _ellipsoid_distance(view.shape, spacing, centre, radii_si_lr_ap, chest.frame)
    distance = distance + 0.15 * smooth_noise(rng, view.shape, spacing_zyx, 30.0)
    wall = rng.uniform(6.0, 12.0) / min(radii_lr_ap_si)
    heart = distance < 1.0
    heart[top + 1 :] &= (cavity & ~kept)[None]
    heart[: top + 1] &= ~np.isin(view[: top + 1], [*_LIVER_TISSUE_VALUES, TISSUE["bone"], TISSUE["air"]])
    if heart.any():
        liver_distance = _distance_mm(liver, spacing_zyx)
        view[heart & (distance < (1.0 - wall) ** 2)] = TISSUE["blood"]
        view[heart & (distance >= (1.0 - wall) ** 2)] = TISSUE["myocardium"]
        view[heart & (liver_distance > 0) & (liver_distance < rng.uniform(3.0, 7.0))] = TISSUE["muscle"]
    return True


def add_kidney(
    tissues: np.ndarray, spacing_zyx: Sequence[float], rng: np.random.Generator, frame: AxialFrame
) -> bool:
    """Paint a right kidney against the liver's lower tip (in place), labelled background;
    False (nothing painted) when the map already has kidney tissue (a multi-organ label map) or
    no liver.

    Why: in a liver-only label map the real CT's kidney is classed by its HU as soft tissue or
    bone, so synthesis from such a map never shows what a contrast CT shows under the liver's
    tip: a smooth organ brighter than the liver (cortex) round a darker inside, touching the
    liver. A network that never saw one takes it for the liver's tip.

    - an irregular ellipsoid (radii 45-60 mm head-feet, 25-35 mm left-right, 20-30 mm
      front-back) 45-70 mm to the right of the spine and -10..20 mm in front of it (the spine:
      the bone near the body's midline in the liver's lowest 30 %), its upper pole 10-50 mm
      above the liver's lowest slice, so that it lies behind the liver's tip and reaches below
      it, as the right kidney does; it replaces whatever the real CT had there (its own kidney,
      classed by HU as soft tissue or bone);
    - it takes only voxels that are not liver, bone, spinal cord, lung or outside the body; a
      layer of 0-4 mm next to the liver stays fat (none: the two touch);
    - ``kidney`` (cortex) round ``renal_medulla`` (with probability 1/2: a corticomedullary
      phase; else all cortex), a sinus of fat with a small urine-filled pelvis on its medial
      side.

    False (nothing painted) also when there is no bone near the midline (no spine to place it by).
    """
    if (tissues == TISSUE["kidney"]).any():
        return False
    view = tissues if frame.superior_at_end else tissues[::-1]  # superior = increasing index (a view)
    liver = np.isin(view, _LIVER_TISSUE_VALUES)
    slices = np.flatnonzero(liver.any(axis=(1, 2)))
    if slices.size == 0:
        return False
    spacing = np.asarray(spacing_zyx, dtype=float)
    bottom = slices[0]
    low_part = view[bottom : bottom + max(3, math.ceil(0.3 * (slices[-1] - bottom + 1)))]
    anterior = np.asarray(frame.anterior_yx)
    left = np.asarray(frame.left_yx)
    body_yx = np.argwhere(low_part != TISSUE["air"])[:, 1:] * spacing[1:]
    bone_yx = np.argwhere(low_part == TISSUE["bone"])[:, 1:] * spacing[1:]
    if body_yx.size == 0 or bone_yx.size == 0:
        return False
    midline = body_yx.mean(axis=0)
    spine_yx = bone_yx[np.abs((bone_yx - midline) @ left) < 25.0]
    if spine_yx.size == 0:
        return False
    centre_yx = spine_yx.mean(axis=0) - rng.uniform(45.0, 70.0) * left + rng.uniform(-10.0, 20.0) * anterior
    radii_si_lr_ap = (rng.uniform(45.0, 60.0), rng.uniform(25.0, 35.0), rng.uniform(20.0, 30.0))
    upper_pole = bottom * spacing[0] + rng.uniform(10.0, 50.0)
    centre_z = upper_pole - radii_si_lr_ap[0]
    distance, along_lr = _ellipsoid_distance(
        view.shape, spacing, (centre_z, *centre_yx), radii_si_lr_ap, frame
    )
    distance = distance + 0.1 * smooth_noise(rng, view.shape, spacing_zyx, 25.0)
    gap_mm = rng.uniform(0.0, 4.0)
    corticomedullary = rng.random() < 0.5
    sinus_depth = rng.uniform(0.2, 0.5)  # how far (of the radius) the sinus reaches in from the hilum
    kidney = (distance < 1.0) & ~np.isin(
        view, [*_LIVER_TISSUE_VALUES, TISSUE["bone"], TISSUE["spinal_cord"], TISSUE["lung"], TISSUE["air"]]
    )
    if not kidney.any():
        return False
    medial = (along_lr / radii_si_lr_ap[1])[None]  # > 0: towards the patient's left (the hilum)
    view[kidney] = TISSUE["kidney"]
    if corticomedullary:
        view[kidney & (distance < 0.45)] = TISSUE["renal_medulla"]
    sinus = kidney & (distance < 0.4) & (medial > 0.7 - sinus_depth)
    view[sinus] = TISSUE["fat"]
    view[sinus & (distance < 0.15)] = TISSUE["urine"]
    if gap_mm > 0:
        view[kidney & (_distance_mm(liver, spacing_zyx) < gap_mm)] = TISSUE["fat"]
    return True


def _box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The numpy slices of the non-zero part of ``mask``, or None when it is all zero."""
    extent = nonzero_extent(mask)
    return None if extent is None else tuple(slice(a, b + 1) for a, b in extent)


def gaussian_blur(
    volume: np.ndarray, spacing_zyx: Sequence[float], sigma_mm_zyx: Sequence[float]
) -> np.ndarray:
    """``volume`` smoothed by a Gaussian of ``sigma_mm_zyx`` (0 along an axis: untouched there)."""
    if not any(s > 0 for s in sigma_mm_zyx):
        return volume
    image = _image(volume.astype(np.float32), spacing_zyx)
    sigma_xyz = [
        max(float(s), 1e-3 * sp) for s, sp in zip(reversed(sigma_mm_zyx), reversed(spacing_zyx), strict=True)
    ]
    return sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image, sigma_xyz))


def synthesize_ct_details(
    label_map: np.ndarray,
    spacing: Sequence[float],
    rng: np.random.Generator,
    *,
    scheme: str | Mapping[int, str] = "totalsegmentator_v2",
    ct_hu: np.ndarray | None = None,
    phase: str | None = None,
    ranges: SynthesisRanges | None = None,
    deformation: bool = True,
    degradation: bool = True,
    bright_soft_tissue_hu: float | None = None,
    chest: ChestPadding | None = None,
    kidney: AxialFrame | None = None,
    hu_ranges: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
) -> SyntheticCT:
    """One synthetic CT from ``label_map`` ``(z, y, x)`` with voxel ``spacing`` (z, y, x) in mm.

    Args:
        label_map: integer label map (``scheme`` says what each value is).
        spacing: voxel size (z, y, x) in mm; the sample is made on this grid (about 2.5 mm for
            a training sample in well under a second).
        rng: every random choice comes from it.
        scheme: a name of :data:`LABEL_SCHEMES` or a ``{value: tissue}`` mapping.
        ct_hu: the real CT in HU on the same grid, for the classes of unlabelled voxels.
        phase: ``"plain"`` or ``"portal"``; None draws one.
        ranges: the random ranges (:class:`SynthesisRanges` defaults).
        deformation: False keeps the label map's geometry (tests).
        degradation: False skips texture, blur, slice thickness and noise: each tissue is then
            exactly its mean (tests).
        bright_soft_tissue_hu: unlabelled voxels of ``ct_hu`` at least this bright are a tissue of
            their own, ``soft_bright`` (:func:`tissue_map`); None: plain soft tissue.
        chest: the slices of ``label_map`` added above its top (unlabelled, and air on
            ``ct_hu``) to hold a synthetic chest and heart (:func:`add_chest`, before the
            deformation); None: no chest.
        kidney: the frame of ``label_map``'s array in which to paint a right kidney against the
            liver's lower tip (:func:`add_kidney`, before the deformation); None: no kidney.
        hu_ranges: ``{phase: {tissue: (low, high)}}`` replacing those ranges of
            :data:`HU_RANGES` (e.g. ``{"portal": {"kidney": (140, 280)}}``: a brighter
            corticomedullary cortex); each mean is still one draw from the generator, so a
            sample differs from the one without the override only in those tissues' values.

    Returns:
        :class:`SyntheticCT` with the image (float32 HU) and the liver mask (uint8) on
        ``label_map``'s grid.
    """
    ranges = ranges or SynthesisRanges()
    mapping = _scheme_mapping(scheme)
    phase = phase or str(rng.choice(PHASES))
    if phase not in PHASES:
        raise ValueError(f"unknown CT phase {phase!r}; use one of {PHASES}")
    label_map = np.asarray(label_map)
    if label_map.ndim != 3:
        raise ValueError(f"label_map must be 3D (z, y, x), got shape {label_map.shape}")
    if not np.issubdtype(label_map.dtype, np.integer):  # e.g. a label map stored as float
        label_map = np.rint(label_map).astype(np.int64)
    if label_map.min() < 0:
        raise ValueError("label_map has negative values; label maps hold 0 (background) and positive labels")
    spacing_zyx = [float(s) for s in spacing]
    ranges_hu = {**HU_RANGES[phase], **check_hu_ranges(hu_ranges).get(phase, {})}
    tissues = tissue_map(label_map, mapping, ct_hu, spacing_zyx, rng, bright_soft_tissue_hu)
    if chest is not None:
        add_chest(tissues, spacing_zyx, rng, chest)
    if kidney is not None:
        add_kidney(tissues, spacing_zyx, rng, kidney)
    if deformation:
        tissues = deform(tissues, spacing_zyx, rng, ranges)
    add_liver_vessels(tissues, spacing_zyx, rng, ranges)
    add_lesions(tissues, spacing_zyx, rng, ranges)
    liver_mask = np.isin(tissues, _LIVER_TISSUE_VALUES).astype(np.uint8)

    # soft_bright, myocardium and renal_medulla last and only when present: recipes without them
    # draw exactly what they drew before
    optional = {
        "soft_bright": "soft",
        "myocardium": "muscle",
        "renal_medulla": "kidney",
    }  # -> copied when absent
    means = {name: float(rng.uniform(*ranges_hu[name])) for name in ranges_hu if name not in optional}
    for name, stand_in in optional.items():
        if (tissues == TISSUE[name]).any():
            means[name] = float(rng.uniform(*ranges_hu[name]))
        else:
            means[name] = means[stand_in]
    liver = means["liver"]
    means["lesion_hypo"] = liver + float(rng.uniform(*LESION_CONTRAST_HU[phase]["hypo"]))
    means["lesion_hyper"] = liver + float(rng.uniform(*LESION_CONTRAST_HU[phase]["hyper"]))
    means["liver_vessel"] = (
        liver + float(rng.uniform(*PLAIN_VESSEL_CONTRAST_HU)) if phase == "plain" else means["blood"]
    )
    lookup = np.array([means[name] for name in TISSUES], dtype=np.float32)
    image = lookup[tissues]
    gas_fraction = rng.uniform(*ranges.bowel_gas)
    bowel = tissues == TISSUE["bowel"]
    thickness = float(rng.uniform(*ranges.slice_thickness_mm))
    if degradation:
        if bowel.any() and gas_fraction > 0:  # gas pockets in the bowel: the top of a smooth field
            field = smooth_noise(rng, image.shape, spacing_zyx, 15.0)
            gas = bowel & (field > np.quantile(field[bowel], 1.0 - gas_fraction))
            image[gas] = means["air"]
        image += rng.uniform(*ranges.texture_hu) * smooth_noise(rng, image.shape, spacing_zyx, 6.0)
        # slice thickness: a slab profile as a Gaussian of FWHM = thickness along z, on top of
        # what the grid's own z spacing already averages
        sigma_z = math.sqrt(max(thickness**2 - spacing_zyx[0] ** 2, 0.0)) / 2.355
        sigma_xy = rng.uniform(*ranges.blur_voxels)
        image = gaussian_blur(
            image, spacing_zyx, (sigma_z, sigma_xy * spacing_zyx[1], sigma_xy * spacing_zyx[2])
        )
        image = image + rng.uniform(*ranges.noise_hu) * rng.standard_normal(image.shape, dtype=np.float32)
    present = {TISSUES[t] for t in np.unique(tissues)}
    return SyntheticCT(
        image=image.astype(np.float32),
        liver_mask=liver_mask,
        tissues=tissues,
        phase=phase,
        means_hu={name: value for name, value in means.items() if name in present},
        slice_thickness_mm=thickness,
    )


def synthesize_ct(
    label_map: np.ndarray, spacing: Sequence[float], rng: np.random.Generator, **options
) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 HU, liver mask uint8), both ``(z, y, x)`` on ``label_map``'s grid; the
    keyword options are those of :func:`synthesize_ct_details`."""
    sample = synthesize_ct_details(label_map, spacing, rng, **options)
    return sample.image, sample.liver_mask


def _chest_grid(
    grid: sitk.Image,
    label_grid: sitk.Image,
    mapping: Mapping[int, str],
    rng: np.random.Generator,
    height_mm: tuple[float, float],
) -> tuple[sitk.Image, ChestPadding] | None:
    """``grid`` grown by 40-100 mm (``height_mm``) at its superior end, and where in the array
    the added slices lie; None when the grid's slice axis is not the one closest to
    head-feet (a sagittal or coronal grid) or the liver ends less than
    :data:`CHEST_MIN_MARGIN_MM` below the grid's top."""
    frame = axial_frame(grid.GetDirection())
    if frame is None:
        return None
    at_end = frame.superior_at_end
    liver_values = [value for value, tissue in mapping.items() if tissue == "liver"]
    liver = np.isin(sitk.GetArrayFromImage(label_grid), liver_values)
    slices = np.flatnonzero(liver.any(axis=(1, 2)))
    if slices.size == 0:
        return None
    spacing_z = grid.GetSpacing()[2]
    margin = (liver.shape[0] - 1 - slices[-1]) if at_end else slices[0]
    if margin * spacing_z < CHEST_MIN_MARGIN_MM:
        return None
    added = max(1, int(round(rng.uniform(*height_mm) / spacing_z)))
    none, padding = (0, 0, 0), (0, 0, added)
    # ConstantPad moves the origin when the added slices come first (index 0 is superior)
    grown = sitk.ConstantPad(grid, none, padding) if at_end else sitk.ConstantPad(grid, padding, none)
    return grown, ChestPadding(slices=added, frame=frame)


def synthesize_ct_image(
    ct: sitk.Image | None,
    label: sitk.Image,
    rng: np.random.Generator,
    *,
    scheme: str | Mapping[int, str] = "totalsegmentator_v2",
    spacing: Sequence[float] = (2.5, 2.5, 2.5),
    chest_fraction: float = 0.0,
    chest_height_mm: tuple[float, float] = (40.0, 100.0),
    kidney_fraction: float = 0.0,
    **options,
) -> tuple[sitk.Image, sitk.Image]:
    """:func:`synthesize_ct` on SimpleITK images: (synthetic CT float32, liver mask uint8).

    The label map is brought onto a grid of ``spacing`` (x, y, z mm) over ``ct``'s field of view
    (the label's without a CT) through physical space, nearest neighbour, so a label stored with
    another axis order or direction than its CT (the y-flipped TotalSegmentator DICOM labels)
    lines up; the CT is resampled linearly onto the same grid for the unlabelled classes. Both
    outputs carry that grid's geometry.

    ``chest_fraction``: the probability that the sample gets a synthetic chest with a heart
    above the liver (:func:`add_chest`): the grid grows by ``chest_height_mm`` at its superior
    end (the outputs then cover more than ``ct``'s field of view). Only where the liver ends at
    least :data:`CHEST_MIN_MARGIN_MM` below the top of an axial grid; 0 draws nothing more from
    ``rng`` than before the option existed.

    ``kidney_fraction``: the probability that the sample gets a synthetic right kidney against
    the liver's lower tip (:func:`add_kidney`; axial grids of label maps without kidneys only);
    0 draws nothing more from ``rng``.
    """
    reference = ct if ct is not None else label
    size = [
        max(1, int(round(n * s / t)))
        for n, s, t in zip(reference.GetSize(), reference.GetSpacing(), spacing, strict=True)
    ]
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing(tuple(float(t) for t in spacing))
    grid.SetDirection(reference.GetDirection())
    # same physical extent: the first voxel's corner stays where the reference's was
    corner = np.asarray(reference.TransformContinuousIndexToPhysicalPoint((-0.5, -0.5, -0.5)))
    direction = np.asarray(reference.GetDirection()).reshape(3, 3)
    grid.SetOrigin(tuple(corner + direction @ (0.5 * np.asarray(spacing, dtype=float))))
    label_grid = sitk.Resample(label, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16)
    chest = None
    if chest_fraction > 0 and rng.random() < chest_fraction:
        mapping = _scheme_mapping(scheme)
        grown = _chest_grid(grid, label_grid, mapping, rng, chest_height_mm)
        if grown is not None:
            grid, chest = grown
            label_grid = sitk.Resample(
                label, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt16
            )
    kidney = None
    if kidney_fraction > 0 and rng.random() < kidney_fraction:
        kidney = axial_frame(grid.GetDirection())
    ct_hu = None
    if ct is not None:
        ct_grid = sitk.Resample(ct, grid, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
        ct_hu = sitk.GetArrayFromImage(ct_grid)
    image, liver = synthesize_ct(
        sitk.GetArrayFromImage(label_grid),
        tuple(reversed(spacing)),
        rng,
        scheme=scheme,
        ct_hu=ct_hu,
        chest=chest,
        kidney=kidney,
        **options,
    )
    image_out = sitk.GetImageFromArray(image)
    image_out.CopyInformation(grid)
    liver_out = sitk.GetImageFromArray(liver)
    liver_out.CopyInformation(grid)
    return image_out, liver_out


#: synthesis kinds a recipe can name -> the function making one (image, liver mask) from a source
#: (``synthesize_ct_image(ct, label, rng, scheme=..., spacing=...)``)
CT_SYNTHESIS_KINDS = {"ct_from_label_maps": synthesize_ct_image}
