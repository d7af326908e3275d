"""The artefacts of a finished cross-validation: per-case metric table, summary, box plots, logs."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pocketseg_core.metrics import METRIC_NAMES
from pocketseg_core.training.checkpoints import atomic_write_bytes, atomic_write_text

logger = logging.getLogger(__name__)

METRIC_TITLES = {
    "dice": "Dice",
    "hd_max": "Hausdorff max (mm)",
    "hd_mean": "Hausdorff mean (mm)",
    "hd95": "Hausdorff 95 (mm)",
    "voe": "VOE",
    "rvd": "RVD",
    "assd": "ASSD (mm)",
    "mssd": "MSSD (mm)",
}


def write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> Path:
    """Rows as CSV (atomic)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _format(row.get(key)) for key in columns})
    return atomic_write_text(path, buffer.getvalue())


def _format(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def summarize(rows: Sequence[dict]) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "std", "median", "n"}}`` over the per-case rows (population std)."""
    summary = {}
    for name in METRIC_NAMES:
        values = np.array([float(row[name]) for row in rows if row.get(name) is not None], dtype=float)
        summary[name] = {
            "mean": float(values.mean()) if values.size else math.nan,
            "std": float(values.std()) if values.size else math.nan,
            "median": float(np.median(values)) if values.size else math.nan,
            "n": int(values.size),
        }
    return summary


def format_summary(summary: dict[str, dict[str, float]]) -> str:
    """A printable table ``metric  mean ± std``."""
    lines = [f"{'metric':<22}{'mean ± std':>24}   n"]
    for name in METRIC_NAMES:
        entry = summary[name]
        lines.append(f"{METRIC_TITLES[name]:<22}{entry['mean']:>12.4f} ± {entry['std']:<9.4f}{entry['n']:>3}")
    return "\n".join(lines)


def write_summary(path: Path, summary: dict, extra: dict | None = None) -> Path:
    return atomic_write_text(path, json.dumps({"metrics": summary, **(extra or {})}, indent=2))


def write_boxplot(path: Path, rows: Sequence[dict], title: str) -> Path | None:
    """Box plots of every metric over the cases (like PocketNet Figures 5-6), as a PNG.

    Returns None (with a logged message) when matplotlib is not installed: the figure is the
    only artefact that needs it (``pip install matplotlib`` or ``pocketseg-core[figures]``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning(
            "matplotlib is not installed: the box-plot figure was skipped "
            "(pip install matplotlib, then rerun with --resume to make it)"
        )
        return None
    figure, axes = plt.subplots(2, 4, figsize=(14, 6.5))
    for axis, name in zip(axes.flat, METRIC_NAMES, strict=True):
        values = [float(row[name]) for row in rows]
        axis.boxplot([values], widths=0.5)
        jitter = np.random.default_rng(0).uniform(-0.08, 0.08, len(values))
        axis.scatter(1 + jitter, values, s=12, alpha=0.6, color="tab:blue")
        axis.set_title(METRIC_TITLES[name], fontsize=10)
        axis.set_xticks([])
    figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return atomic_write_bytes(path, buffer.getvalue())
