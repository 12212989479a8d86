"""The canonical metadata fields the app reads, proposes and writes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    multi: bool = False  # several values are normal (genre, mood, instruments)


FIELDS: dict[str, Field] = {
    f.name: f
    for f in (
        Field("title", "Title"),
        Field("artist", "Artist"),
        Field("album", "Album"),
        Field("albumartist", "Album artist"),
        Field("tracknumber", "Track"),
        Field("totaltracks", "Total tracks"),
        Field("discnumber", "Disc"),
        Field("totaldiscs", "Total discs"),
        Field("date", "Date"),
        Field("originaldate", "Original date"),
        Field("genre", "Genre", multi=True),
        Field("mood", "Mood", multi=True),
        Field("instruments", "Instruments", multi=True),
        Field("bpm", "BPM"),
        Field("key", "Key"),
        Field("vocals", "Vocal / instrumental"),
        Field("sound", "Acoustic / electric"),
        Field("speed", "Speed"),
        Field("comment", "Comment"),
        Field("description", "Description"),
        Field("language", "Language"),
        Field("isrc", "ISRC"),
        Field("composer", "Composer"),
        Field("lyrics", "Lyrics"),
        Field("musicbrainz_recordingid", "MusicBrainz recording id"),
        Field("musicbrainz_trackid", "MusicBrainz release track id"),
        Field("musicbrainz_albumid", "MusicBrainz release id"),
        Field("musicbrainz_artistid", "MusicBrainz artist id"),
        Field("musicbrainz_albumartistid", "MusicBrainz release artist id"),
        Field("musicbrainz_releasegroupid", "MusicBrainz release group id"),
        Field("musicbrainz_workid", "MusicBrainz work id"),
    )
}

MULTI_VALUE_FIELDS = frozenset(name for name, f in FIELDS.items() if f.multi)
