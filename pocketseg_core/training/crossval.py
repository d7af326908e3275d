"""k-fold cross-validation run: train every fold, predict every case once, measure, report.

Run folder layout (``output_dir``)::

    run.json              config, cases, status ("incomplete" until the very end)
    .pocketseg-run.lock   held while a run uses the folder (training.runlock)
    INCOMPLETE            marker file, removed when the run has finished
    folds.json            subjects (and case ids) of every fold, with the seed
    fold_K/last.pt        training state after the last finished epoch (resume point)
    fold_K/best.pt        state_dict with the best validation Dice (atomic writes)
    fold_K/log.csv        per-epoch log: train loss, validation loss and Dice, lr, seconds
    fold_K/state.json     {"status": "done", best epoch, best validation Dice, ...}
    fold_K/bundle/        the fold's best model as a bundle (used for its out-of-fold predictions)
    training_log.csv      all folds' per-epoch logs
    predictions/<case>.nii.gz   out-of-fold masks on each case's original grid
    metrics_per_case.csv  the eight metrics per case; summary.json mean ± std; metrics_boxplot.png
    model/                the final bundle (best fold by validation Dice) for ``pocketseg predict``

Resuming (``resume=True``): finished folds (``state.json`` done) are skipped untouched; a fold in
progress continues from ``last.pt`` (model, optimiser, scheduler and AMP scaler state; each epoch
draws its random numbers from a seed derived from (seed, fold, epoch), so a resumed epoch samples
what the original would have); the final prediction/report stage is redone.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from pocketseg_core.bundles import load_bundle, save_bundle
from pocketseg_core.errors import Cancelled, DatasetError, PocketSegError
from pocketseg_core.metrics import dice
from pocketseg_core.training import datasets
from pocketseg_core.training.checkpoints import atomic_torch_save, atomic_write_text, load_checkpoint
from pocketseg_core.training.datasets import Case
from pocketseg_core.training.distributed import (
    DistributedContext,
    context_from_environment,
    wrap_model,
)
from pocketseg_core.training.presets import TrainingConfig, with_defaults
from pocketseg_core.training.report import (
    format_summary,
    summarize,
    write_boxplot,
    write_csv,
    write_summary,
)
from pocketseg_core.training.runlock import locked_run
from pocketseg_core.training.sampling import TrainingVolume, prepare_volume
from pocketseg_core.training.trainer import Trainer, TrainerHooks

logger = logging.getLogger(__name__)

LOG_COLUMNS = ("fold", "epoch", "train_loss", "val_loss", "val_dice", "lr", "seconds")
CASE_COLUMNS = ("case", "subject", "fold", "dice", "hd_max", "hd_mean", "hd95", "voe", "rvd", "assd", "mssd")
#: config keys that may differ when resuming (they do not change what is computed)
RESUME_FREE_KEYS = ("device", "show_progress", "amp")
#: share of the overall progress spent training (the rest: out-of-fold predictions, report)
_TRAINING_SHARE = 0.9


class TrainingCallbacks:
    """Hooks for GUIs. Subclass and override; any object with these methods also works.

    ``on_progress(fraction, message)`` is called often (every training step); returning ``False``
    cancels the run (:class:`Cancelled` is raised; the run folder stays resumable).
    ``on_epoch_end(fold, epoch, metrics)`` gets ``train_loss, val_loss, val_dice, lr, seconds``.
    """

    def on_progress(self, fraction: float, message: str) -> bool | None:
        return None

    def on_epoch_end(self, fold: int, epoch: int, metrics: dict[str, float]) -> None:
        return None


@dataclass
class CrossValidationResult:
    """What :func:`run_cross_validation` returns (rank 0; other ranks get ``summary`` empty)."""

    run_dir: Path
    bundle_path: Path | None = None
    per_case_csv: Path | None = None
    summary_json: Path | None = None
    boxplot_png: Path | None = None
    training_log_csv: Path | None = None
    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    per_case: list[dict[str, Any]] = field(default_factory=list)
    folds: list[dict[str, Any]] = field(default_factory=list)


class _Progress:
    """Forwards progress to the callbacks and raises :class:`Cancelled` on ``False``."""

    def __init__(self, callbacks: Any) -> None:
        self.callbacks = callbacks

    def __call__(self, fraction: float, message: str) -> None:
        handler = getattr(self.callbacks, "on_progress", None)
        if handler is not None and handler(min(max(fraction, 0.0), 1.0), message) is False:
            raise Cancelled("training cancelled by the user; the run folder is kept and can be resumed")

    def epoch_end(self, fold: int, epoch: int, metrics: dict[str, float]) -> None:
        handler = getattr(self.callbacks, "on_epoch_end", None)
        if handler is not None:
            handler(fold, epoch, dict(metrics))


# ---------------------------------------------------------------------------- run state


def _compare_configs(stored: dict[str, Any], given: dict[str, Any]) -> list[str]:
    stored = with_defaults(stored)
    return sorted(
        k for k in set(stored) | set(given) if k not in RESUME_FREE_KEYS and stored.get(k) != given.get(k)
    )


def _prepare_run_dir(config: TrainingConfig, run_dir: Path, resume: bool, ctx: DistributedContext) -> None:
    run_file = run_dir / "run.json"
    if run_file.is_file():
        if not resume:
            raise PocketSegError(
                f"{run_dir} already holds a training run; pass --resume to continue it, or choose another --output"
            )
        stored = json.loads(run_file.read_text(encoding="utf-8"))
        differing = _compare_configs(stored["config"], json.loads(json.dumps(config.to_dict())))
        if differing:
            raise PocketSegError(
                f"cannot resume {run_dir}: the settings differ from the stored run in {differing}; "
                f"resume with the same settings, or start a new --output folder"
            )
    elif run_dir.exists() and any(p for p in run_dir.iterdir() if not p.name.startswith(".")) and not resume:
        raise PocketSegError(f"output folder {run_dir} is not empty; choose a new or empty folder")
    ctx.barrier()  # every rank has checked before rank 0 writes
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "INCOMPLETE").write_text(
            "this run has not finished; resume it with --resume\n", encoding="utf-8"
        )
        state = json.loads(run_file.read_text(encoding="utf-8")) if run_file.is_file() else {}
        state.update(status="incomplete", config=config.to_dict(), torch=torch.__version__)
        state.setdefault("started", time.strftime("%Y-%m-%d %H:%M:%S"))
        atomic_write_text(run_file, json.dumps(state, indent=2))


def _read_fold_state(fold_dir: Path) -> dict[str, Any] | None:
    path = fold_dir / "state.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# ------------------------------------------------------------------------------ training


def _epoch_seed(seed: int, fold: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + fold * 10_007 + epoch * 101 + rank) % (2**31 - 1)


def _validation_scores(
    network: torch.nn.Module,
    volumes: list[TrainingVolume],
    config: TrainingConfig,
    device: torch.device,
    num_classes: int,
) -> tuple[float, float]:
    """Mean (soft L2 Dice loss, hard Dice) over whole validation volumes on the working grid.

    Uses the inference's sliding window (same windows, blending and padding as ``pocketseg
    predict``); the hard Dice is that of the argmax, mean over the foreground classes.
    """
    from pocketseg_core.inference import sliding_window_probabilities

    losses, dices = [], []
    network.eval()
    for volume in volumes:
        probabilities, _ = sliding_window_probabilities(
            volume.image,
            network,
            config.window_size_zyx,
            config.window_mode,
            num_classes,
            context_slices=config.context_slices,
            overlap=config.validation_overlap,
            batch_size=config.batch_size,
            device=device,
            precision="float32",  # validation runs the network as inference does
            fallback_device=None,
        )
        prediction = probabilities.argmax(dim=0).numpy()
        for value in range(1, num_classes):
            truth = volume.label == value
            predicted = prediction == value
            dices.append(dice(truth, predicted))
            p = probabilities[value].numpy().astype(np.float64)
            g = truth.astype(np.float64)
            losses.append(1.0 - (2.0 * (p * g).sum() + 1e-6) / ((p * p).sum() + (g * g).sum() + 1e-6))
    network.train()
    return float(np.mean(losses)), float(np.mean(dices))


def _split_validation(
    train_subjects: list[str], test_subjects: list[str], config: TrainingConfig, fold: int
) -> tuple[list[str], list[str], str]:
    """(training subjects, validation subjects, how validation was chosen)."""
    count = int(math.floor(config.validation_fraction * len(train_subjects)))
    if count >= 1 and len(train_subjects) - count >= 1:
        shuffled = sorted(train_subjects)
        random.Random(config.seed * 7919 + fold).shuffle(shuffled)
        validation = sorted(shuffled[:count])
        return (
            sorted(set(train_subjects) - set(validation)),
            validation,
            "held out from the training subjects",
        )
    # too few subjects to hold some out: the test fold picks the checkpoint (optimistic; logged)
    logger.warning(
        "fold %d: too few training subjects (%d) for a separate validation set; the held-out fold is "
        "used for checkpoint selection, so its scores are optimistic",
        fold,
        len(train_subjects),
    )
    return list(train_subjects), list(test_subjects), "the held-out fold (too few subjects to hold some out)"


class _FoldHooks(TrainerHooks):
    """Cross-validation around the :class:`Trainer`: per-epoch seeds, progress and cancel,
    validation, best and last checkpoints, logs, early stop."""

    def __init__(
        self,
        fold: int,
        config: TrainingConfig,
        run_dir: Path,
        fold_dir: Path,
        validation_volumes: list[TrainingVolume],
        num_classes: int,
        ctx: DistributedContext,
        progress: _Progress,
        progress_span: tuple[float, float],
        bar: Any,
        writer: bool,
    ) -> None:
        self.fold, self.config, self.run_dir, self.fold_dir = fold, config, run_dir, fold_dir
        self.validation_volumes, self.num_classes = validation_volumes, num_classes
        self.ctx, self.progress, self.span, self.bar, self.writer = ctx, progress, progress_span, bar, writer
        self.best = {"best_dice": -1.0, "best_epoch": 0, "stale_epochs": 0}

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if self.config.reseed_every_epoch:  # a resumed epoch samples what the original would have
            trainer.reseed(_epoch_seed(self.config.seed, self.fold, epoch, self.ctx.rank))

    def on_step_end(self, trainer: Trainer, epoch: int, step: int, mean_loss: float) -> None:
        config = self.config
        self.bar.update(1)
        done = (epoch - 1) * config.steps_per_epoch + step
        start, end = self.span
        self.progress(
            start + (end - start) * done / (config.epochs * config.steps_per_epoch),
            f"fold {self.fold}/{config.folds}, epoch {epoch}/{config.epochs}, loss {mean_loss:.4f}",
        )

    def validate(self, trainer: Trainer, epoch: int) -> dict[str, float]:
        val_loss, val_dice = _validation_scores(
            trainer.network, self.validation_volumes, self.config, trainer.device, self.num_classes
        )
        return {"val_loss": val_loss, "val_dice": val_dice}

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> bool:
        fold, best = self.fold, self.best
        metrics["fold"] = fold
        if metrics["val_dice"] > best["best_dice"]:
            best.update(best_dice=metrics["val_dice"], best_epoch=epoch, stale_epochs=0)
            if self.writer:
                atomic_torch_save(trainer.model_state(), self.fold_dir / "best.pt")
        else:
            best["stale_epochs"] += 1
        if self.writer:
            atomic_torch_save({**trainer.checkpoint(), **best}, self.fold_dir / "last.pt")
            write_csv(self.fold_dir / "log.csv", trainer.history, LOG_COLUMNS)
            if not self.ctx.enabled:  # one writer: keep the run-level log live for GUIs
                _write_run_log(self.run_dir, self.config.folds)
        self.bar.set_postfix(
            loss=f"{metrics['train_loss']:.4f}",
            val_dice=f"{metrics['val_dice']:.4f}",
            lr=f"{metrics['lr']:.2e}",
        )
        logger.info(
            "fold %d epoch %d: loss %.4f, val loss %.4f, val Dice %.4f, lr %.2e, %.1f s",
            fold, epoch, metrics["train_loss"], metrics["val_loss"], metrics["val_dice"], metrics["lr"],
            metrics["seconds"],
        )  # fmt: skip
        self.progress.epoch_end(fold, epoch, {k: v for k, v in metrics.items() if k not in ("fold", "epoch")})
        patience = self.config.early_stopping_patience
        if patience is not None and best["stale_epochs"] >= patience:
            logger.info("fold %d: early stop after epoch %d (best epoch %d)", fold, epoch, best["best_epoch"])
            return False
        return True


class _NoBar:
    """What a progress bar does when none is shown (tqdm is then not needed: Slicer lacks it)."""

    def update(self, steps: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(show: bool, **settings: Any) -> Any:
    """A tqdm bar on the terminal when ``show``, else one that does nothing (no tqdm import)."""
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(**settings)


def _train_fold(
    fold: int,
    config: TrainingConfig,
    run_dir: Path,
    folds: list[list[str]],
    cases: list[Case],
    volumes: dict[str, TrainingVolume],
    device: torch.device,
    ctx: DistributedContext,
    progress: _Progress,
    progress_span: tuple[float, float],
) -> dict[str, Any]:
    from pocketseg_core.networks import create_network

    fold_dir = run_dir / f"fold_{fold}"
    # with DDP all ranks train this fold and rank 0 writes; with folds spread over ranks, the owner writes
    writer = ctx.is_main or not ctx.uses_ddp
    if writer:
        fold_dir.mkdir(parents=True, exist_ok=True)
    test_subjects = folds[fold - 1]
    train_subjects = sorted({c.subject for c in cases} - set(test_subjects))
    train_subjects, validation_subjects, validation_source = _split_validation(
        train_subjects, test_subjects, config, fold
    )
    train_volumes = [volumes[c.case_id] for c in cases if c.subject in train_subjects]
    validation_volumes = [volumes[c.case_id] for c in cases if c.subject in validation_subjects]

    torch.manual_seed(_epoch_seed(config.seed, fold, 0, 0))  # same initial weights on every rank
    network_args = config.network_arguments()
    model = create_network(config.network, **network_args).to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    steps_total = config.epochs * config.steps_per_epoch
    bar = _progress_bar(
        config.show_progress and ctx.is_main,
        total=steps_total,
        desc=f"fold {fold}/{config.folds}",
        leave=False,
    )
    hooks = _FoldHooks(
        fold, config, run_dir, fold_dir, validation_volumes, int(network_args["num_classes"]),
        ctx, progress, progress_span, bar, writer,
    )  # fmt: skip
    trainer = Trainer.from_config(
        model,
        train_volumes,
        config,
        total_steps=steps_total,
        seed=_epoch_seed(config.seed, fold, 1, ctx.rank),
        device=device,
        hooks=hooks,
        name=f"fold {fold}",
    )
    last_path = fold_dir / "last.pt"
    if last_path.is_file():
        checkpoint = load_checkpoint(last_path)
        trainer.restore(checkpoint)
        hooks.best = {key: checkpoint[key] for key in hooks.best}
        logger.info("fold %d: resuming after epoch %d", fold, trainer.epoch)
    trainer.forward = wrap_model(model, ctx, device)
    bar.update(trainer.epoch * config.steps_per_epoch)
    try:
        trainer.fit(config.epochs, config.steps_per_epoch)
    finally:
        bar.close()

    summary = {
        "status": "done",
        "fold": fold,
        "best_epoch": hooks.best["best_epoch"],
        "best_val_dice": hooks.best["best_dice"],
        "epochs_run": trainer.epoch,
        "train_subjects": train_subjects,
        "validation_subjects": validation_subjects,
        "validation": validation_source,
        "test_subjects": test_subjects,
    }
    if writer:
        best_state = load_checkpoint(fold_dir / "best.pt")
        save_bundle(
            fold_dir / "bundle",
            config.bundle_config(
                f"{config.name}-fold{fold}", {"fold": fold, **_brief(summary), "seed": config.seed}
            ),
            best_state,
        )
        atomic_write_text(fold_dir / "state.json", json.dumps(summary, indent=2))
    return summary


def _write_run_log(run_dir: Path, n_folds: int) -> Path:
    """``training_log.csv``: every fold's ``log.csv`` rows, in fold order."""
    rows: list[dict[str, Any]] = []
    for fold in range(1, n_folds + 1):
        path = run_dir / f"fold_{fold}" / "log.csv"
        if path.is_file():
            with open(path, newline="", encoding="utf-8") as handle:
                rows.extend(csv.DictReader(handle))
    return write_csv(run_dir / "training_log.csv", rows, LOG_COLUMNS)


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary[k] for k in ("best_epoch", "best_val_dice", "epochs_run", "validation")}


# ------------------------------------------------------------------------- the whole run


def run_cross_validation(
    config: TrainingConfig,
    output_dir: str | Path,
    resume: bool = False,
    callbacks: Any = None,
    distributed: DistributedContext | None = None,
) -> CrossValidationResult:
    """Train ``config.folds`` folds on ``config.dataset`` and report out-of-fold accuracy, holding
    the run folder's lock (:mod:`pocketseg_core.training.runlock`: one run per folder; a run
    that fails before its first checkpoint leaves nothing behind).

    Args, Returns and Raises: as :func:`_run_cross_validation`; also a
    :class:`~pocketseg_core.errors.PocketSegError` when another run holds the folder.
    """
    ctx = distributed or context_from_environment(config.distributed_mode)
    if not ctx.is_main:  # rank 0 holds the lock for the whole process group
        return _run_cross_validation(config, output_dir, resume, callbacks, ctx)
    with locked_run(Path(output_dir)):
        return _run_cross_validation(config, output_dir, resume, callbacks, ctx)


def _run_cross_validation(
    config: TrainingConfig,
    output_dir: str | Path,
    resume: bool = False,
    callbacks: Any = None,
    distributed: DistributedContext | None = None,
) -> CrossValidationResult:
    """Train ``config.folds`` folds on ``config.dataset`` and report out-of-fold accuracy.

    Args:
        config: the run's settings (see :mod:`pocketseg_core.training.presets`).
        output_dir: the run folder (layout in the module docstring); must be new or empty unless
            ``resume``.
        resume: continue the run stored in ``output_dir`` (same settings required, except the
            device).
        callbacks: see :class:`TrainingCallbacks`.
        distributed: the torchrun context (default: from the environment; a single process).

    Returns:
        :class:`CrossValidationResult` (paths of the artefacts, summary, per-case rows).

    Raises:
        DatasetError: bad dataset (empty, too few subjects for the folds, bad labels or grids).
        Cancelled: the progress callback returned ``False``.
        CheckpointWriteError: a checkpoint could not be written (the previous one is kept).
    """
    from pocketseg_core.inference import resolve_device

    if config.members != 1:
        raise PocketSegError(
            f"members {config.members}: ensembles of seeds are trained by recipes (pocketseg train --recipe); "
            "cross-validation trains one network per fold"
        )
    ctx = distributed or context_from_environment(config.distributed_mode)
    run_dir = Path(output_dir)
    progress = _Progress(callbacks)
    config.bundle_config(config.name, {})  # refuse a config inference could not use, before any work

    label_map = {int(k): int(v) for k, v in config.label_map.items()} if config.label_map else None
    cases = datasets.discover_cases(config.dataset, label_map)
    folds = datasets.make_folds(cases, config.folds, config.seed)
    _prepare_run_dir(config, run_dir, resume, ctx)
    folds_file = run_dir / "folds.json"
    if resume and folds_file.is_file():
        stored_folds = datasets.load_folds(folds_file)
        if stored_folds != folds:
            raise PocketSegError(
                f"cannot resume {run_dir}: the dataset's subjects differ from those in folds.json "
                f"(cases were added or removed); start a new --output folder"
            )
    elif ctx.is_main:
        datasets.save_folds(folds_file, folds, cases, config.seed)
        run_state = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        run_state["cases"] = [case.to_dict() for case in cases]
        atomic_write_text(run_dir / "run.json", json.dumps(run_state, indent=2))
    ctx.barrier()

    messages: list[str] = []
    device = ctx.device_for(resolve_device(config.device, messages))
    for message in messages:
        logger.warning(message)

    my_folds = ctx.folds_to_train(config.folds)
    pending = [
        fold
        for fold in my_folds
        if (_read_fold_state(run_dir / f"fold_{fold}") or {}).get("status") != "done"
    ]
    if pending:
        progress(0.0, f"preparing {len(cases)} case(s)")
        volumes = {}
        labelled = 0
        for index, case in enumerate(cases):
            try:
                image, label = datasets.load_case(case)
                labelled += bool(sitk.GetArrayViewFromImage(label).any())
                volumes[case.case_id] = prepare_volume(
                    case.case_id,
                    image,
                    label,
                    tuple(config.spacing),
                    config.orientation,
                    config.preprocessing,
                )
            except Cancelled:
                raise
            except (PocketSegError, RuntimeError, ValueError, MemoryError) as error:
                raise DatasetError(_naming_case(case, error)) from error
            progress(0.02 * (index + 1) / len(cases), f"prepared {case.case_id}")
        if not labelled:
            raise DatasetError(
                f"every one of the {len(cases)} label(s) is empty (no foreground voxel): a model trained on "
                f"them would only learn background; check the label files and the label values (label_map)"
            )
    for index, fold in enumerate(my_folds):
        span = (_TRAINING_SHARE * index / len(my_folds), _TRAINING_SHARE * (index + 1) / len(my_folds))
        if fold not in pending:
            logger.info("fold %d already finished; skipped", fold)
            continue
        _train_fold(fold, config, run_dir, folds, cases, volumes, device, ctx, progress, span)
    ctx.barrier()

    result = CrossValidationResult(run_dir=run_dir)
    if ctx.is_main:
        result = _finish(config, run_dir, folds, cases, device, progress)
    ctx.barrier()
    return result


def _naming_case(case: Case, error: BaseException) -> str:
    """``error``'s message, prefixed with the case it happened on unless it names it already."""
    message = str(error) if isinstance(error, PocketSegError) else f"{type(error).__name__}: {error}"
    if case.case_id in message:
        return message
    return f"case {case.case_id} ({case.image_path}): {message}"


def _finish(
    config: TrainingConfig,
    run_dir: Path,
    folds: list[list[str]],
    cases: list[Case],
    device: torch.device,
    progress: _Progress,
) -> CrossValidationResult:
    """Out-of-fold predictions with each fold's bundle, metrics, summary, figure, final bundle."""
    from pocketseg_core.inference import InferenceOptions, segment_image
    from pocketseg_core.io import read_image, write_image
    from pocketseg_core.metrics import compute_metrics

    fold_states = []
    for fold in range(1, config.folds + 1):
        state = _read_fold_state(run_dir / f"fold_{fold}")
        if not state or state.get("status") != "done":
            raise PocketSegError(f"fold {fold} has not finished; rerun with --resume to train it")
        fold_states.append(state)

    predictions_dir = run_dir / "predictions"
    predictions_dir.mkdir(exist_ok=True)
    options = InferenceOptions(
        device=str(device), amp=config.amp, batch_size=config.batch_size,
        keep_largest_component=config.keep_largest_component,
    )  # fmt: skip
    rows: list[dict[str, Any]] = []
    done = 0
    for fold, subjects in enumerate(folds, start=1):
        bundle = load_bundle(run_dir / f"fold_{fold}" / "bundle")
        network = bundle.build_network(device)
        for case in (c for c in cases if c.subject in subjects):
            try:
                image = read_image(case.image_path)
                result = segment_image(image, bundle, options, network=network)
                write_image(result.mask, predictions_dir / f"{case.case_id}.nii.gz")
                _, reference = datasets.load_case(case)
                metrics = compute_metrics(
                    reference, result.mask, label=int(config.labels[0]["value"]), allow_absent=True
                )
            except Cancelled:
                raise
            except (PocketSegError, RuntimeError, ValueError, MemoryError) as error:
                raise DatasetError(_naming_case(case, error)) from error
            rows.append({"case": case.case_id, "subject": case.subject, "fold": fold, **metrics})
            done += 1
            progress(
                _TRAINING_SHARE + (1 - _TRAINING_SHARE) * done / len(cases),
                f"out-of-fold prediction {done}/{len(cases)}: {case.case_id} Dice {metrics['dice']:.4f}",
            )

    per_case_csv = write_csv(run_dir / "metrics_per_case.csv", rows, CASE_COLUMNS)
    summary = summarize(rows)
    log_csv = _write_run_log(run_dir, config.folds)

    best = max(fold_states, key=lambda s: s["best_val_dice"])
    best_state = load_checkpoint(run_dir / f"fold_{best['fold']}" / "best.pt")
    training_info = {
        "preset": config.name,
        "fold": best["fold"],
        **_brief(best),
        "folds": config.folds,
        "seed": config.seed,
        "out_of_fold_dice_mean": summary["dice"]["mean"],
        "out_of_fold_dice_std": summary["dice"]["std"],
        "cases": len(cases),
        "selection": "the fold with the best validation Dice",
    }
    bundle_path = save_bundle(
        run_dir / "model",
        config.bundle_config(f"{config.name}-{config.network}", training_info),
        best_state,
    )
    summary_json = write_summary(
        run_dir / "summary.json",
        summary,
        {
            "folds": fold_states,
            "bundle": str(bundle_path),
            "best_fold": best["fold"],
            "config": config.to_dict(),
        },
    )
    boxplot = write_boxplot(
        run_dir / "metrics_boxplot.png",
        rows,
        f"{config.network} ({config.name}), {config.folds}-fold out-of-fold",
    )
    print(f"Out-of-fold accuracy over {len(rows)} case(s) ({config.folds} folds):")
    print(format_summary(summary))

    run_state = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    run_state.update(status="complete", finished=time.strftime("%Y-%m-%d %H:%M:%S"))
    atomic_write_text(run_dir / "run.json", json.dumps(run_state, indent=2))
    (run_dir / "INCOMPLETE").unlink(missing_ok=True)
    progress(1.0, "cross-validation finished")
    return CrossValidationResult(
        run_dir=run_dir,
        bundle_path=bundle_path,
        per_case_csv=per_case_csv,
        summary_json=summary_json,
        boxplot_png=boxplot,
        training_log_csv=log_csv,
        summary=summary,
        per_case=rows,
        folds=fold_states,
    )
