"""Speed and memory benchmark: PocketSeg's networks side by side with their full-size
counterparts and the peers' architectures, on the same input, in the same run.

What one *case* (a network x a task x a device) measures, in a fresh subprocess
(``python -m benchmarks.speed --case CASE.json``) so that its peak RSS is its own:

- the whole job: read the NIfTI file -> :func:`~pocketseg_core.inference.segment_image` ->
  mask written (atomic NIfTI write), split into read / preprocess / network / postprocess /
  write (``result.timings`` plus the read and write times);
- one network pass: a batch of ``batch_size`` windows of the case's window size, forward only;
- medians over ``repeats`` runs after ``warmup`` runs (fewer when a case would exceed
  ``max_case_seconds``: the slow peers on a CPU; the JSON says how many were done);
- the subprocess sets glibc's allocator as the worker process and ``pocketseg predict`` do
  (:mod:`pocketseg_core.malloc_tuning`; the record's ``malloc_tuned``), since a job in Slicer or
  on the command line runs that way;
- peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and peak GPU memory
  (``torch.cuda.max_memory_allocated``);
- FLOPs of one window (``torch.utils.flop_counter`` on the ``meta`` device, 2 FLOPs per MAC) x
  the number of windows, and the achieved FLOP/s against the device's peak measured in the same
  run (a large fp32 matmul on the CPU, bf16 on CUDA).

Networks compared per task: every shipped pocket network of the catalog (else the papers'
preset networks), the full-size counterpart of each (same arguments, ``pocket=False``), and,
with random weights (speed does not depend on weights), MONAI's UNet and an nnU-Net-style
DynUNet (nnU-Net's default 3D plan, as used by HD-BET and TotalSegmentator). MONAI is a
benchmark-only extra (``pip install monai==1.6.1``); without it the peers are skipped with a note.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pocketseg_core.errors import PocketSegError
from pocketseg_core.io import write_text_atomic
from pocketseg_core.training.ct_synthesis import smooth_noise

TASKS = ("skullstrip", "liver")
REPOSITORY_ROOT = Path(__file__).resolve().parents[1]

#: the benchmark's input sizes, SimpleITK (x, y, z) order: T1 256x256x192 at 1 mm; CT 512x512x200
FULL_INPUTS: dict[str, dict[str, Any]] = {
    "skullstrip": {"size": (256, 256, 192), "spacing": (1.0, 1.0, 1.0)},
    # a typical abdominal CT: 0.8 mm pixels, 2 mm slices (41 x 41 x 40 cm)
    "liver": {"size": (512, 512, 200), "spacing": (0.8, 0.8, 2.0)},
}
#: --quick: small crops at the same spacing (the working spacing is the bundle's, so a coarser
#: input would be resampled back to full size): smoke tests, never numbers to report
QUICK_INPUTS: dict[str, dict[str, Any]] = {
    "skullstrip": {"size": (64, 64, 40), "spacing": (1.0, 1.0, 1.0)},
    "liver": {"size": (96, 96, 24), "spacing": (1.6, 1.6, 4.0)},
}

#: the papers' preset networks, used when the catalog ships no bundle for a task
#: (pocketseg_core.training.presets: pocketnet-nfbs, pocketnet-lits, lvnet-lits)
PRESET_CASES: dict[str, list[dict[str, Any]]] = {
    "skullstrip": [
        {
            "network": "pocket_unet3d",
            "network_args": {"num_classes": 2},
            "spacing": (1.0, 1.0, 1.0),
            "window_mode": "slab",
            "window_size_zyx": (5, 0, 0),
            "modality": "MR",
            "preprocessing": {"kind": "mr_zscore"},
        }
    ],
    "liver": [
        {
            "network": "pocket_unet2d",
            "network_args": {"num_classes": 2},
            "spacing": (1.5, 1.5, 2.5),
            "window_mode": "slice2d",
            "window_size_zyx": (1, 0, 0),
            "modality": "CT",
            "preprocessing": {"kind": "ct_window", "window": [-100, 200], "normalize": "unit"},
        },
        {
            "network": "lvnet",
            "network_args": {},
            "spacing": (1.5, 1.5, 2.5),
            "window_mode": "slab",
            "window_size_zyx": (16, 0, 0),
            "modality": "CT",
            "preprocessing": {"kind": "ct_window", "window": [-200, 200], "normalize": "zscore"},
        },
    ],
}

#: the peers' working spacing (mm): HD-BET and nnU-Net brain plans run at ~1 mm; TotalSegmentator
#: at 1.5 mm (its fast mode at 3 mm)
PEER_SPACING: dict[str, tuple[float, float, float]] = {
    "skullstrip": (1.0, 1.0, 1.0),
    "liver": (1.5, 1.5, 1.5),
}
PEER_NETWORKS = ("monai_unet", "nnunet_dynunet")
#: nnU-Net's default 3D full-resolution plan (and HD-BET's patch size): 128^3 patches
PEER_PATCH = (128, 128, 128)


# --------------------------------------------------------------------------- phantoms


def _ellipsoid(shape_zyx: Sequence[int], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """Boolean ellipsoid on a ``(z, y, x)`` grid; centre and radii in voxels (z, y, x)."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape_zyx)]
    distance = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True))
    return distance <= 1.0


def make_phantom(
    task: str, size_xyz: Sequence[int], spacing_xyz: Sequence[float], seed: int = 0
) -> sitk.Image:
    """A synthetic input of the task's kind and size.

    ``skullstrip``: a T1-like head (uint16-range float): an ellipsoid head of scalp/skull
    around a brighter brain with darker ventricles. ``liver``: an abdominal CT in HU (int16):
    air around a body of subcutaneous fat, a muscle wall, an inside of soft tissue (35 HU)
    with fat between (the top 30 % of a smooth random field 15 mm coarse, as mesenteric fat
    lies between bowel loops), a contrast-enhanced liver (110 HU), a spine, noise.

    Why the liver phantom needs the fat inside: the network's time does not depend on realism,
    the clean-up's does (it grows with the mask), and a body of uniform 40 HU soft tissue looks
    like an unenhanced liver from edge to edge: liver models labelled 10-16 l of it.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in reversed(size_xyz))  # (z, y, x)
    centre = [n / 2 for n in shape]
    if task == "skullstrip":
        head = _ellipsoid(shape, centre, [0.42 * shape[0], 0.45 * shape[1], 0.38 * shape[2]])
        brain = _ellipsoid(shape, centre, [0.33 * shape[0], 0.36 * shape[1], 0.30 * shape[2]])
        ventricles = _ellipsoid(shape, centre, [0.06 * shape[0], 0.12 * shape[1], 0.04 * shape[2]])
        volume = np.where(head, 300.0, 5.0) + np.where(brain, 400.0, 0.0) - np.where(ventricles, 500.0, 0.0)
        volume = np.clip(volume + rng.normal(0.0, 15.0, shape), 0, None).astype(np.float32)
    elif task == "liver":
        body = _ellipsoid(shape, centre, [0.7 * shape[0], 0.40 * shape[1], 0.46 * shape[2]])
        inner = _ellipsoid(shape, centre, [0.7 * shape[0], 0.34 * shape[1], 0.40 * shape[2]])
        liver = _ellipsoid(
            shape,
            [0.55 * shape[0], 0.45 * shape[1], 0.35 * shape[2]],
            [0.2 * shape[0], 0.16 * shape[1], 0.16 * shape[2]],
        )
        spine = _ellipsoid(
            shape, [centre[0], 0.75 * shape[1], centre[2]], [shape[0], 0.05 * shape[1], 0.05 * shape[2]]
        )
        wall = _ellipsoid(shape, centre, [0.7 * shape[0], 0.36 * shape[1], 0.42 * shape[2]])
        spacing_zyx = [float(s) for s in reversed(spacing_xyz)]
        fat_between = smooth_noise(rng, shape, spacing_zyx, 15.0) > 0.3
        volume = np.full(shape, -1000.0, dtype=np.float32)
        volume[body] = -100.0  # subcutaneous fat
        volume[wall] = 50.0  # abdominal wall muscle
        volume[inner] = np.where(fat_between[inner], -90.0, 35.0)  # soft tissue, fat between
        volume[liver] = 110.0  # contrast-enhanced liver
        volume[spine] = 700.0
        volume = (volume + rng.normal(0.0, 12.0, shape)).astype(np.int16)
    else:
        raise PocketSegError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    return image


# --------------------------------------------------------------------------- cases


@dataclass
class BenchmarkCase:
    """One network x task x device to time; JSON-serialisable (it crosses a process boundary).

    ``source`` is ``registry`` (``network`` names a registry network, random weights),
    ``bundle`` (``bundle`` names a shipped bundle: its weights are loaded) or ``peer``
    (``network`` is one of :data:`PEER_NETWORKS`, random weights).
    """

    case_id: str
    task: str
    role: str  # "pocket" | "full" | "peer"
    source: str
    network: str
    config: dict[str, Any]  # BundleConfig fields (window, spacing, preprocessing, network_args)
    input_path: str = ""
    output_path: str = ""
    result_path: str = ""
    device: str = "cpu"
    threads: int = 2
    repeats: int = 3
    warmup: int = 1
    batch_size: int = 4
    overlap: float = 0.5
    fast: bool = False
    channels_last: bool | None = None  # None: inference's default (on for every network on the CPU)
    precision: str = "float32"
    compile: bool = False
    max_case_seconds: float = 600.0
    window_size_zyx: list[int] | None = None  # override of the pocket/full cases' window
    backend: str = "auto"  # bundle cases: what runs the network (InferenceOptions.backend)
    bundle: str | None = None
    counterpart_of: str | None = None  # full cases: the pocket case they mirror


def _config_dict(task: str, name: str, **fields: Any) -> dict[str, Any]:
    from pocketseg_core.bundles import standard_label

    return {"name": name, "labels": [standard_label(task).to_dict()], "task": task, **copy.deepcopy(fields)}


def shipped_bundles(task: str) -> list[str]:
    """Names of the bundles of the shipped catalog for ``task`` (pocket networks only)."""
    from pocketseg_core.bundles import SHIPPED_CATALOG

    try:
        catalog = json.loads(SHIPPED_CATALOG.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [
        entry["name"] for entry in catalog.get("bundles", []) if entry.get("task") == task and "name" in entry
    ]


def build_cases(
    task: str, networks: Sequence[str] | None = None, peers: bool = True, include_presets: bool | None = None
) -> tuple[list[BenchmarkCase], list[str]]:
    """The cases of one task (device/threads/repeats are filled in later) and notes.

    Shipped bundles of the catalog are the pocket cases; without any, the preset networks.
    Each pocket case gets its full-size counterpart (same config, ``pocket=False``); ``lvnet``
    has none. ``networks`` keeps only cases whose network (or bundle) name is listed.
    """
    notes: list[str] = []
    cases: list[BenchmarkCase] = []
    bundles = shipped_bundles(task)
    pocket_configs: list[tuple[str, str | None, dict[str, Any]]] = []
    for bundle_name in bundles:
        from pocketseg_core.bundles import load_bundle

        config = load_bundle(bundle_name).config.to_dict()
        pocket_configs.append((config["network"], bundle_name, config))
    if include_presets or (include_presets is None and not bundles):
        if not bundles:
            notes.append(f"{task}: no shipped bundle in the catalog; timing the papers' preset networks")
        for preset in PRESET_CASES[task]:
            pocket_configs.append(
                (preset["network"], None, _config_dict(task, f"preset-{preset['network']}", **preset))
            )
    for network, bundle_name, config in pocket_configs:
        label = bundle_name or f"preset:{network}"
        cases.append(
            BenchmarkCase(
                case_id=f"{task}/{label}",
                task=task,
                role="pocket",
                source="bundle" if bundle_name else "registry",
                network=network,
                config=config,
                bundle=bundle_name,
            )
        )
        if network.startswith("pocket_"):
            full = network.removeprefix("pocket_")
            full_config = {**copy.deepcopy(config), "network": full, "name": f"{config['name']}-full"}
            full_config["network_args"] = {**config.get("network_args", {})}
            full_config.pop("weights_sha256", None)
            cases.append(
                BenchmarkCase(
                    case_id=f"{task}/{label}->{full}",
                    task=task,
                    role="full",
                    source="registry",
                    network=full,
                    config=full_config,
                    counterpart_of=f"{task}/{label}",
                )
            )
    if peers:
        if _monai_available():
            reference = pocket_configs[0][2]
            for peer in PEER_NETWORKS:
                config = _config_dict(
                    task,
                    f"peer-{peer}",
                    network=peer,
                    network_args={},
                    modality=reference["modality"],
                    preprocessing=reference["preprocessing"],
                    spacing=PEER_SPACING[task],
                    window_mode="patch3d",
                    window_size_zyx=PEER_PATCH,
                )
                cases.append(
                    BenchmarkCase(
                        case_id=f"{task}/peer:{peer}",
                        task=task,
                        role="peer",
                        source="peer",
                        network=peer,
                        config=config,
                    )
                )
        else:
            notes.append("peers skipped: MONAI is not installed (pip install monai==1.6.1)")
    if networks:
        wanted = set(networks)
        cases = [
            c for c in cases if c.network in wanted or (c.bundle and c.bundle in wanted) or c.role in wanted
        ]
    return cases, notes


def _monai_available() -> bool:
    try:
        import monai  # noqa: F401
    except ImportError:
        return False
    return True


def build_peer(name: str):
    """A peer architecture with random weights, in eval mode, with ``spatial_divisor`` set.

    ``monai_unet``: MONAI's UNet, channels (16, 32, 64, 128, 256), strides 2 x4, 2 residual
    units, instance norm. ``nnunet_dynunet``: MONAI's DynUNet with nnU-Net's default 3D plan
    (3x3x3 kernels x6, strides 1,2,2,2,2,2, filters 32..320, instance norm, leaky ReLU 0.01,
    no deep supervision at inference).
    """
    from monai.networks.nets import DynUNet, UNet

    if name == "monai_unet":
        network = UNet(3, 1, 2, (16, 32, 64, 128, 256), (2, 2, 2, 2), num_res_units=2, norm="instance")
        network.spatial_divisor = (16, 16, 16)
    elif name == "nnunet_dynunet":
        network = DynUNet(
            3,
            1,
            2,
            kernel_size=[[3, 3, 3]] * 6,
            strides=[[1, 1, 1]] + [[2, 2, 2]] * 5,
            upsample_kernel_size=[[2, 2, 2]] * 5,
            filters=[32, 64, 128, 256, 320, 320],
            norm_name="instance",
            act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        )
        network.spatial_divisor = (32, 32, 32)
    else:
        raise PocketSegError(f"unknown peer network {name!r}; known: {', '.join(PEER_NETWORKS)}")
    return network.eval()


def _network_for(case: BenchmarkCase):
    """(bundle, network in eval mode on the CPU) of a case."""
    from pocketseg_core.bundles import BundleConfig, ModelBundle, load_bundle
    from pocketseg_core.networks import create_network

    if case.source == "bundle":
        bundle = load_bundle(case.bundle)
        return bundle, bundle.build_network("cpu")
    config = BundleConfig.from_dict(case.config, source=f"benchmark case {case.case_id}")
    if case.source == "peer":
        network = build_peer(case.network)
    else:
        network = create_network(case.network, **config.network_args).eval()
    return ModelBundle(config=config, state_dict={}, path=None), network


# --------------------------------------------------------------------------- one case (subprocess)


def window_plan(
    volume_shape: Sequence[int], network, config, overlap: float
) -> tuple[tuple[int, int, int], int]:
    """(window actually used (z, y, x), number of windows), exactly as inference slides them."""
    from pocketseg_core.inference import resolve_window, window_divisor, window_starts

    window = resolve_window(volume_shape, config.window_size_zyx, window_divisor(network, config.window_mode))
    padded = [max(w, s) for w, s in zip(window, volume_shape, strict=True)]
    return window, int(
        np.prod([len(window_starts(p, w, overlap)) for p, w in zip(padded, window, strict=True)])
    )


def window_flops(case: BenchmarkCase, window_zyx: Sequence[int], config) -> int:
    """FLOPs (2 per MAC) of one window through the case's network, counted on ``meta``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pocketseg_core.networks import create_network

    with torch.device("meta"):
        if case.source == "peer":
            network = build_peer(case.network)
        else:
            network = create_network(case.network, **config.network_args).eval()
        spatial = tuple(window_zyx)[1:] if config.window_mode == "slice2d" else tuple(window_zyx)
        x = torch.empty(1, config.input_channels, *spatial)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(x)
    return int(counter.get_total_flops())


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(case: BenchmarkCase) -> dict[str, Any]:
    """Time one case in this process; returns the JSON-ready record (see module docstring)."""
    import torch

    from pocketseg_core import io
    from pocketseg_core.bundles import read_onnx_model
    from pocketseg_core.devices import memory_format, precision_context, resolve_device, use_channels_last
    from pocketseg_core.inference import InferenceOptions, segment_image
    from pocketseg_core.inference.onnx_backend import OnnxNetwork, choose_backend
    from pocketseg_core.preprocessing import to_working_grid

    torch.set_num_threads(case.threads)
    messages: list[str] = []
    device = resolve_device(case.device, messages)
    bundle, network = _network_for(case)
    network.to(device)
    options = InferenceOptions(
        device=str(device),
        fast=case.fast,
        overlap=case.overlap,
        batch_size=case.batch_size,
        channels_last=case.channels_last,
        precision=case.precision,
        compile=case.compile,
        window_size_zyx=tuple(case.window_size_zyx) if case.window_size_zyx else None,
        backend=case.backend,
    )
    # A shipped bundle runs on what a user's run would choose (ONNX Runtime for a whole-grid
    # model with an ONNX network on the CPU): the job and the pass below time that.
    backend = choose_backend(bundle.config, options)[0] if case.source == "bundle" else "torch"
    engine = (
        OnnxNetwork(read_onnx_model(bundle), threads=case.threads) if backend == "onnxruntime" else network
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def one_job() -> dict[str, float]:
        cpu_started = time.process_time()  # CPU seconds of this process, every thread
        started = time.perf_counter()
        image = io.read_image(case.input_path)
        read = time.perf_counter() - started
        result = segment_image(image, bundle, options, network=engine)
        tick = time.perf_counter()
        io.write_image(result.mask, case.output_path)
        write = time.perf_counter() - tick
        _synchronize(device)
        messages.extend(m for m in result.messages if m not in messages)
        job = time.perf_counter() - started
        return {
            "read": read,
            **result.timings,
            "write": write,
            "job": job,
            "job_cpu": time.process_time() - cpu_started,
        }

    started = time.perf_counter()
    jobs: list[dict[str, float]] = []
    warmups_done = 0
    for _ in range(case.warmup):
        if time.perf_counter() - started > case.max_case_seconds / 2:
            break
        one_job()
        warmups_done += 1
    while len(jobs) < max(1, case.repeats):
        if jobs and time.perf_counter() - started + jobs[-1]["job"] > case.max_case_seconds:
            messages.append(
                f"stopped after {len(jobs)} of {case.repeats} repeats (max {case.max_case_seconds:.0f} s per case)"
            )
            break
        jobs.append(one_job())
    median = {key: statistics.median(job[key] for job in jobs) for key in jobs[0]}

    # One network pass (a batch of windows), alone: the working grid tells the window.
    image = io.read_image(case.input_path)
    config = bundle.config
    if case.window_size_zyx:
        config = copy.deepcopy(config)
        config.window_size_zyx = tuple(case.window_size_zyx)
    spacing = config.fast_spacing if case.fast and config.fast_spacing else config.spacing
    working_shape = to_working_grid(image, config.orientation, spacing, config.preprocessing).volume.shape
    window, windows = window_plan(working_shape, network, config, case.overlap)
    batch = max(1, min(case.batch_size, windows))
    spatial = window[1:] if config.window_mode == "slice2d" else window
    inputs = torch.randn(batch, config.input_channels, *spatial, device=device)
    if use_channels_last(case.channels_last, device, config.window_mode):
        inputs = inputs.contiguous(memory_format=memory_format(inputs.dim()))
    pass_times = []
    onnx_inputs = inputs[0, 0].cpu().numpy() if backend == "onnxruntime" else None
    with torch.inference_mode(), precision_context(device, case.precision):
        for index in range(max(2, min(5, case.repeats + 1))):
            _synchronize(device)
            tick = time.perf_counter()
            if onnx_inputs is not None:  # a whole-grid model: one window, batch of one
                engine.logits(onnx_inputs)
            else:
                network(inputs)
            _synchronize(device)
            if index > 0 or case.warmup == 0:  # the first pass pays for allocation / autotuning
                pass_times.append(time.perf_counter() - tick)
    flops_window = window_flops(case, window, config)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    peak_gpu_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    pass_seconds = statistics.median(pass_times)
    return {
        "case_id": case.case_id,
        "task": case.task,
        "role": case.role,
        "network": case.network,
        "bundle": case.bundle,
        "counterpart_of": case.counterpart_of,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": engine.threads if backend == "onnxruntime" else torch.get_num_threads(),
        "backend": backend,
        "params": sum(p.numel() for p in network.parameters()),
        "spacing": list(spacing),
        "window_mode": config.window_mode,
        "window_zyx": list(window),
        "windows": windows,
        "batch_size": batch,
        "overlap": case.overlap,
        "working_shape_zyx": list(working_shape),
        "repeats_done": len(jobs),
        "warmup_done": warmups_done,
        "seconds": median,
        "seconds_all": [job["job"] for job in jobs],
        "network_pass_seconds": pass_seconds,
        "gflop_per_window": flops_window / 1e9,
        "gflop_per_job": flops_window * windows / 1e9,
        "gflops_achieved_pass": flops_window * batch / pass_seconds / 1e9,
        "gflops_achieved_network_stage": flops_window * windows / median["network"] / 1e9,
        "peak_rss_mb": peak_rss_mb,
        "peak_gpu_mb": peak_gpu_mb,
        "messages": messages,
    }


# --------------------------------------------------------------------------- device peak


def measure_peak_gflops(device_name: str, threads: int, quick: bool = False) -> dict[str, Any]:
    """The device's achievable dense-matmul rate: fp32 on the CPU, bf16 on CUDA (best of a few)."""
    import torch

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    if device.type == "cuda":
        n, dtype, reps = 8192, torch.bfloat16, 20
    else:
        n, dtype, reps = (1024 if quick else 2048), torch.float32, 5
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(2):
        torch.matmul(a, b)
    _synchronize(device)
    for _ in range(reps):
        tick = time.perf_counter()
        torch.matmul(a, b)
        _synchronize(device)
        best = min(best, time.perf_counter() - tick)
    return {"kind": f"{str(dtype).removeprefix('torch.')} matmul {n}x{n}", "gflops": 2 * n**3 / best / 1e9}


# --------------------------------------------------------------------------- the whole run


ProgressPrinter = Callable[[str], None]


@dataclass
class BenchmarkSettings:
    """What ``python -m benchmarks speed`` was asked for."""

    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    repeats: int = 3
    warmup: int = 1
    threads: int = 2
    networks: list[str] | None = None
    peers: bool = True
    quick: bool = False
    batch_size: int = 4
    overlap: float = 0.5
    fast: bool = False
    channels_last: bool | None = None  # None: inference's default (on for every network on the CPU)
    precision: str = "float32"
    compile: bool = False
    max_case_seconds: float = 600.0
    include_presets: bool | None = None
    window_size_zyx: list[int] | None = None  # pocket and full cases only (peers keep 128^3)


def _run_in_subprocess(case: BenchmarkCase, workdir: Path) -> dict[str, Any]:
    case_path = workdir / f"case-{abs(hash(case.case_id))}.json"
    case.result_path = str(workdir / f"result-{abs(hash(case.case_id))}.json")
    case_path.write_text(json.dumps(asdict(case)), encoding="utf-8")
    environment = dict(os.environ)
    # the harness is not installed: the case process finds this package from the repository root
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPOSITORY_ROOT), environment.get("PYTHONPATH")])
    )
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        environment[variable] = str(case.threads)
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.speed", "--case", str(case_path)],
        env=environment,
        capture_output=True,
        text=True,
    )
    if completed.returncode != 0 or not Path(case.result_path).exists():
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-5:]
        return {
            "case_id": case.case_id,
            "task": case.task,
            "role": case.role,
            "network": case.network,
            "device": case.device,
            "error": " | ".join(tail) or f"exit code {completed.returncode}",
        }
    return json.loads(Path(case.result_path).read_text(encoding="utf-8"))


def run_benchmark(
    settings: BenchmarkSettings,
    output_dir: str | os.PathLike,
    log: ProgressPrinter = print,
    cases_by_task: dict[str, list[BenchmarkCase]] | None = None,
) -> dict[str, Path]:
    """Run every case of ``settings``, write ``benchmark_<date>_<device>.json`` and ``.md`` in
    ``output_dir``; returns ``{"json": path, "markdown": path}``.

    ``cases_by_task`` replaces :func:`build_cases` (tests use tiny networks)."""
    import torch

    from pocketseg_core import io
    from pocketseg_core.devices import resolve_device

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now(datetime.UTC)
    inputs = QUICK_INPUTS if settings.quick else FULL_INPUTS
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    devices = []
    for requested in settings.devices:
        device_notes: list[str] = []
        device = resolve_device(requested, device_notes)
        notes.extend(device_notes)
        if str(device) not in devices:
            devices.append(str(device))
    peaks = {}
    for device in devices:
        peaks[device] = measure_peak_gflops(device, settings.threads, settings.quick)
        log(f"peak {device}: {peaks[device]['gflops']:.1f} GFLOP/s ({peaks[device]['kind']})")
    with tempfile.TemporaryDirectory(prefix="pocketseg-benchmark-") as temporary:
        workdir = Path(temporary)
        for task in settings.tasks:
            size = inputs[task]
            input_path = workdir / f"{task}.nii.gz"
            io.write_image(make_phantom(task, size["size"], size["spacing"]), input_path)
            if cases_by_task is not None:
                cases, task_notes = cases_by_task.get(task, []), []
            else:
                cases, task_notes = build_cases(
                    task, settings.networks, settings.peers, settings.include_presets
                )
            notes.extend(task_notes)
            for device in devices:
                for case in cases:
                    case = copy.deepcopy(case)
                    case.input_path, case.output_path = str(input_path), str(workdir / f"{task}-mask.nii.gz")
                    case.device, case.threads = device, settings.threads
                    case.repeats, case.warmup = settings.repeats, settings.warmup
                    case.batch_size, case.overlap, case.fast = (
                        settings.batch_size,
                        settings.overlap,
                        settings.fast,
                    )
                    case.channels_last, case.compile = settings.channels_last, settings.compile
                    case.precision = settings.precision
                    case.max_case_seconds = settings.max_case_seconds
                    if case.role != "peer" and settings.window_size_zyx:
                        case.window_size_zyx = list(settings.window_size_zyx)
                    log(f"{case.case_id} on {device} ...")
                    record = _run_in_subprocess(case, workdir)
                    record["input_size_xyz"] = list(size["size"])
                    record["input_spacing_xyz"] = list(size["spacing"])
                    if "error" in record:
                        log(f"  failed: {record['error']}")
                    else:
                        record["percent_of_peak_pass"] = (
                            100 * record["gflops_achieved_pass"] / peaks[device]["gflops"]
                        )
                        log(
                            f"  job {record['seconds']['job']:.2f} s, network {record['seconds']['network']:.2f} s, "
                            f"peak RSS {record['peak_rss_mb']:.0f} MB"
                        )
                    records.append(record)
    report = {
        "format": "PocketSeg benchmark, version 1",
        "date": started.isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": settings.threads,
        "settings": asdict(settings),
        "device_peaks": peaks,
        "records": records,
        "ratios": compute_ratios(records),
        "notes": notes,
    }
    if any(d.startswith("cuda") for d in devices):
        report["gpu"] = torch.cuda.get_device_name(0)
    stem = f"benchmark_{started.strftime('%Y-%m-%d')}_{'+'.join(d.replace(':', '') for d in devices)}{'_quick' if settings.quick else ''}"
    json_path = output_dir / f"{stem}.json"
    markdown_path = output_dir / f"{stem}.md"
    write_text_atomic(json_path, json.dumps(report, indent=1))
    write_text_atomic(markdown_path, render_markdown(report))
    return {"json": json_path, "markdown": markdown_path}


def compute_ratios(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pocket/full and pocket/peer time ratios (job and network stage) per task x device."""
    ratios = []
    done = [r for r in records if "error" not in r]
    for pocket in (r for r in done if r["role"] == "pocket"):
        for other in done:
            if other["task"] != pocket["task"] or other["device"] != pocket["device"]:
                continue
            if (
                other["role"] == "full"
                and other["counterpart_of"] == pocket["case_id"]
                or other["role"] == "peer"
            ):
                ratios.append(
                    {
                        "task": pocket["task"],
                        "device": pocket["device"],
                        "pocket": pocket["case_id"],
                        "other": other["case_id"],
                        "kind": "pocket/full" if other["role"] == "full" else "pocket/peer",
                        "job_ratio": pocket["seconds"]["job"] / other["seconds"]["job"],
                        "network_ratio": pocket["seconds"]["network"] / other["seconds"]["network"],
                        "params_ratio": pocket["params"] / other["params"],
                        "gflop_ratio": pocket["gflop_per_job"] / other["gflop_per_job"],
                        "peak_rss_ratio": pocket["peak_rss_mb"] / other["peak_rss_mb"],
                    }
                )
    return ratios


def render_markdown(report: dict[str, Any]) -> str:
    """The results tables of a report (the docs table is pasted from this)."""
    lines = [
        f"# PocketSeg benchmark, {report['date']}",
        "",
        f"torch {report['torch']}, Python {report['python']}, {report['machine']}, "
        f"{report['cpu_count']} CPU(s), {report['threads']} thread(s)"
        + (f", GPU {report['gpu']}" if report.get("gpu") else "")
        + (
            " — **quick mode (small inputs; not the full input sizes)**"
            if report["settings"]["quick"]
            else ""
        ),
        "",
        "Device peaks (measured in this run): "
        + "; ".join(
            f"{d}: {p['gflops']:.0f} GFLOP/s ({p['kind']})" for d, p in report["device_peaks"].items()
        ),
        "",
        "## Time per job and per network pass (medians)",
        "",
        "| task | network | role | device | params | window (z,y,x) x count | GFLOP/job | job s | network s "
        "| pass s (batch) | peak RSS MB | peak GPU MB | GFLOP/s pass | % peak | runs |",
        "|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["records"]:
        if "error" in r:
            lines.append(
                f"| {r['task']} | {r['case_id']} | {r['role']} | {r['device']} | failed: {r['error'][:120]} |||||||||||"
            )
            continue
        gpu = f"{r['peak_gpu_mb']:.0f}" if r.get("peak_gpu_mb") is not None else "–"
        lines.append(
            f"| {r['task']} | {r['case_id'].split('/', 1)[1]} | {r['role']} | {r['device']} | {r['params']:,} "
            f"| {'x'.join(map(str, r['window_zyx']))} x {r['windows']} | {r['gflop_per_job']:.0f} "
            f"| {r['seconds']['job']:.2f} | {r['seconds']['network']:.2f} | {r['network_pass_seconds']:.3f} ({r['batch_size']}) "
            f"| {r['peak_rss_mb']:.0f} | {gpu} | {r['gflops_achieved_pass']:.0f} | {r['percent_of_peak_pass']:.0f} "
            f"| {r['repeats_done']} |"
        )
    lines += [
        "",
        "## Where the time goes (median seconds of the whole job)",
        "",
        "| task | network | device | read | preprocess (reorient, resample, normalise) | network (windows, blending) "
        "| postprocess (resample back, argmax, largest component) | write | job |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["records"]:
        if "error" in r:
            continue
        s = r["seconds"]
        lines.append(
            f"| {r['task']} | {r['case_id'].split('/', 1)[1]} | {r['device']} | {s['read']:.2f} | {s['preprocess']:.2f} "
            f"| {s['network']:.2f} | {s['postprocess']:.2f} | {s['write']:.2f} | {s['job']:.2f} |"
        )
    lines += [
        "",
        "## Ratios from the same run (< 1: the pocket network is cheaper)",
        "",
        "| task | device | kind | pocket | other | job time | network time | params | FLOPs | peak RSS |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for q in report["ratios"]:
        lines.append(
            f"| {q['task']} | {q['device']} | {q['kind']} | {q['pocket'].split('/', 1)[1]} | {q['other'].split('/', 1)[1]} "
            f"| {q['job_ratio']:.3f} | {q['network_ratio']:.3f} | {q['params_ratio']:.3f} | {q['gflop_ratio']:.3f} "
            f"| {q['peak_rss_ratio']:.2f} |"
        )
    if report["notes"]:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in report["notes"]]
    messages = sorted({m for r in report["records"] for m in r.get("messages", [])})
    if messages:
        lines += ["", "Messages from the runs:", ""] + [f"- {m}" for m in messages]
    return "\n".join(lines) + "\n"


def _case_main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.speed --case CASE.json``: run one case, write its record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", required=True, help="case JSON written by run_benchmark")
    args = parser.parse_args(argv)
    case = BenchmarkCase(**json.loads(Path(args.case).read_text(encoding="utf-8")))
    # this process is the job's own, as the worker process and `pocketseg predict` are: the same
    # allocator settings (pocketseg_core.malloc_tuning), so the job is timed as they run it
    from pocketseg_core.malloc_tuning import tune_malloc_for_large_arrays

    tuned = tune_malloc_for_large_arrays()
    record = run_case(case)
    record["malloc_tuned"] = tuned
    write_text_atomic(Path(case.result_path), json.dumps(record))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_case_main())
