"""The environment variables ltcompress honours, read in one place, when the configuration is resolved (the entry
point of the CLI, compress() and verify), and recorded in the run's config.yaml like any other setting; no
stage reads the environment.

    LTCOMPRESS_CACHE    run.cache_dir when unset (else $XDG_CACHE_HOME/ltcompress, ~/.cache/ltcompress)
    LTCOMPRESS_DATA     data.data_dir when unset (the folder holding the dataset's files)
    LTCOMPRESS_OFFLINE  1: data.download false (never fetch a missing dataset)
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from ltcompress.config import CompressConfig


def default_cache(env: Mapping[str, str]) -> Path:
    if env.get("LTCOMPRESS_CACHE"):
        return Path(env["LTCOMPRESS_CACHE"]).expanduser()
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "ltcompress"


def apply(cfg: CompressConfig, env: Mapping[str, str] | None = None) -> CompressConfig:
    """`cfg` with what the environment decides filled in; settings given explicitly win, except that
    LTCOMPRESS_OFFLINE=1 always turns downloads off."""
    env = os.environ if env is None else env
    run, data = cfg.run, cfg.data
    if not run.cache_dir:
        run = dataclasses.replace(run, cache_dir=str(default_cache(env)))
    if not data.data_dir and env.get("LTCOMPRESS_DATA"):
        data = dataclasses.replace(data, data_dir=env["LTCOMPRESS_DATA"])
    if env.get("LTCOMPRESS_OFFLINE") == "1":
        data = dataclasses.replace(data, download=False)
    return dataclasses.replace(cfg, run=run, data=data)
