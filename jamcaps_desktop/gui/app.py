"""``jamcaps-desktop [FOLDER…]``: open the main window (and scan the folders given)."""

from __future__ import annotations

import argparse
import sys

from jamcaps_desktop import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jamcaps-desktop", description="The jamcaps desktop app.")
    parser.add_argument("folders", nargs="*", help="Folders or files to scan into the library on start.")
    parser.add_argument("--library", help="The library file (default: the one in Settings).")
    parser.add_argument("--version", action="version", version=f"jamcaps-desktop {__version__}")
    args = parser.parse_args(argv)

    from pathlib import Path

    from PySide6.QtWidgets import QApplication, QMessageBox

    from jamcaps_desktop.gui.main_window import MainWindow, select_first
    from jamcaps_desktop.gui.settings import AppSettings
    from jamcaps_desktop.library.database import LibraryError

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("jamcaps")
    app.setApplicationVersion(__version__)
    settings = AppSettings()
    if args.library:
        settings.library_path = Path(args.library).expanduser()
    try:
        window = MainWindow(settings)
    except (LibraryError, OSError) as exc:
        QMessageBox.critical(None, "Cannot open the library", str(exc))
        return 1
    window.show()
    window.get_models_ready()
    if args.folders:
        window.scan_paths(args.folders)
    else:
        select_first(window)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
