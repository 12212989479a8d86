"""What the desktop app remembers (QSettings in an ini file), and the Settings dialog."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import platformdirs
from PySide6.QtCore import QSettings, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from jamcaps_desktop.impute.vocabulary import FIELDS as IMPUTABLE_FIELDS
from jamcaps_desktop.paths import resolve_library_path

SETTINGS_ENV = "JAMCAPS_DESKTOP_SETTINGS"
DEVICES = ("auto", "cpu", "cuda")
METHODS = ("vote", "hybrid", "llm")
ID3_VERSIONS = {"Keep each file's": None, "ID3v2.4": 4, "ID3v2.3": 3}


def settings_path() -> Path:
    if os.environ.get(SETTINGS_ENV):
        return Path(os.environ[SETTINGS_ENV])
    return Path(platformdirs.user_config_dir("jamcaps", appauthor=False)) / "desktop.ini"


class AppSettings:
    """Typed access to the stored settings."""

    def __init__(self, path: Path | None = None) -> None:
        self.store = QSettings(str(path or settings_path()), QSettings.Format.IniFormat)

    def _get(self, key: str, default: Any) -> Any:
        value = self.store.value(key, default)
        return default if value is None else value

    @property
    def library_path(self) -> Path:
        stored = self._get("library/path", "")
        return resolve_library_path(stored or None)

    @library_path.setter
    def library_path(self, value: Path) -> None:
        self.store.setValue("library/path", str(value))

    @property
    def device(self) -> str:
        value = str(self._get("analysis/device", "auto"))
        return value if value in DEVICES else "auto"

    @device.setter
    def device(self, value: str) -> None:
        self.store.setValue("analysis/device", value)

    @property
    def keep_ready(self) -> bool:
        """Whether the window keeps the analysis' models ready on the GPU between analyses."""
        return str(self._get("analysis/keep_ready", "true")).lower() == "true"

    @keep_ready.setter
    def keep_ready(self, value: bool) -> None:
        self.store.setValue("analysis/keep_ready", "true" if value else "false")

    @property
    def impute_fields(self) -> list[str]:
        value = self._get("impute/fields", ",".join(IMPUTABLE_FIELDS))
        names = [v for v in str(value).split(",") if v in IMPUTABLE_FIELDS]
        return names or list(IMPUTABLE_FIELDS)

    @impute_fields.setter
    def impute_fields(self, value: list[str]) -> None:
        self.store.setValue("impute/fields", ",".join(value))

    @property
    def method(self) -> str:
        value = str(self._get("impute/method", "vote"))
        return value if value in METHODS else "vote"

    @method.setter
    def method(self, value: str) -> None:
        self.store.setValue("impute/method", value)

    @property
    def llm_model(self) -> str:
        return str(self._get("impute/llm_model", "gemma3-270m"))

    @llm_model.setter
    def llm_model(self, value: str) -> None:
        self.store.setValue("impute/llm_model", value)

    @property
    def id3_version(self) -> int | None:
        value = str(self._get("write/id3_version", ""))
        return int(value) if value in ("3", "4") else None

    @id3_version.setter
    def id3_version(self, value: int | None) -> None:
        self.store.setValue("write/id3_version", "" if value is None else str(value))

    @property
    def keep_mtime(self) -> bool:
        return str(self._get("write/keep_mtime", "false")).lower() == "true"

    @keep_mtime.setter
    def keep_mtime(self, value: bool) -> None:
        self.store.setValue("write/keep_mtime", "true" if value else "false")

    def sync(self) -> None:
        self.store.sync()


class SettingsDialog(QDialog):
    """Library, device, imputation, writing, and the installed models."""

    install_requested = Signal(str)   # a model name
    verify_requested = Signal(str)

    def __init__(self, settings: AppSettings, models: list[dict[str, Any]], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.settings = settings
        form = QFormLayout()
        self.library = QLineEdit(str(settings.library_path))
        browse = QPushButton("Choose…")
        browse.clicked.connect(self._choose_library)
        row = QHBoxLayout()
        row.addWidget(self.library, 1)
        row.addWidget(browse)
        form.addRow("Library file", row)
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.device.setCurrentText(settings.device)
        form.addRow("Analysis device", self.device)
        self.keep_ready = QCheckBox("Keep the models ready on the GPU between analyses")
        self.keep_ready.setToolTip("An analysis then starts at once, instead of after a few seconds; the window "
                                   "holds about 2 GB of the GPU's memory while it waits.")
        self.keep_ready.setChecked(settings.keep_ready)
        form.addRow("", self.keep_ready)
        self.fields: dict[str, QCheckBox] = {}
        boxes = QHBoxLayout()
        for name in IMPUTABLE_FIELDS:
            box = QCheckBox(name)
            box.setChecked(name in settings.impute_fields)
            self.fields[name] = box
            boxes.addWidget(box)
        form.addRow("Fields to impute", boxes)
        self.method = QComboBox()
        self.method.addItems(list(METHODS))
        self.method.setCurrentText(settings.method)
        form.addRow("Imputation method", self.method)
        self.llm_model = QLineEdit(settings.llm_model)
        self.llm_model.setPlaceholderText("an installed language model's name, or a .gguf file")
        form.addRow("Language model", self.llm_model)
        self.id3 = QComboBox()
        self.id3.addItems(list(ID3_VERSIONS))
        self.id3.setCurrentText(next(k for k, v in ID3_VERSIONS.items() if v == settings.id3_version))
        form.addRow("ID3 version when writing", self.id3)
        self.keep_mtime = QCheckBox("Keep the files' modification times")
        self.keep_mtime.setChecked(settings.keep_mtime)
        form.addRow("", self.keep_mtime)

        self.models = QTableWidget(len(models), 4)
        self.models.setHorizontalHeaderLabels(["Model", "Kind", "Licence", "Installed"])
        self.models.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.models.verticalHeader().setVisible(False)
        for index, info in enumerate(models):
            for column, key in enumerate(("name", "kind", "licence", "installed")):
                value = info.get(key)
                text = ("yes" if value else "no") if key == "installed" else str(value or "")
                self.models.setItem(index, column, QTableWidgetItem(text))
        model_buttons = QHBoxLayout()
        install = QPushButton("Install selected")
        install.clicked.connect(lambda: self._model_action(self.install_requested))
        verify = QPushButton("Verify selected")
        verify.clicked.connect(lambda: self._model_action(self.verify_requested))
        model_buttons.addWidget(install)
        model_buttons.addWidget(verify)
        model_buttons.addStretch(1)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.models)
        layout.addLayout(model_buttons)
        layout.addWidget(buttons)

    def _choose_library(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Library file", self.library.text(), "Library (*.sqlite)")
        if path:
            self.library.setText(path)

    def _model_action(self, signal: Any) -> None:
        row = self.models.currentRow()
        if row >= 0:
            signal.emit(self.models.item(row, 0).text())

    def save(self) -> None:
        settings = self.settings
        settings.library_path = Path(self.library.text()).expanduser()
        settings.device = self.device.currentText()
        settings.keep_ready = self.keep_ready.isChecked()
        settings.impute_fields = [name for name, box in self.fields.items() if box.isChecked()]
        settings.method = self.method.currentText()
        settings.llm_model = self.llm_model.text().strip() or "gemma3-270m"
        settings.id3_version = ID3_VERSIONS[self.id3.currentText()]
        settings.keep_mtime = self.keep_mtime.isChecked()
        settings.sync()
