"""Shared fixtures: composing the real Hydra configs and locating the real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def data_dir() -> Path:
    """The real data of ``../shared/data`` (or ``MRTL_DATA_DIR``), relative to the repository."""
    path = Path(os.environ.get("MRTL_DATA_DIR", ROOT.parent / "shared" / "data"))
    return path if path.is_absolute() else (ROOT / path).resolve()


def compose_config(output_dir: Path, *overrides: str) -> DictConfig:
    """The config ``python -m mrtl_lightning <overrides>`` would run, writing to ``output_dir``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            config_name="config",
            overrides=[
                f"paths.output_dir={output_dir}",
                f"paths.cache_dir={output_dir / 'cache'}",
                "trainer.enable_progress_bar=false",
                *overrides,
            ],
        )


@pytest.fixture
def real_data() -> Path:
    path = data_dir()
    if not path.is_dir():
        raise FileNotFoundError(
            f"real data directory {path} is missing; set MRTL_DATA_DIR to ../shared/data"
        )
    return path
