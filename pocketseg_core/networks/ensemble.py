"""Several trainings of one network, averaged: the model of a bundle with ``members > 1``.

A small network trained on a handful of images lands in a different place with every seed: on
the held-out liver CTs one seed takes in the right kidney under the liver's tip and another
does not (docs/training.md, "Ensembles of seeds"). Averaging the softmax of networks trained
with different seeds keeps what they agree on. The ensemble returns the logarithm of the mean
probabilities, so the inference's softmax over its output gives exactly that mean and every
caller treats it as one network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pocketseg_core.errors import NetworkConfigError


class ProbabilityEnsemble(nn.Module):
    """``x -> log(mean_k softmax(member_k(x)))`` over the class channel (dim 1).

    Args:
        members: networks of the same architecture (their ``spatial_divisor`` is the ensemble's).

    Shapes: input ``(B, C, *spatial)``; output ``(B, K, *spatial)``, K the members' classes. A
    member in training mode that returns deep-supervision outputs (a list) contributes its first
    (full-resolution) output. Its parameters are ``members.<k>.<member parameter>``.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise NetworkConfigError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)
        self.spatial_divisor = getattr(members[0], "spatial_divisor", (1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for member in self.members:
            logits = member(x)
            if isinstance(logits, tuple | list):
                logits = logits[0]
            probabilities = torch.softmax(logits.float(), dim=1)
            total = probabilities if total is None else total + probabilities
        # the floor keeps log finite where every member gives a class probability 0 (float32
        # softmax underflow); softmax of the result is the mean again to within that floor
        return torch.log((total / len(self.members)).clamp_min(1e-30))
