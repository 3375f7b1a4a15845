"""One training run from a fully resolved config: build, check, fit, test, report.

``train`` never reads Hydra's global state, so the same function serves the Hydra app, every
DDP worker process and the tests (which compose configs with Hydra's compose API).
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger

from mrtl_lightning.analysis import congruence, factor_morans_i
from mrtl_lightning.figures import factor_heatmaps, loss_curves
from mrtl_lightning.schedule import check_phases

log = logging.getLogger(__name__)

# Metrics are reduced over processes by the module itself before they are logged, so
# Lightning's advice to add sync_dist=True does not apply.
warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
# CP-ALS's SVD initialisation asks for more singular vectors than a small mode has (rank 5 of
# a single-variable mode) and tensorly fills the rest at random, as intended.
warnings.filterwarnings("ignore", message="Trying to compute SVD with n_eigenvecs")


def build(cfg: DictConfig):
    """Instantiate and cross-check datamodule, model, callbacks, loggers and trainer.

    Every configuration mistake that can be seen before training raises ``ValueError`` here,
    naming the value and the fix.
    """
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.dataset)
    datamodule.setup("fit")
    spec = datamodule.spec

    phases = instantiate(cfg.method.schedule)(cfg.schedule.full_rank, cfg.schedule.low_rank)
    check_phases(phases)
    for phase in phases:
        try:
            datamodule.check_resolution(phase.resolution)
        except ValueError as error:
            raise ValueError(
                f"schedule resolution {dict(phase.resolution)} does not fit the data of "
                f"dataset {type(datamodule).__name__}: {error}"
            ) from error
    first = phases[0]
    datamodule.set_resolution(first.resolution)
    masks = {name: datamodule.mask(name, grid) for name, grid in first.resolution.items()}

    class_weights = None
    if spec.task == "classification":
        targets = datamodule.targets("train")
        positives = float(targets.sum())
        if positives == 0 or positives == len(targets):
            raise ValueError(
                f"the training split has {int(positives)} positives out of {len(targets)}; "
                "classification needs both classes (check the data or the split)"
            )
        # w_c = N / (2 N_c): both classes weigh the same in the loss.
        class_weights = torch.tensor(
            [len(targets) / (2 * (len(targets) - positives)), len(targets) / (2 * positives)]
        )
    model = instantiate(cfg.model)(
        spec=spec,
        rank=first.rank,
        resolution=first.resolution,
        masks=masks,
        class_weights=class_weights,
        seed=cfg.seed,
    )
    criterion = instantiate(cfg.criterion)
    finegrain = instantiate(cfg.finegrain)(criterion=criterion, phases=phases, seed=cfg.seed)
    callbacks = [finegrain, instantiate(cfg.checkpoint)]
    loggers = [instantiate(conf) for conf in (cfg.logger or {}).values()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, model, finegrain, trainer


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train one run; on rank zero write ``summary.json`` and figures. Returns the summary."""
    output_dir = Path(cfg.paths.output_dir)
    datamodule, model, finegrain, trainer = build(cfg)
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    fit_seconds = time.perf_counter() - started
    test_metrics = trainer.test(model, datamodule=datamodule, verbose=False)[0]

    summary = summarise(cfg, datamodule, model, finegrain, test_metrics, fit_seconds)
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        if cfg.get("figures", True):
            summary["figures"] = draw_figures(datamodule, model, finegrain, output_dir / "figures")
            log_images(trainer, summary["figures"])
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=_jsonable))
        log.info("summary: %s", output_dir / "summary.json")
        finish_loggers(trainer, summary)
    return summary


def finish_loggers(trainer: pl.Trainer, summary: dict[str, Any]) -> None:
    """Close W&B runs so that each job of a sweep gets its own run, with the summary attached."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            run.summary.update(
                {
                    "total_train_time_s": summary["total_train_time_s"],
                    "best_val_loss": summary["best_val_loss"],
                    **{f"test/{key}": value for key, value in summary["test"].items()},
                }
            )
            run.finish()


def summarise(cfg, datamodule, model, finegrain, test_metrics, fit_seconds) -> dict[str, Any]:
    """Everything ``summary.json`` reports about a finished run."""
    record = finegrain.summary()
    summary: dict[str, Any] = {
        "method": cfg.method.name,
        "dataset": cfg.get("dataset_name") or cfg.dataset._target_.rsplit(".", 1)[-1],
        "criterion": cfg.criterion.get("name", cfg.criterion._target_.rsplit(".", 1)[-1]),
        "seed": cfg.seed,
        "phases": record["phases"],
        "total_train_time_s": sum(p["wall_time_s"] for p in record["phases"]),
        "fit_wall_time_s": fit_seconds,
        "test": {key.removeprefix("test/"): value for key, value in test_metrics.items()},
        "best_val_loss": min((p["best_val_loss"] for p in record["phases"]), default=math.nan),
        "final_val_loss": model.last_metrics.get("val/loss", math.nan),
        "morans_i": {},
        "moves": record["moves"],
        "parameter_checksums": record["parameter_checksums"],
        "history": record["history"],
        "data": datamodule.describe(),
    }
    if model.rank == "low":
        for mode, images in model.tensor.spatial_factors().items():
            values = factor_morans_i(images.numpy())
            summary["morans_i"][mode] = {"mean": float(np.nanmean(values)), "factors": values}

    baselines = datamodule.baselines("test")
    if baselines:
        targets = datamodule.targets("test")
        summary["baselines"] = {
            name: {"mse": float(((prediction - targets) ** 2).mean())}
            for name, prediction in baselines.items()
        }
    if hasattr(datamodule, "planted_factors") and model.rank == "low":
        learned = {
            name: model.tensor.flat_factor(name).detach().cpu().numpy()
            for name in model.tensor.factors
        }
        summary["planted_congruence"] = congruence(
            learned, datamodule.planted_factors(model.resolution)
        )
    return summary


def draw_figures(datamodule, model, finegrain, directory: Path) -> list[str]:
    paths = []
    if model.rank == "low":
        for mode, images in model.tensor.spatial_factors().items():
            path = factor_heatmaps(
                datamodule, mode, images.numpy(), directory / f"factors_{mode}.png"
            )
            paths.append(str(path))
    path = loss_curves(finegrain.history, finegrain.moves, directory / "loss_vs_time.png")
    paths.append(str(path))
    return paths


def log_images(trainer: pl.Trainer, paths: list[str]) -> None:
    """Send the figures to loggers that take images (W&B)."""
    for logger in trainer.loggers:
        if hasattr(logger, "log_image"):
            logger.log_image(key="figures", images=paths, caption=[Path(p).stem for p in paths])


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)
