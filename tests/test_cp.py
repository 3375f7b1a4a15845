"""CP-ALS initialisation (tensorly, PyTorch backend) of the low-rank model."""

import torch

from mrtl_lightning.modes import SpatialMode, TensorSpec
from mrtl_lightning.tensor_models import CPTensor, FullRankTensor

SPEC = TensorSpec(
    "classification",
    (("entity", 6),),
    (),
    (SpatialMode("court", "sparse"), SpatialMode("defenders", "sparse")),
)
RESOLUTION = {"court": (4, 5), "defenders": (6, 6)}


def test_cp_initialisation_reproduces_a_rank_k_tensor():
    torch.manual_seed(0)
    planted = CPTensor(SPEC, RESOLUTION, None, cp_rank=3, init_scale=1.0)
    full = FullRankTensor(SPEC, RESOLUTION)
    full.weight.data.copy_(planted.to_dense().reshape(full.weight.shape))

    low, error = full.decompose(cp_rank=3, n_iter_max=500, tol=1e-12)
    reconstructed = low.to_dense().reshape(full.weight.shape)
    relative = torch.linalg.norm(reconstructed - full.weight) / torch.linalg.norm(full.weight)
    assert error < 1e-4
    assert relative < 1e-4


def test_cp_factors_are_balanced_and_keep_the_bias():
    torch.manual_seed(1)
    planted = CPTensor(SPEC, RESOLUTION, None, cp_rank=2, init_scale=1.0)
    full = FullRankTensor(SPEC, RESOLUTION)
    full.weight.data.copy_(planted.to_dense().reshape(full.weight.shape))
    full.bias.values["entity"].data.fill_(0.25)
    low, _ = full.decompose(cp_rank=2)
    norms = torch.stack([torch.linalg.norm(low.flat_factor(n), dim=0) for n in low.factors])
    assert torch.allclose(norms, norms[:1].expand_as(norms), rtol=1e-4)
    assert torch.equal(low.bias.values["entity"], full.bias.values["entity"])


def test_masked_cells_get_zero_factor_rows():
    torch.manual_seed(2)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[0, :2] = False
    full = FullRankTensor(SPEC, RESOLUTION, {"court": mask}, init_scale=1.0)
    low, _ = full.decompose(cp_rank=3)
    assert torch.all(low.factors["court"][~mask] == 0)
    assert torch.isnan(low.spatial_factors()["court"][:, ~mask]).all()
