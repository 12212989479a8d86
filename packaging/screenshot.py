"""Render the main window on a real folder to a PNG (the README's picture).

    QT_QPA_PLATFORM=offscreen .venv/bin/python packaging/screenshot.py ~/Music --out window.png \\
        [--analyze] [--caption] [--impute] [--select WORD]

It scans the folders into a fresh library (or ``--library``), optionally analyses them and proposes
tags with the installed models, selects a track (one with proposals, or the first matching
``--select``), and saves what the window shows.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--out", type=Path, default=Path("window.png"))
    parser.add_argument("--library", type=Path, help="Library file (default: a new one in a temporary folder).")
    parser.add_argument("--analyze", action="store_true", help="Analyse the tracks with the installed models.")
    parser.add_argument("--impute", action="store_true", help="Propose tags the tracks lack.")
    parser.add_argument("--caption", action="store_true", help="Write captions.")
    parser.add_argument("--select", help="Select the first track whose path contains this text.")
    parser.add_argument("--size", default="1560x900", help="Window size, WIDTHxHEIGHT.")
    args = parser.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    from PySide6.QtWidgets import QApplication

    from jamcaps_desktop.gui.main_window import MainWindow
    from jamcaps_desktop.gui.settings import AppSettings

    app = QApplication.instance() or QApplication(sys.argv[:1])
    work = Path(tempfile.mkdtemp(prefix="jamcaps-screenshot-"))
    settings = AppSettings(work / "desktop.ini")
    settings.library_path = args.library or work / "library.sqlite"
    window = MainWindow(settings)
    window.show_dialogs = False
    width, height = (int(v) for v in args.size.lower().split("x"))
    window.resize(width, height)
    window.show()

    def settle() -> None:
        while window.busy():
            app.processEvents()
            time.sleep(0.02)
        app.processEvents()

    window.scan_paths(args.folders)
    settle()
    if args.analyze:
        window.run_analyze()
        settle()
    if args.caption:
        window.run_caption()
        settle()
    if args.impute:
        window.run_impute()
        settle()
    rows = window.model.rows
    chosen = None
    if args.select:
        wanted = args.select.casefold()
        chosen = next((row.id for row in rows if wanted in row.path.casefold()), None)
    if chosen is None and rows:
        chosen = rows[0].id
    if chosen is not None:
        window.go_to_track(int(chosen))
    message = window.statusBar().currentMessage()
    window.statusBar().showMessage(message)
    for _ in range(5):
        app.processEvents()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not window.grab().save(str(args.out)):
        print(f"could not save {args.out}", file=sys.stderr)
        return 1
    print(f"{args.out}: {window.model.rowCount()} tracks; {message}")
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
