"""Tempo and key accuracy on labelled audio: generated music with known tempo and key, and the labelled
real clips of the shared corpus when it is present beside the checkout.

    python benchmarks/tempo_key_accuracy.py [--corpus ../shared/corpus]

Tempo counts as right within 4 % of the label; halves, doubles, thirds and triples of it (octave and
metre errors, the usual failure of tempo estimators) are counted apart. Key counts as right when tonic
and mode match; a right tonic in the wrong mode, the relative key, and a fifth away are counted apart.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from audio_fixtures import cadence, drum_pattern

from jamcaps_desktop.audio.decode import decode
from jamcaps_desktop.audio.key import key_of_samples
from jamcaps_desktop.audio.tempo import tempo_of_samples
from jamcaps_desktop.tags.keys import key_name, key_parts

RATE = 16000

# (file under the corpus, label, where the label comes from)
REAL_TEMPI = [
    ("audio/librosa/sorohanro_-_solo-trumpet-06.hq.ogg", 90.0, "the pack's attribution: 90 bpm"),
    ("audio/sonic-pi/loop_amen_full.flac", None, "four bars of the Amen break: 16 beats over the clip"),
    ("audio/sonic-pi/loop_drone_g_97.flac", 97.0, "the file name"),
]
REAL_KEYS = [
    ("audio/librosa/sorohanro_-_solo-trumpet-06.hq.ogg", "F", "the pack's attribution: in F (blues/Dorian)"),
    ("audio/librosa/Kevin_MacLeod_-_P_I_Tchaikovsky_Dance_of_the_Sugar_Plum_Fairy.hq.ogg", "Em", "the score"),
    ("audio/librosa/Hungarian_Dance_number_5_-_Allegro_in_F_sharp_minor_(string_orchestra).hq.ogg", "F#m",
     "the title (Brahms' original key; orchestral arrangements are often in G minor)"),
    ("audio/sonic-pi/guit_em9.flac", "Em", "the file name"),
    ("audio/sonic-pi/guit_e_fifths.flac", "E", "the file name (power chords: no third, mode undefined)"),
    ("audio/sonic-pi/loop_drone_g_97.flac", "G", "the file name"),
    *[(f"audio/sonic-pi/bass_{name}_c.flac", "C", "the file name (one bass note)")
      for name in ("drop", "hard", "hit", "thick", "trance", "voxy", "woodsy")],
    ("audio/sonic-pi/glitch_bass_g.flac", "G", "the file name (one bass note)"),
    ("audio/sonic-pi/bass_dnb_f.flac", "F", "the file name (one bass note)"),
]


def tempo_verdict(estimate: float | None, label: float) -> str:
    if estimate is None:
        return "no tempo"
    ratio = estimate / label
    if abs(ratio - 1) <= 0.04:
        return "right"
    for factor, name in ((2, "double"), (0.5, "half"), (3, "triple"), (1 / 3, "third"), (1.5, "3/2"),
                         (2 / 3, "2/3")):
        if abs(ratio / factor - 1) <= 0.04:
            return f"octave/metre error ({name})"
    return "wrong"


def key_verdict(estimate: str | None, label: str, mode_defined: bool = True) -> str:
    if estimate is None:
        return "no key"
    got, want = key_parts(estimate), key_parts(label)
    assert got is not None and want is not None
    if got[0] == want[0] and (got[1] == want[1] or not mode_defined):
        return "right"
    if got[0] == want[0]:
        return "right tonic, wrong mode"
    relative = (want[0] + (3 if want[1] else -3)) % 12
    if got[1] != want[1] and got[0] == relative:
        return "relative key"
    if got[1] == want[1] and (got[0] - want[0]) % 12 in (5, 7):
        return "a fifth away"
    return "wrong"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpus")
    args = parser.parse_args()

    tempi = [60.0 + 5.37 * i for i in range(23)]  # 60 … 178 BPM, decimals
    verdicts: Counter[str] = Counter()
    errors = []
    by_tempo: list[str] = []
    for index, bpm in enumerate(tempi):
        chords = cadence(index % 12, False, 30.0, RATE, chord_s=4 * 60 / bpm)  # a chord a bar
        music = 0.7 * drum_pattern(bpm, 30.0, rate=RATE, seed=index) + 0.3 * chords
        tempo = tempo_of_samples(music.astype(np.float32))
        verdict = tempo_verdict(tempo.bpm if tempo else None, bpm)
        by_tempo.append(f"{bpm:.1f}→{tempo.bpm if tempo else None}")
        verdicts[verdict] += 1
        if verdict == "right" and tempo:
            errors.append(abs(tempo.bpm - bpm))
    print(f"Generated beats, {len(tempi)} tempi from 60 to 178 BPM: {dict(verdicts)}; "
          f"mean absolute error where right: {np.mean(errors):.2f} BPM\n  {', '.join(by_tempo)}")

    verdicts = Counter()
    for minor in (False, True):
        for tonic in range(12):
            music = 0.6 * cadence(tonic, minor, 20.0, RATE) + 0.4 * drum_pattern(100.0, 20.0, rate=RATE, seed=tonic)
            key = key_of_samples(music.astype(np.float32))
            verdicts[key_verdict(key.name if key else None, key_name(tonic, minor))] += 1
    print(f"Generated cadences over drums, 24 keys: {dict(verdicts)}")

    if not args.corpus.is_dir():
        print(f"(no corpus at {args.corpus}: labelled real clips skipped)")
        return
    print("\nLabelled real clips — tempo")
    for name, label, source in REAL_TEMPI:
        samples = decode(str(args.corpus / name), RATE)
        label = label or 16 * 60 / (len(samples) / RATE)
        tempo = tempo_of_samples(samples)
        shown = f"{tempo.bpm:.2f} (confidence {tempo.confidence:.2f})" if tempo else "none"
        verdict = tempo_verdict(tempo.bpm if tempo else None, label)
        print(f"  {Path(name).name:<44} label {label:6.2f}  got {shown:<26} {verdict}  [{source}]")
    print("\nLabelled real clips — key")
    for name, label, source in REAL_KEYS:
        key = key_of_samples(decode(str(args.corpus / name), RATE))
        shown = f"{key.name} ({key.confidence:.2f})" if key else "none"
        verdict = key_verdict(key.name if key else None, label, mode_defined="power chords" not in source
                              and "one bass note" not in source)
        print(f"  {Path(name).name:<44} label {label:<4} got {shown:<12} {verdict}  [{source}]")


if __name__ == "__main__":
    main()
