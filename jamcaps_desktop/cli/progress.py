"""Terminal rendering of job progress, and Ctrl-C as a polite cancel."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import (
    Progress as RichProgress,
)

from jamcaps_desktop.jobs.base import CancelToken, Progress

STAGE_LABELS = {"walk": "Looking for files", "read": "Reading files", "write": "Writing tags", "undo": "Undoing"}


class TerminalProgress:
    """A ProgressCallback that draws one bar per stage on stderr (nothing when quiet)."""

    def __init__(self, console: Console, enabled: bool = True) -> None:
        self._enabled = enabled
        self._bar = RichProgress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[dim]{task.fields[extra]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            disable=not enabled,
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> TerminalProgress:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(*exc)

    def __call__(self, event: Progress) -> None:
        if not self._enabled:
            return
        task = self._tasks.get(event.stage)
        label = STAGE_LABELS.get(event.stage, event.stage.capitalize())
        if task is None:
            task = self._bar.add_task(label, total=event.total, extra="")
            self._tasks[event.stage] = task
        extra = event.message or ""
        self._bar.update(task, completed=event.done, total=event.total, extra=extra)


@contextmanager
def ctrl_c_cancels(token: CancelToken, console: Console) -> Iterator[None]:
    """Ctrl-C (or a polite kill) asks the job to stop after the files in flight; a second one stops at once."""

    def handler(signum: int, frame: object) -> None:
        if token.cancelled:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        token.cancel()
        console.print("[yellow]Stopping after the files in flight… (Ctrl-C again to stop now)")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
