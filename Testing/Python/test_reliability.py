"""Bad input never costs the user data: every row of docs/reliability.md, end to end.

Each test feeds one kind of bad input through the public entry point (the ``pocketseg`` command,
``read_image``, ``load_bundle``, ``register_bundle``, ``run_cross_validation``) and checks the
promise of the README: one sentence naming the problem (no traceback), nothing the user had
lost or replaced, no partial output.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_file
from tiny_bundles import make_phantom, make_tiny_bundle
from training_phantoms import TINY_RUN, phantom_pair, write_csv_dataset

from pocketseg_core.bundles import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_bundle,
    register_bundle,
    save_bundle,
)
from pocketseg_core.cli import main
from pocketseg_core.errors import BundleError, DatasetError, InputImageError, PocketSegError
from pocketseg_core.inference import InferenceOptions, segment_image
from pocketseg_core.io import read_image, write_text_atomic
from pocketseg_core.training import config_from_preset, run_cross_validation
from pocketseg_core.training.checkpoints import atomic_write_text
from pocketseg_core.training.runlock import locked_run

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "brain", "skullstrip", "MR")


@pytest.fixture(scope="module")
def head(tmp_path_factory) -> Path:
    """A phantom head as float32 NIfTI (the format whose reader hides the most)."""
    image, _ = make_phantom("MR", size=(44, 50, 40), spacing=(3.0, 3.5, 3.0))
    path = tmp_path_factory.mktemp("head") / "head.nii.gz"
    sitk.WriteImage(sitk.Cast(image, sitk.sitkFloat32), str(path))
    return path


def refused(capsys, argv: list[str], *phrases: str) -> str:
    """Run the command; it must fail with exit 1 and one ``error:`` line holding ``phrases``."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def predict(bundle: Path, source: Path, output: Path, *extra: str) -> list[str]:
    return [
        "predict",
        "-q",
        "-i",
        str(source),
        "-o",
        str(output),
        "--model",
        str(bundle),
        "--device",
        "cpu",
        *extra,
    ]


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- 1 catalog names


@pytest.mark.parametrize("bad_name", ["ABSOLUTE", "../victim", "a/b", "..", ".hidden", ""])
def test_bundle_name_that_is_not_one_folder_name_never_deletes_outside_the_catalog(
    bundle, tmp_path, monkeypatch, bad_name
) -> None:
    catalog = tmp_path / "catalog"
    monkeypatch.setenv("POCKETSEG_MODELS_DIR", str(catalog))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me", encoding="utf-8")
    name = str(victim) if bad_name == "ABSOLUTE" else bad_name
    # as the name asked for, and as the name written in a (tampered) bundle.json
    with pytest.raises(BundleError, match="a model name is one folder name"):
        register_bundle(bundle, name=name)
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    config = json.loads((tampered / CONFIG_FILE).read_text(encoding="utf-8"))
    config["name"] = name
    (tampered / CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(BundleError):
        register_bundle(tampered)
    assert (victim / "precious.txt").read_text(encoding="utf-8") == "keep me"


def test_training_with_a_path_as_model_name_is_refused_before_any_work(tmp_path) -> None:
    dataset = write_csv_dataset(tmp_path / "data", subjects=2)
    config = config_from_preset("pocketnet-nfbs", dataset=str(dataset), **TINY_RUN).replace(name="../escape")
    with pytest.raises(BundleError, match="one folder name"):
        run_cross_validation(config, tmp_path / "run")
    assert not (tmp_path / "run").exists() and not (tmp_path / "escape").exists()


# --------------------------------------------------------------------------- 2 aliasing outputs


@pytest.mark.parametrize("option", ["--output", "--masked-volume", "--probabilities"])
def test_an_output_equal_to_the_input_is_refused_and_the_input_kept(bundle, head, tmp_path, capsys, option):
    source = tmp_path / head.name
    shutil.copy(head, source)
    before = source.read_bytes()
    argv = predict(bundle, source, tmp_path / "mask.nii.gz")
    if option == "--output":
        argv[argv.index("-o") + 1] = str(tmp_path / "." / source.name)  # same file, other spelling
    else:
        argv += [option, str(source)]
    refused(capsys, argv, "would overwrite the input")
    assert source.read_bytes() == before
    assert files(tmp_path) == [source.name]


def test_two_outputs_on_one_path_are_refused(bundle, head, tmp_path, capsys) -> None:
    argv = predict(bundle, head, tmp_path / "out.nii.gz", "--masked-volume", str(tmp_path / "out.nii.gz"))
    refused(capsys, argv, "--masked-volume and --output both write")
    assert files(tmp_path) == []


def test_an_output_reached_through_a_link_to_the_input_is_refused(bundle, head, tmp_path, capsys) -> None:
    source = tmp_path / "head.nii.gz"
    shutil.copy(head, source)
    (tmp_path / "link.nii.gz").symlink_to(source)
    refused(capsys, predict(bundle, source, tmp_path / "link.nii.gz"), "would overwrite the input")
    assert source.read_bytes() == head.read_bytes()


# --------------------------------------------------------------------------- 3-5 files that lie


def truncated_copies(head: Path, folder: Path) -> dict[str, Path]:
    raw = gzip.decompress(head.read_bytes())
    cut = folder / "cut.nii.gz"  # the compressed stream stops half way
    cut.write_bytes(head.read_bytes()[: len(head.read_bytes()) // 2])
    short_gz = folder / "short.nii.gz"  # a complete gzip stream of half the voxels
    short_gz.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    short = folder / "short.nii"
    short.write_bytes(raw[: len(raw) // 2])
    return {"cut": cut, "short_gz": short_gz, "short": short}


@pytest.mark.parametrize("kind", ["cut", "short_gz", "short"])
def test_a_truncated_nifti_is_refused_before_any_work(bundle, head, tmp_path, capsys, kind) -> None:
    source = truncated_copies(head, tmp_path)[kind]
    refused(capsys, predict(bundle, source, tmp_path / "mask.nii.gz"), "truncated")
    assert not (tmp_path / "mask.nii.gz").exists()


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("ending", [".nii.gz", ".nii"])
def test_nan_or_infinity_in_a_nifti_is_refused(bundle, tmp_path, capsys, value, ending) -> None:
    image, _ = make_phantom("MR", size=(20, 22, 24))
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    array[3, 4, 5] = value
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(image)
    source = tmp_path / f"bad{ending}"
    sitk.WriteImage(bad, str(source))
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(source)))).all()  # ITK hides it
    refused(capsys, predict(bundle, source, tmp_path / "mask.nii.gz"), "1 NaN or infinite voxel")


def sheared(image: sitk.Image) -> sitk.Image:
    copy = sitk.Image(image)
    copy.SetDirection((1.0, 0.3, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return copy


def test_a_sheared_direction_is_refused_on_reading_and_in_memory(bundle, tmp_path, capsys) -> None:
    image, _ = make_phantom("MR", size=(30, 32, 28))
    source = tmp_path / "sheared.mha"
    sitk.WriteImage(sheared(image), str(source))
    refused(capsys, predict(bundle, source, tmp_path / "mask.nii.gz"), "not orthonormal")
    with pytest.raises(InputImageError, match="not orthonormal"):  # e.g. a Slicer volume
        segment_image(sheared(image), load_bundle(bundle), InferenceOptions(device="cpu"))


# --------------------------------------------------------------------------- 7 sizes and values


def test_a_field_of_view_too_small_for_the_network_is_one_sentence(bundle, tmp_path, capsys) -> None:
    image, _ = make_phantom("MR", size=(6, 6, 6), spacing=(2.0, 2.0, 2.0))
    source = tmp_path / "tiny.nii.gz"
    sitk.WriteImage(image, str(source))
    refused(capsys, predict(bundle, source, tmp_path / "mask.nii.gz"), "too small for this model")


@pytest.mark.parametrize("spacing", [1e-9, 1e9])
def test_an_absurd_spacing_is_refused(bundle, tmp_path, capsys, spacing) -> None:
    image, _ = make_phantom("MR", size=(20, 22, 24))
    image.SetSpacing((spacing,) * 3)
    source = tmp_path / "spacing.nrrd"
    sitk.WriteImage(image, str(source))
    refused(capsys, predict(bundle, source, tmp_path / "mask.nii.gz"), "voxel spacing", "outside")


def test_a_working_grid_too_large_to_hold_is_refused_before_resampling(bundle) -> None:
    """10 voxels of 900 mm (a plausible-looking header in the wrong unit): 9 m across, which at
    the model's 4 mm would be 1.1e10 voxels."""
    image, _ = make_phantom("MR", size=(10, 10, 10), spacing=(900.0, 900.0, 900.0))
    with pytest.raises(InputImageError, match=r"covers 9000x9000x9000 mm: .* more than PocketSeg handles"):
        segment_image(image, load_bundle(bundle), InferenceOptions(device="cpu"))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("format_version", "two"),
        ("weights_sha256", 7),
        ("spacing", ["a", "b", "c"]),
        ("labels", [{"value": 1e400, "name": "Brain"}]),
        ("labels", [{"value": 1, "name": "Brain", "terminology": "SCT"}]),
        ("preprocessing", {"kind": "ct_window", "window": ["low", "high"]}),
        ("name", "/etc"),
    ],
)
def test_malformed_bundle_json_values_are_one_sentence(bundle, head, tmp_path, capsys, key, value) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    config = json.loads((broken / CONFIG_FILE).read_text(encoding="utf-8"))
    config[key] = value
    (broken / CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")
    refused(capsys, predict(broken, head, tmp_path / "mask.nii.gz"), str(broken / CONFIG_FILE).split("/")[-1])
    assert not (tmp_path / "mask.nii.gz").exists()


def test_a_huge_weights_file_is_refused_without_reading_it(bundle, tmp_path) -> None:
    broken = tmp_path / "huge"
    shutil.copytree(bundle, broken)
    with open(broken / WEIGHTS_FILE, "r+b") as handle:
        handle.truncate(64 * 2**30)  # a sparse 64 GiB file: no disk used
    with pytest.raises(BundleError, match=r"64\.0 GiB, far larger than any PocketSeg model"):
        load_bundle(broken)


def test_weights_are_hashed_in_blocks_not_read_whole(bundle, tmp_path) -> None:
    """1.2 GiB of weights under a 1 GiB address-space limit: the checksum is computed (and
    fails) instead of a MemoryError from reading the file at once."""
    broken = tmp_path / "big"
    shutil.copytree(bundle, broken)
    with open(broken / WEIGHTS_FILE, "r+b") as handle:
        handle.truncate(int(1.2 * 2**30))
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))\n"
        "from pocketseg_core.bundles import load_bundle\n"
        "from pocketseg_core.errors import BundleError\n"
        "try:\n    load_bundle(sys.argv[1])\n"
        "except BundleError as error:\n    print(error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(broken)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "fails its checksum" in done.stdout


def test_a_header_claiming_1500_cubed_voxels_is_refused_without_allocating(tmp_path) -> None:
    """Under a 2 GiB address-space limit a 1500^3 float32 header (13.5 GB) is refused by name."""
    image, _ = make_phantom("MR", size=(20, 22, 24))
    source = tmp_path / "small.nii"
    sitk.WriteImage(sitk.Cast(image, sitk.sitkFloat32), str(source))
    raw = bytearray(source.read_bytes())
    raw[40:56] = np.array([3, 1500, 1500, 1500, 1, 1, 1, 1], "<i2").tobytes()
    for name, data in (("lying.nii", bytes(raw)), ("lying.nii.gz", gzip.compress(bytes(raw)))):
        (tmp_path / name).write_bytes(data)
        code = (
            "import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))\n"
            "from pocketseg_core.io import read_image\n"
            "from pocketseg_core.errors import InputImageError\n"
            "try:\n    read_image(sys.argv[1])\n"
            "except InputImageError as error:\n    print(error)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / name)], capture_output=True, text=True, timeout=300,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "truncated" in done.stdout and "13500000000 bytes" in done.stdout


def test_folder_mode_goes_on_past_a_bad_file_and_names_it(bundle, head, tmp_path, capsys) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(head, inputs / "a_good.nii.gz")
    truncated_copies(head, inputs)  # cut.nii.gz, short.nii.gz, short.nii
    shutil.copy(head, inputs / "z_good.nii.gz")
    assert main(predict(bundle, inputs, tmp_path / "out")) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert sum("error:" in line for line in captured.err.splitlines()) == 3
    assert "cut.nii.gz: error:" in captured.err
    assert files(tmp_path / "out") == ["a_good.nii.gz", "z_good.nii.gz"]
    assert "2 of 5 images segmented" in captured.out


# --------------------------------------------------------------------------- 9 training


def test_a_failing_case_is_named_and_a_failed_start_leaves_nothing(tmp_path) -> None:
    dataset = write_csv_dataset(tmp_path / "data", subjects=4)
    good = (tmp_path / "data" / "s2c0.nii.gz").read_bytes()
    (tmp_path / "data" / "s2c0.nii.gz").write_bytes(good[: len(good) // 2])
    config = config_from_preset("pocketnet-nfbs", dataset=str(dataset), **TINY_RUN)
    run = tmp_path / "run"
    with pytest.raises(DatasetError, match="s2c0.*truncated"):
        run_cross_validation(config, run)
    assert not run.exists()  # no run.json: the rerun is not refused as "already holds a run"
    (tmp_path / "data" / "s2c0.nii.gz").write_bytes(good)
    result = run_cross_validation(config.replace(epochs=1), run)
    assert len(result.per_case) == 4


def test_all_empty_labels_are_refused(tmp_path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    rows = ["image,label,subject"]
    for subject in range(2):
        image, label = phantom_pair(subject)
        sitk.WriteImage(image, str(folder / f"s{subject}.nii.gz"))
        empty = sitk.Image(label.GetSize(), label.GetPixelID())
        empty.CopyInformation(label)
        sitk.WriteImage(empty, str(folder / f"s{subject}_label.nii.gz"))
        rows.append(f"s{subject}.nii.gz,s{subject}_label.nii.gz,subject{subject}")
    (folder / "cases.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    config = config_from_preset("pocketnet-nfbs", dataset=str(folder / "cases.csv"), **TINY_RUN)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(DatasetError, match="every one of the 2 label"):
        run_cross_validation(config, tmp_path / "run", resume=True)
    assert files(tmp_path / "run") == [".pocketseg-run.lock", "notes.txt"]  # what was there stays


def test_two_runs_on_one_folder_are_refused(tmp_path) -> None:
    dataset = write_csv_dataset(tmp_path / "data", subjects=2)
    config = config_from_preset("pocketnet-nfbs", dataset=str(dataset), **TINY_RUN)
    run = tmp_path / "run"
    with locked_run(run):  # another run holds the folder
        with pytest.raises(PocketSegError, match="another training run is using"):
            run_cross_validation(config, run, resume=True)
    assert files(run) == [".pocketseg-run.lock"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_run_files_follow_the_umask(tmp_path, umask) -> None:
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "run.json", "{}")
        write_text_atomic(tmp_path / "table.csv", "a,b\n")
        folder = tmp_path / "bundle"
        shipped = load_bundle("skullstrip")
        save_bundle(folder, shipped.config, shipped.state_dict)
    finally:
        os.umask(previous)
    assert (tmp_path / "run.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "table.csv").stat().st_mode & 0o777 == 0o666 & ~umask
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask


# --------------------------------------------------------------------------- 10 odd inputs


def test_a_label_map_given_as_image_and_pure_noise_are_warned_about(bundle) -> None:
    model = load_bundle(bundle)
    image, label = make_phantom("MR", size=(40, 44, 36))
    label_result = segment_image(label, model, InferenceOptions(device="cpu"))
    assert any("looks like a label map" in m for m in label_result.messages)
    noise = sitk.GetImageFromArray(np.random.default_rng(0).normal(100, 30, (36, 44, 40)).astype(np.float32))
    noise.CopyInformation(image)
    noise_result = segment_image(noise, model, InferenceOptions(device="cpu"))
    assert any("pure noise" in m for m in noise_result.messages)
    clean = segment_image(image, model, InferenceOptions(device="cpu"))
    assert not clean.messages  # a real-looking image gets neither


def test_real_images_are_not_taken_for_noise_or_label_maps(shared_data: Path) -> None:
    from pocketseg_core.preprocessing import looks_like_label_map, looks_like_noise

    for name in (
        "brain/swiss_atlas_t1.mha",
        "misc/nipy_anatomical_t1_lowres.nii.gz",
        "liver/ts_abdomen_ct_small.nii.gz",
    ):
        volume = sitk.GetArrayFromImage(read_image(shared_file(shared_data, name)))
        assert not looks_like_noise(volume) and looks_like_label_map(volume) is None, name
    labels = sitk.GetArrayFromImage(read_image(shared_data / "liver/ts_abdomen_ct_small_labels.nii.gz"))
    assert looks_like_label_map(labels) == 42


def test_a_fifo_is_refused_instead_of_hanging(tmp_path) -> None:
    fifo = tmp_path / "pipe.nii.gz"
    os.mkfifo(fifo)
    code = "import sys\nfrom pocketseg_core.io import read_image\nread_image(sys.argv[1])\n"
    done = subprocess.run(
        [sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert "is not a regular file (a pipe, device or socket)" in done.stderr


def test_non_ascii_paths_work_under_an_ascii_locale(tmp_path) -> None:
    folder = tmp_path / "tête"
    folder.mkdir()
    image, label = make_phantom("MR", size=(20, 22, 24))
    sitk.WriteImage(label, str(folder / "référence.nii.gz"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0",
           "PYTHONCOERCECLOCALE": "0", "PYTHONIOENCODING": ""}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "pocketseg_core", "evaluate", "--reference", str(folder / "référence.nii.gz"),
         "--prediction", str(folder / "référence.nii.gz"), "--json", "--output", str(folder / "métriques.csv")],
        capture_output=True, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")
    assert json.loads(done.stdout)["dice"] == 1.0
    assert (folder / "métriques.csv").is_file()
