"""Where the app keeps its files: platform user directories, overridable per command."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "jamcaps"
LIBRARY_ENV = "JAMCAPS_LIBRARY"
LIBRARY_FILENAME = "library.sqlite"


def user_data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def default_library_path() -> Path:
    """The library used when neither ``--library`` nor ``JAMCAPS_LIBRARY`` names one."""
    env = os.environ.get(LIBRARY_ENV)
    if env:
        return Path(env).expanduser()
    return user_data_dir() / LIBRARY_FILENAME


def resolve_library_path(explicit: str | os.PathLike[str] | None) -> Path:
    """``--library`` wins over ``JAMCAPS_LIBRARY``, which wins over the platform default."""
    if explicit:
        return Path(explicit).expanduser()
    return default_library_path()
