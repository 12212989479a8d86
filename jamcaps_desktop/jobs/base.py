"""Building blocks every long-running job uses.

A job is a plain function that takes its inputs, an optional progress callback and an optional
cancel token, and returns a summary object. The CLI renders progress as a terminal bar; the GUI
forwards the same events to the UI thread. Jobs never print.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass


class Cancelled(Exception):
    """Raised inside a job when its cancel token has been triggered."""


class CancelToken:
    """A thread-safe flag a job polls between units of work."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()


@dataclass(frozen=True)
class Progress:
    """One progress event.

    ``total`` is None while the amount of work is still unknown (e.g. while a folder is walked).
    """

    stage: str
    done: int
    total: int | None = None
    current: str | None = None
    message: str | None = None


ProgressCallback = Callable[[Progress], None]


def no_progress(_: Progress) -> None:
    """The default progress callback: ignore events."""
