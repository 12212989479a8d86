"""Installing a model published as one checkpoint file at a URL (BEATs' official checkpoints), or
brought by the user as a local file.

The official BEATs checkpoints are shared through OneDrive links with no published checksum. The
first file installed for a manifest has its sha256 recorded (``checksums.json`` in the models folder)
and shown; every later install of that manifest, downloaded or brought, must match it (or the
manifest's own sha256, where one is given). The checkpoint is read without torch, converted to ONNX
(float32, and float16 for CUDA) and the conversion checked on a random clip before anything is kept
(against the PyTorch port too, where the export extra is installed).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PINS_FILE = "checksums.json"
DOWNLOAD_TIMEOUT_S = 60
PORT_TOLERANCE = 1e-3  # float32 graph against the PyTorch port (they agree to ~1e-6 on real weights)
FP16_TOLERANCE = 0.05  # float16 against float32 probabilities on a random clip: a wrong graph is far off


def download_url(url: str) -> str:
    """A OneDrive share link ("1drv.ms/…") as the sharing API's direct download address."""
    if "1drv.ms" in url or "onedrive.live.com" in url:
        token = base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")
        return f"https://api.onedrive.com/v1.0/shares/u!{token}/root/content"
    return url


def _download(url: str, target: Path) -> None:
    from jamcaps_desktop.models.registry import ModelError

    log.info("downloading %s", url)
    request = urllib.request.Request(download_url(url), headers={"User-Agent": "jamcaps-desktop"})
    try:
        with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response, open(target, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except OSError as exc:
        raise ModelError(f"could not download {url}: {exc}; on a machine without a network, download the file "
                         "elsewhere and install it with --from FILE") from exc


def _pins(models: Path) -> dict[str, str]:
    path = models / PINS_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _pin(models: Path, key: str, digest: str) -> None:
    pins = _pins(models)
    pins[key] = digest
    models.mkdir(parents=True, exist_ok=True)
    temp = models / f".{PINS_FILE}.tmp"
    temp.write_text(json.dumps(pins, indent=2), encoding="utf-8")
    os.replace(temp, models / PINS_FILE)


def checked_digest(name: str, source: dict[str, Any], path: Path) -> tuple[str, str | None]:
    """The file's sha256, and the one it must have (published, or recorded at the first install); raises
    ModelError when they differ."""
    from jamcaps_desktop.models import registry

    digest = registry.file_sha256(path)
    expected = source.get("sha256") or _pins(registry.models_dir()).get(name)
    if expected and digest != expected:
        raise registry.ModelError(f"{path.name} is not the checkpoint installed before for {name} "
                                  f"(sha256 {digest[:12]}…, expected {expected[:12]}…); it was not installed")
    return digest, expected


def audioset_names() -> dict[str, str]:
    """AudioSet MID → display name (resources/audioset/class_labels_indices.csv, CC BY 4.0, Google)."""
    import csv

    path = Path(__file__).resolve().parents[2] / "resources" / "audioset" / "class_labels_indices.csv"
    with open(path, encoding="utf-8", newline="") as handle:
        return {row["mid"]: row["display_name"] for row in csv.DictReader(handle)}


def _labels(checkpoint: dict[str, Any], classes: int) -> list[str]:
    from jamcaps_desktop.models.registry import ModelError

    label_dict = checkpoint.get("label_dict")
    if not isinstance(label_dict, dict) or len(label_dict) != classes:
        raise ModelError(f"the checkpoint's label_dict does not name its {classes} classes")
    names = audioset_names()
    return [names.get(str(label_dict[index]), str(label_dict[index])) for index in range(classes)]


def _check_conversion(fp32: Any, fp16: Any, finetuned: bool, checkpoint: dict[str, Any] | None = None) -> None:
    """Both graphs run on a random clip and agree (a broken graph or checkpoint shows here); where torch
    is installed (the export extra), the float32 graph must also agree with the PyTorch port."""
    import onnxruntime as ort

    from jamcaps_desktop.audio.features import beats_fbank
    from jamcaps_desktop.models.registry import ModelError

    clip = np.random.default_rng(0).standard_normal(16000 * 4).astype(np.float32) * 0.1
    fbank = beats_fbank(clip)[None]
    feeds = {"fbank": fbank, "padding_mask": np.zeros(fbank.shape[:2], dtype=bool)}
    output = "probs" if finetuned else "embedding"
    results = []
    for model in (fp32, fp16):
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        results.append(session.run([output], feeds)[0])
    if not np.all(np.isfinite(results[0])):
        raise ModelError("the converted model gives non-finite values on a test clip")
    scale = 1.0 if finetuned else float(np.abs(results[0]).max()) or 1.0
    if float(np.abs(results[0] - results[1]).max()) / scale > FP16_TOLERANCE:
        raise ModelError("the float16 conversion disagrees with the float32 one on a test clip")
    if checkpoint is None:
        return
    try:
        import torch

        from jamcaps_desktop.export.beats_torch import BEATsPort
    except ImportError:
        return
    with torch.no_grad():
        port = BEATsPort.from_checkpoint(checkpoint)(torch.from_numpy(fbank), torch.from_numpy(feeds["padding_mask"]))
    eager = port[output].numpy()
    if float(np.abs(results[0] - eager).max()) / scale > PORT_TOLERANCE:
        raise ModelError("the ONNX conversion disagrees with the PyTorch port on a test clip")


def install_checkpoint(name: str, spec: dict[str, Any], local: str | os.PathLike[str] | None):  # -> InstalledModel
    from jamcaps_desktop.models import registry
    from jamcaps_desktop.models.beats import build_onnx, config_of
    from jamcaps_desktop.models.torch_checkpoint import CheckpointError, read_checkpoint

    source = spec["source"]
    models = registry.models_dir()
    with tempfile.TemporaryDirectory(dir=models if models.exists() else None) as tmp:
        if local is not None:
            checkpoint_path = Path(local)
            if not checkpoint_path.is_file():
                raise registry.ModelError(f"no such file: {checkpoint_path}")
        else:
            checkpoint_path = Path(tmp) / source["filename"]
            _download(source["url"], checkpoint_path)
        digest, expected = checked_digest(name, source, checkpoint_path)
        try:
            checkpoint = read_checkpoint(checkpoint_path)
            if not isinstance(checkpoint, dict) or "cfg" not in checkpoint or "model" not in checkpoint:
                raise CheckpointError("it holds no 'cfg' and 'model' (the official BEATs format)")
            cfg = config_of(checkpoint["cfg"])
            finetuned = bool(cfg["finetuned_model"])
            if finetuned != bool(spec.get("finetuned")):
                kind = "fine-tuned" if finetuned else "pre-trained"
                raise CheckpointError(f"it is a {kind} checkpoint; {name} expects the other kind")
            fp32 = build_onnx(checkpoint["model"], checkpoint["cfg"], name=name)
            fp16 = build_onnx(checkpoint["model"], checkpoint["cfg"], name=name, half=True)
        except (CheckpointError, KeyError, ValueError) as exc:
            raise registry.ModelError(f"{name}: {checkpoint_path.name} cannot be converted ({exc})") from exc
        labels = _labels(checkpoint, int(cfg["predictor_class"])) if finetuned else []
        _check_conversion(fp32, fp16, finetuned, checkpoint)
        with registry.staged_install(models / name) as staging:
            (staging / "model.onnx").write_bytes(fp32.SerializeToString())
            (staging / "model.fp16.onnx").write_bytes(fp16.SerializeToString())
            record = {"manifest": spec, "file": "model.onnx", "sha256": registry.file_sha256(staging / "model.onnx"),
                      "labels": labels, "files": {"model.fp16.onnx": registry.file_sha256(staging / "model.fp16.onnx")},
                      "fp16_file": "model.fp16.onnx", "checkpoint_sha256": digest,
                      "graph_revision": registry.graph_revision(spec),
                      "config": {k: v for k, v in cfg.items() if isinstance(v, (int, float, str, bool))}}
            registry.write_record(staging, record)
        if not expected:
            _pin(models, name, digest)
            log.warning("%s: no checksum is published for %s; recorded sha256 %s for later installs", name,
                        checkpoint_path.name, digest)
    return registry.verify(name)
