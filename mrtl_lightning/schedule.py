"""Methods as schedules: the sequence of (rank, resolution) phases one training run goes through.

A dataset config lists its resolutions (``schedule.full_rank`` and ``schedule.low_rank``);
a method turns them into phases:

* ``mrtl`` (Algorithm 1): every full-rank resolution coarse to fine, CP-ALS, then every
  low-rank resolution;
* ``fixed``: full rank at the finest resolution only, CP-ALS, low rank at the finest;
* ``random``: a randomly initialised low-rank model at the finest resolution.

The Finegrain callback walks the phases; nothing else in the code knows which method runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mrtl_lightning.modes import Resolution, format_resolution


@dataclass(frozen=True)
class Phase:
    """One stage of training: the model's rank ("full" or "low") and its resolution."""

    rank: str
    resolution: Resolution

    def describe(self) -> str:
        return f"{self.rank} rank at {format_resolution(self.resolution)}"


def _resolutions(entries: Sequence[Mapping[str, Sequence[int]]], key: str) -> list[Resolution]:
    if not entries:
        raise ValueError(f"schedule.{key} is empty; list at least one resolution")
    resolutions = []
    for entry in entries:
        if not isinstance(entry, Mapping):
            raise ValueError(
                f"schedule.{key} entry {entry!r} is not a mapping like {{court: [8, 10]}}"
            )
        resolutions.append({name: tuple(grid) for name, grid in entry.items()})
    return resolutions


def mrtl_phases(full_rank, low_rank) -> list[Phase]:
    """Full rank over ``full_rank`` resolutions, then low rank over ``low_rank`` (Algorithm 1)."""
    return [Phase("full", r) for r in _resolutions(full_rank, "full_rank")] + [
        Phase("low", r) for r in _resolutions(low_rank, "low_rank")
    ]


def fixed_phases(full_rank, low_rank) -> list[Phase]:
    """The fixed-resolution baseline: full rank and then low rank, both at the finest grids."""
    finest = _resolutions(low_rank, "low_rank")[-1]
    return [Phase("full", finest), Phase("low", finest)]


def random_phases(full_rank, low_rank) -> list[Phase]:
    """The random-initialisation baseline: low rank at the finest grids only."""
    return [Phase("low", _resolutions(low_rank, "low_rank")[-1])]


def check_phases(phases: Sequence[Phase]) -> None:
    """Raise ``ValueError`` unless every phase refines (or keeps) the previous one's grids.

    Within a rank every step must make at least one grid finer; the switch from full to low
    rank may keep the grids. Grids never get coarser, and a low-rank phase is never followed
    by a full-rank one.
    """
    if not phases:
        raise ValueError("the schedule has no phase")
    if phases[-1].rank != "low":
        raise ValueError("a schedule must end with a low-rank phase (the CP model MRTL returns)")
    for before, after in zip(phases, phases[1:]):
        if before.rank == "low" and after.rank == "full":
            raise ValueError(
                f"the schedule goes back from low rank to full rank ({before.describe()} → "
                f"{after.describe()}); list all full-rank resolutions first"
            )
        if sorted(before.resolution) != sorted(after.resolution):
            raise ValueError(
                f"schedule resolutions name different spatial modes: {before.describe()} → "
                f"{after.describe()}"
            )
        coarser = [
            name
            for name, grid in after.resolution.items()
            if grid[0] < before.resolution[name][0] or grid[1] < before.resolution[name][1]
        ]
        if coarser:
            raise ValueError(
                f"the schedule does not refine: {before.describe()} → {after.describe()} makes "
                f"{coarser} coarser; order each rank's resolutions from coarse to fine"
            )
        if before.rank == after.rank and before.resolution == after.resolution:
            raise ValueError(
                f"the schedule repeats {before.describe()}; remove the duplicate resolution"
            )
