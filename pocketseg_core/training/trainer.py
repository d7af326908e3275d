"""The training loop: one :class:`Trainer` for every model PocketSeg trains.

Cross-validation folds (:mod:`~pocketseg_core.training.crossval`, hence ``pocketseg train
--preset`` and the PocketSegTrain module) and the shipped-model recipes
(:mod:`~pocketseg_core.training.recipes`, ``pocketseg train --recipe``) both build a
:class:`Trainer` and differ only in their :class:`TrainerHooks`: what happens when an epoch starts
(re-seeding), after every step (progress, cancel), after the training steps of an epoch
(validation) and when the epoch ends (checkpoints, logs, early stop).

One step: ``sample_batch`` draws patches from the training volumes (``rng``), 2D networks get
the patch's single slice, the augmentation transforms the batch (``generator``), then forward
(autocast when AMP is on), loss (deep supervision included: the loss takes the network's whole
output), backward through the AMP scaler, optimiser step and, for per-step schedules, the
learning-rate step. Everything random comes from ``rng``, ``generator`` and torch's global
generator (network initialisation, before the trainer exists), so a seeded run is repeatable and
:meth:`Trainer.checkpoint` / :meth:`Trainer.restore` carry all of it for an exact resume.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from pocketseg_core.devices import amp_dtype
from pocketseg_core.errors import PocketSegError
from pocketseg_core.inference.network import window_divisor
from pocketseg_core.training.augment import build_augmentation
from pocketseg_core.training.losses import create_loss
from pocketseg_core.training.presets import LearningRateSchedule, create_optimizer
from pocketseg_core.training.sampling import (
    TrainingVolume,
    check_patch_shares,
    round_up_to_divisor,
    sample_batch,
)


class TrainerHooks:
    """What a training run does around the loop. Subclass and override what you need.

    Raising an exception from a hook (e.g. :class:`~pocketseg_core.errors.Cancelled` from
    ``on_step_end``) stops the run; whatever ``on_epoch_end`` wrote last stays as it was.
    """

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Before the first step of ``epoch`` (1-based)."""

    def on_step_end(self, trainer: Trainer, epoch: int, step: int, mean_loss: float) -> None:
        """After step ``step`` (1-based, within the epoch); ``mean_loss``: the epoch's mean so far."""

    def validate(self, trainer: Trainer, epoch: int) -> dict[str, float] | None:
        """Validation scores after the epoch's steps, e.g. ``{"val_loss": .., "val_dice": ..}``;
        ``val_loss`` feeds a plateau schedule. ``None``: no validation."""
        return None

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> bool | None:
        """After the epoch (``metrics``: epoch, train_loss, lr, seconds and the validation scores).
        Return ``False`` to stop training (early stop)."""
        return None


def _cpu_model_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: torch.device) -> dict[str, Any]:
    """Where a model was trained (stored in the bundle's ``training`` record)."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        # The float-sum order of the CPU kernels depends on the instruction set oneDNN and ATen
        # pick (AVX2, AVX-512 ...): bit-for-bit reproduction needs the same CPU capability.
        "cpu_model": _cpu_model_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


class Trainer:
    """Trains ``network`` on patches of ``volumes``.

    Args:
        network: the model (its parameters are optimised; checkpoints hold its state).
        volumes: training volumes on the working grid (:func:`~.sampling.prepare_volume`).
        patch_zyx: patch size (z, y, x); for 2D networks ``z`` is ``2 c + 1`` (1: one slice), passed
            as (B, 2c+1, H, W).
        batch_size, foreground_fraction, past_ends_fraction, past_ends_slices: see
            :func:`~.sampling.sample_batch`.
        slices_2d: the network takes 2D slices (``window_mode == "slice2d"``); a patch of
            ``2 c + 1`` slices gives it the middle slice and ``c`` neighbours each side as
            channels, and the middle slice's label.
        loss, optimizer, scheduler, augmentation: specs by name, as in
            :class:`~.presets.TrainingConfig` (``{"name": ..., params}``; augmentation a list).
        total_steps: steps the schedule spans (per-step schedules: warm-up and cosine length).
        seed: seed of ``rng`` (patch sampling) and ``generator`` (augmentation).
        device: where the network runs; ``amp``: autocast (and a gradient scaler for float16) on CUDA.
        hooks: :class:`TrainerHooks`.
        forward: the module called for the forward pass (a DistributedDataParallel wrapper of
            ``network``); default ``network``.
        name: names the run in error messages ("fold 2", "liver/all").
    """

    @classmethod
    def from_config(
        cls,
        network: torch.nn.Module,
        volumes: Sequence[TrainingVolume],
        config: Any,
        *,
        total_steps: int,
        seed: int,
        device: torch.device,
        hooks: TrainerHooks | None = None,
        name: str = "training",
    ) -> Trainer:
        """A trainer with the sampling, loss, optimiser, schedule, augmentation and precision of
        ``config`` (a ``TrainingConfig`` or one of its stages), its patches rounded up to a size
        the network divides (the same divisor as inference's windows)."""
        divisor = window_divisor(network, config.window_mode)
        slices_2d = config.window_mode == "slice2d"
        if slices_2d and config.patch_size_zyx[0] != 2 * config.context_slices + 1:
            raise PocketSegError(
                f"{name}: slice2d training with context_slices {config.context_slices} needs "
                f"patch_size_zyx[0] == {2 * config.context_slices + 1} (the slice and its neighbours), "
                f"got {config.patch_size_zyx[0]}"
            )
        return cls(
            network,
            volumes,
            patch_zyx=round_up_to_divisor(tuple(config.patch_size_zyx), divisor),
            batch_size=config.batch_size,
            foreground_fraction=config.foreground_fraction,
            past_ends_fraction=config.past_ends_fraction,
            # slices of the working grid (z spacing = spacing[2], mm)
            past_ends_slices=max(1, round(config.past_ends_mm / config.spacing[2])),
            slices_2d=slices_2d,
            loss=config.loss,
            optimizer=config.optimizer,
            scheduler=config.scheduler,
            augmentation=config.augmentation,
            total_steps=total_steps,
            seed=seed,
            device=device,
            amp=config.amp,
            hooks=hooks,
            name=name,
        )

    def __init__(
        self,
        network: torch.nn.Module,
        volumes: Sequence[TrainingVolume],
        *,
        patch_zyx: tuple[int, int, int],
        batch_size: int,
        foreground_fraction: float,
        slices_2d: bool,
        loss: dict[str, Any],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any],
        augmentation: list[dict[str, Any]],
        total_steps: int,
        seed: int,
        device: torch.device,
        amp: bool = False,
        past_ends_fraction: float = 0.0,
        past_ends_slices: int = 0,
        hooks: TrainerHooks | None = None,
        forward: Callable[[torch.Tensor], Any] | None = None,
        name: str = "training",
    ) -> None:
        if not volumes:
            raise PocketSegError(f"{name}: no training volumes; check the dataset or the recipe's sources")
        self.network = network
        self.volumes = list(volumes)
        self.patch_zyx = tuple(int(n) for n in patch_zyx)
        self.batch_size = int(batch_size)
        self.foreground_fraction = float(foreground_fraction)
        self.past_ends_fraction = float(past_ends_fraction)
        self.past_ends_slices = int(past_ends_slices)
        check_patch_shares(self.foreground_fraction, self.past_ends_fraction, name)
        self.slices_2d = slices_2d
        self.device = device
        self.hooks = hooks or TrainerHooks()
        self.forward = forward or network
        self.name = name
        # construction order matters for exact reproduction: optimiser, schedule, loss, augmentation
        self.optimizer = create_optimizer(network.parameters(), optimizer)
        self.schedule = LearningRateSchedule(self.optimizer, scheduler, total_steps)
        self.loss_function = create_loss(**loss)
        self.augmentation = build_augmentation(augmentation)
        self.amp_dtype = amp_dtype(device) if amp else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0  # epochs finished
        self.step = 0  # steps taken, all epochs
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------ the loop

    def reseed(self, seed: int) -> None:
        """Restart the sampling and augmentation streams from ``seed`` (and torch's global one)."""
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)

    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def train_step(self) -> float:
        """One optimisation step on a fresh augmented batch; returns the loss."""
        images, labels = sample_batch(
            self.volumes,
            self.batch_size,
            self.patch_zyx,
            self.foreground_fraction,
            self.rng,
            past_ends_fraction=self.past_ends_fraction,
            past_ends_slices=self.past_ends_slices,
        )
        if self.slices_2d:  # (B, 1, 2c+1, H, W) -> (B, 2c+1, H, W): neighbours become channels
            images, labels = images[:, 0], labels[:, self.patch_zyx[0] // 2]
        images, labels = self.augmentation(images, labels, self.generator)
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss = self.loss_function(self.forward(images), labels)
        if not torch.isfinite(loss):
            raise PocketSegError(
                f"{self.name} epoch {self.epoch + 1}: the loss became {float(loss)}; lower the learning "
                f"rate (optimizer.lr) or check the images' intensities"
            )
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.after_step()
        self.step += 1
        return float(loss.detach())

    def fit(self, epochs: int, steps_per_epoch: int) -> list[dict[str, Any]]:
        """Train from epoch ``self.epoch + 1`` to ``epochs`` (or an early stop); returns the history."""
        self.network.train()
        if isinstance(self.forward, torch.nn.Module):
            self.forward.train()
        while self.epoch < epochs:
            epoch = self.epoch + 1
            started = time.perf_counter()
            self.hooks.on_epoch_start(self, epoch)
            learning_rate = self.learning_rate()
            running = 0.0
            for step in range(steps_per_epoch):
                running += self.train_step()
                self.hooks.on_step_end(self, epoch, step + 1, running / (step + 1))
            metrics: dict[str, Any] = {"epoch": epoch, "train_loss": running / steps_per_epoch}
            validation = self.hooks.validate(self, epoch)
            if validation:
                metrics.update(validation)
            self.schedule.after_epoch(metrics.get("val_loss"))
            metrics.update(lr=learning_rate, seconds=time.perf_counter() - started)
            self.epoch = epoch
            self.history.append(metrics)
            if self.hooks.on_epoch_end(self, epoch, metrics) is False:
                break
        return self.history

    # -------------------------------------------------------------- checkpoint / resume

    def model_state(self) -> dict[str, torch.Tensor]:
        """The network's weights, detached copies on the CPU."""
        return {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()}

    def checkpoint(self) -> dict[str, Any]:
        """Everything :meth:`restore` needs to continue exactly where this trainer is."""
        return {
            "model": self.model_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "history": list(self.history),
            "rng": _rng_state(self.rng),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Continue from :meth:`checkpoint` (older checkpoints without random states also load)."""
        self.network.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.schedule.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.epoch = int(checkpoint["epoch"])
        self.step = int(checkpoint.get("step", 0))
        self.history = list(checkpoint.get("history", []))
        if "rng" in checkpoint:
            self.rng.bit_generator.state = _rng_from_saved(checkpoint["rng"])
            self.generator.set_state(checkpoint["generator"])
            torch.set_rng_state(checkpoint["torch_rng"])


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """A numpy generator's state as plain values a ``weights_only`` load accepts (128-bit ints as text)."""
    state = rng.bit_generator.state
    return {
        "bit_generator": state["bit_generator"],
        "state": {key: str(value) for key, value in state["state"].items()},
        "has_uint32": int(state["has_uint32"]),
        "uinteger": int(state["uinteger"]),
    }


def _rng_from_saved(saved: dict[str, Any]) -> dict[str, Any]:
    return {
        "bit_generator": saved["bit_generator"],
        "state": {key: int(value) for key, value in saved["state"].items()},
        "has_uint32": int(saved["has_uint32"]),
        "uinteger": int(saved["uinteger"]),
    }
