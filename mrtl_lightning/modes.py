"""The modes of a spatial tensor model and the resolutions its spatial modes are trained at.

A weight tensor ``W`` (paper eq. 1) has three kinds of modes, always stored in this order:

* **entity modes**: a categorical index per sample (the ball handler); the sample selects one
  slice of ``W`` along the mode, and each entity has its own bias;
* **feature modes**: non-spatial input dimensions contracted with dense inputs (lag, variable);
* **spatial modes**: 2-D grids whose size changes with the resolution (court, ocean).

A spatial mode is *sparse* when each sample marks a few cells of it (one-hot ball-handler cell,
multi-hot defender cells) or *dense* when each sample is a field averaged over its cells (sea
surface temperature). The encoding decides how weights are finegrained (paper §4.2): nearest
neighbour for sparse inputs, bilinear with rescaling for dense ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Grid = tuple[int, int]
"""A spatial grid as (rows, columns)."""

Resolution = dict[str, Grid]
"""The grid of every spatial mode at one stage of training, keyed by mode name."""

Task = Literal["classification", "regression"]
Encoding = Literal["sparse", "dense"]


@dataclass(frozen=True)
class SpatialMode:
    """One 2-D spatial mode of the weight tensor.

    Args:
        name: key of the mode in configs, batches and figures ("court", "ocean").
        encoding: "sparse" when samples mark cells (fed as cell indices and values), "dense"
            when samples are fields averaged over cells (fed as a dense block).
    """

    name: str
    encoding: Encoding

    def __post_init__(self) -> None:
        if self.encoding not in ("sparse", "dense"):
            raise ValueError(
                f"spatial mode {self.name!r} has encoding {self.encoding!r}; "
                "expected 'sparse' (one-/multi-hot cells) or 'dense' (averaged fields)"
            )

    @property
    def interpolation(self) -> str:
        """The finegraining scheme of paper §4.2 that suits this mode's inputs."""
        return "nearest" if self.encoding == "sparse" else "bilinear"


@dataclass(frozen=True)
class TensorSpec:
    """Everything a tensor model needs to know about its data, independent of resolution.

    Args:
        task: "classification" (sigmoid, weighted cross-entropy) or "regression" (linear, MSE).
        entity_modes: (name, number of entities) per entity mode.
        feature_modes: (name, size) per non-spatial feature mode of the dense input block.
        spatial_modes: the spatial modes, sparse ones first in batches' "cells" and "values",
            dense ones in the trailing axes of the "dense" block, each as (rows, columns).
    """

    task: Task
    entity_modes: tuple[tuple[str, int], ...]
    feature_modes: tuple[tuple[str, int], ...]
    spatial_modes: tuple[SpatialMode, ...]

    def __post_init__(self) -> None:
        if self.task not in ("classification", "regression"):
            raise ValueError(
                f"task {self.task!r} is not supported; expected 'classification' or 'regression'"
            )
        if not self.spatial_modes:
            raise ValueError("a spatial tensor model needs at least one spatial mode")
        names = [name for name, _ in self.entity_modes + self.feature_modes]
        names += [mode.name for mode in self.spatial_modes]
        if len(set(names)) != len(names):
            raise ValueError(f"mode names must be unique, got {names}")
        for name, size in self.entity_modes + self.feature_modes:
            if size < 1:
                raise ValueError(f"mode {name!r} has size {size}; every mode needs size >= 1")

    @property
    def sparse_modes(self) -> tuple[SpatialMode, ...]:
        return tuple(mode for mode in self.spatial_modes if mode.encoding == "sparse")

    @property
    def dense_modes(self) -> tuple[SpatialMode, ...]:
        return tuple(mode for mode in self.spatial_modes if mode.encoding == "dense")

    @property
    def has_dense_block(self) -> bool:
        return bool(self.feature_modes or self.dense_modes)

    def mode(self, name: str) -> SpatialMode:
        for mode in self.spatial_modes:
            if mode.name == name:
                return mode
        known = [mode.name for mode in self.spatial_modes]
        raise KeyError(f"no spatial mode {name!r}; this dataset has {known}")


def as_resolution(spec: TensorSpec, resolution: Mapping[str, object]) -> Resolution:
    """Check a resolution from a config against a spec and return it as ``{mode: (rows, cols)}``.

    Raises:
        ValueError: a mode is missing or unknown, or a grid is not two positive integers.
    """
    expected = [mode.name for mode in spec.spatial_modes]
    if sorted(resolution) != sorted(expected):
        raise ValueError(
            f"resolution {dict(resolution)} names spatial modes {sorted(resolution)}; "
            f"this dataset's spatial modes are {expected}: give a [rows, cols] grid for each"
        )
    checked: Resolution = {}
    for name in expected:
        grid = resolution[name]
        if (
            not isinstance(grid, (list, tuple))
            or len(grid) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in grid)
        ):
            raise ValueError(
                f"grid {grid!r} of spatial mode {name!r} is not [rows, cols] with two "
                "positive integers"
            )
        checked[name] = (int(grid[0]), int(grid[1]))
    return checked


def format_resolution(resolution: Mapping[str, Grid]) -> str:
    """Render a resolution for logs, e.g. ``court 8×10, defenders 6×6``."""
    return ", ".join(f"{name} {rows}×{cols}" for name, (rows, cols) in resolution.items())
