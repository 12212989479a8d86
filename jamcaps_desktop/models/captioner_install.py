"""Installing the LP-MusicCaps captioner from its checkpoint (``transfer.pth``) and bart-base's tokenizer
files, and running it.

Its weights come under conflicting terms, so it is installed only with the user's explicit consent
(``accept_licence``); nothing else in the app needs it. The checkpoint is read without torch, its graphs
built — the front end (``audio.frontend_graphs``), the encoder (``models.lpmc``), the cross-attention cache
and the search step (``models.lpmc_search``), in float32 and for CUDA in float16 — and run once on a test
clip before anything is kept.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

MEL_KEY = "audio_encoder.mel_encoder.mel_scale.fb"
TOKENIZER_FILES = ("vocab.json", "merges.txt")


def _locate(local: Path, source: dict[str, Any]) -> tuple[Path, Path]:
    """The checkpoint and the folder with the tokenizer files, from a file or a folder brought by hand."""
    from jamcaps_desktop.models.registry import ModelError

    if local.is_dir():
        checkpoint = local / source["filename"]
        folder = local
    else:
        checkpoint, folder = local, local.parent
    if not checkpoint.is_file():
        raise ModelError(f"no {source['filename']} in {local}")
    missing = [name for name in TOKENIZER_FILES if not (folder / name).is_file()]
    if missing:
        raise ModelError(f"the tokenizer files {', '.join(missing)} (bart-base's) must lie beside the checkpoint")
    return checkpoint, folder


def install_captioner(name: str, spec: dict[str, Any], local: str | os.PathLike[str] | None, *,
                      accept_licence: bool = False):  # -> InstalledModel
    from jamcaps_desktop.models import registry
    from jamcaps_desktop.models.checkpoint_install import _download, _pin, checked_digest
    from jamcaps_desktop.models.torch_checkpoint import CheckpointError, read_checkpoint

    if spec.get("consent") and not accept_licence:
        raise registry.ModelError(f"{name}: {spec['consent']} Licence: {spec['licence']}. To install it anyway, "
                                  "pass --accept-licence.")
    source = spec["source"]
    models = registry.models_dir()
    models.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=models) as tmp:
        if local is not None:
            checkpoint_path, folder = _locate(Path(local), source)
        else:
            folder = Path(tmp)
            checkpoint_path = folder / source["filename"]
            _download(source["url"], checkpoint_path)
            for file_name, url in source.get("files", {}).items():
                _download(url, folder / file_name)
        digest, expected = checked_digest(name, source, checkpoint_path)
        try:
            saved = read_checkpoint(checkpoint_path)
            weights = saved.get("state_dict", saved) if isinstance(saved, dict) else None
            if not isinstance(weights, dict) or MEL_KEY not in {k.removeprefix("module.") for k in weights}:
                raise CheckpointError("it holds no LP-MusicCaps state_dict")
            weights = {k.removeprefix("module."): v for k, v in weights.items()}
            graphs = build_graphs(weights, spec["config"])
        except (CheckpointError, KeyError, ValueError) as exc:
            raise registry.ModelError(f"{name}: {checkpoint_path.name} cannot be converted ({exc})") from exc
        _check(graphs, spec["config"])
        with registry.staged_install(models / name) as staging:
            for file_name, graph in graphs.items():
                (staging / file_name).write_bytes(graph.SerializeToString())
            for file_name in TOKENIZER_FILES:
                shutil.copyfile(folder / file_name, staging / file_name)
            files = {f: registry.file_sha256(staging / f) for f in (*graphs, *TOKENIZER_FILES) if f != "encoder.onnx"}
            registry.write_record(staging, {"manifest": spec, "file": "encoder.onnx", "labels": [], "files": files,
                                            "sha256": registry.file_sha256(staging / "encoder.onnx"),
                                            "checkpoint_sha256": digest})
        if not expected:
            _pin(models, name, digest)
    return registry.verify(name)


GRAPHS = ("log_mel.onnx", "encoder.onnx", "cross_cache.onnx", "search_step.onnx")
HALF_GRAPHS = ("encoder.fp16.onnx", "cross_cache.fp16.onnx", "search_step.fp16.onnx")  # for CUDA


def build_graphs(weights: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The captioner's graphs by file name: the front end, and the encoder, cross-attention cache and
    search step in float32 and (for CUDA) float16."""
    from jamcaps_desktop.audio.frontend_graphs import captioner_logmel_graph
    from jamcaps_desktop.models import lpmc, lpmc_search

    graphs = {"log_mel.onnx": captioner_logmel_graph(np.asarray(weights[MEL_KEY], dtype=np.float32))}
    for suffix, half in ((".onnx", False), (".fp16.onnx", True)):
        graphs["encoder" + suffix] = lpmc.build_encoder(weights, config, half=half)
        graphs["cross_cache" + suffix] = lpmc_search.build_cross_cache(weights, config, half=half)
        graphs["search_step" + suffix] = lpmc_search.build_search_step(weights, config, half=half)
    return graphs


def _check(graphs: dict[str, Any], config: dict[str, Any]) -> None:
    """Caption a test clip (a few tokens) with the float32 graphs and with the float16 ones CUDA will run:
    every number must be finite."""
    import onnxruntime as ort

    from jamcaps_desktop.models.lpmc import CHUNK_SAMPLES
    from jamcaps_desktop.models.registry import ModelError

    clip = (np.random.default_rng(0).standard_normal((1, CHUNK_SAMPLES)) * 0.1).astype(np.float32)
    for files in (GRAPHS, ("log_mel.onnx", *HALF_GRAPHS)):
        sessions = [ort.InferenceSession(graphs[name].SerializeToString(), providers=["CPUExecutionProvider"])
                    for name in files]
        captioner = CaptionPipeline(*sessions, config)
        hidden = captioner.encode(clip)
        _ids, scores = captioner.search(hidden, num_beams=2, max_length=4, min_length=2)
        if not (np.all(np.isfinite(hidden.numpy())) and np.all(np.isfinite(scores))):
            precision = "float16" if files != GRAPHS else "float32"
            raise ModelError(f"the converted captioner ({precision}) gives non-finite values on a test clip")


class CaptionPipeline:
    """The captioner's sessions chained on their device: audio → log-mel → encoder states → search."""

    def __init__(self, front_end: Any, encoder: Any, cross: Any, step: Any, config: dict[str, Any]) -> None:
        from jamcaps_desktop.models.lpmc_search import OnnxSteps

        self.front_end, self.encoder, self.config = front_end, encoder, config
        self.steps = OnnxSteps(cross, step, config)

    def encode(self, chunks: np.ndarray) -> Any:
        """[chunks, samples] → the encoder's states, an OrtValue on the device."""
        mel = self.front_end.io_binding()
        mel.bind_cpu_input("audio", np.ascontiguousarray(chunks, dtype=np.float32))
        mel.bind_output("log_mel", self.steps.device)
        self.front_end.run_with_iobinding(mel)
        states = self.encoder.io_binding()
        states.bind_ortvalue_input("log_mel", mel.get_outputs()[0])
        states.bind_output("encoder_hidden", self.steps.device)
        self.encoder.run_with_iobinding(states)
        return states.get_outputs()[0]

    def search(self, hidden: Any, **generation: Any) -> tuple[list[list[int]], list[float]]:
        from jamcaps_desktop.models.lpmc_search import search

        return search(self.steps, hidden, self.config, **generation)


class Captioner:
    """The installed LP-MusicCaps model: 10-s chunks of a track to captions. On CUDA the float16 graphs
    run, and everything from the audio to each step's best candidates stays on the GPU."""

    def __init__(self, model: Any, device: str = "auto") -> None:
        from tokenizers import ByteLevelBPETokenizer

        from jamcaps_desktop.models.engine import make_session
        from jamcaps_desktop.models.registry import ModelError

        self.name = model.name
        self.config = model.manifest["config"]
        self.generation = model.manifest.get("generation", {"num_beams": 5, "max_length": 128, "min_length": 2})
        missing = [f for f in (*GRAPHS, *HALF_GRAPHS) if not (model.folder / f).is_file()]
        if missing:
            raise ModelError(f"the model {self.name} was installed by an older version of the app ({missing[0]} is "
                             f"missing); reinstall it with 'jamcaps models install {self.name} --accept-licence'")
        def session(file_name: str) -> Any:
            return make_session(model.folder / file_name, device, name=f"{self.name} {file_name.split('.')[0]}",
                                varying_shapes=True)

        front_end = session("log_mel.onnx")
        self.device = front_end.get_providers()[0]
        on_gpu = self.device == "CUDAExecutionProvider"
        self.pipeline = CaptionPipeline(front_end, *(session(f) for f in (HALF_GRAPHS if on_gpu else GRAPHS[1:])),
                                  self.config)
        self.batch = 32 if on_gpu else 8
        self.tokenizer = ByteLevelBPETokenizer(str(model.folder / "vocab.json"), str(model.folder / "merges.txt"))

    @classmethod
    def installed(cls, name: str = "lp-musiccaps", device: str = "auto") -> Captioner:
        from jamcaps_desktop.models import registry

        return cls(registry.verify(name), device)

    def captions(self, chunks: np.ndarray) -> list[str]:
        """The caption of each 10-s chunk of a batch [chunks, 160000] (of one track or several)."""
        ids, _scores = self.pipeline.search(self.pipeline.encode(chunks), **self.generation)
        return [self.tokenizer.decode([t for t in sequence if t > 3], skip_special_tokens=True).strip()
                for sequence in ids]

    def caption_chunks(self, samples: np.ndarray, batch: int | None = None) -> list[tuple[float, float, str]]:
        """(start s, end s, caption) for each 10-s chunk of 16-kHz ``samples``."""
        from jamcaps_desktop.models import lpmc

        chunks = lpmc.chunks_of(samples)
        batch = batch or self.batch
        texts = [text for first in range(0, len(chunks), batch) for text in self.captions(chunks[first:first + batch])]
        return chunk_times(texts)


def chunk_times(texts: list[str]) -> list[tuple[float, float, str]]:
    """(start s, end s, caption) of a track's consecutive 10-s chunks."""
    from jamcaps_desktop.models import lpmc

    length = lpmc.CHUNK_SAMPLES / lpmc.SAMPLE_RATE
    return [(index * length, (index + 1) * length, text) for index, text in enumerate(texts)]


def track_caption_from_chunks(captions: list[str]) -> str:
    """The chunk caption most like the others (by shared words): the track's caption."""
    texts = [c for c in captions if c]
    if len(texts) <= 2:
        return texts[0] if texts else ""
    words = [set(t.lower().split()) for t in texts]

    def likeness(i: int) -> float:
        return sum(len(words[i] & words[j]) / max(1, len(words[i] | words[j])) for j in range(len(texts)) if j != i)

    return texts[max(range(len(texts)), key=likeness)]
