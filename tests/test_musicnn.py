"""The musicnn converter: its checkpoint reader and the ONNX graph it builds.

The reference test needs the ``musicnn==0.1.0`` wheel from PyPI (only its checkpoints are read) and the
reference outputs in ../shared; it skips where either cannot be had.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from jamcaps_desktop.models import tf_checkpoint
from jamcaps_desktop.models.tf_checkpoint import CheckpointError, read_checkpoint

REFERENCE = Path(__file__).resolve().parent.parent.parent / "shared" / "reference" / "musicnn"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


def _block(entries: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(_varint(0) + _varint(len(k)) + _varint(len(v)) + k + v for k, v in entries)
    return body + struct.pack("<I", 0) + struct.pack("<I", 1)


def write_checkpoint(folder: Path, tensors: dict[str, np.ndarray]) -> None:
    """A minimal tensor-bundle V2 checkpoint, written the way TensorFlow lays it out."""
    data = bytearray()
    entries = [(b"", _field(1, 0, _varint(1)))]  # header: one shard
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name], dtype="<f4")
        blob = array.tobytes()
        shape = b"".join(_field(2, 2, _varint(len(d)) + d) for d in (_field(1, 0, _varint(s)) for s in array.shape))
        crc = tf_checkpoint._masked(tf_checkpoint._crc32c(blob))
        entry = (_field(1, 0, _varint(1)) + _field(2, 2, _varint(len(shape)) + shape) + _field(4, 0, _varint(len(data)))
                 + _field(5, 0, _varint(len(blob))) + _field(6, 5, struct.pack("<I", crc)))
        entries.append((name.encode(), entry))
        data += blob
    data_block = _block(entries)
    index = bytearray(data_block) + b"\x00" + b"\x00" * 4
    index_block = _block([(b"\xff", _varint(0) + _varint(len(data_block)))])
    index_offset = len(index)
    index += index_block + b"\x00" + b"\x00" * 4
    meta_offset = len(index)
    meta = _block([])
    index += meta + b"\x00" + b"\x00" * 4
    handles = _varint(meta_offset) + _varint(len(meta)) + _varint(index_offset) + _varint(len(index_block))
    footer = handles + b"\x00" * (40 - len(handles)) + struct.pack("<Q", tf_checkpoint.TABLE_MAGIC)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".index").write_bytes(bytes(index) + footer)
    (folder / ".data-00000-of-00001").write_bytes(bytes(data))


def test_reads_a_checkpoint_written_in_the_bundle_format(tmp_path):
    tensors = {"conv/kernel": np.random.default_rng(0).normal(size=(7, 38, 1, 4)).astype(np.float32),
               "conv/bias": np.arange(4, dtype=np.float32), "conv/kernel/Adam": np.zeros(3, dtype=np.float32)}
    write_checkpoint(tmp_path / "ckpt", tensors)
    read = read_checkpoint(tmp_path / "ckpt")
    assert set(read) == {"conv/kernel", "conv/bias"}  # optimizer slots are skipped
    assert np.array_equal(read["conv/kernel"], tensors["conv/kernel"])


def test_a_damaged_checkpoint_is_refused(tmp_path):
    write_checkpoint(tmp_path / "ckpt", {"w": np.ones((16,), dtype=np.float32)})
    shard = tmp_path / "ckpt" / ".data-00000-of-00001"
    data = bytearray(shard.read_bytes())
    data[5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        read_checkpoint(tmp_path / "ckpt")
    (tmp_path / "ckpt" / ".index").write_bytes(b"not an index" * 10)
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / "ckpt")


@pytest.fixture(scope="session")
def musicnn_wheel(musicnn_wheel_file, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("unpacked")
    with zipfile.ZipFile(musicnn_wheel_file) as archive:
        for member in archive.namelist():
            if "_musicnn/" in member:
                archive.extract(member, folder)
    return folder / "musicnn"


@pytest.mark.parametrize("which", ["MTT", "MSD"])
def test_converted_model_reproduces_the_reference(which, musicnn_wheel):
    ort = pytest.importorskip("onnxruntime")
    if not (REFERENCE / "reference_outputs.npz").is_file():
        pytest.skip("../shared/reference/musicnn is not present")
    from jamcaps_desktop.models.musicnn import build_onnx

    model = build_onnx(read_checkpoint(musicnn_wheel / f"{which}_musicnn"))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = np.load(REFERENCE / "reference_outputs.npz")
    for clip in range(3):
        tags, penultimate = session.run(["tags", "penultimate"], {"melspec": reference[f"clip{clip}_melspec"]})
        assert np.abs(tags - reference[f"clip{clip}_{which}_musicnn_tags"]).max() <= 1e-4
        assert np.abs(penultimate - reference[f"clip{clip}_{which}_musicnn_penultimate"]).max() <= 1e-4


def test_mel_filterbank_matches_librosas_slaney_definition():
    from jamcaps_desktop.audio.features import hz_to_mel, mel_filterbank, mel_to_hz

    freqs = np.array([0.0, 500.0, 1000.0, 4000.0, 8000.0])
    assert np.allclose(mel_to_hz(hz_to_mel(freqs)), freqs)
    assert hz_to_mel(np.array([1000.0]))[0] == pytest.approx(15.0)  # the linear/log knee of Slaney's scale
    bank = mel_filterbank(16000, 512, 96)
    assert bank.shape == (96, 257)
    assert np.all(bank >= 0) and np.all(bank.max(axis=1) > 0)  # every band has a non-empty triangle
    centres = np.argmax(bank, axis=1)
    assert np.all(np.diff(centres) >= 0)


def test_whole_pipeline_from_audio_matches_the_reference(musicnn_wheel):
    """Decoding (FFmpeg's resampler, not librosa's) + our log-mel + our graph, against the reference tags."""
    ort = pytest.importorskip("onnxruntime")
    clips_file = REFERENCE / "reference_clips.json"
    audio = REFERENCE.parent.parent / "corpus" / "audio" / "librosa"
    if not clips_file.is_file() or not audio.is_dir():
        pytest.skip("../shared is not present")
    import json

    from jamcaps_desktop.audio.decode import decode
    from jamcaps_desktop.audio.features import musicnn_melspec
    from jamcaps_desktop.models.musicnn import build_onnx

    session = ort.InferenceSession(build_onnx(read_checkpoint(musicnn_wheel / "MTT_musicnn")).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    reference = np.load(REFERENCE / "reference_outputs.npz")
    for clip, name in json.loads(clips_file.read_text()).items():
        mel = musicnn_melspec(decode(str(audio / name), 16000))[:4 * 187].reshape(4, 187, 96)
        assert np.abs(mel - reference[f"{clip}_melspec"]).mean() < 0.005
        (tags,) = session.run(["tags"], {"melspec": mel})
        difference = np.abs(tags - reference[f"{clip}_MTT_musicnn_tags"])
        assert difference.mean() < 0.005 and difference.max() < 0.06  # what two resamplers leave


_KERNELS = {"conv2d": (7, 38, 1, 204), "conv2d_1": (7, 67, 1, 204), "conv2d_2": (128, 1, 1, 51),
            "conv2d_3": (64, 1, 1, 51), "conv2d_4": (32, 1, 1, 51), "conv2d_5": (7, 561, 1, 64),
            "conv2d_6": (7, 64, 1, 64), "conv2d_7": (7, 64, 1, 64), "dense": (1506, 200), "dense_1": (200, 50)}
_NORMS = [1, 204, 204, 51, 51, 51, 64, 64, 64, 1506, 200]


def _random_musicnn(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Weights of the musicnn shape; batch-norm gains of both signs, as the real checkpoints have."""
    weights = {}
    for name, shape in _KERNELS.items():
        fan_in = int(np.prod(shape[:-1]))
        weights[f"{name}/kernel"] = rng.normal(0, 1 / np.sqrt(fan_in), shape).astype(np.float32)
        weights[f"{name}/bias"] = rng.normal(0, 0.1, shape[-1]).astype(np.float32)
    for index, size in enumerate(_NORMS):
        prefix = "batch_normalization" + ("" if index == 0 else f"_{index}")
        weights[prefix + "/gamma"] = rng.normal(0, 1, size).astype(np.float32)
        weights[prefix + "/beta"] = rng.normal(0, 0.5, size).astype(np.float32)
        weights[prefix + "/moving_mean"] = rng.normal(0, 0.5, size).astype(np.float32)
        weights[prefix + "/moving_variance"] = rng.uniform(0.5, 2, size).astype(np.float32)
    return weights


def _numpy_musicnn(weights: dict[str, np.ndarray], mel: np.ndarray) -> dict[str, np.ndarray]:
    """The network written out directly in numpy (float64): every convolution, then ReLU, then batch norm."""
    from numpy.lib.stride_tricks import sliding_window_view

    w = {k: v.astype(np.float64) for k, v in weights.items()}

    def norm(x, index, axis):
        prefix = "batch_normalization" + ("" if index == 0 else f"_{index}")
        shape = [1] * x.ndim
        shape[axis] = -1
        scale = w[prefix + "/gamma"] / np.sqrt(w[prefix + "/moving_variance"] + 1e-3)
        centred = x - w[prefix + "/moving_mean"].reshape(shape)
        return centred * scale.reshape(shape) + w[prefix + "/beta"].reshape(shape)

    def conv_block(x, name, index, before, after):  # x [N, T, F] → max over bands of BN(ReLU(conv)) [N, C, T]
        kernel = w[name + "/kernel"][:, :, 0, :]  # [time taps, band taps, C]
        padded = np.pad(x, ((0, 0), (before, after), (0, 0)))
        windows = sliding_window_view(padded, kernel.shape[:2], axis=(1, 2))  # [N, T, F', taps, bands]
        y = np.einsum("ntfij,ijo->notf", windows, kernel) + w[name + "/bias"][None, :, None, None]
        return norm(np.maximum(y, 0), index, 1).max(axis=3)

    def conv1d(x, name):  # x [N, C, T], kernel 7, SAME
        kernel = w[name + "/kernel"][:, :, 0, :]  # [7, C, O]
        windows = sliding_window_view(np.pad(x, ((0, 0), (0, 0), (3, 3))), 7, axis=2)  # [N, C, T, 7]
        return np.einsum("ncti,ico->not", windows, kernel) + w[name + "/bias"][None, :, None]

    x = norm(mel.astype(np.float64)[:, None], 0, 1)[:, 0]
    front = [conv_block(x, "conv2d", 1, 3, 3), conv_block(x, "conv2d_1", 2, 3, 3)]
    for name, index, length in (("conv2d_2", 3, 128), ("conv2d_3", 4, 64), ("conv2d_4", 5, 32)):
        front.append(conv_block(x, name, index, (length - 1) // 2, length // 2))
    front_end = np.concatenate(front, axis=1)
    mid1 = norm(np.maximum(conv1d(front_end, "conv2d_5"), 0), 6, 1)
    mid2 = norm(np.maximum(conv1d(mid1, "conv2d_6"), 0), 7, 1) + mid1
    mid3 = norm(np.maximum(conv1d(mid2, "conv2d_7"), 0), 8, 1) + mid2
    features = np.concatenate([front_end, mid1, mid2, mid3], axis=1)
    max_pool, mean_pool = features.max(axis=2), features.mean(axis=2)
    flat = norm(np.stack([max_pool, mean_pool], axis=2).reshape(len(mel), -1), 9, 1)
    penultimate = norm(np.maximum(flat @ w["dense/kernel"] + w["dense/bias"], 0), 10, 1)
    tags = 1 / (1 + np.exp(-(penultimate @ w["dense_1/kernel"] + w["dense_1/bias"])))
    return {"tags": tags, "penultimate": penultimate, "max_pool": max_pool, "mean_pool": mean_pool}


def test_the_graph_computes_the_network_as_written():
    """The graph reorders the front end (the maximum over bands before the bias, ReLU and batch norm, with
    the kernels of falling channels negated) and must still give the network's numbers, whatever the
    signs of the batch-norm gains."""
    ort = pytest.importorskip("onnxruntime")
    from jamcaps_desktop.models.musicnn import build_onnx

    rng = np.random.default_rng(11)
    weights = _random_musicnn(rng)
    mel = rng.normal(0, 1, (2, 187, 96)).astype(np.float32)
    session = ort.InferenceSession(build_onnx(weights).SerializeToString(), providers=["CPUExecutionProvider"])
    names = ["tags", "penultimate", "max_pool", "mean_pool"]
    got = dict(zip(names, session.run(names, {"melspec": mel}), strict=True))
    expected = _numpy_musicnn(weights, mel)
    for name in names:
        scale = max(1.0, float(np.abs(expected[name]).max()))
        assert np.abs(got[name] - expected[name]).max() <= 1e-4 * scale, name
