"""The track panel: the file's tags against the proposals, the neighbours behind them, what the
analysis heard (top labels with bars, BPM, key, loudness), and the file's errors."""

from __future__ import annotations

import os
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from jamcaps_desktop.analysis.analyze import track_analyses, track_features
from jamcaps_desktop.impute.job import track_proposals
from jamcaps_desktop.library.database import Library
from jamcaps_desktop.library.queries import canonical_tags, find_track, track_tags

DIFF_FIELDS = ("title", "artist", "album", "genre", "mood", "instruments", "bpm", "key", "vocals", "sound", "speed")
DIFF_COLUMNS = ("Field", "In the file", "Proposed", "Confidence", "Method", "Status")
TOP_LABELS = 8


def _duration(seconds: float | None) -> str:
    if not seconds:
        return "?"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}:{rest:02d}"


def _track_names(library: Library, track_ids: set[int]) -> dict[int, str]:
    """'Title — Artist' (or the file name) of each track."""
    if not track_ids:
        return {}
    ids = sorted(track_ids)
    marks = ", ".join("?" for _ in ids)
    names = {t: os.path.basename(p) for t, p in library.conn.execute(
        f"SELECT id, path FROM tracks WHERE id IN ({marks})", ids)}
    found: dict[int, dict[str, str]] = {}
    for track_id, name, value in library.conn.execute(
            "SELECT track_id, field, value FROM track_tags WHERE field IN ('title', 'artist') "
            f"AND track_id IN ({marks}) ORDER BY position DESC", ids):
        found.setdefault(track_id, {})[name] = value
    for track_id, tags in found.items():
        if "title" in tags:
            names[track_id] = f"{tags['title']} — {tags['artist']}" if "artist" in tags else tags["title"]
    return names


class TrackPanel(QWidget):
    accept_requested = Signal(int, list)         # track id, fields
    reject_requested = Signal(int, list)
    edit_requested = Signal(int, str, list)      # track id, field, values
    go_to_track = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.track_id: int | None = None
        self._names: dict[int, str] = {}
        self._proposals: dict[str, dict[str, Any]] = {}
        self._filling = False
        self.title = QLabel("Select a track")
        self.title.setStyleSheet("font-size: 15px; font-weight: bold;")
        self.title.setWordWrap(True)
        self.path = QLabel("")
        self.path.setWordWrap(True)
        self.path.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.facts = QLabel("")
        self.facts.setWordWrap(True)
        self.caption = QLabel("")
        self.caption.setWordWrap(True)
        self.caption.setStyleSheet("font-style: italic;")
        self.caption.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error = QLabel("")
        self.error.setWordWrap(True)
        self.error.setStyleSheet("color: #be2828;")
        self.error.setVisible(False)

        self.diff = QTableWidget(0, len(DIFF_COLUMNS))
        self.diff.setHorizontalHeaderLabels(list(DIFF_COLUMNS))
        self.diff.verticalHeader().setVisible(False)
        self.diff.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.diff.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked
                                  | QAbstractItemView.EditTrigger.EditKeyPressed)
        header = self.diff.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.diff.itemChanged.connect(self._edited)
        self.diff.itemSelectionChanged.connect(self._show_neighbours)
        self.accept_button = QPushButton("Accept")
        self.accept_button.setToolTip("Accept the selected proposals (A)")
        self.accept_button.clicked.connect(lambda: self._act(self.accept_requested))
        self.reject_button = QPushButton("Reject")
        self.reject_button.setToolTip("Reject the selected proposals (R)")
        self.reject_button.clicked.connect(lambda: self._act(self.reject_requested))
        actions = QHBoxLayout()
        actions.addWidget(QLabel("Double-click a proposed value to edit it."), 1)
        actions.addWidget(self.accept_button)
        actions.addWidget(self.reject_button)
        review = QGroupBox("Tags and proposals")
        review_layout = QVBoxLayout(review)
        review_layout.addWidget(self.diff)
        review_layout.addLayout(actions)

        self.neighbours = QListWidget()
        self.neighbours.itemActivated.connect(self._go)
        self.neighbours.itemDoubleClicked.connect(self._go)
        neighbours_box = QGroupBox("Neighbours behind the selected proposal")
        QVBoxLayout(neighbours_box).addWidget(self.neighbours)

        self.analysis = QLabel("")
        self.analysis.setWordWrap(True)
        self.labels = QGridLayout()
        heard = QGroupBox("What the analysis heard")
        heard_layout = QVBoxLayout(heard)
        heard_layout.addWidget(self.analysis)
        heard_layout.addLayout(self.labels)

        layout = QVBoxLayout(self)
        for widget in (self.title, self.path, self.facts, self.caption, self.error):
            layout.addWidget(widget)
        layout.addWidget(review, 3)
        layout.addWidget(neighbours_box, 1)
        layout.addWidget(heard, 1)

    # -- filling ------------------------------------------------------------------------------
    def show_track(self, library: Library, track_id: int | None) -> None:
        self.track_id = track_id
        row = find_track(library, str(track_id)) if track_id is not None else None
        if row is None:
            self.track_id = None
            self.title.setText("Select a track")
            for label in (self.path, self.facts, self.analysis, self.caption):
                label.setText("")
            self.error.setVisible(False)
            self._fill_diff({}, [])
            self._fill_labels([])
            self.neighbours.clear()
            return
        fields = canonical_tags(track_tags(library, track_id))
        name = os.path.basename(row["path"])
        title = fields.get("title", [name])[0]
        artist = "; ".join(fields.get("artist", []))
        self.title.setText(f"{title} — {artist}" if artist else title)
        self.path.setText(row["path"])
        self.facts.setText(f"{row['container'] or '?'} / {row['codec'] or '?'} · {_duration(row['duration'])} · "
                           f"{row['sample_rate'] or '?'} Hz · track #{row['id']}")
        from jamcaps_desktop.caption.job import track_caption

        caption = track_caption(library, track_id)
        self.caption.setText(f"“{caption['text']}” ({caption['model']})" if caption else "")
        self.caption.setVisible(caption is not None)
        self.error.setText(f"{row['status']}: {row['error']}" if row["error"] else "")
        self.error.setVisible(bool(row["error"]))
        proposals = track_proposals(library, track_id)
        self._names = _track_names(library, {int(n[0]) for p in proposals for n in p["neighbours"]})
        self._fill_diff(fields, proposals)
        features = track_features(library, track_id) or {}
        analyses = track_analyses(library, track_id)
        facts = []
        if features.get("bpm") is not None:
            facts.append(f"Tempo {features['bpm']:.1f} BPM ({features['bpm_confidence']:.2f})")
        if features.get("key"):
            facts.append(f"Key {features['key']} ({features['key_confidence']:.2f})")
        if features.get("loudness_lufs") is not None:
            facts.append(f"Loudness {features['loudness_lufs']:.1f} LUFS, peak {features['peak_dbfs']:.1f} dBFS")
        failed = [f"{a['model']}: {a['error']}" for a in analyses if a["status"] != "ok"]
        self.analysis.setText(" · ".join(facts + failed) or "Not analysed yet.")
        labels: dict[str, float] = {}
        for analysis in analyses:
            if analysis["status"] == "ok":
                for label, probability in analysis["labels"]:
                    labels[label] = max(labels.get(label, 0.0), float(probability))
        self._fill_labels(sorted(labels.items(), key=lambda item: -item[1])[:TOP_LABELS])

    def _fill_diff(self, fields: dict[str, list[str]], proposals: list[dict[str, Any]]) -> None:
        self._filling = True
        self._proposals = {p["field"]: p for p in proposals}
        names = [n for n in DIFF_FIELDS if n in fields or n in self._proposals]
        names += [p["field"] for p in proposals if p["field"] not in names]
        self.diff.setRowCount(len(names))
        for index, name in enumerate(names):
            proposal = self._proposals.get(name)
            cells = [name, "; ".join(fields.get(name, [])),
                     "; ".join(proposal["values"]) if proposal else "",
                     f"{proposal['confidence']:.2f}" if proposal else "",
                     proposal["method"] if proposal else "", proposal["status"] if proposal else ""]
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                editable = column == 2 and proposal is not None
                editable_flag = Qt.ItemFlag.ItemIsEditable
                item.setFlags(item.flags() | editable_flag if editable else item.flags() & ~editable_flag)
                if column == 2 and proposal is not None:
                    accepted = proposal["status"] == "accepted"
                    item.setForeground(QColor(30, 140, 60) if accepted else QColor(25, 110, 190))
                self.diff.setItem(index, column, item)
        self._filling = False
        self.accept_button.setEnabled(bool(proposals))
        self.reject_button.setEnabled(bool(proposals))
        if proposals:
            first = names.index(proposals[0]["field"])
            self.diff.selectRow(first)
        self._show_neighbours()

    def _fill_labels(self, labels: list[tuple[str, float]]) -> None:
        while self.labels.count():
            item = self.labels.takeAt(0)
            widget = item.widget()
            if widget is not None:
                widget.hide()  # at once: deleteLater waits for the event loop
                widget.deleteLater()
        for index, (label, probability) in enumerate(labels):
            bar = QProgressBar()
            bar.setRange(0, 100)
            bar.setValue(round(probability * 100))
            bar.setFormat(f"{probability:.2f}")
            bar.setMaximumHeight(14)
            self.labels.addWidget(QLabel(label), index, 0)
            self.labels.addWidget(bar, index, 1)

    # -- review -------------------------------------------------------------------------------
    def selected_fields(self) -> list[str]:
        rows = sorted({index.row() for index in self.diff.selectedIndexes()})
        names = [self.diff.item(row, 0).text() for row in rows]
        return [name for name in names if name in self._proposals]

    def _act(self, signal: Any) -> None:
        if self.track_id is None:
            return
        fields = self.selected_fields() or [n for n, p in self._proposals.items() if p["status"] == "proposed"]
        if fields:
            signal.emit(self.track_id, fields)

    def _edited(self, item: QTableWidgetItem) -> None:
        if self._filling or self.track_id is None or item.column() != 2:
            return
        name = self.diff.item(item.row(), 0).text()
        values = [v.strip() for v in item.text().split(";") if v.strip()]
        self.edit_requested.emit(self.track_id, name, values)

    def _show_neighbours(self) -> None:
        self.neighbours.clear()
        for name in self.selected_fields()[:1]:
            proposal = self._proposals[name]
            if not proposal["neighbours"]:
                self.neighbours.addItem(f"{name}: from the track itself ({proposal['method']})")
            for track_id, score, values in proposal["neighbours"]:
                name = self._names.get(int(track_id), f"track #{track_id}")
                item = QListWidgetItem(f"{score:.2f}  {name}  —  {'; '.join(values)}")
                item.setToolTip(f"Track #{track_id}, similarity {score:.3f}; double-click to go to it")
                item.setData(Qt.ItemDataRole.UserRole, int(track_id))
                self.neighbours.addItem(item)

    def _go(self, item: QListWidgetItem) -> None:
        track_id = item.data(Qt.ItemDataRole.UserRole)
        if track_id is not None:
            self.go_to_track.emit(int(track_id))
