"""Finegrain criteria fire on crafted sequences and respect τ and patience (paper §4.2)."""

import math

import pytest
import torch

from mrtl_lightning.criteria import (
    GradientEntropy,
    GradientNorm,
    GradientVariance,
    ValidationLoss,
)


def run(criterion, values):
    """Index of the epoch at which the criterion acts (None if it never does)."""
    for epoch, value in enumerate(values):
        act, _ = criterion.update(value)
        if act:
            return epoch
    return None


def test_fires_when_the_statistic_rises():
    assert run(ValidationLoss(), [1.0, 0.8, 0.7, 0.75, 0.6]) == 3


def test_threshold_also_fires_on_a_plateau():
    values = [1.0, 0.8, 0.79, 0.5]
    assert run(ValidationLoss(threshold=0.0), values) is None
    assert run(ValidationLoss(threshold=0.05), values) == 2


def test_patience_counts_fires_at_one_resolution():
    values = [1.0, 1.1, 0.9, 0.95, 0.8, 0.85]
    assert run(ValidationLoss(patience=1), values) == 1
    assert run(ValidationLoss(patience=2), values) == 3
    assert run(ValidationLoss(patience=3), values) == 5


def test_reset_forgets_the_previous_resolution():
    criterion = ValidationLoss(patience=2)
    run(criterion, [1.0, 1.1])
    criterion.reset()
    assert criterion.update(5.0) == (False, "")
    assert criterion.fires == 0


def test_state_round_trips():
    criterion = ValidationLoss(patience=3)
    run(criterion, [1.0, 1.2, 1.3])
    copy = ValidationLoss(patience=3)
    copy.load_state_dict(criterion.state_dict())
    assert copy.update(1.4)[0] and criterion.update(1.4)[0]


def test_gradient_statistics():
    gradient = torch.tensor([3.0, -4.0, 0.0, 0.0])
    assert GradientNorm().statistic(0.0, gradient) == pytest.approx(5.0)
    assert GradientVariance().statistic(0.0, gradient) == pytest.approx(float(gradient.var()))
    p = torch.tensor([3 / 7, 4 / 7])
    assert GradientEntropy().statistic(0.0, gradient) == pytest.approx(float(-(p * p.log()).sum()))


def test_entropy_rises_as_the_gradient_spreads_out():
    criterion = GradientEntropy()
    concentrated = torch.tensor([1.0, 0.01, 0.01, 0.01])
    spread = torch.tensor([1.0, 0.8, 0.9, 1.1])
    criterion.update(criterion.statistic(0.0, concentrated))
    act, reason = criterion.update(criterion.statistic(0.0, spread))
    assert act and "grad_entropy" in reason


def test_a_nan_statistic_never_fires():
    assert run(GradientEntropy(), [1.0, math.nan, 2.0]) is None
    criterion = ValidationLoss()
    criterion.update(1.0)
    assert criterion.update(math.nan) == (False, "")


@pytest.mark.parametrize("bad", [{"patience": 0}, {"threshold": -1.0}, {"name": "grad_norm"}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        ValidationLoss(**bad)
