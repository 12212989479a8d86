"""Imported by the fork server only: it loads the program's main script once, for every worker to inherit.

Every worker process loads the program's main script before it runs anything (the command line's or
the window's, with whatever they import). Python's fork server means to do that once, itself, when
``"__main__"`` is among its preloaded modules, but in Python 3.11 and 3.12 it never does (CPython issue
126631: it looks for the script's path under a key the preparation data does not have), so each worker
loads the script again. The job's process names the script in an environment variable, and importing
this module in the server loads it the way a worker would; a worker then finds it loaded and skips it.
"""

from __future__ import annotations

import contextlib
import os
from multiprocessing import process, spawn

from jamcaps_desktop.jobs.workers import MAIN_PATH_VARIABLE


def _load_main() -> None:
    path = os.environ.pop(MAIN_PATH_VARIABLE, None)
    if not path or not os.path.isfile(path):
        return
    current = process.current_process()
    current._inheriting = True  # type: ignore[attr-defined]  # as the fork server itself does
    try:
        # should it fail, each worker loads the script itself, as it would without this module
        with contextlib.suppress(Exception):
            spawn.import_main_path(path)
    finally:
        del current._inheriting  # type: ignore[attr-defined]


_load_main()
