"""``python -m benchmarks.precision``: how each CUDA precision agrees with the CPU path, and its speed.

For the shipped bundles on phantoms of the full benchmark sizes and on the real images found in
the sample-data folder: the CPU mask (the reference every other test checks), then per precision
(float16 / bfloat16 autocast, TF32, strict float32) the CUDA mask's Dice against it, the number
of differing voxels, the in-process job time (median of 3 after a warm-up) and the peak GPU
memory. Chooses nothing by itself: docs/speed.md records the table and the default it supports.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from benchmarks.speed import FULL_INPUTS, make_phantom
from pocketseg_core.io import read_image, write_text_atomic
from pocketseg_core.metrics import dice

PRECISIONS = ("float16", "bfloat16", "tfloat32", "float32")
#: real images (relative to the sample data folder) and the task each is segmented with
REAL_IMAGES = (
    ("brain/swiss_atlas_t1.mha", "skullstrip"),
    ("liver/ts_abdomen_ct_small.nii.gz", "liver"),
    ("liver/ts_abdomen_ct_unlabeled.nii.gz", "liver"),
)


def images(data_root: Path) -> list[tuple[str, str, sitk.Image]]:
    found = [
        (
            f"phantom {task} {'x'.join(map(str, FULL_INPUTS[task]['size']))}",
            task,
            make_phantom(task, FULL_INPUTS[task]["size"], FULL_INPUTS[task]["spacing"]),
        )
        for task in ("skullstrip", "liver")
    ]
    for relative, task in REAL_IMAGES:
        if (data_root / relative).exists():
            found.append((relative, task, read_image(data_root / relative)))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("POCKETSEG_SHARED_DATA", "../shared/data"))
    parser.add_argument("--output", help="JSON file of the records")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import torch

    from pocketseg_core.bundles import load_bundle
    from pocketseg_core.inference import InferenceOptions, segment_image

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to compare")
        return 0
    records = []
    print("| image | precision | Dice vs CPU | voxels differ | job s (median) | peak GPU MB |")
    print("|---|---|---:|---:|---:|---:|")
    for name, task, image in images(Path(args.data)):
        bundle = load_bundle(task)
        network = bundle.build_network(torch.device("cpu"))
        reference = sitk.GetArrayFromImage(segment_image(image, bundle, InferenceOptions(device="cpu")).mask)
        gpu_network = bundle.build_network(torch.device("cuda"))
        for precision in PRECISIONS:
            options = InferenceOptions(device="cuda", precision=precision)
            segment_image(image, bundle, options, network=gpu_network)  # warm-up (cudnn.benchmark)
            torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(args.repeats):
                tick = time.perf_counter()
                result = segment_image(image, bundle, options, network=gpu_network)
                times.append(time.perf_counter() - tick)
            mask = sitk.GetArrayFromImage(result.mask)
            record = {
                "image": name,
                "task": task,
                "precision": precision,
                "dice_vs_cpu": dice(mask, reference),
                "voxels_differ": int(np.count_nonzero(mask != reference)),
                "job_seconds": statistics.median(times),
                "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20,
                "messages": result.messages,
            }
            records.append(record)
            print(
                f"| {name} | {precision} | {record['dice_vs_cpu']:.5f} | {record['voxels_differ']} | "
                f"{record['job_seconds']:.3f} | {record['peak_gpu_mb']:.0f} |",
                flush=True,
            )
        del network
    if args.output:
        write_text_atomic(
            Path(args.output),
            json.dumps(
                {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "records": records},
                indent=1,
            ),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
