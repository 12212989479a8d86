"""Tempo and key estimation: on generated music with known tempo and key, on the labelled real clips,
and the key notation shared with the tag writer."""

from __future__ import annotations

import numpy as np
import pytest
from audio_fixtures import cadence, drum_pattern
from hypothesis import given
from hypothesis import strategies as st

from jamcaps_desktop.audio.decode import decode
from jamcaps_desktop.audio.key import PitchProfile, key_of_samples
from jamcaps_desktop.audio.key import estimate as estimate_key
from jamcaps_desktop.audio.tempo import OnsetEnvelope, tempo_of_samples
from jamcaps_desktop.tags.keys import MAJOR_NAMES, MINOR_NAMES, key_name, key_parts, parse_key

RATE = 16000


@pytest.mark.parametrize("bpm", [90.0, 97.5, 110.5, 123.4, 135.7])
def test_tempo_of_a_beat_with_decimals(bpm):
    tempo = tempo_of_samples(drum_pattern(bpm, 30.0, rate=RATE))
    assert tempo is not None
    assert tempo.bpm == pytest.approx(bpm, abs=0.3)
    assert 0.0 < tempo.confidence <= 1.0


def test_tempo_is_the_same_however_the_audio_is_streamed():
    signal = drum_pattern(128.0, 20.0, rate=RATE)
    whole = OnsetEnvelope()
    whole.feed(signal)
    pieces = OnsetEnvelope()
    rng = np.random.default_rng(1)
    start = 0
    while start < len(signal):
        size = int(rng.integers(1, 5000))
        pieces.feed(signal[start:start + size])
        start += size
    assert np.allclose(whole.envelope(), pieces.envelope(), atol=1e-5)


def test_no_tempo_for_silence_or_a_blip():
    assert tempo_of_samples(np.zeros(RATE * 20, dtype=np.float32)) is None
    assert tempo_of_samples(drum_pattern(120.0, 2.0, rate=RATE)) is None  # too short to say


@pytest.mark.parametrize("minor", [False, True])
def test_key_of_a_cadence_in_every_key(minor):
    for tonic in range(12):
        key = key_of_samples(cadence(tonic, minor, 12.0, rate=RATE))
        assert key is not None and key.name == key_name(tonic, minor), (tonic, minor, key)
        assert 0.35 <= key.confidence <= 1.0


def test_key_is_the_same_however_the_audio_is_streamed():
    signal = cadence(6, True, 10.0, rate=RATE)
    pitches = PitchProfile()
    for start in range(0, len(signal), 3001):
        pitches.feed(signal[start:start + 3001])
    key = estimate_key(pitches.profile(), pitches.frames)
    assert key is not None and key.name == "F#m"


def test_no_key_for_silence_noise_or_drums():
    rng = np.random.default_rng(0)
    assert key_of_samples(np.zeros(RATE * 10, dtype=np.float32)) is None
    assert key_of_samples((0.1 * rng.standard_normal(RATE * 10)).astype(np.float32)) is None
    assert key_of_samples(cadence(0, False, 1.0, rate=RATE)) is None  # one second is too little


# -- labelled real clips (their labels: the pack's attribution text, a file name, or the score) --------

LABELLED_KEYS = [
    ("librosa/sorohanro_-_solo-trumpet-06.hq.ogg", "F"),  # "Jazz Trumpet Loops Pack in F" (Dorian/blues: F minor)
    ("librosa/Kevin_MacLeod_-_P_I_Tchaikovsky_Dance_of_the_Sugar_Plum_Fairy.hq.ogg", "Em"),  # as written
    ("sonic-pi/guit_em9.flac", "Em"),
    ("sonic-pi/loop_drone_g_97.flac", "G"),
    ("sonic-pi/bass_thick_c.flac", "C"),
    ("sonic-pi/bass_trance_c.flac", "C"),
    ("sonic-pi/bass_voxy_c.flac", "C"),
    ("sonic-pi/bass_woodsy_c.flac", "C"),
]


@pytest.mark.parametrize(("name", "label"), LABELLED_KEYS)
def test_key_tonic_of_labelled_real_clips(shared_corpus, name, label):
    key = key_of_samples(decode(str(shared_corpus / "audio" / name), RATE))
    assert key is not None
    expected = key_parts(label)
    assert expected is not None and key.tonic == expected[0], key
    if label.endswith("m"):
        assert key.minor


def test_tempo_of_a_real_break(shared_corpus):
    # Sonic Pi's loop_amen_full is four bars of the Amen break: 16 beats in 6.9 s
    path = shared_corpus / "audio" / "sonic-pi" / "loop_amen_full.flac"
    samples = decode(str(path), RATE)
    expected = 16 * 60 / (len(samples) / RATE)
    tempo = tempo_of_samples(samples)
    assert tempo is not None and tempo.bpm == pytest.approx(expected, rel=0.02)


# -- notation -----------------------------------------------------------------------------------

@given(st.integers(0, 11), st.booleans())
def test_every_key_name_parses_to_itself(tonic, minor):
    name = key_name(tonic, minor)
    assert parse_key(name) == name
    assert key_parts(name) == (tonic, minor)
    assert len(name) <= 3  # TKEY allows three characters


@pytest.mark.parametrize(("text", "canonical"), [
    ("F# minor", "F#m"), ("Gbm", "F#m"), ("gb minor", "F#m"), ("A min", "Am"), ("a", "Am"), ("Bb", "Bb"),
    ("B♭", "Bb"), ("A#", "Bb"), ("D#m", "Ebm"), ("Gb", "F#"), ("C major", "C"), ("Db", "Db"), ("C#", "Db"),
    ("Camelot 8A", "Am"), ("8B", "C"), ("9B", "G"), ("12A", "C#m"), ("Open Key 1d", "C"), ("1m", "Am"),
    ("o", "o"), ("E-flat", "Eb"), ("f sharp minor", "F#m"),
])
def test_key_spellings_people_write(text, canonical):
    assert parse_key(text) == canonical


@pytest.mark.parametrize("text", ["", "H", "Cm7", "13A", "key of C", "120"])
def test_text_that_is_no_key(text):
    assert parse_key(text) is None


@given(st.text(max_size=12))
def test_parsing_anything_gives_a_canonical_key_or_none(text):
    result = parse_key(text)
    assert result is None or result == "o" or result in MAJOR_NAMES or result in MINOR_NAMES
