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


@pytest.fixture
def tiny_install(shared_reference, models_dir, tmp_path, monkeypatch):
    """The oracle's tiny checkpoint in a folder with a tiny tokenizer, and a manifest for it."""
    from jamcaps_desktop.models import registry

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
    return bundle


def test_the_captioner_installs_with_consent_and_captions_a_track(tiny_install, tmp_path, library):
    from audio_fixtures import make_audio

    from jamcaps_desktop.caption.job import caption, track_caption
    from jamcaps_desktop.models import registry
    from jamcaps_desktop.models.captioner_install import Captioner
    from jamcaps_desktop.scan.scanner import scan

    with pytest.raises(registry.ModelError, match="accept-licence"):
        registry.install("lp-musiccaps", local=tiny_install)
    assert not registry.is_installed("lp-musiccaps")
    registry.install("lp-musiccaps", local=tiny_install, accept_licence=True)
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


def test_chunks_of_several_tracks_share_batches_and_a_bad_file_is_only_reported(tiny_install, tmp_path, library):
    """Batches of 4 chunks span tracks of 1, 3 and 2 chunks: each track gets what it gets alone; a file
    that no longer decodes gets a reason, and the tracks after it are captioned."""
    from audio_fixtures import make_audio

    from jamcaps_desktop.audio.decode import iter_samples
    from jamcaps_desktop.caption.job import caption, track_caption
    from jamcaps_desktop.models import registry
    from jamcaps_desktop.models.captioner_install import Captioner
    from jamcaps_desktop.scan.scanner import scan

    registry.install("lp-musiccaps", local=tiny_install, accept_licence=True)
    captioner = Captioner.installed("lp-musiccaps", device="cpu")
    captioner.batch = 4
    paths = [make_audio(tmp_path / f"t{i}.{fmt}", fmt, seconds=seconds, freq=freq)
             for i, (fmt, seconds, freq) in enumerate([("mp3", 6.0, 220.0), ("flac", 31.0, 330.0),
                                                       ("flac", 12.0, 440.0), ("mp3", 21.0, 550.0)])]
    scan(library, paths)
    paths[2].write_bytes(b"\0" * 4096)  # damaged behind the library's back
    summary = caption(library, writer="lp-musiccaps", captioner=captioner)
    assert summary.written == 3 and len(summary.reasons) == 1 and "track" in summary.reasons[0]
    for path in (paths[0], paths[1], paths[3]):
        (track_id,) = library.conn.execute("SELECT id FROM tracks WHERE path = ?", (str(path),)).fetchone()
        alone = captioner.caption_chunks(np.concatenate(list(iter_samples(str(path), 16000))), batch=1)
        stored = track_caption(library, track_id)["chunks"]
        assert [(c["start_s"], c["end_s"], c["text"]) for c in stored] == alone


def test_tracks_are_decoded_in_order_by_worker_processes(tmp_path):
    from audio_fixtures import make_audio

    from jamcaps_desktop.caption.job import _decode_track
    from jamcaps_desktop.jobs.base import CancelToken
    from jamcaps_desktop.jobs.workers import in_order

    paths = [make_audio(tmp_path / f"t{i}.flac", "flac", seconds=1.0 + i) for i in range(5)]
    (tmp_path / "bad.mp3").write_bytes(b"not audio at all" * 100)
    order = [str(p) for p in paths[:2]] + [str(tmp_path / "bad.mp3")] + [str(p) for p in paths[2:]]
    results = list(in_order(_decode_track, order, 2, CancelToken(), ahead=4, crashed=lambda _p: "crashed"))
    assert isinstance(results[2], str)
    lengths = [len(r) for i, r in enumerate(results) if i != 2]
    assert lengths == [16000 * (1 + i) for i in range(5)]


def _padded(ids, expected, pad):
    return np.array([row + [pad] * (expected.shape[1] - len(row)) for row in ids])


def _onnx_steps(weights, cfg, half):
    from jamcaps_desktop.models import lpmc_search

    def session(graph):
        return ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])

    return lpmc_search.OnnxSteps(session(lpmc_search.build_cross_cache(weights, cfg, half=half)),
                                 session(lpmc_search.build_search_step(weights, cfg, half=half)), cfg)


def _check_search(steps, cfg, data, score_tolerance):
    """Greedy (one beam), three beams and the default five give the official ids and scores."""
    from jamcaps_desktop.models.lpmc_search import search

    greedy, _ = search(steps, data["encoder_hidden"], cfg, num_beams=1, max_length=21)
    assert np.array_equal(_padded(greedy, data["greedy_ids"], cfg["pad_token_id"]), data["greedy_ids"])
    for beams, key, length in ((3, "beam3", 21), (5, "default_beam5", 128)):
        ids, scores = search(steps, data["encoder_hidden"], cfg, num_beams=beams, max_length=length)
        expected = data[f"{key}_ids"]
        assert np.array_equal(_padded(ids, expected, cfg["pad_token_id"]), expected)
        assert np.allclose(scores, data[f"{key}_sequence_scores"], atol=score_tolerance)


@pytest.mark.parametrize("half", [False, True], ids=["float32", "float16"])
def test_the_search_graphs_give_the_official_ids(oracle, half):
    cfg, weights, data, _encoder, _decoder = oracle
    # float16 inside: the same ids, scores within a few ten-thousandths
    _check_search(_onnx_steps(weights, cfg, half), cfg, data, 1e-3 if half else 1e-5)


TINY = {"d_model": 16, "encoder_layers": 1, "decoder_layers": 2, "encoder_attention_heads": 2,
        "decoder_attention_heads": 2, "vocab_size": 24, "bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2,
        "decoder_start_token_id": 2, "forced_bos_token_id": 0, "forced_eos_token_id": 2, "no_repeat_ngram_size": 3}


@pytest.mark.parametrize("forced_bos", [True, False], ids=["forced-bos", "free-start"])
def test_the_search_graphs_follow_the_rules(forced_bos):
    """On random weights over 40 tokens: the rules hold in every caption (no 3-gram twice, <s> first where
    forced, </s> last and only there) and the graphs (and the PyTorch steps, where torch is installed)
    pick exactly what the host-side reference picks."""
    from jamcaps_desktop.models import lpmc_search

    cfg = dict(TINY, forced_bos_token_id=0 if forced_bos else None)
    rng = np.random.default_rng(5)
    weights = _random_bart(cfg, rng)
    hidden = rng.standard_normal((3, 5, 16)).astype(np.float32)
    whole = ort.InferenceSession(lpmc.build_decoder(weights, cfg).SerializeToString(),
                                 providers=["CPUExecutionProvider"])
    backends = {"graphs": _onnx_steps(weights, cfg, False)}
    try:
        from jamcaps_desktop.export.lpmc_torch import LPMCPort, TorchSteps

        backends["torch"] = TorchSteps(LPMCPort(weights, cfg))
    except ImportError:  # the export extra is optional
        pass
    for beams in (1, 2, 4):
        expected, expected_scores = lpmc.beam_search(whole, hidden, cfg, num_beams=beams, max_length=40, min_length=30)
        for name, steps in backends.items():
            ids, scores = lpmc_search.search(steps, hidden, cfg, num_beams=beams, max_length=40, min_length=30)
            assert ids == expected, (name, beams)
            assert np.allclose(scores, expected_scores, atol=1e-5)
        for row in ids:
            assert row[0] == 2 and row[-1] == 2 and 2 not in row[1:-1] and len(row) >= 31
            assert row[1] == 0 or not forced_bos
            grams = [tuple(row[i:i + 3]) for i in range(len(row) - 2)]
            assert len(grams) == len(set(grams))


def _random_bart(cfg, rng):
    d, vocabulary = cfg["d_model"], cfg["vocab_size"]

    def n(*shape):
        return (rng.standard_normal(shape) * 0.5).astype(np.float32)

    weights = {"bart.model.shared.weight": n(vocabulary, d), "bart.final_logits_bias": n(1, vocabulary),
               "bart.model.decoder.embed_positions.weight": n(64, d),
               "bart.model.decoder.layernorm_embedding.weight": 1 + n(d),
               "bart.model.decoder.layernorm_embedding.bias": n(d)}
    for layer in range(cfg["decoder_layers"]):
        key = f"bart.model.decoder.layers.{layer}"
        for block in ("self_attn", "encoder_attn"):
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                weights[f"{key}.{block}.{proj}.weight"], weights[f"{key}.{block}.{proj}.bias"] = n(d, d), n(d)
            weights[f"{key}.{block}_layer_norm.weight"], weights[f"{key}.{block}_layer_norm.bias"] = 1 + n(d), n(d)
        weights[f"{key}.fc1.weight"], weights[f"{key}.fc1.bias"] = n(4 * d, d), n(4 * d)
        weights[f"{key}.fc2.weight"], weights[f"{key}.fc2.bias"] = n(d, 4 * d), n(d)
        weights[f"{key}.final_layer_norm.weight"], weights[f"{key}.final_layer_norm.bias"] = 1 + n(d), n(d)
    return weights


def test_the_front_end_graph_matches_the_official_log_mel(oracle):
    from jamcaps_desktop.audio.frontend_graphs import captioner_logmel_graph

    _cfg, weights, data, encoder, _decoder = oracle
    graph = captioner_logmel_graph(np.asarray(weights["audio_encoder.mel_encoder.mel_scale.fb"]))
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    mel = session.run(None, {"audio": data["audio"]})[0]
    assert mel.shape == data["log_mel"].shape
    # float32 products instead of an FFT: within the numpy front end's tolerance, and the same encoder states
    assert np.abs(mel - data["log_mel"]).max() < 0.05
    assert np.abs(encoder.run(None, {"log_mel": mel})[0] - data["encoder_hidden"]).max() < 1e-3


def test_the_pytorch_port_matches_the_official_numbers(oracle):
    torch = pytest.importorskip("torch")
    from jamcaps_desktop.export.lpmc_torch import LPMCPort, TorchSteps

    cfg, weights, data, _encoder, _decoder = oracle
    port = LPMCPort(weights, cfg)
    with torch.no_grad():
        mel = port.log_mel(torch.from_numpy(data["audio"])).numpy()
        hidden = port.encode(torch.from_numpy(data["log_mel"])).numpy()
    assert np.abs(mel - data["log_mel"]).max() < 0.05
    assert np.abs(hidden - data["encoder_hidden"]).max() < 1e-4
    _check_search(TorchSteps(port), cfg, data, 1e-5)


def test_a_steps_own_rules_as_keep_and_penalty():
    from jamcaps_desktop.models.lpmc_search import FORBIDDEN, step_rules

    scores = np.log(np.full(6, 1 / 6))
    keep, penalty = step_rules(6, eos=2, eos_banned=False, forced_token=-1)
    assert np.array_equal(scores * keep + penalty, scores)
    keep, penalty = step_rules(6, eos=2, eos_banned=True, forced_token=-1)
    ruled = scores * keep + penalty
    assert ruled[2] <= FORBIDDEN / 2 and np.array_equal(np.delete(ruled, 2), np.delete(scores, 2))
    keep, penalty = step_rules(6, eos=2, eos_banned=True, forced_token=0)
    ruled = scores * keep + penalty
    assert ruled[0] == 0.0 and np.all(ruled[1:] <= FORBIDDEN / 2) and np.all(np.isfinite(ruled))


def test_every_node_of_the_search_graphs_has_a_name_of_its_own():
    """Some ONNX Runtime releases refuse a graph whose fused nodes end up with the same name; named
    nodes keep every fusion's names apart."""
    from jamcaps_desktop.models import lpmc_search

    weights = _random_bart(TINY, np.random.default_rng(0))
    for build in (lpmc_search.build_search_step, lpmc_search.build_cross_cache):
        for half in (False, True):
            names = [node.name for node in build(weights, TINY, half=half).graph.node]
            assert all(names) and len(names) == len(set(names))


def test_a_file_that_crashes_its_decoder_is_named_and_the_rest_are_decoded(tmp_path, monkeypatch):
    """A worker that dies takes its pool's unfinished files with it: those are decoded again one at a time,
    so that only the file that crashes is named, what had finished is handed back to be freed, and a fresh
    pool decodes the rest."""
    from audio_fixtures import make_audio
    from fake_pools import dying_pool

    from jamcaps_desktop.caption.job import _decode_track
    from jamcaps_desktop.jobs import workers
    from jamcaps_desktop.jobs.base import CancelToken

    paths = [str(make_audio(tmp_path / f"t{i}.flac", "flac", seconds=1.0 + i)) for i in range(7)]
    victim = paths[3]
    monkeypatch.setattr(workers, "ProcessPoolExecutor", dying_pool(lambda path: path == victim))
    discarded = []
    results = list(workers.in_order(_decode_track, paths, 2, CancelToken(), ahead=4, discard=discarded.append,
                                    crashed=lambda path: f"the decoder crashed on {path}"))
    assert results[3] == f"the decoder crashed on {victim}"
    assert [len(r) for i, r in enumerate(results) if i != 3] == [16000 * (1 + i) for i in range(7) if i != 3]
    # the files in the pool beside the victim had finished: decoded again, their first results handed back
    assert [len(r) for r in discarded] == [16000 * (1 + i) for i in (4, 5, 6)]
