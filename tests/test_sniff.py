from __future__ import annotations

import io

from hypothesis import given
from hypothesis import strategies as st

from jamcaps_desktop.scan.sniff import sniff_bytes, sniff_file


@given(st.binary(max_size=4096))
def test_sniff_never_raises_on_arbitrary_bytes(data):
    result = sniff_bytes(data)
    assert (result.container is None) == (result.what is not None) or result.container is not None


@given(st.binary(max_size=600))
def test_sniff_file_never_raises_with_an_id3_prefix(data):
    header = b"ID3\x04\x00\x00\x00\x00\x02\x00"  # a 256-byte tag
    result = sniff_file(io.BytesIO(header + data))
    assert result.container is not None or result.what


def test_recognises_containers_by_magic():
    cases = {
        b"fLaC\x00\x00\x00\x22": "flac",
        b"MAC \x96\x0f\x00\x00": "ape",
        b"wvpk\x00\x00\x00\x00": "wavpack",
        b"MPCK\x00\x00": "musepack",
        b"MP+\x17\x00": "musepack",
        b"DSD \x1c\x00\x00\x00": "dsf",
        b"\x00\x00\x00\x20ftypM4A ": "mp4",
        b"RIFF\x00\x00\x00\x00WAVEfmt ": "wav",
        b"FORM\x00\x00\x00\x00AIFF": "aiff",
        bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c"): "asf",
        b"\xff\xfb\x90\x00": "mp3",
    }
    for head, container in cases.items():
        assert sniff_bytes(head + b"\x00" * 64).container == container, head


def test_names_what_non_audio_content_is():
    assert "JPEG" in sniff_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 32).what
    assert "PNG" in sniff_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32).what
    assert "text" in sniff_bytes(b"hello, this is a readme\n").what
    assert "empty" in sniff_bytes(b"").what
    assert sniff_bytes(b"MThd\x00\x00\x00\x06").container is None


def test_content_wins_over_extension(make_track, tmp_path):
    mp3 = make_track(tmp_path, "mp3")
    disguised = tmp_path / "really-an-mp3.flac"
    disguised.write_bytes(mp3.read_bytes())
    with open(disguised, "rb") as handle:
        assert sniff_file(handle).container == "mp3"


def test_long_id3_tag_before_flac_is_skipped():
    tag_size = 10000
    size = bytes([(tag_size >> 21) & 0x7F, (tag_size >> 14) & 0x7F, (tag_size >> 7) & 0x7F, tag_size & 0x7F])
    data = b"ID3\x03\x00\x00" + size + b"\x00" * tag_size + b"fLaC" + b"\x00" * 64
    assert sniff_file(io.BytesIO(data)).container == "flac"


def test_utf16_text_is_not_mistaken_for_mpeg_audio():
    text = "\ufeffExact Audio Copy V1.0 log file\r\n".encode("utf-16-le") * 40
    assert text[:2] == b"\xff\xfe"
    assert sniff_bytes(text).container is None


def test_mpeg_frames_are_confirmed_by_the_next_header(make_track, tmp_path):
    data = make_track(tmp_path, "mp3").read_bytes()
    from jamcaps_desktop.scan.sniff import id3v2_size

    audio = data[id3v2_size(data):]
    assert sniff_bytes(audio[:4096]).container == "mp3"
    assert sniff_bytes(b"junk!" * 10 + audio[:4000]).container == "mp3"  # junk before the first frame
