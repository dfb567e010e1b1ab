"""The environment variables ltcompress honours, read in one place, when the configuration is resolved (the entry
point of the CLI, compress() and verify), and recorded in the run's config.yaml like any other setting; no
stage reads the environment.

    LTCOMPRESS_CACHE    run.cache_dir when unset (else $XDG_CACHE_HOME/ltcompress, ~/.cache/ltcompress)
    LTCOMPRESS_DATA     data.data_dir when unset (the folder holding the dataset's files)
    LTCOMPRESS_OFFLINE  1: data.download false (never fetch a missing dataset)
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping


def default_cache(env: Mapping[str, str]) -> Path:
    if env.get("LTCOMPRESS_CACHE"):
        return Path(env["LTCOMPRESS_CACHE"]).expanduser()
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "ltcompress"


def data_dir(env: Mapping[str, str]) -> str | None:
    return env.get("LTCOMPRESS_DATA") or None


def offline(env: Mapping[str, str]) -> bool:
    return env.get("LTCOMPRESS_OFFLINE") == "1"
