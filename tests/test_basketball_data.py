"""Basketball data: SportVU reading, sample extraction against constructed games, the DataModule."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from basketball_fixtures import PBP_GAME_IDS, pbp_dir, write_fixture  # noqa: E402
from datamodules import sportvu  # noqa: E402
from datamodules.basketball import BasketballDataModule  # noqa: E402
from datamodules.sportvu import ExtractionSettings, load_season, read_game, read_pbp  # noqa: E402
from mrtl_lightning.grids import discretise  # noqa: E402

COUNTED_RULES = (
    "duplicate_moments",
    "incomplete_moments",
    "null_shot_clock",
    "not_half_court",
    "no_handler",
    "defense_on_ball",
    "free_throw",
    "turnover",
)
FINE = {"court": (40, 50), "defenders": (12, 12)}
COARSE = {"court": (8, 10), "defenders": (6, 6)}


@pytest.fixture(scope="module")
def fixture_games(tmp_path_factory):
    games_dir = tmp_path_factory.mktemp("sportvu") / "games"
    return games_dir, write_fixture(games_dir)


@pytest.fixture(scope="module")
def season(fixture_games):
    games_dir, _ = fixture_games
    return load_season(games_dir, pbp_dir(), ExtractionSettings())


def _module(games_dir, cache_dir=None, **overrides) -> BasketballDataModule:
    arguments = {"min_handler_samples": 20, "batch_size": 64, "seed": 0}
    arguments.update(overrides)
    return BasketballDataModule(str(games_dir), str(pbp_dir()), cache_dir, **arguments)


def _game_samples(season, game_id):
    index = np.flatnonzero(season.samples["game"] == season.game_ids.index(game_id))
    return {name: values[index] for name, values in season.samples.items()}


# ----- extraction -----------------------------------------------------------------------------


def test_samples_are_exactly_the_constructed_frames(fixture_games, season):
    _, facts = fixture_games
    for game_id, game_facts in facts.items():
        samples = _game_samples(season, game_id)
        expected = game_facts.samples
        assert sorted(samples["unix_ms"].tolist()) == sorted(expected)
        for position, unix_ms in enumerate(samples["unix_ms"].tolist()):
            handler, label, (x, y) = expected[unix_ms]
            assert samples["handler"][position] == handler
            assert samples["label"][position] == label
            np.testing.assert_allclose(samples["court"][position], [x / 47, y / 50], atol=1e-5)


def test_every_dropped_moment_is_counted_under_its_rule(fixture_games, season):
    _, facts = fixture_games
    for rule in COUNTED_RULES:
        expected = sum(game_facts.drops[rule] for game_facts in facts.values())
        assert season.counts[rule] == expected, rule
    assert season.counts["incomplete_moments"] > 0 and season.counts["null_shot_clock"] > 0
    assert season.counts["free_throw"] > 0 and season.counts["duplicate_moments"] > 0


def test_positive_labels_are_field_goal_attempts_of_the_handler_in_the_real_pbp(season):
    for game_id in season.game_ids:
        pbp = read_pbp(pbp_dir() / f"{game_id}.csv")
        shots = pbp[pbp["EVENTMSGTYPE"].isin([1, 2])]
        samples = _game_samples(season, game_id)
        positives = np.flatnonzero(samples["label"] == 1)
        assert len(positives) > 0
        for position in positives:
            lag = samples["game_clock"][position] - shots["clock_s"].to_numpy()
            match = (
                (shots["PERIOD"].to_numpy() == samples["period"][position])
                & (shots["PLAYER1_ID"].to_numpy() == samples["handler"][position])
                & (lag >= 0)
                & (lag <= 1.5)
            )
            assert match.any()


def test_possessions_attacking_the_far_basket_are_turned_180_degrees(fixture_games, season):
    _, facts = fixture_games
    turned = 0
    for game_id, game_facts in facts.items():
        samples = _game_samples(season, game_id)
        for position, unix_ms in enumerate(samples["unix_ms"].tolist()):
            raw_x, raw_y = game_facts.raw_positions[unix_ms]
            if raw_x > 47:
                expected = [(94 - raw_x) / 47, (50 - raw_y) / 50]
                turned += 1
            else:
                expected = [raw_x / 47, raw_y / 50]
            np.testing.assert_allclose(samples["court"][position], expected, atol=1e-5)
    assert 0 < turned < len(season.samples["label"])


def test_nearest_defender_lands_in_the_hand_computed_cell(fixture_games, season):
    _, facts = fixture_games
    unix_ms = season.samples["unix_ms"].tolist()
    row_of = {stamp: row for row, stamp in enumerate(unix_ms)}
    for game_facts in facts.values():
        for probe in game_facts.probes:
            rows = torch.tensor([row_of[stamp] for stamp in probe["unix_ms"]])
            nearest = torch.from_numpy(season.samples["defenders"][rows.numpy(), 0]).double()
            for grid, cell in (((12, 12), probe["cell12"]), ((6, 6), probe["cell6"])):
                expected = cell[0] * grid[1] + cell[1]
                assert (discretise(nearest, grid) == expected).all(), (probe, grid)


def test_seven_zip_archive_reads_as_the_plain_json(tmp_path):
    write_fixture(tmp_path / "plain", game_ids=PBP_GAME_IDS[:1])
    write_fixture(tmp_path / "packed", game_ids=PBP_GAME_IDS[:1], archive=True)

    plain = read_game(tmp_path / "plain" / f"{PBP_GAME_IDS[0]}.json")
    packed = read_game(tmp_path / "packed" / f"{PBP_GAME_IDS[0]}.7z")

    assert packed == plain


def test_frame_stride_keeps_every_kth_moment(fixture_games, season):
    games_dir, _ = fixture_games
    strided = load_season(games_dir, pbp_dir(), ExtractionSettings(frame_stride=5))

    kept = set(strided.samples["unix_ms"].tolist())
    assert kept <= set(season.samples["unix_ms"].tolist())
    assert abs(len(kept) - len(season.samples["label"]) / 5) < 0.05 * len(kept)


def test_parallel_workers_give_the_in_process_samples(fixture_games, season):
    games_dir, _ = fixture_games
    parallel = load_season(games_dir, pbp_dir(), ExtractionSettings(), workers=2)

    for name, values in season.samples.items():
        np.testing.assert_array_equal(parallel.samples[name], values)
    assert parallel.counts == season.counts


# ----- bad input ------------------------------------------------------------------------------


def test_unreadable_games_and_games_without_pbp_are_skipped_with_a_warning(
    fixture_games, tmp_path, caplog
):
    games_dir, _ = fixture_games
    mixed = tmp_path / "games"
    mixed.mkdir()
    source = games_dir / f"{PBP_GAME_IDS[0]}.json"
    shutil.copy(source, mixed / source.name)
    text = source.read_text()
    (mixed / "truncated.json").write_text(text[: len(text) // 2])
    (mixed / "notes.json").write_text("not json at all")
    (mixed / "0021599999.json").write_text(text.replace(PBP_GAME_IDS[0], "0021599999"))

    with caplog.at_level(logging.WARNING, logger="datamodules.sportvu"):
        mixed_season = load_season(mixed, pbp_dir(), ExtractionSettings())

    assert mixed_season.game_ids == [PBP_GAME_IDS[0]]
    assert mixed_season.counts["unreadable_games"] == 2
    assert mixed_season.counts["games_without_pbp"] == 1
    assert sum("truncated.json" in message for message in caplog.messages) == 1
    assert sum("0021599999" in message for message in caplog.messages) == 1


def test_pbp_without_required_columns_names_the_file_and_columns(tmp_path):
    csv = tmp_path / "0021500022.csv"
    csv.write_text("GAME_ID,EVENTNUM,PERIOD,PCTIMESTRING\n21500022,1,1,12:00\n")

    with pytest.raises(ValueError, match=r"0021500022\.csv.*'EVENTMSGTYPE', 'PLAYER1_ID'"):
        read_pbp(csv)


def test_missing_games_folder_says_which_setting_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset.games_dir"):
        load_season(tmp_path / "absent", pbp_dir(), ExtractionSettings())


# ----- the DataModule -------------------------------------------------------------------------


def test_second_setup_reads_the_cache_without_parsing(fixture_games, tmp_path, monkeypatch):
    games_dir, _ = fixture_games
    first = _module(games_dir, str(tmp_path / "cache"))
    first.setup("fit")
    assert not first.season.from_cache
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".npz"]

    def must_not_parse(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(sportvu, "extract_game_file", must_not_parse)
    second = _module(games_dir, str(tmp_path / "cache"))
    second.setup("fit")

    assert second.season.from_cache
    np.testing.assert_array_equal(second.season.samples["court"], first.season.samples["court"])
    assert second.describe()["train_samples"] == first.describe()["train_samples"]


def test_setup_twice_prepares_once(fixture_games):
    module = _module(fixture_games[0])
    module.setup("fit")
    season = module.season

    module.setup("fit")

    assert module.season is season


def test_batches_follow_the_sparse_contract(fixture_games):
    module = _module(fixture_games[0])
    module.setup("fit")
    module.set_resolution(FINE)

    data = module.dataset("train")
    batch = data[torch.arange(len(data))]

    n = len(data)
    assert batch["entity"].shape == (n, 1) and batch["entity"].dtype == torch.long
    assert batch["cells"]["court"].shape == (n, 1)
    assert batch["cells"]["defenders"].shape == (n, 5)
    assert (batch["values"]["court"] == 1).all()
    present = batch["values"]["defenders"] == 1
    assert present.any() and (~present).any()
    assert (batch["cells"]["defenders"][~present] == 0).all()
    assert batch["cells"]["court"].max() < 40 * 50
    assert batch["target"].shape == (n,) and batch["target"].dtype == torch.float32
    assert module.spec.entity_modes[0][1] == len(module.handler_ids)


def test_coarse_cells_are_parents_of_fine_cells(fixture_games):
    module = _module(fixture_games[0])
    module.setup("fit")
    fine = module.build_split("train", FINE)[torch.arange(len(module.targets("train")))]
    coarse = module.build_split("train", COARSE)[torch.arange(len(module.targets("train")))]

    court = fine["cells"]["court"]
    court_parent = (court // 50 // 5) * 10 + (court % 50) // 5
    assert torch.equal(coarse["cells"]["court"], court_parent)
    defenders = fine["cells"]["defenders"]
    defender_parent = (defenders // 12 // 2) * 6 + (defenders % 12) // 2
    present = fine["values"]["defenders"] == 1
    assert torch.equal(coarse["cells"]["defenders"][present], defender_parent[present])
    assert torch.equal(coarse["values"]["defenders"], fine["values"]["defenders"])


def test_three_games_split_by_game_and_one_game_by_possession(fixture_games, tmp_path):
    games_dir, _ = fixture_games
    module = _module(games_dir)
    module.setup("fit")
    summary = module.describe()
    assert summary["split_by"] == "game"
    games = module.season.samples["game"]
    split_games = [set(games[module._split_index[s].numpy()].tolist()) for s in module._split_index]
    assert all(len(found) == 1 for found in split_games)
    assert len(set.union(*split_games)) == 3
    assert summary["games"] == 3 and 0 < summary["train_positive_rate"] < 1

    single = tmp_path / "one"
    single.mkdir()
    shutil.copy(games_dir / f"{PBP_GAME_IDS[0]}.json", single)
    one_game = _module(single)
    one_game.setup("fit")
    assert one_game.describe()["split_by"] == "possession"
    assert all(len(one_game.targets(split)) > 0 for split in ("train", "val", "test"))


def test_rare_handlers_share_the_other_entity(fixture_games):
    everyone = _module(fixture_games[0], min_handler_samples=1)
    everyone.setup("fit")
    nobody = _module(fixture_games[0], min_handler_samples=10**9)
    nobody.setup("fit")

    assert nobody.spec.entity_modes == (("handler", 1),)
    assert (nobody._entity == 0).all()
    train_handlers = np.unique(
        everyone.season.samples["handler"][everyone._split_index["train"].numpy()]
    )
    assert everyone.spec.entity_modes == (("handler", len(train_handlers) + 1),)


def test_plot_spatial_draws_both_modes_with_blank_nan(fixture_games):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    module = _module(fixture_games[0])
    module.setup("fit")
    figure, (court_ax, defenders_ax) = plt.subplots(1, 2)
    court = np.random.default_rng(0).random((8, 10))
    court[0, 0] = np.nan

    court_image = module.plot_spatial(court_ax, "court", court)
    defender_image = module.plot_spatial(defenders_ax, "defenders", np.ones((6, 6)))

    assert court_image.get_extent() == [0, 50, 47, 0]
    assert np.ma.is_masked(court_image.get_array()[0, 0])
    assert defender_image.get_extent()[3] == pytest.approx(19.0)
    plt.close(figure)
