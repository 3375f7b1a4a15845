"""SportVU tracking + play-by-play -> ball-handler shot samples (paper §6.1 and appendix B).

One sample is one tracking frame of a half-court possession: who holds the ball, where he
stands on the half court, where the defenders stand around him, and whether he takes a
field-goal attempt within the next second. Samples are kept in continuous coordinates (fractions
of the half court and of the defender box) so any grid of the schedule is a re-discretisation.

Rules, applied in this order to every game (each dropped moment is counted under the first rule
it fails; the counts are returned with the samples):

1. **Duplicates** (``duplicate_moments``): consecutive SportVU events overlap in time, so a
   moment can appear in several events. Moments are keyed by their unix time stamp (unique per
   frame, whereas the game clock stands still during dead balls), the first copy is kept and
   the game is put in time order.
2. **Frame rate**: every ``frame_stride``-th moment of that 25 Hz sequence is kept (1 = all
   frames, as in the paper; 5 = 5 Hz).
3. **Incomplete moments** (``incomplete_moments``): a moment needs exactly eleven entries, the
   ball first (team -1) and five players of each team; anything else is skipped.
4. **Null shot clock** (``null_shot_clock``): moments without a shot clock are skipped.
5. **Ball out of court** (``ball_out_of_court``): the ball must lie on the 94 × 50 ft court.
6. **Half court** (``not_half_court``): the ball and all ten players must be in the same half
   (``x < 47`` or ``x > 47``), i.e. the possession has crossed into the half court.
7. **Ball handler** (``no_handler``): the handler is the player nearest the ball in the floor
   plane; he must be within ``handler_radius_ft`` (4 ft). A ball in flight — passes, shots,
   loose balls — has no handler, which is how passing frames are discarded.
8. **Offense** (``defense_on_ball``): the offense is the handler's team, but only in the half
   that team attacks. The half a team attacks in a period is the half where it holds the ball in
   most of its frames that survive rules 1–7 (ties go to the ``x < 47`` half). Frames where
   a defender is nearest the ball in his own defensive half (deflections, defensive rebounds
   before the players leave) are dropped.
9. **Play-by-play windows**: ``PCTIMESTRING`` has one-second resolution and is the game clock
   truncated to whole seconds, so an event logged at ``T`` happened at a clock in
   ``[T, T + 1)``; we place it at the bin centre ``T + 0.5``. The window of the event is the
   clock range ``[T, T + 0.5 + horizon_s]`` of the same period: the frames up to ``horizon_s``
   (1 s) before the event, plus the rest of its own bin.

   * frames inside the window of a free throw (``EVENTMSGTYPE`` 3) are dropped
     (``free_throw``): the clock stands still at the free-throw line, so this removes the
     whole free-throw sequence;
   * frames inside the window of a turnover (``EVENTMSGTYPE`` 5) are dropped (``turnover``):
     the next second of those possessions ends in a lost ball, neither a shot nor a decision
     not to shoot;
   * **label**: 1 when the frame lies inside the window of a field-goal attempt
     (``EVENTMSGTYPE`` 1 made or 2 missed) whose ``PLAYER1_ID`` is the handler, else 0.

10. **Orientation**: every possession is turned to attack the basket near ``x = 0``. Possessions
    attacking the ``x = 94`` basket are rotated by 180° about the court centre,
    ``(x, y) -> (94 - x, 50 - y)`` — a rotation, not a reflection, so the attacking team's left
    corner stays on its left.
11. **Court mode**: the handler's position on that half court as fractions ``(row, col) =
    (x / 47, y / 50)``: rows run from the baseline (row 0) to the half-court line, columns across
    the width. Positions slightly out of bounds fall into the edge cells when discretised.
12. **Defenders mode**: the five defenders relative to the handler, rotated so that the
    direction from the handler to the basket (5.25 ft from the baseline, mid-width) points
    *up*: rows increase away from the basket, columns increase to the handler's right. The box
    is :data:`DEFENDER_BOX` cells of ``defender_cell_ft`` feet (2 ft: a 24 × 24 ft box) with the
    handler at the centre of cell :data:`HANDLER_CELL` = (9, 6), i.e. 9.5 cells (19 ft) of
    room in front of him, 2.5 cells (5 ft) behind, 6.5 cells to his left and 5.5 to his right.
    This is the paper's "(6, 2)" read as (lateral, forward) cells from the back-left corner.
    Positions are fractions of the box; a defender is present when both fractions are in
    ``[0, 1)``. Any grid that divides the box evenly (6 × 6, 12 × 12) nests exactly, since the
    same fractions are floored at every resolution. Defenders are stored nearest first.

Games that cannot be read (truncated or non-JSON files, a broken archive, a JSON without the
SportVU layout) or that have no play-by-play file are skipped with a logged warning and counted
(``unreadable_games``, ``games_without_pbp``); a play-by-play file without the required columns
is a configuration error and raises.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import lzma
import os
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import py7zr
from tqdm.auto import tqdm

from datamodules.base import save_npz_atomic

log = logging.getLogger(__name__)

COURT_LENGTH_FT = 94.0
COURT_WIDTH_FT = 50.0
HALF_COURT_FT = COURT_LENGTH_FT / 2
BASKET_FROM_BASELINE_FT = 5.25
"""Distance of the rim centre from the baseline (4 ft to the backboard plus 15 in)."""

DEFENDER_BOX = (12, 12)
"""The relative-defender box in cells of ``defender_cell_ft`` (rows, cols); paper appendix B."""
HANDLER_CELL = (9, 6)
"""The cell of :data:`DEFENDER_BOX` whose centre is the ball handler (rows away from the basket)."""
MAX_DEFENDERS = 5

PBP_COLUMNS = ("GAME_ID", "EVENTNUM", "EVENTMSGTYPE", "PERIOD", "PCTIMESTRING", "PLAYER1_ID")
FIELD_GOAL_TYPES = (1, 2)
FREE_THROW_TYPE = 3
TURNOVER_TYPE = 5
PBP_BIN_CENTRE_S = 0.5
"""Where inside its one-second ``PCTIMESTRING`` bin an event is assumed to happen."""

GAME_SUFFIXES = (".json", ".7z")
CACHE_VERSION = 1
SAMPLE_FIELDS = (
    "game",
    "unix_ms",
    "period",
    "game_clock",
    "possession",
    "handler",
    "team",
    "court",
    "defenders",
    "label",
)
COUNT_NAMES = (
    "duplicate_moments",
    "incomplete_moments",
    "null_shot_clock",
    "ball_out_of_court",
    "not_half_court",
    "no_handler",
    "defense_on_ball",
    "free_throw",
    "turnover",
    "unreadable_games",
    "games_without_pbp",
)


@dataclasses.dataclass(frozen=True)
class ExtractionSettings:
    """How samples are cut from a game; part of the cache key.

    Args:
        frame_stride: keep every ``frame_stride``-th moment of the 25 Hz log (1 = all).
        handler_radius_ft: the ball must be this close to the nearest player for a handler.
        horizon_s: a sample is positive when the handler shoots within this many seconds.
        defender_cell_ft: side of one cell of the 12 × 12 defender box, in feet.
    """

    frame_stride: int = 1
    handler_radius_ft: float = 4.0
    horizon_s: float = 1.0
    defender_cell_ft: float = 2.0

    def __post_init__(self) -> None:
        if self.frame_stride < 1:
            raise ValueError(f"frame_stride {self.frame_stride} must be a positive integer")
        for name in ("handler_radius_ft", "horizon_s", "defender_cell_ft"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} {getattr(self, name)} must be positive")


# ----- readers --------------------------------------------------------------------------------


def read_game(path: str | os.PathLike) -> dict[str, Any]:
    """Parse one SportVU game log, a plain ``.json`` or a ``.7z`` holding one JSON, in memory.

    Raises:
        ValueError: the file is not valid JSON, or the archive holds no ``.json`` member.
        OSError, py7zr.Bad7zFile, lzma.LZMAError: the file cannot be read or unpacked.
    """
    path = Path(path)
    if path.suffix == ".7z":
        text = _read_7z_json(path)
    else:
        text = path.read_bytes()
    game = json.loads(text)
    if not isinstance(game, dict) or "events" not in game:
        raise ValueError(f"{path} is JSON but not a SportVU game log (no 'events')")
    return game


def _read_7z_json(path: Path) -> bytes:
    with py7zr.SevenZipFile(path, mode="r") as archive:
        members = [name for name in archive.getnames() if name.endswith(".json")]
        if not members:
            raise ValueError(f"archive {path} holds no .json game log")
        factory = py7zr.io.BytesIOFactory(limit=1 << 34)
        archive.extract(targets=[members[0]], factory=factory)
        member = factory.get(members[0])
        member.seek(0)
        return member.read()


def read_pbp(path: str | os.PathLike) -> pd.DataFrame:
    """Read a stats.nba.com play-by-play CSV; adds ``clock_s``, the game clock in seconds.

    Raises:
        ValueError: a required column of :data:`PBP_COLUMNS` is missing.
    """
    pbp = pd.read_csv(path)
    missing = [column for column in PBP_COLUMNS if column not in pbp.columns]
    if missing:
        raise ValueError(
            f"play-by-play file {path} lacks the columns {missing}; expected the stats.nba.com "
            f"layout with at least {list(PBP_COLUMNS)}"
        )
    minutes, seconds = pbp["PCTIMESTRING"].astype(str).str.split(":", n=1, expand=True).T.values
    pbp["clock_s"] = minutes.astype(float) * 60 + seconds.astype(float)
    pbp["PLAYER1_ID"] = pbp["PLAYER1_ID"].fillna(0).astype(np.int64)
    return pbp


def game_files(games_dir: str | os.PathLike) -> list[Path]:
    """The game logs of a folder (``*.json`` and ``*.7z``), sorted by name."""
    games_dir = Path(games_dir)
    if not games_dir.is_dir():
        raise FileNotFoundError(
            f"SportVU games folder {games_dir} does not exist; set dataset.games_dir to the "
            "folder of the per-game .json or .7z logs"
        )
    files = sorted(p for p in games_dir.iterdir() if p.suffix in GAME_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(
            f"no SportVU game logs (*.json, *.7z) in {games_dir}; set dataset.games_dir"
        )
    return files


# ----- extraction -----------------------------------------------------------------------------


def extract_game(
    game: Mapping[str, Any], pbp: pd.DataFrame, settings: ExtractionSettings
) -> tuple[dict[str, np.ndarray], Counter]:
    """Cut the samples of one game by the module's rules 1–12.

    Returns:
        (samples, counts): samples holds, per kept frame, ``unix_ms`` (N,), ``period`` (N,),
        ``game_clock`` (N,) s, ``possession`` (N,) running index within the game, ``handler``
        (N,) player id, ``team`` (N,) offense team id, ``court`` (N, 2) fractions of the half
        court, ``defenders`` (N, 5, 2) fractions of the defender box, nearest first, and
        ``label`` (N,) 0/1; counts holds the dropped moments per rule.
    """
    counts: Counter = Counter()
    moments = _unique_moments(game, counts)[:: settings.frame_stride]

    complete = [m for m in moments if _is_complete(m)]
    counts["incomplete_moments"] += len(moments) - len(complete)
    timed = [m for m in complete if m[3] is not None]
    counts["null_shot_clock"] += len(complete) - len(timed)
    if not timed:
        return _empty_samples(), counts

    period = np.array([m[0] for m in timed], dtype=np.int64)
    unix_ms = np.array([m[1] for m in timed], dtype=np.int64)
    clock = np.array([m[2] for m in timed], dtype=np.float64)
    entities = np.array([m[5] for m in timed], dtype=np.float64)  # (frames, 11, 5)
    team, player, xy = entities[:, 1:, 0], entities[:, 1:, 1], entities[:, :, 2:4]

    ball = xy[:, 0]
    keep = (
        (ball[:, 0] >= 0)
        & (ball[:, 0] <= COURT_LENGTH_FT)
        & (ball[:, 1] >= 0)
        & (ball[:, 1] <= COURT_WIDTH_FT)
    )
    counts["ball_out_of_court"] += int((~keep).sum())
    right_half = (xy[..., 0] > HALF_COURT_FT).all(axis=1)
    half_court = right_half | (xy[..., 0] < HALF_COURT_FT).all(axis=1)
    counts["not_half_court"] += int((keep & ~half_court).sum())
    keep &= half_court

    distance = np.linalg.norm(xy[:, 1:] - ball[:, None], axis=-1)  # (frames, 10)
    nearest = distance.argmin(axis=1)
    frames = np.arange(len(nearest))
    has_handler = distance[frames, nearest] <= settings.handler_radius_ft
    counts["no_handler"] += int((keep & ~has_handler).sum())
    keep &= has_handler

    handler_team = team[frames, nearest]
    attacking = _attacks_this_half(period, handler_team, right_half, keep)
    counts["defense_on_ball"] += int((keep & ~attacking).sum())
    keep &= attacking

    handler = player[frames, nearest].astype(np.int64)
    window = PBP_BIN_CENTRE_S + settings.horizon_s
    free_throw = _in_event_window(period, clock, pbp, (FREE_THROW_TYPE,), window)
    counts["free_throw"] += int((keep & free_throw).sum())
    keep &= ~free_throw
    turnover = _in_event_window(period, clock, pbp, (TURNOVER_TYPE,), window)
    counts["turnover"] += int((keep & turnover).sum())
    keep &= ~turnover
    label = _in_event_window(period, clock, pbp, FIELD_GOAL_TYPES, window, handler)

    # Rotate possessions attacking x = 94 onto the x = 0 basket (rule 10).
    flip = right_half[:, None, None]
    court_xy = np.where(flip, [COURT_LENGTH_FT, COURT_WIDTH_FT] - xy[:, 1:], xy[:, 1:])
    handler_xy = court_xy[frames, nearest]  # (frames, 2) ft
    defender_xy = court_xy[team != handler_team[:, None]].reshape(len(frames), MAX_DEFENDERS, 2)

    keep_index = np.flatnonzero(keep)
    samples = {
        "unix_ms": unix_ms[keep_index],
        "period": period[keep_index],
        "game_clock": clock[keep_index].astype(np.float32),
        "possession": _possessions(period[keep_index], handler_team[keep_index]),
        "handler": handler[keep_index],
        "team": handler_team[keep_index].astype(np.int64),
        "court": (handler_xy[keep_index] / [HALF_COURT_FT, COURT_WIDTH_FT]).astype(np.float32),
        "defenders": relative_defenders(
            handler_xy[keep_index], defender_xy[keep_index], settings.defender_cell_ft
        ).astype(np.float32),
        "label": label[keep_index].astype(np.int8),
    }
    return samples, counts


def relative_defenders(
    handler_xy: np.ndarray, defender_xy: np.ndarray, cell_ft: float
) -> np.ndarray:
    """Defender positions as fractions of the box around the handler, basket direction up.

    Args:
        handler_xy: (N, 2) handler position in feet on the oriented court (basket near x = 0).
        defender_xy: (N, D, 2) defender positions on the same court.
        cell_ft: side of one box cell in feet.

    Returns:
        (N, D, 2) (row, col) fractions of :data:`DEFENDER_BOX`, defenders sorted nearest first;
        values outside ``[0, 1)`` lie outside the box.
    """
    basket = np.array([BASKET_FROM_BASELINE_FT, COURT_WIDTH_FT / 2])
    to_basket = basket - handler_xy
    length = np.linalg.norm(to_basket, axis=-1, keepdims=True)
    # A handler standing under the rim faces the far end (straight up the court image).
    forward = np.where(length > 0, to_basket / np.where(length > 0, length, 1), [-1.0, 0.0])
    right = np.stack([forward[:, 1], -forward[:, 0]], axis=-1)

    offset = defender_xy - handler_xy[:, None]
    order = np.argsort(np.linalg.norm(offset, axis=-1), axis=1, kind="stable")
    offset = np.take_along_axis(offset, order[..., None], axis=1)
    ahead = np.einsum("ndk,nk->nd", offset, forward)
    lateral = np.einsum("ndk,nk->nd", offset, right)

    rows, cols = DEFENDER_BOX
    row = (HANDLER_CELL[0] + 0.5 - ahead / cell_ft) / rows
    col = (HANDLER_CELL[1] + 0.5 + lateral / cell_ft) / cols
    return np.stack([row, col], axis=-1)


def _unique_moments(game: Mapping[str, Any], counts: Counter) -> list[list]:
    moments: dict[int, list] = {}
    for event in game["events"]:
        for moment in event["moments"]:
            stamp = int(moment[1])
            if stamp in moments:
                counts["duplicate_moments"] += 1
            else:
                moments[stamp] = moment
    return [moments[stamp] for stamp in sorted(moments)]


def _is_complete(moment: list) -> bool:
    entities = moment[5]
    if len(entities) != 11 or entities[0][0] != -1:
        return False
    teams = Counter(entity[0] for entity in entities[1:])
    return len(teams) == 2 and set(teams.values()) == {5}


def _attacks_this_half(
    period: np.ndarray, team: np.ndarray, right_half: np.ndarray, candidate: np.ndarray
) -> np.ndarray:
    """True where ``team`` holds the ball in the half it attacks in that period (rule 8)."""
    attacking = np.zeros_like(candidate)
    for key_period, key_team in set(zip(period[candidate], team[candidate])):
        mine = (period == key_period) & (team == key_team)
        votes_right = np.count_nonzero(mine & candidate & right_half)
        votes_left = np.count_nonzero(mine & candidate & ~right_half)
        attacks_right = votes_right > votes_left
        attacking |= mine & (right_half == attacks_right)
    return attacking


def _in_event_window(
    period: np.ndarray,
    clock: np.ndarray,
    pbp: pd.DataFrame,
    event_types: tuple[int, ...],
    window_s: float,
    handler: np.ndarray | None = None,
) -> np.ndarray:
    """True where a frame lies in ``[T, T + window_s]`` of an event of the types (rule 9).

    With ``handler`` the event must also name the frame's handler as ``PLAYER1_ID``.
    """
    events = pbp[pbp["EVENTMSGTYPE"].isin(event_types)]
    inside = np.zeros(len(period), dtype=bool)
    for event_period, rows in events.groupby("PERIOD"):
        frames = np.flatnonzero(period == event_period)
        if not len(frames):
            continue
        lag = clock[frames, None] - rows["clock_s"].to_numpy()[None, :]  # (frames, events)
        hit = (lag >= 0) & (lag <= window_s)
        if handler is not None:
            hit &= handler[frames, None] == rows["PLAYER1_ID"].to_numpy()[None, :]
        inside[frames] = hit.any(axis=1)
    return inside


def _possessions(period: np.ndarray, team: np.ndarray) -> np.ndarray:
    """Running possession index: a new one starts when the period or the offense changes."""
    change = np.ones(len(period), dtype=bool)
    change[1:] = (period[1:] != period[:-1]) | (team[1:] != team[:-1])
    return (np.cumsum(change) - 1).astype(np.int32)


def _empty_samples() -> dict[str, np.ndarray]:
    return {
        "unix_ms": np.zeros(0, np.int64),
        "period": np.zeros(0, np.int64),
        "game_clock": np.zeros(0, np.float32),
        "possession": np.zeros(0, np.int32),
        "handler": np.zeros(0, np.int64),
        "team": np.zeros(0, np.int64),
        "court": np.zeros((0, 2), np.float32),
        "defenders": np.zeros((0, MAX_DEFENDERS, 2), np.float32),
        "label": np.zeros(0, np.int8),
    }


# ----- a season -------------------------------------------------------------------------------


@dataclasses.dataclass
class Season:
    """The samples of all readable games, concatenated in game order.

    Attributes:
        samples: the arrays of :func:`extract_game` plus ``game`` (N,), an index into
            ``game_ids``; ``possession`` is made unique across games.
        game_ids: the SportVU ``gameid`` of every game that gave samples or was read.
        counts: dropped moments per rule and skipped games, summed over the season.
        from_cache: True when the samples were loaded from the cache.
    """

    samples: dict[str, np.ndarray]
    game_ids: list[str]
    counts: dict[str, int]
    from_cache: bool = False


def extract_game_file(
    path: str | os.PathLike, pbp_dir: str | os.PathLike, settings: ExtractionSettings
) -> tuple[str | None, dict[str, np.ndarray] | None, Counter, str | None]:
    """Read and extract one game file; never raises for a bad game file.

    Returns:
        (game id, samples, counts, warning): samples is None and warning says why when the
        game was skipped.
    """
    path = Path(path)
    counts: Counter = Counter()
    try:
        game = read_game(path)
        game_id = str(game["gameid"])
    except (OSError, ValueError, KeyError, EOFError, lzma.LZMAError, py7zr.Bad7zFile) as error:
        counts["unreadable_games"] += 1
        return None, None, counts, f"skipping unreadable game file {path}: {error}"

    pbp_path = Path(pbp_dir) / f"{game_id}.csv"
    if not pbp_path.is_file():
        counts["games_without_pbp"] += 1
        return game_id, None, counts, f"skipping game {game_id} ({path}): no {pbp_path}"
    pbp = read_pbp(pbp_path)

    try:
        samples, counts = extract_game(game, pbp, settings)
    except (KeyError, TypeError, IndexError, ValueError) as error:
        counts = Counter(unreadable_games=1)
        return game_id, None, counts, f"skipping game {game_id} ({path}): bad layout: {error!r}"
    return game_id, samples, counts, None


def cache_key(files: list[Path], pbp_dir: str | os.PathLike, settings: ExtractionSettings) -> str:
    """Hash of the game and play-by-play files (name, size, mtime) and the settings."""
    pbp_dir = Path(pbp_dir)
    pbp_files = sorted(pbp_dir.glob("*.csv")) if pbp_dir.is_dir() else []

    def stamp(path: Path) -> list:
        stat = path.stat()
        return [path.name, stat.st_size, stat.st_mtime_ns]

    payload = {
        "version": CACHE_VERSION,
        "games": [stamp(p) for p in files],
        "pbp": [stamp(p) for p in pbp_files],
        "settings": dataclasses.asdict(settings),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def load_season(
    games_dir: str | os.PathLike,
    pbp_dir: str | os.PathLike,
    settings: ExtractionSettings,
    cache_dir: str | os.PathLike | None = None,
    workers: int = 0,
) -> Season:
    """Samples of every game of a folder, from the cache when it matches, else parsed.

    Args:
        games_dir: folder of per-game ``.json`` / ``.7z`` SportVU logs.
        pbp_dir: folder of per-game play-by-play CSVs named ``<gameid>.csv``.
        settings: extraction settings (part of the cache key).
        cache_dir: where the ``.npz`` cache of continuous samples lives; None disables it.
        workers: processes parsing games in parallel; 0 or 1 parses in this process.
    """
    files = game_files(games_dir)
    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / f"sportvu-{cache_key(files, pbp_dir, settings)}.npz"
        if cache_path.is_file():
            season = _read_cache(cache_path)
            samples = len(season.samples["label"])
            log.info("Loaded %d SportVU samples from the cache %s", samples, cache_path)
            return season

    results = _extract_all(files, pbp_dir, settings, workers)
    season = _concatenate(results)
    if cache_path is not None:
        _write_cache(cache_path, season)
        log.info("Cached the SportVU samples in %s", cache_path)
    return season


def _extract_all(files: list[Path], pbp_dir, settings: ExtractionSettings, workers: int) -> list:
    progress = tqdm(total=len(files), desc="SportVU games", unit="game")
    results: list = [None] * len(files)
    if workers <= 1 or len(files) <= 1:
        for index, path in enumerate(files):
            results[index] = extract_game_file(path, pbp_dir, settings)
            progress.update()
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(files))) as pool:
            futures = {
                pool.submit(extract_game_file, path, pbp_dir, settings): index
                for index, path in enumerate(files)
            }
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                progress.update()
    progress.close()

    for _, _, _, warning in results:
        if warning is not None:
            log.warning(warning)
    return results


def _concatenate(results: list) -> Season:
    counts: Counter = Counter({name: 0 for name in COUNT_NAMES})
    game_ids: list[str] = []
    parts: list[dict[str, np.ndarray]] = []
    possession_offset = 0
    for game_id, samples, game_counts, _ in results:
        counts.update(game_counts)
        if samples is None:
            continue
        samples = dict(samples)
        samples["game"] = np.full(len(samples["label"]), len(game_ids), dtype=np.int32)
        samples["possession"] = samples["possession"] + possession_offset
        if len(samples["possession"]):
            possession_offset = int(samples["possession"].max()) + 1
        game_ids.append(game_id)
        parts.append(samples)
    if not parts:
        parts = [dict(_empty_samples(), game=np.zeros(0, np.int32))]
    merged = {name: np.concatenate([part[name] for part in parts]) for name in SAMPLE_FIELDS}
    return Season(merged, game_ids, dict(counts))


def _write_cache(path: Path, season: Season) -> None:
    save_npz_atomic(
        path,
        game_ids=np.array(season.game_ids, dtype=str),
        counts=np.array(json.dumps(season.counts)),
        **season.samples,
    )


def _read_cache(path: Path) -> Season:
    with np.load(path, allow_pickle=False) as archive:
        samples = {name: archive[name] for name in SAMPLE_FIELDS}
        game_ids = [str(game_id) for game_id in archive["game_ids"]]
        counts = json.loads(str(archive["counts"]))
    return Season(samples, game_ids, counts, from_cache=True)
