"""Running the core's jobs off the UI thread, and showing their progress.

A job is a function ``fn(progress, cancel)`` over the core job API; it runs in a plain thread with its
own library connection, and its progress events reach the UI thread as queued signals, at most every
50 ms, so a job that reports thousands of files a second cannot flood the event loop.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QWidget

from jamcaps_desktop.jobs.base import CancelToken, Progress, ProgressCallback

JobFunction = Callable[[ProgressCallback, CancelToken], Any]
EMIT_EVERY_S = 0.05


@dataclass
class JobState:
    name: str
    started: float
    stage_started: float
    stage: str = ""
    done: int = 0
    total: int | None = None
    current: str | None = None

    def eta_s(self, now: float) -> float | None:
        """Seconds left at the stage's pace so far (None until there is a pace to go by)."""
        if not self.total or self.done <= 0 or self.done >= self.total:
            return None
        return (now - self.stage_started) / self.done * (self.total - self.done)


class JobRunner(QObject):
    """One job in a background thread. Signals arrive on the UI thread."""

    progressed = Signal(object)   # JobState
    succeeded = Signal(object)    # the job's result
    failed = Signal(str)          # a plain message
    ended = Signal()              # after succeeded or failed

    def __init__(self, name: str, fn: JobFunction, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = name
        self._fn = fn
        self.cancel_token = CancelToken()
        now = time.monotonic()
        self.state = JobState(name, now, now)
        self._last_emit = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # not a daemon: the interpreter never tears down under a job still writing files or the library
        self._thread = threading.Thread(target=self._run, name=f"jamcaps-{self.name}")
        self._thread.start()

    def cancel(self) -> None:
        self.cancel_token.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def _progress(self, event: Progress) -> None:
        now = time.monotonic()
        state = self.state
        if event.stage != state.stage:
            state.stage, state.stage_started = event.stage, now
        state.done, state.total, state.current = event.done, event.total, event.current
        finished_stage = event.total is not None and event.done >= event.total
        if finished_stage or now - self._last_emit >= EMIT_EVERY_S:
            self._last_emit = now
            self.progressed.emit(JobState(**state.__dict__))

    def _run(self) -> None:
        try:
            result = self._fn(self._progress, self.cancel_token)
        except Exception as exc:  # a job's failure is shown to the person, never a crash of the app
            traceback.print_exc()
            self.failed.emit(str(exc) or exc.__class__.__name__)
        else:
            self.succeeded.emit(result)
        self.ended.emit()


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min left"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s left"
    return f"{seconds} s left"


class JobBar(QWidget):
    """Progress bar, what is being done, time left, and Cancel."""

    cancel_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(6, 2, 6, 2)
        self.label = QLabel("")
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.NoTextInteraction)
        self.bar = QProgressBar()
        self.bar.setMinimumWidth(220)
        self.bar.setMaximumWidth(320)
        self.eta = QLabel("")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel_requested)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.bar)
        layout.addWidget(self.eta)
        layout.addWidget(self.cancel_button)
        self.setVisible(False)

    def begin(self, name: str) -> None:
        self.label.setText(f"{name}…")
        self.bar.setRange(0, 0)  # busy until the amount of work is known
        self.eta.setText("")
        self.cancel_button.setEnabled(True)
        self.setVisible(True)

    def show_state(self, state: JobState) -> None:
        if state.total:
            self.bar.setRange(0, state.total)
            self.bar.setValue(min(state.done, state.total))
            self.bar.setFormat(f"{state.done:,} / {state.total:,}")
        else:
            self.bar.setRange(0, 0)
        stage = state.stage or state.name
        current = f" — {state.current}" if state.current else ""
        self.label.setText(f"{state.name.capitalize()}: {stage}{current}")
        self.eta.setText(format_eta(state.eta_s(time.monotonic())))

    def cancelling(self) -> None:
        self.cancel_button.setEnabled(False)
        self.label.setText(self.label.text() + " (cancelling…)")

    def finish(self) -> None:
        self.setVisible(False)
