"""Analysis speed: decoding alone against the whole analysis, and peak memory on a two-hour file.

    python benchmarks/analysis_benchmark.py [--audio FOLDER] [--minutes 60]

Measures, on the same files: (1) decoding alone (PyAV to 16 kHz mono, as the analysis decodes), (2) the
whole analysis job (decode + log-mel + both musicnn taggers + loudness), in tracks per minute and times
real time; then the peak resident memory of analysing one generated two-hour file in a fresh process.
The default models must be installed (`jamcaps models install --default`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from audio_fixtures import make_audio

from jamcaps_desktop.analysis.analyze import analyze
from jamcaps_desktop.audio.decode import iter_samples
from jamcaps_desktop.library import Library
from jamcaps_desktop.scan.scanner import scan


def _generated_hour(folder: Path, minutes: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(minutes // 3):
        path = folder / f"tone{index:03d}.flac"
        if not path.exists():
            make_audio(path, "flac", seconds=180.0, freq=220.0 + 10 * index)
    return folder


def _decode_all(paths: list[str]) -> float:
    start = time.perf_counter()
    for path in paths:
        for _chunk in iter_samples(path, 16000):
            pass
    return time.perf_counter() - start


def _measure(folder: Path, workdir: Path) -> dict[str, float]:
    library = Library(workdir / f"{folder.name}.sqlite")
    scan(library, [folder])
    rows = library.conn.execute("SELECT path, duration FROM tracks WHERE status = 'ok'").fetchall()
    paths, seconds = [r[0] for r in rows], sum(r[1] for r in rows)
    decode_s = _decode_all(paths)
    start = time.perf_counter()
    summary = analyze(library, device="cpu")
    analysis_s = time.perf_counter() - start
    library.close()
    return {
        "tracks": len(paths), "audio_minutes": round(seconds / 60, 1),
        "decode_s": round(decode_s, 1), "decode_tracks_per_min": round(len(paths) / decode_s * 60, 1),
        "decode_x_realtime": round(seconds / decode_s, 1),
        "analysis_s": round(analysis_s, 1), "analysis_tracks_per_min": round(summary.analysed / analysis_s * 60, 1),
        "analysis_x_realtime": round(seconds / analysis_s, 1),
        "analysis_vs_decode": round(decode_s / analysis_s, 2),
    }


def _peak_memory_child(path: str, library: str) -> None:
    with Library(library) as lib:
        scan(lib, [path])
        analyze(lib, device="cpu", workers=1)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # kilobytes on Linux


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--peak-child":
        _peak_memory_child(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio", type=Path, action="append", default=[])
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "jamcaps-analysis-bench")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for folder in args.audio:
            results[str(folder)] = _measure(folder, work)
        results["generated"] = _measure(_generated_hour(args.cache / "hour", args.minutes), work)
        long_file = args.cache / "two-hours.flac"
        if not long_file.exists():
            make_audio(long_file, "flac", seconds=7200.0, freq=330.0)
        child = subprocess.run([sys.executable, __file__, "--peak-child", str(long_file), str(work / "long.sqlite")],
                               capture_output=True, text=True, check=True)
        results["two_hour_file_peak_rss_mb"] = round(int(child.stdout.strip().splitlines()[-1]) / 1024, 1)
    results["machine"] = (f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
                          f"{platform.python_version()}, {platform.system()} {platform.release()}, CPU provider")
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
