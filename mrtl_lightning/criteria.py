"""Finegrain criteria (paper §4.2): when to move from one resolution to the next.

Each criterion reads one number per epoch and *fires* when that number failed to decrease by
more than a threshold ``τ`` since the previous epoch: ``value_t − value_{t−1} > −τ``. With the
default ``τ = 0`` it fires as soon as the number stops falling; a positive ``τ`` also fires on
a plateau. It acts once it has fired ``patience`` times at the current resolution (the count
is cumulative over the resolution, not consecutive, and restarts after every move).

The gradient criteria look at ``ḡ``, the epoch's mean of the mini-batch gradients of the
non-bias parameters (every weight of ``W``, or every CP factor):

* ``grad_norm``: ``||ḡ||₂``;
* ``grad_variance``: the variance of the entries of ``ḡ``;
* ``grad_entropy``: the entropy of ``p = |ḡ| / Σ|ḡ|``.

At a coarse resolution, stochastic gradients point consistently downhill; once the model has
learned what that resolution can express, the mean gradient's statistics stop falling and a
finer grid has more to offer (paper Theorem 1 and §4.2).
"""

from __future__ import annotations

import math

import torch


class Criterion:
    """Base class: compares each epoch's statistic with the previous epoch's.

    Args:
        threshold: ``τ``; fire when the statistic did not decrease by more than it.
        patience: number of fires at one resolution before the criterion acts.
        name: the config's name of the criterion; checked against the class, so a config
            that pairs a name with another class fails early.
    """

    name = "criterion"
    needs_gradient = False

    def __init__(self, threshold: float = 0.0, patience: int = 1, name: str | None = None):
        if name is not None and name != self.name:
            raise ValueError(f"criterion name {name!r} does not match class {type(self).__name__}")
        if patience < 1:
            raise ValueError(f"criterion patience {patience} must be at least 1")
        if threshold < 0:
            raise ValueError(f"criterion threshold {threshold} must be >= 0 (τ of §4.2)")
        self.threshold = float(threshold)
        self.patience = int(patience)
        self.reset()

    def reset(self) -> None:
        """Start afresh at a new resolution."""
        self.previous: float | None = None
        self.fires = 0

    def statistic(self, val_loss: float, mean_gradient: torch.Tensor | None) -> float:
        raise NotImplementedError

    def update(self, value: float) -> tuple[bool, str]:
        """Record one epoch's statistic; return (act now, reason with the numbers)."""
        fired = (
            self.previous is not None
            and math.isfinite(value)
            and value - self.previous > -self.threshold
        )
        reason = ""
        if fired:
            self.fires += 1
            reason = (
                f"{self.name} {value:.6g} vs {self.previous:.6g} (τ={self.threshold:g}), "
                f"fired {self.fires}/{self.patience}"
            )
        self.previous = value
        return self.fires >= self.patience, reason

    def state_dict(self) -> dict:
        return {"previous": self.previous, "fires": self.fires}

    def load_state_dict(self, state: dict) -> None:
        self.previous = state["previous"]
        self.fires = state["fires"]


class ValidationLoss(Criterion):
    """Fires when the validation loss stops decreasing."""

    name = "val_loss"

    def statistic(self, val_loss, mean_gradient):
        return float(val_loss)


class GradientNorm(Criterion):
    """Fires when the norm of the epoch's mean gradient stops decreasing."""

    name = "grad_norm"
    needs_gradient = True

    def statistic(self, val_loss, mean_gradient):
        return float(torch.linalg.vector_norm(mean_gradient))


class GradientVariance(Criterion):
    """Fires when the variance of the entries of the epoch's mean gradient stops decreasing."""

    name = "grad_variance"
    needs_gradient = True

    def statistic(self, val_loss, mean_gradient):
        return float(mean_gradient.double().var())


class GradientEntropy(Criterion):
    """Fires when the entropy of ``|ḡ| / Σ|ḡ|`` stops decreasing."""

    name = "grad_entropy"
    needs_gradient = True

    def statistic(self, val_loss, mean_gradient):
        magnitude = mean_gradient.double().abs()
        total = magnitude.sum()
        if total <= 0:
            return float("nan")
        p = magnitude / total
        return float(-(torch.special.xlogy(p, p)).sum())
