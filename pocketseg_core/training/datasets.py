"""Training cases from a dataset path, in the published layouts, with seeded subject-wise folds.

Layouts read as they are downloaded (no conversion by the user):

* **NFBS**: one folder per subject holding ``*_T1w.nii.gz`` and ``*_T1w_brainmask.nii.gz``
  (``*_brainmask.nii.gz`` also accepted); subject = folder name.
* **LiTS**: ``volume-N.nii[.gz]`` with ``segmentation-N.nii[.gz]`` (any sub-folder); labels
  1 (liver) and 2 (tumour) both map to 1 (liver = the whole organ, as in both papers).
* **MSD**: ``dataset.json`` with a ``training`` list of ``{"image", "label"}`` paths (relative to
  the folder); every non-zero label maps to 1 (Task03_Liver: liver + tumour), unless a
  ``label_map`` is given.
* **List**: a ``.csv`` (columns ``image,label[,subject]``) or ``.json`` list of
  ``{"image", "label", "subject"}``; relative paths are relative to the list file. Labels 0/1.

Label values: each case carries ``label_map`` (raw value -> class). Any other non-zero value is
an error naming the case and the values. Masks stored as floats with fractional voxels (e.g. a
resampled mask) are thresholded at 0.5 before mapping (documented in docs/training.md).
"""

from __future__ import annotations

import csv
import json
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pocketseg_core import geometry
from pocketseg_core.errors import DatasetError
from pocketseg_core.io import strip_image_extension

logger = logging.getLogger(__name__)

BINARY_MAP: dict[int, int] = {1: 1}
LITS_LIVER_MAP: dict[int, int] = {1: 1, 2: 1}


@dataclass(frozen=True)
class Case:
    """One image/label pair. ``subject`` groups cases that must stay in the same fold."""

    subject: str
    image_path: Path
    label_path: Path
    label_map: dict[int, int] = field(default_factory=lambda: dict(BINARY_MAP))

    @property
    def case_id(self) -> str:
        """A file-name-safe identifier, unique within a dataset (the image file's stem)."""
        return re.sub(r"[^A-Za-z0-9_.-]", "_", strip_image_extension(self.image_path))

    def to_dict(self) -> dict:
        return {
            "subject": self.subject,
            "image": str(self.image_path),
            "label": str(self.label_path),
            "label_map": {str(k): v for k, v in self.label_map.items()},
        }


def _check_files(cases: list[Case]) -> list[Case]:
    for case in cases:
        if not case.image_path.is_file():
            raise DatasetError(f"case {case.subject}: image file {case.image_path} does not exist")
        if not case.label_path.is_file():
            raise DatasetError(
                f"case {case.subject}: label file {case.label_path} does not exist "
                f"(every training image needs its label)"
            )
    return cases


def _discover_nfbs(root: Path) -> list[Case]:
    cases = []
    for image_path in sorted(root.rglob("*_T1w.nii.gz")):
        folder = image_path.parent
        stem = image_path.name[: -len("_T1w.nii.gz")]
        candidates = [folder / f"{stem}_T1w_brainmask.nii.gz", folder / f"{stem}_brainmask.nii.gz"]
        candidates += sorted(folder.glob("*_brainmask.nii.gz"))
        label_path = next((c for c in candidates if c.is_file()), candidates[0])
        subject = folder.name if folder != root else stem
        cases.append(Case(subject, image_path, label_path, dict(BINARY_MAP)))
    return cases


def _discover_lits(root: Path) -> list[Case]:
    cases = []
    volumes = sorted(root.rglob("volume-*.nii*"), key=lambda p: (len(p.name), p.name))
    for image_path in volumes:
        number = strip_image_extension(image_path)[len("volume-") :]
        candidates = [image_path.parent / f"segmentation-{number}{ext}" for ext in (".nii", ".nii.gz")]
        candidates += sorted(root.rglob(f"segmentation-{number}.nii*"))
        label_path = next((c for c in candidates if c.is_file()), candidates[0])
        cases.append(Case(f"volume-{number}", image_path, label_path, dict(LITS_LIVER_MAP)))
    return cases


def _discover_msd(dataset_json: Path, label_map: dict[int, int] | None) -> list[Case]:
    root = dataset_json.parent
    try:
        description = json.loads(dataset_json.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise DatasetError(f"cannot read {dataset_json}: {error}") from error
    if label_map is None:
        labels = description.get("labels", {"0": "background", "1": "foreground"})
        label_map = {int(k): 1 for k in labels if int(k) != 0}
    cases = []
    for entry in description.get("training", []):
        image_path = (root / entry["image"]).resolve()
        label_path = (root / entry["label"]).resolve()
        cases.append(Case(strip_image_extension(image_path), image_path, label_path, dict(label_map)))
    return cases


def _discover_list(list_path: Path, label_map: dict[int, int]) -> list[Case]:
    root = list_path.parent
    try:
        if list_path.suffix.lower() == ".csv":
            with list_path.open(newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        else:
            rows = json.loads(list_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, csv.Error) as error:
        raise DatasetError(f"cannot read the case list {list_path}: {error}") from error
    if not isinstance(rows, list):
        raise DatasetError(f"{list_path}: expected a list of {{image, label, subject}} entries")
    cases = []
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not row.get("image") or not row.get("label"):
            raise DatasetError(f"{list_path}: entry {number} needs both 'image' and 'label'")
        image_path = Path(row["image"])
        label_path = Path(row["label"])
        image_path = image_path if image_path.is_absolute() else root / image_path
        label_path = label_path if label_path.is_absolute() else root / label_path
        subject = str(row.get("subject") or strip_image_extension(image_path))
        cases.append(Case(subject, image_path, label_path, dict(label_map)))
    return cases


def discover_cases(dataset: str | Path, label_map: dict[int, int] | None = None) -> list[Case]:
    """Find every image/label pair under ``dataset`` (a folder in a known layout, or a list file).

    ``label_map`` overrides the layout's default mapping of raw label values to class 1.
    Raises :class:`DatasetError` when nothing usable is found or a label file is missing.
    """
    path = Path(dataset).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset path {path} does not exist")
    if path.is_file():
        if path.suffix.lower() == ".json" and path.name == "dataset.json":
            cases = _discover_msd(path, label_map)
        elif path.suffix.lower() in (".csv", ".json"):
            cases = _discover_list(path, label_map or dict(BINARY_MAP))
        else:
            raise DatasetError(f"{path} is a file but not a .csv or .json list of image/label pairs")
    elif (path / "dataset.json").is_file():
        cases = _discover_msd(path / "dataset.json", label_map)
    else:
        cases = _discover_lits(path) or _discover_nfbs(path)
        lists = sorted(path.glob("*.csv")) + sorted(p for p in path.glob("*.json"))
        if not cases and len(lists) == 1:
            cases = _discover_list(lists[0], label_map or dict(BINARY_MAP))
        elif label_map is not None:
            cases = [Case(c.subject, c.image_path, c.label_path, dict(label_map)) for c in cases]
    if not cases:
        raise DatasetError(
            f"no training cases found in {path}: expected an NFBS folder (*_T1w.nii.gz + "
            f"*_brainmask.nii.gz per subject), LiTS files (volume-N.nii / segmentation-N.nii), an MSD "
            f"folder with dataset.json, or a .csv/.json list with image,label columns"
        )
    ids = [case.case_id for case in cases]
    if len(set(ids)) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        raise DatasetError(
            f"several cases share the image name {duplicates[:3]}: output files are named after the "
            f"image, so rename them or list them in a .csv with distinct file names"
        )
    return _check_files(cases)


# ----------------------------------------------------------------------------------------- folds


def check_fold_count(subject_count: int, case_count: int, folds: int) -> None:
    """Raise :class:`DatasetError` unless ``subject_count`` subjects can fill ``folds`` folds
    (at least 2 folds, and every fold needs a held-out subject). Torch-free: the Slicer training
    module checks its cases with it before torch is loaded."""
    if folds < 2:
        raise DatasetError(f"cross-validation needs at least 2 folds, got {folds}")
    if subject_count < folds:
        raise DatasetError(
            f"{case_count} case(s) from {subject_count} subject(s) cannot fill {folds} folds: "
            f"add cases or use {max(2, subject_count)} folds or fewer"
        )


def make_folds(cases: list[Case], n_folds: int, seed: int) -> list[list[str]]:
    """Split the subjects of ``cases`` into ``n_folds`` groups (shuffled with ``seed``).

    Returns a list of folds, each a sorted list of subjects; the cases of one subject are never
    split between folds. Raises :class:`DatasetError` with fewer subjects than folds.
    """
    subjects = sorted({case.subject for case in cases})
    check_fold_count(len(subjects), len(cases), n_folds)
    random.Random(seed).shuffle(subjects)
    folds = [sorted(subjects[index::n_folds]) for index in range(n_folds)]
    return folds


def save_folds(path: Path, folds: list[list[str]], cases: list[Case], seed: int) -> None:
    """Write ``folds.json`` (subjects and case files per fold, and the seed) atomically."""
    from pocketseg_core.training.checkpoints import atomic_write_text

    by_subject: dict[str, list[str]] = {}
    for case in cases:
        by_subject.setdefault(case.subject, []).append(case.case_id)
    payload = {
        "seed": seed,
        "folds": [
            {"fold": index + 1, "subjects": fold, "cases": sorted(c for s in fold for c in by_subject[s])}
            for index, fold in enumerate(folds)
        ],
    }
    atomic_write_text(path, json.dumps(payload, indent=2))


def load_folds(path: Path) -> list[list[str]]:
    """The subject lists written by :func:`save_folds`."""
    payload = json.loads(Path(path).read_text(encoding="utf-8"))
    return [list(entry["subjects"]) for entry in payload["folds"]]


# ------------------------------------------------------------------------------ loading a case


def _physical_extent(image: sitk.Image) -> np.ndarray:
    """Physical positions of the outer voxel corners, ``(8, 3)`` (or ``(4, 2)`` in 2D)."""
    size = np.array(image.GetSize())
    corners = []
    dims = image.GetDimension()
    for bits in range(2**dims):
        index = [(-0.5 if (bits >> axis) & 1 == 0 else size[axis] - 0.5) for axis in range(dims)]
        corners.append(image.TransformContinuousIndexToPhysicalPoint(index))
    return np.array(corners)


def align_label_to_image(image: sitk.Image, label: sitk.Image, case_name: str) -> sitk.Image:
    """``label`` on exactly ``image``'s grid.

    Same grid: returned as is. Different grid but the same physical extent (outer corners within
    half the larger voxel size): resampled with nearest neighbour (a warning is logged). Otherwise
    :class:`DatasetError` naming the case.
    """
    if geometry.same_grid(image, label):
        label = sitk.Image(label)
        label.CopyInformation(image)  # remove sub-tolerance float noise
        return label
    if image.GetDimension() != label.GetDimension():
        raise DatasetError(
            f"case {case_name}: image is {image.GetDimension()}D, label {label.GetDimension()}D"
        )
    tolerance = 0.5 * max(max(image.GetSpacing()), max(label.GetSpacing())) + 1e-3
    corners_image = _physical_extent(image)
    corners_label = _physical_extent(label)
    # corners may come in a different order when the directions differ: compare as point sets
    distances = np.linalg.norm(corners_image[:, None, :] - corners_label[None, :, :], axis=-1)
    if distances.min(axis=1).max() > tolerance:
        raise DatasetError(
            f"case {case_name}: the label's grid does not cover the image (physical extents differ by "
            f"{distances.min(axis=1).max():.1f} mm); the label was probably drawn on another image"
        )
    logger.warning("case %s: label grid differs from the image; resampled with nearest neighbour", case_name)
    return sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())


def map_label_values(label: sitk.Image, label_map: dict[int, int], case_name: str) -> sitk.Image:
    """Raw label image -> ``uint8`` class image via ``label_map`` (geometry kept).

    Float masks are thresholded at 0.5 first when all values lie in [0, 1] (fractional voxels of
    an interpolated binary mask). Unknown non-zero values raise :class:`DatasetError`.
    """
    array = sitk.GetArrayFromImage(label)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise DatasetError(f"case {case_name}: the label contains NaN or infinite values")
        if array.min() >= 0 and array.max() <= 1 and not np.isin(array, (0, 1)).all():
            array = (array >= 0.5).astype(np.uint8)
        elif not np.equal(np.round(array), array).all():
            raise DatasetError(
                f"case {case_name}: the label has non-integer values outside [0, 1] "
                f"(e.g. {array[np.round(array) != array].flat[0]}); is it an image rather than a label?"
            )
    values = np.unique(array)
    unexpected = [int(v) for v in values if v != 0 and int(v) not in label_map]
    if unexpected:
        raise DatasetError(
            f"case {case_name}: unexpected label values {unexpected[:10]} (expected 0 and "
            f"{sorted(label_map)}); pass a label_map saying which values form the structure"
        )
    mapped = np.zeros(array.shape, dtype=np.uint8)
    for raw, target in label_map.items():
        mapped[array == raw] = target
    result = sitk.GetImageFromArray(mapped)
    result.CopyInformation(label)
    return result


def load_case(case: Case) -> tuple[sitk.Image, sitk.Image]:
    """Read a case: ``(image float32, label uint8 on the image's grid)`` with the checks above.

    An empty label is allowed (a case without the structure) but logged as a warning.
    """
    from pocketseg_core.errors import InputImageError
    from pocketseg_core.io import read_image

    try:
        image = read_image(case.image_path)
        label = read_image(case.label_path)
    except InputImageError as error:
        raise DatasetError(f"case {case.case_id}: {error}") from error
    label = map_label_values(label, case.label_map, case.case_id)
    label = align_label_to_image(image, label, case.case_id)
    if not sitk.GetArrayViewFromImage(label).any():
        logger.warning("case %s: the label is empty (no foreground voxel)", case.case_id)
    return image, label
