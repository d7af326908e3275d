"""Checks of the training cases before any work: each problem is a ``DatasetError`` naming the case.

Errors: fewer subjects than folds, a missing or empty segment (a missing segment is caught while
collecting, see ``cases.collect_case``), a label on a single slice. Warnings (returned, shown in the
log): cases whose intensities do not fit the preset's modality, cases of mixed modality.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from pocketseg_core.errors import DatasetError
from pocketseg_core.preprocessing import looks_like_ct, modality_warning
from pocketseg_core.training.datasets import check_fold_count
from PocketSegTrainLib.cases import CaseData


def validate_cases(data: list[CaseData], folds: int, modality: str) -> list[str]:
    """Raise :class:`DatasetError` on unusable cases; return warnings for the user."""
    check_fold_count(len({item.subject for item in data}), len(data), folds)
    warnings: list[str] = []
    kinds: dict[str, list[str]] = {"CT": [], "MR": []}
    for item in data:
        name = item.case.case_name
        if min(item.image.GetSize()) < 2:
            raise DatasetError(f"case {name}: the volume is a single slice; training needs 3D volumes")
        if not np.any(item.label_array):
            raise DatasetError(
                f"case {name}: segment '{item.case.segment}' is empty (no voxel inside the volume); "
                f"draw it, or remove the case"
            )
        voxels = sitk.GetArrayViewFromImage(item.image)
        kinds["CT" if looks_like_ct(voxels) else "MR"].append(name)
        warning = modality_warning(voxels, modality)
        if warning:
            warnings.append(f"case {name}: {warning}")
    if kinds["CT"] and kinds["MR"]:
        warnings.append(
            f"the cases mix modalities: CT-like {', '.join(kinds['CT'])}; MR-like {', '.join(kinds['MR'])}. "
            f"One model should be trained on one modality"
        )
    return warnings
