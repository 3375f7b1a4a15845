"""The climate DataModule: real ERSST v5 + nClimDiv files, other file layouts, and bad input."""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from hydra.utils import instantiate

from conftest import compose_config, data_dir
from datamodules import climate, climate_io
from datamodules.climate import ClimateDataModule

CLIMATE_DIR = data_dir() / "climate"
ERSST = "ersst_v5_2010-01_2020-08.nc"
CLIMDIV = "climdiv-pcpnst-v1.0.0-20210805.txt"


def real_datamodule(**overrides) -> ClimateDataModule:
    arguments = {"data_dir": CLIMATE_DIR, "ocean_files": ERSST, "download": "never"}
    arguments.update(overrides)
    return ClimateDataModule(**arguments)


@pytest.fixture(scope="module")
def ersst() -> ClimateDataModule:
    datamodule = real_datamodule()
    datamodule.setup("fit")
    return datamodule


def batch(datamodule: ClimateDataModule, split: str, grid) -> dict[str, torch.Tensor]:
    """Every sample of ``split`` at ``grid`` as one batch."""
    dataset = datamodule.build_split(split, {"ocean": tuple(grid)})
    return dataset[torch.arange(len(dataset))]


# ----- small files in the layouts the readers accept ----------------------------------------

SYNTHETIC_LAT = np.arange(88.0, -89.0, -4.0)  # north to south, 4°
SYNTHETIC_LON = np.arange(0.0, 360.0, 4.0)  # 0–360
SYNTHETIC_MONTHS = pd.date_range("2000-01-01", periods=96, freq="MS")
SYNTHETIC_REGION_GRID = (20, 45)  # 20°S–60°N, 180°W–0° at 4°


def synthetic_fields(variables: int = 2) -> np.ndarray:
    """(variable, time, lat, lon) fields with a land block and one cell iced over in one month."""
    rng = np.random.default_rng(7)
    seasonal = np.sin(2 * np.pi * np.arange(SYNTHETIC_MONTHS.size) / 12)[:, None, None]
    fields = []
    for variable in range(variables):
        trend = 0.01 * np.arange(SYNTHETIC_MONTHS.size)[:, None, None]
        noise = rng.normal(size=(SYNTHETIC_MONTHS.size, SYNTHETIC_LAT.size, SYNTHETIC_LON.size))
        field = 20 + 5 * variable + 3 * seasonal + trend + noise
        field[:, 10:15, 60:70] = np.nan  # land inside the region
        field[7, 12, 50] = np.nan  # sea ice for one month
        fields.append(field.astype(np.float32))
    return np.stack(fields)


def write_ocean(path: Path, fields: dict[str, np.ndarray], lat, lon, time, depth=None) -> None:
    """Write (time, lat, lon) fields, or (time, depth, lat, lon) ones when ``depth`` is given."""
    dims = ("time", "lat", "lon") if depth is None else ("time", "depth", "lat", "lon")
    coords = {"time": time, "lat": lat, "lon": lon}
    if depth is not None:
        coords["depth"] = depth
    xr.Dataset({name: (dims, values) for name, values in fields.items()}, coords=coords).to_netcdf(
        path
    )


def write_climdiv(path: Path, years, states=("011",), missing=(), seed=3) -> np.ndarray:
    """An nClimDiv file of random monthly precipitation; returns the (years, 12) state mean."""
    rng = np.random.default_rng(seed)
    table = rng.uniform(0.5, 6.0, size=(len(states), len(years), 12)).round(2)
    for year_index, month_index in missing:
        table[:, year_index, month_index] = -9.99
    lines = [
        f"{state}001{year}" + "".join(f"{value:7.2f}" for value in table[row, column])
        for row, state in enumerate(states)
        for column, year in enumerate(years)
    ]
    path.write_text("\n".join(lines) + "\n")
    return table.mean(axis=0)


def canonical_layout(folder: Path, fields: np.ndarray, names) -> None:
    write_ocean(
        folder / "ocean.nc",
        dict(zip(names, fields, strict=True)),
        SYNTHETIC_LAT,
        SYNTHETIC_LON,
        SYNTHETIC_MONTHS,
    )


def signed_longitude_layout(folder: Path, fields: np.ndarray, names) -> None:
    lon = np.where(SYNTHETIC_LON >= 180, SYNTHETIC_LON - 360, SYNTHETIC_LON)
    order = np.argsort(lon)
    shuffled = dict(zip(names, fields[..., order], strict=True))
    write_ocean(folder / "ocean.nc", shuffled, SYNTHETIC_LAT, lon[order], SYNTHETIC_MONTHS)


def ascending_latitude_layout(folder: Path, fields: np.ndarray, names) -> None:
    flipped = dict(zip(names, fields[:, :, ::-1], strict=True))
    write_ocean(folder / "ocean.nc", flipped, SYNTHETIC_LAT[::-1], SYNTHETIC_LON, SYNTHETIC_MONTHS)


def en4_layout(folder: Path, fields: np.ndarray, names) -> None:
    """One file per month, mid-month stamps, a depth axis, Kelvin, ascending lat, ±180 lon."""
    lon = np.where(SYNTHETIC_LON >= 180, SYNTHETIC_LON - 360, SYNTHETIC_LON)
    order = np.argsort(lon)
    surface = fields[:, :, ::-1][..., order]
    surface[0] = surface[0] + 273.15
    deep = np.full_like(surface, 999.0)
    for month, stamp in enumerate(SYNTHETIC_MONTHS):
        levels = np.stack([surface[:, month : month + 1], deep[:, month : month + 1]], axis=2)
        write_ocean(
            folder / f"EN.4.2.2.f.analysis.g10.{stamp:%Y%m}.nc",
            dict(zip(names, levels, strict=True)),
            SYNTHETIC_LAT[::-1],
            lon[order],
            [stamp + pd.Timedelta(days=15)],
            depth=np.array([5.02, 15.1]),
        )


def synthetic_datamodule(folder: Path, ocean_files="ocean.nc", **overrides) -> ClimateDataModule:
    arguments = dict(
        data_dir=folder,
        ocean_files=ocean_files,
        variables=["temperature", "salinity"],
        precip_file="precip.txt",
        states=["011"],
        lag=3,
        download="never",
    )
    arguments.update(overrides)
    return ClimateDataModule(**arguments)


# ----- the real files ----------------------------------------------------------------------


def test_paper_region_is_40_by_90_cells_of_ersst(ersst):
    train = batch(ersst, "train", (40, 90))

    assert ersst.native_grid == (40, 90)
    assert ersst.spec.feature_modes == (("lag", 6), ("variable", 1))
    assert train["dense"].shape == (len(ersst.targets("train")), 6, 1, 40, 90)
    assert train["dense"].dtype == torch.float32 and train["target"].dtype == torch.float32
    assert ersst.extent == [-181.0, -1.0, -21.0, 59.0]


def test_land_is_masked_and_zero_in_the_input(ersst):
    mask = ersst.mask("ocean", (40, 90))
    train = batch(ersst, "train", (40, 90))

    assert mask.dtype == torch.bool and mask.shape == (40, 90)
    # The box holds North and Central America and the north of South America.
    assert 0.1 < ersst.describe()["masked_fraction"] < 0.4
    assert torch.all(train["dense"][..., ~mask] == 0)
    assert train["dense"][..., mask].std() > 0


def test_samples_split_sixty_twenty_twenty_in_blocks_of_months(ersst):
    counts = {split: len(ersst.targets(split)) for split in ("train", "val", "test")}
    months = np.concatenate([ersst.sample_months(split) for split in counts])

    assert sum(counts.values()) == 122  # 2010-08 .. 2020-09
    for split, share in zip(counts, (0.6, 0.2, 0.2), strict=True):
        assert abs(counts[split] - share * 122) <= 12
    assert np.unique(months).size == months.size
    assert ersst.describe()["first_month"] == "2010-08"


def test_statistics_come_from_training_months_only(ersst, tmp_path):
    train_months = ersst.sample_months("train")
    read_by_train = {t - back for t in train_months for back in range(1, ersst.lag + 2)}
    with xr.open_dataset(CLIMATE_DIR / ERSST) as original:
        perturbed = original.load()
    stamps = perturbed.time.dt.year.values * 12 + perturbed.time.dt.month.values - 1
    unread = np.array([month not in read_by_train for month in stamps])
    perturbed["sst"][dict(time=np.flatnonzero(unread))] += 5.0
    perturbed["sst"].encoding.pop("missing_value")  # xarray refuses it beside a NaN _FillValue
    perturbed.to_netcdf(tmp_path / ERSST)
    held_out = {int(t) for split in ("val", "test") for t in ersst.sample_months(split)}
    lines = []
    for line in (CLIMATE_DIR / CLIMDIV).read_text().splitlines():
        year = int(line[6:10])
        values = [float(value) for value in line[10:].split()]
        values = [v * 2 if year * 12 + m in held_out else v for m, v in enumerate(values)]
        lines.append(line[:10] + "".join(f"{value:7.2f}" for value in values))
    (tmp_path / CLIMDIV).write_text("\n".join(lines) + "\n")

    datamodule = real_datamodule(data_dir=tmp_path)
    datamodule.setup()

    assert unread.sum() > 10
    for name, value in ersst.statistics.items():
        np.testing.assert_array_equal(datamodule.statistics[name], value, err_msg=name)
    assert torch.equal(
        batch(datamodule, "train", (40, 90))["dense"], batch(ersst, "train", (40, 90))["dense"]
    )
    assert torch.equal(datamodule.targets("train"), ersst.targets("train"))
    assert not torch.equal(datamodule.targets("val"), ersst.targets("val"))


def test_lagged_inputs_match_a_direct_computation(ersst):
    with xr.open_dataset(CLIMATE_DIR / ERSST) as dataset:
        sst = dataset.sst.assign_coords(lon=(dataset.lon + 180) % 360 - 180).sortby("lon")
        box = sst.sel(lat=slice(58, -20), lon=slice(-180, -2))
        raw = box.values.astype(np.float64)  # (time, 40, 90), north to south
        first = int(box.time.dt.year[0]) * 12 + int(box.time.dt.month[0]) - 1
    land = np.isnan(raw).any(axis=0)
    stats = ersst.statistics
    chosen = torch.tensor([0, 17, len(ersst.targets("val")) - 1])
    dense = ersst.build_split("val", {"ocean": (40, 90)})[chosen]["dense"]

    for row, sample in enumerate(chosen.tolist()):
        target_month = ersst.sample_months("val")[sample]
        for step in range(ersst.lag):
            month = target_month - ersst.lag + step
            difference = raw[month - first] - raw[month - first - 1]
            calendar = month % 12
            anomaly = (difference - stats["ocean_mean"][calendar, 0]) / stats["ocean_std"][
                calendar, 0
            ]
            span = stats["ocean_max"][0] - stats["ocean_min"][0]
            scaled = (anomaly - stats["ocean_min"][0]) / span
            expected = np.where(land, 0.0, scaled)
            np.testing.assert_allclose(dense[row, step, 0].numpy(), expected, atol=1e-5)


def test_training_inputs_span_zero_to_one_and_targets_are_standardised(ersst):
    train = batch(ersst, "train", (40, 90))
    calendar = ersst.sample_months("train") % 12

    assert train["dense"].min() == 0 and train["dense"].max() == pytest.approx(1.0)
    for month in range(12):
        targets = train["target"][torch.from_numpy(calendar == month)]
        assert targets.mean().abs() < 1e-5
        assert targets.std() == pytest.approx(1.0, abs=1e-5)


def test_target_is_the_mean_over_the_midwest_states(ersst):
    rows = [
        line.split()
        for line in (CLIMATE_DIR / CLIMDIV).read_text().splitlines()
        if line[:3] in climate.MIDWEST_STATES and line[6:10] == "2015"
    ]
    july = np.mean([float(row[7]) for row in rows])
    stats = ersst.statistics
    month = 2015 * 12 + 6
    split = next(s for s in ("train", "val", "test") if month in ersst.sample_months(s))
    index = int(np.flatnonzero(ersst.sample_months(split) == month)[0])

    assert len(rows) == 12
    expected = (july - stats["precip_mean"][6]) / stats["precip_std"][6]
    assert ersst.targets(split)[index].item() == pytest.approx(expected, rel=1e-5)


def test_persistence_is_last_months_target(ersst):
    months = ersst.sample_months("train")
    persistence = ersst.baselines("train")["persistence"]
    targets = ersst.targets("train")
    follows = np.flatnonzero(np.diff(months) == 1) + 1

    assert torch.equal(ersst.baselines("train")["climatology"], torch.zeros_like(targets))
    assert torch.allclose(persistence[follows], targets[follows - 1])


def test_regridding_is_cached_in_memory_and_on_disk(tmp_path, monkeypatch):
    first = real_datamodule(cache_dir=tmp_path)
    first.setup()
    train = first.build_split("train", {"ocean": (12, 27)})
    val = first.build_split("val", {"ocean": (12, 27)})

    def no_regridding(*args, **kwargs):
        raise AssertionError("the cached grid was regridded again")

    monkeypatch.setattr(climate, "conservative_regrid", no_regridding)
    second = real_datamodule(cache_dir=tmp_path)
    second.setup()
    again = second.build_split("train", {"ocean": (12, 27)})

    assert val.field is train.field
    assert len(list(tmp_path.glob("climate-*-12x27.npz"))) == 1
    assert torch.equal(again.field, train.field)
    assert torch.equal(second.mask("ocean", (12, 27)), first.mask("ocean", (12, 27)))
    assert second.build_split("train", {"ocean": (40, 90)}).field.shape[-2:] == (40, 90)


def test_setup_prepares_once(ersst, monkeypatch):
    monkeypatch.setattr(climate, "read_ocean", lambda *args: pytest.fail("setup read again"))

    ersst.setup("fit")
    ersst.setup("test")


def test_grid_finer_than_the_data_is_refused(ersst):
    with pytest.raises(ValueError, match=r"80×180.*native grid 40×90"):
        ersst.set_resolution({"ocean": (80, 180)})


def test_describe_is_json_ready(ersst):
    summary = json.loads(json.dumps(ersst.describe()))

    assert summary["native_grid"] == [40, 90]
    assert summary["variables"] == ["sst"] and summary["dropped_precip_months"] == 0


def test_plot_spatial_draws_on_the_region_with_masked_cells_blank(ersst):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = torch.rand(8, 18)
    image[~ersst.mask("ocean", (8, 18))] = float("nan")
    figure, ax = plt.subplots(subplot_kw=ersst.figure_axes_kwargs("ocean"))
    artist = ersst.plot_spatial(ax, "ocean", image, cmap="RdBu_r")
    plt.close(figure)

    assert list(artist.get_extent()) == ersst.extent
    assert artist.get_array().mask.sum() == (~ersst.mask("ocean", (8, 18))).sum()


def test_dataset_configs_build_the_datamodule(tmp_path):
    config = compose_config(tmp_path, "dataset=climate", f"paths.data_dir={CLIMATE_DIR.parent}")
    en4 = compose_config(tmp_path, "experiment=climate_en4")

    datamodule = instantiate(config.dataset, download="never")
    datamodule.setup()

    assert datamodule.describe()["train_samples"] > 60
    assert set(en4.dataset) - {"_target_"} <= set(inspect.signature(ClimateDataModule).parameters)
    assert en4.dataset.variables == ["temperature", "salinity"]
    assert en4.schedule.low_rank[-1].ocean == [80, 180]


# ----- other layouts give the same arrays -----------------------------------------------------


@pytest.mark.parametrize(
    "layout, ocean_files",
    [
        (signed_longitude_layout, "ocean.nc"),
        (ascending_latitude_layout, "ocean.nc"),
        (en4_layout, ["EN.4.2.2.f.analysis.g10.*.nc"]),
    ],
    ids=["lon_-180_180", "lat_ascending", "en4_monthly_files_with_depth"],
)
def test_file_layouts_give_the_canonical_arrays(tmp_path, layout, ocean_files):
    fields = synthetic_fields()
    names = ["temperature", "salinity"]
    for folder in ("canonical", "other"):
        (tmp_path / folder).mkdir()
        write_climdiv(tmp_path / folder / "precip.txt", range(2000, 2008))
    canonical_layout(tmp_path / "canonical", fields, names)
    layout(tmp_path / "other", fields, names)

    expected = synthetic_datamodule(tmp_path / "canonical")
    actual = synthetic_datamodule(tmp_path / "other", ocean_files=ocean_files)
    expected.setup()
    actual.setup()

    assert actual.native_grid == SYNTHETIC_REGION_GRID
    for grid in (SYNTHETIC_REGION_GRID, (7, 10)):
        assert torch.equal(actual.mask("ocean", grid), expected.mask("ocean", grid))
        for split in ("train", "test"):
            np.testing.assert_allclose(
                batch(actual, split, grid)["dense"],
                batch(expected, split, grid)["dense"],
                atol=2e-3,
            )
    assert torch.equal(actual.targets("val"), expected.targets("val"))
    assert actual.describe()["masked_fraction"] == pytest.approx(51 / 900)


def test_gridded_precipitation_is_the_area_weighted_mean_over_the_box(tmp_path):
    canonical_layout(tmp_path, synthetic_fields(), ["temperature", "salinity"])
    lat = np.arange(30.5, 52.0, 1.0)
    lon = np.arange(-110.5, -70.0, 1.0)
    rain = np.random.default_rng(1).uniform(0, 200, (SYNTHETIC_MONTHS.size, lat.size, lon.size))
    rain[:, 10, 20] = np.nan  # a cell without data inside the box
    rain[[0, 20]] = np.nan  # months without data anywhere: trimmed at the start, dropped inside
    xr.Dataset(
        {"ppt": (("time", "lat", "lon"), rain)},
        coords={"time": SYNTHETIC_MONTHS, "lat": lat, "lon": lon},
    ).to_netcdf(tmp_path / "prism.nc")
    box = {"lat_min": 36.0, "lat_max": 49.0, "lon_min": -104.0, "lon_max": -80.0}
    rows = (lat >= 36) & (lat < 49)
    cols = (lon >= -104) & (lon < -80)
    inside = rain[:, rows][:, :, cols]
    weights = np.cos(np.deg2rad(lat[rows]))[:, None] * ~np.isnan(inside)
    with np.errstate(invalid="ignore"):
        expected = np.nansum(inside * weights, axis=(1, 2)) / weights.sum(axis=(1, 2))

    series = climate_io.read_gridded_precip(
        tmp_path / "prism.nc", "ppt", climate_io.as_box(box, "box")
    )
    datamodule = synthetic_datamodule(
        tmp_path, precip_file="prism.nc", precip_kind="gridded", precip_box=box
    )
    datamodule.setup()

    assert inside.shape[1:] == (13, 24)
    np.testing.assert_allclose(series.values, expected[1:])
    assert series.months[0] == 2000 * 12 + 1
    assert datamodule.describe()["precip_record"] == "2000-02..2007-12"
    assert datamodule.describe()["dropped_precip_months"] == 1


# ----- bad input ----------------------------------------------------------------------------


def test_missing_variable_lists_the_file_variables():
    expected = r"no variable 'salinity'; found \['sst'\].*dataset.variables"
    with pytest.raises(ValueError, match=expected):
        real_datamodule(variables=["salinity"]).setup()


def test_non_monthly_time_axis_names_the_file(tmp_path):
    winters = pd.date_range("2000-01-01", periods=10, freq="12MS")
    fields = synthetic_fields()[:, :10]
    write_ocean(
        tmp_path / "winters.nc",
        {"temperature": fields[0], "salinity": fields[1]},
        SYNTHETIC_LAT,
        SYNTHETIC_LON,
        winters,
    )
    write_climdiv(tmp_path / "precip.txt", range(2000, 2010))

    with pytest.raises(ValueError, match=r"winters.nc: time axis is not monthly.*\[12\] months"):
        synthetic_datamodule(tmp_path, ocean_files="winters.nc").setup()


def test_records_that_do_not_overlap_are_refused(tmp_path):
    write_climdiv(tmp_path / "precip.txt", range(1950, 1961), states=climate.MIDWEST_STATES)

    with pytest.raises(ValueError, match=r"2010-01..2020-08.*1950-01..1960-12.*do not overlap"):
        real_datamodule(precip_file=str(tmp_path / "precip.txt")).setup()


def test_too_short_an_overlap_is_refused(tmp_path):
    write_climdiv(tmp_path / "precip.txt", range(2019, 2022), states=climate.MIDWEST_STATES)

    expected = r"2010-01..2020-08.*2019-01..2021-12.*only 21 target months"
    with pytest.raises(ValueError, match=expected):
        real_datamodule(precip_file=str(tmp_path / "precip.txt")).setup()


def test_missing_precipitation_months_are_dropped_with_a_warning(tmp_path, caplog):
    canonical_layout(tmp_path, synthetic_fields(), ["temperature", "salinity"])
    write_climdiv(tmp_path / "precip.txt", range(2000, 2008), missing=[(2, 3), (2, 4), (3, 0)])
    complete = tmp_path / "complete"
    complete.mkdir()
    canonical_layout(complete, synthetic_fields(), ["temperature", "salinity"])
    write_climdiv(complete / "precip.txt", range(2000, 2008))

    with caplog.at_level(logging.WARNING, logger="datamodules.climate"):
        datamodule = synthetic_datamodule(tmp_path)
        datamodule.setup()
    reference = synthetic_datamodule(complete)
    reference.setup()
    summary, full = datamodule.describe(), reference.describe()
    samples = [sum(s[f"{split}_samples"] for split in climate.SPLITS) for s in (summary, full)]

    assert "3 month(s) without precipitation" in caplog.text
    assert "2002-04, 2002-05, 2003-01" in caplog.text
    assert summary["dropped_precip_months"] == 3 and samples[0] == samples[1] - 3
    assert all(np.isfinite(datamodule.targets(split)).all() for split in ("train", "val", "test"))


def test_region_without_ocean_is_refused():
    land = {"lat_min": 36.0, "lat_max": 48.0, "lon_min": -100.0, "lon_max": -90.0}

    expected = r"dataset.region lat \[36, 48\).*NaN.*move dataset.region"
    with pytest.raises(ValueError, match=expected):
        real_datamodule(region=land).setup()


def test_empty_files_are_refused(tmp_path):
    (tmp_path / "ocean.nc").write_bytes(b"")
    (tmp_path / "precip.txt").write_text("")
    canonical_dir = tmp_path / "ocean_ok"
    canonical_dir.mkdir()
    canonical_layout(canonical_dir, synthetic_fields(), ["temperature", "salinity"])

    with pytest.raises(ValueError, match=r"ocean.nc is empty"):
        synthetic_datamodule(tmp_path).setup()
    with pytest.raises(ValueError, match=r"precip.txt holds no precipitation record"):
        synthetic_datamodule(canonical_dir, precip_file=str(tmp_path / "precip.txt")).setup()


def test_missing_file_names_the_url_and_the_settings(tmp_path):
    with pytest.raises(FileNotFoundError) as never:
        ClimateDataModule(tmp_path, ocean_files="sst.mnmean.nc", download="never").setup()
    with pytest.raises(FileNotFoundError, match=r"no public URL.*dataset.data_dir"):
        synthetic_datamodule(tmp_path, download="auto").setup()

    assert "sst.mnmean.nc" in str(never.value)
    assert "https://downloads.psl.noaa.gov/Datasets/noaa.ersst.v5/sst.mnmean.nc" in str(never.value)
    assert "dataset.data_dir=" in str(never.value) and "dataset.download=never" in str(never.value)


def test_failed_download_names_the_url_and_the_settings(tmp_path, monkeypatch):
    import pooch

    def offline(*args, **kwargs):
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(pooch, "retrieve", offline)

    url = "https://www.ncei.noaa.gov/pub/data/cirs/climdiv/climdiv-pcpnst-x.txt"
    with pytest.raises(FileNotFoundError, match=rf"fetching {url} failed.*dataset.download=never"):
        climate_io.resolve_file(tmp_path, "climdiv-pcpnst-x.txt", "auto")
