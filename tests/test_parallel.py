"""DDP on CPU processes, Hydra multirun (alone and with DDP), sweeps, report and W&B offline."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, compose_config
from mrtl_lightning.report import report
from mrtl_lightning.train import train

SMALL = [
    "dataset=synthetic_regression",
    "dataset.num_samples=1200",
    "trainer.max_epochs=40",
    "trainer.enable_progress_bar=false",
]


def run_app(*args, timeout=300):
    """``python -m mrtl_lightning <args>`` in a fresh process; fails the test on error."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "WANDB_MODE": "offline"}
    result = subprocess.run(
        [sys.executable, "-m", "mrtl_lightning", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def phase_sequence(summary):
    return [(p["rank"], p["resolution"]) for p in summary["phases"]]


def test_ddp_sim_moves_every_rank_together_like_one_process(tmp_path):
    single = train(compose_config(tmp_path / "single", *SMALL, "logger=none"))
    run_app(*SMALL, "trainer=ddp_sim", "logger=csv", f"hydra.run.dir={tmp_path / 'ddp'}")

    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert phase_sequence(summary) == phase_sequence(single)
    assert len(summary["parameter_checksums"]) == len(summary["moves"]) >= 3
    for checksums in summary["parameter_checksums"]:
        assert len(checksums) == 2 and checksums[0] == checksums[1]
    # One output directory: no per-process Hydra directories, one summary.
    assert list((tmp_path / "ddp").rglob("summary.json")) == [tmp_path / "ddp" / "summary.json"]
    assert not list((tmp_path / "ddp").rglob(".pl_hydra*"))


def test_multirun_with_ddp_and_the_report(tmp_path):
    sweep = tmp_path / "sweep"
    run_app(
        "-m",
        *SMALL,
        "trainer=ddp_sim",
        "method=mrtl,fixed",
        "logger=none",
        f"hydra.sweep.dir={sweep}",
    )
    summaries = sorted(sweep.rglob("summary.json"))
    assert [p.parent.name for p in summaries] == ["0", "1"]

    written = report(sweep)
    table = written["markdown"].read_text()
    assert (
        "| synthetic_regression | fixed |" in table and "| synthetic_regression | mrtl |" in table
    )
    assert written["csv"].exists() and written["loss_vs_time"].exists()


def test_optuna_sweeper_runs_two_trials(tmp_path):
    sweep = tmp_path / "optuna"
    result = run_app(
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        *SMALL,
        "dataset.num_samples=600",
        "logger=none",
        "figures=false",
        f"hydra.sweep.dir={sweep}",
    )
    assert len(list(sweep.rglob("summary.json"))) == 2
    assert (sweep / "optimization_results.yaml").exists()
    assert "Best value" in result.stdout + result.stderr


def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path):
    sweep = tmp_path / "joblib"
    run_app(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        *SMALL,
        "dataset.num_samples=600",
        "seed=0,1",
        "logger=none",
        "figures=false",
        f"hydra.sweep.dir={sweep}",
    )
    assert len(list(sweep.rglob("summary.json"))) == 2


def test_wandb_offline_writes_run_files_with_images(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_config(
        tmp_path, *SMALL, "logger=wandb", "logger.wandb.name=test", "logger.wandb.group=tests"
    )
    train(cfg)
    runs = list(tmp_path.rglob("offline-run-*"))
    assert runs, "no offline W&B run directory"
    run = runs[0]
    images = list(run.rglob("media/images/*.png"))
    assert len(images) >= 2, sorted(p.name for p in run.rglob("*"))
    # Offline runs keep config, metrics and summary in the binary transaction log.
    (log,) = run.glob("*.wandb")
    records = log.read_bytes()
    for expected in (b"synthetic_regression", b"val/loss", b"finegrain/phase", b"finegrain/move_1"):
        assert expected in records, expected


@pytest.mark.parametrize("launcher", ["submitit_slurm"])
def test_cluster_launcher_config_composes(tmp_path, launcher):
    result = run_app(f"hydra/launcher={launcher}", "--cfg", "hydra", "--package", "hydra.launcher")
    assert "submitit" in result.stdout
