"""Where hydra-chat keeps its files.

Data (the memory: state and SQLite log), cache (the converted chat model) and
config follow the platform's conventions through platformdirs. Each can be
moved with an environment variable, and `HYDRA_HOME` moves all three under one
folder, which is what the tests use.
"""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import PlatformDirs

APP_NAME = "hydra-chat"

_dirs = PlatformDirs(APP_NAME, appauthor=False)


def _override(name: str, sub: str) -> Path | None:
    value = os.environ.get(name)
    if value:
        return Path(value).expanduser()
    home = os.environ.get("HYDRA_HOME")
    if home:
        return Path(home).expanduser() / sub
    return None


def data_dir() -> Path:
    """Return the default memory directory (`HYDRA_DATA_DIR` overrides it)."""
    return _override("HYDRA_DATA_DIR", "data") or Path(_dirs.user_data_dir)


def cache_dir() -> Path:
    """Return the cache directory for converted models (`HYDRA_CACHE_DIR`)."""
    return _override("HYDRA_CACHE_DIR", "cache") or Path(_dirs.user_cache_dir)


def config_dir() -> Path:
    """Return the configuration directory (`HYDRA_CONFIG_DIR`)."""
    return _override("HYDRA_CONFIG_DIR", "config") or Path(_dirs.user_config_dir)


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) readable by the owner only, and return it.

    An existing directory gets its mode tightened to 0o700; parents that
    already exist are left as they are.
    """
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def eval_dir() -> Path:
    """Return the folder with the evaluation data: `HYDRA_EVAL_DIR`, else the copy shipped in `assets/eval`.

    The diagnostics and the benchmarks read `facts_dev.jsonl` from it, so it
    ships with the package and works from a clone in any folder.
    """
    value = os.environ.get("HYDRA_EVAL_DIR")
    if value:
        return Path(value).expanduser()
    return Path(__file__).resolve().parent.parent / "assets" / "eval"
