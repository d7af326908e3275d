"""``pocketseg predict --server URL``: the same outputs as a local run, computed by a PocketSeg server.

Each input goes to the server as it is (an NRRD, NIfTI or MHA file; anything else, a DICOM
folder for example, is read here and sent as NRRD), so the server reads the very header the
user has; the mask comes back in that format and is written on exactly the input's grid.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pocketseg_core.errors import PocketSegError
from pocketseg_core.io import image_extension, read_image, write_bytes_atomic, write_image
from pocketseg_core.postprocessing import masked_volume
from pocketseg_core.remote import RemoteClient, read_token_file, upload_extension


def run_remote(args: argparse.Namespace, jobs: list) -> int:
    """Segment every planned job (``cli.predict.PredictJob``) on the server of ``args.server``."""
    if args.probabilities:
        raise PocketSegError("--probabilities is not available with --server; run without --server for them")
    if args.device != "auto":
        raise PocketSegError("--device cannot be chosen with --server: the server runs on its own device")
    model = args.model or args.task
    if os.sep in model or Path(model).exists():
        raise PocketSegError(
            f"with --server, --model names a model of the server's catalog, not a folder ('{model}')"
        )
    client = RemoteClient(args.server, read_token_file(args.token_file) if args.token_file else None)
    info = client.model_info(model)
    options = {
        "fast": bool(args.fast),
        "tta": bool(args.tta),
        "overlap": float(args.overlap),
        "cut_thin_bridges": not (args.all_components or args.no_clean_up),
        "keep_largest_component": not (args.all_components or args.no_clean_up),
        "bundle_fill_holes": not args.no_clean_up,
        "fill_holes": bool(args.fill_holes),
    }
    failures = 0
    for job in jobs:
        try:
            segment_remotely(client, job, info, options, show_progress=not args.quiet)
        except PocketSegError as error:
            if len(jobs) == 1:
                raise
            failures += 1
            print(f"pocketseg predict: {job.input}: error: {error}", file=sys.stderr)
    if len(jobs) > 1:
        print(f"{len(jobs) - failures} of {len(jobs)} images segmented on {client.url}")
    return 1 if failures else 0


def segment_remotely(
    client: RemoteClient, job, info: dict, options: dict, show_progress: bool = True
) -> None:
    """Upload one input, follow the job, write its outputs (all of them or none)."""
    from pocketseg_core.cli.predict import progress_bar

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pocketseg-remote-") as scratch:
        upload = Path(job.input)
        if not upload_extension(upload) or upload.is_dir():
            upload = Path(scratch) / "input.nrrd"
            sitk.WriteImage(read_image(job.input), str(upload), True)
        else:
            read_image(upload)  # refuse an unreadable input here, with the local path in the message
        extension = upload_extension(upload)
        with progress_bar(job.input.name, show_progress) as progress:
            status = client.segment_file(
                upload, Path(scratch) / f"mask{extension}", info["name"], options, progress
            )
        downloaded = Path(scratch) / f"mask{extension}"
        mask = sitk.ReadImage(str(downloaded))
        written: list[Path] = []
        try:
            if job.masked_volume is not None:
                image = read_image(job.input)
                written.append(
                    write_image(masked_volume(image, mask, info.get("modality", "MR")), job.masked_volume)
                )
            if image_extension(job.output) == extension:
                written.append(write_bytes_atomic(job.output, downloaded.read_bytes()))
            else:
                written.append(write_image(mask, job.output))
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
    values = sitk.GetArrayViewFromImage(mask)
    voxel_ml = float(np.prod(mask.GetSpacing())) / 1000.0
    print(f"{job.input} -> {job.output}")
    print(
        f"  model {info['name']} on {client.url} ({status.device}), {time.perf_counter() - started:.2f} s "
        f"(segmentation {status.seconds:.2f} s)"
    )
    for label in info.get("config", {}).get("labels", []):
        count = int(np.count_nonzero(values == int(label.get("value", 1))))
        print(f"  {label.get('name', 'label')}: {count} voxels, {count * voxel_ml:.1f} ml")
    for message in status.messages:
        print(f"  warning: {message}")
