"""Warnings when a mask cannot be the structure its model segments (out-of-distribution input).

A network always answers: the shipped liver model gave 2255 ml of "liver" on smooth noise at
-900 HU and 802 ml on a head CT, silently. After the clean-up, :func:`anatomy_warnings` looks at
the image and the mask for the tasks of :data:`CT_TISSUE_HU` (CT in HU only):

1. no structure at all: an empty mask;
2. the mask's tissue: the median HU under the mask must lie in the structure's range (liver
   10-300 HU: parenchyma 45-70 plain, 95-140 portal venous, lesions and vessels either side;
   the same table as :mod:`pocketseg_core.training.ct_synthesis`); air, water or bone under
   the mask means there is no liver there;
3. the region: an abdomen has a good share of fat (subcutaneous and visceral, -190 to -30 HU);
   a head or a phantom has almost none. Measured on the project's six abdominal CTs: 25-46 %
   of the voxels above -500 HU; the head CT atlas 0 %. The bar (:data:`MIN_ABDOMEN_FAT_SHARE`)
   is far below the lowest abdomen, so a lean patient is not warned about.

The warnings go to ``SegmentationResult.messages`` like the modality and noise warnings of
:func:`pocketseg_core.preprocessing.modality_warning`; the mask itself is kept (the user decides).
"""

from __future__ import annotations

import numpy as np

#: task -> (low, high) HU of the median under a plausible mask of its structure
CT_TISSUE_HU: dict[str, tuple[float, float]] = {"liver": (10.0, 300.0)}
#: tasks whose structure lies in the abdomen
ABDOMINAL_TASKS = frozenset({"liver"})
#: fat (HU) and the body (HU above) for the abdomen check
FAT_HU = (-190.0, -30.0)
BODY_HU = -500.0
#: least share of the body's voxels that are fat in an abdominal CT (real ones: 0.25-0.46)
MIN_ABDOMEN_FAT_SHARE = 0.05


def _strided(values: np.ndarray, target: int = 2_000_000) -> np.ndarray:
    flat = values.ravel()
    return flat[:: max(1, flat.size // target)]


def fat_share(volume_hu: np.ndarray) -> float:
    """The share of the body's voxels (above :data:`BODY_HU`) that are fat (:data:`FAT_HU`);
    0 when there is no body."""
    sample = _strided(np.asarray(volume_hu))
    body = sample > BODY_HU
    count = int(body.sum())
    if count == 0:
        return 0.0
    return float(np.count_nonzero(body & (sample >= FAT_HU[0]) & (sample <= FAT_HU[1])) / count)


def anatomy_warnings(volume_hu: np.ndarray, mask: np.ndarray, task: str | None, structure: str) -> list[str]:
    """Plain-words warnings when ``mask`` (same shape as ``volume_hu``, non-zero = the structure)
    cannot be ``structure`` of ``task`` in this CT (see the module docstring); [] for tasks
    without a table (e.g. skull strip) and for plausible results."""
    if task not in CT_TISSUE_HU:
        return []
    warnings: list[str] = []
    name = structure.lower()
    if task in ABDOMINAL_TASKS:
        share = fat_share(volume_hu)
        if share < MIN_ABDOMEN_FAT_SHARE:
            warnings.append(
                f"only {share:.0%} of the body is fat ({FAT_HU[0]:.0f} to {FAT_HU[1]:.0f} HU) where an "
                f"abdominal CT has 20-45 %: the image does not look like an abdomen (a head, a "
                f"phantom, or not in Hounsfield units); the {name} mask is likely wrong"
            )
    inside = np.asarray(mask) > 0
    if not inside.any():
        warnings.append(f"no {name} was found in the image: check that the CT shows the upper abdomen")
        return warnings
    low, high = CT_TISSUE_HU[task]
    median = float(np.median(_strided(np.asarray(volume_hu)[inside])))
    if not low <= median <= high:
        warnings.append(
            f"the {name} mask covers tissue of median {median:.0f} HU, but {name} is {low:.0f} to "
            f"{high:.0f} HU in any contrast phase: the image likely shows no {name} (air, water or "
            "bone under the mask); the mask is likely meaningless"
        )
    return warnings
