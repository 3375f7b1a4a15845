"""Numbers about learned factors: spatial autocorrelation and agreement with a ground truth."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def morans_i(image: np.ndarray) -> float:
    """Moran's I of a (rows, cols) image with rook (4-neighbour) adjacency; NaN cells excluded.

    ``I = (N / S0) · Σ_ij w_ij z_i z_j / Σ_i z_i²`` with ``z`` the deviations from the mean and
    ``w_ij = 1`` for valid cells sharing an edge. Near 1: smooth, spatially coherent; near
    ``−1/(N−1)``: no spatial structure. NaN when fewer than two cells or no variation.
    """
    image = np.asarray(image, dtype=np.float64)
    valid = ~np.isnan(image)
    if valid.sum() < 2:
        return float("nan")
    z = np.where(valid, image - image[valid].mean(), 0.0)
    denominator = (z[valid] ** 2).sum()
    if denominator == 0:
        return float("nan")
    cross = 0.0
    links = 0
    for a, b, va, vb in (
        (z[1:, :], z[:-1, :], valid[1:, :], valid[:-1, :]),
        (z[:, 1:], z[:, :-1], valid[:, 1:], valid[:, :-1]),
    ):
        both = va & vb
        cross += 2.0 * (a * b)[both].sum()  # each pair counted in both directions
        links += 2 * int(both.sum())
    if links == 0:
        return float("nan")
    return float(valid.sum() / links * cross / denominator)


def factor_morans_i(images) -> list[float]:
    """Moran's I of every (rows, cols) factor in a (K, rows, cols) stack."""
    return [morans_i(image) for image in np.asarray(images)]


def congruence(learned: dict[str, np.ndarray], planted: dict[str, np.ndarray]) -> dict:
    """Factor congruence of a learned CP model with planted factors (ground truth).

    Each factor column is compared by the absolute cosine ``|<u, v>| / (||u|| ||v||)`` (CP
    factors are defined up to sign and scale); components are matched by the Hungarian
    algorithm on the product of the per-mode cosines (a learned rank may exceed the planted
    one: the extra components stay unmatched).

    Args:
        learned, planted: (mode size, K) matrices by mode name; modes of ``planted`` are used.

    Returns:
        {"per_mode": {mode: mean matched |cos|}, "mean": mean over modes, "matching": pairs}.
    """
    cosines = {}
    for name, truth in planted.items():
        estimate = np.nan_to_num(np.asarray(learned[name], dtype=np.float64))
        truth = np.asarray(truth, dtype=np.float64)
        norms = np.linalg.norm(estimate, axis=0)[:, None] * np.linalg.norm(truth, axis=0)[None, :]
        cosines[name] = np.abs(estimate.T @ truth) / np.maximum(norms, 1e-30)  # (K_learned, K_true)
    product = np.prod(np.stack(list(cosines.values())), axis=0)
    rows, cols = linear_sum_assignment(-product)
    per_mode = {name: float(c[rows, cols].mean()) for name, c in cosines.items()}
    return {
        "per_mode": per_mode,
        "mean": float(np.mean(list(per_mode.values()))),
        "matching": [[int(r), int(c)] for r, c in zip(rows, cols)],
    }
