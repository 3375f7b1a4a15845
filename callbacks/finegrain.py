"""The Finegrain callback: decides and performs every move of an MRTL schedule within one fit.

After each validation epoch the callback asks its criterion (paper §4.2) whether the current
resolution is exhausted. If so it moves to the next phase of the schedule:

* same rank: upsample the spatial weights (nearest or bilinear, per mode's encoding);
* full → low rank: CP-ALS of the full-rank ``W`` (tensorly), factors initialise the CP model,
  which is then finegrained if the next grids are finer;
* the datamodule moves to the new resolution (fresh dataloaders at the next epoch), and the
  optimiser is rebuilt for the new parameters (its state is reset: Adam's moments do not
  carry over to differently shaped weights).

At the last phase the same criterion ends training. Under DDP the criterion's statistic is
broadcast from rank zero and the decision reduced over ranks, so every process moves at the
same step; the new weights are broadcast from rank zero and the DDP wrapper is rebuilt.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import WandbLogger

from mrtl_lightning.criteria import Criterion
from mrtl_lightning.modes import format_resolution
from mrtl_lightning.schedule import Phase

log = logging.getLogger(__name__)


class Finegrain(Callback):
    """Moves training through ``phases`` when ``criterion`` says the current one is done.

    Args:
        criterion: when to move (:mod:`mrtl_lightning.criteria`).
        phases: the schedule (:mod:`mrtl_lightning.schedule`); the module and datamodule
            start at ``phases[0]``.
        max_epochs_per_resolution: move (or stop) after this many epochs at one phase even if
            the criterion has not acted; None: only the criterion decides.
        cp: keyword arguments of the CP-ALS at the switch to low rank
            (``n_iter_max``, ``tol``, ``init``).
        seed: random state of CP-ALS.
    """

    def __init__(
        self,
        criterion: Criterion,
        phases: Sequence[Phase],
        max_epochs_per_resolution: int | None = None,
        cp: dict | None = None,
        seed: int = 0,
    ):
        if max_epochs_per_resolution is not None and max_epochs_per_resolution < 1:
            raise ValueError(
                f"finegrain.max_epochs_per_resolution {max_epochs_per_resolution} must be >= 1 "
                "or null"
            )
        self.criterion = criterion
        self.phases = list(phases)
        self.max_epochs_per_resolution = max_epochs_per_resolution
        self.cp = dict(cp or {})
        self.seed = seed
        self.phase_index = 0
        self.phase_start_epoch = 0
        self.phase_start_time = 0.0
        self.history: list[dict[str, Any]] = []
        self.records: list[dict[str, Any]] = []
        self.moves: list[dict[str, Any]] = []
        self.checksums: list[list[float]] = []
        self.elapsed_before = 0.0  # wall time of earlier runs of a resumed fit
        self._clock_start = 0.0
        self._gradient_sum: torch.Tensor | None = None
        self._gradient_steps = 0

    @property
    def phase(self) -> Phase:
        return self.phases[self.phase_index]

    @property
    def finished(self) -> bool:
        return len(self.records) == len(self.phases)

    def elapsed(self) -> float:
        """Wall time since the fit started, including earlier runs of a resumed fit."""
        return self.elapsed_before + time.perf_counter() - self._clock_start

    # ----- lifecycle --------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Every move changes the data: the loops must ask for new dataloaders each epoch.
        trainer.reload_dataloaders_every_n_epochs = 1

    def on_fit_start(self, trainer, pl_module) -> None:
        self._clock_start = time.perf_counter()
        if not self.history:  # a fresh fit; a resumed one keeps its restored phase clock
            self.phase_start_time = self.elapsed()
        if trainer.is_global_zero:
            log.info(
                "training %s: %s (phase %d of %d)",
                "resumes" if self.history else "starts",
                self.phase.describe(),
                self.phase_index + 1,
                len(self.phases),
            )

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._gradient_sum = None
        self._gradient_steps = 0

    def on_after_backward(self, trainer, pl_module) -> None:
        if not self.criterion.needs_gradient:
            return
        gradients = [
            p.grad.reshape(-1) for p in pl_module.tensor.weight_parameters() if p.grad is not None
        ]
        if not gradients:
            return
        flat = torch.cat(gradients).detach()
        if self._gradient_sum is None:
            self._gradient_sum = flat.clone()
        else:
            self._gradient_sum += flat
        self._gradient_steps += 1

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.finished:
            return
        metrics = pl_module.last_metrics
        val_loss = metrics.get("val/loss", float("nan"))
        mean_gradient = None
        if self.criterion.needs_gradient and self._gradient_sum is not None:
            mean_gradient = self._gradient_sum / max(self._gradient_steps, 1)
        value = self.criterion.statistic(val_loss, mean_gradient)
        # One statistic for all processes: rank zero's, so criterion state stays identical.
        value = float(trainer.strategy.broadcast(value, src=0))
        act, reason = self.criterion.update(value)
        epochs_here = trainer.current_epoch - self.phase_start_epoch + 1
        capped = (
            self.max_epochs_per_resolution is not None
            and epochs_here >= self.max_epochs_per_resolution
        )
        end_reason = "criterion" if act else "cap"
        if capped and not act:
            reason = f"max_epochs_per_resolution {self.max_epochs_per_resolution} reached"
        act = trainer.strategy.reduce_boolean_decision(act or capped, all=True)

        self.history.append(
            {
                "epoch": trainer.current_epoch,
                "step": trainer.global_step,
                "wall_time_s": self.elapsed(),
                "phase": self.phase_index,
                "rank": self.phase.rank,
                "resolution": format_resolution(self.phase.resolution),
                "criterion": value,
                **{key: number for key, number in metrics.items() if not key.startswith("test/")},
            }
        )
        if not act:
            return
        self._close_phase(end_reason, reason)
        if self.phase_index + 1 < len(self.phases):
            self._move(trainer, pl_module, reason)
        else:
            trainer.should_stop = True
            if trainer.is_global_zero:
                log.info(
                    "epoch %d, step %d: training ends at %s: %s",
                    trainer.current_epoch,
                    trainer.global_step,
                    self.phase.describe(),
                    reason,
                )

    def on_train_end(self, trainer, pl_module) -> None:
        if not self.finished and trainer.is_global_zero:
            log.info(
                "training stopped by trainer.max_epochs=%s at %s before the schedule finished "
                "(phase %d of %d); resume with ckpt_path=... and a larger trainer.max_epochs",
                trainer.max_epochs,
                self.phase.describe(),
                self.phase_index + 1,
                len(self.phases),
            )

    # ----- moves ------------------------------------------------------------------------------

    def _phase_record(self, end_reason: str, detail: str) -> dict[str, Any]:
        """What ``summary.json`` says of the current phase, ended now (or at its last epoch)."""
        epochs = [h for h in self.history if h["phase"] == self.phase_index]
        # A phase ends with its last validation (moves and stops happen right after it).
        end_time = epochs[-1]["wall_time_s"] if epochs else self.phase_start_time
        last_epoch = epochs[-1]["epoch"] if epochs else self.phase_start_epoch - 1
        return {
            "rank": self.phase.rank,
            "resolution": {k: list(v) for k, v in self.phase.resolution.items()},
            "epochs": last_epoch - self.phase_start_epoch + 1,
            "wall_time_s": end_time - self.phase_start_time,
            "best_val_loss": min((h.get("val/loss", math.inf) for h in epochs), default=math.nan),
            "end_reason": end_reason,
            "detail": detail,
        }

    def _close_phase(self, end_reason: str, detail: str) -> None:
        self.records.append(self._phase_record(end_reason, detail))

    def _move(self, trainer: pl.Trainer, pl_module, reason: str) -> None:
        current = self.phase
        following = self.phases[self.phase_index + 1]
        datamodule = trainer.datamodule
        masks = {name: datamodule.mask(name, grid) for name, grid in following.resolution.items()}
        move = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "wall_time_s": self.elapsed(),
            "from": current.describe(),
            "to": following.describe(),
            "reason": reason,
        }
        tensor = pl_module.tensor
        if current.rank == "full" and following.rank == "low":
            tensor, error = tensor.decompose(pl_module.cp_rank, seed=self.seed, **self.cp)
            move["cp_relative_error"] = error
            reason = f"{reason}; CP-ALS rank {pl_module.cp_rank}, relative error {error:.4g}"
        tensor = tensor.finegrained(following.resolution, masks)
        pl_module.replace_tensor(tensor, next_epoch=trainer.current_epoch + 1)
        _broadcast_parameters(pl_module)

        datamodule.set_resolution(following.resolution)
        strategy = trainer.strategy
        if hasattr(strategy, "configure_ddp") and dist.is_available() and dist.is_initialized():
            # The DDP wrapper holds the old parameters: wrap the module anew.
            strategy.model = strategy.lightning_module
            strategy.configure_ddp()
        strategy.setup_optimizers(trainer)

        self.moves.append(move)
        self.checksums.append(_gather_checksums(pl_module))
        self.criterion.reset()
        self.phase_index += 1
        self.phase_start_epoch = trainer.current_epoch + 1
        # The next phase starts where this one ended (its last validation): the move itself
        # (CP-ALS, upsampling) counts towards the phase it prepares.
        self.phase_start_time = self.history[-1]["wall_time_s"]
        # Hooks after validation may not self.log: write the move to the loggers directly.
        for logger in trainer.loggers:
            logger.log_metrics(
                {"finegrain/phase": float(self.phase_index), "finegrain/epoch": move["epoch"]},
                step=trainer.global_step,
            )
        if trainer.is_global_zero:
            log.info(
                "epoch %d, step %d: finegrain %s → %s (%s)",
                move["epoch"],
                move["step"],
                move["from"],
                move["to"],
                reason,
            )
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):  # the move as a run summary entry too
                    logger.experiment.summary[f"finegrain/move_{len(self.moves)}"] = move

    # ----- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "phase_index": self.phase_index,
            "phase_start_epoch": self.phase_start_epoch,
            "phase_start_time": self.phase_start_time,
            "elapsed": self.elapsed() if self._clock_start else self.elapsed_before,
            "criterion": self.criterion.state_dict(),
            "history": self.history,
            "records": self.records,
            "moves": self.moves,
            "checksums": self.checksums,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.phase_index = state_dict["phase_index"]
        self.phase_start_epoch = state_dict["phase_start_epoch"]
        self.elapsed_before = state_dict["elapsed"]
        self.phase_start_time = state_dict["phase_start_time"]
        self.criterion.load_state_dict(state_dict["criterion"])
        self.history = list(state_dict["history"])
        self.records = list(state_dict["records"])
        self.moves = list(state_dict["moves"])
        self.checksums = list(state_dict["checksums"])

    def summary(self) -> dict[str, Any]:
        """Phases, moves and per-rank checksums for ``summary.json``."""
        phases = list(self.records)
        if not self.finished:  # stopped by trainer.max_epochs: the open phase ends there
            phases.append(self._phase_record("max_epochs", "trainer.max_epochs reached"))
        return {
            "phases": phases,
            "moves": self.moves,
            "history": self.history,
            "parameter_checksums": self.checksums,
        }


def _broadcast_parameters(module: torch.nn.Module) -> None:
    """Make every process hold rank zero's weights (CP-ALS may differ in the last bits)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def _gather_checksums(module: torch.nn.Module) -> list[float]:
    """Sum of all parameters on every process (one entry per rank) after a move."""
    checksum = torch.stack([p.detach().double().sum() for p in module.parameters()]).sum()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, checksum)
        return [float(c) for c in gathered]
    return [float(checksum)]
