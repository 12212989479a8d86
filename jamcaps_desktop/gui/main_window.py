"""The main window: drop folders, run the jobs, review the proposals, write them.

Every long job goes through ``JobRunner`` (one at a time, queued), opens its own library connection
in its thread, and reports through the same progress events the command line shows. Reviewing
(accept, reject, edit) writes a few rows to the library and is done on the UI thread.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QItemSelectionModel, Qt, QTimer
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDockWidget,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMessageBox,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from jamcaps_desktop.gui.jobs import JobBar, JobFunction, JobRunner, JobState
from jamcaps_desktop.gui.settings import AppSettings, SettingsDialog
from jamcaps_desktop.gui.track_panel import TrackPanel
from jamcaps_desktop.gui.track_table import COLUMNS, FILTERS, TRACK_ID_ROLE, TrackTableModel
from jamcaps_desktop.impute.vocabulary import FIELDS as IMPUTABLE_FIELDS
from jamcaps_desktop.jobs.base import CancelToken, ProgressCallback
from jamcaps_desktop.library.browse import TrackRow, browse_rows
from jamcaps_desktop.library.database import Library, LibraryError

log = logging.getLogger(__name__)

Done = Callable[[Any], None]


@dataclass
class _WithRows:
    """A job's result, with the table's rows as the job left the library."""

    result: Any
    rows: list[TrackRow]


class MainWindow(QMainWindow):
    def __init__(self, settings: AppSettings) -> None:
        super().__init__()
        self.settings = settings
        self.setWindowTitle("jamcaps")
        self.library_path = settings.library_path
        self.library_path.parent.mkdir(parents=True, exist_ok=True)
        self.library = Library(self.library_path)
        self.runner: JobRunner | None = None
        self.queue: list[tuple[str, JobFunction, Done | None]] = []
        self.last_result: Any = None
        self._fresh_rows: list[TrackRow] | None = None
        self.show_dialogs = True  # off in tests and scripted runs: outcomes go to the status line alone
        self._getting_ready: threading.Thread | None = None  # see ``get_models_ready``

        self.model = TrackTableModel(self)
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(COLUMNS.index("path"), Qt.SortOrder.AscendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(22)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        for name, width in (("status", 24), ("title", 170), ("artist", 130), ("album", 130), ("genre", 150),
                            ("mood", 120), ("instruments", 140), ("bpm", 50), ("key", 45), ("vocals", 90),
                            ("sound", 80), ("speed", 70), ("proposals", 75)):
            self.table.setColumnWidth(COLUMNS.index(name), width)
        self.table.selectionModel().selectionChanged.connect(lambda *_: self._selection_changed())

        self.filter_text = QLineEdit()
        self.filter_text.setPlaceholderText("Filter: words in titles, tags, proposals, captions or paths")
        self.filter_text.setClearButtonEnabled(True)
        # typing refilters once it pauses, not at every key (100,000 rows take a moment)
        self._filter_timer = QTimer(self)
        self._filter_timer.setSingleShot(True)
        self._filter_timer.setInterval(200)
        self._filter_timer.timeout.connect(lambda: self.model.set_text(self.filter_text.text()))
        self.filter_text.textChanged.connect(lambda _text: self._filter_timer.start())
        self.filter_choice = QComboBox()
        self.filter_choice.addItems(list(FILTERS))
        self.filter_choice.currentTextChanged.connect(self.model.set_filter)
        self.count_label = QLabel("")
        filters = QHBoxLayout()
        filters.addWidget(self.filter_text, 1)
        filters.addWidget(self.filter_choice)
        filters.addWidget(self.count_label)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addLayout(filters)
        left_layout.addWidget(self.table)

        self.panel = TrackPanel()
        self.panel.accept_requested.connect(lambda track_id, fields: self.accept([track_id], fields))
        self.panel.reject_requested.connect(lambda track_id, fields: self.reject([track_id], fields))
        self.panel.edit_requested.connect(self.edit)
        self.panel.go_to_track.connect(self.go_to_track)
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(left)
        self.splitter.addWidget(self.panel)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        self.setCentralWidget(self.splitter)

        self.problems = QListWidget()
        self.problems_dock = QDockWidget("Problems", self)
        self.problems_dock.setObjectName("problems")
        self.problems_dock.setWidget(self.problems)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.problems_dock)
        self.problems_dock.setVisible(False)

        self.job_bar = JobBar()
        self.job_bar.cancel_requested.connect(self.cancel_job)
        self.statusBar().addPermanentWidget(self.job_bar, 1)
        self._build_actions()
        self.setAcceptDrops(True)
        self._restore_state()
        self.reload()
        self._kept_id: int | None = None
        self.model.modelAboutToBeReset.connect(self._keep_current)
        self.model.modelReset.connect(self._restore_current)
        self.model.rowsInserted.connect(self._update_count)
        self._update_count()

    # -- actions ------------------------------------------------------------------------------
    def _action(self, text: str, slot: Callable[[], Any], shortcut: str | QKeySequence | None = None,
                tip: str | None = None) -> QAction:
        action = QAction(text, self)
        action.triggered.connect(lambda _checked=False: slot())
        if shortcut:
            action.setShortcut(QKeySequence(shortcut))
        if tip:
            action.setStatusTip(tip)
            action.setToolTip(tip)
        self.addAction(action)
        return action

    def _build_actions(self) -> None:
        self.add_folder_action = self._action("Add folder…", self.choose_folder, QKeySequence.StandardKey.Open,
                                              "Scan a folder into the library")
        self.rescan_action = self._action("Rescan", self.rescan, "F5", "Look again at every folder scanned")
        self.analyze_action = self._action("Analyze", self.run_analyze, "Ctrl+Shift+A",
                                           "Listen to the tracks not analysed yet")
        self.impute_action = self._action("Propose tags", self.run_impute, "Ctrl+Shift+P",
                                          "Propose the values tracks lack, from their neighbours")
        self.caption_action = self._action("Write captions", self.run_caption, "Ctrl+Shift+C",
                                           "Describe each track in a sentence, from what is known of it")
        self.write_action = self._action("Write tags", self.write_selection, "Ctrl+W",
                                         "Write the accepted values of the selected tracks into their files")
        self.undo_action = self._action("Undo last write", self.undo_last, "Ctrl+Z",
                                        "Put back what the last write replaced")
        self.accept_action = self._action("Accept", self.accept_current, "A", "Accept the selected proposals")
        self.reject_action = self._action("Reject", self.reject_current, "R", "Reject the selected proposals")
        self.next_action = self._action("Next track", self.next_track, "N", "Go to the next track")
        self.bulk_action = self._action("Accept proposals…", self.bulk_accept, "Ctrl+Shift+B",
                                        "Accept proposals of the selection (or of every track shown) by confidence")
        self.similar_action = self._action("Find similar", self.find_similar, "Ctrl+Shift+S",
                                           "List the tracks that sound and read most alike")
        self.settings_action = self._action("Settings…", self.open_settings, QKeySequence.StandardKey.Preferences)
        quit_action = self._action("Quit", self.close, QKeySequence.StandardKey.Quit)

        menu = self.menuBar()
        file_menu = menu.addMenu("&File")
        for action in (self.add_folder_action, self.rescan_action, self.settings_action, quit_action):
            file_menu.addAction(action)
        library_menu = menu.addMenu("&Library")
        for action in (self.analyze_action, self.impute_action, self.caption_action, self.similar_action):
            library_menu.addAction(action)
        review_menu = menu.addMenu("&Review")
        for action in (self.accept_action, self.reject_action, self.bulk_action, self.next_action,
                       self.write_action, self.undo_action):
            review_menu.addAction(action)
        view_menu = menu.addMenu("&View")
        view_menu.addAction(self.problems_dock.toggleViewAction())
        toolbar = self.addToolBar("Main")
        toolbar.setObjectName("main-toolbar")
        for action in (self.add_folder_action, self.analyze_action, self.impute_action, self.bulk_action,
                       self.write_action, self.undo_action, self.similar_action):
            toolbar.addAction(action)
        self.job_actions = [self.rescan_action, self.analyze_action, self.impute_action, self.caption_action,
                            self.write_action, self.undo_action, self.similar_action]

    # -- library view -------------------------------------------------------------------------
    def reload(self, track_ids: list[int] | None = None) -> None:
        """Re-read the table from the library (only ``track_ids`` when given)."""
        if track_ids is None:
            current = self.current_track_id()
            rows, self._fresh_rows = self._fresh_rows, None  # read by the job that just ended, if any
            self.model.set_rows(rows if rows is not None else browse_rows(self.library))
            if current is not None:
                self.go_to_track(current)
        else:
            self.model.update_rows(browse_rows(self.library, track_ids))
        self._selection_changed()
        self._update_count()

    def _keep_current(self) -> None:
        self._kept_id = self.current_track_id()

    def _restore_current(self) -> None:
        """After the shown rows changed (filter, sort, reload), keep the track that was current."""
        if self._kept_id is not None:
            row = self.model.row_of(self._kept_id)
            if row is not None:
                index = self.model.index(row, 0)
                self.table.selectionModel().setCurrentIndex(
                    index, QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows)
                self.table.scrollTo(index)
        self._update_count()

    def _update_count(self) -> None:
        shown, total = self.model.rowCount(), self.model.total()
        self.count_label.setText(f"{shown:,} of {total:,} tracks" if shown != total else f"{total:,} tracks")

    def selected_track_ids(self) -> list[int]:
        rows = self.table.selectionModel().selectedRows()
        return [int(index.data(TRACK_ID_ROLE)) for index in rows]

    def shown_track_ids(self) -> list[int]:
        return [row.id for row in self.model.rows]

    def current_track_id(self) -> int | None:
        index = self.table.currentIndex()
        if index.isValid():
            return int(index.data(TRACK_ID_ROLE))
        return None

    def _selection_changed(self) -> None:
        ids = self.selected_track_ids()
        current = self.current_track_id()
        shown = current if current in ids else (ids[0] if ids else None)
        if shown != self.panel.track_id or shown is None:
            self.panel.show_track(self.library, shown)

    def go_to_track(self, track_id: int) -> None:
        row = self.model.row_of(track_id)
        if row is None and self.model.filtered():  # filtered out: show everything so that it can be shown
            self._filter_timer.stop()
            self.filter_text.clear()
            self.model.set_text("")
            self.filter_choice.setCurrentText("All tracks")
            row = self.model.row_of(track_id)
        if row is None:
            return
        index = self.model.index(row, 0)
        self.table.selectionModel().setCurrentIndex(
            index, QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows)
        self.table.scrollTo(index)
        self.panel.show_track(self.library, track_id)

    def next_track(self) -> None:
        index = self.table.currentIndex()
        row = index.row() + 1 if index.isValid() else 0
        if row < self.model.rowCount():
            self.go_to_track(self.model.track_id(row))

    # -- jobs ---------------------------------------------------------------------------------
    def run_job(self, name: str, fn: JobFunction, done: Done | None = None) -> None:
        """Run ``fn(progress, cancel)`` off the UI thread after the jobs before it."""
        self.queue.append((name, fn, done))
        if self.runner is None:
            self._next_job()

    def _next_job(self) -> None:
        if not self.queue:
            for action in self.job_actions:
                action.setEnabled(True)
            return
        name, fn, done = self.queue.pop(0)
        for action in self.job_actions:
            action.setEnabled(False)
        runner = JobRunner(name, fn, self)
        self.runner = runner
        runner.progressed.connect(self._job_progress)
        runner.succeeded.connect(lambda result: self._job_succeeded(name, result, done))
        runner.failed.connect(lambda message: self._job_failed(name, message))
        runner.ended.connect(self._job_ended)
        self.job_bar.begin(name.capitalize())
        self.statusBar().showMessage(f"{name.capitalize()}…")
        runner.start()

    def _job_progress(self, state: JobState) -> None:
        self.job_bar.show_state(state)

    def _job_succeeded(self, name: str, result: Any, done: Done | None) -> None:
        if isinstance(result, _WithRows):
            self._fresh_rows, result = result.rows, result.result
        self.last_result = result
        if done is not None:
            done(result)
        self._fresh_rows = None

    def _job_failed(self, name: str, message: str) -> None:
        self.statusBar().showMessage(f"{name.capitalize()} failed: {message}")
        if self.show_dialogs:
            QMessageBox.warning(self, f"{name.capitalize()} failed", message)

    def _job_ended(self) -> None:
        analysed = self.runner is not None and self.runner.name == "analyze"
        if self.runner is not None:
            self.runner.wait()  # its thread has emitted its last signal and is returning
            self.runner.deleteLater()
        self.runner = None
        if analysed:
            # the sessions kept through a job hold what its tracks needed (14–17.5 GB of an H100's memory after
            # 100 tracks): they are made again, as the window made them when it opened (1.8–2.6 GB), or let go
            # where the window is not to keep them
            self.get_models_ready(afresh=True)
        self.job_bar.finish()
        self._next_job()

    def cancel_job(self) -> None:
        if self.runner is not None:
            self.runner.cancel()
            self.job_bar.cancelling()

    def busy(self) -> bool:
        return self.runner is not None or bool(self.queue)

    def _in_library(self, work: Callable[[Library, ProgressCallback, CancelToken], Any], *,
                    rows: bool = True) -> JobFunction:
        """A job function that opens its own library connection in the job's thread, and reads the
        table's rows there afterwards: at 100,000 tracks that read takes seconds the window must not
        spend frozen."""
        path = self.library_path

        def job(progress: ProgressCallback, cancel: CancelToken) -> Any:
            library = Library(path)
            try:
                result = work(library, progress, cancel)
                return _WithRows(result, browse_rows(library)) if rows else result
            finally:
                library.close()
        return job

    def _show_problems(self, lines: list[str]) -> None:
        """List what could not be used, each with its reason, in the Problems panel."""
        self.problems.clear()
        for line in lines:
            self.problems.addItem(QListWidgetItem(line))
        if lines:
            self.problems_dock.setVisible(True)
            self.resizeDocks([self.problems_dock], [120], Qt.Orientation.Vertical)

    # scanning
    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a music folder")
        if folder:
            self.scan_paths([folder])

    def scan_paths(self, paths: list[str]) -> None:
        from jamcaps_desktop.scan.scanner import scan

        paths = [os.fspath(p) for p in paths]
        self.run_job("scan", self._in_library(lambda lib, progress, cancel: scan(lib, paths, progress=progress,
                                                                                 cancel=cancel)), self._scanned)

    def rescan(self) -> None:
        """Scan again every folder scanned before (files added, changed, moved or gone are noticed)."""
        import json

        roots: list[str] = []
        for (text,) in self.library.conn.execute("SELECT roots FROM scans ORDER BY id"):
            roots.extend(r for r in json.loads(text) if r not in roots)
        if roots:
            self.scan_paths(roots)

    def _scanned(self, summary: Any) -> None:
        self.reload()
        problems = [(p["path"], p.get("error") or p.get("reason") or "")
                    for p in summary.errors + summary.issues + summary.ignored]
        unusable = len(summary.errors) + len(summary.issues)
        self._show_problems([f"{path} — {reason}" for path, reason in problems])
        notes = [f"{unusable:,} could not be read"] if unusable else []
        if summary.ignored:
            notes.append(f"{len(summary.ignored):,} other file(s) are not audio")
        self.statusBar().showMessage(
            f"Scanned {summary.files_seen:,} audio file(s): {summary.added:,} added, {summary.updated:,} updated, "
            f"{summary.unchanged:,} unchanged, {summary.missing:,} missing"
            + (f"; {', '.join(notes)} (see Problems)" if notes else "")
            + (" (cancelled)" if summary.status == "cancelled" else ""))

    # analysis and imputation
    def run_analyze(self) -> None:
        from jamcaps_desktop.analysis.analyze import analyze

        device = self.settings.device
        self.run_job("analyze", self._in_library(
            lambda lib, progress, cancel: analyze(lib, device=device, progress=progress, cancel=cancel)),
            self._analysed)

    def get_models_ready(self, afresh: bool = False) -> threading.Thread | None:
        """Make the analysis' sessions on the GPU as the window opens, in a thread of their own: CUDA's start,
        the models' and the front ends' sessions and their first runs, about 2.5 s on an H100 that the first
        folder analysed would otherwise wait for (they are kept for every analysis the window runs). Nothing
        where the analysis is set to the CPU, or no GPU is usable (there, sessions take little to make), or
        the settings say not to keep them. ``afresh``: the sessions kept are let go first, and made again
        where they are to be kept (after an analysis, or a change of settings)."""
        from jamcaps_desktop.models.engine import nvidia_driver_present

        device = self.settings.device
        if device == "cpu" or not self.settings.keep_ready or (device == "auto" and not nvidia_driver_present()):
            if afresh:
                from jamcaps_desktop.analysis import kept_sessions

                kept_sessions.release()
            return None
        path = self.library_path

        def work() -> None:
            try:
                from jamcaps_desktop.analysis import kept_sessions
                from jamcaps_desktop.analysis.analyze import get_ready, likely_formats

                if afresh:
                    kept_sessions.release()
                with Library(path) as library:
                    formats = likely_formats(library)
                get_ready(device, formats=formats)
            except Exception as exc:  # e.g. a model not installed: the analysis says so when it is asked for
                log.info("the models could not be made ready ahead: %s", exc)

        self._getting_ready = threading.Thread(target=work, name="models-ready", daemon=True)
        self._getting_ready.start()
        return self._getting_ready

    def _analysed(self, summary: Any) -> None:
        self.reload()
        errors = len(summary.errors)
        where = f" on {summary.device}" if summary.device else ""  # no device started: nothing to analyse
        self.statusBar().showMessage(f"Analysed {summary.analysed:,} track(s){where} in "
                                     f"{summary.elapsed_s:.0f} s" + (f"; {errors} could not be analysed" if errors
                                                                     else ""))
        if errors:
            self._show_problems([f"{e.get('path', '')} — {e.get('error', '')}" for e in summary.errors])

    def run_impute(self) -> None:
        from jamcaps_desktop.impute.job import impute
        from jamcaps_desktop.similar.metadata import embed_with_installed_encoder

        device, fields, method = self.settings.device, self.settings.impute_fields, self.settings.method
        llm_model = self.settings.llm_model

        def work(lib: Library, progress: ProgressCallback, cancel: CancelToken) -> Any:
            embed_with_installed_encoder(lib, device, progress=progress, cancel=cancel)
            complete = None
            if method != "vote":
                from jamcaps_desktop.impute.llm import LlamaCompleter
                from jamcaps_desktop.models import registry

                path = Path(llm_model) if Path(llm_model).is_file() else registry.verify(llm_model).onnx_path
                complete = LlamaCompleter(path)
            return impute(lib, fields=fields, method=method, progress=progress, cancel=cancel, complete=complete)

        self.run_job("propose", self._in_library(work), self._imputed)

    def _imputed(self, summary: Any) -> None:
        self.reload()
        per_field = ", ".join(f"{n} {c}" for n, c in summary.per_field.items()) or "none"
        self.statusBar().showMessage(f"Looked at {summary.tracks:,} track(s): {summary.proposals:,} proposal(s) "
                                     f"({per_field}) in {summary.elapsed_s:.1f} s")
        self.filter_choice.setCurrentText("Has proposals")

    def run_caption(self) -> None:
        from jamcaps_desktop.caption.job import caption

        self.run_job("caption", self._in_library(
            lambda lib, progress, cancel: caption(lib, progress=progress, cancel=cancel)), self._captioned)

    def _captioned(self, summary: Any) -> None:
        self.reload()
        self.statusBar().showMessage(f"Captioned {summary.written:,} track(s); {summary.unchanged:,} unchanged, "
                                     f"{summary.without_evidence:,} with nothing known to say")

    # -- review -------------------------------------------------------------------------------
    def _review_targets(self) -> list[int]:
        return self.selected_track_ids() or ([self.panel.track_id] if self.panel.track_id is not None else [])

    def accept(self, track_ids: list[int], fields: list[str] | None = None, min_confidence: float = 0.0) -> int:
        from jamcaps_desktop.impute.job import accept

        count = accept(self.library, track_ids, fields=fields, min_confidence=min_confidence)
        self._reviewed(track_ids, f"Accepted {count} proposal(s); 'Write tags' writes them.")
        return count

    def reject(self, track_ids: list[int], fields: list[str] | None = None) -> int:
        from jamcaps_desktop.impute.job import reject

        count = reject(self.library, track_ids, fields=fields)
        self._reviewed(track_ids, f"Rejected {count} proposal(s).")
        return count

    def edit(self, track_id: int, field: str, values: list[str]) -> None:
        from jamcaps_desktop.tags.values import InvalidValueError
        from jamcaps_desktop.write.batch import stage

        try:
            stage(self.library, [track_id], {field: values}, origin="user")
        except InvalidValueError as exc:
            self.statusBar().showMessage(f"Not a valid value: {exc}")
            if self.show_dialogs:
                QMessageBox.warning(self, "Not a valid value", str(exc))
            self.panel.show_track(self.library, track_id)
            return
        with self.library.transaction() as conn:
            conn.execute("UPDATE proposals SET status = 'accepted' WHERE track_id = ? AND field = ?",
                         (track_id, field))
        self._reviewed([track_id], f"{field} set to {'; '.join(values) or '(nothing)'}; 'Write tags' writes it.")

    def _reviewed(self, track_ids: list[int], message: str) -> None:
        current = self.panel.track_id
        self.reload(track_ids)
        if current is not None:
            self.panel.show_track(self.library, current)
        self.statusBar().showMessage(message)

    def accept_current(self) -> None:
        self._review_current(self.accept)

    def reject_current(self) -> None:
        self._review_current(self.reject)

    def _review_current(self, act: Callable[[list[int], list[str] | None], int]) -> None:
        """The panel's selected proposals when it has the focus, else all of the selected tracks'."""
        if self.panel.diff.hasFocus() and self.panel.track_id is not None:
            act([self.panel.track_id], self.panel.selected_fields() or None)
        else:
            act(self._review_targets(), None)

    def bulk_accept(self) -> None:
        targets = self.selected_track_ids() or self.shown_track_ids()
        dialog = QDialog(self)
        dialog.setWindowTitle("Accept proposals")
        form = QFormLayout(dialog)
        field_choice = QComboBox()
        field_choice.addItems(["every field", *IMPUTABLE_FIELDS])
        confidence = QDoubleSpinBox()
        confidence.setRange(0.0, 1.0)
        confidence.setSingleStep(0.05)
        confidence.setValue(0.8)
        form.addRow(QLabel(f"Of {len(targets):,} track(s) ({'selected' if self.selected_track_ids() else 'shown'}):"))
        form.addRow("Field", field_choice)
        form.addRow("Confidence at least", confidence)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(dialog.accept)
        buttons.rejected.connect(dialog.reject)
        form.addRow(buttons)
        if dialog.exec() == QDialog.DialogCode.Accepted:
            choice = field_choice.currentText()
            self.accept(targets, None if choice == "every field" else [choice], confidence.value())

    # -- writing ------------------------------------------------------------------------------
    def write_selection(self) -> None:
        from jamcaps_desktop.write.batch import WriteOptions, staged_changes, write_changes

        targets = self.selected_track_ids() or self.shown_track_ids()
        changes = staged_changes(self.library, targets)
        if not changes:
            self.statusBar().showMessage("Nothing accepted to write for these tracks.")
            return
        options = WriteOptions(id3_version=self.settings.id3_version, keep_mtime=self.settings.keep_mtime)
        self.run_job("write", self._in_library(lambda lib, progress, cancel: write_changes(
            lib, changes, options=options, progress=progress, cancel=cancel)), self._written)

    def _written(self, summary: Any) -> None:
        self.reload()
        written, failed = summary.count("written"), summary.count("failed")
        message = f"Wrote {written:,} file(s)" + (f"; {failed:,} failed" if failed else "") + \
            (f"; {summary.count('unchanged'):,} already held the values" if summary.count("unchanged") else "")
        self.statusBar().showMessage(message)
        if failed:
            self._show_problems([f"{f.path} — {f.error}" for f in summary.files if f.status == "failed"])
        if written and self.show_dialogs:
            box = QMessageBox(self)
            box.setWindowTitle("Tags written")
            box.setText(message + ".")
            undo_button = box.addButton("Undo this write", QMessageBox.ButtonRole.DestructiveRole)
            box.addButton(QMessageBox.StandardButton.Ok)
            box.exec()
            if box.clickedButton() is undo_button:
                self.undo_batch(summary.batch_id)

    def undo_last(self) -> None:
        self.undo_batch(None)

    def undo_batch(self, batch_id: int | None) -> None:
        from jamcaps_desktop.write.batch import UndoError, undo

        def work(lib: Library, progress: ProgressCallback, cancel: CancelToken) -> Any:
            try:
                return undo(lib, batch_id, progress=progress, cancel=cancel)
            except UndoError as exc:
                raise RuntimeError(str(exc)) from exc

        self.run_job("undo", self._in_library(work), self._undone)

    def _undone(self, summary: Any) -> None:
        self.reload()
        failed = summary.count("failed")
        self.statusBar().showMessage(f"Restored {summary.count('written'):,} file(s)"
                                     + (f"; {failed:,} could not be restored (see Problems)" if failed else ""))
        if failed:
            self._show_problems([f"{f.path} — {f.error}" for f in summary.files if f.status == "failed"])

    # -- similar ------------------------------------------------------------------------------
    def find_similar(self) -> None:
        from jamcaps_desktop.similar.search import Searcher

        track_id = self.panel.track_id
        if track_id is None:
            return

        def work(lib: Library, progress: ProgressCallback, cancel: CancelToken) -> Any:
            return Searcher(lib, by="both").neighbours(track_id, 10)

        self.run_job("find similar", self._in_library(work, rows=False),
                     lambda matches: self._show_similar(track_id, matches))

    def _show_similar(self, track_id: int, matches: list[Any]) -> None:
        paths = {row.id: row.path for row in self.model.rows}
        self.similar_list = QListWidget()
        for match in matches:
            sides = ", ".join(f"{name} {value:.2f}" for name, value in (("sound", match.audio),
                                                                        ("metadata", match.meta)) if value is not None)
            item = QListWidgetItem(f"{match.score:.2f}  {os.path.basename(paths.get(match.track_id, '?'))}  ({sides})")
            item.setData(Qt.ItemDataRole.UserRole, match.track_id)
            self.similar_list.addItem(item)
        if not matches:
            self.similar_list.addItem("No similar tracks yet: analyse the library first.")
        self.similar_list.itemActivated.connect(lambda item: self.go_to_track(int(item.data(Qt.ItemDataRole.UserRole))))
        self.similar_list.itemDoubleClicked.connect(
            lambda item: self.go_to_track(int(item.data(Qt.ItemDataRole.UserRole))))
        dock = getattr(self, "similar_dock", None)
        if dock is None:
            dock = self.similar_dock = QDockWidget("Similar tracks", self)
            dock.setObjectName("similar")
            self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, dock)
        dock.setWindowTitle(f"Similar to {os.path.basename(paths.get(track_id, str(track_id)))}")
        dock.setWidget(self.similar_list)
        dock.setVisible(True)

    # -- settings -----------------------------------------------------------------------------
    def open_settings(self) -> None:
        from jamcaps_desktop.models import registry

        models = [{"name": name, "kind": spec.get("kind", "audio-tagger"), "licence": spec.get("licence"),
                   "installed": registry.is_installed(name)} for name, spec in sorted(registry.manifests().items())]
        dialog = SettingsDialog(self.settings, models, self)
        dialog.install_requested.connect(lambda name: self.run_job(
            "install model", lambda progress, cancel: registry.install(name),
            lambda _r: self.statusBar().showMessage(f"Installed {name}.")))
        dialog.verify_requested.connect(lambda name: self.run_job(
            "verify model", lambda progress, cancel: registry.verify(name),
            lambda _r: self.statusBar().showMessage(f"{name} is installed and intact.")))
        kept = (self.settings.device, self.settings.keep_ready)
        if dialog.exec() == QDialog.DialogCode.Accepted:
            dialog.save()
            if (self.settings.device, self.settings.keep_ready) != kept and not self.busy():
                self.get_models_ready(afresh=True)  # for the other device, or let go
            if self.settings.library_path != self.library_path:
                self.open_library(self.settings.library_path)

    def open_library(self, path: Path) -> None:
        if self.busy():
            QMessageBox.information(self, "Busy", "Wait for the running job to finish, or cancel it.")
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            library = Library(path)
        except (LibraryError, OSError) as exc:
            QMessageBox.warning(self, "Cannot open the library", str(exc))
            return
        self.library.close()
        self.library, self.library_path = library, path
        self.reload()

    # -- drag and drop ------------------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = [url.toLocalFile() for url in event.mimeData().urls() if url.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.scan_paths(paths)

    # -- window state -------------------------------------------------------------------------
    def _restore_state(self) -> None:
        store = self.settings.store
        geometry, state = store.value("window/geometry"), store.value("window/state")
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)
        else:
            self.resize(1400, 860)
        if isinstance(state, QByteArray):
            self.restoreState(state)
        splitter = store.value("window/splitter")
        if isinstance(splitter, QByteArray):
            self.splitter.restoreState(splitter)
        columns = store.value("window/columns")
        if isinstance(columns, QByteArray):
            self.table.horizontalHeader().restoreState(columns)

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.runner is not None:
            self.queue.clear()
            self.runner.cancel()
            self.runner.wait(30)
        store = self.settings.store
        store.setValue("window/geometry", self.saveGeometry())
        store.setValue("window/state", self.saveState())
        store.setValue("window/splitter", self.splitter.saveState())
        store.setValue("window/columns", self.table.horizontalHeader().saveState())
        self.settings.sync()
        self.library.close()
        if self._getting_ready is not None:  # a process that ends while CUDA starts may crash as it ends
            self._getting_ready.join(60)
            self._getting_ready = None
        super().closeEvent(event)


def select_first(window: MainWindow) -> None:
    """Select the first track shown (used when the window opens on a folder)."""
    if window.model.rowCount():
        QTimer.singleShot(0, lambda: window.go_to_track(window.model.track_id(0)))

