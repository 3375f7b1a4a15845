"""Start a run in one process or as a DDP group whose worker processes we start ourselves.

Lightning's own launcher re-executes the command line for every extra process. Under Hydra
that re-runs the app: each worker composes its own config and output directory, and a
multirun command line would start a sweep inside every worker. Instead the first process
writes the resolved config once, starts ``python -m mrtl_lightning.launch <config>`` for
ranks 1…N−1 with the usual ``MASTER_ADDR``/``MASTER_PORT``/``LOCAL_RANK`` variables, and
trains as rank 0 itself. Lightning sees ``LOCAL_RANK`` and treats the processes as launched
externally. Every process therefore shares one output directory and one config, and a sweep
runs its jobs one DDP group after another.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from mrtl_lightning.train import train

log = logging.getLogger(__name__)

_DDP_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE")


def ddp_processes(trainer_cfg: DictConfig) -> int:
    """Number of processes a trainer config asks for (1 unless its strategy is DDP)."""
    strategy = str(trainer_cfg.get("strategy", "auto"))
    if not strategy.startswith("ddp"):
        return 1
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, str) or devices is None:
        raise ValueError(
            f"trainer.devices={devices!r}: DDP runs need an explicit number of processes, "
            "e.g. trainer.devices=2"
        )
    count = len(devices) if not isinstance(devices, int) else devices
    if trainer_cfg.get("num_nodes", 1) != 1:
        raise ValueError("trainer.num_nodes > 1 is not supported by the built-in launcher")
    return count


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(cfg: DictConfig) -> dict[str, Any]:
    """Run ``train(cfg)`` in this process, with DDP workers started alongside if asked for."""
    processes = ddp_processes(cfg.trainer)
    if processes <= 1 or "LOCAL_RANK" in os.environ:
        return train(cfg)

    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config_path = output_dir / "ddp_config.yaml"
    OmegaConf.save(cfg, config_path, resolve=True)
    saved = {name: os.environ.get(name) for name in _DDP_VARIABLES}
    shared = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "NODE_RANK": "0"}
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "mrtl_lightning.launch", str(config_path)],
            env={**os.environ, **shared, "LOCAL_RANK": str(rank)},
        )
        for rank in range(1, processes)
    ]

    stopping = threading.Event()

    def watch(worker: subprocess.Popen) -> None:
        if worker.wait() != 0 and not stopping.is_set():
            log.error("DDP worker (pid %d) exited with code %d", worker.pid, worker.returncode)
            # Rank 0 would wait forever in a collective for the dead worker.
            os._exit(1)

    for worker in workers:
        threading.Thread(target=watch, args=(worker,), daemon=True).start()
    os.environ.update(shared, LOCAL_RANK="0")
    try:
        return train(cfg)
    finally:
        stopping.set()  # rank 0 is done (or failed and reports why): workers may end now
        for worker in workers:
            try:
                worker.wait(timeout=120)
            except subprocess.TimeoutExpired:
                worker.kill()
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def worker_main(config_path: str) -> None:
    """Entry of a DDP worker process started by :func:`launch`."""
    rank = os.environ.get("LOCAL_RANK", "?")
    logging.basicConfig(level=logging.INFO, format=f"[DDP rank {rank}] %(message)s")
    cfg = OmegaConf.load(config_path)
    train(cfg)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    worker_main(sys.argv[1])
