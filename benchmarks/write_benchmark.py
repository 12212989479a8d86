"""Tag-writing speed: a journaled, verified batch write against a bare mutagen save.

    python benchmarks/write_benchmark.py --files 5000

Two identical copies of a tree of MP3, FLAC and M4A files are made. Five fields (genre, mood, bpm,
key, comment) are written into one copy with a bare mutagen open-set-save per file (no copy, no
fsync, no verification, no journal), and into the other by ``jamcaps`` with every safety step on:
temporary copy, fsync, re-read and verification, atomic replace, folder fsync, journal, library
update. Both run in the same process, on the same disk, each on a fresh copy of the tree, in
alternating order over several rounds; the medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mutagen
from mutagen.id3 import COMM, TBPM, TCON, TKEY, TMOO
from mutagen.mp4 import MP4FreeForm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from audio_fixtures import FORMATS, make_audio
from machine import machine_line

from jamcaps_desktop.library import Library
from jamcaps_desktop.scan.scanner import scan
from jamcaps_desktop.write.batch import stage, staged_changes, write_changes

MIX = ("mp3", "flac", "m4a")
VALUES = {"genre": ["Ambient", "Drone"], "mood": ["calm"], "bpm": ["92"], "key": ["F#m"], "comment": ["benchmark"]}


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
        folder = root / f"Album {index // 20:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{index % 20 + 1:02d} Track {index}.{FORMATS[fmt][0]}"
        shutil.copyfile(sources[fmt], target)
        opened = mutagen.File(target, easy=True)
        if opened.tags is None:
            opened.add_tags()
        opened.tags["title"] = f"Track {index}"
        opened.tags["artist"] = f"Artist {index // 100}"
        opened.save()
    shutil.rmtree(templates)
    marker.write_text(str(count))


def bare_save(path: Path) -> None:
    """The same five fields, written the way this app maps them, with nothing but mutagen."""
    opened = mutagen.File(path)
    if path.suffix == ".mp3":
        tags = opened.tags
        tags.setall("TCON", [TCON(encoding=3, text=VALUES["genre"])])
        tags.setall("TMOO", [TMOO(encoding=3, text=VALUES["mood"])])
        tags.setall("TBPM", [TBPM(encoding=3, text=VALUES["bpm"])])
        tags.setall("TKEY", [TKEY(encoding=3, text=VALUES["key"])])
        tags.setall("COMM", [COMM(encoding=3, lang="eng", desc="", text=VALUES["comment"])])
    elif path.suffix == ".flac":
        for key, field in (("GENRE", "genre"), ("MOOD", "mood"), ("BPM", "bpm"), ("KEY", "key"),
                           ("COMMENT", "comment")):
            opened.tags[key] = VALUES[field]
    else:
        opened["©gen"] = VALUES["genre"]
        opened["----:com.apple.iTunes:MOOD"] = [MP4FreeForm(v.encode()) for v in VALUES["mood"]]
        opened["tmpo"] = [int(VALUES["bpm"][0])]
        opened["----:com.apple.iTunes:initialkey"] = [MP4FreeForm(VALUES["key"][0].encode())]
        opened["©cmt"] = VALUES["comment"]
    opened.save()


def bare_round(tree: Path, work: Path) -> float:
    """Seconds for the bare saves over a fresh copy of the tree."""
    target = work / "bare"
    shutil.copytree(tree, target)
    files = sorted(p for p in target.rglob("*") if p.suffix in (".mp3", ".flac", ".m4a"))
    _settle_disk()
    start = time.perf_counter()
    for path in files:
        bare_save(path)
    return time.perf_counter() - start


def safe_round(tree: Path, work: Path, count: int) -> tuple[float, float]:
    """Seconds for staging and for ``jamcaps write`` over a fresh copy of the tree, scanned first."""
    target = work / "safe"
    shutil.copytree(tree, target)
    library = Library(work / "bench.sqlite")
    scan(library, [target])
    ids = [row[0] for row in library.conn.execute("SELECT id FROM tracks ORDER BY id")]
    start = time.perf_counter()
    stage(library, ids, VALUES)
    stage_s = time.perf_counter() - start
    changes = staged_changes(library)
    _settle_disk()
    start = time.perf_counter()
    summary = write_changes(library, changes)
    seconds = time.perf_counter() - start
    library.close()
    assert summary.count("written") == count, [f.error for f in summary.files if f.error][:3]
    return seconds, stage_s


def _settle_disk() -> None:
    """Start a timed part with nothing left to write back (copying the trees dirties many pages)."""
    if hasattr(os, "sync"):
        os.sync()
    time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="Rounds of both writers, in alternating order; the medians are reported.")
    parser.add_argument("--tree", type=Path, default=Path(tempfile.gettempdir()) / "jamcaps-write-bench-tree")
    parser.add_argument("--json", type=Path, help="Also write the results to this file.")
    args = parser.parse_args()

    print(f"building a tree of {args.files} files in {args.tree} (reused when present)", file=sys.stderr)
    build_tree(args.tree, args.files)
    rounds = []
    with tempfile.TemporaryDirectory(dir=args.tree.parent) as tmp:
        work = Path(tmp)
        for index in range(args.rounds):
            # the copies are removed only at the end: deleting thousands of files keeps the disk busy
            here = work / f"round{index}"
            here.mkdir()
            if index % 2 == 0:
                bare_s = bare_round(args.tree, here)
                safe_s, stage_s = safe_round(args.tree, here, args.files)
            else:
                safe_s, stage_s = safe_round(args.tree, here, args.files)
                bare_s = bare_round(args.tree, here)
            rounds.append({"bare_mutagen_s": round(bare_s, 2), "jamcaps_write_s": round(safe_s, 2),
                           "jamcaps_stage_s": round(stage_s, 2), "ratio_to_bare": round(bare_s / safe_s, 2)})
            print(json.dumps(rounds[-1]), file=sys.stderr)
    bare_s = statistics.median(r["bare_mutagen_s"] for r in rounds)
    safe_s = statistics.median(r["jamcaps_write_s"] for r in rounds)
    result = {
        "files": args.files,
        "rounds": rounds,
        "bare_mutagen_s": bare_s,
        "bare_mutagen_files_per_s": round(args.files / bare_s, 1),
        "jamcaps_write_s": safe_s,
        "jamcaps_write_files_per_s": round(args.files / safe_s, 1),
        "ratio_to_bare": statistics.median(r["ratio_to_bare"] for r in rounds),
        "machine": machine_line(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
