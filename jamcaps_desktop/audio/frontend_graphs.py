"""The audio front ends as ONNX graphs, so that they run where the models run (on the GPU, when there is one).

With the models on a GPU, the decoding workers' own arithmetic beside decoding (the log-mel or fbank
of every window, the tempo and key spectra) is what limits the analysis, while the GPU waits. These
graphs compute the same things from 16 kHz mono audio on the models' device: a workers then only
decodes, resamples and measures loudness. Each graph matches its numpy counterpart in
``audio.features``, ``audio.tempo`` and ``audio.key`` (the tests compare them), which stay the
implementation on the CPU, where the workers compute them in parallel with the models.

A transform gathers the frames and multiplies them by the windowed cosines and sines of the wanted
frequency bins (the whole per-frame linear chain — Kaldi's DC removal and pre-emphasis included — is
folded into that matrix), followed by the power or magnitude, the band matrix and the compression.
(ONNX Runtime has no FFT on CUDA; matrix products at full float32 precision are what a GPU does best.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jamcaps_desktop.audio import key as key_module
from jamcaps_desktop.audio import loudness as loudness_module
from jamcaps_desktop.audio import tempo as tempo_module
from jamcaps_desktop.audio.features import (
    BEATS_MEAN,
    BEATS_STD,
    KALDI_BANDS,
    KALDI_FFT,
    KALDI_FRAME,
    KALDI_SHIFT,
    MUSICNN_BANDS,
    MUSICNN_FFT,
    MUSICNN_HOP,
    MUSICNN_RATE,
    kaldi_mel_banks,
    mel_filterbank,
    periodic_hann,
    povey_window,
)
from jamcaps_desktop.audio.loudness_blocks import BlockPlan, block_plan, separation, state_space
from jamcaps_desktop.models.onnx_graph import GraphBuilder

OPSET = 18
FEATURES = "features"  # the window front ends' output: [windows, frames, bins]
AUDIO = "audio"  # their input: [windows, samples] of 16 kHz mono
SIGNAL = "signal"  # the tempo and key graphs' input: [samples] of a whole track (16 kHz mono)
STRETCH_START = "stretch_start"  # [1] int64: where in ``signal`` the stretch the graph measures starts...
STRETCH_END = "stretch_end"  # [1] int64: ...and ends
STRETCH_LEAD = "stretch_lead"  # [2] int64: zeros put in front of the stretch, and behind it (the tempo graph)


def _dft_kernels(size: int, bins: np.ndarray, frame_map: np.ndarray | None = None,
                 window: np.ndarray | None = None, fft: int | None = None) -> np.ndarray:
    """[2·bins, size]: rows giving the real then the imaginary part of the chosen DFT bins of each frame,
    after an optional linear map of the frame (``frame_map``, [size, size]) and window.

    The phase n·k is taken modulo the transform's length in integers and its cosine and sine looked up in a
    table of one period: exact, and several times faster than evaluating them for every entry (the key
    graph's 8192-sample frames make 16 million of them, which took a second of each job's start). The
    array is laid out [size, 2·bins] and returned transposed, as ``_transform`` stores it."""
    fft = fft or size
    bins = np.asarray(bins)
    if not np.issubdtype(bins.dtype, np.integer):
        raise TypeError("the DFT bins must be whole numbers")
    phase = np.multiply.outer(np.arange(size, dtype=np.int64), bins.astype(np.int64)) % fft
    turn = 2 * np.pi * np.arange(fft) / fft
    columns = np.concatenate([np.cos(turn)[phase], -np.sin(turn)[phase]], axis=1)  # [size, 2·bins]
    if window is not None:
        columns *= window[:, None]
    if frame_map is not None:
        columns = frame_map.T @ columns
    return columns.T


def _int64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


class _Graph(GraphBuilder):
    def scalar(self, value: float, label: str = "k") -> str:
        return self.const(np.array(value, dtype=np.float32), label)

    def slice(self, tensor: str, start: int, end: int, axis: int) -> str:
        return self.node("Slice", [tensor, self.const(_int64(start), "start"), self.const(_int64(end), "end"),
                                   self.const(_int64(axis), "axis")])

    def power(self, spectrum: str, bins: int, axis: int) -> str:
        """re² + im² of a [.., 2·bins, ..] stack of real parts then imaginary parts along ``axis``."""
        real = self.slice(spectrum, 0, bins, axis)
        imaginary = self.slice(spectrum, bins, 2 * bins, axis)
        return self.node("Add", [self.node("Mul", [real, real]), self.node("Mul", [imaginary, imaginary])])

    def model(self, inputs: list[Any], outputs: list[Any], name: str) -> Any:
        from onnx import helper

        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="jamcaps-desktop")
        model.ir_version = 8
        return model


def _framed(g: _Graph, signal: str, size: int, hop: int, axis: int) -> tuple[str, int]:
    """Frames of ``size`` samples every ``hop`` along ``axis`` (the last one) of ``signal``, as many whole frames
    as fit: [..., frames, width], each frame followed by samples up to a whole number of hops (``width`` =
    ⌈size / hop⌉ · hop; ``_transform`` gives them no weight). Frame i is blocks i … i + ⌈size / hop⌉ − 1 of
    ``hop`` samples: a few slices and one concatenation, all on the device (a gather would need an index
    tensor as large as the frames, made on the CPU; the tempo graph's 1024-sample frames every 160 samples
    took 32 slices when built from blocks of their greatest common divisor, and a GPU busy with a model
    runs each small kernel late). Then one matrix product per transform is far faster on a GPU than a
    convolution with kernels of hundreds of samples. ``signal`` must hold at least one frame (callers pad or
    check: ONNX's integer division rounds a negative count towards zero)."""
    parts = -(-size // hop)
    width = parts * hop
    length = g.node("Gather", [g.node("Shape", [signal]), g.const(_int64(axis), "axis")])  # [1]
    count = g.node("Add", [g.node("Div", [g.node("Sub", [length, g.const(_int64(size), "size")]),
                                          g.const(_int64(hop), "hop")]), g.const(_int64(1), "one")])
    if width > size:  # the last frame's extra samples: zeros (whatever they are, they are given no weight)
        pads = _int64(0, width - size) if axis == 0 else _int64(0, 0, 0, width - size)
        signal = g.node("Pad", [signal, g.const(pads, "pads")], mode="constant")
    blocks_used = g.node("Mul", [g.node("Add", [count, g.const(_int64(parts - 1), "more")]),
                                 g.const(_int64(hop), "hop")])
    trimmed = g.node("Slice", [signal, g.const(_int64(0), "start"), blocks_used, g.const(_int64(axis), "axis")])
    shape = g.const(_int64(-1, hop) if axis == 0 else _int64(0, -1, hop), "shape")
    blocks = g.node("Reshape", [trimmed, shape])  # [..., blocks, hop]
    columns = []
    for offset in range(parts):  # frame i's part j is block i + j
        start = g.const(_int64(offset), "start")
        columns.append(g.node("Slice", [blocks, start, g.node("Add", [count, start]), g.const(_int64(axis), "axis")]))
    return (g.node("Concat", columns, axis=axis + 1) if parts > 1 else columns[0]), width


def _transform(g: _Graph, framed: tuple[str, int], kernels: np.ndarray) -> str:
    """``_framed``'s [..., frames, width] → [..., frames, kernels] (kernels: [kernels, size ≤ width])."""
    frames, width = framed
    matrix = np.zeros((width, kernels.shape[0]), dtype=np.float32)
    matrix[:kernels.shape[1]] = kernels.T
    return g.node("MatMul", [frames, g.const(matrix, "dft")])


def musicnn_logmel_graph(window_samples: int, frames: int) -> Any:
    """[windows, samples] → [windows, frames, 96]: ``features.musicnn_melspec`` of each window."""
    from onnx import TensorProto, helper

    g = _Graph()
    bins = MUSICNN_FFT // 2 + 1
    half = MUSICNN_FFT // 2
    padded = g.node("Pad", [AUDIO, g.const(_int64(0, half, 0, half), "pads")], mode="constant")
    kernels = _dft_kernels(MUSICNN_FFT, np.arange(bins), window=periodic_hann(MUSICNN_FFT))
    spectrum = _transform(g, _framed(g, padded, MUSICNN_FFT, MUSICNN_HOP, 1), kernels)  # [windows, frames + 1, 2·bins]
    power = g.slice(g.power(spectrum, bins, axis=2), 0, frames, axis=1)
    filters = mel_filterbank(MUSICNN_RATE, MUSICNN_FFT, MUSICNN_BANDS)
    mel = g.node("MatMul", [power, g.const(filters.T.copy(), "mel")])
    rounded = g.node("Cast", [g.node("Cast", [mel], to=TensorProto.FLOAT16)], to=TensorProto.FLOAT)
    compressed = g.node("Log", [g.node("Add", [g.node("Mul", [rounded, g.scalar(10000.0)]), g.scalar(1.0)])])
    g.nodes.append(helper.make_node("Mul", [compressed, g.scalar(1 / np.log(10.0))], [FEATURES]))
    return g.model([helper.make_tensor_value_info(AUDIO, TensorProto.FLOAT, ["windows", window_samples])],
                   [helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, ["windows", frames, MUSICNN_BANDS])],
                   "musicnn_logmel")


def kaldi_fbank_graph(window_samples: int, frames: int | None = None) -> Any:
    """[windows, samples] → [windows, frames, 128]: ``features.beats_fbank`` of each window."""
    from onnx import TensorProto, helper

    g = _Graph()
    bins = KALDI_FFT // 2 + 1
    size = KALDI_FRAME
    # per frame: remove the mean, pre-emphasise (the first sample's predecessor is itself), Povey window
    centring = np.eye(size) - np.full((size, size), 1.0 / size)
    emphasis = np.eye(size) - 0.97 * np.eye(size, k=-1)
    emphasis[0, 0] = 1.0 - 0.97
    kernels = _dft_kernels(size, np.arange(bins), frame_map=np.diag(povey_window(size)) @ emphasis @ centring,
                           fft=KALDI_FFT)
    scaled = g.node("Mul", [AUDIO, g.scalar(2.0 ** 15)])
    power = g.power(_transform(g, _framed(g, scaled, size, KALDI_SHIFT, 1), kernels), bins, axis=2)
    if frames:  # [windows, frames, bins]
        power = g.slice(power, 0, frames, axis=1)
    banks = kaldi_mel_banks()  # [128, bins]
    energies = g.node("MatMul", [power, g.const(banks.T.copy(), "mel")])
    logged = g.node("Log", [g.node("Max", [energies, g.scalar(float(np.finfo(np.float32).eps))])])
    centred = g.node("Sub", [logged, g.scalar(BEATS_MEAN)])
    g.nodes.append(helper.make_node("Div", [centred, g.scalar(2 * BEATS_STD)], [FEATURES]))
    count = frames or "frames"
    return g.model([helper.make_tensor_value_info(AUDIO, TensorProto.FLOAT, ["windows", window_samples])],
                   [helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, ["windows", count, KALDI_BANDS])],
                   "kaldi_fbank")


def captioner_logmel_graph(mel_filters: np.ndarray, fft: int = 1024, hop: int = 160) -> Any:
    """``audio`` [chunks, samples] → ``log_mel`` [chunks, bands, frames]: the LP-MusicCaps front end
    (``models.lpmc.log_mel``: centred periodic-Hann STFT with reflection, the power of the real part only,
    the checkpoint's mel filters ``mel_filters`` [fft/2 + 1, bands], 10·log10 with a floor of 1e-10)."""
    from onnx import TensorProto, helper

    g = _Graph()
    bins = fft // 2 + 1
    padded = g.node("Pad", [AUDIO, g.const(_int64(0, fft // 2, 0, fft // 2), "pads")], mode="reflect")
    real_part = _dft_kernels(fft, np.arange(bins), window=periodic_hann(fft))[:bins]
    real = _transform(g, _framed(g, padded, fft, hop, 1), real_part)                     # [chunks, frames, bins]
    mel = g.node("MatMul", [g.node("Mul", [real, real]),
                            g.const(np.asarray(mel_filters, dtype=np.float32), "mel")])      # [chunks, frames, bands]
    decibels = g.node("Mul", [g.node("Log", [g.node("Max", [mel, g.scalar(1e-10)])]), g.scalar(10 / np.log(10.0))])
    g.nodes.append(helper.make_node("Transpose", [decibels], ["log_mel"], perm=[0, 2, 1]))
    bands = int(np.shape(mel_filters)[1])
    return g.model([helper.make_tensor_value_info(AUDIO, TensorProto.FLOAT, ["chunks", "samples"])],
                   [helper.make_tensor_value_info("log_mel", TensorProto.FLOAT, ["chunks", bands, "frames"])],
                   "lpmc_logmel")


WINDOW_GRAPHS = {"musicnn-logmel": musicnn_logmel_graph, "kaldi-fbank-128": kaldi_fbank_graph}

# -- the tempo and key measurements over a whole track, one stretch at a time -------------------------------

ONSET_RISES = "rises"  # [frames - 1]: the onset strength of each frame after the stretch's first
ONSET_FIRST = "first_bands"  # [40]: the first frame's band levels (its rise needs the previous stretch's last)
ONSET_LAST = "last_bands"  # [40]
PITCH_PROFILE = "profile"  # [12]: the stretch's pitch-class profile


def _stretch(g: _Graph, lead: bool) -> str:
    """The stretch of the track ``signal`` between ``stretch_start`` and ``stretch_end`` (and, with ``lead``,
    the zeros ``stretch_lead`` asks for around it). The track stays where it is, on the device, for every
    stretch of it: only the bounds come from the host."""
    stretch = g.node("Slice", [SIGNAL, STRETCH_START, STRETCH_END, g.const(_int64(0), "axis")])
    return g.node("Pad", [stretch, STRETCH_LEAD], mode="constant") if lead else stretch


def _stretch_inputs(lead: bool) -> list[Any]:
    from onnx import TensorProto, helper

    return [helper.make_tensor_value_info(SIGNAL, TensorProto.FLOAT, ["samples"]),
            helper.make_tensor_value_info(STRETCH_START, TensorProto.INT64, [1]),
            helper.make_tensor_value_info(STRETCH_END, TensorProto.INT64, [1]),
            *([helper.make_tensor_value_info(STRETCH_LEAD, TensorProto.INT64, [2])] if lead else [])]


def onset_graph() -> Any:
    """A stretch of a track (at least two frames, with the zeros the first stretch's lead needs) → the spectral
    flux of ``tempo.OnsetEnvelope`` (frames every 10 ms)."""
    from onnx import TensorProto, helper

    g = _Graph()
    fft, bins = tempo_module.FFT, tempo_module.FFT // 2 + 1
    kernels = _dft_kernels(fft, np.arange(bins), window=periodic_hann(fft))
    spectrum = _transform(g, _framed(g, _stretch(g, lead=True), fft, tempo_module.HOP, 0), kernels)  # [frames, 2·bins]
    magnitude = g.node("Sqrt", [g.power(spectrum, bins, axis=1)])
    pooled = g.node("MatMul", [magnitude, g.const(tempo_module.band_filters().T.copy(), "mel")])
    bands = g.node("Log", [g.node("Add", [g.node("Mul", [pooled, g.scalar(100.0)]), g.scalar(1.0)])])  # [frames, 40]
    big = 1 << 40
    rises = g.node("Relu", [g.node("Sub", [g.slice(bands, 1, big, 0), g.slice(bands, 0, -1, 0)])])
    g.nodes.append(helper.make_node("ReduceMean", [rises, g.const(_int64(1), "axis")], [ONSET_RISES], keepdims=0))
    g.nodes.append(helper.make_node("Squeeze", [g.slice(bands, 0, 1, 0), g.const(_int64(0), "axis")], [ONSET_FIRST]))
    g.nodes.append(helper.make_node("Squeeze", [g.slice(bands, -1, big, 0), g.const(_int64(0), "axis")],
                                    [ONSET_LAST]))
    band_info = [tempo_module.BANDS]
    return g.model(_stretch_inputs(lead=True),
                   [helper.make_tensor_value_info(ONSET_RISES, TensorProto.FLOAT, ["frames"]),
                    helper.make_tensor_value_info(ONSET_FIRST, TensorProto.FLOAT, band_info),
                    helper.make_tensor_value_info(ONSET_LAST, TensorProto.FLOAT, band_info)], "onsets")


def pitch_graph() -> Any:
    """A stretch of a track (at least one frame) → ``key.PitchProfile``'s profile."""
    from onnx import TensorProto, helper

    g = _Graph()
    fft, hop = key_module.FFT, key_module.HOP
    chosen, lower, upper_share = key_module.analysed_bins()
    kernels = _dft_kernels(fft, chosen, window=periodic_hann(fft))
    spectrum = _transform(g, _framed(g, _stretch(g, lead=False), fft, hop, 0), kernels)  # [frames, 2·bins]
    count = len(chosen)
    magnitude = g.node("Sqrt", [g.power(spectrum, count, axis=1)])  # [frames, bins]
    # local maxima: above the left neighbour and not below the right one (the edge bins never count)
    middle = g.slice(magnitude, 1, count - 1, 1)
    left, right = g.slice(magnitude, 0, count - 2, 1), g.slice(magnitude, 2, count, 1)
    is_peak = g.node("And", [g.node("Greater", [middle, left]), g.node("GreaterOrEqual", [middle, right])])
    is_peak = g.node("Cast", [is_peak], to=TensorProto.FLOAT)
    is_peak = g.node("Pad", [is_peak, g.const(_int64(0, 1, 0, 1), "pads")], mode="constant")
    floor = g.scalar(key_module._FLOOR)
    floored = g.node("Max", [magnitude, floor])
    # the surroundings: the mean over KERNEL bins, the edge bins repeated beyond the ends
    reach = key_module.KERNEL // 2
    edged = g.node("Pad", [g.node("Unsqueeze", [magnitude, g.const(_int64(1), "axis")]),
                           g.const(_int64(0, 0, reach, 0, 0, reach), "pads")], mode="edge")
    background = g.node("AveragePool", [edged], kernel_shape=[key_module.KERNEL], strides=[1])
    background = g.node("Squeeze", [background, g.const(_int64(1), "axis")])
    threshold = g.node("Mul", [g.node("Max", [background, floor]), g.scalar(key_module._PROMINENCE_RATIO)])
    prominent = g.node("Cast", [g.node("Greater", [floored, threshold])], to=TensorProto.FLOAT)
    loudest = g.node("Max", [g.node("ReduceMax", [magnitude, g.const(_int64(1), "axis")], keepdims=1), floor])
    decibels = g.node("Mul", [g.node("Log", [g.node("Div", [floored, loudest])]), g.scalar(20 / np.log(10.0))])
    level = g.node("Relu", [g.node("Add", [decibels, g.scalar(key_module.DYNAMIC_RANGE_DB)])])
    weights = g.node("Mul", [level, g.node("Mul", [is_peak, prominent])])
    per_bin = g.node("ReduceSum", [weights, g.const(_int64(0), "axis")], keepdims=1)  # [1, bins]
    share = np.zeros((count, 12))  # each bin's weight split between its two nearest pitch classes
    share[np.arange(count), lower] += 1 - upper_share
    share[np.arange(count), (lower + 1) % 12] += upper_share
    profile = g.node("MatMul", [per_bin, g.const(share.astype(np.float32), "classes")])
    g.nodes.append(helper.make_node("Squeeze", [profile, g.const(_int64(0), "axis")], [PITCH_PROFILE]))
    return g.model(_stretch_inputs(lead=False),
                   [helper.make_tensor_value_info(PITCH_PROFILE, TensorProto.FLOAT, [12])], "pitch_profile")


# -- integrated loudness: the K-weighting filter as matrix products over blocks -------------------------------

LOUDNESS_BLOCKS = "blocks"  # [context + blocks, block] float16: the file's own rate, in blocks
STEP_POWER = "step_power"  # [steps]: the K-weighted mean square of each 100 ms step


def loudness_graph(rate: int) -> Any:
    """[context + steps·per_step, block] (half precision, as ``native_audio`` lays a track out) → the K-weighted
    mean square of each 100 ms step after the context (``_k_weighted_power``)."""
    from onnx import TensorProto, helper

    g = _Graph()
    samples = g.node("Cast", [LOUDNESS_BLOCKS], to=TensorProto.FLOAT)  # handed over in half precision
    plan = block_plan(rate)
    _k_weighted_power(g, samples, plan)
    return g.model([helper.make_tensor_value_info(LOUDNESS_BLOCKS, TensorProto.FLOAT16, ["blocks", plan.block])],
                   [helper.make_tensor_value_info(STEP_POWER, TensorProto.FLOAT, ["steps"])], "k_weighted_power")


def _k_weighted_power(g: _Graph, samples: str, plan: BlockPlan) -> None:
    """Nodes from float [context + steps·per_step, block] ``samples`` to ``STEP_POWER``.

    Block k's output is y_k = T·x_k + O·s_k (T: the filter's impulse response as a Toeplitz matrix, O: how
    the state at the block's start rings on), and its starting state s_k = Σ_m F^(m-1)·G·x_(k-m) (G: how a
    block's samples end up in the state, F: how a block carries the state over). F^m dies away within a
    few blocks, so ``context`` blocks before each give every block its state to float precision: all the
    blocks are filtered at once, as matrix products."""
    import scipy.linalg  # loaded where a graph is built (the decoding workers, which import this, never do)
    from onnx import helper

    a, b, c, d = state_space(loudness_module.k_weighting(plan.rate))
    size = plan.block
    powers = [np.eye(a.shape[0])]
    for _ in range(size):
        powers.append(a @ powers[-1])
    ringing = np.vstack([c @ powers[n] for n in range(size)])  # [block, order]: C·A^n
    impulse = np.concatenate([[d], (ringing[:-1] @ b).ravel()])  # D, then C·A^(n-1)·B
    toeplitz = scipy.linalg.toeplitz(impulse, np.zeros(size))  # y_n = Σ_j impulse[n - j]·x_j
    gather = np.hstack([powers[size - 1 - j] @ b for j in range(size)])  # [order, block]
    carry = powers[size]
    carried = [np.eye(a.shape[0])]
    for _ in range(plan.context - 1):
        carried.append(carry @ carried[-1])

    count = plan.context
    states = g.node("MatMul", [samples, g.const(gather.T.astype(np.float32), "gather")])  # [blocks, order]
    big = 1 << 40
    shifted = [g.slice(states, count - m, -m, 0) for m in range(1, count + 1)]  # block k - m, for k ≥ context
    stacked = g.node("Concat", shifted, axis=1)  # [out blocks, order·context]
    carry_stack = np.vstack([power.T for power in carried]).astype(np.float32)  # [order·context, order]
    start_states = g.node("MatMul", [stacked, g.const(carry_stack, "carry")])
    own = g.slice(samples, count, big, 0)
    filtered = g.node("Add", [g.node("MatMul", [own, g.const(toeplitz.T.astype(np.float32), "toeplitz")]),
                              g.node("MatMul", [start_states, g.const(ringing.T.astype(np.float32), "ringing")])])
    energy = g.node("ReduceSum", [g.node("Mul", [filtered, filtered]), g.const(_int64(1), "axis")], keepdims=0)
    per_step = g.node("Reshape", [energy, g.const(_int64(-1, plan.per_step), "shape")])
    summed = g.node("ReduceSum", [per_step, g.const(_int64(1), "axis")], keepdims=0)
    g.nodes.append(helper.make_node("Mul", [summed, g.scalar(1.0 / plan.step)], [STEP_POWER]))


# -- a track's decoded samples as they come from the decoder, made into what the analysis measures ------------

RAW = "raw"  # [samples, channels] (interleaved) or [channels, samples] (planar): int16, int32 or float32
PEAK = "peak"  # []: the largest magnitude of any sample (linear)
AUDIO_HOST = "audio_host"  # ``AUDIO`` again, for the caller to take to the host while ``AUDIO`` stays on the device
RAW_SCALES = {"int16": 1.0 / 2**15, "int32": 1.0 / 2**31, "float32": 1.0}  # FFmpeg's conversions to float
MODEL_RATE = 16000


def decoded_audio_graph(rate: int, dtype: str, interleaved: bool) -> Any:
    """A track's decoded samples at its own ``rate`` → ``AUDIO`` (mono at 16 kHz, resampled as FFmpeg
    resamples: ``audio.resampler``; the caller keeps the first ``output_length`` samples), ``STEP_POWER``
    (the K-weighted power of each channel's 100 ms steps, the channels laid one after the other with the
    filter's rest between them, as ``native_audio.save_native`` lays them out) and ``PEAK``; ``AUDIO_HOST``
    is ``AUDIO`` once more, so that one run can leave the audio on the device and hand it to the host
    too. The samples must
    be longer than the resampling filter and than four 100 ms steps."""
    from onnx import TensorProto, helper

    from jamcaps_desktop.audio import resampler

    g = _Graph()
    samples = g.node("Cast", [RAW], to=TensorProto.FLOAT)
    if RAW_SCALES[dtype] != 1.0:
        samples = g.node("Mul", [samples, g.scalar(RAW_SCALES[dtype])])
    if interleaved:
        samples = g.node("Transpose", [samples], perm=[1, 0])  # [channels, samples]
    g.nodes.append(helper.make_node("ReduceMax", [g.node("Abs", [samples])], [PEAK], keepdims=0))

    # loudness: each channel's whole steps, the filter's rest after each but the last, the context before
    plan = block_plan(rate)
    length = g.node("Gather", [g.node("Shape", [samples]), g.const(_int64(1), "axis")])  # [1]
    step = g.const(_int64(plan.step), "step")
    used = g.node("Mul", [g.node("Div", [length, step]), step])
    steps = g.node("Slice", [samples, g.const(_int64(0), "start"), used, g.const(_int64(1), "axis")])
    gap = separation(plan) * plan.block
    spaced = g.node("Pad", [steps, g.const(_int64(0, 0, 0, gap), "pads")], mode="constant")
    flat = g.slice(g.node("Reshape", [spaced, g.const(_int64(-1), "shape")]), 0, -gap, 0) if gap else \
        g.node("Reshape", [spaced, g.const(_int64(-1), "shape")])
    led = g.node("Pad", [flat, g.const(_int64(plan.context * plan.block, 0), "pads")], mode="constant")
    _k_weighted_power(g, g.node("Reshape", [led, g.const(_int64(-1, plan.block), "shape")]), plan)

    mono = g.node("ReduceMean", [samples, g.const(_int64(0), "axis")], keepdims=0)  # [samples]
    if rate == MODEL_RATE:
        g.nodes.append(helper.make_node("Identity", [mono], [AUDIO]))
    else:
        resample = resampler.plan(rate, MODEL_RATE)
        lead, hop, span = resample.center, resample.hop, resample.span
        head = g.node("Slice", [mono, g.const(_int64(lead), "start"), g.const(_int64(0), "end"),
                                g.const(_int64(0), "axis"), g.const(_int64(-1), "step")])  # x[lead] … x[1]
        tail = g.node("Slice", [mono, g.const(_int64(-1), "start"), g.const(_int64(-resample.taps - 1), "end"),
                                g.const(_int64(0), "axis"), g.const(_int64(-1), "step")])  # x[n-1] … x[n-taps]
        zeros = g.const(np.zeros(2 * hop, dtype=np.float32), "zeros")
        source = g.node("Concat", [head, mono, tail, zeros], axis=0)
        whole = g.node("Mul", [g.node("Div", [g.node("Shape", [source]), g.const(_int64(hop), "hop")]),
                               g.const(_int64(hop), "hop")])
        blocks = g.node("Reshape", [g.node("Slice", [source, g.const(_int64(0), "start"), whole]),
                                    g.const(_int64(-1, hop), "shape")])  # [blocks, hop]
        rows = [g.node("Slice", [blocks, g.const(_int64(k), "start"),
                                 g.const(_int64(k - span + 1 if k < span - 1 else 1 << 40), "end")])
                for k in range(span)]  # row r reads blocks r … r + span - 1
        frames = g.node("Concat", rows, axis=1) if span > 1 else rows[0]
        product = g.node("MatMul", [frames, g.const(resample.matrix, "resample")])
        g.nodes.append(helper.make_node("Reshape", [product, g.const(_int64(-1), "shape")], [AUDIO]))
    g.nodes.append(helper.make_node("Identity", [AUDIO], [AUDIO_HOST]))
    shape = ["samples", "channels"] if interleaved else ["channels", "samples"]
    element = {"int16": TensorProto.INT16, "int32": TensorProto.INT32, "float32": TensorProto.FLOAT}[dtype]
    return g.model([helper.make_tensor_value_info(RAW, element, shape)],
                   [helper.make_tensor_value_info(AUDIO, TensorProto.FLOAT, ["audio_samples"]),
                    helper.make_tensor_value_info(STEP_POWER, TensorProto.FLOAT, ["steps"]),
                    helper.make_tensor_value_info(PEAK, TensorProto.FLOAT, []),
                    helper.make_tensor_value_info(AUDIO_HOST, TensorProto.FLOAT, ["audio_samples"])], "decoded_audio")


