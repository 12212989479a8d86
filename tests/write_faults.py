"""Worker-side faults for the writer's tests (imported by worker processes, so it lives in a module)."""

from __future__ import annotations

import os

from jamcaps_desktop.write.prepare import FileTask, Outcome, prepare


def dying_prepare_chunk(tasks: list[FileTask]) -> list[Outcome]:
    """Prepare a chunk like the real worker, but die (as the OOM killer would) at a file named *kill*."""
    out = []
    for task in tasks:
        if "kill" in os.path.basename(task.path):
            os._exit(9)
        ready = prepare(task)
        out.append((ready.copy, ready.written, ready.error))
    return out
