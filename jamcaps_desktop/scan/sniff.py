"""Recognise audio files by their content, not their name.

``sniff`` looks at the first bytes of a file (past a leading ID3v2 tag, which any format may carry
by accident) and names the container. For files that are not audio it names what they look like,
so that the user reads "a JPEG image", not "unsupported".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEAD_BYTES = 4096


@dataclass(frozen=True)
class Sniffed:
    container: str | None      # None when the content is not a supported audio container
    codec: str | None = None   # a codec guess the header alone gives (refined later)
    what: str | None = None    # for non-audio content: what it looks like


_OGG_CODECS = (
    (b"\x01vorbis", "vorbis"),
    (b"OpusHead", "opus"),
    (b"\x7fFLAC", "flac"),
    (b"Speex   ", "speex"),
    (b"fishead\x00", None),
)

_NOT_AUDIO_MAGIC = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"MThd", "a MIDI sequence (no recorded audio)"),
    (b"\x7fELF", "a program"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"BM", "a BMP image"),
    (b"SQLite format 3", "an SQLite database"),
    (b"\x1aE\xdf\xa3", None),  # Matroska/WebM: may hold audio, handled below
)

ASF_GUID = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")
_ADTS_SAMPLE_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)


def id3v2_size(head: bytes) -> int:
    """Length in bytes of a leading ID3v2 tag (0 when there is none)."""
    if len(head) < 10 or head[:3] != b"ID3" or head[3] == 0xFF or head[4] == 0xFF:
        return 0
    size_bytes = head[6:10]
    if any(b & 0x80 for b in size_bytes):
        return 0
    size = (size_bytes[0] << 21) | (size_bytes[1] << 14) | (size_bytes[2] << 7) | size_bytes[3]
    footer = 10 if head[5] & 0x10 else 0
    return 10 + size + footer


_MPEG_BITRATES = {
    (1, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (1, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (1, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (2, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (2, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (2, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MPEG_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def _mpeg_frame(head: bytes) -> tuple[Sniffed, int | None] | None:
    """Parse an MPEG audio (layer I/II/III) or ADTS AAC frame header: (kind, frame length or None)."""
    if len(head) < 4 or head[0] != 0xFF or (head[1] & 0xE0) != 0xE0:
        return None
    version_bits = (head[1] >> 3) & 0x3
    layer_bits = (head[1] >> 1) & 0x3
    if layer_bits == 0:
        # ADTS: sync 0xFFF, layer bits 00; the frame length is in the header
        if (head[1] & 0xF0) != 0xF0 or ((head[2] >> 2) & 0xF) >= len(_ADTS_SAMPLE_RATES) or len(head) < 6:
            return None
        length = ((head[3] & 0x3) << 11) | (head[4] << 3) | (head[5] >> 5)
        return (Sniffed("aac", "aac"), length) if length >= 7 else None
    if version_bits == 1:  # reserved
        return None
    bitrate_index = head[2] >> 4
    rate_index = (head[2] >> 2) & 0x3
    if bitrate_index == 0xF or rate_index == 0x3:
        return None
    layer = 4 - layer_bits
    codec = f"mp{layer}"
    kind = Sniffed("mp3" if layer == 3 else "mpeg", codec)
    if bitrate_index == 0:  # free format: the length is unknown
        return kind, None
    mpeg1 = version_bits == 3
    bitrate = _MPEG_BITRATES[(1 if mpeg1 else 2, layer)][bitrate_index] * 1000
    rate = _MPEG_RATES[version_bits][rate_index]
    padding = (head[2] >> 1) & 1
    if layer == 1:
        length = (12 * bitrate // rate + padding) * 4
    elif layer == 3 and not mpeg1:
        length = 72 * bitrate // rate + padding
    else:
        length = 144 * bitrate // rate + padding
    return kind, length


def _mpeg_audio(data: bytes, at: int = 0, frames: int = 2) -> Sniffed | None:
    """MPEG audio or ADTS at ``data[at:]``, confirmed by the following frame headers the data reaches.

    One four-byte header alone is too easy to meet by chance (a UTF-16 text file starts with FF FE),
    so ``frames`` consecutive headers must chain, each where the previous frame's length says.
    """
    kind: Sniffed | None = None
    position = at
    for _ in range(frames):
        parsed = _mpeg_frame(data[position:position + 6])
        if parsed is None or (kind is not None and parsed[0].container != kind.container):
            return None
        kind, length = parsed
        if length is None or position + length + 4 > len(data):
            # the data ends first: accept only what fits a tiny file, never a guess inside a big one
            return kind if position > at or len(data) - at < 4096 else None
        position += length
    return kind


def _find_mpeg_sync(data: bytes, limit: int = 2048) -> Sniffed | None:
    """MP3 files sometimes start with junk; look for two consecutive plausible frame headers."""
    pos = data.find(b"\xff", 0, limit)
    while 0 <= pos < limit:
        found = _mpeg_audio(data, pos, frames=3)
        if found is not None and found.container in ("mp3", "mpeg"):
            return found
        pos = data.find(b"\xff", pos + 1, limit)
    return None


def _riff(head: bytes) -> Sniffed:
    kind = head[8:12]
    if kind == b"WAVE":
        return Sniffed("wav", _wav_codec(head))
    if kind == b"AVI ":
        return Sniffed(None, what="an AVI video")
    if kind == b"WEBP":
        return Sniffed(None, what="a WebP image")
    return Sniffed(None, what=f"a RIFF file of type {kind.decode('latin-1')!r}")


_WAV_FORMATS = {1: "pcm", 3: "pcm_float", 0x50: "mp2", 0x55: "mp3", 6: "alaw", 7: "mulaw", 2: "adpcm_ms",
                0x11: "adpcm_ima", 0x2000: "ac3", 0xFFFE: "pcm"}


def _wav_codec(head: bytes) -> str | None:
    pos = 12
    while pos + 8 <= len(head):
        chunk_id = head[pos:pos + 4]
        (size,) = struct.unpack_from("<I", head, pos + 4)
        if chunk_id == b"fmt " and pos + 24 <= len(head):
            fmt_tag, _channels, _rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", head, pos + 8)
            codec = _WAV_FORMATS.get(fmt_tag, f"wav_format_0x{fmt_tag:04x}")
            if codec == "pcm" and bits:
                return f"pcm_s{bits}le" if bits > 8 else "pcm_u8"
            if codec == "pcm_float" and bits:
                return f"pcm_f{bits}le"
            return codec
        pos += 8 + size + (size & 1)
    return None


def _iff(head: bytes) -> Sniffed:
    kind = head[8:12]
    if kind == b"AIFF":
        return Sniffed("aiff", "pcm")
    if kind == b"AIFC":
        return Sniffed("aiff", None)
    return Sniffed(None, what=f"an IFF file of type {kind.decode('latin-1')!r}")


def sniff_bytes(head: bytes) -> Sniffed:
    """Name the container of a file whose first bytes are ``head``."""
    if not head:
        return Sniffed(None, what="an empty file")
    skip = id3v2_size(head)
    body = head[skip:] if skip else head
    if skip and len(body) < 4:
        # The ID3 tag is longer than what we read; the caller re-reads past it.
        return Sniffed("id3-prefixed", None)
    if body[:4] == b"fLaC":
        return Sniffed("flac", "flac")
    if body[:4] == b"OggS":
        segments = body[26] if len(body) > 26 else 0
        payload = body[27 + segments:27 + segments + 8]
        for magic, codec in _OGG_CODECS:
            if payload.startswith(magic):
                if codec is None:
                    break
                return Sniffed("ogg", codec)
        if payload.startswith(b"\x80theora"):
            return Sniffed(None, what="an Ogg Theora video")
        return Sniffed("ogg", None)
    if body[:4] == b"RIFF" and len(body) >= 12:
        return _riff(body)
    if body[:4] == b"RF64" and body[8:12] == b"WAVE":
        return Sniffed("wav", _wav_codec(body))
    if body[:4] == b"FORM" and len(body) >= 12:
        return _iff(body)
    if body[4:8] == b"ftyp":
        return Sniffed("mp4", None)  # the codec (AAC, ALAC…) is read from the sample description later
    if body[:16] == ASF_GUID:
        return Sniffed("asf", None)
    if body[:4] == b"MAC ":
        return Sniffed("ape", "ape")
    if body[:4] == b"wvpk":
        return Sniffed("wavpack", "wavpack")
    if body[:4] == b"MPCK":
        return Sniffed("musepack", "musepack_sv8")
    if body[:3] == b"MP+":
        return Sniffed("musepack", "musepack_sv7")
    if body[:4] == b"DSD ":
        return Sniffed("dsf", "dsd")
    if body[:4] == b"FRM8":
        return Sniffed("dff", "dsd")
    if body[:4] == b"TTA1":
        return Sniffed("tta", "tta")
    if body[:4] == b"tBaK":
        return Sniffed("tak", "tak")
    if body[:4] == b"OFR ":
        return Sniffed("optimfrog", "optimfrog")
    if body[:2] == b"\x0b\x77":
        return Sniffed("ac3", "ac3")
    if body[:4] == b"\x1aE\xdf\xa3":
        return Sniffed(None, what="a Matroska/WebM file")
    for magic, what in _NOT_AUDIO_MAGIC:
        if what and body.startswith(magic):
            return Sniffed(None, what=what)
    mpeg = _mpeg_audio(body)
    if mpeg is not None:
        return mpeg
    # MP3 frames may start after padding or junk (behind an ID3 tag or not); two confirmed
    # consecutive frame headers are needed, so text and binaries are not taken for audio.
    mpeg = _find_mpeg_sync(body)
    if mpeg is not None:
        return mpeg
    return Sniffed(None, what=_describe_unknown(body))


def _describe_unknown(body: bytes) -> str:
    sample = body[:512]
    if sample.lstrip().startswith((b"<?xml", b"<!DOCTYPE", b"<html", b"<HTML")):
        return "an XML or HTML document"
    if sample.lstrip().startswith((b"{", b"[")):
        return "a text file (JSON?)"
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        try:
            text = sample.decode("utf-16")
        except UnicodeDecodeError:
            return "an unrecognised binary file"
    if text and sum(ch.isprintable() or ch in "\r\n\t" for ch in text) / len(text) > 0.95:
        return "a text file"
    return "an unrecognised binary file"


def sniff_file(fileobj) -> Sniffed:  # type: ignore[no-untyped-def]
    """Sniff an open binary file, reading past a long ID3v2 tag when there is one."""
    head = fileobj.read(HEAD_BYTES)
    skip = id3v2_size(head)
    if skip and skip + 64 > len(head):
        fileobj.seek(skip)
        rest = fileobj.read(HEAD_BYTES)
        if not rest:
            return Sniffed(None, what="an ID3 tag with no audio after it")
        found = sniff_bytes(rest)
        if found.container is None and found.what and "unrecognised" in found.what:
            mpeg = _find_mpeg_sync(rest)
            if mpeg is not None:
                return mpeg
        return found
    return sniff_bytes(head)
