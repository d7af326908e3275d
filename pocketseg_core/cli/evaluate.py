"""``pocketseg evaluate``: the eight metrics of a prediction against a reference, one case or a folder.

One case: ``--reference`` and ``--prediction`` are image files (or DICOM folders). Batch:
both are folders of image files; cases are matched by file name without the image ending
(``case1.nii.gz`` matches ``case1.nrrd``), every reference case must have a prediction, and
the table gets one row per case plus the mean (``--output`` writes it as CSV).
"""

from __future__ import annotations

import argparse
import csv
import io as text_io
import json
import math
import os
import sys
import warnings
from pathlib import Path

from pocketseg_core.errors import InputImageError, PocketSegError
from pocketseg_core.io import is_image_file, read_image, strip_image_extension, write_text_atomic
from pocketseg_core.metrics import DISTANCE_METRICS, METRIC_NAMES, EmptyMaskWarning, compute_metrics


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help="compare a segmentation with a reference: Dice, Hausdorff max/mean/95, VOE, RVD, ASSD, MSSD",
        description=(
            "Compare a predicted label map with a reference label map on the physical grid. "
            "Distances are in mm. With folders, files are matched by name and the mean is added."
        ),
    )
    parser.add_argument("--reference", required=True, type=Path, help="reference label file or folder")
    parser.add_argument("--prediction", required=True, type=Path, help="predicted label file or folder")
    parser.add_argument("--label", type=int, default=1, help="label value to compare (default: 1)")
    parser.add_argument(
        "--resample",
        action="store_true",
        help="resample the prediction onto the reference grid (nearest neighbour) when the grids differ",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--output", type=Path, help="also write the table as CSV to this file")
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.output is not None:
        for source in (args.reference, args.prediction):
            if source.exists() and args.output.exists() and os.path.samefile(args.output, source):
                raise PocketSegError(
                    f"--output {args.output} would overwrite the input {source}; choose another file for the table"
                )
    if _is_batch(args.reference) or _is_batch(args.prediction):
        return _run_batch(args)
    metrics = _metrics_printing_warnings(
        read_image(args.reference), read_image(args.prediction), args.label, args.resample, ""
    )
    if args.output:
        _write_csv({strip_image_extension(args.prediction): metrics}, args.output)
    if args.json:
        print(json.dumps({name: metrics[name] for name in METRIC_NAMES}))
    else:
        print(f"reference:  {args.reference}\nprediction: {args.prediction}\nlabel:      {args.label}")
        print(format_table({strip_image_extension(args.prediction): metrics}))
    return 0


def _is_batch(path: Path) -> bool:
    """A folder holding image files (a folder of DICOM slices is one image, not a batch)."""
    return path.is_dir() and any(is_image_file(child) for child in path.iterdir())


def _cases(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputImageError(
            f"{folder}: is not a folder; give two folders (batch) or two image files (one case)."
        )
    cases: dict[str, Path] = {}
    for child in sorted(folder.iterdir()):
        if is_image_file(child):
            case = strip_image_extension(child)
            if case in cases:
                raise InputImageError(
                    f"{folder}: holds two images of case {case!r} ({cases[case].name}, {child.name})."
                )
            cases[case] = child
    return cases


def _run_batch(args: argparse.Namespace) -> int:
    references = _cases(args.reference)
    predictions = _cases(args.prediction)
    if not references:
        raise InputImageError(f"{args.reference}: holds no image files.")
    missing = sorted(set(references) - set(predictions))
    if missing:
        raise InputImageError(
            f"{args.prediction}: no prediction for {len(missing)} reference case(s): {', '.join(missing)}. "
            f"Predictions are matched to references by file name without the ending."
        )
    extra = sorted(set(predictions) - set(references))
    if extra:
        print(
            f"note: ignoring {len(extra)} prediction(s) without a reference: {', '.join(extra)}",
            file=sys.stderr,
        )
    rows: dict[str, dict[str, float]] = {}
    for case, reference_path in references.items():
        try:
            rows[case] = _metrics_printing_warnings(
                read_image(reference_path), read_image(predictions[case]), args.label, args.resample, case
            )
        except PocketSegError as error:
            raise type(error)(f"case {case}: {error}") from error
    mean = mean_metrics(rows.values())
    if args.output:
        _write_csv(rows | {"mean": mean}, args.output)
    if args.json:
        print(json.dumps({"cases": rows, "mean": mean}))
    else:
        print(format_table(rows | {"mean": mean}))
    return 0


def _metrics_printing_warnings(
    reference, prediction, label: int, resample: bool, case: str
) -> dict[str, float]:
    """:func:`compute_metrics`, its empty-mask warning printed as one line on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EmptyMaskWarning)
        metrics = compute_metrics(reference, prediction, label=label, resample=resample)
    for warning in caught:
        if issubclass(warning.category, EmptyMaskWarning):
            print(f"warning: {f'case {case}: ' if case else ''}{warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return metrics


def mean_metrics(rows) -> dict[str, float]:
    """The per-metric mean over ``rows`` (each a dict with every :data:`METRIC_NAMES` key)."""
    rows = list(rows)
    return {name: math.fsum(row[name] for row in rows) / len(rows) for name in METRIC_NAMES}


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A fixed-width table: one line per case, columns in :data:`METRIC_NAMES` order (mm for distances)."""
    headers = [f"{name} (mm)" if name in DISTANCE_METRICS else name for name in METRIC_NAMES]
    case_width = max(4, *(len(case) for case in rows))
    widths = [max(9, len(header)) for header in headers]
    lines = [
        "case".ljust(case_width) + "  " + "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    ]
    for case, metrics in rows.items():
        cells = [f"{metrics[name]:.4f}".rjust(w) for name, w in zip(METRIC_NAMES, widths, strict=True)]
        lines.append(case.ljust(case_width) + "  " + "  ".join(cells))
    return "\n".join(lines)


def _write_csv(rows: dict[str, dict[str, float]], path: Path) -> None:
    """Write the table as CSV atomically (temporary file beside it, then ``os.replace``)."""
    buffer = text_io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["case", *METRIC_NAMES])
    for case, metrics in rows.items():
        writer.writerow([case, *(repr(float(metrics[name])) for name in METRIC_NAMES)])
    try:
        write_text_atomic(path, buffer.getvalue())
    except PocketSegError as error:
        raise PocketSegError(f"cannot write the CSV table: {error}") from error
