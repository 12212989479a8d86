"""Scan speed: a first scan and a no-change rescan over a generated tree of small tagged files.

    python benchmarks/scan_benchmark.py --files 20000

The tree mixes MP3, FLAC, Ogg Vorbis, M4A and WAV files (half a second of audio each, every file
with its own tags, so every file has its own content). It is built once in --tree and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import mutagen

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from audio_fixtures import FORMATS, make_audio

from jamcaps_desktop.library import Library
from jamcaps_desktop.scan.scanner import scan

MIX = ("mp3", "flac", "ogg", "m4a", "wav")


def _tag(path: Path, index: int) -> None:
    values = {"title": f"Track {index}", "artist": f"Artist {index // 100}", "album": f"Album {index // 10}",
              "genre": ["Rock", "Pop"][index % 2]}
    if path.suffix == ".wav":  # WAV keeps an ID3 chunk, which mutagen's "easy" interface does not cover
        from mutagen.id3 import TALB, TCON, TIT2, TPE1
        from mutagen.wave import WAVE

        wav = WAVE(path)
        wav.add_tags()
        for frame, key in ((TIT2, "title"), (TPE1, "artist"), (TALB, "album"), (TCON, "genre")):
            wav.tags.add(frame(encoding=3, text=[values[key]]))
        wav.save()
        return
    opened = mutagen.File(path, easy=True)
    if opened.tags is None:
        opened.add_tags()
    for key, value in values.items():
        opened.tags[key] = value
    opened.save()


def build_tree(root: Path, count: int) -> None:
    marker = root / ".complete"
    if marker.exists() and int(marker.read_text()) == count:
        return
    if root.exists():
        shutil.rmtree(root)
    templates = Path(tempfile.mkdtemp())
    sources = {fmt: make_audio(templates / f"t.{FORMATS[fmt][0]}", fmt, seconds=0.5) for fmt in MIX}
    for index in range(count):
        fmt = MIX[index % len(MIX)]
        folder = root / f"Artist {index // 100:04d}" / f"Album {index // 10:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{index % 10 + 1:02d} Track {index}.{FORMATS[fmt][0]}"
        shutil.copyfile(sources[fmt], target)
        _tag(target, index)
        if index and index % 2000 == 0:
            print(f"  built {index} files", file=sys.stderr)
    shutil.rmtree(templates)
    marker.write_text(str(count))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--tree", type=Path, default=Path(tempfile.gettempdir()) / "jamcaps-bench-tree")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--json", type=Path, help="Also write the results to this file.")
    args = parser.parse_args()

    print(f"building a tree of {args.files} files in {args.tree} (reused when present)", file=sys.stderr)
    build_tree(args.tree, args.files)
    with tempfile.TemporaryDirectory() as tmp:
        library = Library(Path(tmp) / "bench.sqlite")
        start = time.perf_counter()
        first = scan(library, [args.tree], workers=args.workers)
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        again = scan(library, [args.tree], workers=args.workers)
        rescan_s = time.perf_counter() - start
        library.close()
    assert first.added == args.files and not first.errors, (first.added, first.errors[:3])
    assert again.unchanged == args.files
    result = {
        "files": args.files,
        "first_scan_s": round(first_s, 2),
        "first_scan_files_per_s": round(args.files / first_s, 1),
        "rescan_s": round(rescan_s, 2),
        "rescan_files_per_s": round(args.files / rescan_s, 1),
        "rescan_speedup": round(first_s / rescan_s, 1),
        "workers": args.workers or min(4, os.cpu_count() or 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
                   f"{platform.python_version()}, {platform.system()} {platform.release()}",
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
