"""Training losses, chosen by name: L2-relaxed Dice (PocketNet), cross-entropy, LV-Net deep supervision.

Every loss is called as ``loss(output, target)`` where

* ``output`` is what the network returned: logits ``(B, C, *spatial)``, or for LV-Net in train
  mode the tuple ``(logits, [aux_1, ..., aux_4])`` with every aux head at the logits' size;
* ``target`` is the integer label map ``(B, *spatial)`` (``torch.long``, values ``0..C-1``).

Losses that do not use the auxiliary heads take the main logits from such a tuple, so any loss
works with any network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pocketseg_core.errors import PocketSegError

NetworkOutput = torch.Tensor | tuple[torch.Tensor, Sequence[torch.Tensor]]


def main_logits(output: NetworkOutput) -> torch.Tensor:
    """The main logits ``(B, C, *spatial)`` of a network output (tensor or LV-Net tuple)."""
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``(B, C, *spatial)``: softmax over C, or sigmoid when C == 1."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)


def one_hot(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B, *spatial)`` integer labels -> ``(B, num_classes, *spatial)`` float one-hot.

    With ``num_classes == 1`` (a sigmoid network) the single channel is the foreground.
    """
    if num_classes == 1:
        return (target > 0).unsqueeze(1).float()
    encoded = F.one_hot(target.long(), num_classes)  # (B, *spatial, C)
    return encoded.movedim(-1, 1).float()


def l2_dice_loss_from_probabilities(
    prob: torch.Tensor, truth: torch.Tensor, smooth: float = 1e-6
) -> torch.Tensor:
    """L2-relaxed Dice loss ``1 - 2*sum(p*g) / (sum(p^2) + sum(g^2))`` (PocketNet, Sec. 3).

    ``prob`` and ``truth`` are ``(B, K, *spatial)`` (K channels scored). Sums run over the batch
    and the spatial axes (one Dice per channel over the whole batch, so an empty patch does not
    give an undefined ratio); the result is the mean over channels. ``smooth`` keeps 0/0 at 0.
    """
    reduce_axes = [0] + list(range(2, prob.dim()))
    intersection = (prob * truth).sum(dim=reduce_axes)
    denominator = (prob * prob).sum(dim=reduce_axes) + (truth * truth).sum(dim=reduce_axes)
    dice = (2.0 * intersection + smooth) / (denominator + smooth)
    return 1.0 - dice.mean()


class L2DiceLoss(nn.Module):
    """PocketNet's L2-relaxed soft Dice on the foreground classes.

    With C >= 2 softmax channels the background channel 0 is left out (the paper scores the
    structure; scoring background would dominate with a large field of view).
    """

    def __init__(self, smooth: float = 1e-6, include_background: bool = False) -> None:
        super().__init__()
        self.smooth = smooth
        self.include_background = include_background

    def forward(self, output: NetworkOutput, target: torch.Tensor) -> torch.Tensor:
        logits = main_logits(output).float()
        prob = probabilities(logits)
        truth = one_hot(target, logits.shape[1])
        if logits.shape[1] > 1 and not self.include_background:
            prob, truth = prob[:, 1:], truth[:, 1:]
        return l2_dice_loss_from_probabilities(prob, truth, self.smooth)


class CrossEntropyLoss(nn.Module):
    """Cross-entropy on the main logits (binary cross-entropy for a single sigmoid channel)."""

    def forward(self, output: NetworkOutput, target: torch.Tensor) -> torch.Tensor:
        return _cross_entropy(main_logits(output), target)


def _cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], (target > 0).float())
    return F.cross_entropy(logits, target.long())


#: LV-Net Eq. 3 weights eta_1..eta_4 of the auxiliary losses, in the order of the aux list.
LVNET_AUX_WEIGHTS: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)


class DeepSupervisionLoss(nn.Module):
    """LV-Net loss (Eq. 3): CE(main) + sum_i eta_i * CE(aux_i); weight decay is in the optimizer.

    Ordering (the paper, Sec. 2.2: "the output of decoder at deep layers is more important"):
    ``aux_1`` is the first decoder stage after the bottleneck (coarsest, fewest layers from the
    input) and gets 0.2; ``aux_4`` is the last decoder stage (finest, the deepest in the network,
    widest receptive field) and gets 0.8. This is the order in which ``lvnet`` returns its aux
    heads (networks contract: ``[aux_1, ..., aux_4]``).
    Given a plain tensor (a network without aux heads, or eval mode) it is plain cross-entropy.
    """

    def __init__(self, aux_weights: Sequence[float] = LVNET_AUX_WEIGHTS, main_weight: float = 1.0) -> None:
        super().__init__()
        self.aux_weights = tuple(float(w) for w in aux_weights)
        self.main_weight = float(main_weight)

    def forward(self, output: NetworkOutput, target: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, (tuple, list)):
            return self.main_weight * _cross_entropy(output, target)
        logits, aux_outputs = output[0], list(output[1])
        if len(aux_outputs) != len(self.aux_weights):
            raise PocketSegError(
                f"deep supervision expects {len(self.aux_weights)} auxiliary outputs, the network "
                f"returned {len(aux_outputs)}; set the loss's aux_weights to match the network"
            )
        total = self.main_weight * _cross_entropy(logits, target)
        for weight, aux in zip(self.aux_weights, aux_outputs, strict=True):
            total = total + weight * _cross_entropy(aux, target)
        return total


class DiceCrossEntropyLoss(nn.Module):
    """Sum of the L2 Dice and the cross-entropy (a common, more stable variant; not in the papers)."""

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0) -> None:
        super().__init__()
        self.dice = L2DiceLoss()
        self.ce = CrossEntropyLoss()
        self.dice_weight, self.ce_weight = dice_weight, ce_weight

    def forward(self, output: NetworkOutput, target: torch.Tensor) -> torch.Tensor:
        return self.dice_weight * self.dice(output, target) + self.ce_weight * self.ce(output, target)


#: loss name -> constructor taking the config's keyword parameters
LOSSES: dict[str, Callable[..., nn.Module]] = {
    "dice_l2": L2DiceLoss,
    "cross_entropy": CrossEntropyLoss,
    "deep_supervision_ce": DeepSupervisionLoss,
    "dice_l2_ce": DiceCrossEntropyLoss,
}


def create_loss(name: str, **params: object) -> nn.Module:
    """Build a loss by registry name (``LOSSES``) with its keyword parameters."""
    if name not in LOSSES:
        raise PocketSegError(f"unknown loss {name!r}; choose one of {', '.join(sorted(LOSSES))}")
    try:
        return LOSSES[name](**params)
    except TypeError as error:
        raise PocketSegError(f"loss {name!r} does not accept these parameters {params}: {error}") from error
