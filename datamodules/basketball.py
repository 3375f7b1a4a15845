"""Basketball shot prediction (paper §6.1): will the ball handler shoot within the next second?

Samples come from SportVU tracking joined with play-by-play (see :mod:`datamodules.sportvu` for
every extraction rule). The model has one entity mode, the ball handler, and two sparse spatial
modes: ``court``, the one-hot cell of the handler on the half court, and ``defenders``, the
multi-hot cells of up to five defenders in a box around him.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from datamodules.base import SPLITS, TensorBatchDataset, TensorDataModule
from datamodules.sportvu import (
    BASKET_FROM_BASELINE_FT,
    COURT_WIDTH_FT,
    DEFENDER_BOX,
    HALF_COURT_FT,
    HANDLER_CELL,
    ExtractionSettings,
    Season,
    load_season,
)
from mrtl_lightning.grids import discretise
from mrtl_lightning.modes import Resolution, SpatialMode, TensorSpec

log = logging.getLogger(__name__)

OTHER_HANDLER = 0
"""Entity index shared by the handlers with fewer than ``min_handler_samples`` training samples."""

THREE_POINT_RADIUS_FT = 23.75
CORNER_THREE_FT = 22.0
PAINT_WIDTH_FT = 16.0
FREE_THROW_LINE_FT = 19.0
CIRCLE_RADIUS_FT = 6.0
RIM_RADIUS_FT = 0.75
BACKBOARD_FROM_BASELINE_FT = 4.0
BACKBOARD_WIDTH_FT = 6.0


class BasketballDataModule(TensorDataModule):
    """Ball-handler shot samples viewed at any (court, defenders) resolution.

    The split is by game when there are at least three games (whole games go to train, val and
    test, so no possession leaks across splits), otherwise by possession; the units are
    shuffled with ``seed`` and each non-empty fraction gets at least one unit.

    Grids: any positive grid is accepted for both modes, since positions are kept as fractions
    of the half court (47 × 50 ft) and of the defender box (12 × 12 cells). Nearest-neighbour
    finegraining is exact only between grids with integer ratios (6 × 6 -> 12 × 12,
    8 × 10 -> 40 × 50), where every fine cell lies in one coarse cell.

    Args:
        games_dir: folder of per-game SportVU logs (``.json`` or ``.7z``).
        pbp_dir: folder of play-by-play CSVs named ``<gameid>.csv``.
        cache_dir: folder of the ``.npz`` sample cache; None parses every time.
        frame_stride: keep every ``frame_stride``-th frame of the 25 Hz log.
        handler_radius_ft: the ball must be within this distance of the handler.
        horizon_s: label 1 when the handler shoots within this many seconds.
        defender_cell_ft: side of a cell of the 12 × 12 defender box, in feet.
        min_handler_samples: handlers with fewer training samples share one entity.
        split: train/val/test fractions, as a mapping or a sequence of three.
        workers: processes that parse games in parallel (0 or 1: none).
        batch_size, eval_batch_size, seed: see :class:`~datamodules.base.TensorDataModule`.
    """

    def __init__(
        self,
        games_dir: str,
        pbp_dir: str,
        cache_dir: str | None = None,
        frame_stride: int = 1,
        handler_radius_ft: float = 4.0,
        horizon_s: float = 1.0,
        defender_cell_ft: float = 2.0,
        min_handler_samples: int = 100,
        split: Mapping[str, float] | Sequence[float] = (0.8, 0.1, 0.1),
        workers: int = 0,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        seed: int = 0,
    ):
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed)
        self.games_dir = games_dir
        self.pbp_dir = pbp_dir
        self.cache_dir = cache_dir
        self.settings = ExtractionSettings(
            frame_stride=frame_stride,
            handler_radius_ft=handler_radius_ft,
            horizon_s=horizon_s,
            defender_cell_ft=defender_cell_ft,
        )
        self.min_handler_samples = min_handler_samples
        self.split_fractions = _split_fractions(split)
        self.workers = workers
        self.season: Season | None = None

    # ----- preparation ------------------------------------------------------------------------

    def _load(self) -> Season:
        return load_season(
            self.games_dir, self.pbp_dir, self.settings, self.cache_dir, self.workers
        )

    def prepare_data(self) -> None:
        """Parse the games once per machine and fill the cache (a no-op without a cache)."""
        if self.season is None and self.cache_dir is not None:
            self._load()

    def setup(self, stage: str | None = None) -> None:
        """Load the samples, split them and index the handlers; later calls return at once."""
        if self.season is not None:
            return
        season = self._load()
        samples = season.samples
        if not len(samples["label"]):
            raise ValueError(
                f"no samples in {self.games_dir} (skipped: {season.counts}); check that "
                "dataset.games_dir holds SportVU logs and dataset.pbp_dir their play-by-play"
            )

        self._split_by, split_of = self._assign_splits(samples)
        self._split_index = {
            split: torch.from_numpy(np.flatnonzero(split_of == number))
            for number, split in enumerate(SPLITS)
        }
        self.handler_ids, entity = self._index_handlers(samples["handler"], split_of == 0)
        self._entity = torch.from_numpy(entity)
        self._court = torch.from_numpy(samples["court"])  # (samples, 2) float32 fractions
        self._defenders = torch.from_numpy(samples["defenders"])  # (samples, 5, 2) fractions
        self._target = torch.from_numpy(samples["label"].astype(np.float32))
        self.season = season

        summary = self.describe()
        log.info(
            "Basketball: %d games, %d/%d/%d train/val/test samples (split by %s), "
            "%.1f%% shots in train, %d handlers kept%s",
            summary["games"],
            summary["train_samples"],
            summary["val_samples"],
            summary["test_samples"],
            self._split_by,
            100 * summary["train_positive_rate"],
            summary["handlers_kept"],
            " (from cache)" if season.from_cache else "",
        )

    def _assign_splits(self, samples: Mapping[str, np.ndarray]) -> tuple[str, np.ndarray]:
        """Split number (0 train, 1 val, 2 test) of every sample, by game or by possession."""
        games = np.unique(samples["game"])
        unit_name, unit = (
            ("game", samples["game"]) if len(games) >= 3 else ("possession", samples["possession"])
        )
        units = np.unique(unit)
        counts = _split_counts(len(units), self.split_fractions)
        if counts[0] < 1:
            raise ValueError(
                f"only {len(units)} {unit_name}s: too few to split {self.split_fractions} with "
                "training data; add games or lower dataset.split val/test"
            )
        # A seeded shuffle of the units decides which of them go to which split.
        order = np.random.default_rng(self.seed).permutation(len(units))
        unit_split = np.empty(len(units), dtype=np.int64)
        unit_split[order] = np.repeat(np.arange(len(SPLITS)), counts)
        split_of = unit_split[np.searchsorted(units, unit)]
        return unit_name, split_of

    def _index_handlers(
        self, handler: np.ndarray, training: np.ndarray
    ) -> tuple[list[int], np.ndarray]:
        """Entity index per sample: 1.. for frequent training handlers, 0 for the others."""
        ids, counts = np.unique(handler[training], return_counts=True)
        kept = ids[counts >= self.min_handler_samples]
        entity = np.where(np.isin(handler, kept), np.searchsorted(kept, handler) + 1, OTHER_HANDLER)
        return [-1] + kept.tolist(), entity.astype(np.int64)

    # ----- the contract of TensorDataModule ---------------------------------------------------

    @property
    def spec(self) -> TensorSpec:
        if self.season is None:
            raise RuntimeError("BasketballDataModule.spec needs setup() first")
        return TensorSpec(
            task="classification",
            entity_modes=(("handler", len(self.handler_ids)),),
            feature_modes=(),
            spatial_modes=(SpatialMode("court", "sparse"), SpatialMode("defenders", "sparse")),
        )

    def build_split(self, split: str, resolution: Resolution) -> TensorBatchDataset:
        """Discretise the split's continuous positions at ``resolution``, all samples at once.

        The court cell is one-hot (value 1); each of the five defender slots holds the cell of a
        defender inside the box with value 1, or cell 0 with value 0 when he is outside it.
        """
        index = self._split_index[split]
        # float64: a float32 fraction times any grid size is exact, so cells nest exactly.
        court = self._court[index].double()  # (samples, 2)
        defenders = self._defenders[index].double()  # (samples, 5, 2)
        present = ((defenders >= 0) & (defenders < 1)).all(dim=-1)  # (samples, 5)
        defender_cells = torch.where(present, discretise(defenders, resolution["defenders"]), 0)
        return TensorBatchDataset(
            {
                "entity": self._entity[index].unsqueeze(1),
                "cells": {
                    "court": discretise(court, resolution["court"]).unsqueeze(1),
                    "defenders": defender_cells,
                },
                "values": {
                    "court": torch.ones(len(index), 1),
                    "defenders": present.float(),
                },
                "target": self._target[index],
            }
        )

    def targets(self, split: str) -> torch.Tensor:
        return self._target[self._split_index[split]]

    def describe(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "games": len(self.season.game_ids),
            "game_ids": list(self.season.game_ids),
            "split_by": self._split_by,
        }
        for split in SPLITS:
            target = self.targets(split)
            summary[f"{split}_samples"] = int(len(target))
            summary[f"{split}_positive_rate"] = float(target.mean()) if len(target) else 0.0
        summary["handlers_kept"] = len(self.handler_ids) - 1
        summary["handlers_total"] = int(len(np.unique(self.season.samples["handler"])))
        summary["skipped"] = dict(self.season.counts)
        summary["from_cache"] = self.season.from_cache
        return summary

    # ----- figures ----------------------------------------------------------------------------

    def plot_spatial(self, ax, mode: str, image, **imshow_kwargs):
        """Draw a court image on a half-court diagram, or a defender image around the handler.

        The court image spans the half court in feet (baseline at the top, across the width
        left to right); the defender image spans the box in feet with the handler at (0, 0)
        and the basket up. NaN cells are left blank.
        """
        image = np.ma.masked_invalid(np.asarray(image, dtype=float))
        if mode == "court":
            artist = ax.imshow(
                image,
                origin="upper",
                interpolation="nearest",
                extent=(0, COURT_WIDTH_FT, HALF_COURT_FT, 0),
                **imshow_kwargs,
            )
            _draw_half_court(ax)
            return artist
        if mode == "defenders":
            cell = self.settings.defender_cell_ft
            rows, cols = DEFENDER_BOX
            extent = (
                -(HANDLER_CELL[1] + 0.5) * cell,
                (cols - HANDLER_CELL[1] - 0.5) * cell,
                -(rows - HANDLER_CELL[0] - 0.5) * cell,
                (HANDLER_CELL[0] + 0.5) * cell,
            )
            artist = ax.imshow(
                image, origin="upper", interpolation="nearest", extent=extent, **imshow_kwargs
            )
            ax.plot(0, 0, "o", color="red", markersize=6, label="ball handler")
            ax.annotate(
                "to basket",
                xy=(0, extent[3] * 0.8),
                xytext=(0, 0),
                ha="center",
                arrowprops={"arrowstyle": "->", "color": "red"},
                color="red",
            )
            ax.set_xlabel("ft to the handler's right")
            ax.set_ylabel("ft toward the basket")
            return artist
        raise KeyError(f"no spatial mode {mode!r}; this dataset has ['court', 'defenders']")


def _draw_half_court(ax) -> None:
    """Court lines of one half in (across, from baseline) feet: paint, arc, rim, circles."""
    from matplotlib.patches import Arc, Circle, Rectangle

    line = {"fill": False, "color": "black", "linewidth": 1}
    centre = COURT_WIDTH_FT / 2
    # Where the three-point arc meets the straight corner lines.
    corner_depth = BASKET_FROM_BASELINE_FT + np.sqrt(THREE_POINT_RADIUS_FT**2 - CORNER_THREE_FT**2)
    arc_angle = np.degrees(np.arctan2(corner_depth - BASKET_FROM_BASELINE_FT, CORNER_THREE_FT))
    shapes = [
        Rectangle((0, 0), COURT_WIDTH_FT, HALF_COURT_FT, **line),
        Rectangle((centre - PAINT_WIDTH_FT / 2, 0), PAINT_WIDTH_FT, FREE_THROW_LINE_FT, **line),
        Circle((centre, FREE_THROW_LINE_FT), CIRCLE_RADIUS_FT, **line),
        Circle((centre, BASKET_FROM_BASELINE_FT), RIM_RADIUS_FT, **line),
        Circle((centre, HALF_COURT_FT), CIRCLE_RADIUS_FT, **line),
        Arc(
            (centre, BASKET_FROM_BASELINE_FT),
            2 * THREE_POINT_RADIUS_FT,
            2 * THREE_POINT_RADIUS_FT,
            theta1=arc_angle,
            theta2=180 - arc_angle,
            **line,
        ),
    ]
    for shape in shapes:
        ax.add_patch(shape)
    for side in (centre - CORNER_THREE_FT, centre + CORNER_THREE_FT):
        ax.plot([side, side], [0, corner_depth], color="black", linewidth=1)
    ax.plot(
        [centre - BACKBOARD_WIDTH_FT / 2, centre + BACKBOARD_WIDTH_FT / 2],
        [BACKBOARD_FROM_BASELINE_FT] * 2,
        color="black",
        linewidth=2,
    )
    ax.set_xlim(0, COURT_WIDTH_FT)
    ax.set_ylim(HALF_COURT_FT, 0)
    ax.set_aspect("equal")


def _split_fractions(split: Mapping[str, float] | Sequence[float]) -> tuple[float, ...]:
    fractions = (
        tuple(float(split[name]) for name in SPLITS)
        if isinstance(split, Mapping)
        else tuple(float(value) for value in split)
    )
    if len(fractions) != len(SPLITS) or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f"dataset.split {split!r} must give non-negative train/val/test fractions that sum "
            "to 1, e.g. {train: 0.8, val: 0.1, test: 0.1}"
        )
    return fractions


def _split_counts(units: int, fractions: tuple[float, ...]) -> np.ndarray:
    """Units per split: rounded fractions, at least one for each non-zero val/test fraction."""
    held_out = [
        max(1, round(fraction * units)) if fraction > 0 else 0 for fraction in fractions[1:]
    ]
    return np.array([units - sum(held_out), *held_out])
