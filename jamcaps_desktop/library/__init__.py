"""The music library: one SQLite file holding tracks, their tags and everything derived from them."""

from jamcaps_desktop.library.database import Library, LibraryError, open_library
from jamcaps_desktop.library.paths import db_path_to_fs, fs_path_to_db

__all__ = ["Library", "LibraryError", "db_path_to_fs", "fs_path_to_db", "open_library"]
