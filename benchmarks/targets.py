"""``python -m benchmarks targets``: the numbers of the CPU speed targets (issue #18) in one run.

Skull strip of a 256 x 256 x 192 T1 at 1 mm and liver of a 512 x 512 x 200 CT (the phantoms of
:mod:`benchmarks.speed`, or ``--head`` for the skull strip's whole-process rounds), on the CPU
with ``--threads`` threads:

1. the in-process job (read NIfTI -> mask written, median after a warm-up), its stages, one
   network pass against the measured fp32 matmul peak and the peak RSS, for both shipped
   bundles (:func:`benchmarks.speed.run_benchmark`, pocket networks only, each in its own
   process);
2. ``pocketseg predict`` and deepbet as whole processes on the same head, alternating
   (:mod:`benchmarks.peers_speed`): wall and CPU seconds, peak RSS, the ratio per round;

then one table: each target, the measured number, met or not. On a shared machine the wall
clock says what the machine did meanwhile: read the load (printed) and the CPU columns.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from pocketseg_core.errors import PocketSegError

#: the stretch targets of issue #18 (2 threads, this project's 2-core CPU)
SKULLSTRIP_JOB_S = 1.0
SKULLSTRIP_PROCESS_S = 2.5
RATIO_TO_DEEPBET = 1.0 / 3.0
PERCENT_OF_PEAK = 40.0
PEAK_MEMORY_MB = 1024.0
LIVER_JOB_S = 2.5

#: the peers' virtual environment's python, when not given by --peers-python
PEERS_PYTHON_VARIABLE = "POCKETSEG_PEERS_PYTHON"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "targets",
        help="the CPU speed targets' numbers in one run: in-process jobs, whole process against deepbet",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--threads", type=int, default=2, help="threads of every tool (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed in-process jobs per task (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating whole-process rounds (default 3)")
    parser.add_argument(
        "--head", help="head for the whole-process rounds (default: the 256x256x192 T1 phantom at 1 mm)"
    )
    parser.add_argument(
        "--peers-python",
        default=os.environ.get(PEERS_PYTHON_VARIABLE) or None,
        help=f"python of the peers' virtual environment (default ${PEERS_PYTHON_VARIABLE}); "
        "without it the deepbet rounds are skipped",
    )
    parser.add_argument("--peer", default="deepbet", help="peer tool of peer_driver.py (default deepbet)")
    parser.add_argument(
        "--pocketseg-options",
        default="",
        help='more options of pocketseg predict (e.g. "--precision bfloat16")',
    )
    parser.add_argument("--output", "-o", required=True, help="folder for the JSON and markdown results")
    parser.set_defaults(command="targets")
    return parser


def _verdict(value: float | None, limit: float, at_least: bool = False) -> str:
    if value is None:
        return "not measured"
    return "met" if (value >= limit if at_least else value <= limit) else "not met"


def targets_table(speed: dict[str, Any], peers: dict[str, Any] | None, peer: str) -> list[dict[str, Any]]:
    """The rows of the targets table from a :func:`run_benchmark` report and a peers summary."""
    # the first pocket record of a task is its default model (the catalog lists defaults first);
    # the targets are the one-click buttons', not those of a model picked by name: a default that
    # failed leaves its targets unmeasured (the error is listed), never measured on the next model
    defaults: dict[str, Any] = {}
    for record in speed["records"]:
        if record.get("role") == "pocket":
            defaults.setdefault(record["task"], record)
    skull, liver = (
        default if default is not None and "error" not in default else None
        for default in (defaults.get("skullstrip"), defaults.get("liver"))
    )
    medians = peers["medians"] if peers else None
    ours = medians["pocketseg"] if medians else None
    rows = [
        ("skull strip, in-process job s (wall)", skull and skull["seconds"]["job"], SKULLSTRIP_JOB_S, False),
        ("skull strip, whole process s (wall)", ours and ours["wall_s"], SKULLSTRIP_PROCESS_S, False),
        (
            f"whole process / {peer}'s (wall, same run)",
            peers and peers["ratio_wall"],
            RATIO_TO_DEEPBET,
            False,
        ),
        (
            "network pass, % of the measured peak",
            skull and skull["percent_of_peak_pass"],
            PERCENT_OF_PEAK,
            True,
        ),
        ("skull strip, peak RSS MB (in-process)", skull and skull["peak_rss_mb"], PEAK_MEMORY_MB, False),
        ("skull strip, peak RSS MB (whole process)", ours and ours["peak_rss_mb"], PEAK_MEMORY_MB, False),
        ("liver, in-process job s (wall)", liver and liver["seconds"]["job"], LIVER_JOB_S, False),
    ]
    table = []
    for name, value, limit, at_least in rows:
        table.append(
            {
                "target": name,
                "value": None if value is None else float(value),
                "limit": (">= " if at_least else "<= ") + f"{limit:g}",
                "verdict": _verdict(value, limit, at_least),
            }
        )
    return table


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"CPU targets, {report['date']}, {report['machine']}, {report['threads']} thread(s), "
        f"load (1 min) {report['load_before'][0]:.1f} before / {report['load_after'][0]:.1f} after",
        "",
        "| target | measured | limit | |",
        "|---|---:|---|---|",
    ]
    for row in report["table"]:
        value = "–" if row["value"] is None else f"{row['value']:.3g}"
        lines.append(f"| {row['target']} | {value} | {row['limit']} | {row['verdict']} |")
    lines.append("")
    for record in report["speed_records"]:
        if "error" in record:
            lines.append(f"- {record['task']}: failed: {record['error']}")
            continue
        seconds = record["seconds"]
        stages = ", ".join(
            f"{key} {seconds[key]:.2f}" for key in ("read", "preprocess", "network", "postprocess", "write")
        )
        lines.append(
            f"- {record['task']} in-process (wall s, median of {record['repeats_done']}): job {seconds['job']:.2f} "
            f"(CPU {seconds.get('job_cpu', float('nan')):.2f}) = {stages}; pass {record['network_pass_seconds']:.3f} s "
            f"= {record['gflops_achieved_pass']:.0f} GFLOP/s of {report['peak_gflops']:.0f}"
        )
    if report.get("peers"):
        summary = report["peers"]
        for name, values in summary["medians"].items():
            lines.append(
                f"- whole process {name}: {values['wall_s']:.2f} s wall, {values['cpu_s']:.2f} s CPU, "
                f"{values['peak_rss_mb']:.0f} MB (median of {report['rounds']} alternating rounds)"
            )
        lines.append(
            f"- ratio per round: wall {summary['ratio_wall_per_round']}, CPU {summary['ratio_cpu_per_round']}"
        )
    else:
        lines.append(f"- whole-process rounds skipped: {report.get('peers_note', '')}")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    import platform

    from benchmarks import peers_speed
    from benchmarks.speed import FULL_INPUTS, BenchmarkSettings, make_phantom, run_benchmark
    from pocketseg_core import io

    if args.threads < 1 or args.repeats < 1 or args.rounds < 1:
        raise PocketSegError("--threads, --repeats and --rounds must be >= 1")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.UTC)
    log = sys.stderr
    print(f"load {load_before[0]:.1f}: in-process jobs (skull strip, liver) ...", file=log, flush=True)
    settings = BenchmarkSettings(
        tasks=["skullstrip", "liver"],
        devices=["cpu"],
        repeats=args.repeats,
        warmup=1,
        threads=args.threads,
        networks=["pocket"],
        peers=False,
    )
    paths = run_benchmark(settings, output, log=lambda line: print(line, file=log, flush=True))
    speed = json.loads(paths["json"].read_text(encoding="utf-8"))
    peers_summary, peers_note = None, ""
    if not args.peers_python:
        peers_note = "no --peers-python (the peers' virtual environment) given"
    else:
        environment = peers_speed.thread_environment(args.threads)
        environment["PYTHONPATH"] = (
            str(peers_speed.REPOSITORY) + os.pathsep + environment.get("PYTHONPATH", "")
        )
        with tempfile.TemporaryDirectory(prefix="pocketseg-targets-") as scratch:
            folder = Path(scratch)
            head = Path(args.head) if args.head else folder / "t1_phantom.nii.gz"
            if not args.head:
                size = FULL_INPUTS["skullstrip"]
                io.write_image(make_phantom("skullstrip", size["size"], size["spacing"]), head)
            standard = peers_speed.standard_head(head, folder)
            commands = {
                "pocketseg": peers_speed.pocketseg_command(
                    standard,
                    folder / "pocketseg_mask.nii.gz",
                    "skullstrip",
                    shlex.split(args.pocketseg_options),
                ),
                args.peer: peers_speed.peer_command(
                    args.peer, standard, folder / f"{args.peer}_mask.nii.gz", args.peers_python, None
                ),
            }
            print(f"load {os.getloadavg()[0]:.1f}: whole processes, alternating ...", file=log, flush=True)
            timings = peers_speed.time_alternating(commands, args.rounds, environment, warmup=1, log=log)
            peers_summary = peers_speed.summarise(timings, "pocketseg", args.peer)
    report = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPU(s), torch {speed['torch']}",
        "threads": args.threads,
        "rounds": args.rounds,
        "head": args.head or "T1 phantom 256x256x192 at 1 mm",
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "peak_gflops": speed["device_peaks"]["cpu"]["gflops"],
        "speed_records": speed["records"],
        "peers": peers_summary,
        "peers_note": peers_note,
        "table": targets_table(speed, peers_summary, args.peer),
    }
    markdown = render_markdown(report)
    print(markdown)
    from pocketseg_core.io import write_text_atomic

    stem = output / f"targets_{started.strftime('%Y-%m-%d_%H%M')}"
    write_text_atomic(stem.with_suffix(".json"), json.dumps(report, indent=1) + "\n")
    write_text_atomic(stem.with_suffix(".md"), markdown)
    print(f"written: {stem}.json and {stem}.md (and {paths['json'].name})")
    return 0
