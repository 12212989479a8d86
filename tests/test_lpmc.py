"""The LP-MusicCaps captioner's graphs and decoding against the official implementation's numbers
(the oracle in ../shared/reference/lp-music-caps: a tiny random-weight checkpoint in the official format)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from jamcaps_desktop.models import lpmc
from jamcaps_desktop.models.torch_checkpoint import read_checkpoint


@pytest.fixture(scope="module")
def oracle(shared_reference):
    folder = shared_reference / "lp-music-caps"
    cfg = json.loads((folder / "tiny_config.json").read_text())["bart_config"]
    weights = read_checkpoint(folder / "tiny_checkpoint.pth")["state_dict"]
    data = np.load(folder / "reference_outputs.npz")
    encoder = ort.InferenceSession(lpmc.build_encoder(weights, cfg).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(lpmc.build_decoder(weights, cfg).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return cfg, weights, data, encoder, decoder


def test_the_front_end_and_the_encoder_match(oracle):
    _cfg, weights, data, encoder, _decoder = oracle
    mel = lpmc.log_mel(data["audio"], weights["audio_encoder.mel_encoder.mel_scale.fb"])
    assert mel.shape == (3, 128, 1001)
    # float64 here, float32 in the original: a few hundredths of a dB at most, in near-silent bins
    assert np.abs(mel - data["log_mel"]).max() < 0.05
    assert np.abs(encoder.run(None, {"log_mel": data["log_mel"]})[0] - data["encoder_hidden"]).max() < 1e-4
    assert np.abs(encoder.run(None, {"log_mel": mel})[0] - data["encoder_hidden"]).max() < 1e-3


def test_the_decoder_matches_teacher_forced_and_step_logits(oracle):
    _cfg, _weights, data, _encoder, decoder = oracle
    logits = decoder.run(None, {"decoder_input_ids": data["tf_decoder_input_ids"],
                                "encoder_hidden": data["encoder_hidden"]})[0]
    assert np.abs(logits - data["tf_logits"]).max() < 1e-4
    steps = decoder.run(None, {"decoder_input_ids": data["greedy_ids"][:, :-1],
                               "encoder_hidden": data["encoder_hidden"]})[0]
    assert np.abs(steps - data["greedy_step_logits"]).max() < 1e-4


def test_greedy_and_beam_search_give_the_official_ids(oracle):
    cfg, _weights, data, _encoder, decoder = oracle
    greedy = lpmc.greedy(decoder, data["encoder_hidden"], cfg, max_length=21, min_length=2)
    assert np.array_equal(np.array(greedy), data["greedy_ids"])
    for beams, key, length in ((3, "beam3", 21), (5, "default_beam5", 128)):
        ids, scores = lpmc.beam_search(decoder, data["encoder_hidden"], cfg, num_beams=beams, max_length=length)
        expected = data[f"{key}_ids"]
        padded = [row + [cfg["pad_token_id"]] * (expected.shape[1] - len(row)) for row in ids]
        assert np.array_equal(np.array(padded), expected)
        assert np.allclose(scores, data[f"{key}_sequence_scores"], atol=1e-4)


def test_tracks_are_cut_into_chunks_as_the_original_loader_does():
    assert lpmc.chunks_of(np.ones(50000)).shape == (1, 160000)
    assert lpmc.chunks_of(np.ones(50000))[0, 50000:].max() == 0
    assert lpmc.chunks_of(np.ones(479999)).shape == (2, 160000)  # the trailing part is dropped


def _tiny_tokenizer(folder):
    """A byte-level BPE tokenizer with BART's special ids (<s> 0, <pad> 1, </s> 2, <unk> 3) and under 512
    tokens, like the tiny checkpoint's vocabulary."""
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(["a calm piano piece with soft strings", "an energetic rock song with drums"] * 20,
                                  vocab_size=300, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    tokenizer.save_model(str(folder))


def test_the_captioner_installs_with_consent_and_captions_a_track(shared_reference, models_dir, tmp_path,
                                                                  monkeypatch, library):
    from audio_fixtures import make_audio

    from jamcaps_desktop.caption.job import caption, track_caption
    from jamcaps_desktop.models import registry
    from jamcaps_desktop.models.captioner_install import Captioner
    from jamcaps_desktop.scan.scanner import scan

    folder = shared_reference / "lp-music-caps"
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "transfer.pth").write_bytes((folder / "tiny_checkpoint.pth").read_bytes())
    _tiny_tokenizer(bundle)
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    spec = json.loads((registry.manifest_dirs()[-1] / "lp-musiccaps.json").read_text())
    spec["config"] = json.loads((folder / "tiny_config.json").read_text())["bart_config"]
    spec["generation"] = {"num_beams": 3, "max_length": 12, "min_length": 2}
    (manifests / "lp-musiccaps.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JAMCAPS_MODEL_MANIFESTS", str(manifests))
    with pytest.raises(registry.ModelError, match="accept-licence"):
        registry.install("lp-musiccaps", local=bundle)
    assert not registry.is_installed("lp-musiccaps")
    registry.install("lp-musiccaps", local=bundle, accept_licence=True)
    captioner = Captioner.installed("lp-musiccaps", device="cpu")

    path = make_audio(tmp_path / "tone.flac", "flac", seconds=25.0, freq=330.0)
    scan(library, [path])
    summary = caption(library, writer="lp-musiccaps", captioner=captioner)
    assert summary.written == 1
    (track_id,) = [t for (t,) in library.conn.execute("SELECT id FROM tracks")]
    stored = track_caption(library, track_id)
    # two whole 10-s chunks (the last 5 s are dropped, as the original loader does), each captioned
    assert [(c["start_s"], c["end_s"]) for c in stored["chunks"]] == [(0.0, 10.0), (10.0, 20.0)]
    assert stored["model"] == "lp-musiccaps" and stored["text"] in [c["text"] for c in stored["chunks"]]


def test_the_cached_decoder_gives_the_same_search(oracle):
    cfg, weights, data, _encoder, _decoder = oracle
    step = ort.InferenceSession(lpmc.build_decoder_step(weights, cfg).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    cached = lpmc.CachedDecoder(step, cfg)
    greedy = lpmc.greedy(cached, data["encoder_hidden"], cfg, max_length=21, min_length=2)
    assert np.array_equal(np.array(greedy), data["greedy_ids"])
    ids, scores = lpmc.beam_search(lpmc.CachedDecoder(step, cfg), data["encoder_hidden"], cfg, num_beams=5,
                                   max_length=128)
    expected = data["default_beam5_ids"]
    padded = [row + [cfg["pad_token_id"]] * (expected.shape[1] - len(row)) for row in ids]
    assert np.array_equal(np.array(padded), expected)
    assert np.allclose(scores, data["default_beam5_sequence_scores"], atol=1e-4)


def test_the_pytorch_port_matches_the_official_numbers(oracle):
    torch = pytest.importorskip("torch")
    from jamcaps_desktop.export.lpmc_torch import LPMCPort, StepSession

    cfg, weights, data, _encoder, _decoder = oracle
    port = LPMCPort(weights, cfg)
    with torch.no_grad():
        mel = port.log_mel(torch.from_numpy(data["audio"])).numpy()
        hidden = port.encode(torch.from_numpy(data["log_mel"])).numpy()
    assert np.abs(mel - data["log_mel"]).max() < 0.05
    assert np.abs(hidden - data["encoder_hidden"]).max() < 1e-4
    cached = lpmc.CachedDecoder(StepSession(port), cfg)
    assert np.array_equal(np.array(lpmc.greedy(cached, data["encoder_hidden"], cfg, max_length=21)),
                          data["greedy_ids"])
