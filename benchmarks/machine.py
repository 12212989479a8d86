"""The machine a benchmark ran on, in one line (its numbers are quoted with it)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path


def gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def machine_line() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
            f"{platform.python_version()}, {platform.system()} {platform.release()}, {gpu_name() or 'no GPU'}")


def report(results: dict[str, object], json_path: Path | None) -> None:
    """Print a benchmark's results with the machine they were measured on, and write them where asked."""
    results["machine"] = machine_line()
    text = json.dumps(results, indent=2)
    print(text)
    if json_path:
        json_path.write_text(text + "\n")
