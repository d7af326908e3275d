"""Training configurations as data: :class:`TrainingConfig`, the papers' presets, optimisers and schedulers by name.

A config is a plain dataclass that round-trips through JSON (it is stored in the run folder so
a run can be resumed and reproduced). Presets are dicts of overrides on the defaults:

* ``pocketnet-nfbs``: PocketNet section 3 on NFBS: 3D U-Net (pocket) on 5-slice slabs
  (256 x 256 x 5 at 1 mm), L2 Dice, Adam 1e-3, halved on plateau, batch 4, sagittal flip,
  5 folds, largest connected component, MR z-score.
* ``pocketnet-lits``: the same on LiTS with the 2D network on axial slices (256 x 256, batch 16,
  CT window [-100, 200] HU).
* ``lvnet-lits``: LV-Net section 3-4: 16 x 256 x 256 blocks, CE + deep supervision
  (0.2/0.4/0.6/0.8), Adam 1e-3 with weight decay 1e-5, lr x 0.9 per epoch, early stop on the
  validation set, CT window [-200, 200] HU then z-score (LV-Net section 4.1).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pocketseg_core.anatomy import structure_for_task
from pocketseg_core.errors import PocketSegError

if TYPE_CHECKING:
    import torch


@dataclass
class TrainingConfig:
    """Everything a cross-validation run or a recipe needs, besides the data.

    Spacings are mm in SimpleITK ``(x, y, z)`` order; patch and window sizes in torch
    ``(z, y, x)`` order (window 0 = whole axis, as in :class:`~pocketseg_core.bundles.BundleConfig`).
    """

    name: str = "custom"
    dataset: str = ""
    #: raw label value -> class (``None``: the dataset layout's default, see datasets.py)
    label_map: dict[str, int] | None = None
    network: str = "pocket_unet3d"
    network_args: dict[str, Any] = field(default_factory=dict)
    modality: str = "MR"
    preprocessing: dict[str, Any] = field(default_factory=lambda: {"kind": "mr_zscore"})
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    orientation: str = "LPS"
    #: inference windows (bundle): ``patch3d``, ``slab`` or ``slice2d``
    window_mode: str = "slab"
    window_size_zyx: tuple[int, int, int] = (5, 0, 0)
    #: ``slice2d`` only: neighbouring slices each side given to the network as extra channels
    #: (2.5D; the network gets ``in_channels = 2 c + 1``, the patch ``2 c + 1`` slices)
    context_slices: int = 0
    #: training patch; each size is rounded up to the network's spatial_divisor
    patch_size_zyx: tuple[int, int, int] = (5, 256, 256)
    #: share of patches centred on a random foreground voxel (the rest: uniform)
    foreground_fraction: float = 0.5
    #: share of patches whose middle slice lies within ``past_ends_mm`` beyond the foreground's
    #: first or last axial slice (:func:`~.sampling.sample_batch`; taken from the uniform share)
    past_ends_fraction: float = 0.0
    past_ends_mm: float = 30.0
    loss: dict[str, Any] = field(default_factory=lambda: {"name": "dice_l2"})
    optimizer: dict[str, Any] = field(default_factory=lambda: {"name": "adam", "lr": 1e-3})
    scheduler: dict[str, Any] = field(
        default_factory=lambda: {"name": "plateau", "factor": 0.5, "patience": 10}
    )
    augmentation: list[dict[str, Any]] = field(default_factory=lambda: [{"name": "flip", "p": 0.5}])
    batch_size: int = 4
    epochs: int = 100
    steps_per_epoch: int = 100
    #: stop a fold when the validation Dice has not improved for this many epochs (None: never)
    early_stopping_patience: int | None = None
    folds: int = 5
    seed: int = 0
    #: share of the training subjects held out for validation (checkpoint choice, plateau,
    #: early stop). When too few subjects remain, the held-out fold itself is used (logged).
    validation_fraction: float = 0.2
    validation_overlap: float = 0.25
    keep_largest_component: bool = True
    device: str = "auto"
    amp: bool = True
    #: "folds": spread folds over torchrun ranks; "ddp": DistributedDataParallel inside each fold
    distributed_mode: str = "folds"
    show_progress: bool = True
    #: label values, names, colours; empty: the task's standard label (``bundles.standard_label``)
    labels: list[dict[str, Any]] = field(
        default_factory=lambda: [{"value": 1, "name": "Structure", "color": [1.0, 1.0, 0.0]}]
    )
    task: str | None = None
    #: True (cross-validation): each epoch draws its patches and augmentation from a seed derived
    #: from (seed, fold, epoch); False (recipes): one random stream from ``seed`` for the whole stage
    reseed_every_epoch: bool = True
    # ---- recipes (``pocketseg train --recipe``; see pocketseg_core/training/recipes.py) ----
    #: the recipe's files, relative to ``--data-root``: ``{"case", "image", "label", "use":
    #: "train"|"synthesis", "label_value"}`` (``label_value`` absent: label >= 0.5 is foreground)
    sources: list[dict[str, Any]] = field(default_factory=list)
    #: synthetic images made from the ``use: synthesis`` sources (``synthesis.py``), or empty
    synthesis: dict[str, Any] = field(default_factory=dict)
    #: run name -> case ids held out of that run (``[]``: trained on every case)
    runs: dict[str, list[str]] = field(default_factory=dict)
    #: the run whose model is shipped
    shipped_run: str = ""
    #: training stages, each warm-started from the previous one's weights with a new optimiser
    #: and schedule: ``{"name": ..., <config keys overriding this config's>}``; empty: one stage
    stages: list[dict[str, Any]] = field(default_factory=list)
    #: the first stage starts from this bundle's weights instead of random ones (fine-tuning):
    #: ``{"bundle": folder relative to --data-root (or absolute), "weights_sha256": the weights'
    #: sha256, checked before training}``; empty: random initial weights
    init_from: dict[str, Any] = field(default_factory=dict)
    #: recipes: trainings of the whole recipe, member ``k`` with every seed (training, synthesis,
    #: stages) shifted by ``k``; the bundle averages their softmax (``BundleConfig.members``)
    members: int = 1
    #: recipes: an ensemble of differently configured trainings instead (e.g. a small network and a
    #: wider one trained on more): member ``k`` is the recipe with ``member_recipes[k]``'s keys
    #: applied (``network_args``, ``stages``, ``sources``...; ``{}``: the recipe itself), with its
    #: seeds as given (not shifted); ``members`` is their number
    member_recipes: list[dict[str, Any]] = field(default_factory=list)
    #: the bundle's mask clean-up (``BundleConfig.postprocessing``)
    postprocessing: dict[str, Any] = field(default_factory=dict)
    #: the bundle's title, description and version (empty: generic text, version 0.0.0)
    title: str = ""
    description: str = ""
    version: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("spacing", "window_size_zyx", "patch_size_zyx"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PocketSegError(f"unknown training config keys {unknown}; known keys: {sorted(known)}")
        values = dict(data)
        for key in ("spacing", "window_size_zyx", "patch_size_zyx"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def replace(self, **changes: Any) -> TrainingConfig:
        """A copy with ``changes`` (unknown keys raise)."""
        return TrainingConfig.from_dict({**copy.deepcopy(self.to_dict()), **changes})

    def stage(self, index: int) -> TrainingConfig:
        """The config of stage ``index`` (0-based): this config with the stage's keys applied
        (``optimizer`` and ``synthesis`` are merged key by key); the config itself if it has no stages."""
        if not self.stages:
            if index != 0:
                raise PocketSegError(f"{self.name} has one training stage; there is no stage {index + 1}")
            return self.replace(stages=[])
        if not 0 <= index < len(self.stages):
            raise PocketSegError(f"{self.name} has {len(self.stages)} training stages; no stage {index + 1}")
        changes = copy.deepcopy(self.stages[index])
        changes.pop("name", None)
        for key in ("optimizer", "synthesis"):
            if key in changes:
                changes[key] = {**getattr(self, key), **changes[key]}
        return self.replace(stages=[], **changes)

    def member(self, index: int) -> TrainingConfig:
        """The recipe member ``index`` trains (0-based, ``members`` 1): every seed, the synthesis's
        and the stages' too, shifted by ``index``; member 0 is the recipe's own training. With
        ``member_recipes``: the recipe with that member's keys applied, seeds unshifted."""
        if self.member_recipes:
            return self.replace(members=1, member_recipes=[], **copy.deepcopy(self.member_recipes[index]))
        shift = int(index)

        def shifted(block: dict[str, Any]) -> dict[str, Any]:
            block = copy.deepcopy(block)
            if "seed" in block:
                block["seed"] = int(block["seed"]) + shift
            if isinstance(block.get("synthesis"), dict) and "seed" in block["synthesis"]:
                block["synthesis"]["seed"] = int(block["synthesis"]["seed"]) + shift
            return block

        changed = shifted({"seed": self.seed, "synthesis": self.synthesis})
        return self.replace(members=1, stages=[shifted(stage) for stage in self.stages], **changed)

    def member_configs(self) -> list[TrainingConfig]:
        """The config each member of the recipe trains: the recipe itself for one network, else
        :meth:`member` ``0 .. members - 1``."""
        return [self] if self.members == 1 else [self.member(index) for index in range(self.members)]

    def stage_configs(self) -> list[TrainingConfig]:
        """The config of each of the recipe's stages (the recipe itself when it has none)."""
        return [self.stage(index) for index in range(max(1, len(self.stages)))]

    def stage_names(self) -> list[str]:
        return [str(stage.get("name", f"stage_{i + 1}")) for i, stage in enumerate(self.stages)] or [
            "stage_1"
        ]

    def network_arguments(self) -> dict[str, Any]:
        """The network's arguments, with the output channels the labels need (background + labels)."""
        args = dict(self.network_args)
        args.setdefault("num_classes", max(int(label["value"]) for label in self.label_infos()) + 1)
        if self.context_slices:
            args.setdefault("in_channels", 2 * int(self.context_slices) + 1)
        return args

    def label_infos(self) -> list[dict[str, Any]]:
        """``labels``, or the task's standard label when ``labels`` is empty."""
        if self.labels:
            return list(self.labels)
        from pocketseg_core.bundles import standard_label

        if not self.task:
            raise PocketSegError(f"training config {self.name!r} has no labels and no task; give one of them")
        return [standard_label(self.task).to_dict()]

    def bundle_config(self, name: str, training_info: dict[str, Any]):
        """The :class:`~pocketseg_core.bundles.BundleConfig` of a model trained with this config."""
        from pocketseg_core.bundles import BundleConfig, LabelInfo

        configs = self.member_configs() if self.member_recipes else [self]  # seeds alone: one configuration
        return BundleConfig(
            name=name,
            network=self.network,
            modality=self.modality,
            labels=[LabelInfo.from_dict(label) for label in self.label_infos()],
            spacing=tuple(self.spacing),
            window_mode=self.window_mode,
            window_size_zyx=tuple(self.window_size_zyx),
            context_slices=int(self.context_slices),
            network_args=configs[0].network_arguments(),
            preprocessing=dict(self.preprocessing),
            orientation=self.orientation,
            postprocessing=copy.deepcopy(self.postprocessing),
            title=self.title or f"{self.network} trained with {self.name}",
            version=self.version or "0.0.0",
            description=self.description
            or "Trained by pocketseg train (k-fold cross-validation); research use only, not a clinical device.",
            task=self.task,
            training=training_info,
            members=int(self.members),
            member_network_args=[config.network_arguments() for config in configs]
            if self.member_recipes
            else [],
        )


def with_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    """A config stored as JSON (a run's, a recipe's) with the keys it lacks at their defaults: a
    run stored before a key existed was trained with that key's default."""
    return {**json.loads(json.dumps(TrainingConfig().to_dict())), **stored}


# name, colour and SNOMED-CT codes of each task's structure come from the anatomy table
_BRAIN_LABEL = structure_for_task("skullstrip").label(1)
_LIVER_LABEL = structure_for_task("liver").label(1)

#: preset name -> overrides of the :class:`TrainingConfig` defaults
PRESETS: dict[str, dict[str, Any]] = {
    "pocketnet-nfbs": {
        "name": "pocketnet-nfbs",
        "network": "pocket_unet3d",
        "modality": "MR",
        "preprocessing": {"kind": "mr_zscore"},
        "spacing": (1.0, 1.0, 1.0),  # NFBS is 1 mm isotropic (section 3)
        "window_mode": "slab",
        "window_size_zyx": (5, 0, 0),  # 5-slice slabs of whole slices
        "patch_size_zyx": (5, 256, 256),
        "loss": {"name": "dice_l2"},
        "optimizer": {"name": "adam", "lr": 1e-3},
        # paper: "reduced by a factor of two once learning stagnates"; patience not given
        "scheduler": {"name": "plateau", "factor": 0.5, "patience": 10},
        "augmentation": [{"name": "flip", "p": 0.5}],
        "batch_size": 4,
        "folds": 5,
        "keep_largest_component": True,
        "labels": [_BRAIN_LABEL],
        "task": "skullstrip",
    },
    "pocketnet-lits": {
        "name": "pocketnet-lits",
        "network": "pocket_unet2d",
        "modality": "CT",
        "preprocessing": {"kind": "ct_window", "window": [-100, 200], "normalize": "unit"},
        # 512 x 512 slices of ~0.7-0.8 mm down-sampled to 256 (section 3) ~ 1.5 mm in-plane;
        # slices are resampled to 2.5 mm (paper silent: LiTS slice thickness varies 0.7-5 mm)
        "spacing": (1.5, 1.5, 2.5),
        "window_mode": "slice2d",
        "window_size_zyx": (1, 0, 0),
        "patch_size_zyx": (1, 256, 256),
        "loss": {"name": "dice_l2"},
        "optimizer": {"name": "adam", "lr": 1e-3},
        "scheduler": {"name": "plateau", "factor": 0.5, "patience": 10},
        "augmentation": [{"name": "flip", "p": 0.5}],
        "batch_size": 16,
        "folds": 5,
        "keep_largest_component": True,
        "labels": [_LIVER_LABEL],
        "task": "liver",
    },
    "lvnet-lits": {
        "name": "lvnet-lits",
        "network": "lvnet",
        "modality": "CT",
        "preprocessing": {"kind": "ct_window", "window": [-200, 200], "normalize": "zscore"},
        "spacing": (1.5, 1.5, 2.5),
        "window_mode": "slab",
        "window_size_zyx": (16, 0, 0),  # 16 sequential slices of whole (resized) slices, section 3.1
        "patch_size_zyx": (16, 256, 256),
        "loss": {"name": "deep_supervision_ce", "aux_weights": [0.2, 0.4, 0.6, 0.8]},
        "optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 1e-5},
        "scheduler": {"name": "exponential", "gamma": 0.9},
        "augmentation": [],
        "batch_size": 4,
        # "the model achieves the best performance on validation set ... after about 20 epochs"
        "early_stopping_patience": 10,
        "folds": 5,
        "keep_largest_component": True,
        "labels": [_LIVER_LABEL],
        "task": "liver",
    },
}


def preset_names() -> list[str]:
    return list(PRESETS)


def config_from_preset(name: str, **overrides: Any) -> TrainingConfig:
    """The :class:`TrainingConfig` of preset ``name`` with ``overrides`` (config keys) applied."""
    if name not in PRESETS:
        raise PocketSegError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return TrainingConfig.from_dict({**copy.deepcopy(PRESETS[name]), **overrides})


# ------------------------------------------------------------------ optimisers and schedulers


def create_optimizer(parameters, spec: dict[str, Any]) -> torch.optim.Optimizer:
    """``{"name": "adam"|"adamw"|"sgd", "lr": ..., ...}`` -> optimizer over ``parameters``."""
    import torch

    params = dict(spec)
    name = params.pop("name", "adam")
    classes = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    if name not in classes:
        raise PocketSegError(f"unknown optimizer {name!r}; choose one of {', '.join(classes)}")
    try:
        return classes[name](parameters, **params)
    except TypeError as error:
        raise PocketSegError(f"optimizer {name!r} does not accept {params}: {error}") from error


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float = 0.05
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to 0 at ``total_steps``.

    Stepped after every batch (the shipped models' schedule). The factor at step ``s`` is
    ``min(1, (s + 1) / warmup) * (1 + cos(pi * min(s, total) / total)) / 2``.
    """
    import torch

    total = max(1, int(total_steps))
    warmup = max(1, math.floor(total * warmup_fraction + 1e-9))

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


#: scheduler name -> (class name in ``torch.optim.lr_scheduler``, whether ``step`` takes the
#: validation loss); names, not classes, so that importing the presets (for ``pocketseg --help``
#: and the Slicer training module's menus) does not import torch
SCHEDULERS: dict[str, tuple[str, bool]] = {
    "plateau": ("ReduceLROnPlateau", True),
    "exponential": ("ExponentialLR", False),
    "step": ("StepLR", False),
    "cosine": ("CosineAnnealingLR", False),
    "constant": ("ConstantLR", False),
}
#: schedulers stepped after every batch rather than every epoch; they get ``total_steps``
STEP_SCHEDULERS = {"warmup_cosine": warmup_cosine}


class LearningRateSchedule:
    """A learning-rate scheduler by name, stepped after every batch (``warmup_cosine``) or once
    per epoch (the others; ``plateau`` with the validation loss)."""

    def __init__(self, optimizer: torch.optim.Optimizer, spec: dict[str, Any], total_steps: int = 0) -> None:
        params = dict(spec)
        name = params.pop("name", "constant")
        self.per_step = name in STEP_SCHEDULERS
        self.needs_metric = False
        known = ", ".join([*SCHEDULERS, *STEP_SCHEDULERS])
        try:
            if self.per_step:
                self.scheduler = STEP_SCHEDULERS[name](optimizer, total_steps, **params)
                return
            if name not in SCHEDULERS:
                raise PocketSegError(f"unknown scheduler {name!r}; choose one of {known}")
            import torch

            class_name, self.needs_metric = SCHEDULERS[name]
            scheduler_class = getattr(torch.optim.lr_scheduler, class_name)
            if name == "constant":
                params = {"factor": 1.0, "total_iters": 0, **params}
            self.scheduler = scheduler_class(optimizer, **params)
        except TypeError as error:
            raise PocketSegError(f"scheduler {name!r} does not accept {params}: {error}") from error

    def after_step(self) -> None:
        if self.per_step:
            self.scheduler.step()

    def after_epoch(self, validation_loss: float | None) -> None:
        if self.per_step:
            return
        if self.needs_metric:
            if validation_loss is None:
                raise PocketSegError("the plateau scheduler needs a validation set; choose another scheduler")
            self.scheduler.step(validation_loss)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)
