"""The desktop app, driven offscreen: dropping files scans them, jobs run off the UI thread with
progress and cancel, proposals are reviewed, written into the files, and undone."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6.QtWidgets")
pytest.importorskip("pytestqt")

import mutagen
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent
from test_similar import _set_audio

from jamcaps_desktop.gui.jobs import JobRunner, format_eta
from jamcaps_desktop.gui.main_window import MainWindow
from jamcaps_desktop.gui.settings import AppSettings, SettingsDialog
from jamcaps_desktop.gui.track_table import COLUMNS
from jamcaps_desktop.jobs.base import Progress
from jamcaps_desktop.library import Library
from jamcaps_desktop.scan.scanner import scan


@pytest.fixture
def window(qtbot, tmp_path, models_dir):
    settings = AppSettings(tmp_path / "desktop.ini")
    settings.library_path = tmp_path / "lib" / "library.sqlite"
    win = MainWindow(settings)
    win.show_dialogs = False
    qtbot.addWidget(win)
    win.show()
    yield win
    if win.runner is not None:
        win.runner.cancel()
        win.runner.wait(30)


def _wait_idle(qtbot, win, timeout=60_000):
    qtbot.waitUntil(lambda: not win.busy(), timeout=timeout)


def _drop(win, paths):
    data = QMimeData()
    data.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    event = QDropEvent(QPointF(QPoint(50, 50)), Qt.DropAction.CopyAction, data, Qt.MouseButton.NoButton,
                       Qt.KeyboardModifier.NoModifier)
    win.dropEvent(event)
    return event


def _tag(path, **fields):
    audio = mutagen.File(path, easy=True)
    for name, value in fields.items():
        audio[name] = value
    audio.save()


def test_dropping_files_and_folders_scans_them_and_lists_what_cannot_be_used(qtbot, window, make_track, tmp_path):
    music = tmp_path / "music"
    paths = [make_track(music, fmt, name=f"t{i}") for i, fmt in enumerate(("mp3", "flac", "ogg"))]
    _tag(paths[0], title="Première", artist="Ünïcode ✓")
    broken = music / "broken.mp3"
    broken.write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x10" + b"\x00" * 64)  # a tag and no audio
    single = make_track(tmp_path / "elsewhere", "m4a", name="single")
    event = _drop(window, [music, single])
    assert event.isAccepted()
    _wait_idle(qtbot, window)
    table = window.model
    assert {os.path.basename(r.path) for r in table.rows} >= {p.name for p in paths} | {"single.m4a"}
    titles = [table.index(row, COLUMNS.index("title")).data() for row in range(table.rowCount())]
    assert "Première" in titles
    problems = [window.problems.item(i).text() for i in range(window.problems.count())]
    assert any("broken.mp3" in text for text in problems) or any(
        r.status == "error" and r.path.endswith("broken.mp3") for r in table.rows)
    assert "Scanned" in window.statusBar().currentMessage()
    window.filter_text.setText("ünïcode")
    qtbot.waitUntil(lambda: window.model.rowCount() == 1, timeout=2000)  # once typing pauses
    assert "1 of" in window.count_label.text()
    window.filter_text.clear()
    window.filter_choice.setCurrentText("Errors")
    qtbot.waitUntil(lambda: window.model.rowCount() < window.model.total(), timeout=2000)
    assert all(row.status != "ok" for row in window.model.rows)


def test_a_job_reports_progress_and_can_be_cancelled(qtbot, window):
    seen = []

    def slow(progress, cancel):
        for done in range(1000):
            if cancel.cancelled:
                return "cancelled"
            progress(Progress("counting", done, 1000))
            time.sleep(0.005)
        return "finished"

    window.job_bar.bar.valueChanged.connect(seen.append)
    window.run_job("count", slow, lambda result: seen.append(result))
    qtbot.waitUntil(lambda: window.job_bar.bar.maximum() == 1000 and window.job_bar.bar.value() > 20, timeout=5000)
    assert window.job_bar.isVisible() and not window.analyze_action.isEnabled()
    window.job_bar.cancel_button.click()
    _wait_idle(qtbot, window)
    assert seen[-1] == "cancelled" and any(isinstance(v, int) and v > 0 for v in seen[:-1])
    assert not window.job_bar.isVisible() and window.analyze_action.isEnabled()


def test_a_failing_job_is_reported_not_raised(qtbot, window):
    def broken(progress, cancel):
        raise RuntimeError("the disk went away")

    window.run_job("scan", broken)
    _wait_idle(qtbot, window)
    assert "the disk went away" in window.statusBar().currentMessage()


def _library_with_neighbours(window, make_track, tmp_path):
    music = tmp_path / "music"
    paths = [make_track(music, "mp3", name=f"t{i}") for i in range(5)]
    for path in paths[:3]:
        _tag(path, genre="Drum & Bass")
    with Library(window.library_path) as library:
        scan(library, [music])
        ids = {str(p): t for t, p in library.conn.execute("SELECT id, path FROM tracks")}
        near = np.array([1, 0, 0, 0, 1, 0, 0, 0], dtype=np.float32)
        for path in paths:
            _set_audio(library, ids[str(path)], near + np.random.default_rng(len(str(path))).random(8) * 0.05)
    window.reload()
    return paths, ids


def test_propose_review_write_and_undo_from_the_window(qtbot, window, make_track, tmp_path):
    paths, ids = _library_with_neighbours(window, make_track, tmp_path)
    window.settings.impute_fields = ["genre"]
    window.run_impute()
    _wait_idle(qtbot, window)
    assert window.filter_choice.currentText() == "Has proposals"
    target = ids[str(paths[4])]
    assert target in [row.id for row in window.model.rows]
    assert all(row.pending() for row in window.model.rows)
    row = window.model.row_of(target)
    cell = window.model.index(row, COLUMNS.index("genre")).data()
    assert cell.startswith("Drum & Bass  (0.")  # the proposal, with its confidence, where the file has none

    window.go_to_track(target)
    panel = window.panel
    assert panel.track_id == target
    proposed = {panel.diff.item(r, 0).text(): panel.diff.item(r, 2).text() for r in range(panel.diff.rowCount())}
    assert proposed["genre"] == "Drum & Bass"
    assert panel.neighbours.count() == 3  # the three neighbours that said so
    neighbour = panel.neighbours.item(0).data(Qt.ItemDataRole.UserRole)
    panel.neighbours.itemActivated.emit(panel.neighbours.item(0))
    assert window.panel.track_id == neighbour
    window.go_to_track(target)

    assert window.accept([target]) == 1
    window.write_selection()
    _wait_idle(qtbot, window)
    assert mutagen.File(paths[4], easy=True)["genre"] == ["Drum & Bass"]
    assert "Wrote 1 file" in window.statusBar().currentMessage()
    assert window.model.rows[window.model.row_of(target)].tags["genre"] == ["Drum & Bass"]

    window.undo_last()
    _wait_idle(qtbot, window)
    assert "genre" not in (mutagen.File(paths[4], easy=True).tags or {})
    assert "Restored 1 file" in window.statusBar().currentMessage()


def test_editing_a_proposal_stages_the_edited_value_and_rejecting_drops_it(qtbot, window, make_track, tmp_path):
    paths, ids = _library_with_neighbours(window, make_track, tmp_path)
    window.settings.impute_fields = ["genre"]
    window.run_impute()
    _wait_idle(qtbot, window)
    target = ids[str(paths[4])]
    window.go_to_track(target)
    panel = window.panel
    row = next(r for r in range(panel.diff.rowCount()) if panel.diff.item(r, 0).text() == "genre")
    panel.diff.item(row, 2).setText("Jungle")
    from jamcaps_desktop.write.batch import staged_changes

    assert staged_changes(window.library, [target]) == {target: {"genre": ["Jungle"]}}
    other = ids[str(paths[3])]
    window.reject([other])
    assert window.model.rows[window.model.row_of(other)].pending() == 0


def test_settings_are_remembered(qtbot, tmp_path):
    settings = AppSettings(tmp_path / "s.ini")
    dialog = SettingsDialog(settings, [{"name": "musicnn-mtt", "kind": "audio-tagger", "licence": "ISC",
                                        "installed": False}])
    qtbot.addWidget(dialog)
    dialog.device.setCurrentText("cpu")
    dialog.method.setCurrentText("hybrid")
    dialog.fields["mood"].setChecked(False)
    dialog.id3.setCurrentText("ID3v2.3")
    dialog.keep_mtime.setChecked(True)
    assert dialog.keep_ready.isChecked()  # by default the window keeps the models ready
    dialog.keep_ready.setChecked(False)
    dialog.save()
    again = AppSettings(tmp_path / "s.ini")
    assert again.device == "cpu" and again.method == "hybrid" and again.id3_version == 3 and again.keep_mtime
    assert not again.keep_ready
    assert "mood" not in again.impute_fields and "genre" in again.impute_fields


def test_time_left_reads_plainly():
    assert format_eta(None) == "" and format_eta(42) == "42 s left"
    assert format_eta(125) == "2 min 05 s left" and format_eta(7300) == "2 h 01 min left"
    runner = JobRunner("x", lambda progress, cancel: None)
    runner.state.stage_started -= 10
    runner.state.done, runner.state.total = 25, 100
    assert runner.state.eta_s(runner.state.stage_started + 10) == pytest.approx(30)


def test_emitting_signals_keeps_python_intact():
    """A PySide6 release whose Signal.emit() dropped a reference to True crashed the app after a few
    thousand progress events (on Python 3.11 and older); the dependency excludes it, this checks it."""
    import sys

    from PySide6.QtCore import QObject, Signal

    class Emitter(QObject):
        fired = Signal(object)

    emitter = Emitter()
    before = sys.getrefcount(True)
    for _ in range(200):
        emitter.fired.emit(1)
    assert sys.getrefcount(True) >= before


def test_onnxruntime_loads_after_a_search():
    import subprocess
    import sys

    code = ("from jamcaps_desktop.similar.index import usearch_index_class\n"
            "usearch_index_class()(ndim=4, metric='cos')\n"
            "import onnxruntime\nprint('fine')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "fine" in result.stdout, result.stderr[-2000:]


def test_sorting_and_filtering_keep_the_current_track(qtbot, window, make_track, tmp_path):
    music = tmp_path / "music"
    for i, title in enumerate(["Zebra", "apple", "Mango", "banana"]):
        _tag(make_track(music, "mp3", name=f"t{i}"), title=title, bpm=str(60 + 40 * i))
    window.scan_paths([str(music)])
    _wait_idle(qtbot, window)
    title = COLUMNS.index("title")
    window.table.sortByColumn(title, Qt.SortOrder.AscendingOrder)
    assert [window.model.index(r, title).data() for r in range(4)] == ["apple", "banana", "Mango", "Zebra"]
    window.table.sortByColumn(COLUMNS.index("bpm"), Qt.SortOrder.DescendingOrder)
    assert [window.model.index(r, title).data() for r in range(4)] == ["banana", "Mango", "apple", "Zebra"]
    mango = next(row.id for row in window.model.rows if row.tags["title"] == ["Mango"])
    window.go_to_track(mango)
    window.model.set_text("mango")
    assert window.model.rowCount() == 1 and window.current_track_id() == mango
    window.model.set_text("zebra")
    window.go_to_track(mango)  # filtered out: the filter is cleared to show it
    assert window.current_track_id() == mango and window.model.rowCount() == 4


def test_captions_from_the_window_are_shown_and_searchable(qtbot, window, make_track, tmp_path):
    music = tmp_path / "music"
    _tag(make_track(music, "mp3", name="a"), title="Nocturne", genre="Classical")
    _tag(make_track(music, "mp3", name="b"), title="Rave", genre="Techno")
    window.scan_paths([str(music)])
    _wait_idle(qtbot, window)
    window.run_caption()
    _wait_idle(qtbot, window)
    assert "Captioned 2 track(s)" in window.statusBar().currentMessage()
    window.model.set_text("acoustic")  # a word of the caption only
    assert window.model.rowCount() == 1 and window.model.rows[0].tags["title"] == ["Nocturne"]
    window.go_to_track(window.model.rows[0].id)
    assert "classical" in window.panel.caption.text()


def test_the_window_gets_the_models_ready_as_it_opens_unless_told_to_use_the_cpu(qtbot, window, make_track,
                                                                                 tmp_path, monkeypatch):
    """Opening the window starts making the analysis' GPU sessions in a thread of their own, for the formats
    of the library's tracks; set to the CPU, it makes none. After an analysis they are let go (with what the
    job's tracks took of the GPU's memory) and made again, unless the settings say not to keep them. Closing
    the window waits for that thread."""
    from jamcaps_desktop.analysis import analyze as analyze_module
    from jamcaps_desktop.analysis import kept_sessions
    from jamcaps_desktop.models import engine

    music = tmp_path / "music"
    make_track(music, "flac", name="t0")
    with Library(window.library_path) as library:
        scan(library, [music])
    asked: list[tuple[str, list]] = []
    busy = threading.Event()

    def recorded(device, models=None, formats=None):
        asked.append((device, formats))
        busy.wait(10)
        return True

    monkeypatch.setattr(analyze_module, "get_ready", recorded)
    monkeypatch.setattr(engine, "nvidia_driver_present", lambda: False)
    assert window.get_models_ready() is None and asked == []  # 'auto' without an NVIDIA driver: no GPU
    monkeypatch.setattr(engine, "nvidia_driver_present", lambda: True)
    window.settings.device = "cpu"
    assert window.get_models_ready() is None and asked == []
    window.settings.device = "auto"
    thread = window.get_models_ready()
    qtbot.waitUntil(lambda: bool(asked), timeout=10_000)
    assert asked == [("auto", [(44100, "int16", True)])] and thread.is_alive()
    busy.set()
    thread.join(10)

    released: list[bool] = []
    monkeypatch.setattr(kept_sessions, "release", lambda: released.append(True))
    window.run_analyze()  # no model is installed: the job fails, and says so
    _wait_idle(qtbot, window)
    assert "failed" in window.statusBar().currentMessage()
    qtbot.waitUntil(lambda: len(asked) == 2, timeout=10_000)
    assert released == [True] and asked[1] == asked[0]
    again = window._getting_ready
    again.join(10)

    window.settings.keep_ready = False  # told not to keep them: none are made, and an analysis lets them go
    assert window.get_models_ready() is None
    window.run_analyze()
    _wait_idle(qtbot, window)
    assert released == [True, True] and len(asked) == 2
    window.close()
    assert not thread.is_alive() and not again.is_alive()
