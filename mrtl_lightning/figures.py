"""Figures of a run: latent-factor heatmaps and loss against wall time."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def normalise(image: np.ndarray) -> np.ndarray:
    """Scale an image to [-1, 1] by its largest absolute value (NaN cells stay NaN)."""
    peak = np.nanmax(np.abs(image)) if np.isfinite(image).any() else 0.0
    return image / peak if peak > 0 else image


def factor_heatmaps(datamodule, mode: str, factors, path: Path, title: str = "") -> Path:
    """One panel per latent factor of a spatial mode, normalised to [-1, 1], diverging map.

    Args:
        datamodule: draws each image in the mode's own geometry (``plot_spatial``).
        factors: (K, rows, cols) array, NaN at masked cells (drawn blank).
    """
    factors = np.asarray(factors)
    count = factors.shape[0]
    columns = min(count, 5)
    rows = math.ceil(count / columns)
    subplot_kw = {}
    if hasattr(datamodule, "figure_axes_kwargs"):
        subplot_kw = datamodule.figure_axes_kwargs(mode) or {}
    # Panels take the images' aspect (a 40×90 ocean is wide, a 12×12 box square).
    aspect = min(max(factors.shape[1] / factors.shape[2], 0.35), 2.0)
    figure, axes = plt.subplots(
        rows,
        columns,
        figsize=(3.4 * columns + 1.0, 3.4 * aspect * rows + 0.9),
        squeeze=False,
        subplot_kw=subplot_kw,
        layout="constrained",
    )
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad=(1.0, 1.0, 1.0, 0.0))
    artist = None
    for k, ax in enumerate(axes.flat):
        if k >= count:
            ax.set_visible(False)
            continue
        image = np.ma.masked_invalid(normalise(factors[k]))
        artist = datamodule.plot_spatial(ax, mode, image, cmap=cmap, vmin=-1, vmax=1)
        ax.set_title(f"factor {k + 1}", fontsize=9)
    if artist is not None:
        figure.colorbar(artist, ax=axes.ravel().tolist(), shrink=0.9, label="normalised weight")
    figure.suptitle(title or f"{mode}: latent factors (normalised)")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def loss_curves(history: list[dict], moves: list[dict], path: Path, title: str = "") -> Path:
    """Training and validation loss against wall time, a vertical line at every move."""
    figure, ax = plt.subplots(figsize=(6.5, 4))
    times = [h["wall_time_s"] for h in history]
    for key, label in (("train/loss", "train"), ("val/loss", "validation")):
        values = [h.get(key, np.nan) for h in history]
        ax.plot(times, values, marker=".", label=label)
    for move in moves:
        ax.axvline(move["wall_time_s"], color="grey", linestyle="--", linewidth=0.8)
        ax.text(
            move["wall_time_s"],
            1.0,
            move["to"],
            rotation=90,
            fontsize=6,
            va="top",
            transform=ax.get_xaxis_transform(),
        )
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("loss")
    ax.set_title(title or "loss against wall time")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
