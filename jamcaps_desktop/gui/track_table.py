"""The library table: one row per track, the file's values with the proposed ones beside them.

The model holds plain ``TrackRow`` objects read in one go (``library.browse``), and filters and sorts
them itself (see ``TrackTableModel``).
"""

from __future__ import annotations

import os
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt
from PySide6.QtGui import QBrush, QColor, QFont

from jamcaps_desktop.library.browse import COLUMN_FIELDS, TrackRow

Index = QModelIndex | QPersistentModelIndex
COLUMNS = ("status", *COLUMN_FIELDS, "proposals", "path")
HEADERS = {"status": "", "bpm": "BPM", "proposals": "Proposals", "path": "File"}
PROPOSED_COLOUR = QColor(25, 110, 190)
ACCEPTED_COLOUR = QColor(30, 140, 60)
ERROR_COLOUR = QColor(190, 40, 40)
UNTITLED_COLOUR = QColor(128, 128, 128)
TRACK_ID_ROLE = Qt.ItemDataRole.UserRole + 1



def _missing(name: str) -> Any:
    return lambda row: row.status == "ok" and not row.tags.get(name)


# quick filters: name shown -> test on a row
FILTERS: dict[str, Any] = {
    "All tracks": lambda row: True,
    "Has proposals": lambda row: row.pending() > 0,
    "Accepted, not written": lambda row: bool(row.staged),
    "Errors": lambda row: row.status != "ok",
    **{f"Missing {name}": _missing(name)
       for name in ("genre", "mood", "instruments", "bpm", "key", "vocals", "sound", "speed")},
}


def _sort_key(row: TrackRow, name: str) -> tuple[int, Any]:
    """Rows with a value first (numbers as numbers), then those without; the path breaks ties."""
    if name == "status":
        return (0, (row.status, row.path))
    if name == "path":
        return (0, (row.path.casefold(), row.path))
    if name == "proposals":
        return (0, (row.pending(), row.path))
    values = row.tags.get(name)
    text = "; ".join(values) if values else ("; ".join(row.proposals[name].values) if name in row.proposals else "")
    if name == "title" and not text:
        text = os.path.basename(row.path)
    if not text:
        return (1, ("", row.path))
    if name == "bpm":
        try:
            return (0, (float(text.split()[0].replace(",", ".")), row.path))
        except (ValueError, IndexError):
            pass
    return (0, (text.casefold(), row.path))


class TrackTableModel(QAbstractTableModel):
    """Every track of the library (``all_rows``) and those shown (``rows``): filtered by a quick text
    (every word must appear) and one of FILTERS, in the order last asked for. Filtering and sorting
    happen here, in plain Python over all rows at once, which stays quick at 100,000 tracks where
    Qt's proxy model, calling back into Python for each row or pair of rows, does not."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.all_rows: list[TrackRow] = []
        self.rows: list[TrackRow] = []
        self._by_id: dict[int, int] = {}
        self._words: list[str] = []
        self._filter_name = "All tracks"
        self._sorted: tuple[int, Qt.SortOrder] = (COLUMNS.index("path"), Qt.SortOrder.AscendingOrder)
        self._bold = QFont()
        self._bold.setBold(True)

    # -- contents -----------------------------------------------------------------------------
    def set_rows(self, rows: list[TrackRow]) -> None:
        self.all_rows = list(rows)
        self._sort_all()
        self._apply()

    def update_rows(self, rows: list[TrackRow]) -> None:
        """Replace these tracks' rows in place; they stay shown even if they no longer match the filter
        (a row must not vanish under the person reviewing it). New tracks are appended if they match."""
        fresh = {row.id: row for row in rows}
        self.all_rows = [fresh.pop(row.id, row) for row in self.all_rows] + list(fresh.values())
        for row in rows:
            position = self._by_id.get(row.id)
            if position is not None:
                self.rows[position] = row
                self.dataChanged.emit(self.index(position, 0), self.index(position, len(COLUMNS) - 1))
        appended = [row for row in fresh.values() if self._matches(row)]
        if appended:
            start = len(self.rows)
            self.beginInsertRows(QModelIndex(), start, start + len(appended) - 1)
            for offset, row in enumerate(appended):
                self._by_id[row.id] = start + offset
            self.rows.extend(appended)
            self.endInsertRows()

    def row_of(self, track_id: int) -> int | None:
        """The row showing ``track_id`` (None when it is filtered out or unknown)."""
        return self._by_id.get(track_id)

    def track_id(self, row: int) -> int:
        return self.rows[row].id

    def total(self) -> int:
        return len(self.all_rows)

    # -- filtering and sorting ----------------------------------------------------------------
    def set_text(self, text: str) -> None:
        self._words = text.casefold().split()
        self._apply()

    def set_filter(self, name: str) -> None:
        self._filter_name = name if name in FILTERS else "All tracks"
        self._apply()

    def filtered(self) -> bool:
        return bool(self._words) or self._filter_name != "All tracks"

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        """Sort with one key per row."""
        if not 0 <= column < len(COLUMNS):
            return
        self._sorted = (column, order)
        self._sort_all()
        self._apply()

    def _sort_all(self) -> None:
        column, order = self._sorted
        self.all_rows.sort(key=lambda row: _sort_key(row, COLUMNS[column]),
                           reverse=order == Qt.SortOrder.DescendingOrder)

    def _matches(self, row: TrackRow) -> bool:
        return FILTERS[self._filter_name](row) and all(word in row.search for word in self._words)

    def _apply(self) -> None:
        self.beginResetModel()
        test, words = FILTERS[self._filter_name], self._words
        if words or self._filter_name != "All tracks":
            self.rows = [row for row in self.all_rows if test(row) and all(word in row.search for word in words)]
        else:
            self.rows = list(self.all_rows)
        self._by_id = {row.id: i for i, row in enumerate(self.rows)}
        self.endResetModel()

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008 - Qt's signature
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            name = COLUMNS[section]
            return HEADERS.get(name, name.capitalize())
        return None

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row = self.rows[index.row()]
        name = COLUMNS[index.column()]
        if role == TRACK_ID_ROLE:
            return row.id
        proposal = row.proposals.get(name)
        shows_proposal = proposal is not None and not row.tags.get(name)
        if role == Qt.ItemDataRole.DisplayRole:
            if name == "status":
                return {"ok": "", "error": "⚠", "missing": "✗"}.get(row.status, row.status)
            if name == "path":
                return row.path
            if name == "proposals":
                return str(row.pending()) if row.pending() else ""
            values = row.tags.get(name)
            if values:
                return "; ".join(values)
            if name == "title":  # no title: the file's name stands in, greyed
                return os.path.basename(row.path)
            if shows_proposal and proposal is not None:
                return f"{'; '.join(proposal.values)}  ({proposal.confidence:.2f})"
            return ""
        if role == Qt.ItemDataRole.ForegroundRole:
            if name == "status" and row.status != "ok":
                return QBrush(ERROR_COLOUR)
            if name == "title" and not row.tags.get("title"):
                return QBrush(UNTITLED_COLOUR)
            if shows_proposal and proposal is not None:
                return QBrush(ACCEPTED_COLOUR if proposal.status == "accepted" else PROPOSED_COLOUR)
        accepted = shows_proposal and proposal is not None and proposal.status == "accepted"
        if role == Qt.ItemDataRole.FontRole and accepted:
            return self._bold
        if role == Qt.ItemDataRole.ToolTipRole:
            if name == "status" and row.error:
                return row.error
            if shows_proposal and proposal is not None:
                return (f"Proposed ({proposal.method}, confidence {proposal.confidence:.2f}"
                        f"{', accepted' if proposal.status == 'accepted' else ''})")
            if name == "path":
                return row.path
        return None
