"""End-to-end runs on the synthetic data: recovery, interpretability, outputs and resume."""

import json
import logging

import pytest
import torch

from conftest import compose_config
from mrtl_lightning.train import train

REGRESSION = ("dataset=synthetic_regression", "logger=none")


@pytest.fixture(scope="module")
def regression_runs(tmp_path_factory):
    """MRTL and the random-initialisation baseline on the same synthetic regression data."""
    runs = {}
    for method in ("mrtl", "random"):
        output = tmp_path_factory.mktemp(method)
        runs[method] = (train(compose_config(output, *REGRESSION, f"method={method}")), output)
    return runs


def test_mrtl_recovers_the_planted_factors(regression_runs):
    summary, _ = regression_runs["mrtl"]
    congruence = summary["planted_congruence"]
    assert congruence["mean"] >= 0.9, congruence
    assert min(congruence["per_mode"].values()) >= 0.85, congruence


def test_mrtl_factors_are_more_spatially_coherent_than_random(regression_runs):
    mrtl = regression_runs["mrtl"][0]["morans_i"]["ocean"]["mean"]
    random = regression_runs["random"][0]["morans_i"]["ocean"]["mean"]
    assert mrtl > random + 0.3, (mrtl, random)


def test_summary_and_figures_are_complete(regression_runs):
    summary, output = regression_runs["mrtl"]
    written = json.loads((output / "summary.json").read_text())
    for key in (
        "method",
        "dataset",
        "criterion",
        "seed",
        "phases",
        "total_train_time_s",
        "test",
        "morans_i",
        "baselines",
    ):
        assert key in written, key
    assert [p["rank"] for p in written["phases"]] == ["full", "full", "low", "low"]
    assert [p["resolution"]["ocean"] for p in written["phases"]] == [
        [4, 8],
        [8, 16],
        [8, 16],
        [16, 32],
    ]
    for phase in written["phases"]:
        assert phase["epochs"] >= 1 and phase["wall_time_s"] > 0
        assert phase["end_reason"] in ("criterion", "cap", "max_epochs")
    assert written["test"]["mse"] < written["baselines"]["zero"]["mse"]
    # Phases tile the run: moves (CP-ALS included) count towards the phase they prepare.
    last_validation = written["history"][-1]["wall_time_s"]
    assert written["total_train_time_s"] == pytest.approx(last_validation, abs=0.05)
    for name in ("factors_ocean.png", "loss_vs_time.png"):
        assert (output / "figures" / name).stat().st_size > 1000
    assert (output / "checkpoints" / "last.ckpt").exists()
    full_to_low = [m for m in written["moves"] if "cp_relative_error" in m]
    assert len(full_to_low) == 1


def test_default_classification_run_recovers_factors_and_logs_each_move(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    summary = train(compose_config(tmp_path))  # exactly what `make run` trains
    assert summary["planted_congruence"]["mean"] >= 0.9, summary["planted_congruence"]
    lines = [r.message for r in caplog.records if "finegrain" in r.message and "→" in r.message]
    assert len(lines) == len(summary["moves"]) == len(summary["phases"]) - 1
    assert set(summary["test"]) >= {"loss", "f1", "precision", "recall"}
    assert set(summary["morans_i"]) == {"court", "defenders"}
    assert (tmp_path / "csv" / "metrics.csv").exists()


def test_resumed_run_ends_at_the_same_resolution_sequence(tmp_path):
    overrides = (
        *REGRESSION,
        "dataset.num_samples=1200",
        "checkpoint.save_top_k=-1",
        "+checkpoint.filename='{epoch}'",
        "trainer.max_epochs=40",
    )
    whole = train(compose_config(tmp_path / "whole", *overrides))
    first_move = whole["moves"][0]["epoch"]
    checkpoint = tmp_path / "whole" / "checkpoints" / f"epoch={first_move + 1}.ckpt"
    assert checkpoint.exists()
    stored = torch.load(checkpoint, weights_only=False)
    assert stored["mrtl_structure"]["resolution"] == {"ocean": [8, 16]}

    resumed = train(compose_config(tmp_path / "resumed", *overrides, f"ckpt_path='{checkpoint}'"))
    sequence = [(p["rank"], p["resolution"]) for p in whole["phases"]]
    assert [(p["rank"], p["resolution"]) for p in resumed["phases"]] == sequence
    assert [m["epoch"] for m in resumed["moves"]] == [m["epoch"] for m in whole["moves"]]


def test_epoch_cap_moves_on_when_the_criterion_does_not(tmp_path):
    cfg = compose_config(
        tmp_path,
        *REGRESSION,
        "dataset.num_samples=600",
        "criterion.patience=50",
        "finegrain.max_epochs_per_resolution=2",
        "figures=false",
    )
    summary = train(cfg)
    assert [p["epochs"] for p in summary["phases"]] == [2, 2, 2, 2]
    assert {p["end_reason"] for p in summary["phases"]} == {"cap"}
    assert [h["epoch"] for h in summary["history"]] == list(range(8))


def test_run_stopped_by_max_epochs_resumes_from_last_checkpoint(tmp_path):
    overrides = (*REGRESSION, "dataset.num_samples=1200", "figures=false")
    whole = train(compose_config(tmp_path / "whole", *overrides, "trainer.max_epochs=40"))
    stop = whole["moves"][0]["epoch"] + 3  # in the middle of the second phase
    cut = train(compose_config(tmp_path / "cut", *overrides, f"trainer.max_epochs={stop}"))
    assert cut["phases"][-1]["end_reason"] == "max_epochs"
    assert len(cut["phases"]) == 2

    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    resumed = train(
        compose_config(
            tmp_path / "resumed", *overrides, "trainer.max_epochs=40", f"ckpt_path='{last}'"
        )
    )
    assert [(p["rank"], p["resolution"], p["epochs"]) for p in resumed["phases"]] == [
        (p["rank"], p["resolution"], p["epochs"]) for p in whole["phases"]
    ]
    assert [m["step"] for m in resumed["moves"]] == [m["step"] for m in whole["moves"]]
    assert [h["epoch"] for h in resumed["history"]] == [h["epoch"] for h in whole["history"]]
    assert resumed["test"]["mse"] == pytest.approx(whole["test"]["mse"], rel=1e-5)
