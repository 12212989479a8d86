"""Set-up shared by the worker processes of jobs (the scanner's readers, the writer's preparers)."""

from __future__ import annotations

import os
import signal
import threading
import time


def _exit_with_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:  # the job's process is gone (killed): do not linger
            os._exit(1)


def init_worker() -> None:
    """Ignore Ctrl-C (the parent decides what it means) and end when the parent process ends."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watchdog = threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True)
    watchdog.start()
