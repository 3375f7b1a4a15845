"""The climate dataset of paper §6.1: U.S. Midwest precipitation regressed on lagged ocean fields.

A sample is a target month ``t``: its input is the ocean fields (sea surface temperature,
salinity, ...) of months ``t - lag ... t - 1`` over an ocean region, its target the Midwest
precipitation of month ``t``. The model is paper eq. 1 with two feature modes (lag, variable)
and one dense spatial mode (``ocean``), trained with MSE.

Preparation, in order (paper §6.1 and appendix B):

1. **Read** the ocean fields over ``region`` (rows north to south) and the precipitation series
   (mean over ``states`` of an nClimDiv file, or over ``precip_box`` of a gridded file).
2. **Mask** land and sea ice: a cell that is NaN in any month or variable is masked everywhere.
3. **Split** the candidate target months (those with ``lag`` differenced ocean months before
   them and inside the precipitation record) into blocks of ``block_months`` consecutive months;
   blocks are visited in a random order (``seed``) and each goes to the split furthest below
   its share (``split``, 60/20/20) of samples, so the splits come from a similar distribution
   despite the ocean record's non-stationarity. A month without precipitation is no sample.
4. **Detrend** the ocean fields by differencing: ``d_t = x_t - x_{t-1}``, per cell and variable.
5. **Deseasonalise** by standardising each calendar month: ``z_t = (d_t - mean_m) / std_m`` with
   ``m`` the calendar month of ``t`` and mean and standard deviation per cell and variable.
6. **Normalise** each variable to [0, 1] by min-max: ``s_t = (z_t - min) / (max - min)``.
7. **Target**: the precipitation standardised per calendar month like step 5, but not
   differenced, so the model fits the month's departure from its usual rainfall.
8. **Regrid** ``s`` conservatively (cos-latitude area weights, land left out) to each grid of
   the schedule; masked cells are 0 in the dense input.

Every statistic (steps 5–7) comes from the training split alone and is then applied to all
months: the precipitation statistics from the training samples' target months, the ocean
statistics from the ocean months the training samples read (their windows ``t - lag - 1 ...
t - 1``, the first month being the one the difference needs). Values of months read only by
validation or test samples change none of them; validation and test inputs can therefore fall
outside [0, 1]. Target blocks never share a month, but a sample at the start of a block reads
inputs from the block before it, which may belong to another split.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch.utils.data import Dataset

from datamodules.base import SPLITS, TensorDataModule, save_npz_atomic
from datamodules.climate_io import (
    MONTHS_PER_YEAR,
    MonthlySeries,
    OceanField,
    as_box,
    format_month,
    format_range,
    read_climdiv,
    read_gridded_precip,
    read_ocean,
    resolve_file,
    resolve_files,
)
from mrtl_lightning.grids import conservative_regrid
from mrtl_lightning.modes import Grid, Resolution, SpatialMode, TensorSpec

log = logging.getLogger(__name__)

OCEAN = "ocean"

# The twelve Midwest states of nClimDiv: IL, IN, IA, KS, MI, MN, MO, NE, ND, OH, SD, WI.
MIDWEST_STATES = tuple("011 012 013 014 020 021 023 025 032 033 039 047".split())
MIDWEST_BOX = {"lat_min": 36.0, "lat_max": 49.0, "lon_min": -104.0, "lon_max": -80.0}
# Paper appendix B: 180°W–0°, 20°S–60°N.
PAPER_REGION = {"lat_min": -20.0, "lat_max": 60.0, "lon_min": -180.0, "lon_max": 0.0}

# Bump when the preparation changes, so regrid caches of an older version are not reused.
CACHE_VERSION = b"climate-v1"


@rank_zero_only
def log_rank_zero(level: int, message: str, *args: Any) -> None:
    log.log(level, message, *args)


class LaggedFieldDataset(Dataset):
    """Samples that each read ``lag`` consecutive months of one stored field.

    The lagged inputs are gathered per batch by one indexing operation, so the field is stored
    once however many samples share its months.

    Args:
        field: (months, variables, rows, cols) preprocessed field at one grid.
        window_start: (samples,) long index into ``field`` of each sample's oldest month.
        targets: (samples,) float targets.
        lag: months per window.
    """

    def __init__(
        self, field: torch.Tensor, window_start: torch.Tensor, targets: torch.Tensor, lag: int
    ):
        self.field = field
        self.window_start = window_start
        self.target = targets
        self.offsets = torch.arange(lag)

    def __len__(self) -> int:
        return int(self.window_start.shape[0])

    def __getitem__(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """A batch for sample indices ``index`` (batch,): "dense" (batch, lag, var, rows, cols)
        with the oldest month first, and "target" (batch,)."""
        index = torch.as_tensor(index, dtype=torch.long)
        months = self.window_start[index].unsqueeze(-1) + self.offsets  # (batch, lag)
        return {"dense": self.field[months], "target": self.target[index]}


def assign_blocks(
    present: np.ndarray, block_months: int, fractions: Sequence[float], seed: int
) -> np.ndarray:
    """Split of each month when consecutive blocks of months are dealt out at random.

    Blocks are visited in a random order; each goes to the split whose sample count is furthest
    below its share, so counts land within a block of ``fractions`` of the total.

    Args:
        present: (months,) bool, whether each month is a sample (counts toward the shares).
        block_months: months per block (the last block may be shorter).
        fractions: share of samples per split, summing to 1.
        seed: seed of the block order.

    Returns:
        (months,) int index into ``fractions`` of each month's split.
    """
    block = np.arange(present.size) // block_months
    samples = np.bincount(block, weights=present.astype(np.float64))
    wanted = np.asarray(fractions, dtype=np.float64) * present.sum()
    assigned = np.zeros_like(wanted)
    split_of_block = np.empty(samples.size, dtype=np.int64)
    for index in np.random.default_rng(seed).permutation(samples.size):
        choice = int(np.argmax(wanted - assigned))
        split_of_block[index] = choice
        assigned[choice] += samples[index]
    return split_of_block[block]


def calendar_month_statistics(
    values: np.ndarray, months: np.ndarray, use: np.ndarray, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each calendar month over the months marked ``use``.

    Args:
        values: (months, ...) values; NaN entries give NaN statistics.
        months: (months,) month numbers.
        use: (months,) bool, the months the statistics may see.
        what: name of the values for errors.

    Returns:
        (mean, std), each (12, ...); a zero standard deviation is replaced by 1 so a constant
        cell standardises to 0.
    """
    calendar = months % MONTHS_PER_YEAR
    mean = np.empty((MONTHS_PER_YEAR, *values.shape[1:]), dtype=np.float64)
    std = np.empty_like(mean)
    for month in range(MONTHS_PER_YEAR):
        chosen = values[use & (calendar == month)]
        if chosen.shape[0] < 2:
            raise ValueError(
                f"only {chosen.shape[0]} training month(s) of {what} fall in calendar month "
                f"{month + 1}; the per-month standardisation needs at least 2: use a longer "
                "record or a larger dataset.block_months"
            )
        mean[month] = chosen.mean(axis=0)
        std[month] = chosen.std(axis=0, ddof=1)
    std[std == 0] = 1.0
    return mean, std


def standardise(
    values: np.ndarray, months: np.ndarray, mean: np.ndarray, std: np.ndarray
) -> np.ndarray:
    """``(values_t - mean_m) / std_m`` with ``m`` the calendar month of each row's month."""
    calendar = months % MONTHS_PER_YEAR
    return (values - mean[calendar]) / std[calendar]


class ClimateDataModule(TensorDataModule):
    """Midwest precipitation from lagged ocean fields (paper §6.1), at any ocean grid.

    Batches hold "dense" (batch, lag, variables, rows, cols) float32 — preprocessed ocean fields
    of months ``t - lag ... t - 1``, oldest first, 0 at land — and "target" (batch,) float32,
    the month's standardised precipitation. The module docstring lists the preparation steps.

    Args:
        data_dir: folder of the data files.
        ocean_files: NetCDF file name(s) under ``data_dir``, or glob patterns (EN4 ships one file
            per month); together they must cover consecutive months.
        variables: ocean variables to read, each a feature of the "variable" mode; a variable
            with a depth axis is taken at its shallowest level.
        precip_file: precipitation file under ``data_dir``.
        precip_kind: "climdiv" (nClimDiv statewide file, mean over ``states``) or "gridded"
            (NetCDF field ``precip_variable``, mean over ``precip_box``).
        states: nClimDiv state codes averaged into the target (default: the twelve Midwest
            states).
        precip_box: {lat_min, lat_max, lon_min, lon_max} averaged for gridded precipitation.
        precip_variable: variable of the gridded precipitation file.
        region: {lat_min, lat_max, lon_min, lon_max} ocean region; cells whose centres lie in
            the half-open box are kept (default the paper's 20°S–60°N, 180°W–0°).
        lag: months of ocean input before each target month (paper: 6).
        block_months: length of the blocks of consecutive months dealt out to the splits.
        split: train, validation and test shares of samples.
        cache_dir: folder for regridded fields (.npz), shared safely by DDP processes; None
            keeps them in memory only.
        download: "auto" fetches a missing file with a known public URL; "never" does not.
        batch_size, eval_batch_size, seed: as in :class:`TensorDataModule`; ``seed`` also
            draws the split.
    """

    def __init__(
        self,
        data_dir: str | Path,
        ocean_files: str | Sequence[str] = "sst.mnmean.nc",
        variables: Sequence[str] = ("sst",),
        precip_file: str = "climdiv-pcpnst-v1.0.0-20210805.txt",
        precip_kind: str = "climdiv",
        states: Sequence[int | str] = MIDWEST_STATES,
        precip_box: Mapping[str, float] = MIDWEST_BOX,
        precip_variable: str = "ppt",
        region: Mapping[str, float] = PAPER_REGION,
        lag: int = 6,
        block_months: int = 12,
        split: Sequence[float] = (0.6, 0.2, 0.2),
        cache_dir: str | Path | None = None,
        download: str = "auto",
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        seed: int = 0,
    ):
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, seed=seed)
        if precip_kind not in ("climdiv", "gridded"):
            raise ValueError(
                f"dataset.precip_kind {precip_kind!r} is unknown; use 'climdiv' or 'gridded'"
            )
        if download not in ("auto", "never"):
            raise ValueError(f"dataset.download {download!r} is unknown; use 'auto' or 'never'")
        if lag < 1 or block_months < 1:
            raise ValueError(
                f"dataset.lag ({lag}) and dataset.block_months ({block_months}) must be >= 1"
            )
        split = [float(share) for share in split]
        if len(split) != len(SPLITS) or min(split) <= 0 or not np.isclose(sum(split), 1.0):
            raise ValueError(
                f"dataset.split {split} must be {len(SPLITS)} positive shares of "
                f"{'/'.join(SPLITS)} summing to 1, e.g. [0.6, 0.2, 0.2]"
            )
        self.data_dir = Path(data_dir)
        self.ocean_files = [ocean_files] if isinstance(ocean_files, str) else list(ocean_files)
        self.variables = [str(name) for name in variables]
        self.precip_file = precip_file
        self.precip_kind = precip_kind
        self.states = list(states)
        self.precip_box = as_box(precip_box, "dataset.precip_box")
        self.precip_variable = precip_variable
        self.region = as_box(region, "dataset.region")
        self.lag = int(lag)
        self.block_months = int(block_months)
        self.split = split
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.download = download
        self._prepared = False
        self._grids: dict[Grid, tuple[torch.Tensor, torch.Tensor]] = {}

    # ----- preparation ------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Fetch missing files (once per node; :meth:`setup` fetches them too if needed)."""
        resolve_files(self.data_dir, self.ocean_files, self.download)
        resolve_file(self.data_dir, self.precip_file, self.download)

    def setup(self, stage: str | None = None) -> None:
        """Read, split and preprocess the data; later calls return at once."""
        if self._prepared:
            return
        ocean = read_ocean(
            resolve_files(self.data_dir, self.ocean_files, self.download),
            self.variables,
            self.region,
        )
        precip_path = resolve_file(self.data_dir, self.precip_file, self.download)
        if self.precip_kind == "climdiv":
            precip = read_climdiv(precip_path, self.states)
        else:
            precip = read_gridded_precip(precip_path, self.precip_variable, self.precip_box)
        self._prepare(ocean, precip)
        self._prepared = True
        summary = self.describe()
        log_rank_zero(
            logging.INFO,
            "climate data: %d samples (train %d, val %d, test %d), targets %s..%s, ocean %s "
            "%d×%d (%.0f%% masked), lag %d",
            sum(summary[f"{split}_samples"] for split in SPLITS),
            *(summary[f"{split}_samples"] for split in SPLITS),
            summary["first_month"],
            summary["last_month"],
            "+".join(self.variables),
            *summary["native_grid"],
            100 * summary["masked_fraction"],
            self.lag,
        )

    def _prepare(self, ocean: OceanField, precip: MonthlySeries) -> None:
        valid = ~np.isnan(ocean.values).any(axis=(0, 1))  # (rows, cols)
        if not valid.any():
            raise ValueError(
                f"every cell of dataset.region {self.region} is NaN (land or ice) in "
                f"{ocean.sources[0]}; move dataset.region over the ocean"
            )
        self._ocean_record = format_range(ocean.months)
        self._precip_record = format_range(precip.months)
        self._lat, self._lon = ocean.lat, ocean.lon
        self._valid = valid

        months = self._candidate_months(ocean.months, precip.months)
        precip_values = precip.values[months - precip.months[0]]
        present = ~np.isnan(precip_values)
        self._dropped = int((~present).sum())
        if self._dropped:
            log_rank_zero(
                logging.WARNING,
                "%d month(s) without precipitation in %s dropped from the samples: %s",
                self._dropped,
                precip.source,
                ", ".join(format_month(month) for month in months[~present]),
            )
        split_of = assign_blocks(present, self.block_months, self.split, self.seed)
        self._months = {
            split: months[(split_of == index) & present] for index, split in enumerate(SPLITS)
        }
        empty = [split for split in SPLITS if self._months[split].size == 0]
        if empty:
            raise ValueError(
                f"splits {empty} have no sample month with precipitation in "
                f"{format_range(months)}; use a longer record or a smaller dataset.block_months"
            )
        self._first_month, self._last_month = months[0], months[-1]

        # Differenced month k is ocean month k + 1; a sample at t reads months t-lag ... t-1.
        difference = np.diff(ocean.values, axis=0)  # (months - 1, var, rows, cols)
        difference[:, :, ~valid] = np.nan
        difference_months = ocean.months[1:]
        self._window_start = {
            split: self._months[split] - self.lag - difference_months[0] for split in SPLITS
        }
        train_reads = np.zeros(difference_months.size, dtype=bool)
        train_reads[self._window_start["train"][:, None] + np.arange(self.lag)] = True

        ocean_mean, ocean_std = calendar_month_statistics(
            difference, difference_months, train_reads, "the ocean fields"
        )
        anomaly = standardise(difference, difference_months, ocean_mean, ocean_std)
        ocean_min = np.nanmin(anomaly[train_reads], axis=(0, 2, 3))  # (var,)
        ocean_max = np.nanmax(anomaly[train_reads], axis=(0, 2, 3))
        span = np.where(ocean_max > ocean_min, ocean_max - ocean_min, 1.0)
        scaled = (anomaly - ocean_min[:, None, None]) / span[:, None, None]
        self._field = scaled.astype(np.float32)  # NaN at masked cells

        train_months = self._months["train"]
        precip_mean, precip_std = calendar_month_statistics(
            precip.values[train_months - precip.months[0]],
            train_months,
            np.ones(train_months.size, dtype=bool),
            "precipitation",
        )
        self._precip = precip
        self.statistics = {
            "ocean_mean": ocean_mean,
            "ocean_std": ocean_std,
            "ocean_min": ocean_min,
            "ocean_max": ocean_max,
            "precip_mean": precip_mean,
            "precip_std": precip_std,
        }
        self._targets = {
            split: torch.from_numpy(self._standardised_precip(self._months[split])).float()
            for split in SPLITS
        }

        self._row_weights = np.cos(np.deg2rad(ocean.lat))
        digest = hashlib.sha256(CACHE_VERSION)
        digest.update(self._field.tobytes())
        digest.update(self._row_weights.tobytes())
        self._digest = digest.hexdigest()[:20]
        self._grids = {}

    def _candidate_months(self, ocean_months: np.ndarray, precip_months: np.ndarray) -> np.ndarray:
        """Target months with ``lag`` differenced ocean months before them and precipitation."""
        first = max(ocean_months[0] + 1 + self.lag, precip_months[0])
        last = min(ocean_months[-1] + 1, precip_months[-1])
        records = (
            f"ocean record {format_range(ocean_months)} and precipitation record "
            f"{format_range(precip_months)}"
        )
        if last < first:
            raise ValueError(
                f"the {records} do not overlap: a sample at month t needs ocean months "
                f"t-{self.lag + 1}..t-1 and precipitation at t; use records of the same period"
            )
        needed = len(SPLITS) * self.block_months
        if last - first + 1 < needed:
            raise ValueError(
                f"the {records} leave only {last - first + 1} target months "
                f"({format_month(first)}..{format_month(last)}) with lag {self.lag}; at least "
                f"{needed} are needed (one block of dataset.block_months={self.block_months} per "
                "split): use longer records or lower dataset.block_months or dataset.lag"
            )
        return np.arange(first, last + 1, dtype=np.int64)

    def _standardised_precip(self, months: np.ndarray) -> np.ndarray:
        """Precipitation of ``months`` standardised per calendar month; NaN outside the record."""
        index = months - self._precip.months[0]
        inside = (index >= 0) & (index < self._precip.months.size)
        values = np.full(months.shape, np.nan)
        values[inside] = self._precip.values[index[inside]]
        stats = self.statistics
        return standardise(values, months, stats["precip_mean"], stats["precip_std"])

    def _require_setup(self) -> None:
        if not self._prepared:
            raise RuntimeError("the climate data is not prepared yet: call setup() first")

    # ----- grids ------------------------------------------------------------------------------

    @property
    def native_grid(self) -> Grid:
        """(rows, cols) of the ocean region at the data's own resolution."""
        self._require_setup()
        return tuple(int(n) for n in self._valid.shape)

    def _regridded(self, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
        """(field (months, var, rows, cols) with 0 at masked cells, mask (rows, cols)) at grid."""
        grid = (int(grid[0]), int(grid[1]))
        if grid in self._grids:
            return self._grids[grid]
        if grid == self.native_grid:
            field, valid = self._field, self._valid
        else:
            field, valid = self._load_cached(grid)
        result = (
            torch.from_numpy(np.nan_to_num(field, nan=0.0).astype(np.float32, copy=False)),
            torch.from_numpy(np.asarray(valid, dtype=bool)),
        )
        self._grids[grid] = result
        return result

    def _load_cached(self, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        path = None
        if self.cache_dir is not None:
            path = self.cache_dir / f"climate-{self._digest}-{grid[0]}x{grid[1]}.npz"
            if path.exists():
                with np.load(path) as cached:
                    return cached["field"], cached["valid"]
        field, valid = conservative_regrid(self._field, grid, row_weights=self._row_weights)
        if path is not None:
            save_npz_atomic(path, field=field, valid=valid)
            log_rank_zero(logging.INFO, "cached the ocean fields at %d×%d in %s", *grid, path)
        return field, valid

    # ----- TensorDataModule -------------------------------------------------------------------

    @property
    def spec(self) -> TensorSpec:
        self._require_setup()
        return TensorSpec(
            task="regression",
            entity_modes=(),
            feature_modes=(("lag", self.lag), ("variable", len(self.variables))),
            spatial_modes=(SpatialMode(OCEAN, "dense"),),
        )

    def check_resolution(self, resolution: Resolution) -> None:
        super().check_resolution(resolution)
        rows, cols = resolution[OCEAN]
        native_rows, native_cols = self.native_grid
        if rows > native_rows or cols > native_cols:
            raise ValueError(
                f"ocean grid {rows}×{cols} is finer than the data's native grid "
                f"{native_rows}×{native_cols} over dataset.region {self.region}; use grids of "
                "at most that size in the schedule, or a finer ocean product"
            )

    def build_split(self, split: str, resolution: Resolution) -> Dataset:
        self._require_setup()
        field, _ = self._regridded(resolution[OCEAN])
        return LaggedFieldDataset(
            field, torch.from_numpy(self._window_start[split]), self._targets[split], self.lag
        )

    def targets(self, split: str) -> torch.Tensor:
        self._require_setup()
        return self._targets[split]

    def sample_months(self, split: str) -> np.ndarray:
        """(samples,) month numbers (``year * 12 + month - 1``) of a split's target months."""
        self._require_setup()
        return self._months[split]

    def mask(self, mode: str, grid: Grid) -> torch.Tensor:
        """(rows, cols) bool, True where the cell at ``grid`` overlaps ocean with data."""
        self._require_setup()
        self.spec.mode(mode)
        return self._regridded(grid)[1]

    def baselines(self, split: str) -> dict[str, torch.Tensor]:
        """Climatology (0 in standardised units) and persistence (last month's target, or the
        climatology where last month has no precipitation), in :meth:`targets` order."""
        targets = self.targets(split)
        previous = self._standardised_precip(self._months[split] - 1)
        return {
            "climatology": torch.zeros_like(targets),
            "persistence": torch.from_numpy(np.nan_to_num(previous, nan=0.0)).float(),
        }

    def describe(self) -> dict[str, Any]:
        self._require_setup()
        return {
            "months": int(self._last_month - self._first_month + 1),
            "first_month": format_month(self._first_month),
            "last_month": format_month(self._last_month),
            "ocean_record": self._ocean_record,
            "precip_record": self._precip_record,
            "native_grid": list(self.native_grid),
            "masked_fraction": float(1.0 - self._valid.mean()),
            **{f"{split}_samples": int(self._months[split].size) for split in SPLITS},
            "dropped_precip_months": self._dropped,
            "variables": list(self.variables),
            "lag": self.lag,
        }

    # ----- figures ----------------------------------------------------------------------------

    @property
    def extent(self) -> list[float]:
        """[west, east, south, north] edges of the native cells, for ``imshow(extent=...)``."""
        self._require_setup()
        edges = []
        for centres in (self._lon, self._lat[::-1]):
            half = (centres[-1] - centres[0]) / (2 * (centres.size - 1)) if centres.size > 1 else 0
            edges += [float(centres[0] - half), float(centres[-1] + half)]
        return edges

    def figure_axes_kwargs(self, mode: str) -> dict[str, Any]:
        """``subplot_kw`` for figures of ``mode``: a cartopy map projection when available."""
        try:
            import cartopy.crs as ccrs
        except ImportError:
            return {}
        return {"projection": ccrs.PlateCarree(central_longitude=180)}

    def plot_spatial(self, ax, mode: str, image, **imshow_kwargs):
        """Draw a (rows, cols) image of the ocean region; NaN cells stay blank.

        On a cartopy ``GeoAxes`` (see :meth:`figure_axes_kwargs`) coastlines are added;
        otherwise the axes are labelled in degrees of longitude and latitude.
        """
        self.spec.mode(mode)
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().numpy()
        image = np.ma.masked_invalid(np.asarray(image, dtype=np.float64))
        kwargs = {"origin": "upper", "interpolation": "nearest", "extent": self.extent}
        kwargs.update(imshow_kwargs)
        if is_geoaxes(ax):
            import cartopy.crs as ccrs

            kwargs.setdefault("transform", ccrs.PlateCarree())
            artist = ax.imshow(image, **kwargs)
            ax.coastlines(linewidth=0.5)
            return artist
        artist = ax.imshow(image, **kwargs)
        ax.set_xlabel("longitude (°E)")
        ax.set_ylabel("latitude (°N)")
        return artist


def is_geoaxes(ax) -> bool:
    """Whether ``ax`` is a cartopy map axes (False when cartopy is not installed)."""
    try:
        from cartopy.mpl.geoaxes import GeoAxes
    except ImportError:
        return False
    return isinstance(ax, GeoAxes)
