"""``pocketseg models``: the installed models, and every network of the zoo with its size and
cost next to the paper's.

Without ``--json`` tables for people; with ``--json`` one JSON object
``{"bundles": [{name, task, title, modality, version, source, path, weights_sha256, onnx_sha256,
default}],
"networks": [{name, params, paper_params, params_ratio, gflops, gmacs, paper_gflops, ...}]}``;
``default`` marks the model a task alias (``--task liver``, the one-click button) runs.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the network zoo imports torch: only ``pocketseg models`` itself needs it
    from pocketseg_core.networks import NetworkSummary


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "models",
        help="list the installed models, and the networks with parameters and FLOPs against the papers",
        description=(
            "List the installed models (shipped and your own; use one by name with predict --model "
            "NAME) and every network of the zoo: trainable parameters and FLOPs "
            "(torch.utils.flop_counter, 2 per multiply-accumulate) for the paper's input size, with "
            "the published values."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser


def _count(value: int | None) -> str:
    if value is None:
        return "-"
    if value >= 1_000_000:
        return f"{value / 1e6:.3f} M"
    return f"{value / 1e3:.1f} K"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_table(summaries: list[NetworkSummary]) -> str:
    """A fixed-width text table of the summaries."""
    header = (
        "network",
        "input (D,H,W)",
        "params",
        "paper",
        "ratio",
        "pocket/full",
        "GFLOPs",
        "GMACs",
        "paper GFLOPs",
        "ratio",
        "source",
    )
    rows = [header]
    for s in summaries:
        rows.append(
            (
                s.name,
                "x".join(str(n) for n in s.paper_input),
                _count(s.params),
                _count(s.paper_params),
                _ratio(s.params_ratio),
                "-" if s.pocket_to_full is None else f"{100 * s.pocket_to_full:.1f} %",
                f"{s.gflops:.2f}",
                f"{s.gmacs:.2f}",
                "-" if s.paper_gflops is None else f"{s.paper_gflops:.2f} ({s.paper_flop_convention})",
                _ratio(s.gflops_ratio),
                s.paper_source,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.append("")
    lines.append(
        "GFLOPs: torch.utils.flop_counter (2 per multiply-accumulate, convolutions only), batch of one. "
        "LV-Net's paper counts one per multiply-accumulate; its ratio compares GMACs. "
        "Why the 2D PocketNet counts differ from Table 2: docs/networks.md."
    )
    return "\n".join(lines)


def installed_models() -> list[dict]:
    """The installed bundles (shipped first, then the user's) as plain dicts, each with
    ``default``: whether its task alias resolves to it."""
    from pocketseg_core.bundles import list_bundles, resolve_bundle

    entries = list_bundles()
    defaults = {}
    for task in {entry.task for entry in entries if entry.task}:
        defaults[task] = resolve_bundle(task).resolve()
    return [
        {**entry.to_dict(), "default": bool(entry.task) and entry.path.resolve() == defaults[entry.task]}
        for entry in entries
    ]


def format_models(models: list[dict]) -> str:
    """A fixed-width text table of the installed models."""
    rows = [("model", "task", "version", "source", "title")]
    for model in models:
        task = f"{model['task']} (default)" if model["default"] else str(model["task"] or "-")
        rows.append((model["name"], task, model["version"] or "-", model["source"], model["title"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from pocketseg_core.networks import all_summaries

    models = installed_models()
    summaries = all_summaries()
    if args.json:
        print(json.dumps({"bundles": models, "networks": [s.to_dict() for s in summaries]}, indent=2))
    else:
        print(format_table(summaries))
        print()
        print("Installed models (pocketseg predict --model NAME; --task TASK runs the default):\n")
        print(format_models(models))
    return 0
