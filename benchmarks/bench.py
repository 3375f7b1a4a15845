"""`make bench`: MRTL against the fixed-resolution model, and training throughput.

Everything runs in this one process, so the ratios compare like with like on a noisy machine:

(a) MRTL vs ``method=fixed`` on basketball-shaped synthetic data with the paper's schedule:
    wall time until MRTL's validation loss first reaches the fixed model's final one, for the
    full-rank stage and for the whole schedule, and the ratio of the two methods' times;
(b) training throughput (samples per second over one training epoch, through Lightning, both
    regularisers on, batch 128) of the full-rank and the low-rank model at the finest
    basketball resolution: 50 ball handlers × 40×50 court × 12×12 defender box;
(c) peak resident memory of the process.

Prints a table and writes ``bench.json`` (``--out``). ``--quick`` shrinks everything (seconds).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import sys
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import compose_config  # noqa: E402
from datamodules.synthetic import SyntheticClassification  # noqa: E402
from mrtl_lightning.module import MRTLModule  # noqa: E402
from mrtl_lightning.train import train  # noqa: E402

FINEST = {"court": (40, 50), "defenders": (12, 12)}
PAPER_SCHEDULE = (
    "schedule.full_rank=[{court:[4,5],defenders:[6,6]},{court:[8,10],defenders:[6,6]},"
    "{court:[8,10],defenders:[12,12]}]",
    "schedule.low_rank=[{court:[8,10],defenders:[12,12]},{court:[20,25],defenders:[12,12]},"
    "{court:[40,50],defenders:[12,12]}]",
)


class EpochTimer(pl.Callback):
    """Wall time of every training epoch (data loading, steps and optimiser included)."""

    def __init__(self):
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds.append(time.perf_counter() - self._start)


def throughput(rank: str, samples: int, epochs: int = 3) -> dict:
    """Training samples per second of one model at the finest basketball resolution."""
    datamodule = SyntheticClassification(
        num_samples=samples, num_entities=50, batch_size=128, split=(0.98, 0.01, 0.01), seed=0
    )
    datamodule.setup()
    datamodule.set_resolution(FINEST)
    model = MRTLModule(
        datamodule.spec,
        rank,
        FINEST,
        cp_rank=20,
        sigma=0.05,
        full_rank={"lr": 0.01, "l2": 1e-5, "spatial": 1e-4},
        low_rank={"lr": 0.01, "l2": 1e-5, "spatial": 1e-4},
    )
    timer = EpochTimer()
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    trainer.fit(model, datamodule=datamodule)
    train_samples = len(datamodule.targets("train"))
    best = min(timer.seconds[1:] or timer.seconds)  # the first epoch warms caches up
    parameters = sum(p.numel() for p in model.tensor.parameters())
    return {
        "samples_per_s": train_samples / best,
        "epoch_s": best,
        "parameters": parameters,
        "train_samples": train_samples,
    }


def time_to_reach(history: list[dict], target: float, rank: str | None = None) -> float:
    """First wall time at which the validation loss is at or below ``target`` (inf if never)."""
    for entry in history:
        if rank is not None and entry["rank"] != rank:
            continue
        if entry.get("val/loss", math.inf) <= target:
            return entry["wall_time_s"]
    return math.inf


def mrtl_vs_fixed(out: Path, samples: int, max_epochs: int) -> dict:
    """Run both methods on the same data; compare their times to the fixed model's loss."""
    overrides = (
        "dataset.num_entities=50",
        f"dataset.num_samples={samples}",
        "dataset.batch_size=128",
        "model.cp_rank=20",
        "logger=none",
        "figures=false",
        f"trainer.max_epochs={max_epochs}",
        *PAPER_SCHEDULE,
    )
    runs = {
        method: train(compose_config(out / method, *overrides, f"method={method}"))
        for method in ("mrtl", "fixed")
    }
    mrtl, fixed = runs["mrtl"], runs["fixed"]

    def compare(rank: str | None) -> dict:
        """Both methods' times to the fixed model's final and to its best validation loss."""
        history = [h for h in fixed["history"] if rank is None or h["rank"] == rank]
        phases = [p for p in fixed["phases"] if rank is None or p["rank"] == rank]
        fixed_time = sum(p["wall_time_s"] for p in phases)
        final, best = history[-1]["val/loss"], min(h["val/loss"] for h in history)
        mrtl_to_final = time_to_reach(mrtl["history"], final, rank)
        fixed_to_best = time_to_reach(fixed["history"], best, rank)
        mrtl_to_best = time_to_reach(mrtl["history"], best, rank)
        return {
            "fixed_final_val_loss": final,
            "fixed_time_s": fixed_time,
            "mrtl_time_to_reach_s": mrtl_to_final,
            "speedup": fixed_time / mrtl_to_final,
            "fixed_best_val_loss": best,
            "fixed_time_to_best_s": fixed_to_best,
            "mrtl_time_to_best_s": mrtl_to_best,
            "speedup_to_best": fixed_to_best / mrtl_to_best,
        }

    return {
        "full_rank": compare("full"),
        "whole_schedule": compare(None),
        "test_loss": {"mrtl": mrtl["test"]["loss"], "fixed": fixed["test"]["loss"]},
        "test_f1": {"mrtl": mrtl["test"]["f1"], "fixed": fixed["test"]["f1"]},
        "total_train_time_s": {
            "mrtl": mrtl["total_train_time_s"],
            "fixed": fixed["total_train_time_s"],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench.json")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.manual_seed(0)

    scale = 0.05 if args.quick else 1.0
    result = {
        "threads": torch.get_num_threads(),
        "throughput": {
            "full_rank": throughput("full", int(20_000 * scale) + 500),
            "low_rank": throughput("low", int(100_000 * scale) + 500),
        },
    }
    work = args.out.parent / "bench_runs"
    result["mrtl_vs_fixed"] = mrtl_vs_fixed(
        work, samples=int(40_000 * scale) + 2000, max_epochs=8 if args.quick else 60
    )
    result["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    args.out.write_text(json.dumps(result, indent=2))

    speed = result["throughput"]
    comparison = result["mrtl_vs_fixed"]
    print(f"threads: {result['threads']}")
    print("| measure | value |")
    print("|---|---|")
    for rank in ("full_rank", "low_rank"):
        row = speed[rank]
        print(
            f"| {rank} throughput (samples/s, {row['parameters']:,} parameters) "
            f"| {row['samples_per_s']:,.0f} |"
        )
    for stage in ("full_rank", "whole_schedule"):
        row = comparison[stage]
        print(
            f"| {stage}: fixed / MRTL time to fixed's best val loss "
            f"{row['fixed_best_val_loss']:.4f}"
            f" | {row['fixed_time_to_best_s']:.1f} s / {row['mrtl_time_to_best_s']:.1f} s = "
            f"{row['speedup_to_best']:.1f}× |"
        )
        print(
            f"| {stage}: fixed time / MRTL time to fixed's val loss "
            f"{row['fixed_final_val_loss']:.4f}"
            f" | {row['fixed_time_s']:.1f} s / {row['mrtl_time_to_reach_s']:.1f} s = "
            f"{row['speedup']:.1f}× |"
        )
    print(
        f"| test loss MRTL / fixed | {comparison['test_loss']['mrtl']:.4f} / "
        f"{comparison['test_loss']['fixed']:.4f} |"
    )
    print(
        f"| test F1 MRTL / fixed | {comparison['test_f1']['mrtl']:.3f} / "
        f"{comparison['test_f1']['fixed']:.3f} |"
    )
    print(f"| peak memory | {result['peak_memory_mb']:.0f} MB |")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
