"""The desktop app under load: does the window stay responsive, and is the table quick at 100,000 tracks?

    QT_QPA_PLATFORM=offscreen python benchmarks/gui_benchmark.py --tracks 1000 --table 100000

Responsiveness: a tree of ``--tracks`` short MP3 files (different tones and tags) is scanned,
analysed (with the installed models) and given proposals through the main window, while a 10 ms timer
on the UI thread records every gap between its ticks; the longest gap is the worst event-loop stall.
Table: a library of ``--table`` tracks (rows written straight into SQLite) is loaded into the table,
sorted by title and filtered, each timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def build_tree(root: Path, count: int, seconds: float) -> None:
    import mutagen
    from audio_fixtures import make_audio

    marker = root / ".complete"
    if marker.exists() and marker.read_text() == f"{count} {seconds}":
        return
    if root.exists():
        shutil.rmtree(root)
    templates = Path(tempfile.mkdtemp())
    tones = [make_audio(templates / f"t{i}.mp3", "mp3", seconds=seconds, freq=110.0 * (1 + i / 7)) for i in range(16)]
    for index in range(count):
        folder = root / f"Album {index // 12:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{index % 12 + 1:02d} Track {index}.mp3"
        shutil.copyfile(tones[index % len(tones)], target)
        tags = mutagen.File(target, easy=True)
        if tags.tags is None:
            tags.add_tags()
        tags["title"] = f"Track {index}"
        tags["artist"] = f"Artist {index // 40}"
        if index % 3:
            tags["genre"] = ["Ambient", "Techno", "Jazz", "Folk"][index % 4]
        tags.save()
    shutil.rmtree(templates)
    marker.write_text(f"{count} {seconds}")


def responsiveness(tree: Path, steps: list[str]) -> dict[str, float]:
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from jamcaps_desktop.gui.main_window import MainWindow
    from jamcaps_desktop.gui.settings import AppSettings

    app = QApplication.instance() or QApplication(sys.argv[:1])
    work = Path(tempfile.mkdtemp())
    settings = AppSettings(work / "desktop.ini")
    settings.library_path = work / "library.sqlite"
    window = MainWindow(settings)
    window.show_dialogs = False
    window.show()
    results: dict[str, float] = {}
    jobs = {"scan": lambda: window.scan_paths([str(tree)]), "analyze": window.run_analyze,
            "impute": window.run_impute}
    for step in steps:
        gaps = [0.0]
        last = [time.perf_counter()]

        def tick(gaps: list[float] = gaps, last: list[float] = last) -> None:
            now = time.perf_counter()
            gaps.append(now - last[0])
            last[0] = now

        timer = QTimer()
        timer.setInterval(10)
        timer.timeout.connect(tick)
        timer.start()
        started = time.perf_counter()
        jobs[step]()
        while window.busy():
            app.processEvents()
            time.sleep(0.002)
        timer.stop()
        gaps.sort()
        results[f"{step}_s"] = round(time.perf_counter() - started, 1)
        results[f"{step}_worst_stall_ms"] = round(gaps[-1] * 1000, 1)
        results[f"{step}_p99_gap_ms"] = round(gaps[int(len(gaps) * 0.99)] * 1000, 1)
        results[f"{step}_message"] = window.statusBar().currentMessage()  # type: ignore[assignment]
    window.close()
    return results


def table(count: int) -> dict[str, float]:
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QApplication

    from jamcaps_desktop.gui.track_table import COLUMNS, TrackTableModel
    from jamcaps_desktop.library import Library
    from jamcaps_desktop.library.browse import browse_rows

    app = QApplication.instance() or QApplication(sys.argv[:1])
    path = Path(tempfile.mkdtemp()) / "big.sqlite"
    Library(path).close()
    conn = sqlite3.connect(path)
    now = "2026-01-01T00:00:00Z"
    with conn:
        conn.executemany(
            "INSERT INTO tracks (id, path, path_key, status, container, codec, duration, size, mtime_ns, added_at, "
            "updated_at) VALUES (?, ?, ?, 'ok', 'mp3', 'mp3', 200.0, 1000, 0, ?, ?)",
            [(i, f"/music/Artist {i // 500}/Album {i // 12}/{i % 12 + 1:02d} Track {i}.mp3",
              f"/music/{i:08d}".encode(), now, now) for i in range(1, count + 1)])
        rows = []
        for i in range(1, count + 1):
            rows += [(i, "TIT2", "title", f"Track {i * 7919 % count}", 0),
                     (i, "TPE1", "artist", f"Artist {i // 500}", 1), (i, "TALB", "album", f"Album {i // 12}", 2)]
            if i % 3:
                rows.append((i, "TCON", "genre", ["Ambient", "Techno", "Jazz", "Folk"][i % 4], 3))
        conn.executemany("INSERT INTO track_tags (track_id, raw_key, field, value, position) VALUES (?, ?, ?, ?, ?)",
                         rows)
        conn.executemany("INSERT INTO proposals (track_id, field, vals, confidence, method, candidates, neighbours, "
                         "models, created_at) VALUES (?, 'mood', '[\"Calm\"]', 0.7, 'vote', '{}', '[]', '{}', ?)",
                         [(i, now) for i in range(1, count + 1, 4)])
    conn.close()
    library = Library(path)
    results: dict[str, float] = {}
    start = time.perf_counter()
    loaded = browse_rows(library)
    results["read_rows_s"] = round(time.perf_counter() - start, 2)
    model = TrackTableModel()
    start = time.perf_counter()
    model.set_rows(loaded)
    app.processEvents()
    results["load_model_s"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    model.sort(COLUMNS.index("title"), Qt.SortOrder.AscendingOrder)
    results["sort_by_title_s"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    model.set_text("track 4242")
    results["filter_text_s"] = round(time.perf_counter() - start, 3)
    results["filter_text_rows"] = model.rowCount()
    start = time.perf_counter()
    model.set_text("")
    model.set_filter("Has proposals")
    results["filter_has_proposals_s"] = round(time.perf_counter() - start, 3)
    results["filter_has_proposals_rows"] = model.rowCount()
    library.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=1000, help="Tracks for the responsiveness run (0: skip).")
    parser.add_argument("--seconds", type=float, default=10.0, help="Length of each generated track.")
    parser.add_argument("--steps", default="scan,analyze,impute")
    parser.add_argument("--table", type=int, default=100000, help="Tracks for the table run (0: skip).")
    parser.add_argument("--tree", type=Path, default=Path(tempfile.gettempdir()) / "jamcaps-gui-bench-tree")
    args = parser.parse_args()
    result: dict[str, object] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                                            f"CPython {platform.python_version()}"}
    if args.table:
        result["table"] = {"tracks": args.table, **table(args.table)}
    if args.tracks:
        build_tree(args.tree, args.tracks, args.seconds)
        result["responsiveness"] = {"tracks": args.tracks, "seconds_each": args.seconds,
                                    **responsiveness(args.tree, args.steps.split(","))}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
