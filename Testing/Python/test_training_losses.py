"""Training losses against hand-computed values."""

import math

import pytest
import torch

from pocketseg_core.errors import PocketSegError
from pocketseg_core.training.losses import (
    LVNET_AUX_WEIGHTS,
    create_loss,
    l2_dice_loss_from_probabilities,
)


def test_l2_dice_perfect_prediction_is_zero():
    truth = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 4)
    assert l2_dice_loss_from_probabilities(truth.clone(), truth).item() == pytest.approx(0.0, abs=1e-7)


def test_l2_dice_known_values():
    # p = (1, .5, 0, 0), g = (1, 1, 0, 0): sum pg = 1.5, sum p^2 = 1.25, sum g^2 = 2 -> 1 - 3/3.25
    prob = torch.tensor([1.0, 0.5, 0.0, 0.0]).view(1, 1, 4)
    truth = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 4)
    assert l2_dice_loss_from_probabilities(prob, truth).item() == pytest.approx(1 - 3 / 3.25, abs=1e-6)
    # squared denominator differs from the plain (L1) soft Dice 1 - 3/3.5: the paper's L2 relaxation
    assert l2_dice_loss_from_probabilities(prob, truth).item() != pytest.approx(1 - 3 / 3.5, abs=1e-3)
    # disjoint masks: loss 1
    assert l2_dice_loss_from_probabilities(1 - truth, truth).item() == pytest.approx(1.0, abs=1e-6)


def test_l2_dice_on_logits_scores_foreground_only():
    target = torch.tensor([[1, 1, 0, 0]])  # (B=1, 4)
    sure = torch.tensor([[[-30.0, -30.0, 30.0, 30.0], [30.0, 30.0, -30.0, -30.0]]])  # (1, C=2, 4)
    loss = create_loss("dice_l2")
    assert loss(sure, target).item() == pytest.approx(0.0, abs=1e-6)
    # uniform logits: p = .5 everywhere on the foreground channel: 1 - 2*1/(4*.25 + 2) = 1/3
    assert loss(torch.zeros(1, 2, 4), target).item() == pytest.approx(1 / 3, abs=1e-5)
    # a single sigmoid channel gives the same
    assert loss(torch.zeros(1, 1, 4), target).item() == pytest.approx(1 / 3, abs=1e-5)


def test_cross_entropy_known_value():
    logits = torch.tensor([[[0.0], [math.log(3.0)]]])  # p(class 1) = 3/4
    target = torch.tensor([[1]])
    assert create_loss("cross_entropy")(logits, target).item() == pytest.approx(math.log(4 / 3), abs=1e-6)


def test_deep_supervision_weights_and_order():
    target = torch.tensor([[1, 0, 1, 0]])
    uninformative = torch.zeros(1, 2, 4)  # CE = ln 2
    perfect = torch.stack([torch.tensor([-40.0, 40, -40, 40]), torch.tensor([40.0, -40, 40, -40])])[None]
    loss = create_loss("deep_supervision_ce")
    assert LVNET_AUX_WEIGHTS == (0.2, 0.4, 0.6, 0.8)
    everything = loss((uninformative, [uninformative] * 4), target).item()
    assert everything == pytest.approx(math.log(2) * (1 + 0.2 + 0.4 + 0.6 + 0.8), abs=1e-6)
    for index, weight in enumerate(LVNET_AUX_WEIGHTS):
        aux = [perfect] * 4
        aux[index] = uninformative  # only aux_{index+1} is wrong: its weight shows
        value = loss((perfect, aux), target).item()
        assert value == pytest.approx(math.log(2) * weight, abs=1e-6)
    # a plain tensor (eval mode) is plain cross-entropy
    assert loss(uninformative, target).item() == pytest.approx(math.log(2), abs=1e-6)
    with pytest.raises(PocketSegError, match="4 auxiliary outputs"):
        loss((perfect, [perfect] * 3), target)


def test_non_deep_losses_use_the_main_output_of_a_tuple():
    target = torch.tensor([[1, 0, 1, 0]])
    main = torch.zeros(1, 2, 4)
    aux = [torch.randn(1, 2, 4) for _ in range(4)]
    assert create_loss("cross_entropy")((main, aux), target).item() == pytest.approx(math.log(2), abs=1e-6)
    combined = create_loss("dice_l2_ce")(main, target).item()
    assert combined == pytest.approx(math.log(2) + 1 / 3, abs=1e-5)


def test_gradients_flow_and_registry_errors():
    logits = torch.randn(2, 2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 2, (2, 3, 8, 8))
    create_loss("dice_l2")(logits, target).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    with pytest.raises(PocketSegError, match="unknown loss"):
        create_loss("dice_l3")
    with pytest.raises(PocketSegError, match="does not accept"):
        create_loss("cross_entropy", weight=2)
