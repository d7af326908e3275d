"""Recipes (training/recipes.py) and the one training loop (training/trainer.py): stages, exact
resume, repeatability, the packaged recipes against the shipped bundles, the command line."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from training_phantoms import phantom_pair

from pocketseg_core.bundles import SHIPPED_CATALOG, load_bundle
from pocketseg_core.cli import main as cli_main
from pocketseg_core.errors import Cancelled, PocketSegError
from pocketseg_core.training.presets import LearningRateSchedule, TrainingConfig
from pocketseg_core.training.recipes import (
    build_training_volumes,
    check_recipe,
    load_recipe,
    train_recipe,
    trained_files,
)
from pocketseg_core.training.recipes import source_files as recipe_source_files


def _brain_phantom() -> tuple[sitk.Image, sitk.Image]:
    """A small skull-stripped 'brain' (ellipsoid, intensity gradient, zero outside), 2 mm."""
    z, y, x = np.mgrid[:24, :28, :26].astype(np.float32)
    inside = ((z - 12) / 8) ** 2 + ((y - 13) / 10) ** 2 + ((x - 13) / 9) ** 2 <= 1.0
    image = sitk.GetImageFromArray(np.where(inside, 300.0 + 5.0 * x, 0.0).astype(np.float32))
    image.SetSpacing((2.0, 2.0, 2.0))
    return image, image  # the brain is the non-zero part: no mask file needed


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe_data")
    for index in range(3):
        image, label = phantom_pair(index)
        sitk.WriteImage(image, str(root / f"case{index}.nii.gz"))
        sitk.WriteImage(label * 3, str(root / f"case{index}_labels.nii.gz"))  # label value 3
    sitk.WriteImage(_brain_phantom()[0], str(root / "stripped.nii.gz"))
    return root


def _phantom_source(index: int) -> dict:
    """The labelled phantom ``case<index>`` of the data root as a recipe source (label value 3)."""
    return {
        "case": f"c{index}",
        "image": f"case{index}.nii.gz",
        "label": f"case{index}_labels.nii.gz",
        "label_value": 3,
        "use": "train",
    }


def _recipe(**changes) -> TrainingConfig:
    """A tiny two-stage recipe: 3 labelled phantoms + 1 synthetic head, a new lr and seed in stage 2."""
    recipe = {
        "name": "tiny-recipe",
        "task": "skullstrip",
        "version": "9.9.9",
        "title": "Tiny",
        "description": "test recipe",
        "network": "pocket_unet3d",
        "network_args": {"init_filters": 4, "depth": 2, "pool_size": 2, "num_classes": 2},
        "spacing": [4.0, 4.0, 4.0],
        "window_mode": "patch3d",
        "window_size_zyx": [16, 16, 16],
        "patch_size_zyx": [16, 16, 16],
        "batch_size": 2,
        "loss": {"name": "dice_l2_ce"},
        "optimizer": {"name": "adam", "lr": 0.005},
        "scheduler": {"name": "warmup_cosine", "warmup_fraction": 0.25},
        "augmentation": [{"name": "flip", "p": 0.5}, {"name": "noise", "p": 0.5, "std": [0.0, 0.1]}],
        "epochs": 2,
        "steps_per_epoch": 2,
        "seed": 4,
        "reseed_every_epoch": False,
        "amp": False,
        "labels": [],
        "sources": [
            *(_phantom_source(i) for i in range(3)),
            {"case": "brain", "image": "stripped.nii.gz", "use": "synthesis"},
        ],
        "synthesis": {
            "kind": "synthstrip_heads",
            "seed": 0,
            "per_source": 1,
            "face_and_neck": 0,
            "balance": "half",
        },
        "runs": {"all": [], "loo_c0": ["c0"]},
        "shipped_run": "all",
        "postprocessing": {"fill_holes": "3d"},
        "stages": [{"name": "first"}, {"name": "second", "optimizer": {"lr": 0.002}, "seed": 7, "epochs": 1}],
    }
    recipe.update(changes)
    return TrainingConfig.from_dict(recipe)


class _CancelAtStep:
    def __init__(self, step: int | None) -> None:
        self.step, self.calls = step, 0

    def __call__(self, fraction: float, message: str) -> bool:
        self.calls += 1
        return self.step is None or self.calls < self.step


def test_stages_repeat_bit_for_bit_and_a_cancelled_run_resumes_exactly(data_root, tmp_path):
    recipe = _recipe()
    first = train_recipe(recipe, data_root, tmp_path / "a")["all"]
    again = train_recipe(recipe, data_root, tmp_path / "b")["all"]
    state, repeated = load_bundle(first).state_dict, load_bundle(again).state_dict
    assert all(torch.equal(state[k], repeated[k]) for k in state)

    # cancelled in the middle of stage 1's second epoch, then resumed from last.pt
    with pytest.raises(Cancelled, match="resumed"):
        train_recipe(recipe, data_root, tmp_path / "c", on_progress=_CancelAtStep(3))
    assert (tmp_path / "c" / "all" / "first" / "last.pt").is_file()
    with pytest.raises(PocketSegError, match="not empty"):
        train_recipe(recipe, data_root, tmp_path / "c")
    resumed = load_bundle(train_recipe(recipe, data_root, tmp_path / "c", resume=True)["all"]).state_dict
    assert all(torch.equal(state[k], resumed[k]) for k in state)

    # another seed gives other weights (the comparison above can fail)
    other = load_bundle(train_recipe(recipe.replace(seed=5), data_root, tmp_path / "d")["all"]).state_dict
    assert not all(torch.equal(state[k], other[k]) for k in state)


def test_model_bundle_carries_the_recipe_and_its_stages(data_root, tmp_path):
    bundle = load_bundle(train_recipe(_recipe(), data_root, tmp_path / "run", runs=["loo_c0"])["loo_c0"])
    config = bundle.config
    assert (config.name, config.version, config.title, config.postprocessing) == (
        "tiny-recipe", "9.9.9", "Tiny", {"fill_holes": "3d"},
    )  # fmt: skip
    assert config.labels[0].name == "Brain"  # labels [] -> the task's standard label
    second = config.training
    assert (second["stage"], second["seed"], second["optimizer"]["lr"], second["epochs_done"]) == (
        "second", 7, 0.002, 1,
    )  # fmt: skip
    first = second["continued_from"]
    assert (first["stage"], first["seed"], len(first["history"])) == ("first", 4, 2)
    assert first["held_out"] == ["c0"] and "case0.nii.gz" not in first["files"]
    assert first["files"][-1] == "stripped.nii.gz"
    # what bit-for-bit reproduction depends on: torch, threads, the CPU's instruction set
    machine = second["machine"]
    assert machine["torch"] == torch.__version__ and machine["torch_threads"] == torch.get_num_threads()
    assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and machine["cpu_model"]
    log = (tmp_path / "run" / "loo_c0" / "first" / "log.csv").read_text(encoding="utf-8").splitlines()
    assert log[0] == "epoch,train_loss,lr,seconds" and len(log) == 3


def test_init_from_starts_the_first_stage_from_a_bundle_checked_by_sha256(data_root, tmp_path):
    base = train_recipe(_recipe(), data_root, tmp_path / "base", runs=["loo_c0"])["loo_c0"]
    base_bundle = load_bundle(base)
    sha = base_bundle.config.weights_sha256
    # one stage with learning rate 0: Adam moves nothing, so the model IS the init_from bundle's
    still = {"name": "still", "optimizer": {"lr": 0.0}, "epochs": 1}
    tuned = _recipe(init_from={"bundle": str(base), "weights_sha256": sha}, stages=[still])
    bundle = load_bundle(train_recipe(tuned, data_root, tmp_path / "tuned")["all"])
    assert all(torch.equal(bundle.state_dict[k], base_bundle.state_dict[k]) for k in bundle.state_dict)
    scratch = load_bundle(train_recipe(_recipe(stages=[still]), data_root, tmp_path / "scratch")["all"])
    assert not all(torch.equal(scratch.state_dict[k], base_bundle.state_dict[k]) for k in scratch.state_dict)
    # the model records where it started: the bundle, its sha256 and the bundle's own stages
    started = bundle.config.training["continued_from"]
    assert started["init_from"] == {
        "bundle": str(base), "name": "tiny-recipe", "version": "9.9.9", "weights_sha256": sha,
    }  # fmt: skip
    assert (started["stage"], started["continued_from"]["stage"], started["held_out"]) == (
        "second", "first", ["c0"],
    )  # fmt: skip
    # a relative bundle folder is found under the data root
    root = shutil.copytree(data_root, tmp_path / "root")
    shutil.copytree(base, root / "bundles" / "base")
    relative = _recipe(init_from={"bundle": "bundles/base", "weights_sha256": sha}, stages=[still])
    moved = load_bundle(train_recipe(relative, root, tmp_path / "relative")["all"])
    assert all(torch.equal(moved.state_dict[k], base_bundle.state_dict[k]) for k in moved.state_dict)


def test_init_from_refuses_other_weights_a_missing_bundle_and_bad_keys(data_root, tmp_path):
    base = train_recipe(_recipe(), data_root, tmp_path / "base")["all"]
    wrong = _recipe(init_from={"bundle": str(base), "weights_sha256": "0" * 64})
    with pytest.raises(PocketSegError, match="the recipe names 000000000000"):
        train_recipe(wrong, data_root, tmp_path / "wrong")
    assert not (tmp_path / "wrong").exists()  # refused before any work
    missing = _recipe(init_from={"bundle": "no_such_bundle", "weights_sha256": "0" * 64})
    with pytest.raises(
        PocketSegError, match=r"not under the data root .*no_such_bundle \(the init_from bundle\)"
    ):
        train_recipe(missing, data_root, tmp_path / "missing")
    with pytest.raises(PocketSegError, match="init_from needs exactly 'bundle'"):
        train_recipe(_recipe(init_from={"bundle": str(base)}), data_root, tmp_path / "keys")
    other_network = _recipe(
        init_from={"bundle": str(base), "weights_sha256": load_bundle(base).config.weights_sha256},
        network_args={"init_filters": 2, "depth": 2, "pool_size": 2, "num_classes": 2},
    )
    with pytest.raises(PocketSegError, match="give a bundle of the recipe's network"):
        train_recipe(other_network, data_root, tmp_path / "other")


def test_a_stage_with_its_own_sources_trains_on_them_and_equals_a_fine_tune_from_the_stage_before(
    data_root, tmp_path
):
    """A stage may name its own sources (more real cases last); its files and held-out names are
    checked up front like the recipe's, and the run is the same, bit for bit, as training the
    stages before, then a recipe with those sources starting from that model (``init_from``)."""
    extra = {"case": "c3", "image": "case0.nii.gz", "label": "case0_labels.nii.gz", "label_value": 3}
    base = _recipe()
    more = [*base.sources, {**extra, "use": "train"}]
    recipe = _recipe(
        runs={"all": [], "loo_c3": ["c3"]},
        stages=[base.stages[0], {**base.stages[1], "sources": more}],
    )
    check_recipe(recipe)
    first, second = (build_training_volumes(recipe.stage(i), data_root, held_out=[]) for i in (0, 1))
    assert "c3" not in {v.case_id for v in first} and "c3" in {v.case_id for v in second}
    assert "c3" not in {v.case_id for v in build_training_volumes(recipe.stage(1), data_root, ["c3"])}

    # the same as: the first stage alone, then its model fine-tuned on the stage's sources
    whole = load_bundle(train_recipe(recipe, data_root, tmp_path / "whole", runs=["all"])["all"])
    stage_one = train_recipe(_recipe(stages=[base.stages[0]]), data_root, tmp_path / "one")["all"]
    tuned = _recipe(
        sources=more,
        stages=[base.stages[1]],
        init_from={"bundle": str(stage_one), "weights_sha256": load_bundle(stage_one).config.weights_sha256},
    )
    fine_tuned = load_bundle(train_recipe(tuned, data_root, tmp_path / "tuned")["all"])
    assert all(torch.equal(whole.state_dict[k], fine_tuned.state_dict[k]) for k in whole.state_dict)

    # checked before any work: a stage's bad source, an unknown held-out case, a missing file
    no_label = [*base.sources, {"case": "c3", "image": "case0.nii.gz", "use": "train"}]
    with pytest.raises(PocketSegError, match="stage 'second': training source 'c3' has no 'label'"):
        check_recipe(recipe.replace(stages=[base.stages[0], {"name": "second", "sources": no_label}]))
    with pytest.raises(PocketSegError, match=r"run 'loo_c9' holds out unknown cases \['c9'\]"):
        check_recipe(recipe.replace(runs={"loo_c9": ["c9"]}))
    gone = [*base.sources, {**extra, "image": "no_such_case.nii.gz", "use": "train"}]
    with pytest.raises(PocketSegError, match="not under the data root .*: no_such_case.nii.gz;"):
        train_recipe(
            recipe.replace(stages=[base.stages[0], {"name": "second", "sources": gone}]),
            data_root,
            tmp_path / "gone",
        )
    assert not (tmp_path / "gone").exists()


def test_training_volumes_hold_out_cases_and_balance_real_and_synthetic(data_root):
    recipe = _recipe(synthesis={"kind": "synthstrip_heads", "seed": 0, "per_source": 4, "balance": "half"})
    volumes = build_training_volumes(recipe, data_root, held_out=["c1"])
    names = [volume.case_id for volume in volumes]
    # 2 real cases, 4 synthetic: the real ones repeated round(4 / 2) = 2 times
    assert names == [
        "c0",
        "c2",
        "c0",
        "c2",
        "synth_brain_0",
        "synth_brain_1",
        "synth_brain_2",
        "synth_brain_3",
    ]
    assert all(set(np.unique(v.label)) <= {0, 1} and v.label.any() for v in volumes)  # label 3 -> 1


def test_csf_in_mask_reaches_the_synthetic_heads_of_a_stage_and_is_checked(data_root):
    """A stage's ``csf_in_mask`` grows the synthetic heads' labels; outside [0, 1]
    the recipe is refused, in a stage as at the top."""
    recipe = _recipe(synthesis={"kind": "synthstrip_heads", "seed": 0, "per_source": 2})
    plain = build_training_volumes(recipe.stage(1), data_root, held_out=["c0", "c1", "c2"])
    grown_recipe = recipe.replace(
        stages=[{"name": "first"}, {"name": "second", "synthesis": {"csf_in_mask": 1.0}}]
    )
    grown = build_training_volumes(grown_recipe.stage(1), data_root, held_out=["c0", "c1", "c2"])
    assert [v.case_id for v in grown] == [v.case_id for v in plain] == ["synth_brain_0", "synth_brain_1"]
    # the first head's image is the same (its draw comes last); the heads share one generator,
    # so the next ones are other heads; every label takes in its CSF layer
    assert np.array_equal(plain[0].image, grown[0].image)
    assert (grown[0].label >= plain[0].label).all()
    for before, after in zip(plain, grown, strict=True):
        assert after.label.sum() > before.label.sum()
    for value in (1.5, -0.1, "all", True):
        bad = recipe.replace(
            stages=[{"name": "first"}, {"name": "second", "synthesis": {"csf_in_mask": value}}]
        )
        with pytest.raises(PocketSegError, match="synthesis csf_in_mask is .*a number from 0 to 1"):
            check_recipe(bad)
    with pytest.raises(PocketSegError, match="synthesis brain_contrast is .*a number from 0 to 1"):
        check_recipe(recipe.replace(synthesis={**recipe.synthesis, "brain_contrast": 2}))


def test_warmup_cosine_follows_its_formula():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=2e-3)
    schedule = LearningRateSchedule(optimizer, {"name": "warmup_cosine", "warmup_fraction": 0.05}, 300)
    seen = []
    for _ in range(300):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.after_step()
        schedule.after_epoch(None)  # a per-step schedule ignores epochs
    expected = [2e-3 * min(1.0, (s + 1) / 15) * 0.5 * (1 + math.cos(math.pi * s / 300)) for s in range(300)]
    np.testing.assert_allclose(seen, expected, rtol=1e-12)
    assert seen[14] == pytest.approx(2e-3 * 0.5 * (1 + math.cos(math.pi * 14 / 300)))


@pytest.mark.parametrize("name", ["skullstrip", "skullstrip-ensemble", "liver", "lvnet-liver"])
def test_packaged_recipes_describe_the_shipped_bundles(name):
    recipe = load_recipe(name)
    catalog = json.loads(SHIPPED_CATALOG.read_text(encoding="utf-8"))
    (entry,) = [e for e in catalog["bundles"] if e["name"] == recipe.name]
    assert entry["path"] == name  # the bundle folder is named after its recipe
    shipped = load_bundle(SHIPPED_CATALOG.parent / entry["path"]).config
    made = recipe.bundle_config(recipe.name, {})
    for key in (
        "name", "network", "network_args", "modality", "spacing", "window_mode", "window_size_zyx",
        "context_slices", "preprocessing", "postprocessing", "orientation", "title", "version", "description", "task",
        "members", "member_network_args",
    ):  # fmt: skip
        assert getattr(made, key) == getattr(shipped, key), key
    assert [label.to_dict() for label in made.labels] == [label.to_dict() for label in shipped.labels]
    # each member's record chain (an ensemble's other members: "other_members") is its recipe's stages
    member_records = [shipped.training, *shipped.training.get("other_members", [])]
    assert len(member_records) == recipe.members
    for index, last_record in enumerate(member_records):
        _check_stage_records(recipe, recipe.member(index) if recipe.members > 1 else recipe, last_record)


def _check_stage_records(recipe: TrainingConfig, member: TrainingConfig, last_record: dict) -> None:
    """The stages of ``member`` are the ones recorded in its last stage's record chain (oldest first)."""
    records, record = [], last_record
    while record:
        records.insert(0, record)
        record = record.get("continued_from")
    own = records[len(records) - max(1, len(member.stages)) :]
    before = records[: len(records) - len(own)]
    if member.init_from:  # fine-tuned: the records before the recipe's own stages are the init bundle's
        assert before and before[-1]["init_from"]["weights_sha256"] == member.init_from["weights_sha256"]
    else:
        assert before == []
    assert len(own) == max(1, len(member.stages))
    for index, record in enumerate(own):
        stage = member.stage(index)
        assert record["seed"] == stage.seed
        assert (record["epochs"], record["steps_per_epoch"]) == (stage.epochs, stage.steps_per_epoch)
        assert record["optimizer"]["lr"] == stage.optimizer["lr"]
        assert record["batch_size"] == stage.batch_size and record["patch_zyx"] == list(stage.patch_size_zyx)
        assert record["augmentation"] == stage.augmentation
        # the recipe trainer records the stage's synthesis; the first shipped bundles (the old
        # script's) recorded only the face-and-neck count
        recorded = record["synthesis"] if "synthesis" in record else {}
        face_and_neck = recorded.get("face_and_neck", record.get("synthetic_face_neck_cord", 0))
        assert int(face_and_neck) == int(stage.synthesis.get("face_and_neck", 0))
        assert record["held_out"] == recipe.runs[recipe.shipped_run]


def test_cli_recipe_errors_are_one_clear_sentence(data_root, tmp_path, capsys):
    assert cli_main(["train", "--recipe", "liver", "--output", str(tmp_path / "x")]) == 1
    assert "--recipe needs --data-root" in capsys.readouterr().err
    code = cli_main(
        ["train", "--recipe", "liver", "--data-root", str(data_root), "--output", str(tmp_path / "x")]
    )
    error = capsys.readouterr().err
    assert (
        code == 1 and "are not under the data root" in error and "liver/ts_abdomen_ct_small.nii.gz" in error
    )
    assert cli_main(["train", "--recipe", "nonesuch", "--data-root", str(data_root), "--output", "x"]) == 1
    assert "neither a file nor a packaged recipe" in capsys.readouterr().err
    assert cli_main(["train", "--output", str(tmp_path / "y")]) == 1
    assert "needs --dataset and --preset, or --recipe" in capsys.readouterr().err


def test_cli_trains_a_recipe_file(data_root, tmp_path, capsys):
    recipe_file = tmp_path / "tiny.json"
    recipe_file.write_text(json.dumps(_recipe().to_dict()), encoding="utf-8")
    code = cli_main([
        "train", "--recipe", str(recipe_file), "--data-root", str(data_root), "--output", str(tmp_path / "out"),
        "--device", "cpu", "--epochs", "1",
    ])  # fmt: skip
    assert code == 0
    bundle = tmp_path / "out" / "all" / "model"
    assert f"all: model bundle {bundle}" in capsys.readouterr().out
    record = load_bundle(bundle).config.training
    assert record["epochs"] == 1 and record["continued_from"]["epochs"] == 1  # --epochs: every stage


def test_a_run_stored_before_the_recipe_keys_existed_still_resumes():
    from pocketseg_core.training.crossval import _compare_configs

    given = json.loads(json.dumps(TrainingConfig().to_dict()))
    new_keys = ("sources", "synthesis", "runs", "shipped_run", "stages", "postprocessing", "title",
                "description", "version", "reseed_every_epoch")  # fmt: skip
    stored = {key: value for key, value in given.items() if key not in new_keys}
    assert _compare_configs(stored, given) == []
    assert _compare_configs({**stored, "epochs": 3}, given) == ["epochs"]


def test_a_recipe_output_stored_before_a_recipe_key_existed_takes_more_runs(data_root, tmp_path):
    """A run folder written before ``past_ends_fraction`` and ``members`` existed holds a
    recipe.json without them: their defaults, so another run of the same recipe goes beside it."""
    recipe = _recipe(stages=[])
    train_recipe(recipe, data_root, tmp_path, runs=["loo_c0"])
    stored_file = tmp_path / "loo_c0" / "recipe.json"
    stored = json.loads(stored_file.read_text(encoding="utf-8"))
    for key in ("past_ends_fraction", "past_ends_mm", "members"):
        del stored[key]
    stored_file.write_text(json.dumps(stored), encoding="utf-8")
    assert "all" in train_recipe(recipe, data_root, tmp_path, runs=["all"], resume=True)
    with pytest.raises(PocketSegError, match="trained with another recipe"):
        train_recipe(recipe.replace(past_ends_fraction=0.2), data_root, tmp_path, runs=["all"], resume=True)


def _ct_sources(root) -> list[dict]:
    """Two phantom 'CTs' in HU (body of soft tissue in air) with TotalSegmentator-style label maps:
    liver = 5 (an ellipsoid), spleen = 1 (a small block); the label map of case 1 is flipped in
    storage (as the DICOM labels are), so only physical space lines it up."""
    sources = []
    for index in range(2):
        image, liver = phantom_pair(index, shape_zyx=(16, 32, 32), spacing=(4.0, 4.0, 4.0), radius=8.0)
        liver_array = sitk.GetArrayFromImage(liver)
        labels = np.where(liver_array > 0, 5, 0).astype(np.uint8)
        labels[4:8, 2:6, 2:6] = 1  # spleen
        hu = np.full(labels.shape, 40.0, np.float32)
        hu[:, :, :1] = -1000.0  # air at one side
        ct = sitk.GetImageFromArray(hu)
        ct.CopyInformation(image)
        label_map = sitk.GetImageFromArray(labels)
        label_map.CopyInformation(image)
        if index == 1:
            label_map = sitk.Flip(label_map, [False, True, False], flipAboutOrigin=False)
        sitk.WriteImage(ct, str(root / f"ct{index}.nii.gz"))
        sitk.WriteImage(label_map, str(root / f"ct{index}_labels.nii.gz"))
        sources.append({"case": f"ct{index}", "image": f"ct{index}.nii.gz", "label": f"ct{index}_labels.nii.gz",
                        "label_value": 5, "use": "train"})  # fmt: skip
        sources.append({"case": f"synth_ct{index}", "from_case": f"ct{index}", "image": f"ct{index}.nii.gz",
                        "label": f"ct{index}_labels.nii.gz", "scheme": "totalsegmentator_v2",
                        "use": "synthesis"})  # fmt: skip
    return sources


def _ct_recipe(root, **changes) -> TrainingConfig:
    return _recipe(
        task="liver",
        modality="CT",
        preprocessing={"kind": "ct_window", "window": [-200, 300], "normalize": "unit"},
        sources=_ct_sources(root),
        synthesis={"kind": "ct_from_label_maps", "seed": 3, "per_source": 2, "balance": "half"},
        runs={"all": [], "loo_ct0": ["ct0"]},
        **changes,
    )


def test_ct_synthesis_from_label_maps_in_a_recipe(tmp_path):
    recipe = _ct_recipe(tmp_path)
    volumes = build_training_volumes(recipe, tmp_path, held_out=["ct0"])
    # the held-out CT's label map makes no synthetic CT: only ct1 and its 2 synthetic ones
    # (the real one repeated round(2 / 1) = 2 times)
    assert [v.case_id for v in volumes] == ["ct1", "ct1", "synth_synth_ct1_0", "synth_synth_ct1_1"]
    real, synthetic = volumes[0], volumes[2:]
    for volume in synthetic:
        assert volume.image.shape == volume.label.shape and set(np.unique(volume.label)) == {0, 1}
        # liver 45..140 HU (plain or portal) through the window [-200, 300] -> 0.49..0.68, noise aside
        liver_mean = float(volume.image[volume.label == 1].mean())
        assert 0.45 < liver_mean < 0.72, liver_mean
        # aligned with the real liver after at most a 10 % scaling, 15 deg turn and 10 mm shift
        overlap = np.logical_and(volume.label, real.label).sum() / real.label.sum()
        assert 0.3 < overlap <= 1.0 and 0.5 < volume.label.sum() / real.label.sum() < 1.6
    assert not np.array_equal(synthetic[0].image, synthetic[1].image)
    again = build_training_volumes(recipe, tmp_path, held_out=["ct0"])
    assert all(np.array_equal(a.image, b.image) for a, b in zip(volumes, again, strict=True))
    files = recipe_source_files(recipe, ["ct0"])
    assert files == ["ct1.nii.gz", "ct1_labels.nii.gz", "ct1.nii.gz", "ct1_labels.nii.gz"]
    assert len(build_training_volumes(recipe, tmp_path, held_out=[])) == 2 * 2 + 4
    # bright_soft_tissue_hu reaches the synthesis: the phantom's 40 HU body becomes soft_bright
    # (drawn from its own range), the real volumes stay as they were
    spec = {**recipe.synthesis, "bright_soft_tissue_hu": 30}
    bright = build_training_volumes(recipe.replace(synthesis=spec), tmp_path, held_out=["ct0"])
    assert np.array_equal(bright[0].image, volumes[0].image)
    assert not np.array_equal(bright[2].image, volumes[2].image)
    # chest_fraction reaches the synthesis too (the phantoms' livers reach their top, so no chest
    # is painted, but the draw for it changes the sample); a source's own per_source overrides
    # the block's
    chest = recipe.replace(synthesis={**recipe.synthesis, "chest_fraction": 1.0})
    sources = [dict(s, per_source=3) if s["case"] == "synth_ct1" else s for s in chest.sources]
    with_chest = build_training_volumes(chest.replace(sources=sources), tmp_path, held_out=["ct0"])
    assert [v.case_id for v in with_chest][-3:] == [f"synth_synth_ct1_{i}" for i in range(3)]
    assert with_chest[-3].image.shape == volumes[2].image.shape
    assert not np.array_equal(with_chest[-3].image, volumes[2].image)
    assert np.array_equal(bright[2].label, volumes[2].label)  # the same deformation: same rng draws
    # kidney_fraction reaches the synthesis (its draw changes the sample's deformation)
    kidney = build_training_volumes(
        recipe.replace(synthesis={**recipe.synthesis, "kidney_fraction": 1.0}), tmp_path, held_out=["ct0"]
    )
    assert np.array_equal(kidney[0].image, volumes[0].image)
    assert not np.array_equal(kidney[2].image, volumes[2].image)


def test_ct_synthesis_recipe_errors_name_the_source(tmp_path):
    recipe = _ct_recipe(tmp_path)
    bad_case = [dict(s, from_case="nobody") if s["case"] == "synth_ct0" else s for s in recipe.sources]
    with pytest.raises(PocketSegError, match="unknown from_case 'nobody'"):
        check_recipe(recipe.replace(sources=bad_case))
    for key, value in (("chest_fraction", "half"), ("kidney_fraction", 1.5), ("kidney_fraction", True)):
        with pytest.raises(PocketSegError, match=f"synthesis {key} is .*a number from 0 to 1"):
            check_recipe(recipe.replace(synthesis={**recipe.synthesis, key: value}))
    check_recipe(recipe.replace(synthesis={**recipe.synthesis, "chest_fraction": 1, "kidney_fraction": 0.5}))
    with pytest.raises(PocketSegError, match="synthesis hu_ranges: unknown tissue 'kidneys'.*fix the recipe"):
        check_recipe(
            recipe.replace(synthesis={**recipe.synthesis, "hu_ranges": {"portal": {"kidneys": [1, 2]}}})
        )
    with pytest.raises(PocketSegError, match="synthesis hu_ranges is 'bright'.*fix the recipe"):
        check_recipe(recipe.replace(synthesis={**recipe.synthesis, "hu_ranges": "bright"}))
    check_recipe(
        recipe.replace(synthesis={**recipe.synthesis, "hu_ranges": {"portal": {"kidney": [140, 280]}}})
    )
    bad_scheme = [dict(s, scheme="mri") if s["case"] == "synth_ct0" else s for s in recipe.sources]
    with pytest.raises(PocketSegError, match="unknown label scheme 'mri'"):
        check_recipe(recipe.replace(sources=bad_scheme))
    bad_count = [dict(s, per_source=2) if s["case"] == "ct0" else s for s in recipe.sources]
    with pytest.raises(PocketSegError, match="'ct0' has per_source 2; only a synthesis source"):
        check_recipe(recipe.replace(sources=bad_count))
    negative = [dict(s, per_source=-1) if s["case"] == "synth_ct0" else s for s in recipe.sources]
    with pytest.raises(PocketSegError, match="whole number >= 0"):
        check_recipe(recipe.replace(sources=negative))


def test_members_train_the_recipe_with_shifted_seeds_and_average_their_softmax(data_root, tmp_path):
    """``members: 2``: member 0 is the recipe's own training bit for bit, member 1 the recipe
    with every seed (training, synthesis, stages) one higher; the bundle's network returns
    the log of the mean of their softmax, so inference sees their average."""
    from pocketseg_core.networks.ensemble import ProbabilityEnsemble

    recipe = _recipe()
    single = load_bundle(train_recipe(recipe, data_root, tmp_path / "one")["all"]).state_dict
    shifted = recipe.member(1)
    assert (shifted.seed, shifted.synthesis["seed"], shifted.stages[1]["seed"]) == (5, 1, 8)
    assert shifted.members == 1 and recipe.member(0).to_dict() == recipe.replace(members=1).to_dict()
    second = load_bundle(train_recipe(shifted, data_root, tmp_path / "two")["all"]).state_dict

    bundle = load_bundle(train_recipe(recipe.replace(members=2), data_root, tmp_path / "ens")["all"])
    assert bundle.config.members == 2 and bundle.config.to_dict()["members"] == 2
    assert (tmp_path / "ens" / "all" / "member_1" / "second" / "state.json").is_file()
    for index, member in enumerate((single, second)):
        for key, value in member.items():
            assert torch.equal(bundle.state_dict[f"members.{index}.{key}"], value), key
    assert not all(torch.equal(single[k], second[k]) for k in single)  # the members differ
    assert bundle.config.training["seed"] == 7  # member 0's last stage
    assert [r["seed"] for r in bundle.config.training["other_members"]] == [8]

    network = bundle.build_network()
    assert isinstance(network, ProbabilityEnsemble) and network.spatial_divisor == (4, 4, 4)
    image = torch.randn(1, 1, 16, 16, 16)
    alone = load_bundle(tmp_path / "one" / "all" / "model").build_network()
    with torch.no_grad():
        mean = torch.stack([torch.softmax(m(image), 1) for m in network.members]).mean(0)
        assert torch.allclose(torch.softmax(network(image), 1), mean, atol=1e-6)
        assert torch.equal(network.members[0](image), alone(image))
    # one network: the bundle's JSON has no members key, as bundles had before
    assert "members" not in load_bundle(tmp_path / "one" / "all" / "model").config.to_dict()


@pytest.mark.parametrize("value", [0, 17, 1.5, True, "2"])
def test_members_outside_one_to_sixteen_are_refused(value):
    with pytest.raises(PocketSegError, match="members is .*a whole number from 1 to 16"):
        check_recipe(_recipe(members=value))


def test_members_of_a_stage_or_a_cross_validation_are_refused(tmp_path):
    from pocketseg_core.training.crossval import run_cross_validation

    with pytest.raises(PocketSegError, match="members belongs to the recipe"):
        check_recipe(_recipe(stages=[{"name": "first", "members": 2}]))
    with pytest.raises(PocketSegError, match="ensembles of seeds are trained by recipes"):
        run_cross_validation(TrainingConfig(members=3), tmp_path / "cv")


def _wider_member(data_root) -> dict:
    """A member recipe: a wider network, and a third stage on two of the three labelled cases."""
    return {
        "network_args": {"init_filters": 6, "depth": 2, "pool_size": 2, "num_classes": 2},
        "stages": [
            {"name": "first"},
            {"name": "second", "optimizer": {"lr": 0.002}, "seed": 7, "epochs": 1},
            {
                "name": "third",
                "seed": 9,
                "epochs": 1,
                "sources": [_phantom_source(i) for i in (1, 2)],
            },
        ],
    }


def test_member_recipes_average_differently_configured_trainings_each_bit_for_bit(data_root, tmp_path):
    """``member_recipes``: member k is the recipe with its keys applied (another width, another stage
    list), seeds as given; the bundle holds each member's network arguments and the networks equal
    those of the members' recipes trained alone."""
    recipe = _recipe(members=2, member_recipes=[{}, _wider_member(data_root)])
    check_recipe(recipe)
    assert recipe.member(0).to_dict() == _recipe().to_dict()
    wide = recipe.member(1)
    assert wide.network_args["init_filters"] == 6 and wide.seed == 4 and len(wide.stages) == 3
    narrow = load_bundle(train_recipe(_recipe(), data_root, tmp_path / "narrow")["all"]).state_dict
    alone = load_bundle(train_recipe(wide, data_root, tmp_path / "wide")["all"]).state_dict

    bundle = load_bundle(train_recipe(recipe, data_root, tmp_path / "ens")["all"])
    config = bundle.config
    assert config.members == 2 and [a["init_filters"] for a in config.member_network_args] == [4, 6]
    assert config.network_args == config.member_network_args[0]
    assert (tmp_path / "ens" / "all" / "member_1" / "third" / "state.json").is_file()
    assert not (tmp_path / "ens" / "all" / "member_0" / "third").exists()
    for index, member in enumerate((narrow, alone)):
        for key, value in member.items():
            assert torch.equal(bundle.state_dict[f"members.{index}.{key}"], value), key
    # the files of every stage of every member, as the evaluation checks them against held-out images
    assert trained_files(config.training) == {
        f"case{i}{suffix}.nii.gz" for i in range(3) for suffix in ("", "_labels")
    } | {"stripped.nii.gz"}
    other = config.training["other_members"][0]
    assert (other["stage"], other["seed"], other["files"]) == (
        "third",
        9,
        ["case1.nii.gz", "case1_labels.nii.gz", "case2.nii.gz", "case2_labels.nii.gz"],
    )
    network = bundle.build_network()
    sizes = [sum(p.numel() for p in member.parameters()) for member in network.members]
    assert sizes[1] > sizes[0]
    image = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        mean = torch.stack([torch.softmax(m(image), 1) for m in network.members]).mean(0)
        assert torch.allclose(torch.softmax(network(image), 1), mean, atol=1e-6)
    # the bundle written and read again keeps each member's arguments
    assert (
        load_bundle(tmp_path / "ens" / "all" / "model").config.member_network_args
        == config.member_network_args
    )


def test_member_recipe_errors_name_the_member_and_the_key(data_root):
    wider = _wider_member(data_root)
    with pytest.raises(PocketSegError, match="members is 1 but member_recipes lists 2; set members to 2"):
        check_recipe(_recipe(member_recipes=[{}, wider]))
    with pytest.raises(PocketSegError, match="member 1 sets \\['spacing'\\], which every member shares"):
        check_recipe(_recipe(members=2, member_recipes=[{}, {**wider, "spacing": [2.0, 2.0, 2.0]}]))
    with pytest.raises(PocketSegError, match="unknown training config keys \\['widht'\\]"):
        check_recipe(_recipe(members=2, member_recipes=[{}, {"widht": 3}]))
    unlabelled = json.loads(json.dumps(wider))
    del unlabelled["stages"][2]["sources"][0]["label"]
    with pytest.raises(PocketSegError, match="member 1, stage 'third': training source 'c1' has no 'label'"):
        check_recipe(_recipe(members=2, member_recipes=[{}, unlabelled]))
    with pytest.raises(PocketSegError, match="an ensemble needs 2 or more"):
        check_recipe(_recipe(members=1, member_recipes=[{}]))
    # a run may hold out a case only one member trains on
    only_wide = json.loads(json.dumps(wider))
    only_wide["stages"][2]["sources"][0]["case"] = "extra"
    check_recipe(_recipe(members=2, member_recipes=[{}, only_wide], runs={"all": [], "no_extra": ["extra"]}))
    with pytest.raises(PocketSegError, match="holds out unknown cases \\['nope'\\]"):
        check_recipe(_recipe(members=2, member_recipes=[{}, wider], runs={"all": ["nope"]}))


def test_resume_continues_after_the_last_finished_stage_without_the_folders_before_it(data_root, tmp_path):
    """The last finished stage's bundle is all later stages need: with the earlier stage folders
    deleted (to save space) a resumed run trains only what is left and ends bit for bit the same."""
    recipe = _recipe()
    full = load_bundle(train_recipe(recipe, data_root, tmp_path / "full")["all"]).state_dict
    # only the first stage kept: the second is trained again from it
    shutil.copytree(
        tmp_path / "full" / "all" / "first",
        tmp_path / "part" / "all" / "first",
        ignore=shutil.ignore_patterns("last.pt"),
    )
    calls = _CancelAtStep(None)
    again = load_bundle(
        train_recipe(recipe, data_root, tmp_path / "part", resume=True, on_progress=calls)["all"]
    )
    assert all(torch.equal(full[k], again.state_dict[k]) for k in full)
    assert calls.calls == recipe.stage(1).epochs * recipe.stage(1).steps_per_epoch  # stage 2's steps only
    # only the last stage kept: nothing is trained, the model is that stage's
    shutil.copytree(tmp_path / "full" / "all" / "second", tmp_path / "last" / "all" / "second")
    calls = _CancelAtStep(None)
    kept = load_bundle(
        train_recipe(recipe, data_root, tmp_path / "last", resume=True, on_progress=calls)["all"]
    )
    assert calls.calls == 0 and all(torch.equal(full[k], kept.state_dict[k]) for k in full)
    assert kept.config.training["continued_from"]["stage"] == "first"


def test_resume_refuses_a_kept_stage_that_trained_on_a_case_the_run_holds_out(data_root, tmp_path):
    """A stage folder from a run that saw c0 cannot be the start of a run that holds c0 out."""
    recipe = _recipe()
    train_recipe(recipe, data_root, tmp_path / "full", runs=["all"])
    shutil.copytree(tmp_path / "full" / "all" / "first", tmp_path / "mixed" / "loo_c0" / "first")
    with pytest.raises(PocketSegError, match="was trained on case0.nii.gz, .*which run 'loo_c0' holds out"):
        train_recipe(recipe, data_root, tmp_path / "mixed", runs=["loo_c0"], resume=True)


def test_trained_files_follow_the_stages_before_and_the_other_members():
    record = {
        "files": ["last.nii.gz"],
        "continued_from": {"files": ["first.nii.gz"], "continued_from": None},
        "other_members": [{"files": ["wide.nii.gz"], "continued_from": {"files": ["wide_first.nii.gz"]}}],
    }
    assert trained_files(record) == {"last.nii.gz", "first.nii.gz", "wide.nii.gz", "wide_first.nii.gz"}
    assert trained_files({}) == set()


@pytest.mark.parametrize("option", ["thin_skull", "scalp_contrast"])
def test_head_shell_options_reach_the_synthetic_heads_of_a_stage_and_are_checked(data_root, option):
    """A stage's ``thin_skull`` (another skull and CSF layer) or ``scalp_contrast`` (other scalp
    intensities) changes its synthetic heads, not their labels (without ``csf_in_mask`` the brain
    mask is the label either way); outside [0, 1] the recipe is refused."""
    recipe = _recipe(synthesis={"kind": "synthstrip_heads", "seed": 0, "per_source": 2})
    plain = build_training_volumes(recipe.stage(1), data_root, held_out=["c0", "c1", "c2"])
    changed_recipe = recipe.replace(
        stages=[{"name": "first"}, {"name": "second", "synthesis": {option: 1.0}}]
    )
    changed = build_training_volumes(changed_recipe.stage(1), data_root, held_out=["c0", "c1", "c2"])
    assert [v.case_id for v in changed] == [v.case_id for v in plain]
    assert all(np.array_equal(a.label, b.label) for a, b in zip(plain, changed, strict=True))
    assert not np.array_equal(plain[0].image, changed[0].image)
    for value in (1.5, -0.1, "yes", True):
        bad = recipe.replace(stages=[{"name": "first"}, {"name": "second", "synthesis": {option: value}}])
        with pytest.raises(PocketSegError, match=f"synthesis {option} is .*a number from 0 to 1"):
            check_recipe(bad)
