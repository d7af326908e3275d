"""Patch sampling (training/sampling.py): foreground-centred, uniform, and just past the
structure's first and last slice (``past_ends_fraction``)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from pocketseg_core.errors import PocketSegError
from pocketseg_core.training.presets import TrainingConfig
from pocketseg_core.training.recipes import check_recipe
from pocketseg_core.training.sampling import TrainingVolume, sample_batch, slice_past_ends
from pocketseg_core.training.trainer import Trainer

PATCH = (5, 16, 16)


def _volumes(first_slice: int = 10) -> list[TrainingVolume]:
    """Three 40-slice volumes, each with a 10-slice box of foreground starting at
    ``first_slice + k``; each voxel's value is its slice's z index plus noise under 0.5."""
    volumes = []
    for k in range(3):
        noise = np.random.default_rng(k).uniform(-0.4, 0.4, size=(40, 24, 20))
        image = (np.arange(40)[:, None, None] + noise).astype(np.float32)
        label = np.zeros((40, 24, 20), np.uint8)
        label[first_slice + k : first_slice + k + 10, 6:16, 5:12] = 1
        volumes.append(TrainingVolume(f"c{k}", image, label, np.argwhere(label > 0)))
    return volumes


def _digest(**past_ends) -> str:
    rng = np.random.default_rng(3)
    digest = hashlib.sha256()
    for _ in range(5):
        images, labels = sample_batch(_volumes(), 4, PATCH, 0.6, rng, **past_ends)
        digest.update(images.numpy().tobytes())
        digest.update(labels.numpy().tobytes())
    return digest.hexdigest()


def test_without_past_ends_the_draws_are_those_of_the_sampler_before_it():
    """Recipes trained before the option must train bit for bit the same: the digest below is
    the one the sampler gave before ``past_ends_fraction`` existed (same volumes, seed 3)."""
    before = "ae0b938e8eb950472a831e79e0534a9ec5b298cf16403e9addd8c189cf5bc027"
    assert _digest() == before
    assert _digest(past_ends_fraction=0.0, past_ends_slices=4) == before
    assert _digest(past_ends_fraction=0.3, past_ends_slices=4) != before


def test_past_end_patches_sit_just_beyond_the_first_or_last_foreground_slice():
    volumes = _volumes()
    rng = np.random.default_rng(0)
    middles = []
    for _ in range(60):
        images, labels = sample_batch(volumes, 4, PATCH, 0.0, rng, past_ends_fraction=1.0, past_ends_slices=3)
        for image, label in zip(images[:, 0], labels, strict=True):
            assert not label[PATCH[0] // 2].any()  # the middle slice holds no foreground
            middles.append(int(image[PATCH[0] // 2].max().round()))  # its z index (padding is lower)
    middles = np.array(middles)
    # foreground slices are 10-19, 11-20 and 12-21: below = 7..11, above = 20..24
    assert set(middles) <= set(range(7, 12)) | set(range(20, 25))
    below, above = (middles < 15).sum(), (middles >= 15).sum()
    assert 0.35 < below / len(middles) < 0.65, (below, above)


def test_a_structure_at_the_image_edge_gets_its_past_end_slices_on_the_other_side():
    volume = _volumes(first_slice=0)[0]  # foreground slices 0-9: nothing below
    rng = np.random.default_rng(1)
    slices = {slice_past_ends(volume, 4, rng) for _ in range(200)}
    assert slices == {10, 11, 12, 13}


def test_shares_of_patches_are_checked_in_the_trainer_and_the_recipe():
    from pocketseg_core.networks import create_network

    network = create_network("pocket_unet2d", init_filters=4, in_channels=5)
    config = TrainingConfig(
        network="pocket_unet2d",
        window_mode="slice2d",
        context_slices=2,
        patch_size_zyx=PATCH,
        spacing=(2.5, 2.5, 3.0),
        foreground_fraction=0.7,
        past_ends_fraction=0.2,
        past_ends_mm=30.0,
        loss={"name": "dice_l2_ce"},
        optimizer={"name": "adam", "lr": 1e-3},
        scheduler={"name": "warmup_cosine"},
        augmentation=[],
    )
    import torch

    trainer = Trainer.from_config(
        network, _volumes(), config, total_steps=2, seed=0, device=torch.device("cpu")
    )
    assert trainer.past_ends_slices == 10  # 30 mm at 3 mm between slices
    assert np.isfinite(trainer.train_step())
    with pytest.raises(PocketSegError, match="together at most 1"):
        Trainer.from_config(
            network,
            _volumes(),
            config.replace(past_ends_fraction=0.4),
            total_steps=2,
            seed=0,
            device=torch.device("cpu"),
        )
    recipe = config.replace(
        sources=[{"case": "a", "image": "a.nii.gz", "label": "a_label.nii.gz"}],
        runs={"all": []},
        stages=[{"name": "first"}, {"name": "second", "past_ends_fraction": 0.5}],
    )
    with pytest.raises(PocketSegError, match="past_ends_fraction 0.5 .* together at most 1"):
        check_recipe(recipe)
    with pytest.raises(PocketSegError, match="past_ends_mm .* a positive distance"):
        check_recipe(recipe.replace(stages=[], past_ends_mm=0.0))
    check_recipe(recipe.replace(stages=[]))
