"""Recipes: a model's whole training in one JSON file, reproduced by ``pocketseg train --recipe``.

A recipe is a :class:`~pocketseg_core.training.presets.TrainingConfig` whose ``sources`` name the
files (relative to a data root), whose ``synthesis`` says which synthetic images to add, whose
``runs`` say which cases each run holds out, and whose ``stages`` are trained one after the other,
each warm-started from the previous stage's weights with a new optimiser and schedule. The shipped
models' recipes are ``pocketseg_core/training/recipes/<task>.json``.

Output folder of :func:`train_recipe` (``output_dir``)::

    <run>/recipe.json          the recipe as trained
    <run>/<stage>/last.pt      trainer state after the last finished epoch (exact resume point)
    <run>/<stage>/bundle/      the stage's model after its last finished epoch
    <run>/<stage>/log.csv      per-epoch loss, lr, seconds
    <run>/<stage>/state.json   {"status": "done", ...} once the stage has finished
    <run>/model/               the run's final model: a bundle for ``pocketseg predict --model``

A recipe with ``members: N`` (> 1) trains the whole recipe N times per run, member ``k`` with every
seed shifted by ``k`` (:meth:`~pocketseg_core.training.presets.TrainingConfig.member`), its stages
in ``<run>/member_<k>/<stage>/``; ``<run>/model/`` holds all N networks and averages their softmax
(:class:`~pocketseg_core.networks.ensemble.ProbabilityEnsemble`). Member 0 is the recipe's own
training, bit for bit. With ``member_recipes`` the members are instead the recipe with each
entry's keys applied (another width, more stages...), seeds unshifted; the bundle records each
member's network arguments. A resumed run continues after each member's last finished stage.

Every stage of a run starts like this (the order is what makes runs repeatable): torch's global
generator is seeded with ``seed`` of the recipe, the training volumes are prepared (synthetic
ones drawn from ``synthesis.seed``), the network is created (random weights from that seed, or
the previous stage's weights; the first stage: the ``init_from`` bundle's weights when the
recipe names one, checked by sha256), then the :class:`~pocketseg_core.training.trainer.Trainer` draws
patches and augmentation from the stage's ``seed``, in one stream for the whole stage.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from pocketseg_core import io
from pocketseg_core.bundles import load_bundle, save_bundle
from pocketseg_core.errors import Cancelled, PocketSegError
from pocketseg_core.training.checkpoints import atomic_torch_save, atomic_write_text, load_checkpoint
from pocketseg_core.training.ct_synthesis import CT_SYNTHESIS_KINDS, LABEL_SCHEMES, check_hu_ranges
from pocketseg_core.training.presets import TrainingConfig, with_defaults
from pocketseg_core.training.report import write_csv
from pocketseg_core.training.sampling import TrainingVolume, check_patch_shares, prepare_volume
from pocketseg_core.training.synthesis import synthesize_head
from pocketseg_core.training.trainer import Trainer, TrainerHooks, machine_description

logger = logging.getLogger(__name__)

LOG_COLUMNS = ("epoch", "train_loss", "lr", "seconds")
#: synthesis kinds a recipe can name: ``synthstrip_heads`` (a skull-stripped brain -> a head,
#: synthesis.py) and those of :data:`~pocketseg_core.training.ct_synthesis.CT_SYNTHESIS_KINDS`
#: (``ct_from_label_maps``: a CT and its label map -> a synthetic CT and its liver mask; the
#: source's ``scheme`` names what the label values are, default ``totalsegmentator_v2``)
SYNTHESIS_KINDS = {"synthstrip_heads", *CT_SYNTHESIS_KINDS}
#: synthesis-block values that are the probability that a synthetic sample gets something
SYNTHESIS_FRACTIONS = (
    "chest_fraction",
    "kidney_fraction",
    "brain_contrast",
    "csf_in_mask",
    "thin_skull",
    "scalp_contrast",
)

#: ``on_progress(fraction, message)``: return ``False`` to cancel (the run stays resumable)
ProgressCallback = Callable[[float, str], "bool | None"]


# ------------------------------------------------------------------------------ recipes


def packaged_recipe_names() -> list[str]:
    """Names of the recipes shipped with the package (the shipped models' tasks)."""
    folder = resources.files("pocketseg_core.training") / "recipes"
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def load_recipe(name_or_path: str | Path) -> TrainingConfig:
    """A recipe from a JSON file, or a packaged recipe by name (``skullstrip``, ``liver``)."""
    path = Path(name_or_path)
    if not path.is_file():
        if str(name_or_path) not in packaged_recipe_names():
            raise PocketSegError(
                f"recipe {name_or_path} is neither a file nor a packaged recipe "
                f"({', '.join(packaged_recipe_names())}); give the path of a recipe .json"
            )
        path = Path(str(resources.files("pocketseg_core.training") / "recipes" / f"{name_or_path}.json"))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise PocketSegError(f"cannot read recipe {path}: {error}") from error
    config = TrainingConfig.from_dict(data)
    check_recipe(config, str(path))
    return config


def check_source_list(sources: list[dict[str, Any]], where: str) -> list[str]:
    """Check one list of sources (the recipe's, or a stage's own); returns its case ids."""
    if not sources:
        raise PocketSegError(f"{where} names no sources; add its files under 'sources'")
    ids = [str(source.get("case", "")) for source in sources]
    for source in sources:
        missing = [key for key in ("case", "image") if not source.get(key)]
        if missing or source.get("use", "train") not in ("train", "synthesis"):
            raise PocketSegError(
                f"{where}: source {source} needs 'case', 'image' and 'use' train or synthesis; fix the recipe"
            )
        if source.get("use", "train") == "train" and not source.get("label"):
            raise PocketSegError(f"{where}: training source {source['case']!r} has no 'label'; add it")
    if len(set(ids)) != len(ids):
        raise PocketSegError(f"{where}: case ids must be unique, got {ids}")
    for source in sources:
        if source.get("from_case") and source["from_case"] not in ids:
            raise PocketSegError(
                f"{where}: source {source['case']!r} names an unknown from_case {source['from_case']!r}; "
                f"known: {ids}"
            )
        count = source.get("per_source")
        if count is not None and (
            source.get("use") != "synthesis" or not isinstance(count, int) or count < 0
        ):
            raise PocketSegError(
                f"{where}: source {source['case']!r} has per_source {count!r}; only a synthesis source may "
                "set it, to a whole number >= 0 (how many synthetic images it makes)"
            )
        if source.get("scheme") and source["scheme"] not in LABEL_SCHEMES:
            raise PocketSegError(
                f"{where}: source {source['case']!r} has an unknown label scheme {source['scheme']!r}; "
                f"known: {sorted(LABEL_SCHEMES)}"
            )
    return ids


#: what every member of an ensemble recipe shares (what the bundle and its inference are)
SHARED_BY_MEMBERS = (
    "name", "dataset", "label_map", "network", "modality", "preprocessing", "spacing", "orientation",
    "window_mode", "window_size_zyx", "context_slices", "labels", "task", "runs", "shipped_run",
    "members", "member_recipes", "postprocessing", "title", "description", "version",
)  # fmt: skip


def check_recipe(config: TrainingConfig, where: str = "recipe") -> None:
    """Refuse a recipe that cannot train, before any work (one sentence naming the problem)."""
    if config.member_recipes:
        ids = _check_member_recipes(config, where)
    else:
        ids = check_source_list(config.sources, where)
    for stage in config.stages:
        if "sources" in stage:  # a stage may train on other files (e.g. more real heads last)
            ids += check_source_list(stage["sources"], f"{where}, stage {stage.get('name', '?')!r}")
    for run, held_out in config.runs.items():
        unknown = sorted(set(held_out) - set(ids))
        if unknown:
            raise PocketSegError(
                f"{where}: run {run!r} holds out unknown cases {unknown}; known: {list(dict.fromkeys(ids))}"
            )
    if config.shipped_run and config.shipped_run not in config.runs:
        raise PocketSegError(
            f"{where}: shipped_run {config.shipped_run!r} is not one of the runs {list(config.runs)}"
        )
    if config.synthesis and config.synthesis.get("kind") not in SYNTHESIS_KINDS:
        raise PocketSegError(
            f"{where}: unknown synthesis kind {config.synthesis.get('kind')!r}; known: {sorted(SYNTHESIS_KINDS)}"
        )
    if config.synthesis and config.synthesis.get("kind") in CT_SYNTHESIS_KINDS:
        try:
            check_hu_ranges(config.synthesis.get("hu_ranges"))
        except ValueError as error:
            raise PocketSegError(f"{where}: synthesis {error}; fix the recipe") from None
    for stage in config.stage_configs():  # unknown keys in a stage raise here
        for key in SYNTHESIS_FRACTIONS:
            value = (stage.synthesis or {}).get(key, 0.0)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise PocketSegError(
                    f"{where}: synthesis {key} is {value!r}; it is a probability, a number from 0 to 1"
                )
        check_patch_shares(stage.foreground_fraction, stage.past_ends_fraction, where)
        if not stage.past_ends_mm > 0:
            raise PocketSegError(
                f"{where}: past_ends_mm is {stage.past_ends_mm}; it is a positive distance in mm"
            )
    if (
        isinstance(config.members, bool)
        or not isinstance(config.members, int)
        or not 1 <= config.members <= 16
    ):
        raise PocketSegError(
            f"{where}: members is {config.members!r}; it is how many trainings of the recipe (seeds shifted "
            "by 0, 1, ...) the model averages, a whole number from 1 to 16"
        )
    if any("members" in stage for stage in config.stages):
        raise PocketSegError(f"{where}: members belongs to the recipe, not to a stage; move it up")
    if config.init_from and (
        set(config.init_from) != {"bundle", "weights_sha256"}
        or len(str(config.init_from["weights_sha256"])) != 64
    ):
        raise PocketSegError(
            f"{where}: init_from needs exactly 'bundle' (a bundle folder) and 'weights_sha256' (64 hex "
            f"digits), got {config.init_from}; fix the recipe"
        )
    if any("init_from" in stage for stage in config.stages):
        raise PocketSegError(f"{where}: init_from belongs to the recipe, not to a stage; move it up")


def _check_member_recipes(config: TrainingConfig, where: str) -> list[str]:
    """Check an ensemble recipe's ``member_recipes`` and each member as a recipe; the case ids
    of all members (a run may hold out a case that only one member trains on)."""
    members = config.member_recipes
    if not isinstance(members, list) or not all(isinstance(member, dict) for member in members):
        raise PocketSegError(
            f"{where}: member_recipes must be a list of objects (one per member), got {members!r}"
        )
    if config.members != len(members):
        raise PocketSegError(
            f"{where}: members is {config.members} but member_recipes lists {len(members)}; set members "
            f"to {len(members)}"
        )
    if len(members) < 2:
        raise PocketSegError(
            f"{where}: member_recipes lists {len(members)} member; an ensemble needs 2 or more"
        )
    ids: list[str] = []
    for index, keys in enumerate(members):
        shared = [key for key in keys if key in SHARED_BY_MEMBERS]
        if shared:
            raise PocketSegError(
                f"{where}: member {index} sets {shared}, which every member shares (the bundle has one); "
                "set them in the recipe itself"
            )
        member = config.member(index)  # unknown keys raise here
        check_recipe(member.replace(runs={}, shipped_run=""), f"{where}, member {index}")
        ids += [str(source.get("case", "")) for source in every_source(member)]
    return ids


# --------------------------------------------------------------------------------- data


def load_labelled_case(data_root: Path, source: dict[str, Any]) -> tuple[sitk.Image, sitk.Image]:
    """An image and its 0/1 label (uint8) ON THE IMAGE'S GRID.

    The label is mapped through physical space (nearest neighbour), never array to array: some
    label files are stored with another axis order or direction than their image. Foreground:
    ``label == label_value``, or ``label >= 0.5`` without ``label_value``.
    """
    image = io.read_image(data_root / source["image"])
    label = io.read_image(data_root / source["label"])
    label = sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())
    if "label_value" in source:
        mask = sitk.Cast(label == int(source["label_value"]), sitk.sitkUInt8)
    else:
        mask = sitk.Cast(sitk.Cast(label, sitk.sitkFloat32) >= 0.5, sitk.sitkUInt8)
    mask.CopyInformation(image)
    return image, mask


def load_stripped_brain(data_root: Path, source: dict[str, Any]) -> tuple[sitk.Image, sitk.Image]:
    """A skull-stripped brain (float32) and its 0/1 mask on its grid (no ``label``: brain = non-zero).

    The mask is resampled linearly and cut at 0.5 (some brain masks have fractional voxels).
    """
    image = sitk.Cast(io.read_image(data_root / source["image"]), sitk.sitkFloat32)
    if not source.get("label"):
        mask = sitk.Cast(image > 0, sitk.sitkUInt8)
    else:
        mask = io.read_image(data_root / source["label"])
        mask = sitk.Resample(mask, image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        mask = sitk.Cast(mask >= 0.5, sitk.sitkUInt8)
    mask.CopyInformation(image)
    return image, mask


def every_source(config: TrainingConfig) -> list[dict[str, Any]]:
    """The recipe's sources followed by those its stages name (a stage's list may repeat some);
    of an ensemble recipe with ``member_recipes``, every member's in turn."""
    if config.member_recipes:
        return [source for member in config.member_configs() for source in every_source(member)]
    return config.sources + [source for stage in config.stages for source in stage.get("sources", [])]


def check_sources(config: TrainingConfig, data_root: Path) -> None:
    """Every file the recipe names exists under ``data_root`` (else one clear error listing them)."""
    missing = list(
        dict.fromkeys(  # in recipe order, once each (a stage's sources repeat the recipe's)
            path
            for source in every_source(config)
            for path in (source.get("image"), source.get("label"))
            if path and not (data_root / path).exists()
        )
    )
    members = config.member_configs()
    for init_from in dict.fromkeys(m.init_from["bundle"] for m in members if m.init_from):
        if not (data_root / init_from / "bundle.json").is_file():
            missing.append(f"{init_from} (the init_from bundle)")
    if missing:
        raise PocketSegError(
            f"{len(missing)} file(s) of recipe {config.name!r} are not under the data root {data_root}: "
            f"{', '.join(missing)}; pass --data-root with the folder that holds them"
        )


def is_held_out(source: dict[str, Any], held_out: list[str]) -> bool:
    """Whether a run holding out ``held_out`` must not read ``source``: its own case is held out,
    or it is made from a held-out case (``from_case``: e.g. synthesis from that CT's label map)."""
    return source["case"] in held_out or source.get("from_case") in held_out


def source_files(config: TrainingConfig, held_out: list[str]) -> list[str]:
    """The files a run trains on (relative to the data root), in the order they are read."""
    files: list[str] = []
    for use in ("train", "synthesis"):
        for source in config.sources:
            if source.get("use", "train") == use and not is_held_out(source, held_out):
                files += [source["image"]] + ([source["label"]] if source.get("label") else [])
    return files


def load_initial_weights(
    config: TrainingConfig, data_root: Path
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights and training record of the recipe's ``init_from`` bundle, after checking that
    its weights are the ones the recipe names (sha256) and its network is the recipe's."""
    folder = data_root / config.init_from["bundle"]
    bundle = load_bundle(folder)  # checks weights.pt against the bundle's own sha256
    expected = str(config.init_from["weights_sha256"])
    if bundle.config.weights_sha256 != expected:
        raise PocketSegError(
            f"the init_from bundle {folder} has weights sha256 {bundle.config.weights_sha256[:12]}..., the recipe "
            f"names {expected[:12]}...; give the bundle the recipe was written for"
        )
    if bundle.config.network != config.network or bundle.config.network_args != config.network_arguments():
        raise PocketSegError(
            f"the init_from bundle {folder} is a {bundle.config.network} {bundle.config.network_args}, the recipe "
            f"trains a {config.network} {config.network_arguments()}; give a bundle of the recipe's network"
        )
    record = {
        "init_from": {
            "bundle": config.init_from["bundle"],
            "name": bundle.config.name,
            "version": bundle.config.version,
            "weights_sha256": expected,
        },
        **(bundle.config.training or {}),
    }
    return dict(bundle.state_dict), record


def build_training_volumes(
    config: TrainingConfig, data_root: Path, held_out: list[str]
) -> list[TrainingVolume]:
    """The training volumes of a run on the working grid: the labelled cases not held out, then
    (with ``synthesis``) ``per_source`` synthetic images of every ``use: synthesis`` source (a
    source's own ``per_source`` overrides the synthesis block's).

    With ``balance: "half"`` the real volumes are repeated so that about half of the patches
    come from real images (patches are drawn from a uniformly chosen volume).

    Synthesis sources of ``ct_from_label_maps`` hold a CT (``image``) and its label map
    (``label``, all values: ``scheme`` says what they are); a source made from a labelled case
    names it in ``from_case``, so that the run holding that case out does not see its labels.
    The synthetic CTs are made on the recipe's working grid (``spacing``); ``bright_soft_tissue_hu``
    (e.g. 90) gives the unlabelled tissue that enhances on the real CT a class of its own
    (:func:`~pocketseg_core.training.ct_synthesis.tissue_map`); ``chest_fraction`` (e.g. 0.7) is
    the share of synthetic CTs that get a chest with a heart above the liver, labelled
    background (:func:`~pocketseg_core.training.ct_synthesis.add_chest`); ``kidney_fraction`` the
    share that get a right kidney against the liver's lower tip where the label map has none
    (:func:`~pocketseg_core.training.ct_synthesis.add_kidney`); ``hu_ranges`` (``{phase:
    {tissue: [low, high]}}``) replaces those HU ranges of the synthesis.

    Synthesis sources of ``synthstrip_heads`` hold a skull-stripped brain and its mask
    (:func:`~pocketseg_core.training.synthesis.synthesize_head`): ``face_and_neck`` (1: neck,
    face and cord; 2: and a tongue), ``brain_contrast`` (the share of heads whose brain contrast
    is randomised), ``csf_in_mask`` (the share whose mask takes in the CSF layer up to the
    skull), ``thin_skull`` (the share with a 1-3 mm skull under a 2-8 mm CSF layer) and
    ``scalp_contrast`` (the share whose scalp is drawn from 0.2-2.8 times the brain: dark to very
    bright).
    """
    real = []
    for source in config.sources:
        if source.get("use", "train") != "train" or is_held_out(source, held_out):
            continue
        image, mask = load_labelled_case(data_root, source)
        real.append(
            prepare_volume(
                source["case"], image, mask, tuple(config.spacing), config.orientation, config.preprocessing
            )
        )
    if not config.synthesis:
        return real
    spec = config.synthesis
    kind = spec.get("kind")
    rng = np.random.default_rng(int(spec.get("seed", 0)))
    synthetic = []
    for source in config.sources:
        if source.get("use", "train") != "synthesis" or is_held_out(source, held_out):
            continue
        if kind in CT_SYNTHESIS_KINDS:
            ct = io.read_image(data_root / source["image"]) if source.get("image") else None
            label_map = io.read_image(data_root / source["label"])
            scheme = source.get("scheme", "totalsegmentator_v2")
        else:
            brain, mask = load_stripped_brain(data_root, source)
        for copy in range(int(source.get("per_source", spec.get("per_source", 1)))):
            if kind in CT_SYNTHESIS_KINDS:
                head, label = CT_SYNTHESIS_KINDS[kind](
                    ct,
                    label_map,
                    rng,
                    scheme=scheme,
                    spacing=tuple(config.spacing),
                    bright_soft_tissue_hu=spec.get("bright_soft_tissue_hu"),
                    chest_fraction=float(spec.get("chest_fraction", 0.0)),
                    kidney_fraction=float(spec.get("kidney_fraction", 0.0)),
                    hu_ranges=spec.get("hu_ranges"),
                )
            else:
                head, label = synthesize_head(
                    brain,
                    mask,
                    rng,
                    face_and_neck=int(spec.get("face_and_neck", 0)),
                    brain_contrast=float(spec.get("brain_contrast", 0.0)),
                    csf_in_mask=float(spec.get("csf_in_mask", 0.0)),
                    thin_skull=float(spec.get("thin_skull", 0.0)),
                    scalp_contrast=float(spec.get("scalp_contrast", 0.0)),
                )
            synthetic.append(
                prepare_volume(
                    f"synth_{source['case']}_{copy}",
                    head,
                    label,
                    tuple(config.spacing),
                    config.orientation,
                    config.preprocessing,
                )
            )
    repeat = 1
    if spec.get("balance") == "half":
        repeat = max(1, round(len(synthetic) / max(len(real), 1)))
    return real * repeat + synthetic


# ----------------------------------------------------------------------------- training


class _StageHooks(TrainerHooks):
    """A recipe stage around the :class:`Trainer`: progress and cancel, checkpoint, bundle and log
    after every epoch, and an optional step limit (a shortened run, e.g. to compare trajectories)."""

    def __init__(
        self,
        stage_dir: Path,
        save_model: Callable[[Trainer], None],
        report: Callable[[int, str], None],
        label: str,
        epochs: int,
        steps_per_epoch: int,
        stop_after_steps: int | None,
    ) -> None:
        self.stage_dir, self.save_model, self.report, self.label = stage_dir, save_model, report, label
        self.epochs, self.steps_per_epoch, self.stop_after_steps = epochs, steps_per_epoch, stop_after_steps

    def on_step_end(self, trainer: Trainer, epoch: int, step: int, mean_loss: float) -> None:
        self.report(trainer.step, f"{self.label}, epoch {epoch}/{self.epochs}, loss {mean_loss:.4f}")
        if self.stop_after_steps is not None and trainer.step >= self.stop_after_steps:
            raise _StepLimitReached

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, Any]) -> None:
        atomic_torch_save(trainer.checkpoint(), self.stage_dir / "last.pt")
        write_csv(self.stage_dir / "log.csv", trainer.history, LOG_COLUMNS)
        self.save_model(trainer)
        logger.info(
            "%s epoch %d/%d: loss %.4f, lr %.2e, %.0f s",
            self.label, epoch, self.epochs, metrics["train_loss"], metrics["lr"], metrics["seconds"],
        )  # fmt: skip


class _StepLimitReached(Exception):
    """Raised by a stage hook once ``stop_after_steps`` steps are done."""


def train_recipe(
    config: TrainingConfig,
    data_root: str | Path,
    output_dir: str | Path,
    runs: list[str] | None = None,
    device: str | torch.device = "cpu",
    resume: bool = False,
    on_progress: ProgressCallback | None = None,
    stop_after_steps: int | None = None,
) -> dict[str, Path]:
    """Train the recipe's ``runs`` (default: the shipped run) into ``output_dir``; run -> model bundle.

    Args:
        config: the recipe (:func:`load_recipe`).
        data_root: the folder the recipe's ``sources`` are relative to.
        output_dir: new or empty folder (layout in the module docstring), or the one to resume.
        runs: names from ``config.runs``.
        device: torch device (the shipped models were trained on the CPU).
        resume: continue the runs stored in ``output_dir`` (finished stages are kept; a stage in
            progress continues from its ``last.pt`` exactly, random streams included).
        on_progress: ``(fraction, message)``, called after every step; ``False`` cancels.
        stop_after_steps: stop every stage after this many steps, saving its weights in
            ``<run>/<stage>/stopped.pt`` (for comparing trajectories; the run is not finished).

    Raises:
        PocketSegError: bad recipe, missing files, an output folder holding another run.
        Cancelled: ``on_progress`` returned ``False``.
    """
    data_root, output_dir = Path(data_root), Path(output_dir)
    check_recipe(config, config.name)
    runs = list(runs or [config.shipped_run or next(iter(config.runs), "")])
    unknown = [run for run in runs if run not in config.runs]
    if unknown:
        raise PocketSegError(
            f"recipe {config.name!r} has no run {unknown}; its runs: {', '.join(config.runs)}"
        )
    check_sources(config, data_root)
    member_configs = config.member_configs()
    for member in member_configs:
        if member.init_from:
            load_initial_weights(member, data_root)  # a wrong bundle fails before any work
    _prepare_output(config, output_dir, resume)
    device = torch.device(device)
    total = len(runs) * sum(
        stage.epochs * stage.steps_per_epoch for member in member_configs for stage in member.stage_configs()
    )
    done_before = 0

    def progress(done: int, message: str) -> None:
        if on_progress is not None and on_progress(min(1.0, (done_before + done) / total), message) is False:
            raise Cancelled("training cancelled by the user; the output folder is kept and can be resumed")

    def train_member(member: TrainingConfig, member_dir: Path, run: str) -> tuple[dict, dict] | None:
        """The stages of one training of ``run`` in ``member_dir`` (finished ones kept): its final
        (weights, training record), or None when stopped after ``stop_after_steps``."""
        nonlocal done_before
        stages, names = member.stage_configs(), member.stage_names()
        # resume after the last finished stage: its bundle holds all that the later stages need
        # (the folders of the stages before it may have been deleted to save space)
        finished = [
            index for index, name in enumerate(names)
            if _read_json(member_dir / name / "state.json").get("status") == "done"
        ] if stop_after_steps is None else []  # fmt: skip
        start = finished[-1] + 1 if finished else 0
        if finished:
            bundle = load_bundle(member_dir / names[start - 1] / "bundle")
            state, record = dict(bundle.state_dict), bundle.config.training
            _refuse_held_out_training(member, run, member_dir / names[start - 1], record)
            done_before += sum(stage.epochs * stage.steps_per_epoch for stage in stages[:start])
            logger.info("%s/%s: %s already finished; kept", config.name, run, ", ".join(names[:start]))
        else:  # the kept stage's weights replace init_from's, so they are read only here
            state, record = load_initial_weights(member, data_root) if member.init_from else (None, None)
        for index in range(start, len(names)):
            stage, name = stages[index], names[index]
            state, record = train_stage(
                member, stage, name, run, data_root, member_dir / name, device, state, record, progress,
                stop_after_steps,
            )  # fmt: skip
            if state is None:  # stopped after stop_after_steps
                return None
            done_before += stage.epochs * stage.steps_per_epoch
        return state, record

    models: dict[str, Path] = {}
    for run in runs:
        run_dir = output_dir / run
        atomic_write_text(run_dir / "recipe.json", json.dumps(config.to_dict(), indent=2))
        if config.members == 1:
            trained = [train_member(config, run_dir, run)]
        else:  # an ensemble: member k in <run>/member_<k>/<stage>
            trained = []
            for index, member in enumerate(member_configs):
                trained.append(train_member(member, run_dir / f"member_{index}", run))
                if trained[-1] is None:
                    break
        if trained[-1] is None:
            continue
        state, record = trained[0]
        if config.members > 1:  # one state dict: members.<k>.<parameter>, as ProbabilityEnsemble names them
            state = {
                f"members.{k}.{key}": value
                for k, (weights, _) in enumerate(trained)
                for key, value in weights.items()
            }
            record = {**record, "other_members": [member_record for _, member_record in trained[1:]]}
        models[run] = save_bundle(run_dir / "model", config.bundle_config(config.name, record), state)
        export_onnx_if_whole_grid(config, models[run])
        logger.info("%s/%s: model bundle %s", config.name, run, models[run])
    return models


def _refuse_held_out_training(
    config: TrainingConfig, run: str, stage_dir: Path, record: dict[str, Any]
) -> None:
    """A kept stage (e.g. one copied in from another run) must not have trained on a file the
    run holds out: its record chain's files are checked against the run's held-out images."""
    held_out = [
        source["image"] for source in every_source(config) if is_held_out(source, list(config.runs[run]))
    ]
    leaked = sorted(set(held_out) & trained_files(record))
    if leaked:
        raise PocketSegError(
            f"{stage_dir} was trained on {', '.join(leaked)}, which run {run!r} holds out; delete that "
            "stage folder (it is trained again) or resume into another --output folder"
        )


def trained_files(record: dict[str, Any]) -> set[str]:
    """Every file a model's training record says it trained on: its stage's, the stages' before it
    (``continued_from``) and, for an ensemble, its other members' (``other_members``)."""
    files: set[str] = set()
    pending = [record]
    while pending:
        current = pending.pop()
        files.update(current.get("files", []))
        pending += [r for r in [current.get("continued_from"), *current.get("other_members", [])] if r]
    return files


def export_onnx_if_whole_grid(config: TrainingConfig, bundle: Path) -> None:
    """Give a whole-grid 3D model its ONNX network (what ``pocketseg predict`` runs on the CPU
    without torch), as the shipped bundle of such a recipe has; said in the log when the onnx
    package is missing (the torch path still runs the bundle)."""
    if config.window_mode != "patch3d" or any(int(w) != 0 for w in config.window_size_zyx):
        return
    from pocketseg_core.onnx_export import export_bundle, onnx_export_problem

    problem = onnx_export_problem()
    if problem:
        logger.warning(
            "%s: no ONNX network exported (%s); pocketseg export-onnx %s adds it", bundle, problem, bundle
        )
        return
    export_bundle(bundle)


def train_stage(
    config: TrainingConfig,
    stage: TrainingConfig,
    name: str,
    run: str,
    data_root: Path,
    stage_dir: Path,
    device: torch.device,
    previous_state: dict[str, torch.Tensor] | None,
    previous_record: dict[str, Any] | None,
    progress: Callable[[int, str], None],
    stop_after_steps: int | None,
) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
    """Train one stage; returns (weights, training record), or (None, {}) when stopped early."""
    from pocketseg_core.networks import create_network

    started = time.perf_counter()
    held_out = list(config.runs[run])
    label = f"{config.name}/{run}/{name}"
    torch.manual_seed(config.seed)
    volumes = build_training_volumes(stage, data_root, held_out)
    logger.info("%s: %d training volumes, held out %s", label, len(volumes), held_out or "none")
    network = create_network(stage.network, **stage.network_arguments()).to(device)
    if previous_state is not None:  # warm start: new optimiser, new learning-rate cycle
        network.load_state_dict(previous_state)
    total_steps = stage.epochs * stage.steps_per_epoch
    stage_dir.mkdir(parents=True, exist_ok=True)
    files = source_files(stage, held_out)
    stage_info = {
        "recipe": config.name,
        "run": run,
        "stage": name,
        "held_out": held_out,
        "files": files,
        "synthesis": stage.synthesis,
        "seed": stage.seed,
        "epochs": stage.epochs,
        "steps_per_epoch": stage.steps_per_epoch,
        "batch_size": stage.batch_size,
        "patch_zyx": list(stage.patch_size_zyx),
        "optimizer": stage.optimizer,
        "scheduler": stage.scheduler,
        "loss": stage.loss,
        "augmentation": stage.augmentation,
        "continued_from": previous_record,
    }
    if stage.past_ends_fraction:
        stage_info["past_ends"] = {"fraction": stage.past_ends_fraction, "mm": stage.past_ends_mm}

    def record(trainer: Trainer) -> dict[str, Any]:
        history = [
            {"epoch": h["epoch"], "loss": float(h["train_loss"]), "seconds": round(h["seconds"], 1)}
            for h in trainer.history
        ]
        return {
            **stage_info,
            "epochs_done": trainer.epoch,
            "history": history,
            "seconds": round(time.perf_counter() - started, 1),
            "machine": machine_description(device),
        }

    def save_model(trainer: Trainer) -> None:
        save_bundle(
            stage_dir / "bundle", stage.bundle_config(config.name, record(trainer)), trainer.model_state()
        )

    hooks = _StageHooks(
        stage_dir, save_model, progress, label, stage.epochs, stage.steps_per_epoch, stop_after_steps
    )
    trainer = Trainer.from_config(
        network,
        volumes,
        stage,
        total_steps=total_steps,
        seed=stage.seed,
        device=device,
        hooks=hooks,
        name=label,
    )
    if (stage_dir / "last.pt").is_file():
        trainer.restore(load_checkpoint(stage_dir / "last.pt"))
        logger.info("%s: resuming after epoch %d", label, trainer.epoch)
    try:
        trainer.fit(stage.epochs, stage.steps_per_epoch)
    except _StepLimitReached:
        atomic_torch_save(trainer.model_state(), stage_dir / "stopped.pt")
        logger.info("%s: stopped after %d steps (stopped.pt)", label, trainer.step)
        return None, {}
    final = record(trainer)
    atomic_write_text(
        stage_dir / "state.json",
        json.dumps({"status": "done", "epochs": trainer.epoch, "steps": trainer.step}),
    )
    return trainer.model_state(), final


def _prepare_output(config: TrainingConfig, output_dir: Path, resume: bool) -> None:
    if output_dir.exists() and any(p for p in output_dir.iterdir() if not p.name.startswith(".")):
        if not resume:
            raise PocketSegError(
                f"output folder {output_dir} is not empty; choose a new folder, or pass --resume to continue it"
            )
        given = json.loads(json.dumps(config.to_dict()))
        for stored in output_dir.glob("*/recipe.json"):
            if with_defaults(_read_json(stored)) != given:
                raise PocketSegError(
                    f"cannot resume {stored.parent}: it was trained with another recipe; "
                    f"resume with the same recipe, or choose a new --output folder"
                )
    output_dir.mkdir(parents=True, exist_ok=True)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def read_log(stage_dir: Path) -> list[dict[str, str]]:
    """A stage's ``log.csv`` rows."""
    with open(stage_dir / "log.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
