"""``python -m benchmarks peers-speed``: PocketSeg's whole process against a peer's, side by side.

Each *round* runs ``pocketseg predict`` (this checkout, CPU, ``--threads`` threads) and the peer
tool (deepbet by default, through the peers' own Python and ``benchmarks/peer_driver.py``) as
whole processes on the same head, one after the other, the order swapped every round so that a
change of the machine's load falls on both. Each process is timed from start to exit (imports,
model load, read, segmentation, write), which is what a user waits for; the CPU time of the
child (user + system, from ``os.wait4``) is recorded too, because on a shared machine it moves
far less with the load than the wall clock. The result is the median of each tool and the
ratio PocketSeg / peer of the medians, and of each round (same moment, same load).

The peer runs on the head reoriented to FSL's standard orientation (as ``fslreorient2std`` does
before these tools); PocketSeg runs on the same file. ``--peer-command`` replaces the peer's
command by any command line with ``{input}`` and ``{output}`` (a test, another tool).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pocketseg_core.errors import PocketSegError

REPOSITORY = Path(__file__).resolve().parents[1]
#: the peers' whole-process driver (one tool, one head, one mask; see benchmarks/peer_driver.py)
PEER_DRIVER = REPOSITORY / "benchmarks" / "peer_driver.py"
#: FSL's standard orientation (fslreorient2std; the MNI152 template's), in SimpleITK's orientation code
STANDARD_ORIENTATION = "LAS"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


@dataclass(frozen=True)
class ProcessTiming:
    """One whole process: wall-clock seconds, CPU seconds of the child (user + system), peak RSS."""

    wall_s: float
    cpu_s: float
    peak_rss_mb: float


def thread_environment(threads: int) -> dict[str, str]:
    """This process's environment with every thread pool of the child set to ``threads``."""
    environment = dict(os.environ)
    for name in THREAD_VARIABLES:
        environment[name] = str(threads)
    return environment


#: started between the harness and the timed command: Linux gives an exec'd child the peak RSS of
#: the process it was forked from as its own starting peak, so a command forked straight from a
#: harness holding GBs (``targets`` has just run the in-process jobs) reported the harness's peak.
#: This small launcher (``python -S``, ~10 MB) forks the command and writes its CPU seconds and
#: peak RSS (``wait4``) to the file named first; it exits with the command's status.
_LAUNCHER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w", encoding="utf-8") as report:
    json.dump({"cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024.0}, report)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def time_process(command: Sequence[str], environment: dict[str, str] | None = None) -> ProcessTiming:
    """Run ``command`` to its end; its wall time (the small launcher's start, ~20 ms, included),
    CPU time and peak RSS (the command's own, see :data:`_LAUNCHER`). Raises
    :class:`PocketSegError` (with the end of its output) when it fails."""
    with tempfile.TemporaryDirectory(prefix="pocketseg-time-") as scratch:
        report_path = Path(scratch) / "usage.json"
        launcher = [sys.executable, "-S", "-c", _LAUNCHER, str(report_path), *command]
        tick = time.perf_counter()
        process = subprocess.Popen(
            launcher, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=environment, text=True
        )
        output = process.stdout.read() if process.stdout else ""
        process.wait()
        wall = time.perf_counter() - tick
        if process.stdout:
            process.stdout.close()
        if process.returncode != 0 or not report_path.exists():
            raise PocketSegError(
                f"{Path(command[0]).name} {' '.join(command[1:3])} ... failed (exit {process.returncode}): "
                f"{output.strip()[-400:]}"
            )
        usage = json.loads(report_path.read_text(encoding="utf-8"))
    return ProcessTiming(wall, float(usage["cpu_s"]), float(usage["peak_rss_mb"]))


def time_alternating(
    commands: dict[str, Sequence[str]],
    rounds: int,
    environment: dict[str, str] | None = None,
    warmup: int = 1,
    log: Any = None,
) -> dict[str, list[ProcessTiming]]:
    """Each command of ``commands`` once per round, the order reversed every other round
    (after ``warmup`` untimed rounds that fill the page cache); the timings per name."""
    names = list(commands)
    timings: dict[str, list[ProcessTiming]] = {name: [] for name in names}
    for round_index in range(warmup + rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            timing = time_process(commands[name], environment)
            if round_index >= warmup:
                timings[name].append(timing)
            if log is not None:
                kind = "warm-up" if round_index < warmup else f"round {round_index - warmup + 1}/{rounds}"
                print(
                    f"  {kind}: {name} {timing.wall_s:.2f} s wall, {timing.cpu_s:.2f} s CPU, "
                    f"load {os.getloadavg()[0]:.1f}",
                    file=log,
                    flush=True,
                )
    return timings


def summarise(timings: dict[str, list[ProcessTiming]], ours: str, peer: str) -> dict[str, Any]:
    """Medians per tool, and the ratios ours / peer: of the medians and per round."""
    medians = {
        name: {
            "wall_s": statistics.median(t.wall_s for t in runs),
            "cpu_s": statistics.median(t.cpu_s for t in runs),
            "peak_rss_mb": max(t.peak_rss_mb for t in runs),
        }
        for name, runs in timings.items()
    }
    per_round = [
        {"wall": a.wall_s / b.wall_s, "cpu": a.cpu_s / b.cpu_s}
        for a, b in zip(timings[ours], timings[peer], strict=True)
    ]
    return {
        "medians": medians,
        "ratio_wall": medians[ours]["wall_s"] / medians[peer]["wall_s"],
        "ratio_cpu": medians[ours]["cpu_s"] / medians[peer]["cpu_s"],
        "ratio_wall_per_round": [round(r["wall"], 3) for r in per_round],
        "ratio_cpu_per_round": [round(r["cpu"], 3) for r in per_round],
    }


def standard_head(source: Path, folder: Path) -> Path:
    """``source`` reoriented to FSL's standard orientation, as NIfTI in ``folder`` (the peers'
    expected input; PocketSeg reads any orientation and runs on the same file)."""
    import SimpleITK as sitk

    from pocketseg_core.io import read_image, write_image

    target = folder / "head_standard.nii.gz"
    write_image(sitk.DICOMOrient(read_image(source), STANDARD_ORIENTATION), target)
    return target


def pocketseg_command(head: Path, output: Path, task: str, extra: Sequence[str] = ()) -> list[str]:
    """``pocketseg predict`` of this checkout on the CPU, quiet, with ``extra`` options."""
    command = [sys.executable, "-m", "pocketseg_core", "predict", "--task", task, "--device", "cpu", "-q"]
    return command + ["--input", str(head), "--output", str(output), *extra]


def peer_command(
    peer: str, head: Path, output: Path, peers_python: str | None, template: str | None
) -> list[str]:
    """The peer's whole process: ``template`` with ``{input}``/``{output}`` filled in, else the
    peers' Python running :data:`PEER_DRIVER`."""
    if template:
        if "{input}" not in template or "{output}" not in template:
            raise PocketSegError("--peer-command must contain {input} and {output}")
        return [part.format(input=head, output=output) for part in shlex.split(template)]
    if not peers_python:
        raise PocketSegError("give --peers-python (the peers' venv python) or --peer-command")
    if not Path(peers_python).exists():
        raise PocketSegError(f"--peers-python {peers_python} does not exist: create the peers' venv first")
    if not PEER_DRIVER.exists():
        raise PocketSegError(
            f"{PEER_DRIVER} is missing (it comes with the accuracy harness); give --peer-command instead"
        )
    return [peers_python, str(PEER_DRIVER), peer, str(head), str(output)]


def render_markdown(report: dict[str, Any]) -> str:
    medians = report["summary"]["medians"]
    lines = [
        f"Whole process, {report['rounds']} alternating rounds after {report['warmup']} warm-up, "
        f"{report['threads']} thread(s), {report['date']}, {report['machine']}, load (1 min) "
        f"{report['load_before'][0]:.1f} before / {report['load_after'][0]:.1f} after; head {report['head']}",
        "",
        "| tool | wall s (median) | CPU s (median) | peak RSS MB |",
        "|---|---:|---:|---:|",
    ]
    for name, values in medians.items():
        lines.append(
            f"| {name} | {values['wall_s']:.2f} | {values['cpu_s']:.2f} | {values['peak_rss_mb']:.0f} |"
        )
    summary = report["summary"]
    lines += [
        "",
        f"Ratio pocketseg / {report['peer']}: wall {summary['ratio_wall']:.3f} "
        f"(per round {summary['ratio_wall_per_round']}), CPU {summary['ratio_cpu']:.3f} "
        f"(per round {summary['ratio_cpu_per_round']})",
    ]
    return "\n".join(lines) + "\n"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "peers-speed",
        help="PocketSeg's whole process against a peer's (deepbet) on the same head, alternating",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--head", required=True, help="a head image (1 mm T1); any orientation")
    parser.add_argument("--task", default="skullstrip", help="PocketSeg task (default skullstrip)")
    parser.add_argument(
        "--pocketseg-options",
        default="",
        help='more options of pocketseg predict, as one string (e.g. "--precision bfloat16")',
    )
    parser.add_argument("--peer", default="deepbet", help="peer tool of peer_driver.py (default deepbet)")
    parser.add_argument("--peers-python", help="python of the peers' virtual environment")
    parser.add_argument(
        "--peer-command", help="instead: the peer's command line, with {input} and {output} in it"
    )
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="threads of every tool (default 2)")
    parser.add_argument("--output", "-o", help="folder for peers_speed_<date>.json and .md")
    parser.set_defaults(command="peers-speed")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.rounds < 1 or args.warmup < 0 or args.threads < 1:
        raise PocketSegError("--rounds and --threads must be >= 1 and --warmup >= 0")
    head = Path(args.head)
    if not head.exists():
        raise PocketSegError(f"{head}: no such head image")
    environment = thread_environment(args.threads)
    environment["PYTHONPATH"] = str(REPOSITORY) + os.pathsep + environment.get("PYTHONPATH", "")
    with tempfile.TemporaryDirectory(prefix="pocketseg-peers-speed-") as scratch:
        folder = Path(scratch)
        standard = standard_head(head, folder)
        commands = {
            "pocketseg": pocketseg_command(
                standard, folder / "pocketseg_mask.nii.gz", args.task, shlex.split(args.pocketseg_options)
            ),
            args.peer: peer_command(
                args.peer, standard, folder / f"{args.peer}_mask.nii.gz", args.peers_python, args.peer_command
            ),
        }
        load_before = os.getloadavg()
        timings = time_alternating(commands, args.rounds, environment, args.warmup, log=sys.stderr)
        load_after = os.getloadavg()
    report = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPU(s)",
        "head": str(head),
        "peer": args.peer,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "threads": args.threads,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in load_after],
        "commands": {name: command for name, command in commands.items()},
        "timings": {name: [t.__dict__ for t in runs] for name, runs in timings.items()},
        "summary": summarise(timings, "pocketseg", args.peer),
    }
    markdown = render_markdown(report)
    print(markdown)
    if args.output:
        from pocketseg_core.io import write_text_atomic

        folder = Path(args.output)
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / f"peers_speed_{datetime.date.today().isoformat()}"
        write_text_atomic(stem.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
        write_text_atomic(stem.with_suffix(".md"), markdown)
        print(f"written: {stem}.json and {stem}.md")
    return 0
