"""Synthetic data drawn from planted, spatially smooth CP factors with a known ground truth.

Two shapes mirror the paper's applications, so every code path runs without downloads:

* :class:`SyntheticClassification` (the basketball shape): an entity, one court position
  (one-hot cell) and up to five defender positions (multi-hot cells) per sample; the label is
  drawn from ``sigmoid(Σ_k A[e, k] f_k(court) Σ_j g_k(defender_j) + b)``.
* :class:`SyntheticRegression` (the climate shape): smooth random fields over lag × variable
  × a lat-lon grid with a masked "continent"; the target is
  ``Σ_k a_k[lag] b_k[var] ∫ c_k(x) X(x) dx`` plus noise.

The spatial factors ``f_k``, ``g_k``, ``c_k`` are sums of Gaussian bumps: continuous functions
of position, so the planted factors at any grid are their values at the cell centres, and
:meth:`planted_factors` gives the ground truth that learned factors are compared with.
"""

from __future__ import annotations

import numpy as np
import torch

from datamodules.base import SPLITS, TensorBatchDataset, TensorDataModule
from mrtl_lightning.grids import cell_centres, conservative_regrid, discretise
from mrtl_lightning.modes import Grid, Resolution, SpatialMode, TensorSpec


def smooth_bumps(rng: np.random.Generator, cp_rank: int, bumps: int = 2, width: float = 0.18):
    """Random smooth functions of position, one per latent factor: sums of Gaussian bumps.

    Returns:
        A function mapping (..., 2) positions (fractions of the domain) to (..., cp_rank).
    """
    centres = rng.uniform(0.1, 0.9, size=(cp_rank, bumps, 2))
    signs = rng.choice([-1.0, 1.0], size=(cp_rank, bumps)) * rng.uniform(0.6, 1.0, (cp_rank, bumps))

    def evaluate(position: np.ndarray) -> np.ndarray:
        offset = position[..., None, None, :] - centres  # (..., K, bumps, 2)
        squared = (offset**2).sum(-1)
        return (signs * np.exp(-squared / (2 * width**2))).sum(-1)

    return evaluate


def grid_positions(grid: Grid) -> np.ndarray:
    """(rows * cols, 2) cell-centre positions of a grid in flat order."""
    rows, cols = np.meshgrid(
        cell_centres(grid[0]).numpy(), cell_centres(grid[1]).numpy(), indexing="ij"
    )
    return np.stack([rows.ravel(), cols.ravel()], axis=-1)


class SyntheticDataModule(TensorDataModule):
    """Shared parts: the seeded split and the planted ground truth.

    Args:
        num_samples: samples drawn in total.
        cp_rank: rank of the planted CP tensor.
        split: fractions of train, validation and test samples.
        batch_size, eval_batch_size, seed: see :class:`~datamodules.base.TensorDataModule`.
    """

    def __init__(self, num_samples, cp_rank, split=(0.7, 0.15, 0.15), **loader_kwargs):
        super().__init__(**loader_kwargs)
        if num_samples < 10:
            raise ValueError(f"num_samples {num_samples} is too small; draw at least 10")
        if len(split) != 3 or abs(sum(split) - 1.0) > 1e-6 or min(split) <= 0:
            raise ValueError(f"split {list(split)} must be three positive fractions summing to 1")
        self.num_samples = num_samples
        self.planted_rank = cp_rank
        self.split = tuple(split)
        self._prepared = False
        self._indices: dict[str, np.ndarray] = {}

    def setup(self, stage: str | None = None) -> None:
        if self._prepared:
            return
        rng = np.random.default_rng(self.seed)
        self.generate(rng)
        order = rng.permutation(self.num_samples)
        train_end = int(round(self.split[0] * self.num_samples))
        val_end = train_end + int(round(self.split[1] * self.num_samples))
        self._indices = dict(zip(SPLITS, np.split(order, [train_end, val_end])))
        self._prepared = True

    def generate(self, rng: np.random.Generator) -> None:
        raise NotImplementedError

    def targets(self, split: str) -> torch.Tensor:
        return torch.as_tensor(self.target[self._indices[split]], dtype=torch.float32)

    def planted_factors(self, resolution: Resolution) -> dict[str, np.ndarray]:
        """(mode size, cp_rank) planted factor of every mode, spatial ones at ``resolution``."""
        raise NotImplementedError

    def describe(self):
        info = super().describe()
        info["planted_rank"] = self.planted_rank
        if self.spec.task == "classification":
            info["positive_rate"] = float(self.target.mean())
        return info


class SyntheticClassification(SyntheticDataModule):
    """Entity × court cell (one-hot) × defender cells (multi-hot), labels from a planted CP model.

    Args:
        num_entities: number of entities (ball handlers).
        max_defenders: slots per sample of the multi-hot mode (each sample has 1 to this many).
        positive_rate: approximate fraction of positive labels (sets the planted bias).
        signal: scale of the planted scores (larger: labels depend more on the inputs).
    """

    def __init__(
        self,
        num_samples: int = 20000,
        num_entities: int = 20,
        cp_rank: int = 3,
        max_defenders: int = 5,
        positive_rate: float = 0.2,
        signal: float = 3.0,
        **kwargs,
    ):
        super().__init__(num_samples, cp_rank, **kwargs)
        self.num_entities = num_entities
        self.max_defenders = max_defenders
        self.positive_rate = positive_rate
        self.signal = signal

    @property
    def spec(self) -> TensorSpec:
        return TensorSpec(
            task="classification",
            entity_modes=(("entity", self.num_entities),),
            feature_modes=(),
            spatial_modes=(SpatialMode("court", "sparse"), SpatialMode("defenders", "sparse")),
        )

    def generate(self, rng):
        n, k = self.num_samples, self.planted_rank
        self.entity_factor = rng.normal(size=(self.num_entities, k))
        self.court_function = smooth_bumps(rng, k)
        self.defender_function = smooth_bumps(rng, k)
        self.entity = rng.integers(0, self.num_entities, size=n)
        self.court = rng.uniform(0, 1, size=(n, 2))
        self.defenders = rng.uniform(0, 1, size=(n, self.max_defenders, 2))
        count = rng.integers(1, self.max_defenders + 1, size=n)
        self.present = np.arange(self.max_defenders)[None, :] < count[:, None]

        defender_sum = (self.defender_function(self.defenders) * self.present[..., None]).sum(1)
        raw = (
            self.entity_factor[self.entity] * self.court_function(self.court) * defender_sum
        ).sum(1)
        scores = self.signal * raw / raw.std()
        bias = np.quantile(scores, 1 - self.positive_rate)
        probability = 1 / (1 + np.exp(-(scores - bias) * 2.0))
        self.target = (rng.uniform(size=n) < probability).astype(np.float32)

    def build_split(self, split: str, resolution: Resolution):
        index = self._indices[split]
        court = discretise(torch.as_tensor(self.court[index]), resolution["court"])
        defenders = discretise(torch.as_tensor(self.defenders[index]), resolution["defenders"])
        present = torch.as_tensor(self.present[index])
        return TensorBatchDataset(
            {
                "entity": torch.as_tensor(self.entity[index]).long()[:, None],
                "cells": {"court": court[:, None], "defenders": torch.where(present, defenders, 0)},
                "values": {
                    "court": torch.ones(len(index), 1),
                    "defenders": present.float(),
                },
                "target": self.targets(split),
            }
        )

    def planted_factors(self, resolution):
        return {
            "entity": self.entity_factor,
            "court": self.court_function(grid_positions(resolution["court"])),
            "defenders": self.defender_function(grid_positions(resolution["defenders"])),
        }


class SyntheticRegression(SyntheticDataModule):
    """Lag × variable × dense field, target from a planted CP model; a masked continent.

    Args:
        lags, variables: sizes of the two feature modes.
        native_grid: (rows, cols) of the generated fields; every schedule grid must be coarser
            or equal.
        noise: standard deviation of the target noise relative to the signal's.
    """

    def __init__(
        self,
        num_samples: int = 3000,
        lags: int = 4,
        variables: int = 3,
        native_grid: tuple[int, int] = (16, 32),
        cp_rank: int = 3,
        noise: float = 0.1,
        **kwargs,
    ):
        super().__init__(num_samples, cp_rank, **kwargs)
        self.lags = lags
        self.variables = variables
        self.native_grid = tuple(native_grid)
        self.noise = noise
        self._fields: dict[Grid, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def spec(self) -> TensorSpec:
        return TensorSpec(
            task="regression",
            entity_modes=(),
            feature_modes=(("lag", self.lags), ("variable", self.variables)),
            spatial_modes=(SpatialMode("ocean", "dense"),),
        )

    def generate(self, rng):
        n, k = self.num_samples, self.planted_rank
        rows, cols = self.native_grid
        positions = grid_positions(self.native_grid)
        # Smooth random fields: random combinations of low-frequency Fourier modes plus noise.
        frequencies = [(a, b) for a in range(3) for b in range(4)]
        basis = np.stack(
            [
                np.cos(np.pi * (a * positions[:, 0] + b * positions[:, 1]) + phase)
                for a, b in frequencies
                for phase in (0.0, np.pi / 2)
            ]
        )  # (basis, cells)
        coefficients = rng.normal(size=(n, self.lags, self.variables, len(basis)))
        fields = coefficients @ basis + 0.3 * rng.normal(
            size=(n, self.lags, self.variables, rows * cols)
        )
        centre = np.array([0.35, 0.6])
        land = (((positions - centre) / np.array([0.2, 0.15])) ** 2).sum(-1) < 1.0
        fields[..., land] = np.nan
        self.field = fields.reshape(n, self.lags, self.variables, rows, cols).astype(np.float32)
        self.native_mask = ~land.reshape(rows, cols)

        self.lag_factor = rng.normal(size=(self.lags, k))
        self.variable_factor = rng.normal(size=(self.variables, k))
        self.field_function = smooth_bumps(rng, k)
        spatial = self.field_function(positions) * (~land)[:, None]  # (cells, K)
        filled = np.nan_to_num(fields)
        signal = (
            np.einsum(
                "nlvc,lk,vk,ck->n",
                filled,
                self.lag_factor,
                self.variable_factor,
                spatial,
                optimize=True,
            )
            / (~land).sum()
        )
        signal = signal / signal.std()
        self.target = (signal + self.noise * rng.normal(size=n)).astype(np.float32)

    def check_resolution(self, resolution):
        super().check_resolution(resolution)
        rows, cols = resolution["ocean"]
        if rows > self.native_grid[0] or cols > self.native_grid[1]:
            raise ValueError(
                f"ocean grid {rows}×{cols} is finer than the synthetic fields' native grid "
                f"{self.native_grid[0]}×{self.native_grid[1]}; use coarser grids or raise "
                "dataset.native_grid"
            )

    def _regridded(self, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
        """(samples, lag, var, rows, cols) field at ``grid`` (0 at masked cells) and its mask."""
        if grid not in self._fields:
            values, mask = conservative_regrid(self.field, grid)
            values = np.where(mask, np.nan_to_num(values), 0.0).astype(np.float32)
            self._fields[grid] = (torch.from_numpy(values), torch.from_numpy(mask))
        return self._fields[grid]

    def mask(self, mode, grid):
        return self._regridded(tuple(grid))[1]

    def build_split(self, split, resolution):
        field, _ = self._regridded(resolution["ocean"])
        index = torch.as_tensor(self._indices[split])
        return TensorBatchDataset({"dense": field[index], "target": self.targets(split)})

    def baselines(self, split):
        return {"zero": torch.zeros(len(self._indices[split]))}

    def planted_factors(self, resolution):
        grid = resolution["ocean"]
        mask = self.mask("ocean", grid).numpy().ravel()
        return {
            "lag": self.lag_factor,
            "variable": self.variable_factor,
            "ocean": self.field_function(grid_positions(grid)) * mask[:, None],
        }
