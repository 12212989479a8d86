"""The library table: one row per track, the file's values with the proposed ones beside them.

The model holds plain ``TrackRow`` objects read in one go (``library.browse``); sorting and filtering
go through a proxy that compares precomputed keys, so both stay quick at 100,000 tracks.
"""

from __future__ import annotations

import os
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, QSortFilterProxyModel, Qt
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
SORT_ROLE = Qt.ItemDataRole.UserRole + 2



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


class TrackTableModel(QAbstractTableModel):
    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.rows: list[TrackRow] = []
        self._by_id: dict[int, int] = {}
        self._bold = QFont()
        self._bold.setBold(True)

    def set_rows(self, rows: list[TrackRow]) -> None:
        self.beginResetModel()
        self.rows = rows
        self._by_id = {row.id: i for i, row in enumerate(rows)}
        self.endResetModel()

    def update_rows(self, rows: list[TrackRow]) -> None:
        """Replace the given tracks' rows in place (new tracks are appended)."""
        appended = []
        for row in rows:
            position = self._by_id.get(row.id)
            if position is None:
                appended.append(row)
                continue
            self.rows[position] = row
            self.dataChanged.emit(self.index(position, 0), self.index(position, len(COLUMNS) - 1))
        if appended:
            start = len(self.rows)
            self.beginInsertRows(QModelIndex(), start, start + len(appended) - 1)
            for offset, row in enumerate(appended):
                self._by_id[row.id] = start + offset
            self.rows.extend(appended)
            self.endInsertRows()

    def row_of(self, track_id: int) -> int | None:
        return self._by_id.get(track_id)

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
        if role in (Qt.ItemDataRole.DisplayRole, SORT_ROLE):
            if name == "status":
                return {"ok": "", "error": "⚠", "missing": "✗"}.get(row.status, row.status) \
                    if role == Qt.ItemDataRole.DisplayRole else row.status
            if name == "path":
                return row.path
            if name == "proposals":
                return row.pending() if role == SORT_ROLE else (str(row.pending()) if row.pending() else "")
            values = row.tags.get(name)
            if values:
                return "; ".join(values)
            if name == "title":  # no title: the file's name stands in, greyed
                return os.path.basename(row.path)
            if shows_proposal and proposal is not None:
                text = "; ".join(proposal.values)
                return text if role == SORT_ROLE else f"{text}  ({proposal.confidence:.2f})"
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


class TrackFilterProxy(QSortFilterProxyModel):
    """A quick text filter (every word must appear) and one of FILTERS."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._words: list[str] = []
        self._test = FILTERS["All tracks"]
        self.setSortRole(SORT_ROLE)
        self.setSortCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)

    def set_text(self, text: str) -> None:
        self._refilter(lambda: setattr(self, "_words", text.casefold().split()))

    def set_filter(self, name: str) -> None:
        self._refilter(lambda: setattr(self, "_test", FILTERS.get(name, FILTERS["All tracks"])))

    def refilter(self) -> None:
        """Filter again (the rows' contents changed)."""
        self._refilter(lambda: None)

    def _refilter(self, change: Any) -> None:
        if hasattr(self, "beginFilterChange"):  # Qt 6.10 and newer
            self.beginFilterChange()
            change()
            self.endFilterChange()
        else:
            change()
            self.invalidateFilter()

    def filterAcceptsRow(self, source_row: int, source_parent: Index) -> bool:
        model = self.sourceModel()
        assert isinstance(model, TrackTableModel)
        row = model.rows[source_row]
        return self._test(row) and all(word in row.search for word in self._words)

    def lessThan(self, left: Index, right: Index) -> bool:
        a, b = left.data(SORT_ROLE), right.data(SORT_ROLE)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return a < b
        return str(a or "").casefold() < str(b or "").casefold()
