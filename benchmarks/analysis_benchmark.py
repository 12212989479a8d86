"""Analysis speed: decoding alone against the whole analysis, model throughput, and peak memory.

    python benchmarks/analysis_benchmark.py [--audio FOLDER] [--minutes 60] [--device auto|cpu|cuda]
                                            [--workers N] [--decode-workers N] [--batches 1,8,64,256]
                                            [--skip-memory] [--ready]
                                            [--front-ends auto|workers|device|device-resampled[,...]]

Measures, on the same files: (1) decoding alone (PyAV to 16 kHz mono, as the analysis decodes, in as
many worker processes as the analysis uses), (2) the whole analysis job (one decode per file feeding the
log-mel, both musicnn taggers, tempo, key and loudness), in tracks per minute and times real time, once
per front-end placement asked for (in the workers, or on the models' device);
(3) the taggers alone, in windows per second at several batch sizes, on the chosen device; then the peak
resident memory of analysing one generated two-hour file in a fresh process. The default models must be
installed (`jamcaps models install --default`).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

# Only what decoding needs is imported here: the worker processes (of decoding alone and of the analysis)
# import this script as they start, as they import the command line's when the app runs; the rest is
# imported where it is used.
from jamcaps_desktop.audio.decode import iter_samples


def _generated_hour(folder: Path, minutes: int, copies: int = 1) -> Path:
    """Three-minute tracks of drums over chords (a different tempo and key each), MP3 and FLAC in turn;
    with ``copies`` > 1 the set is repeated in sub-folders (more audio without more generating)."""
    from audio_fixtures import cadence, drum_pattern, encode_signal

    folder.mkdir(parents=True, exist_ok=True)
    for copy in range(1, copies):
        (folder / f"copy{copy}").mkdir(exist_ok=True)
    for index in range(minutes // 3):
        fmt = "mp3" if index % 2 == 0 else "flac"
        path = folder / f"track{index:03d}.{fmt}"
        if not path.exists():
            phrase = 0.6 * drum_pattern(80.0 + 5 * index, 30.0) + 0.4 * cadence(index % 12, index % 3 == 0, 30.0)
            encode_signal(path, fmt, np.tile(phrase, 6), 44100)
        for copy in range(1, copies):
            duplicate = folder / f"copy{copy}" / path.name
            if not duplicate.exists():
                shutil.copyfile(path, duplicate)
    return folder


def _decode_one(path: str) -> int:
    return sum(len(chunk) for chunk in iter_samples(path, 16000))


def _decode_all(paths: list[str], workers: int, done: list[float] | None = None) -> float:
    """Seconds to decode every file; ``done`` gets the time each file finished (for ``_pace``)."""
    done = [] if done is None else done
    start = time.perf_counter()
    if workers <= 1:
        for path in paths:
            _decode_one(path)
            done.append(time.perf_counter())
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for future in as_completed([pool.submit(_decode_one, path) for path in paths]):
                future.result()
                done.append(time.perf_counter())
    return time.perf_counter() - start


def _measure(folder: Path, workdir: Path, device: str, workers: int, models: list[str] | None = None,
             front_ends: tuple[str, ...] = ("auto",), decode_workers: int | None = None,
             ready: bool = False) -> dict[str, object]:
    """Decoding alone (with ``decode_workers``, by default as many as the analysis), then the whole analysis
    once per front-end placement (each on a fresh library). Each analysis makes its own sessions, unless
    ``ready``: then they are made ready before it is timed, as the window makes them when it opens."""
    from jamcaps_desktop.analysis import kept_sessions
    from jamcaps_desktop.analysis.analyze import analyze, get_ready, likely_formats
    from jamcaps_desktop.library import Library
    from jamcaps_desktop.scan.scanner import scan

    out: dict[str, object] = {}
    decode_s = 0.0
    decode_pace: dict[str, float] = {}
    for run, placement in enumerate(front_ends):
        library = Library(workdir / f"{folder.name}-{run}.sqlite")
        scan(library, [folder])
        rows = library.conn.execute("SELECT path, duration FROM tracks WHERE status = 'ok'").fetchall()
        paths, seconds = [r[0] for r in rows], sum(r[1] for r in rows)
        if not decode_s:
            decoded: list[float] = []
            decode_start = time.perf_counter()
            decode_s = _decode_all(paths, decode_workers or workers, decoded)
            decode_pace = {f"decode_{key}": value for key, value in _pace(decoded, decode_start).items()}
        on_device = {"auto": None, "workers": False, "device": True, "device-resampled": True}[placement]
        kept_sessions.release()  # nothing kept from the run before
        ready_s = None
        if ready:
            ready_start = time.perf_counter()
            get_ready(device, models, likely_formats(library))
            ready_s = round(time.perf_counter() - ready_start, 2)
        stored: list[float] = []
        start = time.perf_counter()
        summary = analyze(library, device=device, workers=workers, models=models, front_ends_on_device=on_device,
                          decoded_samples=placement != "device-resampled",
                          progress=lambda p, times=stored: times.append(time.perf_counter()) if p.done else None)
        analysis_s = time.perf_counter() - start
        library.close()
        result = {
            "device": summary.device, "workers": workers, "decode_workers": decode_workers or workers,
            "front_ends": placement, "sessions": "made ready before" if ready else "made by the job",
            "getting_ready_s": ready_s,
            "tracks": len(paths), "audio_minutes": round(seconds / 60, 1),
            "decode_s": round(decode_s, 1), "decode_tracks_per_min": round(len(paths) / decode_s * 60, 1),
            "decode_x_realtime": round(seconds / decode_s, 1),
            "analysis_s": round(analysis_s, 1), "analysis_tracks_per_min": round(summary.analysed / analysis_s * 60, 1),
            "analysis_x_realtime": round(seconds / analysis_s, 1),
            "analysis_vs_decode": round(decode_s / analysis_s, 2),
            **_pace(stored, start), **decode_pace,
        }
        running, decoding = result.get("running_tracks_per_s"), result.get("decode_running_tracks_per_s")
        if isinstance(running, float) and isinstance(decoding, float) and decoding:
            result["running_vs_decode"] = round(running / decoding, 2)  # the jobs once running
        if len(front_ends) == 1:
            return result
        repeats = sum(1 for key in out if key.split(" (")[0] == placement)
        out[placement if not repeats else f"{placement} ({repeats + 1})"] = result
    return out


def _pace(stored: list[float], start: float) -> dict[str, float]:
    """When the first track was stored (the job's start-up), and the rate between its 10th and 90th
    percentile tracks (the job once running)."""
    if len(stored) < 10:
        return {}
    first, last = int(0.1 * len(stored)), int(0.9 * len(stored))
    return {"first_track_s": round(stored[0] - start, 2),
            "running_tracks_per_s": round((last - first) / max(stored[last] - stored[first], 1e-9), 1)}


def _model_throughput(device: str, batches: list[int], models: list[str] | None = None
                      ) -> dict[str, dict[str, float | str]]:
    """Windows per second through each default model alone, by batch size (median of timed runs)."""
    from jamcaps_desktop.models import registry
    from jamcaps_desktop.models.engine import make_session

    out: dict[str, dict[str, float | str]] = {}
    rng = np.random.default_rng(0)
    names = models or [m for m in registry.default_models() if registry.manifest(m).get("kind") != "text-encoder"]
    for name in names:
        model = registry.verify(name)
        session = make_session(model.onnx_path, device)
        spec = model.manifest["input"]
        per_batch: dict[str, float | str] = {}
        for batch in batches:
            data = rng.random((batch, spec["frames"], spec["bands"]), dtype=np.float32) * 3
            try:
                session.run(None, {spec["name"]: data})  # warm-up: kernels chosen, memory allocated
            except Exception as exc:  # e.g. a tensor too large for cuDNN at a huge batch: say so, go on
                per_batch[str(batch)] = f"fails: {str(exc)[:80]}"
                continue
            times = []
            deadline = time.perf_counter() + 3.0
            while len(times) < 5 or (time.perf_counter() < deadline and len(times) < 200):
                start = time.perf_counter()
                session.run(["tags", "penultimate"], {spec["name"]: data})
                times.append(time.perf_counter() - start)
            per_batch[str(batch)] = round(batch / statistics.median(times), 1)
        out[f"{name} ({session.get_providers()[0]}) windows/s by batch"] = per_batch
    return out


def _peak_memory_child(path: str, library: str) -> None:
    from jamcaps_desktop.analysis.analyze import analyze
    from jamcaps_desktop.library import Library
    from jamcaps_desktop.scan.scanner import scan

    with Library(library) as lib:
        scan(lib, [path])
        analyze(lib, device="cpu", workers=1)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # kilobytes on Linux


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--peak-child":
        _peak_memory_child(sys.argv[2], sys.argv[3])
        return
    from audio_fixtures import make_audio
    from machine import report

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio", type=Path, action="append", default=[])
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "jamcaps-analysis-bench")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--decode-workers", type=int, help="workers for decoding alone (default: --workers)")
    parser.add_argument("--batches", default="1,8,64,256")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--copies", type=int, default=1, help="repeat the generated tracks this many times")
    parser.add_argument("--models", help="Comma-separated models to analyse with (default: the default ones).")
    parser.add_argument("--skip-throughput", action="store_true", help="Do not time the models alone.")
    parser.add_argument("--ready", action="store_true",
                        help="Make the models' sessions ready before timing each analysis, as the window does when "
                             "it opens (CUDA's start, the sessions, their first runs), and time that apart.")
    parser.add_argument("--front-ends", default="auto",
                        help="Where the model inputs, tempo and key are computed: auto (on the GPU where the models "
                             "run there), workers, device, device-resampled (on the device, the workers resampling "
                             "as before the device did); several, comma-separated, are measured in turn.")
    args = parser.parse_args()
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = args.models.split(",") if args.models else None
        placements = tuple(args.front_ends.split(","))
        if not args.skip_throughput:
            results.update(_model_throughput(args.device, [int(b) for b in args.batches.split(",")], models))
        for folder in args.audio:
            results[str(folder)] = _measure(folder, work, args.device, args.workers, models, placements,
                                            args.decode_workers, args.ready)
        generated = _generated_hour(args.cache / "hour-of-music", args.minutes, args.copies)
        results["generated"] = _measure(generated, work, args.device, args.workers, models, placements,
                                        args.decode_workers, args.ready)
        if not args.skip_memory:
            long_file = args.cache / "two-hours.flac"
            if not long_file.exists():
                make_audio(long_file, "flac", seconds=7200.0, freq=330.0)
            child = subprocess.run([sys.executable, __file__, "--peak-child", str(long_file),
                                    str(work / "long.sqlite")], capture_output=True, text=True, check=True)
            results["two_hour_file_peak_rss_mb"] = round(int(child.stdout.strip().splitlines()[-1]) / 1024, 1)
    report(results, args.json)


if __name__ == "__main__":
    main()
