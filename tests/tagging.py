"""Write tags into test files the way common taggers (Picard, foobar2000, iTunes) store them."""

from __future__ import annotations

from pathlib import Path

import mutagen
from mutagen.apev2 import APEv2
from mutagen.asf import ASF
from mutagen.id3 import ID3, TBPM, TCON, TIT2, TKEY, TMOO, TPE1, TRCK, TXXX, UFID
from mutagen.mp4 import MP4, MP4FreeForm

RECORDING_ID = "8b882575-08a5-4452-a7a7-cbb8a1531f9e"

# canonical values every tagger below writes
EXPECTED = {
    "title": ["Song"],
    "artist": ["Some Artist"],
    "tracknumber": ["3"],
    "totaltracks": ["12"],
    "genre": ["Rock", "Pop"],
    "mood": ["Happy"],
    "bpm": ["120"],
    "key": ["Am"],
    "instruments": ["piano", "drums"],
    "musicbrainz_recordingid": [RECORDING_ID],
}


def tag_id3(path: Path, v2_version: int = 4) -> None:
    try:
        tags = ID3(path)
    except mutagen.id3.ID3NoHeaderError:
        tags = ID3()
    tags.add(TIT2(encoding=3, text=["Song"]))
    tags.add(TPE1(encoding=3, text=["Some Artist"]))
    tags.add(TRCK(encoding=0, text=["3/12"]))
    tags.add(TCON(encoding=3, text=["Rock", "Pop"]))
    tags.add(TBPM(encoding=0, text=["120"]))
    tags.add(TKEY(encoding=0, text=["Am"]))
    if v2_version == 4:
        tags.add(TMOO(encoding=3, text=["Happy"]))
    else:
        tags.add(TXXX(encoding=3, desc="mood", text=["Happy"]))
    tags.add(TXXX(encoding=3, desc="INSTRUMENTS", text=["piano", "drums"]))
    tags.add(UFID(owner="http://musicbrainz.org", data=RECORDING_ID.encode()))
    tags.save(path, v2_version=v2_version)


def tag_file(path: Path) -> None:
    """Tag ``path`` in its native tag format with the EXPECTED values."""
    opened = mutagen.File(path)
    kind = type(opened).__name__
    if kind in ("MP3", "AIFF", "WAVE"):
        if opened.tags is None:
            opened.add_tags()
            opened.save()
        tag_id3(path) if kind == "MP3" else _tag_id3_chunk(opened)
    elif kind in ("FLAC", "OggVorbis", "OggOpus"):
        tags = opened.tags
        tags["TITLE"] = "Song"
        tags["ARTIST"] = "Some Artist"
        tags["TRACKNUMBER"] = "3"
        tags["TOTALTRACKS"] = "12"
        tags["GENRE"] = ["Rock", "Pop"]
        tags["MOOD"] = "Happy"
        tags["BPM"] = "120"
        tags["KEY"] = "Am"
        tags["INSTRUMENTS"] = ["piano", "drums"]
        tags["MUSICBRAINZ_TRACKID"] = RECORDING_ID
        opened.save()
    elif kind == "MP4":
        mp4: MP4 = opened
        mp4["©nam"] = ["Song"]
        mp4["©ART"] = ["Some Artist"]
        mp4["trkn"] = [(3, 12)]
        mp4["©gen"] = ["Rock", "Pop"]
        mp4["tmpo"] = [120]
        mp4["----:com.apple.iTunes:MOOD"] = [MP4FreeForm(b"Happy")]
        mp4["----:com.apple.iTunes:initialkey"] = [MP4FreeForm(b"Am")]
        mp4["----:com.apple.iTunes:INSTRUMENTS"] = [MP4FreeForm(b"piano"), MP4FreeForm(b"drums")]
        mp4["----:com.apple.iTunes:MusicBrainz Track Id"] = [MP4FreeForm(RECORDING_ID.encode())]
        mp4.save()
    elif kind == "ASF":
        asf: ASF = opened
        asf["Title"] = ["Song"]
        asf["Author"] = ["Some Artist"]
        asf["WM/TrackNumber"] = ["3"]
        asf["WM/Genre"] = ["Rock", "Pop"]
        asf["WM/Mood"] = ["Happy"]
        asf["WM/BeatsPerMinute"] = ["120"]
        asf["WM/InitialKey"] = ["Am"]
        asf["Instruments"] = ["piano", "drums"]
        asf["MusicBrainz/Track Id"] = [RECORDING_ID]
        asf.save()
    elif kind in ("WavPack", "MonkeysAudio", "Musepack"):
        try:
            ape = APEv2(path)
        except mutagen.apev2.APENoHeaderError:
            ape = APEv2()
        ape["Title"] = "Song"
        ape["Artist"] = "Some Artist"
        ape["Track"] = "3/12"
        ape["Genre"] = "Rock\x00Pop"
        ape["Mood"] = "Happy"
        ape["BPM"] = "120"
        ape["Key"] = "Am"
        ape["Instruments"] = "piano\x00drums"
        ape["musicbrainz_trackid"] = RECORDING_ID
        ape.save(path)
    else:
        raise ValueError(f"no test tagger for {kind}")


def _tag_id3_chunk(opened: mutagen.FileType) -> None:
    path = opened.filename
    opened.tags.add(TIT2(encoding=3, text=["Song"]))
    opened.save()
    tags = opened.tags
    tags.add(TPE1(encoding=3, text=["Some Artist"]))
    tags.add(TRCK(encoding=0, text=["3/12"]))
    tags.add(TCON(encoding=3, text=["Rock", "Pop"]))
    tags.add(TBPM(encoding=0, text=["120"]))
    tags.add(TKEY(encoding=0, text=["Am"]))
    tags.add(TMOO(encoding=3, text=["Happy"]))
    tags.add(TXXX(encoding=3, desc="INSTRUMENTS", text=["piano", "drums"]))
    tags.add(UFID(owner="http://musicbrainz.org", data=RECORDING_ID.encode()))
    opened.save(path)
