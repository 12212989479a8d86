"""Where each canonical field lives in each tag format.

The tables follow MusicBrainz Picard's mapping wherever Picard has the field, including its
ID3v2.3 fallback (mood as ``TXXX:mood``). Where Picard has none, one name per format is chosen
here and documented in the README:

=============  ====================  =============  ======================================  ============  =============
field          ID3                   Vorbis         MP4                                     APEv2         ASF
=============  ====================  =============  ======================================  ============  =============
instruments    TXXX:INSTRUMENTS      INSTRUMENTS    ----:com.apple.iTunes:INSTRUMENTS       Instruments   Instruments
description    TXXX:DESCRIPTION      DESCRIPTION    ----:com.apple.iTunes:DESCRIPTION       Description   (none)
vocals         TXXX:VOCALS           VOCALS         ----:com.apple.iTunes:VOCALS            Vocals        Vocals
sound          TXXX:SOUND            SOUND          ----:com.apple.iTunes:SOUND             Sound         Sound
speed          TXXX:SPEED            SPEED          ----:com.apple.iTunes:SPEED             Speed         Speed
=============  ====================  =============  ======================================  ============  =============

``vocals`` holds "Vocal" or "Instrumental", ``sound`` "Acoustic" or "Electric", ``speed`` "Slow",
"Medium" or "Fast" (the JamendoMaxCaps paper's descriptive fields).

In every table the first key of a field is the one the app writes; the others are read too, so
files written by other taggers are understood. Vorbis, APEv2, ASF and MP4 freeform names are
matched without regard to case, as Picard and mutagen do.
"""

from __future__ import annotations

MB_UFID_OWNER = "http://musicbrainz.org"
ITUNES_FREEFORM = "----:com.apple.iTunes:"

# ID3 frames that hold one canonical field each (mutagen upgrades v2.2/v2.3 frames to these).
ID3_FRAMES: dict[str, str] = {
    "TIT2": "title",
    "TPE1": "artist",
    "TALB": "album",
    "TPE2": "albumartist",
    "TDRC": "date",
    "TDOR": "originaldate",
    "TCON": "genre",
    "TMOO": "mood",
    "TBPM": "bpm",
    "TKEY": "key",
    "TLAN": "language",
    "TSRC": "isrc",
    "TCOM": "composer",
}
# TRCK/TPOS hold "n/total"; COMM with an empty description is the comment; USLT the lyrics;
# UFID owned by MusicBrainz the recording id.
ID3_NUMBER_PAIRS: dict[str, tuple[str, str]] = {
    "TRCK": ("tracknumber", "totaltracks"),
    "TPOS": ("discnumber", "totaldiscs"),
}

# TXXX descriptions, matched case-insensitively.
ID3_TXXX: dict[str, list[str]] = {
    "mood": ["mood"],  # Picard's ID3v2.3 home for mood (TMOO exists only in v2.4)
    "instruments": ["INSTRUMENTS", "INSTRUMENT"],
    "vocals": ["VOCALS"],
    "sound": ["SOUND"],
    "speed": ["SPEED"],
    "description": ["DESCRIPTION"],
    "originaldate": ["ORIGINALDATE"],
    "musicbrainz_trackid": ["MusicBrainz Release Track Id"],
    "musicbrainz_albumid": ["MusicBrainz Album Id"],
    "musicbrainz_artistid": ["MusicBrainz Artist Id"],
    "musicbrainz_albumartistid": ["MusicBrainz Album Artist Id"],
    "musicbrainz_releasegroupid": ["MusicBrainz Release Group Id"],
    "musicbrainz_workid": ["MusicBrainz Work Id"],
}

VORBIS: dict[str, list[str]] = {
    "title": ["TITLE"],
    "artist": ["ARTIST"],
    "album": ["ALBUM"],
    "albumartist": ["ALBUMARTIST", "ALBUM ARTIST"],
    "tracknumber": ["TRACKNUMBER"],
    "totaltracks": ["TOTALTRACKS", "TRACKTOTAL"],
    "discnumber": ["DISCNUMBER"],
    "totaldiscs": ["TOTALDISCS", "DISCTOTAL"],
    "date": ["DATE"],
    "originaldate": ["ORIGINALDATE"],
    "genre": ["GENRE"],
    "mood": ["MOOD"],
    "instruments": ["INSTRUMENTS", "INSTRUMENT"],
    "vocals": ["VOCALS"],
    "sound": ["SOUND"],
    "speed": ["SPEED"],
    "bpm": ["BPM"],
    "key": ["KEY", "INITIALKEY"],
    "comment": ["COMMENT"],
    "description": ["DESCRIPTION"],
    "language": ["LANGUAGE"],
    "isrc": ["ISRC"],
    "composer": ["COMPOSER"],
    "lyrics": ["LYRICS", "UNSYNCEDLYRICS"],
    "musicbrainz_recordingid": ["MUSICBRAINZ_TRACKID"],
    "musicbrainz_trackid": ["MUSICBRAINZ_RELEASETRACKID"],
    "musicbrainz_albumid": ["MUSICBRAINZ_ALBUMID"],
    "musicbrainz_artistid": ["MUSICBRAINZ_ARTISTID"],
    "musicbrainz_albumartistid": ["MUSICBRAINZ_ALBUMARTISTID"],
    "musicbrainz_releasegroupid": ["MUSICBRAINZ_RELEASEGROUPID"],
    "musicbrainz_workid": ["MUSICBRAINZ_WORKID"],
}

# MP4: plain atoms (exact, case-sensitive) ...
MP4_ATOMS: dict[str, list[str]] = {
    "title": ["©nam"],
    "artist": ["©ART"],
    "album": ["©alb"],
    "albumartist": ["aART"],
    "date": ["©day"],
    "genre": ["©gen", "gnre"],
    "bpm": ["tmpo"],
    "comment": ["©cmt"],
    "composer": ["©wrt"],
    "lyrics": ["©lyr"],
    "description": ["desc"],
}
# ... trkn/disk hold (number, total) ...
MP4_NUMBER_PAIRS: dict[str, tuple[str, str]] = {
    "trkn": ("tracknumber", "totaltracks"),
    "disk": ("discnumber", "totaldiscs"),
}
# ... and iTunes freeform atoms, named after ITUNES_FREEFORM (matched case-insensitively).
MP4_FREEFORM: dict[str, list[str]] = {
    "mood": ["MOOD"],
    "key": ["initialkey"],
    "language": ["LANGUAGE"],
    "isrc": ["ISRC"],
    "originaldate": ["originaldate"],
    "instruments": ["INSTRUMENTS"],
    "vocals": ["VOCALS"],
    "sound": ["SOUND"],
    "speed": ["SPEED"],
    "description": ["DESCRIPTION"],
    "musicbrainz_recordingid": ["MusicBrainz Track Id"],
    "musicbrainz_trackid": ["MusicBrainz Release Track Id"],
    "musicbrainz_albumid": ["MusicBrainz Album Id"],
    "musicbrainz_artistid": ["MusicBrainz Artist Id"],
    "musicbrainz_albumartistid": ["MusicBrainz Album Artist Id"],
    "musicbrainz_releasegroupid": ["MusicBrainz Release Group Id"],
    "musicbrainz_workid": ["MusicBrainz Work Id"],
}

APEV2: dict[str, list[str]] = {
    "title": ["Title"],
    "artist": ["Artist"],
    "album": ["Album"],
    "albumartist": ["Album Artist", "AlbumArtist"],
    "date": ["Year"],
    "originaldate": ["Originaldate"],
    "genre": ["Genre"],
    "mood": ["Mood"],
    "instruments": ["Instruments", "Instrument"],
    "vocals": ["Vocals"],
    "sound": ["Sound"],
    "speed": ["Speed"],
    "bpm": ["BPM"],
    "key": ["Key"],
    "comment": ["Comment"],
    "description": ["Description"],
    "language": ["Language"],
    "isrc": ["ISRC"],
    "composer": ["Composer"],
    "lyrics": ["Lyrics"],
    "musicbrainz_recordingid": ["musicbrainz_trackid"],
    "musicbrainz_trackid": ["musicbrainz_releasetrackid"],
    "musicbrainz_albumid": ["Musicbrainz_Albumid"],
    "musicbrainz_artistid": ["Musicbrainz_Artistid"],
    "musicbrainz_albumartistid": ["Musicbrainz_Albumartistid"],
    "musicbrainz_releasegroupid": ["Musicbrainz_Releasegroupid"],
    "musicbrainz_workid": ["Musicbrainz_Workid"],
}
APEV2_NUMBER_PAIRS: dict[str, tuple[str, str]] = {
    "Track": ("tracknumber", "totaltracks"),
    "Disc": ("discnumber", "totaldiscs"),
}

ASF: dict[str, list[str]] = {
    "title": ["Title"],
    "artist": ["Author"],
    "album": ["WM/AlbumTitle"],
    "albumartist": ["WM/AlbumArtist"],
    "tracknumber": ["WM/TrackNumber"],
    "date": ["WM/Year"],
    "originaldate": ["WM/OriginalReleaseTime"],
    "genre": ["WM/Genre"],
    "mood": ["WM/Mood"],
    "instruments": ["Instruments"],
    "vocals": ["Vocals"],
    "sound": ["Sound"],
    "speed": ["Speed"],
    "bpm": ["WM/BeatsPerMinute"],
    "key": ["WM/InitialKey"],
    "comment": ["Description"],
    "language": ["WM/Language"],
    "isrc": ["WM/ISRC"],
    "composer": ["WM/Composer"],
    "lyrics": ["WM/Lyrics"],
    "musicbrainz_recordingid": ["MusicBrainz/Track Id"],
    "musicbrainz_trackid": ["MusicBrainz/Release Track Id"],
    "musicbrainz_albumid": ["MusicBrainz/Album Id"],
    "musicbrainz_artistid": ["MusicBrainz/Artist Id"],
    "musicbrainz_albumartistid": ["MusicBrainz/Album Artist Id"],
    "musicbrainz_releasegroupid": ["MusicBrainz/Release Group Id"],
    "musicbrainz_workid": ["MusicBrainz/Work Id"],
}
ASF_NUMBER_PAIRS: dict[str, tuple[str, str]] = {
    "WM/PartOfSet": ("discnumber", "totaldiscs"),
}


def reverse(table: dict[str, list[str]], *, fold_case: bool) -> dict[str, str]:
    """Key → field for reading (every key of a field, not only the one written)."""
    out: dict[str, str] = {}
    for field, keys in table.items():
        for key in keys:
            out[key.casefold() if fold_case else key] = field
    return out
