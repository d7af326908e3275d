"""``pocketseg predict``: segment an image (or every image of a folder) with a model bundle.

Writes the mask on exactly the input's grid (and optionally the foreground probabilities and
the masked, e.g. skull-stripped, volume), shows a progress bar, prints a summary (time,
device, voxels, volume in ml). Every output is written atomically, and all outputs are
checked before the (long) run, so a failure or a cancel leaves no partial file behind.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pocketseg_core.bundles import ModelBundle, load_bundle
from pocketseg_core.errors import InputImageError, PocketSegError
from pocketseg_core.io import (
    ImageWriteError,
    image_extension,
    is_image_file,
    read_image,
    strip_image_extension,
)
from pocketseg_core.postprocessing import masked_volume
from pocketseg_core.staged_outputs import StagedOutputs

TASKS = ("skullstrip", "liver")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "predict",
        help="segment an image or a folder of images (brain extraction, liver)",
        description=(
            "Segment a 3D image (NIfTI, NRRD, MHA/MHD or a DICOM series folder) with a PocketSeg model. "
            "The mask is written on exactly the input's voxel grid. With a folder of images as input, "
            "--output (and --probabilities/--masked-volume) name folders."
        ),
    )
    parser.add_argument(
        "--input", "-i", required=True, help="image file, DICOM series folder, or folder of images"
    )
    parser.add_argument("--output", "-o", required=True, help="mask file (e.g. brain.nii.gz), or a folder")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--task", choices=TASKS, help="use the installed model for this task")
    which.add_argument("--model", help="model bundle folder, or a name from the model catalog")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument(
        "--backend",
        choices=("auto", "torch", "onnxruntime"),
        default="auto",
        help="what runs the network: auto (default: ONNX Runtime for a whole-grid model with an ONNX "
        "network on the CPU, no torch import; torch otherwise), torch, or onnxruntime",
    )
    parser.add_argument("--fast", action="store_true", help="coarser working spacing: faster, for CPUs")
    parser.add_argument("--tta", action="store_true", help="average over flipped inputs (slower, smoother)")
    parser.add_argument("--probabilities", help="also write the foreground probabilities (float32) here")
    parser.add_argument(
        "--masked-volume", help="also write the input with everything outside the mask set to 0"
    )
    parser.add_argument("--overlap", type=float, default=0.5, help="window overlap in [0, 1) (default 0.5)")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per network call (default 4)")
    parser.add_argument(
        "--precision",
        choices=("float32", "bfloat16", "float16", "tfloat32"),
        default="float32",
        help="network arithmetic (default float32); bfloat16 is faster on CPUs with AVX512-BF16 or AMX "
        "and on GPUs, and moves a few boundary voxels",
    )
    parser.add_argument("--fill-holes", action="store_true", help="fill enclosed holes in the mask")
    parser.add_argument(
        "--all-components",
        action="store_true",
        help="keep every connected component (default: the largest, after the model's bridge cutting if any; "
        "the model's hole filling runs either way)",
    )
    parser.add_argument(
        "--no-clean-up",
        action="store_true",
        help="the raw thresholded network output: no bridge cutting, largest component or hole filling",
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.add_argument(
        "--server",
        metavar="URL",
        help="segment on a PocketSeg server (pocketseg serve) instead of here, e.g. http://gpu-box:8765",
    )
    parser.add_argument("--token-file", help="with --server: file holding the server's token")
    parser.set_defaults(command="predict")
    return parser


@dataclass
class PredictJob:
    """One image to segment and where its outputs go."""

    input: Path
    output: Path
    probabilities: Path | None = None
    masked_volume: Path | None = None


def run(args: argparse.Namespace) -> int:
    from pocketseg_core.inference import InferenceOptions
    from pocketseg_core.malloc_tuning import tune_malloc_for_large_arrays

    tune_malloc_for_large_arrays()  # this process is the job's own (pocketseg_core.malloc_tuning)

    if not args.task and not args.model:
        raise PocketSegError("choose a model: --task skullstrip, --task liver, or --model PATH_OR_NAME")
    if not 0.0 <= args.overlap < 1.0:
        raise PocketSegError(f"--overlap must be in [0, 1), got {args.overlap}")
    if args.batch_size < 1:
        raise PocketSegError(f"--batch-size must be at least 1, got {args.batch_size}")
    jobs = plan_jobs(Path(args.input), Path(args.output), args.probabilities, args.masked_volume)
    if args.server:
        from pocketseg_core.cli.predict_remote import run_remote

        return run_remote(args, jobs)
    if args.token_file:
        raise PocketSegError("--token-file goes with --server URL; without --server the model runs here")
    bundle = load_bundle(args.model or args.task, read_weights=False)  # torch reads them if it runs
    options = InferenceOptions(
        device=args.device,
        backend=args.backend,
        fast=args.fast,
        tta=args.tta,
        overlap=args.overlap,
        batch_size=args.batch_size,
        precision=args.precision,
        cut_thin_bridges=not (args.all_components or args.no_clean_up),
        keep_largest_component=not (args.all_components or args.no_clean_up),
        bundle_fill_holes=not args.no_clean_up,
        fill_holes=args.fill_holes,
        return_probabilities=any(job.probabilities for job in jobs),
    )
    failures = 0
    network = None
    for job in jobs:
        try:
            network = predict_one(job, bundle, options, show_progress=not args.quiet, network=network)
        except PocketSegError as error:
            if len(jobs) == 1:
                raise
            failures += 1
            print(f"pocketseg predict: {job.input}: error: {error}", file=sys.stderr)
        except Exception as error:  # a defect, not the user's: one bad file must not stop the batch
            if len(jobs) == 1:
                raise
            failures += 1
            print(
                f"pocketseg predict: {job.input}: unexpected error ({type(error).__name__}: {error}); "
                f"skipped, please report it",
                file=sys.stderr,
            )
    if len(jobs) > 1:
        print(f"{len(jobs) - failures} of {len(jobs)} images segmented")
    return 1 if failures else 0


def plan_jobs(
    input_path: Path, output: Path, probabilities: str | None, masked_volume: str | None
) -> list[PredictJob]:
    """The images to segment and their outputs; checks every output location first."""
    if not input_path.exists():
        raise InputImageError(f"{input_path}: no such file or folder. Check the path.")
    if input_path.is_dir() and not _is_dicom_folder(input_path):
        inputs = sorted(
            p for p in input_path.iterdir() if is_image_file(p) or (p.is_dir() and _is_dicom_folder(p))
        )
        if not inputs:
            raise InputImageError(
                f"{input_path}: holds no image files (.nii, .nii.gz, .nrrd, .mha, .mhd) nor DICOM series"
            )
        folders = [output] + [Path(p) for p in (probabilities, masked_volume) if p]
        for folder in folders:
            if folder.resolve() == input_path.resolve():
                raise PocketSegError(f"{folder}: output folder is the input folder; choose another one")
            if folder.exists() and not folder.is_dir():
                raise ImageWriteError(f"{folder}: the input is a folder, so this output must be a folder too")
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ImageWriteError(
                    f"{folder}: cannot create the output folder ({error.strerror or error})"
                ) from None
        jobs = []
        for path in inputs:
            name = path.name if image_extension(path) else f"{path.name}.nii.gz"
            jobs.append(
                PredictJob(
                    input=path,
                    output=output / name,
                    probabilities=Path(probabilities) / name if probabilities else None,
                    masked_volume=Path(masked_volume) / name if masked_volume else None,
                )
            )
    else:
        if output.is_dir():
            output = output / f"{strip_image_extension(input_path)}_mask.nii.gz"
        jobs = [
            PredictJob(
                input=input_path,
                output=output,
                probabilities=Path(probabilities) if probabilities else None,
                masked_volume=Path(masked_volume) if masked_volume else None,
            )
        ]
    for job in jobs:
        for target in (job.output, job.probabilities, job.masked_volume):
            if target is not None:
                check_writable(target)
    check_no_aliasing(jobs)
    return jobs


def _file_key(path: Path) -> tuple:
    """What identifies the file ``path`` names: device and inode when it exists (so links and
    hard links count as the same file), else its resolved path."""
    try:
        status = path.stat()
        return ("inode", status.st_dev, status.st_ino)
    except OSError:
        return ("path", str(path.resolve()))


def check_no_aliasing(jobs: list[PredictJob]) -> None:
    """Refuse outputs that would overwrite an input or each other, before any work.

    Raises:
        PocketSegError: names the paths that collide.
    """
    inputs = {
        key: job.input for job in jobs for key in (_file_key(job.input), ("path", str(job.input.resolve())))
    }
    outputs: dict[tuple, tuple[str, Path]] = {}
    for job in jobs:
        for option, target in (
            ("--output", job.output),
            ("--probabilities", job.probabilities),
            ("--masked-volume", job.masked_volume),
        ):
            if target is None:
                continue
            keys = {_file_key(target), ("path", str(target.resolve()))}
            for key in keys:
                if key in inputs:
                    raise PocketSegError(
                        f"{option} {target} would overwrite the input {inputs[key]}; choose another output path"
                    )
                if key in outputs:
                    other_option, _ = outputs[key]
                    raise PocketSegError(
                        f"{option} and {other_option} both write {target}; give each output its own path"
                    )
            for key in keys:
                outputs[key] = (option, target)


def check_writable(path: Path) -> None:
    """Refuse an output path before the run rather than after it: known ending, folder exists
    and can be written, not the input itself."""
    if not image_extension(path):
        raise ImageWriteError(f"{path}: unknown image ending; use .nii.gz, .nii, .nrrd, .mha or .mhd")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ImageWriteError(
            f"{path}: cannot write, the folder {folder} does not exist. Create it or choose another path."
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ImageWriteError(
            f"{path}: cannot write into {folder} (no permission). Choose a folder you can write to."
        )
    if path.is_dir():
        raise ImageWriteError(f"{path}: is a folder; give a file name such as {path / 'mask.nii.gz'}")


def _is_dicom_folder(folder: Path) -> bool:
    try:
        return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    except RuntimeError:
        return False


@contextlib.contextmanager
def progress_bar(name: str, show: bool) -> Iterator[Callable[[float, str], bool]]:
    """A percent bar on stderr with the current stage, and the progress callback that moves it
    (tqdm is imported here: only a command-line run shows one)."""
    from tqdm import tqdm

    bar = tqdm(total=100, desc=name, unit="%", disable=not show, file=sys.stderr, leave=False)

    def progress(fraction: float, message: str) -> bool:
        bar.n = int(round(100 * fraction))
        bar.set_postfix_str(message, refresh=True)
        return True

    try:
        yield progress
    finally:
        bar.close()


def predict_one(job: PredictJob, bundle: ModelBundle, options, show_progress: bool = True, network=None):
    """Segment one image and write its outputs; returns the network (torch's or ONNX Runtime's,
    to reuse it)."""
    from pocketseg_core.inference import segment_image
    from pocketseg_core.inference.pipeline import load_network

    started = time.perf_counter()
    image = read_image(job.input)
    if network is None:
        network = load_network(bundle, options)
    with progress_bar(job.input.name, show_progress) as progress:
        result = segment_image(image, bundle, options, progress, network=network)
    # all or nothing, and a failure never costs the user an earlier file of the same name
    with StagedOutputs() as outputs:
        if job.masked_volume is not None:
            outputs.write(masked_volume(image, result.mask, bundle.config.modality), job.masked_volume)
        if job.probabilities is not None and result.probabilities is not None:
            outputs.write(result.probabilities, job.probabilities)
        outputs.write(result.mask, job.output)
        outputs.commit()
    print_summary(job, bundle, result, image, time.perf_counter() - started)
    return network


def print_summary(job: PredictJob, bundle: ModelBundle, result, image: sitk.Image, seconds: float) -> None:
    mask = sitk.GetArrayViewFromImage(result.mask)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    print(f"{job.input} -> {job.output}")
    print(
        f"  model {bundle.config.name} on {result.device} ({result.backend}), {seconds:.2f} s "
        f"(segmentation {result.seconds:.2f} s)"
    )
    for label in bundle.config.labels:
        count = int(np.count_nonzero(mask == label.value))
        print(f"  {label.name}: {count} voxels, {count * voxel_ml:.1f} ml")
    for message in result.messages:
        print(f"  warning: {message}")
