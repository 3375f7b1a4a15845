"""Every config group composes, and bad configurations fail before training with a clear fix."""

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, InstantiationException

from conftest import CONF, compose_config
from mrtl_lightning.train import build, train

GROUPS = ["dataset", "method", "criterion", "trainer", "logger", "experiment", "hparams_search"]


def options(group):
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "override", [f"{group}={name}" for group in GROUPS for name in options(group)]
)
def test_every_group_option_composes(tmp_path, override):
    cfg = compose_config(tmp_path, override)
    assert cfg.model.cp_rank >= 1
    assert cfg.schedule.low_rank


@pytest.mark.parametrize("method", options("method"))
@pytest.mark.parametrize("criterion", options("criterion"))
def test_every_method_and_criterion_builds(tmp_path, method, criterion):
    cfg = compose_config(
        tmp_path,
        "dataset=synthetic_regression",
        "dataset.num_samples=200",
        f"method={method}",
        f"criterion={criterion}",
        "logger=none",
    )
    datamodule, model, finegrain, trainer = build(cfg)
    assert finegrain.phases[-1].rank == "low"
    assert model.rank == finegrain.phases[0].rank


def test_real_datasets_build(tmp_path, real_data):
    cfg = compose_config(
        tmp_path,
        "dataset=climate",
        "logger=none",
        "dataset.download=never",
        f"paths.data_dir={real_data}",
    )
    datamodule, model, finegrain, _ = build(cfg)
    assert [p.resolution["ocean"] for p in finegrain.phases][-1] == (40, 90)


def test_unknown_group_choice_names_the_options(tmp_path):
    with pytest.raises(ConfigCompositionException) as error:
        compose_config(tmp_path, "criterion=grad_entrpy")
    assert "grad_entrpy" in str(error.value) and "grad_entropy" in str(error.value)


def bad_run(tmp_path: Path, *overrides: str):
    cfg = compose_config(
        tmp_path,
        "dataset=synthetic_regression",
        "dataset.num_samples=200",
        "logger=none",
        *overrides,
    )
    # Hydra wraps errors raised by the objects it instantiates; the message is kept.
    with pytest.raises((ValueError, InstantiationException)) as error:
        train(cfg)
    assert not (tmp_path / "checkpoints").exists(), "failed after training started"
    return str(error.value)


def test_schedule_that_does_not_refine(tmp_path):
    message = bad_run(tmp_path, "schedule.full_rank=[{ocean:[8,16]},{ocean:[4,8]}]")
    assert "does not refine" in message and "coarse to fine" in message


def test_schedule_finer_than_the_data(tmp_path):
    message = bad_run(tmp_path, "schedule.low_rank=[{ocean:[8,16]},{ocean:[32,64]}]")
    assert "32×64" in message and "native grid" in message


def test_schedule_naming_a_wrong_mode(tmp_path):
    message = bad_run(tmp_path, "schedule.full_rank=[{court:[4,8]}]")
    assert "court" in message and "ocean" in message


def test_cp_rank_below_one(tmp_path):
    message = bad_run(tmp_path, "model.cp_rank=0")
    assert "model.cp_rank" in message


def test_criterion_name_that_does_not_match_its_class(tmp_path):
    message = bad_run(tmp_path, "criterion.name=grad_norm")
    assert "grad_norm" in message


def test_negative_patience(tmp_path):
    assert "patience" in bad_run(tmp_path, "criterion.patience=0")
