"""Cross-validation runs on phantoms: artefacts, resume after a crash, failed checkpoint writes, bad input."""

import csv
import errno
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from training_phantoms import TINY_RUN, write_csv_dataset

from pocketseg_core.bundles import load_bundle
from pocketseg_core.cli import main as cli_main
from pocketseg_core.errors import Cancelled, CheckpointWriteError, DatasetError, PocketSegError
from pocketseg_core.metrics import METRIC_NAMES, compute_metrics
from pocketseg_core.training import checkpoints, config_from_preset, run_cross_validation


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_csv_dataset(tmp_path_factory.mktemp("phantoms"), subjects=4)


def _config(dataset, **changes):
    return config_from_preset("pocketnet-nfbs", dataset=str(dataset), **{**TINY_RUN, **changes})


def test_cli_run_writes_every_artefact(dataset, tmp_path, capsys):
    overrides = {k: v for k, v in TINY_RUN.items() if k not in ("folds", "epochs", "device")}
    config_file = tmp_path / "tiny.json"
    config_file.write_text(json.dumps(overrides), encoding="utf-8")
    run_dir = tmp_path / "run"
    code = cli_main([
        "train", "--dataset", str(dataset), "--preset", "pocketnet-nfbs", "--folds", "2", "--epochs", "2",
        "--device", "cpu", "--seed", "1", "--config", str(config_file), "--output", str(run_dir),
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "Out-of-fold accuracy over 4 case(s)" in printed and "Dice" in printed
    assert not (run_dir / "INCOMPLETE").exists()
    assert json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["status"] == "complete"
    folds = json.loads((run_dir / "folds.json").read_text(encoding="utf-8"))
    assert folds["seed"] == 1 and sorted(s for f in folds["folds"] for s in f["subjects"]) == [
        "subject0", "subject1", "subject2", "subject3",
    ]  # fmt: skip
    # per-epoch log: one row per fold and epoch with loss, validation Dice, lr, time
    with open(run_dir / "training_log.csv", encoding="utf-8") as handle:
        log = list(csv.DictReader(handle))
    assert [(row["fold"], row["epoch"]) for row in log] == [("1", "1"), ("1", "2"), ("2", "1"), ("2", "2")]
    assert all(float(row["lr"]) == pytest.approx(1e-3) and 0 <= float(row["val_dice"]) <= 1 for row in log)
    # out-of-fold predictions on each case's own grid, metrics equal to compute_metrics of the files
    with open(run_dir / "metrics_per_case.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["case"] for row in rows) == ["s0c0", "s1c0", "s2c0", "s3c0"]
    assert set(METRIC_NAMES) <= set(rows[0])
    for row in rows:
        image = sitk.ReadImage(str(dataset.parent / f"{row['case']}.nii.gz"))
        label = sitk.ReadImage(str(dataset.parent / f"{row['case']}_label.nii.gz"))
        prediction = sitk.ReadImage(str(run_dir / "predictions" / f"{row['case']}.nii.gz"))
        assert prediction.GetSize() == image.GetSize()
        assert np.allclose(prediction.GetOrigin(), image.GetOrigin())
        assert float(row["dice"]) == pytest.approx(compute_metrics(label, prediction)["dice"], abs=1e-5)
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    dices = [float(row["dice"]) for row in rows]
    assert summary["metrics"]["dice"]["mean"] == pytest.approx(np.mean(dices), abs=1e-5)
    assert summary["metrics"]["dice"]["std"] == pytest.approx(np.std(dices), abs=1e-5)
    assert (run_dir / "metrics_boxplot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the final bundle is the best fold's best checkpoint, loadable by pocketseg predict
    bundle = load_bundle(run_dir / "model")
    best_fold = summary["best_fold"]
    best = torch.load(run_dir / f"fold_{best_fold}" / "best.pt", weights_only=True)
    assert all(torch.equal(best[k], bundle.state_dict[k]) for k in best)
    assert bundle.config.training["fold"] == best_fold and bundle.config.task == "skullstrip"
    # an existing run is not overwritten without --resume
    assert (
        cli_main(["train", "--dataset", str(dataset), "--preset", "pocketnet-nfbs", "--output", str(run_dir)])
        == 1
    )


class _CrashAt:
    """Raises at the end of one epoch, like a run killed there."""

    def __init__(self, fold, epoch):
        self.where = (fold, epoch)
        self.epochs = []

    def on_epoch_end(self, fold, epoch, metrics):
        self.epochs.append((fold, epoch))
        if (fold, epoch) == self.where:
            raise KeyboardInterrupt("simulated kill")


def test_killed_run_resumes_without_repeating_finished_folds(dataset, tmp_path):
    config = _config(dataset, epochs=3, steps_per_epoch=2)
    run_dir = tmp_path / "run"
    crash = _CrashAt(2, 1)
    with pytest.raises(KeyboardInterrupt):
        run_cross_validation(config, run_dir, callbacks=crash)
    assert crash.epochs == [(1, 1), (1, 2), (1, 3), (2, 1)]
    assert (run_dir / "INCOMPLETE").exists()
    assert json.loads((run_dir / "fold_1" / "state.json").read_text(encoding="utf-8"))["status"] == "done"
    fold1_best = (run_dir / "fold_1" / "best.pt").read_bytes()
    fold1_last = (run_dir / "fold_1" / "last.pt").read_bytes()
    assert torch.load(run_dir / "fold_2" / "last.pt", weights_only=True)["epoch"] == 1

    resumed = _CrashAt(None, None)
    result = run_cross_validation(config, run_dir, resume=True, callbacks=resumed)
    assert resumed.epochs == [(2, 2), (2, 3)]  # fold 1 not repeated, fold 2 from its last epoch
    assert (run_dir / "fold_1" / "best.pt").read_bytes() == fold1_best
    assert (run_dir / "fold_1" / "last.pt").read_bytes() == fold1_last
    assert [h["epoch"] for h in torch.load(run_dir / "fold_2" / "last.pt", weights_only=True)["history"]] == [
        1,
        2,
        3,
    ]
    assert not (run_dir / "INCOMPLETE").exists() and result.bundle_path.is_dir()
    assert len(result.per_case) == 4

    # the resumed fold 2 equals an uninterrupted one: each epoch re-seeds from (seed, fold, epoch)
    straight = tmp_path / "straight"
    run_cross_validation(config, straight)
    for name in ("fold_1/best.pt", "fold_2/best.pt"):
        a = torch.load(run_dir / name, weights_only=True)
        b = torch.load(straight / name, weights_only=True)
        assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), name

    with pytest.raises(PocketSegError, match=r"settings differ.*\['epochs'\]"):
        run_cross_validation(config.replace(epochs=5), run_dir, resume=True)


def test_cancel_from_progress_callback_leaves_a_resumable_run(dataset, tmp_path):
    class StopAtHalf:
        def on_progress(self, fraction, message):
            return fraction < 0.3

    run_dir = tmp_path / "run"
    with pytest.raises(Cancelled, match="can be resumed"):
        run_cross_validation(_config(dataset, epochs=1), run_dir, callbacks=StopAtHalf())
    assert (run_dir / "INCOMPLETE").exists() and not (run_dir / "model").exists()


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    checkpoints.atomic_torch_save({"w": torch.ones(3)}, path)
    before = path.read_bytes()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.os, "fsync", disk_full)
    with pytest.raises(
        CheckpointWriteError,
        match="No space left on device.*previous version, if any, was kept.*rerun with --resume",
    ):
        checkpoints.atomic_torch_save({"w": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]  # no temporary file left behind


def test_disk_full_during_a_run_keeps_the_last_good_checkpoint(dataset, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    real_fsync = checkpoints.os.fsync

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    class FailAtEpoch2:
        def on_epoch_end(self, fold, epoch, metrics):
            if epoch == 1:  # from now on every write fails: the disk is full
                monkeypatch.setattr(checkpoints.os, "fsync", disk_full)

    with pytest.raises(CheckpointWriteError):
        run_cross_validation(_config(dataset, epochs=3), run_dir, callbacks=FailAtEpoch2())
    monkeypatch.setattr(checkpoints.os, "fsync", real_fsync)
    last = torch.load(run_dir / "fold_1" / "last.pt", weights_only=True)
    assert last["epoch"] == 1  # the epoch-1 checkpoint survived, intact and loadable
    assert torch.load(run_dir / "fold_1" / "best.pt", weights_only=True).keys() == last["model"].keys()
    # after freeing space, the run resumes from there
    result = run_cross_validation(_config(dataset, epochs=3), run_dir, resume=True)
    assert len(result.per_case) == 4


def test_bad_datasets_fail_before_training(tmp_path):
    small = write_csv_dataset(tmp_path / "two", subjects=2)
    with pytest.raises(DatasetError, match="2 subject.*cannot fill 5 folds"):
        run_cross_validation(_config(small, folds=5), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no training cases"):
        run_cross_validation(_config(tmp_path / "empty"), tmp_path / "run2")


@pytest.mark.parametrize(
    ("preset", "changes"),
    [
        # 2D slices (PocketNet LiTS setup)
        ("pocketnet-lits", {"window_mode": "slice2d", "window_size_zyx": (1, 0, 0), "patch_size_zyx": (1, 32, 32),
                            "network": "pocket_unet2d", "network_args": {"init_filters": 4, "depth": 2}}),
        # 2.5D: the slice and one neighbour each side as channels
        ("pocketnet-lits", {"window_mode": "slice2d", "window_size_zyx": (1, 0, 0), "patch_size_zyx": (3, 32, 32),
                            "context_slices": 1, "network": "pocket_unet2d",
                            "network_args": {"init_filters": 4, "depth": 2}}),
        # LV-Net with deep supervision (train mode returns logits and four aux heads)
        ("lvnet-lits", {"window_mode": "slab", "window_size_zyx": (8, 0, 0), "patch_size_zyx": (8, 32, 32),
                        "network": "lvnet", "network_args": {"widths": (4, 8, 16), "encoder_blocks": (1, 1, 1),
                                                             "decoder_blocks": (1, 1), "kernel_size": 3},
                        "loss": {"name": "deep_supervision_ce", "aux_weights": [0.4, 0.8]}}),
    ],
)  # fmt: skip
def test_lits_presets_run_in_2d_and_with_deep_supervision(dataset, tmp_path, preset, changes):
    config = config_from_preset(
        preset, dataset=str(dataset), **{**TINY_RUN, **changes, "epochs": 1, "steps_per_epoch": 2}
    )
    result = run_cross_validation(config, tmp_path / "run")
    assert len(result.per_case) == 4
    bundle = load_bundle(result.bundle_path)
    assert bundle.config.window_mode == changes["window_mode"] and bundle.config.modality == "CT"
    assert bundle.config.preprocessing["kind"] == "ct_window"
    context = changes.get("context_slices", 0)
    assert bundle.config.context_slices == context
    assert bundle.config.network_args.get("in_channels", 1) == 2 * context + 1
    if context:  # the patch must hold the slice and its neighbours: a clear error before training
        with pytest.raises(PocketSegError, match=r"needs patch_size_zyx\[0\] == 3"):
            run_cross_validation(config.replace(patch_size_zyx=(1, 32, 32)), tmp_path / "run_bad")
