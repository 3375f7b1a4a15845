"""The climate model on the real ERSST v5 + nClimDiv sample: finegraining and the main job."""

import json

import numpy as np
import pytest
import torch
from test_climate_data import batch, real_datamodule

from conftest import compose_config
from datamodules.synthetic import grid_positions, smooth_bumps
from mrtl_lightning.tensor_models import CPTensor, FullRankTensor
from mrtl_lightning.train import train


@pytest.fixture(scope="module")
def ersst():
    datamodule = real_datamodule()
    datamodule.setup("fit")
    return datamodule


def smooth_model(datamodule, grid, rank):
    """A model whose ocean weights are smooth maps, scaled by 1 / cells as eq. 1 needs."""
    resolution = {"ocean": grid}
    mask = datamodule.mask("ocean", grid)
    spatial = smooth_bumps(np.random.default_rng(0), 2)(grid_positions(grid))
    model = CPTensor(datamodule.spec, resolution, {"ocean": mask}, cp_rank=2, init_scale=0.0)
    lags = torch.linspace(1.0, 0.5, datamodule.spec.feature_modes[0][1])
    model.load_mode_factors(
        [
            torch.stack([lags, lags.flip(0)], 1),
            torch.ones(1, 2),
            torch.tensor(spatial, dtype=torch.float32) / (grid[0] * grid[1]),
        ]
    )
    if rank == "full":
        full = FullRankTensor(datamodule.spec, resolution, {"ocean": mask})
        full.weight.data.copy_(model.to_dense().reshape(full.weight.shape))
        return full
    return model


@pytest.mark.parametrize("rank", ["full", "low"])
@pytest.mark.parametrize("fine", [(20, 45), (40, 90)])
def test_bilinear_finegrain_keeps_predictions_on_the_real_sst_field(ersst, rank, fine):
    """Tolerance: relative RMS change of the test predictions below 10 %."""
    coarse = (8, 18)
    model = smooth_model(ersst, coarse, rank)
    before = model(batch(ersst, "test", coarse)).detach()
    finer = model.finegrained({"ocean": fine}, {"ocean": ersst.mask("ocean", fine)})
    after = finer(batch(ersst, "test", fine)).detach()
    change = torch.sqrt(((after - before) ** 2).mean() / (before**2).mean())
    assert change < 0.10, f"relative RMS change {change:.3f}"


def test_main_job_on_the_real_sample_writes_a_complete_summary(tmp_path, real_data):
    cfg = compose_config(
        tmp_path,
        "dataset=climate",
        "criterion=grad_entropy",
        f"paths.data_dir={real_data}",
        "dataset.download=never",
        "trainer.max_epochs=25",
    )
    train(cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dataset"] == "climate" and summary["criterion"] == "grad_entropy"
    resolutions = [(p["rank"], p["resolution"]["ocean"]) for p in summary["phases"]]
    assert resolutions[0] == ("full", [4, 9])
    assert all(p["epochs"] >= 1 for p in summary["phases"])
    assert set(summary["baselines"]) == {"climatology", "persistence"}
    assert np.isfinite(summary["test"]["mse"])
    assert summary["data"]["train_samples"] > summary["data"]["test_samples"] > 0
    assert (tmp_path / "figures" / "factors_ocean.png").stat().st_size > 1000
