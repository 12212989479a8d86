"""Front ends named by model manifests, the streaming windower, and an encoder that is not musicnn going
through the same analysis with nothing but a manifest."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jamcaps_desktop.audio.decode import decode
from jamcaps_desktop.audio.features import beats_fbank, kaldi_mel_banks
from jamcaps_desktop.audio.frontends import UnknownFrontEnd, Windower, input_spec


@given(st.lists(st.integers(0, 700), max_size=30), st.integers(1, 400))
def test_windows_cover_the_stream_in_order(sizes, window):
    stream = np.arange(sum(sizes), dtype=np.float32) + 1
    windower = Windower(window)
    out, start = [], 0
    for size in sizes:
        out += windower.feed(stream[start:start + size])
        start += size
    whole = len(stream) // window
    tail = windower.finish()
    assert len(out) == whole and all(len(w) == window for w in out + tail)
    if whole:
        assert np.array_equal(np.concatenate(out), stream[: whole * window])
    rest = len(stream) - whole * window
    expect_tail = rest > 0 and (whole == 0 or rest >= window // 2)
    assert len(tail) == int(expect_tail)
    if expect_tail:
        assert np.array_equal(tail[0][:rest], stream[whole * window:]) and not tail[0][rest:].any()


def test_manifest_inputs_are_checked():
    spec = input_spec({"front_end": "kaldi-fbank-128", "sample_rate": 16000, "window_s": 10.0})
    assert spec.window_samples == 160000 and spec.frames is None
    with pytest.raises(UnknownFrontEnd, match="not available"):
        input_spec({"front_end": "cqt", "window_s": 1.0})
    with pytest.raises(UnknownFrontEnd, match="16000 Hz"):
        input_spec({"front_end": "musicnn-logmel", "sample_rate": 22050, "window_s": 3.0})


def test_beats_fbank_matches_the_official_one(shared_reference):
    data = np.load(shared_reference / "beats" / "reference_outputs.npz")
    assert np.abs(kaldi_mel_banks() - data["kaldi_mel_banks"]).max() < 1e-4
    for name in ("synth", "clip", "short"):
        for waveform, expected in zip(data[f"{name}_waveform"], data[f"{name}_fbank"], strict=True):
            ours = beats_fbank(waveform)
            assert ours.shape == expected.shape
            assert np.abs(ours - expected).max() < 1e-3, name


def _tiny_fbank_model(folder, rng):
    """A small encoder on BEATs' front end: per-frame tokens [B, T, 8] and 3 label probabilities."""
    from onnx import TensorProto, helper, numpy_helper

    w_tokens = rng.standard_normal((128, 8)).astype(np.float32) * 0.1
    w_labels = rng.standard_normal((8, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["fbank", "w_tokens"], ["tokens"]),
         helper.make_node("ReduceMean", ["tokens", "axes"], ["pooled"], keepdims=0),
         helper.make_node("MatMul", ["pooled", "w_labels"], ["logits"]),
         helper.make_node("Sigmoid", ["logits"], ["probs"])],
        "tiny",
        [helper.make_tensor_value_info("fbank", TensorProto.FLOAT, ["batch", "time", 128])],
        [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["batch", "time", 8]),
         helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w_tokens, "w_tokens"), numpy_helper.from_array(w_labels, "w_labels"),
         numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    folder.mkdir(parents=True)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    manifest = {"name": "tiny-fbank", "version": "1", "licence": "MIT",
                "input": {"name": "fbank", "sample_rate": 16000, "front_end": "kaldi-fbank-128", "window_s": 2.0},
                "outputs": {"labels": "probs", "embedding": "tokens"}}
    record = {"manifest": manifest, "file": "model.onnx", "labels": ["a", "b", "c"],
              "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    (folder / "installed.json").write_text(json.dumps(record))
    return w_tokens, w_labels


def test_an_fbank_encoder_runs_through_the_analysis_with_only_a_manifest(models_dir, library, tmp_path):
    from audio_fixtures import make_audio

    from jamcaps_desktop.analysis.analyze import analyze, track_analyses
    from jamcaps_desktop.library.queries import find_track
    from jamcaps_desktop.scan.scanner import scan

    w_tokens, w_labels = _tiny_fbank_model(models_dir / "tiny-fbank", np.random.default_rng(3))
    path = make_audio(tmp_path / "tone.flac", "flac", seconds=5.0, freq=330.0)
    scan(library, [path])
    summary = analyze(library, models=["tiny-fbank"], device="cpu")
    assert summary.analysed == 1
    (analysis,) = track_analyses(library, find_track(library, str(path))["id"])
    assert analysis["status"] == "ok" and analysis["windows"] == 3  # 2 s, 2 s, and a 1 s tail padded

    # the same numbers computed by hand: windows of 2 s, fbank, the tiny network, means over windows
    samples = decode(str(path), 16000)
    windows = [samples[i:i + 32000] for i in range(0, len(samples), 32000)]
    windows = [np.pad(w, (0, 32000 - len(w))) for w in windows]
    tokens = [beats_fbank(w) @ w_tokens for w in windows]
    probs = np.mean([1 / (1 + np.exp(-(t.mean(axis=0) @ w_labels))) for t in tokens], axis=0)
    labels = dict(analysis["labels"])
    assert np.allclose([labels["a"], labels["b"], labels["c"]], probs, atol=1e-4)
    embedding = np.mean([t.mean(axis=0) for t in tokens], axis=0)
    (blob,) = library.conn.execute("SELECT embedding FROM analyses").fetchone()
    assert np.allclose(np.frombuffer(blob, dtype=np.float32), embedding / np.linalg.norm(embedding), atol=1e-4)
