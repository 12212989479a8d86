"""Opening files with FFmpeg (PyAV) the same way everywhere, across PyAV versions."""

from __future__ import annotations

from typing import Any

_ACCEPTS_METADATA_ERRORS: bool | None = None


def open_container(path: str) -> Any:  # -> av.container.InputContainer
    """``av.open`` for reading. Where PyAV still takes ``metadata_errors`` (before 19), undecodable tag
    text is ignored rather than failing the open; later versions have no such option and no such failure."""
    import av

    global _ACCEPTS_METADATA_ERRORS
    if _ACCEPTS_METADATA_ERRORS is not False:
        try:
            handle = av.open(path, metadata_errors="ignore")
        except TypeError:
            _ACCEPTS_METADATA_ERRORS = False
        else:
            _ACCEPTS_METADATA_ERRORS = True
            return handle
    return av.open(path)
