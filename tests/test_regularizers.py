"""The separable spatial regulariser equals eq. 3 evaluated with the full D×D kernel."""

import pytest
import torch

from mrtl_lightning.modes import SpatialMode, TensorSpec
from mrtl_lightning.regularizers import axis_kernel, full_rank_spatial_penalty
from mrtl_lightning.tensor_models import CPTensor, FullRankTensor

SPEC = TensorSpec(
    "classification",
    (("entity", 3),),
    (),
    (SpatialMode("court", "sparse"), SpatialMode("defenders", "sparse")),
)
RESOLUTION = {"court": (4, 5), "defenders": (3, 3)}


def direct_penalty(weight, axes, grid, sigma, mask=None):
    """Eq. 3 with the explicit (D, D) RBF kernel of eq. 4 and a loop-free pair sum."""
    rows, cols = grid
    centres = (
        torch.stack(
            torch.meshgrid(
                (torch.arange(rows, dtype=torch.float64) + 0.5) / rows,
                (torch.arange(cols, dtype=torch.float64) + 0.5) / cols,
                indexing="ij",
            ),
            -1,
        )
        .reshape(-1, 2)
        .double()
    )
    kernel = torch.exp(-((centres[:, None, :] - centres[None, :, :]) ** 2).sum(-1) / sigma)
    cells = weight.movedim(axes, (0, 1)).reshape(rows * cols, -1).double()
    valid = torch.ones(rows * cols, dtype=torch.bool) if mask is None else mask.reshape(-1)
    cells, kernel = cells[valid], kernel[valid][:, valid]
    squared = ((cells[:, None, :] - cells[None, :, :]) ** 2).sum(-1)
    return (kernel * squared).sum()


@pytest.mark.parametrize("masked", [False, True])
def test_separable_penalty_equals_direct_kernel(masked):
    torch.manual_seed(0)
    weight = torch.randn(3, 4, 5, 3, 3, dtype=torch.float64)
    mask = (torch.rand(4, 5) > 0.3) if masked else None
    kernels = (axis_kernel(4, 0.05, torch.float64), axis_kernel(5, 0.05, torch.float64))
    separable = full_rank_spatial_penalty(weight, (1, 2), kernels, mask)
    assert torch.allclose(separable, direct_penalty(weight, (1, 2), (4, 5), 0.05, mask), rtol=1e-10)


def test_separable_penalty_gradient_equals_autograd_of_direct():
    torch.manual_seed(1)
    mask = torch.rand(4, 5) > 0.3
    kernels = (axis_kernel(4, 0.1, torch.float64), axis_kernel(5, 0.1, torch.float64))
    first = torch.randn(3, 4, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    second = first.detach().clone().requires_grad_(True)
    full_rank_spatial_penalty(first, (1, 2), kernels, mask).backward()
    direct_penalty(second, (1, 2), (4, 5), 0.1, mask).backward()
    assert torch.allclose(first.grad, second.grad, rtol=1e-9, atol=1e-12)


def test_cp_penalties_equal_those_of_the_reconstructed_tensor():
    torch.manual_seed(2)
    mask = torch.rand(4, 5) > 0.3
    cp = CPTensor(SPEC, RESOLUTION, {"court": mask}, cp_rank=4, init_scale=1.0).double()
    full = FullRankTensor(SPEC, RESOLUTION, {"court": mask}).double()
    full.weight.data.copy_(cp.to_dense().reshape(full.weight.shape))
    _, cp_spatial = cp.penalties(0.05)
    _, full_spatial = full.penalties(0.05)
    assert torch.allclose(cp_spatial, full_spatial, rtol=1e-10)


def test_full_and_cp_models_score_alike():
    torch.manual_seed(3)
    cp = CPTensor(SPEC, RESOLUTION, None, cp_rank=4, init_scale=1.0)
    full = FullRankTensor(SPEC, RESOLUTION)
    full.weight.data.copy_(cp.to_dense().reshape(full.weight.shape))
    batch = {
        "entity": torch.randint(0, 3, (16, 1)),
        "cells": {
            "court": torch.randint(0, 20, (16, 1)),
            "defenders": torch.randint(0, 9, (16, 5)),
        },
        "values": {"court": torch.ones(16, 1), "defenders": torch.rand(16, 5)},
        "target": torch.zeros(16),
    }
    assert torch.allclose(cp(batch), full(batch), atol=1e-5)


def test_l2_penalty_is_invariant_under_nearest_finegraining():
    torch.manual_seed(4)
    full = FullRankTensor(SPEC, RESOLUTION, init_scale=1.0)
    finer = full.finegrained({"court": (8, 10), "defenders": (6, 6)})
    assert torch.allclose(full.penalties(0.05)[0], finer.penalties(0.05)[0], rtol=1e-5)


def test_sigma_must_be_positive():
    with pytest.raises(ValueError, match="sigma"):
        axis_kernel(4, 0.0)


REGRESSION_SPEC = TensorSpec(
    "regression", (), (("lag", 3), ("variable", 2)), (SpatialMode("ocean", "dense"),)
)


@pytest.mark.parametrize(
    "model",
    [
        lambda: FullRankTensor(SPEC, RESOLUTION, init_scale=1.0),
        lambda: FullRankTensor(SPEC, RESOLUTION, {"court": torch.rand(4, 5) > 0.3}, 1.0),
        lambda: CPTensor(SPEC, RESOLUTION, {"court": torch.rand(4, 5) > 0.3}, 4, 1.0),
        lambda: CPTensor(REGRESSION_SPEC, {"ocean": (4, 6)}, None, 3, 1.0),
    ],
    ids=["full", "full-masked", "cp-masked", "cp-dense"],
)
def test_in_place_penalty_gradients_equal_autograd_of_the_penalties(model):
    torch.manual_seed(5)
    model = model().double()
    model.add_penalty_gradients(1e-2, 1e-1, 0.05)
    fast = [p.grad.clone() for p in model.weight_parameters()]
    for parameter in model.parameters():
        parameter.grad = None
    l2, spatial = model.penalties(0.05)
    (1e-2 * l2 + 1e-1 * spatial).backward()
    for mine, parameter in zip(fast, model.weight_parameters()):
        assert torch.allclose(mine, parameter.grad, rtol=1e-9, atol=1e-15)
