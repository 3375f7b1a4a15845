"""Collect the ``summary.json`` files of a sweep into the paper's tables and figures.

    python -m mrtl_lightning.report multirun/2026-12-04/10-00-00 [--out DIR]

Writes ``report.md`` and ``report.csv`` (mean ± std over seeds per dataset, method and
criterion, split into the full-rank and the low-rank stage as in the paper's tables 1 and 3),
``loss_vs_time.png`` (MRTL against the fixed-resolution model, figures 4 and 10),
``f1_vs_time.png`` for classification, and ``criteria.png`` (figure 5).

The full-rank stage is measured on the validation split at its last epoch (the test split is
only evaluated once, at the end of training); the low-rank stage reports the test metrics.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

GROUP = ["dataset", "method", "criterion"]


def load_summaries(root: Path) -> list[dict]:
    """Every ``summary.json`` below ``root``, with its directory."""
    paths = sorted(Path(root).rglob("summary.json"))
    if not paths:
        raise FileNotFoundError(
            f"no summary.json below {root}; point the report at a run or multirun directory"
        )
    summaries = []
    for path in paths:
        summary = json.loads(path.read_text())
        summary["run_dir"] = str(path.parent)
        summaries.append(summary)
    return summaries


def stage_row(summary: dict) -> dict:
    """One run as a table row: identity, full-rank stage, low-rank stage, totals."""
    phases = summary["phases"]
    history = summary.get("history", [])
    full = [h for h in history if h.get("rank") == "full"]
    low = [h.get("val/loss", math.nan) for h in history if h.get("rank") == "low"]
    row = {
        "dataset": summary["dataset"],
        "method": summary["method"],
        "criterion": summary["criterion"],
        "seed": summary["seed"],
        "full_time_s": sum(p["wall_time_s"] for p in phases if p["rank"] == "full"),
        "full_val_loss": full[-1].get("val/loss", math.nan) if full else math.nan,
        "full_val_f1": full[-1].get("val/f1", math.nan) if full else math.nan,
        "low_time_s": sum(p["wall_time_s"] for p in phases if p["rank"] == "low"),
        "low_best_val_loss": min(low, default=math.nan),
        "test_loss": summary["test"].get("loss", math.nan),
        "test_f1": summary["test"].get("f1", math.nan),
        "test_mse": summary["test"].get("mse", math.nan),
        "total_time_s": summary["total_train_time_s"],
        "morans_i": np.nanmean(
            [m["mean"] for m in summary.get("morans_i", {}).values()] or [np.nan]
        ),
    }
    for name, values in summary.get("baselines", {}).items():
        row[f"baseline_{name}_mse"] = values["mse"]
    return row


def aggregate(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of every numeric column, per group."""
    numeric = [c for c in rows.columns if c not in GROUP + ["seed"]]
    grouped = rows.groupby(GROUP, sort=True)
    table = grouped[numeric].agg(["mean", "std"])
    table.columns = [f"{name}_{stat}" for name, stat in table.columns]
    table.insert(0, "seeds", grouped.size())
    return table.reset_index()


def markdown(table: pd.DataFrame) -> str:
    """The aggregated table in the paper's layout: ``mean ± std`` per cell, no empty columns."""
    columns = [
        ("full_time_s", "full rank time [s]"),
        ("full_val_loss", "full rank val loss"),
        ("full_val_f1", "full rank val F1"),
        ("low_time_s", "low rank time [s]"),
        ("low_best_val_loss", "low rank best val loss"),
        ("test_loss", "test loss"),
        ("test_f1", "test F1"),
        ("test_mse", "test MSE"),
        ("total_time_s", "total time [s]"),
        ("morans_i", "Moran's I"),
    ]
    columns += [
        (c.removesuffix("_mean"), c.removesuffix("_mean").replace("_", " "))
        for c in table.columns
        if c.startswith("baseline_") and c.endswith("_mean")
    ]
    present = [(key, label) for key, label in columns if table[f"{key}_mean"].notna().any()]
    if table["test_mse_mean"].equals(table["test_loss_mean"]):  # regression: the loss is the MSE
        present = [(key, label) for key, label in present if key != "test_mse"]
    header = ["dataset", "method", "criterion", "seeds"] + [label for _, label in present]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        cells = [row["dataset"], row["method"], row["criterion"], str(row["seeds"])]
        for key, _ in present:
            mean, std = row[f"{key}_mean"], row[f"{key}_std"]
            std_text = "" if not np.isfinite(std) else f" ± {std:.3g}"
            cells.append("–" if not np.isfinite(mean) else f"{mean:.4g}{std_text}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def curves_figure(summaries: list[dict], key: str, path: Path, by: str, title: str) -> Path | None:
    """``key`` against wall time, one line per run coloured by ``by``, lines at every move."""
    runs = [s for s in summaries if any(key in h for h in s.get("history", []))]
    if not runs:
        return None
    figure, ax = plt.subplots(figsize=(7, 4.2))
    colours = {}
    for summary in runs:
        label = summary[by]
        colour = colours.setdefault(label, f"C{len(colours)}")
        history = summary["history"]
        ax.plot(
            [h["wall_time_s"] for h in history],
            [h.get(key, np.nan) for h in history],
            color=colour,
            alpha=0.7,
            label=label if label not in ax.get_legend_handles_labels()[1] else None,
        )
        for move in summary.get("moves", []):
            ax.axvline(move["wall_time_s"], color=colour, linestyle=":", linewidth=0.7)
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel(key)
    ax.set_title(title)
    ax.legend(title=by)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def report(root: Path, out: Path | None = None) -> dict[str, Path]:
    """Write the tables and figures of the runs below ``root``; returns the written paths."""
    summaries = load_summaries(root)
    out = Path(out or root)
    out.mkdir(parents=True, exist_ok=True)
    rows = pd.DataFrame([stage_row(s) for s in summaries])
    table = aggregate(rows)
    written = {"csv": out / "report.csv", "markdown": out / "report.md"}
    table.to_csv(written["csv"], index=False)
    written["markdown"].write_text(
        f"# MRTL report: {len(summaries)} runs below {root}\n\n" + markdown(table)
    )

    by_method = defaultdict(list)
    for summary in summaries:
        by_method[summary["method"]].append(summary)
    figures = {}
    if len(by_method) > 1:  # figures 4 and 10: the methods against wall time
        methods = " vs ".join(sorted(by_method))
        figures["loss_vs_time"] = curves_figure(
            summaries, "val/loss", out / "loss_vs_time.png", "method", f"validation loss: {methods}"
        )
        figures["f1_vs_time"] = curves_figure(
            summaries, "val/f1", out / "f1_vs_time.png", "method", f"validation F1: {methods}"
        )
    mrtl_runs = by_method.get("mrtl", [])
    if len({s["criterion"] for s in mrtl_runs}) > 1:  # figure 5: the criteria compared
        figures["criteria"] = curves_figure(
            mrtl_runs,
            "val/loss",
            out / "criteria.png",
            "criterion",
            "MRTL validation loss by finegraining criterion",
        )
    written.update({name: path for name, path in figures.items() if path is not None})
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="a run or multirun directory")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: root)")
    args = parser.parse_args(argv)
    try:
        written = report(args.root, args.out)
    except FileNotFoundError as error:
        raise SystemExit(f"error: {error}") from None
    for name, path in written.items():
        print(f"{name}: {path}")
    print()
    print((args.out or args.root).joinpath("report.md").read_text())


if __name__ == "__main__":
    main()
