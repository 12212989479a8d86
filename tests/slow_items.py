"""A worker function for the process pools' tests: it marks that it started on an item, then takes a while."""

from __future__ import annotations

import time
from pathlib import Path


def marked_slowly(path: str) -> str:
    Path(path).touch()
    time.sleep(0.3)
    return path
