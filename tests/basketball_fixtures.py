"""Small SportVU game logs in the real schema, lined up with the real play-by-play of a game.

For a real game id, :func:`write_fixture` reads its play-by-play, picks isolated field-goal
attempts (no other shot, free throw or turnover within 10 s), one turnover and one free throw,
and writes one tracking possession around each at the matching period and game clock. Every
frame is built with a known fate — a sample with its handler and label, or the rule that drops
it — so tests compare the extraction against the construction, not against a re-implementation.

Geometry is laid out on the *oriented* half court (basket near x = 0, feet) and turned to the
raw court for the teams attacking x = 94: the home team attacks x = 0 in periods 1–2 and x = 94
after half time, the visitors the other way round.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import py7zr

from conftest import data_dir

PBP_GAME_IDS = ("0021500022", "0021500311", "0021500391")
FRAME_MS = 40
FRAME_S = 0.04
BASKET = np.array([5.25, 25.0])
BASE_UNIX_MS = 1_446_163_200_000

# Shooter spots on the oriented half court and the nearest defender's offset from him as
# (ahead toward the basket, to his right) in ft, with that defender's hand-computed cell in the
# 12 × 12 box of 2 ft cells (handler at the centre of cell (9, 6)) and in the 6 × 6 box:
# row = floor(9.5 - ahead / 2), col = floor(6.5 + right / 2).
LAYOUTS = (
    {"spot": (20.0, 25.0), "offset": (3.6, -2.4), "cell12": (7, 5), "cell6": (3, 2)},
    {"spot": (11.25, 33.0), "offset": (4.0, 1.6), "cell12": (7, 7), "cell6": (3, 3)},
    {"spot": (24.0, 12.0), "offset": (2.0, 0.6), "cell12": (8, 6), "cell6": (4, 3)},
    {"spot": (15.0, 40.0), "offset": (6.0, 3.4), "cell12": (6, 8), "cell6": (3, 4)},
    {"spot": (26.0, 30.0), "offset": (1.4, -1.4), "cell12": (8, 5), "cell6": (4, 2)},
    {"spot": (9.0, 14.0), "offset": (2.6, 2.2), "cell12": (8, 7), "cell6": (4, 3)},
)
TEAMMATE_SPOTS = ((3.0, 3.0), (3.0, 47.0), (30.0, 4.0))
PASSER_PATH = ((33.0, 40.0), (28.0, 44.0))
EMPTY_SPOT = (40.0, 25.0)  # more than 4 ft from every player: the ball in a pass or a steal
FREE_THROW_SPOTS = {
    "offense": ((11.0, 16.5), (11.0, 33.5), (30.0, 10.0), (30.0, 40.0)),
    "defense": ((8.0, 16.5), (8.0, 33.5), (14.0, 16.5), (14.0, 33.5), (28.0, 25.0)),
}
BAD_MOMENTS = 5  # incomplete and null-shot-clock moments planted in one possession each
OVERLAP_MOMENTS = 25  # moments each event repeats from the end of the previous one


def pbp_dir() -> Path:
    """The folder of the real play-by-play CSVs (``$MRTL_DATA_DIR/basketball/pbp``)."""
    return data_dir() / "basketball" / "pbp"


@dataclass
class GameFacts:
    """What the extraction must find in one fixture game.

    Attributes:
        samples: unix_ms -> (handler id, label, oriented handler position (x, y) in ft) of
            every frame that must become a sample at frame stride 1.
        drops: number of moments each rule must drop, by count name.
        probes: per shot possession, the unix_ms of the shooter's frames and the hand-computed
            cells of the nearest defender (``cell12``, ``cell6``), plus ``period``, ``clock``
            (pbp seconds) and ``shooter``.
        raw_positions: unix_ms -> raw (x, y) of the handler, to check the orientation.
    """

    game_id: str
    samples: dict[int, tuple[int, int, tuple[float, float]]] = field(default_factory=dict)
    drops: Counter = field(default_factory=Counter)
    probes: list[dict] = field(default_factory=list)
    raw_positions: dict[int, tuple[float, float]] = field(default_factory=dict)


def write_fixture(
    games_dir: str | os.PathLike,
    game_ids: tuple[str, ...] = PBP_GAME_IDS,
    archive: bool = False,
) -> dict[str, GameFacts]:
    """Write one SportVU log per game id into ``games_dir`` (``.7z`` when ``archive``).

    Returns:
        {game id: :class:`GameFacts`}.
    """
    games_dir = Path(games_dir)
    games_dir.mkdir(parents=True, exist_ok=True)
    facts = {}
    for game_id in game_ids:
        game, facts[game_id] = build_game(game_id)
        text = json.dumps(game)
        if archive:
            with py7zr.SevenZipFile(games_dir / f"{game_id}.7z", "w") as target:
                target.writestr(text, f"{game_id}.json")
        else:
            (games_dir / f"{game_id}.json").write_text(text)
    return facts


def build_game(game_id: str) -> tuple[dict, GameFacts]:
    """The SportVU game dictionary of a fixture game and the facts it was built with."""
    pbp = _read_pbp(game_id)
    home, visitor = _teams(pbp)
    rosters = {team: _players(pbp, team) for team in (home, visitor)}
    builder = _GameBuilder(game_id, home, visitor, rosters)

    plays = []
    shots = pbp[pbp["EVENTMSGTYPE"].isin([1, 2])]
    for period in (1, 3):
        for team in (home, visitor):
            rows = shots[(shots["PERIOD"] == period) & (shots["PLAYER1_TEAM_ID"] == team)]
            picked = [row for _, row in rows.iterrows() if _isolated(pbp, row)][:2]
            plays += [("shot", row) for row in picked]
    for kind, event_type in (("turnover", 5), ("free_throw", 3)):
        rows = pbp[(pbp["EVENTMSGTYPE"] == event_type) & pbp["PERIOD"].isin([1, 3])]
        rows = rows[rows["PLAYER1_TEAM_ID"].isin([home, visitor])]
        plays += [(kind, next(row for _, row in rows.iterrows() if _isolated(pbp, row)))]
    plays.sort(key=lambda play: (play[1]["PERIOD"], -play[1]["clock_s"]))

    shots_built = 0
    for kind, row in plays:
        if kind == "shot":
            layout = LAYOUTS[shots_built % len(LAYOUTS)]
            builder.shot_possession(row, layout, plant_bad=shots_built == 1)
            shots_built += 1
        elif kind == "turnover":
            builder.turnover_possession(row)
        else:
            builder.free_throws(row)
    return builder.game(), builder.facts


# ----- play-by-play ---------------------------------------------------------------------------


def _read_pbp(game_id: str) -> pd.DataFrame:
    pbp = pd.read_csv(pbp_dir() / f"{game_id}.csv")
    minutes, seconds = pbp["PCTIMESTRING"].str.split(":", expand=True).T.values
    pbp["clock_s"] = minutes.astype(int) * 60 + seconds.astype(int)
    pbp["PLAYER1_TEAM_ID"] = pbp["PLAYER1_TEAM_ID"].fillna(0).astype(np.int64)
    return pbp


def _teams(pbp: pd.DataFrame) -> tuple[int, int]:
    """(home, visitor) team ids, from made shots described on one side only."""
    made = pbp[pbp["EVENTMSGTYPE"] == 1]
    home = made[made["HOMEDESCRIPTION"].notna() & made["VISITORDESCRIPTION"].isna()]
    visitor = made[made["VISITORDESCRIPTION"].notna() & made["HOMEDESCRIPTION"].isna()]
    return int(home["PLAYER1_TEAM_ID"].mode()[0]), int(visitor["PLAYER1_TEAM_ID"].mode()[0])


def _players(pbp: pd.DataFrame, team: int) -> list[int]:
    rows = pbp[(pbp["PLAYER1_TEAM_ID"] == team) & (pbp["PLAYER1_ID"] > 0)]
    return list(dict.fromkeys(int(player) for player in rows["PLAYER1_ID"]))


def _isolated(pbp: pd.DataFrame, row: pd.Series) -> bool:
    """No other shot, free throw or turnover 2 s after or 10 s before ``row`` in its period."""
    near = pbp[
        (pbp["PERIOD"] == row["PERIOD"])
        & pbp["EVENTMSGTYPE"].isin([1, 2, 3, 5])
        & (pbp["clock_s"] >= row["clock_s"] - 2)
        & (pbp["clock_s"] <= row["clock_s"] + 10)
    ]
    others = near[near["EVENTNUM"] != row["EVENTNUM"]]
    if row["EVENTMSGTYPE"] == 3:  # the other free throws of the same trip are expected
        others = others[~((others["EVENTMSGTYPE"] == 3) & (others["clock_s"] == row["clock_s"]))]
    return others.empty and row["clock_s"] >= 20


# ----- geometry -------------------------------------------------------------------------------


def _toward_basket(position) -> np.ndarray:
    offset = BASKET - np.asarray(position, dtype=float)
    return offset / np.linalg.norm(offset)


def _handler_right(forward: np.ndarray) -> np.ndarray:
    return np.array([forward[1], -forward[0]])


@dataclass
class _Frame:
    offense: list  # five (player id, (x, y)) on the oriented court, in feet
    defense: list
    ball: tuple
    fate: str  # "sample" or the name of the count that drops the frame
    handler: int = 0
    label: int = 0


class _GameBuilder:
    def __init__(self, game_id: str, home: int, visitor: int, rosters: dict[int, list[int]]):
        self.home, self.visitor, self.rosters = home, visitor, rosters
        self.facts = GameFacts(game_id)
        self.events: list[dict] = []
        # Games of one season never share a time stamp.
        self.unix_ms = BASE_UNIX_MS + int(game_id) % 100_000 * 10_000_000

    def _attacks_far_basket(self, team: int, period: int) -> bool:
        return (team == self.home) != (period <= 2)

    def _lineups(self, team: int, first: int) -> tuple[list[int], list[int]]:
        other = self.visitor if team == self.home else self.home
        offense = [first] + [p for p in self.rosters[team] if p != first][:4]
        return offense, self.rosters[other][:5]

    def _emit(self, row: pd.Series, team: int, clocks, frames: list[_Frame], bad=()) -> None:
        """Add one SportVU event holding ``frames`` at game clocks ``clocks``."""
        period = int(row["PERIOD"])
        flip = self._attacks_far_basket(team, period)
        other = self.visitor if team == self.home else self.home
        moments = []
        for number, (clock, frame) in enumerate(zip(clocks, frames)):
            self.unix_ms += FRAME_MS
            entities = [[-1, -1, *_raw(frame.ball, flip), 5.0]]
            entities += [[team, p, *_raw(xy, flip), 0.0] for p, xy in frame.offense]
            entities += [[other, p, *_raw(xy, flip), 0.0] for p, xy in frame.defense]
            shot_clock = round(14.0 + (number % 200) * FRAME_S, 2)
            fate = frame.fate
            if ("incomplete", number) in bad:
                entities = entities[:-1]
                fate = "incomplete_moments"
            if ("no_shot_clock", number) in bad:
                shot_clock = None
                fate = "null_shot_clock"
            moments.append([period, self.unix_ms, round(clock, 2), shot_clock, None, entities])
            _check_handler(frame)
            if fate == "sample":
                handler_xy = dict(frame.offense)[frame.handler]
                self.facts.samples[self.unix_ms] = (frame.handler, frame.label, handler_xy)
                self.facts.raw_positions[self.unix_ms] = _raw(handler_xy, flip)
            else:
                self.facts.drops[fate] += 1

        if self.events:
            repeated = self.events[-1]["moments"][-OVERLAP_MOMENTS:]
            moments = repeated + moments
            self.facts.drops["duplicate_moments"] += len(repeated)
        self.events.append(
            {
                "eventId": str(int(row["EVENTNUM"])),
                "visitor": _team_header(self.visitor, self.rosters[self.visitor]),
                "home": _team_header(self.home, self.rosters[self.home]),
                "moments": moments,
            }
        )
        self.unix_ms += 20_000  # dead time between plays

    def shot_possession(self, row: pd.Series, layout: dict, plant_bad: bool) -> None:
        """Transition, a teammate's hold, a pass, the shooter's hold, the shot and a rebound."""
        shooter, team = int(row["PLAYER1_ID"]), int(row["PLAYER1_TEAM_ID"])
        offense_ids, defense_ids = self._lineups(team, shooter)
        passer = offense_ids[1]
        spot = np.array(layout["spot"])
        forward = _toward_basket(spot)
        ahead, right = layout["offset"]
        guard = spot + ahead * forward + right * _handler_right(forward)

        def court(passer_xy, shift=0.0):
            offense = [spot, passer_xy, *map(np.array, TEAMMATE_SPOTS)]
            defense = [guard, passer_xy + 3 * _toward_basket(passer_xy)]
            defense += [
                np.array(xy) + step
                for xy, step in zip(TEAMMATE_SPOTS, ([3.0, 3.0], [3.0, -3.0], [-3.0, 2.0]))
            ]
            offense = [(p, tuple(xy + [shift, 0])) for p, xy in zip(offense_ids, offense)]
            defense = [(p, tuple(xy + [shift, 0])) for p, xy in zip(defense_ids, defense)]
            return offense, defense

        start, end = map(np.array, PASSER_PATH)
        release = row["clock_s"] + 0.5  # the pbp bin centre
        frames = []
        offense, defense = court(start, shift=25.0)
        passer_ball = tuple(np.array(offense[1][1]) - _toward_basket(offense[1][1]))
        frames += [_Frame(offense, defense, passer_ball, "not_half_court")] * 25
        for step in np.linspace(0, 1, 75):
            passer_xy = start + step * (end - start)
            offense, defense = court(passer_xy)
            ball = tuple(passer_xy - _toward_basket(passer_xy))
            frames.append(_Frame(offense, defense, ball, "sample", passer, 0))
        frames += [_Frame(offense, defense, EMPTY_SPOT, "no_handler")] * 12
        shooter_ball = tuple(spot - forward)
        before = len(frames)
        clocks = [release + 0.02 + FRAME_S * (before + 49 - i) for i in range(before + 50)]
        for clock in clocks[before:]:
            # Positive when the release (bin centre) is at most 1 s ahead.
            label = int(clock - release <= 1.0)
            frames.append(_Frame(offense, defense, shooter_ball, "sample", shooter, label))
        frames += [_Frame(offense, defense, (5.25, 25.0), "no_handler")] * 25
        rebound_ball = tuple(guard + _toward_basket(guard))
        frames += [_Frame(offense, defense, rebound_ball, "defense_on_ball")] * 12
        clocks += [release - FRAME_S * (i + 0.5) for i in range(37)]

        bad = set()
        if plant_bad:
            bad |= {("incomplete", 40 + i) for i in range(BAD_MOMENTS)}
            bad |= {("no_shot_clock", 60 + i) for i in range(BAD_MOMENTS)}
        first_unix_ms = self.unix_ms
        self._emit(row, team, clocks, frames, bad)
        self.facts.probes.append(
            {
                "unix_ms": [
                    unix_ms
                    for unix_ms, (handler, _, _) in self.facts.samples.items()
                    if unix_ms > first_unix_ms and handler == shooter
                ],
                "cell12": layout["cell12"],
                "cell6": layout["cell6"],
                "period": int(row["PERIOD"]),
                "clock": float(row["clock_s"]),
                "shooter": shooter,
            }
        )

    def turnover_possession(self, row: pd.Series) -> None:
        """The player who loses the ball holds it 3.5 s, then the ball is gone (a steal)."""
        holder, team = int(row["PLAYER1_ID"]), int(row["PLAYER1_TEAM_ID"])
        offense_ids, defense_ids = self._lineups(team, holder)
        spot = np.array([22.0, 20.0])
        offense = [spot, np.array(PASSER_PATH[1]), *map(np.array, TEAMMATE_SPOTS)]
        defense = [spot + 3 * _toward_basket(spot), offense[1] + 3 * _toward_basket(offense[1])]
        defense += [np.array(xy) + [3.0, 0.0] for xy in TEAMMATE_SPOTS]
        offense = [(p, tuple(xy)) for p, xy in zip(offense_ids, offense)]
        defense = [(p, tuple(xy)) for p, xy in zip(defense_ids, defense)]
        ball = tuple(spot - _toward_basket(spot))

        event_clock = row["clock_s"]
        clocks = [event_clock + 0.52 + FRAME_S * (86 - i) for i in range(87)]
        frames = [
            _Frame(
                offense,
                defense,
                ball,
                "turnover" if clock - event_clock <= 1.5 else "sample",
                holder,
                0,
            )
            for clock in clocks
        ]
        frames += [_Frame(offense, defense, EMPTY_SPOT, "no_handler")] * 12
        clocks += [event_clock + 0.5 - FRAME_S * (i + 1) for i in range(12)]
        self._emit(row, team, clocks, frames)

    def free_throws(self, row: pd.Series) -> None:
        """Three seconds at the line with the clock stopped; the shooter holds the ball."""
        shooter, team = int(row["PLAYER1_ID"]), int(row["PLAYER1_TEAM_ID"])
        offense_ids, defense_ids = self._lineups(team, shooter)
        offense = [(19.0, 25.0), *FREE_THROW_SPOTS["offense"]]
        offense = list(zip(offense_ids, offense))
        defense = list(zip(defense_ids, FREE_THROW_SPOTS["defense"]))
        frame = _Frame(offense, defense, (18.0, 25.0), "free_throw", shooter, 0)
        self._emit(row, team, [row["clock_s"] + 0.3] * 75, [frame] * 75)

    def game(self) -> dict:
        return {"gameid": self.facts.game_id, "gamedate": "2015-11-01", "events": self.events}


def _raw(xy, flip: bool) -> tuple[float, float]:
    """Oriented-court feet -> raw court feet (a 180° turn for the x = 94 basket), rounded."""
    x, y = (94.0 - xy[0], 50.0 - xy[1]) if flip else (xy[0], xy[1])
    return round(float(x), 5), round(float(y), 5)


def _check_handler(frame: _Frame) -> None:
    """The fixture's own guard: the intended handler (or nobody) is within 4 ft of the ball."""
    players = frame.offense + frame.defense
    distance = [np.hypot(*(np.array(xy) - frame.ball)) for _, xy in players]
    nearest = players[int(np.argmin(distance))][0]
    if frame.fate == "no_handler":
        assert min(distance) > 4.5, f"ball {frame.ball} of a pass/shot is near a player"
    elif frame.fate in ("sample", "turnover", "free_throw"):
        assert nearest == frame.handler and min(distance) < 3.5, "wrong fixture handler"


def _team_header(team: int, players: list[int]) -> dict:
    return {
        "name": f"team {team}",
        "teamid": team,
        "abbreviation": "",
        "players": [
            {"lastname": "", "firstname": "", "playerid": p, "jersey": "", "position": ""}
            for p in players
        ],
    }
