"""Finegraining (paper §4.2): nearest is exact for one-/multi-hot inputs, bilinear is close."""

import pytest
import torch

from datamodules.synthetic import SyntheticClassification, SyntheticRegression
from mrtl_lightning.module import MRTLModule
from mrtl_lightning.tensor_models import CPTensor, FullRankTensor
from mrtl_lightning.upsampling import upsample


def whole_split(datamodule, split="val"):
    dataset = datamodule.dataset(split)
    return dataset[torch.arange(len(dataset))]


def classification_data():
    datamodule = SyntheticClassification(num_samples=3000, num_entities=6, seed=0)
    datamodule.setup()
    return datamodule


@pytest.mark.parametrize("rank", ["full", "low"])
def test_nearest_finegrain_leaves_outputs_and_loss_unchanged(rank):
    datamodule = classification_data()
    coarse = {"court": (4, 5), "defenders": (6, 6)}
    fine = {"court": (8, 10), "defenders": (12, 12)}
    module = MRTLModule(datamodule.spec, rank, coarse, cp_rank=3, init_scale=0.5, seed=1)
    datamodule.set_resolution(coarse)
    batch = whole_split(datamodule)
    before = module.tensor(batch)
    loss_before = module.data_loss(before, batch["target"])

    module.replace_tensor(module.tensor.finegrained(fine), next_epoch=1)
    datamodule.set_resolution(fine)
    batch = whole_split(datamodule)
    after = module.tensor(batch)
    assert torch.equal(before, after)
    assert torch.equal(loss_before, module.data_loss(after, batch["target"]))


def test_nearest_finegrain_with_a_non_integer_ratio_keeps_most_outputs():
    # 8×10 → 20×25 is not a nesting: fine cells that straddle two coarse cells change value.
    datamodule = classification_data()
    coarse = {"court": (8, 10), "defenders": (12, 12)}
    fine = {"court": (20, 25), "defenders": (12, 12)}
    model = FullRankTensor(datamodule.spec, coarse, init_scale=0.5)
    datamodule.set_resolution(coarse)
    before = model(whole_split(datamodule))
    finer = model.finegrained(fine)
    datamodule.set_resolution(fine)
    after = finer(whole_split(datamodule))
    assert finer.weight.shape == (6, 20, 25, 12, 12)
    unchanged = torch.isclose(before, after).float().mean()
    assert 0.5 < unchanged < 1.0


def smooth_regression_model(datamodule, grid, rank):
    """A model whose ocean weights are the planted smooth factors (scaled as eq. 1 needs)."""
    resolution = {"ocean": grid}
    truth = datamodule.planted_factors(resolution)
    masks = {"ocean": datamodule.mask("ocean", grid)}
    model = CPTensor(datamodule.spec, resolution, masks, cp_rank=3, init_scale=0.0)
    cells = grid[0] * grid[1]
    model.load_mode_factors(
        [
            torch.tensor(truth["lag"]),
            torch.tensor(truth["variable"]),
            torch.tensor(truth["ocean"]) / cells,
        ]
    )
    if rank == "full":
        full = FullRankTensor(datamodule.spec, resolution, masks)
        full.weight.data.copy_(model.to_dense().reshape(full.weight.shape))
        return full
    return model


@pytest.mark.parametrize("rank", ["full", "low"])
@pytest.mark.parametrize("fine", [(16, 32), (12, 24)])
def test_bilinear_finegrain_keeps_predictions_on_smooth_fields(rank, fine):
    """Tolerance: relative RMS change of predictions below 10 % (integer and 1.5× ratios)."""
    datamodule = SyntheticRegression(num_samples=400, seed=0)
    datamodule.setup()
    coarse = (8, 16)
    model = smooth_regression_model(datamodule, coarse, rank)
    datamodule.set_resolution({"ocean": coarse})
    before = model(whole_split(datamodule)).detach()
    finer = model.finegrained({"ocean": fine}, {"ocean": datamodule.mask("ocean", fine)})
    datamodule.set_resolution({"ocean": fine})
    after = finer(whole_split(datamodule)).detach()
    change = torch.sqrt(((after - before) ** 2).mean() / (before**2).mean())
    assert change < 0.10, f"relative RMS change {change:.3f}"


def test_bilinear_rescales_by_the_ratio_of_cells():
    constant = torch.ones(2, 4, 8)
    fine = upsample(constant, (1, 2), (8, 16), "bilinear")
    assert torch.allclose(fine, torch.full((2, 8, 16), 0.25))
    assert torch.allclose(fine.sum((1, 2)), constant.sum((1, 2)))


def test_finegraining_to_a_coarser_grid_is_refused():
    datamodule = classification_data()
    model = FullRankTensor(datamodule.spec, {"court": (8, 10), "defenders": (6, 6)})
    with pytest.raises(ValueError, match="coarser"):
        model.finegrained({"court": (4, 5), "defenders": (6, 6)})
