"""Readers of the climate records: gridded ocean fields, and monthly precipitation series.

Every reader returns data on a calendar of *month numbers* (``year * 12 + month - 1``), checked
to be consecutive, so records from different sources are aligned by plain integer arithmetic.

* Ocean fields come from NetCDF files in the layout of NOAA ERSST v5 (``sst.mnmean.nc``: one
  file, ``time × lat × lon``) or of the Met Office EN4 objective analyses (one file per month,
  ``temperature`` and ``salinity`` with a ``depth`` axis, of which the shallowest level is
  kept). EN4 temperatures are in Kelvin and ERSST's in °C; values are not converted, since
  the per-calendar-month standardisation downstream removes any offset and scale.
* Precipitation comes either from a NOAA nClimDiv statewide file (``climdiv-pcpnst-*``), as the
  mean over a list of states, or from a gridded NetCDF such as PRISM's ``ppt``, as the
  area-weighted mean over a latitude-longitude box.

Boxes are half-open in both axes (cell centres in ``[lat_min, lat_max) × [lon_min, lon_max)``),
so a box whose edges fall on cell centres of a regular grid selects a whole number of cells
(the paper's 20°S–60°N, 180°W–0° box is exactly 40 × 90 cells of the 2° ERSST grid). Longitudes
are compared in the box's own convention, so 0–360 and −180–180 files and boxes that cross
the date line or the prime meridian all work. Rows run north to south (row 0 is the
northernmost), the orientation of an image drawn with ``origin="upper"``.
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

log = logging.getLogger(__name__)

MONTHS_PER_YEAR = 12

# Spellings of each coordinate recognised in NetCDF files, compared case-insensitively.
COORDINATE_NAMES = {
    "time": ("time", "valid_time"),
    "lat": ("lat", "latitude"),
    "lon": ("lon", "longitude"),
    "depth": ("depth", "lev", "level", "deptht", "z"),
}

# Public sources of the files this project knows how to fetch; anything else must be provided.
ERSST_URL = "https://downloads.psl.noaa.gov/Datasets/noaa.ersst.v5/sst.mnmean.nc"
CLIMDIV_BASE_URL = "https://www.ncei.noaa.gov/pub/data/cirs/climdiv/"

# nClimDiv layout: state (3), division (1), element (2), year (4), then twelve monthly values.
CLIMDIV_KEY_WIDTH = 10
CLIMDIV_PRECIPITATION = "01"
CLIMDIV_MISSING = -9.99


@dataclass(frozen=True)
class Box:
    """A latitude-longitude box, half-open: centres in [lat_min, lat_max) × [lon_min, lon_max).

    Longitudes may use either convention; ``lon_max - lon_min`` is the box's width in degrees
    (at most 360), so ``lon_min=170, lon_max=190`` crosses the date line.
    """

    lat_min: float
    lat_max: float
    lon_min: float
    lon_max: float

    def __str__(self) -> str:
        return (
            f"lat [{self.lat_min:g}, {self.lat_max:g}) × lon [{self.lon_min:g}, {self.lon_max:g})"
        )


def as_box(box: Mapping[str, float], key: str) -> Box:
    """Validate a box from a config (``key`` names it in errors, e.g. ``dataset.region``)."""
    expected = ("lat_min", "lat_max", "lon_min", "lon_max")
    if sorted(box) != sorted(expected):
        raise ValueError(f"{key} has keys {sorted(box)}; expected exactly {list(expected)}")
    checked = Box(*(float(box[name]) for name in expected))
    if not -90 <= checked.lat_min < checked.lat_max <= 90:
        raise ValueError(
            f"{key} latitudes [{checked.lat_min:g}, {checked.lat_max:g}) are not an increasing "
            "range within [-90, 90]; set lat_min < lat_max"
        )
    if not 0 < checked.lon_max - checked.lon_min <= 360:
        raise ValueError(
            f"{key} longitudes [{checked.lon_min:g}, {checked.lon_max:g}) must satisfy "
            "0 < lon_max - lon_min <= 360 (e.g. lon_min=-180, lon_max=0 for 180°W–0°)"
        )
    return checked


@dataclass(frozen=True)
class OceanField:
    """Monthly ocean fields over a box.

    Attributes:
        values: (months, variables, rows, cols) float32, NaN on land and ice.
        months: (months,) consecutive month numbers.
        lat: (rows,) cell-centre latitudes, north to south.
        lon: (cols,) cell-centre longitudes in the box's convention, west to east.
        variables: names of the variables, in the order of axis 1.
        sources: the files read, in time order.
    """

    values: np.ndarray
    months: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    variables: tuple[str, ...]
    sources: tuple[str, ...]


@dataclass(frozen=True)
class MonthlySeries:
    """A monthly series over consecutive months, NaN where a month is missing.

    Leading and trailing missing months are trimmed, so ``months[0]`` and ``months[-1]`` are the
    first and last months with data.
    """

    values: np.ndarray
    months: np.ndarray
    source: str


def month_number(year: np.ndarray | int, month: np.ndarray | int) -> np.ndarray | int:
    """Month number ``year * 12 + month - 1`` of calendar months (``month`` in 1..12)."""
    return year * MONTHS_PER_YEAR + month - 1


def format_month(number: int) -> str:
    """``YYYY-MM`` of a month number."""
    year, month = divmod(int(number), MONTHS_PER_YEAR)
    return f"{year:04d}-{month + 1:02d}"


def format_range(months: np.ndarray) -> str:
    """``YYYY-MM..YYYY-MM`` of a non-empty sequence of month numbers."""
    return f"{format_month(months[0])}..{format_month(months[-1])}"


# ----- files --------------------------------------------------------------------------------


def public_url(name: str) -> str | None:
    """The public URL of a file this project knows how to fetch, or None."""
    if name == Path(ERSST_URL).name:
        return ERSST_URL
    if name.startswith("climdiv-"):
        return CLIMDIV_BASE_URL + name
    return None


def resolve_file(data_dir: str | Path, name: str, download: str) -> Path:
    """Path of ``name`` under ``data_dir``, fetched with pooch if missing and allowed.

    Args:
        download: "auto" fetches a missing file that has a known public URL; "never" does not.

    Raises:
        FileNotFoundError: the file is missing and could not be fetched; the message names the
            file, its URL and the settings that fix it.
    """
    path = Path(data_dir) / name
    if path.exists():
        return path
    url = public_url(name)
    source = f"download it from {url}" if url else "no public URL is known for it; provide it"
    fix = f"{source} into {Path(data_dir)}, or set dataset.data_dir=... to the folder that holds it"
    if download == "never" or url is None:
        reason = (
            " (dataset.download=never forbids fetching it)" if url and download == "never" else ""
        )
        raise FileNotFoundError(f"{path} does not exist{reason}; {fix}")

    import pooch

    log.info("fetching %s from %s", name, url)
    try:
        return Path(
            pooch.retrieve(url, known_hash=None, fname=name, path=data_dir, progressbar=True)
        )
    except Exception as error:  # pooch surfaces network, HTTP and disk errors alike
        raise FileNotFoundError(
            f"{path} does not exist and fetching {url} failed ({error}); {fix}, or set "
            "dataset.download=never to stop trying"
        ) from error


def resolve_files(data_dir: str | Path, names: str | Sequence[str], download: str) -> list[Path]:
    """Paths of one or more files under ``data_dir``; glob patterns expand to sorted matches."""
    if isinstance(names, (str, Path)):
        names = [names]
    paths: list[Path] = []
    for name in names:
        if glob.has_magic(str(name)):
            matches = sorted(glob.glob(str(Path(data_dir) / name)))
            if not matches:
                raise FileNotFoundError(
                    f"no file under {Path(data_dir)} matches {name!r}; put the files there or "
                    "set dataset.data_dir=... / dataset.ocean_files=..."
                )
            paths.extend(Path(match) for match in matches)
        else:
            paths.append(resolve_file(data_dir, str(name), download))
    return paths


def open_netcdf(path: Path) -> xr.Dataset:
    """Open a NetCDF file, turning an unreadable (empty, truncated) file into a clear error."""
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes); download it again or remove it")
    try:
        return xr.open_dataset(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path} as NetCDF ({error}); is it truncated?") from error


def coordinate(dataset: xr.Dataset | xr.DataArray, kind: str) -> str | None:
    """The name under which ``dataset`` spells coordinate ``kind`` ("lat", "time", ...)."""
    present = {str(name).lower(): str(name) for name in [*dataset.dims, *dataset.coords]}
    for spelling in COORDINATE_NAMES[kind]:
        if spelling in present:
            return present[spelling]
    return None


def require_coordinate(dataset: xr.DataArray, kind: str, path: Path) -> str:
    name = coordinate(dataset, kind)
    if name is None:
        raise ValueError(
            f"{path}: variable {dataset.name!r} has no {kind} coordinate (looked for "
            f"{list(COORDINATE_NAMES[kind])}); its dimensions are {list(dataset.dims)}"
        )
    return name


def require_variable(dataset: xr.Dataset, variable: str, path: Path, key: str) -> xr.DataArray:
    if variable not in dataset.data_vars:
        raise ValueError(
            f"{path} has no variable {variable!r}; found {sorted(map(str, dataset.data_vars))}; "
            f"set {key} to the names this file uses"
        )
    return dataset[variable]


def monthly_axis(values: xr.DataArray, path: Path) -> np.ndarray:
    """Month numbers of a time coordinate, checked to be consecutive months."""
    if values.size == 0:
        raise ValueError(f"{path} has no time steps; the file holds no data")
    months = np.asarray(month_number(values.dt.year.values, values.dt.month.values), dtype=np.int64)
    check_consecutive(months, str(path))
    return months


def check_consecutive(months: np.ndarray, where: str) -> None:
    """Raise ValueError unless ``months`` are consecutive month numbers."""
    steps = np.diff(months)
    if np.all(steps == 1):
        return
    first = int(np.flatnonzero(steps != 1)[0])
    raise ValueError(
        f"{where}: time axis is not monthly; expected consecutive months, found steps of "
        f"{sorted({int(step) for step in steps})} months between time stamps (first at "
        f"{format_month(months[first])} -> {format_month(months[first + 1])}); give one value "
        "per month without gaps"
    )


def box_indices(
    lat: np.ndarray, lon: np.ndarray, box: Box
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows and columns of the cells whose centres lie in ``box``, in image order.

    Returns:
        (rows, cols, lon_in_box): row indices ordered north to south, column indices ordered
        west to east, and those columns' longitudes in the box's convention.
    """
    in_lat = np.flatnonzero((lat >= box.lat_min) & (lat < box.lat_max))
    rows = in_lat[np.argsort(-lat[in_lat], kind="stable")]
    shifted = np.mod(lon - box.lon_min, 360.0) + box.lon_min
    in_lon = np.flatnonzero(shifted < box.lon_max)
    cols = in_lon[np.argsort(shifted[in_lon], kind="stable")]
    return rows, cols, shifted[cols]


# ----- ocean --------------------------------------------------------------------------------


def read_surface_field(
    dataset: xr.Dataset, variable: str, path: Path, box: Box
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One variable of one file over ``box``: (values (time, rows, cols), months, lat, lon)."""
    field = require_variable(dataset, variable, path, "dataset.variables")
    depth = coordinate(field, "depth")
    if depth is not None and depth in field.dims:
        shallowest = int(np.argmin(np.abs(field[depth].values)))
        field = field.isel({depth: shallowest})
    names = [require_coordinate(field, kind, path) for kind in ("time", "lat", "lon")]
    if set(field.dims) != set(names):
        raise ValueError(
            f"{path}: variable {variable!r} has dimensions {list(field.dims)}; expected time, "
            "latitude, longitude and at most a depth axis"
        )
    time, lat_name, lon_name = names
    lat = np.asarray(field[lat_name].values, dtype=np.float64)
    lon = np.asarray(field[lon_name].values, dtype=np.float64)
    rows, cols, lon_in_box = box_indices(lat, lon, box)
    months = monthly_axis(field[time], path)
    values = field.transpose(time, lat_name, lon_name).isel({lat_name: rows, lon_name: cols})
    return np.asarray(values.values, dtype=np.float32), months, lat[rows], lon_in_box


def read_ocean(paths: Sequence[Path], variables: Sequence[str], region: Box) -> OceanField:
    """Read ``variables`` over ``region`` from one or more files covering consecutive months.

    Every file must hold every variable on the same grid; files are ordered by their first
    month and must join without gaps or overlaps.

    Raises:
        ValueError: a variable or coordinate is missing, a time axis is not monthly, the files
            disagree on the grid, or the region selects no cell.
    """
    if not variables:
        raise ValueError("dataset.variables is empty; name at least one ocean variable")
    pieces = []
    for path in paths:
        with open_netcdf(path) as dataset:
            per_variable = [read_surface_field(dataset, name, path, region) for name in variables]
        values = np.stack([piece[0] for piece in per_variable], axis=1)
        months, lat, lon = per_variable[0][1:]
        for name, piece in zip(variables, per_variable, strict=True):
            if not np.array_equal(piece[1], months):
                raise ValueError(f"{path}: variable {name!r} has a different time axis")
        pieces.append((months, values, lat, lon, path))

    pieces.sort(key=lambda piece: piece[0][0])
    months, values, lat, lon, first_path = pieces[0]
    if lat.size == 0 or lon.size == 0:
        raise ValueError(
            f"dataset.region {region} selects no grid cell of {first_path} (latitudes "
            f"{lat.size}, longitudes {lon.size}); widen the region"
        )
    for previous, piece in zip(pieces, pieces[1:]):
        if not (np.array_equal(piece[2], lat) and np.array_equal(piece[3], lon)):
            raise ValueError(f"{piece[4]} has a different grid than {first_path}")
        if piece[0][0] != previous[0][-1] + 1:
            raise ValueError(
                f"{previous[4]} ends at {format_month(previous[0][-1])} but the next file, "
                f"{piece[4]}, starts at {format_month(piece[0][0])}; the ocean files must cover "
                "consecutive months without gaps or overlaps"
            )
    return OceanField(
        values=np.concatenate([piece[1] for piece in pieces]),
        months=np.concatenate([piece[0] for piece in pieces]),
        lat=lat,
        lon=lon,
        variables=tuple(variables),
        sources=tuple(str(piece[4]) for piece in pieces),
    )


# ----- precipitation ------------------------------------------------------------------------


def trimmed_series(values: np.ndarray, months: np.ndarray, source: str) -> MonthlySeries:
    present = np.flatnonzero(~np.isnan(values))
    if present.size == 0:
        raise ValueError(f"{source} holds no precipitation value for the requested area")
    keep = slice(present[0], present[-1] + 1)
    return MonthlySeries(values=values[keep], months=months[keep], source=source)


def normalise_state_code(code: int | str) -> str:
    """nClimDiv state code as three digits: 11, "11" and "011" all give "011"."""
    text = str(code).strip()
    if not text.isdigit() or len(text) > 3:
        raise ValueError(f"state code {code!r} in dataset.states is not a number of 1–3 digits")
    return text.zfill(3)


def read_climdiv(path: Path, states: Sequence[int | str]) -> MonthlySeries:
    """Mean monthly precipitation over ``states`` from an nClimDiv statewide file.

    A month is missing (NaN) when any of the states lacks it (``-9.99``), so the mean is always
    over the same states.

    Raises:
        ValueError: the file is empty or malformed, or lacks one of the states.
    """
    codes = [normalise_state_code(code) for code in states]
    if not codes:
        raise ValueError("dataset.states is empty; list at least one nClimDiv state code")
    records: dict[str, dict[int, np.ndarray]] = {code: {} for code in codes}
    with open(path) as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            key, fields = line[:CLIMDIV_KEY_WIDTH], line[CLIMDIV_KEY_WIDTH:].split()
            if len(fields) != MONTHS_PER_YEAR or not key.isdigit():
                raise ValueError(
                    f"{path} line {number} is not an nClimDiv record (10-digit key and 12 "
                    f"monthly values): {line.rstrip()!r}"
                )
            state, element, year = key[:3], key[4:6], int(key[6:10])
            if state in records and element == CLIMDIV_PRECIPITATION:
                records[state][year] = np.array(fields, dtype=np.float64)
    if not any(records.values()):
        raise ValueError(
            f"{path} holds no precipitation record (element {CLIMDIV_PRECIPITATION}) of states "
            f"{codes}; is it empty or an nClimDiv file of another element?"
        )
    absent = [code for code, years in records.items() if not years]
    if absent:
        raise ValueError(
            f"{path} has no record of states {absent}; set dataset.states to codes it holds"
        )

    years = sorted({year for by_year in records.values() for year in by_year})
    first, last = years[0], years[-1]
    table = np.full((len(codes), last - first + 1, MONTHS_PER_YEAR), np.nan)
    for row, code in enumerate(codes):
        for year, monthly in records[code].items():
            table[row, year - first] = monthly
    table[np.isclose(table, CLIMDIV_MISSING)] = np.nan
    months = np.arange(month_number(first, 1), month_number(last, 12) + 1, dtype=np.int64)
    return trimmed_series(table.reshape(len(codes), -1).mean(axis=0), months, str(path))


def read_gridded_precip(path: Path, variable: str, box: Box) -> MonthlySeries:
    """Area-weighted (cos latitude) mean of a gridded monthly precipitation field over ``box``.

    Cells without data (NaN) are left out of each month's mean; a month with no valid cell in
    the box is missing.
    """
    with open_netcdf(path) as dataset:
        field = require_variable(dataset, variable, path, "dataset.precip_variable")
        time, lat_name, lon_name = (
            require_coordinate(field, kind, path) for kind in ("time", "lat", "lon")
        )
        if set(field.dims) != {time, lat_name, lon_name}:
            raise ValueError(
                f"{path}: variable {variable!r} has dimensions {list(field.dims)}; expected "
                "time, latitude and longitude"
            )
        lat = np.asarray(field[lat_name].values, dtype=np.float64)
        lon = np.asarray(field[lon_name].values, dtype=np.float64)
        rows, cols, _ = box_indices(lat, lon, box)
        if rows.size == 0 or cols.size == 0:
            raise ValueError(
                f"dataset.precip_box {box} selects no grid cell of {path}; widen the box"
            )
        months = monthly_axis(field[time], path)
        values = field.transpose(time, lat_name, lon_name).isel({lat_name: rows, lon_name: cols})
        values = np.asarray(values.values, dtype=np.float64)  # (time, rows, cols)

    weights = np.cos(np.deg2rad(lat[rows]))[:, None] * np.ones(cols.size)
    valid = ~np.isnan(values)
    total = np.einsum("trc,rc->t", np.where(valid, values, 0.0), weights)
    weight = np.einsum("trc,rc->t", valid.astype(np.float64), weights)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(weight > 0, total / np.where(weight > 0, weight, 1.0), np.nan)
    return trimmed_series(mean, months, str(path))
