"""One place where ONNX Runtime sessions are made: the GPU when one is usable, else the CPU."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def nvidia_driver_present() -> bool:
    """Whether this machine has an NVIDIA driver (cheap: nothing is loaded)."""
    return Path("/proc/driver/nvidia/version").exists() or os.environ.get("CUDA_VISIBLE_DEVICES", "") not in ("", "-1")


def _preload_cuda_libraries(ort: Any) -> None:
    """Let onnxruntime find CUDA and cuDNN installed as Python packages (nvidia-*), as torch installs them."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # a failed preload only means the system's own libraries are used
        log.debug("onnxruntime.preload_dlls: %s", exc)


def cuda_available() -> bool:
    """Whether this onnxruntime has a CUDA provider."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def cuda_wanted(device: str) -> bool:
    """Whether a session for ``device`` will try CUDA (it may still fall back to the CPU)."""
    return device == "cuda" or (device == "auto" and nvidia_driver_present() and cuda_available())


def _options(ort: Any, on_gpu: bool) -> Any:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # no growing arena: a big batch's intermediate tensors are given back instead of being kept for the
    # whole job (the musicnn front end makes tensors of ~10 MB per window)
    options.enable_cpu_mem_arena = False
    if on_gpu:
        # the graph runs on the GPU; the few shape operations left to the CPU need no thread pool, and a
        # pool's threads spinning between runs would take the cores the decoding workers need
        options.intra_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    else:
        options.intra_op_num_threads = max(1, os.cpu_count() or 1)
    return options


def make_session(model_path: str | os.PathLike[str] | bytes, device: str = "auto", *,
                 name: str | None = None, varying_shapes: bool = False,
                 tf32: bool = False):  # -> onnxruntime.InferenceSession
    """A session on ``device`` ('auto', 'cpu' or 'cuda') for a model file, or for a serialised model (bytes)
    built in memory, logged as ``name``; ``varying_shapes`` for graphs whose input length changes from run to
    run; ``tf32`` lets CUDA multiply in TF32 (10-bit mantissas, float32 range and sums), for a model whose
    manifest accepts it. With 'auto', CUDA is tried only where an NVIDIA
    driver is present; which provider really runs is read from the session, not from the list of
    providers the package was built with, and logged."""
    import onnxruntime as ort

    wanted: list[Any] = ["CPUExecutionProvider"]
    if device == "cuda" or (device == "auto" and nvidia_driver_present()):
        if cuda_available():
            # by default no TF32: full float32 matrix arithmetic, so the GPU gives the CPU's numbers (to ~1e-6,
            # not ~1e-4)
            cuda_options = {"use_tf32": "1" if tf32 else "0"}
            if varying_shapes:  # cuDNN's exhaustive search would run again for every new input length
                cuda_options["cudnn_conv_algo_search"] = "HEURISTIC"
            wanted.insert(0, ("CUDAExecutionProvider", cuda_options))
            _preload_cuda_libraries(ort)
        elif device == "cuda":
            raise RuntimeError("CUDA was asked for, but this onnxruntime has no CUDA provider")
    source = model_path if isinstance(model_path, bytes) else str(model_path)
    on_gpu = len(wanted) > 1
    session = ort.InferenceSession(source, sess_options=_options(ort, on_gpu), providers=wanted)
    running = session.get_providers()
    if on_gpu and running[0] != "CUDAExecutionProvider" and device != "cuda":  # CUDA could not start: all cores
        session = ort.InferenceSession(source, sess_options=_options(ort, False), providers=["CPUExecutionProvider"])
        running = session.get_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in running:
        raise RuntimeError("CUDA was asked for, but the CUDA provider could not start (see the CUDA and cuDNN "
                           "requirements of onnxruntime-gpu)")
    if name is None:
        name = "a built-in graph" if isinstance(model_path, bytes) else Path(model_path).parent.name
    log.info("%s runs on %s", name, running[0])
    return session


def run_options(session: Any, shrink: bool = False) -> Any:
    """ONNX Runtime's options for a run of ``session``; ``shrink``: where the session runs on the GPU, the
    memory the run took beyond its first block is given back at its end (for a run made once, ahead of the
    work: a warm-up of a session kept while the app waits)."""
    import onnxruntime as ort

    options = ort.RunOptions()
    if shrink and session.get_providers()[0] == "CUDAExecutionProvider":
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "gpu:0")
    return options


def run_values(session: Any, feeds: dict[str, Any], fetches: dict[str, str], shrink: bool = False) -> list[Any]:
    """Run ``session`` on ``feeds`` (numpy arrays, or OrtValues already where the session wants them) and
    return its ``fetches`` (output name → ``'cpu'`` or ``'cuda'``: where each output is to be left) as
    OrtValues, in that order.

    Every copy between the host and the GPU is made inside the run, where ONNX Runtime lets the other
    Python threads go on. An I/O binding copies a bound host array to the GPU as it is bound, and an
    OrtValue copies itself back to the host, both while holding the interpreter's lock: in an analysis
    on an H100 that held every other thread up for about 6 s of a 16-s job (the decoded samples, 30–65 MB a
    track, and their 16 kHz audio coming back). ``shrink``: see ``run_options``."""
    import onnxruntime as ort

    try:
        from onnxruntime.capi.onnxruntime_pybind11_state import OrtValueVector
        run = session.run_with_ortvaluevector
    except (ImportError, AttributeError):  # an onnxruntime without it: an I/O binding, whose copies hold the lock
        return _run_bound(session, feeds, fetches, shrink)
    values = {name: value if isinstance(value, ort.OrtValue) else ort.OrtValue.ortvalue_from_numpy(value)
              for name, value in feeds.items()}  # host arrays are wrapped, not copied
    inputs = OrtValueVector()
    for value in values.values():
        inputs.push_back(value._get_c_value())
    outputs = OrtValueVector()
    run(run_options(session, shrink), list(values), inputs, list(fetches), outputs,
        [_device(kind) for kind in fetches.values()])
    return [ort.OrtValue(value) for value in outputs]


@functools.lru_cache(maxsize=8)
def _device(kind: str) -> Any:
    """ONNX Runtime's description of device ``kind`` (made once: every measuring run asks for it)."""
    import onnxruntime as ort

    return ort.OrtDevice.make(kind, 0)._get_c_device()


def _run_bound(session: Any, feeds: dict[str, Any], fetches: dict[str, str], shrink: bool = False) -> list[Any]:
    import onnxruntime as ort

    binding = session.io_binding()
    for name, value in feeds.items():
        if isinstance(value, ort.OrtValue):
            binding.bind_ortvalue_input(name, value)
        else:
            binding.bind_cpu_input(name, value)
    for name, kind in fetches.items():
        binding.bind_output(name, kind)
    session.run_with_iobinding(binding, run_options(session, shrink))
    return binding.get_outputs()
