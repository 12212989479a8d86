"""Each stage of the analysis with its front ends on the models' device, timed on its own.

    python benchmarks/analysis_stages.py [--device cuda] [--tracks 100] [--workers 13] [--models beats]

On the same generated three-minute tracks (as ``analysis_benchmark.py`` makes them): (1) the decoding
workers handing the decoded samples over, with nothing else running; (2) measuring on the device (the
decoded-audio graph, tempo, key and the cutting of windows) over those hand-overs, by 1, 2, 4 and 8
threads, and each step's time in one thread; (3) the front ends and models over ready windows, one batch
in flight; (4) measuring and models together as the job runs them, without workers; (5) the whole job.
Beside each: the job's process CPU (cores) and how late a thread sleeping 1 ms wakes (a busy interpreter
makes it late). Where the job's own process is the limit, (4) is about the whole job's running rate.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from analysis_benchmark import _decode_all, _generated_hour
from machine import report

from jamcaps_desktop.analysis import analyze as job
from jamcaps_desktop.analysis import hearing, native_audio
from jamcaps_desktop.analysis.device_front_ends import DeviceFrontEnds
from jamcaps_desktop.library import Library
from jamcaps_desktop.models import registry
from jamcaps_desktop.scan.scanner import scan


class _Lateness:
    """How late, on average, a thread wakes from 1 ms sleeps while the stage runs (ms)."""

    def __init__(self) -> None:
        self._stop, self._late = threading.Event(), []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            time.sleep(0.001)
            self._late.append(time.perf_counter() - start - 0.001)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return round(1000 * float(np.mean(self._late)), 2) if self._late else 0.0


def _timed(name: str, tracks: int, run: Any) -> dict[str, float]:
    lateness, cpu, start = _Lateness(), time.process_time(), time.perf_counter()
    run()
    wall = time.perf_counter() - start
    result = {"seconds": round(wall, 2), "tracks_per_s": round(tracks / wall, 1),
              "process_cores": round((time.process_time() - cpu) / wall, 2), "wake_late_ms": lateness.stop()}
    print(name, result, flush=True)
    return result


def _hand_over(path: str, folder: str) -> Any:
    heard = hearing._hear_raw(path, folder)
    return heard.raw if heard else None


class _Listed:
    """Heard tracks as the job's pipeline takes them (an iterator with ``close``)."""

    def __init__(self, items: list[hearing.Heard]) -> None:
        self._items = iter(items)

    def __iter__(self) -> Iterator[hearing.Heard]:
        return self

    def __next__(self) -> hearing.Heard:
        return next(self._items)

    def close(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--tracks", type=int, default=100)
    parser.add_argument("--workers", type=int, default=13)
    parser.add_argument("--models", help="Comma-separated models (default: the default audio models).")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "jamcaps-analysis-bench")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    folder = _generated_hour(args.cache / "hour-of-music", 60, max(1, -(-args.tracks // 20)))
    work = Path(tempfile.mkdtemp())
    with Library(work / "stages.sqlite") as library:
        scan(library, [folder])
        paths = [row[0] for row in library.conn.execute("SELECT path FROM tracks WHERE status = 'ok' ORDER BY id")]
    paths = paths[:args.tracks]
    count = len(paths)
    results: dict[str, Any] = {"tracks": count, "decode_alone_s": round(_decode_all(paths, args.workers + 2), 2)}
    names = args.models.split(",") if args.models else [
        name for name in registry.default_models() if registry.manifest(name).get("kind") != "text-encoder"]
    loaded = [job._prepare(name) for name in names]
    for model in loaded:
        job._open(model, args.device)
    specs = {model.group: model.spec for model in loaded}
    groups = list(specs)
    front_ends = DeviceFrontEnds(specs, args.device)
    shared = native_audio.native_audio_folder()
    if shared is None:
        raise SystemExit("no shared memory (/dev/shm) to hand the audio over in")
    raws: list[Any] = []

    def hand_over() -> None:
        with ProcessPoolExecutor(args.workers) as pool:
            raws.extend(pool.map(_hand_over, paths, [shared] * count))

    results["workers_hand_over"] = _timed("workers hand over", count, hand_over)
    raws = [raw for raw in raws if raw is not None]
    keep = native_audio.SharedArray.remove
    native_audio.SharedArray.remove = lambda self: None  # every pass reads the same hand-overs
    try:
        for raw in raws[:3]:  # graphs built and run once
            job._measure_on_device(front_ends, hearing.Heard(raw=raw), groups)
        steps = {"decoded": 0.0, "tempo": 0.0, "key": 0.0, "cut": 0.0}
        for raw in raws:
            start = time.perf_counter()
            audio, _loudness = front_ends.decoded(raw)
            steps["decoded"] += time.perf_counter() - start
            for step, run in (("tempo", front_ends.tempo), ("key", front_ends.key),
                              ("cut", lambda a: front_ends.cut(a, groups))):
                start = time.perf_counter()
                run(audio)
                steps[step] += time.perf_counter() - start
        results["one_thread_ms_per_track"] = {k: round(1000 * v / len(raws), 1) for k, v in steps.items()}
        print("one thread, ms per track:", results["one_thread_ms_per_track"], flush=True)
        measured: list[hearing.Heard] = []
        for threads in (1, 2, 4, 8):
            measured = [hearing.Heard(raw=raw) for raw in raws]

            def measure(threads: int = threads, heard: list[hearing.Heard] = measured) -> None:
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(lambda h: job._measure_on_device(front_ends, h, groups), heard))

            results[f"measuring_{threads}_threads"] = _timed(f"measuring, {threads} threads", len(raws), measure)

        def models() -> None:
            batcher = job._Batcher(loaded, job.BATCH_WINDOWS[args.device], front_ends,
                                   full_batches=args.device == "cuda")
            try:
                for heard in measured:
                    batcher.add({}, hearing.Heard(inputs=dict(heard.inputs)))
                batcher.drain()
            finally:
                batcher.close()

        results["models"] = _timed("front ends and models over ready windows", len(raws), models)

        def together() -> None:
            batcher = job._Batcher(loaded, job.BATCH_WINDOWS[args.device], front_ends,
                                   full_batches=args.device == "cuda")
            ready: Future[DeviceFrontEnds] = Future()
            ready.set_result(front_ends)
            heard_files = job._MeasuredAhead(_Listed([hearing.Heard(raw=raw) for raw in raws]), ready, groups)
            try:
                for heard in heard_files:
                    batcher.add({}, heard)
                batcher.drain()
            finally:
                heard_files.close()
                batcher.close()

        results["measuring_and_models"] = _timed("measuring and models, no workers", len(raws), together)
    finally:
        native_audio.SharedArray.remove = keep
        native_audio.remove_native_files(shared)
    with Library(work / "whole.sqlite") as library:
        scan(library, [folder])
        results["whole_job"] = _timed("the whole job", count, lambda: job.analyze(
            library, device=args.device, workers=args.workers, models=names, limit=count))
    report(results, args.json)


if __name__ == "__main__":
    main()
