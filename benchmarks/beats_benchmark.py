"""BEATs speed: the app's ONNX graphs (float32 and float16) on ONNX Runtime against the PyTorch eager port.

    python benchmarks/beats_benchmark.py [--device cuda|cpu] [--batches 1,8,32,128] [--install DIR]

Full-size BEATs (iter3+ AS2M shape: 12 layers, width 768, 527 classes) with random weights (speed does
not depend on them), 10-s windows (998 fbank frames). Windows per second, median of timed runs after a
warm-up, inputs coming from and outputs going to host memory in every case, CUDA synchronised before
each clock read. ``--install DIR`` also installs the random model as ``beats`` in that models folder,
for timing the whole analysis with ``analysis_benchmark.py --models beats``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
from machine import machine_line

FULL = {"encoder_layers": 12, "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072, "encoder_attention_heads": 12,
        "conv_pos": 128, "conv_pos_groups": 16, "relative_position_embedding": True, "num_buckets": 320,
        "max_distance": 800, "gru_rel_pos": True, "deep_norm": True, "input_patch_size": 16, "embed_dim": 512,
        "finetuned_model": True, "predictor_class": 527, "layer_norm_first": False, "conv_bias": False}
FRAMES = 998


def full_size_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights of a trained network's scale (σ 0.02, LayerNorm gains near 1): larger ones make a
    12-layer network chaotic, where float32 and float64 runs of the same code already disagree."""
    from jamcaps_desktop.models.beats import random_weights

    return random_weights(FULL, np.random.default_rng(seed), scale=0.02)


def _timed(run, warmup: int = 2, seconds: float = 4.0, least: int = 5) -> float:
    for _ in range(warmup):
        run()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < least or (time.perf_counter() < deadline and len(times) < 100):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--batches", default="1,8,32,128")
    parser.add_argument("--install", type=Path, help="Also install the random full-size model as 'beats' here.")
    parser.add_argument("--skip-eager", action="store_true")
    args = parser.parse_args()

    from jamcaps_desktop.models.beats import build_onnx
    from jamcaps_desktop.models.engine import make_session

    weights = full_size_weights()
    graphs = {"onnx fp32": build_onnx(weights, FULL), "onnx fp16": build_onnx(weights, FULL, half=True)}
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "jamcaps-beats-bench"
    work.mkdir(parents=True, exist_ok=True)
    sessions = {}
    for name, graph in graphs.items():
        if args.device == "cpu" and name == "onnx fp16":
            continue  # float16 is for CUDA; the CPU provider emulates it slowly
        path = work / f"{name.replace(' ', '-')}.onnx"
        path.write_bytes(graph.SerializeToString())
        sessions[name] = make_session(path, args.device)
    rng = np.random.default_rng(1)
    results: dict[str, dict[str, float | str]] = {}
    port = None
    if not args.skip_eager:
        import torch

        from jamcaps_desktop.export.beats_torch import BEATsPort

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        port = BEATsPort.from_checkpoint({"cfg": FULL, "model": weights}).to(args.device)
    batches = [int(b) for b in args.batches.split(",")]
    agreement: dict[str, float] = {}
    for batch in batches:
        fbank = rng.standard_normal((batch, FRAMES, 128)).astype(np.float32)
        mask = np.zeros((batch, FRAMES), dtype=bool)
        feeds = {"fbank": fbank, "padding_mask": mask}
        outputs = {}
        for name, session in sessions.items():
            try:
                seconds = _timed(lambda session=session, feeds=feeds: session.run(["probs", "embedding"], feeds))
                results.setdefault(f"{name} ({session.get_providers()[0]})", {})[str(batch)] = round(batch / seconds, 1)
                outputs[name] = session.run(["probs"], feeds)[0]
            except Exception as exc:  # e.g. out of memory at a large batch: say so and go on
                results.setdefault(f"{name} ({session.get_providers()[0]})", {})[str(batch)] = f"fails: {exc}"[:90]
        if port is not None:
            import torch

            def eager(half: bool = False, fbank: np.ndarray = fbank, mask: np.ndarray = mask) -> np.ndarray:
                with torch.inference_mode():
                    x = torch.from_numpy(fbank).to(args.device)
                    m = torch.from_numpy(mask).to(args.device)
                    if half:
                        with torch.autocast(args.device, dtype=torch.float16):
                            out = port(x, m)
                    else:
                        out = port(x, m)
                    probs = out["probs"].float().cpu().numpy()
                    out["embedding"].cpu()
                    if args.device == "cuda":
                        torch.cuda.synchronize()
                    return probs

            for label, half in (("pytorch eager fp32", False), ("pytorch eager fp16 autocast", True)):
                if half and args.device == "cpu":
                    continue
                try:
                    seconds = _timed(lambda half=half: eager(half))
                    results.setdefault(label, {})[str(batch)] = round(batch / seconds, 1)
                    outputs[label] = eager(half)
                except Exception as exc:
                    results.setdefault(label, {})[str(batch)] = f"fails: {exc}"[:90]
        reference = outputs.get("pytorch eager fp32")
        if reference is not None:
            for name, probs in outputs.items():
                if name != "pytorch eager fp32":
                    agreement[f"{name} vs eager fp32, batch {batch}"] = float(np.abs(probs - reference).max())
    report: dict[str, object] = {"windows_per_s (10-s windows) by batch": results,
                                 "max abs difference of probabilities": agreement}
    if "onnx fp16" in sessions and port is not None:
        speedups = {}
        for batch in map(str, batches):
            fp16 = next((v[batch] for k, v in results.items() if k.startswith("onnx fp16")), None)
            eager = results.get("pytorch eager fp32", {}).get(batch)
            if isinstance(fp16, float) and isinstance(eager, float):
                speedups[batch] = round(fp16 / eager, 2)
        report["onnx fp16 / eager fp32"] = speedups
    if args.install:
        install_random(args.install, weights, graphs)
        report["installed"] = str(args.install / "beats")
    report["machine"] = machine_line()
    print(json.dumps(report, indent=2))


def install_random(models: Path, weights: dict[str, np.ndarray], graphs: dict) -> None:
    """The random full-size model as an installed 'beats' (for timing the analysis only)."""
    import hashlib

    from jamcaps_desktop.models import registry
    from jamcaps_desktop.models.checkpoint_install import audioset_names

    folder = models / "beats"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(graphs["onnx fp32"].SerializeToString())
    (folder / "model.fp16.onnx").write_bytes(graphs["onnx fp16"].SerializeToString())
    spec = json.loads((Path(__file__).resolve().parent.parent / "models" / "beats.json").read_text())
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    record = {"manifest": spec, "file": "model.onnx", "sha256": digest(folder / "model.onnx"),
              "labels": list(audioset_names().values()), "fp16_file": "model.fp16.onnx",
              "files": {"model.fp16.onnx": digest(folder / "model.fp16.onnx")},
              "graph_revision": registry.graph_revision(spec)}
    registry.write_record(folder, record)


if __name__ == "__main__":
    main()
