"""Project rules that a reviewer would otherwise check by hand."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "jamcaps_desktop"


def test_core_has_no_qt_import():
    offenders = []
    for path in CORE.rglob("*.py"):
        if "gui" in path.relative_to(CORE).parts:
            continue
        text = path.read_text(encoding="utf-8")
        if "PySide6" in text or "PyQt" in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed")
    result = subprocess.run([ruff, "check", "--quiet", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
