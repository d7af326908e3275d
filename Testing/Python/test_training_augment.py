"""On-the-fly augmentation: exact flips, label integrity, seeded reproducibility, every name builds."""

import pytest
import torch

from pocketseg_core.errors import PocketSegError
from pocketseg_core.training.augment import AUGMENTATIONS, RandomAffineElastic, RandomFlip, build_augmentation


def _batch(spatial=(8, 24, 24), batch=3):
    generator = torch.Generator().manual_seed(0)
    image = torch.randn((batch, 1, *spatial), generator=generator)
    label = (image[:, 0] > 0.5).long()
    return image, label


def test_flip_is_an_exact_sagittal_mirror_per_sample():
    image, label = _batch()
    flipped_image, flipped_label = RandomFlip(p=1.0)(image, label, torch.Generator().manual_seed(1))
    assert torch.equal(flipped_image, torch.flip(image, dims=[-1]))
    assert torch.equal(flipped_label, torch.flip(label, dims=[-1]))
    same_image, same_label = RandomFlip(p=0.0)(image, label, torch.Generator().manual_seed(1))
    assert torch.equal(same_image, image) and torch.equal(same_label, label)


def test_every_augmentation_keeps_shapes_and_label_values_2d_and_3d():
    for spatial in ((8, 24, 24), (24, 24)):
        image, label = _batch(spatial)
        for name in AUGMENTATIONS:
            out_image, out_label = build_augmentation([{"name": name, "p": 1.0}])(
                image, label, torch.Generator().manual_seed(2)
            )
            assert out_image.shape == image.shape and out_label.shape == label.shape, name
            assert out_label.dtype == torch.long and set(out_label.unique().tolist()) <= {0, 1}, name
            assert torch.isfinite(out_image).all(), name


def test_intensity_transforms_change_only_the_image():
    image, label = _batch()
    for name in ("scale_shift", "contrast", "gamma", "noise", "blur", "bias_field", "resolution"):
        out_image, out_label = build_augmentation([{"name": name, "p": 1.0}])(
            image, label, torch.Generator().manual_seed(3)
        )
        assert torch.equal(out_label, label), name
        assert not torch.allclose(out_image, image), name


def test_rotation_moves_label_with_image_and_identity_when_disabled():
    image = torch.zeros(1, 1, 32, 32)
    image[0, 0, 8:24, 14:18] = 1.0  # a vertical bar
    label = image[:, 0].long()
    rotate = RandomAffineElastic(p=1.0, rotation_degrees=90, scale=(1.0, 1.0))
    out_image, out_label = rotate(image, label, torch.Generator().manual_seed(5))
    assert not torch.equal(out_label, label)
    # the label follows the image: where the rotated image is clearly bright the label is 1
    assert torch.equal(out_label[0] == 1, out_image[0, 0] > 0.5)
    identity = RandomAffineElastic(p=1.0, rotation_degrees=0, scale=(1.0, 1.0))
    same_image, same_label = identity(image, label, torch.Generator().manual_seed(5))
    assert torch.allclose(same_image, image, atol=1e-5) and torch.equal(same_label, label)


def test_seeded_generator_reproduces_the_same_batch():
    specs = [
        {"name": "flip"},
        {"name": "affine", "elastic_magnitude": 2.0},
        {"name": "gamma"},
        {"name": "noise"},
    ]
    image, label = _batch()
    first = build_augmentation(specs)(image, label, torch.Generator().manual_seed(9))
    second = build_augmentation(specs)(image, label, torch.Generator().manual_seed(9))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_unknown_names_and_parameters_are_clear_errors():
    with pytest.raises(PocketSegError, match="unknown augmentation 'mixup'"):
        build_augmentation([{"name": "mixup"}])
    with pytest.raises(PocketSegError, match="does not accept"):
        build_augmentation([{"name": "flip", "strength": 2}])
