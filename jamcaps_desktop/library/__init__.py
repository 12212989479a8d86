"""The music library: one SQLite file holding tracks, their tags and everything derived from them."""

from jamcaps_desktop.library.database import Library, LibraryError, open_library
from jamcaps_desktop.library.paths import display_path, fs_path, path_key, real_path

__all__ = ["Library", "LibraryError", "display_path", "fs_path", "open_library", "path_key", "real_path"]
