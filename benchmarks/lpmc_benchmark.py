"""LP-MusicCaps speed: the app's ONNX graphs (float32, float16) against the PyTorch eager port.

    python benchmarks/lpmc_benchmark.py [--device cuda|cpu] [--batches 1,8,32] [--tokens 32] [--rounds 3]

Full-size model (bart-base sizes, the real front end's shapes) with random weights; 10-s chunks;
beam search with 5 beams as captioning runs it, every caption made exactly ``--tokens`` long (end of
sequence is held back until then) so that every variant does the same work. Each variant runs the whole
way from the audio on the host to the token ids: the app's graphs through ``CaptionPipeline`` (front
end, encoder, cross-attention cache and search steps on the device), the PyTorch port through its own
front end, encoder and ``TorchSteps``; both driven by the same search (``models.lpmc_search.search``).
Reported: captions per second (median of ``--rounds`` after a warm-up), and how many captions have the
same ids as the float32 graphs'.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from machine import machine_line

CONFIG = {"d_model": 768, "encoder_layers": 6, "decoder_layers": 6, "encoder_attention_heads": 12,
          "decoder_attention_heads": 12, "encoder_ffn_dim": 3072, "decoder_ffn_dim": 3072, "vocab_size": 50265,
          "max_position_embeddings": 1024, "scale_embedding": False, "bos_token_id": 0, "pad_token_id": 1,
          "eos_token_id": 2, "decoder_start_token_id": 2, "forced_bos_token_id": 0, "forced_eos_token_id": 2,
          "no_repeat_ngram_size": 3}


def random_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d, f, v = CONFIG["d_model"], CONFIG["encoder_ffn_dim"], CONFIG["vocab_size"]

    def n(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {"audio_encoder.conv1.weight": n(d, 128, 3), "audio_encoder.conv1.bias": n(d),
         "audio_encoder.positional_embedding": n(32, d, scale=1.0),
         "audio_encoder.mel_encoder.mel_scale.fb": np.abs(n(513, 128, scale=0.1)),
         "bart.final_logits_bias": np.zeros((1, v), np.float32), "bart.model.shared.weight": n(v, d)}
    for i in range(5):
        w[f"audio_encoder.conv_stack.{i}.weight"], w[f"audio_encoder.conv_stack.{i}.bias"] = n(d, d, 3), n(d)
    for side in ("encoder", "decoder"):
        w[f"bart.model.{side}.embed_positions.weight"] = n(1026, d)
        w[f"bart.model.{side}.layernorm_embedding.weight"] = 1 + n(d)
        w[f"bart.model.{side}.layernorm_embedding.bias"] = n(d)
        for layer in range(6):
            key = f"bart.model.{side}.layers.{layer}"
            blocks = ["self_attn"] + (["encoder_attn"] if side == "decoder" else [])
            for block in blocks:
                for proj in "qkvo":
                    name = f"{key}.{block}.{'out' if proj == 'o' else proj}_proj"
                    w[name + ".weight"], w[name + ".bias"] = n(d, d), n(d)
                w[f"{key}.{block}_layer_norm.weight"], w[f"{key}.{block}_layer_norm.bias"] = 1 + n(d), n(d)
            w[f"{key}.fc1.weight"], w[f"{key}.fc1.bias"] = n(f, d), n(f)
            w[f"{key}.fc2.weight"], w[f"{key}.fc2.bias"] = n(d, f), n(d)
            w[f"{key}.final_layer_norm.weight"], w[f"{key}.final_layer_norm.bias"] = 1 + n(d), n(d)
    return w


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-eager", action="store_true")
    args = parser.parse_args()

    from jamcaps_desktop.models import lpmc
    from jamcaps_desktop.models.captioner_install import GRAPHS, HALF_GRAPHS, CaptionPipeline, build_graphs
    from jamcaps_desktop.models.engine import make_session
    from jamcaps_desktop.models.lpmc_search import search

    weights = random_weights()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "jamcaps-lpmc-bench"
    work.mkdir(parents=True, exist_ok=True)
    for file_name, graph in build_graphs(weights, CONFIG).items():
        (work / file_name).write_bytes(graph.SerializeToString())
    generation = {"num_beams": 5, "max_length": args.tokens + 1, "min_length": args.tokens}

    def onnx_variant(files: tuple[str, ...]):
        sessions = [make_session(work / f, args.device, varying_shapes=True) for f in files]
        pipeline = CaptionPipeline(*sessions, CONFIG)
        return lambda audio: pipeline.search(pipeline.encode(audio), **generation)[0]

    variants = {"onnx fp32": onnx_variant(GRAPHS)}
    if args.device == "cuda":
        variants["onnx fp16"] = onnx_variant(("log_mel.onnx", *HALF_GRAPHS))
    if not args.skip_eager:
        import torch

        from jamcaps_desktop.export.lpmc_torch import LPMCPort, TorchSteps

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        port = LPMCPort(weights, CONFIG).to(args.device)

        def eager_variant(half: bool):
            steps = TorchSteps(port, args.device, half=half)

            def caption(audio: np.ndarray) -> list[list[int]]:
                with torch.inference_mode(), torch.autocast(args.device, dtype=torch.float16, enabled=half):
                    samples = torch.from_numpy(audio).to(args.device)
                    hidden = port.encode(port.log_mel(samples).float()).float().cpu().numpy()
                return search(steps, hidden, CONFIG, **generation)[0]

            return caption

        variants["pytorch eager fp32"] = eager_variant(False)
        if args.device == "cuda":
            variants["pytorch eager fp16 autocast"] = eager_variant(True)
    rng = np.random.default_rng(1)
    results: dict[str, dict[str, object]] = {}
    for batch in (int(b) for b in args.batches.split(",")):
        audio = (rng.standard_normal((batch, lpmc.CHUNK_SAMPLES)) * 0.1).astype(np.float32)
        reference = None
        for label, caption in variants.items():
            ids = caption(audio)  # warm-up
            reference = reference or ids
            times = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                caption(audio)
                times.append(time.perf_counter() - start)
            results.setdefault(label, {})[str(batch)] = {
                "captions_per_s": round(batch / statistics.median(times), 2),
                "same_ids_as_onnx_fp32": f"{sum(a == b for a, b in zip(ids, reference, strict=True))}/{batch}"}
            print(f"{label}, batch {batch}: {results[label][str(batch)]}", file=sys.stderr, flush=True)
    report = {f"captions/s (10-s chunks, beam 5, {args.tokens} tokens each) by batch": results,
              "machine": machine_line()}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
