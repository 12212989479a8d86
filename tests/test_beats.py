"""BEATs: the checkpoint reader (no torch), the ONNX graph against the official implementation's numbers,
the installer (from a local checkpoint file, with a recorded checksum) and the analysis with it."""

from __future__ import annotations

import io
import json
import pickle
import zipfile

import numpy as np
import onnxruntime as ort
import pytest

from jamcaps_desktop.models.beats import build_onnx, frame_count, frame_padding_mask, random_weights, relative_buckets
from jamcaps_desktop.models.torch_checkpoint import CheckpointError, read_checkpoint

TINY = {"encoder_layers": 2, "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 4,
        "conv_pos": 8, "conv_pos_groups": 4, "relative_position_embedding": True, "num_buckets": 320,
        "max_distance": 800, "gru_rel_pos": True, "deep_norm": True, "input_patch_size": 16, "embed_dim": 16,
        "finetuned_model": True, "predictor_class": 5}


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_the_graph_runs_with_padding_and_gives_probabilities():
    rng = np.random.default_rng(7)
    model = build_onnx(random_weights(TINY, rng), TINY)
    session = _session(model)
    fbank = rng.standard_normal((2, 300, 128)).astype(np.float32)
    mask = np.zeros((2, 300), dtype=bool)
    mask[1, 180:] = True
    probs, embedding, tokens, token_mask = session.run(["probs", "embedding", "tokens", "token_mask"],
                                                       {"fbank": fbank, "padding_mask": mask})
    n = 300 // 16 * 8
    assert probs.shape == (2, 5) and np.all((probs > 0) & (probs < 1))
    assert tokens.shape == (2, n, 32) and embedding.shape == (2, 32)
    # the token mask comes from the frame mask by reshaping, as the official code does
    expected = mask[:, : 300 - 300 % n].reshape(2, n, -1).all(-1)
    assert np.array_equal(token_mask, expected)
    # the embedding is the mean of the unpadded tokens
    assert np.allclose(embedding[1], tokens[1][~expected[1]].mean(axis=0), atol=1e-5)
    # everything padded: still finite numbers, not NaN
    everything = session.run(["probs"], {"fbank": fbank, "padding_mask": np.ones((2, 300), dtype=bool)})[0]
    assert np.all(np.isfinite(everything))
    # float16 for CUDA: the same answers to a few thousandths
    half = _session(build_onnx(random_weights(TINY, np.random.default_rng(7)), TINY, half=True))
    assert np.abs(half.run(["probs"], {"fbank": fbank, "padding_mask": mask})[0] - probs).max() < 5e-3


@pytest.mark.parametrize(("width", "groups"), [(8, 4), (7, 2), (16, 1), (33, 4)])
def test_the_positional_convolution_as_block_products_equals_the_convolution(width, groups):
    """The graph for a GPU computes the grouped positional convolution as matrix products over blocks of
    tokens; the whole graph must give the convolution's numbers at every length, padded or not, for even
    and odd kernels (the next test covers token counts that are not whole blocks)."""
    config = dict(TINY, conv_pos=width, conv_pos_groups=groups)
    weights = random_weights(config, np.random.default_rng(width))
    convolution = _session(build_onnx(weights, config, positional_blocks=False))
    blocks = _session(build_onnx(weights, config, positional_blocks=True))
    rng = np.random.default_rng(1)
    for frames in (16, 160, 333, 998):
        fbank = rng.standard_normal((3, frames, 128)).astype(np.float32)
        mask = np.zeros((3, frames), dtype=bool)
        mask[1, frames // 2:] = True
        feeds = {"fbank": fbank, "padding_mask": mask}
        for expected, got in zip(convolution.run(None, feeds), blocks.run(None, feeds), strict=True):
            assert got.shape == expected.shape
            assert np.abs(got.astype(np.float64) - expected.astype(np.float64)).max() < 1e-5


@pytest.mark.parametrize(("width", "groups", "block"), [(8, 4, 8), (7, 2, 3), (16, 1, 5), (33, 4, 8), (1, 2, 4)])
def test_the_block_products_give_the_convolution_for_any_number_of_tokens(width, groups, block):
    """``_positional_blocks`` on its own, for token counts that fill no block, some blocks, or whole blocks
    and a part (BEATs' own frames always give whole blocks of 8), against the convolution written out."""
    from onnx import TensorProto, helper

    from jamcaps_desktop.models.beats import _positional_blocks, positional_band
    from jamcaps_desktop.models.onnx_graph import GraphBuilder

    rng = np.random.default_rng(width * 10 + groups)
    dim = 6 * groups
    kernel = rng.standard_normal((dim, dim // groups, width)).astype(np.float32)
    builder = GraphBuilder()
    band = builder.const(positional_band(kernel, groups, block), "band")
    out = _positional_blocks(builder, "x", band, dim, groups, width, block)
    builder.nodes.append(helper.make_node("Identity", [out], ["y"]))
    graph = helper.make_graph(builder.nodes, "blocks", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                      ["b", "n", dim])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "n", dim])],
                              builder.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    session = _session(model)
    per_group = dim // groups
    for tokens in range(1, 3 * block + 2):
        x = rng.standard_normal((2, tokens, dim)).astype(np.float32)
        padded = np.pad(x.astype(np.float64), ((0, 0), (width // 2, width), (0, 0)))
        expected = np.zeros((2, tokens, dim))
        for group in range(groups):
            channels = slice(group * per_group, (group + 1) * per_group)
            for tap in range(width):  # out[n, o] = Σ_c,t kernel[o, c, t]·x[n + t − width//2, c]
                expected[:, :, channels] += padded[:, tap:tap + tokens, channels] @ kernel[channels, :, tap].T
        got = session.run(None, {"x": x})[0]
        assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-4, tokens


def test_relative_buckets_follow_the_official_rule():
    offsets = np.arange(-3000, 3001)
    buckets = relative_buckets(offsets, 320, 800)
    assert buckets[3000] == 0 and buckets[3001] == 161 and buckets[2999] == 1
    assert buckets.min() == 0 and buckets.max() == 319
    assert np.all(np.diff(buckets[3001:]) >= 0)  # further keys, same or later buckets


def test_frames_and_their_mask():
    assert frame_count(160000) == 998 and frame_count(100800) == 628 and frame_count(399) == 0
    mask = np.zeros((1, 160000), dtype=bool)
    mask[0, 100800:] = True
    frames = frame_padding_mask(mask, 998)
    assert frames.shape == (1, 998) and frames[0, 630:].all() and not frames[0, :629].any()


def _zip_checkpoint(payload: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("ck/data.pkl", payload)
        archive.writestr("ck/byteorder", "little")
    return out.getvalue()


def test_a_checkpoint_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo owned > " + str(tmp_path / "owned"),))

    path = tmp_path / "evil.pt"
    path.write_bytes(_zip_checkpoint(pickle.dumps({"cfg": {}, "model": Evil()}, protocol=2)))
    with pytest.raises(CheckpointError, match="does not load"):
        read_checkpoint(path)
    assert not (tmp_path / "owned").exists()
    (tmp_path / "plain.pt").write_bytes(b"not a zip at all")
    with pytest.raises(CheckpointError, match="zip format"):
        read_checkpoint(tmp_path / "plain.pt")


# -- against the official implementation (the oracle in ../shared/reference/beats) ----------------
def _oracle(shared_reference):
    return np.load(shared_reference / "beats" / "reference_outputs.npz")


def test_checkpoints_in_the_official_format_are_read_without_torch(shared_reference):
    checkpoint = read_checkpoint(shared_reference / "beats" / "tiny_finetuned.pt")
    assert checkpoint["cfg"]["encoder_layers"] == 2 and len(checkpoint["label_dict"]) == 527
    weights = checkpoint["model"]
    assert weights["encoder.pos_conv.0.weight_v"].shape == (64, 16, 16)
    data = _oracle(shared_reference)
    v, g = weights["encoder.pos_conv.0.weight_v"], weights["encoder.pos_conv.0.weight_g"]
    effective = g * v / np.sqrt((v.astype(np.float64) ** 2).sum(axis=(0, 1), keepdims=True))
    assert np.allclose(effective, data["pos_conv_weight_effective"], atol=1e-6)
    assert np.array_equal(relative_buckets(data["rel_pos_offsets"], 320, 800), data["rel_pos_bucket"])


@pytest.mark.parametrize("half", [False, True])
def test_the_onnx_graph_reproduces_the_official_numbers(shared_reference, half):
    data = _oracle(shared_reference)
    finetuned = read_checkpoint(shared_reference / "beats" / "tiny_finetuned.pt")
    pretrained = read_checkpoint(shared_reference / "beats" / "tiny_pretrained.pt")
    ft = _session(build_onnx(finetuned["model"], finetuned["cfg"], half=half))
    pre = _session(build_onnx(pretrained["model"], pretrained["cfg"], half=half))
    prob_tol, feature_tol = (2e-5, 3e-4) if not half else (3e-3, 2e-2)
    for name in ("synth", "clip", "short"):
        frames = frame_padding_mask(data[f"{name}_padding_mask"], data[f"{name}_fbank"].shape[1])
        assert np.array_equal(frames, data[f"{name}_frame_padding_mask"])
        feeds = {"fbank": data[f"{name}_fbank"], "padding_mask": frames}
        probs, mask = ft.run(["probs", "token_mask"], feeds)
        assert np.abs(probs - data[f"{name}_ft_probs"]).max() < prob_tol
        assert np.array_equal(mask, data[f"{name}_ft_padding_mask"])
        if not half:
            top5 = np.argsort(-probs, axis=1)[:, :5]
            assert np.array_equal(top5, data[f"{name}_ft_top5_idx"])
        tokens, mask = pre.run(["tokens", "token_mask"], feeds)
        unpadded = ~data[f"{name}_pre_padding_mask"]
        assert np.abs(tokens - data[f"{name}_pre_features"])[unpadded].max() < feature_tol
        assert np.abs(tokens - data[f"{name}_pre_features"]).max() < feature_tol
        assert np.array_equal(mask, data[f"{name}_pre_padding_mask"])


def test_the_fbank_front_end_matches_the_official_preprocessing(shared_reference):
    from jamcaps_desktop.audio.features import beats_fbank

    data = _oracle(shared_reference)
    for name in ("synth", "clip", "short"):
        for waveform, expected in zip(data[f"{name}_waveform"], data[f"{name}_fbank"], strict=True):
            assert np.abs(beats_fbank(waveform) - expected).max() < 1e-3


def _install_manifest(models_dir, tmp_path, monkeypatch, finetuned=True):
    from jamcaps_desktop.models import registry

    manifests = tmp_path / "manifests"
    manifests.mkdir(exist_ok=True)
    spec = json.loads((registry.manifest_dirs()[-1] / "beats.json").read_text())
    spec.update(name="beats-test", finetuned=finetuned)
    spec["source"]["url"] = "https://example.invalid/never-fetched.pt"
    if not finetuned:
        spec["outputs"] = {"embedding": "embedding"}
    (manifests / "beats-test.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JAMCAPS_MODEL_MANIFESTS", str(manifests))
    return registry


def test_installing_a_checkpoint_file_converts_it_and_records_its_checksum(shared_reference, models_dir, tmp_path,
                                                                          monkeypatch):
    registry = _install_manifest(models_dir, tmp_path, monkeypatch)
    source = shared_reference / "beats" / "tiny_finetuned.pt"
    model = registry.install("beats-test", local=source)
    assert model.fp16_path is not None and model.fp16_path.is_file()
    label_dict = read_checkpoint(source)["label_dict"]
    names = json.loads((shared_reference / "beats" / "label_dict.json").read_text())
    by_mid = {row["mid"]: row["display_name"] for row in names["labels"]}
    # each predictor index is named through the checkpoint's own label_dict (a permutation here)
    assert model.labels == [by_mid[label_dict[i]] for i in range(527)]
    assert model.labels[:3] != [row["display_name"] for row in names["labels"][:3]]
    pins = json.loads((models_dir / "checksums.json").read_text())
    assert pins["beats-test"] == registry.file_sha256(source)
    # another file for the same model is refused, and the installed model stays
    other = tmp_path / "other.pt"
    other.write_bytes(source.read_bytes() + b"\0")
    with pytest.raises(registry.ModelError, match="not the checkpoint installed before"):
        registry.install("beats-test", local=other)
    assert registry.is_installed("beats-test")
    # a pre-trained checkpoint where a fine-tuned one is expected: a clear error
    (models_dir / "checksums.json").unlink()
    with pytest.raises(registry.ModelError, match="pre-trained checkpoint"):
        registry.install("beats-test", local=shared_reference / "beats" / "tiny_pretrained.pt")


def test_analysis_with_beats_stores_audioset_labels_and_an_embedding(shared_reference, models_dir, tmp_path,
                                                                     monkeypatch, library):
    from audio_fixtures import make_audio

    from jamcaps_desktop.analysis.analyze import analyze, track_analyses
    from jamcaps_desktop.library.queries import find_track
    from jamcaps_desktop.scan.scanner import scan

    registry = _install_manifest(models_dir, tmp_path, monkeypatch)
    registry.install("beats-test", local=shared_reference / "beats" / "tiny_finetuned.pt")
    path = make_audio(tmp_path / "tone.flac", "flac", seconds=12.0, freq=330.0)
    scan(library, [path])
    summary = analyze(library, models=["beats-test"], device="cpu")
    assert summary.analysed == 1
    (analysis,) = track_analyses(library, find_track(library, str(path))["id"])
    assert analysis["status"] == "ok" and analysis["windows"] == 1  # 10 s; a 2 s tail (under half a window) is dropped
    labels = dict(analysis["labels"])
    assert len(labels) > 0 and all(0 < p < 1 for p in labels.values())
    (blob,) = library.conn.execute("SELECT embedding FROM analyses").fetchone()
    assert np.frombuffer(blob, dtype=np.float32).shape == (64,)


# -- the PyTorch port (the optional export extra) -----------------------------------------------
def test_the_pytorch_port_reproduces_the_official_numbers(shared_reference):
    torch = pytest.importorskip("torch")
    from jamcaps_desktop.export.beats_torch import BEATsPort

    data = _oracle(shared_reference)
    for kind in ("finetuned", "pretrained"):
        model = BEATsPort.from_checkpoint(torch.load(shared_reference / "beats" / f"tiny_{kind}.pt",
                                                     weights_only=True))
        for name in ("synth", "clip", "short"):
            with torch.no_grad():
                out = model(torch.from_numpy(data[f"{name}_fbank"]),
                            torch.from_numpy(data[f"{name}_frame_padding_mask"]))
            prefix = "ft" if kind == "finetuned" else "pre"
            assert np.array_equal(out["token_mask"].numpy(), data[f"{name}_{prefix}_padding_mask"])
            if kind == "finetuned":
                assert np.abs(out["probs"].numpy() - data[f"{name}_ft_probs"]).max() < 2e-5
            else:
                assert np.abs(out["tokens"].numpy() - data[f"{name}_pre_features"]).max() < 3e-4


def test_the_onnx_graph_and_the_pytorch_port_agree_on_other_lengths():
    torch = pytest.importorskip("torch")
    from jamcaps_desktop.export.beats_torch import BEATsPort

    weights = random_weights(TINY, np.random.default_rng(11))
    port = BEATsPort.from_checkpoint({"cfg": TINY, "model": weights})
    session = _session(build_onnx(weights, TINY))
    rng = np.random.default_rng(12)
    for frames in (160, 517, 1500):
        fbank = rng.standard_normal((3, frames, 128)).astype(np.float32)
        mask = np.zeros((3, frames), dtype=bool)
        mask[1, frames // 2:] = True
        probs, embedding = session.run(["probs", "embedding"], {"fbank": fbank, "padding_mask": mask})
        with torch.no_grad():
            out = port(torch.from_numpy(fbank), torch.from_numpy(mask))
        assert np.abs(probs - out["probs"].numpy()).max() < 2e-5
        assert np.abs(embedding - out["embedding"].numpy()).max() < 3e-4
