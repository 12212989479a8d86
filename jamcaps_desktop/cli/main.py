"""The ``jamcaps`` command line: a thin face over the core jobs and library queries."""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from jamcaps_desktop import __version__
from jamcaps_desktop.impute.vocabulary import FIELDS as _IMPUTABLE
from jamcaps_desktop.jobs.base import CancelToken
from jamcaps_desktop.library import Library, LibraryError
from jamcaps_desktop.library.queries import (
    TrackFilter,
    UnknownFieldError,
    canonical_tags,
    find_track,
    library_stats,
    list_tracks,
    resolve_targets,
    track_tags,
)
from jamcaps_desktop.paths import LIBRARY_ENV, resolve_library_path

IMPUTED_FIELDS = ",".join(_IMPUTABLE)

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


class Context:
    def __init__(self, library_path: str | None) -> None:
        self.library_path = resolve_library_path(library_path)
        self._library: Library | None = None

    def library(self, *, create: bool = False) -> Library:
        """The library; only a scan creates one where there is none."""
        if self._library is None:
            try:
                self._library = Library(self.library_path, create=create)
            except LibraryError as exc:
                raise click.ClickException(str(exc)) from exc
        return self._library

    def close(self) -> None:
        if self._library is not None:
            self._library.close()


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _tsv(cell: str) -> str:
    """A cell of tab-separated output: backslash, tab and newline escaped, so every row is one line."""
    return cell.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = float(seconds)
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _size(num: int) -> str:
    value = float(num)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--library", "library_path", metavar="PATH", envvar=LIBRARY_ENV,
              help=f"Library file (default: ${LIBRARY_ENV}, else the user data folder).")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(__version__, prog_name="jamcaps")
@click.pass_context
def cli(ctx: click.Context, library_path: str | None, verbose: int) -> None:
    """jamcaps: an offline tagger for music collections."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ctx.obj = Context(library_path)
    ctx.call_on_close(ctx.obj.close)


# -- scan --------------------------------------------------------------------------------------
@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, file_okay=True, dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Processes reading files in parallel (default: up to 4).")
@click.option("--list-ignored", is_flag=True, help="List every non-audio file that was skipped.")
@click.pass_obj
def scan(obj: Context, paths: tuple[str, ...], as_json: bool, workers: int | None, list_ignored: bool) -> None:
    """Scan folders (or files) into the library: new, changed, moved and missing files."""
    from jamcaps_desktop.cli.progress import TerminalProgress, ctrl_c_cancels
    from jamcaps_desktop.scan.scanner import scan as run_scan

    library = obj.library(create=True)
    token = CancelToken()
    show_bar = not as_json and err.is_terminal
    with TerminalProgress(err, enabled=show_bar) as bar, ctrl_c_cancels(token, err):
        summary = run_scan(library, paths, progress=bar, cancel=token, workers=workers)
    if as_json:
        data = summary.to_dict()
        data["library_summary"] = library_stats(library)
        _emit_json(data)
        if summary.status != "completed":
            sys.exit(130)
        return
    verb = "Scanned" if summary.status == "completed" else "[yellow]Cancelled[/] after"
    elapsed = f"{summary.elapsed_s:.2f}" if summary.elapsed_s < 10 else f"{summary.elapsed_s:.0f}"
    out.print(f"{verb} {summary.files_seen} audio files in {elapsed} s: "
              f"{summary.added} added, {summary.updated} updated, {summary.unchanged} unchanged, "
              f"{summary.moved} moved, {summary.missing} now missing.")
    if summary.status != "completed":
        out.print("[yellow]The scan was cancelled: what was read is saved; nothing was marked missing. "
                  "Run the same scan again to finish it.")
    if summary.errors:
        out.print(f"[red]{len(summary.errors)} file(s) cannot be used:")
        for item in summary.errors:
            out.print(f"  {item['path']}\n    [dim]{item['reason']}")
    for item in summary.issues:
        out.print(f"[yellow]skipped[/] {item['path']}: {item['reason']}")
    if summary.ignored:
        if list_ignored:
            out.print(f"{len(summary.ignored)} non-audio file(s) ignored:")
            for item in summary.ignored:
                out.print(f"  {item['path']} [dim]({item['reason']})")
        else:
            out.print(f"[dim]{len(summary.ignored)} non-audio file(s) ignored (--list-ignored lists them).")
    out.print()
    _print_stats(library_stats(library))
    if summary.status != "completed":
        sys.exit(130)  # like any command stopped with Ctrl-C


# -- ls ----------------------------------------------------------------------------------------
@cli.command(name="ls")
@click.option("--missing", "missing", multiple=True, metavar="FIELD", help="Only tracks lacking FIELD (repeatable).")
@click.option("--format", "formats", multiple=True, metavar="FMT",
              help="Only this container or codec: mp3, flac, ogg, opus, m4a, alac, wav, wma, ... (repeatable).")
@click.option("--errors", is_flag=True, help="Only files that could not be read, with the reason.")
@click.option("--missing-files", is_flag=True, help="Only tracks whose file is gone.")
@click.option("--proposed", multiple=True, metavar="FIELD", help="Only tracks with a pending proposal for FIELD "
              "('any' for any field; repeatable).")
@click.option("--under", type=click.Path(file_okay=False), help="Only tracks inside this folder.")
@click.option("--limit", type=click.IntRange(1), help="At most this many rows.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@click.pass_obj
def ls_command(obj: Context, missing: tuple[str, ...], formats: tuple[str, ...], errors: bool, missing_files: bool,
               proposed: tuple[str, ...], under: str | None, limit: int | None, as_json: bool) -> None:
    """List tracks in the library."""
    from jamcaps_desktop.tags.fields import FIELDS

    for name in missing:
        if name not in FIELDS:
            raise click.UsageError(f"unknown field {name!r}; known fields: {', '.join(FIELDS)}")
    statuses = (["error"] if errors else []) + (["missing"] if missing_files else [])
    flt = TrackFilter(missing=list(missing), formats=list(formats), statuses=statuses, under=under, limit=limit,
                      proposed=list(proposed))
    try:
        rows = list_tracks(obj.library(), flt)
    except UnknownFieldError as exc:
        raise click.UsageError(str(exc)) from exc
    if as_json:
        _emit_json(rows)
        return
    if not rows:
        out.print("[dim]No tracks match.")
        return
    headers = ["ID", "Format", "Length", "Artist", "Title", "Genre", "Path"] + (["Problem"] if errors else [])
    lines = []
    for row in rows:
        fmt = row["container"] or "?"
        if row["codec"] and row["codec"] != row["container"]:
            fmt += f"/{row['codec']}"
        cells = [str(row["id"]), fmt, _duration(row["duration"]), row["artist"] or "", row["title"] or "",
                 ", ".join(row["genre"]), row["path"]]
        if errors:
            cells.append(row["error"] or "")
        lines.append((cells, row["status"]))
    if not out.is_terminal:  # piped: one tab-separated line per track, easy to cut and grep
        click.echo("\t".join(headers))
        for cells, _status in lines:
            click.echo("\t".join(_tsv(c) for c in cells))
        return
    table = Table(show_edge=False, header_style="bold")
    for name in headers:
        table.add_column(name, justify="right" if name in ("ID", "Length") else "left",
                         overflow="fold" if name in ("Path", "Problem") else "ellipsis")
    for cells, status in lines:
        style = "red" if status == "error" else ("dim" if status == "missing" else None)
        table.add_row(*cells, style=style)
    out.print(table)
    out.print(f"[dim]{len(rows)} track(s)")


# -- show --------------------------------------------------------------------------------------
@cli.command()
@click.argument("track")
@click.option("--json", "as_json", is_flag=True, help="Print the track as JSON.")
@click.option("--raw", is_flag=True, help="Also list every raw tag as stored in the file.")
@click.pass_obj
def show(obj: Context, track: str, as_json: bool, raw: bool) -> None:
    """Show one track (by id or path): file facts and its tags."""
    library = obj.library()
    row = find_track(library, track)
    if row is None:
        raise click.ClickException(f"no track {track!r} in the library {library.path}")
    tags = track_tags(library, row["id"])
    fields = canonical_tags(tags)
    if as_json:
        from jamcaps_desktop.analysis.analyze import track_analyses, track_features
        from jamcaps_desktop.caption.job import track_caption
        from jamcaps_desktop.impute.job import track_proposals

        _emit_json({**row, "tags": fields, "raw_tags": tags, "analyses": track_analyses(library, row["id"]),
                    "features": track_features(library, row["id"]), "proposals": track_proposals(library, row["id"]),
                    "caption": track_caption(library, row["id"])})
        return
    out.print(f"[bold]{row['path']}")
    facts = [
        ("Track id", str(row["id"])),
        ("Status", row["status"] + (f" ({row['error']})" if row["error"] else "")),
        ("Format", f"{row['container'] or '?'} / {row['codec'] or '?'}"),
        ("Duration", _duration(row["duration"])),
        ("Sample rate", f"{row['sample_rate']} Hz" if row["sample_rate"] else "?"),
        ("Channels", str(row["channels"] or "?")),
        ("Bitrate", f"{round(row['bitrate'] / 1000)} kbps" if row["bitrate"] else "?"),
        ("Size", _size(row["size"])),
        ("Tag blocks", ", ".join(row["tag_formats"]) or "none"),
    ]
    if row["missing_since"]:
        facts.append(("Missing since", row["missing_since"]))
    for name, value in facts:
        out.print(f"  [dim]{name:<26}[/] {value}")
    if fields:
        out.print("[bold]Tags")
        for name, values in fields.items():
            out.print(f"  [dim]{name:<26}[/] {' ; '.join(values)}")
    elif row["status"] == "ok":
        out.print("[dim]No tags.")
    from jamcaps_desktop.analysis.analyze import track_analyses, track_features

    features = track_features(library, row["id"])
    analyses = track_analyses(library, row["id"])
    if analyses or features:
        out.print("[bold]Analysis")
    if features and features["bpm"] is not None:
        out.print(f"  [dim]{'Tempo':<26}[/] {features['bpm']:.2f} BPM (confidence {features['bpm_confidence']:.2f})")
    if features and features["key"] is not None:
        out.print(f"  [dim]{'Key':<26}[/] {features['key']} (confidence {features['key_confidence']:.2f})")
    if features and features["loudness_lufs"] is not None:
        out.print(f"  [dim]{'Loudness':<26}[/] {features['loudness_lufs']:.1f} LUFS (EBU R128), "
                  f"peak {features['peak_dbfs']:.1f} dBFS")
    for analysis in analyses:
        if analysis["status"] != "ok":
            out.print(f"  [dim]{analysis['model']:<26}[/] [red]{analysis['error']}")
            continue
        top = ", ".join(f"{label} {p:.2f}" for label, p in analysis["labels"][:6])
        out.print(f"  [dim]{analysis['model']:<26}[/] {top}")
    from jamcaps_desktop.caption.job import track_caption

    caption_row = track_caption(library, row["id"])
    if caption_row:
        out.print(f"[bold]Caption[/] [dim]({caption_row['model']})[/]\n  {caption_row['text']}")
    from jamcaps_desktop.impute.job import track_proposals

    proposals = track_proposals(library, row["id"])
    if proposals:
        out.print("[bold]Proposed")
    for proposal in proposals:
        voters = ", ".join(f"#{t} ({score:.2f})" for t, score, _values in proposal["neighbours"][:5])
        out.print(f"  [dim]{proposal['field']:<26}[/] [cyan]{' ; '.join(proposal['values'])}[/] "
                  f"(confidence {proposal['confidence']:.2f}, {proposal['method']}, {proposal['status']}; "
                  f"from {voters or 'the track itself'})")
    unmapped = [t for t in tags if t["field"] is None]
    if raw:
        out.print("[bold]As stored in the file")
        for tag in tags:
            out.print(f"  [dim]{tag['raw_key']}[/] = {tag['value']}")
    elif unmapped:
        out.print(f"[dim]{len(unmapped)} other tag(s) kept as found (--raw lists them).")


# -- stats -------------------------------------------------------------------------------------
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@click.pass_obj
def stats(obj: Context, as_json: bool) -> None:
    """Summarise the library: tracks, formats, field coverage, last scan."""
    data = library_stats(obj.library())
    if as_json:
        _emit_json(data)
        return
    _print_stats(data)


def _print_stats(data: dict[str, Any]) -> None:
    out.print(f"[bold]Library[/] {data['library']}")
    out.print(f"  {data['tracks']} tracks: {data['ok']} usable, {data['errors']} with errors, "
              f"{data['missing']} missing; {_duration(data['duration_s'])} of audio, {_size(data['size_bytes'])}")
    if data["formats"]:
        parts = []
        for f in data["formats"]:
            name = f["container"] or "?"
            if f["codec"] and f["codec"] != f["container"]:
                name += f"/{f['codec']}"
            parts.append(f"{name} {f['tracks']}")
        out.print("  Formats: " + ", ".join(parts))
    if data["ok"]:
        cov = ", ".join(f"{name} {c['percent']:.0f}%" for name, c in data["field_coverage"].items())
        out.print(f"  Tracks with: {cov}")


# -- staging and writing -----------------------------------------------------------------------
def _targets(library: Library, target: str) -> list[int]:
    try:
        ids = resolve_targets(library, target)
    except UnknownFieldError as exc:
        raise click.UsageError(str(exc)) from exc
    if not ids:
        raise click.ClickException(f"no track matches {target!r}")
    return ids


def _parse_assignments(assignments: tuple[str, ...]) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep:
            raise click.UsageError(f"expected FIELD=VALUE, got {item!r}")
        name = name.strip().lower()
        values.setdefault(name, [])
        if value.strip():
            values[name].append(value)
    return values


def _show_value(values: list[str]) -> str:
    return " ; ".join(values) if values else "[dim](none)[/]"


def _print_outcomes(summary: Any, verb: str) -> None:
    for item in summary.files:
        if item.status == "unchanged":
            continue
        mark = {"written": "[green]✓[/]", "planned": "[cyan]•[/]", "failed": "[red]✗[/]"}.get(item.status, " ")
        out.print(f"{mark} {item.path}")
        for name, (old, new) in item.changes.items():
            out.print(f"    [dim]{name:<12}[/] {_show_value(old)}  →  {_show_value(new)}")
        if item.error:
            out.print(f"    [red]{item.error}")
    counts = {k: summary.count(k) for k in ("planned", "written", "failed", "unchanged")}
    parts = [f"{n} {k}" for k, n in counts.items() if n]
    out.print(f"{verb}: " + (", ".join(parts) if parts else "nothing to do"))


@cli.command(name="set")
@click.argument("target")
@click.argument("assignments", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print what was staged as JSON.")
@click.pass_obj
def set_command(obj: Context, target: str, assignments: tuple[str, ...], as_json: bool) -> None:
    """Stage FIELD=VALUE changes on tracks; `jamcaps write` puts them in the files.

    TARGET is a track id, a file, a folder, or a query such as 'artist:"Some One" missing:mood'.
    Repeat a field for several values (genre=Rock genre=Pop); FIELD= with no value stages its removal.
    """
    from jamcaps_desktop.tags.values import InvalidValueError
    from jamcaps_desktop.write.batch import stage

    library = obj.library()
    values = _parse_assignments(assignments)
    ids = _targets(library, target)
    try:
        count = stage(library, ids, values)
    except InvalidValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if as_json:
        _emit_json({"tracks": ids, "fields": values})
        return
    out.print(f"Staged {', '.join(values)} on {count} track(s). Review with 'jamcaps write --dry-run'.")


@cli.command()
@click.option("--clear", is_flag=True, help="Drop every staged value (or those of --field).")
@click.option("--field", "fields", multiple=True, metavar="FIELD", help="With --clear: only this field.")
@click.option("--json", "as_json", is_flag=True, help="Print the staged values as JSON.")
@click.pass_obj
def staged(obj: Context, clear: bool, fields: tuple[str, ...], as_json: bool) -> None:
    """List (or --clear) the values staged for writing."""
    from jamcaps_desktop.write.batch import plan, staged_changes, unstage

    library = obj.library()
    if clear:
        removed = unstage(library, fields=fields or None)
        out.print(f"Dropped {removed} staged value(s).")
        return
    summary = plan(library, staged_changes(library))
    if as_json:
        _emit_json(summary.to_dict())
        return
    _print_outcomes(summary, "Staged")


@cli.command()
@click.argument("targets", nargs=-1)
@click.option("--dry-run", is_flag=True, help="Show the changes file by file; write nothing.")
@click.option("--id3-version", type=click.Choice(["keep", "2.3", "2.4"]), default="keep", show_default=True,
              help="ID3 version for MP3, WAV, AIFF and DSF files ('keep': each file's own, v2.4 for new tags).")
@click.option("--keep-mtime", is_flag=True, help="Keep each file's modification time.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.pass_obj
def write(obj: Context, targets: tuple[str, ...], dry_run: bool, id3_version: str, keep_mtime: bool,
          as_json: bool) -> None:
    """Write staged values into the files (all, or those of TARGETS), safely and undoably."""
    from jamcaps_desktop.cli.progress import TerminalProgress, ctrl_c_cancels
    from jamcaps_desktop.write.batch import WriteOptions, plan, staged_changes, write_changes

    library = obj.library()
    ids = None
    if targets:
        ids = [tid for target in targets for tid in _targets(library, target)]
    changes = staged_changes(library, ids)
    if dry_run:
        summary = plan(library, changes)
    else:
        options = WriteOptions(id3_version={"keep": None, "2.3": 3, "2.4": 4}[id3_version], keep_mtime=keep_mtime)
        token = CancelToken()
        with TerminalProgress(err, enabled=not as_json and err.is_terminal) as bar, ctrl_c_cancels(token, err):
            summary = write_changes(library, changes, options=options, progress=bar, cancel=token)
    if as_json:
        _emit_json(summary.to_dict())
    else:
        _print_outcomes(summary, "Dry run" if dry_run else f"Batch {summary.batch_id}")
        if not dry_run and summary.count("written"):
            out.print(f"[dim]Undo with 'jamcaps undo {summary.batch_id}'.")
    if summary.status == "cancelled":
        sys.exit(130)


@cli.command()
@click.argument("batch", required=False, type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.pass_obj
def undo(obj: Context, batch: int | None, as_json: bool) -> None:
    """Restore the tags a write batch replaced (default: the latest one).

    A file changed since that write is left alone and reported.
    """
    from jamcaps_desktop.cli.progress import TerminalProgress, ctrl_c_cancels
    from jamcaps_desktop.write.batch import UndoError
    from jamcaps_desktop.write.batch import undo as run_undo

    library = obj.library()
    token = CancelToken()
    try:
        with TerminalProgress(err, enabled=not as_json and err.is_terminal) as bar, ctrl_c_cancels(token, err):
            summary = run_undo(library, batch, progress=bar, cancel=token)
    except UndoError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        _emit_json(summary.to_dict())
    else:
        _print_outcomes(summary, f"Undo batch {summary.batch_id}")
    if summary.status == "cancelled":
        sys.exit(130)


@cli.command()
@click.argument("batch", required=False, type=int)
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the history as JSON.")
@click.pass_obj
def history(obj: Context, batch: int | None, limit: int, as_json: bool) -> None:
    """List write batches, or the files and changes of one BATCH."""
    from jamcaps_desktop.write.batch import batch_details
    from jamcaps_desktop.write.batch import history as batches

    library = obj.library()
    if batch is not None:
        details = batch_details(library, batch)
        if as_json:
            _emit_json(details)
            return
        if not details:
            raise click.ClickException(f"batch {batch} wrote no files")
        for item in details:
            colour = {"written": "green", "failed": "red", "undone": "yellow"}.get(item["status"], "dim")
            out.print(f"[{colour}]{item['status']:<8}[/] {item['path']}")
            for name, change in item["changes"].items():
                out.print(f"    [dim]{name:<12}[/] {_show_value(change['old'])}  →  {_show_value(change['new'])}")
            if item["error"]:
                out.print(f"    [red]{item['error']}")
        return
    rows = batches(library, limit)
    if as_json:
        _emit_json(rows)
        return
    if not rows:
        out.print("[dim]Nothing has been written yet.")
        return
    for row in rows:
        what = f"undo of batch {row['undo_of']}" if row["kind"] == "undo" else "write"
        undone = f", {row['undone']} undone" if row["undone"] else ""
        out.print(f"  {row['id']:>4}  {row['started_at']}  {what:<16} {row['status']:<11} "
                  f"{row['written']} written, {row['failed']} failed{undone}")


# -- analyze -----------------------------------------------------------------------------------
@cli.command()
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where the models run ('auto': the GPU where one is usable).")
@click.option("--limit", type=click.IntRange(1), help="Analyse at most this many tracks.")
@click.option("--model", "models", multiple=True, metavar="NAME", help="Only this installed model (repeatable).")
@click.option("--workers", type=click.IntRange(1), help="Decoding processes (default: all cores but three with a GPU, "
              "up to 4 on the CPU).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def analyze(obj: Context, device: str, limit: int | None, models: tuple[str, ...], workers: int | None,
            as_json: bool) -> None:
    """Listen to the tracks not analysed yet: label probabilities and an embedding per model, tempo, key
    and loudness."""
    from jamcaps_desktop.analysis.analyze import analyze as run_analysis
    from jamcaps_desktop.cli.progress import TerminalProgress, ctrl_c_cancels
    from jamcaps_desktop.models.registry import ModelError

    library = obj.library()
    token = CancelToken()
    try:
        with TerminalProgress(err, enabled=not as_json and err.is_terminal) as bar, ctrl_c_cancels(token, err):
            summary = run_analysis(library, models=list(models) or None, device=device, limit=limit, progress=bar,
                                   cancel=token, workers=workers)
    except (ModelError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        _emit_json(summary.to_dict())
    else:
        speed = summary.seconds_of_audio / summary.elapsed_s if summary.elapsed_s else 0.0
        where = f" on {summary.device}" if summary.device else ""  # no device started: nothing to analyse
        out.print(f"Analysed {summary.analysed} track(s) with {', '.join(summary.models)}{where} in "
                  f"{summary.elapsed_s:.1f} s ({speed:.0f}× real time); {summary.skipped} already analysed.")
        for item in summary.errors:
            out.print(f"[red]  {item['path']}[/]\n    [dim]{item['reason']}")
    if summary.status == "cancelled":
        sys.exit(130)


# -- models ------------------------------------------------------------------------------------
@cli.group()
def models() -> None:
    """Pretrained models: list, install, verify, remove."""


@models.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def models_list(as_json: bool) -> None:
    """Known models, their licences, and whether they are installed."""
    from jamcaps_desktop.models import registry

    rows = []
    for name, spec in sorted(registry.manifests().items()):
        rows.append({"name": name, "version": spec["version"], "licence": spec["licence"], "title": spec["title"],
                     "default": bool(spec.get("default")), "installed": registry.is_installed(name)})
    if as_json:
        _emit_json(rows)
        return
    for row in rows:
        state = "[green]installed[/]" if row["installed"] else "[dim]not installed[/]"
        default = " (default)" if row["default"] else ""
        out.print(f"  {row['name']:<14} {row['version']:<8} {row['licence']:<8} {state}{default}  [dim]{row['title']}")


@models.command(name="install")
@click.argument("names", nargs=-1)
@click.option("--default", "defaults", is_flag=True, help="Install every default model.")
@click.option("--from", "local", type=click.Path(exists=True), metavar="PATH",
              help="Install from this file or folder (the model's published source) instead of downloading it.")
@click.option("--force", is_flag=True, help="Install again even where the model is installed.")
@click.option("--accept-licence", is_flag=True,
              help="Install a model whose licence terms are unclear (its manifest says why), knowing that.")
def models_install(names: tuple[str, ...], defaults: bool, local: str | None, force: bool,
                   accept_licence: bool) -> None:
    """Install models (downloads their published weights once, checks them, converts them to ONNX)."""
    from jamcaps_desktop.models import registry

    defaults_wanted = registry.default_models() if defaults else []
    if defaults_wanted and local is not None and Path(local).is_file():
        # one file brought by hand holds one source: install the default models that come from it
        digest = registry.file_sha256(Path(local))
        defaults_wanted = [n for n in defaults_wanted if registry.manifest(n)["source"].get("sha256") == digest]
        if not defaults_wanted and not names:
            raise click.ClickException(f"{local} is not the published source of any default model")
    wanted = list(names) + defaults_wanted
    if not wanted:
        raise click.UsageError("name a model, or give --default")
    for name in dict.fromkeys(wanted):
        try:
            if registry.is_installed(name) and not force and local is None:
                hint = registry.verify(name).rebuild_hint
                out.print(f"{name}: already installed" + (f" [yellow]({hint})" if hint else ""))
                continue
            with err.status(f"installing {name}…"):
                model = registry.install(name, local=local, accept_licence=accept_licence)
        except registry.ModelError as exc:
            raise click.ClickException(str(exc)) from exc
        out.print(f"{name} {model.version}: installed ({model.manifest['licence']} licence)")


@models.command(name="verify")
@click.argument("names", nargs=-1)
def models_verify(names: tuple[str, ...]) -> None:
    """Check installed models against the checksums recorded when they were installed."""
    from jamcaps_desktop.models import registry

    problems = 0
    for name in names or [n for n in registry.manifests() if registry.is_installed(n)]:
        try:
            model = registry.verify(name)
            out.print(f"{name}: ok" + (f" [yellow]({model.rebuild_hint})" if model.rebuild_hint else ""))
        except registry.ModelError as exc:
            problems += 1
            err.print(f"[red]{exc}")
    if problems:
        sys.exit(1)


@models.command(name="remove")
@click.argument("names", nargs=-1, required=True)
def models_remove(names: tuple[str, ...]) -> None:
    """Remove installed models."""
    from jamcaps_desktop.models import registry

    for name in names:
        out.print(f"{name}: {'removed' if registry.remove(name) else 'was not installed'}")


def main() -> None:
    try:
        cli.main(prog_name="jamcaps", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except LibraryError as exc:
        err.print(f"[red]Error:[/] {exc}")
        sys.exit(1)
    except sqlite3.Error as exc:
        err.print(f"[red]Library error:[/] {exc}")
        sys.exit(1)
    except (KeyboardInterrupt, click.Abort):
        err.print("[red]Interrupted.[/] The library is consistent; run the command again to continue.")
        sys.exit(130)


if __name__ == "__main__":
    main()


# -- similarity and imputation ------------------------------------------------------------------
from jamcaps_desktop.similar.metadata import TEXT_MODEL  # noqa: E402 - beside its users


def _embed_metadata(library: Library, device: str) -> bool:
    """Embed the tracks' metadata when the text encoder is installed; False (with a note) when it is not."""
    from jamcaps_desktop.models import registry
    from jamcaps_desktop.similar.metadata import embed_with_installed_encoder

    try:
        if embed_with_installed_encoder(library, device):
            return True
    except registry.ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    err.print(f"[yellow]The metadata encoder is not installed ('jamcaps models install {TEXT_MODEL}'): "
              "similarity uses the audio alone.")
    return False


def _language_model(model: str):  # -> LlamaCompleter
    """An installed GGUF model by name, or a GGUF file by path."""
    from jamcaps_desktop.impute.llm import LlamaCompleter
    from jamcaps_desktop.models import registry

    try:
        path = Path(model) if Path(model).is_file() else registry.verify(model).onnx_path
        return LlamaCompleter(path)
    except (registry.ModelError, RuntimeError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


@cli.command()
@click.argument("track")
@click.option("-k", "count", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--by", type=click.Choice(["audio", "meta", "both"]), default="both", show_default=True,
              help="Sound, metadata, or both fused (0.6 audio, 0.4 metadata).")
@click.option("--weights", type=(float, float), default=(0.6, 0.4), show_default=True, metavar="AUDIO META")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the neighbours as JSON.")
@click.pass_obj
def similar(obj: Context, track: str, count: int, by: str, weights: tuple[float, float], device: str,
            as_json: bool) -> None:
    """The tracks that sound (or are described) most like TRACK (an id or a path)."""
    from jamcaps_desktop.similar.search import Searcher

    library = obj.library()
    row = find_track(library, track)
    if row is None:
        raise click.ClickException(f"no track {track!r} in the library {library.path}")
    if by != "audio":
        _embed_metadata(library, device)
    matches = Searcher(library, by=by, weights=weights).neighbours(row["id"], count)
    paths = dict(library.conn.execute("SELECT id, path FROM tracks").fetchall())
    if as_json:
        _emit_json([{"track_id": m.track_id, "path": paths.get(m.track_id), "score": m.score, "audio": m.audio,
                     "meta": m.meta} for m in matches])
        return
    if not matches:
        out.print("[dim]No neighbours: analyse the library first ('jamcaps analyze').")
    for m in matches:
        sides = ", ".join(f"{name} {value:.2f}" for name, value in (("audio", m.audio), ("meta", m.meta))
                          if value is not None)
        out.print(f"  {m.score:5.2f}  #{m.track_id:<6} {paths.get(m.track_id)}  [dim]({sides})")


@cli.command()
@click.option("--fields", default=IMPUTED_FIELDS, show_default=True, help="Comma-separated fields.")
@click.option("--method", type=click.Choice(["vote", "llm", "hybrid"]), default="vote", show_default=True,
              help="vote: the neighbours' weighted vote; llm / hybrid: a local language model (see --llm-model).")
@click.option("--llm-model", default="gemma3-270m", show_default=True, metavar="MODEL_OR_GGUF",
              help="The installed language model, or a GGUF file, for --method llm or hybrid.")
@click.option("--min-confidence", type=click.FloatRange(0, 1),
              help="Propose values at least this confident (default: per field, as measured best).")
@click.option("-k", "count", type=click.IntRange(1, 100), default=10, show_default=True, help="Neighbours.")
@click.option("--overwrite", is_flag=True, help="Also propose for fields a track already has.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def impute(obj: Context, fields: str, method: str, llm_model: str, min_confidence: float | None, count: int,
           overwrite: bool, device: str, as_json: bool) -> None:
    """Propose the genre, mood, instruments, vocals, sound and speed tracks lack.

    Genre, mood and instruments come from the nearest neighbours; vocals (vocal / instrumental) and
    sound (acoustic / electric) from what the track's own tags imply, else from the neighbours; speed
    (slow / medium / fast) from the track's BPM.
    """
    from jamcaps_desktop.cli.progress import TerminalProgress, ctrl_c_cancels
    from jamcaps_desktop.impute.job import impute as run_impute

    library = obj.library()
    _embed_metadata(library, device)
    token = CancelToken()
    try:
        with TerminalProgress(err, enabled=not as_json and err.is_terminal) as bar, ctrl_c_cancels(token, err):
            summary = run_impute(library, fields=[f.strip() for f in fields.split(",") if f.strip()], method=method,
                                 k=count, threshold=min_confidence, overwrite=overwrite, progress=bar, cancel=token,
                                 complete=_language_model(llm_model) if method != "vote" else None)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if as_json:
        _emit_json(summary.to_dict())
    else:
        per_field = ", ".join(f"{n} {c}" for n, c in summary.per_field.items()) or "none"
        out.print(f"Looked at {summary.tracks} track(s): {summary.proposals} proposal(s) ({per_field}) in "
                  f"{summary.elapsed_s:.1f} s. Review them with 'jamcaps show', accept with 'jamcaps accept'.")
    if summary.status == "cancelled":
        sys.exit(130)


@cli.command()
@click.argument("target")
@click.option("--fields", default=IMPUTED_FIELDS, show_default=True, help="Comma-separated fields.")
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.pass_obj
def accept(obj: Context, target: str, fields: str, min_confidence: float) -> None:
    """Stage the proposals of TARGET (an id, a path, a folder or a query) for writing ('jamcaps write')."""
    from jamcaps_desktop.impute.job import accept as accept_proposals

    library = obj.library()
    ids = _targets(library, target)
    accepted = accept_proposals(library, ids, fields=[f.strip() for f in fields.split(",") if f.strip()],
                                min_confidence=min_confidence)
    out.print(f"Accepted {accepted} proposal(s); 'jamcaps staged' shows them, 'jamcaps write' writes them.")


@cli.command()
@click.argument("target")
@click.option("--fields", default=IMPUTED_FIELDS, show_default=True, help="Comma-separated fields.")
@click.pass_obj
def reject(obj: Context, target: str, fields: str) -> None:
    """Reject the proposals of TARGET: they are not proposed again until the track changes."""
    from jamcaps_desktop.impute.job import reject as reject_proposals

    library = obj.library()
    changed = reject_proposals(library, _targets(library, target), fields=[f.strip() for f in fields.split(",")
                                                                           if f.strip()])
    out.print(f"Rejected {changed} proposal(s).")


# -- captions, search, export ----------------------------------------------------------------------
@cli.command(name="caption")
@click.option("--model", "writer", type=click.Choice(["template", "llm", "lp-musiccaps"]), default="template",
              show_default=True,
              help="template: sentences composed from what is known of each track; llm: written by the local "
                   "language model from the same facts, kept only where it names nothing else; lp-musiccaps: "
                   "the LP-MusicCaps captioner listening to each 10-s chunk (install it first).")
@click.option("--llm-model", default="gemma3-270m", show_default=True, metavar="MODEL_OR_GGUF")
@click.option("--overwrite", is_flag=True, help="Write every caption again, even where nothing changed.")
@click.option("--stage", is_flag=True, help="Also stage each caption as the file's description ('jamcaps write').")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def caption_command(obj: Context, writer: str, llm_model: str, overwrite: bool, stage: bool, as_json: bool) -> None:
    """Write a caption for every track that has none, or whose facts changed."""
    from jamcaps_desktop.caption.job import caption
    from jamcaps_desktop.cli.progress import TerminalProgress, ctrl_c_cancels

    library = obj.library()
    token = CancelToken()
    complete = _language_model(llm_model) if writer == "llm" else None
    captioner = None
    if writer == "lp-musiccaps":
        from jamcaps_desktop.models import registry
        from jamcaps_desktop.models.captioner_install import Captioner

        try:
            captioner = Captioner.installed("lp-musiccaps")
        except registry.ModelError as exc:
            raise click.ClickException(str(exc)) from exc
    with TerminalProgress(err, enabled=not as_json and err.is_terminal) as bar, ctrl_c_cancels(token, err):
        summary = caption(library, writer=writer, complete=complete, model_name=llm_model, overwrite=overwrite,
                          progress=bar, cancel=token, captioner=captioner)
    if stage:
        from jamcaps_desktop.write.batch import stage as stage_values

        rows = library.conn.execute("SELECT track_id, text FROM captions").fetchall()
        for track_id, text in rows:
            stage_values(library, [track_id], {"description": [text]}, origin="caption")
    if as_json:
        _emit_json(summary.to_dict())
    else:
        out.print(f"Captioned {summary.written} track(s) ({summary.writer}); {summary.unchanged} unchanged, "
                  f"{summary.without_evidence} with nothing known to say, in {summary.elapsed_s:.1f} s"
                  + (f"; {summary.fell_back} written by the template instead of the model" if summary.fell_back
                     else "") + ("; staged as descriptions ('jamcaps write' writes them)" if stage else "") + ".")
    if summary.status == "cancelled":
        sys.exit(130)


@cli.command(name="search")
@click.argument("query", nargs=-1, required=True)
@click.option("-n", "limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON.")
@click.pass_obj
def search_command(obj: Context, query: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Find tracks by words in their captions, tags and paths ("calm piano in a minor key")."""
    from jamcaps_desktop.caption.search import SearchUnavailable, search

    try:
        hits = search(obj.library(), " ".join(query), limit)
    except SearchUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        _emit_json([hit.__dict__ for hit in hits])
        return
    for hit in hits:
        out.print(f"  {hit.score:6.2f}  #{hit.track_id:<6} {hit.path}")
        if hit.caption:
            out.print(f"          [dim]{hit.caption}")
    if not hits:
        out.print("[dim]No track matches.")


@cli.command(name="export")
@click.option("--jsonl", type=click.Path(dir_okay=False), help="Write JSON Lines here.")
@click.option("--parquet", type=click.Path(dir_okay=False), help="Write Parquet here (needs pyarrow).")
@click.pass_obj
def export_command(obj: Context, jsonl: str | None, parquet: str | None) -> None:
    """Export the library as a dataset shaped like JamendoMaxCaps (captions, metadata, imputed metadata)."""
    from jamcaps_desktop.caption.export import export_jsonl, export_parquet

    if not jsonl and not parquet:
        raise click.UsageError("give --jsonl FILE and/or --parquet FILE")
    library = obj.library()
    if jsonl:
        out.print(f"Wrote {export_jsonl(library, jsonl)} track(s) to {jsonl}.")
    if parquet:
        try:
            out.print(f"Wrote {export_parquet(library, parquet)} track(s) to {parquet}.")
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from exc


@cli.group(name="eval")
def eval_group() -> None:
    """Measure the app's methods on labelled data."""


@eval_group.command(name="impute")
@click.option("--tsv", type=click.Path(exists=True, dir_okay=False), required=True,
              help="MTG-Jamendo-style metadata (TRACK_ID, ARTIST_ID, ALBUM_ID, PATH, DURATION, SPLIT, tags…).")
@click.option("-k", "count", type=click.IntRange(1, 100), default=10, show_default=True)
@click.option("--limit", type=click.IntRange(1), help="Score at most this many tracks per field.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--cache", type=click.Path(file_okay=False), help="Keep the text embeddings here between runs.")
@click.option("--llm", "llm_model", metavar="MODEL_OR_GGUF",
              help="Also score the llm, hybrid and paper methods with this installed model or GGUF file.")
@click.option("--llm-limit", type=click.IntRange(1), default=100, show_default=True,
              help="Tracks per field for the language-model methods (a random sample).")
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON.")
def eval_impute(tsv: str, count: int, limit: int | None, device: str, cache: str | None, llm_model: str | None,
                llm_limit: int, as_json: bool) -> None:
    """Hide each field in turn, predict it from the neighbours, and score every method."""
    from jamcaps_desktop.impute.evaluate import evaluate
    from jamcaps_desktop.models import registry
    from jamcaps_desktop.models.minilm import TextEncoder

    try:
        encoder = TextEncoder.installed(TEXT_MODEL, device=device)
    except registry.ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    from jamcaps_desktop.cli.progress import TerminalProgress


    with TerminalProgress(err, enabled=not as_json and err.is_terminal) as bar:
        results = evaluate(tsv, encoder, k=count, limit=limit, progress=bar, cache=cache,
                           encoder_identity=registry.verify(TEXT_MODEL).record["sha256"],
                           complete=_language_model(llm_model) if llm_model else None, llm_limit=llm_limit)
    if as_json:
        _emit_json(results)
        return
    out.print(f"{results['tracks']} tracks, k = {results['k']}, {results['elapsed_s']:.0f} s")
    for name, methods in results["fields"].items():
        for method, scores in methods.items():
            out.print(f"  {name:<12} {method:<14} P {scores['precision']:.3f}  R {scores['recall']:.3f}  "
                      f"F1 micro {scores['f1_micro']:.3f}  macro {scores['f1_macro']:.3f}  "
                      f"top-1 {scores['top1_accuracy']:.3f}  coverage {scores['coverage']:.2f}  "
                      f"({scores['queries']} tracks)")


@cli.group(name="index")
def index_group() -> None:
    """The similarity indexes beside the library."""


@index_group.command(name="rebuild")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.pass_obj
def index_rebuild(obj: Context, device: str) -> None:
    """Rebuild the audio and metadata indexes from the library."""
    from jamcaps_desktop.similar.index import SPACES, VectorIndex

    library = obj.library()
    _embed_metadata(library, device)
    for space in SPACES:
        result = VectorIndex(library, space).rebuild()
        out.print(f"{space}: {result['size']} track(s)")
