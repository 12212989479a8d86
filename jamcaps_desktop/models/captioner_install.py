"""Installing the LP-MusicCaps captioner from its checkpoint (``transfer.pth``) and bart-base's tokenizer
files, and running it.

Its weights come under conflicting terms, so it is installed only with the user's explicit consent
(``accept_licence``); nothing else in the app needs it. The checkpoint is read without torch, its
encoder and decoder graphs built (``models.lpmc``) and run once on a test clip before anything is kept.
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
    from jamcaps_desktop.models import lpmc, registry
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
            encoder = lpmc.build_encoder(weights, spec["config"])
            step = lpmc.build_decoder_step(weights, spec["config"])
        except (CheckpointError, KeyError, ValueError) as exc:
            raise registry.ModelError(f"{name}: {checkpoint_path.name} cannot be converted ({exc})") from exc
        _check(encoder, step, spec["config"], np.asarray(weights[MEL_KEY], dtype=np.float32))
        with registry.staged_install(models / name) as staging:
            (staging / "encoder.onnx").write_bytes(encoder.SerializeToString())
            (staging / "decoder_step.onnx").write_bytes(step.SerializeToString())
            np.save(staging / "mel_filters.npy", np.asarray(weights[MEL_KEY], dtype=np.float32))
            for file_name in TOKENIZER_FILES:
                shutil.copyfile(folder / file_name, staging / file_name)
            files = {f: registry.file_sha256(staging / f)
                     for f in ("decoder_step.onnx", "mel_filters.npy", *TOKENIZER_FILES)}
            registry.write_record(staging, {"manifest": spec, "file": "encoder.onnx", "labels": [], "files": files,
                                            "sha256": registry.file_sha256(staging / "encoder.onnx"),
                                            "checkpoint_sha256": digest})
        if not expected:
            _pin(models, name, digest)
    return registry.verify(name)


def _check(encoder: Any, step: Any, config: dict[str, Any], mel_filters: np.ndarray) -> None:
    import onnxruntime as ort

    from jamcaps_desktop.models import lpmc
    from jamcaps_desktop.models.registry import ModelError

    clip = (np.random.default_rng(0).standard_normal(lpmc.CHUNK_SAMPLES) * 0.1).astype(np.float32)
    encoder_session = ort.InferenceSession(encoder.SerializeToString(), providers=["CPUExecutionProvider"])
    decoder = lpmc.CachedDecoder(ort.InferenceSession(step.SerializeToString(), providers=["CPUExecutionProvider"]),
                                 config)
    hidden = encoder_session.run(None, {"log_mel": lpmc.log_mel(clip[None], mel_filters)})[0]
    logits = decoder.run(["logits"], {"decoder_input_ids": np.array([[2, 0]], dtype=np.int64),
                                      "encoder_hidden": hidden})[0]
    if not (np.all(np.isfinite(hidden)) and np.all(np.isfinite(logits))):
        raise ModelError("the converted captioner gives non-finite values on a test clip")


class Captioner:
    """The installed LP-MusicCaps model: 10-s chunks of a track to captions."""

    def __init__(self, model: Any, device: str = "auto") -> None:
        from tokenizers import ByteLevelBPETokenizer

        from jamcaps_desktop.models.engine import make_session

        self.name = model.name
        self.config = model.manifest["config"]
        self.generation = model.manifest.get("generation", {"num_beams": 5, "max_length": 128, "min_length": 2})
        from jamcaps_desktop.models.lpmc import CachedDecoder

        self.encoder = make_session(model.folder / "encoder.onnx", device)
        # one token's work per step, with the key/value cache
        self.decoder = CachedDecoder(make_session(model.folder / "decoder_step.onnx", device), self.config)
        self.mel_filters = np.load(model.folder / "mel_filters.npy")
        self.tokenizer = ByteLevelBPETokenizer(str(model.folder / "vocab.json"), str(model.folder / "merges.txt"))

    @classmethod
    def installed(cls, name: str = "lp-musiccaps", device: str = "auto") -> Captioner:
        from jamcaps_desktop.models import registry

        return cls(registry.verify(name), device)

    def caption_chunks(self, samples: np.ndarray, batch: int = 8) -> list[tuple[float, float, str]]:
        """(start s, end s, caption) for each 10-s chunk of 16-kHz ``samples``."""
        from jamcaps_desktop.models import lpmc

        chunks = lpmc.chunks_of(samples)
        out: list[tuple[float, float, str]] = []
        for first in range(0, len(chunks), batch):
            group = chunks[first:first + batch]
            hidden = self.encoder.run(None, {"log_mel": lpmc.log_mel(group, self.mel_filters)})[0]
            ids, _scores = lpmc.beam_search(self.decoder, hidden, self.config, **self.generation)
            for offset, sequence in enumerate(ids):
                start = (first + offset) * lpmc.CHUNK_SAMPLES / lpmc.SAMPLE_RATE
                text = self.tokenizer.decode([t for t in sequence if t > 3], skip_special_tokens=True).strip()
                out.append((start, start + lpmc.CHUNK_SAMPLES / lpmc.SAMPLE_RATE, text))
        return out


def track_caption_from_chunks(captions: list[str]) -> str:
    """The chunk caption most like the others (by shared words): the track's caption."""
    texts = [c for c in captions if c]
    if len(texts) <= 2:
        return texts[0] if texts else ""
    words = [set(t.lower().split()) for t in texts]

    def likeness(i: int) -> float:
        return sum(len(words[i] & words[j]) / max(1, len(words[i] | words[j])) for j in range(len(texts)) if j != i)

    return texts[max(range(len(texts)), key=likeness)]
