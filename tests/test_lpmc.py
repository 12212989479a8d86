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
