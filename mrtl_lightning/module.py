"""The LightningModule that trains a tensor model through every phase of an MRTL schedule.

One module serves the full-rank (eq. 1) and the low-rank (eq. 2) model: it holds the current
:class:`~mrtl_lightning.tensor_models.TensorModel` as ``self.tensor`` and the Finegrain
callback swaps that for a finegrained or decomposed one between epochs. Keeping one module
keeps the global step, the loggers, the learning-rate schedule and the checkpoint lineage
continuous across moves, which two LightningModules handed over between ``fit`` calls would
not.

Loss: sigmoid with class-weighted binary cross-entropy (weights ``N / (2 N_c)`` from the
training split) for classification, MSE for regression; plus ``λ_l2 · L2 + λ_s · Σ_s R_s``
(eqs. 3–4, normalised per :mod:`mrtl_lightning.regularizers`). Metrics are accumulated as sums
over the epoch and reduced over DDP processes once, so they are exact whatever the sharding.

The learning rate decays by ``γ`` every epoch from the start of the current rank (full or low),
continuing across finegraining; the switch to low rank starts from the low-rank rate. Weights of
dense (averaged-field) modes shrink by ``D_r / D_{r+1}`` at every bilinear finegraining, so
their learning rate is scaled by ``D_start / D`` (``D_start``: the mode's cells when the rank
began). Adam's steps have the size of the learning rate whatever the gradient's scale, so this
is Adam on the resolution-invariant ``D · W``; without it the first steps after a move are far
larger, relative to the weights, than the last ones before it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from mrtl_lightning.modes import Resolution, TensorSpec
from mrtl_lightning.tensor_models import CPTensor, FullRankTensor, TensorModel

# Sums accumulated over an epoch, in this order.
_SUMS = ("loss", "weight", "squared_error", "count", "tp", "fp", "fn")


class MRTLModule(pl.LightningModule):
    """Trains ``y = a(<W, X> + b)`` with ``W`` full rank or CP, at a changeable resolution.

    Args:
        spec: the data's modes and task.
        rank: "full" or "low": the model of the first phase.
        resolution: the first phase's grids.
        masks: (rows, cols) bool per spatial mode at ``resolution`` (None: no masked cells).
        cp_rank: number K of latent factors of the low-rank model.
        sigma: RBF kernel width of eq. 4 (distances in fractions of the domain).
        lr_decay: learning-rate decay ``γ`` per epoch.
        full_rank, low_rank: {"lr", "l2", "spatial"} of each phase's optimisation.
        init_scale: scale of the random initialisation.
        fused_optimizer: use the fused Adam kernel (one pass over all parameters).
        class_weights: (2,) loss weights of the negative and positive class (classification).
        seed: seed of the random initialisation.
    """

    def __init__(
        self,
        spec: TensorSpec,
        rank: str,
        resolution: Resolution,
        masks: Mapping[str, torch.Tensor | None] | None = None,
        cp_rank: int = 5,
        sigma: float = 0.05,
        lr_decay: float = 0.95,
        full_rank: Mapping[str, float] | None = None,
        low_rank: Mapping[str, float] | None = None,
        init_scale: float = 0.01,
        fused_optimizer: bool = True,
        class_weights: torch.Tensor | None = None,
        seed: int = 0,
    ):
        super().__init__()
        if cp_rank < 1:
            raise ValueError(f"model.cp_rank is {cp_rank}; the CP rank must be at least 1")
        if not 0 < lr_decay <= 1:
            raise ValueError(f"model.lr_decay is {lr_decay}; use a decay factor in (0, 1]")
        self.spec = spec
        self.cp_rank = cp_rank
        self.sigma = sigma
        self.lr_decay = lr_decay
        defaults = {"lr": 0.01, "l2": 0.0, "spatial": 0.0}
        self.optimisation = {
            "full": {**defaults, **dict(full_rank or {})},
            "low": {**defaults, **dict(low_rank or {})},
        }
        self.init_scale = init_scale
        self.fused_optimizer = fused_optimizer
        self.seed = seed
        if spec.task == "classification":
            weights = torch.ones(2) if class_weights is None else torch.as_tensor(class_weights)
            self.register_buffer("class_weights", weights.float())
        self.tensor: TensorModel = self.build_tensor(rank, resolution, masks, init_scale)
        self.rank_start_epoch = 0
        self.reference_cells = self.dense_cells()
        self.last_metrics: dict[str, float] = {}
        self._sums: dict[str, torch.Tensor] = {}

    # ----- structure --------------------------------------------------------------------------

    def build_tensor(self, rank, resolution, masks, init_scale) -> TensorModel:
        generator = torch.Generator().manual_seed(self.seed)
        if rank == "full":
            return FullRankTensor(self.spec, resolution, masks, init_scale, generator)
        if rank == "low":
            return CPTensor(self.spec, resolution, masks, self.cp_rank, init_scale, generator)
        raise ValueError(f"rank {rank!r} is not 'full' or 'low'")

    @property
    def rank(self) -> str:
        return "low" if isinstance(self.tensor, CPTensor) else "full"

    @property
    def resolution(self) -> Resolution:
        return dict(self.tensor.resolution)

    def replace_tensor(self, tensor: TensorModel, next_epoch: int) -> None:
        """Swap in a finegrained or decomposed model; the optimiser must be rebuilt after."""
        rank_changes = isinstance(tensor, CPTensor) != isinstance(self.tensor, CPTensor)
        self.tensor = tensor
        if rank_changes:
            self.rank_start_epoch = next_epoch
            self.reference_cells = self.dense_cells()

    def dense_cells(self) -> dict[str, int]:
        """Number of cells of every dense spatial mode at the current resolution."""
        return {mode.name: self.tensor.num_cells(mode.name) for mode in self.spec.dense_modes}

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser groups with their ``lr_scale``: ``D_start / D`` for dense spatial weights."""
        ratio = {
            name: cells / self.tensor.num_cells(name)
            for name, cells in self.reference_cells.items()
        }
        bias = list(self.tensor.bias.parameters())
        if isinstance(self.tensor, CPTensor):
            groups = [
                {"params": [factor], "lr_scale": ratio.get(name, 1.0)}
                for name, factor in self.tensor.factors.items()
            ]
        else:
            scale = 1.0
            for value in ratio.values():
                scale *= value
            groups = [{"params": [self.tensor.weight], "lr_scale": scale}]
        groups.append({"params": bias, "lr_scale": 1.0})
        # One group per distinct scale: the fused Adam kernel runs once per group.
        merged: dict[float, list] = {}
        for group in groups:
            merged.setdefault(group["lr_scale"], []).extend(group["params"])
        return [{"params": params, "lr_scale": scale} for scale, params in merged.items()]

    # ----- loss -------------------------------------------------------------------------------

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """(batch,) predictions: probabilities (classification) or values (regression)."""
        scores = self.tensor(batch)
        return torch.sigmoid(scores) if self.spec.task == "classification" else scores

    def sample_losses(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(batch,) class-weighted cross-entropy of the logits, or squared error."""
        if self.spec.task == "classification":
            weights = self.class_weights[target.long()]
            return weights * F.binary_cross_entropy_with_logits(scores, target, reduction="none")
        return (scores - target) ** 2

    def data_loss(self, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The mean data loss of a batch (what training minimises, before the penalties)."""
        return self.sample_losses(scores, target).mean()

    def training_step(self, batch, batch_idx):
        scores = self.tensor(batch)
        # The penalties' gradients are added in backward(); their values are logged per epoch.
        losses = self.sample_losses(scores, batch["target"])
        # Logged once per epoch from running sums: per-step logging costs more than a step.
        self._accumulate("train", scores.detach(), batch["target"], losses.detach())
        return losses.mean()

    def backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        """Backward of the data loss, then the regularisers' gradients added in place.

        The penalties are deterministic functions of weights that are identical on every DDP
        process, so adding their gradient after the data gradient's all-reduce is exact, and it
        keeps two full-size kernel passes and their temporaries out of the autograd graph.
        """
        loss.backward(*args, **kwargs)
        hp = self.optimisation[self.rank]
        if hp["l2"] or hp["spatial"]:
            self.tensor.add_penalty_gradients(hp["l2"], hp["spatial"], self.sigma)

    def validation_step(self, batch, batch_idx):
        self._evaluate("val", batch)

    def test_step(self, batch, batch_idx):
        self._evaluate("test", batch)

    def _evaluate(self, stage: str, batch) -> None:
        scores, target = self.tensor(batch), batch["target"]
        self._accumulate(stage, scores, target, self.sample_losses(scores, target))

    # ----- metrics ----------------------------------------------------------------------------

    def _accumulate(self, stage: str, scores, target, losses: torch.Tensor) -> None:
        """Add a batch to the epoch's sums (a handful of tensor ops, no host synchronisation)."""
        with torch.no_grad():
            loss = losses.sum()
            count = torch.full_like(loss, target.numel())
            if self.spec.task == "classification":
                # Confusion counts in one pass: code 2·predicted + positive → tn, fn, fp, tp.
                code = (scores > 0).long() * 2 + (target > 0.5).long()
                tn, fn, fp, tp = torch.bincount(code, minlength=4).to(loss.dtype)
                weight = self.class_weights[target.long()].sum()
                stacked = torch.stack([loss, weight, torch.zeros_like(loss), count, tp, fp, fn])
            else:
                zero = torch.zeros_like(loss)
                stacked = torch.stack([loss, count, loss, count, zero, zero, zero])
        if stage in self._sums:
            self._sums[stage] += stacked
        else:
            self._sums[stage] = stacked

    def _reduce(self, stage: str) -> dict[str, float]:
        """Epoch metrics of ``stage`` from the sums, reduced over every DDP process."""
        sums = self._sums.pop(stage, None)
        if sums is None:
            sums = torch.zeros(len(_SUMS), device=self.device)
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum") if self._trainer else sums
        total = dict(zip(_SUMS, sums.tolist()))
        metrics = {"loss": total["loss"] / max(total["weight"], 1e-12)}
        if self.spec.task == "classification":
            tp, fp, fn = total["tp"], total["fp"], total["fn"]
            precision = tp / (tp + fp) if tp + fp else 0.0
            recall = tp / (tp + fn) if tp + fn else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            metrics.update(f1=f1, precision=precision, recall=recall)
        else:
            metrics["mse"] = total["squared_error"] / max(total["count"], 1.0)
        return metrics

    def _log_epoch(self, stage: str) -> dict[str, float]:
        metrics = self._reduce(stage)
        # Already reduced over processes: no sync_dist needed.
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, on_epoch=True)
        self.last_metrics.update({f"{stage}/{k}": v for k, v in metrics.items()})
        return metrics

    def on_train_epoch_start(self) -> None:
        hp = self.optimisation[self.rank]
        lr = hp["lr"] * self.lr_decay ** (self.current_epoch - self.rank_start_epoch)
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
        self.log("lr", lr, on_epoch=True)

    def on_train_epoch_end(self) -> None:
        if "train" in self._sums:  # not logged yet: this epoch ran no validation
            self._log_epoch("train")
        with torch.no_grad():
            l2, spatial = self.tensor.penalties(self.sigma)
        hp = self.optimisation[self.rank]
        penalties = {
            "train/l2_penalty": hp["l2"] * float(l2),
            "train/spatial_penalty": hp["spatial"] * float(spatial),
        }
        self.log_dict(penalties, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._sums.pop("val", None)
            return
        # Validation runs before on_train_epoch_end: log the finished training epoch here so
        # that the Finegrain callback's record of this epoch holds this epoch's train metrics.
        if "train" in self._sums:
            self._log_epoch("train")
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # ----- optimisation -----------------------------------------------------------------------

    def configure_optimizers(self):
        hp = self.optimisation[self.rank]
        groups = self.parameter_groups()
        for group in groups:
            group["lr"] = hp["lr"] * group["lr_scale"]
        return torch.optim.Adam(groups, lr=hp["lr"], fused=self.fused_optimizer)

    # ----- checkpoints ------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["mrtl_structure"] = {
            "rank": self.rank,
            "resolution": {name: list(grid) for name, grid in self.resolution.items()},
            "rank_start_epoch": self.rank_start_epoch,
            "reference_cells": self.reference_cells,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Rebuild the model of the checkpoint's phase so its weights fit (called before load)."""
        structure = checkpoint["mrtl_structure"]
        resolution = {name: tuple(grid) for name, grid in structure["resolution"].items()}
        state = checkpoint["state_dict"]
        masks = {
            mode.name: state.get(f"tensor.mask_{mode.name}") for mode in self.spec.spatial_modes
        }
        self.tensor = self.build_tensor(structure["rank"], resolution, masks, 0.0).to(self.device)
        self.rank_start_epoch = structure["rank_start_epoch"]
        self.reference_cells = dict(structure["reference_cells"])
