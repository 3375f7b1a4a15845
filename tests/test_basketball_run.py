"""The basketball model end to end on schema-faithful SportVU fixtures joined with real pbp."""

import json

import pytest
import torch

from basketball_fixtures import pbp_dir, write_fixture
from conftest import compose_config
from datamodules.basketball import BasketballDataModule
from mrtl_lightning.module import MRTLModule
from mrtl_lightning.train import train


@pytest.fixture(scope="module")
def games(tmp_path_factory):
    directory = tmp_path_factory.mktemp("games")
    write_fixture(directory)
    return directory


@pytest.mark.parametrize("rank", ["full", "low"])
def test_nearest_finegrain_keeps_basketball_outputs(games, tmp_path, rank):
    datamodule = BasketballDataModule(
        str(games), str(pbp_dir()), cache_dir=str(tmp_path), min_handler_samples=20
    )
    datamodule.setup()
    for coarse, fine in [
        ({"court": (4, 5), "defenders": (6, 6)}, {"court": (8, 10), "defenders": (12, 12)}),
        ({"court": (8, 10), "defenders": (12, 12)}, {"court": (40, 50), "defenders": (12, 12)}),
    ]:
        module = MRTLModule(datamodule.spec, rank, coarse, cp_rank=4, init_scale=0.5, seed=2)
        datamodule.set_resolution(coarse)
        before = module.tensor(whole_split(datamodule))
        module.replace_tensor(module.tensor.finegrained(fine), next_epoch=1)
        datamodule.set_resolution(fine)
        assert torch.equal(before, module.tensor(whole_split(datamodule)))


def whole_split(datamodule, split="train"):
    dataset = datamodule.dataset(split)
    return dataset[torch.arange(len(dataset))]


def test_basketball_run_writes_a_complete_summary(games, tmp_path):
    cfg = compose_config(
        tmp_path,
        "dataset=basketball",
        f"dataset.games_dir={games}",
        f"dataset.pbp_dir={pbp_dir()}",
        "dataset.min_handler_samples=20",
        "dataset.workers=0",
        "dataset.batch_size=64",
        "model.cp_rank=4",
        "trainer.max_epochs=40",
        "logger=csv",
    )
    train(cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dataset"] == "basketball"
    assert [p["resolution"] for p in summary["phases"]] == [
        {"court": [4, 5], "defenders": [6, 6]},
        {"court": [8, 10], "defenders": [6, 6]},
        {"court": [8, 10], "defenders": [12, 12]},
        {"court": [8, 10], "defenders": [12, 12]},
        {"court": [20, 25], "defenders": [12, 12]},
        {"court": [40, 50], "defenders": [12, 12]},
    ]
    assert set(summary["test"]) >= {"loss", "f1", "precision", "recall"}
    assert set(summary["morans_i"]) == {"court", "defenders"}
    for name in ("factors_court.png", "factors_defenders.png", "loss_vs_time.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 1000
