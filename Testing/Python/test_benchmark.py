"""The benchmark harness end to end on tiny inputs and networks (fields of the JSON and the
markdown, peers when MONAI is installed), and the speed options of inference against the
reference path (Dice >= 0.999)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from tiny_bundles import make_phantom as make_test_phantom
from tiny_bundles import make_tiny_bundle

from benchmarks.speed import (
    BenchmarkCase,
    BenchmarkSettings,
    build_cases,
    make_phantom,
    run_benchmark,
)
from pocketseg_core.bundles import load_bundle
from pocketseg_core.devices import cpu_has_bfloat16
from pocketseg_core.inference import InferenceOptions, segment_image

torch.set_num_threads(1)

TINY_ARGS = {"init_filters": 4, "depth": 2, "pool_size": 2, "num_classes": 2}


def tiny_cases(with_peer: bool) -> list[BenchmarkCase]:
    """A tiny pocket network, its full-size counterpart and (optionally) MONAI's UNet peer,
    built by the harness's own case builder, then shrunk."""
    cases, _ = build_cases("skullstrip", peers=with_peer, include_presets=True)
    cases = [c for c in cases if c.bundle is None and (c.role != "peer" or c.network == "monai_unet")]
    for case in cases:
        if case.role != "peer":
            case.config["network_args"] = dict(TINY_ARGS)
            case.config["window_mode"] = "patch3d"
            case.config["window_size_zyx"] = (16, 32, 32)
            case.config["spacing"] = (2.0, 2.0, 2.0)
        else:
            case.config["window_size_zyx"] = (32, 32, 32)
            case.config["spacing"] = (2.0, 2.0, 2.0)
    return cases


def test_phantoms_have_the_requested_grid_and_intensities():
    head = make_phantom("skullstrip", (40, 36, 24), (1.0, 1.0, 1.5))
    assert head.GetSize() == (40, 36, 24) and head.GetSpacing() == (1.0, 1.0, 1.5)
    array = sitk.GetArrayViewFromImage(head)
    assert array[12, 18, 26] > 500 > array[0, 0, 0]  # bright brain (beside the ventricles), dark air
    ct = make_phantom("liver", (48, 48, 16), (0.8, 0.8, 2.0))
    values = sitk.GetArrayViewFromImage(ct)
    assert ct.GetPixelID() == sitk.sitkInt16
    assert values.min() < -900 and values.max() > 500  # air and bone, in HU


def test_harness_end_to_end_writes_json_and_markdown(tmp_path):
    try:
        import monai  # noqa: F401

        with_peer = True
    except ImportError:
        with_peer = False
    cases = tiny_cases(with_peer)
    assert {c.role for c in cases} == ({"pocket", "full", "peer"} if with_peer else {"pocket", "full"})
    settings = BenchmarkSettings(
        tasks=["skullstrip"], devices=["cpu"], repeats=2, warmup=1, threads=1, quick=True
    )
    paths = run_benchmark(settings, tmp_path, log=lambda line: None, cases_by_task={"skullstrip": cases})
    assert paths["json"].name.startswith("benchmark_") and paths["json"].name.endswith("_cpu_quick.json")
    report = json.loads(paths["json"].read_text(encoding="utf-8"))
    assert report["torch"] == torch.__version__ and report["threads"] == 1
    assert report["device_peaks"]["cpu"]["gflops"] > 0.1
    records = {r["role"]: r for r in report["records"]}
    assert "error" not in records["pocket"], records["pocket"].get("error")
    for record in records.values():
        assert record["repeats_done"] == 2 and record["warmup_done"] == 1
        seconds = record["seconds"]
        assert set(seconds) == {"read", "preprocess", "network", "postprocess", "write", "job", "job_cpu"}
        assert seconds["job_cpu"] > 0  # CPU seconds of the case's process during the job
        parts = sum(seconds[k] for k in ("read", "preprocess", "network", "postprocess", "write"))
        assert 0 < parts <= seconds["job"] * 1.5  # medians of parts need not add up exactly
        assert record["network_pass_seconds"] > 0 and record["peak_rss_mb"] > 50
        assert record["peak_gpu_mb"] is None and record["threads"] == 1
        assert record["gflop_per_job"] == pytest.approx(record["gflop_per_window"] * record["windows"])
        assert record["gflops_achieved_pass"] > 0 and record["percent_of_peak_pass"] > 0
    # the quick skull strip input at the tiny networks' 2 mm: 32x32x20 -> windows 16x32x32 (z padded)
    assert records["pocket"]["working_shape_zyx"] == [20, 32, 32]
    assert records["pocket"]["window_zyx"] == [16, 32, 32] and records["pocket"]["windows"] == 2
    assert records["full"]["params"] > records["pocket"]["params"]
    assert records["full"]["gflop_per_job"] > records["pocket"]["gflop_per_job"]
    kinds = {q["kind"] for q in report["ratios"]}
    assert kinds == ({"pocket/full", "pocket/peer"} if with_peer else {"pocket/full"})
    full_ratio = next(q for q in report["ratios"] if q["kind"] == "pocket/full")
    assert full_ratio["params_ratio"] < 1 and full_ratio["gflop_ratio"] < 1
    markdown = paths["markdown"].read_text(encoding="utf-8")
    for heading in ("Time per job and per network pass", "Where the time goes", "Ratios from the same run"):
        assert heading in markdown
    assert f"torch {torch.__version__}" in markdown and "1 thread(s)" in markdown
    if with_peer:
        assert "peer:monai_unet" in markdown


def test_harness_runs_the_shipped_2_5d_liver_model_and_its_full_counterpart(tmp_path):
    """The shipped liver model sees neighbouring slices as channels (context_slices 4 since 3.3.0:
    9 channels): the harness's lone network pass and FLOP count feed it (and its full-size
    counterpart) slices with that many channels."""
    cases, _ = build_cases("liver", peers=False, include_presets=False)
    cases = [c for c in cases if c.network in ("pocket_unet2d", "unet2d")]
    assert [c.config.get("context_slices") for c in cases] == [4, 4]
    settings = BenchmarkSettings(tasks=["liver"], devices=["cpu"], repeats=1, warmup=0, threads=1, quick=True)
    paths = run_benchmark(settings, tmp_path, log=lambda line: None, cases_by_task={"liver": cases})
    records = {r["role"]: r for r in json.loads(paths["json"].read_text(encoding="utf-8"))["records"]}
    for record in records.values():
        assert "error" not in record, record.get("error")
        assert record["windows"] == record["working_shape_zyx"][0]  # one window per axial slice
        assert record["network_pass_seconds"] > 0
    assert 0 < records["pocket"]["gflop_per_window"] < records["full"]["gflop_per_window"]


def test_peers_are_listed_only_with_monai():
    cases, notes = build_cases("liver", peers=True, include_presets=True)
    networks = {c.network for c in cases}
    assert {"pocket_unet2d", "unet2d", "lvnet"} <= networks
    try:
        import monai  # noqa: F401
    except ImportError:
        assert not any(c.role == "peer" for c in cases) and any("MONAI" in n for n in notes)
        return
    peers = [c for c in cases if c.role == "peer"]
    assert {c.network for c in peers} == {"monai_unet", "nnunet_dynunet"}
    assert all(tuple(c.config["window_size_zyx"]) == (128, 128, 128) for c in peers)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


@pytest.fixture(scope="module")
def fitted_bundle(tmp_path_factory):
    return load_bundle(make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "brain", "skullstrip", "MR"))


@pytest.mark.parametrize(
    "speed_options",
    [
        {"channels_last": True},
        {"channels_last": True, "batch_size": 8, "overlap": 0.5},
        pytest.param(
            {"compile": True},
            marks=pytest.mark.skipif(
                not os.environ.get("POCKETSEG_SLOW_TESTS"),
                reason="torch.compile adds ~30 s on 2 cores (POCKETSEG_SLOW_TESTS=1 runs it)",
            ),
        ),
    ],
)
def test_optimised_path_agrees_with_the_reference(fitted_bundle, speed_options):
    image, label = make_test_phantom("MR", seed=3)
    reference = segment_image(
        image, fitted_bundle, InferenceOptions(device="cpu", return_probabilities=True, channels_last=False)
    )
    optimised = segment_image(
        image, fitted_bundle, InferenceOptions(device="cpu", return_probabilities=True, **speed_options)
    )
    reference_mask = sitk.GetArrayFromImage(reference.mask)
    assert dice(reference_mask, sitk.GetArrayFromImage(label)) > 0.9  # the reference is a real mask
    assert dice(sitk.GetArrayFromImage(optimised.mask), reference_mask) >= 0.999
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(optimised.probabilities),
        sitk.GetArrayFromImage(reference.probabilities),
        atol=1e-4,
    )
    assert not any("compile failed" in m for m in optimised.messages)


@pytest.mark.skipif(not cpu_has_bfloat16(), reason="this CPU has no native bfloat16 (AVX512-BF16 or AMX)")
def test_cpu_bfloat16_option_runs_in_bfloat16_and_agrees(fitted_bundle):
    image, label = make_test_phantom("MR", seed=3)
    options = {"device": "cpu", "return_probabilities": True}
    reference = segment_image(image, fitted_bundle, InferenceOptions(**options))
    bfloat16 = segment_image(image, fitted_bundle, InferenceOptions(precision="bfloat16", **options))
    reference_mask = sitk.GetArrayFromImage(reference.mask)
    assert dice(sitk.GetArrayFromImage(bfloat16.mask), reference_mask) >= 0.99
    difference = np.abs(
        sitk.GetArrayFromImage(bfloat16.probabilities) - sitk.GetArrayFromImage(reference.probabilities)
    )
    assert 1e-4 < difference.max() < 0.2  # it did run in bfloat16 (7-bit mantissa), and stayed close
    assert bfloat16.messages == []


def test_window_override_runs_one_window_and_agrees(fitted_bundle):
    image, _ = make_test_phantom("MR", seed=4)
    seen: dict[str, list[str]] = {"reference": [], "whole": []}

    def recorder(key):
        return lambda fraction, message: seen[key].append(message)

    reference = segment_image(image, fitted_bundle, InferenceOptions(device="cpu"), recorder("reference"))
    whole = segment_image(
        image, fitted_bundle, InferenceOptions(device="cpu", window_size_zyx=(0, 0, 0)), recorder("whole")
    )
    windows = [m for m in seen["whole"] if m.startswith("window ")]
    assert windows == ["window 1/1"]
    assert [m for m in seen["reference"] if m.startswith("window ")][-1] != "window 1/1"
    # same network, larger context: the masks agree closely but need not be identical
    assert dice(sitk.GetArrayFromImage(whole.mask), sitk.GetArrayFromImage(reference.mask)) > 0.97


def test_an_unknown_cuda_precision_is_refused_before_any_compute(fitted_bundle):
    from pocketseg_core.errors import PocketSegError

    image, _ = make_test_phantom("MR", seed=5)
    calls: list[str] = []
    with pytest.raises(
        PocketSegError, match="unknown precision 'int8'; use one of float32, tfloat32, float16, bfloat16"
    ):
        segment_image(
            image,
            fitted_bundle,
            InferenceOptions(device="cpu", precision="int8"),
            lambda f, m: calls.append(m),
        )
    assert calls == []  # refused before the first stage reported anything


@pytest.mark.parametrize(
    "precision",
    [
        "float32",
        "tfloat32",
        "float16",
        pytest.param(
            "bfloat16",
            marks=pytest.mark.skipif(cpu_has_bfloat16(), reason="native bfloat16 here: it runs (test above)"),
        ),
    ],
)
def test_every_cuda_precision_runs_the_cpu_path_unchanged(fitted_bundle, precision):
    # on the CPU CUDA's precisions are ignored (bfloat16 too where the CPU lacks it): the same
    # probabilities as the default
    image, _ = make_test_phantom("MR", seed=6)
    reference = segment_image(image, fitted_bundle, InferenceOptions(device="cpu", return_probabilities=True))
    other = segment_image(
        image, fitted_bundle, InferenceOptions(device="cpu", precision=precision, return_probabilities=True)
    )
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(other.probabilities), sitk.GetArrayFromImage(reference.probabilities)
    )
