"""The analysis' sessions, made once per process and kept for the next job.

On a GPU, making them is most of a short job's start: on an H100, BEATs' session took 0.6 s, the front
ends' 0.2 s, and their first runs (which load the kernels they use) 0.65 s, after CUDA's own start. The
window analyses folder after folder in one process, so it makes them once; it also starts making them as
it opens (``analyze.get_ready``), so that the first folder dropped on it is analysed with its models ready.
The command line analyses once per process, and gains nothing from keeping them, nor loses.

A session is kept under its model's files as they are on disk: a model installed again gets a new one.
Everything here is made, and run for the first time, under ``making()``, one thread at a time: ONNX
Runtime's CUDA provider failed on an H100 where one thread made a session while another ran a graph for
the first time.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from jamcaps_desktop.models import registry
from jamcaps_desktop.models.engine import cuda_wanted, make_session

log = logging.getLogger(__name__)

_lock = threading.RLock()
_models: dict[tuple[Any, ...], Any] = {}
_front_ends: dict[tuple[Any, ...], Any] = {}
_warmed: set[tuple[Any, ...]] = set()


@contextlib.contextmanager
def making() -> Iterator[None]:
    """Hold the making of sessions and their first runs for this thread (see the module's docstring)."""
    with _lock:
        yield


def model_session(name: str, device: str) -> Any:
    """The session of installed model ``name`` on ``device``, made where none is kept for its files as they
    are. ModelError where the model is missing or damaged (its message names the install command)."""
    installed = registry.verify(name, thorough=False)
    if installed.rebuild_hint:
        log.warning(installed.rebuild_hint)
    key = (name, device, _file_key(installed.onnx_path), _file_key(installed.fp16_path))
    with _lock:
        session = _models.get(key)
        if session is None:
            for old in [k for k in _models if k[:2] == key[:2]]:  # the model's files changed: its old session goes
                del _models[old]
                _warmed.clear()  # (marked by the sessions' ids, which a new session may be given again)
            session = _models[key] = _made(installed, device)
        return session


def front_ends(key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
    """The device front ends kept under ``key`` (the device and the model inputs), made by ``make`` where
    none are."""
    with _lock:
        kept = _front_ends.get(key)
        if kept is None:
            kept = _front_ends[key] = make()
        return kept


def has_front_ends(key: tuple[Any, ...]) -> bool:
    return key in _front_ends


def warmed(key: tuple[Any, ...]) -> bool:
    """Whether the sessions ``key`` names have had their first run (see ``warm``)."""
    return key in _warmed


def mark_warmed(key: tuple[Any, ...]) -> None:
    _warmed.add(key)


def release() -> None:
    """Let every kept session go (their memory, on the GPU too, goes with the last job that used them)."""
    with _lock:
        _models.clear()
        _front_ends.clear()
        _warmed.clear()


def _made(installed: registry.InstalledModel, device: str) -> Any:
    session = None
    if installed.fp16_path is not None and cuda_wanted(device):  # the float16 graph, where it runs on CUDA
        session = make_session(installed.fp16_path, device)
        if session.get_providers()[0] != "CUDAExecutionProvider":
            session = None
    if session is None:
        try:  # the app's current manifest says how the model may compute on CUDA
            tf32 = registry.manifest(installed.name).get("cuda_math") == "tf32"
        except registry.ModelError:
            tf32 = False
        session = make_session(installed.onnx_path, device, tf32=tf32)
    return session


def _file_key(path: Path | None) -> tuple[str, int, int] | None:
    if path is None:
        return None
    try:
        stat = path.stat()
    except OSError:
        return (str(path), -1, -1)
    return (str(path), stat.st_mtime_ns, stat.st_size)
